//! Turns the row effects captured by triggers in the current transaction into one committed
//! bundle: coalesced rows, `bundle_seq`, `bundle_hash`, row versions and a NOTIFY.

use crate::bootstrap::Registry;
use crate::error::SyncError;
use crate::payload::wire_payload_text;
use crate::sql;
use deadpool_postgres::GenericClient;
use oversync_protocol::{BundleHasher, Op, sync_key};
use std::collections::HashMap;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Metadata of a bundle committed by the current transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedBundle {
    /// Per-user sequence number.
    pub bundle_seq: i64,
    /// Writer source.
    pub source_id: String,
    /// Writer's bundle counter.
    pub source_bundle_id: i64,
    /// Number of coalesced row effects.
    pub row_count: i64,
    /// `bundle_hash`.
    pub bundle_hash: String,
}

pub(crate) fn op_code(op: Op) -> i16 {
    match op {
        Op::Insert => 1,
        Op::Update => 2,
        Op::Delete => 3,
    }
}

pub(crate) fn op_from_code(code: i16) -> Result<Op, SyncError> {
    match code {
        1 => Ok(Op::Insert),
        2 => Ok(Op::Update),
        3 => Ok(Op::Delete),
        other => Err(SyncError::Internal(format!("unknown op code {other}"))),
    }
}
struct Effect {
    table_id: i32,
    key_text: String,
    first_op: i16,
    last_op: i16,
    payload: Option<String>,
}

/// Takes this transaction's captured effects of `user_pk` out of the stage.
pub(crate) const TAKE_CAPTURED: &str =
    "DELETE FROM sync.capture_stage WHERE txid = txid_current() AND user_pk = $1
     RETURNING ordinal, table_id, op, key_text, payload::text";

/// Allocates the user's next `bundle_seq`.
pub(crate) const NEXT_BUNDLE_SEQ: &str =
    "UPDATE sync.user_state SET next_bundle_seq = next_bundle_seq + 1
     WHERE user_pk = $1 RETURNING next_bundle_seq - 1";

const INSERT_BUNDLE_LOG: &str = "INSERT INTO sync.bundle_log (user_pk, bundle_seq, source_id, source_bundle_id, row_count, byte_count, bundle_hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

const INSERT_BUNDLE_ROWS: &str = "INSERT INTO sync.bundle_rows (user_pk, bundle_seq, row_ordinal, table_id, key_text, op, payload)
     SELECT $1, $2, r.ordinal, r.table_id, r.key_text, r.op, r.payload
     FROM unnest($3::int8[], $4::int4[], $5::text[], $6::int2[], $7::text[])
          AS r(ordinal, table_id, key_text, op, payload)";

const UPSERT_ROW_STATE: &str =
    "INSERT INTO sync.row_state (user_pk, table_id, key_text, bundle_seq, deleted)
     SELECT $1, r.table_id, r.key_text, $2, r.deleted
     FROM unnest($3::int4[], $4::text[], $5::bool[]) AS r(table_id, key_text, deleted)
     ON CONFLICT (user_pk, table_id, key_text)
     DO UPDATE SET bundle_seq = EXCLUDED.bundle_seq, deleted = EXCLUDED.deleted";

/// The coalesced effects of one transaction, in the order of first touch.
pub(crate) struct Effects(Vec<(Effect, Op)>);

impl Effects {
    /// Coalesces the rows of [`TAKE_CAPTURED`] per (table, key): an insert then a delete
    /// cancels out, a delete wins, an insert followed by updates stays an insert.
    pub(crate) fn coalesce(rows: &[Row]) -> Effects {
        let mut captured: Vec<(i64, i32, i16, String, Option<String>)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        captured.sort_by_key(|c| c.0);

        let mut effects: Vec<Effect> = Vec::new();
        let mut index: HashMap<(i32, String), usize> = HashMap::new();
        for (_, table_id, op, key_text, payload) in captured {
            match index.get(&(table_id, key_text.clone())) {
                Some(&i) => {
                    effects[i].last_op = op;
                    effects[i].payload = payload;
                }
                None => {
                    index.insert((table_id, key_text.clone()), effects.len());
                    effects.push(Effect {
                        table_id,
                        key_text,
                        first_op: op,
                        last_op: op,
                        payload,
                    });
                }
            }
        }
        Effects(
            effects
                .into_iter()
                .filter_map(|e| {
                    let op = match (e.first_op, e.last_op) {
                        (1, 3) => return None,
                        (_, 3) => Op::Delete,
                        (1, _) => Op::Insert,
                        _ => Op::Update,
                    };
                    Some((e, op))
                })
                .collect(),
        )
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One bundle ready to be stored: its rows as statement parameters, and its hash.
pub(crate) struct BundleWrite {
    user_pk: i64,
    bundle_seq: i64,
    source_id: String,
    source_bundle_id: i64,
    row_count: i64,
    byte_count: i64,
    bundle_hash: String,
    ordinals: Vec<i64>,
    table_ids: Vec<i32>,
    keys: Vec<String>,
    ops: Vec<i16>,
    payloads: Vec<Option<String>>,
    deleted: Vec<bool>,
    channel: Option<String>,
    note: String,
}

impl BundleWrite {
    /// Hashes `effects` as bundle `bundle_seq` (wire payloads) and lays out their rows.
    pub(crate) fn new(
        registry: &Registry,
        effects: Effects,
        user_pk: i64,
        bundle_seq: i64,
        source_id: &str,
        source_bundle_id: i64,
        notify_channel: Option<&str>,
    ) -> Result<BundleWrite, SyncError> {
        let effects = effects.0;
        let mut hasher = BundleHasher::new();
        let mut ordinals = Vec::with_capacity(effects.len());
        let mut table_ids = Vec::with_capacity(effects.len());
        let mut keys = Vec::with_capacity(effects.len());
        let mut ops = Vec::with_capacity(effects.len());
        let mut payloads: Vec<Option<String>> = Vec::with_capacity(effects.len());
        let mut deleted = Vec::with_capacity(effects.len());
        for (i, (effect, op)) in effects.into_iter().enumerate() {
            let info = registry.by_id(effect.table_id).ok_or_else(|| {
                SyncError::Internal(format!("captured unknown table_id {}", effect.table_id))
            })?;
            let wire = match (op, &effect.payload) {
                (Op::Delete, _) => None,
                (_, Some(db)) => Some(
                    wire_payload_text(info, db)
                        .map_err(|e| SyncError::internal("captured payload", e))?,
                ),
                (_, None) => {
                    return Err(SyncError::Internal(
                        "captured insert/update without payload".into(),
                    ));
                }
            };
            // The stored wire text is canonical JSON already: hashed as is, not parsed again.
            hasher.push_parts_canonical(
                &info.schema,
                &info.table,
                &sync_key(&info.key_column, &effect.key_text),
                op,
                bundle_seq,
                wire.as_deref(),
            );
            ordinals.push(i as i64);
            table_ids.push(effect.table_id);
            keys.push(effect.key_text);
            ops.push(op_code(op));
            deleted.push(op == Op::Delete);
            payloads.push(wire);
        }
        let note = serde_json::json!({
            "user_pk": user_pk,
            "bundle_seq": bundle_seq,
            "source_id": source_id,
            "source_bundle_id": source_bundle_id,
        })
        .to_string();
        Ok(BundleWrite {
            user_pk,
            bundle_seq,
            source_id: source_id.to_owned(),
            source_bundle_id,
            row_count: hasher.row_count() as i64,
            byte_count: hasher.byte_count() as i64,
            bundle_hash: hasher.finish(),
            ordinals,
            table_ids,
            keys,
            ops,
            payloads,
            deleted,
            channel: notify_channel.map(str::to_owned),
            note,
        })
    }

    /// The statements storing the bundle (log, rows, row state) and its NOTIFY, which
    /// PostgreSQL delivers only if the transaction commits. Independent of each other, so
    /// the caller may pipeline them with more ([`sql::pipeline`]).
    pub(crate) fn statements(&self) -> Vec<(&'static str, Vec<&(dyn ToSql + Sync)>)> {
        let mut out: Vec<(&'static str, Vec<&(dyn ToSql + Sync)>)> = vec![
            (
                INSERT_BUNDLE_LOG,
                vec![
                    &self.user_pk,
                    &self.bundle_seq,
                    &self.source_id,
                    &self.source_bundle_id,
                    &self.row_count,
                    &self.byte_count,
                    &self.bundle_hash,
                ],
            ),
            (
                INSERT_BUNDLE_ROWS,
                vec![
                    &self.user_pk,
                    &self.bundle_seq,
                    &self.ordinals,
                    &self.table_ids,
                    &self.keys,
                    &self.ops,
                    &self.payloads,
                ],
            ),
            (
                UPSERT_ROW_STATE,
                vec![
                    &self.user_pk,
                    &self.bundle_seq,
                    &self.table_ids,
                    &self.keys,
                    &self.deleted,
                ],
            ),
        ];
        if let Some(channel) = &self.channel {
            out.push(("SELECT pg_notify($1, $2)", vec![channel, &self.note]));
        }
        out
    }

    /// The metadata answered for the stored bundle.
    pub(crate) fn committed(&self) -> CommittedBundle {
        CommittedBundle {
            bundle_seq: self.bundle_seq,
            source_id: self.source_id.clone(),
            source_bundle_id: self.source_bundle_id,
            row_count: self.row_count,
            bundle_hash: self.bundle_hash.clone(),
        }
    }
}

/// Finalizes the captured effects of this transaction for `user_pk`. Returns `None` when
/// they cancel out (e.g. insert then delete) or nothing was captured.
pub(crate) async fn finalize_bundle(
    tx: &impl GenericClient,
    registry: &Registry,
    user_pk: i64,
    source_id: &str,
    source_bundle_id: i64,
    notify_channel: Option<&str>,
) -> Result<Option<CommittedBundle>, SyncError> {
    let rows = sql::query(tx, TAKE_CAPTURED, &[&user_pk]).await?;
    let effects = Effects::coalesce(&rows);
    if effects.is_empty() {
        return Ok(None);
    }
    let bundle_seq: i64 = sql::query_one(tx, NEXT_BUNDLE_SEQ, &[&user_pk])
        .await?
        .get(0);
    let write = BundleWrite::new(
        registry,
        effects,
        user_pk,
        bundle_seq,
        source_id,
        source_bundle_id,
        notify_channel,
    )?;
    let statements = write.statements();
    sql::pipeline(tx, &sql::params_list(&statements)).await?;
    Ok(Some(write.committed()))
}
