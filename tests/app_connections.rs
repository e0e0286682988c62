//! App connections configured by `oversync_diesel::establish_app_connection`, or taken from a
//! Diesel r2d2 pool with `oversync_diesel::AppConnectionCustomizer`, never fail with
//! `database is locked` while the engine pushes, pulls and rebuilds behind a `SyncClient`:
//! two writer threads hammer inserts and updates through such connections during each phase,
//! and at the end every write they committed is on a fresh device with its last value.

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::collections::BTreeMap;
use std::ops::DerefMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the writers committed: id -> last name written.
type Committed = Arc<Mutex<BTreeMap<String, String>>>;

fn insert_users(conn: &mut SqliteConnection, prefix: &str, n: usize) {
    conn.immediate_transaction(|c| {
        for _ in 0..n {
            let id = new_id();
            diesel::insert_into(users::table)
                .values((
                    users::id.eq(&id),
                    users::name.eq(prefix),
                    users::email.eq(format!("{id}@example.com")),
                ))
                .execute(c)?;
        }
        diesel::QueryResult::Ok(())
    })
    .expect("seed rows");
}

/// Where a writer takes its connection for each write.
trait Connections: Send + 'static {
    /// A connection for one write.
    fn conn(&mut self) -> impl DerefMut<Target = SqliteConnection>;
}

/// One configured connection, kept open.
struct Own(SqliteConnection);

impl Connections for Own {
    fn conn(&mut self) -> impl DerefMut<Target = SqliteConnection> {
        &mut self.0
    }
}

/// A connection from the pool per write, returned after it.
struct Pooled(Pool<ConnectionManager<SqliteConnection>>);

impl Connections for Pooled {
    fn conn(&mut self) -> impl DerefMut<Target = SqliteConnection> {
        let conn: PooledConnection<_> = self.0.get().expect("a pooled connection");
        conn
    }
}

/// Inserts a row or renames one of its own rows, one statement at a time, until told to
/// stop; returns the writes the database refused (every one is reported).
fn spawn_writer(
    mut conns: impl Connections,
    tag: &'static str,
    stop: Arc<AtomicBool>,
    committed: Committed,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut refused = Vec::new();
        let mut mine: Vec<String> = Vec::new();
        let mut round = 0usize;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let result = if round.is_multiple_of(3) && !mine.is_empty() {
                let id = mine[round % mine.len()].clone();
                let name = format!("{tag}-renamed-{round}");
                diesel::update(users::table.find(&id))
                    .set(users::name.eq(&name))
                    .execute(&mut *conns.conn())
                    .map(|n| (n == 1).then_some((id, name)))
            } else {
                let id = new_id();
                let name = format!("{tag}-{round}");
                diesel::insert_into(users::table)
                    .values((
                        users::id.eq(&id),
                        users::name.eq(&name),
                        users::email.eq(format!("{id}@example.com")),
                    ))
                    .execute(&mut *conns.conn())
                    .map(|_| Some((id, name)))
            };
            match result {
                Ok(Some((id, name))) => {
                    if !mine.contains(&id) {
                        mine.push(id.clone());
                    }
                    committed.lock().unwrap().insert(id, name);
                }
                Ok(None) => {}
                Err(e) => refused.push(e.to_string()),
            }
            // A pause between writes, as between a user's actions (not synchronisation).
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        refused
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_app_connections_never_fail_during_push_pull_and_rebuild() {
    hammer_during_push_pull_and_rebuild(|a| [Own(a.app_connection()), Own(a.app_connection())])
        .await;
}

/// The same through an r2d2 pool of two connections configured by its customizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2d2_pool_with_the_customizer_never_fails_during_push_pull_and_rebuild() {
    hammer_during_push_pull_and_rebuild(|a| {
        let pool = Pool::builder()
            .max_size(2)
            .connection_customizer(Box::new(oversync_diesel::AppConnectionCustomizer))
            .build(ConnectionManager::<SqliteConnection>::new(
                a.path.to_str().expect("utf-8 path"),
            ))
            .expect("pool");
        [Pooled(pool.clone()), Pooled(pool)]
    })
    .await;
}

async fn hammer_during_push_pull_and_rebuild<C: Connections>(
    writers: impl FnOnce(&ClientDevice) -> [C; 2],
) {
    let server = Server::start().await;
    let name = fresh_user("app-conns");
    let mut a = Device::new(&server, &name);
    a.conn.oversync().attach(&name).await.expect("attach a");
    let mut b = Device::new(&server, &name);
    b.conn.oversync().attach(&name).await.expect("attach b");
    let a = a.into_client().await;

    let mut seed = a.app_connection();
    insert_users(&mut seed, "device-a", 3000);
    let committed: Committed = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let [c1, c2] = writers(&a);
    let writers = [
        spawn_writer(c1, "w1", stop.clone(), committed.clone()),
        spawn_writer(c2, "w2", stop.clone(), committed.clone()),
    ];

    let mut sync_errors = Vec::new();
    for phase in ["push", "pull", "rebuild"] {
        if phase == "pull" {
            insert_users(&mut b.conn, "device-b", 3000);
            b.conn.oversync().sync().await.expect("b sync");
        }
        let result = match phase {
            "rebuild" => a.client.rebuild().await.map(|_| ()),
            _ => a.client.sync().await.map(|_| ()),
        };
        if let Err(e) = result {
            sync_errors.push(format!("{phase}: {e}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut refused = Vec::new();
    for writer in writers {
        refused.extend(writer.join().expect("writer thread"));
    }
    assert_eq!(
        refused,
        Vec::<String>::new(),
        "app writes refused during sync"
    );
    assert_eq!(
        sync_errors,
        Vec::<String>::new(),
        "sync failed beside the app writers"
    );
    let committed = committed.lock().unwrap().clone();
    assert!(committed.len() > 10, "the writers wrote during the phases");

    // Quiet now: sync until nothing is pending, then compare with a fresh device.
    for _ in 0..5 {
        a.client.sync().await.expect("final sync a");
        if a.client.pending_sync_status().await.unwrap().pending_rows == 0 {
            break;
        }
    }
    assert_eq!(
        a.client.pending_sync_status().await.unwrap().pending_rows,
        0
    );
    let mut fresh = Device::new(&server, &name);
    fresh
        .conn
        .oversync()
        .attach(&name)
        .await
        .expect("fresh attach");
    let server_rows = user_names_by_id(&mut fresh.conn);
    for (id, last) in &committed {
        assert_eq!(
            server_rows.get(id),
            Some(last),
            "app write {id} lost or overwritten"
        );
    }
    assert_eq!(server_rows.len(), 6000 + committed.len());
    eprintln!(
        "{} rows written by the app during the phases",
        committed.len()
    );
    assert_eq!(
        user_names_by_id(&mut seed),
        server_rows,
        "device a equals a fresh device"
    );
    a.client.shutdown().await;
}
