//! Network faults between the engine and the real server: a loopback proxy drops
//! connections (before or after the server acted), delays past the request timeout, answers
//! 500/502/503, truncates bodies and corrupts JSON, on each endpoint the engine uses in turn,
//! once or on every attempt. Every case ends in success after retry or in a typed error that
//! leaves local intent intact (tables, pending rows, checkpoint); then a clean sync converges
//! with a second device.

mod common;

use common::*;
use diesel::prelude::*;
use oversync_diesel::{AttachOutcome, Error, TransportError};
use oversync_e2e::schema::posts;
use oversync_e2e::*;
use std::time::{Duration, Instant};

/// Retries after the first attempt in `transport_with_timeout`.
const MAX_RETRIES: u32 = 3;
/// Per-attempt timeout of the faulted device's transport.
const TIMEOUT: Duration = Duration::from_millis(1500);

/// Which operation an endpoint is exercised by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// A fresh device with local rows attaches to an empty account (capabilities, connect).
    AttachSeed,
    /// An attached device pushes local rows (push-sessions, chunks, commit, committed rows).
    Push,
    /// An attached device pulls another device's bundle.
    Pull,
    /// A fresh device with local rows attaches to an account with data (snapshot).
    AttachHydrate,
}

fn faults() -> Vec<(Fault, Times)> {
    let mut all = Vec::new();
    for fault in [
        Fault::DropBefore,
        Fault::DropAfter,
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::Truncate,
        Fault::CorruptJson,
    ] {
        all.push((fault, Times::First(1)));
        all.push((fault, Times::Always));
    }
    // Slow but within the timeout, every time; and past the timeout once.
    all.push((Fault::Delay(Duration::from_millis(150)), Times::Always));
    all.push((
        Fault::Delay(TIMEOUT + Duration::from_millis(400)),
        Times::First(1),
    ));
    all
}

fn post_row(id: &str, author: &str) -> oversync_e2e::Post {
    oversync_e2e::Post {
        id: id.into(),
        title: "t".into(),
        content: "c".into(),
        author_id: Some(author.into()),
        created_at: None,
        updated_at: None,
    }
}

/// Local writes: two users, a post referencing one, an update.
fn write_local(d: &mut Device, tag: &str) {
    let (u1, u2) = (new_id(), new_id());
    insert_user(d, &u1, &format!("{tag}-1"));
    insert_user(d, &u2, &format!("{tag}-2"));
    diesel::insert_into(posts::table)
        .values(&post_row(&new_id(), &u1))
        .execute(&mut *d.conn)
        .expect("insert post");
    diesel::update(oversync_e2e::schema::users::table.find(&u2))
        .set(oversync_e2e::schema::users::name.eq(format!("{tag}-2b")))
        .execute(&mut *d.conn)
        .expect("update user");
}

/// A device whose transport goes through the proxy.
fn proxied(server: &Server, proxy: &Proxy, user: &str) -> Device {
    let mut d = Device::new(server, user);
    d.conn
        .set_transport(transport_with_timeout(proxy.url(), user, TIMEOUT));
    d
}

/// What an operation may end in for a fault, and checks it.
fn check_outcome<T: std::fmt::Debug>(
    label: &str,
    result: &Result<T, Error>,
    fault: Fault,
    times: Times,
    best_effort: bool,
) -> &'static str {
    let retryable = matches!(
        fault,
        Fault::DropBefore | Fault::DropAfter | Fault::Status(_) | Fault::Truncate
    );
    match (result, fault, times) {
        (Ok(_), _, _) if best_effort => "ok",
        (Ok(_), Fault::Delay(_), _) => "ok",
        (Ok(_), _, Times::First(_)) if retryable => "ok after retry",
        // The server acted on a request whose answer was lost; the retry may be refused (a
        // re-sent chunk or commit), which is a typed error. Local intent is checked by the caller.
        (
            Err(Error::Transport(TransportError::Server { status, .. })),
            Fault::DropAfter | Fault::Truncate,
            _,
        ) if (400..500).contains(status) => "typed 4xx after the server acted",
        (Err(Error::Transport(e)), _, Times::Always) if retryable && e.is_retryable() => {
            "typed retryable error after retries"
        }
        (Err(Error::Transport(TransportError::Decode { .. })), Fault::CorruptJson, _) => {
            "typed decode error"
        }
        (other, _, _) => panic!("{label}: unexpected outcome {other:?}"),
    }
}

/// Runs every fault on one endpoint.
async fn endpoint_faults(method: &str, pattern: &str, scenario: Scenario) {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    // DELETE of a snapshot session is best effort: the rebuild succeeds whatever happens.
    let best_effort = method == "DELETE";
    let started = Instant::now();
    let mut summary = Vec::new();
    for (fault, times) in faults() {
        let label = format!("{method} {pattern} {fault:?} {times:?}");
        proxy.clear();
        let name = fresh_user("net");
        // `a` goes through the proxy; `b` talks to the server directly.
        let (mut a, mut b, outcome) = match scenario {
            Scenario::AttachSeed => {
                let mut a = proxied(&server, &proxy, &name);
                write_local(&mut a, "a");
                let before = local_state(&mut a);
                proxy.fault(method, pattern, fault, times);
                let result = a.conn.oversync().attach(&name).await;
                let outcome = check_outcome(&label, &result, fault, times, best_effort);
                if result.is_err() {
                    assert_eq!(local_state(&mut a), before, "{label}: local state changed");
                    assert!(
                        matches!(
                            a.conn.oversync().source_info().unwrap().binding,
                            oversync_diesel::Binding::Anonymous
                        ),
                        "{label}: attached although attach failed"
                    );
                } else {
                    assert!(
                        matches!(result, Ok(AttachOutcome::SeededFromLocal)),
                        "{label}: {result:?}"
                    );
                }
                let b = Device::new(&server, &name);
                (a, b, outcome)
            }
            Scenario::Push => {
                let mut a = proxied(&server, &proxy, &name);
                let first = a.conn.oversync().attach(&name).await.expect("attach a");
                assert_eq!(first, AttachOutcome::StartedEmpty, "{label}");
                let mut b = Device::new(&server, &name);
                b.conn.oversync().attach(&name).await.expect("attach b");
                write_local(&mut a, "a");
                let before = local_state(&mut a);
                proxy.fault(method, pattern, fault, times);
                let result = a.conn.oversync().sync().await;
                let outcome = check_outcome(&label, &result, fault, times, best_effort);
                if result.is_err() {
                    assert_eq!(local_state(&mut a), before, "{label}: local state changed");
                } else {
                    assert_eq!(local_state(&mut a).pending_rows, 0, "{label}");
                }
                b.conn.oversync().sync().await.expect("b sync");
                (a, b, outcome)
            }
            Scenario::Pull => {
                let mut b = Device::new(&server, &name);
                b.conn.oversync().attach(&name).await.expect("attach b");
                let mut a = proxied(&server, &proxy, &name);
                a.conn.oversync().attach(&name).await.expect("attach a");
                write_local(&mut b, "b");
                b.conn.oversync().sync().await.expect("b sync");
                let before = local_state(&mut a);
                proxy.fault(method, pattern, fault, times);
                let result = a.conn.oversync().sync().await;
                let outcome = check_outcome(&label, &result, fault, times, best_effort);
                if result.is_err() {
                    assert_eq!(local_state(&mut a), before, "{label}: local state changed");
                } else {
                    assert_eq!(dump(&mut a, "users"), dump(&mut b, "users"), "{label}");
                }
                (a, b, outcome)
            }
            Scenario::AttachHydrate => {
                let mut b = Device::new(&server, &name);
                b.conn.oversync().attach(&name).await.expect("attach b");
                write_local(&mut b, "b");
                b.conn.oversync().sync().await.expect("b sync");
                let mut a = proxied(&server, &proxy, &name);
                write_local(&mut a, "a");
                let before = local_state(&mut a);
                proxy.fault(method, pattern, fault, times);
                let result = a.conn.oversync().attach(&name).await;
                let outcome = check_outcome(&label, &result, fault, times, best_effort);
                if result.is_err() {
                    assert_eq!(local_state(&mut a), before, "{label}: local state changed");
                } else {
                    // remote_authoritative: the account's state replaces the anonymous rows.
                    assert!(
                        matches!(
                            result,
                            Ok(AttachOutcome::UsedRemoteState { discarded_local_rows, .. })
                                if discarded_local_rows == before.pending_rows
                        ),
                        "{label}: {result:?}"
                    );
                    let after = local_state(&mut a);
                    assert_eq!(
                        after.pending_rows, 0,
                        "{label}: anonymous rows still queued"
                    );
                    assert_eq!(
                        (after.users, after.posts),
                        (dump(&mut b, "users"), dump(&mut b, "posts")),
                        "{label}: not the account's state"
                    );
                }
                (a, b, outcome)
            }
        };
        let hits = proxy.hits();
        match (times, outcome) {
            (Times::First(n), _) => assert_eq!(hits, n, "{label}: the fault never fired"),
            (Times::Always, "typed retryable error after retries") => assert_eq!(
                hits,
                MAX_RETRIES + 1,
                "{label}: expected the first attempt and {MAX_RETRIES} retries"
            ),
            (Times::Always, _) => assert!(hits >= 1, "{label}: the fault never fired"),
        }
        // Clean: no faults; `a` finishes (attaching when it has not), both converge.
        proxy.clear();
        if !matches!(
            a.conn.oversync().source_info().unwrap().binding,
            oversync_diesel::Binding::Attached { .. }
        ) || matches!(scenario, Scenario::AttachHydrate)
        {
            let again = a.conn.oversync().attach(&name).await;
            assert!(again.is_ok(), "{label}: clean attach: {again:?}");
        }
        let mut converged = false;
        for _ in 0..3 {
            a.conn.oversync().sync().await.expect("clean sync a");
            if matches!(
                b.conn.oversync().source_info().unwrap().binding,
                oversync_diesel::Binding::Anonymous
            ) {
                b.conn.oversync().attach(&name).await.expect("attach b");
            }
            b.conn.oversync().sync().await.expect("clean sync b");
            if local_state(&mut a) == local_state(&mut b) {
                converged = true;
                break;
            }
        }
        let (sa, sb) = (local_state(&mut a), local_state(&mut b));
        assert!(converged, "{label}: no convergence\n a: {sa:?}\n b: {sb:?}");
        assert_eq!(sa.pending_rows, 0, "{label}");
        // The writer's rows arrived exactly once: 2 users and 1 post (a device hydrating
        // from an account with data drops its anonymous rows instead of uploading them).
        assert_eq!(sa.users.len(), 2, "{label}: {sa:?}");
        assert_eq!(sa.posts.len(), 1, "{label}: {sa:?}");
        summary.push(format!("{fault:?}/{times:?}: {outcome}"));
    }
    println!(
        "{method} {pattern}: {} cases in {:?}\n  {}",
        summary.len(),
        started.elapsed(),
        summary.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_capabilities() {
    endpoint_faults("GET", "/sync/capabilities", Scenario::AttachSeed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_connect() {
    endpoint_faults("POST", "/sync/connect", Scenario::AttachSeed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_push_session_create() {
    endpoint_faults("POST", "/sync/push-sessions", Scenario::Push).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_push_chunks() {
    endpoint_faults("POST", "/sync/push-sessions/*/chunks", Scenario::Push).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_push_commit() {
    endpoint_faults("POST", "/sync/push-sessions/*/commit", Scenario::Push).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_committed_bundle_rows() {
    endpoint_faults("GET", "/sync/committed-bundles/*/rows", Scenario::Push).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_pull() {
    endpoint_faults("GET", "/sync/pull", Scenario::Pull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_snapshot_create() {
    endpoint_faults("POST", "/sync/snapshot-sessions", Scenario::AttachHydrate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_snapshot_chunk() {
    endpoint_faults("GET", "/sync/snapshot-sessions/*", Scenario::AttachHydrate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_snapshot_delete() {
    endpoint_faults(
        "DELETE",
        "/sync/snapshot-sessions/*",
        Scenario::AttachHydrate,
    )
    .await;
}
