//! Push sessions, committed-bundle rows, pull, conflicts, sequencing and retention.

mod common;

use common::*;
use oversync_protocol::{PullResponse, bundle_hash};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn post_row(id: &str, author: &str) -> Value {
    json!({"schema": "business", "table": "posts", "key": {"id": id}, "op": "INSERT",
           "base_row_version": 0,
           "payload": {"id": id, "title": "t", "content": "c <&> é", "author_id": author}})
}

fn file_row(id: &str, data_b64: &str) -> Value {
    json!({"schema": "business", "table": "files", "key": {"id": id}, "op": "INSERT",
           "base_row_version": 0, "payload": {"id": id, "name": "f.bin", "data": data_b64}})
}

/// A `typed_rows` insert with a value of every kind: NULL, a 2^53 - 1 integer, a boolean as
/// an integer, a REAL, a BLOB (base64) and a timestamp.
fn typed_row(id: &str, name: &str) -> Value {
    json!({"schema": "business", "table": "typed_rows", "key": {"id": id}, "op": "INSERT",
        "base_row_version": 0,
        "payload": {"id": id, "name": name, "note": null, "count_value": 9007199254740991_i64,
                    "enabled_flag": 1, "rating": 2.5, "data": "3q2+7w==",
                    "created_at": "2026-01-02T03:04:05Z"}})
}

#[tokio::test]
async fn push_in_chunks_then_fetch_committed_rows_and_pull() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let (u, p, f) = (new_id(), new_id(), new_id());
    let (s, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "staging");
    assert_eq!(b["planned_row_count"], 3);
    let push_id = b["push_id"].as_str().expect("push_id").to_owned();
    let chunks = format!("/sync/push-sessions/{push_id}/chunks");
    // Child row first: foreign keys are deferred to commit.
    let (s, b) = api
        .post(
            &chunks,
            json!({"start_row_ordinal": 0, "rows": [post_row(&p, &u)]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["next_expected_row_ordinal"], 1);
    let (s, b) = api
        .post(
            &chunks,
            json!({"start_row_ordinal": 0, "rows": [user_row(&u, "ann")]}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_chunk_out_of_order");
    let (s, b) = api
        .post(
            &chunks,
            json!({"start_row_ordinal": 1, "rows": [user_row(&u, "ann"), file_row(&f, "AAEC/w==")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["next_expected_row_ordinal"], 3);
    let (s, commit) = api
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{commit}");
    assert_eq!(commit["bundle_seq"], 1);
    assert_eq!(commit["source_id"], api.source());
    assert_eq!(commit["source_bundle_id"], 1);
    assert_eq!(commit["row_count"], 3);

    let rows = api.committed_rows(1, 1).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        bundle_hash(&rows),
        commit["bundle_hash"].as_str().expect("hash")
    );
    assert!(rows.iter().all(|r| r.row_version == 1));
    let order: Vec<&str> = rows.iter().map(|r| r.table.as_str()).collect();
    assert_eq!(order, ["posts", "users", "files"], "capture order");
    let user = rows[1].payload.as_ref().expect("payload");
    assert_eq!(user["name"], "ann");
    assert!(
        user.get("_sync_scope_id").is_none(),
        "hidden column stays hidden"
    );
    let created = user["created_at"]
        .as_str()
        .expect("server default comes back");
    assert!(created.ends_with("+00:00"), "{created}");
    assert_eq!(rows[2].payload.as_ref().expect("file")["data"], "AAEC/w==");
    assert_eq!(
        rows[0].payload.as_ref().expect("post")["content"],
        "c <&> é"
    );

    // Paging details: after the last row, an empty page echoes the cursor.
    let (s, b) = api
        .get("/sync/committed-bundles/1/rows?after_row_ordinal=2")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["rows"], json!([]));
    assert_eq!(b["next_row_ordinal"], 2);
    assert_eq!(b["has_more"], false);
    for (q, code) in [
        (
            "/sync/committed-bundles/1/rows?max_rows=0",
            "committed_bundle_chunk_invalid",
        ),
        (
            "/sync/committed-bundles/1/rows?after_row_ordinal=-1",
            "committed_bundle_chunk_invalid",
        ),
        (
            "/sync/committed-bundles/1/rows?max_rows=abc",
            "committed_bundle_chunk_invalid",
        ),
        (
            "/sync/committed-bundles/zero/rows",
            "committed_bundle_chunk_invalid",
        ),
        (
            "/sync/committed-bundles/0/rows",
            "committed_bundle_chunk_invalid",
        ),
    ] {
        let (s, b) = api.get(q).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, code);
    }
    let (s, b) = api.get("/sync/committed-bundles/99/rows").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "committed_bundle_not_found");

    // Re-creating the committed tuple answers already_committed.
    let (s, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "already_committed");
    assert_eq!(b["bundle_seq"], 1);
    assert_eq!(b["bundle_hash"], commit["bundle_hash"]);
    assert_eq!(b["row_count"], 3);
    // A gap in the source sequence is refused.
    let (s, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 3, "planned_row_count": 1}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "source_sequence_out_of_order");

    // Two more bundles, then pull in pages with a frozen ceiling.
    let (s, b) = api.push(2, vec![user_row(&new_id(), "b")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api.push(3, vec![user_row(&new_id(), "c")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api.get("/sync/pull?after_bundle_seq=0&max_bundles=2").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let page: PullResponse = serde_json::from_value(b).expect("pull shape");
    assert_eq!(page.stable_bundle_seq, 3);
    assert!(page.has_more);
    assert_eq!(page.bundles.len(), 2);
    assert_eq!(page.bundles[0].rows.len(), 3);
    assert_eq!(
        bundle_hash(&page.bundles[0].rows),
        commit["bundle_hash"].as_str().expect("hash")
    );
    // A commit after the first page does not move the frozen ceiling.
    let (s, b) = api.push(4, vec![user_row(&new_id(), "d")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api
        .get("/sync/pull?after_bundle_seq=2&max_bundles=2&target_bundle_seq=3")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["stable_bundle_seq"], 3);
    assert_eq!(b["has_more"], false);
    assert_eq!(b["bundles"].as_array().map(Vec::len), Some(1));
    assert_eq!(b["bundles"][0]["bundle_seq"], 3);
    let (s, b) = api.get("/sync/pull?after_bundle_seq=4").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        b,
        json!({"stable_bundle_seq": 4, "bundles": [], "has_more": false})
    );
    for q in [
        "/sync/pull?after_bundle_seq=-1",
        "/sync/pull?max_bundles=0",
        "/sync/pull?max_bundles=5001",
        "/sync/pull?target_bundle_seq=x",
    ] {
        let (s, b) = api.get(q).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    }

    // Retention floor: history at or below it is pruned.
    let (s, b) = api
        .post(
            "/test/retention-floor",
            json!({"user_id": "alice", "retained_bundle_floor": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api.get("/sync/pull?after_bundle_seq=1").await;
    assert_error(s, &b, StatusCode::CONFLICT, "history_pruned");
    let (s, b) = api.get("/sync/committed-bundles/2/rows").await;
    assert_error(s, &b, StatusCode::CONFLICT, "history_pruned");
    let (s, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "history_pruned");
    // As the reference: a checkpoint equal to the floor is pruned too.
    let (s, b) = api.get("/sync/pull?after_bundle_seq=2").await;
    assert_error(s, &b, StatusCode::CONFLICT, "history_pruned");
    let (s, b) = api.get("/sync/pull?after_bundle_seq=3").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundles"].as_array().map(Vec::len), Some(1));
    let (_, status) = api.get("/syncx/status").await;
    assert_eq!(status["retained_bundle_floor_max"], 2);
    assert!(
        status["history_pruned_error_count"]
            .as_i64()
            .expect("count")
            >= 3
    );
    assert!(
        status["accepted_push_replay_count"]
            .as_i64()
            .expect("count")
            >= 1
    );
    for (body, want) in [
        (
            json!({"user_id": "nobody", "retained_bundle_floor": 1}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"user_id": "", "retained_bundle_floor": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "alice", "retained_bundle_floor": -1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "alice", "retained_bundle_floor": 99}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, b) = api.post("/test/retention-floor", body).await;
        assert_eq!(s, want, "{b}");
        assert!(b["error"].is_string(), "{b}");
    }
}

#[tokio::test]
async fn optimistic_conflicts_carry_the_server_row() {
    let server = server().await;
    let a = Api::new(&server, "alice");
    a.connect(false).await;
    let id = new_id();
    assert_eq!(a.push(1, vec![user_row(&id, "v1")]).await.0, StatusCode::OK);

    // Another device inserts the same key without having seen it.
    let b_dev = a.with_source(&new_id());
    let (s, b) = b_dev.push(1, vec![user_row(&id, "other")]).await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
    let c = &b["conflict"];
    assert_eq!(c["schema"], "business");
    assert_eq!(c["table"], "users");
    assert_eq!(c["key"], json!({"id": id}));
    assert_eq!(c["op"], "INSERT");
    assert_eq!(c["base_row_version"], 0);
    assert_eq!(c["server_row_version"], 1);
    assert_eq!(c["server_row_deleted"], false);
    assert_eq!(c["server_row"]["name"], "v1");
    assert!(c["server_row"].get("_sync_scope_id").is_none());

    let update = |base: i64, name: &str| {
        json!({"schema": "business", "table": "users", "key": {"id": id}, "op": "UPDATE",
               "base_row_version": base,
               "payload": {"id": id, "name": name, "email": "e@example.com"}})
    };
    assert_eq!(a.push(2, vec![update(1, "v2")]).await.0, StatusCode::OK);
    let (s, b) = b_dev.push(1, vec![update(1, "stale")]).await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
    assert_eq!(b["conflict"]["server_row_version"], 2);
    assert_eq!(b["conflict"]["server_row"]["name"], "v2");

    let delete = json!({"schema": "business", "table": "users", "key": {"id": id},
                        "op": "DELETE", "base_row_version": 2});
    let (s, d) = a.push(3, vec![delete]).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let (s, b) = b_dev.push(1, vec![update(2, "gone")]).await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
    assert_eq!(b["conflict"]["server_row_deleted"], true);
    assert_eq!(b["conflict"]["server_row"], Value::Null);
    let missing = new_id();
    let (s, b) = b_dev
        .push(
            1,
            vec![
                json!({"schema": "business", "table": "users", "key": {"id": missing},
                        "op": "DELETE", "base_row_version": 1}),
            ],
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
    assert_eq!(b["conflict"]["server_row_version"], 0);
    // Re-insert after delete needs the tombstone's version as base.
    let mut again = user_row(&id, "back");
    again["base_row_version"] = json!(3);
    let (s, b) = b_dev.push(1, vec![again]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let rows = b_dev.committed_rows(4, 10).await;
    assert_eq!(rows[0].op, oversync_protocol::Op::Insert);
    assert_eq!(rows[0].payload.as_ref().expect("payload")["name"], "back");
}

#[tokio::test]
async fn invalid_chunks_and_commits_are_rejected_with_codes() {
    let server = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.max_rows_per_push_chunk = 2;
    })
    .await
    .expect("server");
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let create = |n: i64| json!({"source_bundle_id": 1, "planned_row_count": n});
    for body in [
        json!({"source_bundle_id": 0, "planned_row_count": 1}),
        json!({"source_bundle_id": 1, "planned_row_count": 0}),
        json!({"planned_row_count": 1}),
    ] {
        let (s, b) = api.post("/sync/push-sessions", body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "push_session_invalid");
    }
    // A lease on an initialized scope is stale (the contract's 409), not a malformed request.
    let (s, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1, "initialization_id": new_id()}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "initialization_stale");
    let (_, b) = api.post("/sync/push-sessions", create(2)).await;
    let push_id = b["push_id"].as_str().expect("push id").to_owned();
    let chunks = format!("/sync/push-sessions/{push_id}/chunks");
    let id = new_id();
    let bad_rows = [
        json!([]),
        json!([
            user_row(&id, "a"),
            user_row(&new_id(), "b"),
            user_row(&new_id(), "c")
        ]),
        json!([user_row(&id, "a"), user_row(&id, "a")]),
        json!([{"schema": "business", "table": "nope", "key": {"id": id}, "op": "INSERT", "base_row_version": 0, "payload": {}}]),
        json!([{"schema": "Bus\"iness", "table": "users", "key": {"id": id}, "op": "INSERT", "base_row_version": 0, "payload": {}}]),
        json!([{"schema": "business", "table": "users", "key": {"id": id.to_uppercase()}, "op": "INSERT", "base_row_version": 0, "payload": {"name": "x", "email": "y"}}]),
        json!([{"schema": "business", "table": "users", "key": {"id": 5}, "op": "INSERT", "base_row_version": 0, "payload": {"name": "x", "email": "y"}}]),
        json!([{"schema": "business", "table": "users", "key": {"id": id}, "op": "INSERT", "base_row_version": 0}]),
        json!([{"schema": "business", "table": "users", "key": {"id": id}, "op": "DELETE", "base_row_version": 1, "payload": {"id": id}}]),
        json!([{"schema": "business", "table": "users", "key": {"id": id}, "op": "INSERT", "base_row_version": 0, "payload": {"name": "x", "_sync_scope_id": "bob"}}]),
        json!([{"schema": "business", "table": "users", "key": {"id": id}, "op": "INSERT", "base_row_version": 0, "payload": {"name": "x", "bogus\"col": 1}}]),
        json!([{"schema": "business", "table": "users", "key": {"id": id}, "op": "INSERT", "base_row_version": 0, "payload": {"id": new_id(), "name": "x"}}]),
        json!([{"schema": "business", "table": "files", "key": {"id": id}, "op": "INSERT", "base_row_version": 0, "payload": {"name": "x", "data": "not base64!"}}]),
        json!([{"schema": "business", "table": "users", "key": {"id": id}, "op": "INSERT", "base_row_version": -1, "payload": {"name": "x"}}]),
    ];
    for rows in bad_rows {
        let (s, b) = api
            .post(&chunks, json!({"start_row_ordinal": 0, "rows": rows}))
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "push_chunk_invalid");
    }
    let (s, b) = api
        .post(
            &chunks,
            json!({"start_row_ordinal": -1, "rows": [user_row(&id, "a")]}),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_chunk_invalid");
    // Incomplete staging cannot commit.
    let (s, _) = api
        .post(
            &chunks,
            json!({"start_row_ordinal": 0, "rows": [user_row(&id, "a")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_commit_invalid");
    let (s, b) = api
        .post(
            &chunks,
            json!({"start_row_ordinal": 1, "rows": [user_row(&new_id(), "b"), user_row(&new_id(), "c")]}),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_chunk_invalid");
    // Delete, then the session is gone.
    let (s, _) = api.delete(&format!("/sync/push-sessions/{push_id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for (s, b) in [
        api.post(
            &chunks,
            json!({"start_row_ordinal": 1, "rows": [user_row(&new_id(), "b")]}),
        )
        .await,
        api.post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
            .await,
        api.delete(&format!("/sync/push-sessions/{push_id}")).await,
        api.post("/sync/push-sessions/not-a-uuid/commit", json!({}))
            .await,
        api.delete("/sync/push-sessions/not-a-uuid").await,
    ] {
        assert_error(s, &b, StatusCode::NOT_FOUND, "push_session_not_found");
    }

    // Rows the database refuses are the client's fault: 400, and nothing is committed.
    let orphan = post_row(&new_id(), &new_id());
    let (s, b) = api.push(1, vec![orphan]).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_commit_invalid");
    let typed = json!({"schema": "business", "table": "typed_rows", "key": {"id": id}, "op": "INSERT",
                       "base_row_version": 0,
                       "payload": {"id": id, "name": "n", "enabled_flag": "not a number"}});
    let (s, b) = api.push(1, vec![typed]).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_commit_invalid");
    let missing_not_null = json!({"schema": "business", "table": "users", "key": {"id": id}, "op": "INSERT",
                                  "base_row_version": 0, "payload": {"id": id, "name": "n"}});
    let (s, b) = api.push(1, vec![missing_not_null]).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_commit_invalid");
    let (s, b) = api.get("/sync/pull").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["stable_bundle_seq"], 0, "nothing was committed: {b}");
    // The sequence is intact: bundle 1 still goes through.
    let (s, b) = api.push(1, vec![user_row(&id, "ok")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn expired_push_session_is_gone() {
    let server = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.push_session_ttl = std::time::Duration::from_secs(1);
    })
    .await
    .expect("server");
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let (_, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1}),
        )
        .await;
    let push_id = b["push_id"].as_str().expect("id").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (s, b) = api
        .post(
            &format!("/sync/push-sessions/{push_id}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [user_row(&new_id(), "a")]}),
        )
        .await;
    assert_error(s, &b, StatusCode::GONE, "push_session_expired");
    let (s, b) = api
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_error(s, &b, StatusCode::GONE, "push_session_expired");
}

#[tokio::test]
async fn cascades_bytea_and_types_are_captured() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let (parent, child, grandchild) = (new_id(), new_id(), new_id());
    let cat = |id: &str, parent: Option<&str>| {
        json!({"schema": "business", "table": "categories", "key": {"id": id}, "op": "INSERT",
               "base_row_version": 0, "payload": {"id": id, "name": "c", "parent_id": parent}})
    };
    let t = new_id();
    let typed = typed_row(&t, "n");
    let (s, b) = api
        .push(
            1,
            vec![
                cat(&parent, None),
                cat(&child, Some(&parent)),
                cat(&grandchild, Some(&child)),
                typed,
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let rows = api.committed_rows(1, 1000).await;
    let typed = rows[3].payload.as_ref().expect("typed payload");
    assert_eq!(typed["count_value"], 9007199254740991_i64);
    assert_eq!(typed["rating"], 2.5);
    assert_eq!(typed["data"], "3q2+7w==");
    assert_eq!(typed["note"], Value::Null);
    assert_eq!(typed["created_at"], "2026-01-02T03:04:05+00:00");

    // Deleting the parent cascades; the bundle carries all three deletes.
    let delete = json!({"schema": "business", "table": "categories", "key": {"id": parent},
                        "op": "DELETE", "base_row_version": 1});
    let (s, b) = api.push(2, vec![delete]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["row_count"], 3);
    let rows = api.committed_rows(2, 2).await;
    let mut keys: Vec<String> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.op, oversync_protocol::Op::Delete);
            assert!(r.payload.is_none());
            r.key["id"].as_str().expect("key").to_owned()
        })
        .collect();
    keys.sort();
    let mut want = vec![parent, child, grandchild];
    want.sort();
    assert_eq!(keys, want);
    // Insert then delete inside one push cancels out: the commit has nothing to say.
    let x = new_id();
    let (s, b) = api
        .push(
            3,
            vec![json!({"schema": "business", "table": "users", "key": {"id": x}, "op": "DELETE", "base_row_version": 0})],
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
}

#[tokio::test]
async fn concurrent_pushes_from_many_sources_are_serialized() {
    let server = server().await;
    let first = Api::new(&server, "alice");
    first.connect(false).await;
    const SOURCES: usize = 4;
    const BUNDLES: i64 = 5;
    let mut tasks = Vec::new();
    for _ in 0..SOURCES {
        let api = first.with_source(&new_id());
        tasks.push(tokio::spawn(async move {
            for sbid in 1..=BUNDLES {
                let rows = (0..3)
                    .map(|i| user_row(&new_id(), &format!("n{i}")))
                    .collect();
                let (s, b) = api.push(sbid, rows).await;
                assert_eq!(s, StatusCode::OK, "{b}");
            }
            api.source().to_owned()
        }));
    }
    let mut sources = Vec::new();
    for t in tasks {
        sources.push(t.await.expect("task"));
    }
    let (s, b) = first.get("/sync/pull?max_bundles=1000").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let pull: PullResponse = serde_json::from_value(b).expect("shape");
    let total = SOURCES as i64 * BUNDLES;
    assert_eq!(pull.stable_bundle_seq, total);
    let seqs: Vec<i64> = pull.bundles.iter().map(|b| b.bundle_seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "no gap, no loss");
    for source in sources {
        let ids: Vec<i64> = pull
            .bundles
            .iter()
            .filter(|b| b.source_id == source)
            .map(|b| b.source_bundle_id)
            .collect();
        assert_eq!(ids, (1..=BUNDLES).collect::<Vec<_>>());
    }
    for b in &pull.bundles {
        assert_eq!(b.rows.len(), 3);
        assert_eq!(Some(bundle_hash(&b.rows)), b.bundle_hash);
    }
}

#[tokio::test]
async fn server_originated_writes_become_bundles() {
    let server = server().await;
    let service = server.service().clone();
    let api = Api::new(&server, "alice");
    // An uninitialized scope is initialized by the first server write.
    let id = new_id();
    let write = service
        .begin_server_write("alice", "admin-panel")
        .await
        .expect("begin");
    assert!(write.auto_initialized);
    write
        .client()
        .execute(
            "INSERT INTO business.users (id, name, email) VALUES ($1::text::uuid, 'Admin made', 'a@x')",
            &[&id],
        )
        .await
        .expect("insert");
    let bundle = write.commit().await.expect("commit");
    assert_eq!(bundle.bundle_seq, 1);
    assert_eq!(bundle.source_id, "admin-panel");
    assert_eq!(bundle.source_bundle_id, 1);
    assert_eq!(
        api.connect(false).await["resolution"],
        "remote_authoritative"
    );
    let (s, b) = api.get("/sync/pull").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["bundles"][0]["source_id"], "admin-panel");
    assert_eq!(b["bundles"][0]["rows"][0]["payload"]["name"], "Admin made");

    // A write that changes nothing is refused and leaves no bundle.
    let write = service
        .begin_server_write("alice", "admin-panel")
        .await
        .expect("begin");
    let err = write.commit().await.expect_err("no effects");
    assert!(matches!(
        err,
        oversync_server::SyncError::NoCapturedChanges { .. }
    ));
    // A write cannot touch another user's rows: the owner guard refuses.
    let write = service
        .begin_server_write("alice", "admin-panel")
        .await
        .expect("begin");
    let res = write
        .client()
        .execute(
            "INSERT INTO business.users (_sync_scope_id, id, name, email) VALUES ('bob', $1::text::uuid, 'x', 'y')",
            &[&new_id()],
        )
        .await;
    assert!(res.is_err(), "scope mismatch is rejected");
    drop(write);
    // Writes outside a sync bundle are rejected and counted.
    let client = service.pool().get().await.expect("client");
    let res = client
        .execute("UPDATE business.users SET name = 'sneaky'", &[])
        .await;
    assert!(res.is_err());
    let (_, status) = api.get("/syncx/status").await;
    assert!(
        status["rejected_registered_write_count"]
            .as_i64()
            .expect("n")
            >= 1
    );

    // A staged push whose source sequence moved before commit is refused.
    let device = api.with_source("device-1");
    let (_, b) = device
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": 1}),
        )
        .await;
    let push_id = b["push_id"].as_str().expect("id").to_owned();
    let (s, _) = device
        .post(
            &format!("/sync/push-sessions/{push_id}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [user_row(&new_id(), "x")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let write = service
        .begin_server_write("alice", "device-1")
        .await
        .expect("begin");
    write
        .client()
        .execute(
            "UPDATE business.users SET name = 'by device-1 writer' WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("update");
    write.commit().await.expect("commit");
    let (s, b) = device
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "source_sequence_changed");
}

#[tokio::test]
async fn large_push_in_many_chunks_round_trips() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    const N: usize = 2500;
    let ids: Vec<String> = (0..N).map(|_| new_id()).collect();
    let (_, b) = api
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": N}),
        )
        .await;
    let push_id = b["push_id"].as_str().expect("push id").to_owned();
    for (i, chunk) in ids.chunks(1000).enumerate() {
        let rows: Vec<Value> = chunk.iter().map(|id| user_row(id, "bulk")).collect();
        let (s, b) = api
            .post(
                &format!("/sync/push-sessions/{push_id}/chunks"),
                json!({"start_row_ordinal": i * 1000, "rows": rows}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (s, b) = api
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["row_count"], N);
    let rows = api.committed_rows(1, 1000).await;
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r.key["id"].as_str().expect("id"))
        .collect();
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, want, "bundle keeps the pushed order");

    // Mixed batch: updates of half, deletes of a quarter, in one push.
    let mut rows: Vec<Value> = ids[..1000]
        .iter()
        .map(|id| {
            json!({"schema": "business", "table": "users", "key": {"id": id}, "op": "UPDATE",
                   "base_row_version": 1, "payload": {"id": id, "name": "upd", "email": "e"}})
        })
        .collect();
    rows.extend(ids[1000..1500].iter().map(|id| {
        json!({"schema": "business", "table": "users", "key": {"id": id}, "op": "DELETE",
               "base_row_version": 1})
    }));
    let (s, b) = api.push(2, rows).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["row_count"], 1500);
    let (s, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(snap["row_count"], N - 500);
}

/// The HTTP snapshot page (payloads written as the JSON text the server holds) says exactly
/// what `SyncService::snapshot_chunk` returns: the same rows, keys, versions and payloads,
/// BLOBs as base64 and typed values included, page by page.
#[tokio::test]
async fn snapshot_pages_over_http_match_the_library_answer() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let t = new_id();
    let typed = typed_row(&t, "n \"q\" é");
    let mut rows = vec![typed, file_row(&new_id(), "AAEC/w==")];
    rows.extend((0..5).map(|i| user_row(&new_id(), &format!("u{i}"))));
    let (s, b) = api.push(1, rows).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    let snapshot_id = snap["snapshot_id"]
        .as_str()
        .expect("snapshot id")
        .to_owned();
    let actor = oversync_server::Actor {
        user_id: "alice".into(),
        source_id: api.source().to_owned(),
    };
    let mut after = 0;
    let mut seen = 0;
    loop {
        let (s, b) = api
            .get(&format!(
                "/sync/snapshot-sessions/{snapshot_id}?after_row_ordinal={after}&max_rows=3"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let http: oversync_protocol::SnapshotChunkResponse =
            serde_json::from_value(b).expect("a snapshot page");
        let library = server
            .service()
            .snapshot_chunk(&actor, &snapshot_id, after, Some(3))
            .await
            .expect("library page");
        assert_eq!(http, library);
        seen += http.rows.len();
        if let Some(row) = http.rows.iter().find(|r| r.table == "typed_rows") {
            assert_eq!(row.payload["data"], "3q2+7w==");
            assert_eq!(row.payload["name"], "n \"q\" é");
            assert_eq!(row.payload["count_value"], 9007199254740991_i64);
        }
        after = http.next_row_ordinal;
        if !http.has_more {
            break;
        }
    }
    assert_eq!(seen, 7);
}
