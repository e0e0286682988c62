//! Tests of the HTTP transport: against the real example server (testkit), and against
//! small in-process fakes on 127.0.0.1 for retry, auth, decoding and timeout behaviour.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oversync_diesel::transport::{
    AuthError, StaticToken, TokenProvider, Transport, TransportConfig, TransportError, WatchEvent,
    token_fn,
};
use oversync_protocol::{
    BundleHasher, ConnectRequest, ConnectResolution, Op, PushConflictResponse, PushRequestRow,
    PushSessionChunkRequest, PushSessionCreateRequest, PushSessionCreateResponse,
    SnapshotSessionCreateRequest, codes, sync_key,
};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// Helpers

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A random user name, so tests never share a scope.
fn new_user() -> String {
    format!("transport-{}", new_id())
}

/// Short timeouts and backoff for tests.
fn fast(max_retries: u32) -> TransportConfig {
    TransportConfig {
        request_timeout: Duration::from_secs(5),
        max_retries,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
    }
}

/// A token provider answering `stale` until asked to refresh, then `fresh`; records the
/// `refresh` argument of every call.
fn recording_provider() -> (impl TokenProvider, Arc<Mutex<Vec<bool>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let provider = token_fn(move |refresh| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().map_err(|_| AuthError::new("poisoned"))?;
            seen.push(refresh);
            Ok(if seen.contains(&true) {
                "fresh"
            } else {
                "stale"
            }
            .to_string())
        }
    });
    (provider, calls)
}

fn calls_of(calls: &Arc<Mutex<Vec<bool>>>) -> Vec<bool> {
    calls.lock().expect("lock").clone()
}

fn user_row(id: &str, name: &str) -> PushRequestRow {
    PushRequestRow {
        schema: "business".into(),
        table: "users".into(),
        key: sync_key("id", id),
        op: Op::Insert,
        base_row_version: 0,
        payload: Some(json!({"id": id, "name": name, "email": format!("{name}@example.com")})),
    }
}

/// One request as a fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path_and_query: String,
    authorization: Option<String>,
    source_id: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// An axum fake on 127.0.0.1 answering every request with `respond(hit_index, request)`.
struct Fake {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start<F>(respond: F) -> Fake
    where
        F: Fn(usize, &Seen) -> Response + Send + Sync + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let respond = Arc::new(respond);
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (log, respond) = (log.clone(), respond.clone());
            async move {
                let (parts, body) = req.into_parts();
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let mut request = Seen {
                    method: parts.method.to_string(),
                    path_and_query: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                    authorization: header("authorization"),
                    source_id: header("oversync-source-id"),
                    content_type: header("content-type"),
                    body: Vec::new(),
                };
                request.body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                let index = {
                    let mut log = log.lock().expect("lock");
                    log.push(request.clone());
                    log.len() - 1
                };
                respond(index, &request)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { base, seen }
    }

    fn hits(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn caps_json() -> serde_json::Value {
    json!({"protocol_version": "v1", "schema_version": 1, "features": {"connect_lifecycle": true}})
}

/// A raw TCP server on 127.0.0.1: every accepted connection is handed to `handle`; counts
/// connections.
async fn raw_server<F, Fut>(handle: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(stream));
        }
    });
    (base, count)
}

/// Reads the request head (up to the blank line) so the client is done sending.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

// ---------------------------------------------------------------------------------------
// Against the real example server

async fn real_server() -> oversync_testkit::TestServer {
    oversync_testkit::TestServer::start_async()
        .await
        .expect("example server starts")
}

#[tokio::test]
async fn real_server_connect_push_replay_pull_snapshot_and_watch() {
    let server = real_server().await;
    let user = new_user();
    let transport =
        Transport::new(server.base_url(), StaticToken(server.token(&user))).expect("transport");
    let source = new_id();

    let caps = transport.capabilities(&source).await.expect("capabilities");
    assert_eq!(caps.protocol_version, "v1");
    assert!(caps.feature("connect_lifecycle"));
    assert!(
        caps.registered_tables.iter().any(|t| t == "business.users"),
        "{caps:?}"
    );

    let connected = transport
        .connect(
            &source,
            &ConnectRequest {
                has_local_pending_rows: false,
            },
        )
        .await
        .expect("connect");
    assert_eq!(connected.resolution, ConnectResolution::InitializeEmpty);
    assert_eq!(connected.initialization_id, None);

    // Push one row: create -> chunk -> commit.
    let id = new_id();
    let created = transport
        .create_push_session(
            &source,
            &PushSessionCreateRequest {
                source_bundle_id: 1,
                planned_row_count: 1,
                initialization_id: None,
            },
        )
        .await
        .expect("create push session");
    let PushSessionCreateResponse::Staging {
        push_id,
        planned_row_count,
        ..
    } = created
    else {
        panic!("expected a staging session, got {created:?}");
    };
    assert_eq!(planned_row_count, 1);
    let chunk = transport
        .upload_push_chunk(
            &source,
            &push_id,
            &PushSessionChunkRequest {
                start_row_ordinal: 0,
                rows: vec![user_row(&id, "ann")],
            },
        )
        .await
        .expect("upload chunk");
    assert_eq!(chunk.push_id, push_id);
    assert_eq!(chunk.next_expected_row_ordinal, 1);
    let committed = transport
        .commit_push_session(&source, &push_id)
        .await
        .expect("commit");
    assert_eq!(committed.source_id, source);
    assert_eq!(committed.source_bundle_id, 1);
    assert_eq!(committed.row_count, 1);
    assert!(committed.bundle_seq >= 1);

    // The committed rows come back, with a verifiable hash.
    let rows = transport
        .committed_bundle_rows(&source, committed.bundle_seq, None, Some(100))
        .await
        .expect("committed rows");
    assert_eq!(rows.bundle_seq, committed.bundle_seq);
    assert_eq!(rows.bundle_hash, committed.bundle_hash);
    assert!(!rows.has_more);
    assert_eq!(rows.rows.len(), 1);
    let row = &rows.rows[0];
    assert_eq!(
        (row.schema.as_str(), row.table.as_str()),
        ("business", "users")
    );
    assert_eq!(row.key, sync_key("id", &id));
    assert_eq!(row.op, Op::Insert);
    assert_eq!(row.row_version, committed.bundle_seq);
    let payload = row.payload.as_ref().expect("payload");
    assert_eq!(payload["name"], "ann");
    assert_eq!(payload["email"], "ann@example.com");
    let mut hasher = BundleHasher::new();
    hasher.push(row);
    assert_eq!(hasher.finish(), rows.bundle_hash);
    // Paging with an explicit cursor past the only row: nothing more.
    let after = transport
        .committed_bundle_rows(
            &source,
            committed.bundle_seq,
            Some(rows.next_row_ordinal),
            None,
        )
        .await
        .expect("second page");
    assert!(after.rows.is_empty() && !after.has_more, "{after:?}");

    // Pull from another device of the same user sees the bundle.
    let other = new_id();
    let pulled = transport.pull(&other, 0, 100, None).await.expect("pull");
    assert_eq!(pulled.stable_bundle_seq, committed.bundle_seq);
    assert!(!pulled.has_more);
    assert_eq!(pulled.bundles.len(), 1);
    let bundle = &pulled.bundles[0];
    assert_eq!(bundle.bundle_seq, committed.bundle_seq);
    assert_eq!(bundle.source_id, source);
    assert_eq!(bundle.rows, rows.rows);
    let rest = transport
        .pull(
            &other,
            committed.bundle_seq,
            100,
            Some(pulled.stable_bundle_seq),
        )
        .await
        .expect("pull rest");
    assert!(rest.bundles.is_empty() && !rest.has_more, "{rest:?}");

    // Re-creating the committed tuple answers already_committed.
    let again = transport
        .create_push_session(
            &source,
            &PushSessionCreateRequest {
                source_bundle_id: 1,
                planned_row_count: 1,
                initialization_id: None,
            },
        )
        .await
        .expect("re-create");
    assert!(
        matches!(again, PushSessionCreateResponse::AlreadyCommitted { bundle_seq, .. } if bundle_seq == committed.bundle_seq),
        "{again:?}"
    );

    // A staging session can be deleted.
    let staged = transport
        .create_push_session(
            &source,
            &PushSessionCreateRequest {
                source_bundle_id: 2,
                planned_row_count: 1,
                initialization_id: None,
            },
        )
        .await
        .expect("create second session");
    let PushSessionCreateResponse::Staging {
        push_id: second, ..
    } = staged
    else {
        panic!("expected staging, got {staged:?}");
    };
    transport
        .delete_push_session(&source, &second)
        .await
        .expect("delete push session");

    // Snapshot: create, page, delete.
    let snapshot = transport
        .create_snapshot_session(&other, &SnapshotSessionCreateRequest::default())
        .await
        .expect("snapshot session");
    assert_eq!(snapshot.snapshot_bundle_seq, committed.bundle_seq);
    assert_eq!(snapshot.row_count, 1);
    let page = transport
        .snapshot_chunk(&other, &snapshot.snapshot_id, 0, 10)
        .await
        .expect("snapshot chunk");
    assert_eq!(page.snapshot_id, snapshot.snapshot_id);
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0].key, sync_key("id", &id));
    assert_eq!(page.rows[0].payload["name"], "ann");
    assert!(!page.has_more);
    transport
        .delete_snapshot_session(&other, &snapshot.snapshot_id)
        .await
        .expect("delete snapshot session");
    let gone = transport
        .snapshot_chunk(&other, &snapshot.snapshot_id, 0, 10)
        .await
        .expect_err("deleted session is gone");
    assert_eq!(
        gone.code(),
        Some(codes::SNAPSHOT_SESSION_NOT_FOUND),
        "{gone:?}"
    );

    // Watch: a client behind the server gets a bundle hint at once.
    let mut watch = transport.watch(&other, 0).await.expect("watch");
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(WatchEvent::Heartbeat)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("a watch event within 10 s");
    match event {
        Some(Ok(WatchEvent::Bundle(ev))) => assert_eq!(ev.bundle_seq, committed.bundle_seq),
        other => panic!("expected a bundle event, got {other:?}"),
    }
}

#[tokio::test]
async fn real_server_bad_token_is_unauthorized_after_one_refresh() {
    let server = real_server().await;
    let (provider, calls) = recording_provider();
    let transport =
        Transport::with_config(server.base_url(), provider, fast(3)).expect("transport");
    let err = transport
        .capabilities(&new_id())
        .await
        .expect_err("a bad token is refused");
    match &err {
        TransportError::Unauthorized { message } => assert_eq!(message, "Invalid token"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(err.status(), Some(401));
    assert!(!err.is_retryable());
    assert_eq!(
        calls_of(&calls),
        vec![false, true],
        "one refresh, no retries"
    );

    // The same with a fixed token; a good token then works.
    let bad =
        Transport::new(server.base_url(), StaticToken("not-a-jwt".into())).expect("transport");
    assert!(matches!(
        bad.connect(&new_id(), &ConnectRequest::default()).await,
        Err(TransportError::Unauthorized { .. })
    ));
    let good = Transport::new(server.base_url(), StaticToken(server.token(&new_user())))
        .expect("transport");
    good.capabilities(&new_id())
        .await
        .expect("good token works");
}

#[tokio::test]
async fn real_server_client_errors_map_to_typed_server_errors() {
    let server = real_server().await;
    let user = new_user();
    let transport =
        Transport::with_config(server.base_url(), StaticToken(server.token(&user)), fast(3))
            .expect("transport");
    let source = new_id();

    fn expect_server(err: TransportError, status: u16, code: &str) -> Option<serde_json::Value> {
        match err {
            TransportError::Server {
                status: s,
                code: ref c,
                ref message,
                ref body,
                ..
            } => {
                assert_eq!((s, c.as_str()), (status, code), "{err:?}");
                assert!(!message.is_empty(), "{err:?}");
                assert_eq!(body.as_ref().map(|b| b["error"].clone()), Some(json!(code)));
                assert!(!err.is_retryable());
                assert_eq!(err.code(), Some(code));
                assert_eq!(err.status(), Some(status));
                body.clone()
            }
            other => panic!("expected Server {status} {code}, got {other:?}"),
        }
    }

    // 409 before connect: the scope is not initialized.
    let err = transport
        .pull(&source, 0, 10, None)
        .await
        .expect_err("uninitialized");
    expect_server(err, 409, codes::SCOPE_UNINITIALIZED);

    transport
        .connect(&source, &ConnectRequest::default())
        .await
        .expect("connect");

    // 400: bad query parameter, and a source id the server refuses.
    let err = transport
        .pull(&source, -1, 10, None)
        .await
        .expect_err("negative after");
    expect_server(err, 400, codes::INVALID_REQUEST);
    let err = transport
        .capabilities(&"x".repeat(300))
        .await
        .expect_err("long source id");
    expect_server(err, 400, codes::INVALID_REQUEST);

    // 409: a gap in the source sequence.
    let err = transport
        .create_push_session(
            &source,
            &PushSessionCreateRequest {
                source_bundle_id: 5,
                planned_row_count: 1,
                initialization_id: None,
            },
        )
        .await
        .expect_err("out of order");
    expect_server(err, 409, codes::SOURCE_SEQUENCE_OUT_OF_ORDER);

    // 404 with a typed code; the id is escaped into one path segment, so the chunk route
    // (not the router's generic not_found) answers.
    let chunk = PushSessionChunkRequest {
        start_row_ordinal: 0,
        rows: vec![user_row(&new_id(), "x")],
    };
    for weird in ["no-such-session", "a/b?c=d#e", "%2e%2e", "ü space"] {
        let err = transport
            .upload_push_chunk(&source, weird, &chunk)
            .await
            .expect_err("unknown session");
        match &err {
            TransportError::Server {
                status: 404 | 400,
                code,
                ..
            } => assert!(
                code == codes::PUSH_SESSION_NOT_FOUND || code == codes::PUSH_CHUNK_INVALID,
                "{weird}: {err:?}"
            ),
            other => panic!("{weird}: {other:?}"),
        }
    }
    // Empty or dot ids are refused before sending.
    for bad in ["", ".", ".."] {
        assert!(matches!(
            transport.commit_push_session(&source, bad).await,
            Err(TransportError::InvalidRequest(_))
        ));
        assert!(matches!(
            transport.snapshot_chunk(&source, bad, 0, 10).await,
            Err(TransportError::InvalidRequest(_))
        ));
    }

    // 409 push_conflict: the structured body is kept for the engine.
    let id = new_id();
    let push = |source: String, name: &'static str| {
        let transport = transport.clone();
        let id = id.clone();
        async move {
            let created = transport
                .create_push_session(
                    &source,
                    &PushSessionCreateRequest {
                        source_bundle_id: 1,
                        planned_row_count: 1,
                        initialization_id: None,
                    },
                )
                .await?;
            let PushSessionCreateResponse::Staging { push_id, .. } = created else {
                panic!("expected staging, got {created:?}");
            };
            transport
                .upload_push_chunk(
                    &source,
                    &push_id,
                    &PushSessionChunkRequest {
                        start_row_ordinal: 0,
                        rows: vec![user_row(&id, name)],
                    },
                )
                .await?;
            transport.commit_push_session(&source, &push_id).await
        }
    };
    let first = push(source.clone(), "first").await.expect("first push");
    let err = push(new_id(), "second").await.expect_err("conflict");
    let body = expect_server(err, 409, codes::PUSH_CONFLICT).expect("JSON body");
    let conflict: PushConflictResponse = serde_json::from_value(body).expect("conflict body");
    assert_eq!(conflict.conflict.key, sync_key("id", &id));
    assert_eq!(conflict.conflict.server_row_version, first.bundle_seq);
    assert_eq!(
        conflict
            .conflict
            .server_row
            .as_ref()
            .map(|r| r["name"].clone()),
        Some(json!("first"))
    );
}

// ---------------------------------------------------------------------------------------
// Against fakes: retry, auth, decoding, timeouts

#[tokio::test]
async fn retries_5xx_then_succeeds_and_sends_the_headers() {
    let fake = Fake::start(|hit, _| {
        if hit < 2 {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "service_unavailable", "message": "busy"}),
            )
        } else {
            json_response(StatusCode::OK, caps_json())
        }
    })
    .await;
    let (provider, calls) = recording_provider();
    let transport = Transport::with_config(&fake.base, provider, fast(3)).expect("transport");
    let caps = transport
        .capabilities("src-1")
        .await
        .expect("succeeds on the third attempt");
    assert_eq!(caps.protocol_version, "v1");
    assert_eq!(fake.hits(), 3);
    assert_eq!(
        calls_of(&calls),
        vec![false, false, false],
        "a token per attempt"
    );
    for seen in fake.requests() {
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.path_and_query, "/sync/capabilities");
        assert_eq!(seen.authorization.as_deref(), Some("Bearer stale"));
        assert_eq!(seen.source_id.as_deref(), Some("src-1"));
    }
}

#[tokio::test]
async fn retry_observers_hear_each_retry_and_connections_turn_them_into_events() {
    let fake = Fake::start(|hit, _| {
        if hit < 2 {
            json_response(
                StatusCode::BAD_GATEWAY,
                json!({"error": "bad_gateway", "message": "upstream"}),
            )
        } else {
            json_response(StatusCode::OK, caps_json())
        }
    })
    .await;
    let (provider, _calls) = recording_provider();
    let transport = Transport::with_config(&fake.base, provider, fast(3)).expect("transport");
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = heard.clone();
    transport.on_retry(move |notice| {
        log.lock().expect("log").push((
            notice.endpoint.to_string(),
            notice.retry,
            notice.error.status(),
        ));
    });
    // A connection that uses the transport reports the same retries as events.
    let config = oversync_diesel::OversyncConfig::new("business").table_spec(&DUMMY);
    let sqlite =
        <diesel::SqliteConnection as diesel::Connection>::establish(":memory:").expect("sqlite");
    let mut conn = oversync_diesel::OversyncConnection::new(sqlite, config).expect("connection");
    let mut events = conn.subscribe();
    conn.set_transport(transport.clone());
    transport
        .capabilities("src-1")
        .await
        .expect("succeeds after two retries");
    assert_eq!(
        *heard.lock().expect("log"),
        vec![
            ("GET /sync/capabilities".to_string(), 1, Some(502)),
            ("GET /sync/capabilities".to_string(), 2, Some(502))
        ]
    );
    let mut retries = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let oversync_diesel::SyncEvent::RetryScheduled { attempt, .. } = event {
            retries.push(attempt);
        }
    }
    assert_eq!(retries, vec![2, 3]);
}

const DUMMY: oversync_diesel::TableSpec = oversync_diesel::TableSpec {
    table_name: "t",
    key_column: "id",
    key_kind: oversync_diesel::KeyKind::Text,
    columns: &[],
    triggers: &[],
    up_sql: "",
    down_sql: "",
};

#[tokio::test]
async fn always_500_gives_up_after_max_retries() {
    let fake = Fake::start(|_, _| {
        json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal_error", "message": "boom"}),
        )
    })
    .await;
    let transport =
        Transport::with_config(&fake.base, StaticToken("t".into()), fast(2)).expect("transport");
    let err = transport
        .pull("s", 0, 10, None)
        .await
        .expect_err("gives up");
    match &err {
        TransportError::Server {
            request,
            status,
            code,
            message,
            body,
        } => {
            assert_eq!(request, "GET /sync/pull");
            assert!(
                err.to_string().starts_with("GET /sync/pull answered 500"),
                "the error names the request: {err}"
            );
            assert_eq!(*status, 500);
            assert_eq!(code, codes::INTERNAL_ERROR);
            assert_eq!(message, "boom");
            assert!(body.is_some());
        }
        other => panic!("expected Server 500, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(fake.hits(), 3, "first attempt plus max_retries = 2");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = Fake::start(|_, _| {
        json_response(
            StatusCode::CONFLICT,
            json!({"error": "source_retired", "message": "retired", "source_id": "s", "replaced_by_source_id": "n"}),
        )
    })
    .await;
    let transport =
        Transport::with_config(&fake.base, StaticToken("t".into()), fast(4)).expect("transport");
    let err = transport
        .create_push_session("s", &PushSessionCreateRequest::default())
        .await
        .expect_err("409");
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some(codes::SOURCE_RETIRED));
    match &err {
        TransportError::Server {
            body: Some(body), ..
        } => {
            assert_eq!(body["replaced_by_source_id"], "n")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.hits(), 1, "4xx is never retried");
}

#[tokio::test]
async fn a_401_refreshes_the_token_exactly_once() {
    let fake = Fake::start(|_, seen| {
        if seen.authorization.as_deref() == Some("Bearer fresh") {
            json_response(StatusCode::OK, json!({"resolution": "initialize_empty"}))
        } else {
            (StatusCode::UNAUTHORIZED, "Invalid token\n").into_response()
        }
    })
    .await;
    let (provider, calls) = recording_provider();
    let transport = Transport::with_config(&fake.base, provider, fast(3)).expect("transport");
    let answer = transport
        .connect(
            "s",
            &ConnectRequest {
                has_local_pending_rows: true,
            },
        )
        .await
        .expect("succeeds after the refresh");
    assert_eq!(answer.resolution, ConnectResolution::InitializeEmpty);
    assert_eq!(calls_of(&calls), vec![false, true]);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for seen in &requests {
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&seen.body).expect("JSON body");
        assert_eq!(body, json!({"has_local_pending_rows": true}));
    }
    // The next call starts from the (now fresh) cached token: no further refresh.
    transport
        .connect("s", &ConnectRequest::default())
        .await
        .expect("second call");
    assert_eq!(calls_of(&calls), vec![false, true, false]);
}

#[tokio::test]
async fn plain_text_401_twice_is_unauthorized() {
    let fake =
        Fake::start(|_, _| (StatusCode::UNAUTHORIZED, "Invalid token\n").into_response()).await;
    let (provider, calls) = recording_provider();
    let transport = Transport::with_config(&fake.base, provider, fast(3)).expect("transport");
    let err = transport
        .commit_push_session("s", "p1")
        .await
        .expect_err("unauthorized");
    match &err {
        TransportError::Unauthorized { message } => assert_eq!(message, "Invalid token"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(fake.hits(), 2);
    assert_eq!(calls_of(&calls), vec![false, true]);
    let seen = fake.requests();
    assert_eq!(seen[0].path_and_query, "/sync/push-sessions/p1/commit");
    assert!(seen[0].body.is_empty(), "commit sends no body");
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer fresh"));
}

#[tokio::test]
async fn a_failing_token_provider_is_an_auth_error() {
    let fake = Fake::start(|_, _| json_response(StatusCode::OK, caps_json())).await;
    let provider = token_fn(|_| async { Err::<String, _>(AuthError::new("signed out")) });
    let transport = Transport::with_config(&fake.base, provider, fast(3)).expect("transport");
    let err = transport.capabilities("s").await.expect_err("auth error");
    assert!(
        matches!(&err, TransportError::Auth(AuthError(m)) if m == "signed out"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(fake.hits(), 0, "nothing is sent without a token");
}

#[tokio::test]
async fn bad_success_bodies_are_decode_errors() {
    let bodies: Vec<&'static str> = vec![
        "{\"protocol_version\": \"v1\", \"features\": {",
        "<html>oops</html>",
        "{\"unexpected\": true}",
        "",
    ];
    let served = bodies.clone();
    let fake = Fake::start(move |hit, _| {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            served[hit % served.len()],
        )
            .into_response()
    })
    .await;
    let transport =
        Transport::with_config(&fake.base, StaticToken("t".into()), fast(3)).expect("transport");
    for body in &bodies {
        let err = transport.capabilities("s").await.expect_err("decode error");
        match &err {
            TransportError::Decode { endpoint, message } => {
                assert_eq!(endpoint, "GET /sync/capabilities");
                assert!(!message.is_empty());
            }
            other => panic!("body {body:?}: expected Decode, got {other:?}"),
        }
        assert!(!err.is_retryable());
    }
    assert_eq!(fake.hits(), bodies.len(), "decode errors are not retried");
    // A success status without a body is fine where no body is expected.
    transport
        .delete_snapshot_session("s", "snap")
        .await
        .expect("empty body on delete");
}

#[tokio::test]
async fn html_502_is_a_server_error_with_an_empty_code() {
    let page = format!(
        "<html><body>Bad Gateway{}</body></html>",
        "x".repeat(100_000)
    );
    let fake = Fake::start(move |_, _| {
        (
            StatusCode::BAD_GATEWAY,
            [("content-type", "text/html")],
            page.clone(),
        )
            .into_response()
    })
    .await;
    let transport =
        Transport::with_config(&fake.base, StaticToken("t".into()), fast(1)).expect("transport");
    let err = transport.pull("s", 0, 10, None).await.expect_err("502");
    match &err {
        TransportError::Server {
            request,
            status,
            code,
            message,
            body,
        } => {
            assert_eq!(request, "GET /sync/pull");
            assert!(
                err.to_string()
                    .starts_with("GET /sync/pull answered 502: <html><body>Bad Gateway"),
                "method, path and the start of the body: {err}"
            );
            assert_eq!(*status, 502);
            assert_eq!(code, "");
            assert!(message.starts_with("<html><body>Bad Gateway"), "{message}");
            assert_eq!(message.chars().count(), 512);
            assert!(body.is_none());
        }
        other => panic!("expected Server 502, got {other:?}"),
    }
    assert_eq!(err.code(), None);
    assert_eq!(fake.hits(), 2, "5xx is retried");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (base, connections) = raw_server(|mut stream| async move {
        read_head(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let config = TransportConfig {
        request_timeout: Duration::from_millis(300),
        ..fast(1)
    };
    let transport =
        Transport::with_config(&base, StaticToken("t".into()), config).expect("transport");
    let started = Instant::now();
    let err = transport.capabilities("s").await.expect_err("timeout");
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            TransportError::Network {
                timed_out: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_timeout() && err.is_retryable());
    assert_eq!(connections.load(Ordering::SeqCst), 2, "one retry");
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(2000),
        "two attempts of 300 ms, took {elapsed:?}"
    );
}

#[tokio::test]
async fn a_body_cut_short_is_a_network_error_and_is_retried() {
    let (base, connections) = raw_server(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"protocol_version\":",
            )
            .await;
        let _ = stream.shutdown().await;
    })
    .await;
    let transport =
        Transport::with_config(&base, StaticToken("t".into()), fast(2)).expect("transport");
    let err = transport.capabilities("s").await.expect_err("cut short");
    assert!(
        matches!(
            err,
            TransportError::Network {
                timed_out: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let transport =
        Transport::with_config(&base, StaticToken("t".into()), fast(2)).expect("transport");
    let err = transport.capabilities("s").await.expect_err("refused");
    assert!(
        matches!(
            err,
            TransportError::Network {
                timed_out: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn urls_are_validated_normalized_and_escaped() {
    for bad in [
        "",
        "not a url",
        "ftp://example.com",
        "http://",
        "mailto:a@b.c",
        "http://h/x?y=1",
    ] {
        assert!(
            matches!(
                Transport::new(bad, StaticToken("t".into())),
                Err(TransportError::InvalidUrl(_))
            ),
            "{bad:?}"
        );
    }
    let fake = Fake::start(|_, seen| {
        if seen.path_and_query.contains("/rows") {
            json_response(
                StatusCode::OK,
                json!({"bundle_seq": 3, "source_id": "s", "source_bundle_id": 1, "row_count": 0,
                       "bundle_hash": "h", "rows": [], "next_row_ordinal": 0, "has_more": false}),
            )
        } else if seen.path_and_query.contains("/snapshot-sessions/") {
            json_response(
                StatusCode::OK,
                json!({"snapshot_id": "a/b", "snapshot_bundle_seq": 1, "rows": [], "next_row_ordinal": 0, "has_more": false}),
            )
        } else if seen.path_and_query.contains("/chunks") {
            json_response(StatusCode::OK, json!({"push_id": "a/b", "next_expected_row_ordinal": 1}))
        } else {
            json_response(StatusCode::OK, json!({"stable_bundle_seq": 0, "bundles": [], "has_more": false}))
        }
    })
    .await;
    // A base URL with a path prefix and a trailing slash.
    let transport = Transport::with_config(
        &format!("{}/api/v1/", fake.base),
        StaticToken("t".into()),
        fast(0),
    )
    .expect("transport");
    assert_eq!(transport.base_url(), format!("{}/api/v1", fake.base));
    transport.pull("s", 7, 50, Some(9)).await.expect("pull");
    transport
        .committed_bundle_rows("s", 3, Some(4), Some(5))
        .await
        .expect("rows");
    transport
        .committed_bundle_rows("s", 3, None, None)
        .await
        .expect("rows");
    transport
        .snapshot_chunk("s", "a/b?c#d %", 0, 100)
        .await
        .expect("snapshot chunk");
    transport
        .upload_push_chunk("s", "x/../y", &PushSessionChunkRequest::default())
        .await
        .expect("chunk");
    let paths: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|s| s.path_and_query)
        .collect();
    assert_eq!(
        paths,
        vec![
            "/api/v1/sync/pull?after_bundle_seq=7&max_bundles=50&target_bundle_seq=9",
            "/api/v1/sync/committed-bundles/3/rows?after_row_ordinal=4&max_rows=5",
            "/api/v1/sync/committed-bundles/3/rows",
            "/api/v1/sync/snapshot-sessions/a%2Fb%3Fc%23d%20%25?after_row_ordinal=0&max_rows=100",
            "/api/v1/sync/push-sessions/x%2F..%2Fy/chunks",
        ]
    );
    // A source id that cannot be a header value is refused before sending.
    let before = fake.hits();
    assert!(matches!(
        transport.capabilities("bad\nsource").await,
        Err(TransportError::InvalidRequest(_))
    ));
    assert!(matches!(
        transport.capabilities("").await,
        Err(TransportError::InvalidRequest(_))
    ));
    assert_eq!(fake.hits(), before);
}

#[tokio::test]
async fn watch_parses_events_and_times_out_when_idle() {
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = heads.clone();
    let (base, _) = raw_server(move |mut stream| {
        let log = log.clone();
        async move {
            let head = read_head(&mut stream).await;
            log.lock().expect("lock").push(head);
            let parts: [&[u8]; 4] = [
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n",
                b": heartbeat\n\n",
                b"event: bundle\ndata: {\"bundle_seq\":5,",
                b"\"source_id\":\"dev-a\",\"source_bundle_id\":2}\n\n",
            ];
            for part in parts {
                if stream.write_all(part).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Then silence, with the connection open.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let transport =
        Transport::with_config(&base, StaticToken("t".into()), fast(0)).expect("transport");
    let mut watch = transport.watch("src", 4).await.expect("watch");
    watch.set_idle_timeout(Some(Duration::from_millis(300)));
    assert!(matches!(
        watch.next().await,
        Some(Ok(WatchEvent::Heartbeat))
    ));
    match watch.next().await {
        Some(Ok(WatchEvent::Bundle(ev))) => {
            assert_eq!(ev.bundle_seq, 5);
            assert_eq!(ev.source_id.as_deref(), Some("dev-a"));
            assert_eq!(ev.source_bundle_id, Some(2));
        }
        other => panic!("expected a bundle event, got {other:?}"),
    }
    let started = Instant::now();
    match watch.next().await {
        Some(Err(e)) => assert!(e.is_timeout(), "{e:?}"),
        other => panic!("expected an idle timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(watch.next().await.is_none(), "the stream ended");
    let head = heads.lock().expect("lock")[0].to_ascii_lowercase();
    assert!(
        head.starts_with("get /sync/watch?after_bundle_seq=4 http/1.1"),
        "{head}"
    );
    assert!(head.contains("authorization: bearer t\r\n"), "{head}");
    assert!(head.contains("oversync-source-id: src\r\n"), "{head}");
    assert!(head.contains("accept: text/event-stream"), "{head}");

    // A disabled watch is a typed, non-retryable answer.
    let disabled = Fake::start(|_, _| {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "bundle_change_watch_disabled", "message": "off"}),
        )
    })
    .await;
    let transport = Transport::with_config(&disabled.base, StaticToken("t".into()), fast(3))
        .expect("transport");
    let err = transport.watch("s", 0).await.expect_err("disabled");
    assert_eq!(err.code(), Some(codes::BUNDLE_CHANGE_WATCH_DISABLED));
    assert_eq!(disabled.hits(), 1);

    // A 200 that is not an event stream is refused.
    let html = Fake::start(|_, _| (StatusCode::OK, "<html></html>").into_response()).await;
    let transport =
        Transport::with_config(&html.base, StaticToken("t".into()), fast(0)).expect("transport");
    assert!(matches!(
        transport.watch("s", 0).await,
        Err(TransportError::Decode { .. })
    ));
}
