//! Snapshot builds under load: an abandoned `POST /sync/snapshot-sessions` must not leave its
//! statement running in PostgreSQL (a client retry would otherwise stack a second build).

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

/// Backends of the server's database waiting for the test's lock on `business.users`: the
/// snapshot build, blocked. Asked on a connection outside any transaction and from
/// `pg_locks` (read live): `pg_stat_activity` is frozen for the rest of a transaction at its
/// first read, which made this test pass or fail by when it first looked.
async fn running_builds(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(DISTINCT pid) FROM pg_locks
         WHERE NOT granted AND relation = 'business.users'::regclass",
        &[],
    )
    .await
    .expect("pg_locks")
    .get(0)
}

/// Waits (bounded) until `running_builds` is `want`; returns the last count seen.
async fn await_running_builds(db: &tokio_postgres::Client, want: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = running_builds(db).await;
        if n == want || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_snapshot_build_is_cancelled_in_postgres() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let (s, b) = api.push(1, vec![user_row(&new_id(), "ann")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let connect = || async {
        let (db, connection) =
            tokio_postgres::connect(&server.database().url, tokio_postgres::NoTls)
                .await
                .expect("connect to the server's database");
        tokio::spawn(connection);
        db
    };
    let db = connect().await;
    let observer = connect().await;
    // Holding this lock makes the snapshot copy wait: a build that outlives its request.
    db.batch_execute("BEGIN; LOCK TABLE business.users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock users");

    // A client that gives up: its request is dropped once the copy statement is running
    // (blocked on the lock), so the check below proves a cancel of a started statement, not a
    // build that never began, and no client timeout races with the server's progress.
    let abandoned = api.with_source(api.source());
    let request = tokio::spawn(async move {
        abandoned
            .request(reqwest::Method::POST, "/sync/snapshot-sessions")
            .json(&json!({}))
            .send()
            .await
    });
    assert_eq!(
        await_running_builds(&observer, 1).await,
        1,
        "the snapshot copy statement never started"
    );
    request.abort();
    assert!(
        request.await.expect_err("aborted").is_cancelled(),
        "the blocked build answered"
    );

    // The server notices the closed connection and cancels the waiting statement.
    assert_eq!(
        await_running_builds(&observer, 0).await,
        0,
        "the abandoned snapshot statement is still running in PostgreSQL"
    );

    db.batch_execute("COMMIT").await.expect("unlock");
    let (s, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    assert_eq!(snap["row_count"], 1);
    let sessions: i64 = db
        .query_one("SELECT count(*) FROM sync.snapshot_sessions", &[])
        .await
        .expect("count sessions")
        .get(0);
    assert_eq!(sessions, 1, "the cancelled build left no session behind");
}
