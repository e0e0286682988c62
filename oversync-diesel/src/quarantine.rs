//! Quarantine: pushed rows the server refuses for their own content.
//!
//! A row can pass every local check and still be refused by the server: a CHECK constraint
//! or column type SQLite does not enforce, a payload over the server's body limit, a foreign
//! key to a row the server does not have. Without quarantine that row fails its bundle on
//! every sync and nothing else of the user's reaches the server again.
//!
//! When the server refuses a push for its data (`400 push_chunk_invalid`,
//! `400 push_commit_invalid`, `413`), the push finds the row and moves its intent into
//! `_sync_quarantine`, then pushes the rest in the same call. The row is found from the
//! error body when the server names it (our server adds `row_ordinal`, `table` and `key` to
//! such errors), else by bisecting: a refused chunk is uploaded again in halves within the
//! same push session (staged rows are not committed), and a refused commit keeps the first
//! half of the bundle and returns the second half to the captured changes, so each
//! successful half is committed for real and the refused row is cornered in a one-row
//! bundle. Transient failures (network, `5xx`, `401`, `409` conflicts and sequence errors)
//! never quarantine anything.
//!
//! The app lists quarantined rows with [`Oversync::quarantined_rows`], and after fixing the
//! data (or the server) either retries one ([`Oversync::retry_quarantined`]) or discards it
//! ([`Oversync::discard_quarantined`]). Editing the local row through the app queues a new
//! change as usual: if that change is accepted, the quarantine entry of its key is removed.

use crate::codec;
use crate::error::{Error, Result};
use crate::events::SyncEvent;
use crate::handle::Oversync;
use crate::table::KeyKind;
use crate::transport::TransportError;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use oversync_protocol::{Op, codes};
use serde_json::{Map, Value};

/// A local change the server refused, set aside so the rest can sync.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinedRow {
    /// Identifies the entry for [`Oversync::retry_quarantined`] and
    /// [`Oversync::discard_quarantined`].
    pub id: i64,
    /// The local table.
    pub table: String,
    /// The row's key as sent to the server (UUID text).
    pub key: String,
    /// The refused operation.
    pub op: Op,
    /// The refused row image as captured locally (column name to SQLite value, BLOBs as
    /// lowercase hex); `None` for a delete.
    pub payload: Option<Map<String, Value>>,
    /// The server row version the change was based on (0: a row the server does not have).
    pub base_row_version: i64,
    /// The HTTP status of the refusal (`400`, `413`).
    pub http_status: u16,
    /// The server's `error` code (`push_commit_invalid`, `push_chunk_invalid`,
    /// `request_too_large`, or empty when the server sent none).
    pub error_code: String,
    /// The server's message.
    pub error_message: String,
    /// When the row was quarantined (UTC, `YYYY-MM-DDTHH:MM:SS.sssZ`).
    pub quarantined_at: String,
}

/// A server refusal that is about the pushed data rather than the connection or the
/// protocol state.
#[derive(Debug, Clone)]
pub(crate) struct RowRejection {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The bundle ordinal of the refused row, when the server named it.
    pub row_ordinal: Option<i64>,
    /// The refused row's table, when the server named it.
    pub table: Option<String>,
}

impl RowRejection {
    /// What [`SyncEvent::Quarantined`] carries.
    fn describe(&self) -> String {
        if self.code.is_empty() {
            format!("{}: {}", self.status, self.message)
        } else {
            format!("{} {}: {}", self.status, self.code, self.message)
        }
    }
}

/// Whether a failed chunk upload or commit is the server refusing the data itself. Only
/// these can quarantine a row; everything else (network, `5xx`, `401`, `409`) leaves the
/// push to be retried unchanged.
pub(crate) fn row_rejection(error: &TransportError) -> Option<RowRejection> {
    let TransportError::Server {
        status,
        code,
        message,
        body,
        ..
    } = error
    else {
        return None;
    };
    let data_refused = match *status {
        400 => code == codes::PUSH_CHUNK_INVALID || code == codes::PUSH_COMMIT_INVALID,
        413 => true,
        _ => false,
    };
    if !data_refused {
        return None;
    }
    let field = |name: &str| body.as_ref().and_then(|b| b.get(name));
    Some(RowRejection {
        status: *status,
        code: code.clone(),
        message: message.clone(),
        row_ordinal: field("row_ordinal").and_then(Value::as_i64),
        table: field("table").and_then(Value::as_str).map(str::to_string),
    })
}

#[derive(QueryableByName)]
struct Entry {
    #[diesel(sql_type = BigInt)]
    quarantine_id: i64,
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
    #[diesel(sql_type = Integer)]
    http_status: i32,
    #[diesel(sql_type = Text)]
    error_code: String,
    #[diesel(sql_type = Text)]
    error_message: String,
    #[diesel(sql_type = Text)]
    quarantined_at: String,
}

const ENTRY_COLUMNS: &str = "quarantine_id, table_name, key_json, op, base_row_version, payload, \
     http_status, error_code, error_message, quarantined_at";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Rows waiting in quarantine (a cached prepared statement, like
/// [`pending_row_count`](crate::state::pending_row_count)).
pub(crate) fn quarantined_count(conn: &mut SqliteConnection) -> QueryResult<u64> {
    use crate::state::counted::_sync_quarantine;
    let n: i64 = _sync_quarantine::table.count().get_result(conn)?;
    Ok(n.max(0) as u64)
}

/// Keys the committed outbox carried are accepted now: their quarantine entries (a refused
/// earlier version) are obsolete. Runs inside the transaction that retires the outbox.
pub(crate) fn clear_accepted(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute(
        "DELETE FROM _sync_quarantine WHERE EXISTS (SELECT 1 FROM _sync_outbox_rows AS o \
           WHERE o.table_name = _sync_quarantine.table_name AND o.key_json = _sync_quarantine.key_json)",
    )
}

impl Oversync<'_> {
    /// Local changes the server refused, oldest first. They are not pushed again until
    /// retried, and they do not count in [`PendingSyncStatus::pending_rows`]
    /// (see [`PendingSyncStatus::quarantined_rows`]).
    ///
    /// [`PendingSyncStatus::pending_rows`]: crate::PendingSyncStatus::pending_rows
    /// [`PendingSyncStatus::quarantined_rows`]: crate::PendingSyncStatus::quarantined_rows
    pub fn quarantined_rows(&mut self) -> Result<Vec<QuarantinedRow>> {
        self.ensure_open()?;
        let entries: Vec<Entry> = diesel::sql_query(format!(
            "SELECT {ENTRY_COLUMNS} FROM _sync_quarantine ORDER BY quarantine_id"
        ))
        .load(self.conn)?;
        entries.into_iter().map(|e| self.to_public(e)).collect()
    }

    /// Queues a quarantined change again, built from the row as it is now in the local
    /// table (fix the row first, or the server side). The next `sync()` pushes it; if the
    /// server refuses it again it returns to quarantine with the new error. A row that no
    /// longer exists locally is queued as a delete when the server has it, and otherwise
    /// needs nothing pushed. Fails with [`Error::QuarantineEntryNotFound`] for an unknown id.
    pub fn retry_quarantined(&mut self, id: i64) -> Result<()> {
        self.ensure_open()?;
        let config = self.config;
        self.conn.immediate_transaction(|conn| -> Result<()> {
            let entry = load_entry(conn, id)?;
            let spec = config.table_named(&entry.table_name).ok_or_else(|| {
                Error::InvalidState(format!(
                    "quarantine entry {id} is for unregistered table {}",
                    entry.table_name
                ))
            })?;
            let local_key = codec::local_key_value(spec, &entry.key_json)?;
            let key_column = format!("\"{}\"", spec.key_column.replace('"', "\"\""));
            let key_match = match spec.key_kind {
                KeyKind::Blob => format!("{key_column} = unhex(?)"),
                KeyKind::Text => format!("{key_column} = ?"),
            };
            // A no-op write fires the capture trigger, which queues the current row with
            // the op and base version the server's state calls for.
            let touched = diesel::sql_query(format!(
                "UPDATE \"{}\" SET {key_column} = {key_column} WHERE {key_match}",
                spec.table_name.replace('"', "\"\"")
            ))
            .bind::<Text, _>(&local_key)
            .execute(conn)?;
            if touched == 0 {
                diesel::sql_query(
                    "INSERT INTO _sync_dirty_rows(schema_name, table_name, key_json, op, base_row_version, payload) \
                     SELECT rs.schema_name, rs.table_name, rs.key_json, 'DELETE', rs.row_version, NULL FROM _sync_row_state AS rs \
                     WHERE rs.schema_name = 'main' AND rs.table_name = ? AND rs.key_json = ? AND rs.deleted = 0 \
                     ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET op = 'DELETE', payload = NULL",
                )
                .bind::<Text, _>(&entry.table_name)
                .bind::<Text, _>(&entry.key_json)
                .execute(conn)?;
            }
            delete_entry(conn, id)
        })
    }

    /// Drops a quarantined change for good and brings the local database back to the
    /// server's state: the entry is removed and a snapshot rebuild is scheduled
    /// (`rebuild_required`), which the next `sync()` (or `attach()`) runs first. The rebuild
    /// replaces every synced row with the server's version (a row the server never had is
    /// deleted locally) and keeps all other local changes still waiting to be pushed,
    /// including later edits of this same row. Costs one snapshot download. Fails with
    /// [`Error::QuarantineEntryNotFound`] for an unknown id.
    pub fn discard_quarantined(&mut self, id: i64) -> Result<()> {
        self.ensure_open()?;
        self.conn.immediate_transaction(|conn| -> Result<()> {
            load_entry(conn, id)?;
            delete_entry(conn, id)?;
            conn.batch_execute(
                "UPDATE _sync_attachment_state SET rebuild_required = 1 \
                 WHERE singleton_key = 1 AND binding_state = 'attached'",
            )?;
            Ok(())
        })
    }

    fn to_public(&self, e: Entry) -> Result<QuarantinedRow> {
        let spec = self.config.table_named(&e.table_name).ok_or_else(|| {
            Error::InvalidState(format!(
                "quarantine entry {} is for unregistered table {}",
                e.quarantine_id, e.table_name
            ))
        })?;
        let local_key = codec::local_key_value(spec, &e.key_json)?;
        let op = Op::parse(&e.op)
            .ok_or_else(|| Error::InvalidState(format!("quarantine op {:?}", e.op)))?;
        let payload = e
            .payload
            .as_deref()
            .map(serde_json::from_str::<Map<String, Value>>)
            .transpose()
            .map_err(|err| {
                Error::InvalidState(format!(
                    "quarantine entry {}: payload is not a JSON object: {err}",
                    e.quarantine_id
                ))
            })?;
        Ok(QuarantinedRow {
            id: e.quarantine_id,
            key: codec::key_local_to_wire(spec, &local_key)?,
            table: e.table_name,
            op,
            payload,
            base_row_version: e.base_row_version,
            http_status: u16::try_from(e.http_status).unwrap_or(0),
            error_code: e.error_code,
            error_message: e.error_message,
            quarantined_at: e.quarantined_at,
        })
    }

    /// The table of the outbox row at `ordinal`, if there is one.
    pub(crate) fn outbox_table_at(&mut self, ordinal: i64) -> Result<Option<String>> {
        #[derive(QueryableByName)]
        struct Table {
            #[diesel(sql_type = Text)]
            table_name: String,
        }
        let row: Option<Table> =
            diesel::sql_query("SELECT table_name FROM _sync_outbox_rows WHERE row_ordinal = ?")
                .bind::<BigInt, _>(ordinal)
                .get_result(self.conn)
                .optional()?;
        Ok(row.map(|t| t.table_name))
    }

    /// The refused row `rejection` names, if the server's naming agrees with the outbox
    /// (an ordinal outside `range` or a different table is not trusted: the push bisects).
    pub(crate) fn named_row(
        &mut self,
        rejection: &RowRejection,
        range: std::ops::Range<i64>,
    ) -> Result<Option<i64>> {
        let Some(ordinal) = rejection.row_ordinal.filter(|o| range.contains(o)) else {
            return Ok(None);
        };
        let table = self.outbox_table_at(ordinal)?;
        Ok(match (&rejection.table, table) {
            (_, None) => None,
            (Some(named), Some(actual)) if !named.eq_ignore_ascii_case(&actual) => None,
            _ => Some(ordinal),
        })
    }

    /// Moves the outbox row at `ordinal` into quarantine with the server's error and closes
    /// the gap, in one transaction; emits [`SyncEvent::Quarantined`].
    pub(crate) fn quarantine_outbox_row(
        &mut self,
        ordinal: i64,
        rejection: &RowRejection,
    ) -> Result<()> {
        let config = self.config;
        let (table, key_json) = self.conn.immediate_transaction(|conn| -> Result<_> {
            #[derive(QueryableByName)]
            struct Moved {
                #[diesel(sql_type = Text)]
                table_name: String,
                #[diesel(sql_type = Text)]
                key_json: String,
            }
            let moved: Moved = diesel::sql_query(
                "SELECT table_name, key_json FROM _sync_outbox_rows WHERE row_ordinal = ?",
            )
            .bind::<BigInt, _>(ordinal)
            .get_result(conn)
            .optional()?
            .ok_or_else(|| {
                Error::InvalidState(format!("outbox row {ordinal} to quarantine is missing"))
            })?;
            diesel::sql_query(
                "INSERT INTO _sync_quarantine(schema_name, table_name, key_json, op, base_row_version, payload, http_status, error_code, error_message) \
                 SELECT 'main', table_name, key_json, op, base_row_version, local_payload, ?, ?, ? FROM _sync_outbox_rows WHERE row_ordinal = ? \
                 ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET op = excluded.op, base_row_version = excluded.base_row_version, \
                   payload = excluded.payload, http_status = excluded.http_status, error_code = excluded.error_code, \
                   error_message = excluded.error_message, quarantined_at = excluded.quarantined_at",
            )
            .bind::<Integer, _>(i32::from(rejection.status))
            .bind::<Text, _>(&rejection.code)
            .bind::<Text, _>(&rejection.message)
            .bind::<BigInt, _>(ordinal)
            .execute(conn)?;
            crate::push::remove_outbox_row(conn, ordinal)?;
            Ok((moved.table_name, moved.key_json))
        })?;
        let key = config
            .table_named(&table)
            .and_then(|spec| {
                codec::local_key_value(spec, &key_json)
                    .and_then(|k| codec::key_local_to_wire(spec, &k))
                    .ok()
            })
            .unwrap_or(key_json);
        tracing::warn!(table, key, error = %rejection.describe(), "server refused a row: quarantined");
        self.emit(SyncEvent::Quarantined {
            table,
            key,
            error: rejection.describe(),
        });
        Ok(())
    }

    /// Bisects a refused commit that named no row: keeps the first half of the outbox and
    /// returns the rest to the captured changes, ahead of anything captured since, so it is
    /// pushed next in its original order. A key captured again since the freeze keeps its
    /// newer captured change (built against the same server state, as this push never
    /// committed).
    pub(crate) fn defer_outbox_tail(&mut self) -> Result<()> {
        self.conn.immediate_transaction(|conn| -> Result<()> {
            let rows: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM _sync_outbox_rows")
                .get_result(conn)?;
            if rows.n < 2 {
                return Err(Error::InvalidState(format!(
                    "cannot split an outbox of {} rows",
                    rows.n
                )));
            }
            let keep = rows.n / 2;
            crate::push::return_outbox_rows_to_dirty(conn, keep)?;
            diesel::sql_query(
                "UPDATE _sync_outbox_bundle SET row_count = ? WHERE singleton_key = 1",
            )
            .bind::<BigInt, _>(keep)
            .execute(conn)?;
            Ok(())
        })
    }
}

fn load_entry(conn: &mut SqliteConnection, id: i64) -> Result<Entry> {
    diesel::sql_query(format!(
        "SELECT {ENTRY_COLUMNS} FROM _sync_quarantine WHERE quarantine_id = ?"
    ))
    .bind::<BigInt, _>(id)
    .get_result(conn)
    .optional()?
    .ok_or(Error::QuarantineEntryNotFound { id })
}

fn delete_entry(conn: &mut SqliteConnection, id: i64) -> Result<()> {
    diesel::sql_query("DELETE FROM _sync_quarantine WHERE quarantine_id = ?")
        .bind::<BigInt, _>(id)
        .execute(conn)?;
    Ok(())
}
