//! Load bench (not a test): 200 simulated devices (50 users x 4) drive two server instances
//! over one PostgreSQL for a fixed time, each device alternating instances between requests.
//! Prints throughput and p50/p99 latency per route, then checks that every acknowledged
//! write is in PostgreSQL exactly once and that every user's full pull equals the server.
//!
//! `cargo bench -p oversync-server --bench load`; `OVERSYNC_BENCH_SECONDS` (default 10) and
//! `OVERSYNC_BENCH_DEVICES` (default 200) size the run.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Api, new_id, user_row};
use oversync_server::demo::{self, DemoConfig};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Latencies = Arc<Mutex<BTreeMap<&'static str, Vec<Duration>>>>;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn timed<T>(
    lat: &Latencies,
    route: &'static str,
    f: impl std::future::Future<Output = T>,
) -> T {
    let start = Instant::now();
    let out = f.await;
    lat.lock()
        .unwrap()
        .entry(route)
        .or_default()
        .push(start.elapsed());
    out
}

/// One device's loop; returns the ids of rows in bundles the server acknowledged.
async fn device(apis: [Api; 2], until: Instant, lat: Latencies, seed: u64) -> (Vec<String>, u64) {
    let mut acked = Vec::new();
    let mut failures = 0;
    timed(&lat, "POST /sync/connect", apis[0].connect(false)).await;
    let mut turn = seed as usize;
    let mut bundle = 0_i64;
    let mut after = 0_i64;
    while Instant::now() < until {
        bundle += 1;
        let n = 1 + ((seed + bundle as u64) % 5) as usize;
        let ids: Vec<String> = (0..n).map(|_| new_id()).collect();
        let rows: Vec<_> = ids.iter().map(|id| user_row(id, "load")).collect();
        let api = &apis[turn % 2];
        turn += 1;
        let (s, created) = timed(
            &lat,
            "POST /sync/push-sessions",
            api.post(
                "/sync/push-sessions",
                json!({"source_bundle_id": bundle, "planned_row_count": n}),
            ),
        )
        .await;
        if s != StatusCode::OK {
            failures += 1;
            continue;
        }
        let push_id = created["push_id"].as_str().unwrap_or_default().to_owned();
        let api = &apis[turn % 2];
        turn += 1;
        let (s, _) = timed(
            &lat,
            "POST /sync/push-sessions/{id}/chunks",
            api.post(
                &format!("/sync/push-sessions/{push_id}/chunks"),
                json!({"start_row_ordinal": 0, "rows": rows}),
            ),
        )
        .await;
        if s != StatusCode::OK {
            failures += 1;
            continue;
        }
        let api = &apis[turn % 2];
        turn += 1;
        let (s, _) = timed(
            &lat,
            "POST /sync/push-sessions/{id}/commit",
            api.post(&format!("/sync/push-sessions/{push_id}/commit"), json!({})),
        )
        .await;
        if s == StatusCode::OK {
            acked.extend(ids);
        } else {
            failures += 1;
        }
        let api = &apis[turn % 2];
        turn += 1;
        let (s, pulled) = timed(
            &lat,
            "GET /sync/pull",
            api.get(&format!(
                "/sync/pull?after_bundle_seq={after}&max_bundles=100"
            )),
        )
        .await;
        if s == StatusCode::OK {
            after = pulled["stable_bundle_seq"]
                .as_i64()
                .unwrap_or(after)
                .max(after);
        } else {
            failures += 1;
        }
    }
    (acked, failures)
}

/// Every row id of `user` a full pull returns.
async fn pulled_ids(api: &Api) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut after = 0;
    loop {
        let (s, b) = api
            .get(&format!(
                "/sync/pull?after_bundle_seq={after}&max_bundles=1000"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        for bundle in b["bundles"].as_array().unwrap() {
            for row in bundle["rows"].as_array().unwrap() {
                ids.insert(row["key"]["id"].as_str().unwrap().to_owned());
            }
        }
        after = b["stable_bundle_seq"].as_i64().unwrap();
        if b["has_more"] != true {
            return ids;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` a smoke size only
    // checks that the bench still runs and loses nothing.
    let full = std::env::args().any(|a| a == "--bench");
    let seconds = env_or("OVERSYNC_BENCH_SECONDS", if full { 10 } else { 2 });
    let devices = env_or("OVERSYNC_BENCH_DEVICES", if full { 200 } else { 16 }) as usize;
    let a = oversync_testkit::TestServer::start_async_with(|c| {
        c.limits.retained_bundles_per_user = 0;
    })
    .await
    .expect("first instance");
    let mut second_config = DemoConfig::new(&a.database().url);
    second_config.limits.retained_bundles_per_user = 0;
    let b = demo::build_app(second_config)
        .await
        .expect("second instance");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(demo::serve(listener, b.router, std::future::pending()));

    let users: Vec<String> = (0..devices.div_ceil(4))
        .map(|i| format!("load-{i}"))
        .collect();
    let lat: Latencies = Arc::default();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in 0..devices {
        let user = &users[d / 4];
        let on_a = Api::new(&a, user);
        let mut on_b = on_a.with_source(on_a.source());
        on_b.base = b_url.clone();
        tasks.push((
            user.clone(),
            tokio::spawn(device([on_a, on_b], until, lat.clone(), d as u64)),
        ));
    }
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    let mut failures = 0;
    for (user, task) in tasks {
        let (ids, failed) = task.await.expect("device task");
        acked.entry(user).or_default().extend(ids);
        failures += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let lat = lat.lock().unwrap().clone();
    println!(
        "load: {devices} devices, {} users, 2 instances, {seconds} s",
        users.len()
    );
    println!("| route | requests | req/s | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (route, samples) in lat.iter() {
        let mut sorted = samples.clone();
        sorted.sort();
        println!(
            "| {route} | {} | {:.0} | {:.1} | {:.1} |",
            sorted.len(),
            sorted.len() as f64 / elapsed,
            percentile(&sorted, 0.5).as_secs_f64() * 1000.0,
            percentile(&sorted, 0.99).as_secs_f64() * 1000.0
        );
    }
    let rows: usize = acked.values().map(Vec::len).sum();
    let commits = lat
        .get("POST /sync/push-sessions/{id}/commit")
        .map_or(0, Vec::len);
    println!(
        "acknowledged: {rows} rows ({:.0} rows/s), {commits} commit requests, {failures} failed requests",
        rows as f64 / elapsed
    );

    // Every acknowledged write is in PostgreSQL exactly once; every user's pull equals it.
    let (client, conn) = tokio_postgres::connect(&a.database().url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut lost = 0;
    let mut duplicated = 0;
    let mut diverged = 0;
    for user in &users {
        let stored: Vec<String> = client
            .query(
                "SELECT id::text FROM business.users WHERE _sync_scope_id = $1",
                &[user],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let set: BTreeSet<String> = stored.iter().cloned().collect();
        duplicated += stored.len() - set.len();
        let mine = acked.get(user).cloned().unwrap_or_default();
        lost += mine.iter().filter(|id| !set.contains(*id)).count();
        let pulled = pulled_ids(&Api::new(&a, user)).await;
        if pulled != set {
            diverged += 1;
        }
    }
    println!(
        "check: lost {lost}, duplicated {duplicated}, users whose pull differs from PostgreSQL {diverged}"
    );
    assert_eq!((lost, duplicated, diverged), (0, 0, 0), "nothing lost");
    b.service.shutdown();
}
