//! Snapshot sessions, source rotation, and isolation between users.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn snapshot_sessions_page_a_frozen_copy() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let ids: Vec<String> = (0..5).map(|_| new_id()).collect();
    let (s, b) = api
        .push(1, ids.iter().map(|id| user_row(id, "u")).collect())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let f = new_id();
    let file = json!({"schema": "business", "table": "files", "key": {"id": f}, "op": "INSERT",
                      "base_row_version": 0, "payload": {"id": f, "name": "f", "data": "AAEC"}});
    assert_eq!(api.push(2, vec![file]).await.0, StatusCode::OK);

    let (s, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    assert_eq!(snap["snapshot_bundle_seq"], 2);
    assert_eq!(snap["row_count"], 6);
    assert!(snap["expires_at"].as_str().expect("expiry").ends_with('Z'));
    let snapshot_id = snap["snapshot_id"].as_str().expect("id").to_owned();
    // Later commits do not change the frozen snapshot.
    assert_eq!(
        api.push(3, vec![user_row(&new_id(), "late")]).await.0,
        StatusCode::OK
    );
    let rows = all_snapshot_rows(&api, &snapshot_id, 4).await;
    assert_eq!(rows.len(), 6);
    let users: Vec<&Value> = rows.iter().filter(|r| r["table"] == "users").collect();
    assert_eq!(users.len(), 5);
    assert!(users.iter().all(|r| r["row_version"] == 1));
    let file = rows
        .iter()
        .find(|r| r["table"] == "files")
        .expect("file row");
    assert_eq!(file["payload"]["data"], "AAEC");
    assert_eq!(file["row_version"], 2);
    assert_eq!(file["key"], json!({"id": f}));
    assert!(file["payload"].get("_sync_scope_id").is_none());

    // A body-less create works too (the body is optional).
    let resp = api
        .http
        .post(format!("{}/sync/snapshot-sessions", api.base))
        .bearer_auth(api.token.as_deref().expect("token"))
        .header("Oversync-Source-ID", api.source())
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);

    for q in ["?max_rows=0", "?after_row_ordinal=-1", "?max_rows=x"] {
        let (s, b) = api
            .get(&format!("/sync/snapshot-sessions/{snapshot_id}{q}"))
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "snapshot_chunk_invalid");
    }
    let (s, _) = api
        .delete(&format!("/sync/snapshot-sessions/{snapshot_id}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for (s, b) in [
        api.get(&format!("/sync/snapshot-sessions/{snapshot_id}"))
            .await,
        api.delete(&format!("/sync/snapshot-sessions/{snapshot_id}"))
            .await,
        api.get("/sync/snapshot-sessions/not-a-uuid").await,
    ] {
        assert_error(s, &b, StatusCode::NOT_FOUND, "snapshot_session_not_found");
    }
}

/// Snapshot rows are unlogged: a crash of PostgreSQL empties them while the session row
/// survives. A page whose rows are gone (all of them, or some in its range) answers not found,
/// so the client starts a new snapshot instead of staging a copy with holes.
#[tokio::test]
async fn a_snapshot_whose_rows_were_lost_is_not_found() {
    let server = server().await;
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let rows = (0..6).map(|_| user_row(&new_id(), "u")).collect();
    assert_eq!(api.push(1, rows).await.0, StatusCode::OK);
    let (client, conn) = tokio_postgres::connect(&server.database().url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let page = |id: &str, after: i64| {
        format!("/sync/snapshot-sessions/{id}?after_row_ordinal={after}&max_rows=3")
    };

    // Part of one page lost: that page is refused, the intact one before it is served.
    let (s, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    let id = snap["snapshot_id"].as_str().expect("id").to_owned();
    client
        .execute(
            "DELETE FROM sync.snapshot_rows WHERE snapshot_id = $1::text::uuid AND row_ordinal = 5",
            &[&id],
        )
        .await
        .expect("lose a row");
    let (s, b) = api.get(&page(&id, 0)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["rows"].as_array().expect("rows").len(), 3);
    assert_eq!(b["has_more"], true);
    let (s, b) = api.get(&page(&id, 3)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "snapshot_session_not_found");

    // Every row lost, as crash recovery leaves an unlogged table.
    let (_, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    let id = snap["snapshot_id"].as_str().expect("id").to_owned();
    assert_eq!(all_snapshot_rows(&api, &id, 3).await.len(), 6);
    client
        .execute("TRUNCATE sync.snapshot_rows", &[])
        .await
        .expect("truncate");
    let (s, b) = api.get(&page(&id, 0)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "snapshot_session_not_found");
    // Past the end is still an empty last page, not an error.
    let (s, b) = api.get(&page(&id, 6)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["has_more"], false);
    assert_eq!(b["rows"].as_array().expect("rows").len(), 0);
}

#[tokio::test]
async fn expired_snapshot_is_gone() {
    let server = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.snapshot_session_ttl = std::time::Duration::from_secs(1);
    })
    .await
    .expect("server");
    let api = Api::new(&server, "alice");
    api.connect(false).await;
    let (_, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    let id = snap["snapshot_id"].as_str().expect("id").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (s, b) = api.get(&format!("/sync/snapshot-sessions/{id}")).await;
    assert_error(s, &b, StatusCode::GONE, "snapshot_session_expired");
}

#[tokio::test]
async fn source_replacement_retires_the_old_source() {
    let server = server().await;
    let old = Api::new(&server, "alice");
    old.connect(false).await;
    assert_eq!(
        old.push(1, vec![user_row(&new_id(), "a")]).await.0,
        StatusCode::OK
    );
    let new_source = new_id();
    let replacement = |prev: &str, new: &str, reason: &str| json!({"source_replacement": {"previous_source_id": prev, "new_source_id": new, "reason": reason}});
    for body in [
        replacement("someone-else", &new_source, "history_pruned"),
        replacement(old.source(), old.source(), "history_pruned"),
        replacement(old.source(), "", "history_pruned"),
        replacement(old.source(), &new_source, "because"),
        json!({"source_replacement": {"previous_source_id": old.source()}}),
    ] {
        let (s, b) = old.post("/sync/snapshot-sessions", body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "snapshot_session_invalid");
    }
    // A replacement id that already pushed is refused.
    let busy = old.with_source(&new_id());
    assert_eq!(
        busy.push(1, vec![user_row(&new_id(), "b")]).await.0,
        StatusCode::OK
    );
    let (s, b) = old
        .post(
            "/sync/snapshot-sessions",
            replacement(old.source(), busy.source(), "source_retired"),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "source_replacement_invalid");

    let (s, b) = old
        .post(
            "/sync/snapshot-sessions",
            replacement(old.source(), &new_source, "source_sequence_out_of_order"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["snapshot_bundle_seq"], 2);
    // Retrying the same rotation (e.g. after a crash) is allowed...
    let (s, b) = old
        .post(
            "/sync/snapshot-sessions",
            replacement(old.source(), &new_source, "source_sequence_out_of_order"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // ...a different replacement is not.
    let (s, b) = old
        .post(
            "/sync/snapshot-sessions",
            replacement(old.source(), &new_id(), "source_sequence_out_of_order"),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "source_retired");
    assert_eq!(b["source_id"], old.source());
    assert_eq!(b["replaced_by_source_id"], new_source.as_str());

    // The retired source can no longer push; the replacement starts at 1.
    let (s, b) = old
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 2, "planned_row_count": 1}),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "source_retired");
    assert_eq!(b["replaced_by_source_id"], new_source.as_str());
    let fresh = old.with_source(&new_source);
    let (s, b) = fresh.push(1, vec![user_row(&new_id(), "c")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["source_id"], new_source.as_str());
}

#[tokio::test]
async fn users_never_see_or_touch_each_others_data() {
    let server = server().await;
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");
    alice.connect(false).await;
    bob.connect(false).await;
    let (shared_id, alice_only) = (new_id(), new_id());
    let (s, b) = alice
        .push(
            1,
            vec![
                user_row(&shared_id, "alice-row"),
                user_row(&alice_only, "secret"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Alice's open push session and snapshot are off limits for Bob, whatever ids he sends.
    let (_, b) = alice
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 2, "planned_row_count": 1}),
        )
        .await;
    let push_id = b["push_id"].as_str().expect("push id").to_owned();
    let (_, snap) = alice.post("/sync/snapshot-sessions", json!({})).await;
    let snapshot_id = snap["snapshot_id"]
        .as_str()
        .expect("snapshot id")
        .to_owned();
    let (s, b) = bob
        .post(
            &format!("/sync/push-sessions/{push_id}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [user_row(&new_id(), "intruder")]}),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "push_session_forbidden");
    let (s, b) = bob
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "push_session_forbidden");
    let (s, b) = bob.delete(&format!("/sync/push-sessions/{push_id}")).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "push_session_forbidden");
    let (s, b) = bob
        .get(&format!("/sync/snapshot-sessions/{snapshot_id}"))
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "snapshot_session_forbidden");
    assert!(!b.to_string().contains("secret"));
    let (s, b) = bob
        .delete(&format!("/sync/snapshot-sessions/{snapshot_id}"))
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "snapshot_session_forbidden");
    // Alice's session and snapshot survived.
    let (s, _) = alice
        .get(&format!("/sync/snapshot-sessions/{snapshot_id}"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = alice
        .post(
            &format!("/sync/push-sessions/{push_id}/chunks"),
            json!({"start_row_ordinal": 0, "rows": [user_row(&new_id(), "mine")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Bob's bundle numbering, history and pulls are his own.
    let (s, b) = bob.get("/sync/committed-bundles/1/rows").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "committed_bundle_not_found");
    let (s, b) = bob.get("/sync/pull").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["stable_bundle_seq"], 0);

    // The same key in Bob's scope is a different row; Alice's keys do not exist for him.
    let (s, b) = bob.push(1, vec![user_row(&shared_id, "bob-row")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let update = json!({"schema": "business", "table": "users", "key": {"id": alice_only},
                        "op": "UPDATE", "base_row_version": 1,
                        "payload": {"id": alice_only, "name": "pwned", "email": "x"}});
    let (s, b) = bob.push(2, vec![update]).await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
    assert_eq!(b["conflict"]["server_row_version"], 0);
    assert_eq!(b["conflict"]["server_row"], Value::Null);
    let delete = json!({"schema": "business", "table": "users", "key": {"id": alice_only},
                        "op": "DELETE", "base_row_version": 1});
    let (s, b) = bob.push(2, vec![delete]).await;
    assert_error(s, &b, StatusCode::CONFLICT, "push_conflict");
    assert!(!b.to_string().contains("secret"));
    // Bob cannot smuggle the owner column either.
    let sneaky = json!({"schema": "business", "table": "users", "key": {"id": new_id()},
                        "op": "INSERT", "base_row_version": 0,
                        "payload": {"name": "x", "email": "y", "_SYNC_SCOPE_ID": "alice"}});
    let (s, b) = bob.push(2, vec![sneaky]).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "push_chunk_invalid");

    // Alice's data is untouched and contains nothing of Bob's.
    let (s, snap) = alice.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let rows = all_snapshot_rows(&alice, snap["snapshot_id"].as_str().expect("id"), 100).await;
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["payload"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(rows.len(), 2, "{names:?}");
    assert!(names.contains(&"alice-row") && names.contains(&"secret"));
    let (_, pull) = alice.get("/sync/pull").await;
    assert_eq!(pull["stable_bundle_seq"], 1);
    let (_, pull) = bob.get("/sync/pull").await;
    assert_eq!(pull["stable_bundle_seq"], 1);
    assert_eq!(pull["bundles"][0]["rows"][0]["payload"]["name"], "bob-row");
}
