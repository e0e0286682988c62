//! `GET /sync/pull`: complete committed bundles after a checkpoint, up to a frozen ceiling.

use crate::SyncService;
use crate::auth::Actor;
use crate::body::QueryParams;
use crate::committed_bundles::bundle_row;
use crate::error::SyncError;
use crate::retention::{enforce_floor, record_history_pruned};
use crate::scope::require_initialized;
use axum::Json;
use axum::extract::{RawQuery, State};
use oversync_protocol::{Bundle, PullResponse, codes};
use std::sync::Arc;

impl SyncService {
    /// Bundles in `(after_bundle_seq, stable]` where `stable` is `target_bundle_seq` if given,
    /// else the user's latest bundle.
    pub async fn pull(
        &self,
        actor: &Actor,
        after_bundle_seq: i64,
        max_bundles: i64,
        target_bundle_seq: i64,
    ) -> Result<PullResponse, SyncError> {
        let _op = self.begin_op();
        let registry = self.registry();
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let history = require_initialized(&tx, &actor.user_id).await?;
        let floor = history.retained_floor;
        let stable = if target_bundle_seq > 0 {
            target_bundle_seq
        } else {
            history.latest_bundle_seq
        };
        // The checkpoint, a frozen ceiling (0: none) and the ceiling resolved now must all
        // be above the floor; with the floor at the head even the head is pruned.
        let floor_check = enforce_floor(&actor.user_id, after_bundle_seq, floor)
            .and_then(|_| match target_bundle_seq {
                0 => Ok(()),
                target => enforce_floor(&actor.user_id, target, floor),
            })
            .and_then(|_| enforce_floor(&actor.user_id, stable, floor));
        if let Err(e) = floor_check {
            drop(tx);
            record_history_pruned(self).await;
            return Err(e);
        }
        if after_bundle_seq >= stable {
            return Ok(PullResponse {
                stable_bundle_seq: stable,
                bundles: Vec::new(),
                has_more: false,
            });
        }
        let metas = tx
            .query(
                "SELECT bundle_seq, source_id, source_bundle_id, row_count, bundle_hash
                 FROM sync.bundle_log
                 WHERE user_pk = $1 AND bundle_seq > GREATEST($2::int8, $5::int8) AND bundle_seq <= $3
                 ORDER BY bundle_seq LIMIT $4",
                &[
                    &history.user_pk,
                    &after_bundle_seq,
                    &stable,
                    &(max_bundles + 1),
                    &floor,
                ],
            )
            .await?;
        let has_more = metas.len() as i64 > max_bundles;
        let metas = &metas[..metas.len().min(max_bundles as usize)];
        let mut bundles: Vec<Bundle> = metas
            .iter()
            .map(|m| Bundle {
                bundle_seq: m.get(0),
                source_id: m.get(1),
                source_bundle_id: m.get(2),
                row_count: Some(m.get(3)),
                bundle_hash: Some(m.get(4)),
                rows: Vec::new(),
            })
            .collect();
        if let (Some(first), Some(last)) = (bundles.first(), bundles.last()) {
            let rows = tx
                .query(
                    "SELECT bundle_seq, table_id, key_text, op, payload FROM sync.bundle_rows
                     WHERE user_pk = $1 AND bundle_seq BETWEEN $2 AND $3
                     ORDER BY bundle_seq, row_ordinal",
                    &[&history.user_pk, &first.bundle_seq, &last.bundle_seq],
                )
                .await?;
            let mut i = 0;
            for r in &rows {
                let seq: i64 = r.get(0);
                while i < bundles.len() && bundles[i].bundle_seq < seq {
                    i += 1;
                }
                if i < bundles.len() && bundles[i].bundle_seq == seq {
                    bundles[i].rows.push(bundle_row(&registry, r, 1, seq)?);
                }
            }
        }
        Ok(PullResponse {
            stable_bundle_seq: stable,
            bundles,
            has_more,
        })
    }
}

pub(crate) async fn pull(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    RawQuery(query): RawQuery,
) -> Result<Json<PullResponse>, SyncError> {
    let code = codes::INVALID_REQUEST;
    let q = QueryParams::parse(query.as_deref());
    let after = q.int("after_bundle_seq", code)?.unwrap_or(0);
    if after < 0 {
        return Err(SyncError::bad_request(
            code,
            "after_bundle_seq must be >= 0",
        ));
    }
    let limits = &service.config.limits;
    let max = q
        .int("max_bundles", code)?
        .unwrap_or(limits.default_bundles_per_pull);
    if max < 1 || max > limits.max_bundles_per_pull {
        return Err(SyncError::bad_request(
            code,
            format!(
                "max_bundles must be between 1 and {}",
                limits.max_bundles_per_pull
            ),
        ));
    }
    let target = q.int("target_bundle_seq", code)?.unwrap_or(0);
    if target < 0 {
        return Err(SyncError::bad_request(
            code,
            "target_bundle_seq must be >= 0",
        ));
    }
    let resp = service.pull(&actor, after, max, target).await?;
    service
        .metrics
        .pull_rows(resp.bundles.iter().map(|b| b.rows.len()).sum());
    Ok(Json(resp))
}
