//! Local lifecycle: `open()` on every launch and `uninstall_sync()` to leave sync for good.

use crate::config::OversyncConfig;
use crate::error::{Error, Result};
use crate::handle::Oversync;
use crate::state;
use crate::transport::TransportError;
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
    /// Whether this call gave the install a fresh source id because the database file is not
    /// the one the previous source id was created in (a copy, a restored backup, a move to
    /// another file system). Pending changes are kept and pushed under the new source.
    pub source_rotated: bool,
}

impl Oversync<'_> {
    /// Validates the database against the registered models and the installed sync
    /// migrations, then creates and persists the source id on first run. Idempotent; call it
    /// on every launch. Local writes are captured from the moment the migrations ran.
    ///
    /// First it upgrades `_sync_*` metadata written by an older release's copy of the
    /// metadata migration to this release's (adding what it lacks, in one transaction; see
    /// "Upgrading oversync-diesel" in docs/your-app.md), so an app never edits that copy.
    ///
    /// Fails with a [`SchemaError`](crate::SchemaError) naming the table and column when the
    /// database does not match; in that case no `_sync_*` state is changed (beyond that
    /// metadata upgrade, which is kept).
    pub fn open(&mut self) -> Result<OpenReport> {
        crate::metadata::upgrade(self.conn)?;
        let (uuid_refs, push_order) = validate(self.conn, self.config)?;
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
            // Recorded on the first open too, so a copy made right after it is noticed.
            let source_rotated = check_file_identity(conn)?;
            let source_id = if source_rotated {
                state::attachment_state(conn)?.current_source_id
            } else {
                source_id
            };
            // apply_mode is only ever set inside the runtime's own transactions; a 1 here
            // means a crash mid-apply, and leaving it would silently stop capture.
            conn.batch_execute("UPDATE _sync_apply_state SET apply_mode = 0 WHERE singleton_key = 1 AND apply_mode != 0")?;
            Ok(OpenReport {
                source_id,
                created_source,
                source_rotated,
            })
        })?;
        self.rt.opened = true;
        self.rt.uuid_refs = uuid_refs;
        self.rt.push_order = push_order;
        tracing::debug!(source_id = %report.source_id, created = report.created_source, rotated = report.source_rotated, "oversync opened");
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
        self.rt.opened = false;
        Ok(())
    }
}

/// Records which file the database is and rotates the source when it changed since the last
/// `open()`: two files holding one source id would push colliding bundles (the server answers
/// the second as already committed with the first one's rows). Returns whether it rotated.
///
/// The identity is device and inode where the platform has them, else the path. A rename
/// keeps the inode and rotates nothing; a copy, a restored backup or a move to another file
/// system rotates, which loses nothing (the outbox and dirty rows are kept). In-memory and
/// temporary databases have no file and are not checked.
fn check_file_identity(conn: &mut SqliteConnection) -> Result<bool> {
    #[derive(QueryableByName)]
    struct MainFile {
        #[diesel(sql_type = Text)]
        file: String,
    }
    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = Text)]
        file_identity: String,
    }
    let main: Option<MainFile> =
        sql_query("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .get_result(conn)
            .optional()?;
    let Some(path) = main.map(|m| m.file).filter(|f| !f.is_empty()) else {
        return Ok(false);
    };
    let Some(identity) = file_identity(&path) else {
        // Unreadable metadata: leave the recorded identity for a later open to compare.
        return Ok(false);
    };
    let stored: Option<Stored> =
        sql_query("SELECT file_identity FROM _sync_install_identity WHERE singleton_key = 1")
            .get_result(conn)
            .optional()?;
    let copied = stored.is_some_and(|s| !s.file_identity.is_empty() && s.file_identity != identity);
    let mut rotated = false;
    if copied {
        if state::operation_state(conn)?.kind == "source_recovery" {
            // rebuild() rotates anyway; a replacement reserved before the copy is shared
            // with the other copy, so a fresh one is reserved instead.
            conn.batch_execute(
                "UPDATE _sync_operation_state SET replacement_source_id = '' WHERE singleton_key = 1",
            )?;
        } else {
            state::rotate_source_locally(conn, state::RotationCause::FileCopied)?;
            rotated = true;
        }
    }
    sql_query(
        "INSERT INTO _sync_install_identity(singleton_key, database_path, file_identity) VALUES (1, ?, ?) \
         ON CONFLICT(singleton_key) DO UPDATE SET database_path = excluded.database_path, file_identity = excluded.file_identity",
    )
    .bind::<Text, _>(&path)
    .bind::<Text, _>(&identity)
    .execute(conn)?;
    Ok(rotated)
}

/// Device and inode of the file at `path`: a copy gets a new inode, a rename keeps it.
#[cfg(unix)]
fn file_identity(path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(format!("dev:{}:ino:{}", meta.dev(), meta.ino()))
}

/// Without inodes the path is the identity: a move rotates the source too (harmless).
#[cfg(not(unix))]
fn file_identity(path: &str) -> Option<String> {
    std::fs::canonicalize(path)
        .ok()
        .map(|p| format!("path:{}", p.display()))
}

/// How [`Oversync::attach`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutcome {
    /// This user was already attached; nothing changed.
    Resumed,
    /// The account already had data on the server: local tables now hold it (a snapshot),
    /// replacing whatever this device held before. Changes made on this device before the
    /// attach (while anonymous) are dropped, not uploaded into the account: the protocol's
    /// `remote_authoritative` means the account's state wins. An app that wants to carry
    /// them over reads them before `attach` and writes them again afterwards, which makes
    /// the upload explicit.
    UsedRemoteState {
        /// Rows hydrated.
        rows: u64,
        /// Local rows changed before the attach that were dropped (0 when there were none).
        discarded_local_rows: u64,
    },
    /// The account was empty on the server and this device's local rows will seed it with
    /// the next push.
    SeededFromLocal,
    /// The account was empty on the server and so is this device.
    StartedEmpty,
    /// Another device is initializing the account: try again after `after`.
    RetryLater {
        /// The server's suggested delay.
        after: std::time::Duration,
    },
}

/// Options of [`Oversync::attach_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttachOptions {
    /// When the account already has data (`remote_authoritative`), return the device's
    /// anonymous changes that the account's state replaces
    /// ([`AttachReport::replaced_local_rows`]) instead of only counting them. They are
    /// still neither uploaded nor kept locally: the app decides what to write again.
    pub surface_replaced_rows: bool,
}

impl AttachOptions {
    /// Options that return the replaced anonymous rows.
    pub fn surface_replaced_rows() -> AttachOptions {
        AttachOptions {
            surface_replaced_rows: true,
        }
    }
}

/// What [`Oversync::attach_with`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachReport {
    /// How the attach ended.
    pub outcome: AttachOutcome,
    /// With [`AttachOptions::surface_replaced_rows`] and
    /// [`AttachOutcome::UsedRemoteState`]: each anonymous change the account's state
    /// replaced, in the order it was first made; empty otherwise.
    pub replaced_local_rows: Vec<ReplacedLocalRow>,
}

/// An anonymous local change that a remote-authoritative attach replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplacedLocalRow {
    /// Table name.
    pub table: String,
    /// The row's key as JSON (`{"id": "..."}`).
    pub key: serde_json::Value,
    /// What the device did: `Insert`, `Update` or `Delete`.
    pub op: oversync_protocol::Op,
    /// The row as it was locally (column name to value, in the local storage form), `None`
    /// for a delete.
    pub row: Option<serde_json::Value>,
}

/// The pending local changes, read inside the remote-replace swap that drops them.
pub(crate) fn replaced_local_rows(
    conn: &mut SqliteConnection,
    config: &crate::OversyncConfig,
) -> Result<Vec<ReplacedLocalRow>> {
    #[derive(QueryableByName)]
    struct Dirty {
        #[diesel(sql_type = Text)]
        table_name: String,
        #[diesel(sql_type = Text)]
        key_json: String,
        #[diesel(sql_type = Text)]
        op: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        payload: Option<String>,
    }
    let rows: Vec<Dirty> = sql_query(format!(
        "SELECT table_name, key_json, op, {} AS payload FROM _sync_dirty_rows AS d ORDER BY dirty_ordinal",
        crate::capture::payload_sql(config, "d")
    ))
    .load(conn)?;
    rows.into_iter()
        .map(|d| {
            let json = |text: &str| {
                serde_json::from_str(text).map_err(|e| {
                    Error::InvalidState(format!(
                        "dirty row of {} {}: {e}",
                        d.table_name, d.key_json
                    ))
                })
            };
            Ok(ReplacedLocalRow {
                key: json(&d.key_json)?,
                op: oversync_protocol::Op::parse(&d.op)
                    .ok_or_else(|| Error::InvalidState(format!("dirty row op {:?}", d.op)))?,
                row: d.payload.as_deref().map(json).transpose()?,
                table: d.table_name,
            })
        })
        .collect()
}

/// What [`Oversync::sync_then_detach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncThenDetachReport {
    /// Whether the user is detached now.
    pub detached: bool,
    /// Sync attempts made.
    pub attempts: u32,
    /// Rows still unsynced (0 when detached): pending rows, or, once nothing is pending,
    /// the quarantined rows that block the detach.
    pub rows_left: u64,
}

impl Oversync<'_> {
    /// Attaches this install to `user_id` (the signed-in user): checks the server's
    /// capabilities (failing closed on another protocol), then resolves the account's state
    /// with `POST /sync/connect`. Call it on every launch with a signed-in user.
    ///
    /// When the account already has data (`remote_authoritative`) the install first records
    /// a pending remote replace for `user_id` (app writes to synced tables then fail with
    /// `SYNC_TRANSITION_PENDING`), then hydrates from a snapshot; the swap drops the local
    /// rows and binds the user in one transaction. If hydration fails or the app is killed,
    /// the install stays anonymous with its local rows untouched: calling `attach` again
    /// with the same user resumes the hydration, and attaching another user abandons it.
    pub async fn attach(&mut self, user_id: &str) -> Result<AttachOutcome> {
        Ok(self
            .attach_with(user_id, AttachOptions::default())
            .await?
            .outcome)
    }

    /// [`attach`](Self::attach) with options. With
    /// [`AttachOptions::surface_replaced_rows`], an attach to an account that already has
    /// data returns the anonymous changes it replaced, read in the same transaction that
    /// drops them, so the app can show them or write some of them again (a normal local
    /// write, pushed by the next sync). They are not kept anywhere else: write what you want
    /// to keep before the app exits.
    pub async fn attach_with(
        &mut self,
        user_id: &str,
        options: AttachOptions,
    ) -> Result<AttachReport> {
        let surface = options.surface_replaced_rows;
        let mut replaced_local_rows = Vec::new();
        let outcome = self
            .attach_inner(user_id, surface, &mut replaced_local_rows)
            .await?;
        Ok(AttachReport {
            outcome,
            replaced_local_rows,
        })
    }

    async fn attach_inner(
        &mut self,
        user_id: &str,
        surface: bool,
        replaced: &mut Vec<ReplacedLocalRow>,
    ) -> Result<AttachOutcome> {
        self.ensure_open()?;
        if user_id.trim().is_empty() {
            return Err(Error::InvalidState(
                "attach needs a non-empty user id".into(),
            ));
        }
        let attachment = state::attachment_state(self.conn)?;
        if attachment.binding_state == "attached" {
            if attachment.attached_user_id != user_id {
                return Err(Error::AttachedToAnotherUser {
                    attached_user: attachment.attached_user_id,
                    requested_user: user_id.to_string(),
                });
            }
            self.refresh_capabilities(&attachment.current_source_id)
                .await?;
            if attachment.rebuild_required != 0 {
                let report = self.rebuild_keep_source().await?;
                return Ok(AttachOutcome::UsedRemoteState {
                    rows: report.rows,
                    discarded_local_rows: 0,
                });
            }
            return Ok(AttachOutcome::Resumed);
        }
        let source = attachment.current_source_id;
        self.refresh_capabilities(&source).await?;
        let operation = state::operation_state(self.conn)?;
        if operation.kind == "remote_replace" {
            if operation.target_user_id == user_id {
                // The server already answered remote_authoritative for this user.
                return self.replace_with_remote(user_id, surface, replaced).await;
            }
            // Nothing local was replaced yet: the device is anonymous with its own rows.
            set_remote_replace(self.conn, None)?;
        }
        let pending = state::pending_row_count(self.conn)?;
        let transport = self.transport()?.expecting_user(user_id);
        let answer = transport
            .connect(
                &source,
                &oversync_protocol::ConnectRequest {
                    has_local_pending_rows: pending > 0,
                },
            )
            .await
            .map_err(|e| self.server_error(e))?;
        use oversync_protocol::ConnectResolution as R;
        match answer.resolution {
            R::RetryLater => {
                let after = std::time::Duration::from_secs(
                    answer.retry_after_seconds.unwrap_or(1).clamp(1, 3600) as u64,
                );
                self.emit(crate::events::SyncEvent::RetryScheduled {
                    attempt: 1,
                    delay: after,
                    reason: "another device is initializing this account".into(),
                });
                Ok(AttachOutcome::RetryLater { after })
            }
            R::InitializeEmpty => {
                self.bind(user_id, "", false)?;
                Ok(AttachOutcome::StartedEmpty)
            }
            R::InitializeLocal => {
                let id = answer
                    .initialization_id
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        Error::InvalidResponse("initialize_local without initialization_id".into())
                    })?;
                self.bind(user_id, &id, false)?;
                Ok(AttachOutcome::SeededFromLocal)
            }
            R::RemoteAuthoritative => {
                // Recorded first: a failure or crash mid-hydration leaves the install
                // anonymous with this pending replace, which the next attach resumes.
                set_remote_replace(self.conn, Some(user_id))?;
                self.replace_with_remote(user_id, surface, replaced).await
            }
        }
    }

    /// Hydrates the pending remote replace for `user_id`: the snapshot replaces every synced
    /// table, pending local rows are dropped, and the user is bound, in one transaction.
    async fn replace_with_remote(
        &mut self,
        user_id: &str,
        surface: bool,
        replaced: &mut Vec<ReplacedLocalRow>,
    ) -> Result<AttachOutcome> {
        // Stable until the swap: the capture triggers refuse app writes meanwhile.
        let discarded_local_rows = state::pending_row_count(self.conn)?;
        let (report, rows) = self.rebuild_replacing_local(user_id, surface).await?;
        *replaced = rows;
        if discarded_local_rows > 0 {
            tracing::info!(
                discarded_local_rows,
                "attach: the account's state replaced this device's unsynced rows"
            );
        }
        Ok(AttachOutcome::UsedRemoteState {
            rows: report.rows,
            discarded_local_rows,
        })
    }

    async fn refresh_capabilities(&mut self, source: &str) -> Result<()> {
        let transport = self.transport()?;
        self.rt.capabilities_checked = false;
        let caps = transport
            .capabilities(source)
            .await
            .map_err(|e| self.server_error(e))?;
        if caps.protocol_version != oversync_protocol::PROTOCOL_VERSION {
            return Err(Error::UnsupportedProtocol {
                version: caps.protocol_version,
            });
        }
        check_registered_tables(self.config, &caps.registered_tables)?;
        self.rt.limits = caps.bundle_limits;
        self.rt.capabilities_checked = true;
        Ok(())
    }

    /// Fails closed on a server speaking another protocol before the first push or pull of
    /// a runtime, also one that did not `attach` in this process (an app that resumes an
    /// attached database). Capabilities are fetched once per transport and fetched again
    /// after a mismatch; nothing local changes when the check fails.
    pub(crate) async fn ensure_capabilities(&mut self) -> Result<()> {
        if self.rt.capabilities_checked {
            return Ok(());
        }
        let source = state::attachment_state(self.conn)?.current_source_id;
        self.refresh_capabilities(&source).await
    }

    fn bind(
        &mut self,
        user_id: &str,
        initialization_id: &str,
        rebuild_required: bool,
    ) -> Result<()> {
        bind_user(self.conn, user_id, initialization_id, rebuild_required)
    }

    /// Detaches the user: clears the synced tables and sync state and returns to anonymous.
    /// Refuses with [`Error::UnsyncedData`] ("blocked: unsynced data") while local changes
    /// have not reached the server. The install gets a fresh source id: servers sequence
    /// bundles per (user, source), so the next user starts a new sequence.
    pub fn detach(&mut self) -> Result<()> {
        self.ensure_open()?;
        let pending_rows = state::pending_row_count(self.conn)?;
        if pending_rows > 0 {
            return Err(Error::UnsyncedData { pending_rows });
        }
        let rows = crate::quarantine::quarantined_count(self.conn)?;
        if rows > 0 {
            return Err(Error::QuarantinedRows { rows });
        }
        let config = self.config;
        let new_source = uuid::Uuid::new_v4().to_string();
        crate::apply::in_apply_transaction(self.conn, |conn| {
            // Checked again under the write lock: a write that landed since would be lost.
            let pending_rows = state::pending_row_count(conn)?;
            if pending_rows > 0 {
                return Err(Error::UnsyncedData { pending_rows });
            }
            diesel::sql_query("INSERT INTO _sync_source_state(source_id) VALUES (?)")
                .bind::<Text, _>(&new_source)
                .execute(conn)?;
            diesel::sql_query(
                "UPDATE _sync_attachment_state SET current_source_id = ? WHERE singleton_key = 1",
            )
            .bind::<Text, _>(&new_source)
            .execute(conn)?;
            for spec in config.tables() {
                conn.batch_execute(&format!(
                    "DELETE FROM \"{}\"",
                    spec.table_name.replace('"', "\"\"")
                ))?;
            }
            conn.batch_execute(
                "DELETE FROM _sync_row_state; DELETE FROM _sync_push_stage; DELETE FROM _sync_snapshot_stage; DELETE FROM _sync_quarantine;
                 UPDATE _sync_attachment_state SET binding_state = 'anonymous', attached_user_id = '',
                   last_bundle_seq_seen = 0, rebuild_required = 0, pending_initialization_id = '' WHERE singleton_key = 1;
                 UPDATE _sync_operation_state SET kind = 'none', reason = '', target_user_id = '' WHERE singleton_key = 1;",
            )?;
            Ok(())
        })?;
        self.tables_changed(config.tables().iter().map(|t| t.table_name).collect());
        Ok(())
    }

    /// Syncs up to three times, then detaches; reports what is left when it cannot. A local
    /// write that lands during a round (while its pull downloads, or just before the detach)
    /// makes it run another round instead of failing or losing the write.
    pub async fn sync_then_detach(&mut self) -> Result<SyncThenDetachReport> {
        const ATTEMPTS: u32 = 3;
        let mut attempts = 0;
        while attempts < ATTEMPTS {
            attempts += 1;
            self.sync().await?;
            if state::pending_row_count(self.conn)? == 0 {
                // Quarantined rows need the app (retry or discard); syncing again won't help.
                let quarantined = crate::quarantine::quarantined_count(self.conn)?;
                if quarantined > 0 {
                    return Ok(SyncThenDetachReport {
                        detached: false,
                        attempts,
                        rows_left: quarantined,
                    });
                }
                match self.detach() {
                    Ok(()) => {
                        return Ok(SyncThenDetachReport {
                            detached: true,
                            attempts,
                            rows_left: 0,
                        });
                    }
                    Err(Error::UnsyncedData { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(SyncThenDetachReport {
            detached: false,
            attempts,
            rows_left: state::pending_row_count(self.conn)?,
        })
    }

    /// Pushes local changes, then pulls to the server's stable ceiling.
    pub async fn sync(&mut self) -> Result<SyncReport> {
        self.ensure_attached()?;
        self.ensure_capabilities().await?;
        if state::attachment_state(self.conn)?.rebuild_required != 0 {
            self.rebuild_keep_source().await?;
        }
        let push = self.push_pending().await?;
        let pull = self.pull_to_stable().await?;
        Ok(SyncReport { push, pull })
    }
}

fn bind_user(
    conn: &mut SqliteConnection,
    user_id: &str,
    initialization_id: &str,
    rebuild_required: bool,
) -> Result<()> {
    diesel::sql_query(
        "UPDATE _sync_attachment_state SET binding_state = 'attached', attached_user_id = ?, \
         pending_initialization_id = ?, rebuild_required = ? WHERE singleton_key = 1",
    )
    .bind::<Text, _>(user_id)
    .bind::<Text, _>(initialization_id)
    .bind::<diesel::sql_types::Integer, _>(i32::from(rebuild_required))
    .execute(conn)?;
    Ok(())
}

/// The seed push: the first push of an account, carrying the initialization lease that
/// `attach` got with `SeededFromLocal`. Rows the server refuses are quarantined by the push
/// and the rest seeds the account; what is left here is the lease itself.
impl Oversync<'_> {
    /// A seed push failed with `error`. When the lease is gone (it expired while the device
    /// was offline, or the server gave it up after refusing a seed row, as ours does so other
    /// devices need not wait for it), the account is asked again and `Ok` means push again;
    /// a contract error is [`Error::SeedPushRejected`], saying when other devices can attach;
    /// anything else (network, 5xx, auth) is returned as it is. `renewals` counts the
    /// renewals since the last answered upload: a server losing every new lease at once is
    /// answered with its error after two.
    pub(crate) async fn seed_push_failed(
        &mut self,
        error: Error,
        renewals: &mut u32,
    ) -> Result<()> {
        use oversync_protocol::codes;
        let Error::Transport(TransportError::Server { status, code, .. }) = &error else {
            return Err(error);
        };
        let lease_gone =
            code == codes::INITIALIZATION_EXPIRED || code == codes::INITIALIZATION_STALE;
        if lease_gone && *renewals < 2 {
            *renewals += 1;
            return self.renew_initialization().await;
        }
        if !matches!(*status, 400 | 409 | 410 | 413 | 422) {
            return Err(error);
        }
        let others_can_attach_within = self
            .rt
            .limits
            .as_ref()
            .and_then(|l| l.initialization_lease_ttl_seconds)
            .filter(|s| *s > 0)
            .map(|s| std::time::Duration::from_secs(s as u64));
        match error {
            Error::Transport(error) => Err(Error::SeedPushRejected {
                error: Box::new(error),
                others_can_attach_within,
            }),
            other => Err(other),
        }
    }

    /// `POST /sync/connect` again, with this device's pending rows, after its lease was
    /// lost: a new lease carries the same frozen bundle; an account initialized meanwhile
    /// (by another device, or empty) takes the rows as ordinary pushes, and the next pull
    /// brings the account's rows; another device's lease is [`Error::AccountInitializing`].
    async fn renew_initialization(&mut self) -> Result<()> {
        use oversync_protocol::ConnectResolution as R;
        let source = state::attachment_state(self.conn)?.current_source_id;
        let transport = self.transport()?;
        let answer = transport
            .connect(
                &source,
                &oversync_protocol::ConnectRequest {
                    has_local_pending_rows: true,
                },
            )
            .await
            .map_err(|e| self.server_error(e))?;
        let initialization_id = match answer.resolution {
            R::InitializeLocal => answer
                .initialization_id
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    Error::InvalidResponse("initialize_local without initialization_id".into())
                })?,
            R::InitializeEmpty | R::RemoteAuthoritative => String::new(),
            R::RetryLater => {
                return Err(Error::AccountInitializing {
                    retry_after: std::time::Duration::from_secs(
                        answer.retry_after_seconds.unwrap_or(1).clamp(1, 3600) as u64,
                    ),
                });
            }
        };
        tracing::info!(
            resolution = ?answer.resolution,
            "seed push lost its initialization lease; asked the account again"
        );
        self.conn.immediate_transaction(|conn| -> Result<()> {
            sql_query(
                "UPDATE _sync_attachment_state SET pending_initialization_id = ? WHERE singleton_key = 1",
            )
            .bind::<Text, _>(&initialization_id)
            .execute(conn)?;
            sql_query(
                "UPDATE _sync_outbox_bundle SET initialization_id = ? WHERE singleton_key = 1 AND state = 'prepared'",
            )
            .bind::<Text, _>(&initialization_id)
            .execute(conn)?;
            Ok(())
        })
    }
}

/// Every configured table must be served: a table the server does not register would be
/// refused at the first push (`push_chunk_invalid`) after `connect` took the account's
/// initialization lease, or silently never pulled. Extra server tables are fine: a server
/// may serve tables this release does not sync yet (a newer release's). Their rows never
/// reach this device: a pulled or hydrated row of an unconfigured table is an
/// `InvalidResponse` naming it, which stops that pull (nothing applied) until the app is
/// upgraded, as for a new column's values. A server that does not report its tables (the
/// field is optional in the protocol) is not checked here.
fn check_registered_tables(config: &OversyncConfig, served: &[String]) -> Result<()> {
    if served.is_empty() {
        return Ok(());
    }
    let schema = config.schema();
    let missing: Vec<String> = config
        .tables()
        .iter()
        .map(|spec| format!("{schema}.{}", spec.table_name))
        .filter(|name| !served.iter().any(|s| s.eq_ignore_ascii_case(name)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::TablesNotRegistered {
        schema: schema.to_string(),
        missing,
        served: served.to_vec(),
    })
}

/// Records (`Some(user)`) or abandons (`None`) a pending remote replace.
fn set_remote_replace(conn: &mut SqliteConnection, user_id: Option<&str>) -> Result<()> {
    diesel::sql_query(
        "UPDATE _sync_operation_state SET kind = ?, target_user_id = ?, reason = '' WHERE singleton_key = 1",
    )
    .bind::<Text, _>(if user_id.is_some() { "remote_replace" } else { "none" })
    .bind::<Text, _>(user_id.unwrap_or(""))
    .execute(conn)?;
    Ok(())
}

/// The end of a remote replace, inside the snapshot swap transaction (after the snapshot's
/// rows are written): the local intent is gone, the user is bound, the replace is done.
pub(crate) fn finish_remote_replace(conn: &mut SqliteConnection, user_id: &str) -> Result<()> {
    conn.batch_execute(
        "DELETE FROM _sync_dirty_rows; DELETE FROM _sync_outbox_rows;
         UPDATE _sync_outbox_bundle SET state = 'none', source_id = '', source_bundle_id = 0, row_count = 0,
           initialization_id = '', canonical_request_hash = '', remote_bundle_hash = '', remote_bundle_seq = 0 WHERE singleton_key = 1;",
    )?;
    bind_user(conn, user_id, "", false)?;
    set_remote_replace(conn, None)
}

/// What [`Oversync::sync`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// The push half.
    pub push: crate::push::PushOutcome,
    /// The pull half.
    pub pull: crate::pull::PullOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{ColumnSpec, KeyKind, TableSpec, ValueKind};

    const NOTES: TableSpec = TableSpec {
        table_name: "notes",
        key_column: "id",
        key_kind: KeyKind::Text,
        columns: &[ColumnSpec {
            name: "id",
            is_blob: false,
            kind: ValueKind::Text,
        }],
        up_sql: "",
        down_sql: "",
        triggers: &[],
    };

    #[test]
    fn registered_tables_must_cover_the_config() {
        let config = OversyncConfig::new("app").table_spec(&NOTES);
        // Served (any case), with extra tables: fine.
        check_registered_tables(&config, &["APP.notes".into(), "app.tags".into()]).unwrap();
        // A server that does not report its tables is not checked.
        check_registered_tables(&config, &[]).unwrap();
        // Served in another schema only: missing.
        let err = check_registered_tables(&config, &["other.notes".into()]).unwrap_err();
        assert!(
            matches!(&err, Error::TablesNotRegistered { missing, .. } if missing == &vec!["app.notes".to_string()]),
            "{err}"
        );
    }
}
