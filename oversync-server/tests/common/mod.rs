//! Shared helpers of the server tests: an HTTP client speaking to the in-process server.
#![allow(dead_code)]

use oversync_protocol::{
    BundleHasher, BundleRow, CommittedBundleRowsResponse, SnapshotChunkResponse,
};
use oversync_testkit::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Sends server logs (errors behind 500s) to the test output.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub source: Option<String>,
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub async fn server() -> TestServer {
    init_logs();
    TestServer::start_async().await.expect("test server starts")
}

impl Api {
    pub fn new(server: &TestServer, user: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: server.base_url().to_owned(),
            token: Some(server.token(user)),
            source: Some(new_id()),
        }
    }

    pub fn with_source(&self, source: &str) -> Api {
        Api {
            http: self.http.clone(),
            base: self.base.clone(),
            token: self.token.clone(),
            source: Some(source.to_owned()),
        }
    }

    pub fn source(&self) -> &str {
        self.source.as_deref().unwrap_or("")
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = &self.source {
            req = req.header("Oversync-Source-ID", s);
        }
        req
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request is sent");
        let status = resp.status();
        let text = resp.text().await.expect("body is read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("Content-Type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn connect(&self, pending: bool) -> Value {
        let (s, b) = self
            .post("/sync/connect", json!({"has_local_pending_rows": pending}))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    }

    /// Creates, uploads (one chunk) and commits; returns (status, body) of the first failing
    /// step or of the commit.
    pub async fn push(&self, source_bundle_id: i64, rows: Vec<Value>) -> (StatusCode, Value) {
        let chunk = rows.len().max(1);
        self.push_in_chunks(source_bundle_id, rows, chunk).await
    }

    /// [`Api::push`] uploading `chunk` rows per request.
    pub async fn push_in_chunks(
        &self,
        source_bundle_id: i64,
        rows: Vec<Value>,
        chunk: usize,
    ) -> (StatusCode, Value) {
        let (s, b) = self
            .post(
                "/sync/push-sessions",
                json!({"source_bundle_id": source_bundle_id, "planned_row_count": rows.len()}),
            )
            .await;
        if s != StatusCode::OK || b["status"] != "staging" {
            return (s, b);
        }
        let push_id = b["push_id"].as_str().expect("push_id").to_owned();
        for (i, part) in rows.chunks(chunk.max(1)).enumerate() {
            let (s, b) = self
                .post(
                    &format!("/sync/push-sessions/{push_id}/chunks"),
                    json!({"start_row_ordinal": i * chunk.max(1), "rows": part}),
                )
                .await;
            if s != StatusCode::OK {
                return (s, b);
            }
        }
        self.post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
            .await
    }

    /// Fetches all committed rows of a bundle page by page and checks `bundle_hash`.
    pub async fn committed_rows(&self, bundle_seq: i64, page: i64) -> Vec<BundleRow> {
        let mut rows = Vec::new();
        let mut hasher = BundleHasher::new();
        let mut after: Option<i64> = None;
        let expected_hash;
        loop {
            let q = match after {
                Some(a) => format!("?after_row_ordinal={a}&max_rows={page}"),
                None => format!("?max_rows={page}"),
            };
            let (s, b) = self
                .get(&format!("/sync/committed-bundles/{bundle_seq}/rows{q}"))
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            let resp: CommittedBundleRowsResponse = serde_json::from_value(b).expect("shape");
            for r in &resp.rows {
                hasher.push(r);
            }
            rows.extend(resp.rows);
            if !resp.has_more {
                expected_hash = resp.bundle_hash;
                assert_eq!(resp.row_count as usize, rows.len());
                break;
            }
            after = Some(resp.next_row_ordinal);
        }
        assert_eq!(hasher.finish(), expected_hash, "bundle_hash verifies");
        rows
    }
}

pub fn user_row(id: &str, name: &str) -> Value {
    json!({
        "schema": "business", "table": "users", "key": {"id": id}, "op": "INSERT",
        "base_row_version": 0,
        "payload": {"id": id, "name": name, "email": format!("{name}@example.com")}
    })
}

pub fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "unexpected status, body: {body}");
    assert_eq!(
        body["error"], want_code,
        "unexpected error code, body: {body}"
    );
    assert!(body["message"].is_string(), "message present: {body}");
}

/// All rows of a snapshot session, fetched in pages of `page` rows.
pub async fn all_snapshot_rows(api: &Api, snapshot_id: &str, page: i64) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let (s, b) = api
            .get(&format!(
                "/sync/snapshot-sessions/{snapshot_id}?after_row_ordinal={after}&max_rows={page}"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let chunk: SnapshotChunkResponse = serde_json::from_value(b.clone()).expect("shape");
        assert!(chunk.rows.len() as i64 <= page);
        rows.extend(b["rows"].as_array().expect("rows").iter().cloned());
        after = chunk.next_row_ordinal;
        if !chunk.has_more {
            return rows;
        }
    }
}

/// Reads the SSE stream until `needle` appears (or fails after a timeout).
pub async fn read_until(resp: &mut reqwest::Response, buf: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !buf.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {buf:?}"))
            .expect("stream read");
        match chunk {
            Some(bytes) => buf.push_str(&String::from_utf8_lossy(&bytes)),
            None => panic!("stream ended before {needle:?}; got {buf:?}"),
        }
    }
}
