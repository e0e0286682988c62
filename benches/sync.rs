//! Sync benchmark: one table, measured in one run on this machine, each row also as a ratio
//! to raw SQLite work on the same data (Diesel inserting the same rows one prepared statement
//! at a time in one transaction). Run: `cargo bench --bench sync`
//! (`OVERSYNC_BENCH_ROWS=10000,100000` by default).
//!
//! Each operation is also run through the owned `SyncClient` from a `current_thread` runtime
//! (as a UI or an axum handler would), reporting the worst lateness of a 10 ms ticker on that
//! runtime and the worst wait of a status read (`pending_sync_status`, every 5 ms) during it.
//!
//! Limits measured in the same run: the raw SQLite insert (above), a PostgreSQL `COPY` of the
//! same rows into a table shaped like `users` in the server's own PostgreSQL, and the rows'
//! CSV size for the bytes on the wire. Pull and rebuild also print their local apply time
//! (the engine's `SyncEvent::Applied`: validating and writing rows, no network) against the
//! raw insert. Further rows: two devices writing alternately (a device must not pull its own
//! bundles again) and hydrating right after a bulk push on a fresh database
//! (`OVERSYNC_BENCH_HYDRATE_ROWS=10000,40000` by default). `OVERSYNC_BENCH_PROFILE=pull` (or
//! `rebuild`, `push`) runs that child under `valgrind --tool=callgrind`
//! (`callgrind.<op>.<pid>.out` in the working directory).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The machine line's figures: cores (`nproc`) and the load average now.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn nproc() -> String {
    Command::new("nproc")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// The rows as CSV, in `users` column order with the scope column first (the COPY input
/// and the size limit the wire is compared with).
fn rows_csv(rows: &[User], scope: &str) -> String {
    let mut csv = String::new();
    for r in rows {
        csv.push_str(&format!(
            "{scope},{},\"{}\",\"{}\",{},\n",
            r.id,
            r.name,
            r.email,
            r.created_at.as_deref().unwrap_or("")
        ));
    }
    csv
}

/// PostgreSQL limit: `COPY` of the same rows (read by the server from a CSV file) into a
/// fresh table shaped like the synced `users` (same columns, same primary key), in the
/// server's own PostgreSQL. Returns (seconds, CSV bytes); `None` against an external server.
async fn pg_copy_secs(server: &Server, n: usize) -> Option<(f64, u64)> {
    let url = &server.local()?.database().url;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rows.csv");
    let csv = rows_csv(&rows(n, "copy"), "bench-copy");
    std::fs::write(&file, &csv).expect("write CSV");
    let table = format!("bench_copy_{n}");
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (_sync_scope_id TEXT NOT NULL, id UUID NOT NULL, name TEXT NOT NULL,
                 email TEXT NOT NULL, created_at TIMESTAMPTZ DEFAULT now(), updated_at TIMESTAMPTZ DEFAULT now(),
                 PRIMARY KEY (_sync_scope_id, id))"
        ))
        .await
        .expect("create the COPY table");
    let start = Instant::now();
    client
        .batch_execute(&format!(
            "COPY {table} FROM '{}' WITH (FORMAT csv)",
            file.display()
        ))
        .await
        .expect("COPY");
    let secs = start.elapsed().as_secs_f64();
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop the COPY table");
    Some((secs, csv.len() as u64))
}

/// `OVERSYNC_BENCH_EXPLAIN=1`: prints `EXPLAIN (ANALYZE, BUFFERS)` of the server's pull
/// statements for `user`'s first page of `bundles` bundles.
async fn explain_pull(server: &Server, user: &str, bundles: i64) {
    if std::env::var("OVERSYNC_BENCH_EXPLAIN").is_err() {
        return;
    }
    let Some(local) = server.local() else {
        return;
    };
    let (client, connection) =
        tokio_postgres::connect(&local.database().url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let pk: i64 = client
        .query_one(
            "SELECT user_pk FROM sync.user_state WHERE user_id = $1",
            &[&user],
        )
        .await
        .expect("user_pk")
        .get(0);
    for sql in [
        format!(
            "SELECT bundle_seq, source_id, source_bundle_id, row_count, bundle_hash, byte_count \
             FROM sync.bundle_log WHERE user_pk = {pk} AND bundle_seq > 0 AND bundle_seq <= 1000000 \
             ORDER BY bundle_seq LIMIT {}",
            bundles + 1
        ),
        format!(
            "SELECT bundle_seq, table_id, key_text, op, payload FROM sync.bundle_rows \
             WHERE user_pk = {pk} AND bundle_seq BETWEEN 1 AND {bundles} ORDER BY bundle_seq, row_ordinal"
        ),
    ] {
        println!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
        for row in client
            .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &[])
            .await
            .expect("explain")
        {
            println!("  {}", row.get::<_, String>(0));
        }
    }
}

/// Two devices of one user writing alternately, each syncing after its write: per sync,
/// the rows pulled (the other device's) and the rows of its own bundles the pull skipped.
/// Returns (syncs, mean seconds per sync, rows pulled per sync, own rows skipped, own rows
/// pulled again).
async fn two_writers(server: &Server, n: usize) -> (usize, f64, f64, u64, u64) {
    let user = fresh_user("bench-two-writers");
    let mut devices = [Device::new(server, &user), Device::new(server, &user)];
    for d in &mut devices {
        d.conn.oversync().attach(&user).await.expect("attach");
    }
    let syncs = 10;
    let per_write = (n / syncs).max(1);
    let (mut pulled, mut skipped, mut again, mut secs) = (0u64, 0u64, 0u64, 0.0);
    let mut written_by_other = [0u64, 0u64];
    for round in 0..syncs {
        let i = round % 2;
        insert(
            &mut devices[i].conn,
            &rows(per_write, &format!("w{i} r{round}")),
        );
        written_by_other[1 - i] += per_write as u64;
        let start = Instant::now();
        let report = devices[i].conn.oversync().sync().await.expect("sync");
        secs += start.elapsed().as_secs_f64();
        let oversync_diesel::PullOutcome::UpToDate {
            rows_applied,
            own_rows_skipped,
            ..
        } = report.pull
        else {
            panic!("pull blocked: {report:?}");
        };
        // Everything applied must be the other device's rows written since this one's
        // last sync; more would be this device's own rows coming back.
        let expected = std::mem::take(&mut written_by_other[i]);
        again += rows_applied.saturating_sub(expected);
        pulled += rows_applied;
        skipped += own_rows_skipped;
    }
    (
        syncs,
        secs / syncs as f64,
        pulled as f64 / syncs as f64,
        skipped,
        again,
    )
}

/// Hydrating a new device right after a bulk push, on a fresh database (no ANALYZE has
/// run, as after the first large push into a new server): push `n` rows, then time the
/// new device's attach in a child process. Returns (seconds, peak RSS, local apply).
async fn hydrate_after_push(n: usize) -> (f64, u64, f64) {
    let server = Server::start().await;
    let user = fresh_user("bench-hydrate-fresh");
    let mut writer = Device::new(&server, &user);
    writer.conn.oversync().attach(&user).await.expect("attach");
    insert(&mut writer.conn, &rows(n, "fresh"));
    writer.conn.oversync().sync().await.expect("push");
    let fresh = Device::new(&server, &user);
    run_child_timed("rebuild", &fresh.path, server.base_url(), &user).await
}

/// Child process: one client operation on an existing device file; prints `secs rss_kb
/// apply_secs`.
async fn child(op: &str, db: &str, url: &str, user: &str) {
    let mut conn = oversync_diesel::OversyncConnection::establish(db, config()).expect("open");
    conn.oversync().open().expect("oversync open");
    conn.set_transport(transport_for(url, user));
    let mut events = conn.subscribe();
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
    let secs = start.elapsed().as_secs_f64();
    let mut applied = Duration::ZERO;
    loop {
        match events.try_recv() {
            Ok(oversync_diesel::SyncEvent::Applied { elapsed, .. }) => applied += elapsed,
            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    println!("{secs} {} {}", peak_rss_kb(), applied.as_secs_f64());
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
        let done = Arc::new(AtomicBool::new(false));
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
        let plain_reads = plain_status_reads(db, done.clone());
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
        let plain = plain_reads.join().expect("plain status reader");
        client.shutdown().await;
        println!(
            "{secs} {} {:.1} {:.1} {:.1}",
            peak_rss_kb(),
            ticker.as_secs_f64() * 1e3,
            status.as_secs_f64() * 1e3,
            plain.as_secs_f64() * 1e3
        );
    });
}

/// The status read's SQL on its own connection and plain thread, every 5 ms until `done`:
/// its worst time tells the wait inside SQLite (WAL read start, cold pages after the
/// engine's commits, SQLite's process-wide page cache shared with the engine thread) from
/// the hand-off through `SyncClient`'s blocking pool. A raw connection, so that each
/// statement is prepared once as the engine's cached ones are.
fn plain_status_reads(db: &str, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    let db = db.to_owned();
    std::thread::spawn(move || {
        let mut reader = RawReader::open(&db);
        let mut worst = Duration::ZERO;
        while !done.load(Ordering::Relaxed) {
            let asked = Instant::now();
            reader.read();
            worst = worst.max(asked.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        worst
    })
}

/// The status connection of `SyncClient` (`establish_read_only`: its pragmas) and the
/// statements of `state::pending_row_count` and `quarantine::quarantined_count`
/// (crate-private), in one read transaction as `pending_sync_status()` runs them: keep them
/// equal when those change.
struct RawReader {
    conn: *mut libsqlite3_sys::sqlite3,
    statements: Vec<*mut libsqlite3_sys::sqlite3_stmt>,
}

impl RawReader {
    const PRAGMAS: &str = "PRAGMA busy_timeout = 30000; PRAGMA query_only = ON;";
    const STATEMENTS: [&str; 5] = [
        "BEGIN",
        "SELECT COUNT(*) FROM `_sync_dirty_rows`",
        "SELECT `_sync_outbox_bundle`.`state`, `_sync_outbox_bundle`.`row_count` FROM `_sync_outbox_bundle` \
         WHERE (`_sync_outbox_bundle`.`singleton_key` = ?) LIMIT ?",
        "SELECT COUNT(*) FROM `_sync_quarantine`",
        "COMMIT",
    ];

    fn open(db: &str) -> RawReader {
        use libsqlite3_sys as ffi;
        use std::ffi::CString;
        let path = CString::new(db).expect("path");
        let pragmas = CString::new(Self::PRAGMAS).expect("pragmas");
        // SAFETY: plain SQLite C API use on a connection owned by this value; every pointer
        // passed is valid for the call.
        unsafe {
            let mut conn = std::ptr::null_mut();
            let flags = ffi::SQLITE_OPEN_READWRITE;
            assert_eq!(
                ffi::sqlite3_open_v2(path.as_ptr(), &mut conn, flags, std::ptr::null()),
                0
            );
            let (no_arg, no_error) = (std::ptr::null_mut(), std::ptr::null_mut());
            assert_eq!(
                ffi::sqlite3_exec(conn, pragmas.as_ptr(), None, no_arg, no_error),
                0
            );
            let statements = Self::STATEMENTS
                .iter()
                .map(|sql| {
                    let sql = CString::new(*sql).expect("sql");
                    let mut statement = std::ptr::null_mut();
                    let tail = std::ptr::null_mut();
                    let rc = ffi::sqlite3_prepare_v2(conn, sql.as_ptr(), -1, &mut statement, tail);
                    assert_eq!(rc, 0, "prepare {sql:?}");
                    statement
                })
                .collect();
            RawReader { conn, statements }
        }
    }

    fn read(&mut self) {
        use libsqlite3_sys as ffi;
        for &statement in &self.statements {
            // SAFETY: the statements belong to `self.conn`, which outlives them.
            unsafe {
                for i in 1..=ffi::sqlite3_bind_parameter_count(statement) {
                    ffi::sqlite3_bind_int64(statement, i, 1);
                }
                loop {
                    match ffi::sqlite3_step(statement) {
                        ffi::SQLITE_ROW => continue,
                        ffi::SQLITE_DONE => break,
                        rc => panic!("plain status read: SQLite error {rc}"),
                    }
                }
                ffi::sqlite3_reset(statement);
            }
        }
    }
}

impl Drop for RawReader {
    fn drop(&mut self) {
        // SAFETY: finalized once, then the connection they belong to is closed.
        unsafe {
            for &statement in &self.statements {
                libsqlite3_sys::sqlite3_finalize(statement);
            }
            libsqlite3_sys::sqlite3_close(self.conn);
        }
    }
}

/// [`run_child_blocking`] off the async workers (the counting proxy runs on them).
async fn run_child(op: &str, db: &std::path::Path, url: &str, user: &str) -> (f64, u64) {
    let (secs, rss, _) = run_child_as("--child", op, db, url, user).await;
    (secs, rss)
}

/// [`child`] in a child process: (seconds, peak RSS, seconds of local apply reported by
/// the engine's `SyncEvent::Applied`).
async fn run_child_timed(op: &str, db: &std::path::Path, url: &str, user: &str) -> (f64, u64, f64) {
    let (secs, rss, note) = run_child_as("--child", op, db, url, user).await;
    (secs, rss, note.parse().unwrap_or(f64::NAN))
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
    let exe = std::env::current_exe().expect("own path");
    let args = [mode, op, db.to_str().expect("path"), url, user];
    // `OVERSYNC_BENCH_PROFILE=pull` (or rebuild, push) runs that plain child under callgrind.
    let profiled = mode == "--child"
        && std::env::var("OVERSYNC_BENCH_PROFILE").is_ok_and(|p| p.split(',').any(|p| p == op));
    let mut command = if profiled {
        let mut c = Command::new("valgrind");
        c.args([
            "--tool=callgrind",
            &format!("--callgrind-out-file=callgrind.{op}.%p.out"),
        ])
        .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = command.args(args).output().expect("run child");
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
        [ticker, status, plain] => format!(
            "worst 10 ms ticker lateness {ticker} ms, worst status read {status} ms \
             (same SQL on a plain thread: {plain} ms)"
        ),
        [applied] => applied.to_string(),
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
    let load_at_start = load_average();
    let server = Server::start().await;
    let proxy = CountingProxy::start(server.base_url()).await;
    let mut table = Vec::new();
    // Per size: the PostgreSQL COPY limit (seconds) and the rows' CSV bytes.
    let mut copies = std::collections::HashMap::new();
    let wire = |csv: Option<u64>, up: u64, down: u64| match csv {
        Some(csv) => format!(
            "wire: {} up, {} down ({:.1}x the rows' CSV)",
            mb(up),
            mb(down),
            (up + down) as f64 / csv as f64
        ),
        None => format!("wire: {} up, {} down", mb(up), mb(down)),
    };
    let applied = |apply: f64, baseline: f64| {
        format!(
            "local apply {apply:.2} s = {:.1}x raw insert",
            apply / baseline
        )
    };
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
        let copy = pg_copy_secs(&server, n).await;
        if let Some((secs, csv)) = copy {
            copies.insert(n, secs);
            table.push(Row {
                what: "PostgreSQL COPY (server limit)".into(),
                rows: n,
                secs,
                rss_kb: 0,
                baseline,
                extra: format!(
                    "same rows, {} of CSV, into a table shaped like users",
                    mb(csv)
                ),
            });
        }
        let csv = copy.map(|(_, csv)| csv);

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
        let (secs, rss, apply) = run_child_timed("rebuild", &fresh.path, &proxy.url, &user).await;
        let (up, down) = proxy.take();
        table.push(Row {
            what: "snapshot rebuild (hydrate)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!("{}; {}", wire(csv, up, down), applied(apply, baseline)),
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
        let (secs, rss, apply) = run_child_timed("pull", &reader.path, &proxy.url, &user).await;
        let (up, down) = proxy.take();
        table.push(Row {
            what: "pull (1k-row bundles)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!(
                "{} bundles; {}; {}",
                n.div_ceil(1000),
                wire(csv, up, down),
                applied(apply, baseline)
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

        explain_pull(&server, &user, 10).await;

        // Two devices writing alternately: each pull brings the other's rows, not its own.
        let (syncs, per_sync, pulled, skipped, again) = two_writers(&server, n).await;
        table.push(Row {
            what: "two writers, alternating".into(),
            rows: n,
            secs: per_sync * syncs as f64,
            rss_kb: 0,
            baseline,
            extra: format!(
                "{syncs} syncs of {} rows each: {pulled:.0} rows pulled per sync (the other \
                 device's), {skipped} own rows skipped, {again} own rows pulled again",
                n / syncs
            ),
        });
    }
    // Hydrate right after a bulk push, each size on a fresh database.
    let fresh_sizes: Vec<usize> = std::env::var("OVERSYNC_BENCH_HYDRATE_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if under_cargo_bench() {
                vec![10_000, 40_000]
            } else {
                vec![500]
            }
        });
    for n in fresh_sizes {
        let baseline = raw_insert_secs(n);
        let (secs, rss, apply) = hydrate_after_push(n).await;
        table.push(Row {
            what: "hydrate after bulk push (new db)".into(),
            rows: n,
            secs,
            rss_kb: rss,
            baseline,
            extra: format!(
                "fresh database, no ANALYZE yet; {}",
                applied(apply, baseline)
            ),
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
        "machine: nproc {}, MemTotal {} kB, load average {} at start, {} at end; baseline = Diesel insert_into(..).values(&row) per row, one transaction",
        nproc(),
        mem_total,
        load_at_start,
        load_average()
    );
    println!(
        "{:<34} {:>8} {:>10} {:>12} {:>10} {:>13} {:>10}  notes",
        "operation", "rows", "seconds", "rows/s", "peak RSS", "x raw insert", "x PG COPY"
    );
    for r in &table {
        let rss = if r.rss_kb == 0 {
            "-".to_string()
        } else {
            format!("{:.0} MB", r.rss_kb as f64 / 1024.0)
        };
        let copy = copies
            .get(&r.rows)
            .map_or("-".to_string(), |c| format!("{:.1}x", r.secs / c));
        println!(
            "{:<34} {:>8} {:>10.2} {:>12.0} {:>10} {:>12.1}x {:>10}  {}",
            r.what,
            r.rows,
            r.secs,
            r.rows as f64 / r.secs,
            rss,
            r.secs / r.baseline,
            copy,
            r.extra
        );
    }
    println!(
        "{:<30} {:>8} {:>10} {:>12.0} {:>10} {:>13}  1-row pushes/s (create+chunk+commit)",
        "server: 8 concurrent sources", total, "5 (max)", per_sec, "-", "-"
    );
    println!("\nCapture overhead (local writes): cargo bench --bench capture");
}
