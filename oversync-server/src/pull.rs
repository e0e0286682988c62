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
                "SELECT bundle_seq, source_id, source_bundle_id, row_count, bundle_hash, byte_count
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
        let take = page_len(
            metas
                .iter()
                .take(max_bundles as usize)
                .map(|m| (m.get::<_, i64>(3), m.get::<_, i64>(5))),
        );
        let has_more = metas.len() > take;
        let metas = &metas[..take];
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

/// Rows one pull page holds at most (unless its first bundle alone is larger).
const PAGE_ROWS: i64 = 10_000;
/// Payload bytes one pull page holds at most (unless its first bundle alone is larger).
const PAGE_BYTES: i64 = 8 << 20;

/// How many of the bundles `(row_count, byte_count)` go in one page: whole bundles up to
/// [`PAGE_ROWS`] and [`PAGE_BYTES`], at least one. The page is built in memory and sent
/// whole, so `max_bundles` alone (1,000 bundles of 1,000 rows: a million rows) does not
/// bound it; a shorter page says `has_more` and the client asks again.
fn page_len(bundles: impl Iterator<Item = (i64, i64)>) -> usize {
    let (mut rows, mut bytes, mut taken) = (0i64, 0i64, 0usize);
    for (row_count, byte_count) in bundles {
        rows += row_count;
        bytes += byte_count;
        if taken > 0 && (rows > PAGE_ROWS || bytes > PAGE_BYTES) {
            break;
        }
        taken += 1;
    }
    taken
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_bounded_by_rows_and_bytes_but_holds_one_bundle_at_least() {
        assert_eq!(page_len(std::iter::repeat_n((1_000, 300_000), 1_000)), 10);
        assert_eq!(page_len(std::iter::repeat_n((1, 3 << 20), 10)), 2);
        assert_eq!(page_len(std::iter::once((100_000, 30 << 20))), 1);
        assert_eq!(page_len(std::iter::repeat_n((1, 300), 1_000)), 1_000);
        assert_eq!(page_len(std::iter::empty()), 0);
    }
}
