//! PostgreSQL server for the oversync protocol, wire-compatible with the reference server
//! (go-oversync).
//!
//! * As a library: register business tables in a [`ServiceConfig`], start a
//!   [`SyncService`], and mount [`SyncService::sync_routes_with_auth`] with your own auth
//!   layer, which must insert an [`AuthenticatedUser`] request extension (without it `/sync/*`
//!   answers `401`), beside [`SyncService::public_routes`].
//! * Server-originated writes: [`SyncService::begin_server_write`].
//! * The example server (demo auth, business schema, test routes): [`demo`], and the
//!   `oversync-example-server` binary.
//! * The `oversync-server` binary serves any schema: configured by a TOML file
//!   ([`file_config`]), JWT auth ([`jwt`]), numbered business-schema migrations
//!   ([`migrate`]).
//!
//! ```no_run
//! use oversync_server::{AuthenticatedUser, ServiceConfig, SyncService, TableSpec};
//! use std::str::FromStr;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pg = tokio_postgres::Config::from_str("postgres://postgres@127.0.0.1/app")?;
//! let config = ServiceConfig::new("my-app", vec![TableSpec::new("business", "users", "id")]);
//! let service = SyncService::start(pg, config).await?;
//! let auth = axum::middleware::from_fn(
//!     |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
//!         // Replace with real authentication (answer 401 for a bad token).
//!         req.extensions_mut().insert(AuthenticatedUser("alice".into()));
//!         next.run(req).await
//!     },
//! );
//! let app = service.sync_routes_with_auth(auth).merge(service.public_routes());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod auth;
mod body;
pub mod bootstrap;
pub mod capture;
mod committed_bundles;
pub mod config;
mod connect;
pub mod demo;
mod drain;
pub mod error;
pub mod file_config;
pub mod jwt;
pub mod metrics;
pub mod migrate;
mod payload;
mod pull;
mod push_sessions;
pub mod retention;
mod scope;
pub mod service;
mod snapshots;
mod sql;
mod status;
pub mod tls;
mod watch;
pub mod writes;

pub use auth::{Actor, AuthenticatedUser};
pub use bootstrap::{BootstrapError, Registry, TableInfo};
pub use capture::CommittedBundle;
pub use config::{Limits, ServiceConfig, TableSpec, WatchConfig};
pub use drain::DrainOutcome;
pub use error::{RejectedRow, SyncError};
pub use service::SyncService;
pub use writes::ServerWrite;
