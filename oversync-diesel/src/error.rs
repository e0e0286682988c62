//! Errors a caller can match on.

use crate::table::KeyKind;
use std::sync::Arc;

/// Everything an oversync operation can fail with.
///
/// `Clone` (sources that are not, such as Diesel's errors, are shared through an `Arc`), so
/// one result can be fanned out to several tasks. [`is_retryable`](Self::is_retryable) tells
/// a failure worth retrying later from one that needs the app or the user.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database does not match the registered models or the sync migrations; nothing was changed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The [`OversyncConfig`](crate::OversyncConfig) is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The operation would discard local changes that have not reached the server.
    #[error("blocked: unsynced data ({pending_rows} pending rows); sync first")]
    UnsyncedData {
        /// Rows waiting in `_sync_dirty_rows` and the outbox.
        pending_rows: u64,
    },
    /// No [`Transport`](crate::transport::Transport) is set on the connection.
    #[error("no sync server configured: call OversyncConnection::set_transport first")]
    NoTransport,
    /// The operation needs an attached user: call `attach(user_id)` first.
    #[error("no user is attached: call conn.oversync().attach(user_id) first")]
    NotAttached,
    /// Another user is attached; detach first.
    #[error(
        "user {attached_user:?} is attached to this database: detach before attaching {requested_user:?}"
    )]
    AttachedToAnotherUser {
        /// The user attached now.
        attached_user: String,
        /// The user asked for.
        requested_user: String,
    },
    /// The server speaks a protocol version this client does not.
    #[error("the server speaks protocol {version:?}; this client speaks v1")]
    UnsupportedProtocol {
        /// What the server reported.
        version: String,
    },
    /// The server does not serve every table of the [`OversyncConfig`](crate::OversyncConfig)
    /// (its capabilities' `registered_tables`): found before `connect`, so no initialization
    /// lease was taken and nothing local changed. Register the tables on the server (its
    /// migrations, `[sync] tables`) or remove them from the config.
    #[error(
        "the server does not serve {missing:?} of schema {schema:?} (it serves {served:?}): \
         register them on the server or remove them from OversyncConfig"
    )]
    TablesNotRegistered {
        /// The configured schema.
        schema: String,
        /// Configured tables the server does not serve, as `schema.table`.
        missing: Vec<String>,
        /// Every `schema.table` the server reported.
        served: Vec<String>,
    },
    /// The server refused this device's seed push (its first push to the account, carrying
    /// the initialization lease `attach` answered `SeededFromLocal` with) for a reason no row
    /// can be set aside for (rows the server refuses are quarantined instead, and the rest
    /// seeds the account). Nothing local is lost: the rows stay pending. Other devices of the
    /// account get `AttachOutcome::RetryLater` until the lease ends: at once on a server that
    /// gives the lease up after a refused seed push (ours does), else within
    /// `others_can_attach_within` (the server's lease lifetime, when it reports one).
    #[error(
        "the server refused this device's seed push of the account ({error}); other devices of the account can attach {}",
        attach_hint(.others_can_attach_within)
    )]
    SeedPushRejected {
        /// The server's answer (boxed: it is large, and rare).
        error: Box<crate::transport::TransportError>,
        /// The latest moment other devices can attach, from now: the server's
        /// `initialization_lease_ttl_seconds`, as every seed request renews the lease.
        others_can_attach_within: Option<std::time::Duration>,
    },
    /// Another device of the account is initializing it (uploading its own local rows), so
    /// this device's rows wait: the lease this device's seed push carried was gone (expired
    /// while offline, or given up by the server after a refused seed push) and another device
    /// holds the new one. Sync again after `retry_after`; local rows are kept.
    #[error("another device is initializing this account: sync again in {} s", .retry_after.as_secs())]
    AccountInitializing {
        /// When to try again (the other device's lease end, as the server suggests).
        retry_after: std::time::Duration,
    },
    /// The server (or the network) failed; local intent is kept and the call can be retried.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A server response broke the protocol; nothing was applied and no checkpoint moved.
    #[error("invalid server response: {0}")]
    InvalidResponse(String),
    /// The source's bundle stream broke; `rebuild()` must rotate to a new source. Local
    /// intent is kept for replay under the new source.
    #[error("source recovery required ({reason}): call rebuild()")]
    SourceRecoveryRequired {
        /// The server's error code that started recovery.
        reason: String,
    },
    /// The server is behind history this database has already seen: its stable ceiling (or
    /// its snapshot) ends at `stable`, below `checkpoint`. The server was restored from a
    /// backup or reset, so pulling on would leave this database diverged without notice.
    /// When `checkpoint` is the local pull checkpoint, the install is marked rebuild-required:
    /// `rebuild()` (or the next `sync()`/`attach()`) replaces the synced tables with the
    /// server's state, keeping local changes not yet pushed.
    #[error(
        "the server's history ends at bundle {stable}, behind bundle {checkpoint} this database has already seen (server restored or reset?): call rebuild() to take the server's state; local changes not yet pushed are kept"
    )]
    ServerBehindCheckpoint {
        /// The newest bundle the server offers now (its stable ceiling or snapshot bundle).
        stable: i64,
        /// The bundle this database knows the server had reached: its pull checkpoint, a
        /// ceiling the server announced earlier, or this device's own committed bundle.
        checkpoint: i64,
    },
    /// The server named a replacement source for this install that differs from the one
    /// already reserved durably; rotating to either could fork the source stream, so
    /// nothing changed. Local intent is kept.
    #[error(
        "source replacement diverged: {reserved:?} is reserved locally, but the server names {named:?}"
    )]
    SourceReplacementDiverged {
        /// The replacement reserved in `_sync_operation_state`.
        reserved: String,
        /// The replacement the server named.
        named: String,
    },
    /// A replacement source id cannot be used for a rotation: it is the current source, it
    /// has already sent bundles, or it was itself replaced. Nothing changed.
    #[error("replacement source {replacement:?} is not fresh: {why}")]
    ReplacementSourceNotFresh {
        /// The refused replacement id.
        replacement: String,
        /// What makes it unusable.
        why: String,
    },
    /// The persisted source-recovery reason is not one this client knows, so no rotation
    /// request can be built from it (it is never silently remapped).
    #[error("unknown source-recovery reason {reason:?} in _sync_operation_state")]
    InvalidRecoveryReason {
        /// The reason found.
        reason: String,
    },
    /// A conflict resolver returned a merge the engine cannot push; local intent is kept.
    #[error("invalid conflict resolution: {0}")]
    InvalidResolution(String),
    /// The push kept conflicting after the automatic retries; local intent is kept.
    #[error(
        "push still conflicts on {table} {key} after {retries} retries; local changes are kept"
    )]
    ConflictRetriesExhausted {
        /// Table of the last conflicting row.
        table: String,
        /// Its key.
        key: String,
        /// Retries made.
        retries: u32,
    },
    /// No quarantine entry has this id (it was retried, discarded, or superseded by an
    /// accepted change of the same row).
    #[error("no quarantined row has id {id}")]
    QuarantineEntryNotFound {
        /// The id asked for.
        id: i64,
    },
    /// `detach()` would throw away local changes the server refused: retry or discard them
    /// first (`Oversync::quarantined_rows`).
    #[error(
        "blocked: {rows} quarantined rows the server refused; retry or discard them before detaching"
    )]
    QuarantinedRows {
        /// Rows in quarantine.
        rows: u64,
    },
    /// Watch wake-ups cannot run here.
    #[error("watch unavailable: {0}")]
    WatchUnsupported(String),
    /// `open()` has not run on this connection yet.
    #[error("oversync is not open on this connection: call conn.oversync().open() first")]
    NotOpen,
    /// Local sync state breaks an invariant the runtime relies on (for example a hand-edited row).
    #[error("local sync state is invalid: {0}")]
    InvalidState(String),
    /// Opening the SQLite database failed.
    #[error("cannot open the database: {0}")]
    Connection(Arc<diesel::ConnectionError>),
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Database(Arc<diesel::result::Error>),
    /// Generated sync migrations on disk do not match the models: regenerate them.
    #[error("sync migrations in {} are stale for {}: run oversync_diesel::migrations::write_sync_migrations and commit the result", dir.display(), tables.join(", "))]
    StaleMigrations {
        /// The migrations directory checked.
        dir: std::path::PathBuf,
        /// Tables (or the metadata migration) whose files are missing or out of date.
        tables: Vec<String>,
    },
    /// Writing or reading migration files failed.
    #[error("migration files at {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// The underlying error.
        source: Arc<std::io::Error>,
    },
    /// The [`SyncClient`](crate::SyncClient)'s engine thread is not running: `shutdown()`
    /// was called, every handle was dropped, or it could not start. Nothing was done.
    #[error("the sync engine is not running: {0}")]
    EngineStopped(String),
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Database(Arc::new(e))
    }
}

impl From<diesel::ConnectionError> for Error {
    fn from(e: diesel::ConnectionError) -> Self {
        Error::Connection(Arc::new(e))
    }
}

impl Error {
    /// Whether the same call may succeed later without anything changing locally: the
    /// network or the server failed (a connection error, a timeout, a `5xx`), or SQLite was
    /// busy (another connection held the write lock past the busy timeout). Local intent is
    /// kept in every case, so retrying (or simply the next `sync()`) loses nothing.
    ///
    /// `false` for what fails closed and needs the app, the user or a developer: a protocol
    /// or contract mismatch, a broken server response, a schema or config error, a missing
    /// attach or transport, refused credentials, a conflict resolver's invalid answer.
    /// Source recovery and a server behind the checkpoint are `false` too: they need
    /// `rebuild()` (which the next `sync()` runs where it can), not a plain retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(e) => e.is_retryable(),
            Error::Database(e) => is_busy(e),
            Error::AccountInitializing { .. } => true,
            _ => false,
        }
    }
}

/// When other devices can attach after a refused seed push ([`Error::SeedPushRejected`]).
fn attach_hint(within: &Option<std::time::Duration>) -> String {
    let released = "at once if the server gives refused leases up (oversync-server does)";
    match within {
        Some(d) => format!(
            "{released}, else within {} s (the server's initialization lease lifetime)",
            d.as_secs()
        ),
        None => format!("{released}, else when the server's initialization lease ends"),
    }
}

/// SQLite's `SQLITE_BUSY`/`SQLITE_LOCKED`, which Diesel reports as an unclassified error
/// whose message names the lock.
fn is_busy(e: &diesel::result::Error) -> bool {
    match e {
        diesel::result::Error::DatabaseError(_, info) => {
            let message = info.message();
            message.contains("database is locked") || message.contains("database table is locked")
        }
        _ => false,
    }
}

/// A mismatch between the database and what the registered [`SyncTable`](crate::SyncTable)s
/// and the sync migrations require. Each names the table (and column) to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The `_sync_*` metadata tables are missing.
    #[error(
        "oversync metadata table {table} is missing: run the sync migrations (oversync_diesel::migrations)"
    )]
    MetadataMissing {
        /// The missing metadata table.
        table: String,
    },
    /// A registered table does not exist.
    #[error("synced table {table} does not exist")]
    TableMissing {
        /// The table.
        table: String,
    },
    /// The model has a column the table lacks.
    #[error("table {table} has no column {column}, but its SyncTable model does")]
    ColumnMissing {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// The table has a column the model does not list; it would be missing from every payload.
    #[error(
        "table {table} has column {column}, which its SyncTable model does not list; add a field for it"
    )]
    UnexpectedColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// The key column is not the table's single-column primary key.
    #[error("key column {table}.{column} must be the table's PRIMARY KEY, alone")]
    KeyNotPrimaryKey {
        /// The table.
        table: String,
        /// The key column.
        column: String,
    },
    /// The key column allows NULL.
    #[error("key column {table}.{column} must be declared NOT NULL")]
    KeyNullable {
        /// The table.
        table: String,
        /// The key column.
        column: String,
    },
    /// The key column's declared type does not match the model's key kind.
    #[error("key column {table}.{column} is declared {declared:?} but the model stores a {expected:?} UUID: declare it {}", if *expected == KeyKind::Blob { "BLOB" } else { "TEXT" })]
    KeyType {
        /// The table.
        table: String,
        /// The key column.
        column: String,
        /// The declared SQLite type.
        declared: String,
        /// What the model expects.
        expected: KeyKind,
    },
    /// A column's BLOB-ness differs between the table and the model.
    #[error("column {table}.{column} is declared {declared:?} but the model field {}: use a byte type (Vec<u8>) or #[sync(blob)] exactly for BLOB columns", if *model_is_blob { "is a byte type" } else { "is not a byte type" })]
    BlobMismatch {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The declared SQLite type.
        declared: String,
        /// Whether the model treats it as a BLOB.
        model_is_blob: bool,
    },
    /// A foreign key leads out of the set of synced tables.
    #[error(
        "{table}.{column} references {references}, which is not a synced table: register it too (the synced set must be closed under foreign keys)"
    )]
    ForeignKeyOutsideManagedSet {
        /// The referencing table.
        table: String,
        /// The referencing column.
        column: String,
        /// The referenced table.
        references: String,
    },
    /// The table's sync triggers are not installed.
    #[error("trigger {trigger} of table {table} is not installed: run the sync migrations")]
    TriggerMissing {
        /// The table.
        table: String,
        /// The missing trigger.
        trigger: String,
    },
    /// An installed trigger differs from what the model generates.
    #[error(
        "trigger {trigger} of table {table} is stale: regenerate the sync migrations and run them"
    )]
    TriggerStale {
        /// The table.
        table: String,
        /// The stale trigger.
        trigger: String,
    },
    /// The table is not in `_sync_managed_tables`.
    #[error("table {table} is not registered in _sync_managed_tables: run the sync migrations")]
    NotRegistered {
        /// The table.
        table: String,
    },
    /// This database already syncs against another remote schema.
    #[error("this database syncs schema {stored:?}, but the config says {configured:?}")]
    SchemaNameMismatch {
        /// Schema recorded in the database.
        stored: String,
        /// Schema in the config.
        configured: String,
    },
}

/// An unusable [`OversyncConfig`](crate::OversyncConfig).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The remote schema name is empty.
    #[error("the remote schema name must not be empty")]
    EmptySchema,
    /// No table was registered.
    #[error("no SyncTable is registered: add tables with OversyncConfig::table::<T>()")]
    NoTables,
    /// A table was registered twice.
    #[error("table {table} is registered twice")]
    DuplicateTable {
        /// The table.
        table: String,
    },
}

/// Shorthand for results of oversync operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TransportError;
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    fn server(status: u16, code: &str) -> Error {
        Error::Transport(TransportError::Server {
            request: "POST /sync/push-sessions".into(),
            status,
            code: code.into(),
            message: "m".into(),
            body: None,
        })
    }

    /// A real `database is locked` from SQLite: a second connection without a busy timeout
    /// writes while the first holds the write lock.
    fn locked_error() -> Error {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.db");
        let path = path.to_str().unwrap();
        let mut holder = SqliteConnection::establish(path).unwrap();
        holder
            .batch_execute("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let mut other = SqliteConnection::establish(path).unwrap();
        let e = other
            .batch_execute("INSERT INTO t VALUES (2)")
            .expect_err("the write lock is held");
        Error::from(e)
    }

    #[test]
    fn transient_failures_are_retryable() {
        let network = Error::Transport(TransportError::Network {
            message: "connection refused".into(),
            timed_out: false,
        });
        assert!(network.is_retryable());
        assert!(server(503, "").is_retryable());
        assert!(server(500, "internal_error").is_retryable());
        let locked = locked_error();
        assert!(
            locked.to_string().contains("database is locked"),
            "{locked}"
        );
        assert!(locked.is_retryable());
    }

    #[test]
    fn fail_closed_errors_are_not_retryable() {
        for e in [
            server(409, "push_conflict"),
            server(400, "push_chunk_invalid"),
            server(503, oversync_protocol::codes::BUNDLE_CHANGE_WATCH_DISABLED),
            Error::Transport(TransportError::Unauthorized {
                message: "no".into(),
            }),
            Error::UnsupportedProtocol {
                version: "v2".into(),
            },
            Error::InvalidResponse("gap".into()),
            Error::Schema(SchemaError::TableMissing { table: "t".into() }),
            Error::Config(ConfigError::NoTables),
            Error::SourceRecoveryRequired {
                reason: "source_retired".into(),
            },
            Error::ServerBehindCheckpoint {
                stable: 1,
                checkpoint: 2,
            },
            Error::NotAttached,
            Error::NoTransport,
            Error::InvalidResolution("bad".into()),
            Error::Database(Arc::new(diesel::result::Error::NotFound)),
            Error::EngineStopped("stopped".into()),
        ] {
            assert!(!e.is_retryable(), "{e:?} must not be retryable");
        }
    }

    #[test]
    fn errors_clone_with_their_message() {
        let e = locked_error();
        let copy = e.clone();
        assert_eq!(e.to_string(), copy.to_string());
        assert!(matches!(copy, Error::Database(_)));
        let io = Error::Io {
            path: "m".into(),
            source: Arc::new(std::io::Error::other("disk")),
        };
        assert_eq!(io.clone().to_string(), io.to_string());
    }
}
