//! Push: capture -> outbox -> upload -> commit -> fetch committed bundle -> replay.
//!
//! 1. `freeze`: the dirty set moves into `_sync_outbox_rows` in foreign-key order (upserts
//!    parents first, then deletes children first; first-touch order within a table's rank, see
//!    `order`), in one transaction, tagged with the next `source_bundle_id`. The outbox survives restarts: a
//!    later call resumes it instead of collecting again.
//! 2. `upload`: a push session, contiguous chunks within the server's limit, commit. The
//!    committed `bundle_seq` and `bundle_hash` are stored (`committed_remote`) before
//!    anything else, so a crash after commit resumes at step 3 (the server answers a re-created
//!    session with `already_committed`).
//! 3. `fetch`: the committed rows, paged into `_sync_push_stage`, hashed as they arrive; a hash
//!    mismatch stops before anything is applied.
//! 4. `replay`: one transaction writes the authoritative rows (keys edited since the freeze keep
//!    their newer local value and are rebased), advances `next_source_bundle_id` and the
//!    checkpoint, and clears the outbox.

use crate::apply::{RowEffect, apply_effects, in_apply_transaction};
use crate::bundle_check::OutboxCheck;
use crate::codec::SqlValue;
use crate::codec::{self, invalid};
use crate::conflict::{Conflict, Resolution, merged_to_wire};
use crate::error::{Error, Result};
use crate::events::{Phase, SyncEvent};
use crate::handle::Oversync;
use crate::quarantine::{RowRejection, row_rejection};
use crate::state;
use crate::statement::{Bind, BindType, CachedStatement, in_statements, marks, value_rows};
use crate::transport::{TransportError, spawn_io};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use oversync_protocol::{
    BundleHasher, BundleRow, Op, PushConflictResponse, PushRequestRow, PushSessionChunkRequest,
    PushSessionCreateRequest, PushSessionCreateResponse, codes,
};
use serde_json::{Map, Value};

/// What [`Oversync::push_pending`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// No local changes were waiting.
    NothingToPush,
    /// The local changes are committed on the server and replayed locally.
    Pushed {
        /// The committed bundle.
        bundle_seq: i64,
        /// Rows this device sent.
        rows_pushed: u64,
        /// Conflicts resolved on the way.
        conflicts_resolved: u32,
    },
    /// Every pending change was dropped by conflict resolution in favour of the server.
    ResolvedWithoutPush {
        /// Conflicts resolved.
        conflicts_resolved: u32,
    },
}

/// How many conflict retries one push may still make: one per distinct conflicting row, at
/// most the rows of all bundles frozen during the push together, plus
/// [`REPEATED_CONFLICT_RETRIES`] for rows that conflict again after their resolution. A
/// server that keeps naming rows it already named cannot keep a push spinning (and it can
/// only name rows of the bundle: `resolve_conflict` refuses any other).
///
/// The bound counts every bundle, not the first: a resolution returns the outbox to the
/// dirty set, and the next freeze also takes rows written after the first freeze (a resumed
/// one-row outbox, then a bundle of the rows written offline since, each conflicting).
#[derive(Debug, Default)]
struct ConflictBudget {
    seen: std::collections::HashSet<(String, String)>,
    bundle_rows: u64,
    repeats_used: u32,
}

impl ConflictBudget {
    /// Whether a conflict on this row of a frozen bundle of `bundle_rows` rows may be
    /// resolved and the push retried. Called once per conflict, so once per frozen bundle.
    fn admit(&mut self, bundle_rows: u64, table: &str, key: String) -> bool {
        self.bundle_rows = self.bundle_rows.saturating_add(bundle_rows);
        let row = (table.to_string(), key);
        if !self.seen.contains(&row) {
            if self.seen.len() as u64 >= self.bundle_rows {
                return false;
            }
            self.seen.insert(row);
            true
        } else if self.repeats_used < REPEATED_CONFLICT_RETRIES {
            self.repeats_used += 1;
            true
        } else {
            false
        }
    }
}

/// A row as a JSON object (wire form unless said otherwise).
type Row = Map<String, Value>;
/// A local row to write (`None` deletes it).
type LocalRow = Option<Row>;
/// An outbox row's new op and payload.
type PushIntent = (Op, Option<Row>);

/// Retries of one push allowed on a row that was already resolved once in the same push
/// (the server row changed again meanwhile), on top of one retry per distinct row.
const REPEATED_CONFLICT_RETRIES: u32 = 2;
/// Retries of a committed-bundle page answered `committed_bundle_not_found`.
const COMMITTED_NOT_FOUND_RETRIES: u32 = 3;
/// Rows per committed-bundle page and default push chunk.
const DEFAULT_CHUNK_ROWS: u32 = 1000;

#[derive(QueryableByName)]
struct OutboxRow {
    #[diesel(sql_type = BigInt)]
    row_ordinal: i64,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    key_json: String,
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = BigInt)]
    base_row_version: i64,
    #[diesel(sql_type = Nullable<Text>)]
    local_payload: Option<String>,
}

/// What `fetch_committed` found.
enum Fetched {
    /// The bundle is staged and is exactly this outbox's intent.
    Ours,
    /// The bundle is below the server's retained history (`history_pruned`).
    Pruned,
    /// The server holds another install's bundle under this source tuple (a copied database);
    /// nothing was applied. Says what differs.
    AnotherInstalls(String),
}

enum Upload {
    Committed {
        bundle_seq: i64,
        bundle_hash: String,
    },
    Conflict(Box<oversync_protocol::PushConflictDetails>),
    /// The server refused the outbox row at this ordinal for its data: quarantine it.
    Rejected(i64, RowRejection),
    /// The server refused the commit for its data without naming a row: bisect.
    Split,
}

impl Oversync<'_> {
    /// Pushes every captured local change as one bundle and replays the server's committed
    /// version locally. Safe to call again after any failure or crash: it resumes the frozen
    /// outbox, and nothing is applied twice.
    pub async fn push_pending(&mut self) -> Result<PushOutcome> {
        self.ensure_attached()?;
        self.ensure_capabilities().await?;
        let mut conflicts_resolved = 0;
        let mut budget = ConflictBudget::default();
        let mut rotated = false;
        // Seed-push lease renewals since the last upload that got an answer (bounded).
        let mut renewals = 0;
        // Bundles committed earlier in this call while bisecting a refused push.
        let mut bisected: Option<(i64, u64)> = None;
        loop {
            let Some(outbox) = self.freeze()? else {
                if let Some((bundle_seq, rows_pushed)) = bisected.filter(|(seq, _)| *seq > 0) {
                    return Ok(PushOutcome::Pushed {
                        bundle_seq,
                        rows_pushed,
                        conflicts_resolved,
                    });
                }
                return Ok(if conflicts_resolved > 0 {
                    PushOutcome::ResolvedWithoutPush { conflicts_resolved }
                } else {
                    PushOutcome::NothingToPush
                });
            };
            let (bundle_seq, bundle_hash) = if outbox.state == "committed_remote" {
                (outbox.remote_bundle_seq, outbox.remote_bundle_hash.clone())
            } else {
                let uploaded = match self.upload(&outbox).await {
                    Ok(uploaded) => {
                        renewals = 0;
                        uploaded
                    }
                    // The seed push's lease (lifecycle.rs): renewed, or a typed error.
                    Err(e) if !outbox.initialization_id.is_empty() => {
                        self.seed_push_failed(e, &mut renewals).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match uploaded {
                    Upload::Committed {
                        bundle_seq,
                        bundle_hash,
                    } => {
                        diesel::sql_query(
                            "UPDATE _sync_outbox_bundle SET state = 'committed_remote', remote_bundle_seq = ?, remote_bundle_hash = ? WHERE singleton_key = 1",
                        )
                        .bind::<BigInt, _>(bundle_seq)
                        .bind::<Text, _>(&bundle_hash)
                        .execute(self.conn)?;
                        (bundle_seq, bundle_hash)
                    }
                    Upload::Conflict(details) => {
                        // The server reports one conflicting row per 409: keep going while
                        // each retry resolves a row not seen before (bounded by the bundle's
                        // size), with a small allowance for rows that conflict again.
                        let bundle_rows = outbox.row_count.max(0) as u64;
                        if !budget.admit(bundle_rows, &details.table, key_text(&details.key)) {
                            return Err(Error::ConflictRetriesExhausted {
                                table: details.table.clone(),
                                key: key_text(&details.key),
                                retries: conflicts_resolved,
                            });
                        }
                        self.resolve_conflict(&details)?;
                        conflicts_resolved += 1;
                        self.emit(SyncEvent::RetryScheduled {
                            attempt: conflicts_resolved,
                            delay: std::time::Duration::ZERO,
                            reason: format!("push conflict on {} resolved", details.table),
                        });
                        continue;
                    }
                    // Quarantine (see quarantine.rs): set the refused row aside, or halve the
                    // bundle to find it; the rest is pushed on the next turn.
                    Upload::Rejected(ordinal, rejection) => {
                        self.quarantine_outbox_row(ordinal, &rejection)?;
                        bisected.get_or_insert((0, 0));
                        continue;
                    }
                    Upload::Split => {
                        self.defer_outbox_tail()?;
                        bisected.get_or_insert((0, 0));
                        continue;
                    }
                }
            };
            match self
                .fetch_committed(&outbox, bundle_seq, &bundle_hash)
                .await?
            {
                Fetched::Ours => {}
                Fetched::AnotherInstalls(why) if rotated => {
                    // A source minted a moment ago cannot collide: the server changed the rows.
                    return Err(invalid(format!(
                        "bundle {bundle_seq} committed under a fresh source differs from what was sent: {why}"
                    )));
                }
                Fetched::AnotherInstalls(why) => {
                    rotated = true;
                    // Another copy of this database pushed under the same source tuple: our
                    // bundle was never committed. A fresh source carries the outbox again.
                    self.conn.immediate_transaction(|conn| {
                        state::rotate_source_locally(conn, state::RotationCause::SourceCollision)
                    })?;
                    self.emit(SyncEvent::RetryScheduled {
                        attempt: conflicts_resolved + 1,
                        delay: std::time::Duration::ZERO,
                        reason: format!(
                            "source collision, pushing again under a fresh source: {why}"
                        ),
                    });
                    continue;
                }
                Fetched::Pruned => {
                    // Our bundle is below the retained floor: a snapshot at or after it
                    // contains it. One rebuild, then the outbox is done; a snapshot older than
                    // our own bundle means the server lost it, and the outbox stays for a
                    // later retry.
                    self.rebuild_after_pruned(bundle_seq, None).await?;
                    in_apply_transaction(self.conn, |conn| {
                        retire_outbox(conn, &outbox, bundle_seq)
                    })?;
                    return Ok(PushOutcome::Pushed {
                        bundle_seq,
                        rows_pushed: outbox.row_count.max(0) as u64,
                        conflicts_resolved,
                    });
                }
            }
            self.replay(&outbox, bundle_seq)?;
            let rows_pushed = outbox.row_count.max(0) as u64;
            if let Some((_, before)) = bisected {
                // Rows set aside while bisecting wait in the captured changes: push them too.
                bisected = Some((bundle_seq, before + rows_pushed));
                continue;
            }
            return Ok(PushOutcome::Pushed {
                bundle_seq,
                rows_pushed,
                conflicts_resolved,
            });
        }
    }

    pub(crate) fn ensure_attached(&mut self) -> Result<state::AttachmentState> {
        self.ensure_open()?;
        let attachment = state::attachment_state(self.conn)?;
        if attachment.binding_state != "attached" {
            return Err(Error::NotAttached);
        }
        let operation = state::operation_state(self.conn)?;
        if operation.kind == "source_recovery" {
            crate::snapshot::recovery_reason(&operation.reason)?;
            return Err(Error::SourceRecoveryRequired {
                reason: operation.reason,
            });
        }
        Ok(attachment)
    }

    /// Freezes the dirty set into the outbox, or returns the outbox already frozen.
    fn freeze(&mut self) -> Result<Option<state::OutboxBundle>> {
        let config = self.config;
        let schema = config.schema().to_string();
        let order_by = self.rt.push_order.order_by_sql();
        self.conn.immediate_transaction(|conn| -> Result<Option<state::OutboxBundle>> {
            let outbox = state::outbox_bundle(conn)?;
            if outbox.state != "none" {
                return Ok(Some(outbox));
            }
            let attachment = state::attachment_state(conn)?;
            let source_bundle_id = state::next_source_bundle_id(conn, &attachment.current_source_id)?;
            // Foreign-key order (see `order`): upserts parents first, deletes children first.
            // Each write's payload is its row, read now (see `capture`).
            let frozen = diesel::sql_query(format!(
                "INSERT INTO _sync_outbox_rows(source_bundle_id, row_ordinal, schema_name, table_name, key_json, wire_key_json, op, base_row_version, local_payload, wire_payload) \
                 SELECT ?, ROW_NUMBER() OVER (ORDER BY {order_by}) - 1, ?, table_name, key_json, '', op, base_row_version, {payload}, NULL \
                 FROM _sync_dirty_rows AS d",
                payload = crate::capture::payload_sql(config, "d"),
            ))
            .bind::<BigInt, _>(source_bundle_id)
            .bind::<Text, _>(&schema)
            .execute(conn)?;
            if frozen == 0 {
                return Ok(None);
            }
            conn.batch_execute("DELETE FROM _sync_dirty_rows")?;
            let initialization_id = state::pending_initialization_id(conn)?;
            diesel::sql_query(
                "UPDATE _sync_outbox_bundle SET state = 'prepared', source_id = ?, source_bundle_id = ?, row_count = ?, \
                 initialization_id = ?, canonical_request_hash = '', remote_bundle_hash = '', remote_bundle_seq = 0 WHERE singleton_key = 1",
            )
            .bind::<Text, _>(&attachment.current_source_id)
            .bind::<BigInt, _>(source_bundle_id)
            .bind::<BigInt, _>(frozen as i64)
            .bind::<Text, _>(&initialization_id)
            .execute(conn)?;
            Ok(Some(state::outbox_bundle(conn)?))
        })
    }

    fn chunk_rows(&self) -> u32 {
        let limits = self.rt.limits.as_ref();
        let wanted = limits
            .and_then(|l| l.default_rows_per_push_chunk)
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_CHUNK_ROWS as i64);
        let max = limits
            .and_then(|l| l.max_rows_per_push_chunk)
            .filter(|n| *n > 0)
            .unwrap_or(wanted);
        wanted.min(max).clamp(1, 5000) as u32
    }

    /// Rows `from..from + count` of the outbox frozen as `source_bundle_id`. The key is the
    /// whole primary key: on `row_ordinal` alone SQLite scans every outbox row per chunk.
    fn outbox_rows(
        &mut self,
        source_bundle_id: i64,
        from: i64,
        count: i64,
    ) -> Result<Vec<PushRequestRow>> {
        let rows: Vec<OutboxRow> = diesel::sql_query(
            "SELECT row_ordinal, table_name, key_json, op, base_row_version, local_payload FROM _sync_outbox_rows \
             WHERE source_bundle_id = ? AND row_ordinal >= ? AND row_ordinal < ? ORDER BY row_ordinal",
        )
        .bind::<BigInt, _>(source_bundle_id)
        .bind::<BigInt, _>(from)
        .bind::<BigInt, _>(from + count)
        .load(self.conn)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            if row.row_ordinal != from + i as i64 {
                return Err(Error::InvalidState(format!(
                    "outbox row {} is missing",
                    from + i as i64
                )));
            }
            let spec = self.config.table_named(&row.table_name).ok_or_else(|| {
                Error::InvalidState(format!(
                    "outbox holds a change for unregistered table {}",
                    row.table_name
                ))
            })?;
            let op = Op::parse(&row.op)
                .ok_or_else(|| Error::InvalidState(format!("outbox op {:?}", row.op)))?;
            let local_key = codec::local_key_value(spec, &row.key_json)?;
            let wire_key = codec::key_local_to_wire(spec, &local_key)?;
            let payload = match (op, row.local_payload) {
                (Op::Delete, _) => None,
                (_, Some(p)) => Some(Value::Object(codec::payload_local_to_wire(
                    spec,
                    &self.rt.uuid_refs,
                    &p,
                )?)),
                (_, None) => {
                    return Err(Error::InvalidState(format!(
                        "{} {local_key}: write without payload",
                        spec.table_name
                    )));
                }
            };
            out.push(PushRequestRow {
                schema: self.config.schema().to_string(),
                table: spec.table_name.to_string(),
                key: oversync_protocol::sync_key(&spec.key_column.to_lowercase(), &wire_key),
                op,
                base_row_version: row.base_row_version,
                payload,
            });
        }
        Ok(out)
    }

    /// Creates the push session, uploads the chunks, commits.
    async fn upload(&mut self, outbox: &state::OutboxBundle) -> Result<Upload> {
        let transport = self.transport()?;
        let source = outbox.source_id.clone();
        let request = PushSessionCreateRequest {
            source_bundle_id: outbox.source_bundle_id,
            planned_row_count: outbox.row_count,
            initialization_id: (!outbox.initialization_id.is_empty())
                .then(|| outbox.initialization_id.clone()),
        };
        let created = match transport.create_push_session(&source, &request).await {
            Ok(created) => created,
            Err(e) if e.code() == Some(codes::HISTORY_PRUNED) => {
                // The tuple was committed once, but its history is gone: only a rotation
                // with a fresh source can carry this intent now.
                state::enter_source_recovery(self.conn, codes::HISTORY_PRUNED)?;
                return Err(Error::SourceRecoveryRequired {
                    reason: codes::HISTORY_PRUNED.into(),
                });
            }
            Err(e) => return Err(self.server_error(e)),
        };
        let (push_id, mut next) = match created {
            PushSessionCreateResponse::AlreadyCommitted {
                bundle_seq,
                source_bundle_id,
                bundle_hash,
                ..
            } => {
                if source_bundle_id != outbox.source_bundle_id || bundle_seq < 1 {
                    return Err(invalid("already_committed answer for another bundle"));
                }
                return Ok(Upload::Committed {
                    bundle_seq,
                    bundle_hash,
                });
            }
            PushSessionCreateResponse::Staging {
                push_id,
                next_expected_row_ordinal,
                ..
            } => (push_id, next_expected_row_ordinal),
        };
        let mut chunk = i64::from(self.chunk_rows());
        while next < outbox.row_count {
            if next < 0 {
                return Err(invalid(format!("next_expected_row_ordinal {next}")));
            }
            let rows = self.outbox_rows(outbox.source_bundle_id, next, chunk)?;
            let sent = rows.len() as i64;
            let uploaded = transport
                .upload_push_chunk(
                    &source,
                    &push_id,
                    &PushSessionChunkRequest {
                        start_row_ordinal: next,
                        rows,
                    },
                )
                .await;
            let answer = match uploaded {
                Ok(answer) => answer,
                Err(e) => {
                    let Some(rejection) = row_rejection(&e) else {
                        return Err(self.server_error(e));
                    };
                    // Staged rows are not committed: retry the chunk in halves until the
                    // refused row is alone (or the server named it).
                    let named = self.named_row(&rejection, next..next + sent)?;
                    if named.is_none() && sent > 1 {
                        chunk = sent / 2;
                        continue;
                    }
                    // Best effort: the session would expire anyway.
                    let _ = transport.delete_push_session(&source, &push_id).await;
                    return Ok(Upload::Rejected(named.unwrap_or(next), rejection));
                }
            };
            if answer.next_expected_row_ordinal <= next
                || answer.next_expected_row_ordinal > next + sent
            {
                return Err(invalid(format!(
                    "chunk at {next} of {sent} rows answered next_expected_row_ordinal {}",
                    answer.next_expected_row_ordinal
                )));
            }
            next = answer.next_expected_row_ordinal;
            self.emit(SyncEvent::Progress {
                phase: Phase::Push,
                done: next as u64,
                total: Some(outbox.row_count as u64),
            });
        }
        match transport.commit_push_session(&source, &push_id).await {
            Ok(committed) => {
                if committed.source_bundle_id != outbox.source_bundle_id || committed.bundle_seq < 1
                {
                    return Err(invalid("commit answered for another bundle"));
                }
                Ok(Upload::Committed {
                    bundle_seq: committed.bundle_seq,
                    bundle_hash: committed.bundle_hash,
                })
            }
            Err(TransportError::Server {
                status: 409,
                code,
                body: Some(body),
                ..
            }) if code == codes::PUSH_CONFLICT => {
                let conflict: PushConflictResponse = serde_json::from_value(body)
                    .map_err(|e| invalid(format!("push_conflict body: {e}")))?;
                // Best effort: the session would expire anyway.
                let _ = transport.delete_push_session(&source, &push_id).await;
                Ok(Upload::Conflict(Box::new(conflict.conflict)))
            }
            // A commit sends no rows, so a 413 there is not about a row.
            Err(e) => match row_rejection(&e).filter(|r| r.status != 413) {
                Some(rejection) => {
                    let _ = transport.delete_push_session(&source, &push_id).await;
                    match self.named_row(&rejection, 0..outbox.row_count)? {
                        Some(ordinal) => Ok(Upload::Rejected(ordinal, rejection)),
                        None if outbox.row_count > 1 => Ok(Upload::Split),
                        None => Ok(Upload::Rejected(0, rejection)),
                    }
                }
                None => Err(self.server_error(e)),
            },
        }
    }

    /// Maps server errors that change local state: source-sequence failures put the
    /// install into durable recovery mode. A replacement the server names is reserved only
    /// when it is fresh and no other replacement is reserved already (fail closed).
    pub(crate) fn server_error(&mut self, error: TransportError) -> Error {
        if let TransportError::Unauthorized { .. } = &error {
            self.emit(SyncEvent::AuthRequired);
        }
        let code = error.code().unwrap_or_default().to_string();
        let recovery = [
            codes::SOURCE_SEQUENCE_OUT_OF_ORDER,
            codes::SOURCE_SEQUENCE_CHANGED,
            codes::SOURCE_RETIRED,
        ];
        if !recovery.contains(&code.as_str()) {
            return error.into();
        }
        // A source retired elsewhere names the replacement the server reserved for it:
        // rotating to any other would be refused.
        let named = match &error {
            TransportError::Server {
                body: Some(body), ..
            } => serde_json::from_value::<oversync_protocol::SourceRetiredResponse>(body.clone())
                .ok()
                .and_then(|retired| retired.replaced_by_source_id)
                .filter(|id| uuid::Uuid::try_parse(id).is_ok()),
            _ => None,
        };
        match self.enter_recovery(&code, named.as_deref()) {
            Ok(()) => Error::SourceRecoveryRequired { reason: code },
            Err(e) => e,
        }
    }

    /// Enters (or stays in) source recovery, reserving `named` as the replacement when the
    /// server named one. An existing recovery keeps its reason and reservation: they were
    /// already sent to the server in a rotation request.
    fn enter_recovery(&mut self, code: &str, named: Option<&str>) -> Result<()> {
        self.conn.immediate_transaction(|conn| -> Result<()> {
            let operation = state::operation_state(conn)?;
            let reserved = (operation.kind == "source_recovery")
                .then_some(operation.replacement_source_id)
                .filter(|id| !id.is_empty());
            match (reserved, named) {
                (Some(reserved), Some(named)) if reserved != named => {
                    return Err(Error::SourceReplacementDiverged {
                        reserved,
                        named: named.to_string(),
                    });
                }
                (Some(_), _) => return Ok(()),
                (None, _) => {}
            }
            if operation.kind != "source_recovery" {
                state::enter_source_recovery(conn, code)?;
            }
            if let Some(named) = named {
                let current = state::attachment_state(conn)?.current_source_id;
                crate::snapshot::check_fresh_replacement(conn, &current, named)?;
                diesel::sql_query(
                    "UPDATE _sync_operation_state SET replacement_source_id = ? WHERE singleton_key = 1",
                )
                .bind::<Text, _>(named)
                .execute(conn)?;
            }
            Ok(())
        })
    }

    /// Fetches the committed bundle into `_sync_push_stage`, verifying `bundle_hash` and
    /// checking, page by page, that it is this outbox's bundle (see `bundle_check`).
    async fn fetch_committed(
        &mut self,
        outbox: &state::OutboxBundle,
        bundle_seq: i64,
        expected_hash: &str,
    ) -> Result<Fetched> {
        let transport = self.transport()?;
        let source = state::attachment_state(self.conn)?.current_source_id;
        self.conn.batch_execute("DELETE FROM _sync_push_stage")?;
        let page = self.page_size(|l| {
            (
                l.default_rows_per_committed_bundle_chunk,
                l.max_rows_per_committed_bundle_chunk,
            )
        });
        let mut hasher = BundleHasher::new();
        let mut after: Option<i64> = None;
        let mut ordinal: i64 = 0;
        let mut not_found = 0u32;
        let mut check = OutboxCheck::new(outbox.source_bundle_id, outbox.row_count);
        // Each page is asked for before the previous one is written (see `transport::io`).
        let request = |after: Option<i64>| {
            let (transport, source) = (transport.clone(), source.clone());
            spawn_io(async move {
                transport
                    .committed_bundle_rows(&source, bundle_seq, after, Some(page))
                    .await
            })
        };
        let mut next = Some(request(after));
        while let Some(pending) = next.take() {
            let resp = match pending.await {
                Ok(resp) => resp,
                Err(e) if e.code() == Some(codes::HISTORY_PRUNED) => return Ok(Fetched::Pruned),
                // The commit may not be readable yet on the node answering (a replica, or a
                // commit still settling): retry a few times within this call before failing.
                Err(e)
                    if e.code() == Some(codes::COMMITTED_BUNDLE_NOT_FOUND)
                        && not_found < COMMITTED_NOT_FOUND_RETRIES =>
                {
                    not_found += 1;
                    let delay = transport.retry_delay(not_found);
                    tracing::debug!(
                        bundle_seq,
                        retry = not_found,
                        ?delay,
                        "committed bundle not found yet; retrying"
                    );
                    self.emit(SyncEvent::RetryScheduled {
                        attempt: not_found + 1,
                        delay,
                        reason: format!("committed bundle {bundle_seq} not found yet"),
                    });
                    tokio::time::sleep(delay).await;
                    next = Some(request(after));
                    continue;
                }
                Err(e) => return Err(self.server_error(e)),
            };
            if resp.bundle_seq != bundle_seq || resp.bundle_hash != expected_hash {
                return Err(invalid(format!(
                    "committed bundle {bundle_seq}: page describes bundle {} / hash {}",
                    resp.bundle_seq, resp.bundle_hash
                )));
            }
            if resp.rows.is_empty() && resp.has_more {
                return Err(invalid("committed bundle page made no progress"));
            }
            let last = ordinal + resp.rows.len() as i64 - 1;
            // Cancelled (dropped) when this page fails below.
            next = resp.has_more.then(|| request(Some(last)));
            let refs = &self.rt.uuid_refs;
            check.page(
                self.conn,
                self.config,
                refs,
                resp.row_count,
                ordinal,
                &resp.rows,
            )?;
            self.stage_push_rows(bundle_seq, ordinal, &resp.rows)?;
            for row in &resp.rows {
                hasher.push(row);
            }
            ordinal += resp.rows.len() as i64;
            self.emit(SyncEvent::Progress {
                phase: Phase::Replay,
                done: ordinal as u64,
                total: Some(resp.row_count.max(0) as u64),
            });
            after = Some(last);
        }
        let actual = hasher.finish();
        if actual != expected_hash {
            self.conn.batch_execute("DELETE FROM _sync_push_stage")?;
            return Err(invalid(format!(
                "bundle {bundle_seq}: bundle_hash {actual} does not match {expected_hash}"
            )));
        }
        match check.finish() {
            None => Ok(Fetched::Ours),
            Some(why) => {
                tracing::warn!(bundle_seq, %why, "committed bundle is not this outbox's");
                self.conn.batch_execute("DELETE FROM _sync_push_stage")?;
                Ok(Fetched::AnotherInstalls(why))
            }
        }
    }

    /// Stages one page of the committed bundle (eight binds per row).
    fn stage_push_rows(
        &mut self,
        bundle_seq: i64,
        first_ordinal: i64,
        rows: &[BundleRow],
    ) -> Result<()> {
        let row = format!("({})", marks(8));
        let mut ordinal = first_ordinal;
        let conn = &mut *self.conn;
        in_statements(
            rows,
            PUSH_STAGE_ROWS_PER_STATEMENT,
            |size| {
                format!(
                    "INSERT INTO _sync_push_stage(bundle_seq, row_ordinal, schema_name, table_name, key_json, op, row_version, payload) VALUES {}",
                    value_rows(size, &row)
                )
            },
            |template, chunk| {
                let texts: Vec<(String, SqlValue)> = chunk
                    .iter()
                    .map(|row| {
                        let payload = row.payload.as_ref();
                        (
                            Value::Object(row.key.clone()).to_string(),
                            payload.map_or(SqlValue::Null, |p| SqlValue::Text(p.to_string())),
                        )
                    })
                    .collect();
                let mut binds = Vec::with_capacity(chunk.len() * 8);
                for (row, (key_json, payload)) in chunk.iter().zip(&texts) {
                    binds.extend([
                        Bind::Integer(bundle_seq),
                        Bind::Integer(ordinal),
                        Bind::Text(&row.schema),
                        Bind::Text(&row.table),
                        Bind::Text(key_json),
                        Bind::Text(row.op.as_str()),
                        Bind::Integer(row.row_version),
                        Bind::Value(payload, BindType::Text),
                    ]);
                    ordinal += 1;
                }
                CachedStatement::new(template)
                    .bind_all(binds)
                    .execute(conn)?;
                Ok(())
            },
        )
    }

    /// Applies the staged committed bundle and retires the outbox, in one transaction.
    fn replay(&mut self, outbox: &state::OutboxBundle, bundle_seq: i64) -> Result<()> {
        let config = self.config;
        let refs = &self.rt.uuid_refs;
        let changed = in_apply_transaction(self.conn, |conn| {
            let keep_local = state::dirty_keys(conn)?;
            let mut changed = std::collections::HashSet::new();
            let mut from = 0i64;
            loop {
                let page: Vec<StagedRow> = diesel::sql_query(
                    "SELECT schema_name, table_name, key_json, op, row_version, payload FROM _sync_push_stage \
                     WHERE bundle_seq = ? AND row_ordinal >= ? ORDER BY row_ordinal LIMIT 1000",
                )
                .bind::<BigInt, _>(bundle_seq)
                .bind::<BigInt, _>(from)
                .load(conn)?;
                if page.is_empty() {
                    break;
                }
                from += page.len() as i64;
                let mut effects = Vec::with_capacity(page.len());
                for row in page {
                    let key: Map<String, Value> = serde_json::from_str(&row.key_json)
                        .map_err(|e| invalid(format!("staged key: {e}")))?;
                    let payload = row
                        .payload
                        .as_deref()
                        .map(serde_json::from_str::<Value>)
                        .transpose()
                        .map_err(|e| invalid(format!("staged payload: {e}")))?;
                    let op =
                        Op::parse(&row.op).ok_or_else(|| invalid(format!("op {:?}", row.op)))?;
                    effects.push(effect_from_wire(
                        config,
                        refs,
                        &row.schema_name,
                        &row.table_name,
                        &key,
                        op,
                        row.row_version,
                        payload.as_ref(),
                    )?);
                }
                changed.extend(apply_effects(conn, effects, &keep_local)?);
            }
            rebase_dirty_rows(conn, bundle_seq)?;
            retire_outbox(conn, outbox, bundle_seq)?;
            Ok(changed)
        })?;
        self.tables_changed(changed);
        Ok(())
    }
}

/// The outbox's bundle is committed and reflected locally: clear it, move the source's
/// sequence past it, and advance the checkpoint when the bundle is the next in history
/// (bundles of other devices committed before ours are still to be pulled).
fn retire_outbox(
    conn: &mut SqliteConnection,
    outbox: &state::OutboxBundle,
    bundle_seq: i64,
) -> Result<()> {
    crate::quarantine::clear_accepted(conn)?;
    conn.batch_execute("DELETE FROM _sync_push_stage; DELETE FROM _sync_outbox_rows;")?;
    conn.batch_execute(
        "UPDATE _sync_outbox_bundle SET state = 'none', source_id = '', source_bundle_id = 0, row_count = 0, \
         initialization_id = '', canonical_request_hash = '', remote_bundle_hash = '', remote_bundle_seq = 0 WHERE singleton_key = 1",
    )?;
    diesel::sql_query("UPDATE _sync_source_state SET next_source_bundle_id = MAX(next_source_bundle_id, ?) WHERE source_id = ?")
        .bind::<BigInt, _>(outbox.source_bundle_id + 1)
        .bind::<Text, _>(&outbox.source_id)
        .execute(conn)?;
    diesel::sql_query(
        "UPDATE _sync_attachment_state SET pending_initialization_id = '', \
         last_bundle_seq_seen = CASE WHEN last_bundle_seq_seen + 1 = ? THEN ? ELSE last_bundle_seq_seen END WHERE singleton_key = 1",
    )
    .bind::<BigInt, _>(bundle_seq)
    .bind::<BigInt, _>(bundle_seq)
    .execute(conn)?;
    Ok(())
}

impl Oversync<'_> {
    pub(crate) fn tables_changed(&self, changed: std::collections::HashSet<&'static str>) {
        if !changed.is_empty() {
            let mut tables: Vec<String> = changed.into_iter().map(str::to_string).collect();
            tables.sort();
            self.emit(SyncEvent::TablesChanged { tables });
        }
    }

    /// Applies the resolver's decision for one conflicting row to the outbox and the local
    /// tables, in one transaction. An invalid resolution changes nothing.
    fn resolve_conflict(&mut self, details: &oversync_protocol::PushConflictDetails) -> Result<()> {
        if details.schema != self.config.schema() {
            return Err(invalid(format!("conflict on schema {}", details.schema)));
        }
        let spec = self
            .config
            .table_named(&details.table)
            .ok_or_else(|| invalid(format!("conflict on unregistered table {}", details.table)))?;
        let (local_key, key_json) = codec::key_wire_to_local(spec, &details.key)?;
        let wire_key = key_text(&details.key);
        let outbox_row: OutboxRow = diesel::sql_query(
            "SELECT row_ordinal, table_name, key_json, op, base_row_version, local_payload FROM _sync_outbox_rows WHERE table_name = ? AND key_json = ?",
        )
        .bind::<Text, _>(spec.table_name)
        .bind::<Text, _>(&key_json)
        .get_result(self.conn)
        .optional()?
        .ok_or_else(|| invalid(format!("conflict on {} {wire_key}, which this push does not contain", spec.table_name)))?;
        let local_op = Op::parse(&outbox_row.op)
            .ok_or_else(|| Error::InvalidState(format!("outbox op {:?}", outbox_row.op)))?;
        let server_row = match (&details.server_row, details.server_row_deleted) {
            (_, true) | (None, _) | (Some(Value::Null), _) => None,
            (Some(Value::Object(row)), false) => {
                codec::check_payload_key(spec, &wire_key, row)?;
                codec::sql_values(spec, &self.rt.uuid_refs, row)?;
                Some(row.clone())
            }
            (Some(_), false) => return Err(invalid("conflict server_row is not an object")),
        };
        if !details.server_row_deleted && server_row.is_none() {
            return Err(invalid("conflict without server_row for a live row"));
        }
        let refs = self.rt.uuid_refs.clone();
        let conflict = Conflict {
            spec,
            refs: refs.clone(),
            table: spec.table_name.to_string(),
            key: wire_key.clone(),
            local_op,
            local_row: outbox_row
                .local_payload
                .as_deref()
                .map(|p| codec::payload_local_to_wire(spec, &refs, p))
                .transpose()?,
            base_row_version: details.base_row_version,
            server_row_version: details.server_row_version,
            server_row_deleted: details.server_row_deleted,
            server_row: server_row.clone(),
        };
        let resolution = self.rt.resolver.resolve(&conflict);
        let checked = match &resolution {
            Resolution::Merged(row) => merged_to_wire(spec, &refs, &wire_key, row).map(Some),
            // An update cannot be kept on a row the server deleted: that would bring the row
            // back without anyone asking for it. Reviving takes an explicit `Merged` row.
            Resolution::KeepLocal if local_op == Op::Update && details.server_row_deleted => {
                Err(Error::InvalidResolution(format!(
                    "{}: keep_local for an update of {wire_key}, which the server deleted (accept the delete, or return a merged row to recreate it)",
                    spec.table_name
                )))
            }
            _ => Ok(None),
        };
        let merged = match checked {
            Ok(merged) => merged,
            Err(e) => {
                // Fail closed as the reference clients do: the frozen bundle goes back to
                // the dirty set (nothing applied), so later local edits coalesce with it.
                self.conn.immediate_transaction(restore_outbox_to_dirty)?;
                return Err(e);
            }
        };
        let server_version = details.server_row_version;
        let server_deleted = details.server_row_deleted;
        let keep_local = state::dirty_keys(self.conn)?
            .contains(&(spec.table_name.to_string(), key_json.clone()));
        let resolution_name = resolution.name();
        let rewritten = in_apply_transaction(self.conn, |conn| {
            // What the local table should now hold, and what (if anything) is still pushed.
            // (what the local table should hold, what is still pushed)
            let mut rewritten = std::collections::HashSet::new();
            let (local_values, push): (Option<LocalRow>, Option<PushIntent>) = match resolution {
                Resolution::AcceptServer => (Some(server_row.clone()), None),
                Resolution::KeepLocal => match local_op {
                    Op::Delete if server_deleted => (None, None),
                    Op::Delete => (None, Some((Op::Delete, None))),
                    _ => (
                        None,
                        Some((
                            if server_deleted {
                                Op::Insert
                            } else {
                                Op::Update
                            },
                            conflict.local_row.clone(),
                        )),
                    ),
                },
                Resolution::Merged(_) => {
                    let merged = merged.clone();
                    (
                        Some(merged.clone()),
                        Some((
                            if server_deleted {
                                Op::Insert
                            } else {
                                Op::Update
                            },
                            merged,
                        )),
                    )
                }
            };
            if let Some(values) = local_values {
                let effect = RowEffect {
                    spec,
                    key: local_key.clone(),
                    key_json: key_json.clone(),
                    row_version: server_version,
                    values: values
                        .as_ref()
                        .map(|row| codec::sql_values(spec, &refs, row))
                        .transpose()?,
                };
                let keep = if keep_local {
                    [(spec.table_name.to_string(), key_json.clone())]
                        .into_iter()
                        .collect()
                } else {
                    Default::default()
                };
                let written = write_unless_parent_missing(conn, effect, &keep)?;
                // Record the server's actual state (whether or not the row could be written yet).
                set_row_state(
                    conn,
                    spec.table_name,
                    &key_json,
                    server_version,
                    server_deleted,
                )?;
                rewritten.extend(written);
            } else {
                set_row_state(
                    conn,
                    spec.table_name,
                    &key_json,
                    server_version,
                    server_deleted,
                )?;
            }
            match push {
                Some((op, payload)) => {
                    let local_payload = payload
                        .map(|p| codec::payload_wire_to_local(spec, &refs, &p))
                        .transpose()?
                        .map(|m| Value::Object(m).to_string());
                    diesel::sql_query("UPDATE _sync_outbox_rows SET op = ?, base_row_version = ?, local_payload = ? WHERE row_ordinal = ?")
                        .bind::<Text, _>(op.as_str())
                        .bind::<BigInt, _>(server_version)
                        .bind::<Nullable<Text>, _>(local_payload)
                        .bind::<BigInt, _>(outbox_row.row_ordinal)
                        .execute(conn)?;
                }
                None => remove_outbox_row(conn, outbox_row.row_ordinal)?,
            }
            rebase_dirty_rows_for_key(conn, spec.table_name, &key_json)?;
            Ok(rewritten)
        })?;
        // The local row now holds the server's (or the merged) value: views showing the
        // losing local value must refresh.
        self.tables_changed(rewritten);
        self.emit(SyncEvent::ConflictResolved {
            table: spec.table_name.to_string(),
            key: wire_key,
            resolution: resolution_name,
        });
        Ok(())
    }
}

#[derive(QueryableByName)]
struct StagedRow {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    key_json: String,
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = BigInt)]
    row_version: i64,
    #[diesel(sql_type = Nullable<Text>)]
    payload: Option<String>,
}

fn key_text(key: &Map<String, Value>) -> String {
    match key.values().next() {
        Some(Value::String(s)) if key.len() == 1 => s.clone(),
        _ => Value::Object(key.clone()).to_string(),
    }
}

/// Validates one authoritative row from the server and decodes it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn effect_from_wire(
    config: &crate::OversyncConfig,
    refs: &codec::UuidRefs,
    schema: &str,
    table: &str,
    key: &Map<String, Value>,
    op: Op,
    row_version: i64,
    payload: Option<&Value>,
) -> Result<RowEffect> {
    if schema != config.schema() {
        return Err(invalid(format!(
            "row for schema {schema:?}, expected {:?}",
            config.schema()
        )));
    }
    let spec = config
        .table_named(table)
        .ok_or_else(|| invalid(format!("row for unregistered table {table:?}")))?;
    if row_version < 1 {
        return Err(invalid(format!("{table}: row_version {row_version}")));
    }
    let (local_key, key_json) = codec::key_wire_to_local(spec, key)?;
    let values = match (op, payload) {
        (Op::Delete, _) => None,
        (_, Some(Value::Object(row))) => {
            codec::check_payload_key(spec, &key_text(key), row)?;
            Some(codec::sql_values(spec, refs, row)?)
        }
        _ => return Err(invalid(format!("{table}: {op} without an object payload"))),
    };
    Ok(RowEffect {
        spec,
        key: local_key,
        key_json,
        row_version,
        values,
    })
}

fn set_row_state(
    conn: &mut SqliteConnection,
    table: &str,
    key_json: &str,
    version: i64,
    deleted: bool,
) -> Result<()> {
    diesel::sql_query(
        "INSERT INTO _sync_row_state(schema_name, table_name, key_json, row_version, deleted) VALUES ('main', ?, ?, ?, ?) \
         ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET row_version = excluded.row_version, deleted = excluded.deleted",
    )
    .bind::<Text, _>(table)
    .bind::<Text, _>(key_json)
    .bind::<BigInt, _>(version)
    .bind::<diesel::sql_types::Integer, _>(i32::from(deleted))
    .execute(conn)?;
    Ok(())
}

/// Writes a conflict's resolved row locally, unless that leaves a foreign key dangling (its
/// parent exists on the server but has not been pulled yet): then the write is undone and
/// the pull that follows the push brings the row together with its parent. Returns the
/// tables whose rows changed.
fn write_unless_parent_missing(
    conn: &mut SqliteConnection,
    effect: RowEffect,
    keep: &std::collections::HashSet<(String, String)>,
) -> Result<std::collections::HashSet<&'static str>> {
    let table = effect.spec.table_name;
    let attempt = conn.transaction::<_, Error, _>(|c| {
        let changed = apply_effects(c, vec![effect], keep)?;
        #[derive(QueryableByName)]
        struct Violations {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let dangling: Violations =
            diesel::sql_query("SELECT COUNT(*) AS n FROM pragma_foreign_key_check(?)")
                .bind::<Text, _>(table)
                .get_result(c)?;
        if dangling.n > 0 {
            return Err(Error::InvalidState(PARENT_NOT_PULLED.into()));
        }
        Ok(changed)
    });
    match attempt {
        Err(Error::InvalidState(why)) if why == PARENT_NOT_PULLED => {
            tracing::debug!(
                table,
                "conflict row waits for its parent from the next pull"
            );
            Ok(Default::default())
        }
        other => other,
    }
}

const PARENT_NOT_PULLED: &str = "resolved row references a parent not pulled yet";

/// Puts a rejected, uncommitted outbox back into the dirty set, ahead of changes captured
/// since the freeze (which are newer for their keys and win), and clears the outbox. The
/// source's bundle sequence did not advance, so the next freeze reuses the same id.
fn restore_outbox_to_dirty(conn: &mut SqliteConnection) -> Result<()> {
    return_outbox_rows_to_dirty(conn, 0)?;
    conn.batch_execute(
        "DELETE FROM _sync_push_stage;
         UPDATE _sync_outbox_bundle SET state = 'none', source_id = '', source_bundle_id = 0, row_count = 0, \
           initialization_id = '', canonical_request_hash = '', remote_bundle_hash = '', remote_bundle_seq = 0 WHERE singleton_key = 1;",
    )?;
    Ok(())
}

/// Moves the outbox rows from ordinal `from` on back into the dirty set, in their order and
/// ahead of every change captured since the freeze (a key captured again keeps its newer
/// change), and removes them from the outbox. The caller fixes `_sync_outbox_bundle`.
pub(crate) fn return_outbox_rows_to_dirty(conn: &mut SqliteConnection, from: i64) -> Result<()> {
    #[derive(QueryableByName)]
    struct First {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // Ordinals just below every captured change: first-touch order puts these first.
    let first: First = diesel::sql_query(
        "SELECT IFNULL((SELECT MIN(dirty_ordinal) FROM _sync_dirty_rows), 1) \
           - (SELECT COUNT(*) FROM _sync_outbox_rows WHERE row_ordinal >= ?1) - 1 - ?1 AS n",
    )
    .bind::<BigInt, _>(from)
    .get_result(conn)?;
    diesel::sql_query(
        "INSERT INTO _sync_dirty_rows(dirty_ordinal, schema_name, table_name, key_json, op, base_row_version, payload) \
         SELECT ? + row_ordinal, 'main', table_name, key_json, op, base_row_version, local_payload FROM _sync_outbox_rows \
         WHERE row_ordinal >= ? ORDER BY row_ordinal ON CONFLICT(schema_name, table_name, key_json) DO NOTHING",
    )
    .bind::<BigInt, _>(first.n)
    .bind::<BigInt, _>(from)
    .execute(conn)?;
    diesel::sql_query("DELETE FROM _sync_outbox_rows WHERE row_ordinal >= ?")
        .bind::<BigInt, _>(from)
        .execute(conn)?;
    Ok(())
}

/// Removes one outbox row and closes the gap so ordinals stay contiguous.
pub(crate) fn remove_outbox_row(conn: &mut SqliteConnection, ordinal: i64) -> Result<()> {
    diesel::sql_query("DELETE FROM _sync_outbox_rows WHERE row_ordinal = ?")
        .bind::<BigInt, _>(ordinal)
        .execute(conn)?;
    // Two steps through negative values: an in-place shift could collide on the primary key.
    diesel::sql_query(
        "UPDATE _sync_outbox_rows SET row_ordinal = -(row_ordinal + 1) WHERE row_ordinal > ?",
    )
    .bind::<BigInt, _>(ordinal)
    .execute(conn)?;
    conn.batch_execute(
        "UPDATE _sync_outbox_rows SET row_ordinal = -row_ordinal - 2 WHERE row_ordinal < 0;
         UPDATE _sync_outbox_bundle SET row_count = (SELECT COUNT(*) FROM _sync_outbox_rows) WHERE singleton_key = 1;
         UPDATE _sync_outbox_bundle SET state = 'none', source_id = '', source_bundle_id = 0, initialization_id = ''
           WHERE singleton_key = 1 AND row_count = 0;",
    )?;
    Ok(())
}

/// Local changes made after the freeze to keys the bundle touched now build on the bundle's
/// version: base version from `_sync_row_state`, op from whether the server holds the row.
fn rebase_dirty_rows(conn: &mut SqliteConnection, bundle_seq: i64) -> Result<()> {
    diesel::sql_query(
        "UPDATE _sync_dirty_rows SET base_row_version = rs.row_version, \
           op = CASE WHEN _sync_dirty_rows.op = 'DELETE' THEN 'DELETE' WHEN rs.deleted = 0 THEN 'UPDATE' ELSE 'INSERT' END \
         FROM _sync_row_state AS rs \
         WHERE rs.schema_name = _sync_dirty_rows.schema_name AND rs.table_name = _sync_dirty_rows.table_name \
           AND rs.key_json = _sync_dirty_rows.key_json AND rs.row_version = ?",
    )
    .bind::<BigInt, _>(bundle_seq)
    .execute(conn)?;
    conn.batch_execute(
        "DELETE FROM _sync_dirty_rows WHERE op = 'DELETE' AND EXISTS (SELECT 1 FROM _sync_row_state AS rs \
           WHERE rs.schema_name = _sync_dirty_rows.schema_name AND rs.table_name = _sync_dirty_rows.table_name \
             AND rs.key_json = _sync_dirty_rows.key_json AND rs.deleted = 1)",
    )?;
    Ok(())
}

fn rebase_dirty_rows_for_key(
    conn: &mut SqliteConnection,
    table: &str,
    key_json: &str,
) -> Result<()> {
    diesel::sql_query(
        "UPDATE _sync_dirty_rows SET base_row_version = rs.row_version, \
           op = CASE WHEN _sync_dirty_rows.op = 'DELETE' THEN 'DELETE' WHEN rs.deleted = 0 THEN 'UPDATE' ELSE 'INSERT' END \
         FROM _sync_row_state AS rs \
         WHERE rs.schema_name = _sync_dirty_rows.schema_name AND rs.table_name = _sync_dirty_rows.table_name \
           AND rs.key_json = _sync_dirty_rows.key_json AND _sync_dirty_rows.table_name = ? AND _sync_dirty_rows.key_json = ?",
    )
    .bind::<Text, _>(table)
    .bind::<Text, _>(key_json)
    .execute(conn)?;
    Ok(())
}

/// Rows per statement staging the committed bundle at most: eight binds each, under SQLite's
/// 32,766.
const PUSH_STAGE_ROWS_PER_STATEMENT: usize = 4_000;

#[cfg(test)]
mod tests {
    use super::ConflictBudget;

    #[test]
    fn conflict_budget_allows_every_distinct_row_of_the_bundle() {
        let mut budget = ConflictBudget::default();
        for i in 0..5 {
            // Each resolution drops the row: the next bundle is one row smaller.
            assert!(budget.admit(5 - i, "teams", format!("k{i}")), "row {i}");
        }
    }

    #[test]
    fn conflict_budget_bounds_rows_that_conflict_again() {
        let mut budget = ConflictBudget::default();
        assert!(budget.admit(5, "teams", "a".into()));
        assert!(budget.admit(5, "teams", "a".into()));
        assert!(budget.admit(5, "teams", "a".into()));
        assert!(
            !budget.admit(5, "teams", "a".into()),
            "third repeat refused"
        );
        // Distinct rows still make progress after repeats are spent.
        assert!(budget.admit(5, "teams", "b".into()));
    }

    #[test]
    fn conflict_budget_refuses_more_distinct_rows_than_the_bundles_held() {
        let mut budget = ConflictBudget::default();
        assert!(budget.admit(1, "teams", "a".into()));
        assert!(!budget.admit(0, "teams", "b".into()));
    }

    #[test]
    fn conflict_budget_counts_rows_frozen_after_a_resolution() {
        // A resumed one-row outbox conflicts; the next freeze holds a row written since.
        let mut budget = ConflictBudget::default();
        assert!(budget.admit(1, "teams", "a".into()));
        assert!(budget.admit(1, "teams", "b".into()));
    }
}
