//! App connections that work beside the sync engine: the pragmas every connection to a
//! synced database needs.
//!
//! The engine writes in transactions of its own (freezing the outbox, replaying a bundle,
//! applying a pull page or a snapshot). A connection opened with plain
//! `SqliteConnection::establish` has no busy timeout, so any write of the app that meets one
//! of those transactions fails at once with `database is locked`; one without foreign keys
//! skips the cascades the capture triggers must see.

use crate::error::Result;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};

/// How long a connection configured here waits for another connection's write lock before
/// failing with `database is locked`. The engine's longest write transaction (a large
/// snapshot swap) stays well below it.
pub const BUSY_TIMEOUT_MS: u32 = 30_000;

/// Configures any connection to a synced database: foreign keys on (cascades fire, so they
/// are captured), WAL journaling (readers never wait for a writer; the engine's status reads
/// rely on it), a busy timeout of [`BUSY_TIMEOUT_MS`] (a write waits for the engine's
/// transaction instead of failing), `synchronous = NORMAL` (durable in WAL mode) and
/// in-memory temporary files (every write to a synced table fires triggers, which makes
/// SQLite keep a statement journal; a file-backed one costs page writes per row).
///
/// Run it on every connection the app opens to the database (UI, request handlers, pool
/// members). With Diesel's r2d2 pool, use [`AppConnectionCustomizer`] (feature `r2d2`).
/// Inside the app's own transactions, prefer `immediate_transaction` for one that reads and
/// then writes: a deferred one that upgrades to a write after another connection committed
/// fails with `database is locked` without waiting (SQLite cannot wait it out safely).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::{Connection, SqliteConnection};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("app.db");
/// let mut ui = SqliteConnection::establish(path.to_str().unwrap())?;
/// oversync_diesel::configure_connection(&mut ui)?;
/// # Ok(()) }
/// ```
pub fn configure_connection(conn: &mut SqliteConnection) -> Result<()> {
    Ok(set_pragmas(conn)?)
}

fn set_pragmas(conn: &mut SqliteConnection) -> diesel::QueryResult<()> {
    // The busy timeout first: switching to WAL needs a lock another connection may hold.
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
    ))
}

/// A Diesel r2d2 connection customizer running [`configure_connection`] on every connection
/// the pool opens, so pool members wait for the engine's transactions instead of failing with
/// `database is locked` (feature `r2d2`, off by default).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::SqliteConnection;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// # let path = path.to_str().unwrap();
/// let pool = Pool::builder()
///     .max_size(4)
///     .connection_customizer(Box::new(oversync_diesel::AppConnectionCustomizer))
///     .build(ConnectionManager::<SqliteConnection>::new(path))?;
/// let mut ui = pool.get()?; // WAL, busy timeout, foreign keys
/// # let _ = &mut ui;
/// # Ok(()) }
/// ```
#[cfg(feature = "r2d2")]
#[derive(Debug, Clone, Copy, Default)]
pub struct AppConnectionCustomizer;

#[cfg(feature = "r2d2")]
impl diesel::r2d2::CustomizeConnection<SqliteConnection, diesel::r2d2::Error>
    for AppConnectionCustomizer
{
    fn on_acquire(
        &self,
        conn: &mut SqliteConnection,
    ) -> std::result::Result<(), diesel::r2d2::Error> {
        set_pragmas(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Opens a connection to `database_url` configured by [`configure_connection`].
pub fn establish_app_connection(database_url: &str) -> Result<SqliteConnection> {
    let mut conn = SqliteConnection::establish(database_url)?;
    configure_connection(&mut conn)?;
    Ok(conn)
}

/// A read-only connection for status reads beside a running sync: in WAL mode it reads the
/// last committed state without waiting for the engine's write transaction.
pub(crate) fn establish_read_only(database_url: &str) -> Result<SqliteConnection> {
    let mut conn = SqliteConnection::establish(database_url)?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA query_only = ON;"
    ))?;
    Ok(conn)
}
