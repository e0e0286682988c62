//! Snapshot rebuild: snapshot session -> paged chunks into `_sync_snapshot_stage` (bounded
//! memory) -> one transaction that replaces every synced table, the row state and the
//! checkpoint -> session deleted. Until that transaction commits the previous data stays.

use crate::apply::{apply_effects, in_apply_transaction};
use crate::codec::invalid;
use crate::error::Result;
use crate::events::{Phase, SyncEvent};
use crate::handle::Oversync;
use crate::push::effect_from_wire;
use crate::state;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::Sqlite;
use oversync_protocol::{Op, SnapshotSessionCreateRequest};
use serde_json::{Map, Value};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// The bundle the snapshot is frozen at; the new checkpoint.
    pub snapshot_bundle_seq: i64,
    /// Rows now in the synced tables.
    pub rows: u64,
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

impl Oversync<'_> {
    /// Replaces all synced tables with the server's current state, keeping the source.
    /// Pending local changes are discarded: callers rebuild only when there are none, or
    /// when the server's state must win (attaching to an existing account).
    pub(crate) async fn rebuild_keep_source(&mut self) -> Result<RebuildReport> {
        let transport = self.transport()?;
        let source = state::attachment_state(self.conn)?.current_source_id;
        let session = transport
            .create_snapshot_session(&source, &SnapshotSessionCreateRequest::default())
            .await
            .map_err(|e| self.server_error(e))?;
        let snapshot_id = session.snapshot_id.clone();
        let result = self.stage_and_swap(&source, &session).await;
        // Best effort either way: sessions expire on their own.
        let _ = transport
            .delete_snapshot_session(&source, &snapshot_id)
            .await;
        result
    }

    async fn stage_and_swap(
        &mut self,
        source: &str,
        session: &oversync_protocol::SnapshotSession,
    ) -> Result<RebuildReport> {
        let transport = self.transport()?;
        let total = session.row_count.max(0) as u64;
        let page = self
            .rt
            .limits
            .as_ref()
            .and_then(|l| l.max_rows_per_snapshot_chunk)
            .filter(|n| *n > 0)
            .unwrap_or(1000)
            .min(5000) as u32;
        self.conn
            .batch_execute("DELETE FROM _sync_snapshot_stage")?;
        let mut after = 0i64;
        let mut staged = 0u64;
        loop {
            let chunk = transport
                .snapshot_chunk(source, &session.snapshot_id, after, page)
                .await
                .map_err(|e| self.server_error(e))?;
            if chunk.snapshot_id != session.snapshot_id
                || chunk.snapshot_bundle_seq != session.snapshot_bundle_seq
            {
                return Err(invalid("snapshot chunk belongs to another snapshot"));
            }
            if chunk.rows.is_empty() && chunk.has_more {
                return Err(invalid("snapshot chunk made no progress"));
            }
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
            for (i, rows) in chunk.rows.chunks(500).enumerate() {
                let sql = format!(
                    "INSERT INTO _sync_snapshot_stage(snapshot_id, row_ordinal, schema_name, table_name, key_json, row_version, payload) VALUES {}",
                    vec!["(?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ")
                );
                let mut q = diesel::sql_query(sql).into_boxed::<Sqlite>();
                for (j, row) in rows.iter().enumerate() {
                    q = q
                        .bind::<Text, _>(session.snapshot_id.clone())
                        .bind::<BigInt, _>(staged as i64 + (i * 500 + j) as i64)
                        .bind::<Text, _>(row.schema.clone())
                        .bind::<Text, _>(row.table.clone())
                        .bind::<Text, _>(Value::Object(row.key.clone()).to_string())
                        .bind::<BigInt, _>(row.row_version)
                        .bind::<Text, _>(row.payload.to_string());
                }
                q.execute(self.conn)?;
            }
            staged += chunk.rows.len() as u64;
            self.emit(SyncEvent::Progress {
                phase: Phase::Rebuild,
                done: staged,
                total: Some(total),
            });
            if !chunk.has_more {
                break;
            }
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
        let changed = in_apply_transaction(self.conn, |conn| {
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
            diesel::sql_query("DELETE FROM _sync_snapshot_stage WHERE snapshot_id = ?")
                .bind::<Text, _>(&snapshot_id)
                .execute(conn)?;
            diesel::sql_query("UPDATE _sync_attachment_state SET last_bundle_seq_seen = ?, rebuild_required = 0 WHERE singleton_key = 1")
                .bind::<BigInt, _>(seq)
                .execute(conn)?;
            Ok(config.tables().iter().map(|t| t.table_name).collect())
        })?;
        self.tables_changed(changed);
        Ok(RebuildReport {
            snapshot_bundle_seq: seq,
            rows: staged,
        })
    }
}
