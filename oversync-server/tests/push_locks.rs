//! Which locks the push requests take: a create waits only for its own source (so the
//! sources of one user do not queue behind each other's creates), a commit for the user,
//! and a create retried while its source's commit runs still answers `already_committed`.
//! Also: a commit sent down the checked path (a conflict) leaves no transaction open on the
//! server's connections.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Fails a test that would otherwise hang on a lock; not a performance bound.
const HANG: Duration = Duration::from_secs(60);

/// A connection of the test to the server's database, holding locks in an open transaction.
async fn lock_holder(server: &oversync_testkit::TestServer) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&server.database().url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client.batch_execute("BEGIN").await.expect("begin");
    client
}

/// A [`lock_holder`] that holds `user`'s lock (the key the server's user lock uses).
async fn holding_user_lock(
    server: &oversync_testkit::TestServer,
    user: &str,
) -> tokio_postgres::Client {
    let holder = lock_holder(server).await;
    holder
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&user],
        )
        .await
        .expect("user lock");
    holder
}

/// Commits `push_id` in a task of its own, so the test can watch it wait.
fn commit_in_background(api: &Api, push_id: &str) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let api = api.with_source(api.source());
    let path = format!("/sync/push-sessions/{push_id}/commit");
    tokio::spawn(async move { api.post(&path, json!({})).await })
}

/// Waits until `n` advisory lock requests are waiting in the server's database.
async fn wait_for_waiters(db: &tokio_postgres::Client, n: i64) {
    tokio::time::timeout(HANG, async {
        loop {
            let waiting: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .expect("pg_locks")
                .get(0);
            if waiting >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("requests wait for the lock");
}

async fn create(api: &Api, source_bundle_id: i64) -> Value {
    let (s, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": source_bundle_id, "planned_row_count": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

async fn upload(api: &Api, push_id: &str, row: Value) {
    let (s, b) = api
        .post(
            &format!("/sync/push-sessions/{push_id}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [row]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn a_create_does_not_wait_for_the_users_lock_a_commit_does() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let holder = holding_user_lock(&server, "alice").await;

    let b = tokio::time::timeout(HANG, create(&api, 1))
        .await
        .expect("a create does not wait for the user's lock");
    assert_eq!(b["status"], "staging", "{b}");
    let push_id = b["push_id"].as_str().expect("push_id").to_owned();
    upload(&api, &push_id, user_row(&new_id(), "n")).await;

    let committing = commit_in_background(&api, &push_id);
    wait_for_waiters(&holder, 1).await;
    assert!(!committing.is_finished(), "the commit waits for the user");
    holder.batch_execute("COMMIT").await.expect("release");
    let (s, b) = committing.await.expect("commit task");
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundle_seq"], 1, "{b}");
}

#[tokio::test]
async fn a_create_retried_during_its_commit_answers_already_committed() {
    let server = server().await;
    let api = Api::new(&server, "bob");
    api.connect(false).await;
    let b = create(&api, 1).await;
    let push_id = b["push_id"].as_str().expect("push_id").to_owned();
    upload(&api, &push_id, user_row(&new_id(), "n")).await;

    // The commit takes the source's lock, then waits for the user's; the retried create
    // waits for the source's.
    let holder = holding_user_lock(&server, "bob").await;
    let committing = commit_in_background(&api, &push_id);
    wait_for_waiters(&holder, 1).await;
    let retried = {
        let api = api.with_source(api.source());
        tokio::spawn(async move { create(&api, 1).await })
    };
    wait_for_waiters(&holder, 2).await;
    holder.batch_execute("COMMIT").await.expect("release");

    let (s, committed) = committing.await.expect("commit task");
    assert_eq!(s, StatusCode::OK, "{committed}");
    let replay = retried.await.expect("create task");
    assert_eq!(replay["status"], "already_committed", "{replay}");
    assert_eq!(replay["bundle_seq"], committed["bundle_seq"]);
    assert_eq!(replay["bundle_hash"], committed["bundle_hash"]);
    assert_eq!(replay["row_count"], 1);
}

#[tokio::test]
async fn a_commit_refused_by_a_check_leaves_no_open_transaction() {
    let server = server().await;
    let api = Api::new(&server, "carol");
    api.connect(false).await;
    let id = new_id();
    let (s, b) = api.push(1, vec![user_row(&id, "first")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Inserting the same row again is a conflict: the pipelined commit gives way to the
    // checked one, which answers it.
    for _ in 0..3 {
        let (s, b) = api.push(2, vec![user_row(&id, "again")]).await;
        assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
    }
    let (s, b) = api.push(2, vec![user_row(&new_id(), "next")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundle_seq"], 2, "{b}");

    let (db, conn) = tokio_postgres::connect(&server.database().url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let open: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(open, 0, "no pooled connection is left inside a transaction");
}
