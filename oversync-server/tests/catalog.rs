//! Past one database: every per-user table of the `sync` schema has the user first in its
//! primary key and in each unique index, read from the live catalog, so the schema can be
//! distributed by user. Older databases whose session tables were keyed by session id are
//! upgraded by bootstrap.

mod common;

use oversync_server::demo::{self, DemoConfig};

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
    let db = oversync_testkit::PgCluster::shared()
        .expect("cluster")
        .create_database()
        .await
        .expect("db");
    {
        let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(conn);
        // The shape of the session tables before they were keyed by user.
        client
            .batch_execute(
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
            .await
            .expect("old shape");
        drop(client);
        let _ = driver.await;
    }
    assert!(!violations(&unique_indexes(&db.url).await).is_empty());
    let app = demo::build_app(DemoConfig::new(&db.url))
        .await
        .expect("bootstrap upgrades");
    let bad = violations(&unique_indexes(&db.url).await);
    assert!(bad.is_empty(), "{bad:#?}");
    app.service.shutdown();
}
