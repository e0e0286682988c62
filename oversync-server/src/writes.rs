//! Server-originated writes: an admin edit or worker job that changes registered rows of one
//! user in one transaction, committed as one bundle that clients pull like any other.
//!
//! ```no_run
//! # async fn demo(service: std::sync::Arc<oversync_server::SyncService>) -> Result<(), oversync_server::SyncError> {
//! let write = service.begin_server_write("alice", "admin-panel").await?;
//! write
//!     .client()
//!     .execute(
//!         "UPDATE business.users SET name = $1 WHERE _sync_scope_id = $2 AND id = $3::text::uuid",
//!         &[&"Renamed", &"alice", &"6f1c1c52-5b8a-4c55-9a7a-0a3c8c2d9e11"],
//!     )
//!     .await
//!     .map_err(oversync_server::SyncError::from)?;
//! let bundle = write.commit().await?;
//! println!("committed bundle {}", bundle.bundle_seq);
//! # Ok(()) }
//! ```

use crate::SyncService;
use crate::capture::{CommittedBundle, finalize_bundle};
use crate::error::SyncError;
use crate::scope::{self, INITIALIZING, UNINITIALIZED};
use deadpool_postgres::Object;
use oversync_protocol::codes;
use std::sync::Arc;

/// An open server-originated write transaction. Run statements on [`ServerWrite::client`],
/// then [`ServerWrite::commit`]. Dropping it without committing rolls back (the connection
/// is discarded so the open transaction dies with it).
pub struct ServerWrite {
    service: Arc<SyncService>,
    client: Option<Object>,
    user_pk: i64,
    writer_id: String,
    source_bundle_id: i64,
    scope_id: String,
    /// Whether opening this write initialized an uninitialized scope.
    pub auto_initialized: bool,
}

impl std::fmt::Debug for ServerWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerWrite")
            .field("scope_id", &self.scope_id)
            .field("writer_id", &self.writer_id)
            .field("source_bundle_id", &self.source_bundle_id)
            .finish_non_exhaustive()
    }
}

impl SyncService {
    /// Opens a write on behalf of `scope_id` (the user) by the stable writer `writer_id`
    /// (e.g. `"admin-panel"`). An uninitialized scope becomes initialized (server
    /// authoritative); a scope under an initialization lease fails with `scope_initializing`.
    pub async fn begin_server_write(
        self: &Arc<Self>,
        scope_id: &str,
        writer_id: &str,
    ) -> Result<ServerWrite, SyncError> {
        let scope_id = scope_id.trim();
        let writer_id = writer_id.trim();
        if scope_id.is_empty() || writer_id.is_empty() {
            return Err(SyncError::bad_request(
                codes::INVALID_REQUEST,
                "scope_id and writer_id are required",
            ));
        }
        let client = self.client().await?;
        client.batch_execute("BEGIN").await?;
        let mut write = ServerWrite {
            service: self.clone(),
            client: Some(client),
            user_pk: 0,
            writer_id: writer_id.to_owned(),
            source_bundle_id: 0,
            scope_id: scope_id.to_owned(),
            auto_initialized: false,
        };
        write.prepare().await?;
        Ok(write)
    }
}

impl ServerWrite {
    fn object(&mut self) -> Result<&mut Object, SyncError> {
        self.client
            .as_mut()
            .ok_or_else(|| SyncError::Internal("server write already finished".into()))
    }

    async fn prepare(&mut self) -> Result<(), SyncError> {
        let scope_id = self.scope_id.clone();
        let writer_id = self.writer_id.clone();
        let tx = self.object()?;
        scope::lock_user(tx, &scope_id).await?;
        let user_pk = scope::ensure_user(tx, &scope_id).await?;
        let state = scope::load_scope_for_update(tx, user_pk).await?;
        let mut auto = false;
        match state.state {
            UNINITIALIZED => {
                scope::mark_initialized(tx, user_pk, &writer_id).await?;
                auto = true;
            }
            INITIALIZING => {
                return Err(SyncError::conflict(
                    codes::SCOPE_INITIALIZING,
                    format!("sync scope for user {scope_id} is initializing"),
                ));
            }
            _ => {}
        }
        let (expected, _) = scope::expected_source_bundle_id(tx, user_pk, &writer_id).await?;
        scope::set_bundle_context(tx, &scope_id, user_pk).await?;
        self.user_pk = user_pk;
        self.source_bundle_id = expected;
        self.auto_initialized = auto;
        Ok(())
    }

    /// The connection inside the open transaction. Writes to registered tables must stay
    /// within this user's rows (`_sync_scope_id` is filled in on INSERT when omitted).
    pub fn client(&self) -> &tokio_postgres::Client {
        match &self.client {
            Some(c) => c,
            // `client` is only taken by commit/rollback, which consume `self`.
            None => unreachable!("server write used after finish"),
        }
    }

    /// Captures the effects as one bundle and commits. Fails with
    /// [`SyncError::NoCapturedChanges`] (and rolls back) if no registered row changed.
    pub async fn commit(mut self) -> Result<CommittedBundle, SyncError> {
        let service = self.service.clone();
        let registry = service.registry();
        let (user_pk, writer, sbid) = (self.user_pk, self.writer_id.clone(), self.source_bundle_id);
        let tx = self.object()?;
        let bundle = finalize_bundle(
            tx,
            &registry,
            user_pk,
            &writer,
            sbid,
            service.notify_channel(),
        )
        .await?;
        let Some(bundle) = bundle else {
            self.abandon().await?;
            return Err(SyncError::NoCapturedChanges {
                scope_id: self.scope_id.clone(),
                writer_id: writer,
            });
        };
        let pruned = service.after_bundle(tx, user_pk, &bundle).await?;
        tx.batch_execute("COMMIT").await?;
        self.client = None;
        service.record_commit(&bundle, pruned);
        Ok(bundle)
    }

    /// Abandons the write.
    pub async fn rollback(mut self) -> Result<(), SyncError> {
        self.abandon().await
    }

    async fn abandon(&mut self) -> Result<(), SyncError> {
        if let Some(client) = self.client.take() {
            client.batch_execute("ROLLBACK").await?;
        }
        Ok(())
    }
}

impl Drop for ServerWrite {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Never return a connection with an open transaction to the pool.
            drop(Object::take(client));
        }
    }
}
