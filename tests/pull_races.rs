//! A pull that another connection of the same database overtakes between two of its pages.
//!
//! The pull skips the "is the local row newer?" check for bundles no local row version can be
//! newer than, judged from the newest local row version it read when it started. Another
//! connection (a second `OversyncConnection`, a watcher) may replay a push meanwhile, which
//! writes row versions above every bundle the pull still has to apply; the pull must notice
//! (`PRAGMA data_version`) and check those bundles again, or an older bundle overwrites the
//! newer local row and the device never converges (its own newer bundle is skipped later as
//! already replayed).

mod common;

use common::{Proxy, Times, all_users, insert_user, transport_with_timeout};
use diesel::prelude::*;
use oversync_diesel::{ClientWins, OversyncConnection};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn name_of(conn: &mut SqliteConnection, id: &str) -> String {
    users::table
        .find(id)
        .select(users::name)
        .first(conn)
        .expect("row present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_replayed_by_another_connection_between_pull_pages_is_kept() {
    let server = Server::start().await;
    let user = fresh_user("pull-race");

    // Device a attaches first, so that it pulls (rather than hydrates) what c writes.
    let proxy = Proxy::start(server.base_url()).await;
    let mut a = Device::new(&server, &user);
    a.conn.oversync().attach(&user).await.expect("attach a");
    a.conn
        .set_transport(transport_with_timeout(proxy.url(), &user, TIMEOUT));

    // Device c writes 18 bundles: the contested row k in the first and the last, filler in
    // between, so device a's pull takes two pages (the first asks for 16 bundles).
    let mut c = Device::new(&server, &user);
    c.conn.oversync().attach(&user).await.expect("attach c");
    let k = new_id();
    insert_user(&mut c, &k, "k-first");
    c.conn.oversync().sync().await.expect("c sync 1");
    for i in 0..16 {
        insert_user(&mut c, &new_id(), &format!("filler-{i}"));
        c.conn.oversync().sync().await.expect("c filler sync");
    }
    diesel::update(users::table.find(&k))
        .set(users::name.eq("k-from-c"))
        .execute(&mut *c.conn)
        .expect("c renames k");
    c.conn.oversync().sync().await.expect("c sync 18");

    // Device a pulls through the proxy, which holds the second page's answer until a second
    // connection to a's database has pushed its own change of k (and replayed it).

    let (paused_tx, paused_rx) = mpsc::channel::<()>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let paused_tx = Mutex::new(paused_tx);
    let resume_rx = Mutex::new(resume_rx);
    let pulls = AtomicU32::new(0);
    proxy.rewrite("GET", "/sync/pull", Times::Always, move |_, _, body| {
        if pulls.fetch_add(1, Ordering::SeqCst) == 1 {
            paused_tx.lock().unwrap().send(()).expect("signal pause");
            resume_rx
                .lock()
                .unwrap()
                .recv_timeout(TIMEOUT)
                .expect("resumed in time");
        }
        body
    });

    let path = a.path.clone();
    let base_url = server.base_url().to_string();
    let (other_user, other_k) = (user.clone(), k.clone());
    let other = std::thread::spawn(move || {
        paused_rx.recv_timeout(TIMEOUT).expect("pull paused");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut second = OversyncConnection::establish(path.to_str().expect("utf-8"), config())
                .expect("second connection");
            second.oversync().open().expect("open second");
            second.set_transport(transport_for(&base_url, &other_user));
            second.set_conflict_resolver(ClientWins);
            diesel::update(users::table.find(&other_k))
                .set(users::name.eq("k-from-a"))
                .execute(&mut *second)
                .expect("second connection renames k");
            // Push only: its pull would move the checkpoint over the held page.
            second
                .oversync()
                .push_pending()
                .await
                .expect("second connection pushes");
        });
        resume_tx.send(()).expect("resume");
    });

    a.conn.oversync().pull_to_stable().await.expect("a pulls");
    other.join().expect("second connection thread");
    assert!(
        pulls_held(&proxy),
        "the pull must have asked for a second page"
    );
    a.conn.oversync().sync().await.expect("a syncs on");

    // The server holds the second connection's change (it won the conflict); a must too.
    let mut fresh = Device::new(&server, &user);
    fresh
        .conn
        .oversync()
        .attach(&user)
        .await
        .expect("attach fresh");
    fresh.conn.oversync().sync().await.expect("fresh sync");
    assert_eq!(name_of(&mut fresh.conn, &k), "k-from-a");
    assert_eq!(
        name_of(&mut a.conn, &k),
        "k-from-a",
        "an older pulled bundle overwrote the newer row the other connection pushed"
    );
    assert_eq!(all_users(&mut a), all_users(&mut fresh));
}

/// At least two pull requests went through the proxy.
fn pulls_held(proxy: &Proxy) -> bool {
    proxy
        .log()
        .iter()
        .filter(|r| r.starts_with("GET /sync/pull"))
        .count()
        >= 2
}
