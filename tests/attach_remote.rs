//! Attaching to an account that already has data (`remote_authoritative`): the account's
//! state replaces the device's anonymous rows (reported, never uploaded), and a hydration
//! that fails (injected by the fault proxy) leaves the install anonymous with its rows, from
//! where attach can be retried for the same user or for another one.

mod common;

use common::*;
use diesel::prelude::*;
use oversync_diesel::{AttachOptions, AttachOutcome, Binding, Error, PushOutcome};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::time::Duration;

/// An account with one row (`account`), written by another device.
async fn account_with_data(server: &Server, user: &str) -> Vec<(String, String, String)> {
    let mut other = Device::new(server, user);
    other.conn.oversync().attach(user).await.expect("attach");
    insert_user(&mut other, &new_id(), "from-account");
    other
        .conn
        .oversync()
        .sync()
        .await
        .expect("seed the account");
    all_users(&mut other)
}

/// A device routed through `proxy` with one anonymous row.
fn anonymous_device_with_a_row(server: &Server, proxy: &Proxy, user: &str) -> Device {
    let mut d = Device::new(server, user);
    d.conn.set_transport(transport_with_timeout(
        proxy.url(),
        user,
        Duration::from_secs(10),
    ));
    insert_user(&mut d, &new_id(), "anonymous");
    d
}

async fn fresh_users(server: &Server, user: &str) -> Vec<(String, String, String)> {
    let mut fresh = Device::new(server, user);
    fresh.conn.oversync().attach(user).await.expect("attach");
    all_users(&mut fresh)
}

fn pending(d: &mut Device) -> u64 {
    d.conn
        .oversync()
        .pending_sync_status()
        .unwrap()
        .pending_rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_state_replaces_anonymous_rows_which_are_not_uploaded() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let user = fresh_user("remote-auth");
    let account = account_with_data(&server, &user).await;
    let mut d = anonymous_device_with_a_row(&server, &proxy, &user);

    let outcome = d.conn.oversync().attach(&user).await.expect("attach");
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: 1,
            discarded_local_rows: 1
        }
    );
    assert_eq!(all_users(&mut d), account, "the device holds the account");
    assert_eq!(pending(&mut d), 0, "the anonymous row is not queued");
    let report = d.conn.oversync().sync().await.expect("sync");
    assert_eq!(report.push, PushOutcome::NothingToPush);
    assert_eq!(
        fresh_users(&server, &user).await,
        account,
        "nothing uploaded"
    );
}

/// Fails every snapshot-session create (503 on each retry).
fn fail_hydration(proxy: &Proxy) {
    proxy.fault(
        "POST",
        "/sync/snapshot-sessions",
        Fault::Status(503),
        Times::Always,
    );
}

/// After a failed hydration: still anonymous, local rows untouched, app writes refused
/// while the replace is pending.
fn assert_pending_replace(d: &mut Device, rows_before: &[(String, String, String)]) {
    assert!(
        matches!(
            d.conn.oversync().source_info().unwrap().binding,
            Binding::Anonymous
        ),
        "still anonymous"
    );
    assert_eq!(all_users(d), rows_before, "local rows untouched");
    assert_eq!(pending(d), 1, "local intent kept until the replace commits");
    let write = diesel::insert_into(users::table)
        .values(&user_row(&new_id(), "during-replace"))
        .execute(&mut *d.conn);
    assert!(
        matches!(&write, Err(e) if e.to_string().contains("SYNC_TRANSITION_PENDING")),
        "{write:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_hydration_is_retried_by_attaching_the_same_user_again() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let user = fresh_user("remote-retry");
    let account = account_with_data(&server, &user).await;
    let mut d = anonymous_device_with_a_row(&server, &proxy, &user);
    let before = all_users(&mut d);

    fail_hydration(&proxy);
    let failed = d.conn.oversync().attach(&user).await;
    assert!(matches!(failed, Err(Error::Transport(_))), "{failed:?}");
    assert!(proxy.hits() >= 1, "the fault fired");
    assert_pending_replace(&mut d, &before);
    // Not attached, so nothing can reach the account.
    assert!(matches!(
        d.conn.oversync().sync().await,
        Err(Error::NotAttached)
    ));

    // A restart in between changes nothing: the pending replace is durable.
    let mut d = d.restart();
    d.conn.set_transport(transport_with_timeout(
        proxy.url(),
        &user,
        Duration::from_secs(10),
    ));
    proxy.clear();
    let outcome = d.conn.oversync().attach(&user).await.expect("retry attach");
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: 1,
            discarded_local_rows: 1
        }
    );
    assert_eq!(all_users(&mut d), account);
    insert_user(&mut d, &new_id(), "after-attach");
    d.conn.oversync().sync().await.expect("sync");
    assert_eq!(fresh_users(&server, &user).await, all_users(&mut d));
    assert_eq!(
        all_users(&mut d).len(),
        2,
        "the account row and the new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_hydration_does_not_bind_so_another_user_can_attach() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let first = fresh_user("remote-first");
    let account = account_with_data(&server, &first).await;
    let mut d = anonymous_device_with_a_row(&server, &proxy, &first);
    let before = all_users(&mut d);

    fail_hydration(&proxy);
    let failed = d.conn.oversync().attach(&first).await;
    assert!(matches!(failed, Err(Error::Transport(_))), "{failed:?}");
    assert_pending_replace(&mut d, &before);
    proxy.clear();

    // Another user signs in instead: an empty account, seeded from the anonymous row.
    let second = fresh_user("remote-second");
    d.conn.set_transport(transport_with_timeout(
        proxy.url(),
        &second,
        Duration::from_secs(10),
    ));
    let outcome = d.conn.oversync().attach(&second).await.expect("attach");
    assert_eq!(outcome, AttachOutcome::SeededFromLocal);
    d.conn.oversync().sync().await.expect("sync");
    assert_eq!(fresh_users(&server, &second).await, before);
    assert_eq!(
        fresh_users(&server, &first).await,
        account,
        "the first account is untouched"
    );
}

/// The explicit opt-in: the replaced anonymous changes come back to the app (exactly what
/// the swap dropped), still neither uploaded nor kept; the app writes again what it wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surfaced_anonymous_rows_come_back_to_the_app_and_only_explicit_writes_upload() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let user = fresh_user("remote-surface");
    let account = account_with_data(&server, &user).await;
    let mut d = anonymous_device_with_a_row(&server, &proxy, &user);
    let second = new_id();
    insert_user(&mut d, &second, "second");
    let anonymous = all_users(&mut d);

    let report = d
        .conn
        .oversync()
        .attach_with(&user, AttachOptions::surface_replaced_rows())
        .await
        .expect("attach");
    assert_eq!(
        report.outcome,
        AttachOutcome::UsedRemoteState {
            rows: 1,
            discarded_local_rows: 2
        }
    );
    let surfaced: Vec<(String, String, String)> = report
        .replaced_local_rows
        .iter()
        .map(|r| {
            assert_eq!(r.table, "users");
            assert_eq!(r.op, oversync_diesel::protocol::Op::Insert);
            let row = r.row.as_ref().expect("an insert carries its row");
            assert_eq!(r.key["id"], row["id"]);
            let text = |c: &str| row[c].as_str().expect("text column").to_string();
            (text("id"), text("name"), text("email"))
        })
        .collect();
    let mut sorted = surfaced.clone();
    sorted.sort();
    assert_eq!(
        sorted, anonymous,
        "every replaced row, with its local values"
    );
    assert_eq!(all_users(&mut d), account, "the device holds the account");
    assert_eq!(pending(&mut d), 0, "nothing queued behind the app's back");

    // The app chooses to keep one of them: an ordinary write, uploaded by the next sync.
    insert_user(&mut d, &second, "second");
    d.conn.oversync().sync().await.expect("sync");
    let mut expected = account.clone();
    expected.extend(anonymous.into_iter().filter(|r| r.0 == second));
    expected.sort();
    assert_eq!(fresh_users(&server, &user).await, expected);
}

/// Without the option nothing is returned (the default attach only counts them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_replaced_rows_are_only_counted() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let user = fresh_user("remote-count");
    account_with_data(&server, &user).await;
    let mut d = anonymous_device_with_a_row(&server, &proxy, &user);
    let report = d
        .conn
        .oversync()
        .attach_with(&user, AttachOptions::default())
        .await
        .expect("attach");
    assert_eq!(
        report.outcome,
        AttachOutcome::UsedRemoteState {
            rows: 1,
            discarded_local_rows: 1
        }
    );
    assert!(report.replaced_local_rows.is_empty());
}
