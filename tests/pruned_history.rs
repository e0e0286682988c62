//! Pruned history and a server behind the device, end to end (real server, private
//! PostgreSQL, loopback proxy that counts every request):
//! - a retained floor at the head (which prunes the head itself) ends each sync with at most
//!   one snapshot download, and the steady state downloads none;
//! - a server that answers every pull (and committed-bundle fetch) `history_pruned` costs a
//!   bounded number of requests per call and never loops;
//! - a snapshot older than what the device has seen, or a pull whose stable ceiling is
//!   behind the local checkpoint (a server restored from a backup), is the typed
//!   `Error::ServerBehindCheckpoint`, and the rebuild it asks for brings the device back;
//! - the server's floor semantics: a checkpoint at or below the floor, including 0 on a
//!   device that never applied a bundle, is pruned.

mod common;

use common::{Fault, Proxy, Times, all_users, insert_user, local_state, transport_with_timeout};
use oversync_diesel::transport::TransportError;
use oversync_diesel::{Error, PullOutcome, PushOutcome};
use oversync_e2e::*;
use serde_json::json;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one call; only reached when the engine loops (the bug this guards).
const CALL_LIMIT: Duration = Duration::from_secs(60);
const PULL: &str = "/sync/pull";
const ROWS: &str = "/sync/committed-bundles/*/rows";
const SESSIONS: &str = "/sync/snapshot-sessions";

async fn attached(server: &Server, name: &str) -> Device {
    let mut d = Device::new(server, name);
    d.conn.oversync().attach(name).await.expect("attach");
    d
}

async fn attached_via(server: &Server, proxy: &Proxy, name: &str) -> Device {
    let mut d = Device::new(server, name);
    d.conn
        .set_transport(transport_with_timeout(proxy.url(), name, TIMEOUT));
    d.conn
        .oversync()
        .attach(name)
        .await
        .expect("attach via proxy");
    d
}

async fn set_retention_floor(server: &Server, user: &str, floor: i64) {
    let answer = reqwest::Client::new()
        .post(format!("{}/test/retention-floor", server.base_url()))
        .json(&json!({"user_id": user, "retained_bundle_floor": floor}))
        .send()
        .await
        .expect("retention floor request");
    assert!(
        answer.status().is_success(),
        "retention floor: {}",
        answer.status()
    );
}

/// Runs `f` under [`CALL_LIMIT`]: a call that loops fails the test instead of hanging it.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return: the engine loops"))
}

/// Sync requests the proxy saw since `from` (an earlier `proxy.log().len()`); sign-ins
/// (one per request here: the test transport does not cache tokens) are left out.
fn requests_since(proxy: &Proxy, from: usize) -> Vec<String> {
    proxy.log()[from..]
        .iter()
        .filter(|l| l.as_str() != "POST /dummy-signin")
        .cloned()
        .collect()
}

fn count(log: &[String], method: &str, path_prefix: &str) -> usize {
    log.iter()
        .filter(|l| {
            l.strip_prefix(method)
                .and_then(|rest| rest.strip_prefix(' '))
                .is_some_and(|p| p.starts_with(path_prefix))
        })
        .count()
}

fn pruned<T>(answer: Result<T, TransportError>) -> bool {
    matches!(answer, Err(e) if e.code() == Some("history_pruned"))
}

/// Snapshot chunk fetches (`GET /sync/snapshot-sessions/{id}`).
fn chunk_fetches(log: &[String]) -> usize {
    count(log, "GET", "/sync/snapshot-sessions/")
}

/// `a` writes `n` users and syncs; returns the head bundle.
async fn write_and_sync(a: &mut Device, prefix: &str, n: usize) -> i64 {
    for i in 0..n {
        insert_user(a, &new_id(), &format!("{prefix}{i}"));
        a.conn.oversync().sync().await.expect("writer sync");
    }
    a.conn.oversync().last_bundle_seq_seen().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_at_the_head_ends_each_sync_after_one_rebuild_at_most() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("floor-head");
    let mut a = attached(&server, &name).await;
    write_and_sync(&mut a, "seed", 1).await;
    let mut b = attached_via(&server, &proxy, &name).await;
    let head = write_and_sync(&mut a, "later", 3).await;
    set_retention_floor(&server, &name, head).await;

    // B is behind a floor that is the head itself: every pull answers history_pruned.
    let from = proxy.log().len();
    let report = bounded("sync", b.conn.oversync().sync())
        .await
        .expect("sync behind a floor at the head");
    let log = requests_since(&proxy, from);
    assert!(
        matches!(report.pull, PullOutcome::UpToDate { .. }),
        "{report:?}"
    );
    assert_eq!(all_users(&mut b), all_users(&mut a));
    assert_eq!(b.conn.oversync().last_bundle_seq_seen().unwrap(), head);
    assert_eq!(count(&log, "GET", PULL), 1, "one pull: {log:?}");
    assert_eq!(count(&log, "POST", SESSIONS), 1, "one rebuild: {log:?}");
    assert!(log.len() <= 6, "bounded requests: {log:?}");

    // Steady state: the server's head is where B is. Each sync asks once, sees a snapshot at
    // its own checkpoint and downloads nothing.
    for round in 0..3 {
        let from = proxy.log().len();
        let report = bounded("sync", b.conn.oversync().sync())
            .await
            .expect("sync at the head");
        let log = requests_since(&proxy, from);
        assert!(
            matches!(report.pull, PullOutcome::UpToDate { .. }),
            "{report:?}"
        );
        assert_eq!(chunk_fetches(&log), 0, "round {round}: {log:?}");
        assert!(log.len() <= 3, "round {round}: {log:?}");
        assert_eq!(b.conn.oversync().last_bundle_seq_seen().unwrap(), head);
    }

    // A new bundle arrives while B still sits at the floor: that pull is pruned too, so
    // one more snapshot (now newer than B) brings it, and B's own write goes out.
    write_and_sync(&mut a, "newer", 1).await;
    insert_user(&mut b, &new_id(), "from-b");
    let from = proxy.log().len();
    bounded("sync", b.conn.oversync().sync())
        .await
        .expect("sync at the floor");
    let log = requests_since(&proxy, from);
    assert_eq!(count(&log, "POST", SESSIONS), 1, "{log:?}");
    assert!(b.conn.oversync().last_bundle_seq_seen().unwrap() > head);

    // Above the floor, bundles are pulled normally: no snapshot at all.
    let newest = write_and_sync(&mut a, "newest", 1).await;
    let from = proxy.log().len();
    bounded("sync", b.conn.oversync().sync())
        .await
        .expect("sync above the floor");
    let log = requests_since(&proxy, from);
    assert_eq!(count(&log, "POST", SESSIONS), 0, "{log:?}");
    assert_eq!(b.conn.oversync().last_bundle_seq_seen().unwrap(), newest);
    assert_eq!(all_users(&mut b), all_users(&mut a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_history_pruned_to_everything_costs_bounded_requests() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("always-pruned");
    let mut a = attached(&server, &name).await;
    write_and_sync(&mut a, "seed", 1).await;
    let mut b = attached_via(&server, &proxy, &name).await;
    let head = write_and_sync(&mut a, "later", 2).await;
    set_retention_floor(&server, &name, head).await;
    proxy.fault(
        "GET",
        PULL,
        Fault::ErrorCode(409, "history_pruned"),
        Times::Always,
    );
    proxy.fault(
        "GET",
        ROWS,
        Fault::ErrorCode(409, "history_pruned"),
        Times::Always,
    );

    // Pull only: one rebuild reaches the head.
    let from = proxy.log().len();
    bounded("pull", b.conn.oversync().pull_to_stable())
        .await
        .expect("pull through one rebuild");
    let log = requests_since(&proxy, from);
    assert_eq!(count(&log, "GET", PULL), 1, "{log:?}");
    assert_eq!(count(&log, "POST", SESSIONS), 1, "{log:?}");
    assert_eq!(all_users(&mut b), all_users(&mut a));

    // Push and pull, several times: B's bundle can never be fetched back, the snapshot
    // (which holds it) stands in; every call is bounded and the data is right.
    for round in 0..3 {
        insert_user(&mut b, &new_id(), &format!("b{round}"));
        let from = proxy.log().len();
        let report = bounded("sync", b.conn.oversync().sync())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let log = requests_since(&proxy, from);
        assert!(
            matches!(report.push, PushOutcome::Pushed { .. }),
            "round {round}: {report:?}"
        );
        assert_eq!(
            count(&log, "GET", "/sync/committed-bundles/"),
            1,
            "round {round}: {log:?}"
        );
        assert_eq!(count(&log, "GET", PULL), 1, "round {round}: {log:?}");
        // One rebuild for the push; the pull then finds the snapshot at its checkpoint.
        assert_eq!(count(&log, "POST", SESSIONS), 2, "round {round}: {log:?}");
        assert_eq!(chunk_fetches(&log), 1, "round {round}: {log:?}");
        assert!(log.len() <= 12, "round {round}: {log:?}");
        assert_eq!(
            b.conn
                .oversync()
                .pending_sync_status()
                .unwrap()
                .pending_rows,
            0
        );
    }
    a.conn.oversync().sync().await.expect("a sync");
    assert_eq!(all_users(&mut b), all_users(&mut a));
    assert_eq!(all_users(&mut b).len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_behind_the_checkpoint_after_history_pruned_is_a_typed_error() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("pruned-behind");
    let mut a = attached(&server, &name).await;
    write_and_sync(&mut a, "seed", 3).await;
    let mut b = attached_via(&server, &proxy, &name).await;
    let checkpoint = b.conn.oversync().last_bundle_seq_seen().unwrap();
    // Pulls say pruned; the snapshot the server then offers is older than B's checkpoint.
    proxy.fault(
        "GET",
        PULL,
        Fault::ErrorCode(409, "history_pruned"),
        Times::Always,
    );
    proxy.rewrite("POST", SESSIONS, Times::Always, |_, _, mut v| {
        v["snapshot_bundle_seq"] = json!(v["snapshot_bundle_seq"].as_i64().unwrap() - 2);
        v
    });
    let before = local_state(&mut b);
    for _ in 0..2 {
        let from = proxy.log().len();
        match bounded("pull", b.conn.oversync().pull_to_stable()).await {
            Err(Error::ServerBehindCheckpoint {
                stable,
                checkpoint: seen,
            }) => {
                assert_eq!((stable, seen), (checkpoint - 2, checkpoint));
            }
            other => panic!("expected ServerBehindCheckpoint, got {other:?}"),
        }
        let log = requests_since(&proxy, from);
        // No chunk is fetched: the session is judged before any download.
        assert_eq!(chunk_fetches(&log), 0, "{log:?}");
        assert!(log.len() <= 3, "{log:?}");
        assert_eq!(local_state(&mut b), before);
    }

    // The same for a push whose committed bundle is pruned: the outbox is kept.
    proxy.clear();
    proxy.fault(
        "GET",
        ROWS,
        Fault::ErrorCode(409, "history_pruned"),
        Times::Always,
    );
    proxy.rewrite("POST", SESSIONS, Times::Always, |_, _, mut v| {
        v["snapshot_bundle_seq"] = json!(v["snapshot_bundle_seq"].as_i64().unwrap() - 1);
        v
    });
    insert_user(&mut b, &new_id(), "pushed");
    match bounded("push", b.conn.oversync().push_pending()).await {
        Err(Error::ServerBehindCheckpoint { stable, checkpoint }) => {
            assert_eq!(stable + 1, checkpoint)
        }
        other => panic!("expected ServerBehindCheckpoint, got {other:?}"),
    }
    assert_eq!(
        b.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        1,
        "the committed outbox stays until its bundle is confirmed"
    );
    // With an honest server the same outbox finishes.
    proxy.clear();
    b.conn
        .oversync()
        .sync()
        .await
        .expect("sync after the fault");
    a.conn.oversync().sync().await.expect("a sync");
    assert_eq!(all_users(&mut b), all_users(&mut a));
    assert_eq!(all_users(&mut a).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_ceiling_behind_the_checkpoint_is_a_typed_error_and_a_rebuild_recovers() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("restored");
    let mut a = attached(&server, &name).await;
    write_and_sync(&mut a, "seed", 3).await;
    let mut b = attached_via(&server, &proxy, &name).await;
    let checkpoint = b.conn.oversync().last_bundle_seq_seen().unwrap();
    assert!(checkpoint >= 3);

    // The server answers as one restored from an older backup would.
    proxy.rewrite("GET", PULL, Times::Always, |_, _, mut v| {
        v["stable_bundle_seq"] = json!(1);
        v["bundles"] = json!([]);
        v["has_more"] = json!(false);
        v
    });
    let before = local_state(&mut b);
    for _ in 0..2 {
        match bounded("pull", b.conn.oversync().pull_to_stable()).await {
            Err(e @ Error::ServerBehindCheckpoint { .. }) => {
                let Error::ServerBehindCheckpoint {
                    stable,
                    checkpoint: seen,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((stable, seen), (1, checkpoint));
                assert!(e.to_string().contains("rebuild()"), "{e}");
            }
            other => panic!("expected ServerBehindCheckpoint, got {other:?}"),
        }
        assert_eq!(local_state(&mut b), before, "nothing applied");
    }
    assert!(
        b.conn.oversync().source_info().unwrap().rebuild_required,
        "marked for the rebuild"
    );

    // The next sync takes the rebuild path (keeping B's unsent write) and syncs on.
    proxy.clear();
    insert_user(&mut b, &new_id(), "unsent");
    bounded("sync", b.conn.oversync().sync())
        .await
        .expect("sync rebuilds");
    assert!(!b.conn.oversync().source_info().unwrap().rebuild_required);
    a.conn.oversync().sync().await.expect("a sync");
    assert_eq!(all_users(&mut b), all_users(&mut a));
    assert_eq!(all_users(&mut a).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_pulled_is_pruned_once_the_floor_rises() {
    let server = Server::start().await;
    let name = fresh_user("never-pulled");
    // C attaches while the account holds no bundle: its checkpoint is 0.
    let mut c = attached(&server, &name).await;
    assert_eq!(c.conn.oversync().last_bundle_seq_seen().unwrap(), 0);
    let mut a = attached(&server, &name).await;
    let head = write_and_sync(&mut a, "w", 3).await;
    set_retention_floor(&server, &name, head - 1).await;

    // The server answers history_pruned rather than the bundles after the floor (a history
    // with a hole at its start); C rebuilds and is complete.
    let transport = transport_for(server.base_url(), &name);
    let source = c.conn.oversync().source_info().unwrap().current_source_id;
    assert!(pruned(transport.pull(&source, 0, 100, None).await), "0");
    assert!(pruned(transport.pull(&source, head - 1, 100, None).await));
    let page = transport
        .pull(&source, head, 100, None)
        .await
        .expect("above the floor");
    assert_eq!(page.stable_bundle_seq, head);

    bounded("sync", c.conn.oversync().sync())
        .await
        .expect("sync from checkpoint 0");
    assert_eq!(all_users(&mut c), all_users(&mut a));
    assert_eq!(c.conn.oversync().last_bundle_seq_seen().unwrap(), head);

    // A floor at the head prunes the head itself, as the reference server has it.
    set_retention_floor(&server, &name, head).await;
    assert!(pruned(transport.pull(&source, head, 100, None).await));
    assert!(pruned(transport.pull(&source, 0, 100, None).await));
    assert!(pruned(transport.pull(&source, head, 100, Some(head)).await));
}
