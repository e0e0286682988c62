//! Two server instances over one PostgreSQL database: every protocol step may land on
//! either instance (a load balancer without stickiness), and `/sync/watch` on one wakes for
//! bundles committed through the other.

mod common;

use common::*;
use oversync_server::SyncService;
use oversync_server::demo::{self, DemoConfig};
use oversync_testkit::TestServer;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;

/// A second instance of the example server on `first`'s database, served by the test's
/// runtime until the returned handle is dropped.
struct Instance {
    base: String,
    service: Arc<SyncService>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
        self.service.shutdown();
    }
}

async fn second_instance(first: &TestServer) -> Instance {
    let app = demo::build_app(DemoConfig::new(&first.database().url))
        .await
        .expect("second instance starts on the same database");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let service = app.service.clone();
    let task = tokio::spawn(async move {
        let _ = demo::serve(listener, app.router, std::future::pending()).await;
    });
    Instance {
        base,
        service,
        task,
    }
}

/// The same device (token and source) talking to another instance.
fn on(api: &Api, base: &str) -> Api {
    Api {
        http: api.http.clone(),
        base: base.to_owned(),
        token: api.token.clone(),
        source: api.source.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_may_land_on_either_instance() {
    let a = server().await;
    let b = second_instance(&a).await;
    let alice_a = Api::new(&a, "alice");
    let alice_b = on(&alice_a, &b.base);

    // Initialization lease taken on A is seen by B: another device is told to retry, the
    // holder may renew it on B and push its local rows through B.
    let lease = alice_a.connect(true).await;
    assert_eq!(lease["resolution"], "initialize_local", "{lease}");
    let init_id = lease["initialization_id"].as_str().expect("id").to_owned();
    let other_b = alice_b.with_source(&new_id());
    assert_eq!(other_b.connect(true).await["resolution"], "retry_later");
    let renewed = alice_b.connect(true).await;
    assert_eq!(renewed["initialization_id"], init_id.as_str(), "{renewed}");

    // Push session: created on B, chunks alternate A/B, committed on A.
    let rows: Vec<_> = (0..10)
        .map(|i| user_row(&new_id(), &format!("u{i}")))
        .collect();
    let (s, created) = alice_b
        .post(
            "/sync/push-sessions",
            json!({"source_bundle_id": 1, "planned_row_count": rows.len(), "initialization_id": init_id}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    let push_id = created["push_id"].as_str().expect("push_id").to_owned();
    for (i, part) in rows.chunks(2).enumerate() {
        let api = if i % 2 == 0 { &alice_a } else { &alice_b };
        let (s, b) = api
            .post(
                &format!("/sync/push-sessions/{push_id}/chunks"),
                json!({"start_row_ordinal": i * 2, "rows": part}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "chunk {i}: {b}");
    }
    let (s, committed) = alice_a
        .post(&format!("/sync/push-sessions/{push_id}/commit"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{committed}");
    assert_eq!(committed["bundle_seq"], 1, "{committed}");
    // The lease is released for everyone: B now answers remote_authoritative.
    assert_eq!(
        other_b.connect(false).await["resolution"],
        "remote_authoritative"
    );

    // Committed rows and pulls agree on both instances.
    assert_eq!(alice_b.committed_rows(1, 3).await.len(), 10);
    let (s, pulled) = alice_b.get("/sync/pull?after_bundle_seq=0").await;
    assert_eq!(s, StatusCode::OK, "{pulled}");
    assert_eq!(pulled["stable_bundle_seq"], 1, "{pulled}");

    // Snapshot session: created on A, pages read alternately from B and A.
    let (s, snap) = alice_a.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    let snapshot_id = snap["snapshot_id"]
        .as_str()
        .expect("snapshot_id")
        .to_owned();
    let mut after = 0;
    let mut got = 0;
    for turn in 0.. {
        let api = if turn % 2 == 0 { &alice_b } else { &alice_a };
        let (s, page) = api
            .get(&format!(
                "/sync/snapshot-sessions/{snapshot_id}?after_row_ordinal={after}&max_rows=3"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "page {turn}: {page}");
        got += page["rows"].as_array().expect("rows").len();
        after = page["next_row_ordinal"].as_i64().expect("next");
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(got, 10);
    let (s, b2) = alice_b
        .delete(&format!("/sync/snapshot-sessions/{snapshot_id}"))
        .await;
    assert!(s.is_success(), "{s} {b2}");

    // Watch on A wakes for a bundle committed through B.
    let mut watch = alice_a
        .request(reqwest::Method::GET, "/sync/watch?after_bundle_seq=1")
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);
    let writer_b = alice_b.with_source(&new_id());
    writer_b.connect(false).await;
    let (s, c) = writer_b.push(1, vec![user_row(&new_id(), "late")]).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let mut buf = String::new();
    read_until(&mut watch, &mut buf, "\"bundle_seq\":2").await;
}

/// An instance of the example server on `url`, served by the test's runtime.
async fn instance_on(url: &str) -> (Instance, demo::JwtAuth) {
    let config = DemoConfig::new(url);
    let auth = demo::JwtAuth::new(&config.jwt_secret);
    let app = demo::build_app(config).await.expect("instance starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let service = app.service.clone();
    let task = tokio::spawn(async move {
        let _ = demo::serve(listener, app.router, std::future::pending()).await;
    });
    (
        Instance {
            base,
            service,
            task,
        },
        auth,
    )
}

/// `pg_ctl restart` of a cluster this test owns, found through its own catalog.
async fn restart_cluster(url: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let data: String = client
        .query_one("SHOW data_directory", &[])
        .await
        .expect("data_directory")
        .get(0);
    drop(client);
    let _ = driver.await;
    let bindir = std::fs::read_dir("/usr/lib/postgresql")
        .expect("postgresql binaries")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("pg_ctl").is_file())
        .max()
        .expect("pg_ctl");
    let status = tokio::task::spawn_blocking(move || {
        // The testkit runs PostgreSQL as `postgres` when the tests run as root.
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let mut cmd = if as_root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bindir.join("pg_ctl"));
            c
        } else {
            std::process::Command::new(bindir.join("pg_ctl"))
        };
        cmd.args(["-D", &data, "-w", "-t", "60", "-m", "fast", "restart"])
            .stdout(std::process::Stdio::null())
            .status()
    })
    .await
    .expect("join")
    .expect("pg_ctl runs");
    assert!(status.success(), "pg_ctl restart: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_one_instance_survives_a_database_restart() {
    init_logs();
    let cluster = tokio::task::spawn_blocking(oversync_testkit::PgCluster::start)
        .await
        .expect("join")
        .expect("private cluster");
    let db = cluster.create_database().await.expect("database");
    let (a, auth) = instance_on(&db.url).await;
    let (b, _) = instance_on(&db.url).await;
    let token = auth.issue("alice", demo::TOKEN_TTL).expect("token");
    let api = |base: &str| Api {
        http: reqwest::Client::new(),
        base: base.to_owned(),
        token: Some(token.clone()),
        source: Some(new_id()),
    };
    let (on_a, on_b) = (api(&a.base), api(&b.base));
    on_a.connect(false).await;
    let mut watch = on_a
        .request(reqwest::Method::GET, "/sync/watch?after_bundle_seq=0")
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);

    restart_cluster(&db.url).await;

    // The first requests after the restart may meet pooled connections the restart
    // closed; a client retries them.
    let row = user_row(&new_id(), "after-restart");
    let mut answers = Vec::new();
    for _ in 0..20 {
        let (s, body) = on_b.push(1, vec![row.clone()]).await;
        if s == StatusCode::OK {
            break;
        }
        answers.push(format!("{s} {body}"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answers.len() < 20, "push never succeeded: {answers:?}");
    let mut buf = String::new();
    read_until(&mut watch, &mut buf, "\"bundle_seq\":1").await;
    drop(cluster);
}
