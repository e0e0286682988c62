//! Hydrating a new device right after a large push, before PostgreSQL has any statistics
//! for the just-filled tables (autovacuum is switched off for them). The snapshot build
//! used to plan its `row_state` lookup as an n x n nested loop in exactly this state; this
//! test finishing in reasonable time in a debug build is the proof it is linear now (no
//! timing assertion; see docs/performance.md).

use diesel::prelude::*;
use oversync_diesel::{AttachOutcome, PushOutcome};
use oversync_e2e::schema::users;
use oversync_e2e::*;

mod common;

const ROWS: usize = 50_000;

/// A count on the in-process server's database (none against an external server).
async fn server_count(server: &Server, sql: &str) -> Option<i64> {
    let local = server.local()?;
    let db = local.service().pool().get().await.expect("server database");
    Some(db.query_one(sql, &[]).await.expect(sql).get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_device_hydrates_fifty_thousand_rows_before_any_analyze() {
    let server = Server::start().await;
    // Autovacuum's ANALYZE would give the planner statistics and hide a bad plan.
    if let Some(local) = server.local() {
        let db = local.service().pool().get().await.expect("server database");
        db.batch_execute(
            "DO $$ DECLARE t record; BEGIN
           FOR t IN SELECT schemaname, tablename FROM pg_tables
                    WHERE schemaname IN ('sync', 'business') LOOP
             EXECUTE format('ALTER TABLE %I.%I SET (autovacuum_enabled = off)',
                            t.schemaname, t.tablename);
           END LOOP;
         END $$",
        )
        .await
        .expect("autovacuum off");
    }

    let name = fresh_user("hydrate-scale");
    let mut a = Device::new(&server, &name);
    // The 50k-row push commit is not what this test measures; on a loaded machine it can
    // outlast the default 30 s request timeout.
    a.conn.set_transport(common::transport_with_timeout(
        server.base_url(),
        &name,
        std::time::Duration::from_secs(600),
    ));
    let outcome = a.conn.oversync().attach(&name).await.expect("attach a");
    assert_eq!(outcome, AttachOutcome::StartedEmpty);
    let rows: Vec<User> = (0..ROWS)
        .map(|i| common::user_row(&new_id(), &format!("user{i}")))
        .collect();
    let local: &mut diesel::SqliteConnection = &mut a.conn;
    local
        .transaction(|conn| {
            for batch in rows.chunks(1000) {
                diesel::insert_into(users::table)
                    .values(batch)
                    .execute(conn)?;
            }
            diesel::QueryResult::Ok(())
        })
        .expect("insert rows on a");
    let started = std::time::Instant::now();
    let report = a.conn.oversync().sync().await.expect("push from a");
    eprintln!("push of {ROWS} rows: {:?}", started.elapsed());
    assert!(
        matches!(report.push, PushOutcome::Pushed { .. }),
        "{report:?}"
    );
    let pending = a.conn.oversync().pending_sync_status().expect("status");
    assert_eq!(pending.pending_rows, 0, "every row is on the server");

    let mut b = Device::new(&server, &name);
    let started = std::time::Instant::now();
    let outcome = b.conn.oversync().attach(&name).await.expect("attach b");
    // Printed for the record only (no timing assertion).
    eprintln!("hydrate of {ROWS} rows: {:?}", started.elapsed());
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: ROWS as u64,
            discarded_local_rows: 0
        }
    );
    let on_b = common::dump(&mut b, "users");
    assert_eq!(on_b.len(), ROWS);
    assert_eq!(
        on_b,
        common::dump(&mut a, "users"),
        "b holds exactly a's rows"
    );

    // The snapshot really ran without statistics on the tables it reads.
    if let Some(analyzed) = server_count(
        &server,
        "SELECT count(*) FROM pg_stats
         WHERE (schemaname = 'sync' AND tablename = 'row_state')
            OR (schemaname = 'business' AND tablename = 'users')",
    )
    .await
    {
        assert_eq!(analyzed, 0, "row_state or users were analyzed");
    }
}

/// `POST /sync/snapshot-sessions` past its (longer) limit is sent once, not retried: a
/// blind retry would start the same server build again beside (or right after) the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_session_create_is_not_retried_after_a_timeout() {
    use common::{Fault, Proxy, Times};
    use oversync_diesel::transport::SNAPSHOT_CREATE_TIMEOUT_FACTOR;
    use std::time::Duration;

    let server = Server::start().await;
    let proxy = Proxy::start(server.base_url()).await;
    let name = fresh_user("hydrate-timeout");
    let mut a = Device::new(&server, &name);
    a.conn.oversync().attach(&name).await.expect("attach a");
    common::insert_user(&mut a, &new_id(), "ann");
    a.conn.oversync().sync().await.expect("push from a");

    // Generous against a loaded machine: only the delayed create may come near a limit.
    let timeout = Duration::from_secs(1);
    let create_limit = timeout * SNAPSHOT_CREATE_TIMEOUT_FACTOR;
    let count_creates = |proxy: &Proxy| {
        proxy
            .log()
            .iter()
            .filter(|r| *r == "POST /sync/snapshot-sessions")
            .count()
    };

    // Slower than request_timeout but within the create limit: one attempt succeeds.
    let mut b = Device::new(&server, &name);
    b.conn
        .set_transport(common::transport_with_timeout(proxy.url(), &name, timeout));
    proxy.fault(
        "POST",
        "/sync/snapshot-sessions",
        Fault::Delay(timeout * 2),
        Times::First(1),
    );
    let outcome = b.conn.oversync().attach(&name).await.expect("attach b");
    assert_eq!(
        outcome,
        AttachOutcome::UsedRemoteState {
            rows: 1,
            discarded_local_rows: 0
        }
    );
    assert_eq!(count_creates(&proxy), 1);

    // Past the create limit every time: a typed timeout after exactly one request.
    proxy.clear();
    let mut c = Device::new(&server, &name);
    c.conn
        .set_transport(common::transport_with_timeout(proxy.url(), &name, timeout));
    proxy.fault(
        "POST",
        "/sync/snapshot-sessions",
        Fault::Delay(create_limit + Duration::from_secs(1)),
        Times::Always,
    );
    let before = count_creates(&proxy);
    let err = c
        .conn
        .oversync()
        .attach(&name)
        .await
        .expect_err("the create times out");
    assert!(
        matches!(&err, oversync_diesel::Error::Transport(e) if e.is_timeout()),
        "{err:?}"
    );
    assert_eq!(
        count_creates(&proxy) - before,
        1,
        "the timed-out create was retried"
    );
}
