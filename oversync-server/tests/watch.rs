//! `GET /sync/watch` over Server-Sent Events.

mod common;

use common::*;
use reqwest::StatusCode;
use std::time::Duration;

#[tokio::test]
async fn watch_sends_bundle_hints_and_heartbeats() {
    init_logs();
    let server = oversync_testkit::TestServer::start_async_with(|c| {
        c.watch.heartbeat = Duration::from_millis(300);
    })
    .await
    .expect("server");
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    assert_eq!(
        api.push(1, vec![user_row(&new_id(), "a")]).await.0,
        StatusCode::OK
    );

    let open = |after: i64| {
        api.http
            .get(format!("{}/sync/watch?after_bundle_seq={after}", api.base))
            .bearer_auth(api.token.as_deref().expect("token"))
            .header("Oversync-Source-ID", api.source())
            .send()
    };
    // Behind already: an immediate hint for bundle 1.
    let mut behind = open(0).await.expect("watch");
    assert_eq!(behind.status(), StatusCode::OK);
    assert!(
        behind.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    read_until(&mut behind, &mut buf, "\"bundle_seq\":1").await;
    assert!(buf.contains("event: bundle"), "{buf}");
    drop(behind);

    // Up to date: heartbeats, then a hint when another device commits.
    let mut resp = open(1).await.expect("watch");
    let mut buf = String::new();
    read_until(&mut resp, &mut buf, ": heartbeat").await;
    assert!(!buf.contains("event: bundle"), "{buf}");
    let (s, subs) = api.get("/test/watch-subscribers?user_id=alice").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(subs["subscriber_count"], 1);
    let other = api.with_source(&new_id());
    assert_eq!(
        other.push(1, vec![user_row(&new_id(), "b")]).await.0,
        StatusCode::OK
    );
    read_until(&mut resp, &mut buf, "\"bundle_seq\":2").await;
    let line = buf
        .lines()
        .find(|l| l.starts_with("data:") && l.contains("\"bundle_seq\":2"))
        .expect("data line");
    let event: oversync_protocol::BundleChangeEvent =
        serde_json::from_str(line.trim_start_matches("data:").trim()).expect("event json");
    assert_eq!(event.source_id.as_deref(), Some(other.source()));
    assert_eq!(event.source_bundle_id, Some(1));

    let (s, b) = api.get("/sync/watch?after_bundle_seq=-1").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, b) = api.get("/sync/watch?after_bundle_seq=abc").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn watch_disabled_is_503() {
    let server = oversync_testkit::TestServer::start_async_with(|c| {
        c.watch.enabled = false;
    })
    .await
    .expect("server");
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let (s, b) = api.get("/sync/watch").await;
    assert_error(
        s,
        &b,
        StatusCode::SERVICE_UNAVAILABLE,
        "bundle_change_watch_disabled",
    );
    let (_, caps) = api.get("/sync/capabilities").await;
    assert_eq!(caps["features"]["bundle_change_watch"], false);
}
