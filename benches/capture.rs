//! Capture overhead: the same Diesel writes against a synced table (capture triggers
//! installed) and an identical plain table, on real SQLite files, each batch in one
//! transaction. Prints one table; run with `cargo bench --bench capture`.
//!
//! Two scenarios per size: rows never synced (inserts grow the dirty set, updates coalesce
//! into it, deletes empty it), and rows the server already has (updates and deletes each
//! add a dirty entry carrying the base version from `_sync_row_state`).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
use std::time::{Duration, Instant};

diesel::table! {
    notes (id) { id -> Text, title -> Text, body -> Nullable<Text>, priority -> BigInt, score -> Nullable<Double>, updated_at -> Text }
}
diesel::table! {
    plain_notes (id) { id -> Text, title -> Text, body -> Nullable<Text>, priority -> BigInt, score -> Nullable<Double>, updated_at -> Text }
}

#[derive(SyncTable, Insertable)]
#[diesel(table_name = notes)]
struct Note {
    #[sync(key)]
    id: String,
    title: String,
    body: Option<String>,
    priority: i64,
    score: Option<f64>,
    updated_at: String,
}

#[derive(Insertable)]
#[diesel(table_name = plain_notes)]
struct PlainNote {
    id: String,
    title: String,
    body: Option<String>,
    priority: i64,
    score: Option<f64>,
    updated_at: String,
}

const SCHEMA: &str = "
    CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL, body TEXT, priority INTEGER NOT NULL, score REAL, updated_at TEXT NOT NULL);
    CREATE TABLE plain_notes (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL, body TEXT, priority INTEGER NOT NULL, score REAL, updated_at TEXT NOT NULL);
";

fn id(i: usize) -> String {
    uuid::Uuid::from_u128(0x1234_5678_9abc_4def_8000_0000_0000_0000 | i as u128).to_string()
}

fn open(dir: &std::path::Path) -> OversyncConnection {
    let path = dir.join("bench.db");
    let mut conn = OversyncConnection::establish(
        path.to_str().expect("utf-8 path"),
        OversyncConfig::new("business").table::<Note>(),
    )
    .expect("open database");
    conn.batch_execute(SCHEMA).expect("schema");
    oversync_diesel::migrations::run_sync_migrations(&mut conn).expect("sync migrations");
    conn.oversync().open().expect("oversync open");
    conn
}

macro_rules! workload {
    ($conn:expr, $table:ident, $row:ident, $n:expr, $op:expr) => {{
        let conn: &mut SqliteConnection = $conn;
        let start = Instant::now();
        conn.immediate_transaction(|conn| -> QueryResult<()> {
            for i in 0..$n {
                match $op {
                    "insert" => {
                        diesel::insert_into($table::table)
                            .values(&$row {
                                id: id(i),
                                title: format!("note {i}"),
                                body: Some(
                                    "body text of a typical note, a few dozen bytes long".into(),
                                ),
                                priority: (i % 5) as i64,
                                score: Some(i as f64 * 0.1),
                                updated_at: "2026-11-23T10:00:00Z".into(),
                            })
                            .execute(conn)?;
                    }
                    "update" => {
                        diesel::update($table::table.find(id(i)))
                            .set((
                                $table::title.eq(format!("edited {i}")),
                                $table::priority.eq(7),
                            ))
                            .execute(conn)?;
                    }
                    _ => {
                        diesel::delete($table::table.find(id(i))).execute(conn)?;
                    }
                }
            }
            Ok(())
        })
        .expect("workload");
        start.elapsed()
    }};
}

// One non-inlined function per table and op, so a profiler can attribute cost to each
// (`valgrind --tool=callgrind --toggle-collect='*synced_update*'`, see docs/performance.md).
#[inline(never)]
fn plain_insert(conn: &mut SqliteConnection, n: usize) -> Duration {
    workload!(conn, plain_notes, PlainNote, n, "insert")
}
#[inline(never)]
fn plain_update(conn: &mut SqliteConnection, n: usize) -> Duration {
    workload!(conn, plain_notes, PlainNote, n, "update")
}
#[inline(never)]
fn plain_delete(conn: &mut SqliteConnection, n: usize) -> Duration {
    workload!(conn, plain_notes, PlainNote, n, "delete")
}
#[inline(never)]
fn synced_insert(conn: &mut SqliteConnection, n: usize) -> Duration {
    workload!(conn, notes, Note, n, "insert")
}
#[inline(never)]
fn synced_update(conn: &mut SqliteConnection, n: usize) -> Duration {
    workload!(conn, notes, Note, n, "update")
}
#[inline(never)]
fn synced_delete(conn: &mut SqliteConnection, n: usize) -> Duration {
    workload!(conn, notes, Note, n, "delete")
}

/// Marks every note as held by the server at version 1, as a completed push would.
fn mark_synced(conn: &mut SqliteConnection) {
    conn.batch_execute(
        "UPDATE _sync_apply_state SET apply_mode = 1;
         DELETE FROM _sync_dirty_rows;
         INSERT INTO _sync_row_state(schema_name, table_name, key_json, row_version, deleted)
           SELECT 'main', 'notes', json_object('id', id), 1, 0 FROM notes;
         UPDATE _sync_apply_state SET apply_mode = 0;",
    )
    .expect("mark synced");
}

fn dirty_count(conn: &mut SqliteConnection) -> i64 {
    diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM _sync_dirty_rows")
        .get_result(conn)
        .expect("count")
}

type Workload = fn(&mut SqliteConnection, usize) -> Duration;

struct Row {
    scenario: &'static str,
    op: &'static str,
    rows: usize,
    plain: Duration,
    synced: Duration,
    dirty_after: i64,
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
/// and then a smoke size only checks that the benchmark still runs (timings mean nothing there).
fn under_cargo_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn main() {
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
    let mut results = Vec::new();
    for &n in &sizes {
        for scenario in ["never synced", "server has rows"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut conn = open(dir.path());
            let plain_insert = plain_insert(&mut conn, n);
            let synced_insert = synced_insert(&mut conn, n);
            if scenario == "never synced" {
                results.push(Row {
                    scenario,
                    op: "insert",
                    rows: n,
                    plain: plain_insert,
                    synced: synced_insert,
                    dirty_after: dirty_count(&mut conn),
                });
            } else {
                mark_synced(&mut conn);
            }
            for (op, plain, synced) in [
                (
                    "update",
                    plain_update as Workload,
                    synced_update as Workload,
                ),
                ("delete", plain_delete, synced_delete),
            ] {
                let plain = plain(&mut conn, n);
                let synced = synced(&mut conn, n);
                results.push(Row {
                    scenario,
                    op,
                    rows: n,
                    plain,
                    synced,
                    dirty_after: dirty_count(&mut conn),
                });
            }
        }
    }

    println!(
        "\nCapture overhead: Diesel writes, one transaction per batch, real SQLite file (WAL)"
    );
    println!(
        "{:<16} {:<7} {:>8} {:>11} {:>11} {:>9} {:>12} {:>12}",
        "scenario", "op", "rows", "plain ms", "synced ms", "ratio", "synced us/row", "dirty after"
    );
    for r in &results {
        let plain = r.plain.as_secs_f64() * 1e3;
        let synced = r.synced.as_secs_f64() * 1e3;
        println!(
            "{:<16} {:<7} {:>8} {:>11.1} {:>11.1} {:>8.2}x {:>12.2} {:>12}",
            r.scenario,
            r.op,
            r.rows,
            plain,
            synced,
            synced / plain,
            synced * 1e3 / r.rows as f64,
            r.dirty_after
        );
    }
}
