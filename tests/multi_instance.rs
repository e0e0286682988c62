//! A dozen devices of three users syncing through two server instances over one PostgreSQL
//! database, each sync landing on the other instance than the last; at the end every
//! device equals what PostgreSQL holds for its user.

use diesel::prelude::*;
use oversync_e2e::schema::users;
use oversync_e2e::*;
use oversync_server::demo::{self, DemoConfig};

fn all_users(d: &mut Device) -> Vec<(String, String, String)> {
    users::table
        .select((users::id, users::name, users::email))
        .order(users::id)
        .load(&mut *d.conn)
        .expect("load users")
}

async fn server_users(url: &str, user: &str) -> Vec<(String, String, String)> {
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
        .expect("server rows");
    drop(client);
    let _ = driver.await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dozen_devices_alternating_between_two_instances_converge() {
    let first = oversync_testkit::TestServer::start_async()
        .await
        .expect("first instance");
    let db_url = first.database().url.clone();
    let second = demo::build_app(DemoConfig::new(&db_url))
        .await
        .expect("second instance on the same database");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let second_url = format!("http://{}", listener.local_addr().expect("addr"));
    let second_service = second.service.clone();
    let serving = tokio::spawn(async move {
        let _ = demo::serve(listener, second.router, std::future::pending()).await;
    });
    let server = Server::from_local(first);
    let instances = [server.base_url().to_owned(), second_url];

    let names: Vec<String> = (0..3).map(|i| fresh_user(&format!("multi{i}"))).collect();
    let mut devices: Vec<Device> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for j in 0..4 {
            let mut d = Device::new(&server, name);
            // Attach through alternating instances too: leases are shared state.
            d.conn
                .set_transport(transport_for(&instances[(i + j) % 2], name));
            d.conn.oversync().attach(name).await.expect("attach");
            devices.push(d);
        }
    }
    for round in 0..4 {
        for (k, d) in devices.iter_mut().enumerate() {
            let id = new_id();
            diesel::insert_into(users::table)
                .values(User {
                    id: id.clone(),
                    name: format!("r{round}d{k}"),
                    email: format!("r{round}d{k}@example.com"),
                    created_at: None,
                    updated_at: None,
                })
                .execute(&mut *d.conn)
                .expect("insert");
            // Edit a row another device of the user wrote, when this one has pulled it.
            let other: Option<String> = users::table
                .select(users::id)
                .filter(users::id.ne(&id))
                .order(users::id)
                .first(&mut *d.conn)
                .optional()
                .expect("pick");
            if let Some(other) = other {
                diesel::update(users::table.find(&other))
                    .set(users::email.eq(format!("edited-r{round}d{k}@example.com")))
                    .execute(&mut *d.conn)
                    .expect("update");
            }
            let user = d.user().to_owned();
            d.conn
                .set_transport(transport_for(&instances[(round + k) % 2], &user));
            d.conn.oversync().sync().await.expect("sync");
        }
    }
    // Two quiet rounds: everything pushed is pulled everywhere.
    for round in 0..2 {
        for (k, d) in devices.iter_mut().enumerate() {
            let user = d.user().to_owned();
            d.conn
                .set_transport(transport_for(&instances[(round + k) % 2], &user));
            d.conn.oversync().sync().await.expect("final sync");
        }
    }
    for d in devices.iter_mut() {
        let user = d.user().to_owned();
        let want = server_users(&db_url, &user).await;
        assert_eq!(want.len(), 16, "4 devices x 4 rounds of inserts for {user}");
        assert_eq!(all_users(d), want, "device of {user} equals PostgreSQL");
    }
    serving.abort();
    second_service.shutdown();
}
