//! Unauthenticated routes, auth, request validation and the connect lifecycle.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn health_status_capabilities_and_signin() {
    let server = server().await;
    let anon = Api {
        http: reqwest::Client::new(),
        base: server.base_url().to_owned(),
        token: None,
        source: None,
    };
    let (s, b) = anon.get("/syncx/health").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "healthy");
    assert_eq!(b["lifecycle"], "running");
    let (s, b) = anon.get("/syncx/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["registered_tables"].as_array().map(Vec::len), Some(8));
    assert_eq!(b["committed_bundle_count"], 0);

    let (s, b) = anon
        .post("/dummy-signin", json!({"user": "alice", "password": "x"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["user"], "alice");
    assert_eq!(b["expires_in"], 300);
    let token = b["token"].as_str().expect("token").to_owned();
    let (s, b) = anon.post("/dummy-signin", json!({"password": "x"})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, b) = anon.post_raw("/dummy-signin", "{not json").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");

    let api = Api {
        token: Some(token),
        source: Some(new_id()),
        ..anon
    };
    let (s, b) = api.get("/sync/capabilities").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["protocol_version"], "v1");
    assert_eq!(b["features"]["bundle_change_watch"], true);
    assert_eq!(b["features"]["connect_lifecycle"], true);
    assert_eq!(b["bundle_limits"]["max_rows_per_push_chunk"], 5000);
    assert_eq!(b["bundle_limits"]["default_rows_per_push_chunk"], 1000);
    assert_eq!(b["bundle_limits"]["max_bundles_per_pull"], 5000);
    assert!(
        b["registered_tables"]
            .as_array()
            .expect("tables")
            .contains(&json!("business.typed_rows"))
    );
}

#[tokio::test]
async fn sync_routes_require_a_valid_token_and_a_source() {
    let server = server().await;
    let good = Api::new(&server, "alice");
    let routes: [(&str, &str); 9] = [
        ("GET", "/sync/capabilities"),
        ("POST", "/sync/connect"),
        ("POST", "/sync/push-sessions"),
        ("POST", "/sync/push-sessions/x/chunks"),
        ("POST", "/sync/push-sessions/x/commit"),
        ("GET", "/sync/committed-bundles/1/rows"),
        ("GET", "/sync/pull"),
        ("GET", "/sync/watch"),
        ("POST", "/sync/snapshot-sessions"),
    ];
    let variants = [
        (None, "Authorization header required"),
        (
            Some("Basic abc".to_owned()),
            "Invalid authorization header format",
        ),
        (Some("Bearer not-a-jwt".to_owned()), "Invalid token"),
        (
            // Signed with another secret.
            Some(format!(
                "Bearer {}",
                oversync_server::demo::JwtAuth::new("other")
                    .issue("alice", std::time::Duration::from_secs(60))
                    .expect("token")
            )),
            "Invalid token",
        ),
    ];
    for (method, path) in routes {
        for (auth, text) in &variants {
            let mut req = good
                .http
                .request(
                    method.parse().expect("method"),
                    format!("{}{path}", good.base),
                )
                .header("Oversync-Source-ID", good.source());
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let resp = req.send().await.expect("sent");
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(resp.text().await.expect("body").trim(), *text);
        }
    }
    // Valid token but no source header.
    let no_source = Api {
        source: None,
        ..Api::new(&server, "alice")
    };
    let (s, b) = no_source.get("/sync/capabilities").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let long = good.with_source(&"x".repeat(300));
    let (s, b) = long.post("/sync/connect", json!({})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_client_errors() {
    let server = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.max_body_bytes = 64 * 1024;
    })
    .await
    .expect("server");
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    for (path, mistyped) in [
        ("/sync/connect", "{\"has_local_pending_rows\": \"yes\"}"),
        ("/sync/push-sessions", "{\"source_bundle_id\": \"one\"}"),
        (
            "/sync/push-sessions/00000000-0000-4000-8000-000000000000/chunks",
            "{\"start_row_ordinal\": 0, \"rows\": [{\"op\": \"UPSERT\"}]}",
        ),
    ] {
        for body in ["{", "[1,2]", "\"x\"", mistyped, ""] {
            let (s, b) = api.post_raw(path, body).await;
            assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
        }
    }
    let (s, b) = api.post_raw("/sync/snapshot-sessions", "{oops").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "snapshot_session_invalid");
    let (s, b) = api
        .post_raw("/sync/snapshot-sessions", "{\"unexpected\": 1}")
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "snapshot_session_invalid");

    let big = format!(
        "{{\"start_row_ordinal\":0,\"rows\":[],\"pad\":\"{}\"}}",
        "x".repeat(100 * 1024)
    );
    let resp = api
        .http
        .post(format!(
            "{}/sync/push-sessions/00000000-0000-4000-8000-000000000000/chunks",
            api.base
        ))
        .bearer_auth(api.token.as_deref().expect("token"))
        .header("Oversync-Source-ID", api.source())
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let b: Value = resp.json().await.expect("json error body");
    assert_eq!(b["error"], "request_too_large");
}

#[tokio::test]
async fn connect_lifecycle_with_initialization_lease() {
    let server = server().await;
    // Fresh user without local rows: initialize_empty, then remote_authoritative.
    let bob = Api::new(&server, "bob");
    let b = bob.connect(false).await;
    assert_eq!(b, json!({"resolution": "initialize_empty"}));
    let b = bob.with_source(&new_id()).connect(true).await;
    assert_eq!(b["resolution"], "remote_authoritative");

    // A user with local rows gets the lease; another source must retry later.
    let a1 = Api::new(&server, "alice");
    let a2 = a1.with_source(&new_id());
    let lease = a1.connect(true).await;
    assert_eq!(lease["resolution"], "initialize_local", "{lease}");
    let init_id = lease["initialization_id"].as_str().expect("id").to_owned();
    assert!(
        lease["lease_expires_at"]
            .as_str()
            .expect("expiry")
            .ends_with('Z')
    );
    let other = a2.connect(true).await;
    assert_eq!(other["resolution"], "retry_later");
    assert!(other["retry_after_seconds"].as_i64().expect("retry") >= 1);
    let other = a2.connect(false).await;
    assert_eq!(other["resolution"], "retry_later");
    // Reconnecting holder keeps its lease id.
    let again = a1.connect(true).await;
    assert_eq!(again["initialization_id"], init_id.as_str());

    // While initializing, pull and snapshots are refused; pushes need the lease.
    let (s, b) = a2.get("/sync/pull").await;
    assert_error(s, &b, StatusCode::CONFLICT, "scope_initializing");
    let (s, b) = a2.post("/sync/snapshot-sessions", json!({})).await;
    assert_error(s, &b, StatusCode::CONFLICT, "scope_initializing");
    let (s, b) = a1
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1}),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_session_invalid");
    let (s, b) = a2
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": init_id}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "initialization_stale");
    let (s, b) = a1
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": new_id()}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "initialization_stale");

    // The seed push with the lease initializes the scope.
    let (s, b) = a1
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": init_id}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let push_id = b["push_id"].as_str().expect("push id").to_owned();
    let id = new_id();
    let (s, b) = a1
        .post(
            &format!("/sync/push-sessions/{push_id}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [user_row(&id, "seed")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = a1
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundle_seq"], 1);
    assert_eq!(
        a2.connect(false).await["resolution"],
        "remote_authoritative"
    );
    let (s, b) = a2.get("/sync/pull").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["stable_bundle_seq"], 1);

    // Uninitialized user: pushes, pulls and snapshots are refused.
    let carol = Api::new(&server, "carol");
    let (s, b) = carol
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "scope_uninitialized");
    let (s, b) = carol
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": new_id()}),
        )
        .await;
    assert_error(s, &b, StatusCode::GONE, "initialization_expired");
    let (s, b) = carol.get("/sync/pull").await;
    assert_error(s, &b, StatusCode::CONFLICT, "scope_uninitialized");
    let (s, b) = carol.get("/sync/watch").await;
    assert_error(s, &b, StatusCode::CONFLICT, "scope_uninitialized");
}

#[tokio::test]
async fn expired_lease_returns_scope_to_next_connector() {
    let server = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.initialization_lease_ttl = std::time::Duration::from_secs(1);
    })
    .await
    .expect("server");
    let a1 = Api::new(&server, "alice");
    let lease = a1.connect(true).await;
    let init_id = lease["initialization_id"].as_str().expect("id").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (s, b) = a1
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": init_id}),
        )
        .await;
    assert_error(s, &b, StatusCode::GONE, "initialization_expired");
    let a2 = a1.with_source(&new_id());
    assert_eq!(a2.connect(true).await["resolution"], "initialize_local");
}
