//! Snapshot sessions: a frozen copy of the user's current rows at one bundle_seq, paged,
//! optionally rotating the client's source (`source_replacement`).

use crate::SyncService;
use crate::auth::Actor;
use crate::body::{PathParam, QueryParams, read_body};
use crate::bootstrap::{SCOPE_COLUMN, TableInfo};
use crate::error::SyncError;
use crate::payload::wire_payload_text;
use crate::scope::{require_initialized, rfc3339};
use crate::sql::{quote_ident, quote_literal};
use axum::Json;
use axum::extract::{RawQuery, Request, State};
use axum::http::StatusCode;
use deadpool_postgres::Transaction;
use oversync_protocol::{
    SnapshotChunkResponse, SnapshotRow, SnapshotSession, SnapshotSessionCreateRequest,
    SnapshotSourceReplacement, codes, replacement_reason, sync_key,
};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// A [`SnapshotChunkResponse`] whose payloads are JSON text (the same answer on the wire).
#[derive(Debug, Serialize)]
pub(crate) struct SnapshotChunkBody {
    snapshot_id: String,
    snapshot_bundle_seq: i64,
    rows: Vec<SnapshotRowBody>,
    next_row_ordinal: i64,
    has_more: bool,
}

/// A [`SnapshotRow`] with its payload as JSON text.
#[derive(Debug, Serialize)]
struct SnapshotRowBody {
    schema: String,
    table: String,
    key: oversync_protocol::SyncKey,
    row_version: i64,
    payload: Box<RawValue>,
}

impl SyncService {
    /// Creates a frozen snapshot session.
    ///
    /// If the request is dropped before it answers (the client timed out or went away),
    /// the statement still running for it is cancelled in PostgreSQL and its connection is
    /// closed, so an abandoned build does not keep a backend busy beside the client's retry.
    pub async fn create_snapshot_session(
        &self,
        actor: &Actor,
        req: &SnapshotSessionCreateRequest,
    ) -> Result<SnapshotSession, SyncError> {
        let _op = self.begin_op();
        let mut conn = CancelOnDrop::new(self.client().await?);
        let result = self
            .build_snapshot_session(conn.client()?, actor, req)
            .await;
        conn.finish();
        result
    }

    async fn build_snapshot_session(
        &self,
        client: &mut deadpool_postgres::Object,
        actor: &Actor,
        req: &SnapshotSessionCreateRequest,
    ) -> Result<SnapshotSession, SyncError> {
        let registry = self.registry();
        let limits = &self.config.limits;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        tx.execute(
            "DELETE FROM sync.snapshot_sessions WHERE expires_at <= now()",
            &[],
        )
        .await?;
        let history = require_initialized(&tx, &actor.user_id).await?;
        if let Some(replacement) = &req.source_replacement {
            replace_source(&tx, actor, history.user_pk, replacement).await?;
        }
        let snapshot_id = uuid::Uuid::new_v4().to_string();
        let ttl = limits.snapshot_session_ttl.as_secs_f64();
        let sql = format!(
            "INSERT INTO sync.snapshot_sessions (snapshot_id, user_pk, snapshot_bundle_seq, expires_at)
             VALUES ($1::text::uuid, $2, $3, now() + make_interval(secs => $4)) RETURNING {}",
            rfc3339("expires_at")
        );
        let expires_at: String = tx
            .query_one(
                &sql,
                &[
                    &snapshot_id,
                    &history.user_pk,
                    &history.latest_bundle_seq,
                    &ttl,
                ],
            )
            .await?
            .get(0);
        // Rows are copied inside PostgreSQL (bounded memory here), ordered by table then key.
        let mut offset: i64 = 0;
        let mut byte_count: i64 = 0;
        for info in registry.tables() {
            let counted = tx
                .query_one(
                    &materialize_sql(info),
                    &[&snapshot_id, &offset, &actor.user_id, &history.user_pk],
                )
                .await?;
            offset += counted.get::<_, i64>(0);
            byte_count += counted.get::<_, i64>(1);
        }
        if limits.max_rows_per_snapshot_session > 0 && offset > limits.max_rows_per_snapshot_session
        {
            return Err(SyncError::Internal(format!(
                "snapshot row_count {offset} exceeds limit {}",
                limits.max_rows_per_snapshot_session
            )));
        }
        if limits.max_bytes_per_snapshot_session > 0
            && byte_count > limits.max_bytes_per_snapshot_session
        {
            return Err(SyncError::Internal(format!(
                "snapshot byte_count {byte_count} exceeds limit {}",
                limits.max_bytes_per_snapshot_session
            )));
        }
        tx.execute(
            "UPDATE sync.snapshot_sessions SET row_count = $2, byte_count = $3
             WHERE snapshot_id = $1::text::uuid",
            &[&snapshot_id, &offset, &byte_count],
        )
        .await?;
        tx.commit().await?;
        Ok(SnapshotSession {
            snapshot_id,
            snapshot_bundle_seq: history.latest_bundle_seq,
            row_count: offset,
            byte_count: Some(byte_count),
            expires_at,
        })
    }

    /// One page of a snapshot session.
    pub async fn snapshot_chunk(
        &self,
        actor: &Actor,
        snapshot_id: &str,
        after_row_ordinal: i64,
        max_rows: Option<i64>,
    ) -> Result<SnapshotChunkResponse, SyncError> {
        let body = self
            .snapshot_chunk_body(actor, snapshot_id, after_row_ordinal, max_rows)
            .await?;
        let mut rows = Vec::with_capacity(body.rows.len());
        for row in body.rows {
            rows.push(SnapshotRow {
                schema: row.schema,
                table: row.table,
                key: row.key,
                row_version: row.row_version,
                payload: serde_json::from_str(row.payload.get())
                    .map_err(|e| SyncError::internal("snapshot payload", e))?,
            });
        }
        Ok(SnapshotChunkResponse {
            snapshot_id: body.snapshot_id,
            snapshot_bundle_seq: body.snapshot_bundle_seq,
            rows,
            next_row_ordinal: body.next_row_ordinal,
            has_more: body.has_more,
        })
    }

    /// [`SyncService::snapshot_chunk`] as the HTTP answer writes it: each payload is the JSON
    /// text the page already holds, not parsed into a `Value` to be written out again.
    pub(crate) async fn snapshot_chunk_body(
        &self,
        actor: &Actor,
        snapshot_id: &str,
        after_row_ordinal: i64,
        max_rows: Option<i64>,
    ) -> Result<SnapshotChunkBody, SyncError> {
        let _op = self.begin_op();
        let invalid = |m: &str| SyncError::bad_request(codes::SNAPSHOT_CHUNK_INVALID, m);
        if after_row_ordinal < 0 {
            return Err(invalid("after_row_ordinal must be >= 0"));
        }
        let limits = &self.config.limits;
        let max_rows = max_rows.unwrap_or(limits.default_rows_per_snapshot_chunk);
        if max_rows <= 0 {
            return Err(invalid("max_rows must be > 0"));
        }
        let max_rows = max_rows.min(limits.max_rows_per_snapshot_chunk);
        let registry = self.registry();
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let session = load_session(&tx, actor, snapshot_id).await?;
        if session.expired {
            return Err(SyncError::gone(
                codes::SNAPSHOT_SESSION_EXPIRED,
                format!("snapshot session {snapshot_id} has expired; start a new snapshot session"),
            ));
        }
        // Ordinals are dense (`1..=row_count`, see `materialize_sql`), so a page is a range
        // of the primary key. `ORDER BY .. LIMIT` alone let a planner without statistics on
        // the freshly filled table pick a bitmap scan of every row after the cursor plus a
        // sort: about 30 ms a page at 100k rows, against 2 ms for the range.
        let last = after_row_ordinal
            .saturating_add(max_rows)
            .min(session.row_count);
        let page = tx
            .query(
                "SELECT table_id, key_text, row_version, payload FROM sync.snapshot_rows
                 WHERE user_pk = $1 AND snapshot_id = $2::text::uuid
                   AND row_ordinal > $3 AND row_ordinal <= $4
                 ORDER BY row_ordinal",
                &[&session.user_pk, &snapshot_id, &after_row_ordinal, &last],
            )
            .await?;
        if page.len() as i64 != (last - after_row_ordinal).max(0) {
            // The rows of an unlogged table do not survive a crash of PostgreSQL.
            return Err(SyncError::not_found(
                codes::SNAPSHOT_SESSION_NOT_FOUND,
                format!(
                    "snapshot session {snapshot_id} lost its rows (the database restarted); start a new snapshot session"
                ),
            ));
        }
        let has_more = last < session.row_count;
        let mut rows = Vec::with_capacity(page.len());
        for r in &page {
            let table_id: i32 = r.get(0);
            let key_text: String = r.get(1);
            let db_payload: String = r.get(3);
            let info = registry
                .by_id(table_id)
                .ok_or_else(|| SyncError::Internal(format!("unknown table_id {table_id}")))?;
            let wire = wire_payload_text(info, &db_payload)
                .map_err(|e| SyncError::internal("snapshot payload", e))?;
            rows.push(SnapshotRowBody {
                schema: info.schema.clone(),
                table: info.table.clone(),
                key: sync_key(&info.key_column, &key_text),
                row_version: r.get(2),
                payload: RawValue::from_string(wire)
                    .map_err(|e| SyncError::internal("snapshot payload", e))?,
            });
        }
        Ok(SnapshotChunkBody {
            snapshot_id: snapshot_id.to_owned(),
            snapshot_bundle_seq: session.snapshot_bundle_seq,
            next_row_ordinal: after_row_ordinal + rows.len() as i64,
            rows,
            has_more,
        })
    }

    /// Deletes a snapshot session.
    pub async fn delete_snapshot_session(
        &self,
        actor: &Actor,
        snapshot_id: &str,
    ) -> Result<(), SyncError> {
        let _op = self.begin_op();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        load_session(&tx, actor, snapshot_id).await?;
        tx.execute(
            "DELETE FROM sync.snapshot_sessions WHERE snapshot_id = $1::text::uuid",
            &[&snapshot_id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The statement copying one table's rows of the user into `sync.snapshot_rows`; returns
/// `(rows, payload bytes)`. Parameters: `$1` snapshot id, `$2` ordinal offset, `$3` user id
/// (scope), `$4` user_pk.
///
/// The row version is a scalar subquery probing `sync.row_state` by its whole primary key,
/// not a `LEFT JOIN`. Right after a bulk push, before any ANALYZE, PostgreSQL estimates
/// the user's rows with default selectivities (about 60 business rows, 1 `row_state` row)
/// and planned the join as a nested loop whose inner side was the index scan on
/// `(user_pk, table_id)` alone, materialized and filtered by `key_text` for every outer
/// row: n x n comparisons (20k rows: 400M; minutes at 300k). The subquery leaves the
/// planner no join order to get wrong: one unique-index probe per row, so the cost is
/// linear in rows (n log n) whatever the statistics say. See docs/performance.md.
fn materialize_sql(info: &TableInfo) -> String {
    format!(
        "WITH copied AS (
           INSERT INTO sync.snapshot_rows (user_pk, snapshot_id, row_ordinal, table_id, key_text, row_version, payload)
           SELECT $4, $1::text::uuid, $2 + row_number() OVER (ORDER BY s.k COLLATE \"C\"), {id},
                  s.k,
                  COALESCE((SELECT rs.bundle_seq FROM sync.row_state rs
                            WHERE rs.user_pk = $4 AND rs.table_id = {id} AND rs.key_text = s.k), 0),
                  s.p
           FROM (SELECT src.{key}::text AS k, to_jsonb(src)::text AS p
                 FROM {table} AS src WHERE src.{scope} = $3) AS s
           RETURNING octet_length(payload) AS bytes
         )
         SELECT count(*)::bigint, COALESCE(sum(bytes), 0)::bigint FROM copied",
        id = quote_literal(&info.id.to_string()) + "::int",
        key = quote_ident(&info.key_column),
        table = info.ident(),
        scope = quote_ident(SCOPE_COLUMN),
    )
}

/// A pooled connection for a snapshot build. Dropped unfinished (the request future was
/// dropped while a statement ran), it cancels that statement and closes the connection:
/// dropping a query future alone leaves the backend running it to the end, and the
/// connection must not return to the pool, where a late cancel could hit another request.
struct CancelOnDrop {
    client: Option<deadpool_postgres::Object>,
    cancel: tokio_postgres::CancelToken,
}

impl CancelOnDrop {
    fn new(client: deadpool_postgres::Object) -> Self {
        let cancel = client.cancel_token();
        Self {
            client: Some(client),
            cancel,
        }
    }

    fn client(&mut self) -> Result<&mut deadpool_postgres::Object, SyncError> {
        self.client
            .as_mut()
            .ok_or_else(|| SyncError::Internal("snapshot connection already released".into()))
    }

    /// The build ended (either way): the connection goes back to the pool.
    fn finish(mut self) {
        self.client = None;
    }
}

/// How often an abandoned build's statement is cancelled again while it has not ended.
const CANCEL_RETRY: std::time::Duration = std::time::Duration::from_millis(250);
/// Cancels sent for one abandoned build before its connection is closed regardless.
const CANCEL_ATTEMPTS: u32 = 40;

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let detached = deadpool_postgres::Object::take(client);
        let cancel = self.cancel.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // One cancel is not enough: the dropped future may have queued its statement
            // without the backend having received it yet, and PostgreSQL ignores a cancel that
            // arrives while the backend waits for a command; the statement then starts later
            // and, blocked on a lock, never notices the closed socket. So cancel until the
            // backend answers a probe queued behind the statement: responses come in order,
            // so an answer means the statement has ended.
            {
                let probe = detached.simple_query("ROLLBACK");
                tokio::pin!(probe);
                for _ in 0..CANCEL_ATTEMPTS {
                    if let Err(e) = cancel.cancel_query(tokio_postgres::NoTls).await {
                        tracing::warn!(error = %e, "cancelling an abandoned snapshot build failed");
                    }
                    if tokio::time::timeout(CANCEL_RETRY, &mut probe).await.is_ok() {
                        break;
                    }
                }
            }
            // Closed only after the statement ended (or the attempts ran out), never pooled.
            drop(detached);
        });
    }
}

/// A snapshot session as its pages need it.
struct SessionRow {
    user_pk: i64,
    snapshot_bundle_seq: i64,
    /// Rows materialized: ordinals run `1..=row_count`.
    row_count: i64,
    expired: bool,
}

/// The session `snapshot_id`, which `actor` must own.
async fn load_session(
    tx: &Transaction<'_>,
    actor: &Actor,
    snapshot_id: &str,
) -> Result<SessionRow, SyncError> {
    let not_found = || {
        SyncError::not_found(
            codes::SNAPSHOT_SESSION_NOT_FOUND,
            format!("snapshot session {snapshot_id} was not found"),
        )
    };
    if uuid::Uuid::parse_str(snapshot_id).is_err() {
        return Err(not_found());
    }
    let row = tx
        .query_opt(
            "SELECT us.user_id, ss.snapshot_bundle_seq, ss.expires_at <= now(), ss.user_pk, ss.row_count
             FROM sync.snapshot_sessions ss JOIN sync.user_state us ON us.user_pk = ss.user_pk
             WHERE ss.snapshot_id = $1::text::uuid",
            &[&snapshot_id],
        )
        .await?
        .ok_or_else(not_found)?;
    let owner: String = row.get(0);
    if owner != actor.user_id {
        return Err(SyncError::forbidden(
            codes::SNAPSHOT_SESSION_FORBIDDEN,
            format!("snapshot session {snapshot_id} does not belong to the authenticated user"),
        ));
    }
    Ok(SessionRow {
        user_pk: row.get(3),
        snapshot_bundle_seq: row.get(1),
        row_count: row.get(4),
        expired: row.get(2),
    })
}

/// Retires the actor's source and reserves its replacement, atomically with the snapshot.
async fn replace_source(
    tx: &Transaction<'_>,
    actor: &Actor,
    user_pk: i64,
    r: &SnapshotSourceReplacement,
) -> Result<(), SyncError> {
    let invalid = |m: &str| SyncError::bad_request(codes::SNAPSHOT_SESSION_INVALID, m);
    let previous = r.previous_source_id.trim();
    let new = r.new_source_id.trim();
    let reason = r.reason.trim();
    if previous != actor.source_id {
        return Err(invalid(
            "previous_source_id must match authenticated source_id",
        ));
    }
    if new.is_empty() {
        return Err(invalid("new_source_id is required for source replacement"));
    }
    if new.len() > crate::auth::MAX_SOURCE_ID_LEN {
        return Err(invalid("new_source_id is too long"));
    }
    // A source id travels in a header, which cannot carry control characters (and
    // PostgreSQL text cannot hold NUL).
    if new.chars().any(|c| c.is_control() && c != '\t') {
        return Err(invalid("new_source_id must not contain control characters"));
    }
    if new == previous {
        return Err(invalid("new_source_id must differ from previous_source_id"));
    }
    if !replacement_reason::ALL.contains(&reason) {
        return Err(invalid("source replacement reason is unsupported"));
    }
    let state = |id: &str| {
        let id = id.to_owned();
        async move {
            tx.query_opt(
                "SELECT state, replaced_by_source_id FROM sync.source_state
                 WHERE user_pk = $1 AND source_id = $2 FOR UPDATE",
                &[&user_pk, &id],
            )
            .await
            .map(|r| r.map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))))
        }
    };
    let previous_state = state(previous).await?;
    let new_state = state(new).await?;
    let reserve = || async {
        tx.execute(
            "INSERT INTO sync.source_state (user_pk, source_id, state) VALUES ($1, $2, 'reserved')",
            &[&user_pk, &new],
        )
        .await
    };
    match previous_state {
        Some((s, replaced_by)) if s == "retired" => {
            // Retrying the same rotation is allowed; a different replacement is not.
            if replaced_by.as_deref() != Some(new) {
                return Err(SyncError::SourceRetired {
                    source_id: previous.to_owned(),
                    replaced_by,
                });
            }
            match new_state {
                None => {
                    reserve().await?;
                }
                Some((s, _)) if s == "reserved" || s == "active" => {}
                Some(_) => {
                    return Err(SyncError::conflict(
                        codes::SOURCE_REPLACEMENT_INVALID,
                        format!("replacement source {new} is not available for rotated rebuild"),
                    ));
                }
            }
        }
        _ => {
            if new_state.is_some() {
                return Err(SyncError::conflict(
                    codes::SOURCE_REPLACEMENT_INVALID,
                    format!(
                        "replacement source {new} is already known for user {}",
                        actor.user_id
                    ),
                ));
            }
            reserve().await?;
            tx.execute(
                "INSERT INTO sync.source_state (user_pk, source_id, state, replaced_by_source_id, retirement_reason)
                 VALUES ($1, $2, 'retired', $3, $4)
                 ON CONFLICT (user_pk, source_id) DO UPDATE
                 SET state = 'retired', replaced_by_source_id = EXCLUDED.replaced_by_source_id,
                     retirement_reason = EXCLUDED.retirement_reason",
                &[&user_pk, &previous, &new, &reason],
            )
            .await?;
        }
    }
    Ok(())
}

pub(crate) async fn create(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    request: Request,
) -> Result<Json<SnapshotSession>, SyncError> {
    let bytes = read_body(request, &()).await?;
    let text = String::from_utf8_lossy(&bytes);
    let req = if text.trim().is_empty() || text.trim() == "null" {
        SnapshotSessionCreateRequest::default()
    } else {
        crate::body::parse_object(&bytes).map_err(|e| {
            SyncError::bad_request(
                codes::SNAPSHOT_SESSION_INVALID,
                format!("failed to parse snapshot session request: {e}"),
            )
        })?
    };
    Ok(Json(service.create_snapshot_session(&actor, &req).await?))
}

pub(crate) async fn chunk(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    PathParam(snapshot_id): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Json<SnapshotChunkBody>, SyncError> {
    let code = codes::SNAPSHOT_CHUNK_INVALID;
    let q = QueryParams::parse(query.as_deref());
    let after = q.int("after_row_ordinal", code)?.unwrap_or(0);
    let max_rows = q.int("max_rows", code)?;
    let resp = service
        .snapshot_chunk_body(&actor, &snapshot_id, after, max_rows)
        .await?;
    service.metrics.snapshot_rows(resp.rows.len());
    Ok(Json(resp))
}

pub(crate) async fn delete(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    PathParam(snapshot_id): PathParam,
) -> Result<StatusCode, SyncError> {
    service
        .delete_snapshot_session(&actor, &snapshot_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
