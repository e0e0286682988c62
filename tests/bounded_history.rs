//! Bounded history with the real retention rule (newest 3 bundles per user): a device
//! offline while the window moved past it converges through a snapshot, and one that
//! wrote while offline loses nothing.

use diesel::prelude::*;
use oversync_e2e::schema::users;
use oversync_e2e::*;

fn all_users(d: &mut Device) -> Vec<(String, String, String)> {
    users::table
        .select((users::id, users::name, users::email))
        .order(users::id)
        .load(&mut *d.conn)
        .expect("load users")
}

fn insert(d: &mut Device, name: &str) -> String {
    let id = new_id();
    diesel::insert_into(users::table)
        .values(User {
            id: id.clone(),
            name: name.into(),
            email: format!("{name}@example.com"),
            created_at: None,
            updated_at: None,
        })
        .execute(&mut *d.conn)
        .expect("insert");
    id
}

async fn server_state(url: &str, user: &str) -> (Vec<(String, String, String)>, i64) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT id::text, name, email FROM business.users WHERE _sync_scope_id = $1 ORDER BY id::text",
            &[&user],
        )
        .await
        .expect("rows");
    let floor: i64 = client
        .query_one(
            "SELECT retained_bundle_floor FROM sync.user_state WHERE user_id = $1",
            &[&user],
        )
        .await
        .expect("floor")
        .get(0);
    drop(client);
    let _ = driver.await;
    (
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
        floor,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_past_the_window_converge_and_keep_their_writes() {
    let local = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.retained_bundles_per_user = 3;
    })
    .await
    .expect("server");
    let url = local.database().url.clone();
    let server = Server::from_local(local);
    let name = fresh_user("bounded");
    let mut writer = Device::new(&server, &name);
    writer.conn.oversync().attach(&name).await.expect("attach");
    insert(&mut writer, "first");
    writer.conn.oversync().sync().await.expect("sync");
    let mut idle = Device::new(&server, &name);
    idle.conn
        .oversync()
        .attach(&name)
        .await
        .expect("attach idle");
    let mut offline_writer = Device::new(&server, &name);
    offline_writer
        .conn
        .oversync()
        .attach(&name)
        .await
        .expect("attach offline writer");

    // Offline: these two rows exist only on this device while the window moves on.
    let mine = [
        insert(&mut offline_writer, "offline-a"),
        insert(&mut offline_writer, "offline-b"),
    ];
    for i in 0..10 {
        insert(&mut writer, &format!("w{i}"));
        writer.conn.oversync().sync().await.expect("sync");
    }
    let (_, floor) = server_state(&url, &name).await;
    assert_eq!(floor, 11 - 3, "only the newest 3 of 11 bundles are kept");

    idle.conn
        .oversync()
        .sync()
        .await
        .expect("idle device syncs");
    offline_writer
        .conn
        .oversync()
        .sync()
        .await
        .expect("offline writer syncs");
    writer.conn.oversync().sync().await.expect("writer syncs");
    idle.conn
        .oversync()
        .sync()
        .await
        .expect("idle device syncs again");
    let (rows, _) = server_state(&url, &name).await;
    assert_eq!(rows.len(), 13);
    for id in &mine {
        assert!(
            rows.iter().any(|r| &r.0 == id),
            "offline write {id} reached the server"
        );
    }
    assert_eq!(
        all_users(&mut idle),
        rows,
        "idle device converged by snapshot"
    );
    assert_eq!(all_users(&mut offline_writer), rows);
    assert_eq!(all_users(&mut writer), rows);
}
