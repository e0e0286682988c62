//! Pull: bundles committed by other devices, applied whole and in order up to the stable
//! ceiling the first response fixes; the checkpoint moves in the same transaction as the
//! bundles' rows, a few bundles per transaction.

use crate::apply::{RowEffect, apply_effects, drop_orphans, drop_superseded, in_apply_transaction};
use crate::codec::invalid;
use crate::error::{Error, Result};
use crate::events::{Phase, SyncEvent};
use crate::handle::Oversync;
use crate::push::effect_from_wire;
use crate::state;
use crate::transport::{PullEachError, PullPart};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use oversync_protocol::{Bundle, codes};
use std::collections::HashSet;
use std::time::{Duration, Instant};

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
        let cache = state::pragma_int(self.conn, "cache_size")?;
        set_page_cache_size(self.conn, -PULL_PAGE_CACHE_KIB)?;
        let pulled = self.pull_pages().await;
        // A pull whose future is dropped keeps the larger cache: memory, nothing else.
        let restored = set_page_cache_size(self.conn, cache);
        let pulled = pulled?;
        restored?;
        Ok(pulled)
    }

    /// The pages of [`Oversync::pull_to_stable`], after its checks.
    async fn pull_pages(&mut self) -> Result<PullOutcome> {
        let transport = self.transport()?;
        let most_bundles = self
            .rt
            .limits
            .as_ref()
            .and_then(|l| l.max_bundles_per_pull)
            .filter(|n| *n > 0)
            .unwrap_or(1000)
            .min(1000) as u32;
        let mut run = PullRun {
            target: None,
            last: 0,
            received: 0,
            batch: Vec::new(),
            batch_rows: 0,
            bundles_applied: 0,
            rows_applied: 0,
            own_rows_skipped: 0,
            replayed: replayed_source_bundles(self.conn)?,
            // Read before `ahead`: a commit by another connection in between changes it.
            data_version: state::data_version(self.conn)?,
            ahead: state::newest_row_version(self.conn)?,
            apply_time: Duration::ZERO,
        };
        let mut pages = PageSize::new(most_bundles);
        loop {
            let attachment = state::attachment_state(self.conn)?;
            run.last = attachment.last_bundle_seq_seen;
            run.received = run.last;
            if run.target.is_some_and(|t| run.last >= t) {
                break;
            }
            let before = (run.last, run.rows_applied + run.own_rows_skipped);
            let page = transport
                .pull_each(
                    &attachment.current_source_id,
                    run.last,
                    pages.next(),
                    run.target,
                    |part| match part {
                        PullPart::Stable(stable) => run.ceiling(self.conn, stable),
                        PullPart::Bundle(bundle) => self.accept_pulled(&mut run, bundle),
                    },
                )
                .await;
            // Whatever ended the page, the bundles it buffered are complete and were checked:
            // they are applied first, so the checkpoint holds every bundle that arrived whole.
            let applied = self.apply_batch(&mut run);
            let end = match (page, applied) {
                (Err(PullEachError::Stopped(stop)), _) | (_, Err(stop)) => {
                    return self.stopped(&run, stop);
                }
                (Ok(end), Ok(())) => end,
                (Err(PullEachError::Transport(e)), Ok(()))
                    if e.code() == Some(codes::HISTORY_PRUNED) =>
                {
                    self.finish_pull(&run);
                    // Behind the retained history: only a snapshot catches up. It is taken
                    // at the server's head, so it ends this pull whatever it holds; pulling
                    // on from it could be answered history_pruned again (a floor at the head
                    // prunes the head itself) and rebuild forever. It must reach both the
                    // local checkpoint and any ceiling this pull was promised.
                    let required = run.target.unwrap_or(0).max(run.last);
                    let caught_up = self.rebuild_after_pruned(required, Some(run.last)).await;
                    if let Err(Error::ServerBehindCheckpoint { .. }) = &caught_up {
                        mark_rebuild_required(self.conn)?;
                    }
                    caught_up?;
                    return self.pulled(&run);
                }
                (Err(PullEachError::Transport(e)), Ok(())) => {
                    self.finish_pull(&run);
                    return Err(self.server_error(e));
                }
            };
            let stable = run.target.unwrap_or(end.stable_bundle_seq);
            pages.observed(
                run.last - before.0,
                run.rows_applied + run.own_rows_skipped - before.1,
                end.body_bytes,
            );
            if run.last == before.0 {
                // Nothing after the checkpoint yet short of the ceiling: asking again would
                // get the same page, so a server that does this would be pulled forever.
                if run.last < stable {
                    self.finish_pull(&run);
                    return Err(invalid(format!(
                        "pull page made no progress: no bundle after {} below the stable ceiling {stable}",
                        run.last
                    )));
                }
                break;
            }
            if !end.has_more && run.last >= stable {
                break;
            }
        }
        self.finish_pull(&run);
        self.pulled(&run)
    }

    /// Ends a pull that `stop` interrupted.
    fn stopped(&self, run: &PullRun, stop: Stop) -> Result<PullOutcome> {
        self.finish_pull(run);
        match stop {
            Stop::Blocked(pending_rows) => {
                Ok(PullOutcome::BlockedByPendingChanges { pending_rows })
            }
            Stop::Failed(e) => Err(e),
        }
    }

    /// The outcome of a pull that reached its ceiling.
    fn pulled(&mut self, run: &PullRun) -> Result<PullOutcome> {
        Ok(PullOutcome::UpToDate {
            bundles_applied: run.bundles_applied,
            rows_applied: run.rows_applied,
            own_rows_skipped: run.own_rows_skipped,
            last_bundle_seq_seen: state::attachment_state(self.conn)?.last_bundle_seq_seen,
        })
    }

    /// Reports the local work of a pull (whatever ended it).
    fn finish_pull(&self, run: &PullRun) {
        if run.bundles_applied > 0 {
            self.emit(SyncEvent::Applied {
                phase: Phase::Pull,
                rows: run.rows_applied,
                elapsed: run.apply_time,
            });
        }
    }

    /// Checks and decodes one pulled bundle as the answer streams in, and buffers it; the
    /// buffer is written by [`Oversync::apply_batch`] once it holds [`APPLY_BATCH_ROWS`]
    /// rows, and at the end of the page.
    fn accept_pulled(&mut self, run: &mut PullRun, bundle: Bundle) -> Result<(), Stop> {
        let started = Instant::now();
        let last = run.received;
        let stable = run
            .target
            .ok_or_else(|| invalid("bundle before stable_bundle_seq"))?;
        // Bundle sequences are contiguous per user: a gap or a reordering would move
        // the checkpoint past a bundle never applied.
        if bundle.bundle_seq != last + 1 || bundle.bundle_seq > stable {
            return Err(invalid(format!(
                "bundle {} is not the next after {last} (ceiling {stable})",
                bundle.bundle_seq
            ))
            .into());
        }
        let seq = bundle.bundle_seq;
        let rows = bundle.rows.len();
        let own = run
            .replayed
            .get(&bundle.source_id)
            .is_some_and(|next| bundle.source_bundle_id < *next);
        // Our own bundle, already replayed: its rows are here (or overtaken by local
        // changes pushed since), so only the checkpoint moves over it.
        let effects = if own {
            None
        } else {
            let config = self.config;
            let mut effects = Vec::with_capacity(rows);
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
            Some(effects)
        };
        drop(bundle);
        run.received = seq;
        run.batch.push(Pulled {
            seq,
            rows: rows as u64,
            effects,
        });
        run.batch_rows += rows;
        run.apply_time += started.elapsed();
        if run.batch_rows >= APPLY_BATCH_ROWS {
            self.apply_batch(run)?;
        }
        Ok(())
    }

    /// Writes the buffered bundles in order in one transaction, and moves the checkpoint
    /// over the last of them in it. One commit per bundle rewrote every page its rows
    /// touched (random keys touch about one page per row) once per bundle, which made the
    /// apply grow with the database; a few commits per page keep it flat.
    fn apply_batch(&mut self, run: &mut PullRun) -> Result<(), Stop> {
        let Some(last_seq) = run.batch.last().map(|b| b.seq) else {
            return Ok(());
        };
        let started = Instant::now();
        let batch = std::mem::take(&mut run.batch);
        run.batch_rows = 0;
        let bundles = batch.len() as u64;
        let (theirs, own) = batch.iter().fold((0, 0), |(theirs, own), b| {
            if b.effects.is_some() {
                (theirs + b.rows, own)
            } else {
                (theirs, own + b.rows)
            }
        });
        let (mut ahead, mut data_version) = (run.ahead, run.data_version);
        let changed = in_apply_transaction(self.conn, |conn| {
            // Re-checked inside the transaction: the app (or another connection) may
            // have written while the page was downloading. That is the same state as
            // the check before the pull: nothing is applied and the caller pushes first.
            let pending_rows = state::pending_row_count(conn)?;
            if pending_rows > 0 {
                return Ok(Err(Stop::Blocked(pending_rows)));
            }
            // Another connection (the watcher, say) may have applied some already.
            let seen = state::attachment_state(conn)?.last_bundle_seq_seen;
            // Or replayed a push, which writes row versions above the checkpoint: `ahead`
            // is only read again when some other connection committed since.
            let version = state::data_version(conn)?;
            if version != data_version {
                data_version = version;
                ahead = state::newest_row_version(conn)?;
            }
            let mut changed = HashSet::new();
            for bundle in batch.into_iter().filter(|b| b.seq > seen) {
                if let Some(effects) = bundle.effects {
                    changed.extend(apply_bundle(conn, effects, bundle.seq < ahead)?);
                }
            }
            advance_checkpoint(conn, last_seq)?;
            Ok(Ok(changed))
        })??;
        run.apply_time += started.elapsed();
        (run.ahead, run.data_version) = (ahead, data_version);
        self.tables_changed(changed);
        run.last = last_seq;
        run.bundles_applied += bundles;
        run.rows_applied += theirs;
        run.own_rows_skipped += own;
        if theirs > 0 {
            self.emit(SyncEvent::Progress {
                phase: Phase::Pull,
                done: run.rows_applied,
                total: None,
            });
        }
        Ok(())
    }
}

/// Applies one other device's bundle inside the caller's apply transaction. `behind_local`
/// says local row state may be newer than this bundle: only then can an effect be
/// superseded, and a dropped one orphan a child (see [`PullRun::ahead`]).
fn apply_bundle(
    conn: &mut SqliteConnection,
    effects: Vec<RowEffect>,
    behind_local: bool,
) -> Result<HashSet<&'static str>> {
    if !behind_local {
        return apply_effects(conn, effects, &Default::default());
    }
    let effects = drop_superseded(conn, effects)?;
    let upserted: HashSet<String> = effects
        .iter()
        .filter(|e| e.values.is_some())
        .map(|e| e.spec.table_name.to_string())
        .collect();
    let changed = apply_effects(conn, effects, &Default::default())?;
    drop_orphans(conn, &upserted)?;
    Ok(changed)
}

/// A bundle checked and decoded, waiting for its batch's transaction.
struct Pulled {
    seq: i64,
    rows: u64,
    /// `None` for this device's own bundle, already replayed: only the checkpoint moves.
    effects: Option<Vec<RowEffect>>,
}

/// Rows of pulled bundles written per transaction (see [`Oversync::apply_batch`]); it bounds
/// the decoded rows held in memory too.
const APPLY_BATCH_ROWS: usize = 10_000;

/// The state of one `pull_to_stable` across its pages.
struct PullRun {
    /// The stable ceiling the first answer fixed.
    target: Option<i64>,
    /// The checkpoint: the last bundle applied.
    last: i64,
    /// The last bundle accepted from the answer: applied, or waiting in `batch`.
    received: i64,
    /// Bundles accepted and not yet applied, in order.
    batch: Vec<Pulled>,
    /// Rows in `batch`.
    batch_rows: usize,
    bundles_applied: u64,
    rows_applied: u64,
    own_rows_skipped: u64,
    /// See [`replayed_source_bundles`].
    replayed: std::collections::HashMap<String, i64>,
    /// Rows whose local state is newer than a bundle (our own replayed bundle, a conflict
    /// resolution): bundles below this may lose a parent to `drop_superseded` and leave its
    /// child orphaned, in that bundle or a later one, so those bundles are checked.
    ahead: i64,
    /// [`state::data_version`] when `ahead` was read.
    data_version: i64,
    /// Time spent validating and writing bundles locally (no network).
    apply_time: Duration,
}

impl PullRun {
    /// Checks an answer's `stable_bundle_seq` before any of its bundles is applied.
    fn ceiling(&mut self, conn: &mut SqliteConnection, stable: i64) -> Result<(), Stop> {
        if stable < self.last {
            // The server lost bundles this database applied (restored from a backup,
            // or reset). Only a snapshot brings the two back together; mark it so the
            // next sync (or attach) rebuilds, and say so now rather than diverge.
            mark_rebuild_required(conn)?;
            return Err(Error::ServerBehindCheckpoint {
                stable,
                checkpoint: self.last,
            }
            .into());
        }
        let target = *self.target.get_or_insert(stable);
        if stable != target {
            return Err(invalid(format!(
                "stable_bundle_seq changed from {target} to {stable} within one pull"
            ))
            .into());
        }
        Ok(())
    }
}

/// Why applying a streamed page stopped.
enum Stop {
    /// Local changes wait to be pushed.
    Blocked(u64),
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl From<diesel::result::Error> for Stop {
    fn from(e: diesel::result::Error) -> Self {
        Stop::Failed(e.into())
    }
}

/// How many bundles to ask for per page: a page is bounded by rows and bytes, not only by
/// bundles, so a server never builds (and one answer never carries) 1,000 bundles of 1,000
/// rows. The first page asks for a few bundles; later pages are sized from the rows and
/// bytes per bundle seen so far. (The client decodes and applies as the body streams, so its
/// own memory does not depend on the page; the server's and the answer's size do.)
struct PageSize {
    most: u32,
    bundles: u64,
    rows: u64,
    bytes: u64,
}

/// Rows one page aims at.
const PAGE_ROWS: u64 = 10_000;
/// Body bytes one page aims at.
const PAGE_BYTES: u64 = 4 << 20;
/// Bundles the first page asks for, before the rows per bundle are known.
const FIRST_PAGE_BUNDLES: u32 = 16;

impl PageSize {
    fn new(most: u32) -> Self {
        PageSize {
            most: most.max(1),
            bundles: 0,
            rows: 0,
            bytes: 0,
        }
    }

    fn next(&self) -> u32 {
        if self.bundles == 0 {
            return FIRST_PAGE_BUNDLES.min(self.most);
        }
        let rows_per_bundle = self.rows.div_ceil(self.bundles).max(1);
        let bytes_per_bundle = self.bytes.div_ceil(self.bundles).max(1);
        (PAGE_ROWS / rows_per_bundle)
            .min(PAGE_BYTES / bytes_per_bundle)
            .clamp(1, u64::from(self.most)) as u32
    }

    /// Counts a page of `bundles` bundles, `rows` rows and `bytes` bytes.
    fn observed(&mut self, bundles: i64, rows: u64, bytes: u64) {
        if bundles > 0 {
            self.bundles += bundles as u64;
            self.rows += rows;
            self.bytes += bytes;
        }
    }
}

/// SQLite's page cache (KiB) while a pull applies: a 10,000-row batch of random keys touches
/// about one page per row in each b-tree it writes, far more than the default 2 MB holds, so
/// the transaction spilled pages to the WAL and read them back (a quarter of the apply at
/// 100k rows). The connection's own size is restored when the pull ends.
const PULL_PAGE_CACHE_KIB: i64 = 16 * 1024;

/// Sets `PRAGMA cache_size` (pages when positive, KiB when negative).
fn set_page_cache_size(conn: &mut SqliteConnection, size: i64) -> Result<()> {
    diesel::sql_query(format!("PRAGMA cache_size = {size}")).execute(conn)?;
    Ok(())
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
