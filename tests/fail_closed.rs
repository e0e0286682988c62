//! Fail-closed behaviour end to end (real SQLite files, the real server over loopback HTTP,
//! the fault-injecting proxy of `common`): source recovery refuses replacement ids it cannot
//! trust, push and pull check the protocol version in every runtime, a conflict rewrite
//! tells the app, a snapshot that breaks its own numbers is refused, and the watcher keeps
//! its reconnect rate bounded, falls back to polling and stops promptly.

mod common;

use common::{Fault, Proxy, Times, insert_user};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::{Error, PullOutcome, PushOutcome, SyncEvent, WatchOptions};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::time::{Duration, Instant};

/// A device of `name` whose requests go through `proxy`, attached.
async fn attached_via(server: &Server, proxy: &Proxy, name: &str) -> Device {
    let mut d = Device::new(server, name);
    d.conn.set_transport(transport_for(proxy.url(), name));
    d.conn.oversync().attach(name).await.expect("attach");
    d
}

async fn attached(server: &Server, name: &str) -> Device {
    let mut d = Device::new(server, name);
    d.conn.oversync().attach(name).await.expect("attach");
    d
}

fn has_user(d: &mut Device, id: &str) -> bool {
    users::table
        .filter(users::id.eq(id))
        .count()
        .get_result::<i64>(&mut *d.conn)
        .expect("count users")
        == 1
}

fn user_name(d: &mut Device, id: &str) -> String {
    users::table
        .filter(users::id.eq(id))
        .select(users::name)
        .first(&mut *d.conn)
        .expect("user row")
}

/// Waits (bounded) until `id` is in `d`'s users table.
async fn wait_for_user(d: &mut Device, id: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_user(d, id) {
        assert!(Instant::now() < deadline, "{why}: the row never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the proxy has seen `request` at least `n` times.
async fn wait_for_requests(proxy: &Proxy, request: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(proxy, request) < n {
        assert!(
            Instant::now() < deadline,
            "{request} was not requested {n} times"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(proxy: &Proxy, request: &str) -> usize {
    proxy.log().iter().filter(|r| *r == request).count()
}

fn recovery_state(d: &mut Device, reason: &str, replacement: &str) {
    diesel::sql_query(
        "UPDATE _sync_operation_state SET kind = 'source_recovery', reason = ?, replacement_source_id = ? WHERE singleton_key = 1",
    )
    .bind::<diesel::sql_types::Text, _>(reason)
    .bind::<diesel::sql_types::Text, _>(replacement)
    .execute(&mut *d.conn)
    .expect("set recovery state");
}

// --- item 4: a conflict rewrite emits TablesChanged ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_rewrite_tells_the_app_which_table_changed() {
    let server = Server::start().await;
    let name = fresh_user("conflict-event");
    let mut a = attached(&server, &name).await;
    let id = new_id();
    insert_user(&mut a, &id, "original");
    a.conn.oversync().sync().await.expect("a sync");
    let mut b = attached(&server, &name).await;
    assert!(has_user(&mut b, &id));

    // A wins the race; B's edit of the same row conflicts and the server's value wins.
    diesel::update(users::table.filter(users::id.eq(&id)))
        .set(users::name.eq("from-a"))
        .execute(&mut *a.conn)
        .unwrap();
    a.conn.oversync().sync().await.expect("a sync");
    diesel::update(users::table.filter(users::id.eq(&id)))
        .set(users::name.eq("losing-b"))
        .execute(&mut *b.conn)
        .unwrap();
    let mut events = b.conn.subscribe();
    let outcome = b.conn.oversync().push_pending().await.expect("b push");
    assert!(
        matches!(outcome, PushOutcome::ResolvedWithoutPush { .. }),
        "{outcome:?}"
    );
    assert_eq!(user_name(&mut b, &id), "from-a", "the server's value won");
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(
        seen.iter().any(|e| matches!(e, SyncEvent::TablesChanged { tables } if tables.contains(&"users".to_string()))),
        "no TablesChanged for the rewritten row: {seen:?}"
    );
}

// --- item 5: source recovery fails closed ---------------------------------------------------

const RESERVED: &str = "5c2f3d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
const NAMED_BY_SERVER: &str = "7d8e9f0a-2b3c-4d5e-9f0a-1b2c3d4e5f60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_naming_another_replacement_cannot_overwrite_the_reserved_one() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("diverged");
    let mut d = attached_via(&server, &proxy, &name).await;
    insert_user(&mut d, &new_id(), "kept");
    recovery_state(&mut d, "source_retired", RESERVED);
    let body = Box::leak(
        serde_json::json!({
            "error": "source_retired",
            "message": "source retired again",
            "source_id": "whatever",
            "replaced_by_source_id": NAMED_BY_SERVER,
        })
        .to_string()
        .into_boxed_str(),
    );
    proxy.fault(
        "POST",
        "/sync/snapshot-sessions",
        Fault::Answer {
            status: 409,
            content_type: "application/json",
            body,
        },
        Times::Always,
    );
    let err = d.conn.oversync().rebuild().await.expect_err("must fail");
    match err {
        Error::SourceReplacementDiverged { reserved, named } => {
            assert_eq!(reserved, RESERVED);
            assert_eq!(named, NAMED_BY_SERVER);
        }
        other => panic!("expected SourceReplacementDiverged, got {other:?}"),
    }
    let info = d.conn.oversync().source_info().unwrap();
    assert!(info.source_recovery_required);
    assert_eq!(info.replacement_source_id.as_deref(), Some(RESERVED));
    assert_eq!(
        info.source_recovery_reason.as_deref(),
        Some("source_retired")
    );
    assert_eq!(
        d.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_naming_a_used_source_as_replacement_is_refused() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("named-used");
    let mut d = attached_via(&server, &proxy, &name).await;
    // A source this install used before (it numbered bundles already).
    diesel::sql_query(
        "INSERT INTO _sync_source_state(source_id, next_source_bundle_id) VALUES (?, 4)",
    )
    .bind::<diesel::sql_types::Text, _>(NAMED_BY_SERVER)
    .execute(&mut *d.conn)
    .unwrap();
    insert_user(&mut d, &new_id(), "kept");
    let body = Box::leak(
        serde_json::json!({
            "error": "source_retired",
            "message": "retired",
            "source_id": "whatever",
            "replaced_by_source_id": NAMED_BY_SERVER,
        })
        .to_string()
        .into_boxed_str(),
    );
    proxy.fault(
        "POST",
        "/sync/push-sessions",
        Fault::Answer {
            status: 409,
            content_type: "application/json",
            body,
        },
        Times::Always,
    );
    let err = d
        .conn
        .oversync()
        .push_pending()
        .await
        .expect_err("must fail");
    assert!(
        matches!(err, Error::ReplacementSourceNotFresh { ref replacement, .. } if replacement == NAMED_BY_SERVER),
        "{err:?}"
    );
    let info = d.conn.oversync().source_info().unwrap();
    assert_ne!(info.replacement_source_id.as_deref(), Some(NAMED_BY_SERVER));
}

/// Rebuild in recovery with a reservation `replacement` must refuse before any request.
async fn refused_replacement(setup: &str, replacement: Option<&str>) {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("stale-replacement");
    let mut d = attached_via(&server, &proxy, &name).await;
    let current = d.conn.oversync().source_info().unwrap().current_source_id;
    let replacement = replacement.unwrap_or(current.as_str()).to_string();
    d.conn
        .batch_execute(&setup.replace("{R}", &replacement))
        .expect("setup");
    recovery_state(&mut d, "history_pruned", &replacement);
    let before = proxy.log().len();
    let err = d.conn.oversync().rebuild().await.expect_err("must fail");
    assert!(
        matches!(err, Error::ReplacementSourceNotFresh { replacement: ref r, .. } if *r == replacement),
        "{err:?}"
    );
    assert!(
        !proxy.log()[before..]
            .iter()
            .any(|r| r.contains("snapshot-sessions")),
        "no rotation may be requested: {:?}",
        &proxy.log()[before..]
    );
    let info = d.conn.oversync().source_info().unwrap();
    assert_eq!(info.current_source_id, current, "the source did not rotate");
    assert!(info.source_recovery_required);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replacement_row_is_refused() {
    refused_replacement(
        "INSERT INTO _sync_source_state(source_id, next_source_bundle_id, replaced_by_source_id) \
         VALUES ('{R}', 1, '0f0e0d0c-0b0a-4908-8706-050403020100')",
        Some(RESERVED),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_fresh_replacement_row_is_refused() {
    refused_replacement(
        "INSERT INTO _sync_source_state(source_id, next_source_bundle_id) VALUES ('{R}', 2)",
        Some(RESERVED),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_source_as_replacement_is_refused() {
    refused_replacement("SELECT 1", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_persisted_recovery_reason_fails_with_a_typed_error() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("unknown-reason");
    let mut d = attached_via(&server, &proxy, &name).await;
    recovery_state(&mut d, "unknown_reason", RESERVED);
    let before = proxy.log().len();
    for err in [
        d.conn.oversync().sync().await.expect_err("sync must fail"),
        d.conn
            .oversync()
            .rebuild()
            .await
            .expect_err("rebuild must fail"),
    ] {
        assert!(
            matches!(err, Error::InvalidRecoveryReason { ref reason } if reason == "unknown_reason"),
            "{err:?}"
        );
    }
    assert!(
        !proxy.log()[before..]
            .iter()
            .any(|r| r.contains("snapshot-sessions")),
        "nothing may be sent with a guessed reason"
    );
}

// --- item 7: every runtime checks the protocol before pushing or pulling --------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_mismatch_after_restart_keeps_dirty_state() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("protocol");
    let d = attached_via(&server, &proxy, &name).await;
    // The next launch does not attach; the server meanwhile speaks another protocol.
    let mut d = d.restart();
    d.conn.set_transport(transport_for(proxy.url(), &name));
    let id = new_id();
    insert_user(&mut d, &id, "dirty");
    proxy.rewrite(
        "GET",
        "/sync/capabilities",
        Times::Always,
        |_, _, mut caps| {
            caps["protocol_version"] = "v2".into();
            caps
        },
    );
    let before = proxy.log().len();
    for err in [
        d.conn
            .oversync()
            .sync_then_detach()
            .await
            .expect_err("sync_then_detach"),
        d.conn.oversync().sync().await.expect_err("sync"),
        d.conn.oversync().push_pending().await.expect_err("push"),
        d.conn.oversync().pull_to_stable().await.expect_err("pull"),
    ] {
        assert!(
            matches!(err, Error::UnsupportedProtocol { ref version } if version == "v2"),
            "{err:?}"
        );
    }
    let sent: Vec<String> = proxy.log()[before..]
        .iter()
        .filter(|r| *r != "POST /dummy-signin")
        .cloned()
        .collect();
    assert!(
        sent.iter().all(|r| r == "GET /sync/capabilities"),
        "only capabilities may be asked: {sent:?}"
    );
    assert!(has_user(&mut d, &id));
    let status = d.conn.oversync().sync_status().unwrap();
    assert_eq!(status.pending_rows, 1, "the dirty row is kept");
    assert!(matches!(
        status.binding,
        oversync_diesel::Binding::Attached { .. }
    ));

    // Once the server speaks v1 again the same runtime syncs (the mismatch is not cached).
    proxy.clear();
    let report = d.conn.oversync().sync_then_detach().await.expect("sync");
    assert!(report.detached, "{report:?}");
}

// --- item 9: smaller fail-closed checks -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_bundle_not_found_is_retried_within_the_push() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("not-found");
    let mut d = attached_via(&server, &proxy, &name).await;
    insert_user(&mut d, &new_id(), "pushed");
    proxy.fault(
        "GET",
        "/sync/committed-bundles/*/rows",
        Fault::Answer {
            status: 404,
            content_type: "application/json",
            body: r#"{"error":"committed_bundle_not_found","message":"not visible yet"}"#,
        },
        Times::First(2),
    );
    let outcome = d.conn.oversync().push_pending().await.expect("push");
    assert!(matches!(outcome, PushOutcome::Pushed { .. }), "{outcome:?}");
    assert_eq!(proxy.hits(), 2);
    assert_eq!(
        d.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        0
    );
}

/// A rebuild whose snapshot answers are rewritten by `rewrite` must fail and keep the data.
async fn hostile_snapshot(
    pattern: &'static str,
    rewrite: impl Fn(serde_json::Value) -> serde_json::Value + Send + Sync + 'static,
    rows: bool,
) {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("snapshot-check");
    let mut d = attached_via(&server, &proxy, &name).await;
    let id = new_id();
    if rows {
        insert_user(&mut d, &id, "on-server");
        d.conn.oversync().sync().await.expect("sync");
    }
    let method = if pattern == "/sync/snapshot-sessions" {
        "POST"
    } else {
        "GET"
    };
    proxy.rewrite(method, pattern, Times::Always, move |_, _, v| rewrite(v));
    let err = d.conn.oversync().rebuild().await.expect_err("must fail");
    assert!(matches!(err, Error::InvalidResponse(_)), "{err:?}");
    assert_eq!(has_user(&mut d, &id), rows, "the previous data stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_negative_row_count_is_refused() {
    hostile_snapshot(
        "/sync/snapshot-sessions",
        |mut v| {
            v["row_count"] = (-1).into();
            v
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_malformed_expiry_is_refused() {
    hostile_snapshot(
        "/sync/snapshot-sessions",
        |mut v| {
            v["expires_at"] = "tomorrow".into();
            v
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_whose_cursor_disagrees_with_its_rows_is_refused() {
    hostile_snapshot(
        "/sync/snapshot-sessions/*",
        |mut v| {
            v["next_row_ordinal"] = 999.into();
            v
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_then_detach_runs_another_round_for_a_write_made_during_its_pull() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("detach-write");
    let mut a = attached(&server, &name).await;
    let mut b = attached_via(&server, &proxy, &name).await;
    insert_user(&mut a, &new_id(), "from-a");
    a.conn.oversync().sync().await.expect("a sync");

    // While B's first pull answer is on the wire, the app writes on B (another connection
    // to the same file, as a second thread of the app would).
    let path = b.path.to_str().unwrap().to_string();
    let late = new_id();
    let late_row = late.clone();
    proxy.rewrite("GET", "/sync/pull", Times::First(1), move |_, _, v| {
        let mut app = diesel::SqliteConnection::establish(&path).expect("second connection");
        app.batch_execute("PRAGMA busy_timeout = 5000").unwrap();
        diesel::insert_into(users::table)
            .values(&common::user_row(&late_row, "written-during-pull"))
            .execute(&mut app)
            .expect("write during pull");
        v
    });
    let report = b
        .conn
        .oversync()
        .sync_then_detach()
        .await
        .expect("sync_then_detach");
    assert!(report.detached, "{report:?}");
    assert_eq!(report.attempts, 2, "{report:?}");
    // The write reached the server before the detach cleared B.
    let outcome = a.conn.oversync().pull_to_stable().await.expect("a pull");
    assert!(matches!(outcome, PullOutcome::UpToDate { .. }));
    assert!(has_user(&mut a, &late), "the mid-pull write was pushed");
}

// --- item 3: the watcher -----------------------------------------------------------------

fn watch_options(backoff_min: Duration) -> WatchOptions {
    WatchOptions {
        poll_interval: Duration::from_secs(3600),
        backoff_min,
        backoff_max: Duration::from_secs(5),
    }
}

/// The stream answers `body` and ends at once, every time: reconnects must stay within what
/// the backoff allows, and each one pulls, so other devices' rows still arrive.
async fn watch_reconnects_boundedly(body: &'static str) {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("watch-backoff");
    let mut a = attached(&server, &name).await;
    let mut b = attached_via(&server, &proxy, &name).await;
    proxy.fault(
        "GET",
        "/sync/watch",
        Fault::Answer {
            status: 200,
            content_type: "text/event-stream",
            body,
        },
        Times::Always,
    );
    let watch = b
        .conn
        .start_watch(watch_options(Duration::from_millis(200)))
        .await
        .expect("start watch");
    wait_for_requests(&proxy, "GET /sync/watch", 2).await;
    let id = new_id();
    insert_user(&mut a, &id, "via-fallback-pull");
    a.conn.oversync().sync().await.expect("a sync");
    wait_for_user(&mut b, &id, "reconnect pulls").await;

    // Count connections over a fixed window: with backoff_min = 200 ms doubling (jittered
    // into the upper half) at most a handful fit in 2 s; without backoff thousands do.
    let start = count(&proxy, "GET /sync/watch");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_window = count(&proxy, "GET /sync/watch") - start;
    watch.stop().await;
    assert!(
        in_window <= 12,
        "{in_window} watch connections in 2 s with backoff_min 200 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_eof_reconnects_with_backoff_and_pulls() {
    watch_reconnects_boundedly(": stream ended\n\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_malformed_stream_reconnects_with_backoff_and_pulls() {
    watch_reconnects_boundedly("event: bundle\ndata: {\"bundle_seq\":\n\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_polls_a_server_without_bundle_change_watch() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("watch-poll");
    let mut a = attached(&server, &name).await;
    let mut b = attached_via(&server, &proxy, &name).await;
    proxy.rewrite(
        "GET",
        "/sync/capabilities",
        Times::Always,
        |_, _, mut caps| {
            caps["features"]["bundle_change_watch"] = false.into();
            caps
        },
    );
    let watch = b
        .conn
        .start_watch(WatchOptions {
            poll_interval: Duration::from_millis(100),
            ..WatchOptions::default()
        })
        .await
        .expect("start watch falls back to polling");
    let id = new_id();
    insert_user(&mut a, &id, "via-poll");
    a.conn.oversync().sync().await.expect("a sync");
    wait_for_user(&mut b, &id, "polling").await;
    watch.stop().await;
    assert_eq!(count(&proxy, "GET /sync/watch"), 0, "no stream was opened");
}

/// `stop()` must end the task while `request` hangs (the proxy holds it for minutes).
async fn stop_is_prompt_while(request: &'static str) {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("watch-stop");
    let mut b = attached_via(&server, &proxy, &name).await;
    let path = request.split_once(' ').expect("METHOD /path").1;
    proxy.fault(
        "GET",
        path,
        Fault::Delay(Duration::from_secs(600)),
        Times::Always,
    );
    let watch = b
        .conn
        .start_watch(watch_options(Duration::from_millis(200)))
        .await
        .expect("start watch");
    wait_for_requests(&proxy, request, 1).await;
    // Minutes of margin either way: the request hangs for 10 minutes and its timeout is 30 s.
    tokio::time::timeout(Duration::from_secs(10), watch.stop())
        .await
        .unwrap_or_else(|_| panic!("stop() waited for the hanging {request}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stop_cancels_a_connect_in_flight() {
    stop_is_prompt_while("GET /sync/watch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stop_cancels_a_pull_in_flight() {
    stop_is_prompt_while("GET /sync/pull").await;
}

/// Snapshot rows are unlogged on our server: a PostgreSQL crash between the session's create
/// and its pages empties them. The rebuild then fails with `snapshot_session_not_found`
/// before its swap (the rows it had stay), and the next rebuild takes a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_rows_the_server_lost_fails_the_rebuild_and_the_next_one_recovers() {
    let server = Server::start().await;
    let Some(local) = server.local() else {
        return; // only our server's database can be reached to lose the rows
    };
    let (db, connection) = tokio_postgres::connect(&local.database().url, tokio_postgres::NoTls)
        .await
        .expect("connect to the server's database");
    tokio::spawn(connection);
    let db = std::sync::Arc::new(db);
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("lost-snapshot");
    let mut writer = attached(&server, &name).await;
    let mut reader = attached_via(&server, &proxy, &name).await;
    let (first, second) = (new_id(), new_id());
    insert_user(&mut writer, &first, "first");
    writer
        .conn
        .oversync()
        .sync()
        .await
        .expect("sync the first row");
    reader
        .conn
        .oversync()
        .sync()
        .await
        .expect("pull the first row");
    insert_user(&mut writer, &second, "second");
    writer
        .conn
        .oversync()
        .sync()
        .await
        .expect("sync the second row");

    // As crash recovery leaves an unlogged table, once the session has been answered.
    let lose = db.clone();
    proxy.rewrite(
        "POST",
        "/sync/snapshot-sessions",
        Times::First(1),
        move |_, _, v| {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(lose.batch_execute("TRUNCATE sync.snapshot_rows"))
                    .expect("truncate the snapshot rows");
            });
            v
        },
    );
    let err = reader
        .conn
        .oversync()
        .rebuild()
        .await
        .expect_err("must fail");
    assert!(
        format!("{err:?}").contains("snapshot_session_not_found"),
        "{err:?}"
    );
    assert!(has_user(&mut reader, &first), "the rows it had stay");
    assert!(!has_user(&mut reader, &second), "nothing was swapped in");

    let report = reader
        .conn
        .oversync()
        .rebuild()
        .await
        .expect("a new snapshot");
    assert_eq!(report.rows, 2);
    assert_eq!(user_name(&mut reader, &first), "first");
    assert_eq!(user_name(&mut reader, &second), "second");
}
