//! Outbox integrity: no local write is lost when a database file is copied (a restored
//! backup, a cloned device) or when a local write overtakes a push whose outcome is unknown.
//!
//! Real SQLite files, the example server on a private PostgreSQL cluster, and the
//! fault-injecting proxy on the push commit; every case is checked against a fresh device.

mod common;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::{OversyncConnection, PushOutcome};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::path::Path;
use std::time::Duration;

/// A second install made by copying a device's database file.
struct CopiedInstall {
    conn: OversyncConnection,
    _dir: tempfile::TempDir,
}

/// Checkpoints `d`'s WAL (so the main file holds everything) and copies the file, as a backup
/// tool or a device clone would, into a new directory. `bypass_open_check` makes the copy look
/// like the original file to `open()` (forgets the recorded file identity first), to exercise
/// the replay-time check on its own.
fn copy_install(server: &Server, d: &mut Device, bypass_open_check: bool) -> (CopiedInstall, bool) {
    d.conn
        .batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("copy.db");
    std::fs::copy(&d.path, &path).expect("copy the database file");
    let url = path.to_str().expect("utf-8 path");
    if bypass_open_check {
        let mut raw = SqliteConnection::establish(url).expect("open copy raw");
        raw.batch_execute("UPDATE _sync_install_identity SET file_identity = ''")
            .expect("forget identity");
    }
    let mut conn = OversyncConnection::establish(url, config()).expect("open copy");
    let report = conn.oversync().open().expect("open copy");
    conn.set_transport(transport_for(server.base_url(), d.user()));
    (CopiedInstall { conn, _dir: dir }, report.source_rotated)
}

fn source_of(conn: &mut OversyncConnection) -> String {
    conn.oversync().source_info().unwrap().current_source_id
}

fn add_user(conn: &mut OversyncConnection, name: &str) -> String {
    let id = new_id();
    diesel::insert_into(users::table)
        .values(&user_row(&id, name))
        .execute(&mut **conn)
        .expect("insert user");
    id
}

fn names(conn: &mut OversyncConnection) -> Vec<String> {
    let mut names: Vec<String> = users::table
        .select(users::name)
        .load(&mut **conn)
        .expect("load names");
    names.sort();
    names
}

async fn sync_ok(conn: &mut OversyncConnection) -> oversync_diesel::SyncReport {
    conn.oversync().sync().await.expect("sync")
}

/// What a fresh device of `user` hydrates from the server.
async fn server_names(server: &Server, user: &str) -> Vec<String> {
    let mut fresh = Device::new(server, user);
    fresh
        .conn
        .oversync()
        .attach(user)
        .await
        .expect("attach fresh");
    names(&mut fresh.conn)
}

/// A device with one synced row, attached to a fresh account.
async fn seeded_device(server: &Server, prefix: &str) -> Device {
    let user = fresh_user(prefix);
    let mut a = Device::new(server, &user);
    a.conn.oversync().attach(&user).await.expect("attach a");
    add_user(&mut a.conn, "seed");
    sync_ok(&mut a.conn).await;
    a
}

/// Both copies write and sync, in the given order; both writes reach the server, and both
/// copies converge on it.
async fn both_copies_write_and_sync(
    server: &Server,
    a: &mut Device,
    b: &mut CopiedInstall,
    a_first: bool,
) {
    add_user(&mut a.conn, "from-a");
    add_user(&mut b.conn, "from-b");
    let (first, second) = if a_first {
        (&mut a.conn, &mut b.conn)
    } else {
        (&mut b.conn, &mut a.conn)
    };
    for conn in [first, second] {
        let report = sync_ok(conn).await;
        assert!(
            matches!(report.push, PushOutcome::Pushed { rows_pushed: 1, .. }),
            "{report:?}"
        );
        assert_eq!(
            conn.oversync().pending_sync_status().unwrap().pending_rows,
            0
        );
    }
    let want = vec!["from-a".to_string(), "from-b".into(), "seed".into()];
    assert_eq!(server_names(server, a.user()).await, want);
    for conn in [&mut a.conn, &mut b.conn] {
        sync_ok(conn).await;
        assert_eq!(names(conn), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_database_file_keeps_both_writes_in_either_order() {
    let server = Server::start().await;
    for a_first in [true, false] {
        let mut a = seeded_device(&server, "copy").await;
        let (mut b, rotated) = copy_install(&server, &mut a, false);
        assert!(rotated, "open() must notice the copy");
        assert_ne!(source_of(&mut a.conn), source_of(&mut b.conn));
        both_copies_write_and_sync(&server, &mut a, &mut b, a_first).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_another_installs_bundle_and_pushes_under_a_fresh_source() {
    let server = Server::start().await;
    for a_first in [true, false] {
        let mut a = seeded_device(&server, "collide").await;
        let (mut b, rotated) = copy_install(&server, &mut a, true);
        assert!(!rotated, "the open() check is bypassed here");
        let shared = source_of(&mut a.conn);
        assert_eq!(source_of(&mut b.conn), shared);
        both_copies_write_and_sync(&server, &mut a, &mut b, a_first).await;
        // The copy that pushed second was answered with the other's bundle and rotated.
        let (first, second) = if a_first {
            (source_of(&mut a.conn), source_of(&mut b.conn))
        } else {
            (source_of(&mut b.conn), source_of(&mut a.conn))
        };
        assert_eq!(first, shared);
        assert_ne!(second, shared);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_rotates_a_copied_file_before_any_push_and_a_rename_keeps_the_source() {
    let server = Server::start().await;
    let mut a = seeded_device(&server, "open").await;
    // Pending intent, frozen in an outbox whose commit never got through.
    let proxy = Proxy::start(server.base_url()).await;
    a.conn.set_transport(transport_with_timeout(
        proxy.url(),
        a.user(),
        Duration::from_secs(5),
    ));
    add_user(&mut a.conn, "pending");
    proxy.fault(
        "POST",
        "/sync/push-sessions/*/commit",
        Fault::DropBefore,
        Times::Always,
    );
    a.conn.oversync().sync().await.expect_err("commit is cut");
    proxy.clear();
    let original = source_of(&mut a.conn);
    let (mut b, rotated) = copy_install(&server, &mut a, false);
    assert!(rotated);
    let copy_source = source_of(&mut b.conn);
    assert_ne!(copy_source, original);
    assert_eq!(
        b.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        1
    );
    // Reopening the original, or a renamed copy, is the same file: no rotation.
    let mut a = a.restart();
    assert_eq!(source_of(&mut a.conn), original);
    let CopiedInstall { conn, _dir } = b;
    drop(conn);
    let moved = _dir.path().join("moved.db");
    std::fs::rename(_dir.path().join("copy.db"), &moved).expect("rename");
    let mut conn = reopen(&moved);
    conn.set_transport(transport_for(server.base_url(), a.user()));
    assert_eq!(source_of(&mut conn), copy_source);
    // Both push the frozen insert, each under its own source; the server keeps one row.
    sync_ok(&mut a.conn).await;
    sync_ok(&mut conn).await;
    sync_ok(&mut a.conn).await;
    let want = vec!["pending".to_string(), "seed".into()];
    assert_eq!(server_names(&server, a.user()).await, want);
    assert_eq!(names(&mut conn), want);
    assert_eq!(names(&mut a.conn), want);
    assert_eq!(
        conn.oversync().pending_sync_status().unwrap().pending_rows,
        0
    );
}

fn reopen(path: &Path) -> OversyncConnection {
    let mut conn =
        OversyncConnection::establish(path.to_str().expect("utf-8 path"), config()).expect("open");
    let report = conn.oversync().open().expect("open");
    assert!(!report.source_rotated, "a renamed file is the same file");
    conn
}

/// The push in flight when the local write overtakes it.
#[derive(Clone, Copy, Debug)]
enum InFlight {
    Insert,
    Update,
    Delete,
}

/// The local write made while that push's outcome is unknown.
#[derive(Clone, Copy, Debug)]
enum Overtake {
    /// A write of the row (an update; after a delete, a re-insert).
    Write,
    /// A delete of the row (after a delete, a re-insert then a delete).
    Delete,
}

fn set_name(conn: &mut OversyncConnection, id: &str, name: &str) {
    diesel::update(users::table.find(id))
        .set(users::name.eq(name))
        .execute(&mut **conn)
        .expect("update user");
}

fn remove(conn: &mut OversyncConnection, id: &str) {
    diesel::delete(users::table.find(id))
        .execute(&mut **conn)
        .expect("delete user");
}

fn reinsert(conn: &mut OversyncConnection, id: &str, name: &str) {
    diesel::insert_into(users::table)
        .values(&user_row(id, name))
        .execute(&mut **conn)
        .expect("re-insert user");
}

async fn overtaken_push(server: &Server, in_flight: InFlight, overtake: Overtake, fault: Fault) {
    let label = format!("{in_flight:?} overtaken by {overtake:?}, commit {fault:?}");
    let proxy = Proxy::start(server.base_url()).await;
    let user = fresh_user("overtake");
    let mut a = Device::new(server, &user);
    a.conn.set_transport(transport_with_timeout(
        proxy.url(),
        &user,
        Duration::from_secs(5),
    ));
    a.conn.oversync().attach(&user).await.expect("attach");
    let id = new_id();
    if !matches!(in_flight, InFlight::Insert) {
        reinsert(&mut a.conn, &id, "synced");
        sync_ok(&mut a.conn).await;
    }
    match in_flight {
        InFlight::Insert => reinsert(&mut a.conn, &id, "inserted"),
        InFlight::Update => set_name(&mut a.conn, &id, "updated"),
        InFlight::Delete => remove(&mut a.conn, &id),
    }
    proxy.fault("POST", "/sync/push-sessions/*/commit", fault, Times::Always);
    a.conn.oversync().sync().await.expect_err(&label);
    proxy.clear();
    let want: Vec<String> = match (in_flight, overtake) {
        (InFlight::Delete, Overtake::Write) => {
            reinsert(&mut a.conn, &id, "late");
            vec!["late".into()]
        }
        (InFlight::Delete, Overtake::Delete) => {
            reinsert(&mut a.conn, &id, "late");
            remove(&mut a.conn, &id);
            vec![]
        }
        (_, Overtake::Write) => {
            set_name(&mut a.conn, &id, "late");
            vec!["late".into()]
        }
        (_, Overtake::Delete) => {
            remove(&mut a.conn, &id);
            vec![]
        }
    };
    // The first sync carries the frozen push, the second the overtaking write.
    for _ in 0..2 {
        a.conn.oversync().sync().await.expect(&label);
    }
    assert_eq!(
        a.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        0,
        "{label}"
    );
    assert_eq!(names(&mut a.conn), want, "{label}: this device");
    assert_eq!(
        server_names(server, &user).await,
        want,
        "{label}: a fresh device"
    );
}

/// Every overtaking write, each with the commit cut before and after the server acted.
async fn overtaken_push_all(in_flight: InFlight) {
    let server = Server::start().await;
    for overtake in [Overtake::Write, Overtake::Delete] {
        for fault in [Fault::DropBefore, Fault::DropAfter] {
            overtaken_push(&server, in_flight, overtake, fault).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_in_flight_overtaken_by_update_or_delete() {
    overtaken_push_all(InFlight::Insert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_in_flight_overtaken_by_update_or_delete() {
    overtaken_push_all(InFlight::Update).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_in_flight_overtaken_by_reinsert_or_reinsert_and_delete() {
    overtaken_push_all(InFlight::Delete).await;
}
