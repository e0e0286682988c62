//! Bounded history: the count and age rules, applied at commit and by the background
//! sweep in small batches, never past an open snapshot session or an active
//! initialization lease, and never the newest bundle.

mod common;

use common::*;
use oversync_server::retention::RetentionConfig;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

async fn sql_i64(url: &str, sql: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let n: i64 = client.query_one(sql, &[]).await.expect(sql).get(0);
    drop(client);
    let _ = driver.await;
    n
}

async fn exec(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = driver.await;
}

async fn push_n(api: &Api, n: i64) {
    for i in 1..=n {
        let (s, b) = api
            .push(i, vec![user_row(&new_id(), &format!("u{i}"))])
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
}

const FLOOR: &str = "SELECT retained_bundle_floor FROM sync.user_state WHERE user_id = 'alice'";
const LOGGED: &str = "SELECT count(*) FROM sync.bundle_log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_bounded_under_a_steady_write_load() {
    let srv = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.retained_bundles_per_user = 5;
        c.limits.retention_prune_batch = 2;
    })
    .await
    .expect("server");
    let url = srv.database().url.clone();
    let api = Api::new(&srv, "alice");
    api.connect(false).await;
    for i in 1..=40 {
        let (s, b) = api
            .push(i, vec![user_row(&new_id(), &format!("u{i}"))])
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        // Each commit moves the floor by at most one batch, so the backlog stays small.
        assert!(sql_i64(&url, LOGGED).await <= 5 + 2, "after push {i}");
    }
    srv.service().sweep_retention().await.expect("sweep");
    assert_eq!(sql_i64(&url, LOGGED).await, 5);
    assert_eq!(sql_i64(&url, FLOOR).await, 35);
    assert_eq!(
        sql_i64(
            &url,
            "SELECT count(DISTINCT bundle_seq) FROM sync.bundle_rows"
        )
        .await,
        5,
        "bundle rows go with their bundles"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_age_rule_prunes_in_batches_but_not_past_snapshots_leases_or_the_head() {
    let srv = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.retained_bundles_per_user = 0;
        c.limits.retention_prune_batch = 2;
        c.retention = RetentionConfig {
            max_age: Some(Duration::from_secs(24 * 3600)),
            sweep_interval: None,
        };
    })
    .await
    .expect("server");
    let url = srv.database().url.clone();
    let api = Api::new(&srv, "alice");
    api.connect(false).await;
    push_n(&api, 10).await;
    assert_eq!(sql_i64(&url, LOGGED).await, 10, "young bundles are kept");

    // Bundles 1..=7 are two days old.
    exec(
        &url,
        "UPDATE sync.bundle_log SET committed_at = now() - interval '2 days' WHERE bundle_seq <= 7",
    )
    .await;
    // An open snapshot session at 10 does not hold anything back from the age rule
    // (the floor stays below 10), one at 4 does.
    let (s, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    exec(
        &url,
        "UPDATE sync.snapshot_sessions SET snapshot_bundle_seq = 4",
    )
    .await;
    assert_eq!(srv.service().sweep_retention().await.expect("sweep"), 3);
    assert_eq!(sql_i64(&url, FLOOR).await, 3, "floor < snapshot_bundle_seq");
    let snapshot_id = snap["snapshot_id"].as_str().expect("id");
    let (s, _) = api
        .delete(&format!("/sync/snapshot-sessions/{snapshot_id}"))
        .await;
    assert!(s.is_success());
    // Batches of 2: several transactions, one sweep.
    assert_eq!(srv.service().sweep_retention().await.expect("sweep"), 4);
    assert_eq!(sql_i64(&url, FLOOR).await, 7);
    assert_eq!(sql_i64(&url, LOGGED).await, 3);

    // Everything old: the newest bundle is still kept, so a device at the head pulls.
    exec(
        &url,
        "UPDATE sync.bundle_log SET committed_at = now() - interval '2 days'",
    )
    .await;
    srv.service().sweep_retention().await.expect("sweep");
    assert_eq!(sql_i64(&url, FLOOR).await, 9);
    let (s, b) = api.get("/sync/pull?after_bundle_seq=10").await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // An active initialization lease freezes the user's floor.
    let bob = Api::new(&srv, "bob");
    bob.connect(false).await;
    push_n(&bob, 4).await;
    exec(
        &url,
        "UPDATE sync.bundle_log b SET committed_at = now() - interval '2 days'
           FROM sync.user_state u WHERE u.user_pk = b.user_pk AND u.user_id = 'bob';
         UPDATE sync.user_state SET scope_state = 1, lease_expires_at = now() + interval '1 hour',
           initializer_source_id = 'x', initialization_id = gen_random_uuid() WHERE user_id = 'bob'",
    )
    .await;
    srv.service().sweep_retention().await.expect("sweep");
    let bob_floor = "SELECT retained_bundle_floor FROM sync.user_state WHERE user_id = 'bob'";
    assert_eq!(sql_i64(&url, bob_floor).await, 0);
    exec(
        &url,
        "UPDATE sync.user_state SET lease_expires_at = now() - interval '1 second' WHERE user_id = 'bob'",
    )
    .await;
    srv.service().sweep_retention().await.expect("sweep");
    assert_eq!(sql_i64(&url, bob_floor).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sweep_runs_on_its_own() {
    let srv = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.retained_bundles_per_user = 0;
        c.retention = RetentionConfig {
            max_age: Some(Duration::from_secs(3600)),
            sweep_interval: Some(Duration::from_millis(50)),
        };
    })
    .await
    .expect("server");
    let url = srv.database().url.clone();
    let api = Api::new(&srv, "alice");
    api.connect(false).await;
    push_n(&api, 5).await;
    exec(
        &url,
        "UPDATE sync.bundle_log SET committed_at = now() - interval '2 hours'",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sql_i64(&url, FLOOR).await != 4 {
        assert!(tokio::time::Instant::now() < deadline, "sweep never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sql_i64(&url, LOGGED).await, 1);
}

/// What the sync tables' old foreign keys cascaded, now that `row_state` and `bundle_rows`
/// have none (a commit paid a key check per row): a user deleted by hand takes every row of
/// theirs along, and only theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_deletes_all_of_their_sync_rows() {
    let srv = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.retained_bundles_per_user = 0;
    })
    .await
    .expect("server");
    let url = srv.database().url.clone();
    for user in ["alice", "bob"] {
        let api = Api::new(&srv, user);
        api.connect(false).await;
        push_n(&api, 3).await;
    }
    let per_user = |table: &str, user: &str| {
        format!(
            "SELECT count(*) FROM sync.{table} t JOIN sync.user_state u USING (user_pk) WHERE u.user_id = '{user}'"
        )
    };
    // Three one-row bundles each.
    for table in ["row_state", "bundle_rows", "bundle_log"] {
        assert_eq!(sql_i64(&url, &per_user(table, "alice")).await, 3, "{table}");
    }
    let rows_of_all =
        "SELECT (SELECT count(*) FROM sync.row_state) + (SELECT count(*) FROM sync.bundle_rows)
                            + (SELECT count(*) FROM sync.bundle_log)";
    assert_eq!(sql_i64(&url, rows_of_all).await, 18);
    exec(&url, "DELETE FROM sync.user_state WHERE user_id = 'alice'").await;
    assert_eq!(
        sql_i64(&url, rows_of_all).await,
        9,
        "alice's rows are gone, bob's are kept"
    );
    for table in ["row_state", "bundle_rows", "bundle_log"] {
        assert_eq!(sql_i64(&url, &per_user(table, "bob")).await, 3, "{table}");
    }
}
