//! Snapshot rebuild and source recovery, end to end (real server, private PostgreSQL):
//! large hydration with bounded memory, a follower pruned below the retained history, each
//! source-recovery path ending in a rotation that delivers the local intent exactly once,
//! and an interrupted rebuild that leaves the previous data intact.

use diesel::prelude::*;
use oversync_diesel::transport::{AuthError, Transport, token_fn};
use oversync_diesel::{AttachOutcome, Error, PullOutcome, PushOutcome, SyncEvent};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

fn user(id: &str, name: &str) -> User {
    User {
        id: id.into(),
        name: name.into(),
        email: format!("{name}@example.com"),
        created_at: None,
        updated_at: None,
    }
}

fn insert_users(d: &mut Device, rows: &[User]) {
    d.conn
        .immediate_transaction(|c| {
            for chunk in rows.chunks(500) {
                diesel::insert_into(users::table).values(chunk).execute(c)?;
            }
            QueryResult::Ok(())
        })
        .expect("insert users");
}

fn all_users(d: &mut Device) -> Vec<(String, String)> {
    users::table
        .select((users::id, users::name))
        .order(users::id)
        .load(&mut *d.conn)
        .expect("load users")
}

async fn attached(server: &Server, name: &str) -> Device {
    let mut d = Device::new(server, name);
    d.conn.oversync().attach(name).await.expect("attach");
    d
}

async fn set_retention_floor(server: &Server, user: &str, floor: i64) {
    let answer = reqwest::Client::new()
        .post(format!("{}/test/retention-floor", server.base_url()))
        .json(&serde_json::json!({"user_id": user, "retained_bundle_floor": floor}))
        .send()
        .await
        .expect("retention floor request");
    assert!(
        answer.status().is_success(),
        "retention floor: {}",
        answer.status()
    );
}

fn rows_for_hydration() -> usize {
    if std::env::var_os("OVERSYNC_LONG_TESTS").is_some() {
        100_000
    } else {
        20_000
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_device_hydrates_many_chunks_with_bounded_memory() {
    let server = Server::start().await;
    let name = fresh_user("hydrate");
    let mut a = attached(&server, &name).await;
    let n = rows_for_hydration();
    let rows: Vec<User> = (0..n)
        .map(|i| user(&new_id(), &format!("h{i:06}")))
        .collect();
    insert_users(&mut a, &rows);
    a.conn.oversync().sync().await.expect("seed");

    let mut b = Device::new(&server, &name);
    let mut events = b.conn.subscribe();
    let outcome = b.conn.oversync().attach(&name).await.expect("attach b");
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: n as u64,
            discarded_local_rows: 0
        }
    );
    assert_eq!(all_users(&mut b), all_users(&mut a));
    let mut chunks = 0;
    while let Ok(e) = events.try_recv() {
        if let SyncEvent::Progress {
            phase: oversync_diesel::Phase::Rebuild,
            total,
            ..
        } = e
        {
            assert_eq!(total, Some(n as u64));
            chunks += 1;
        }
    }
    assert!(
        chunks >= n / 1000,
        "progress per chunk: {chunks} events for {n} rows"
    );

    // An explicit rebuild reports what it held in memory: one chunk/page, never the whole.
    let report = b.conn.oversync().rebuild().await.expect("rebuild");
    assert_eq!(report.rows, n as u64);
    assert!(
        report.peak_rows_in_memory <= 5000,
        "peak {} rows in memory",
        report.peak_rows_in_memory
    );
    assert!(
        report.peak_rows_in_memory * 4 <= n as u64,
        "memory must not scale with the snapshot"
    );
    assert_eq!(all_users(&mut b).len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_below_the_retained_floor_rebuilds_and_syncs_on() {
    let server = Server::start().await;
    let name = fresh_user("pruned");
    let mut a = attached(&server, &name).await;
    insert_users(&mut a, &[user(&new_id(), "first")]);
    a.conn.oversync().sync().await.unwrap();
    let mut b = attached(&server, &name).await;
    let behind = b.conn.oversync().last_bundle_seq_seen().unwrap();

    for i in 0..5 {
        insert_users(&mut a, &[user(&new_id(), &format!("later{i}"))]);
        a.conn.oversync().sync().await.unwrap();
    }
    let head = a.conn.oversync().last_bundle_seq_seen().unwrap();
    set_retention_floor(&server, &name, head - 1).await;
    assert!(head - 1 > behind);

    // B's pull answers history_pruned; the engine rebuilds from a snapshot by itself.
    let report = b.conn.oversync().sync().await.expect("sync after pruning");
    assert!(
        matches!(report.pull, PullOutcome::UpToDate { .. }),
        "{report:?}"
    );
    assert_eq!(all_users(&mut b), all_users(&mut a));
    assert_eq!(b.conn.oversync().last_bundle_seq_seen().unwrap(), head);
    assert!(
        !b.conn
            .oversync()
            .source_info()
            .unwrap()
            .source_recovery_required,
        "keep-source rebuild"
    );

    // And it syncs normally afterwards, both ways.
    insert_users(&mut b, &[user(&new_id(), "from-b")]);
    b.conn.oversync().sync().await.unwrap();
    a.conn.oversync().sync().await.unwrap();
    assert_eq!(all_users(&mut b), all_users(&mut a));
}

/// Asserts that exactly `expected` names exist for the user on the server (a fresh device).
async fn server_names(server: &Server, name: &str) -> Vec<String> {
    let mut probe = attached(server, name).await;
    let mut names: Vec<String> = all_users(&mut probe).into_iter().map(|u| u.1).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_source_sequence_rotates_and_delivers_intent_once() {
    let server = Server::start().await;
    let name = fresh_user("rotate");
    let mut b = attached(&server, &name).await;
    insert_users(&mut b, &[user(&new_id(), "before")]);
    b.conn.oversync().sync().await.unwrap();
    let old_source = b.conn.oversync().source_info().unwrap().current_source_id;

    // Break the source stream: the local sequence jumps ahead of the server's.
    diesel::sql_query(
        "UPDATE _sync_source_state SET next_source_bundle_id = next_source_bundle_id + 5",
    )
    .execute(&mut *b.conn)
    .unwrap();
    insert_users(
        &mut b,
        &[user(&new_id(), "intent-1"), user(&new_id(), "intent-2")],
    );
    match b.conn.oversync().sync().await {
        Err(Error::SourceRecoveryRequired { reason }) => {
            assert_eq!(reason, "source_sequence_out_of_order")
        }
        other => panic!("expected SourceRecoveryRequired, got {other:?}"),
    }
    let info = b.conn.oversync().source_info().unwrap();
    assert!(info.source_recovery_required);
    assert_eq!(
        info.source_recovery_reason.as_deref(),
        Some("source_sequence_out_of_order")
    );
    // Durable: push, pull and sync all refuse until rebuild, and app writes are held off.
    assert!(matches!(
        b.conn.oversync().push_pending().await,
        Err(Error::SourceRecoveryRequired { .. })
    ));
    assert!(matches!(
        b.conn.oversync().pull_to_stable().await,
        Err(Error::SourceRecoveryRequired { .. })
    ));
    let write = diesel::insert_into(users::table)
        .values(&user(&new_id(), "blocked"))
        .execute(&mut *b.conn);
    assert!(
        format!("{write:?}").contains("SYNC_TRANSITION_PENDING"),
        "{write:?}"
    );
    assert_eq!(
        b.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        2,
        "intent kept"
    );

    // A restart in between keeps the recovery state and the reserved replacement.
    let mut b = b.restart();
    assert!(
        b.conn
            .oversync()
            .source_info()
            .unwrap()
            .source_recovery_required
    );
    b.conn.oversync().rebuild().await.expect("rotated rebuild");
    let info = b.conn.oversync().source_info().unwrap();
    assert!(!info.source_recovery_required);
    assert_ne!(
        info.current_source_id, old_source,
        "rotated to a new source"
    );
    // The intent survived the swap locally and is pushed once under the new source.
    assert_eq!(all_users(&mut b).len(), 3);
    let report = b.conn.oversync().sync().await.expect("sync after rotation");
    assert!(
        matches!(report.push, PushOutcome::Pushed { rows_pushed: 2, .. }),
        "{report:?}"
    );
    assert_eq!(
        server_names(&server, &name).await,
        vec!["before", "intent-1", "intent-2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_already_committed_tuple_rotates_without_duplicating() {
    let server = Server::start().await;
    let name = fresh_user("pruned-tuple");
    let mut b = attached(&server, &name).await;
    insert_users(&mut b, &[user(&new_id(), "seed")]);
    b.conn.oversync().sync().await.unwrap();

    // Commit a push, then lose the answer: the outbox still says "prepared".
    insert_users(&mut b, &[user(&new_id(), "committed-once")]);
    let calls = Arc::new(AtomicU32::new(0));
    let (counter, base, who) = (calls.clone(), server.base_url().to_string(), name.clone());
    let dying = token_fn(move |_refresh| {
        let (counter, base, who) = (counter.clone(), base.clone(), who.clone());
        async move {
            // capabilities (checked once per transport), create, one chunk, commit.
            if counter.fetch_add(1, Ordering::SeqCst) >= 4 {
                return Err(AuthError("simulated crash".into()));
            }
            sign_in(&base, &who).await
        }
    });
    b.conn
        .set_transport(Transport::new(server.base_url(), dying).unwrap());
    assert!(b.conn.oversync().push_pending().await.is_err());
    diesel::sql_query("UPDATE _sync_outbox_bundle SET state = 'prepared', remote_bundle_seq = 0, remote_bundle_hash = ''")
        .execute(&mut *b.conn)
        .unwrap();
    let mut b = b.restart();

    // Meanwhile the server prunes all history.
    let mut a = attached(&server, &name).await;
    insert_users(&mut a, &[user(&new_id(), "other")]);
    a.conn.oversync().sync().await.unwrap();
    let head = a.conn.oversync().last_bundle_seq_seen().unwrap();
    set_retention_floor(&server, &name, head).await;

    match b.conn.oversync().push_pending().await {
        Err(Error::SourceRecoveryRequired { reason }) => assert_eq!(reason, "history_pruned"),
        other => panic!("expected SourceRecoveryRequired, got {other:?}"),
    }
    b.conn.oversync().rebuild().await.expect("rotated rebuild");
    b.conn.oversync().sync().await.expect("sync after rotation");
    a.conn.oversync().sync().await.unwrap();
    assert_eq!(
        server_names(&server, &name).await,
        vec!["committed-once", "other", "seed"]
    );
    assert_eq!(all_users(&mut a), all_users(&mut b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_rebuild_keeps_previous_data_and_the_next_one_finishes() {
    let server = Server::start().await;
    let name = fresh_user("cut-rebuild");
    let mut a = attached(&server, &name).await;
    let rows: Vec<User> = (0..3000)
        .map(|i| user(&new_id(), &format!("r{i:04}")))
        .collect();
    insert_users(&mut a, &rows);
    a.conn.oversync().sync().await.unwrap();
    let mut b = attached(&server, &name).await;
    let before = all_users(&mut b);
    let checkpoint = b.conn.oversync().last_bundle_seq_seen().unwrap();
    insert_users(&mut a, &[user(&new_id(), "newer")]);
    a.conn.oversync().sync().await.unwrap();

    // The network dies after the snapshot session and one chunk.
    let calls = Arc::new(AtomicU32::new(0));
    let (counter, base, who) = (calls.clone(), server.base_url().to_string(), name.clone());
    let dying = token_fn(move |_refresh| {
        let (counter, base, who) = (counter.clone(), base.clone(), who.clone());
        async move {
            // capabilities (checked once per transport), the session, one chunk.
            if counter.fetch_add(1, Ordering::SeqCst) >= 3 {
                return Err(AuthError("network gone".into()));
            }
            sign_in(&base, &who).await
        }
    });
    b.conn
        .set_transport(Transport::new(server.base_url(), dying).unwrap());
    assert!(b.conn.oversync().rebuild().await.is_err());
    assert_eq!(all_users(&mut b), before, "previous data intact");
    assert_eq!(
        b.conn.oversync().last_bundle_seq_seen().unwrap(),
        checkpoint
    );

    let mut b = b.restart();
    let report = b
        .conn
        .oversync()
        .rebuild()
        .await
        .expect("rebuild after the cut");
    assert_eq!(report.rows, 3001);
    assert_eq!(all_users(&mut b), all_users(&mut a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_keeps_unsynced_local_changes() {
    let server = Server::start().await;
    let name = fresh_user("keep-intent");
    let mut a = attached(&server, &name).await;
    let shared = new_id();
    insert_users(&mut a, &[user(&shared, "shared")]);
    a.conn.oversync().sync().await.unwrap();
    let mut b = attached(&server, &name).await;
    // Unsynced on B: an edit of a synced row and a new row.
    diesel::update(users::table.find(&shared))
        .set(users::name.eq("edited-on-b"))
        .execute(&mut *b.conn)
        .unwrap();
    let local = new_id();
    insert_users(&mut b, &[user(&local, "local-only")]);
    b.conn.oversync().rebuild().await.expect("rebuild");
    assert_eq!(
        b.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        2
    );
    let names: Vec<String> = all_users(&mut b).into_iter().map(|u| u.1).collect();
    assert!(
        names.contains(&"edited-on-b".to_string()) && names.contains(&"local-only".to_string()),
        "{names:?}"
    );
    b.conn.oversync().sync().await.unwrap();
    a.conn.oversync().sync().await.unwrap();
    assert_eq!(all_users(&mut a), all_users(&mut b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_reaches_b_through_a_watch_wake_up() {
    let server = Server::start().await;
    let name = fresh_user("watch");
    let mut a = attached(&server, &name).await;
    insert_users(&mut a, &[user(&new_id(), "seed")]);
    a.conn.oversync().sync().await.unwrap();
    let mut b = attached(&server, &name).await;
    let mut events = b.conn.subscribe();
    let watch = b
        .conn
        .start_watch(oversync_diesel::WatchOptions {
            poll_interval: std::time::Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .expect("start watch");

    let id = new_id();
    insert_users(&mut a, &[user(&id, "pushed-by-a")]);
    a.conn.oversync().sync().await.unwrap();

    // B never pulls: the watcher does, on the server's wake-up (the poll interval is an hour).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found: i64 = users::table
            .filter(users::id.eq(&id))
            .count()
            .get_result(&mut *b.conn)
            .unwrap();
        if found == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the row did not arrive through the watch"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut saw_tables_changed = false;
    while let Ok(e) = events.try_recv() {
        saw_tables_changed |= matches!(e, SyncEvent::TablesChanged { ref tables } if tables.contains(&"users".to_string()));
    }
    assert!(saw_tables_changed, "the app was told which tables changed");
    watch.stop().await;
    assert_eq!(
        b.conn.oversync().last_bundle_seq_seen().unwrap(),
        a.conn.oversync().last_bundle_seq_seen().unwrap()
    );

    // Stopped means stopped: later writes do not arrive by themselves.
    let later = new_id();
    insert_users(&mut a, &[user(&later, "after-stop")]);
    a.conn.oversync().sync().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let found: i64 = users::table
        .filter(users::id.eq(&later))
        .count()
        .get_result(&mut *b.conn)
        .unwrap();
    assert_eq!(found, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_retired_elsewhere_rotates_to_the_reserved_replacement() {
    let server = Server::start().await;
    let name = fresh_user("retired");
    let mut b = attached(&server, &name).await;
    insert_users(&mut b, &[user(&new_id(), "before")]);
    b.conn.oversync().sync().await.unwrap();
    let old_source = b.conn.oversync().source_info().unwrap().current_source_id;

    // Something else (a restored backup of this install, say) rotates B's source away.
    let replacement = new_id();
    let raw = transport_for(server.base_url(), &name);
    let request = oversync_diesel::protocol::SnapshotSessionCreateRequest {
        source_replacement: Some(oversync_diesel::protocol::SnapshotSourceReplacement {
            previous_source_id: old_source.clone(),
            new_source_id: replacement.clone(),
            reason: "source_retired".into(),
        }),
    };
    let session = raw
        .create_snapshot_session(&old_source, &request)
        .await
        .expect("retire B's source");
    let _ = raw
        .delete_snapshot_session(&old_source, &session.snapshot_id)
        .await;

    insert_users(&mut b, &[user(&new_id(), "after-retirement")]);
    match b.conn.oversync().sync().await {
        Err(Error::SourceRecoveryRequired { reason }) => assert_eq!(reason, "source_retired"),
        other => panic!("expected SourceRecoveryRequired, got {other:?}"),
    }
    assert_eq!(
        b.conn
            .oversync()
            .source_info()
            .unwrap()
            .replacement_source_id
            .as_deref(),
        Some(replacement.as_str())
    );
    b.conn
        .oversync()
        .rebuild()
        .await
        .expect("rotate to the reserved replacement");
    assert_eq!(
        b.conn.oversync().source_info().unwrap().current_source_id,
        replacement
    );
    b.conn
        .oversync()
        .sync()
        .await
        .expect("sync under the new source");
    assert_eq!(
        server_names(&server, &name).await,
        vec!["after-retirement", "before"]
    );
}
