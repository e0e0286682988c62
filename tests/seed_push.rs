//! The seed push: the first push of an account, carrying the initialization lease the
//! device's `attach` got with `SeededFromLocal`. A refused seed row must not lock the account
//! for other devices for the lease lifetime (our server gives the lease up at once), the
//! seeding device must not be left stuck with a lease that is gone (expired offline, given
//! up, or taken by another device), and a refusal nothing can be quarantined for is a typed
//! error saying when other devices can attach.
//!
//! These tests change the server's schema and lease state, so they always run against our
//! in-process example server (never `OVERSYNC_TEST_SERVER_URL`).

mod common;

use common::*;
use oversync_diesel::{AttachOutcome, Error};
use oversync_e2e::*;
use std::time::Duration;

async fn local_server() -> Server {
    let local = oversync_testkit::TestServer::start_async()
        .await
        .expect("start the example server");
    Server::from_local(local)
}

async fn server_sql(server: &Server, sql: &str) {
    let url = &server.local().expect("local server").database().url;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the server's database");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect("server SQL");
    drop(client);
    let _ = task.await;
}

/// Our server refuses one seed row and gives the lease up; the seeding device quarantines
/// the row, finds its lease gone, takes a new one and seeds the account with the rest in the
/// same `sync()`. A second device attaching next gets the account's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_seed_row_is_quarantined_and_the_rest_seeds_the_account() {
    let server = local_server().await;
    server_sql(
        &server,
        "ALTER TABLE business.users ADD CONSTRAINT users_seed_not_poison CHECK (name NOT LIKE 'poison%')",
    )
    .await;
    let user = fresh_user("seed-refused");
    let mut a = Device::new(&server, &user);
    let (good1, bad, good2) = (new_id(), new_id(), new_id());
    insert_user(&mut a, &good1, "good-one");
    insert_user(&mut a, &bad, "poison");
    insert_user(&mut a, &good2, "good-two");
    let outcome = a.conn.oversync().attach(&user).await.expect("attach");
    assert_eq!(outcome, AttachOutcome::SeededFromLocal);

    a.conn
        .oversync()
        .sync()
        .await
        .expect("the seed goes on without the refused row");
    let status = a.conn.oversync().pending_sync_status().unwrap();
    assert_eq!(
        (status.pending_rows, status.quarantined_rows),
        (0, 1),
        "{status:?}"
    );
    let quarantined = a.conn.oversync().quarantined_rows().unwrap();
    assert_eq!(quarantined[0].key, bad);

    let mut b = Device::new(&server, &user);
    let outcome = b.conn.oversync().attach(&user).await.expect("attach b");
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: 2,
            discarded_local_rows: 0
        }
    );
    let mut names: Vec<String> = user_names_by_id(&mut b.conn).into_values().collect();
    names.sort();
    assert_eq!(names, ["good-one", "good-two"]);
}

/// The seeding device's lease expired while it was offline and another device with rows of
/// its own took the account's lease: the first device's push is `AccountInitializing`
/// (retryable, rows kept) until that device has seeded, then its rows go up as an ordinary
/// push and both devices converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_offline_waits_for_the_other_initializer_then_pushes() {
    let server = local_server().await;
    let user = fresh_user("seed-lost");
    let mut a = Device::new(&server, &user);
    let from_a = new_id();
    insert_user(&mut a, &from_a, "from-a");
    let outcome = a.conn.oversync().attach(&user).await.expect("attach a");
    assert_eq!(outcome, AttachOutcome::SeededFromLocal);

    // A is offline past its lease; B, with a row of its own, initializes the account.
    server_sql(
        &server,
        &format!(
            "UPDATE sync.user_state SET lease_expires_at = now() - interval '1 second' WHERE user_id = '{user}'"
        ),
    )
    .await;
    let mut b = Device::new(&server, &user);
    let from_b = new_id();
    insert_user(&mut b, &from_b, "from-b");
    let outcome = b.conn.oversync().attach(&user).await.expect("attach b");
    assert_eq!(outcome, AttachOutcome::SeededFromLocal);

    let err = a
        .conn
        .oversync()
        .sync()
        .await
        .expect_err("b holds the lease");
    let Error::AccountInitializing { retry_after } = &err else {
        panic!("expected AccountInitializing, got {err:?}");
    };
    assert!(*retry_after >= Duration::from_secs(1), "{retry_after:?}");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(
        a.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        1
    );

    b.conn.oversync().sync().await.expect("b seeds the account");
    a.conn
        .oversync()
        .sync()
        .await
        .expect("a pushes as an ordinary push and pulls b's row");
    b.conn.oversync().sync().await.expect("b pulls a's row");
    let expected: std::collections::BTreeMap<String, String> = [
        (from_a.clone(), "from-a".to_string()),
        (from_b.clone(), "from-b".to_string()),
    ]
    .into();
    assert_eq!(user_names_by_id(&mut a.conn), expected);
    assert_eq!(user_names_by_id(&mut b.conn), expected);
}

/// A refusal of the seed push that no row can be set aside for (here a proxy answering the
/// session create with a 400 our server would not send) is `SeedPushRejected`: it names the
/// server's answer and the lease lifetime within which other devices can attach, and keeps
/// the rows. Meanwhile the lease holds (another device is told `RetryLater`); the next sync
/// seeds the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unquarantinable_seed_refusal_is_typed_and_says_when_others_can_attach() {
    let server = local_server().await;
    let proxy = Proxy::start(server.base_url()).await;
    let user = fresh_user("seed-typed");
    let mut a = Device::new(&server, &user);
    a.conn.set_transport(transport_for(proxy.url(), &user));
    let id = new_id();
    insert_user(&mut a, &id, "seed");
    let outcome = a.conn.oversync().attach(&user).await.expect("attach");
    assert_eq!(outcome, AttachOutcome::SeededFromLocal);

    proxy.fault(
        "POST",
        "/sync/push-sessions",
        Fault::ErrorCode(400, "invalid_request"),
        Times::First(1),
    );
    let err = a.conn.oversync().sync().await.expect_err("refused");
    let Error::SeedPushRejected {
        error,
        others_can_attach_within,
    } = &err
    else {
        panic!("expected SeedPushRejected, got {err:?}");
    };
    assert_eq!(error.status(), Some(400));
    assert_eq!(error.code(), Some("invalid_request"));
    // The example server's lease lifetime, from its capabilities.
    let within = others_can_attach_within.expect("the server reports its lease lifetime");
    assert!(within >= Duration::from_secs(1), "{within:?}");
    let message = err.to_string();
    assert!(message.contains("seed push"), "{message}");
    assert!(
        message.contains(&format!("within {} s", within.as_secs())),
        "{message}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        a.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        1
    );

    let mut b = Device::new(&server, &user);
    assert!(
        matches!(
            b.conn.oversync().attach(&user).await.expect("attach b"),
            AttachOutcome::RetryLater { .. }
        ),
        "the lease holds while the seeding device has not given up"
    );

    a.conn.oversync().sync().await.expect("the next sync seeds");
    let outcome = b.conn.oversync().attach(&user).await.expect("attach b");
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: 1,
            discarded_local_rows: 0
        }
    );
}
