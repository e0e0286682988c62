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

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
    use std::sync::{Arc, Mutex};

    /// Status reads run every few milliseconds beside a sync: their statements are prepared
    /// once per connection and reused from its statement cache, not parsed and planned again
    /// on each read.
    #[test]
    fn status_reads_reuse_their_prepared_statements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.db");
        let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.batch_execute(
            "CREATE TABLE _sync_dirty_rows (dirty_ordinal INTEGER PRIMARY KEY, key_json TEXT);
             CREATE TABLE _sync_outbox_bundle (singleton_key INTEGER PRIMARY KEY, state TEXT NOT NULL, row_count INTEGER NOT NULL);
             CREATE TABLE _sync_quarantine (quarantine_id INTEGER PRIMARY KEY, key_json TEXT);
             INSERT INTO _sync_dirty_rows(key_json) VALUES ('a'), ('b'), ('c');
             INSERT INTO _sync_outbox_bundle VALUES (1, 'prepared', 5);
             INSERT INTO _sync_quarantine(key_json) VALUES ('d');",
        )
        .unwrap();
        let cached = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = cached.clone();
        let instrumentation: Box<dyn Instrumentation> =
            Box::new(move |event: InstrumentationEvent<'_>| {
                if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                    seen.lock().unwrap().push(sql.to_string());
                }
            });
        conn.set_instrumentation(instrumentation);

        let first = read_pending_sync_status(&mut conn).unwrap();
        assert_eq!(
            first,
            PendingSyncStatus {
                pending_rows: 8,
                quarantined_rows: 1,
                blocked_detach: true
            }
        );
        let prepared = std::mem::take(&mut *cached.lock().unwrap());
        for table in [
            "_sync_dirty_rows",
            "_sync_outbox_bundle",
            "_sync_quarantine",
        ] {
            assert!(
                prepared.iter().any(|sql| sql.contains(table)),
                "no cached statement reads {table}: {prepared:?}"
            );
        }

        conn.batch_execute(
            "DELETE FROM _sync_dirty_rows WHERE key_json = 'b';
             UPDATE _sync_outbox_bundle SET state = 'none', row_count = 0;",
        )
        .unwrap();
        let second = read_pending_sync_status(&mut conn).unwrap();
        assert_eq!(second.pending_rows, 2);
        assert_eq!(second.quarantined_rows, 1);
        let again = cached.lock().unwrap().clone();
        assert!(again.is_empty(), "prepared again: {again:?}");
    }
}
