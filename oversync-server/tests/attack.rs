//! Hostile clients, table-driven over every `/sync/*` route of `SyncService::sync_routes`:
//! a second user replaying the first user's ids is denied and changes nothing of hers, and
//! malformed requests answer 4xx with the `{"error","message"}` body, never 5xx, after which
//! the server still serves normal pushes and pulls.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The routes of `SyncService::sync_routes` (method, path template). Each test checks that
/// its table covers all of them.
const SYNC_ROUTES: [(&str, &str); 12] = [
    ("GET", "/sync/capabilities"),
    ("POST", "/sync/connect"),
    ("POST", "/sync/push-sessions"),
    ("POST", "/sync/push-sessions/{push_id}/chunks"),
    ("POST", "/sync/push-sessions/{push_id}/commit"),
    ("DELETE", "/sync/push-sessions/{push_id}"),
    ("GET", "/sync/committed-bundles/{bundle_seq}/rows"),
    ("GET", "/sync/pull"),
    ("GET", "/sync/watch"),
    ("POST", "/sync/snapshot-sessions"),
    ("GET", "/sync/snapshot-sessions/{snapshot_id}"),
    ("DELETE", "/sync/snapshot-sessions/{snapshot_id}"),
];

/// Expected outcome of one case.
#[derive(Clone, Debug)]
enum Want {
    /// This status with the `{"error": code, "message": ..}` body.
    Error(u16, &'static str),
    /// Accepted (2xx); boundary values that are valid.
    Ok,
    /// `200 text/event-stream` whose first event names this `bundle_seq`.
    Stream(i64),
}

/// Source header variants.
#[derive(Clone, Debug)]
enum Source {
    /// A fresh random id for this case.
    Fresh,
    /// This id.
    Id(String),
    /// No header.
    Missing,
    /// Raw header bytes (e.g. not UTF-8).
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Case {
    /// Route template this case exercises (must be one of [`SYNC_ROUTES`]).
    route: &'static str,
    method: &'static str,
    path: String,
    source: Source,
    content_type: Option<&'static str>,
    /// Raw body; `{SRC}` is replaced by the case's source id.
    body: Option<Vec<u8>>,
    want: Want,
}

fn case(route: &'static str, method: &'static str, path: impl Into<String>, want: Want) -> Case {
    Case {
        route,
        method,
        path: path.into(),
        source: Source::Fresh,
        content_type: None,
        body: None,
        want,
    }
}

impl Case {
    fn json(mut self, body: impl Into<String>) -> Case {
        self.content_type = Some("application/json");
        self.body = Some(body.into().into_bytes());
        self
    }
    fn raw(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Case {
        self.content_type = Some(content_type);
        self.body = Some(body.into());
        self
    }
    fn source(mut self, source: Source) -> Case {
        self.source = source;
        self
    }
}

/// Sends one case as `api`'s user and checks the answer; returns the JSON body.
async fn run_case(api: &Api, i: usize, c: &Case) -> Value {
    let label = format!("case {i}: {} {} ({:?})", c.method, c.path, c.want);
    let source = match &c.source {
        Source::Fresh => Some(new_id().into_bytes()),
        Source::Id(id) => Some(id.clone().into_bytes()),
        Source::Missing => None,
        Source::Bytes(b) => Some(b.clone()),
    };
    let mut req = api
        .http
        .request(
            c.method.parse().expect("method"),
            format!("{}{}", api.base, c.path),
        )
        .bearer_auth(api.token.as_deref().expect("token"));
    if let Some(s) = &source {
        req = req.header(
            "Oversync-Source-ID",
            reqwest::header::HeaderValue::from_bytes(s).expect("header bytes"),
        );
    }
    if let Some(ct) = c.content_type {
        req = req.header("Content-Type", ct);
    }
    if let Some(body) = &c.body {
        let src = String::from_utf8_lossy(source.as_deref().unwrap_or_default()).into_owned();
        let body = match std::str::from_utf8(body) {
            Ok(text) => text.replace("{SRC}", &src).into_bytes(),
            Err(_) => body.clone(),
        };
        req = req.body(body);
    }
    let mut resp = tokio::time::timeout(std::time::Duration::from_secs(30), req.send())
        .await
        .unwrap_or_else(|_| panic!("{label}: no answer"))
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let status = resp.status();
    assert!(!status.is_server_error(), "{label}: {status}");
    if let Want::Stream(seq) = c.want {
        assert_eq!(status, StatusCode::OK, "{label}");
        let mut buf = String::new();
        read_until(&mut resp, &mut buf, "\ndata:").await;
        read_until(&mut resp, &mut buf, "}").await;
        let line = buf
            .lines()
            .find(|l| l.starts_with("data:"))
            .expect("data line");
        let event: Value =
            serde_json::from_str(line.trim_start_matches("data:").trim()).expect("event");
        assert_eq!(event["bundle_seq"], seq, "{label}: {buf}");
        return event;
    }
    let text = resp.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    match c.want {
        Want::Error(code, error) => {
            assert_eq!(status.as_u16(), code, "{label}: {body}");
            assert_eq!(body["error"], error, "{label}: {body}");
            assert!(body["message"].is_string(), "{label}: {body}");
        }
        Want::Ok => assert!(status.is_success(), "{label}: {status} {body}"),
        Want::Stream(_) => unreachable!(),
    }
    body
}

fn assert_covers_every_route(cases: &[Case]) {
    for (method, route) in SYNC_ROUTES {
        let n = cases
            .iter()
            .filter(|c| c.route == route && c.method == method)
            .count();
        assert!(n > 0, "no case for {method} {route}");
    }
    for c in cases {
        assert!(
            SYNC_ROUTES
                .iter()
                .any(|(m, r)| *r == c.route && *m == c.method),
            "unknown route {} {}",
            c.method,
            c.route
        );
    }
}

/// Everything Alice can observe of her own data: all bundles and all current rows.
async fn observe(alice: &Api) -> (Value, Vec<Value>) {
    let (s, pull) = alice.get("/sync/pull?max_bundles=5000").await;
    assert_eq!(s, StatusCode::OK, "{pull}");
    let (s, snap) = alice.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    let mut rows = all_snapshot_rows(
        alice,
        snap["snapshot_id"].as_str().expect("snapshot id"),
        1000,
    )
    .await;
    rows.sort_by_key(|r| r["key"]["id"].as_str().unwrap_or_default().to_owned());
    (pull, rows)
}

#[tokio::test]
async fn cross_user_access_is_denied_on_every_sync_route() {
    let server = server().await;
    // Alice seeds her scope through an initialization lease, then commits a second bundle
    // from another device, opens a push session and a snapshot.
    let alice = Api::new(&server, "alice");
    let lease = alice.connect(true).await;
    let init_id = lease["initialization_id"]
        .as_str()
        .expect("lease")
        .to_owned();
    let (secret, other) = (new_id(), new_id());
    let (_, b) = alice
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": init_id}),
        )
        .await;
    let seed_push = b["push_id"].as_str().expect("push id").to_owned();
    let (s, b) = alice
        .post(
            &format!("/sync/push-sessions/{seed_push}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [user_row(&secret, "alice-secret")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = alice
        .post(
            &format!("/sync/push-sessions/{seed_push}/commit"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let phone = alice.with_source(&new_id());
    let (s, b) = phone.push(1, vec![user_row(&other, "alice-other")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundle_seq"], 2);
    let (_, b) = alice
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 2, "planned_row_count": 2}),
        )
        .await;
    let push_id = b["push_id"].as_str().expect("push id").to_owned();
    let pending = new_id();
    let (s, _) = alice
        .post(
            &format!("/sync/push-sessions/{push_id}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [user_row(&pending, "alice-pending")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, snap) = alice.post("/sync/snapshot-sessions", json!({})).await;
    let snapshot_id = snap["snapshot_id"].as_str().expect("snapshot").to_owned();
    let before = observe(&alice).await;
    let before_snapshot = all_snapshot_rows(&alice, &snapshot_id, 1000).await;

    // Bob has one bundle of his own; Mallory never connected.
    let bob = Api::new(&server, "bob");
    bob.connect(false).await;
    let (s, b) = bob.push(1, vec![user_row(&new_id(), "bob-row")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mallory = Api::new(&server, "mallory");

    let a_src = alice.source().to_owned();
    let a_phone = phone.source().to_owned();
    let update = |id: &str, op: &str| {
        json!({"start_row_ordinal": 0, "rows": [{"schema": "business", "table": "users",
            "key": {"id": id}, "op": op, "base_row_version": 1,
            "payload": if op == "DELETE" { Value::Null } else { json!({"id": id, "name": "pwned", "email": "x"}) }}]})
        .to_string()
    };
    let as_alice = Source::Id(a_src.clone());
    let chunks = format!("/sync/push-sessions/{push_id}/chunks");
    let chunk_body = json!({"start_row_ordinal": 1, "rows": [user_row(&new_id(), "intruder")]});
    let push_route = "/sync/push-sessions";
    let snap_route = "/sync/snapshot-sessions/{snapshot_id}";
    let rows_route = "/sync/committed-bundles/{bundle_seq}/rows";
    let chunk_route = "/sync/push-sessions/{push_id}/chunks";
    let commit_route = "/sync/push-sessions/{push_id}/commit";
    let replace = |prev: &str, new: &str| {
        json!({"source_replacement": {"previous_source_id": prev, "new_source_id": new, "reason": "history_pruned"}}).to_string()
    };
    // Bob's table: (case, by mallory instead of bob).
    let cases: Vec<(Case, bool)> = vec![
        (case("/sync/capabilities", "GET", "/sync/capabilities", Want::Ok).source(as_alice.clone()), false),
        (case("/sync/connect", "POST", "/sync/connect", Want::Ok).json(r#"{"has_local_pending_rows": true}"#).source(as_alice.clone()), false),
        // Alice's source sequence means nothing in Bob's scope.
        (case(push_route, "POST", push_route, Want::Error(409, "source_sequence_out_of_order"))
            .json(r#"{"source_bundle_id": 3, "planned_row_count": 1}"#).source(as_alice.clone()), false),
        (case(push_route, "POST", push_route, Want::Error(409, "initialization_stale"))
            .json(json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": init_id}).to_string()), false),
        (case(push_route, "POST", push_route, Want::Error(410, "initialization_expired"))
            .json(json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": init_id}).to_string()).source(as_alice.clone()), true),
        // Alice's push session.
        (case(chunk_route, "POST", &chunks, Want::Error(403, "push_session_forbidden")).json(chunk_body.to_string()), false),
        (case(chunk_route, "POST", &chunks, Want::Error(403, "push_session_forbidden")).json(chunk_body.to_string()).source(as_alice.clone()), false),
        (case(chunk_route, "POST", &chunks, Want::Error(403, "push_session_forbidden")).json(chunk_body.to_string()), true),
        (case(commit_route, "POST", format!("/sync/push-sessions/{push_id}/commit"), Want::Error(403, "push_session_forbidden")).json("{}"), false),
        (case(commit_route, "POST", format!("/sync/push-sessions/{push_id}/commit"), Want::Error(403, "push_session_forbidden")).json("{}").source(as_alice.clone()), true),
        (case("/sync/push-sessions/{push_id}", "DELETE", format!("/sync/push-sessions/{push_id}"), Want::Error(403, "push_session_forbidden")), false),
        (case("/sync/push-sessions/{push_id}", "DELETE", format!("/sync/push-sessions/{push_id}"), Want::Error(403, "push_session_forbidden")).source(as_alice.clone()), true),
        // Alice's bundle numbers: Bob only ever sees his own bundles.
        (case(rows_route, "GET", "/sync/committed-bundles/2/rows", Want::Error(404, "committed_bundle_not_found")), false),
        (case(rows_route, "GET", "/sync/committed-bundles/1/rows", Want::Error(404, "committed_bundle_not_found")), true),
        (case(rows_route, "GET", "/sync/committed-bundles/1/rows", Want::Ok).source(as_alice.clone()), false),
        (case("/sync/pull", "GET", "/sync/pull?after_bundle_seq=0&target_bundle_seq=2", Want::Ok).source(as_alice.clone()), false),
        (case("/sync/pull", "GET", "/sync/pull?after_bundle_seq=1", Want::Ok), false),
        (case("/sync/pull", "GET", "/sync/pull", Want::Error(409, "scope_uninitialized")), true),
        (case("/sync/watch", "GET", "/sync/watch?after_bundle_seq=0", Want::Stream(1)).source(as_alice.clone()), false),
        (case("/sync/watch", "GET", "/sync/watch", Want::Error(409, "scope_uninitialized")), true),
        // Rotating "Alice's" source ids inside Bob's scope touches only Bob's scope.
        (case("/sync/snapshot-sessions", "POST", "/sync/snapshot-sessions", Want::Error(400, "snapshot_session_invalid"))
            .json(replace(&a_src, &new_id())), false),
        (case("/sync/snapshot-sessions", "POST", "/sync/snapshot-sessions", Want::Ok)
            .json(replace(&a_src, &a_phone)).source(as_alice.clone()), false),
        (case("/sync/snapshot-sessions", "POST", "/sync/snapshot-sessions", Want::Error(409, "scope_uninitialized")).json("{}"), true),
        // Alice's snapshot.
        (case(snap_route, "GET", format!("/sync/snapshot-sessions/{snapshot_id}"), Want::Error(403, "snapshot_session_forbidden")), false),
        (case(snap_route, "GET", format!("/sync/snapshot-sessions/{snapshot_id}?after_row_ordinal=0&max_rows=1"), Want::Error(403, "snapshot_session_forbidden")), true),
        (case(snap_route, "DELETE", format!("/sync/snapshot-sessions/{snapshot_id}"), Want::Error(403, "snapshot_session_forbidden")), false),
        (case(snap_route, "DELETE", format!("/sync/snapshot-sessions/{snapshot_id}"), Want::Error(403, "snapshot_session_forbidden")).source(as_alice.clone()), true),
    ];
    let only: Vec<Case> = cases.iter().map(|(c, _)| c.clone()).collect();
    assert_covers_every_route(&only);
    for (i, (c, by_mallory)) in cases.iter().enumerate() {
        let attacker = if *by_mallory { &mallory } else { &bob };
        let body = run_case(attacker, i, c).await;
        let text = body.to_string();
        assert!(
            !text.contains("alice-") && !text.contains(&secret) && !text.contains(&other),
            "case {i} leaks Alice's data: {text}"
        );
    }

    // Alice's keys through Bob's own pushes: they do not exist in his scope.
    for (sbid, op) in [(2, "UPDATE"), (2, "DELETE")] {
        for id in [&secret, &other] {
            let (_, b) = bob
                .post(
                    push_route,
                    json!({"source_bundle_id": sbid, "planned_row_count": 1}),
                )
                .await;
            let p = b["push_id"].as_str().expect("bob push").to_owned();
            let (s, b) = bob
                .post(
                    &format!("/sync/push-sessions/{p}/chunks"),
                    serde_json::from_str(&update(id, op)).expect("json"),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            let (s, b) = bob
                .post(&format!("/sync/push-sessions/{p}/commit"), json!({}))
                .await;
            assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
            assert_eq!(b["conflict"]["server_row_version"], 0);
            assert_eq!(b["conflict"]["server_row"], Value::Null);
        }
    }
    // Inserting the same key in Bob's scope makes Bob's own row.
    let (s, b) = bob.push(2, vec![user_row(&secret, "bob-copy")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Nothing of Alice's changed: history, rows, her open snapshot and push session.
    assert_eq!(observe(&alice).await, before, "Alice's data is unchanged");
    assert_eq!(
        all_snapshot_rows(&alice, &snapshot_id, 1000).await,
        before_snapshot
    );
    let (s, b) = alice
        .post(
            &chunks,
            json!({"start_row_ordinal": 1, "rows": [user_row(&new_id(), "alice-more")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = alice
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundle_seq"], 3);
    // Bob's rotation of "her" phone id happened in his scope only.
    let (s, b) = phone
        .push(2, vec![user_row(&new_id(), "alice-phone")])
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundle_seq"], 4);
}

const BIG: usize = 200 * 1024;

fn malformed_cases(push_id: &str, snapshot_id: &str) -> Vec<Case> {
    let big = "x".repeat(BIG);
    let max = i64::MAX;
    let chunks_route = "/sync/push-sessions/{push_id}/chunks";
    let commit_route = "/sync/push-sessions/{push_id}/commit";
    let delete_route = "/sync/push-sessions/{push_id}";
    let rows_route = "/sync/committed-bundles/{bundle_seq}/rows";
    let snap_route = "/sync/snapshot-sessions/{snapshot_id}";
    let chunks = format!("/sync/push-sessions/{push_id}/chunks");
    let id = new_id();
    let row = |patch: Value| {
        let mut r = user_row(&id, "m");
        for (k, v) in patch.as_object().expect("patch") {
            if v.is_null() {
                r.as_object_mut().expect("row").remove(k);
            } else {
                r[k] = v.clone();
            }
        }
        json!({"start_row_ordinal": 0, "rows": [r]}).to_string()
    };
    let bad = |code: &'static str| Want::Error(400, code);
    let inv = bad("invalid_request");
    let chunk_inv = bad("push_chunk_invalid");
    let session_inv = bad("push_session_invalid");
    let rows_inv = bad("committed_bundle_chunk_invalid");
    let snap_inv = bad("snapshot_chunk_invalid");
    let create_inv = bad("snapshot_session_invalid");
    let push_nf = Want::Error(404, "push_session_not_found");
    let snap_nf = Want::Error(404, "snapshot_session_not_found");
    let unknown = "00000000-0000-4000-8000-000000000000";
    let long_id = "a".repeat(5000);

    let mut cases = Vec::new();
    // Header problems on every route.
    for (method, route) in SYNC_ROUTES {
        let path = route
            .replace("{push_id}", push_id)
            .replace("{bundle_seq}", "1")
            .replace("{snapshot_id}", snapshot_id);
        for source in [
            Source::Missing,
            Source::Id("   ".into()),
            Source::Id("s".repeat(300)),
            Source::Bytes(vec![0xff, 0xfe, b'a']),
        ] {
            let mut c = case(route, method, path.clone(), inv.clone()).source(source);
            if method == "POST" {
                c = c.json("{}");
            }
            cases.push(c);
        }
    }
    // Bodies that are not the JSON object the route expects.
    let not_json: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{".to_vec()),
        ("application/json", b"".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[1,2]".to_vec()),
        ("application/json", b"\"x\"".to_vec()),
        ("application/json", b"{\"a\":1}}".to_vec()),
        ("application/json", vec![b'{', 0xff, 0xfe, b'}']),
        ("application/json", "[".repeat(100_000).into_bytes()),
        ("text/xml", b"<push/>".to_vec()),
        (
            "application/x-www-form-urlencoded",
            b"source_bundle_id=1".to_vec(),
        ),
        ("application/json", format!("{{\"x\": \"{big}").into_bytes()),
    ];
    for (ct, body) in &not_json {
        for (route, path, want) in [
            ("/sync/connect", "/sync/connect".to_owned(), inv.clone()),
            (
                "/sync/push-sessions",
                "/sync/push-sessions".to_owned(),
                inv.clone(),
            ),
            (chunks_route, chunks.clone(), inv.clone()),
        ] {
            if path == "/sync/connect" && body.as_slice() == b"null" {
                continue; // covered below with the other connect bodies
            }
            cases.push(case(route, "POST", path, want).raw(ct, body.clone()));
        }
        if body.as_slice() != b"" && body.as_slice() != b"null" {
            cases.push(
                case(
                    "/sync/snapshot-sessions",
                    "POST",
                    "/sync/snapshot-sessions",
                    create_inv.clone(),
                )
                .raw(ct, body.clone()),
            );
        }
    }
    let connect =
        |body: &str| case("/sync/connect", "POST", "/sync/connect", inv.clone()).json(body);
    cases.extend([
        connect("null"),
        connect(r#"{"has_local_pending_rows": "yes"}"#),
        connect(r#"{"has_local_pending_rows": 1}"#),
        connect(r#"{"has_local_pending_rows": null}"#),
        connect(&format!(r#"{{"has_local_pending_rows": "{big}"}}"#)),
    ]);
    let create = |body: String, want: Want| {
        case("/sync/push-sessions", "POST", "/sync/push-sessions", want).json(body)
    };
    cases.extend([
        create("{}".into(), session_inv.clone()),
        create(r#"{"planned_row_count": 1}"#.into(), session_inv.clone()),
        create(r#"{"source_bundle_id": 1}"#.into(), session_inv.clone()),
        create(
            r#"{"source_bundle_id": 0, "planned_row_count": 1}"#.into(),
            session_inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": -1, "planned_row_count": 1}"#.into(),
            session_inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": 1, "planned_row_count": -5}"#.into(),
            session_inv.clone(),
        ),
        create(
            format!(
                r#"{{"source_bundle_id": {}, "planned_row_count": 1}}"#,
                i64::MIN
            ),
            session_inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": "1", "planned_row_count": 1}"#.into(),
            inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": 1.5, "planned_row_count": 1}"#.into(),
            inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": null, "planned_row_count": 1}"#.into(),
            inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": 1e30, "planned_row_count": 1}"#.into(),
            inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": 9223372036854775808, "planned_row_count": 1}"#.into(),
            inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": 1, "planned_row_count": [1]}"#.into(),
            inv.clone(),
        ),
        create(
            format!(r#"{{"source_bundle_id": {max}, "planned_row_count": 1}}"#),
            Want::Error(409, "source_sequence_out_of_order"),
        ),
        create(
            r#"{"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": "nope"}"#
                .into(),
            session_inv.clone(),
        ),
        create(
            format!(
                r#"{{"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": "{big}"}}"#
            ),
            session_inv.clone(),
        ),
        create(
            r#"{"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": 7}"#.into(),
            inv.clone(),
        ),
    ]);
    let chunk =
        |body: String, want: Want| case(chunks_route, "POST", chunks.clone(), want).json(body);
    let many: Vec<Value> = (0..5001).map(|_| user_row(&new_id(), "m")).collect();
    cases.extend([
        chunk("{}".into(), chunk_inv.clone()),
        chunk(
            r#"{"start_row_ordinal": 0, "rows": []}"#.into(),
            chunk_inv.clone(),
        ),
        chunk(
            r#"{"start_row_ordinal": 0, "rows": {}}"#.into(),
            inv.clone(),
        ),
        chunk(
            r#"{"start_row_ordinal": 0, "rows": [1]}"#.into(),
            inv.clone(),
        ),
        chunk(
            r#"{"start_row_ordinal": "0", "rows": []}"#.into(),
            inv.clone(),
        ),
        chunk(
            json!({"start_row_ordinal": 0, "rows": many}).to_string(),
            chunk_inv.clone(),
        ),
        chunk(row(json!({"op": null})), inv.clone()),
        chunk(row(json!({"op": "UPSERT"})), inv.clone()),
        chunk(row(json!({"op": 1})), inv.clone()),
        chunk(row(json!({"key": null})), chunk_inv.clone()),
        chunk(row(json!({"key": {"id": "not-a-uuid"}})), chunk_inv.clone()),
        chunk(
            row(json!({"key": {"id": id.to_uppercase()}})),
            chunk_inv.clone(),
        ),
        chunk(row(json!({"key": {"id": big}})), chunk_inv.clone()),
        chunk(row(json!({"key": {"id": "\u{0}"}})), chunk_inv.clone()),
        chunk(row(json!({"key": {"id": 5}})), chunk_inv.clone()),
        chunk(row(json!({"key": [id]})), inv.clone()),
        chunk(
            row(json!({"key": {"id": id, "other": "x"}})),
            chunk_inv.clone(),
        ),
        chunk(row(json!({"table": "nope"})), chunk_inv.clone()),
        chunk(row(json!({"table": big})), chunk_inv.clone()),
        chunk(
            row(json!({"table": "users; DROP TABLE business.users"})),
            chunk_inv.clone(),
        ),
        chunk(row(json!({"table": "us\u{0}ers"})), chunk_inv.clone()),
        chunk(row(json!({"schema": "nope"})), chunk_inv.clone()),
        chunk(
            row(json!({"schema": "pg_catalog", "table": "pg_class"})),
            chunk_inv.clone(),
        ),
        chunk(
            row(json!({"schema": "sync", "table": "bundle_log"})),
            chunk_inv.clone(),
        ),
        chunk(row(json!({"schema": 5})), inv.clone()),
        chunk(row(json!({"base_row_version": -1})), chunk_inv.clone()),
        chunk(row(json!({"base_row_version": 1e20})), inv.clone()),
        chunk(row(json!({"base_row_version": "1"})), inv.clone()),
        chunk(row(json!({"payload": [1]})), chunk_inv.clone()),
        chunk(row(json!({"payload": "x"})), chunk_inv.clone()),
        chunk(row(json!({"payload": null})), chunk_inv.clone()),
        chunk(row(json!({"payload": {"nope": 1}})), chunk_inv.clone()),
        chunk(
            row(json!({"payload": {"_sync_scope_id": "bob", "name": "x"}})),
            chunk_inv.clone(),
        ),
        chunk(
            row(json!({"payload": {"id": new_id(), "name": "x"}})),
            chunk_inv.clone(),
        ),
        chunk(
            row(json!({"payload": {"id": 1, "name": "x"}})),
            chunk_inv.clone(),
        ),
        chunk(row(json!({"op": "DELETE"})), chunk_inv.clone()),
        chunk(
            row(json!({})).replace("\"start_row_ordinal\":0", "\"start_row_ordinal\":-1"),
            chunk_inv.clone(),
        ),
        chunk(
            row(json!({})).replace(
                "\"start_row_ordinal\":0",
                &format!("\"start_row_ordinal\":{max}"),
            ),
            Want::Error(409, "push_chunk_out_of_order"),
        ),
        chunk(
            row(json!({})).replace("\"start_row_ordinal\":0", "\"start_row_ordinal\":1"),
            Want::Error(409, "push_chunk_out_of_order"),
        ),
    ]);
    // Path ids that are not (known) sessions.
    for bad_id in [
        "not-a-uuid",
        unknown,
        long_id.as_str(),
        "%FF",
        "%00",
        "a%2Fb",
        "%20",
    ] {
        cases.push(
            case(
                chunks_route,
                "POST",
                format!("/sync/push-sessions/{bad_id}/chunks"),
                push_nf.clone(),
            )
            .json(row(json!({}))),
        );
        cases.push(
            case(
                commit_route,
                "POST",
                format!("/sync/push-sessions/{bad_id}/commit"),
                push_nf.clone(),
            )
            .json("{}"),
        );
        cases.push(case(
            delete_route,
            "DELETE",
            format!("/sync/push-sessions/{bad_id}"),
            push_nf.clone(),
        ));
        cases.push(case(
            snap_route,
            "GET",
            format!("/sync/snapshot-sessions/{bad_id}"),
            snap_nf.clone(),
        ));
        cases.push(case(
            snap_route,
            "DELETE",
            format!("/sync/snapshot-sessions/{bad_id}"),
            snap_nf.clone(),
        ));
    }
    // The open session exists but is incomplete: commit refuses, whatever the body.
    cases.push(
        case(
            commit_route,
            "POST",
            format!("/sync/push-sessions/{push_id}/commit"),
            bad("push_commit_invalid"),
        )
        .json("{"),
    );
    cases.push(
        case(
            commit_route,
            "POST",
            format!("/sync/push-sessions/{push_id}/commit"),
            bad("push_commit_invalid"),
        )
        .raw("text/plain", big.clone()),
    );
    // Committed-bundle paths and paging.
    for (path, want) in [
        ("zero/rows".to_owned(), rows_inv.clone()),
        ("0/rows".to_owned(), rows_inv.clone()),
        ("-1/rows".to_owned(), rows_inv.clone()),
        ("1.5/rows".to_owned(), rows_inv.clone()),
        ("%FF/rows".to_owned(), rows_inv.clone()),
        (format!("{long_id}/rows"), rows_inv.clone()),
        ("99999999999999999999/rows".to_owned(), rows_inv.clone()),
        (
            format!("{max}/rows"),
            Want::Error(404, "committed_bundle_not_found"),
        ),
        ("1/rows?max_rows=0".to_owned(), rows_inv.clone()),
        ("1/rows?max_rows=-1".to_owned(), rows_inv.clone()),
        ("1/rows?max_rows=abc".to_owned(), rows_inv.clone()),
        ("1/rows?max_rows=%FF".to_owned(), rows_inv.clone()),
        (
            "1/rows?max_rows=99999999999999999999".to_owned(),
            rows_inv.clone(),
        ),
        ("1/rows?after_row_ordinal=-5".to_owned(), rows_inv.clone()),
        ("1/rows?after_row_ordinal=1e3".to_owned(), rows_inv.clone()),
        (
            format!("1/rows?after_row_ordinal={}", i64::MIN),
            rows_inv.clone(),
        ),
        (
            format!("1/rows?after_row_ordinal={max}&max_rows={max}"),
            Want::Ok,
        ),
    ] {
        cases.push(case(
            rows_route,
            "GET",
            format!("/sync/committed-bundles/{path}"),
            want,
        ));
    }
    for (q, want) in [
        ("after_bundle_seq=-1".to_owned(), inv.clone()),
        ("after_bundle_seq=abc".to_owned(), inv.clone()),
        (
            "after_bundle_seq=99999999999999999999".to_owned(),
            inv.clone(),
        ),
        ("max_bundles=0".to_owned(), inv.clone()),
        ("max_bundles=-1".to_owned(), inv.clone()),
        ("max_bundles=5001".to_owned(), inv.clone()),
        (format!("max_bundles={max}"), inv.clone()),
        ("target_bundle_seq=-1".to_owned(), inv.clone()),
        ("target_bundle_seq=x".to_owned(), inv.clone()),
        (
            format!("after_bundle_seq={}", "9".repeat(20_000)),
            inv.clone(),
        ),
        (format!("after_bundle_seq={max}"), Want::Ok),
        (
            format!("after_bundle_seq={max}&target_bundle_seq={max}&max_bundles=5000"),
            Want::Ok,
        ),
        (
            "after_bundle_seq=0&after_bundle_seq=&%%%=&=".to_owned(),
            Want::Ok,
        ),
    ] {
        cases.push(case("/sync/pull", "GET", format!("/sync/pull?{q}"), want));
    }
    for q in ["-1", "abc", "99999999999999999999", "1.0", "%FF"] {
        cases.push(case(
            "/sync/watch",
            "GET",
            format!("/sync/watch?after_bundle_seq={q}"),
            inv.clone(),
        ));
    }
    let snap_create = |body: String, want: Want| {
        case(
            "/sync/snapshot-sessions",
            "POST",
            "/sync/snapshot-sessions",
            want,
        )
        .json(body)
    };
    let replacement = |prev: &str, new: &str, reason: &str| {
        json!({"source_replacement": {"previous_source_id": prev, "new_source_id": new, "reason": reason}}).to_string()
    };
    cases.extend([
        snap_create(r#"{"unexpected": 1}"#.into(), create_inv.clone()),
        snap_create(r#"{"source_replacement": "x"}"#.into(), create_inv.clone()),
        snap_create(r#"{"source_replacement": {}}"#.into(), create_inv.clone()),
        snap_create(
            r#"{"source_replacement": {"previous_source_id": 1, "new_source_id": 2, "reason": 3}}"#
                .into(),
            create_inv.clone(),
        ),
        snap_create(
            replacement("someone-else", &new_id(), "history_pruned"),
            create_inv.clone(),
        ),
        snap_create(
            replacement("{SRC}", "{SRC}", "history_pruned"),
            create_inv.clone(),
        ),
        snap_create(
            replacement("{SRC}", "", "history_pruned"),
            create_inv.clone(),
        ),
        snap_create(
            replacement("{SRC}", "  ", "history_pruned"),
            create_inv.clone(),
        ),
        snap_create(
            replacement("{SRC}", &big, "history_pruned"),
            create_inv.clone(),
        ),
        snap_create(
            replacement("{SRC}", &new_id(), "because"),
            create_inv.clone(),
        ),
        snap_create(replacement("{SRC}", &new_id(), &big), create_inv.clone()),
        snap_create(
            replacement("{SRC}", "new\u{0}id", "history_pruned"),
            create_inv.clone(),
        ),
    ]);
    for q in [
        "max_rows=0",
        "max_rows=-1",
        "max_rows=x",
        "after_row_ordinal=-1",
        "after_row_ordinal=99999999999999999999",
        "after_row_ordinal=%FF",
    ] {
        cases.push(case(
            snap_route,
            "GET",
            format!("/sync/snapshot-sessions/{snapshot_id}?{q}"),
            snap_inv.clone(),
        ));
    }
    cases.push(case(
        snap_route,
        "GET",
        format!("/sync/snapshot-sessions/{snapshot_id}?after_row_ordinal={max}&max_rows={max}"),
        Want::Ok,
    ));
    cases
}

#[tokio::test]
async fn malformed_requests_are_client_errors_and_the_server_keeps_serving() {
    let server = server().await;
    let alice = Api::new(&server, "alice");
    alice.connect(false).await;
    let (s, b) = alice.push(1, vec![user_row(&new_id(), "a")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // An open, incomplete push session (planned 2, 0 uploaded) and a snapshot to aim at.
    let (_, b) = alice
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 2, "planned_row_count": 2}),
        )
        .await;
    let push_id = b["push_id"].as_str().expect("push id").to_owned();
    let (_, snap) = alice.post("/sync/snapshot-sessions", json!({})).await;
    let snapshot_id = snap["snapshot_id"].as_str().expect("snapshot").to_owned();
    let (_, status_before) = alice.get("/syncx/status").await;

    let cases = malformed_cases(&push_id, &snapshot_id);
    assert_covers_every_route(&cases);
    for (i, c) in cases.iter().enumerate() {
        run_case(&alice, i, c).await;
    }
    println!("attack: {} malformed requests answered", cases.len());

    // Values only the database refuses are still the client's fault, at commit.
    let typed = |patch: Value| {
        let t = new_id();
        let mut payload = json!({"id": t, "name": "n", "enabled_flag": 1});
        for (k, v) in patch.as_object().expect("patch") {
            payload[k] = v.clone();
        }
        json!({"schema": "business", "table": "typed_rows", "key": {"id": t}, "op": "INSERT",
               "base_row_version": 0, "payload": payload})
    };
    let fresh = alice.with_source(&new_id());
    for patch in [
        json!({"name": "nul \u{0} inside"}),
        json!({"count_value": 1e300}),
        json!({"count_value": 9223372036854775808_u64}),
        json!({"count_value": "many"}),
        json!({"enabled_flag": null}),
        json!({"rating": "high"}),
        json!({"rating": {"a": 1}}),
        json!({"created_at": "2026-13-45T99:00:00Z"}),
        json!({"data": "AAEC\u{0}"}),
    ] {
        let (s, b) = fresh.push(1, vec![typed(patch.clone())]).await;
        assert!(!s.is_server_error(), "{patch}: {s} {b}");
        assert!(s.is_client_error(), "{patch}: {s} {b}");
        assert!(
            b["error"].is_string() && b["message"].is_string(),
            "{patch}: {b}"
        );
    }

    // Nothing was committed by the barrage; the server still serves normal traffic.
    let (s, b) = alice.get("/syncx/health").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, status_after) = alice.get("/syncx/status").await;
    assert_eq!(
        status_after["committed_bundle_count"],
        status_before["committed_bundle_count"]
    );
    let (s, b) = alice.get("/sync/pull").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["stable_bundle_seq"], 1);
    let id = new_id();
    let (s, b) = alice.push(2, vec![user_row(&id, "after")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundle_seq"], 2);
    let (s, b) = alice.get("/sync/pull?after_bundle_seq=1").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundles"][0]["rows"][0]["key"]["id"], id.as_str());
}
