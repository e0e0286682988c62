//! `GET /sync/committed-bundles/{bundle_seq}/rows`: paged authoritative rows of one bundle.

use crate::SyncService;
use crate::auth::Actor;
use crate::body::{PathParam, QueryParams};
use crate::bootstrap::Registry;
use crate::capture::op_from_code;
use crate::error::SyncError;
use crate::retention::{enforce_floor, record_history_pruned};
use crate::sql;
use axum::Json;
use axum::extract::{RawQuery, State};
use oversync_protocol::{BundleRow, CommittedBundleRowsResponse, codes, sync_key};
use std::sync::Arc;
use tokio_postgres::Row;

/// Decodes `(table_id, key_text, op, payload)` columns starting at `first` into a row.
pub(crate) fn bundle_row(
    registry: &Registry,
    row: &Row,
    first: usize,
    row_version: i64,
) -> Result<BundleRow, SyncError> {
    let table_id: i32 = row.get(first);
    let key_text: String = row.get(first + 1);
    let op = op_from_code(row.get(first + 2))?;
    let payload: Option<String> = row.get(first + 3);
    let info = registry
        .by_id(table_id)
        .ok_or_else(|| SyncError::Internal(format!("bundle row of unknown table_id {table_id}")))?;
    let payload = match payload {
        Some(text) => Some(
            serde_json::from_str(&text).map_err(|e| SyncError::internal("stored payload", e))?,
        ),
        None => None,
    };
    Ok(BundleRow {
        schema: info.schema.clone(),
        table: info.table.clone(),
        key: sync_key(&info.key_column, &key_text),
        op,
        row_version,
        payload,
    })
}

impl SyncService {
    /// One page of a committed bundle's rows.
    pub async fn committed_bundle_rows(
        &self,
        actor: &Actor,
        bundle_seq: i64,
        after_row_ordinal: Option<i64>,
        max_rows: Option<i64>,
    ) -> Result<CommittedBundleRowsResponse, SyncError> {
        let _op = self.begin_op();
        let invalid = |m: &str| SyncError::bad_request(codes::COMMITTED_BUNDLE_CHUNK_INVALID, m);
        if bundle_seq <= 0 {
            return Err(invalid("bundle_seq must be > 0"));
        }
        if after_row_ordinal.is_some_and(|a| a < 0) {
            return Err(invalid("after_row_ordinal must be >= 0"));
        }
        let limits = &self.config.limits;
        let max_rows = max_rows.unwrap_or(limits.default_rows_per_committed_bundle_chunk);
        if max_rows <= 0 {
            return Err(invalid("max_rows must be > 0"));
        }
        let max_rows = max_rows.min(limits.max_rows_per_committed_bundle_chunk);
        let registry = self.registry();
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let not_found = || {
            SyncError::not_found(
                codes::COMMITTED_BUNDLE_NOT_FOUND,
                format!("committed bundle {bundle_seq} was not found"),
            )
        };
        let Some(user) = sql::query_opt(
            &tx,
            "SELECT user_pk, retained_bundle_floor FROM sync.user_state WHERE user_id = $1",
            &[&actor.user_id],
        )
        .await?
        else {
            return Err(not_found());
        };
        let (user_pk, floor): (i64, i64) = (user.get(0), user.get(1));
        if let Err(e) = enforce_floor(&actor.user_id, bundle_seq, floor) {
            drop(tx);
            record_history_pruned(self).await;
            return Err(e);
        }
        let meta = sql::query_opt(
            &tx,
            "SELECT source_id, source_bundle_id, row_count, bundle_hash
                 FROM sync.bundle_log WHERE user_pk = $1 AND bundle_seq = $2",
            &[&user_pk, &bundle_seq],
        )
        .await?
        .ok_or_else(not_found)?;
        let after = after_row_ordinal.unwrap_or(-1);
        let page = sql::query(
            &tx,
            "SELECT table_id, key_text, op, payload FROM sync.bundle_rows
                 WHERE user_pk = $1 AND bundle_seq = $2 AND row_ordinal > $3
                 ORDER BY row_ordinal LIMIT $4",
            &[&user_pk, &bundle_seq, &after, &(max_rows + 1)],
        )
        .await?;
        let has_more = page.len() as i64 > max_rows;
        let rows = page
            .iter()
            .take(max_rows as usize)
            .map(|r| bundle_row(&registry, r, 0, bundle_seq))
            .collect::<Result<Vec<_>, _>>()?;
        let next_row_ordinal = if rows.is_empty() {
            after_row_ordinal.unwrap_or(0)
        } else {
            after + rows.len() as i64
        };
        Ok(CommittedBundleRowsResponse {
            bundle_seq,
            source_id: meta.get(0),
            source_bundle_id: meta.get(1),
            row_count: meta.get(2),
            bundle_hash: meta.get(3),
            rows,
            next_row_ordinal,
            has_more,
        })
    }
}

pub(crate) async fn rows(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    PathParam(bundle_seq): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Json<CommittedBundleRowsResponse>, SyncError> {
    let code = codes::COMMITTED_BUNDLE_CHUNK_INVALID;
    let bundle_seq: i64 = bundle_seq
        .parse()
        .map_err(|_| SyncError::bad_request(code, "bundle_seq must be an integer"))?;
    let q = QueryParams::parse(query.as_deref());
    let after = q.int("after_row_ordinal", code)?;
    let max_rows = q.int("max_rows", code)?;
    let resp = service
        .committed_bundle_rows(&actor, bundle_seq, after, max_rows)
        .await?;
    service.metrics.committed_bundle_rows(resp.rows.len());
    Ok(Json(resp))
}
