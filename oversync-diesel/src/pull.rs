//! Pull: bundles committed by other devices, applied whole and in order up to the stable
//! ceiling the first response fixes; the checkpoint moves in the same transaction as each
//! bundle's rows.

use crate::apply::{apply_effects, in_apply_transaction};
use crate::codec::invalid;
use crate::error::Result;
use crate::events::{Phase, SyncEvent};
use crate::handle::Oversync;
use crate::push::effect_from_wire;
use crate::state;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use oversync_protocol::codes;

/// What [`Oversync::pull_to_stable`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// Applied every bundle up to the stable ceiling (possibly none).
    UpToDate {
        /// Bundles applied.
        bundles_applied: u64,
        /// Rows applied.
        rows_applied: u64,
        /// The checkpoint now.
        last_bundle_seq_seen: i64,
    },
    /// Local changes wait to be pushed (also ones written while the pull was downloading);
    /// pull refuses so that server rows never overwrite them. Call `sync()` (push, then
    /// pull).
    BlockedByPendingChanges {
        /// Rows waiting.
        pending_rows: u64,
    },
}

impl Oversync<'_> {
    /// Pulls and applies committed bundles until the server's stable ceiling.
    pub async fn pull_to_stable(&mut self) -> Result<PullOutcome> {
        self.ensure_attached()?;
        self.ensure_capabilities().await?;
        let pending_rows = state::pending_row_count(self.conn)?;
        if pending_rows > 0 {
            return Ok(PullOutcome::BlockedByPendingChanges { pending_rows });
        }
        let transport = self.transport()?;
        let max_bundles = self
            .rt
            .limits
            .as_ref()
            .and_then(|l| l.max_bundles_per_pull)
            .filter(|n| *n > 0)
            .unwrap_or(1000)
            .min(1000) as u32;
        let (mut bundles_applied, mut rows_applied) = (0u64, 0u64);
        let mut target: Option<i64> = None;
        let config = self.config;
        loop {
            let attachment = state::attachment_state(self.conn)?;
            let mut last = attachment.last_bundle_seq_seen;
            if target.is_some_and(|t| last >= t) {
                break;
            }
            let page = match transport
                .pull(&attachment.current_source_id, last, max_bundles, target)
                .await
            {
                Ok(page) => page,
                Err(e) if e.code() == Some(codes::HISTORY_PRUNED) => {
                    // Behind the retained history: only a snapshot can catch up. Keep source.
                    self.rebuild_keep_source().await?;
                    target = None;
                    continue;
                }
                Err(e) => return Err(self.server_error(e)),
            };
            let stable = *target.get_or_insert(page.stable_bundle_seq);
            if stable < last && page.bundles.is_empty() {
                break;
            }
            if page.bundles.is_empty() {
                if page.has_more && last < stable {
                    return Err(invalid("pull page made no progress"));
                }
                break;
            }
            for bundle in page.bundles {
                // Bundle sequences are contiguous per user: a gap or a reordering would move
                // the checkpoint past a bundle never applied.
                if bundle.bundle_seq != last + 1 || bundle.bundle_seq > stable {
                    return Err(invalid(format!(
                        "bundle {} is not the next after {last} (ceiling {stable})",
                        bundle.bundle_seq
                    )));
                }
                let mut effects = Vec::with_capacity(bundle.rows.len());
                for row in &bundle.rows {
                    effects.push(effect_from_wire(
                        config,
                        &self.rt.uuid_refs,
                        &row.schema,
                        &row.table,
                        &row.key,
                        row.op,
                        row.row_version,
                        row.payload.as_ref(),
                    )?);
                }
                let rows = effects.len() as u64;
                let seq = bundle.bundle_seq;
                let applied = in_apply_transaction(self.conn, |conn| {
                    // Re-checked inside the transaction: the app (or another connection) may
                    // have written while the page was downloading. That is the same state as
                    // the check above: nothing is applied and the caller pushes first.
                    let pending_rows = state::pending_row_count(conn)?;
                    if pending_rows > 0 {
                        return Ok(Err(pending_rows));
                    }
                    // Another connection (the watcher, say) may have applied it already.
                    if state::attachment_state(conn)?.last_bundle_seq_seen >= seq {
                        return Ok(Ok(Default::default()));
                    }
                    let changed = apply_effects(conn, effects, &Default::default())?;
                    diesel::sql_query("UPDATE _sync_attachment_state SET last_bundle_seq_seen = ? WHERE singleton_key = 1")
                        .bind::<BigInt, _>(seq)
                        .execute(conn)?;
                    Ok(Ok(changed))
                })?;
                let changed = match applied {
                    Ok(changed) => changed,
                    Err(pending_rows) => {
                        return Ok(PullOutcome::BlockedByPendingChanges { pending_rows });
                    }
                };
                self.tables_changed(changed);
                last = seq;
                bundles_applied += 1;
                rows_applied += rows;
                self.emit(SyncEvent::Progress {
                    phase: Phase::Pull,
                    done: rows_applied,
                    total: None,
                });
            }
            if !page.has_more && last >= stable {
                break;
            }
        }
        Ok(PullOutcome::UpToDate {
            bundles_applied,
            rows_applied,
            last_bundle_seq_seen: state::attachment_state(self.conn)?.last_bundle_seq_seen,
        })
    }
}
