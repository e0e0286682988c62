//! App writes through a second connection (a pool, a UI thread) while the
//! `OversyncConnection` pushes, pulls and rebuilds are never lost or overwritten: a writer
//! thread hammers the synced table through its own plain Diesel connection during each phase,
//! and at the end every write it committed is on the server, on the device and on a fresh
//! device, with its last value.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the writer committed: id -> last name written.
type Committed = Arc<Mutex<BTreeMap<String, String>>>;

fn insert_users(conn: &mut SqliteConnection, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|_| new_id()).collect();
    conn.immediate_transaction(|c| {
        for id in &ids {
            diesel::insert_into(users::table)
                .values((
                    users::id.eq(id),
                    users::name.eq(prefix),
                    users::email.eq(format!("{id}@example.com")),
                ))
                .execute(c)?;
        }
        diesel::QueryResult::Ok(())
    })
    .expect("seed rows");
    ids
}

/// Inserts a row or renames one of its own rows, one small transaction at a time, until
/// told to stop. Every committed write is recorded; a write the database refused is not
/// an accepted write (and the test fails if any was refused: the busy timeout must cover
/// every lock the engine takes).
fn spawn_writer(
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    committed: Committed,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut conn =
            SqliteConnection::establish(path.to_str().expect("utf-8")).expect("writer conn");
        conn.batch_execute("PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;")
            .expect("pragmas");
        let mut refused = 0;
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let own: Vec<String> = committed.lock().unwrap().keys().cloned().collect();
            let result = if round.is_multiple_of(3) && !own.is_empty() {
                let id = own[(round as usize) % own.len()].clone();
                let name = format!("renamed-{round}");
                diesel::update(users::table.find(&id))
                    .set(users::name.eq(&name))
                    .execute(&mut conn)
                    .map(|n| (n == 1).then_some((id, name)))
            } else {
                let id = new_id();
                let name = format!("writer-{round}");
                diesel::insert_into(users::table)
                    .values((
                        users::id.eq(&id),
                        users::name.eq(&name),
                        users::email.eq(format!("{id}@example.com")),
                    ))
                    .execute(&mut conn)
                    .map(|_| Some((id, name)))
            };
            match result {
                Ok(Some((id, name))) => {
                    committed.lock().unwrap().insert(id, name);
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("writer: {e}");
                    refused += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        refused
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_another_connection_during_push_pull_and_rebuild_are_kept() {
    let server = Server::start().await;
    let name = fresh_user("hammer");
    let mut a = Device::new(&server, &name);
    a.conn.oversync().attach(&name).await.expect("attach a");
    let mut b = Device::new(&server, &name);
    b.conn.oversync().attach(&name).await.expect("attach b");

    let committed: Committed = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(a.path.clone(), stop.clone(), committed.clone());

    // Push: a large local batch of the device's own, interleaved with the writer.
    insert_users(&mut a.conn, "device-a", 3000);
    let mut errors = Vec::new();
    for phase in ["push", "pull", "rebuild"] {
        if phase == "pull" {
            // Rows from another device for A to pull while the writer keeps writing.
            insert_users(&mut b.conn, "device-b", 3000);
            b.conn.oversync().sync().await.expect("b sync");
        }
        let result = match phase {
            "rebuild" => a.conn.oversync().rebuild().await.map(|_| ()),
            _ => a.conn.oversync().sync().await.map(|_| ()),
        };
        // A typed error while another connection writes is acceptable; losing a write is not.
        if let Err(e) = result {
            errors.push(format!("{phase}: {e}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let refused = writer.join().expect("writer thread");
    assert_eq!(refused, 0, "writes refused during sync");
    let committed = committed.lock().unwrap().clone();
    assert!(committed.len() > 10, "the writer wrote during the phases");

    // Quiet now: sync until nothing is pending, then compare with a fresh device.
    let mut pending = u64::MAX;
    for _ in 0..5 {
        a.conn.oversync().sync().await.expect("final sync a");
        pending = a
            .conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows;
        if pending == 0 {
            break;
        }
    }
    assert_eq!(pending, 0, "a still has pending rows");
    b.conn.oversync().sync().await.expect("final sync b");
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
            "writer's row {id} lost or overwritten (sync errors during hammering: {errors:?})"
        );
    }
    assert_eq!(server_rows.len(), 6000 + committed.len());
    assert_eq!(
        user_names_by_id(&mut a.conn),
        server_rows,
        "device a equals the server"
    );
    assert_eq!(
        user_names_by_id(&mut b.conn),
        server_rows,
        "device b equals the server"
    );
}
