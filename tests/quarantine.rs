//! Quarantine of rows the server refuses: a row that passes local checks but breaks a server
//! constraint, type or size limit must not block every later write. The refused row is set
//! aside with the server's error, the rest reaches the server in the same `sync()`, and the
//! app can list, retry and discard quarantined rows. Transient failures quarantine nothing.
//!
//! These tests change the server's schema, so they always run against our in-process
//! example server (never `OVERSYNC_TEST_SERVER_URL`).

mod common;

use common::*;
use diesel::prelude::*;
use oversync_diesel::{Error, QuarantinedRow, SyncEvent};
use oversync_e2e::schema::{posts, typed_rows, users};
use oversync_e2e::*;
use std::time::Duration;

async fn local_server() -> Server {
    let local = oversync_testkit::TestServer::start_async()
        .await
        .expect("start the example server");
    Server::from_local(local)
}

/// Runs SQL on the server's PostgreSQL database.
async fn server_sql(server: &Server, sql: &str) {
    let url = &server.local().expect("local server").database().url;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the server's database");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect("server SQL");
    drop(client);
    let _ = task.await;
}

async fn attached(server: &Server, user: &str) -> Device {
    let mut d = Device::new(server, user);
    d.conn.oversync().attach(user).await.expect("attach");
    d
}

/// A fresh device of `user`, hydrated from the server.
async fn fresh_device(server: &Server, user: &str) -> Device {
    let mut d = attached(server, user).await;
    d.conn.oversync().sync().await.expect("fresh device sync");
    d
}

fn quarantined(d: &mut Device) -> Vec<QuarantinedRow> {
    d.conn
        .oversync()
        .quarantined_rows()
        .expect("quarantined rows")
}

fn user_names(d: &mut Device) -> Vec<String> {
    let mut names: Vec<String> = users::table
        .select(users::name)
        .load(&mut *d.conn)
        .expect("names");
    names.sort();
    names
}

fn quarantine_events(rx: &mut tokio::sync::broadcast::Receiver<SyncEvent>) -> Vec<SyncEvent> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if matches!(event, SyncEvent::Quarantined { .. }) {
            out.push(event);
        }
    }
    out
}

/// Checks what every scenario shares once one row is quarantined: counts, detach refusal.
fn assert_blocks_detach_only(d: &mut Device) {
    let status = d.conn.oversync().pending_sync_status().unwrap();
    assert_eq!(status.pending_rows, 0, "{status:?}");
    assert_eq!(status.quarantined_rows, 1, "{status:?}");
    assert!(status.blocked_detach, "{status:?}");
    assert!(matches!(
        d.conn.oversync().detach(),
        Err(Error::QuarantinedRows { rows: 1 })
    ));
}

/// A CHECK constraint only the server has: the refused user (and a post referencing it,
/// which the server then refuses for its missing parent at commit, unnamed, so the client
/// bisects) are quarantined; the good rows before and after reach a fresh device; later
/// writes keep syncing; retry after the server is fixed and discard both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_constraint_quarantines_only_the_refused_rows() {
    let server = local_server().await;
    server_sql(
        &server,
        "ALTER TABLE business.users ADD CONSTRAINT users_name_not_poison CHECK (name NOT LIKE 'poison%')",
    )
    .await;
    let user = fresh_user("quarantine-check");
    let mut a = attached(&server, &user).await;
    let mut events = a.conn.subscribe();

    let (good1, bad, good2, post) = (new_id(), new_id(), new_id(), new_id());
    insert_user(&mut a, &good1, "good-one");
    insert_user(&mut a, &bad, "poison");
    diesel::insert_into(posts::table)
        .values(&Post {
            id: post.clone(),
            title: "t".into(),
            content: "c".into(),
            author_id: Some(bad.clone()),
            created_at: None,
            updated_at: None,
        })
        .execute(&mut *a.conn)
        .unwrap();
    insert_user(&mut a, &good2, "good-two");

    a.conn
        .oversync()
        .sync()
        .await
        .expect("sync despite a refused row");
    let rows = quarantined(&mut a);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let user_row = rows.iter().find(|r| r.table == "users").expect("user row");
    assert_eq!(user_row.key, bad);
    assert_eq!(user_row.http_status, 400);
    assert_eq!(user_row.error_code, "push_commit_invalid");
    assert!(
        user_row.error_message.contains("users_name_not_poison"),
        "{user_row:?}"
    );
    assert_eq!(user_row.op, oversync_diesel::protocol::Op::Insert);
    assert_eq!(user_row.payload.as_ref().unwrap()["name"], "poison");
    let post_row = rows.iter().find(|r| r.table == "posts").expect("post row");
    assert_eq!(post_row.key, post);
    assert!(
        post_row.error_message.contains("foreign key"),
        "{post_row:?}"
    );
    let seen = quarantine_events(&mut events);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().any(|e| matches!(e,
        SyncEvent::Quarantined { table, key, error } if table == "users" && *key == bad && error.contains("push_commit_invalid"))));

    let mut b = fresh_device(&server, &user).await;
    assert_eq!(user_names(&mut b), ["good-one", "good-two"]);

    // Later writes are not blocked by the quarantined rows.
    insert_user(&mut a, &new_id(), "good-three");
    a.conn.oversync().sync().await.unwrap();
    assert_eq!(quarantined(&mut a).len(), 2);
    b.conn.oversync().sync().await.unwrap();
    assert_eq!(user_names(&mut b), ["good-one", "good-three", "good-two"]);

    // Detach is refused while rows wait in quarantine; syncing does not push them.
    let status = a.conn.oversync().pending_sync_status().unwrap();
    assert_eq!((status.pending_rows, status.quarantined_rows), (0, 2));
    assert!(matches!(
        a.conn.oversync().detach(),
        Err(Error::QuarantinedRows { rows: 2 })
    ));

    // Retry after the server is fixed: parent first, then the child.
    server_sql(
        &server,
        "ALTER TABLE business.users DROP CONSTRAINT users_name_not_poison",
    )
    .await;
    a.conn.oversync().retry_quarantined(user_row.id).unwrap();
    a.conn.oversync().retry_quarantined(post_row.id).unwrap();
    assert!(matches!(
        a.conn.oversync().retry_quarantined(post_row.id),
        Err(Error::QuarantineEntryNotFound { .. })
    ));
    assert_eq!(
        a.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        2
    );
    a.conn.oversync().sync().await.unwrap();
    assert!(quarantined(&mut a).is_empty());
    b.conn.oversync().sync().await.unwrap();
    assert_eq!(
        user_names(&mut b),
        ["good-one", "good-three", "good-two", "poison"]
    );
    assert_eq!(dump(&mut a, "posts"), dump(&mut b, "posts"));
    assert_eq!(dump(&mut b, "posts").len(), 1);
    a.conn
        .oversync()
        .detach()
        .expect("nothing blocks detach now");
}

/// A value SQLite's flexible typing accepts and the server's BIGINT refuses: the row is
/// quarantined with the server's error; fixing the local row and retrying pushes it.
/// Discarding another such row restores the server's state (the row is gone locally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_type_refusal_quarantines_and_retry_after_fix_pushes() {
    let server = local_server().await;
    let user = fresh_user("quarantine-type");
    let mut a = attached(&server, &user).await;
    let (good, bad) = (new_id(), new_id());
    insert_user(&mut a, &new_id(), "before");
    let typed = |id: &str, count: &str| {
        format!(
            "INSERT INTO typed_rows(id, name, count_value, enabled_flag) VALUES ('{id}', 'n', {count}, 1)"
        )
    };
    diesel::sql_query(typed(&good, "7"))
        .execute(&mut *a.conn)
        .unwrap();
    diesel::sql_query(typed(&bad, "'not-a-number'"))
        .execute(&mut *a.conn)
        .unwrap();
    insert_user(&mut a, &new_id(), "after");

    a.conn
        .oversync()
        .sync()
        .await
        .expect("sync despite a refused row");
    let rows = quarantined(&mut a);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].table.as_str(), rows[0].key.as_str()),
        ("typed_rows", bad.as_str())
    );
    assert_eq!(rows[0].error_code, "push_commit_invalid");
    assert!(rows[0].error_message.contains("bigint"), "{:?}", rows[0]);
    assert_eq!(
        rows[0].payload.as_ref().unwrap()["count_value"],
        "not-a-number"
    );
    assert_blocks_detach_only(&mut a);

    let mut b = fresh_device(&server, &user).await;
    assert_eq!(user_names(&mut b), ["after", "before"]);
    let counts: Vec<(String, Option<i64>)> = typed_rows::table
        .select((typed_rows::id, typed_rows::count_value))
        .load(&mut *b.conn)
        .unwrap();
    assert_eq!(counts, [(good.clone(), Some(7))]);

    // The app fixes the row, then retries the entry.
    diesel::sql_query(format!(
        "UPDATE typed_rows SET count_value = 42 WHERE id = '{bad}'"
    ))
    .execute(&mut *a.conn)
    .unwrap();
    a.conn.oversync().retry_quarantined(rows[0].id).unwrap();
    a.conn.oversync().sync().await.unwrap();
    assert!(quarantined(&mut a).is_empty());
    b.conn.oversync().sync().await.unwrap();
    let mut counts: Vec<(String, Option<i64>)> = typed_rows::table
        .select((typed_rows::id, typed_rows::count_value))
        .load(&mut *b.conn)
        .unwrap();
    counts.sort();
    let mut expected = vec![(good.clone(), Some(7)), (bad.clone(), Some(42))];
    expected.sort();
    assert_eq!(counts, expected);

    // Discard: a refused update of a row the server has. The local row returns to the
    // server's version; other pending changes survive the rebuild.
    diesel::sql_query(format!(
        "UPDATE typed_rows SET count_value = 'still-not-a-number' WHERE id = '{good}'"
    ))
    .execute(&mut *a.conn)
    .unwrap();
    a.conn.oversync().sync().await.unwrap();
    let rows = quarantined(&mut a);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].op, oversync_diesel::protocol::Op::Update);
    assert!(rows[0].base_row_version > 0);
    insert_user(&mut a, &new_id(), "pending-during-discard");
    a.conn.oversync().discard_quarantined(rows[0].id).unwrap();
    assert!(quarantined(&mut a).is_empty());
    assert!(a.conn.oversync().source_info().unwrap().rebuild_required);
    a.conn.oversync().sync().await.unwrap();
    let restored: Option<i64> = typed_rows::table
        .find(&good)
        .select(typed_rows::count_value)
        .first(&mut *a.conn)
        .unwrap();
    assert_eq!(restored, Some(7));
    b.conn.oversync().sync().await.unwrap();
    assert_eq!(
        user_names(&mut b),
        ["after", "before", "pending-during-discard"]
    );
    assert_eq!(user_names(&mut a), user_names(&mut b));
    a.conn
        .oversync()
        .detach()
        .expect("nothing blocks detach now");
}

/// A row larger than the server's body limit: `413` on the chunk; the chunk is retried in
/// halves until the big row is alone, which is quarantined; the rest commits. Retry after
/// shrinking the row works; discarding an insert the server never had deletes it locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_row_is_quarantined_and_the_rest_pushed() {
    let local =
        oversync_testkit::TestServer::start_async_with(|c| c.limits.max_body_bytes = 64 * 1024)
            .await
            .expect("start the example server");
    let server = Server::from_local(local);
    let user = fresh_user("quarantine-large");
    let mut a = attached(&server, &user).await;
    let big = "x".repeat(100 * 1024);
    let bad = new_id();
    for i in 0..5 {
        insert_user(&mut a, &new_id(), &format!("small-{i}"));
    }
    insert_user(&mut a, &bad, &big);
    for i in 5..10 {
        insert_user(&mut a, &new_id(), &format!("small-{i}"));
    }
    let mut events = a.conn.subscribe();
    a.conn
        .oversync()
        .sync()
        .await
        .expect("sync despite a too-large row");
    let rows = quarantined(&mut a);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].key, bad);
    assert_eq!(rows[0].http_status, 413);
    assert_eq!(rows[0].error_code, "request_too_large");
    assert_eq!(quarantine_events(&mut events).len(), 1);
    assert_blocks_detach_only(&mut a);

    let mut b = fresh_device(&server, &user).await;
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..10).map(|i| format!("small-{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(user_names(&mut b), expected);

    // Shrink the row, retry.
    diesel::update(users::table.find(&bad))
        .set((
            users::name.eq("shrunk"),
            users::email.eq("shrunk@example.com"),
        ))
        .execute(&mut *a.conn)
        .unwrap();
    a.conn.oversync().retry_quarantined(rows[0].id).unwrap();
    a.conn.oversync().sync().await.unwrap();
    assert!(quarantined(&mut a).is_empty());
    b.conn.oversync().sync().await.unwrap();
    assert!(user_names(&mut b).contains(&"shrunk".to_string()));

    // Discard a too-large insert: the server never had it, so it is deleted locally.
    let huge = new_id();
    insert_user(&mut a, &huge, &big);
    a.conn.oversync().sync().await.unwrap();
    let rows = quarantined(&mut a);
    assert_eq!(rows.len(), 1);
    a.conn.oversync().discard_quarantined(rows[0].id).unwrap();
    a.conn.oversync().sync().await.unwrap();
    let left: i64 = users::table
        .filter(users::id.eq(&huge))
        .count()
        .get_result(&mut *a.conn)
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(user_names(&mut a), user_names(&mut b));
    assert!(matches!(
        a.conn.oversync().discard_quarantined(rows[0].id),
        Err(Error::QuarantineEntryNotFound { .. })
    ));
}

/// Transient failures never quarantine: a `503` on chunk upload or commit leaves every row
/// pending, and the next sync pushes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_503_quarantines_nothing() {
    let server = local_server().await;
    let user = fresh_user("quarantine-503");
    let proxy = Proxy::start(server.base_url()).await;
    let mut a = Device::new(&server, &user);
    a.conn.set_transport(transport_with_timeout(
        proxy.url(),
        &user,
        Duration::from_secs(10),
    ));
    a.conn.oversync().attach(&user).await.unwrap();
    for i in 0..3 {
        insert_user(&mut a, &new_id(), &format!("u{i}"));
    }
    for pattern in [
        "/sync/push-sessions/*/chunks",
        "/sync/push-sessions/*/commit",
    ] {
        proxy.fault("POST", pattern, Fault::Status(503), Times::Always);
        let err = a
            .conn
            .oversync()
            .sync()
            .await
            .expect_err("503 fails the sync");
        assert!(matches!(err, Error::Transport(_)), "{err:?}");
        assert!(quarantined(&mut a).is_empty());
        let status = a.conn.oversync().pending_sync_status().unwrap();
        assert_eq!((status.pending_rows, status.quarantined_rows), (3, 0));
        proxy.clear();
    }
    a.conn.oversync().sync().await.unwrap();
    assert!(quarantined(&mut a).is_empty());
    let mut b = fresh_device(&server, &user).await;
    assert_eq!(user_names(&mut b), ["u0", "u1", "u2"]);
}
