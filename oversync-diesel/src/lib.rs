//! Offline-first sync between a Diesel/SQLite app and a PostgreSQL server, speaking the
//! oversync protocol (wire-compatible with the reference server, go-oversync).
//!
//! Three steps: annotate the Diesel models, generate and run the sync migrations, wrap the
//! connection and sync.
//!
//! ```no_run
//! use diesel::prelude::*;
//! use oversync_diesel::transport::{AuthError, Transport, token_fn};
//! use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
//!
//! diesel::table! { notes (id) { id -> Text, title -> Text, body -> Nullable<Text> } }
//!
//! // 1. Annotate the model: the UUID key is marked `#[sync(key)]`.
//! #[derive(Queryable, Insertable, SyncTable)]
//! #[diesel(table_name = notes)]
//! struct Note {
//!     #[sync(key)]
//!     id: String,
//!     title: String,
//!     body: Option<String>,
//! }
//!
//! async fn app() -> Result<(), Box<dyn std::error::Error>> {
//!     // 2. Generate the sync migrations next to the app's own (a tiny bin or a test does this),
//!     //    then apply them with `diesel migration run` or `embed_migrations!`.
//!     oversync_diesel::migrations::write_sync_migrations(std::path::Path::new("migrations"), &[Note::SPEC])?;
//!
//!     // 3. Wrap the connection, open on every launch, attach the signed-in user, sync.
//!     let config = OversyncConfig::new("business").table::<Note>();
//!     let mut conn = OversyncConnection::establish("app.db", config)?;
//!     conn.oversync().open()?;
//!     conn.set_transport(Transport::new(
//!         "https://sync.example.com",
//!         // Called per request; `refresh` is true after a 401 (sign in again then).
//!         token_fn(|_refresh| async { Ok::<_, AuthError>("<the user's token>".to_string()) }),
//!     )?);
//!     // attach needs the network: offline it fails with a retryable error (`e.is_retryable()`)
//!     // and changes nothing; a device attached once syncs without attaching again.
//!     if let Err(e) = conn.oversync().attach("user-123").await {
//!         if !e.is_retryable() {
//!             return Err(e.into());
//!         }
//!     }
//!
//!     diesel::insert_into(notes::table)
//!         .values(&Note { id: uuid::Uuid::new_v4().to_string(), title: "offline".into(), body: None })
//!         .execute(&mut *conn)?; // captured, works offline
//!     conn.oversync().sync().await?; // push, then pull
//!     Ok(())
//! }
//! ```
//!
//! Where each concern lives: [`SyncTable`] (the derive's output), [`migrations`],
//! [`OversyncConnection`] (the wrapped connection, transport, resolver, events),
//! [`Oversync`] (the lifecycle: open, attach, push, pull, rebuild, detach, statuses),
//! [`transport`] (HTTP, auth, retry), conflict resolution ([`ConflictResolver`]).
//!
//! In an async app (a UI, request handlers, background tasks on one runtime), move the
//! connection behind a [`SyncClient`]: an owned, cloneable handle whose engine runs on its
//! own thread, so no SQLite work or busy wait ever runs on the app's runtime, and whose
//! status reads never wait for a running sync. Configure every other connection the app
//! opens to the database with [`configure_connection`].

#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

extern crate self as oversync_diesel;

mod app_connection;
mod apply;
mod bundle_check;
mod capture;
mod client;
mod codec;
mod config;
mod conflict;
mod connection;
mod error;
mod events;
mod handle;
mod lifecycle;
mod metadata;
pub mod migrations;
mod order;
mod pull;
mod push;
mod quarantine;
pub mod server_schema;
mod snapshot;
mod state;
mod statement;
mod status;
mod table;
mod temporal;
pub mod transport;
pub mod types;
mod validate;
mod watch;

#[cfg(feature = "r2d2")]
pub use app_connection::AppConnectionCustomizer;
pub use app_connection::{BUSY_TIMEOUT_MS, configure_connection, establish_app_connection};
pub use capture::PendingChange;
pub use client::SyncClient;
pub use config::OversyncConfig;
pub use conflict::{ClientWins, Conflict, ConflictResolver, Resolution, ServerWins};
pub use connection::OversyncConnection;
pub use error::{ConfigError, Error, Result, SchemaError};
pub use events::{Phase, SyncEvent};
pub use handle::Oversync;
pub use lifecycle::{
    AttachOptions, AttachOutcome, AttachReport, OpenReport, ReplacedLocalRow, SyncReport,
    SyncThenDetachReport,
};
pub use oversync_derive::SyncTable;
/// The wire types of the protocol (request and response bodies, error codes).
pub use oversync_protocol as protocol;
pub use pull::PullOutcome;
pub use push::PushOutcome;
pub use quarantine::QuarantinedRow;
pub use snapshot::RebuildReport;
pub use status::{Binding, PendingSyncStatus, SourceInfo, SyncStatus};
pub use table::{ColumnSpec, KeyKind, SyncTable, TableSpec, TriggerSpec, ValueKind};
pub use transport::{
    StaticToken, TokenProvider, Transport, TransportConfig, TransportError, token_fn,
};
pub use watch::{WatchHandle, WatchOptions};
