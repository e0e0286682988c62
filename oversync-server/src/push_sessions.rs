//! Chunked push: create a staging session for `(source_id, source_bundle_id)`, upload
//! contiguous chunks, commit them as one authoritative bundle, or delete the session.

use crate::SyncService;
use crate::auth::Actor;
use crate::body::{JsonBody, PathParam};
use crate::bootstrap::{Registry, SCOPE_COLUMN, TableInfo, is_valid_identifier};
use crate::capture::{CommittedBundle, finalize_bundle, op_code, op_from_code};
use crate::error::{RejectedRow, SyncError};
use crate::payload::{db_payload_from_wire, normalize_key, wire_payload_text};
use crate::scope::{self, ACTIVATE_SOURCE, INITIALIZED, INITIALIZING, UNINITIALIZED};
use crate::sql::{self, is_data_error, quote_ident};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use deadpool_postgres::GenericClient;
use oversync_protocol::{
    Op, PushConflictDetails, PushRequestRow, PushSessionChunkRequest, PushSessionChunkResponse,
    PushSessionCommitResponse, PushSessionCreateRequest, PushSessionCreateResponse, codes,
    sync_key,
};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// One validated pushed row in storage form.
struct PreparedRow {
    table_id: i32,
    key_text: String,
    op: Op,
    base_row_version: i64,
    /// Database-form after-image (canonical JSON), `None` for DELETE.
    payload: Option<String>,
}

/// Validates a chunk's rows; a refusal names the index of the row (within `rows`) it is about.
fn prepare_rows(
    registry: &Registry,
    rows: &[PushRequestRow],
) -> Result<Vec<PreparedRow>, (usize, String)> {
    let mut seen = HashSet::new();
    let mut prepared = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        prepared.push(prepare_row(registry, row, &mut seen).map_err(|e| (index, e))?);
    }
    Ok(prepared)
}

fn prepare_row(
    registry: &Registry,
    row: &PushRequestRow,
    seen: &mut HashSet<(i32, String)>,
) -> Result<PreparedRow, String> {
    let schema = match row.schema.trim().to_ascii_lowercase() {
        s if s.is_empty() => "public".to_owned(),
        s => s,
    };
    let table = row.table.trim().to_ascii_lowercase();
    if !is_valid_identifier(&schema) {
        return Err(format!("invalid schema name {:?}", row.schema));
    }
    if !is_valid_identifier(&table) {
        return Err(format!("invalid table name {:?}", row.table));
    }
    let info = registry
        .by_name(&schema, &table)
        .ok_or_else(|| format!("table {schema}.{table} is not registered"))?;
    let key_text = normalize_key(info, &row.key)?;
    if !seen.insert((info.id, key_text.clone())) {
        return Err(format!(
            "duplicate target row in push request: {schema}.{table} {key_text}"
        ));
    }
    if row.base_row_version < 0 {
        return Err(format!(
            "base_row_version for {schema}.{table} {key_text} must be >= 0"
        ));
    }
    let payload = match (row.op, &row.payload) {
        (Op::Delete, None | Some(Value::Null)) => None,
        (Op::Delete, Some(_)) => {
            return Err(format!(
                "DELETE for {schema}.{table} must not include payload"
            ));
        }
        (op, None | Some(Value::Null)) => {
            return Err(format!("{op} for {schema}.{table} requires payload"));
        }
        (_, Some(p)) => Some(db_payload_from_wire(info, &key_text, p)?),
    };
    Ok(PreparedRow {
        table_id: info.id,
        key_text,
        op: row.op,
        base_row_version: row.base_row_version,
        payload,
    })
}

/// Registered tables whose pushed payloads name columns the registry does not know.
fn tables_with_unknown_columns(
    registry: &Registry,
    rows: &[PushRequestRow],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for row in rows {
        let schema = match row.schema.trim().to_ascii_lowercase() {
            s if s.is_empty() => "public".to_owned(),
            s => s,
        };
        let table = row.table.trim().to_ascii_lowercase();
        let Some(info) = registry.by_name(&schema, &table) else {
            continue;
        };
        let Some(Value::Object(payload)) = &row.payload else {
            continue;
        };
        let unknown = payload.keys().any(|c| {
            let c = c.to_ascii_lowercase();
            c != SCOPE_COLUMN && !info.columns.contains_key(&c)
        });
        let name = (info.schema.clone(), info.table.clone());
        if unknown && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

struct Session {
    user_pk: i64,
    user_id: String,
    source_id: String,
    source_bundle_id: i64,
    planned_row_count: i64,
    next_expected_row_ordinal: i64,
    initialization_id: Option<String>,
}

/// Loads and locks a push session owned by `actor`; other users' sessions are 403.
async fn load_session(
    tx: &impl GenericClient,
    actor: &Actor,
    push_id: &str,
    check_expiry: bool,
) -> Result<Session, SyncError> {
    let not_found = || {
        SyncError::not_found(
            codes::PUSH_SESSION_NOT_FOUND,
            format!("push session {push_id} was not found"),
        )
    };
    if uuid::Uuid::parse_str(push_id).is_err() {
        return Err(not_found());
    }
    let row = sql::query_opt(
        tx,
        "SELECT ps.user_pk, us.user_id, ps.source_id, ps.source_bundle_id, ps.planned_row_count,
                    ps.next_expected_row_ordinal, ps.initialization_id::text, ps.expires_at <= now()
             FROM sync.push_sessions ps JOIN sync.user_state us ON us.user_pk = ps.user_pk
             WHERE ps.push_id = $1::text::uuid FOR UPDATE OF ps",
        &[&push_id],
    )
    .await?
    .ok_or_else(not_found)?;
    let session = Session {
        user_pk: row.get(0),
        user_id: row.get(1),
        source_id: row.get(2),
        source_bundle_id: row.get(3),
        planned_row_count: row.get(4),
        next_expected_row_ordinal: row.get(5),
        initialization_id: row.get(6),
    };
    if session.user_id != actor.user_id {
        return Err(SyncError::forbidden(
            codes::PUSH_SESSION_FORBIDDEN,
            format!("push session {push_id} does not belong to the authenticated user"),
        ));
    }
    let expired: bool = row.get(7);
    if check_expiry && expired {
        return Err(SyncError::gone(
            codes::PUSH_SESSION_EXPIRED,
            format!("push session {push_id} has expired; start a new push session"),
        ));
    }
    Ok(session)
}

/// Drops an earlier session of the same source bundle (a create retried).
const DELETE_SOURCE_SESSION: &str = "DELETE FROM sync.push_sessions WHERE user_pk = $1 AND source_id = $2 AND source_bundle_id = $3";

const INSERT_SESSION: &str =
    "INSERT INTO sync.push_sessions (push_id, user_pk, source_id, source_bundle_id,
         planned_row_count, initialization_id, expires_at)
     VALUES ($1::text::uuid, $2, $3, $4, $5, $6::text::uuid, now() + make_interval(secs => $7))";

/// The staged rows of a session, in order.
const STAGED_ROWS: &str = "SELECT row_ordinal, table_id, key_text, op, base_row_version, payload
     FROM sync.push_session_rows WHERE push_id = $1::text::uuid ORDER BY row_ordinal";

/// Checks that the rows of [`STAGED_ROWS`] are the whole planned bundle, contiguous and
/// without duplicate targets, and returns them.
fn staged_rows(
    stored: &[tokio_postgres::Row],
    session: &Session,
) -> Result<Vec<PreparedRow>, SyncError> {
    let invalid = |m: String| SyncError::bad_request(codes::PUSH_COMMIT_INVALID, m);
    if session.next_expected_row_ordinal != session.planned_row_count
        || stored.len() as i64 != session.planned_row_count
    {
        return Err(invalid(format!(
            "staged row count {} does not match planned_row_count {}",
            stored.len(),
            session.planned_row_count
        )));
    }
    let mut rows = Vec::with_capacity(stored.len());
    let mut seen = HashSet::new();
    for (i, r) in stored.iter().enumerate() {
        let ordinal: i64 = r.get(0);
        if ordinal != i as i64 {
            return Err(invalid(format!(
                "staged rows are not contiguous at row_ordinal {i}"
            )));
        }
        let row = PreparedRow {
            table_id: r.get(1),
            key_text: r.get(2),
            op: op_from_code(r.get(3))?,
            base_row_version: r.get(4),
            payload: r.get(5),
        };
        if !seen.insert((row.table_id, row.key_text.clone())) {
            return Err(invalid(format!(
                "duplicate target row in staged push session: table {} key {}",
                row.table_id, row.key_text
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}

impl SyncService {
    /// `POST /sync/push-sessions`.
    pub async fn create_push_session(
        &self,
        actor: &Actor,
        req: &PushSessionCreateRequest,
    ) -> Result<PushSessionCreateResponse, SyncError> {
        let _op = self.begin_op();
        let invalid = |m: &str| SyncError::bad_request(codes::PUSH_SESSION_INVALID, m);
        if req.source_bundle_id <= 0 {
            return Err(invalid("source_bundle_id must be > 0"));
        }
        if req.planned_row_count <= 0 {
            return Err(invalid("planned_row_count must be > 0"));
        }
        let init_id = req
            .initialization_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let ttl = self.config.limits.initialization_lease_ttl;
        if init_id.is_none()
            && let Some(response) = self.create_pipelined(actor, req).await?
        {
            return Ok(response);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        sql::exec(&tx, scope::LOCK_SOURCE, &[&actor.user_id, &actor.source_id]).await?;
        scope::lock_user(&tx, &actor.user_id).await?;
        sql::exec(
            &tx,
            "DELETE FROM sync.push_sessions WHERE expires_at <= now()",
            &[],
        )
        .await?;
        let user_pk = scope::ensure_user(&tx, &actor.user_id).await?;
        let state = scope::load_scope_for_update(&tx, user_pk).await?;
        let mut session_init_id: Option<String> = None;
        match state.state {
            UNINITIALIZED if init_id.is_some() => {
                return Err(SyncError::gone(
                    codes::INITIALIZATION_EXPIRED,
                    "initialization lease is no longer active",
                ));
            }
            UNINITIALIZED => {
                return Err(SyncError::conflict(
                    codes::SCOPE_UNINITIALIZED,
                    format!("sync scope for user {} is not initialized", actor.user_id),
                ));
            }
            INITIALIZING => {
                let Some(id) = init_id else {
                    return Err(invalid(
                        "initialization_id is required while the scope is initializing",
                    ));
                };
                if uuid::Uuid::parse_str(id).is_err() {
                    return Err(SyncError::conflict(
                        codes::INITIALIZATION_STALE,
                        "initialization_id does not match the active initialization lease",
                    ));
                }
                scope::require_active_lease(&tx, user_pk, &actor.source_id, id, ttl).await?;
                session_init_id = Some(id.to_owned());
            }
            // A well-formed lease on an initialized scope is over (another device initialized
            // it): the contract's stale-lease answer, so the device asks the account again and
            // pushes without it. A malformed one stays a malformed request.
            INITIALIZED if init_id.is_some_and(|id| uuid::Uuid::parse_str(id).is_err()) => {
                return Err(invalid(
                    "initialization_id must be absent once the scope is initialized",
                ));
            }
            INITIALIZED if init_id.is_some() => {
                return Err(SyncError::conflict(
                    codes::INITIALIZATION_STALE,
                    "the scope is already initialized: push without initialization_id",
                ));
            }
            _ => {}
        }

        let committed = sql::query_opt(
            &tx,
            "SELECT bl.bundle_seq, bl.row_count, bl.bundle_hash
                 FROM sync.bundle_log bl JOIN sync.user_state us ON us.user_pk = bl.user_pk
                 WHERE bl.user_pk = $1 AND bl.source_id = $2 AND bl.source_bundle_id = $3
                   AND bl.bundle_seq > us.retained_bundle_floor",
            &[&user_pk, &actor.source_id, &req.source_bundle_id],
        )
        .await?;
        if let Some(row) = committed {
            sql::exec(&tx, "SELECT nextval('sync.accepted_push_replay_seq')", &[]).await?;
            tx.commit().await?;
            return Ok(PushSessionCreateResponse::AlreadyCommitted {
                bundle_seq: row.get(0),
                source_id: actor.source_id.clone(),
                source_bundle_id: req.source_bundle_id,
                row_count: row.get(1),
                bundle_hash: row.get(2),
            });
        }

        let (expected, max_committed) =
            scope::expected_source_bundle_id(&tx, user_pk, &actor.source_id).await?;
        if req.source_bundle_id < expected {
            drop(tx);
            crate::retention::record_history_pruned(self).await;
            return Err(SyncError::conflict(
                codes::HISTORY_PRUNED,
                format!(
                    "source tuple ({}, {}) for user {} is older than retained duplicate history; max committed source_bundle_id is {max_committed}",
                    actor.source_id, req.source_bundle_id, actor.user_id
                ),
            ));
        }
        if req.source_bundle_id > expected {
            return Err(SyncError::conflict(
                codes::SOURCE_SEQUENCE_OUT_OF_ORDER,
                format!(
                    "source {} for user {} expected next source_bundle_id {expected}, got {}",
                    actor.source_id, actor.user_id, req.source_bundle_id
                ),
            ));
        }
        sql::exec(
            &tx,
            DELETE_SOURCE_SESSION,
            &[&user_pk, &actor.source_id, &req.source_bundle_id],
        )
        .await?;
        let push_id = uuid::Uuid::new_v4().to_string();
        let ttl_secs = self.config.limits.push_session_ttl.as_secs_f64();
        sql::exec(
            &tx,
            INSERT_SESSION,
            &[
                &push_id,
                &user_pk,
                &actor.source_id,
                &req.source_bundle_id,
                &req.planned_row_count,
                &session_init_id,
                &ttl_secs,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(PushSessionCreateResponse::Staging {
            push_id,
            planned_row_count: req.planned_row_count,
            next_expected_row_ordinal: 0,
        })
    }

    /// `POST /sync/push-sessions/{push_id}/chunks`. A chunk of an initializing push
    /// rejected as invalid gives up the initialization lease (see
    /// [`SyncService::release_rejected_initialization`]).
    pub async fn upload_push_chunk(
        &self,
        actor: &Actor,
        push_id: &str,
        req: &PushSessionChunkRequest,
    ) -> Result<PushSessionChunkResponse, SyncError> {
        let result = self.upload_push_chunk_inner(actor, push_id, req).await;
        if let Err(e) = &result
            && e.status() == StatusCode::BAD_REQUEST
        {
            self.release_rejected_initialization(actor, push_id).await;
        }
        result
    }

    async fn upload_push_chunk_inner(
        &self,
        actor: &Actor,
        push_id: &str,
        req: &PushSessionChunkRequest,
    ) -> Result<PushSessionChunkResponse, SyncError> {
        let _op = self.begin_op();
        let invalid = |m: String| SyncError::bad_request(codes::PUSH_CHUNK_INVALID, m);
        if req.start_row_ordinal < 0 {
            return Err(invalid("start_row_ordinal must be >= 0".into()));
        }
        if req.rows.is_empty() {
            return Err(invalid("rows must not be empty".into()));
        }
        let max = self.config.limits.max_rows_per_push_chunk;
        if req.rows.len() as i64 > max {
            return Err(invalid(format!(
                "rows length {} exceeds max_rows_per_push_chunk {max}",
                req.rows.len()
            )));
        }
        let mut registry = self.registry();
        let rejected = |(index, message): (usize, String)| {
            let row = &req.rows[index];
            SyncError::RowRejected(Box::new(RejectedRow {
                code: codes::PUSH_CHUNK_INVALID,
                message,
                row_ordinal: req.start_row_ordinal + index as i64,
                schema: row.schema.clone(),
                table: row.table.clone(),
                key: Some(row.key.clone()),
            }))
        };
        let rows = match prepare_rows(&registry, &req.rows) {
            Ok(rows) => rows,
            Err(failure) => {
                // A migration may have added a column since the registry was read: re-read
                // the catalog of the tables naming unknown columns, once, before rejecting.
                let stale = tables_with_unknown_columns(&registry, &req.rows);
                if stale.is_empty() || !self.refresh_columns(&stale).await? {
                    return Err(rejected(failure));
                }
                registry = self.registry();
                prepare_rows(&registry, &req.rows).map_err(rejected)?
            }
        };

        let mut client = self.client().await?;
        // A chunk touches only its session, whose row lock orders it against the commit and
        // a re-created session, so the user's lock (which serializes every write of the user)
        // is not taken. A seed push also refreshes the user's lease: that takes the user's
        // lock first, as every other path does, so this transaction starts over.
        let tx = client.transaction().await?;
        let mut session = load_session(&tx, actor, push_id, true).await?;
        let tx = match session.initialization_id.clone() {
            None => tx,
            Some(init_id) => {
                tx.rollback().await?;
                let tx = client.transaction().await?;
                scope::lock_user(&tx, &actor.user_id).await?;
                session = load_session(&tx, actor, push_id, true).await?;
                scope::require_active_lease(
                    &tx,
                    session.user_pk,
                    &session.source_id,
                    &init_id,
                    self.config.limits.initialization_lease_ttl,
                )
                .await?;
                tx
            }
        };
        if req.start_row_ordinal != session.next_expected_row_ordinal {
            return Err(SyncError::conflict(
                codes::PUSH_CHUNK_OUT_OF_ORDER,
                format!(
                    "push session {push_id} expected start_row_ordinal {}, got {}",
                    session.next_expected_row_ordinal, req.start_row_ordinal
                ),
            ));
        }
        let next = req.start_row_ordinal + rows.len() as i64;
        if next > session.planned_row_count {
            return Err(invalid("chunk exceeds planned_row_count".into()));
        }
        let ordinals: Vec<i64> = (req.start_row_ordinal..next).collect();
        let table_ids: Vec<i32> = rows.iter().map(|r| r.table_id).collect();
        let keys: Vec<&str> = rows.iter().map(|r| r.key_text.as_str()).collect();
        let ops: Vec<i16> = rows.iter().map(|r| op_code(r.op)).collect();
        let bases: Vec<i64> = rows.iter().map(|r| r.base_row_version).collect();
        let payloads: Vec<Option<&str>> = rows.iter().map(|r| r.payload.as_deref()).collect();
        let ttl_secs = self.config.limits.push_session_ttl.as_secs_f64();
        sql::pipeline(
            &tx,
            &[
                (
                    "INSERT INTO sync.push_session_rows (user_pk, push_id, row_ordinal, table_id, key_text, op, base_row_version, payload)
                     SELECT ps.user_pk, ps.push_id, r.o, r.t, r.k, r.op, r.b, r.p
                     FROM sync.push_sessions ps, unnest($2::int8[], $3::int4[], $4::text[], $5::int2[], $6::int8[], $7::text[])
                          AS r(o, t, k, op, b, p)
                     WHERE ps.push_id = $1::text::uuid",
                    &[&push_id, &ordinals, &table_ids, &keys, &ops, &bases, &payloads],
                ),
                (
                    "UPDATE sync.push_sessions SET next_expected_row_ordinal = $2,
                         expires_at = now() + make_interval(secs => $3)
                     WHERE push_id = $1::text::uuid",
                    &[&push_id, &next, &ttl_secs],
                ),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(PushSessionChunkResponse {
            push_id: push_id.to_owned(),
            next_expected_row_ordinal: next,
        })
    }

    /// `POST /sync/push-sessions/{push_id}/commit`. A commit of an initializing push
    /// rejected as invalid gives up the initialization lease (see
    /// [`SyncService::release_rejected_initialization`]).
    pub async fn commit_push_session(
        &self,
        actor: &Actor,
        push_id: &str,
    ) -> Result<PushSessionCommitResponse, SyncError> {
        let result = self.commit_push_session_inner(actor, push_id).await;
        if let Err(e) = &result
            && e.status() == StatusCode::BAD_REQUEST
        {
            self.release_rejected_initialization(actor, push_id).await;
        }
        result
    }

    /// After the seed push `push_id` was rejected with a contract (400) error, hands the
    /// user's scope back (uninitialized, no lease) and drops the session, so other devices
    /// are not told `retry_later` for the whole lease lifetime because of data the server
    /// will never accept. The initializer itself gets a fresh lease on its next connect.
    /// Best effort: a failure here only leaves the lease to expire, so it is logged.
    pub async fn release_rejected_initialization(&self, actor: &Actor, push_id: &str) {
        if uuid::Uuid::parse_str(push_id).is_err() {
            return;
        }
        let result: Result<u64, SyncError> = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            scope::lock_user(&tx, &actor.user_id).await?;
            let released = sql::exec(
                &tx,
                "UPDATE sync.user_state us SET scope_state = 0, initializer_source_id = NULL,
                         initialization_id = NULL, lease_expires_at = NULL
                     FROM sync.push_sessions ps
                     WHERE ps.push_id = $1::text::uuid AND ps.user_pk = us.user_pk
                       AND us.user_id = $2 AND us.scope_state = 1
                       AND us.initialization_id = ps.initialization_id
                       AND us.initializer_source_id = ps.source_id",
                &[&push_id, &actor.user_id],
            )
            .await?;
            if released > 0 {
                sql::exec(
                    &tx,
                    "DELETE FROM sync.push_sessions WHERE push_id = $1::text::uuid",
                    &[&push_id],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(released)
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(_) => tracing::info!(
                user = %actor.user_id,
                push_id,
                "released the initialization lease after a rejected seed push"
            ),
            Err(e) => tracing::warn!(
                user = %actor.user_id,
                push_id,
                error = %e,
                "could not release the initialization lease after a rejected seed push"
            ),
        }
    }

    async fn commit_push_session_inner(
        &self,
        actor: &Actor,
        push_id: &str,
    ) -> Result<PushSessionCommitResponse, SyncError> {
        let _op = self.begin_op();
        if let Some((bundle, pruned)) = self.commit_pipelined(actor, push_id).await? {
            self.record_commit(&bundle, pruned);
            return Ok(PushSessionCommitResponse {
                bundle_seq: bundle.bundle_seq,
                source_id: bundle.source_id,
                source_bundle_id: bundle.source_bundle_id,
                row_count: bundle.row_count,
                bundle_hash: bundle.bundle_hash,
            });
        }
        let registry = self.registry();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        sql::exec(&tx, scope::LOCK_SOURCE, &[&actor.user_id, &actor.source_id]).await?;
        scope::lock_user(&tx, &actor.user_id).await?;
        let session = load_session(&tx, actor, push_id, true).await?;
        let invalid = |m: String| SyncError::bad_request(codes::PUSH_COMMIT_INVALID, m);

        let stored = sql::query(&tx, STAGED_ROWS, &[&push_id]).await?;
        let rows = staged_rows(&stored, &session)?;

        if let Some(init_id) = &session.initialization_id {
            scope::require_active_lease(
                &tx,
                session.user_pk,
                &session.source_id,
                init_id,
                self.config.limits.initialization_lease_ttl,
            )
            .await?;
        }
        let (expected, _) =
            scope::expected_source_bundle_id(&tx, session.user_pk, &session.source_id).await?;
        if session.source_bundle_id != expected {
            return Err(SyncError::conflict(
                codes::SOURCE_SEQUENCE_CHANGED,
                format!(
                    "source {} for user {} changed expected next source_bundle_id from staged {} to {expected} before commit",
                    session.source_id, actor.user_id, session.source_bundle_id
                ),
            ));
        }
        scope::set_bundle_context(&tx, &actor.user_id, session.user_pk).await?;
        check_conflicts(&tx, &registry, &actor.user_id, session.user_pk, &rows).await?;

        let runs = batches(&rows);
        for (n, run) in runs.iter().enumerate() {
            let batch = &rows[run.clone()];
            let first = &batch[0];
            let info = registry.by_id(first.table_id).ok_or_else(|| {
                invalid(format!("table {} is no longer registered", first.table_id))
            })?;
            if let Err(e) = apply_batch(&tx, info, &actor.user_id, batch).await {
                if !is_data_error(&e) || batch.len() == 1 {
                    return Err(db_rejection(e, info, run.start, first, batch.len()));
                }
                // Which row of the run? The transaction is aborted: find it in a fresh one
                // that redoes the earlier runs and is always rolled back.
                drop(tx);
                let at = locate_rejected_row(
                    &mut client,
                    &registry,
                    &actor.user_id,
                    session.user_pk,
                    &rows,
                    &runs[..=n],
                )
                .await?;
                return Err(match at {
                    Some((ordinal, e)) => db_rejection(e, info, ordinal, &rows[ordinal], 1),
                    None => db_rejection(e, info, run.start, first, batch.len()),
                });
            }
        }
        let bundle = finalize_bundle(
            &tx,
            &registry,
            session.user_pk,
            &session.source_id,
            session.source_bundle_id,
            self.notify_channel(),
        )
        .await?
        .ok_or_else(|| {
            invalid("push session produced no captured business-table effects".into())
        })?;
        let pruned = self.after_bundle(&tx, session.user_pk, &bundle).await?;
        sql::exec(
            &tx,
            "DELETE FROM sync.push_sessions WHERE push_id = $1::text::uuid",
            &[&push_id],
        )
        .await?;
        if session.initialization_id.is_some() {
            scope::mark_initialized(&tx, session.user_pk, &session.source_id).await?;
        }
        // Deferred foreign keys are checked here; a violation is the client's data.
        tx.commit().await.map_err(|e| {
            if is_data_error(&e) {
                invalid(format!(
                    "commit rejected by the database: {}",
                    db_message(&e)
                ))
            } else {
                SyncError::from(e)
            }
        })?;
        self.record_commit(&bundle, pruned);
        Ok(PushSessionCommitResponse {
            bundle_seq: bundle.bundle_seq,
            source_id: bundle.source_id,
            source_bundle_id: bundle.source_bundle_id,
            row_count: bundle.row_count,
            bundle_hash: bundle.bundle_hash,
        })
    }

    /// The common create, on an initialized scope without a lease, holding only the
    /// source's lock (creates of the user's other sources and commits run meanwhile), in two
    /// pipelines. `None` when anything else applies (an answer other than a new session or
    /// `already_committed`): everything is rolled back and [`Self::create_push_session`]
    /// decides under the user's lock, as before.
    async fn create_pipelined(
        &self,
        actor: &Actor,
        req: &PushSessionCreateRequest,
    ) -> Result<Option<PushSessionCreateResponse>, SyncError> {
        let tx = sql::OpenTx::new(self.client().await?);
        let attempt = self.create_pipelined_in(tx.client(), actor, req).await;
        tx.end(attempt).await
    }

    async fn create_pipelined_in(
        &self,
        tx: &deadpool_postgres::Object,
        actor: &Actor,
        req: &PushSessionCreateRequest,
    ) -> Result<Option<PushSessionCreateResponse>, SyncError> {
        let refused = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(_) => Ok(None),
            None => Err(SyncError::from(e)),
        };
        let read = sql::pipeline(
            tx,
            &[
                ("BEGIN", &[]),
                (scope::LOCK_SOURCE, &[&actor.user_id, &actor.source_id]),
                (
                    "DELETE FROM sync.push_sessions WHERE expires_at <= now()",
                    &[],
                ),
                (
                    "SELECT user_pk, scope_state FROM sync.user_state WHERE user_id = $1",
                    &[&actor.user_id],
                ),
                (
                    "SELECT bl.bundle_seq, bl.row_count, bl.bundle_hash
                     FROM sync.bundle_log bl JOIN sync.user_state us ON us.user_pk = bl.user_pk
                     WHERE us.user_id = $1 AND bl.source_id = $2 AND bl.source_bundle_id = $3
                       AND bl.bundle_seq > us.retained_bundle_floor",
                    &[&actor.user_id, &actor.source_id, &req.source_bundle_id],
                ),
                (
                    "SELECT ss.state, ss.max_committed_source_bundle_id, ss.replaced_by_source_id
                     FROM sync.source_state ss JOIN sync.user_state us ON us.user_pk = ss.user_pk
                     WHERE us.user_id = $1 AND ss.source_id = $2 FOR UPDATE OF ss",
                    &[&actor.user_id, &actor.source_id],
                ),
            ],
        )
        .await;
        let read = match read {
            Ok(read) => read,
            Err(e) => return refused(e),
        };
        let Some(user) = read[3].first() else {
            return Ok(None);
        };
        let (user_pk, state): (i64, i16) = (user.get(0), user.get(1));
        if state != INITIALIZED {
            return Ok(None);
        }
        if let Some(row) = read[4].first() {
            let replayed = sql::pipeline(
                tx,
                &[
                    ("SELECT nextval('sync.accepted_push_replay_seq')", &[]),
                    ("COMMIT", &[]),
                ],
            )
            .await;
            if let Err(e) = replayed {
                return refused(e);
            }
            return Ok(Some(PushSessionCreateResponse::AlreadyCommitted {
                bundle_seq: row.get(0),
                source_id: actor.source_id.clone(),
                source_bundle_id: req.source_bundle_id,
                row_count: row.get(1),
                bundle_hash: row.get(2),
            }));
        }
        match scope::expected_from(&actor.source_id, read[5].first()) {
            Ok((expected, _)) if expected == req.source_bundle_id => {}
            _ => return Ok(None),
        }
        let push_id = uuid::Uuid::new_v4().to_string();
        let ttl_secs = self.config.limits.push_session_ttl.as_secs_f64();
        let no_lease: Option<String> = None;
        let written = sql::pipeline(
            tx,
            &[
                (
                    DELETE_SOURCE_SESSION,
                    &[&user_pk, &actor.source_id, &req.source_bundle_id],
                ),
                (
                    INSERT_SESSION,
                    &[
                        &push_id,
                        &user_pk,
                        &actor.source_id,
                        &req.source_bundle_id,
                        &req.planned_row_count,
                        &no_lease,
                        &ttl_secs,
                    ],
                ),
                ("COMMIT", &[]),
            ],
        )
        .await;
        if let Err(e) = written {
            return refused(e);
        }
        Ok(Some(PushSessionCreateResponse::Staging {
            push_id,
            planned_row_count: req.planned_row_count,
            next_expected_row_ordinal: 0,
        }))
    }

    /// The common commit (no lease, every check passes) in two round trips under the
    /// user's lock: the session and its rows are read and validated before it, and the
    /// statements after it are pipelined, `COMMIT` included. `None` when any check fails or
    /// the database refuses a statement: everything is rolled back and
    /// [`Self::commit_push_session_inner`] runs the checked path, which gives the answer (a
    /// conflict, an invalid row, ...).
    async fn commit_pipelined(
        &self,
        actor: &Actor,
        push_id: &str,
    ) -> Result<Option<(CommittedBundle, i64)>, SyncError> {
        if uuid::Uuid::parse_str(push_id).is_err() {
            return Ok(None);
        }
        let tx = sql::OpenTx::new(self.client().await?);
        let attempt = self.commit_pipelined_in(tx.client(), actor, push_id).await;
        tx.end(attempt).await
    }

    async fn commit_pipelined_in(
        &self,
        tx: &deadpool_postgres::Object,
        actor: &Actor,
        push_id: &str,
    ) -> Result<Option<(CommittedBundle, i64)>, SyncError> {
        // A statement the database refuses sends the commit down the checked path; losing
        // the connection is an error either way.
        let refused = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(_) => Ok(None),
            None => Err(SyncError::from(e)),
        };
        let registry = self.registry();
        // Read without locks: a chunk that lands meanwhile moves the session's next ordinal,
        // which is read again under the lock below.
        let read = sql::pipeline(
            tx,
            &[
                ("BEGIN", &[]),
                (
                    "SELECT ps.user_pk, us.user_id, ps.source_id, ps.source_bundle_id,
                            ps.planned_row_count, ps.next_expected_row_ordinal,
                            ps.initialization_id IS NOT NULL, ps.expires_at <= now()
                     FROM sync.push_sessions ps JOIN sync.user_state us ON us.user_pk = ps.user_pk
                     WHERE ps.push_id = $1::text::uuid",
                    &[&push_id],
                ),
                (STAGED_ROWS, &[&push_id]),
            ],
        )
        .await;
        let read = match read {
            Ok(read) => read,
            Err(e) => return refused(e),
        };
        let Some(row) = read[1].first() else {
            return Ok(None);
        };
        let session = Session {
            user_pk: row.get(0),
            user_id: row.get(1),
            source_id: row.get(2),
            source_bundle_id: row.get(3),
            planned_row_count: row.get(4),
            next_expected_row_ordinal: row.get(5),
            initialization_id: None,
        };
        let (seed, expired): (bool, bool) = (row.get(6), row.get(7));
        if seed || expired || session.user_id != actor.user_id {
            return Ok(None);
        }
        let Ok(rows) = staged_rows(&read[2], &session) else {
            return Ok(None);
        };
        let mut applies = Vec::new();
        for run in batches(&rows) {
            let batch = &rows[run];
            let Some(info) = registry.by_id(batch[0].table_id) else {
                return Ok(None);
            };
            applies.push(apply_statement(info, batch));
        }
        let table_ids: Vec<i32> = rows.iter().map(|r| r.table_id).collect();
        let keys: Vec<&str> = rows.iter().map(|r| r.key_text.as_str()).collect();
        let user_pk = session.user_pk;
        let user_pk_text = user_pk.to_string();
        let user_id = actor.user_id.as_str();
        let policy = crate::retention::Policy::of(self);

        let mut locked: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = vec![
            (scope::LOCK_SOURCE, vec![&actor.user_id, &session.source_id]),
            (scope::LOCK_USER, vec![&actor.user_id]),
            (
                "SELECT next_expected_row_ordinal, expires_at <= now()
                 FROM sync.push_sessions WHERE push_id = $1::text::uuid FOR UPDATE",
                vec![&push_id],
            ),
            (
                "SELECT state, max_committed_source_bundle_id, replaced_by_source_id
                 FROM sync.source_state WHERE user_pk = $1 AND source_id = $2 FOR UPDATE",
                vec![&session.user_pk, &session.source_id],
            ),
            (ROW_STATES, vec![&session.user_pk, &table_ids, &keys]),
            (
                "SELECT set_config('oversync.bundle_user_id', $1, true),
                        set_config('oversync.bundle_user_pk', $2, true)",
                vec![&actor.user_id, &user_pk_text],
            ),
            ("SET CONSTRAINTS ALL DEFERRED", vec![]),
        ];
        for (text, arg) in &applies {
            locked.push((text, vec![arg.param(), &user_id]));
        }
        locked.push((crate::capture::TAKE_CAPTURED, vec![&session.user_pk]));
        locked.push((crate::capture::NEXT_BUNDLE_SEQ, vec![&session.user_pk]));
        // Read after the new bundle_seq, as the checked path reads it after the bundle.
        locked.push((
            crate::retention::POLICY_STATE,
            vec![&session.user_pk, &policy.max_age_seconds],
        ));
        let done = match sql::pipeline(tx, &sql::params_list(&locked)).await {
            Ok(done) => done,
            Err(e) => return refused(e),
        };
        let unchanged = done[2].first().is_some_and(|r| {
            r.get::<_, i64>(0) == session.next_expected_row_ordinal && !r.get::<_, bool>(1)
        });
        let in_order = matches!(
            scope::expected_from(&session.source_id, done[3].first()),
            Ok((expected, _)) if expected == session.source_bundle_id
        );
        if !unchanged || !in_order || first_conflict(&rows, &done[4]).is_some() {
            return Ok(None);
        }
        let [.., captured, seq, policy_state] = &done[..] else {
            return Ok(None);
        };
        let effects = crate::capture::Effects::coalesce(captured);
        let (Some(seq), Some(policy_state)) = (seq.first(), policy_state.first()) else {
            return Ok(None);
        };
        if effects.is_empty() {
            return Ok(None);
        }
        let write = crate::capture::BundleWrite::new(
            &registry,
            effects,
            user_pk,
            seq.get(0),
            &session.source_id,
            session.source_bundle_id,
            self.notify_channel(),
        )?;
        let prune_to = if policy.prunes_anything() {
            crate::retention::prune_target(policy, policy_state)
        } else {
            None
        };

        let mut statements = write.statements();
        statements.push((
            ACTIVATE_SOURCE,
            vec![
                &session.user_pk,
                &session.source_id,
                &session.source_bundle_id,
            ],
        ));
        statements.push((
            "DELETE FROM sync.push_sessions WHERE push_id = $1::text::uuid",
            vec![&push_id],
        ));
        if let Some(target) = &prune_to {
            for text in crate::retention::PRUNE {
                statements.push((text, vec![&session.user_pk, target]));
            }
        }
        statements.push(("COMMIT", vec![]));
        let written = match sql::pipeline(tx, &sql::params_list(&statements)).await {
            Ok(written) => written,
            // A deferred foreign key refused the rows at COMMIT: the checked path names them.
            Err(e) => return refused(e),
        };
        let pruned = match prune_to {
            Some(_) => written[written.len() - 2].len() as i64,
            None => 0,
        };
        Ok(Some((write.committed(), pruned)))
    }

    /// `DELETE /sync/push-sessions/{push_id}`.
    pub async fn delete_push_session(&self, actor: &Actor, push_id: &str) -> Result<(), SyncError> {
        let _op = self.begin_op();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        load_session(&tx, actor, push_id, true).await?;
        sql::exec(
            &tx,
            "DELETE FROM sync.push_sessions WHERE push_id = $1::text::uuid",
            &[&push_id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) fn notify_channel(&self) -> Option<&str> {
        self.config
            .watch
            .enabled
            .then_some(self.config.watch.channel.as_str())
    }

    /// Bookkeeping shared by push commits and server writes, inside their transaction.
    /// Returns the bundles retention deleted (counted once the transaction commits).
    pub(crate) async fn after_bundle(
        &self,
        tx: &impl GenericClient,
        user_pk: i64,
        bundle: &CommittedBundle,
    ) -> Result<i64, SyncError> {
        scope::activate_source(tx, user_pk, &bundle.source_id, bundle.source_bundle_id).await?;
        crate::retention::apply_policy(tx, user_pk, crate::retention::Policy::of(self)).await
    }

    /// Metrics of a committed bundle, after its transaction committed.
    pub(crate) fn record_commit(&self, bundle: &CommittedBundle, pruned: i64) {
        self.metrics.committed(bundle.row_count);
        self.metrics_history_deleted(pruned);
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// The refusal of a data error while applying `rows` rows starting at `ordinal`: named by
/// row (with the additive `row_ordinal`/`table`/`key` fields) when it is about one row.
fn db_rejection(
    e: tokio_postgres::Error,
    info: &TableInfo,
    ordinal: usize,
    first: &PreparedRow,
    rows: usize,
) -> SyncError {
    if !is_data_error(&e) {
        return SyncError::from(e);
    }
    let key = &first.key_text;
    if rows == 1 {
        return SyncError::RowRejected(Box::new(RejectedRow {
            code: codes::PUSH_COMMIT_INVALID,
            message: format!(
                "row {}.{} {key} rejected by the database: {}",
                info.schema,
                info.table,
                db_message(&e)
            ),
            row_ordinal: ordinal as i64,
            schema: info.schema.clone(),
            table: info.table.clone(),
            key: Some(sync_key(&info.key_column, key)),
        }));
    }
    SyncError::bad_request(
        codes::PUSH_COMMIT_INVALID,
        format!(
            "{rows} rows of {}.{} starting at {key} rejected by the database: {}",
            info.schema,
            info.table,
            db_message(&e)
        ),
    )
}

/// After a run of rows failed as a whole: redoes the earlier runs in a new transaction, then
/// the failing run (the last of `runs`) row by row under savepoints, and rolls everything
/// back. Returns the first row the database refuses, with its error.
async fn locate_rejected_row(
    client: &mut deadpool_postgres::Object,
    registry: &Registry,
    user_id: &str,
    user_pk: i64,
    rows: &[PreparedRow],
    runs: &[std::ops::Range<usize>],
) -> Result<Option<(usize, tokio_postgres::Error)>, SyncError> {
    let tx = client.transaction().await?;
    scope::set_bundle_context(&tx, user_id, user_pk).await?;
    let Some((failing, earlier)) = runs.split_last() else {
        return Ok(None);
    };
    let info_of = |row: &PreparedRow| {
        registry
            .by_id(row.table_id)
            .ok_or_else(|| SyncError::Internal(format!("unknown table_id {}", row.table_id)))
    };
    for run in earlier {
        let batch = &rows[run.clone()];
        apply_batch(&tx, info_of(&batch[0])?, user_id, batch).await?;
    }
    for ordinal in failing.clone() {
        let row = std::slice::from_ref(&rows[ordinal]);
        tx.batch_execute("SAVEPOINT locate_row").await?;
        match apply_batch(&tx, info_of(&rows[ordinal])?, user_id, row).await {
            Ok(()) => tx.batch_execute("RELEASE SAVEPOINT locate_row").await?,
            Err(e) if is_data_error(&e) => {
                tx.rollback().await?;
                return Ok(Some((ordinal, e)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    tx.rollback().await?;
    Ok(None)
}

/// Whole-bundle optimistic concurrency: every row's base version must match `row_state`.
async fn check_conflicts(
    tx: &impl GenericClient,
    registry: &Registry,
    user_id: &str,
    user_pk: i64,
    rows: &[PreparedRow],
) -> Result<(), SyncError> {
    let table_ids: Vec<i32> = rows.iter().map(|r| r.table_id).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key_text.as_str()).collect();
    let states = sql::query(tx, ROW_STATES, &[&user_pk, &table_ids, &keys]).await?;
    let Some((row, state, message)) = first_conflict(rows, &states) else {
        return Ok(());
    };
    let info = registry
        .by_id(row.table_id)
        .ok_or_else(|| SyncError::Internal(format!("unknown table_id {}", row.table_id)))?;
    let (server_row_version, server_row_deleted) = state.unwrap_or((0, false));
    let server_row = if state.is_some() && !server_row_deleted {
        current_row(tx, info, user_id, &row.key_text).await?
    } else {
        None
    };
    Err(SyncError::PushConflict {
        message: format!(
            "{message} on {}.{} {}",
            info.schema, info.table, row.key_text
        ),
        conflict: Box::new(PushConflictDetails {
            schema: info.schema.clone(),
            table: info.table.clone(),
            key: sync_key(&info.key_column, &row.key_text),
            op: row.op,
            base_row_version: row.base_row_version,
            server_row_version,
            server_row_deleted,
            server_row,
        }),
    })
}

/// The row states a conflict check compares against: `$1` user_pk, `$2` table ids,
/// `$3` keys.
const ROW_STATES: &str = "SELECT rs.table_id, rs.key_text, rs.bundle_seq, rs.deleted
     FROM unnest($2::int4[], $3::text[]) AS req(table_id, key_text)
     JOIN sync.row_state rs ON rs.user_pk = $1 AND rs.table_id = req.table_id
          AND rs.key_text = req.key_text";

/// A row's `(bundle_seq, deleted)` in `sync.row_state`, `None` when it has none.
type RowState = Option<(i64, bool)>;

/// The first row whose base version does not match its state in [`ROW_STATES`], with that
/// state (version, deleted) and why.
fn first_conflict<'a>(
    rows: &'a [PreparedRow],
    states: &[tokio_postgres::Row],
) -> Option<(&'a PreparedRow, RowState, String)> {
    let known: HashMap<(i32, String), (i64, bool)> = states
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    for row in rows {
        let state = known.get(&(row.table_id, row.key_text.clone())).copied();
        let message = match (row.op, state) {
            (Op::Insert, None) if row.base_row_version != 0 => Some(format!(
                "insert conflict: expected missing row at version 0, got {}",
                row.base_row_version
            )),
            (Op::Insert, None) => None,
            (Op::Insert, Some((version, _))) if version != row.base_row_version => Some(format!(
                "insert conflict: expected base_row_version {version}, got {}",
                row.base_row_version
            )),
            (Op::Insert, Some((version, false))) => Some(format!(
                "insert conflict: row already exists at version {version}"
            )),
            (Op::Insert, Some(_)) => None,
            (op, None | Some((_, true))) => Some(format!(
                "{} conflict: row does not exist",
                op.as_str().to_ascii_lowercase()
            )),
            (op, Some((version, false))) if version != row.base_row_version => Some(format!(
                "{} conflict: expected version {version}, got {}",
                op.as_str().to_ascii_lowercase(),
                row.base_row_version
            )),
            _ => None,
        };
        if let Some(message) = message {
            return Some((row, state, message));
        }
    }
    None
}

/// The user's current row as a wire payload.
pub(crate) async fn current_row(
    tx: &impl GenericClient,
    info: &TableInfo,
    user_id: &str,
    key_text: &str,
) -> Result<Option<Value>, SyncError> {
    let text = format!(
        "SELECT to_jsonb(src)::text FROM {} AS src WHERE src.{} = $1{} AND src.{} = $2",
        info.ident(),
        quote_ident(&info.key_column),
        info.key_cast(),
        quote_ident(SCOPE_COLUMN)
    );
    let Some(row) = sql::query_opt(tx, &text, &[&key_text, &user_id]).await? else {
        return Ok(None);
    };
    let text: String = row.get(0);
    let wire = wire_payload_text(info, &text).map_err(|e| SyncError::internal("server row", e))?;
    serde_json::from_str(&wire)
        .map(Some)
        .map_err(|e| SyncError::internal("server row", e))
}

/// Largest number of rows applied by one statement.
const APPLY_BATCH: usize = 1000;

/// Column names of a stored payload, in sorted order. The values are skipped, not built:
/// a bulk commit reads the names of every row.
fn payload_columns(row: &PreparedRow) -> Vec<String> {
    row.payload
        .as_deref()
        .and_then(|p| {
            serde_json::from_str::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(p)
                .ok()
        })
        .map(|m| m.into_keys().collect())
        .unwrap_or_default()
}

/// Splits rows into runs of the same table, op and column set, keeping their order.
fn batches(rows: &[PreparedRow]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut columns = rows.first().map(payload_columns).unwrap_or_default();
    for i in 1..=rows.len() {
        let next_columns = rows.get(i).map(payload_columns);
        let same = match (rows.get(i), &next_columns) {
            (Some(r), Some(c)) => {
                r.table_id == rows[start].table_id
                    && r.op == rows[start].op
                    && *c == columns
                    && i - start < APPLY_BATCH
            }
            _ => false,
        };
        if !same {
            out.push(start..i);
            start = i;
            columns = next_columns.unwrap_or_default();
        }
    }
    out
}

/// The one argument of an apply statement besides the user.
enum ApplyArg<'a> {
    Keys(Vec<&'a str>),
    Payloads(String),
}

impl ApplyArg<'_> {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            ApplyArg::Keys(keys) => keys,
            ApplyArg::Payloads(array) => array,
        }
    }
}

/// The statement applying a run of rows of one table, op and column set, with its
/// argument (`$1`; `$2` is the user). Column names come from stored payloads, which only
/// ever hold registry columns.
fn apply_statement<'a>(info: &TableInfo, rows: &'a [PreparedRow]) -> (String, ApplyArg<'a>) {
    let table = info.ident();
    let key_col = quote_ident(&info.key_column);
    let scope_col = quote_ident(SCOPE_COLUMN);
    let columns: Vec<String> = payload_columns(&rows[0])
        .iter()
        .map(|c| quote_ident(c))
        .collect();
    let payloads = || {
        let mut array = String::from("[");
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push_str(r.payload.as_deref().unwrap_or("{}"));
        }
        array.push(']');
        ApplyArg::Payloads(array)
    };
    match rows[0].op {
        Op::Delete => (
            format!(
                "DELETE FROM {table} WHERE {key_col} = ANY($1{}[]) AND {scope_col} = $2",
                info.key_array_cast()
            ),
            ApplyArg::Keys(rows.iter().map(|r| r.key_text.as_str()).collect()),
        ),
        Op::Insert => {
            let list = columns.join(", ");
            (
                format!(
                    "INSERT INTO {table} ({scope_col}, {list})
                     SELECT $2, {list} FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb)"
                ),
                payloads(),
            )
        }
        Op::Update => {
            let sets: Vec<String> = columns.iter().map(|c| format!("{c} = src.{c}")).collect();
            (
                format!(
                    "UPDATE {table} AS dst SET {}
                     FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb) AS src
                     WHERE dst.{key_col} = src.{key_col} AND dst.{scope_col} = $2",
                    sets.join(", ")
                ),
                payloads(),
            )
        }
    }
}

/// Applies a run of rows of one table, op and column set with one statement.
async fn apply_batch(
    tx: &impl GenericClient,
    info: &TableInfo,
    user_id: &str,
    rows: &[PreparedRow],
) -> Result<(), tokio_postgres::Error> {
    let (text, arg) = apply_statement(info, rows);
    sql::exec(tx, &text, &[arg.param(), &user_id]).await?;
    Ok(())
}

pub(crate) async fn create(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    JsonBody(req): JsonBody<PushSessionCreateRequest>,
) -> Result<Json<PushSessionCreateResponse>, SyncError> {
    Ok(Json(service.create_push_session(&actor, &req).await?))
}

pub(crate) async fn upload_chunk(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    PathParam(push_id): PathParam,
    JsonBody(req): JsonBody<PushSessionChunkRequest>,
) -> Result<Json<PushSessionChunkResponse>, SyncError> {
    Ok(Json(
        service.upload_push_chunk(&actor, &push_id, &req).await?,
    ))
}

pub(crate) async fn commit(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    PathParam(push_id): PathParam,
) -> Result<Json<PushSessionCommitResponse>, SyncError> {
    Ok(Json(service.commit_push_session(&actor, &push_id).await?))
}

pub(crate) async fn delete(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    PathParam(push_id): PathParam,
) -> Result<StatusCode, SyncError> {
    service.delete_push_session(&actor, &push_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
