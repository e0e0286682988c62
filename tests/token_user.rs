//! A token of another account: our server names the token's user in every `/sync/*` answer
//! (`Oversync-User-ID`), and the client refuses an answer for another user than the one it
//! is attached to (or attaching) before applying anything, so none of the device's rows
//! reach the other account and nothing changes locally. A server that does not name the
//! user (the reference) is covered by the message of its `401`: it names the attached user.

mod common;

use common::{insert_user, local_state};
use oversync_diesel::transport::{StaticToken, Transport, TransportError};
use oversync_diesel::{Binding, Error};
use oversync_e2e::*;

fn is_mismatch(result: &Result<impl std::fmt::Debug, Error>, attached: &str, other: &str) -> bool {
    matches!(
        result,
        Err(Error::Transport(TransportError::TokenUserMismatch { expected_user, token_user, .. }))
            if expected_user == attached && token_user == other
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_user_is_refused_and_changes_nothing() {
    let server = Server::start().await;
    if server.local().is_none() {
        return; // only our server names the token's user
    }
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let mut a = Device::new(&server, &alice);
    a.conn
        .oversync()
        .attach(&alice)
        .await
        .expect("attach alice");
    let (synced, pending) = (new_id(), new_id());
    insert_user(&mut a, &synced, "synced");
    a.conn.oversync().sync().await.expect("alice syncs");
    let mut b = Device::new(&server, &bob);
    b.conn.oversync().attach(&bob).await.expect("attach bob");
    insert_user(&mut a, &pending, "pending");
    let before = local_state(&mut a);
    assert_eq!(before.pending_rows, 1);

    // The app hands alice's device bob's token (a sign-in mix-up).
    a.conn.set_transport(transport_for(server.base_url(), &bob));
    let result = a.conn.oversync().sync().await;
    assert!(is_mismatch(&result, &alice, &bob), "{result:?}");
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains(&alice) && message.contains(&bob),
        "{message}"
    );
    let result = a.conn.oversync().push_pending().await;
    assert!(is_mismatch(&result, &alice, &bob), "push: {result:?}");
    let result = a.conn.oversync().pull_to_stable().await;
    assert!(is_mismatch(&result, &alice, &bob), "pull: {result:?}");
    assert_eq!(local_state(&mut a), before, "nothing changed locally");

    // Nothing of alice's reached bob's account.
    b.conn.oversync().sync().await.expect("bob syncs");
    assert!(
        common::all_users(&mut b).is_empty(),
        "bob sees alice's rows"
    );
    let mut fresh_bob = Device::new(&server, &bob);
    fresh_bob
        .conn
        .oversync()
        .attach(&bob)
        .await
        .expect("fresh bob");
    assert!(common::all_users(&mut fresh_bob).is_empty());

    // With her own token again, alice's pending row goes to her account.
    a.conn
        .set_transport(transport_for(server.base_url(), &alice));
    a.conn.oversync().sync().await.expect("alice syncs again");
    let mut fresh_alice = Device::new(&server, &alice);
    fresh_alice
        .conn
        .oversync()
        .attach(&alice)
        .await
        .expect("fresh alice");
    assert_eq!(
        common::all_users(&mut fresh_alice),
        common::all_users(&mut a)
    );
    assert_eq!(common::all_users(&mut a).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaching_with_a_token_of_another_user_stays_anonymous() {
    let server = Server::start().await;
    if server.local().is_none() {
        return;
    }
    let (alice, bob) = (fresh_user("alice"), fresh_user("bob"));
    let mut a = Device::new(&server, &alice);
    let row = new_id();
    insert_user(&mut a, &row, "anonymous");
    a.conn.set_transport(transport_for(server.base_url(), &bob));
    let result = a.conn.oversync().attach(&alice).await;
    assert!(is_mismatch(&result, &alice, &bob), "{result:?}");
    let status = a.conn.oversync().sync_status().expect("status");
    assert!(
        matches!(status.binding, Binding::Anonymous),
        "{:?}",
        status.binding
    );
    assert_eq!(status.pending_rows, 1);

    a.conn
        .set_transport(transport_for(server.base_url(), &alice));
    a.conn
        .oversync()
        .attach(&alice)
        .await
        .expect("attach alice");
    a.conn.oversync().sync().await.expect("sync");
    let mut fresh_bob = Device::new(&server, &bob);
    fresh_bob.conn.oversync().attach(&bob).await.expect("bob");
    assert!(
        common::all_users(&mut fresh_bob).is_empty(),
        "bob got alice's row"
    );
}

/// A server that does not name the token's user (ours for a token it cannot verify, the
/// reference always): the `401` after the refresh names the attached user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_answer_names_the_attached_user() {
    let server = Server::start().await;
    let alice = fresh_user("alice");
    let mut a = Device::new(&server, &alice);
    a.conn
        .oversync()
        .attach(&alice)
        .await
        .expect("attach alice");
    insert_user(&mut a, &new_id(), "pending");
    let before = local_state(&mut a);
    a.conn.set_transport(
        Transport::new(server.base_url(), StaticToken("not-a-token".into())).expect("transport"),
    );
    let result = a.conn.oversync().sync().await;
    let Err(Error::Transport(TransportError::Unauthorized { message })) = &result else {
        panic!("expected Unauthorized, got {result:?}");
    };
    assert!(message.contains(&alice), "{message}");
    assert_eq!(local_state(&mut a), before);
}
