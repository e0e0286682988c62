//! Every capture rule of the triggers, on real SQLite files.

mod common;

use common::*;
use diesel::RunQueryDsl;
use serde_json::json;

#[test]
fn insert_is_captured_with_every_column() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', 0.1 + 0.2, NULL)"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].table_name, "authors");
    assert_eq!(rows[0].key_json, key(&a));
    assert_eq!(rows[0].op, "INSERT");
    assert_eq!(rows[0].base_row_version, 0);
    let payload = rows[0].payload_json().expect("payload");
    assert_eq!(
        payload,
        json!({"id": a, "name": "Ann", "rating": 0.1 + 0.2, "born": null})
    );
    // Exactly the double that was written, not the 15-digit rendering.
    assert_eq!(payload["rating"].as_f64(), Some(0.30000000000000004));
}

#[test]
fn insert_then_update_stays_one_insert_with_latest_payload() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, 1970)"),
    );
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET name = 'Anna', born = NULL WHERE id = '{a}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].op, "INSERT");
    assert_eq!(rows[0].payload_json().unwrap()["name"], "Anna");
    assert_eq!(rows[0].payload_json().unwrap()["born"], json!(null));
}

#[test]
fn insert_then_delete_of_never_synced_row_leaves_nothing() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, NULL)"),
    );
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET name = 'B' WHERE id = '{a}'"),
    );
    exec(
        &mut db.conn,
        &format!("DELETE FROM authors WHERE id = '{a}'"),
    );
    assert!(dirty_rows(&mut db.conn).is_empty());
    assert_eq!(
        db.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        0
    );
}

#[test]
fn delete_of_a_key_in_the_frozen_outbox_is_a_real_delete() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, NULL)"),
    );
    // A push froze the insert (as `freeze` does) and its outcome is unknown.
    exec(
        &mut db.conn,
        "INSERT INTO _sync_outbox_rows(source_bundle_id, row_ordinal, schema_name, table_name, key_json, wire_key_json, op, base_row_version, local_payload) \
         SELECT 1, 0, 'main', table_name, key_json, '', op, base_row_version, payload FROM _sync_dirty_rows; DELETE FROM _sync_dirty_rows;",
    );
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET name = 'B' WHERE id = '{a}'"),
    );
    exec(
        &mut db.conn,
        &format!("DELETE FROM authors WHERE id = '{a}'"),
    );
    // The insert may commit: the delete must follow it, based on whatever version it gets.
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key_json, key(&a));
    assert_eq!(rows[0].op, "DELETE");
    assert_eq!(rows[0].base_row_version, 0);
    assert!(rows[0].payload.is_none());
    // A key no push carries still leaves nothing behind.
    let b = uuid(2);
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{b}', 'Bo', NULL, NULL)"),
    );
    exec(
        &mut db.conn,
        &format!("DELETE FROM authors WHERE id = '{b}'"),
    );
    assert_eq!(dirty_rows(&mut db.conn).len(), 1);
}

#[test]
fn update_and_delete_of_synced_row_keep_base_version() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    server_has(
        &mut db.conn,
        "authors",
        &key(&a),
        7,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, NULL)"),
    );
    assert!(
        dirty_rows(&mut db.conn).is_empty(),
        "apply-mode writes are not captured"
    );

    exec(
        &mut db.conn,
        &format!("UPDATE authors SET name = 'Anna' WHERE id = '{a}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(
        (rows[0].op.as_str(), rows[0].base_row_version),
        ("UPDATE", 7)
    );
    let ordinal = rows[0].dirty_ordinal;

    exec(
        &mut db.conn,
        &format!("DELETE FROM authors WHERE id = '{a}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].op.as_str(), rows[0].base_row_version),
        ("DELETE", 7)
    );
    assert_eq!(rows[0].payload, None);
    assert_eq!(
        rows[0].dirty_ordinal, ordinal,
        "first touch keeps its ordinal"
    );
}

#[test]
fn delete_then_reinsert_of_synced_row_becomes_update() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    server_has(
        &mut db.conn,
        "authors",
        &key(&a),
        3,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, NULL)"),
    );
    exec(
        &mut db.conn,
        &format!("DELETE FROM authors WHERE id = '{a}'"),
    );
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{a}', 'Again', 1.5, 2)"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].op.as_str(), rows[0].base_row_version),
        ("UPDATE", 3)
    );
    assert_eq!(
        rows[0].payload_json().unwrap(),
        json!({"id": a, "name": "Again", "rating": 1.5, "born": 2})
    );
}

#[test]
fn key_change_of_synced_row_is_delete_of_old_plus_write_of_new() {
    let mut db = fresh_db(true);
    let (old, new) = (uuid(1), uuid(2));
    server_has(
        &mut db.conn,
        "authors",
        &key(&old),
        4,
        &format!("INSERT INTO authors VALUES ('{old}', 'Ann', NULL, NULL)"),
    );
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET id = '{new}' WHERE id = '{old}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].key_json.as_str(),
            rows[0].op.as_str(),
            rows[0].base_row_version
        ),
        (key(&old).as_str(), "DELETE", 4)
    );
    assert_eq!(
        (
            rows[1].key_json.as_str(),
            rows[1].op.as_str(),
            rows[1].base_row_version
        ),
        (key(&new).as_str(), "INSERT", 0)
    );
    assert!(rows[0].dirty_ordinal < rows[1].dirty_ordinal);
    assert_eq!(rows[1].payload_json().unwrap()["id"], json!(new));
}

#[test]
fn key_change_of_never_synced_row_moves_the_insert() {
    let mut db = fresh_db(true);
    let (old, new) = (uuid(1), uuid(2));
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{old}', 'Ann', NULL, NULL)"),
    );
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET id = '{new}' WHERE id = '{old}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].key_json.as_str(), rows[0].op.as_str()),
        (key(&new).as_str(), "INSERT")
    );
}

#[test]
fn dirty_ordinal_keeps_first_touch_order() {
    let mut db = fresh_db(true);
    let ids: Vec<String> = (1..=4).map(uuid).collect();
    for id in &ids {
        exec(
            &mut db.conn,
            &format!("INSERT INTO authors VALUES ('{id}', 'x', NULL, NULL)"),
        );
    }
    // Touch them again in reverse; order must not change.
    for id in ids.iter().rev() {
        exec(
            &mut db.conn,
            &format!("UPDATE authors SET name = 'y' WHERE id = '{id}'"),
        );
    }
    let rows = dirty_rows(&mut db.conn);
    let order: Vec<String> = rows.iter().map(|r| r.key_json.clone()).collect();
    let expected: Vec<String> = ids.iter().map(|i| key(i)).collect();
    assert_eq!(order, expected);
    assert!(
        rows.iter()
            .all(|r| r.payload_json().unwrap()["name"] == "y")
    );
}

#[test]
fn blobs_are_hex_in_payload_and_keys_and_nulls_stay_null() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, NULL)"),
    );
    exec(
        &mut db.conn,
        &format!(
            "INSERT INTO books VALUES ('{}', '{a}', NULL, x'00ff10')",
            uuid(2)
        ),
    );
    exec(
        &mut db.conn,
        &format!("INSERT INTO books VALUES ('{}', '{a}', 'T', NULL)", uuid(3)),
    );
    exec(
        &mut db.conn,
        "INSERT INTO blobs VALUES (x'0123456789abcdef0123456789abcdef', x'')",
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(
        rows[1].payload_json().unwrap(),
        json!({"id": uuid(2), "author_id": a, "title": null, "cover": "00ff10"})
    );
    assert_eq!(rows[2].payload_json().unwrap()["cover"], json!(null));
    assert_eq!(
        rows[3].key_json,
        r#"{"id":"0123456789abcdef0123456789abcdef"}"#
    );
    assert_eq!(
        rows[3].payload_json().unwrap(),
        json!({"id": "0123456789abcdef0123456789abcdef", "data": ""})
    );
}

#[test]
fn keys_the_protocol_cannot_carry_are_rejected_at_write_time() {
    let mut db = fresh_db(true);
    for bad in [
        "not-a-uuid",
        "00000000-0000-4000-8000-00000000000A",
        " 00000000-0000-4000-8000-000000000001",
    ] {
        let err = try_exec(
            &mut db.conn,
            &format!("INSERT INTO authors VALUES ('{bad}', 'x', NULL, NULL)"),
        )
        .unwrap_err();
        assert!(
            err.contains("authors.id must be a lowercase dashed UUID string"),
            "{err}"
        );
    }
    let err = try_exec(
        &mut db.conn,
        "INSERT INTO authors VALUES (NULL, 'x', NULL, NULL)",
    )
    .unwrap_err();
    assert!(
        err.contains("NOT NULL constraint failed: authors.id"),
        "{err}"
    );
    let err = try_exec(&mut db.conn, "INSERT INTO blobs VALUES (x'0102', x'')").unwrap_err();
    assert!(
        err.contains("blobs.id must be a 16-byte BLOB UUID"),
        "{err}"
    );
    assert!(dirty_rows(&mut db.conn).is_empty());
    let count: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM authors")
        .get_result(&mut *db.conn)
        .unwrap();
    assert_eq!(count, 0, "the rejected write is rolled back");
}

#[test]
fn nothing_is_captured_in_apply_mode() {
    let mut db = fresh_db(true);
    exec(&mut db.conn, "UPDATE _sync_apply_state SET apply_mode = 1");
    exec(
        &mut db.conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'Ann', NULL, NULL)",
            uuid(1)
        ),
    );
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET name = 'B' WHERE id = '{}'", uuid(1)),
    );
    exec(
        &mut db.conn,
        &format!("DELETE FROM authors WHERE id = '{}'", uuid(1)),
    );
    assert!(dirty_rows(&mut db.conn).is_empty());
}

#[test]
fn guard_aborts_app_writes_during_a_transition_but_not_runtime_writes() {
    let mut db = fresh_db(true);
    let a = uuid(1);
    exec(
        &mut db.conn,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, NULL)"),
    );
    for kind in ["remote_replace", "source_recovery"] {
        exec(
            &mut db.conn,
            &format!("UPDATE _sync_operation_state SET kind = '{kind}'"),
        );
        for write in [
            format!(
                "INSERT INTO authors VALUES ('{}', 'x', NULL, NULL)",
                uuid(9)
            ),
            format!("UPDATE authors SET name = 'x' WHERE id = '{a}'"),
            format!("DELETE FROM authors WHERE id = '{a}'"),
        ] {
            let err = try_exec(&mut db.conn, &write).unwrap_err();
            assert!(err.contains("SYNC_TRANSITION_PENDING"), "{write}: {err}");
        }
        // The runtime itself writes in apply mode and passes the guard.
        exec(&mut db.conn, "UPDATE _sync_apply_state SET apply_mode = 1");
        exec(
            &mut db.conn,
            &format!("UPDATE authors SET name = 'server' WHERE id = '{a}'"),
        );
        exec(&mut db.conn, "UPDATE _sync_apply_state SET apply_mode = 0");
    }
    exec(
        &mut db.conn,
        "UPDATE _sync_operation_state SET kind = 'none'",
    );
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET name = 'after' WHERE id = '{a}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].payload_json().unwrap()["name"], "after");
}

#[test]
fn cascaded_deletes_and_updates_are_captured() {
    let mut db = fresh_db(true);
    let (a, b1, b2, b3) = (uuid(1), uuid(2), uuid(3), uuid(4));
    server_has(
        &mut db.conn,
        "authors",
        &key(&a),
        5,
        &format!("INSERT INTO authors VALUES ('{a}', 'Ann', NULL, NULL)"),
    );
    server_has(
        &mut db.conn,
        "books",
        &key(&b1),
        5,
        &format!("INSERT INTO books VALUES ('{b1}', '{a}', 'synced', NULL)"),
    );
    exec(
        &mut db.conn,
        &format!("INSERT INTO books VALUES ('{b2}', '{a}', 'local only', NULL)"),
    );

    // ON UPDATE CASCADE rewrites the children's foreign key: captured as updates.
    let a2 = uuid(9);
    exec(
        &mut db.conn,
        &format!("UPDATE authors SET id = '{a2}' WHERE id = '{a}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    let find = |rows: &[DirtyRow], k: &str| rows.iter().find(|r| r.key_json == key(k)).cloned();
    assert_eq!(find(&rows, &b1).unwrap().op, "UPDATE");
    assert_eq!(
        find(&rows, &b1).unwrap().payload_json().unwrap()["author_id"],
        json!(a2)
    );
    assert_eq!(find(&rows, &b2).unwrap().op, "INSERT");

    // ON DELETE CASCADE: the synced child becomes a DELETE, the local-only one disappears.
    exec(
        &mut db.conn,
        &format!("INSERT INTO books VALUES ('{b3}', '{a2}', 'x', NULL)"),
    );
    exec(
        &mut db.conn,
        &format!("DELETE FROM authors WHERE id = '{a2}'"),
    );
    let rows = dirty_rows(&mut db.conn);
    let b1_row = find(&rows, &b1).unwrap();
    assert_eq!(
        (
            b1_row.op.as_str(),
            b1_row.base_row_version,
            b1_row.payload.clone()
        ),
        ("DELETE", 5, None)
    );
    assert!(find(&rows, &b2).is_none());
    assert!(find(&rows, &b3).is_none());
    assert_eq!(find(&rows, &a).unwrap().op, "DELETE");
    assert!(find(&rows, &a2).is_none());
    assert_eq!(rows.len(), 2);
}

#[test]
fn capture_is_atomic_with_the_app_transaction() {
    let mut db = fresh_db(true);
    exec(&mut db.conn, "BEGIN");
    exec(
        &mut db.conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'Ann', NULL, NULL)",
            uuid(1)
        ),
    );
    exec(&mut db.conn, "ROLLBACK");
    assert!(dirty_rows(&mut db.conn).is_empty());

    // A captured write survives closing and reopening the file.
    exec(
        &mut db.conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'Ann', NULL, NULL)",
            uuid(2)
        ),
    );
    let path = db.path();
    let Db { conn, dir } = db;
    drop(conn);
    let mut reopened =
        oversync_diesel::OversyncConnection::establish(path.to_str().unwrap(), config()).unwrap();
    reopened.oversync().open().unwrap();
    assert_eq!(dirty_rows(&mut reopened).len(), 1);
    drop(dir);
}
