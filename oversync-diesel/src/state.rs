//! Typed access to the singleton `_sync_*` state rows.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, SqliteConnection, sql_query};

#[derive(QueryableByName, Debug, Clone)]
pub(crate) struct AttachmentState {
    #[diesel(sql_type = Text)]
    pub current_source_id: String,
    #[diesel(sql_type = Text)]
    pub binding_state: String,
    #[diesel(sql_type = Text)]
    pub attached_user_id: String,
    #[diesel(sql_type = Text)]
    pub schema_name: String,
    #[diesel(sql_type = BigInt)]
    pub last_bundle_seq_seen: i64,
    #[diesel(sql_type = BigInt)]
    pub rebuild_required: i64,
}

pub(crate) fn attachment_state(conn: &mut SqliteConnection) -> QueryResult<AttachmentState> {
    sql_query(
        "SELECT current_source_id, binding_state, attached_user_id, schema_name, \
         last_bundle_seq_seen, rebuild_required FROM _sync_attachment_state WHERE singleton_key = 1",
    )
    .get_result(conn)
}

#[derive(QueryableByName, Debug, Clone)]
pub(crate) struct OperationState {
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub replacement_source_id: String,
    /// The user a pending `remote_replace` hydrates for.
    #[diesel(sql_type = Text)]
    pub target_user_id: String,
}

pub(crate) fn operation_state(conn: &mut SqliteConnection) -> QueryResult<OperationState> {
    sql_query(
        "SELECT kind, reason, replacement_source_id, target_user_id FROM _sync_operation_state WHERE singleton_key = 1",
    )
    .get_result(conn)
}

/// The metadata columns the status counts read, declared for Diesel's query builder: its
/// queries are prepared once per connection and kept in the connection's statement cache,
/// where an `sql_query` is parsed and planned again on every call.
pub(crate) mod counted {
    diesel::table! {
        _sync_dirty_rows (dirty_ordinal) {
            dirty_ordinal -> BigInt,
        }
    }
    diesel::table! {
        _sync_outbox_bundle (singleton_key) {
            singleton_key -> BigInt,
            state -> Text,
            row_count -> BigInt,
        }
    }
    diesel::table! {
        _sync_quarantine (quarantine_id) {
            quarantine_id -> BigInt,
        }
    }
}

/// Rows waiting to reach the server: captured dirty rows plus the frozen outbox.
///
/// Status reads run this beside a sync, on a connection whose page cache each of the
/// engine's commits invalidates, so it must not walk the outbox: the frozen bundle's
/// `row_count` is kept equal to its rows by every path that changes them (freeze, quarantine,
/// bisection, retire). The dirty set is counted on its smallest index (SQLite picks it for a
/// bare `COUNT(*)`). Both statements are cached prepared statements (see [`counted`]); run
/// them in one read transaction for one snapshot.
pub(crate) fn pending_row_count(conn: &mut SqliteConnection) -> QueryResult<u64> {
    use counted::{_sync_dirty_rows, _sync_outbox_bundle};
    let dirty: i64 = _sync_dirty_rows::table.count().get_result(conn)?;
    let outbox: Option<(String, i64)> = _sync_outbox_bundle::table
        .filter(_sync_outbox_bundle::singleton_key.eq(1))
        .select((_sync_outbox_bundle::state, _sync_outbox_bundle::row_count))
        .first(conn)
        .optional()?;
    let frozen = match outbox {
        Some((state, rows)) if state != "none" => rows,
        _ => 0,
    };
    Ok((dirty + frozen).max(0) as u64)
}

/// The frozen push (`_sync_outbox_bundle`).
#[derive(QueryableByName, Debug, Clone)]
pub(crate) struct OutboxBundle {
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Text)]
    pub source_id: String,
    #[diesel(sql_type = BigInt)]
    pub source_bundle_id: i64,
    #[diesel(sql_type = BigInt)]
    pub row_count: i64,
    #[diesel(sql_type = Text)]
    pub initialization_id: String,
    #[diesel(sql_type = Text)]
    pub remote_bundle_hash: String,
    #[diesel(sql_type = BigInt)]
    pub remote_bundle_seq: i64,
}

pub(crate) fn outbox_bundle(conn: &mut SqliteConnection) -> QueryResult<OutboxBundle> {
    sql_query(
        "SELECT state, source_id, source_bundle_id, row_count, initialization_id, remote_bundle_hash, remote_bundle_seq \
         FROM _sync_outbox_bundle WHERE singleton_key = 1",
    )
    .get_result(conn)
}

pub(crate) fn next_source_bundle_id(
    conn: &mut SqliteConnection,
    source_id: &str,
) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Next {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let next: Option<Next> =
        sql_query("SELECT next_source_bundle_id AS n FROM _sync_source_state WHERE source_id = ?")
            .bind::<Text, _>(source_id)
            .get_result(conn)
            .optional()?;
    Ok(next.map(|n| n.n).unwrap_or(1))
}

pub(crate) fn pending_initialization_id(conn: &mut SqliteConnection) -> QueryResult<String> {
    #[derive(QueryableByName)]
    struct Init {
        #[diesel(sql_type = Text)]
        id: String,
    }
    let row: Init =
        sql_query("SELECT pending_initialization_id AS id FROM _sync_attachment_state WHERE singleton_key = 1")
            .get_result(conn)?;
    Ok(row.id)
}

/// Enters durable source-recovery mode; app writes to synced tables fail until `rebuild()`.
pub(crate) fn enter_source_recovery(conn: &mut SqliteConnection, reason: &str) -> QueryResult<()> {
    sql_query("UPDATE _sync_operation_state SET kind = 'source_recovery', reason = ? WHERE singleton_key = 1")
        .bind::<Text, _>(reason)
        .execute(conn)?;
    Ok(())
}

/// Dirty keys as (table, key_json): rows with local intent newer than a replayed bundle.
pub(crate) fn dirty_keys(
    conn: &mut SqliteConnection,
) -> QueryResult<std::collections::HashSet<(String, String)>> {
    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        table_name: String,
        #[diesel(sql_type = Text)]
        key_json: String,
    }
    let keys: Vec<Key> =
        sql_query("SELECT table_name, key_json FROM _sync_dirty_rows").load(conn)?;
    Ok(keys
        .into_iter()
        .map(|k| (k.table_name, k.key_json))
        .collect())
}

/// Why the source was rotated locally (recorded in logs and events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RotationCause {
    /// `open()` found the database file is not the one the source id was created in (a copy,
    /// a restored backup, or a move to another file system).
    FileCopied,
    /// The server answered this outbox's source tuple with another install's bundle.
    SourceCollision,
}

/// Moves the install to a fresh source id the server has never seen, in one transaction the
/// caller owns, keeping every local intent: a frozen outbox not (known to be) committed as
/// this install's is re-tagged as bundle 1 of the new source, so the next push sends it again.
///
/// Nothing is announced to the server: another copy of this database may still use the old
/// source, and a server-side replacement would be followed by that copy too (`source_retired`
/// names the replacement), colliding again. A fresh unannounced source starts its own sequence.
pub(crate) fn rotate_source_locally(
    conn: &mut SqliteConnection,
    cause: RotationCause,
) -> QueryResult<String> {
    let previous = attachment_state(conn)?.current_source_id;
    let fresh = uuid::Uuid::new_v4().to_string();
    sql_query("INSERT INTO _sync_source_state(source_id) VALUES (?)")
        .bind::<Text, _>(&fresh)
        .execute(conn)?;
    sql_query("UPDATE _sync_source_state SET replaced_by_source_id = ? WHERE source_id = ?")
        .bind::<Text, _>(&fresh)
        .bind::<Text, _>(&previous)
        .execute(conn)?;
    sql_query("UPDATE _sync_attachment_state SET current_source_id = ? WHERE singleton_key = 1")
        .bind::<Text, _>(&fresh)
        .execute(conn)?;
    // A collision means the "committed" bundle was someone else's: ours was never committed.
    // A copy keeps a committed_remote outbox as it is: that bundle is on the server and both
    // copies hold the same intent, so replaying it (checked row by row) is right for either.
    let requeue_committed = cause == RotationCause::SourceCollision;
    sql_query(
        "UPDATE _sync_outbox_rows SET source_bundle_id = 1 WHERE EXISTS (SELECT 1 FROM _sync_outbox_bundle \
         WHERE singleton_key = 1 AND (state = 'prepared' OR (state = 'committed_remote' AND ?)))",
    )
    .bind::<diesel::sql_types::Bool, _>(requeue_committed)
    .execute(conn)?;
    sql_query(
        "UPDATE _sync_outbox_bundle SET state = 'prepared', source_id = ?, source_bundle_id = 1, \
         canonical_request_hash = '', remote_bundle_hash = '', remote_bundle_seq = 0 \
         WHERE singleton_key = 1 AND (state = 'prepared' OR (state = 'committed_remote' AND ?))",
    )
    .bind::<Text, _>(&fresh)
    .bind::<diesel::sql_types::Bool, _>(requeue_committed)
    .execute(conn)?;
    tracing::warn!(?cause, %previous, current = %fresh, "oversync source rotated locally");
    Ok(fresh)
}

/// The integer value of `PRAGMA <name>` on this connection (a pragma with one result).
pub(crate) fn pragma_int(conn: &mut SqliteConnection, name: &'static str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = BigInt)]
        value: i64,
    }
    // The table-valued form names its one column, so one struct reads any such pragma.
    let v: Value =
        sql_query(format!("SELECT {name} AS value FROM pragma_{name}")).get_result(conn)?;
    Ok(v.value)
}

/// SQLite's `PRAGMA data_version`: it changes when another connection commits to the
/// database, never for this connection's own commits.
pub(crate) fn data_version(conn: &mut SqliteConnection) -> QueryResult<i64> {
    pragma_int(conn, "data_version")
}

/// The highest row version in `_sync_row_state` (0 when empty).
pub(crate) fn newest_row_version(conn: &mut SqliteConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Newest {
        #[diesel(sql_type = BigInt)]
        v: i64,
    }
    let n: Newest = sql_query("SELECT IFNULL(MAX(row_version), 0) AS v FROM _sync_row_state")
        .get_result(conn)?;
    Ok(n.v)
}
