//! Snapshot rebuild: snapshot session -> paged chunks into `_sync_snapshot_stage` (bounded
//! memory) -> one transaction that replaces every synced table, the row state and the
//! checkpoint -> session deleted. Until that transaction commits the previous data stays.

use crate::apply::{RowEffect, apply_effects, in_apply_transaction, write_local_rows};
use crate::codec::invalid;
use crate::error::Result;
use crate::events::{Phase, SyncEvent};
use crate::handle::Oversync;
use crate::push::effect_from_wire;
use crate::state;
use crate::statement::{Bind, CachedStatement, in_statements, marks, value_rows};
use crate::transport::spawn_io;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::Sqlite;
use oversync_protocol::{Op, SnapshotSessionCreateRequest, SnapshotSourceReplacement};
use serde_json::{Map, Value};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// The bundle the snapshot is frozen at; the new checkpoint.
    pub snapshot_bundle_seq: i64,
    /// Rows fetched from the snapshot.
    pub rows: u64,
    /// Most snapshot rows held in memory at once (one chunk or one apply page): the
    /// snapshot streams through `_sync_snapshot_stage`, so this does not grow with its size.
    pub peak_rows_in_memory: u64,
}

#[derive(QueryableByName)]
struct StagedSnapshotRow {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    key_json: String,
    #[diesel(sql_type = BigInt)]
    row_version: i64,
    #[diesel(sql_type = Text)]
    payload: String,
}

/// What a rebuild after `history_pruned` did.
#[derive(Debug)]
pub(crate) enum PrunedCatchUp {
    /// The server's snapshot is at the local checkpoint: nothing newer exists.
    AlreadyAtHead,
    /// The synced tables were rebuilt from a newer snapshot.
    Rebuilt,
}

/// How a rebuild treats the source identity.
#[derive(Debug, Clone)]
enum SourceMode {
    /// Keep the current source (catching up after `history_pruned`, hydrating on attach).
    Keep,
    /// Rotate to the reserved replacement source after the swap commits.
    Rotate { reason: String, replacement: String },
    /// Attach to an account that has data (`remote_authoritative`): local intent is dropped
    /// and the user bound in the swap transaction.
    /// With `surface`, the dropped local rows are returned (see `Oversync::attach_with`).
    ReplaceLocal { user_id: String, surface: bool },
}

impl Oversync<'_> {
    /// Rebuilds every synced table from a server snapshot (paged, bounded memory, applied in
    /// one transaction). Local changes not yet on the server are kept: they are put back on
    /// top of the snapshot and pushed by the next sync.
    ///
    /// When the install is in source-recovery mode ([`Error::SourceRecoveryRequired`]),
    /// this also rotates the source: a replacement source id is reserved durably (the same
    /// one across retries and restarts), sent as `source_replacement`, and becomes current
    /// only when the snapshot is applied; the frozen outbox is then pushed under it.
    ///
    /// [`Error::SourceRecoveryRequired`]: crate::Error::SourceRecoveryRequired
    pub async fn rebuild(&mut self) -> Result<RebuildReport> {
        self.ensure_open()?;
        let attachment = state::attachment_state(self.conn)?;
        if attachment.binding_state != "attached" {
            return Err(crate::Error::NotAttached);
        }
        self.ensure_capabilities().await?;
        let operation = state::operation_state(self.conn)?;
        if operation.kind == "source_recovery" {
            // Fail closed before anything is sent: the reason goes on the wire as is.
            let reason = recovery_reason(&operation.reason)?.to_string();
            let current = attachment.current_source_id;
            let replacement = self.conn.immediate_transaction(|conn| -> Result<String> {
                let operation = state::operation_state(conn)?;
                if !operation.replacement_source_id.is_empty() {
                    let id = operation.replacement_source_id;
                    check_fresh_replacement(conn, &current, &id)?;
                    return Ok(id);
                }
                let id = uuid::Uuid::new_v4().to_string();
                diesel::sql_query(
                    "UPDATE _sync_operation_state SET replacement_source_id = ? WHERE singleton_key = 1",
                )
                .bind::<Text, _>(&id)
                .execute(conn)?;
                Ok(id)
            })?;
            return self
                .rebuild_with(SourceMode::Rotate {
                    reason,
                    replacement,
                })
                .await;
        }
        self.rebuild_with(SourceMode::Keep).await
    }

    /// Keep-source rebuild (to hydrate on attach, or when marked rebuild-required).
    pub(crate) async fn rebuild_keep_source(&mut self) -> Result<RebuildReport> {
        self.rebuild_with(SourceMode::Keep).await
    }

    /// Keep-source rebuild after a `history_pruned` answer. The snapshot session's bundle is
    /// checked before any chunk is fetched: below `required` (a bundle the server is known
    /// to have reached) the server went back in time, and a swap would lose that bundle;
    /// equal to `unless_at` (the local checkpoint) the server's head is where this database
    /// already is, so there is nothing newer to fetch. That last case is the steady state
    /// of a retained floor at the head (the floor prunes the head itself), which would
    /// otherwise download the whole snapshot on every sync.
    pub(crate) async fn rebuild_after_pruned(
        &mut self,
        required: i64,
        unless_at: Option<i64>,
    ) -> Result<PrunedCatchUp> {
        let mode = SourceMode::Keep;
        let (source, session) = self.open_snapshot_session(&mode).await?;
        let seq = session.snapshot_bundle_seq;
        let verdict = if seq < required {
            Err(crate::Error::ServerBehindCheckpoint {
                stable: seq,
                checkpoint: required,
            })
        } else if unless_at == Some(seq) {
            Ok(PrunedCatchUp::AlreadyAtHead)
        } else {
            return self
                .finish_rebuild(&source, &session, &mode)
                .await
                .map(|_| PrunedCatchUp::Rebuilt);
        };
        self.close_snapshot_session(&source, &session.snapshot_id)
            .await;
        verdict
    }

    /// Remote-authoritative hydration on attach: the snapshot replaces local rows and
    /// pending intent, and `user_id` is bound, in one transaction.
    pub(crate) async fn rebuild_replacing_local(
        &mut self,
        user_id: &str,
        surface: bool,
    ) -> Result<(RebuildReport, Vec<crate::lifecycle::ReplacedLocalRow>)> {
        let mode = SourceMode::ReplaceLocal {
            user_id: user_id.to_string(),
            surface,
        };
        let (source, session) = self.open_snapshot_session(&mode).await?;
        self.finish_rebuild_with(&source, &session, &mode).await
    }

    async fn rebuild_with(&mut self, mode: SourceMode) -> Result<RebuildReport> {
        let (source, session) = self.open_snapshot_session(&mode).await?;
        self.finish_rebuild(&source, &session, &mode).await
    }

    /// Creates the snapshot session a rebuild reads; returns the source it was opened for.
    async fn open_snapshot_session(
        &mut self,
        mode: &SourceMode,
    ) -> Result<(String, oversync_protocol::SnapshotSession)> {
        let transport = self.transport()?;
        let source = state::attachment_state(self.conn)?.current_source_id;
        let request = match mode {
            SourceMode::Keep | SourceMode::ReplaceLocal { .. } => {
                SnapshotSessionCreateRequest::default()
            }
            SourceMode::Rotate {
                reason,
                replacement,
            } => SnapshotSessionCreateRequest {
                source_replacement: Some(SnapshotSourceReplacement {
                    previous_source_id: source.clone(),
                    new_source_id: replacement.clone(),
                    reason: reason.clone(),
                }),
            },
        };
        let session = transport
            .create_snapshot_session(&source, &request)
            .await
            .map_err(|e| self.server_error(e))?;
        Ok((source, session))
    }

    /// Stages the session's chunks and swaps them in, then deletes the session.
    async fn finish_rebuild(
        &mut self,
        source: &str,
        session: &oversync_protocol::SnapshotSession,
        mode: &SourceMode,
    ) -> Result<RebuildReport> {
        Ok(self.finish_rebuild_with(source, session, mode).await?.0)
    }

    /// [`Self::finish_rebuild`], also returning the local rows a surfacing remote replace
    /// dropped.
    async fn finish_rebuild_with(
        &mut self,
        source: &str,
        session: &oversync_protocol::SnapshotSession,
        mode: &SourceMode,
    ) -> Result<(RebuildReport, Vec<crate::lifecycle::ReplacedLocalRow>)> {
        let result = self.stage_and_swap(source, session, mode).await;
        self.close_snapshot_session(source, &session.snapshot_id)
            .await;
        result
    }

    /// Deletes a snapshot session, best effort: sessions expire on their own.
    async fn close_snapshot_session(&mut self, source: &str, snapshot_id: &str) {
        if let Ok(transport) = self.transport() {
            let _ = transport.delete_snapshot_session(source, snapshot_id).await;
        }
    }

    async fn stage_and_swap(
        &mut self,
        source: &str,
        session: &oversync_protocol::SnapshotSession,
        mode: &SourceMode,
    ) -> Result<(RebuildReport, Vec<crate::lifecycle::ReplacedLocalRow>)> {
        let transport = self.transport()?;
        check_session(session)?;
        let total = session.row_count as u64;
        let page = self.page_size(|l| {
            (
                l.default_rows_per_snapshot_chunk,
                l.max_rows_per_snapshot_chunk,
            )
        });
        self.conn
            .batch_execute("DELETE FROM _sync_snapshot_stage")?;
        let mut after = 0i64;
        let mut staged = 0u64;
        let mut peak = 0u64;
        // Time spent validating and writing rows locally (the rest waits on the network).
        let mut local_time = std::time::Duration::ZERO;
        // Each page is asked for before the previous one is written (see `transport::io`).
        let request = |after: i64| {
            let (transport, source) = (transport.clone(), source.to_owned());
            let snapshot_id = session.snapshot_id.clone();
            spawn_io(async move {
                transport
                    .snapshot_chunk(&source, &snapshot_id, after, page)
                    .await
            })
        };
        let mut next = Some(request(after));
        while let Some(pending) = next.take() {
            let chunk = pending.await.map_err(|e| self.server_error(e))?;
            if chunk.snapshot_id != session.snapshot_id
                || chunk.snapshot_bundle_seq != session.snapshot_bundle_seq
            {
                return Err(invalid("snapshot chunk belongs to another snapshot"));
            }
            if chunk.rows.is_empty() && chunk.has_more {
                return Err(invalid("snapshot chunk made no progress"));
            }
            // The cursor names the last row sent: one that skips or repeats rows would stage
            // a snapshot with holes or duplicates that the row count alone might not catch.
            let expected_next = after + chunk.rows.len() as i64;
            if chunk.next_row_ordinal != expected_next {
                return Err(invalid(format!(
                    "snapshot chunk after {after} sent {} rows but answered next_row_ordinal {}",
                    chunk.rows.len(),
                    chunk.next_row_ordinal
                )));
            }
            if staged + chunk.rows.len() as u64 > total {
                return Err(invalid(format!(
                    "snapshot announced {total} rows but sent more"
                )));
            }
            if chunk.has_more && chunk.next_row_ordinal <= after {
                return Err(invalid(format!(
                    "snapshot cursor did not advance ({} after {after})",
                    chunk.next_row_ordinal
                )));
            }
            // Cancelled (dropped) when this page fails below.
            next = chunk.has_more.then(|| request(chunk.next_row_ordinal));
            let local = std::time::Instant::now();
            // Validate before staging so a hostile row never reaches the swap.
            for row in &chunk.rows {
                effect_from_wire(
                    self.config,
                    &self.rt.uuid_refs,
                    &row.schema,
                    &row.table,
                    &row.key,
                    Op::Update,
                    row.row_version.max(1),
                    Some(&row.payload),
                )?;
                if row.row_version < 1 || row.row_version > session.snapshot_bundle_seq {
                    return Err(invalid(format!(
                        "snapshot row_version {} outside 1..={}",
                        row.row_version, session.snapshot_bundle_seq
                    )));
                }
            }
            let row = format!("({})", marks(7));
            let mut ordinal = staged as i64;
            let conn = &mut *self.conn;
            in_statements(
                &chunk.rows,
                STAGE_ROWS_PER_STATEMENT,
                |size| {
                    format!(
                        "INSERT INTO _sync_snapshot_stage(snapshot_id, row_ordinal, schema_name, table_name, key_json, row_version, payload) VALUES {}",
                        value_rows(size, &row)
                    )
                },
                |template, rows| {
                    let texts: Vec<(String, String)> = rows
                        .iter()
                        .map(|row| {
                            (
                                Value::Object(row.key.clone()).to_string(),
                                row.payload.to_string(),
                            )
                        })
                        .collect();
                    let mut binds = Vec::with_capacity(rows.len() * 7);
                    for (row, (key_json, payload)) in rows.iter().zip(&texts) {
                        binds.extend([
                            Bind::Text(&session.snapshot_id),
                            Bind::Integer(ordinal),
                            Bind::Text(&row.schema),
                            Bind::Text(&row.table),
                            Bind::Text(key_json),
                            Bind::Integer(row.row_version),
                            Bind::Text(payload),
                        ]);
                        ordinal += 1;
                    }
                    CachedStatement::new(template)
                        .bind_all(binds)
                        .execute(conn)
                        .map_err(|e| match e {
                            diesel::result::Error::DatabaseError(
                                diesel::result::DatabaseErrorKind::UniqueViolation,
                                _,
                            ) => invalid("snapshot lists a key twice"),
                            other => other.into(),
                        })?;
                    Ok(())
                },
            )?;
            local_time += local.elapsed();
            staged += chunk.rows.len() as u64;
            peak = peak.max(chunk.rows.len() as u64);
            self.emit(SyncEvent::Progress {
                phase: Phase::Rebuild,
                done: staged,
                total: Some(total),
            });
            after = chunk.next_row_ordinal;
        }
        if staged != total {
            return Err(invalid(format!(
                "snapshot announced {total} rows but sent {staged}"
            )));
        }
        let config = self.config;
        let refs = &self.rt.uuid_refs;
        let snapshot_id = session.snapshot_id.clone();
        let seq = session.snapshot_bundle_seq;
        let swap = std::time::Instant::now();
        let (changed, apply_peak, replaced) = in_apply_transaction(self.conn, |conn| {
            let mut apply_peak = 0u64;
            // Read in the swap transaction, so they are exactly the rows it drops.
            let replaced = match mode {
                SourceMode::ReplaceLocal { surface: true, .. } => {
                    crate::lifecycle::replaced_local_rows(conn, config)?
                }
                _ => Vec::new(),
            };
            let intents = match mode {
                SourceMode::ReplaceLocal { .. } => Vec::new(),
                _ => local_intent(conn, config, mode)?,
            };
            for spec in config.tables() {
                conn.batch_execute(&format!(
                    "DELETE FROM \"{}\"",
                    spec.table_name.replace('"', "\"\"")
                ))?;
            }
            conn.batch_execute("DELETE FROM _sync_row_state; DELETE FROM _sync_dirty_rows;")?;
            let mut from = 0i64;
            loop {
                let rows: Vec<StagedSnapshotRow> = diesel::sql_query(
                    "SELECT schema_name, table_name, key_json, row_version, payload FROM _sync_snapshot_stage \
                     WHERE snapshot_id = ? AND row_ordinal >= ? ORDER BY row_ordinal LIMIT 1000",
                )
                .bind::<Text, _>(&snapshot_id)
                .bind::<BigInt, _>(from)
                .load(conn)?;
                if rows.is_empty() {
                    break;
                }
                from += rows.len() as i64;
                apply_peak = apply_peak.max(rows.len() as u64);
                let mut effects = Vec::with_capacity(rows.len());
                for row in rows {
                    let key: Map<String, Value> = serde_json::from_str(&row.key_json)
                        .map_err(|e| invalid(format!("staged key: {e}")))?;
                    let payload: Value = serde_json::from_str(&row.payload)
                        .map_err(|e| invalid(format!("staged payload: {e}")))?;
                    effects.push(effect_from_wire(
                        config,
                        refs,
                        &row.schema_name,
                        &row.table_name,
                        &key,
                        Op::Update,
                        row.row_version,
                        Some(&payload),
                    )?);
                }
                apply_effects(conn, effects, &Default::default())?;
            }
            // A prepared outbox kept under the same source is still pushed as it is.
            let outbox_stays =
                matches!(mode, SourceMode::Keep) && state::outbox_bundle(conn)?.state == "prepared";
            restore_intent(conn, refs, &intents, outbox_stays)?;
            match mode {
                SourceMode::Rotate { replacement, .. } => switch_source(conn, source, replacement)?,
                SourceMode::ReplaceLocal { user_id, .. } => {
                    crate::lifecycle::finish_remote_replace(conn, user_id)?
                }
                SourceMode::Keep => {}
            }
            diesel::sql_query("DELETE FROM _sync_snapshot_stage WHERE snapshot_id = ?")
                .bind::<Text, _>(&snapshot_id)
                .execute(conn)?;
            diesel::sql_query("UPDATE _sync_attachment_state SET last_bundle_seq_seen = ?, rebuild_required = 0 WHERE singleton_key = 1")
                .bind::<BigInt, _>(seq)
                .execute(conn)?;
            let changed: std::collections::HashSet<&'static str> =
                config.tables().iter().map(|t| t.table_name).collect();
            Ok((changed, apply_peak, replaced))
        })?;
        self.emit(SyncEvent::Applied {
            phase: Phase::Rebuild,
            rows: staged,
            elapsed: local_time + swap.elapsed(),
        });
        self.tables_changed(changed);
        let report = RebuildReport {
            snapshot_bundle_seq: seq,
            rows: staged,
            peak_rows_in_memory: peak.max(apply_peak),
        };
        Ok((report, replaced))
    }
}

/// Rows per staging statement at most: seven binds each, under SQLite's 32,766.
const STAGE_ROWS_PER_STATEMENT: usize = 4_000;

/// Refuses a snapshot session the rest of the rebuild cannot trust.
fn check_session(session: &oversync_protocol::SnapshotSession) -> Result<()> {
    if session.snapshot_id.is_empty() {
        return Err(invalid("snapshot session without snapshot_id"));
    }
    if session.snapshot_bundle_seq < 0 {
        return Err(invalid(format!(
            "snapshot_bundle_seq {}",
            session.snapshot_bundle_seq
        )));
    }
    if session.row_count < 0 {
        return Err(invalid(format!(
            "snapshot session row_count {}",
            session.row_count
        )));
    }
    if !is_rfc3339(&session.expires_at) {
        return Err(invalid(format!(
            "snapshot session expires_at {:?} is not an RFC 3339 time",
            session.expires_at.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Whether `text` is an RFC 3339 date-time (`2026-01-02T03:04:05.678Z`, `...+02:00`).
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let sep = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    let (Some(_year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return false;
    }
    if !((1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second <= 60)
    {
        return false;
    }
    let mut i = 19;
    if sep(i, b".") {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && sep(i + 3, b":")
                && digits(i + 1..i + 3).is_some_and(|h| h < 24)
                && digits(i + 4..i + 6).is_some_and(|m| m < 60)
        }
        _ => false,
    }
}

/// The persisted source-recovery reason as the protocol's replacement `reason`. An
/// unknown (or empty) reason is refused rather than remapped: the server must learn why the
/// source rotates.
pub(crate) fn recovery_reason(persisted: &str) -> Result<&'static str> {
    oversync_protocol::replacement_reason::ALL
        .into_iter()
        .find(|known| *known == persisted)
        .ok_or_else(|| crate::Error::InvalidRecoveryReason {
            reason: persisted.to_string(),
        })
}

/// Refuses a replacement source that is not fresh: the current source itself, a source
/// that already numbered bundles, or one that was itself replaced. A fresh row (reserved,
/// never used) or no row at all is fine.
pub(crate) fn check_fresh_replacement(
    conn: &mut SqliteConnection,
    current: &str,
    replacement: &str,
) -> Result<()> {
    #[derive(QueryableByName)]
    struct SourceRow {
        #[diesel(sql_type = BigInt)]
        next_source_bundle_id: i64,
        #[diesel(sql_type = Text)]
        replaced_by_source_id: String,
    }
    let refuse = |why: String| crate::Error::ReplacementSourceNotFresh {
        replacement: replacement.to_string(),
        why,
    };
    if replacement == current {
        return Err(refuse("it is the current source".into()));
    }
    let row: Option<SourceRow> = diesel::sql_query(
        "SELECT next_source_bundle_id, replaced_by_source_id FROM _sync_source_state WHERE source_id = ?",
    )
    .bind::<Text, _>(replacement)
    .get_result(conn)
    .optional()?;
    match row {
        Some(row) if !row.replaced_by_source_id.is_empty() => Err(refuse(format!(
            "it was already replaced by {:?}",
            row.replaced_by_source_id
        ))),
        Some(row) if row.next_source_bundle_id != 1 => Err(refuse(format!(
            "it already numbered bundles (next_source_bundle_id {})",
            row.next_source_bundle_id
        ))),
        _ => Ok(()),
    }
}

/// One local change that must survive a rebuild.
struct Intent {
    spec: &'static crate::TableSpec,
    key: String,
    key_json: String,
    op: Op,
    local_payload: Option<String>,
    /// Becomes a dirty row again (pushed by the next sync). Intent still frozen in a
    /// prepared outbox that keeps its source is only put back into the table.
    requeue: bool,
}

#[derive(QueryableByName)]
struct IntentRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    key_json: String,
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    payload: Option<String>,
}

/// Local intent, oldest first: a prepared outbox (a committed one is in the snapshot
/// already), then the dirty rows.
fn local_intent(
    conn: &mut SqliteConnection,
    config: &crate::OversyncConfig,
    mode: &SourceMode,
) -> Result<Vec<Intent>> {
    let outbox = state::outbox_bundle(conn)?;
    let mut rows: Vec<(IntentRow, bool)> = Vec::new();
    if outbox.state == "prepared" {
        let frozen: Vec<IntentRow> = diesel::sql_query(
            "SELECT table_name, key_json, op, local_payload AS payload FROM _sync_outbox_rows ORDER BY row_ordinal",
        )
        .load(conn)?;
        let requeue = matches!(mode, SourceMode::Rotate { .. });
        rows.extend(frozen.into_iter().map(|r| (r, requeue)));
    }
    let dirty: Vec<IntentRow> = diesel::sql_query(format!(
        "SELECT table_name, key_json, op, {} AS payload FROM _sync_dirty_rows AS d ORDER BY dirty_ordinal",
        crate::capture::payload_sql(config, "d")
    ))
    .load(conn)?;
    rows.extend(dirty.into_iter().map(|r| (r, true)));
    let mut out = Vec::with_capacity(rows.len());
    for (row, requeue) in rows {
        let spec = config.table_named(&row.table_name).ok_or_else(|| {
            crate::Error::InvalidState(format!(
                "pending change for unregistered table {}",
                row.table_name
            ))
        })?;
        let op = Op::parse(&row.op)
            .ok_or_else(|| crate::Error::InvalidState(format!("pending op {:?}", row.op)))?;
        out.push(Intent {
            spec,
            key: crate::codec::local_key_value(spec, &row.key_json)?,
            key_json: row.key_json,
            op,
            local_payload: row.payload,
            requeue,
        });
    }
    Ok(out)
}

/// Puts local intent back on top of freshly applied server state: rows into the app's
/// tables, and (for requeued intent) dirty rows based on the new `_sync_row_state`.
/// `outbox_stays`: the frozen outbox is pushed later as it is, so a delete of a key it
/// carries must follow it as a DELETE, even though the snapshot does not hold the key yet.
fn restore_intent(
    conn: &mut SqliteConnection,
    refs: &crate::codec::UuidRefs,
    intents: &[Intent],
    outbox_stays: bool,
) -> Result<()> {
    let mut effects = Vec::with_capacity(intents.len());
    for intent in intents {
        let values = match (&intent.op, &intent.local_payload) {
            (Op::Delete, _) => None,
            (_, Some(payload)) => {
                let wire = crate::codec::payload_local_to_wire(intent.spec, refs, payload)?;
                Some(crate::codec::sql_values(intent.spec, refs, &wire)?)
            }
            (_, None) => {
                return Err(crate::Error::InvalidState(format!(
                    "{}: pending write without payload",
                    intent.spec.table_name
                )));
            }
        };
        effects.push(RowEffect {
            spec: intent.spec,
            key: intent.key.clone(),
            key_json: intent.key_json.clone(),
            row_version: 0,
            values,
        });
    }
    write_local_rows(conn, effects)?;
    for intent in intents.iter().filter(|i| i.requeue) {
        let sql = if intent.op == Op::Delete {
            "INSERT INTO _sync_dirty_rows(schema_name, table_name, key_json, op, base_row_version, payload) \
             SELECT 'main', ?1, ?2, 'DELETE', IFNULL(rs.row_version, 0), NULL \
             FROM (SELECT 1) LEFT JOIN _sync_row_state AS rs ON rs.schema_name = 'main' AND rs.table_name = ?1 AND rs.key_json = ?2 \
             WHERE ?3 IS NULL AND (rs.deleted = 0 OR (?4 AND EXISTS (SELECT 1 FROM _sync_outbox_rows AS o \
               WHERE o.table_name = ?1 AND o.key_json = ?2))) \
             ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET op = 'DELETE', payload = NULL, base_row_version = excluded.base_row_version"
        } else {
            "INSERT INTO _sync_dirty_rows(schema_name, table_name, key_json, op, base_row_version, payload) \
             SELECT 'main', ?1, ?2, CASE WHEN rs.deleted = 0 THEN 'UPDATE' ELSE 'INSERT' END, IFNULL(rs.row_version, 0), ?3 \
             FROM (SELECT 1) LEFT JOIN _sync_row_state AS rs ON rs.schema_name = 'main' AND rs.table_name = ?1 AND rs.key_json = ?2 \
             WHERE true ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET op = excluded.op, payload = excluded.payload, \
             base_row_version = excluded.base_row_version"
        };
        if intent.op == Op::Delete {
            // A delete of a row the server does not hold leaves nothing to push.
            diesel::sql_query("DELETE FROM _sync_dirty_rows WHERE table_name = ? AND key_json = ?")
                .bind::<Text, _>(intent.spec.table_name)
                .bind::<Text, _>(&intent.key_json)
                .execute(conn)?;
        }
        let query = diesel::sql_query(sql)
            .into_boxed::<Sqlite>()
            .bind::<Text, _>(intent.spec.table_name)
            .bind::<Text, _>(intent.key_json.clone())
            .bind::<diesel::sql_types::Nullable<Text>, _>(intent.local_payload.clone());
        let query = if intent.op == Op::Delete {
            query.bind::<diesel::sql_types::Bool, _>(outbox_stays)
        } else {
            query
        };
        query.execute(conn)?;
    }
    Ok(())
}

/// Makes the reserved replacement the current source, after the snapshot is in place.
fn switch_source(conn: &mut SqliteConnection, previous: &str, replacement: &str) -> Result<()> {
    diesel::sql_query(
        "INSERT INTO _sync_source_state(source_id) VALUES (?) ON CONFLICT(source_id) DO NOTHING",
    )
    .bind::<Text, _>(replacement)
    .execute(conn)?;
    diesel::sql_query(
        "UPDATE _sync_source_state SET replaced_by_source_id = ? WHERE source_id = ?",
    )
    .bind::<Text, _>(replacement)
    .bind::<Text, _>(previous)
    .execute(conn)?;
    diesel::sql_query(
        "UPDATE _sync_attachment_state SET current_source_id = ? WHERE singleton_key = 1",
    )
    .bind::<Text, _>(replacement)
    .execute(conn)?;
    conn.batch_execute(
        "DELETE FROM _sync_outbox_rows;
         UPDATE _sync_outbox_bundle SET state = 'none', source_id = '', source_bundle_id = 0, row_count = 0,
           initialization_id = '', canonical_request_hash = '', remote_bundle_hash = '', remote_bundle_seq = 0 WHERE singleton_key = 1;
         UPDATE _sync_operation_state SET kind = 'none', reason = '', replacement_source_id = '' WHERE singleton_key = 1;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_are_told_from_other_text() {
        for ok in [
            "2026-12-01T21:30:00Z",
            "2026-12-01T21:30:00.123456Z",
            "2026-12-01t21:30:00+02:00",
            "2026-12-01 21:30:00-05:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "",
            "tomorrow",
            "2026-12-01",
            "2026-12-01T21:30:00",
            "2026-13-01T21:30:00Z",
            "2026-12-01T25:30:00Z",
            "2026-12-01T21:30:00.Z",
            "2026-12-01T21:30:00+0200",
            "2026-12-01T21:30:00Zjunk",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn only_protocol_reasons_are_accepted() {
        for reason in oversync_protocol::replacement_reason::ALL {
            assert_eq!(recovery_reason(reason).unwrap(), reason);
        }
        for reason in ["", "unknown_reason", "SOURCE_RETIRED"] {
            assert!(matches!(
                recovery_reason(reason),
                Err(crate::Error::InvalidRecoveryReason { .. })
            ));
        }
    }
}
