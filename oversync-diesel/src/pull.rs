//! Pull: bundles committed by other devices, applied whole and in order up to the stable
//! ceiling the first response fixes; the checkpoint moves in the same transaction as each
//! bundle's rows.

use crate::apply::{apply_effects, drop_orphans, drop_superseded, in_apply_transaction};
use crate::codec::invalid;
use crate::error::{Error, Result};
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
        /// Bundles the checkpoint moved over (this device's own skipped ones included).
        bundles_applied: u64,
        /// Rows of other devices' bundles applied.
        rows_applied: u64,
        /// Rows of this device's own bundles that were not written again: the device
        /// committed them and already replayed them after its push.
        own_rows_skipped: u64,
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
    ///
    /// A `history_pruned` answer (the checkpoint is at or below the server's retained
    /// floor) is caught up from one snapshot, which ends the call: a snapshot is the
    /// server's head. When that snapshot is at the local checkpoint nothing is downloaded.
    ///
    /// # Errors
    ///
    /// [`Error::ServerBehindCheckpoint`] when the server's stable ceiling or snapshot is
    /// behind history this database already applied (the server was restored or reset);
    /// the install is then marked rebuild-required and the next `sync()` rebuilds.
    /// [`Error::InvalidResponse`] for a page that breaks the protocol (a gap, a moved
    /// ceiling, no progress); the checkpoint only ever moves with the bundles applied.
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
        let (mut bundles_applied, mut rows_applied, mut own_rows_skipped) = (0u64, 0u64, 0u64);
        let replayed = replayed_source_bundles(self.conn)?;
        let mut target: Option<i64> = None;
        let config = self.config;
        // Rows whose local state is newer than a bundle (our own replayed bundle, a conflict
        // resolution): bundles below this may lose a parent to `drop_superseded` and leave its
        // child orphaned, in that bundle or a later one, so those bundles are checked.
        let ahead = state::newest_row_version(self.conn)?;
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
                    // Behind the retained history: only a snapshot catches up. It is taken
                    // at the server's head, so it ends this pull whatever it holds; pulling
                    // on from it could be answered history_pruned again (a floor at the head
                    // prunes the head itself) and rebuild forever. It must reach both the
                    // local checkpoint and any ceiling this pull was promised.
                    let required = target.unwrap_or(0).max(last);
                    let caught_up = self.rebuild_after_pruned(required, Some(last)).await;
                    if let Err(Error::ServerBehindCheckpoint { .. }) = &caught_up {
                        mark_rebuild_required(self.conn)?;
                    }
                    caught_up?;
                    break;
                }
                Err(e) => return Err(self.server_error(e)),
            };
            if page.stable_bundle_seq < last {
                // The server lost bundles this database applied (restored from a backup,
                // or reset). Only a snapshot brings the two back together; mark it so the
                // next sync (or attach) rebuilds, and say so now rather than diverge.
                mark_rebuild_required(self.conn)?;
                return Err(Error::ServerBehindCheckpoint {
                    stable: page.stable_bundle_seq,
                    checkpoint: last,
                });
            }
            let stable = *target.get_or_insert(page.stable_bundle_seq);
            if page.stable_bundle_seq != stable {
                return Err(invalid(format!(
                    "stable_bundle_seq changed from {stable} to {} within one pull",
                    page.stable_bundle_seq
                )));
            }
            if page.bundles.is_empty() {
                // Nothing after the checkpoint yet short of the ceiling: asking again would
                // get the same page, so a server that does this would be pulled forever.
                if last < stable {
                    return Err(invalid(format!(
                        "pull page made no progress: no bundle after {last} below the stable ceiling {stable}"
                    )));
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
                let seq = bundle.bundle_seq;
                if replayed
                    .get(&bundle.source_id)
                    .is_some_and(|next| bundle.source_bundle_id < *next)
                {
                    // Our own bundle, already replayed: its rows are here (or overtaken by
                    // local changes pushed since). Only the checkpoint moves.
                    let advanced = in_apply_transaction(self.conn, |conn| {
                        let pending_rows = state::pending_row_count(conn)?;
                        if pending_rows > 0 {
                            return Ok(Err(pending_rows));
                        }
                        advance_checkpoint(conn, seq)?;
                        Ok(Ok(()))
                    })?;
                    if let Err(pending_rows) = advanced {
                        return Ok(PullOutcome::BlockedByPendingChanges { pending_rows });
                    }
                    last = seq;
                    bundles_applied += 1;
                    own_rows_skipped += bundle.rows.len() as u64;
                    continue;
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
                    let all = effects.len();
                    let effects = drop_superseded(conn, effects)?;
                    let dropped = effects.len() < all;
                    let upserted: std::collections::HashSet<String> = effects
                        .iter()
                        .filter(|e| e.values.is_some())
                        .map(|e| e.spec.table_name.to_string())
                        .collect();
                    let changed = apply_effects(conn, effects, &Default::default())?;
                    if dropped || seq < ahead {
                        drop_orphans(conn, &upserted)?;
                    }
                    advance_checkpoint(conn, seq)?;
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
            own_rows_skipped,
            last_bundle_seq_seen: state::attachment_state(self.conn)?.last_bundle_seq_seen,
        })
    }
}

/// Moves the pull checkpoint to `seq` (never back: another connection, the watcher say, may
/// have pulled further meanwhile), inside the caller's apply transaction.
fn advance_checkpoint(conn: &mut SqliteConnection, seq: i64) -> Result<()> {
    diesel::sql_query(
        "UPDATE _sync_attachment_state SET last_bundle_seq_seen = MAX(last_bundle_seq_seen, ?) WHERE singleton_key = 1",
    )
    .bind::<BigInt, _>(seq)
    .execute(conn)?;
    Ok(())
}

/// For each source of this install, the first source bundle id not yet committed and
/// replayed here: `next_source_bundle_id` moves past a bundle only in the transaction that
/// replays it after its push (a rotated-away source keeps its row), so a pulled bundle of
/// one of these sources below that id is one this device already holds. A copied database
/// rotates to a fresh source at `open()`, and the copy's ids for the shared source stop
/// where the copy was made, so bundles the original committed later are applied normally.
fn replayed_source_bundles(
    conn: &mut SqliteConnection,
) -> Result<std::collections::HashMap<String, i64>> {
    #[derive(QueryableByName)]
    struct Source {
        #[diesel(sql_type = diesel::sql_types::Text)]
        source_id: String,
        #[diesel(sql_type = BigInt)]
        next_source_bundle_id: i64,
    }
    Ok(diesel::sql_query(
        "SELECT source_id, next_source_bundle_id FROM _sync_source_state WHERE next_source_bundle_id > 1",
    )
    .load::<Source>(conn)?
    .into_iter()
    .map(|s| (s.source_id, s.next_source_bundle_id))
    .collect())
}

/// Marks the install for a keep-source rebuild, which the next `sync()` or `attach()` runs.
fn mark_rebuild_required(conn: &mut SqliteConnection) -> Result<()> {
    diesel::sql_query(
        "UPDATE _sync_attachment_state SET rebuild_required = 1 WHERE singleton_key = 1",
    )
    .execute(conn)?;
    Ok(())
}
