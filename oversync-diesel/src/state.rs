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
}

pub(crate) fn operation_state(conn: &mut SqliteConnection) -> QueryResult<OperationState> {
    sql_query(
        "SELECT kind, reason, replacement_source_id FROM _sync_operation_state WHERE singleton_key = 1",
    )
    .get_result(conn)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Rows waiting to reach the server: captured dirty rows plus the frozen outbox.
pub(crate) fn pending_row_count(conn: &mut SqliteConnection) -> QueryResult<u64> {
    let c: Count = sql_query(
        "SELECT (SELECT COUNT(*) FROM _sync_dirty_rows) + (SELECT COUNT(*) FROM _sync_outbox_rows) AS n",
    )
    .get_result(conn)?;
    Ok(c.n.max(0) as u64)
}
