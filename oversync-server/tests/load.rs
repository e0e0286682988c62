//! Load: many sources of one user, plus a second user, pushing (single- and multi-chunk
//! bundles, with optimistic conflicts on a shared row) and pulling concurrently for a bounded
//! time; then nothing is lost, duplicated or reordered and the final rows are exactly what
//! the acknowledged commits wrote.
//!
//! Default: about 5 s of load. `OVERSYNC_LONG_TESTS=1`: 60 s and many more bundles.

mod common;

use common::*;
use oversync_protocol::{Bundle, Op, PullResponse, bundle_hash};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Knobs of one run.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// No new bundle is started after this much time.
    duration: Duration,
    /// Most bundles one source commits.
    max_bundles_per_source: i64,
}

fn budget() -> Budget {
    if std::env::var("OVERSYNC_LONG_TESTS").is_ok_and(|v| v == "1") {
        Budget {
            duration: Duration::from_secs(60),
            max_bundles_per_source: 5_000,
        }
    } else {
        Budget {
            duration: Duration::from_secs(5),
            max_bundles_per_source: 60,
        }
    }
}

/// Request and outcome counters shared by all workers.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    pushes: AtomicU64,
    rows: AtomicU64,
    pulls: AtomicU64,
    conflicts: AtomicU64,
    server_errors: AtomicU64,
}

impl Counters {
    /// Counts one answered request; a 5xx is recorded (and fails the run at the end).
    fn saw(&self, what: &str, status: StatusCode, body: &Value) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("5xx on {what}: {status} {body}");
        }
    }
}

/// One pushed row effect, as the pusher intended it.
#[derive(Clone, Debug, PartialEq)]
struct Effect {
    id: String,
    op: Op,
    /// `name` after the effect (None for DELETE).
    name: Option<String>,
}

/// What a commit acknowledged.
#[derive(Clone, Debug)]
struct Ack {
    bundle_seq: i64,
    source_id: String,
    source_bundle_id: i64,
    bundle_hash: String,
    effects: Vec<Effect>,
}

/// Small deterministic PRNG (xorshift64*), so a failing run can be reasoned about.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn row_json(e: &Effect, base: i64) -> Value {
    match e.op {
        Op::Delete => json!({"schema": "business", "table": "users", "key": {"id": e.id},
                             "op": "DELETE", "base_row_version": base}),
        op => {
            let name = e.name.as_deref().unwrap_or_default();
            json!({"schema": "business", "table": "users", "key": {"id": e.id},
                   "op": op.as_str(), "base_row_version": base,
                   "payload": {"id": e.id, "name": name, "email": format!("{name}@example.com")}})
        }
    }
}

/// Pulls everything after `*checkpoint` in small pages under one frozen ceiling, checking
/// that the sequence continues without a gap and every bundle hash verifies.
async fn pull_from(api: &Api, counters: &Counters, checkpoint: &mut i64, page: i64) -> Vec<Bundle> {
    let mut out = Vec::new();
    let mut target: Option<i64> = None;
    loop {
        let mut path = format!("/sync/pull?after_bundle_seq={checkpoint}&max_bundles={page}");
        if let Some(t) = target {
            path.push_str(&format!("&target_bundle_seq={t}"));
        }
        let (s, b) = api.get(&path).await;
        counters.saw("pull", s, &b);
        assert_eq!(s, StatusCode::OK, "pull: {b}");
        counters.pulls.fetch_add(1, Ordering::Relaxed);
        let resp: PullResponse = serde_json::from_value(b).expect("pull shape");
        if let Some(t) = target {
            assert_eq!(resp.stable_bundle_seq, t, "ceiling stays frozen");
        }
        target = Some(resp.stable_bundle_seq);
        for bundle in resp.bundles {
            assert_eq!(
                bundle.bundle_seq,
                *checkpoint + 1,
                "pulled bundles continue without a gap"
            );
            assert_eq!(
                bundle.bundle_hash.as_deref(),
                Some(&*bundle_hash(&bundle.rows))
            );
            *checkpoint = bundle.bundle_seq;
            out.push(bundle);
        }
        if !resp.has_more {
            assert_eq!(
                *checkpoint, resp.stable_bundle_seq,
                "pull reached the ceiling"
            );
            return out;
        }
    }
}

/// One source: pushes bundles of inserts, updates and deletes of its own rows plus, now and
/// then, an update of the user's shared `hot` row (which may conflict), and pulls after
/// each commit. Returns what its commits acknowledged.
async fn run_source(
    api: Api,
    hot: Arc<String>,
    seed: u64,
    budget: Budget,
    started: Instant,
    counters: Arc<Counters>,
) -> Vec<Ack> {
    let mut rng = Rng(seed | 1);
    let mut acks = Vec::new();
    // Own live rows: id -> row_version.
    let mut own: BTreeMap<String, i64> = BTreeMap::new();
    let mut hot_version = 1_i64;
    let mut checkpoint = 0_i64;
    let mut sbid = 1_i64;
    while sbid <= budget.max_bundles_per_source && started.elapsed() < budget.duration {
        // Every fourth bundle is bigger and goes up in three chunks.
        let multi_chunk = sbid % 4 == 0;
        let n = if multi_chunk {
            6
        } else {
            1 + rng.below(4) as usize
        };
        let mut effects = Vec::new();
        let mut touched = Vec::new();
        for i in 0..n {
            let pick = rng.below(10);
            let existing = own
                .keys()
                .find(|k| !touched.contains(*k) && rng.below(3) == 0)
                .cloned();
            let name = format!("{}-{sbid}-{i}", &api.source()[..8]);
            let effect = match (pick, existing) {
                (0..=1, Some(id)) => Effect {
                    id,
                    op: Op::Delete,
                    name: None,
                },
                (2..=4, Some(id)) => Effect {
                    id,
                    op: Op::Update,
                    name: Some(name),
                },
                _ => Effect {
                    id: new_id(),
                    op: Op::Insert,
                    name: Some(name),
                },
            };
            touched.push(effect.id.clone());
            effects.push(effect);
        }
        let with_hot = sbid % 3 == 0;
        let mut attempts = 0;
        let ack = loop {
            attempts += 1;
            assert!(attempts <= 200, "no progress on the hot row (livelock?)");
            let mut rows: Vec<Value> = effects
                .iter()
                .map(|e| row_json(e, own.get(&e.id).copied().unwrap_or(0)))
                .collect();
            let mut all = effects.clone();
            if with_hot {
                let hot_effect = Effect {
                    id: hot.to_string(),
                    op: Op::Update,
                    name: Some(format!("hot-{}-{sbid}", &api.source()[..8])),
                };
                rows.push(row_json(&hot_effect, hot_version));
                all.push(hot_effect);
            }
            let chunk = if multi_chunk { 2 } else { rows.len() };
            let requests = 2 + rows.len().div_ceil(chunk) as u64;
            let (s, b) = api.push_in_chunks(sbid, rows, chunk).await;
            counters.requests.fetch_add(requests - 1, Ordering::Relaxed);
            counters.saw("push", s, &b);
            if s == StatusCode::CONFLICT && b["error"] == "push_conflict" {
                assert_eq!(
                    b["conflict"]["key"]["id"],
                    hot.as_str(),
                    "only the hot row conflicts: {b}"
                );
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                hot_version = b["conflict"]["server_row_version"]
                    .as_i64()
                    .expect("version");
                continue;
            }
            assert_eq!(s, StatusCode::OK, "push {sbid} of {}: {b}", api.source());
            break Ack {
                bundle_seq: b["bundle_seq"].as_i64().expect("bundle_seq"),
                source_id: b["source_id"].as_str().expect("source_id").to_owned(),
                source_bundle_id: b["source_bundle_id"].as_i64().expect("sbid"),
                bundle_hash: b["bundle_hash"].as_str().expect("hash").to_owned(),
                effects: all,
            };
        };
        assert_eq!(ack.source_bundle_id, sbid);
        assert_eq!(ack.source_id, api.source());
        for e in &ack.effects {
            if e.id == *hot {
                hot_version = ack.bundle_seq;
            } else if e.op == Op::Delete {
                own.remove(&e.id);
            } else {
                own.insert(e.id.clone(), ack.bundle_seq);
            }
        }
        counters.pushes.fetch_add(1, Ordering::Relaxed);
        counters
            .rows
            .fetch_add(ack.effects.len() as u64, Ordering::Relaxed);
        acks.push(ack);
        // Read back concurrently with the other writers (small pages to exercise paging).
        for bundle in pull_from(&api, &counters, &mut checkpoint, 7).await {
            if let Some(e) = bundle.rows.iter().find(|r| r.key["id"] == hot.as_str()) {
                hot_version = hot_version.max(e.row_version);
            }
        }
        // Now and then fetch the committed rows of our own bundle too (checks bundle_hash).
        if sbid % 10 == 0 {
            let seq = acks.last().map(|a| a.bundle_seq).unwrap_or(1);
            let rows = api.committed_rows(seq, 2).await;
            counters.requests.fetch_add(1, Ordering::Relaxed);
            assert_eq!(rows.len(), acks.last().map_or(0, |a| a.effects.len()));
        }
        sbid += 1;
    }
    acks
}

/// Checks one user's history and final rows against what the commits acknowledged.
async fn verify_user(api: &Api, counters: &Counters, acks: &[Ack], sources: &[String]) {
    let mut checkpoint = 0;
    let bundles = pull_from(api, counters, &mut checkpoint, 1000).await;
    // The seeding bundle (hot row) is bundle 1 and not in `acks`.
    assert_eq!(
        bundles.len(),
        acks.len() + 1,
        "one bundle per acknowledged commit"
    );
    let seqs: Vec<i64> = bundles.iter().map(|b| b.bundle_seq).collect();
    assert_eq!(
        seqs,
        (1..=bundles.len() as i64).collect::<Vec<_>>(),
        "contiguous bundle_seq"
    );
    let by_seq: HashMap<i64, &Bundle> = bundles.iter().map(|b| (b.bundle_seq, b)).collect();
    let mut tuples = HashMap::new();
    for b in &bundles {
        assert!(
            tuples
                .insert((b.source_id.clone(), b.source_bundle_id), b.bundle_seq)
                .is_none(),
            "tuple ({}, {}) appears twice",
            b.source_id,
            b.source_bundle_id
        );
    }
    for ack in acks {
        let b = by_seq[&ack.bundle_seq];
        assert_eq!(
            (&b.source_id, b.source_bundle_id),
            (&ack.source_id, ack.source_bundle_id)
        );
        assert_eq!(b.bundle_hash.as_deref(), Some(ack.bundle_hash.as_str()));
        let got: Vec<(String, Op, Option<String>)> = b
            .rows
            .iter()
            .map(|r| {
                assert_eq!(r.row_version, ack.bundle_seq);
                let name = r
                    .payload
                    .as_ref()
                    .map(|p| p["name"].as_str().expect("name").to_owned());
                (r.key["id"].as_str().expect("id").to_owned(), r.op, name)
            })
            .collect();
        let mut want: Vec<(String, Op, Option<String>)> = ack
            .effects
            .iter()
            .map(|e| (e.id.clone(), e.op, e.name.clone()))
            .collect();
        // Same rows; not necessarily in pushed order: a batch of deletes is captured in
        // the order PostgreSQL deletes them.
        let mut got = got;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got, want,
            "bundle {} carries exactly the pushed rows",
            ack.bundle_seq
        );
    }
    for source in sources {
        let ids: Vec<i64> = bundles
            .iter()
            .filter(|b| &b.source_id == source)
            .map(|b| b.source_bundle_id)
            .collect();
        assert_eq!(
            ids,
            (1..=ids.len() as i64).collect::<Vec<_>>(),
            "source {source}"
        );
    }

    // Final rows: replay the acknowledged effects in bundle_seq order.
    let mut expected: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut ordered: Vec<&Ack> = acks.iter().collect();
    ordered.sort_by_key(|a| a.bundle_seq);
    let seed = &bundles[0].rows[0];
    let seed_name = seed.payload.as_ref().expect("payload")["name"]
        .as_str()
        .expect("name");
    expected.insert(
        seed.key["id"].as_str().expect("id").to_owned(),
        (seed_name.to_owned(), 1),
    );
    for ack in ordered {
        for e in &ack.effects {
            match &e.name {
                Some(name) => expected.insert(e.id.clone(), (name.clone(), ack.bundle_seq)),
                None => expected.remove(&e.id),
            };
        }
    }
    let (s, snap) = api.post("/sync/snapshot-sessions", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{snap}");
    assert_eq!(snap["snapshot_bundle_seq"], bundles.len() as i64);
    let rows = all_snapshot_rows(api, snap["snapshot_id"].as_str().expect("id"), 500).await;
    let actual: BTreeMap<String, (String, i64)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["table"], "users");
            (
                r["key"]["id"].as_str().expect("id").to_owned(),
                (
                    r["payload"]["name"].as_str().expect("name").to_owned(),
                    r["row_version"].as_i64().expect("version"),
                ),
            )
        })
        .collect();
    assert_eq!(actual.len(), rows.len(), "no key twice in the snapshot");
    assert_eq!(
        actual, expected,
        "final rows are the union of acknowledged commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sources_push_and_pull_without_loss() {
    let budget = budget();
    let server = server().await;
    let counters = Arc::new(Counters::default());
    let mut users = Vec::new();
    for (user, sources) in [("alice", 8), ("bob", 2)] {
        let setup = Api::new(&server, user);
        setup.connect(false).await;
        let hot = Arc::new(new_id());
        let (s, b) = setup.push(1, vec![user_row(&hot, "hot")]).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let apis: Vec<Api> = (0..sources).map(|_| setup.with_source(&new_id())).collect();
        users.push((setup, hot, apis));
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (u, (_, hot, apis)) in users.iter().enumerate() {
        for (i, api) in apis.iter().enumerate() {
            let seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul((u * 100 + i + 1) as u64);
            tasks.push((
                u,
                tokio::spawn(run_source(
                    api.with_source(api.source()),
                    hot.clone(),
                    seed,
                    budget,
                    started,
                    counters.clone(),
                )),
            ));
        }
    }
    // Everything must finish shortly after the load window: a hang is a deadlock.
    let all = async {
        let mut acks: Vec<Vec<Ack>> = vec![Vec::new(); users.len()];
        for (u, t) in tasks {
            acks[u].extend(t.await.expect("worker"));
        }
        acks
    };
    let acks = tokio::time::timeout(budget.duration + Duration::from_secs(90), all)
        .await
        .expect("all workers finish (no deadlock)");
    let elapsed = started.elapsed().as_secs_f64();

    let pushes = counters.pushes.load(Ordering::Relaxed);
    println!(
        "load: {pushes} pushes ({} rows, {} conflicts retried), {} pulls, {} requests in {elapsed:.1}s: {:.1} pushes/s, {:.1} requests/s",
        counters.rows.load(Ordering::Relaxed),
        counters.conflicts.load(Ordering::Relaxed),
        counters.pulls.load(Ordering::Relaxed),
        counters.requests.load(Ordering::Relaxed),
        pushes as f64 / elapsed,
        counters.requests.load(Ordering::Relaxed) as f64 / elapsed,
    );
    assert_eq!(counters.server_errors.load(Ordering::Relaxed), 0, "no 5xx");
    assert!(pushes >= 10, "the load actually ran: {pushes} pushes");

    for ((setup, _, apis), acks) in users.iter().zip(&acks) {
        let sources: Vec<String> = apis.iter().map(|a| a.source().to_owned()).collect();
        assert!(acks.len() >= apis.len(), "every source committed something");
        verify_user(setup, &counters, acks, &sources).await;
    }

    // The server still answers, with nothing left in flight.
    let (s, b) = users[0].0.get("/syncx/health").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "healthy");
    let (s, b) = users[0].0.get("/syncx/status").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let total: usize = acks.iter().map(Vec::len).sum::<usize>() + users.len();
    assert_eq!(b["committed_bundle_count"], total as i64);
    assert_eq!(b["inflight_operations"], 0);
    assert_eq!(counters.server_errors.load(Ordering::Relaxed), 0, "no 5xx");
}
