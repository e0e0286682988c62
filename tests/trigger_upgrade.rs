//! A database that ran the first trigger design (v1: every trigger rendered the row's JSON
//! into `_sync_dirty_rows.payload`, separate BEFORE guard triggers) gets the current triggers
//! and pushes what the old ones captured.
//!
//! `tests/fixtures/capture_triggers_v1.sql` is the `up.sql` the v1 derive generated for each
//! table of the business schema (the same generator wrote the v1 migrations kept in
//! `oversync-diesel/tests/fixtures/migrations`, which the migration-file tests upgrade).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::{Error, OversyncConnection, PushOutcome, SchemaError};
use oversync_e2e::schema::{files, typed_rows, users};
use oversync_e2e::*;

const V1_TRIGGERS: &str = include_str!("fixtures/capture_triggers_v1.sql");

fn count(conn: &mut SqliteConnection, sql: &str) -> i64 {
    diesel::dsl::sql::<diesel::sql_types::BigInt>(sql)
        .get_result(conn)
        .expect(sql)
}

fn typed_row(id: &str, rating: Option<f64>, data: Option<Vec<u8>>) -> TypedRow {
    TypedRow {
        id: id.into(),
        name: "typed".into(),
        note: None,
        count_value: Some(7),
        enabled_flag: 1,
        rating,
        data,
        created_at: None,
    }
}

fn insert_user(d: &mut Device, id: &str, name: &str) {
    diesel::insert_into(users::table)
        .values(&User {
            id: id.into(),
            name: name.into(),
            email: format!("{name}@example.com"),
            created_at: None,
            updated_at: None,
        })
        .execute(&mut *d.conn)
        .expect("insert user");
}

fn all_users(d: &mut Device) -> Vec<User> {
    users::table
        .order(users::id)
        .load(&mut *d.conn)
        .expect("users")
}

fn typed_rows_of(d: &mut Device) -> Vec<TypedRow> {
    typed_rows::table
        .order(typed_rows::id)
        .load(&mut *d.conn)
        .expect("typed rows")
}

fn files_of(d: &mut Device) -> Vec<File> {
    files::table
        .order(files::id)
        .load(&mut *d.conn)
        .expect("files")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_rows_captured_by_v1_triggers_push_after_the_upgrade() {
    let server = Server::start().await;
    let user = fresh_user("upgrade");
    let mut a = Device::new(&server, &user);
    a.conn.oversync().attach(&user).await.expect("attach");
    let (u1, u2, u3, u4) = (new_id(), new_id(), new_id(), new_id());
    let (t1, f1) = (new_id(), uuid::Uuid::new_v4().as_bytes().to_vec());
    for (id, name) in [(&u1, "one"), (&u2, "two"), (&u3, "three")] {
        insert_user(&mut a, id, name);
    }
    diesel::insert_into(typed_rows::table)
        .values(&typed_row(&t1, Some(1.5), None))
        .execute(&mut *a.conn)
        .unwrap();
    diesel::insert_into(files::table)
        .values(&File {
            id: f1.clone(),
            name: "f".into(),
            data: vec![1, 2, 3],
        })
        .execute(&mut *a.conn)
        .unwrap();
    a.conn.oversync().sync().await.expect("first sync");

    // The app as it ran with the v1 library: its triggers capture these edits.
    a.conn.batch_execute(V1_TRIGGERS).expect("v1 triggers");
    a.conn
        .batch_execute(&format!(
            "UPDATE users SET name = 'one v1' WHERE id = '{u1}';
             DELETE FROM users WHERE id = '{u2}';
             INSERT INTO users(id, name, email) VALUES ('{u4}', 'four', 'four@example.com');
             UPDATE typed_rows SET rating = 0.1 + 0.2, data = x'00ff' WHERE id = '{t1}';
             UPDATE files SET data = x'0a0b' WHERE id = x'{}';",
            f1.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
        .expect("edits under the v1 triggers");
    assert_eq!(
        count(
            &mut a.conn,
            "SELECT COUNT(*) FROM _sync_dirty_rows WHERE payload IS NOT NULL"
        ),
        4,
        "the v1 triggers stored each write's payload"
    );

    // A library upgrade refuses the old triggers instead of capturing with them...
    let path = a.path.to_str().expect("utf-8 path").to_string();
    a.conn = OversyncConnection::establish(&path, config()).expect("reopen");
    match a.conn.oversync().open() {
        Err(Error::Schema(SchemaError::TriggerStale { .. })) => {}
        other => panic!("expected TriggerStale, got {other:?}"),
    }
    // ...until the sync migrations install the current ones (and drop the v1 guards).
    oversync_diesel::migrations::run_sync_migrations(&mut a.conn).expect("upgrade triggers");
    a.conn.oversync().open().expect("open after the upgrade");
    a.conn
        .set_transport(transport_for(server.base_url(), &user));
    assert_eq!(
        count(
            &mut a.conn,
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%guard%'"
        ),
        0
    );
    assert_eq!(
        count(&mut a.conn, "SELECT COUNT(*) FROM _sync_dirty_rows"),
        5
    );

    // The current triggers coalesce with what v1 captured.
    a.conn
        .batch_execute(&format!(
            "UPDATE users SET name = 'four edited' WHERE id = '{u4}';
             UPDATE users SET email = 'one@new.example.com' WHERE id = '{u1}';
             DELETE FROM users WHERE id = '{u3}';"
        ))
        .expect("edits under the current triggers");
    let pending = a.conn.oversync().pending_changes().unwrap();
    let op_of = |key: &str| {
        pending
            .iter()
            .find(|c| c.key_json.contains(key))
            .map(|c| c.op.as_str())
    };
    assert_eq!(
        op_of(&u4),
        Some("INSERT"),
        "insert then update stays INSERT"
    );
    assert_eq!(op_of(&u1), Some("UPDATE"));
    assert_eq!(op_of(&u2), Some("DELETE"));
    assert_eq!(op_of(&u3), Some("DELETE"));

    let report = a
        .conn
        .oversync()
        .sync()
        .await
        .expect("push after the upgrade");
    assert!(
        matches!(report.push, PushOutcome::Pushed { rows_pushed: 6, .. }),
        "{report:?}"
    );
    assert_eq!(
        a.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        0
    );

    // A fresh device of the same user receives exactly the local state.
    let mut b = Device::new(&server, &user);
    b.conn.oversync().attach(&user).await.expect("attach b");
    b.conn.oversync().sync().await.expect("sync b");
    assert_eq!(all_users(&mut b), all_users(&mut a));
    assert_eq!(
        all_users(&mut b)
            .into_iter()
            .map(|u| (u.id, u.name))
            .collect::<Vec<_>>(),
        {
            let mut want = vec![
                (u1.clone(), "one v1".to_string()),
                (u4.clone(), "four edited".to_string()),
            ];
            want.sort();
            want
        }
    );
    let typed = typed_rows_of(&mut b);
    assert_eq!(typed, typed_rows_of(&mut a));
    assert_eq!(
        typed[0].rating,
        Some(0.1 + 0.2),
        "17 digits survive the trip"
    );
    assert_eq!(typed[0].data, Some(vec![0x00, 0xff]));
    assert_eq!(files_of(&mut b), files_of(&mut a));
    assert_eq!(files_of(&mut b)[0].data, vec![0x0a, 0x0b]);
}
