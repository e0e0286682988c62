//! The `oversync-server` binary as a child process, configured by a TOML file, against the
//! testkit's PostgreSQL: config errors name the key, `migrate` applies DDL generated from an
//! app's SQLite schema the project has never seen, Diesel clients sync through it, and a
//! column added by a later migration is accepted without a restart. Plus the release of the
//! initialization lease after a rejected seed push (in-process example server).

mod common;

use common::{Api, assert_error, new_id};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::server_schema::{read_tables, write_server_migration};
use oversync_diesel::transport::{AuthError, Transport, token_fn};
use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
use oversync_testkit::PgCluster;
use reqwest::StatusCode;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SECRET: &str = "binary-test-secret-0123456789";

diesel::table! { tags (id) { id -> Text, label -> Text } }
diesel::table! {
    todos (id) {
        id -> Text,
        title -> Text,
        done -> Bool,
        priority -> Nullable<BigInt>,
        due -> Nullable<Text>,
        tag_id -> Nullable<Text>,
    }
}

#[derive(Queryable, Insertable, SyncTable, Debug, Clone, PartialEq)]
#[diesel(table_name = tags)]
struct Tag {
    #[sync(key)]
    id: String,
    label: String,
}

#[derive(Queryable, Insertable, SyncTable, Debug, Clone, PartialEq)]
#[diesel(table_name = todos)]
struct Todo {
    #[sync(key)]
    id: String,
    title: String,
    done: bool,
    priority: Option<i64>,
    due: Option<String>,
    tag_id: Option<String>,
}

/// The app's own Diesel migration (what `diesel migration run` would have applied).
const APP_SCHEMA: &str = "
CREATE TABLE tags (id TEXT PRIMARY KEY NOT NULL, label TEXT NOT NULL);
CREATE TABLE todos (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT 0,
    priority BIGINT,
    due TIMESTAMP,
    tag_id TEXT REFERENCES tags(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
";

fn config() -> OversyncConfig {
    OversyncConfig::new("app").table::<Tag>().table::<Todo>()
}

fn token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "iss": "todo-auth", "exp": now + 600, "nbf": now - 1}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

struct Device {
    conn: OversyncConnection,
    _dir: tempfile::TempDir,
}

fn device(base_url: &str, user: &str) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = OversyncConnection::establish(path.to_str().unwrap(), config()).unwrap();
    conn.batch_execute(APP_SCHEMA).unwrap();
    oversync_diesel::migrations::run_sync_migrations(&mut conn).unwrap();
    conn.oversync().open().unwrap();
    let user = user.to_owned();
    conn.set_transport(
        Transport::new(
            base_url,
            token_fn(move |_refresh| {
                let t = token(&user);
                async move { Ok::<_, AuthError>(t) }
            }),
        )
        .unwrap(),
    );
    Device { conn, _dir: dir }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oversync-server"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("OVERSYNC_LISTEN")
        .env_remove("OVERSYNC_CONFIG")
        .env_remove("OVERSYNC_JWT_SECRET")
        .env("TODO_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary to completion: (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = binary().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("oversync.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// A served binary, killed on drop.
struct Served {
    child: Child,
    base_url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(config: &Path, port: u16) -> Served {
    let child = binary()
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut served = Served {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
    };
    // Ready when health answers; a child that exits early fails the test with its status.
    let http = reqwest::Client::new();
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            panic!("oversync-server exited before serving: {status}");
        }
        if let Ok(r) = http
            .get(format!("{}/syncx/health", served.base_url))
            .send()
            .await
            && r.status().is_success()
        {
            return served;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn help_lists_every_config_section() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for needle in [
        "migrate",
        "--config",
        "[database]",
        "[sync]",
        "[auth]",
        "[limits]",
        "jwks_file",
        "public_key_file",
        "user_claim",
        "audience",
    ] {
        assert!(out.contains(needle), "--help lacks {needle}:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_fail_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgCluster::shared()
        .unwrap()
        .create_database()
        .await
        .unwrap();
    let base = format!(
        "[database]\nurl = \"{}\"\n[auth]\nsecret = \"{SECRET}\"\n[sync]\nschema = \"app\"\n",
        db.url
    );
    let cases = [
        (
            format!("{base}[limits]\nmax_rows_per_push_chunk = 0\n"),
            "limits.max_rows_per_push_chunk",
        ),
        (
            base.replace("[sync]", "[sync]\nmigrate_on_start = \"yes\""),
            "migrate_on_start",
        ),
        (format!("{base}[server]\nlistn = \"x\"\n"), "`listen`"),
        (
            base.replace("secret = ", "algorithm = \"PS256\"\nsecret = "),
            "auth.algorithm",
        ),
        (
            base.replace("schema = \"app\"", "schema = \"\""),
            "sync.schema",
        ),
    ];
    for (text, needle) in cases {
        let config = write_config(dir.path(), &text);
        let (ok, _, err) = run(&["check", "--config", config.to_str().unwrap()]);
        assert!(!ok, "{text}");
        assert!(err.contains(needle), "{err:?} should name {needle}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A schema the server cannot serve: it refuses and names the table and the rule.
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.plain (id uuid PRIMARY KEY, title text);",
        )
        .await
        .unwrap();
    let config = write_config(dir.path(), &format!("{base}tables = [\"plain\"]\n"));
    let (ok, _, err) = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("app.plain") && err.contains("_sync_scope_id TEXT NOT NULL"),
        "{err}"
    );
    // Discovery finds no synced table and says what to do.
    let config = write_config(dir.path(), &base);
    let (ok, _, err) = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("oversync-server migrate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_schema_migrates_serves_and_grows_without_restart() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("server-migrations");
    let db = PgCluster::shared()
        .unwrap()
        .create_database()
        .await
        .unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\napp_name = \"todo-app\"\n\
             [database]\nurl = \"{}\"\n\
             [sync]\nschema = \"app\"\nmigrations_dir = \"server-migrations\"\n\
             [auth]\nsecret_env = \"TODO_JWT_SECRET\"\nissuer = \"todo-auth\"\n",
            db.url
        ),
    );
    let config_arg = config.to_str().unwrap();

    // The server DDL comes from the app's SQLite schema.
    let user = format!("u-{}", uuid::Uuid::new_v4().simple());
    let mut a = device("http://127.0.0.1:1", &user);
    let schema = read_tables(&mut a.conn, "app", &[]).unwrap();
    let first = write_server_migration(&migrations, "initial", &schema)
        .unwrap()
        .unwrap();
    let migrate = |extra: &[&str]| {
        let mut args = vec!["migrate", "--config", config_arg];
        args.extend_from_slice(extra);
        let out = binary().args(&args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = migrate(&[]);
    assert!(ok, "{err}");
    let (ok, err) = migrate(&[]);
    assert!(ok, "migrate is idempotent: {err}");

    let served = serve(&config, port).await;
    let base = served.base_url.clone();

    // Unauthenticated and wrong-issuer requests are refused, carry a request id, and are
    // counted in /metrics under their route and status like any other answer.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/sync/capabilities"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers().contains_key("x-request-id"),
        "{:?}",
        r.headers()
    );
    let r = http
        .get(format!("{base}/sync/capabilities"))
        .bearer_auth(token(&user).replace('.', "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused =
        r#"oversync_http_requests_total{route="/sync/capabilities",method="GET",status="401"} 2"#;
    assert!(metrics.lines().any(|l| l == refused), "{metrics}");

    // Device A pushes, device B pulls, through the binary.
    let mut a = device(&base, &user);
    a.conn.oversync().attach(&user).await.unwrap();
    let tag = Tag {
        id: new_id(),
        label: "home".into(),
    };
    let todo = Todo {
        id: new_id(),
        title: "water plants".into(),
        done: true,
        priority: Some(3),
        due: Some("2026-05-01 12:00:00.123".into()),
        tag_id: Some(tag.id.clone()),
    };
    diesel::insert_into(tags::table)
        .values(&tag)
        .execute(&mut *a.conn)
        .unwrap();
    diesel::insert_into(todos::table)
        .values(&todo)
        .execute(&mut *a.conn)
        .unwrap();
    a.conn.oversync().sync().await.unwrap();

    let mut b = device(&base, &user);
    b.conn.oversync().attach(&user).await.unwrap();
    b.conn.oversync().sync().await.unwrap();
    let pulled: Vec<Todo> = todos::table.load(&mut *b.conn).unwrap();
    assert_eq!(pulled, vec![todo.clone()]);

    // The cascade is the server's too: deleting the tag removes the todo everywhere.
    diesel::delete(tags::table).execute(&mut *a.conn).unwrap();
    a.conn.oversync().sync().await.unwrap();
    b.conn.oversync().sync().await.unwrap();
    assert_eq!(
        todos::table
            .count()
            .get_result::<i64>(&mut *b.conn)
            .unwrap(),
        0
    );

    // An applied migration edited afterwards is refused by checksum.
    let original = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, format!("{original}\n-- edited\n")).unwrap();
    let (ok, err) = migrate(&[]);
    assert!(!ok);
    assert!(err.contains("was edited after it was applied"), "{err}");
    std::fs::write(&first, original).unwrap();

    // The model grows a nullable column: the next migration is generated and applied
    // while the server runs, and a push naming the column is accepted without a restart.
    a.conn
        .batch_execute("ALTER TABLE todos ADD COLUMN note TEXT")
        .unwrap();
    let grown = read_tables(&mut a.conn, "app", &[]).unwrap();
    let second = write_server_migration(&migrations, "todo_note", &grown)
        .unwrap()
        .unwrap();
    assert!(second.ends_with("0002_todo_note.sql"));
    let (ok, err) = migrate(&[]);
    assert!(ok, "{err}");

    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
        token: Some(token(&user)),
        source: Some(new_id()),
    };
    let id = new_id();
    let (s, body) = api
        .push(
            1,
            vec![json!({
                "schema": "app", "table": "todos", "key": {"id": id}, "op": "INSERT",
                "base_row_version": 0,
                "payload": {"id": id, "title": "new", "done": false, "note": "from v2"}
            })],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = api
        .get("/sync/pull?after_bundle_seq=0&max_bundles=100")
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("from v2"), "{body}");

    // A device not yet upgraded pushes the row without the new column: the server updates
    // only the payload's columns, so the value another device wrote stays.
    let version = body["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["rows"].as_array().unwrap())
        .find(|r| r["key"]["id"] == id.as_str())
        .map(|r| r["row_version"].as_i64().unwrap())
        .unwrap();
    let (s, body) = api
        .push(
            2,
            vec![json!({
                "schema": "app", "table": "todos", "key": {"id": id}, "op": "UPDATE",
                "base_row_version": version,
                "payload": {"id": id, "title": "renamed by v1", "done": true,
                            "priority": null, "due": null, "tag_id": null}
            })],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT title, note FROM app.todos WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "renamed by v1");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("from v2"));

    // A column that exists nowhere is still refused.
    let (s, body) = api
        .push(
            3,
            vec![json!({
                "schema": "app", "table": "todos", "key": {"id": new_id()}, "op": "INSERT",
                "base_row_version": 0,
                "payload": {"title": "x", "done": false, "nope": 1}
            })],
        )
        .await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "push_chunk_invalid");
    drop(served);
}

/// A seed push the server rejects (400) must not lock the account for the lease lifetime:
/// another device connecting afterwards is not told `retry_later`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_seed_push_releases_the_initialization_lease() {
    let server = common::server().await;
    for (commit_fails, row) in [
        // Rejected at commit: the deferred foreign key names a missing author.
        (
            true,
            json!({"schema": "business", "table": "posts", "key": {"id": "P"}, "op": "INSERT",
                   "base_row_version": 0,
                   "payload": {"title": "t", "content": "c", "author_id": new_id()}}),
        ),
        // Rejected at upload: a column the table does not have.
        (
            false,
            json!({"schema": "business", "table": "users", "key": {"id": "P"}, "op": "INSERT",
                   "base_row_version": 0,
                   "payload": {"name": "n", "email": "e", "shoe_size": 44}}),
        ),
    ] {
        let user = format!("seed-{}", uuid::Uuid::new_v4().simple());
        let seeder = Api::new(&server, &user);
        let other = seeder.with_source(&new_id());
        let lease = seeder.connect(true).await;
        assert_eq!(lease["resolution"], "initialize_local", "{lease}");
        let init_id = lease["initialization_id"].as_str().unwrap().to_owned();
        let id = new_id();
        let row: serde_json::Value =
            serde_json::from_str(&row.to_string().replace("\"P\"", &format!("\"{id}\""))).unwrap();
        let (s, b) = seeder
            .post(
                "/sync/push-sessions",
                json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": init_id}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let push_id = b["push_id"].as_str().unwrap().to_owned();
        let (s, b) = seeder
            .post(
                &format!("/sync/push-sessions/{push_id}/chunks"),
                json!({"start_row_ordinal": 0, "rows": [row]}),
            )
            .await;
        if commit_fails {
            assert_eq!(s, StatusCode::OK, "{b}");
            let (s, b) = seeder
                .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
                .await;
            assert_error(s, &b, StatusCode::BAD_REQUEST, "push_commit_invalid");
        } else {
            assert_error(s, &b, StatusCode::BAD_REQUEST, "push_chunk_invalid");
        }
        let next = other.connect(false).await;
        assert_eq!(next["resolution"], "initialize_empty", "{next}");
    }
}

/// A key pair made by `openssl genpkey` (test-only, in a temp dir): the private PEM text;
/// the public key is written to `<name>.pub.pem`.
fn openssl_key_pair(dir: &Path, name: &str, args: &[&str]) -> String {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&private)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    let status = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(private).unwrap()
}

fn signed(
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        &json!({"sub": "pem-user", "iss": "idp", "aud": "todo-app", "exp": now + 600}),
        key,
    )
    .unwrap()
}

/// RS256 and ES256 with real PEM key pairs, and RS256 through a JWKS file, verified by the
/// binary: a token of the configured key is accepted, one of another key of the same
/// algorithm, or of the other algorithm, is a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_jwks_tokens_through_the_binary() {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey};
    let dir = tempfile::tempdir().unwrap();
    let db = PgCluster::shared()
        .unwrap()
        .create_database()
        .await
        .unwrap();
    let migrations = dir.path().join("m");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("0001_tags.sql"),
        "CREATE SCHEMA app;
         CREATE TABLE app.tags (_sync_scope_id text NOT NULL, id uuid NOT NULL, label text NOT NULL,
             PRIMARY KEY (_sync_scope_id, id));",
    )
    .unwrap();
    let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let rsa_private = openssl_key_pair(dir.path(), "rsa", &rsa);
    let other_rsa_private = openssl_key_pair(dir.path(), "rsa2", &rsa);
    let ec_private = openssl_key_pair(dir.path(), "ec", &ec);
    let other_ec_private = openssl_key_pair(dir.path(), "ec2", &ec);
    let rsa_key = EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap();
    let other_rsa = EncodingKey::from_rsa_pem(other_rsa_private.as_bytes()).unwrap();
    let ec_key = EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap();
    let other_ec = EncodingKey::from_ec_pem(other_ec_private.as_bytes()).unwrap();

    // The JWKS form of the RSA public key: modulus from openssl, exponent 65537.
    let modulus = Command::new("openssl")
        .args(["rsa", "-pubin", "-noout", "-modulus", "-in"])
        .arg(dir.path().join("rsa.pub.pem"))
        .output()
        .unwrap();
    let modulus = String::from_utf8(modulus.stdout).unwrap();
    let modulus = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(modulus);
    std::fs::write(
        dir.path().join("jwks.json"),
        json!({"keys": [{"kty": "RSA", "kid": "idp-1", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}]})
            .to_string(),
    )
    .unwrap();

    let cases = [
        (
            "algorithm = \"RS256\"\npublic_key_file = \"rsa.pub.pem\"",
            signed(Algorithm::RS256, None, &rsa_key),
            vec![
                signed(Algorithm::RS256, None, &other_rsa),
                signed(Algorithm::ES256, None, &ec_key),
            ],
        ),
        (
            "algorithm = \"ES256\"\npublic_key_file = \"ec.pub.pem\"",
            signed(Algorithm::ES256, None, &ec_key),
            vec![
                signed(Algorithm::ES256, None, &other_ec),
                signed(Algorithm::RS256, None, &rsa_key),
            ],
        ),
        (
            "jwks_file = \"jwks.json\"",
            signed(Algorithm::RS256, Some("idp-1"), &rsa_key),
            vec![
                signed(Algorithm::RS256, Some("idp-1"), &other_rsa),
                signed(Algorithm::RS256, Some("idp-2"), &rsa_key),
            ],
        ),
    ];
    let http = reqwest::Client::new();
    for (auth, good, bad) in cases {
        let port = free_port();
        let config = write_config(
            dir.path(),
            &format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[database]\nurl = \"{}\"\n\
                 [sync]\nschema = \"app\"\nmigrations_dir = \"m\"\nmigrate_on_start = true\n\
                 [auth]\n{auth}\nissuer = \"idp\"\naudience = [\"todo-app\"]\n",
                db.url
            ),
        );
        let served = serve(&config, port).await;
        let get = |token: String| {
            http.get(format!("{}/sync/capabilities", served.base_url))
                .bearer_auth(token)
                .header("Oversync-Source-ID", new_id())
                .send()
        };
        let r = get(good).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{auth}: {}",
            r.text().await.unwrap()
        );
        for token in bad {
            let r = get(token).await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth}");
        }
        drop(served);
    }
}
