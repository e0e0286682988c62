//! Sync benchmark: one table, measured in one run on this machine, each row also as a ratio
//! to raw SQLite work on the same data (Diesel inserting the same rows one prepared statement
//! at a time in one transaction). Run: `cargo bench --bench sync`
//! (`OVERSYNC_BENCH_ROWS=10000,100000` by default).
//!
//! Each operation is also run through the owned `SyncClient` from a `current_thread` runtime
//! (as a UI or an axum handler would), reporting the worst lateness of a 10 ms ticker on that
//! runtime and the worst wait of a status read (`pending_sync_status`, every 5 ms) during it.
//!
//! The server (our example server on a private PostgreSQL) runs in this process; every
//! client operation runs in a child process (this binary re-executed), so the peak RSS
//! reported is that operation's alone. The child talks to the server through a small TCP
//! proxy in this process that counts the bytes on the wire (HTTP requests and responses,
//! headers included) in both directions.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::protocol::{
    PushSessionChunkRequest, PushSessionCreateRequest, PushSessionCreateResponse, sync_key,
};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback TCP proxy to the server that counts bytes: `up` client to server, `down` back.
struct CountingProxy {
    url: String,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl CountingProxy {
    async fn start(server_url: &str) -> CountingProxy {
        let authority = server_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listen");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (up2, down2) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&authority).await else {
                    continue;
                };
                let (up, down) = (up2.clone(), down2.clone());
                tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, up), pump(sr, cw, down));
                });
            }
        });
        CountingProxy { url, up, down }
    }

    /// Bytes (up, down) since the last call.
    fn take(&self) -> (u64, u64) {
        (
            self.up.swap(0, Ordering::SeqCst),
            self.down.swap(0, Ordering::SeqCst),
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn rows(n: usize, tag: &str) -> Vec<User> {
    (0..n)
        .map(|i| User {
            id: new_id(),
            name: format!("{tag} user {i:06}"),
            email: format!("user{i}@example.com"),
            created_at: Some("2026-11-23T10:00:00Z".into()),
            updated_at: None,
        })
        .collect()
}

fn insert(conn: &mut SqliteConnection, rows: &[User]) {
    conn.immediate_transaction(|c| {
        for row in rows {
            diesel::insert_into(users::table).values(row).execute(c)?;
        }
        QueryResult::Ok(())
    })
    .expect("insert rows");
}

/// Raw SQLite: the same rows through Diesel, one prepared insert each, one transaction.
fn raw_insert_secs(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut conn = SqliteConnection::establish(dir.path().join("raw.db").to_str().expect("path"))
        .expect("sqlite");
    conn.batch_execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .expect("pragmas");
    conn.batch_execute(APP_SCHEMA).expect("schema");
    let data = rows(n, "raw");
    let start = Instant::now();
    insert(&mut conn, &data);
    start.elapsed().as_secs_f64()
}

/// Child process: one client operation on an existing device file; prints `secs rss_kb`.
async fn child(op: &str, db: &str, url: &str, user: &str) {
    let mut conn = oversync_diesel::OversyncConnection::establish(db, config()).expect("open");
    conn.oversync().open().expect("oversync open");
    conn.set_transport(transport_for(url, user));
    let start = Instant::now();
    match op {
        "push" => {
            conn.oversync().push_pending().await.expect("push");
        }
        "pull" => {
            conn.oversync().pull_to_stable().await.expect("pull");
        }
        "rebuild" => {
            conn.oversync()
                .attach(user)
                .await
                .expect("attach (hydrate)");
        }
        other => panic!("unknown op {other}"),
    }
    println!("{} {}", start.elapsed().as_secs_f64(), peak_rss_kb());
}

/// Child process: one operation through a `SyncClient` on a `current_thread` runtime, with a
/// 10 ms ticker and a status reader beside it; prints `secs rss_kb ticker_ms status_ms`.
fn owned_child(op: &str, db: &str, url: &str, user: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut conn = oversync_diesel::OversyncConnection::establish(db, config()).expect("open");
        conn.set_transport(transport_for(url, user));
        let client = oversync_diesel::SyncClient::start(conn)
            .await
            .expect("start the client");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = tokio::spawn({
            let done = done.clone();
            async move {
                let period = Duration::from_millis(10);
                let (mut worst, mut next) = (Duration::ZERO, Instant::now() + period);
                while !done.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(next.into()).await;
                    let now = Instant::now();
                    worst = worst.max(now - next);
                    next += period;
                    if next < now {
                        next = now + period;
                    }
                }
                worst
            }
        });
        let statuses = tokio::spawn({
            let (done, client) = (done.clone(), client.clone());
            async move {
                let mut worst = Duration::ZERO;
                while !done.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    client.pending_sync_status().await.expect("status");
                    worst = worst.max(asked.elapsed());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                worst
            }
        });
        let start = Instant::now();
        match op {
            "push" => drop(client.push_pending().await.expect("push")),
            "pull" => drop(client.pull_to_stable().await.expect("pull")),
            "rebuild" => drop(client.attach(user).await.expect("attach (hydrate)")),
            other => panic!("unknown op {other}"),
        }
        let secs = start.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        let ticker = ticker.await.expect("ticker");
        let status = statuses.await.expect("status reader");
        client.shutdown().await;
        println!(
            "{secs} {} {:.1} {:.1}",
            peak_rss_kb(),
            ticker.as_secs_f64() * 1e3,
            status.as_secs_f64() * 1e3
        );
    });
}

/// [`run_child_blocking`] off the async workers (the counting proxy runs on them).
async fn run_child(op: &str, db: &std::path::Path, url: &str, user: &str) -> (f64, u64) {
    let (secs, rss, _) = run_child_as("--child", op, db, url, user).await;
    (secs, rss)
}

/// [`owned_child`] in a child process: (seconds, peak RSS, "ticker / status" note).
async fn run_owned_child(
    op: &str,
    db: &std::path::Path,
    url: &str,
    user: &str,
) -> (f64, u64, String) {
    run_child_as("--owned-child", op, db, url, user).await
}

async fn run_child_as(
    mode: &'static str,
    op: &str,
    db: &std::path::Path,
    url: &str,
    user: &str,
) -> (f64, u64, String) {
    let (op, db, url, user) = (
        op.to_string(),
        db.to_path_buf(),
        url.to_string(),
        user.to_string(),
    );
    tokio::task::spawn_blocking(move || run_child_blocking(mode, &op, &db, &url, &user))
        .await
        .expect("child runner")
}

fn run_child_blocking(
    mode: &str,
    op: &str,
    db: &std::path::Path,
    url: &str,
    user: &str,
) -> (f64, u64, String) {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args([mode, op, db.to_str().expect("path"), url, user])
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "{op} child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let secs = parts
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let rss = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let waits: Vec<&str> = parts.collect();
    let note = match waits.as_slice() {
        [ticker, status] => {
            format!("worst 10 ms ticker lateness {ticker} ms, worst status read {status} ms")
        }
        _ => String::new(),
    };
    (secs, rss, note)
}

struct Row {
    what: String,
    rows: usize,
    secs: f64,
    rss_kb: u64,
    baseline: f64,
    extra: String,
}

/// Pushes per second the server takes from 8 sources of one user, concurrently.
async fn server_pushes_per_sec(server: &Server) -> (f64, u64) {
    let user = fresh_user("bench-sources");
    let base = server.base_url().to_string();
    let transport = transport_for(&base, &user);
    // Initialize the account once.
    let first = new_id();
    transport
        .connect(
            &first,
            &oversync_diesel::protocol::ConnectRequest {
                has_local_pending_rows: false,
            },
        )
        .await
        .expect("connect");
    let duration = Duration::from_secs(5);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let transport = transport.clone();
        tasks.push(tokio::spawn(async move {
            let source = new_id();
            let mut done = 0u64;
            let mut bundle = 1;
            while Instant::now() < deadline && done < 2000 {
                let id = new_id();
                let req = PushSessionCreateRequest {
                    source_bundle_id: bundle,
                    planned_row_count: 1,
                    initialization_id: None,
                };
                let PushSessionCreateResponse::Staging { push_id, .. } = transport
                    .create_push_session(&source, &req)
                    .await
                    .expect("create")
                else {
                    panic!("unexpected already_committed");
                };
                let row = oversync_diesel::protocol::PushRequestRow {
                    schema: "business".into(),
                    table: "users".into(),
                    key: sync_key("id", &id),
                    op: oversync_diesel::protocol::Op::Insert,
                    base_row_version: 0,
                    payload: Some(serde_json::json!({"id": id, "name": "n", "email": "e"})),
                };
                transport
                    .upload_push_chunk(
                        &source,
                        &push_id,
                        &PushSessionChunkRequest {
                            start_row_ordinal: 0,
                            rows: vec![row],
                        },
                    )
                    .await
                    .expect("chunk");
                transport
                    .commit_push_session(&source, &push_id)
                    .await
                    .expect("commit");
                bundle += 1;
                done += 1;
            }
            done
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("source task");
    }
    (total as f64 / start.elapsed().as_secs_f64(), total)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 6 && args[1] == "--owned-child" {
        owned_child(&args[2], &args[3], &args[4], &args[5]);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench_main(args));
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
/// and then a smoke size only checks that the benchmark still runs (timings mean nothing there).
fn under_cargo_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

async fn bench_main(args: Vec<String>) {
    if args.len() >= 6 && args[1] == "--child" {
        child(&args[2], &args[3], &args[4], &args[5]).await;
        return;
    }
    let sizes: Vec<usize> = std::env::var("OVERSYNC_BENCH_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if under_cargo_bench() {
                vec![10_000, 100_000]
            } else {
                vec![500]
            }
        });
    let server = Server::start().await;
    let proxy = CountingProxy::start(server.base_url()).await;
    let mut table = Vec::new();
    for &n in &sizes {
        let baseline = raw_insert_secs(n);
        table.push(Row {
            what: "raw SQLite insert (baseline)".into(),
            rows: n,
            secs: baseline,
            rss_kb: 0,
            baseline,
            extra: String::new(),
        });

        // Push: N captured rows in one bundle, sent in server-sized chunks.
        let user = fresh_user("bench-push");
        let mut a = Device::new(&server, &user);
        a.conn.oversync().attach(&user).await.expect("attach a");
        insert(&mut a.conn, &rows(n, "push"));
        proxy.take();
        let (secs, rss) = run_child("push", &a.path, &proxy.url, &user).await;
        let (up, down) = proxy.take();
        table.push(Row {
            what: "push (one bundle)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!("wire: {} up, {} down", mb(up), mb(down)),
        });

        // Rebuild: a fresh device hydrating those N rows from a snapshot.
        let fresh = Device::new(&server, &user);
        let (secs, rss) = run_child("rebuild", &fresh.path, &proxy.url, &user).await;
        let (up, down) = proxy.take();
        table.push(Row {
            what: "snapshot rebuild (hydrate)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!("wire: {} up, {} down", mb(up), mb(down)),
        });
        let fresh = Device::new(&server, &user);
        let (secs, rss, waits) = run_owned_child("rebuild", &fresh.path, &proxy.url, &user).await;
        proxy.take();
        table.push(Row {
            what: "  rebuild via SyncClient".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: waits,
        });

        // The same push through the owned handle, for another user.
        let user = fresh_user("bench-owned-push");
        let mut owned = Device::new(&server, &user);
        owned.conn.oversync().attach(&user).await.expect("attach");
        insert(&mut owned.conn, &rows(n, "owned-push"));
        let (secs, rss, waits) = run_owned_child("push", &owned.path, &proxy.url, &user).await;
        proxy.take();
        table.push(Row {
            what: "  push via SyncClient".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: waits,
        });

        // Pull: another device's N rows arriving as 1k-row bundles.
        let user = fresh_user("bench-pull");
        let mut writer = Device::new(&server, &user);
        writer
            .conn
            .oversync()
            .attach(&user)
            .await
            .expect("attach writer");
        let mut reader = Device::new(&server, &user);
        reader
            .conn
            .oversync()
            .attach(&user)
            .await
            .expect("attach reader");
        let mut owned_reader = Device::new(&server, &user);
        owned_reader
            .conn
            .oversync()
            .attach(&user)
            .await
            .expect("attach reader");
        for chunk in rows(n, "pull").chunks(1000) {
            insert(&mut writer.conn, chunk);
            writer.conn.oversync().sync().await.expect("writer push");
        }
        proxy.take();
        let (secs, rss) = run_child("pull", &reader.path, &proxy.url, &user).await;
        let (up, down) = proxy.take();
        table.push(Row {
            what: "pull (1k-row bundles)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!(
                "{} bundles; wire: {} up, {} down",
                n.div_ceil(1000),
                mb(up),
                mb(down)
            ),
        });
        let (secs, rss, waits) =
            run_owned_child("pull", &owned_reader.path, &proxy.url, &user).await;
        proxy.take();
        table.push(Row {
            what: "  pull via SyncClient".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: waits,
        });
    }
    let (per_sec, total) = server_pushes_per_sec(&server).await;

    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_default();
    println!(
        "\nSync benchmark (one run; client ops in child processes; server + PostgreSQL on loopback)"
    );
    println!(
        "machine: {} cores, MemTotal {} kB; baseline = Diesel insert_into(..).values(&row) per row, one transaction",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total
    );
    println!(
        "{:<30} {:>8} {:>10} {:>12} {:>10} {:>13}  notes",
        "operation", "rows", "seconds", "rows/s", "peak RSS", "x raw insert"
    );
    for r in &table {
        let rss = if r.rss_kb == 0 {
            "-".to_string()
        } else {
            format!("{:.0} MB", r.rss_kb as f64 / 1024.0)
        };
        println!(
            "{:<30} {:>8} {:>10.2} {:>12.0} {:>10} {:>12.1}x  {}",
            r.what,
            r.rows,
            r.secs,
            r.rows as f64 / r.secs,
            rss,
            r.secs / r.baseline,
            r.extra
        );
    }
    println!(
        "{:<30} {:>8} {:>10} {:>12.0} {:>10} {:>13}  1-row pushes/s (create+chunk+commit)",
        "server: 8 concurrent sources", total, "5 (max)", per_sec, "-", "-"
    );
    println!("\nCapture overhead (local writes): cargo bench --bench capture");
}
