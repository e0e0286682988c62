//! Local lifecycle: `open()` on every launch and `uninstall_sync()` to leave sync for good.

use crate::error::{Error, Result};
use crate::handle::Oversync;
use crate::state;
use crate::validate::{METADATA_TABLES, validate};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_query;
use diesel::sql_types::Text;

/// What [`Oversync::open`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// This install's current source id (a UUIDv4).
    pub source_id: String,
    /// Whether this call created the source id (the first open of this database).
    pub created_source: bool,
}

impl Oversync<'_> {
    /// Validates the database against the registered models and the installed sync
    /// migrations, then creates and persists the source id on first run. Idempotent; call it
    /// on every launch. Local writes are captured from the moment the migrations ran.
    ///
    /// Fails with a [`SchemaError`](crate::SchemaError) naming the table and column when the
    /// database does not match; in that case no `_sync_*` state is changed.
    pub fn open(&mut self) -> Result<OpenReport> {
        validate(self.conn, self.config)?;
        let schema = self.config.schema().to_string();
        let report = self.conn.immediate_transaction(|conn| -> Result<OpenReport> {
            let attachment = state::attachment_state(conn)?;
            let (source_id, created_source) = if attachment.current_source_id.is_empty() {
                (uuid::Uuid::new_v4().to_string(), true)
            } else {
                (attachment.current_source_id, false)
            };
            sql_query(
                "UPDATE _sync_attachment_state SET current_source_id = ?, \
                 schema_name = CASE WHEN schema_name = '' THEN ? ELSE schema_name END \
                 WHERE singleton_key = 1",
            )
            .bind::<Text, _>(&source_id)
            .bind::<Text, _>(&schema)
            .execute(conn)?;
            sql_query(
                "INSERT INTO _sync_source_state(source_id) VALUES (?) ON CONFLICT(source_id) DO NOTHING",
            )
            .bind::<Text, _>(&source_id)
            .execute(conn)?;
            // apply_mode is only ever set inside the runtime's own transactions; a 1 here
            // means a crash mid-apply, and leaving it would silently stop capture.
            conn.batch_execute("UPDATE _sync_apply_state SET apply_mode = 0 WHERE singleton_key = 1 AND apply_mode != 0")?;
            Ok(OpenReport {
                source_id,
                created_source,
            })
        })?;
        *self.opened = true;
        tracing::debug!(source_id = %report.source_id, created = report.created_source, "oversync opened");
        Ok(report)
    }

    /// Removes every capture trigger and all `_sync_*` state, leaving the app's tables as
    /// they are. Refuses with [`Error::UnsyncedData`] while local changes have not reached the
    /// server. Afterwards the database no longer syncs; remove the sync migration files from
    /// the app as well, or the next `diesel migration run` on a fresh database installs them.
    pub fn uninstall_sync(&mut self) -> Result<()> {
        self.ensure_open()?;
        let pending_rows = state::pending_row_count(self.conn)?;
        if pending_rows > 0 {
            return Err(Error::UnsyncedData { pending_rows });
        }
        let config = self.config;
        self.conn.immediate_transaction(|conn| -> Result<()> {
            for spec in config.tables() {
                for trigger in spec.triggers {
                    conn.batch_execute(&format!(
                        "DROP TRIGGER IF EXISTS \"{}\"",
                        trigger.name.replace('"', "\"\"")
                    ))?;
                }
            }
            for table in METADATA_TABLES {
                conn.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))?;
            }
            Ok(())
        })?;
        *self.opened = false;
        Ok(())
    }
}
