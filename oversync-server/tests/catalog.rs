//! Past one database: every per-user table of the `sync` schema has the user first in its
//! primary key and in each unique index, read from the live catalog, so the schema can be
//! distributed by user. Older databases whose session tables were keyed by session id are
//! upgraded by bootstrap.

mod common;

use oversync_server::demo::{self, DemoConfig};

/// A new empty database of the shared test cluster.
async fn new_database() -> oversync_testkit::TestDatabase {
    oversync_testkit::PgCluster::shared()
        .expect("cluster")
        .create_database()
        .await
        .expect("db")
}

/// Runs `sql` on its own connection, as an older server (or an operator) would have.
async fn execute(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.expect("old shape");
    drop(client);
    let _ = driver.await;
}

/// Starts the demo server on `url` once (bootstrap runs), then stops it.
async fn bootstrap(url: &str) {
    let app = demo::build_app(DemoConfig::new(url))
        .await
        .expect("bootstrap");
    app.service.shutdown();
}

/// `(table, index, first key column)` of every unique index (primary keys included) of the
/// `sync` schema.
async fn unique_indexes(url: &str) -> Vec<(String, String, String)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT t.relname::text, i.relname::text, a.attname::text
               FROM pg_index x
               JOIN pg_class t ON t.oid = x.indrelid
               JOIN pg_class i ON i.oid = x.indexrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace
               JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
              WHERE n.nspname = 'sync' AND x.indisunique
              ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("catalog");
    drop(client);
    let _ = driver.await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn violations(indexes: &[(String, String, String)]) -> Vec<String> {
    indexes
        .iter()
        .filter(|(table, _, first)| match table.as_str() {
            // A small reference table (registered business tables), replicated whole.
            "table_catalog" => false,
            // The user table itself: both its keys are the user.
            "user_state" => first != "user_pk" && first != "user_id",
            _ => first != "user_pk",
        })
        .map(|(t, i, f)| format!("sync.{t} index {i} leads with {f}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unique_key_of_the_sync_schema_leads_with_the_user() {
    let srv = common::server().await;
    let indexes = unique_indexes(&srv.database().url).await;
    assert!(
        indexes.iter().any(|(t, _, _)| t == "bundle_rows"),
        "catalog read: {indexes:?}"
    );
    let bad = violations(&indexes);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_rekeys_session_tables_of_an_older_database() {
    common::init_logs();
    let db = new_database().await;
    // The shape of the session tables before they were keyed by user.
    execute(
        &db.url,
        "CREATE SCHEMA sync;
         CREATE TABLE sync.push_sessions (push_id UUID PRIMARY KEY);
         CREATE TABLE sync.push_session_rows (
             push_id UUID NOT NULL REFERENCES sync.push_sessions(push_id) ON DELETE CASCADE,
             row_ordinal BIGINT NOT NULL, PRIMARY KEY (push_id, row_ordinal));
         CREATE TABLE sync.snapshot_sessions (snapshot_id UUID PRIMARY KEY);
         CREATE TABLE sync.snapshot_rows (
             snapshot_id UUID NOT NULL REFERENCES sync.snapshot_sessions(snapshot_id),
             row_ordinal BIGINT NOT NULL, PRIMARY KEY (snapshot_id, row_ordinal));",
    )
    .await;
    assert!(!violations(&unique_indexes(&db.url).await).is_empty());
    let app = demo::build_app(DemoConfig::new(&db.url))
        .await
        .expect("bootstrap upgrades");
    let bad = violations(&unique_indexes(&db.url).await);
    assert!(bad.is_empty(), "{bad:#?}");
    app.service.shutdown();
}

/// Foreign keys on the per-row sync tables, and whether the user-deletion trigger is there.
async fn row_table_keys(url: &str) -> (Vec<String>, bool) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let keys = client
        .query(
            "SELECT conname::text FROM pg_constraint
              WHERE contype = 'f' AND conrelid IN ('sync.row_state'::regclass, 'sync.bundle_rows'::regclass)
              ORDER BY 1",
            &[],
        )
        .await
        .expect("constraints")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let trigger: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'sync.user_state'::regclass
                             AND tgname = 'oversync_delete_user_rows')",
            &[],
        )
        .await
        .expect("trigger")
        .get(0);
    drop(client);
    let _ = driver.await;
    (keys, trigger)
}

/// A database bootstrapped when `row_state` and `bundle_rows` still had foreign keys (checked
/// once per row at every commit) loses them on the next start, and gets the trigger that
/// deletes a deleted user's rows in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_drops_the_per_row_foreign_keys_of_an_older_database() {
    common::init_logs();
    let db = new_database().await;
    bootstrap(&db.url).await;
    assert_eq!(row_table_keys(&db.url).await, (vec![], true));
    // The constraints (and names) an older bootstrap created; no deletion trigger yet.
    execute(
        &db.url,
        "ALTER TABLE sync.row_state
           ADD CONSTRAINT row_state_user_pk_fkey FOREIGN KEY (user_pk) REFERENCES sync.user_state(user_pk) ON DELETE CASCADE,
           ADD CONSTRAINT row_state_table_id_fkey FOREIGN KEY (table_id) REFERENCES sync.table_catalog(table_id);
         ALTER TABLE sync.bundle_rows
           ADD CONSTRAINT bundle_rows_user_pk_bundle_seq_fkey FOREIGN KEY (user_pk, bundle_seq)
               REFERENCES sync.bundle_log(user_pk, bundle_seq) ON DELETE CASCADE;
         DROP TRIGGER oversync_delete_user_rows ON sync.user_state;",
    )
    .await;
    assert_eq!(row_table_keys(&db.url).await.0.len(), 3);
    let app = demo::build_app(DemoConfig::new(&db.url))
        .await
        .expect("bootstrap upgrades");
    assert_eq!(row_table_keys(&db.url).await, (vec![], true));
    app.service.shutdown();
}

/// `(relpersistence of sync.snapshot_rows, whether its old second index exists)`.
async fn snapshot_rows_shape(url: &str) -> (String, bool) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT relpersistence::text,
                    to_regclass('sync.snapshot_rows_snapshot_id_idx') IS NOT NULL
               FROM pg_class WHERE oid = 'sync.snapshot_rows'::regclass",
            &[],
        )
        .await
        .expect("catalog");
    let shape = (row.get(0), row.get(1));
    drop(client);
    let _ = driver.await;
    shape
}

/// Snapshot rows are a copy the server can make again: unlogged, with only the primary key
/// (pages read it). A database bootstrapped when they were logged and had a second index on
/// `(snapshot_id, row_ordinal)` is converted at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_are_unlogged_with_one_index_also_after_an_upgrade() {
    common::init_logs();
    let db = new_database().await;
    bootstrap(&db.url).await;
    assert_eq!(snapshot_rows_shape(&db.url).await, ("u".to_owned(), false));
    execute(
        &db.url,
        "ALTER TABLE sync.snapshot_rows SET LOGGED;
         CREATE INDEX snapshot_rows_snapshot_id_idx ON sync.snapshot_rows (snapshot_id, row_ordinal);",
    )
    .await;
    assert_eq!(snapshot_rows_shape(&db.url).await, ("p".to_owned(), true));
    let app = demo::build_app(DemoConfig::new(&db.url))
        .await
        .expect("bootstrap upgrades");
    assert_eq!(snapshot_rows_shape(&db.url).await, ("u".to_owned(), false));
    app.service.shutdown();
}
