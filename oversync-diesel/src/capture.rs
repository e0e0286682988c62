//! The captured changes: the capture triggers only mark a key dirty (op, base version,
//! first-touch ordinal), and a write's payload is the row itself, read here when it is needed
//! (freezing the outbox, a snapshot rebuild keeping local intent, the replaced rows an attach
//! reports, [`Oversync::pending_changes`]). Rendering the row's JSON here instead of in the
//! trigger keeps every app write from paying for it (see `docs/performance.md`).
//!
//! While a key is dirty the runtime never writes its row (replay and conflict resolution keep
//! local rows of dirty keys, pull waits for the push), so the row is the local intent. A
//! write's stored `payload` is NULL, or the frozen one when a rejected push went back to the
//! dirty set; it is used only when the row is gone.

use crate::config::OversyncConfig;
use crate::error::{Error, Result};
use crate::handle::Oversync;
use crate::table::{KeyKind, TableSpec, ValueKind};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use oversync_protocol::Op;

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// One column of row `r` in its local payload form: BLOBs as lowercase hex (NULL kept), REALs
/// with 17 significant digits (`json_object` renders 15; 17 round-trip every finite double).
fn column_json(column: &str, is_blob: bool, kind: ValueKind) -> String {
    let value = format!("r.{}", ident(column));
    if is_blob {
        format!("CASE WHEN {value} IS NULL THEN NULL ELSE lower(hex({value})) END")
    } else if kind == ValueKind::Real {
        format!(
            "CASE WHEN typeof({value}) = 'real' AND abs({value}) <= 1.7976931348623157e308 \
             THEN json(printf('%!.17g', {value})) ELSE {value} END"
        )
    } else {
        value
    }
}

/// `(SELECT <row as JSON> FROM <table> AS r WHERE <key> = <key in key_json>)`: a primary-key
/// seek (the key is the table's only primary-key column, see `validate`).
fn row_payload(spec: &TableSpec, key_json: &str) -> String {
    let pairs: Vec<String> = spec
        .columns
        .iter()
        .map(|c| {
            format!(
                "{}, {}",
                literal(&c.name.to_lowercase()),
                column_json(c.name, c.is_blob, c.kind)
            )
        })
        .collect();
    let path = literal(&format!(
        "$.\"{}\"",
        spec.key_column.to_lowercase().replace('"', "\\\"")
    ));
    let key = match spec.key_kind {
        KeyKind::Text => format!("json_extract({key_json}, {path})"),
        KeyKind::Blob => format!("unhex(json_extract({key_json}, {path}))"),
    };
    format!(
        "(SELECT json_object({}) FROM {} AS r WHERE r.{} = {key})",
        pairs.join(", "),
        ident(spec.table_name),
        ident(spec.key_column)
    )
}

/// SQL for the local payload of dirty row `d` (an alias of `_sync_dirty_rows` or of a table
/// with its `table_name`, `key_json`, `op` and `payload` columns): NULL for a DELETE, else the
/// row as it is now, else the stored payload.
pub(crate) fn payload_sql(config: &OversyncConfig, d: &str) -> String {
    let mut rows = format!("CASE {d}.table_name");
    for spec in config.tables() {
        rows.push_str(&format!(
            " WHEN {} THEN {}",
            literal(spec.table_name),
            row_payload(spec, &format!("{d}.key_json"))
        ));
    }
    rows.push_str(" END");
    format!("CASE WHEN {d}.op = 'DELETE' THEN NULL ELSE COALESCE({rows}, {d}.payload) END")
}

/// One captured change not yet frozen into a push ([`Oversync::pending_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChange {
    /// The table.
    pub table: String,
    /// The key as JSON, in local form (`{"id": "<uuid>"}`, BLOB keys as lowercase hex).
    pub key_json: String,
    /// What the push will do with the row.
    pub op: Op,
    /// The server version the change builds on (0: the server never had the row).
    pub base_row_version: i64,
    /// The row as JSON in local form (BLOBs as lowercase hex); `None` for a delete.
    pub payload: Option<String>,
    /// First-touch order: a key keeps its place however often it is written again.
    pub ordinal: i64,
}

#[derive(QueryableByName)]
struct Dirty {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    key_json: String,
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = BigInt)]
    base_row_version: i64,
    #[diesel(sql_type = Nullable<Text>)]
    payload: Option<String>,
    #[diesel(sql_type = BigInt)]
    dirty_ordinal: i64,
}

/// The dirty set, first touch first, each write with its payload.
pub(crate) fn dirty_changes(
    conn: &mut SqliteConnection,
    config: &OversyncConfig,
) -> Result<Vec<PendingChange>> {
    let rows: Vec<Dirty> = diesel::sql_query(format!(
        "SELECT d.table_name, d.key_json, d.op, d.base_row_version, {} AS payload, d.dirty_ordinal \
         FROM _sync_dirty_rows AS d ORDER BY d.dirty_ordinal",
        payload_sql(config, "d")
    ))
    .load(conn)?;
    rows.into_iter()
        .map(|d| {
            let op = Op::parse(&d.op)
                .ok_or_else(|| Error::InvalidState(format!("dirty row op {:?}", d.op)))?;
            Ok(PendingChange {
                table: d.table_name,
                key_json: d.key_json,
                op,
                base_row_version: d.base_row_version,
                payload: d.payload,
                ordinal: d.dirty_ordinal,
            })
        })
        .collect()
}

impl Oversync<'_> {
    /// The local changes captured since the last freeze, in first-touch order, each write
    /// with the row as it is now. A frozen push in flight is not included.
    pub fn pending_changes(&mut self) -> Result<Vec<PendingChange>> {
        self.ensure_open()?;
        let config = self.config;
        self.conn.transaction(|conn| dirty_changes(conn, config))
    }
}
