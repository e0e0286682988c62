//! Fixtures for the capture tests: two tables with a cascading foreign key, one with a BLOB
//! key, on a real SQLite file in a temp dir.
#![allow(dead_code)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
use serde_json::Value;

#[derive(SyncTable)]
#[diesel(table_name = authors)]
pub struct Author {
    #[sync(key)]
    pub id: String,
    pub name: String,
    pub rating: Option<f64>,
    pub born: Option<i64>,
}

#[derive(SyncTable)]
#[diesel(table_name = books)]
pub struct Book {
    #[sync(key)]
    pub id: String,
    pub author_id: String,
    pub title: Option<String>,
    pub cover: Option<Vec<u8>>,
}

#[derive(SyncTable)]
#[diesel(table_name = blobs)]
pub struct BlobRow {
    #[sync(key)]
    pub id: Vec<u8>,
    pub data: Vec<u8>,
}

pub const SCHEMA: &str = "
    CREATE TABLE authors (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, rating REAL, born INTEGER);
    CREATE TABLE books (id TEXT PRIMARY KEY NOT NULL,
        author_id TEXT NOT NULL REFERENCES authors(id) ON DELETE CASCADE ON UPDATE CASCADE,
        title TEXT, cover BLOB);
    CREATE TABLE blobs (id BLOB PRIMARY KEY NOT NULL, data BLOB NOT NULL);
";

pub fn config() -> OversyncConfig {
    OversyncConfig::new("business")
        .table::<Author>()
        .table::<Book>()
        .table::<BlobRow>()
}

pub struct Db {
    pub conn: OversyncConnection,
    pub dir: tempfile::TempDir,
}

impl Db {
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("app.db")
    }
}

/// A fresh database file with the app schema; sync migrations run and opened when asked.
pub fn fresh_db(migrate_and_open: bool) -> Db {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    let mut conn = OversyncConnection::establish(path.to_str().expect("utf-8 path"), config())
        .expect("establish");
    conn.batch_execute(SCHEMA).expect("app schema");
    if migrate_and_open {
        oversync_diesel::migrations::run_sync_migrations(&mut conn).expect("sync migrations");
        conn.oversync().open().expect("open");
    }
    Db { conn, dir }
}

pub fn exec(conn: &mut SqliteConnection, sql: &str) {
    conn.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub fn try_exec(conn: &mut SqliteConnection, sql: &str) -> Result<(), String> {
    conn.batch_execute(sql).map_err(|e| e.to_string())
}

/// Pretends the server already holds `key` of `table` at `version`: writes the row in apply
/// mode (not captured) and records its row state, as a pull would.
pub fn server_has(
    conn: &mut SqliteConnection,
    table: &str,
    key_json: &str,
    version: i64,
    insert_sql: &str,
) {
    exec(conn, "UPDATE _sync_apply_state SET apply_mode = 1");
    exec(conn, insert_sql);
    diesel::sql_query(
        "INSERT INTO _sync_row_state(schema_name, table_name, key_json, row_version, deleted) VALUES ('main', ?, ?, ?, 0)",
    )
    .bind::<Text, _>(table)
    .bind::<Text, _>(key_json)
    .bind::<BigInt, _>(version)
    .execute(conn)
    .expect("row state");
    exec(conn, "UPDATE _sync_apply_state SET apply_mode = 0");
}

#[derive(QueryableByName, Debug, Clone, PartialEq)]
pub struct DirtyRow {
    #[diesel(sql_type = Text)]
    pub table_name: String,
    #[diesel(sql_type = Text)]
    pub key_json: String,
    #[diesel(sql_type = Text)]
    pub op: String,
    #[diesel(sql_type = BigInt)]
    pub base_row_version: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub payload: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub dirty_ordinal: i64,
}

impl DirtyRow {
    pub fn payload_json(&self) -> Option<Value> {
        self.payload
            .as_deref()
            .map(|p| serde_json::from_str(p).expect("payload is JSON"))
    }
}

/// The dirty set as the runtime sees it (`pending_changes`): each write's payload is its row.
pub fn dirty_rows(conn: &mut OversyncConnection) -> Vec<DirtyRow> {
    conn.oversync()
        .pending_changes()
        .expect("pending changes")
        .into_iter()
        .map(|c| DirtyRow {
            table_name: c.table,
            key_json: c.key_json,
            op: c.op.as_str().to_string(),
            base_row_version: c.base_row_version,
            payload: c.payload,
            dirty_ordinal: c.ordinal,
        })
        .collect()
}

pub fn key(id: &str) -> String {
    format!("{{\"id\":\"{id}\"}}")
}

/// Deterministic canonical UUID for test keys.
pub fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}
