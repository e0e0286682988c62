//! Offline-first sync between a Diesel/SQLite app and a PostgreSQL server, speaking the
//! oversync protocol.
//!
//! 1. Annotate Diesel models with `#[derive(SyncTable)]` (see [`SyncTable`]).
//! 2. Generate the sync migrations ([`migrations::write_sync_migrations`]) and run them
//!    with `diesel migration run` or `embed_migrations!`.
//! 3. Wrap the connection in an [`OversyncConnection`] and call `conn.oversync().open()`
//!    on every launch; every local write to a synced table is captured from then on.

extern crate self as oversync_diesel;

mod apply;
mod codec;
mod config;
mod conflict;
mod connection;
mod error;
mod events;
mod handle;
mod lifecycle;
pub mod migrations;
mod pull;
mod push;
mod snapshot;
mod state;
mod status;
mod table;
pub mod transport;
mod validate;
mod watch;

pub use config::OversyncConfig;
pub use conflict::{ClientWins, Conflict, ConflictResolver, Resolution, ServerWins};
pub use connection::OversyncConnection;
pub use error::{ConfigError, Error, Result, SchemaError};
pub use events::{Phase, SyncEvent};
pub use handle::Oversync;
pub use lifecycle::{AttachOutcome, OpenReport, SyncReport, SyncThenDetachReport};
pub use oversync_derive::SyncTable;
pub use pull::PullOutcome;
pub use push::PushOutcome;
pub use snapshot::RebuildReport;
pub use status::{Binding, PendingSyncStatus, SourceInfo, SyncStatus};
pub use table::{ColumnSpec, KeyKind, SyncTable, TableSpec, TriggerSpec};
pub use transport::{
    StaticToken, TokenProvider, Transport, TransportConfig, TransportError, token_fn,
};
pub use watch::{WatchHandle, WatchOptions};
