//! [`SyncClient`]: the owned, cloneable sync handle for async apps.
//!
//! The engine's SQLite work (freezing, replaying, applying pulls and snapshots, and SQLite's
//! busy waits) is synchronous. Run inline on an app's tokio workers it stalls every task
//! sharing them, so the client moves the [`OversyncConnection`] to a thread of its own that
//! runs a current-thread runtime: each call sends a job over a channel and awaits the reply.
//! Jobs run one at a time, in the order they were sent. Status reads go through a separate
//! read-only connection on the blocking pool: in WAL mode they read the last committed state
//! and never wait for a running sync.

use crate::app_connection::establish_read_only;
use crate::connection::OversyncConnection;
use crate::error::{Error, Result};
use crate::events::SyncEvent;
use crate::lifecycle::{AttachOutcome, SyncReport, SyncThenDetachReport};
use crate::pull::PullOutcome;
use crate::push::PushOutcome;
use crate::snapshot::RebuildReport;
use crate::status::{PendingSyncStatus, SyncStatus, read_pending_sync_status, read_sync_status};
use crate::watch::{WatchHandle, WatchOptions};
use diesel::SqliteConnection;
use diesel::prelude::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A future created and run on the engine thread (it borrows the connection, and need not
/// be `Send`).
type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One unit of work for the engine thread.
type Job = Box<dyn for<'a> FnOnce(&'a mut OversyncConnection) -> EngineFuture<'a, ()> + Send>;

/// Owned, cloneable sync handle (`Clone + Send + Sync`): keep one in app state, clone it into
/// a background task, a request handler or a UI command.
///
/// [`start`](Self::start) moves an [`OversyncConnection`] (with its transport and resolver
/// set) onto a dedicated engine thread and opens it there. Every call returns a `'static`,
/// `Send` future (it owns what it needs: `tokio::spawn(client.sync())` and
/// `let fut = client.sync();` for a `select!` work), which resolves when the engine has
/// done the work, without ever running SQLite on the calling runtime. Calls are queued and
/// run one after the other, in the order their futures were first polled.
///
/// **Cancellation.** Dropping a call's future (a `select!` branch that lost, a timeout, an
/// aborted task) cancels the work at its next await point, exactly as dropping the
/// borrowed [`Oversync`](crate::Oversync) future does: every transaction either committed
/// or did not, and the next call resumes from the durable state (a frozen outbox is pushed
/// again, a committed bundle is replayed). Nothing is lost.
///
/// **App writes** go through the app's own connections (a pool, a UI connection) configured
/// with [`configure_connection`](crate::configure_connection); the capture triggers record
/// them whichever connection writes.
///
/// ```no_run
/// # // no_run: needs a sync server; tests/example_app.rs runs the same shape for real.
/// use oversync_diesel::transport::{StaticToken, Transport};
/// use oversync_diesel::{OversyncConfig, OversyncConnection, SyncClient, SyncTable};
///
/// diesel::table! { notes (id) { id -> Text, title -> Text } }
/// #[derive(SyncTable)]
/// #[diesel(table_name = notes)]
/// struct Note {
///     #[sync(key)]
///     id: String,
///     title: String,
/// }
///
/// # async fn app() -> Result<(), Box<dyn std::error::Error>> {
/// let config = OversyncConfig::new("business").table::<Note>();
/// let conn = OversyncConnection::establish("app.db", config)?
///     .with_transport(Transport::new("https://sync.example.com", StaticToken("token".into()))?);
/// let client = SyncClient::start(conn).await?; // opens on the engine thread
///
/// // Offline launches are fine: a failed attach is retryable and sync() needs no re-attach.
/// if let Err(e) = client.attach("user-123").await {
///     assert!(e.is_retryable(), "{e}");
/// }
///
/// // A background task syncs; the future is 'static, so it can be spawned or raced.
/// let task = tokio::spawn(client.sync());
///
/// // Meanwhile a status badge reads without waiting for the sync.
/// let pending = client.pending_sync_status().await?.pending_rows;
/// println!("{pending} rows to upload");
///
/// let _ = task.await?;
/// client.shutdown().await; // cancels what runs, joins the engine thread
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SyncClient {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::UnboundedSender<Job>,
    events: broadcast::Sender<SyncEvent>,
    /// Read-only connection for status reads; `None` for a database without a file (then
    /// status reads are engine jobs).
    status: Option<Arc<Mutex<SqliteConnection>>>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    database_file: Option<String>,
    schema: String,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("database_file", &self.inner.database_file)
            .field("schema", &self.inner.schema)
            .field("running", &!self.inner.jobs.is_closed())
            .finish_non_exhaustive()
    }
}

impl SyncClient {
    /// Moves `conn` onto a new engine thread, runs [`Oversync::open`](crate::Oversync::open)
    /// there, and returns the handle once it succeeded (its error otherwise; the thread has
    /// ended then). Set the transport and the conflict resolver on `conn` before.
    pub async fn start(mut conn: OversyncConnection) -> Result<SyncClient> {
        let events = conn.runtime().events.clone();
        let schema = conn.config().schema().to_string();
        let database_file = main_database_file(&mut conn)?;
        let (jobs, job_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("oversync-engine".into())
            .spawn(move || engine_thread(conn, job_rx, stop_rx, ready_tx))
            .map_err(|e| Error::EngineStopped(format!("cannot spawn the engine thread: {e}")))?;
        let opened = ready_rx.await.unwrap_or_else(|_| {
            Err(Error::EngineStopped(
                "the engine thread ended while opening".into(),
            ))
        });
        if let Err(e) = opened {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            return Err(e);
        }
        // After open(): the metadata exists and the database is in WAL mode.
        let status = match &database_file {
            Some(file) => Some(Arc::new(Mutex::new(warm_status_connection(file).await?))),
            None => None,
        };
        Ok(SyncClient {
            inner: Arc::new(Inner {
                jobs,
                events,
                status,
                stop,
                thread: Mutex::new(Some(thread)),
                database_file,
                schema,
            }),
        })
    }

    /// Pushes local changes, then pulls ([`Oversync::sync`](crate::Oversync::sync)).
    pub fn sync(&self) -> impl Future<Output = Result<SyncReport>> + Send + 'static {
        self.run(|conn| Box::pin(async move { conn.oversync().sync().await }))
    }

    /// Pushes local changes ([`Oversync::push_pending`](crate::Oversync::push_pending)).
    pub fn push_pending(&self) -> impl Future<Output = Result<PushOutcome>> + Send + 'static {
        self.run(|conn| Box::pin(async move { conn.oversync().push_pending().await }))
    }

    /// Pulls to the server's stable ceiling
    /// ([`Oversync::pull_to_stable`](crate::Oversync::pull_to_stable)).
    pub fn pull_to_stable(&self) -> impl Future<Output = Result<PullOutcome>> + Send + 'static {
        self.run(|conn| Box::pin(async move { conn.oversync().pull_to_stable().await }))
    }

    /// Rebuilds the synced tables from a snapshot
    /// ([`Oversync::rebuild`](crate::Oversync::rebuild)).
    pub fn rebuild(&self) -> impl Future<Output = Result<RebuildReport>> + Send + 'static {
        self.run(|conn| Box::pin(async move { conn.oversync().rebuild().await }))
    }

    /// Attaches the signed-in user ([`Oversync::attach`](crate::Oversync::attach)). It needs
    /// the network; offline it fails with a retryable error
    /// ([`Error::is_retryable`]) and changes nothing, so an app may call it on every launch
    /// and ignore that failure: once a user is attached, `sync()` works without attaching
    /// again.
    pub fn attach(
        &self,
        user_id: impl Into<String>,
    ) -> impl Future<Output = Result<AttachOutcome>> + Send + 'static {
        let user_id = user_id.into();
        self.run(move |conn| Box::pin(async move { conn.oversync().attach(&user_id).await }))
    }

    /// Detaches the user ([`Oversync::detach`](crate::Oversync::detach)).
    pub fn detach(&self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.with_connection(|conn| conn.oversync().detach())
    }

    /// Syncs, then detaches ([`Oversync::sync_then_detach`](crate::Oversync::sync_then_detach)).
    pub fn sync_then_detach(
        &self,
    ) -> impl Future<Output = Result<SyncThenDetachReport>> + Send + 'static {
        self.run(|conn| Box::pin(async move { conn.oversync().sync_then_detach().await }))
    }

    /// How many local changes wait to reach the server. Reads the last committed state
    /// through a read-only connection, so it does not wait for a running sync.
    pub fn pending_sync_status(
        &self,
    ) -> impl Future<Output = Result<PendingSyncStatus>> + Send + 'static {
        self.read(read_pending_sync_status)
    }

    /// The install's sync state, read like [`pending_sync_status`](Self::pending_sync_status).
    pub fn sync_status(&self) -> impl Future<Output = Result<SyncStatus>> + Send + 'static {
        self.read(read_sync_status)
    }

    /// Subscribes to [`SyncEvent`]s of every call and of the watcher.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.inner.events.subscribe()
    }

    /// Starts the watcher ([`OversyncConnection::start_watch`]) on the engine thread, so its
    /// pulls stay off the app's runtime too. Stop it with [`WatchHandle::stop`]; it also
    /// ends with [`shutdown`](Self::shutdown).
    pub fn start_watch(
        &self,
        options: WatchOptions,
    ) -> impl Future<Output = Result<WatchHandle>> + Send + 'static {
        self.run(move |conn| Box::pin(async move { conn.start_watch(options).await }))
    }

    /// Runs `f` on the engine thread with the connection, after the calls queued before it:
    /// for whatever has no method here (quarantine, `source_info`, a new resolver or
    /// transport, a read that must see the engine's own state).
    pub fn with_connection<R, F>(&self, f: F) -> impl Future<Output = Result<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&mut OversyncConnection) -> Result<R> + Send + 'static,
    {
        self.run(move |conn| Box::pin(async move { f(conn) }))
    }

    /// Stops the engine: the running call is cancelled at its next await point (which loses
    /// nothing, see the type's docs), queued calls and every later call fail with
    /// [`Error::EngineStopped`], watchers started here end, and the engine thread is joined.
    /// Idempotent; any clone may call it.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// A future that sends `op` to the engine thread when first polled and resolves to its
    /// result. It owns what it needs (`'static`), so it can be spawned or kept in a `select!`.
    fn run<R, F>(&self, op: F) -> impl Future<Output = Result<R>> + Send + 'static
    where
        R: Send + 'static,
        F: for<'a> FnOnce(&'a mut OversyncConnection) -> EngineFuture<'a, Result<R>>
            + Send
            + 'static,
    {
        let jobs = self.inner.jobs.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            let job: Job = Box::new(move |conn| Box::pin(run_job(conn, op, reply)));
            jobs.send(job).map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
    }

    /// A status read on the read-only connection, on the blocking pool (an engine job for a
    /// database without a file).
    fn read<R>(
        &self,
        read: fn(&mut SqliteConnection) -> Result<R>,
    ) -> impl Future<Output = Result<R>> + Send + 'static
    where
        R: Send + 'static,
    {
        let status = self.inner.status.clone();
        let through_engine = self.with_connection(move |conn| read(conn));
        async move {
            let Some(status) = status else {
                return through_engine.await;
            };
            tokio::task::spawn_blocking(move || {
                let mut conn = status.lock().unwrap_or_else(PoisonError::into_inner);
                read(&mut conn)
            })
            .await
            .map_err(|e| Error::EngineStopped(format!("status read failed: {e}")))?
        }
    }
}

/// Opens the read-only status connection and runs both status reads on it once, on the
/// blocking pool: its first read parses the database schema (every synced table's triggers)
/// and prepares the status statements, which took a few ms in the sync bench's first status
/// read of each run; after this, an app's first read reuses them like every later one.
async fn warm_status_connection(file: &str) -> Result<SqliteConnection> {
    let file = file.to_string();
    tokio::task::spawn_blocking(move || {
        let mut conn = establish_read_only(&file)?;
        read_pending_sync_status(&mut conn)?;
        read_sync_status(&mut conn)?;
        Ok(conn)
    })
    .await
    .map_err(|e| Error::EngineStopped(format!("opening the status connection failed: {e}")))?
}

/// Runs one call on the engine thread; a caller that went away (dropped its future) cancels
/// it at its next await point, or before it starts.
async fn run_job<'a, R, F>(
    conn: &'a mut OversyncConnection,
    op: F,
    mut reply: oneshot::Sender<Result<R>>,
) where
    F: FnOnce(&'a mut OversyncConnection) -> EngineFuture<'a, Result<R>>,
{
    if reply.is_closed() {
        return;
    }
    let work = op(conn);
    let outcome = tokio::select! {
        outcome = work => Some(outcome),
        _ = reply.closed() => None,
    };
    if let Some(outcome) = outcome {
        let _ = reply.send(outcome);
    }
}

fn stopped() -> Error {
    Error::EngineStopped("shutdown() was called or the engine thread ended".into())
}

/// The engine thread: a current-thread runtime that opens the connection, then runs jobs
/// until told to stop or every handle is gone. Watchers started by jobs are tasks of this
/// runtime and end with it.
fn engine_thread(
    mut conn: OversyncConnection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(Error::EngineStopped(format!(
                "cannot build the engine runtime: {e}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        if let Err(e) = conn.oversync().open() {
            let _ = ready.send(Err(e));
            return;
        }
        if ready.send(Ok(())).is_err() {
            return;
        }
        loop {
            let job = tokio::select! {
                biased;
                _ = stop.changed() => return,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = job(&mut conn) => {}
            }
        }
    });
}

/// The file behind the connection's main database, `None` for an in-memory or temporary
/// one (which a second connection cannot open).
fn main_database_file(conn: &mut OversyncConnection) -> Result<Option<String>> {
    #[derive(QueryableByName)]
    struct MainFile {
        #[diesel(sql_type = diesel::sql_types::Text)]
        file: String,
    }
    let main: Option<MainFile> =
        diesel::sql_query("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .get_result(&mut **conn)
            .optional()?;
    Ok(main.map(|m| m.file).filter(|f| !f.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OversyncConfig;
    use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};

    diesel::table! { notes (id) { id -> Text, title -> Text } }

    #[derive(crate::SyncTable)]
    #[diesel(table_name = notes)]
    #[allow(dead_code)]
    struct Note {
        #[sync(key)]
        id: String,
        title: String,
    }

    /// `start()` warms the status connection: an app's first status read (often during the
    /// first sync) neither parses the schema nor prepares statements.
    #[tokio::test(flavor = "current_thread")]
    async fn the_first_status_read_reuses_statements_prepared_by_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warm.db");
        let mut conn = OversyncConnection::establish(
            path.to_str().unwrap(),
            OversyncConfig::new("business").table::<Note>(),
        )
        .unwrap();
        conn.batch_execute(
            "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL)",
        )
        .unwrap();
        crate::migrations::run_sync_migrations(&mut conn).unwrap();
        let client = SyncClient::start(conn).await.unwrap();

        let prepared = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = prepared.clone();
        let instrumentation: Box<dyn Instrumentation> =
            Box::new(move |event: InstrumentationEvent<'_>| {
                if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                    seen.lock().unwrap().push(sql.to_string());
                }
            });
        let status = client.inner.status.clone().expect("a file-backed database");
        status.lock().unwrap().set_instrumentation(instrumentation);

        let pending = client.pending_sync_status().await.unwrap();
        assert_eq!(pending.pending_rows, 0);
        client.sync_status().await.unwrap();
        let prepared = prepared.lock().unwrap().clone();
        assert!(
            prepared.is_empty(),
            "prepared on the first read: {prepared:?}"
        );
        client.shutdown().await;
    }
}
