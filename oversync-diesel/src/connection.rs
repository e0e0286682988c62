//! `OversyncConnection`: a Diesel `SqliteConnection` with a sync engine attached.

use crate::config::OversyncConfig;
use crate::conflict::{ConflictResolver, ServerWins};
use crate::error::Result;
use crate::events::SyncEvent;
use crate::transport::Transport;
use diesel::{Connection, SqliteConnection};
use oversync_protocol::BundleCapabilitiesLimits;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use tokio::sync::broadcast;

/// A Diesel [`SqliteConnection`] plus the oversync sync lifecycle.
///
/// It derefs to the `SqliteConnection`, so ordinary Diesel code keeps working (pass
/// `&mut *conn` where Diesel wants `&mut SqliteConnection`); [`oversync`](Self::oversync)
/// gives the sync handle.
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use oversync_diesel::{OversyncConfig, OversyncConnection, SyncTable};
///
/// diesel::table! { notes (id) { id -> Text, title -> Text } }
///
/// #[derive(SyncTable, Insertable)]
/// #[diesel(table_name = notes)]
/// struct Note {
///     #[sync(key)]
///     id: String,
///     title: String,
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("app.db");
/// let config = OversyncConfig::new("business").table::<Note>();
/// let mut conn = OversyncConnection::establish(path.to_str().unwrap(), config)?;
///
/// // The app's own migrations, then the sync migrations (usually `diesel migration run`).
/// conn.batch_execute("CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL)")?;
/// oversync_diesel::migrations::run_sync_migrations(&mut conn)?;
///
/// conn.oversync().open()?;
/// diesel::insert_into(notes::table)
///     .values(&Note { id: "0b7e4a52-3c1f-4a7e-9a35-8c0f7f3c2d11".into(), title: "hi".into() })
///     .execute(&mut *conn)?;
/// assert_eq!(conn.oversync().pending_sync_status()?.pending_rows, 1);
/// # Ok(()) }
/// ```
pub struct OversyncConnection {
    conn: SqliteConnection,
    config: OversyncConfig,
    runtime: Runtime,
    database_url: Option<String>,
}

/// Per-connection sync machinery that is not stored in the database.
pub(crate) struct Runtime {
    pub opened: bool,
    pub transport: Option<Transport>,
    pub resolver: Arc<dyn ConflictResolver>,
    pub events: broadcast::Sender<SyncEvent>,
    pub limits: Option<BundleCapabilitiesLimits>,
    /// Whether this runtime has checked the server's protocol version (reset with the
    /// transport): push and pull check it once before their first request.
    pub capabilities_checked: bool,
    pub uuid_refs: crate::codec::UuidRefs,
    /// Row order of push bundles, from the foreign keys `open()` read.
    pub push_order: crate::order::PushOrder,
}

impl OversyncConnection {
    /// Opens (or creates) the SQLite database at `database_url` and prepares it for sync.
    pub fn establish(database_url: &str, config: OversyncConfig) -> Result<Self> {
        let conn = SqliteConnection::establish(database_url)?;
        let mut this = Self::new(conn, config)?;
        this.database_url = Some(database_url.to_string());
        Ok(this)
    }

    /// Wraps an existing connection, configured as
    /// [`configure_connection`](crate::configure_connection) does (foreign keys, WAL, a busy
    /// timeout, in-memory temporary files).
    pub fn new(mut conn: SqliteConnection, config: OversyncConfig) -> Result<Self> {
        config.validate()?;
        crate::app_connection::configure_connection(&mut conn)?;
        Ok(OversyncConnection {
            conn,
            config,
            runtime: Runtime {
                opened: false,
                transport: None,
                resolver: Arc::new(ServerWins),
                events: broadcast::channel(1024).0,
                limits: None,
                capabilities_checked: false,
                uuid_refs: Default::default(),
                push_order: Default::default(),
            },
            database_url: None,
        })
    }

    /// The sync handle: lifecycle, status and (with a transport) push and pull.
    pub fn oversync(&mut self) -> crate::Oversync<'_> {
        crate::Oversync {
            conn: &mut self.conn,
            config: &self.config,
            rt: &mut self.runtime,
        }
    }

    /// Sets the server to sync with (base URL and the app's token provider).
    pub fn set_transport(&mut self, transport: Transport) {
        let events = self.runtime.events.clone();
        transport.on_retry(move |notice| {
            let _ = events.send(SyncEvent::RetryScheduled {
                attempt: notice.retry + 1,
                delay: notice.delay,
                reason: format!("{}: {}", notice.endpoint, notice.error),
            });
        });
        self.runtime.transport = Some(transport);
        self.runtime.limits = None;
        self.runtime.capabilities_checked = false;
    }

    /// Builder form of [`set_transport`](Self::set_transport).
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.set_transport(transport);
        self
    }

    /// Sets how push conflicts are resolved (default: [`ServerWins`]).
    pub fn set_conflict_resolver(&mut self, resolver: impl ConflictResolver) {
        self.runtime.resolver = Arc::new(resolver);
    }

    /// Subscribes to [`SyncEvent`]s (progress, conflicts, retries, auth, changed tables).
    /// A receiver that falls more than 1024 events behind skips the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.runtime.events.subscribe()
    }

    /// The configuration this connection syncs with.
    pub fn config(&self) -> &OversyncConfig {
        &self.config
    }

    /// The database URL given to [`establish`](Self::establish).
    pub fn database_url(&self) -> Option<String> {
        self.database_url.clone()
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A second connection to the same file sharing transport, resolver and event channel.
    pub(crate) fn sibling(&self, url: &str) -> Result<OversyncConnection> {
        let mut other = Self::establish(url, self.config.clone())?;
        other.runtime.transport = self.runtime.transport.clone();
        other.runtime.resolver = self.runtime.resolver.clone();
        other.runtime.events = self.runtime.events.clone();
        other.runtime.limits = self.runtime.limits.clone();
        other.runtime.capabilities_checked = self.runtime.capabilities_checked;
        Ok(other)
    }

    /// Unwraps the Diesel connection.
    pub fn into_inner(self) -> SqliteConnection {
        self.conn
    }
}

impl std::fmt::Debug for OversyncConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OversyncConnection")
            .field("database_url", &self.database_url)
            .field("schema", &self.config.schema())
            .field("opened", &self.runtime.opened)
            .field("has_transport", &self.runtime.transport.is_some())
            .finish_non_exhaustive()
    }
}

impl Deref for OversyncConnection {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for OversyncConnection {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}
