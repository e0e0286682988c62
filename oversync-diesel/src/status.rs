//! Status reads: what is pending, which source this install is.

use crate::error::Result;
use crate::handle::Oversync;
use crate::state;
use diesel::{Connection, SqliteConnection};

/// Local changes not yet accepted by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSyncStatus {
    /// Captured rows plus rows frozen in the outbox. Quarantined rows are not counted: they
    /// are not pushed (and do not hold back pulls) until the app retries them.
    pub pending_rows: u64,
    /// Local changes the server refused, set aside in quarantine
    /// ([`Oversync::quarantined_rows`]).
    pub quarantined_rows: u64,
    /// `detach()` is refused while this is true: rows are pending or quarantined.
    pub blocked_detach: bool,
}

/// Whether this install is bound to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Not attached: local writes are captured and wait for the first attach.
    Anonymous,
    /// Attached to this user.
    Attached {
        /// The attached user's id.
        user_id: String,
    },
}

/// Debug view of the install's sync identity and recovery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The current source id sent as `Oversync-Source-ID`.
    pub current_source_id: String,
    /// Anonymous or attached.
    pub binding: Binding,
    /// The remote schema this database syncs.
    pub schema: String,
    /// Last bundle applied locally.
    pub last_bundle_seq_seen: i64,
    /// A snapshot rebuild is required before syncing on.
    pub rebuild_required: bool,
    /// The source stream broke; `rebuild()` must rotate the source.
    pub source_recovery_required: bool,
    /// Why recovery is required, when it is.
    pub source_recovery_reason: Option<String>,
    /// The replacement source reserved for the rotation, once reserved.
    pub replacement_source_id: Option<String>,
}

impl Oversync<'_> {
    /// How many local changes wait to reach the server.
    pub fn pending_sync_status(&mut self) -> Result<PendingSyncStatus> {
        self.ensure_open()?;
        read_pending_sync_status(self.conn)
    }

    /// The install's source identity and recovery state.
    pub fn source_info(&mut self) -> Result<SourceInfo> {
        self.ensure_open()?;
        read_source_info(self.conn)
    }
}

/// [`Oversync::pending_sync_status`] on any connection to the database (also a read-only
/// one, which is how [`SyncClient`](crate::SyncClient) reads it beside a running sync).
pub(crate) fn read_pending_sync_status(conn: &mut SqliteConnection) -> Result<PendingSyncStatus> {
    // One read transaction: both counts from the same committed state.
    conn.transaction(|conn| {
        let pending_rows = state::pending_row_count(conn)?;
        let quarantined_rows = crate::quarantine::quarantined_count(conn)?;
        Ok(PendingSyncStatus {
            pending_rows,
            quarantined_rows,
            blocked_detach: pending_rows > 0 || quarantined_rows > 0,
        })
    })
}

fn read_source_info(conn: &mut SqliteConnection) -> Result<SourceInfo> {
    let attachment = state::attachment_state(conn)?;
    let operation = state::operation_state(conn)?;
    let recovering = operation.kind == "source_recovery";
    Ok(SourceInfo {
        current_source_id: attachment.current_source_id,
        binding: if attachment.binding_state == "attached" {
            Binding::Attached {
                user_id: attachment.attached_user_id,
            }
        } else {
            Binding::Anonymous
        },
        schema: attachment.schema_name,
        last_bundle_seq_seen: attachment.last_bundle_seq_seen,
        rebuild_required: attachment.rebuild_required != 0,
        source_recovery_required: recovering,
        source_recovery_reason: (recovering && !operation.reason.is_empty())
            .then_some(operation.reason),
        replacement_source_id: (!operation.replacement_source_id.is_empty())
            .then_some(operation.replacement_source_id),
    })
}

/// [`Oversync::sync_status`] on any connection to the database (see
/// [`read_pending_sync_status`]).
pub(crate) fn read_sync_status(conn: &mut SqliteConnection) -> Result<SyncStatus> {
    conn.transaction(|conn| {
        let info = read_source_info(conn)?;
        let pending_rows = state::pending_row_count(conn)?;
        let outbox = state::outbox_bundle(conn)?;
        Ok(SyncStatus {
            binding: info.binding,
            pending_rows,
            push_in_flight: outbox.state != "none",
            last_bundle_seq_seen: info.last_bundle_seq_seen,
            source_recovery_required: info.source_recovery_required,
        })
    })
}

/// Where this install stands with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// Anonymous or attached.
    pub binding: Binding,
    /// Rows waiting to reach the server.
    pub pending_rows: u64,
    /// A frozen push is in flight (`prepared` or `committed_remote`).
    pub push_in_flight: bool,
    /// Last bundle applied locally.
    pub last_bundle_seq_seen: i64,
    /// `rebuild()` is required before syncing on.
    pub source_recovery_required: bool,
}

impl Oversync<'_> {
    /// The install's sync state in one read.
    pub fn sync_status(&mut self) -> Result<SyncStatus> {
        self.ensure_open()?;
        read_sync_status(self.conn)
    }

    /// The last bundle applied locally (the pull checkpoint).
    pub fn last_bundle_seq_seen(&mut self) -> Result<i64> {
        self.ensure_open()?;
        Ok(state::attachment_state(self.conn)?.last_bundle_seq_seen)
    }
}
