//! Events an app can observe: `conn.subscribe()` returns a receiver.

use std::time::Duration;

/// Which long operation a [`SyncEvent::Progress`] reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Uploading frozen local changes.
    Push,
    /// Fetching and replaying the committed bundle after a push.
    Replay,
    /// Pulling and applying bundles from other devices.
    Pull,
    /// Downloading and applying a snapshot.
    Rebuild,
}

/// Something happened during sync.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// Rows done of total (total unknown for pulls until the end).
    Progress {
        /// The operation.
        phase: Phase,
        /// Rows done so far.
        done: u64,
        /// Rows in all, when known.
        total: Option<u64>,
    },
    /// A push conflict was resolved.
    ConflictResolved {
        /// Table of the conflicting row.
        table: String,
        /// Key of the conflicting row (UUID).
        key: String,
        /// `"accept_server"`, `"keep_local"` or `"merged"`.
        resolution: &'static str,
    },
    /// The push is retried after resolving a conflict, or attach must be retried later.
    RetryScheduled {
        /// Attempt number that follows.
        attempt: u32,
        /// Suggested delay before it (zero for immediate retries).
        delay: Duration,
        /// Why.
        reason: String,
    },
    /// The server refused the credentials even after a token refresh: sign in again.
    AuthRequired,
    /// The server has new bundles but local changes wait: call `sync()` to push and pull.
    RemoteChanges,
    /// The server refused a local change for its data (a constraint, a column type, a size
    /// limit, a missing parent): the change was moved to quarantine and the rest of the
    /// push went on. See `Oversync::quarantined_rows`.
    Quarantined {
        /// Table of the refused row.
        table: String,
        /// Key of the refused row (UUID).
        key: String,
        /// The server's status, error code and message.
        error: String,
    },
    /// The local part of a pull or a rebuild: how long validating and writing the server's
    /// rows into SQLite took (network waits and response decoding excluded), at its end.
    Applied {
        /// [`Phase::Pull`] or [`Phase::Rebuild`].
        phase: Phase,
        /// Rows written.
        rows: u64,
        /// Time spent.
        elapsed: Duration,
    },
    /// Server data changed these tables locally: refresh views showing them.
    TablesChanged {
        /// Table names.
        tables: Vec<String>,
    },
}
