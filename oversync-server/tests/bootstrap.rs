//! Bootstrap validation of the registered schema, and the example binary.

use oversync_server::{BootstrapError, ServiceConfig, SyncService, TableSpec};
use oversync_testkit::PgCluster;
use std::str::FromStr;

async fn fresh_db(ddl: &str) -> tokio_postgres::Config {
    let cluster = PgCluster::shared().expect("cluster");
    let db = cluster.create_database().await.expect("database");
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client.batch_execute(ddl).await.expect("ddl");
    tokio_postgres::Config::from_str(&db.url).expect("url")
}

async fn bootstrap_error(ddl: &str, tables: Vec<TableSpec>) -> String {
    let pg = fresh_db(ddl).await;
    match SyncService::start(pg, ServiceConfig::new("t", tables)).await {
        Ok(_) => panic!("bootstrap should fail for: {ddl}"),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    BootstrapError::Unsupported { .. } | BootstrapError::InvalidConfig(_)
                ),
                "{e}"
            );
            e.to_string()
        }
    }
}

const PARENT: &str = "CREATE SCHEMA app;
    CREATE TABLE app.parent (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL, PRIMARY KEY (_sync_scope_id, id));";

#[tokio::test]
async fn unsupported_schemas_fail_closed_naming_table_and_rule() {
    let t = |name: &str| TableSpec::new("app", name, "id");
    let cases: Vec<(String, Vec<TableSpec>, &str)> = vec![
        ("CREATE SCHEMA app;".into(), vec![t("missing")], "does not exist"),
        (
            "CREATE SCHEMA app; CREATE TABLE app.t (id UUID PRIMARY KEY);".into(),
            vec![t("t")],
            "_sync_scope_id TEXT NOT NULL",
        ),
        (
            "CREATE SCHEMA app; CREATE TABLE app.t (_sync_scope_id TEXT, id UUID NOT NULL, UNIQUE (_sync_scope_id, id));"
                .into(),
            vec![t("t")],
            "_sync_scope_id TEXT NOT NULL",
        ),
        (
            "CREATE SCHEMA app; CREATE TABLE app.t (_sync_scope_id TEXT NOT NULL, id BIGINT NOT NULL, PRIMARY KEY (_sync_scope_id, id));"
                .into(),
            vec![t("t")],
            "only uuid and text",
        ),
        (
            "CREATE SCHEMA app; CREATE TABLE app.t (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL);".into(),
            vec![t("t")],
            "unique constraint on (_sync_scope_id, id)",
        ),
        (
            "CREATE SCHEMA app; CREATE TABLE app.t (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL, n TEXT, PRIMARY KEY (_sync_scope_id, id));
             CREATE UNIQUE INDEX t_partial ON app.t (_sync_scope_id, n) WHERE n IS NOT NULL;"
                .into(),
            vec![t("t")],
            "partial or expression unique index t_partial",
        ),
        (
            "CREATE SCHEMA app; CREATE TABLE app.t (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL, n TEXT, PRIMARY KEY (_sync_scope_id, id), UNIQUE (n));"
                .into(),
            vec![t("t")],
            "must begin with _sync_scope_id",
        ),
        (
            format!("{PARENT} CREATE TABLE app.child (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL, p UUID, PRIMARY KEY (_sync_scope_id, id),
               FOREIGN KEY (_sync_scope_id, p) REFERENCES app.parent (_sync_scope_id, id));"),
            vec![t("parent"), t("child")],
            "must be DEFERRABLE",
        ),
        (
            format!("{PARENT} CREATE TABLE app.child (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL, p UUID, PRIMARY KEY (_sync_scope_id, id),
               FOREIGN KEY (_sync_scope_id, p) REFERENCES app.parent (_sync_scope_id, id) DEFERRABLE);"),
            vec![t("child")],
            "FK-closed",
        ),
        (
            format!("{PARENT} ALTER TABLE app.parent ADD COLUMN name TEXT, ADD UNIQUE (_sync_scope_id, name);
               CREATE TABLE app.child (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL, pname TEXT, PRIMARY KEY (_sync_scope_id, id),
               FOREIGN KEY (_sync_scope_id, pname) REFERENCES app.parent (_sync_scope_id, name) DEFERRABLE);"),
            vec![t("child"), t("parent")],
            "must be scope-inclusive",
        ),
        (PARENT.into(), vec![TableSpec::new("app", "Parent", "id")], "must match"),
        (
            PARENT.into(),
            vec![TableSpec::new("app", "parent", "_sync_scope_id")],
            "cannot be the sync key",
        ),
    ];
    for (ddl, tables, rule) in cases {
        let message = bootstrap_error(&ddl, tables).await;
        assert!(message.contains("app."), "names the table: {message}");
        assert!(
            message.contains(rule),
            "{message:?} should mention {rule:?}"
        );
    }
}

#[tokio::test]
async fn supported_schema_bootstraps_idempotently_with_text_keys() {
    let ddl = format!(
        "{PARENT} CREATE TABLE app.notes (_sync_scope_id TEXT NOT NULL, id TEXT NOT NULL, parent_id UUID,
           PRIMARY KEY (_sync_scope_id, id),
           FOREIGN KEY (_sync_scope_id, parent_id) REFERENCES app.parent (_sync_scope_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);"
    );
    let pg = fresh_db(&ddl).await;
    let tables = vec![
        TableSpec::new("app", "parent", "id"),
        TableSpec::new("app", "notes", "id"),
    ];
    let first = SyncService::start(pg.clone(), ServiceConfig::new("t", tables.clone()))
        .await
        .expect("bootstrap");
    let ids: Vec<i32> = first.registry().tables().iter().map(|t| t.id).collect();
    first.shutdown();
    let second = SyncService::start(pg, ServiceConfig::new("t", tables))
        .await
        .expect("second bootstrap");
    let again: Vec<i32> = second.registry().tables().iter().map(|t| t.id).collect();
    assert_eq!(ids, again, "table ids are stable across restarts");
    // A text-keyed row written by the server shows up as a bundle with a text key.
    let write = second
        .begin_server_write("u1", "admin")
        .await
        .expect("begin");
    write
        .client()
        .execute(
            "INSERT INTO app.notes (id, parent_id) VALUES ('note-1', NULL)",
            &[],
        )
        .await
        .expect("insert");
    let bundle = write.commit().await.expect("commit");
    assert_eq!(bundle.row_count, 1);
    // Changing a key is captured as a delete of the old key and an insert of the new one.
    let write = second
        .begin_server_write("u1", "admin")
        .await
        .expect("begin");
    assert!(!write.auto_initialized);
    write
        .client()
        .execute(
            "UPDATE app.notes SET id = 'note-2' WHERE id = 'note-1'",
            &[],
        )
        .await
        .expect("update");
    let bundle = write.commit().await.expect("commit");
    assert_eq!(
        (bundle.bundle_seq, bundle.source_bundle_id, bundle.row_count),
        (2, 2, 2)
    );
    let client = second.pool().get().await.expect("client");
    let rows = client
        .query(
            "SELECT op, key_text FROM sync.bundle_rows WHERE bundle_seq = 2 ORDER BY row_ordinal",
            &[],
        )
        .await
        .expect("rows");
    let effects: Vec<(i16, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        effects,
        vec![(3, "note-1".to_owned()), (1, "note-2".to_owned())]
    );
    // An abandoned write leaves nothing behind.
    let write = second
        .begin_server_write("u1", "admin")
        .await
        .expect("begin");
    write
        .client()
        .execute("DELETE FROM app.notes", &[])
        .await
        .expect("delete");
    write.rollback().await.expect("rollback");
    let left: i64 = client
        .query_one("SELECT count(*) FROM app.notes", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 1);
    second.shutdown();
}

#[test]
fn example_binary_serves_health_on_a_fresh_database() {
    let cluster = PgCluster::shared().expect("cluster");
    let db = cluster.create_database_blocking().expect("database");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oversync-example-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", "binary-test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /syncx/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("write");
            s.read_to_string(&mut body).expect("read");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"status\":\"healthy\""), "{body}");
}

/// (op, table id, key) of bundle `seq`'s rows, sorted.
async fn sorted_keys(client: &deadpool_postgres::Object, seq: i64) -> Vec<(i16, i32, String)> {
    let mut keys: Vec<(i16, i32, String)> = bundle_effects(client, seq)
        .await
        .into_iter()
        .map(|(op, t, k, _)| (op, t, k))
        .collect();
    keys.sort();
    keys
}

/// Runs `statement` alone as a server write of scope `u1` and returns [`sorted_keys`] of the
/// bundle it committed.
async fn server_write_keys(
    service: &std::sync::Arc<SyncService>,
    client: &deadpool_postgres::Object,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<(i16, i32, String)> {
    let write = service
        .begin_server_write("u1", "admin")
        .await
        .expect("begin");
    write
        .client()
        .execute(statement, params)
        .await
        .expect("server write");
    let bundle = write.commit().await.expect("commit");
    sorted_keys(client, bundle.bundle_seq).await
}

/// `(op, table_id, key_text, payload)` of bundle `seq`, in bundle order.
async fn bundle_effects(
    client: &deadpool_postgres::Object,
    seq: i64,
) -> Vec<(i16, i32, String, Option<serde_json::Value>)> {
    client
        .query(
            "SELECT op, table_id, key_text, payload FROM sync.bundle_rows
              WHERE bundle_seq = $1 ORDER BY row_ordinal",
            &[&seq],
        )
        .await
        .expect("bundle rows")
        .iter()
        .map(|r| {
            let payload: Option<String> = r.get(3);
            (
                r.get(0),
                r.get(1),
                r.get(2),
                payload.map(|p| serde_json::from_str(&p).expect("payload json")),
            )
        })
        .collect()
}

/// Inserts are captured per statement (from its transition table), updates and deletes per
/// row: every effect of a statement is still in the bundle, including rows the app's own
/// triggers write and rows a cascade deletes, with the row as stored after BEFORE triggers.
#[tokio::test]
async fn capture_sees_multi_row_inserts_upserts_app_triggers_and_cascades() {
    let ddl = format!(
        "{PARENT}
         ALTER TABLE app.parent ADD COLUMN name TEXT;
         CREATE TABLE app.notes (_sync_scope_id TEXT NOT NULL, id TEXT NOT NULL, parent_id UUID,
           PRIMARY KEY (_sync_scope_id, id),
           FOREIGN KEY (_sync_scope_id, parent_id) REFERENCES app.parent (_sync_scope_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
         -- The app's own triggers: one rewrites the row before it is stored, one writes
         -- another registered table for every parent inserted.
         CREATE FUNCTION app.shout() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$;
         CREATE TRIGGER a_shout BEFORE INSERT ON app.parent FOR EACH ROW EXECUTE FUNCTION app.shout();
         CREATE FUNCTION app.note_parent() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO app.notes (_sync_scope_id, id, parent_id)
             VALUES (NEW._sync_scope_id, 'note-' || NEW.id, NEW.id);
             RETURN NULL;
           END $$;
         CREATE TRIGGER a_note AFTER INSERT ON app.parent FOR EACH ROW EXECUTE FUNCTION app.note_parent();"
    );
    let pg = fresh_db(&ddl).await;
    let tables = vec![
        TableSpec::new("app", "parent", "id"),
        TableSpec::new("app", "notes", "id"),
    ];
    let service = SyncService::start(pg, ServiceConfig::new("t", tables))
        .await
        .expect("bootstrap");
    let parent_id = service
        .registry()
        .by_name("app", "parent")
        .expect("parent")
        .id;
    let notes_id = service
        .registry()
        .by_name("app", "notes")
        .expect("notes")
        .id;
    let (a, b, c) = (
        "00000000-0000-4000-8000-00000000000a",
        "00000000-0000-4000-8000-00000000000b",
        "00000000-0000-4000-8000-00000000000c",
    );

    // One statement, two rows: both parents (as stored) and both notes their trigger wrote.
    let write = service
        .begin_server_write("u1", "admin")
        .await
        .expect("begin");
    let inserted = write
        .client()
        .execute(
            "INSERT INTO app.parent (id, name) VALUES ($1::text::uuid, 'a'), ($2::text::uuid, 'b')",
            &[&a, &b],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 2);
    // An insert that inserts nothing is fine, and so is updating a row inserted earlier in
    // the same bundle (one insert with the last image).
    write
        .client()
        .execute(
            "INSERT INTO app.parent (id) SELECT id FROM app.parent WHERE false",
            &[],
        )
        .await
        .expect("empty insert");
    write
        .client()
        .execute(
            "UPDATE app.parent SET name = 'B2' WHERE id = $1::text::uuid",
            &[&b],
        )
        .await
        .expect("update");
    let bundle = write.commit().await.expect("commit");
    assert_eq!(bundle.row_count, 4);
    let client = service.pool().get().await.expect("client");
    let mut effects = bundle_effects(&client, bundle.bundle_seq).await;
    effects.sort_by(|x, y| (x.1, &x.2).cmp(&(y.1, &y.2)));
    let names: Vec<(i16, i32, String, Option<serde_json::Value>)> = effects
        .into_iter()
        .map(|(op, t, k, p)| {
            let shown = p.map(|p| {
                if t == parent_id {
                    p["name"].clone()
                } else {
                    p["parent_id"].clone()
                }
            });
            (op, t, k, shown)
        })
        .collect();
    assert_eq!(
        names,
        vec![
            (1, parent_id, a.to_owned(), Some(serde_json::json!("A"))),
            (1, parent_id, b.to_owned(), Some(serde_json::json!("B2"))),
            (1, notes_id, format!("note-{a}"), Some(serde_json::json!(a))),
            (1, notes_id, format!("note-{b}"), Some(serde_json::json!(b))),
        ]
    );

    // An upsert updates one row and inserts another: an update and an insert (whose
    // trigger adds its note).
    let effects = server_write_keys(
        &service,
        &client,
        "INSERT INTO app.parent (_sync_scope_id, id, name) VALUES ('u1', $1::text::uuid, 'a2'), ('u1', $2::text::uuid, 'c')
         ON CONFLICT (_sync_scope_id, id) DO UPDATE SET name = EXCLUDED.name",
        &[&a, &c],
    )
    .await;
    assert_eq!(
        effects,
        vec![
            (1, parent_id, c.to_owned()),
            (1, notes_id, format!("note-{c}")),
            (2, parent_id, a.to_owned()),
        ]
    );

    // Deleting a parent deletes its note by cascade: both deletes are captured.
    let effects = server_write_keys(
        &service,
        &client,
        "DELETE FROM app.parent WHERE id = $1::text::uuid",
        &[&a],
    )
    .await;
    assert_eq!(
        effects,
        vec![
            (3, parent_id, a.to_owned()),
            (3, notes_id, format!("note-{a}"))
        ]
    );

    // Outside a bundle a registered table refuses inserts, one row or many.
    let err = client
        .execute(
            "INSERT INTO app.notes (_sync_scope_id, id) VALUES ('u1', 'x'), ('u1', 'y')",
            &[],
        )
        .await
        .expect_err("insert outside a bundle");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("oversync bundle context")),
        "{err:?}"
    );
    service.shutdown();
}
