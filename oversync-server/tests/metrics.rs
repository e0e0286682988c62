//! `GET /metrics` after some traffic, and the request id echoed on every answer.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/plain; version=0.0.4")
    );
    resp.text().await.expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_and_requests_carry_an_id() {
    let srv = server().await;
    let before = scrape(srv.base_url()).await;
    assert_eq!(value(&before, "oversync_bundles_committed_total"), 0.0);

    let a = Api::new(&srv, "alice");
    a.connect(false).await;
    let id = new_id();
    let (s, b) = a
        .push(1, vec![user_row(&id, "a"), user_row(&new_id(), "b")])
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = a.get("/sync/pull?after_bundle_seq=0").await;
    assert_eq!(s, StatusCode::OK);
    let (s, snap) = a.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    all_snapshot_rows(&a, snap["snapshot_id"].as_str().expect("id"), 1).await;
    // A stale base version: push_conflict.
    let stale = a.with_source(&new_id());
    stale.connect(false).await;
    let (s, b) = stale.push(1, vec![user_row(&id, "again")]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    // Below the retained floor: history_pruned.
    oversync_server::retention::set_retained_floor(srv.service(), "alice", 1)
        .await
        .expect("floor");
    let (s, b) = a.get("/sync/pull?after_bundle_seq=0").await;
    assert_error(s, &b, StatusCode::CONFLICT, "history_pruned");
    let mut watch = a
        .request(reqwest::Method::GET, "/sync/watch?after_bundle_seq=1")
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);

    let text = scrape(srv.base_url()).await;
    assert_eq!(value(&text, "oversync_bundles_committed_total"), 1.0);
    assert_eq!(value(&text, "oversync_rows_committed_total"), 2.0);
    assert_eq!(value(&text, "oversync_pull_rows_served_total"), 2.0);
    assert_eq!(value(&text, "oversync_snapshot_rows_served_total"), 2.0);
    assert_eq!(value(&text, "oversync_push_conflicts_total"), 1.0);
    assert_eq!(value(&text, "oversync_history_pruned_total"), 1.0);
    assert_eq!(value(&text, "oversync_watch_subscribers"), 1.0);
    assert!(value(&text, "oversync_db_pool_max_size") >= 2.0);
    let pulls = r#"oversync_http_requests_total{route="/sync/pull",method="GET",status="200"}"#;
    assert_eq!(value(&text, pulls), 1.0);
    let pruned = r#"oversync_http_requests_total{route="/sync/pull",method="GET",status="409"}"#;
    assert_eq!(value(&text, pruned), 1.0);
    let chunks = r#"oversync_http_request_duration_seconds_count{route="/sync/snapshot-sessions/{snapshot_id}",method="GET",status="200"}"#;
    assert_eq!(value(&text, chunks), 2.0);
    let inf = r#"oversync_http_request_duration_seconds_bucket{route="/sync/pull",method="GET",status="200",le="+Inf"}"#;
    assert_eq!(value(&text, inf), 1.0);
    drop(watch.chunk());

    // Request ids: a sane one is echoed, a missing or hostile one is replaced.
    let sent = a
        .request(reqwest::Method::GET, "/sync/capabilities")
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("request");
    assert_eq!(sent.headers()["x-request-id"], "req-42");
    let generated = a
        .request(reqwest::Method::GET, "/sync/capabilities")
        .send()
        .await
        .expect("request");
    let id = generated.headers()["x-request-id"].to_str().expect("id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let hostile = a
        .request(reqwest::Method::GET, "/sync/capabilities")
        .header("x-request-id", "a b\tc")
        .send()
        .await
        .expect("request");
    assert_ne!(hostile.headers()["x-request-id"], "a b\tc");
    // Errors carry it too.
    let (s, _) = a.get("/sync/pull?after_bundle_seq=-1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let err = a
        .request(reqwest::Method::GET, "/sync/pull?after_bundle_seq=-1")
        .header("x-request-id", "bad-1")
        .send()
        .await
        .expect("request");
    assert_eq!(err.headers()["x-request-id"], "bad-1");
}
