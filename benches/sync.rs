//! Sync benchmark: one table, measured in one run on this machine, each row also as a ratio
//! to raw SQLite work on the same data (Diesel inserting the same rows one prepared statement
//! at a time in one transaction). Run: `cargo bench --bench sync`
//! (`OVERSYNC_BENCH_ROWS=10000,100000` by default).
//!
//! The server (our example server on a private PostgreSQL) runs in this process; every
//! client operation runs in a child process (this binary re-executed), so the peak RSS
//! reported is that operation's alone.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::protocol::{
    PushSessionChunkRequest, PushSessionCreateRequest, PushSessionCreateResponse, sync_key,
};
use oversync_e2e::schema::users;
use oversync_e2e::*;
use std::process::Command;
use std::time::{Duration, Instant};

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

fn run_child(op: &str, db: &std::path::Path, url: &str, user: &str) -> (f64, u64) {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["--child", op, db.to_str().expect("path"), url, user])
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
    (secs, rss)
}

fn wire_bytes(conn: &mut SqliteConnection) -> i64 {
    diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT IFNULL(SUM(length(payload) + length(key_json) + 80), 0) FROM _sync_dirty_rows",
    )
    .get_result(conn)
    .unwrap_or(0)
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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 6 && args[1] == "--child" {
        child(&args[2], &args[3], &args[4], &args[5]).await;
        return;
    }
    let sizes: Vec<usize> = std::env::var("OVERSYNC_BENCH_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let server = Server::start().await;
    let url = server.base_url().to_string();
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
        let bytes = wire_bytes(&mut a.conn);
        let (secs, rss) = run_child("push", &a.path, &url, &user);
        table.push(Row {
            what: "push (one bundle)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!("~{:.1} MB sent", bytes as f64 / 1e6),
        });

        // Rebuild: a fresh device hydrating those N rows from a snapshot.
        let fresh = Device::new(&server, &user);
        let (secs, rss) = run_child("rebuild", &fresh.path, &url, &user);
        table.push(Row {
            what: "snapshot rebuild (hydrate)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: String::new(),
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
        for chunk in rows(n, "pull").chunks(1000) {
            insert(&mut writer.conn, chunk);
            writer.conn.oversync().sync().await.expect("writer push");
        }
        let (secs, rss) = run_child("pull", &reader.path, &url, &user);
        table.push(Row {
            what: "pull (1k-row bundles)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!("{} bundles", n.div_ceil(1000)),
        });
    }
    let (per_sec, total) = server_pushes_per_sec(&server).await;

    println!(
        "\nSync benchmark (one run; client ops in child processes; server + PostgreSQL on loopback)"
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
