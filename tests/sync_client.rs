//! The owned `SyncClient`: its futures are `'static` (spawn them, race them), status reads
//! never wait for the engine, SQLite's busy waits happen off the app's runtime, dropping a
//! call cancels it without losing anything, and `shutdown()` ends the engine cleanly.

mod common;

use common::{Fault, Proxy, Times};
use diesel::prelude::*;
use oversync_diesel::{Error, OversyncConnection, SyncClient, SyncEvent};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::time::Duration;

/// Far longer than any step here takes; only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

fn insert(conn: &mut SqliteConnection, id: &str, name: &str) {
    diesel::insert_into(users::table)
        .values(&common::user_row(id, name))
        .execute(conn)
        .expect("insert");
}

fn count_id(conn: &mut SqliteConnection, id: &str) -> i64 {
    users::table
        .filter(users::id.eq(id))
        .count()
        .get_result(conn)
        .expect("count")
}

async fn attached_client(server: &Server, base_url: &str, name: &str) -> ClientDevice {
    let mut d = Device::new(server, name);
    d.conn.set_transport(transport_for(base_url, name));
    d.conn.oversync().attach(name).await.expect("attach");
    d.into_client().await
}

/// Waits (by polling a condition, never a fixed sleep) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(HANG, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[test]
fn the_handle_is_clone_send_sync_debug_and_static() {
    fn shape<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    shape::<SyncClient>();
    shape::<Error>();
    fn debug<T: std::fmt::Debug>() {}
    debug::<OversyncConnection>();
    debug::<oversync_diesel::WatchHandle>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_static_futures_events_and_statuses_work() {
    let server = Server::start().await;
    let name = fresh_user("client-shape");
    let a = attached_client(&server, server.base_url(), &name).await;
    let mut events = a.client.subscribe();
    let id = new_id();
    insert(&mut a.app_connection(), &id, "owned");
    assert_eq!(
        a.client.pending_sync_status().await.unwrap().pending_rows,
        1
    );

    // `let fut = client.sync()` and `tokio::spawn(client.sync())` are the shapes the
    // borrowed handle refused (E0716, E0597).
    let fut = a.client.sync();
    let report = tokio::spawn(fut).await.expect("join").expect("sync");
    assert!(
        matches!(report.push, oversync_diesel::PushOutcome::Pushed { .. }),
        "{report:?}"
    );
    let status = a.client.sync_status().await.unwrap();
    assert_eq!(status.pending_rows, 0);
    assert!(!status.push_in_flight);
    let mut saw_progress = false;
    while let Ok(event) = events.try_recv() {
        saw_progress |= matches!(event, SyncEvent::Progress { .. });
    }
    assert!(saw_progress, "events reach subscribers of the client");
    let info = a
        .client
        .with_connection(|conn| conn.oversync().source_info())
        .await
        .unwrap();
    assert!(!info.current_source_id.is_empty());
    assert!(format!("{:?}", a.client).contains("SyncClient"));

    let mut fresh = Device::new(&server, &name);
    fresh
        .conn
        .oversync()
        .attach(&name)
        .await
        .expect("fresh attach");
    assert_eq!(count_id(&mut fresh.conn, &id), 1);
    a.client.shutdown().await;
}

/// The engine is held inside a write transaction of its own; a status read still answers,
/// from the last committed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_do_not_wait_for_the_engine() {
    let server = Server::start().await;
    let name = fresh_user("client-status");
    let a = attached_client(&server, server.base_url(), &name).await;
    insert(&mut a.app_connection(), &new_id(), "committed");

    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let busy = a.client.clone();
    let held = tokio::spawn(async move {
        busy.with_connection(move |conn| {
            conn.immediate_transaction(|c| {
                insert(c, &new_id(), "uncommitted");
                let _ = entered_tx.send(());
                let _ = release_rx.recv();
                diesel::QueryResult::Ok(())
            })?;
            Ok(())
        })
        .await
    });
    entered_rx.await.expect("engine entered its transaction");

    let pending = tokio::time::timeout(HANG, a.client.pending_sync_status())
        .await
        .expect("a status read waited for the engine")
        .expect("status");
    assert_eq!(
        pending.pending_rows, 1,
        "the uncommitted row is not visible yet"
    );
    let status = tokio::time::timeout(HANG, a.client.sync_status())
        .await
        .expect("a status read waited for the engine")
        .expect("status");
    assert_eq!(status.pending_rows, 1);

    release_tx.send(()).unwrap();
    held.await.expect("join").expect("engine transaction");
    assert_eq!(
        a.client.pending_sync_status().await.unwrap().pending_rows,
        2
    );
    a.client.shutdown().await;
}

/// The app holds the write lock while a sync starts: SQLite's busy wait happens on the
/// engine thread, so this current-thread runtime keeps ticking (inline, the wait would
/// freeze it and the lock would never be released in time), and the sync then succeeds.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_wait_does_not_stall_the_app_runtime() {
    let server = Server::start().await;
    let name = fresh_user("client-busy");
    let a = attached_client(&server, server.base_url(), &name).await;
    // Capabilities are cached by this first sync, so the next one goes straight to SQLite.
    a.client.sync().await.expect("first sync");
    let id = new_id();
    insert(&mut a.app_connection(), &id, "queued");

    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let mut holder = a.app_connection();
    let lock_holder = std::thread::spawn(move || {
        holder
            .immediate_transaction(|_| {
                let _ = locked_tx.send(());
                let _ = release_rx.recv();
                diesel::QueryResult::Ok(())
            })
            .expect("app transaction");
    });
    locked_rx.await.expect("app holds the write lock");

    let syncing = tokio::spawn({
        let client = a.client.clone();
        async move { client.sync().await }
    });
    let mut ticks = 0;
    while ticks < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ticks += 1;
    }
    release_tx.send(()).unwrap();
    lock_holder.join().expect("lock holder");
    let report = tokio::time::timeout(HANG, syncing)
        .await
        .expect("sync finished")
        .expect("join")
        .expect("sync after the app released its lock");
    assert!(
        matches!(report.push, oversync_diesel::PushOutcome::Pushed { .. }),
        "{report:?}"
    );
    a.client.shutdown().await;
}

/// A sync future dropped while its commit is on the wire (a lost `select!` branch) cancels
/// the call; the engine goes on serving, and the next sync delivers the row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_sync_future_loses_nothing() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("client-drop");
    let a = attached_client(&server, proxy.url(), &name).await;
    let id = new_id();
    insert(&mut a.app_connection(), &id, "dropped-mid-commit");
    proxy.fault(
        "POST",
        "/sync/push-sessions/*/commit",
        // Never answered within the test: only cancellation frees the engine.
        Fault::Delay(Duration::from_secs(600)),
        Times::First(1),
    );
    // Boxed, so that `drop` below really drops the future (a `pin!`ned one lives on).
    let mut sync = Box::pin(a.client.sync());
    let log = || proxy.log().iter().any(|r| r.ends_with("/commit"));
    tokio::select! {
        done = &mut sync => panic!("the sync finished before the commit was seen: {done:?}"),
        _ = until("the commit request", log) => {}
    }
    drop(sync);
    // The engine serves the next job: the dropped call was cancelled, not waited out.
    tokio::time::timeout(HANG, a.client.with_connection(|_| Ok(())))
        .await
        .expect("the engine is still busy with the dropped call")
        .expect("engine job");
    let mut pending = u64::MAX;
    for _ in 0..3 {
        a.client.sync().await.expect("sync after the drop");
        pending = a.client.pending_sync_status().await.unwrap().pending_rows;
        if pending == 0 {
            break;
        }
    }
    assert_eq!(pending, 0);
    let mut fresh = Device::new(&server, &name);
    fresh
        .conn
        .oversync()
        .attach(&name)
        .await
        .expect("fresh attach");
    assert_eq!(count_id(&mut fresh.conn, &id), 1);
    a.client.shutdown().await;
}

/// `shutdown()` cancels a call waiting on the network, later calls fail with a typed
/// error, and the database reopened afterwards pushes what was pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_the_running_call_and_loses_nothing() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("client-shutdown");
    let a = attached_client(&server, proxy.url(), &name).await;
    let id = new_id();
    insert(&mut a.app_connection(), &id, "pending-at-shutdown");
    proxy.fault(
        "POST",
        "/sync/push-sessions",
        Fault::Delay(Duration::from_secs(600)),
        Times::First(1),
    );
    let running = tokio::spawn({
        let client = a.client.clone();
        async move { client.sync().await }
    });
    until("the push request", || {
        proxy
            .log()
            .iter()
            .any(|r| r.ends_with("/sync/push-sessions"))
    })
    .await;
    tokio::time::timeout(HANG, a.client.shutdown())
        .await
        .expect("shutdown returned");
    let cancelled = running.await.expect("join");
    assert!(
        matches!(cancelled, Err(Error::EngineStopped(_))),
        "{cancelled:?}"
    );
    let later = a.client.sync().await;
    assert!(matches!(later, Err(Error::EngineStopped(_))), "{later:?}");
    a.client.shutdown().await; // idempotent

    let mut conn = OversyncConnection::establish(a.path.to_str().unwrap(), config())
        .expect("reopen")
        .with_transport(transport_for(server.base_url(), &name));
    conn.oversync().open().expect("open");
    conn.oversync().sync().await.expect("sync after reopening");
    assert_eq!(
        conn.oversync().pending_sync_status().unwrap().pending_rows,
        0
    );
    let mut fresh = Device::new(&server, &name);
    fresh
        .conn
        .oversync()
        .attach(&name)
        .await
        .expect("fresh attach");
    assert_eq!(count_id(&mut fresh.conn, &id), 1);
}

/// An offline launch: `attach` (called on every launch) fails with a retryable error and
/// changes nothing, also for a device never attached before; once the network is back,
/// `sync()` works without attaching again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_attach_is_harmless_and_sync_needs_no_reattach() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("client-offline");
    let a = attached_client(&server, proxy.url(), &name).await;
    let id = new_id();
    insert(&mut a.app_connection(), &id, "written-offline");
    let before = a
        .client
        .with_connection(|conn| conn.oversync().source_info())
        .await
        .unwrap();

    for method in ["GET", "POST"] {
        proxy.fault(method, "/sync/*", Fault::DropBefore, Times::Always);
    }
    let offline = a.client.attach(name.clone()).await;
    let e = offline.expect_err("attach needs the network");
    assert!(e.is_retryable(), "an offline attach is retryable: {e:?}");
    let after = a
        .client
        .with_connection(|conn| conn.oversync().source_info())
        .await
        .unwrap();
    assert_eq!(before, after, "the failed attach changed nothing");
    assert_eq!(
        a.client.pending_sync_status().await.unwrap().pending_rows,
        1
    );

    // A device that was never attached: still anonymous, still capturing.
    let mut never = Device::new(&server, &name);
    never.conn.set_transport(transport_for(proxy.url(), &name));
    let never = never.into_client().await;
    let e = never
        .client
        .attach(name.clone())
        .await
        .expect_err("offline");
    assert!(e.is_retryable(), "{e:?}");
    insert(&mut never.app_connection(), &new_id(), "anonymous-offline");
    let status = never.client.sync_status().await.unwrap();
    assert_eq!(status.binding, oversync_diesel::Binding::Anonymous);
    assert_eq!(status.pending_rows, 1);
    never.client.shutdown().await;

    proxy.clear();
    a.client.sync().await.expect("sync without re-attaching");
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
    assert_eq!(count_id(&mut fresh.conn, &id), 1);
    a.client.shutdown().await;
}
