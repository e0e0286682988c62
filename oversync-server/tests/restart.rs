//! Clean restarts of the `oversync-server` binary: SIGTERM drains running requests, refuses
//! new ones with `503` + `Retry-After`, ends watch streams; a client in the middle of a
//! 20k-row push or of a snapshot download, retrying, loses nothing across the restart.
//! Plus the drain contract of the library on the in-process server.

mod common;

use common::{Api, new_id, server, user_row};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::server_schema::{read_tables, write_server_migration};
use oversync_diesel::transport::{AuthError, Transport, TransportConfig, token_fn};
use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
use oversync_server::DrainOutcome;
use oversync_testkit::PgCluster;
use reqwest::StatusCode;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SECRET: &str = "restart-test-secret-0123456789";
const ROWS: usize = 20_000;

diesel::table! { notes (id) { id -> Text, body -> Text } }

#[derive(Queryable, Insertable, SyncTable, Debug, Clone, PartialEq)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key)]
    id: String,
    body: String,
}

const APP_SCHEMA: &str = "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL);";

fn token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": now + 600, "nbf": now - 1}),
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
    let mut conn = OversyncConnection::establish(
        path.to_str().unwrap(),
        OversyncConfig::new("app").table::<Note>(),
    )
    .unwrap();
    conn.batch_execute(APP_SCHEMA).unwrap();
    oversync_diesel::migrations::run_sync_migrations(&mut conn).unwrap();
    conn.oversync().open().unwrap();
    let user = user.to_owned();
    // Enough retries to outlast a restart (a few seconds of refused connections).
    let config = TransportConfig {
        max_retries: 12,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..TransportConfig::default()
    };
    conn.set_transport(
        Transport::with_config(
            base_url,
            token_fn(move |_refresh| {
                let t = token(&user);
                async move { Ok::<_, AuthError>(t) }
            }),
            config,
        )
        .unwrap(),
    );
    Device { conn, _dir: dir }
}

struct Served {
    child: Child,
    config: std::path::PathBuf,
    base_url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oversync-server"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("OVERSYNC_LISTEN")
        .env_remove("OVERSYNC_CONFIG")
        .env("OVERSYNC_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

async fn spawn(config: &Path, base_url: &str) -> Child {
    let mut child = binary()
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("oversync-server exited before serving: {status}");
        }
        if let Ok(r) = http.get(format!("{base_url}/syncx/health")).send().await
            && r.status().is_success()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Served {
    /// SIGTERM, wait for a clean exit, start again on the same address.
    async fn restart(&mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "a drained server exits cleanly: {status}");
        self.child = spawn(&self.config, &self.base_url).await;
    }
}

/// A migrated database and the binary serving the `notes` schema on it.
async fn start() -> (Served, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = PgCluster::shared()
        .unwrap()
        .create_database()
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("oversync.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_timeout_seconds = 20\n\
             [database]\nurl = \"{}\"\n\
             [sync]\nschema = \"app\"\nmigrations_dir = \"server-migrations\"\n",
            db.url
        ),
    )
    .unwrap();
    let mut probe = device("http://127.0.0.1:1", "probe");
    let schema = read_tables(&mut probe.conn, "app", &[]).unwrap();
    write_server_migration(&dir.path().join("server-migrations"), "initial", &schema)
        .unwrap()
        .unwrap();
    let out = binary()
        .args(["migrate", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base_url = format!("http://127.0.0.1:{port}");
    let child = spawn(&config, &base_url).await;
    (
        Served {
            child,
            config,
            base_url,
        },
        db.url,
        dir,
    )
}

async fn count(db_url: &str, sql: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
    drop(client);
    let _ = driver.await;
    n
}

/// Waits until `sql` counts something: the restart must hit the middle of the transfer.
async fn until_positive(db_url: &str, sql: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while count(db_url, sql).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never observed: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn server_notes(db_url: &str, user: &str) -> Vec<(String, String)> {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT id::text, body FROM app.notes WHERE _sync_scope_id = $1 ORDER BY id::text",
            &[&user],
        )
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn local_notes(d: &mut Device) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = notes::table
        .select((notes::id, notes::body))
        .load(&mut *d.conn)
        .unwrap();
    rows.sort();
    rows
}

/// Syncs until it succeeds: a sync whose retries ran out during the restart is simply
/// run again, as an app would on its next trigger.
async fn sync_until_ok(d: &mut Device) {
    let mut errors = Vec::new();
    while let Err(e) = d.conn.oversync().sync().await {
        errors.push(e.to_string());
        assert!(errors.len() < 5, "sync keeps failing: {errors:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_a_20k_row_push_and_a_snapshot_loses_nothing() {
    common::init_logs();
    let (mut served, db_url, _dir) = start().await;
    let user = format!("u-{}", uuid::Uuid::new_v4().simple());
    let mut a = device(&served.base_url, &user);
    a.conn.oversync().attach(&user).await.unwrap();
    let written: Vec<Note> = (0..ROWS)
        .map(|i| Note {
            id: new_id(),
            body: format!("note {i}"),
        })
        .collect();
    a.conn
        .transaction(|c| {
            for part in written.chunks(500) {
                diesel::insert_into(notes::table).values(part).execute(c)?;
            }
            diesel::QueryResult::Ok(())
        })
        .unwrap();

    // Restart once the server has staged part of the push.
    let (pushed, ()) = tokio::join!(sync_until_ok(&mut a), async {
        until_positive(&db_url, "SELECT count(*) FROM sync.push_session_rows").await;
        served.restart().await;
    });
    let () = pushed;
    let on_server = server_notes(&db_url, &user).await;
    assert_eq!(on_server.len(), ROWS, "every row committed exactly once");
    assert_eq!(local_notes(&mut a), on_server);
    assert_eq!(
        count(&db_url, "SELECT count(*) FROM sync.bundle_log").await,
        1,
        "the push committed as one bundle"
    );

    // A second device downloads the 20k rows as a snapshot; restart in the middle.
    let mut b = device(&served.base_url, &user);
    let (attached, ()) = tokio::join!(
        async {
            let mut errors = Vec::new();
            loop {
                match b.conn.oversync().attach(&user).await {
                    Ok(outcome) => break outcome,
                    Err(e) => {
                        errors.push(e.to_string());
                        assert!(errors.len() < 5, "attach keeps failing: {errors:?}");
                    }
                }
            }
        },
        async {
            until_positive(&db_url, "SELECT count(*) FROM sync.snapshot_sessions").await;
            served.restart().await;
        }
    );
    assert!(
        matches!(
            attached,
            oversync_diesel::AttachOutcome::UsedRemoteState { rows, .. } if rows as usize == ROWS
        ),
        "{attached:?}"
    );
    sync_until_ok(&mut b).await;
    assert_eq!(local_notes(&mut b), on_server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_finishes_running_requests_refuses_new_ones_and_ends_watch_streams() {
    let srv = server().await;
    let api = Api::new(&srv, "alice");
    api.connect(false).await;
    assert_eq!(
        api.push(1, vec![user_row(&new_id(), "a")]).await.0,
        StatusCode::OK
    );
    let mut watch = api
        .request(reqwest::Method::GET, "/sync/watch?after_bundle_seq=1")
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), StatusCode::OK);

    // Hold one request inside the server: its transaction waits for a row lock we hold.
    let (mut holder, conn) = tokio_postgres::connect(&srv.database().url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM sync.user_state WHERE user_id = 'alice' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let running = tokio::spawn({
        let api = api.with_source(api.source());
        async move { api.connect(false).await }
    });
    let service = srv.service().clone();
    let wait_blocked = async {
        while count(
            &srv.database().url,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .await
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_blocked.await;
    assert_eq!(service.requests_in_flight(), 1);
    let drain = tokio::spawn({
        let service = service.clone();
        async move { service.drain(Duration::from_secs(60)).await }
    });
    while !service.is_draining() {
        tokio::task::yield_now().await;
    }

    // New requests: 503 with Retry-After; health says the same to a load balancer.
    let refused = api
        .request(reqwest::Method::GET, "/sync/capabilities")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "service_unavailable", "{body}");
    let health = reqwest::get(format!("{}/syncx/health", srv.base_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The watch stream ends (after its heartbeat comments, if any).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = watch.chunk().await.unwrap() {
            assert!(!String::from_utf8_lossy(&chunk).contains("event: bundle"));
        }
    })
    .await;
    assert!(ended.is_ok(), "watch stream ended on drain");

    // The running request finishes normally once its lock is released; then drained.
    assert!(!drain.is_finished());
    tx.rollback().await.unwrap();
    let answer = running.await.unwrap();
    assert_eq!(answer["resolution"], "remote_authoritative", "{answer}");
    assert_eq!(drain.await.unwrap(), DrainOutcome::Drained);
}
