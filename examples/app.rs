//! The shape of a real async app (a Tauri, axum or desktop app) on oversync: the sync engine
//! behind an owned `SyncClient`, a background sync task, UI reads and writes through a small
//! r2d2 pool of configured connections, a status endpoint, events driving a refresh and more
//! syncs, and a clean shutdown.
//!
//! ```text
//! cargo run --example app
//! ```
//!
//! starts a private PostgreSQL cluster and the example server on loopback (through
//! `oversync-testkit`; it needs `initdb` and `pg_ctl`). A laptop runs the app; a phone of the
//! same user writes meanwhile. It exits 0 when the laptop, the phone and a freshly hydrated
//! tablet hold the same rows, 1 otherwise.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use oversync_diesel::transport::{AuthError, TokenProvider, Transport, token_fn};
use oversync_diesel::{
    AppConnectionCustomizer, OversyncConfig, OversyncConnection, SyncClient, SyncEvent, SyncTable,
    WatchOptions,
};
use serde::Deserialize;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast::error::RecvError, watch};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------
// The app's model: contacts, stored in the example server's `users` table.

diesel::table! { users (id) { id -> Text, name -> Text, email -> Text, created_at -> Nullable<Text>, updated_at -> Nullable<Text> } }

/// A contact.
#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable)]
#[diesel(table_name = users)]
pub struct Contact {
    #[sync(key)]
    pub id: String,
    pub name: String,
    pub email: String,
    /// Filled by the server.
    pub created_at: Option<String>,
    /// Filled by the server.
    pub updated_at: Option<String>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, \
    email TEXT NOT NULL, created_at TEXT, updated_at TEXT);";

fn contact(name: &str) -> Contact {
    let id = uuid::Uuid::new_v4().to_string();
    Contact {
        email: format!("{id}@example.com"),
        id,
        name: name.into(),
        created_at: None,
        updated_at: None,
    }
}

/// The demo server signs anyone in at `POST /dummy-signin`; a real app returns its user's
/// token here.
fn sign_in(server: &str, user: &str) -> impl TokenProvider + use<> {
    let (server, user) = (server.to_string(), user.to_string());
    token_fn(move |_refresh| {
        let (server, user) = (server.clone(), user.clone());
        async move {
            #[derive(Deserialize)]
            struct Token {
                token: String,
            }
            let answer: Token = reqwest::Client::new()
                .post(format!("{server}/dummy-signin"))
                .json(&serde_json::json!({"user": user, "password": "demo"}))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| AuthError(e.to_string()))?
                .json()
                .await
                .map_err(|e| AuthError(e.to_string()))?;
            Ok(answer.token)
        }
    })
}

// ---------------------------------------------------------------------------------------
// UI database access: an r2d2 pool whose connections `AppConnectionCustomizer` configures
// for use beside the engine (WAL, busy timeout, foreign keys), so a UI write waits for the
// engine's transaction instead of failing with `database is locked`. Queries run on the
// blocking pool, never on a runtime worker.

#[derive(Clone)]
struct Db(Pool<ConnectionManager<SqliteConnection>>);

impl Db {
    fn open(path: &str) -> Result<Db> {
        let pool = Pool::builder()
            .max_size(4)
            .connection_customizer(Box::new(AppConnectionCustomizer))
            .build(ConnectionManager::new(path))?;
        Ok(Db(pool))
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SqliteConnection) -> QueryResult<R> + Send + 'static,
    ) -> Result<R> {
        let pool = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            Ok(f(&mut conn)?)
        })
        .await?
    }
}

// ---------------------------------------------------------------------------------------
// App state, shared by every handler and task: clones are cheap.

#[derive(Clone)]
struct App {
    sync: SyncClient,
    db: Db,
    /// Wakes the background sync (after a UI write, or when the server has news).
    nudge: Arc<Notify>,
}

impl App {
    /// Opens (or creates) the device's database and starts its sync engine.
    async fn launch(path: &str, server: &str, user: &str) -> Result<App> {
        let config = OversyncConfig::new("business").table::<Contact>();
        let mut conn = OversyncConnection::establish(path, config)?;
        // A real app runs its migrations here (the sync ones generated beside its own).
        conn.batch_execute(SCHEMA)?;
        oversync_diesel::migrations::run_sync_migrations(&mut conn)?;
        conn.set_transport(Transport::new(server, sign_in(server, user))?);
        let sync = SyncClient::start(conn).await?; // opens the database on the engine thread
        // On every launch: offline it fails with a retryable error and changes nothing; a
        // device attached before syncs without it.
        match sync.attach(user).await {
            Ok(outcome) => println!("   attach: {outcome:?}"),
            Err(e) if e.is_retryable() => println!("   offline, attach later: {e}"),
            Err(e) => return Err(e.into()),
        }
        Ok(App {
            sync,
            db: Db::open(path)?,
            nudge: Arc::new(Notify::new()),
        })
    }

    /// A UI command: add a contact, then ask for a sync.
    async fn add_contact(&self, name: &str) -> Result<Contact> {
        let row = contact(name);
        let insert = row.clone();
        self.db
            .run(move |c| diesel::insert_into(users::table).values(&insert).execute(c))
            .await?;
        self.nudge.notify_one();
        Ok(row)
    }

    /// A UI read.
    async fn contacts(&self) -> Result<Vec<Contact>> {
        self.db
            .run(|c| users::table.order(users::id).load::<Contact>(c))
            .await
    }

    /// The status endpoint (a badge): never waits for a running sync.
    async fn status(&self) -> Result<String> {
        let pending = self.sync.pending_sync_status().await?;
        Ok(format!("{} to upload", pending.pending_rows))
    }
}

/// The background sync task: syncs when nudged and every `every`, until shut down. A
/// failed sync is logged; retryable ones are simply retried on the next round.
fn spawn_background_sync(
    app: App,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut syncs = 0;
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = ticker.tick() => {}
                _ = app.nudge.notified() => {}
            }
            // Raced with shutdown: dropping the sync future cancels it, losing nothing.
            tokio::select! {
                _ = shutdown.changed() => break,
                result = app.sync.sync() => match result {
                    Ok(_) => syncs += 1,
                    Err(e) if e.is_retryable() => println!("   sync will retry: {e}"),
                    Err(e) => println!("   sync needs attention: {e}"),
                },
            }
        }
        syncs
    })
}

/// The UI's event loop: refreshes the contact list whenever synced tables changed, and
/// asks for a sync when the server has news while local changes wait. Returns the number of
/// refreshes once the list holds `expected` contacts.
fn spawn_refresher(app: App, expected: usize) -> tokio::task::JoinHandle<Result<usize>> {
    let mut events = app.sync.subscribe();
    tokio::spawn(async move {
        let mut refreshes = 0;
        loop {
            match events.recv().await {
                Ok(SyncEvent::TablesChanged { tables }) if tables.iter().any(|t| t == "users") => {
                    refreshes += 1;
                    let shown = app.contacts().await?.len();
                    if shown >= expected {
                        return Ok(refreshes);
                    }
                }
                Ok(SyncEvent::RemoteChanges) => app.nudge.notify_one(),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err("the engine stopped".into()),
            }
        }
    })
}

/// What the run ended with.
#[derive(Debug)]
pub struct Report {
    /// Contacts on every device at the end.
    pub contacts: usize,
    /// Refreshes of the laptop's list driven by events.
    pub refreshes: usize,
    /// Background syncs that succeeded on the laptop.
    pub syncs: u32,
}

/// Runs the story; `Err` when anything fails or the devices do not converge.
pub async fn run() -> Result<Report> {
    println!("== start a private PostgreSQL and the example server");
    let server = oversync_testkit::TestServer::start_async().await?;
    let url = server.base_url().to_string();
    let dir = tempfile::tempdir()?;
    let user = format!("grace-{}", uuid::Uuid::new_v4().simple());
    let file = |name: &str| -> Result<String> {
        Ok(dir
            .path()
            .join(format!("{name}.db"))
            .to_str()
            .ok_or("path is not UTF-8")?
            .to_string())
    };

    println!("== the laptop launches: engine, background sync, watcher, UI refresher");
    let laptop = App::launch(&file("laptop")?, &url, &user).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let background = spawn_background_sync(laptop.clone(), Duration::from_secs(30), shutdown_rx);
    let watcher = laptop.sync.start_watch(WatchOptions::default()).await?;
    let phone = App::launch(&file("phone")?, &url, &user).await?;
    let (from_laptop, from_phone) = (40, 25);
    let refresher = spawn_refresher(laptop.clone(), from_laptop + from_phone);

    println!("== the user adds {from_laptop} contacts on the laptop; the badge reads meanwhile");
    for i in 0..from_laptop {
        laptop.add_contact(&format!("laptop {i}")).await?;
        if i % 10 == 0 {
            println!("   badge: {}", laptop.status().await?);
        }
    }

    println!("== the phone adds {from_phone} and syncs; the laptop's watcher brings them in");
    for i in 0..from_phone {
        phone.add_contact(&format!("phone {i}")).await?;
    }
    phone.sync.sync().await?;
    // The laptop's own writes are pushed by its background task; the phone pulls them.
    let refreshes = tokio::time::timeout(Duration::from_secs(120), refresher)
        .await
        .map_err(|_| "the laptop's list never showed every contact")???;
    println!("   the laptop's list refreshed {refreshes} times from events");
    loop {
        laptop.nudge.notify_one();
        let status = laptop.sync.sync_status().await?;
        if status.pending_rows == 0 && !status.push_in_flight {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    phone.sync.sync().await?;

    println!("== the app quits: stop the background task and the watcher, shut the engines");
    shutdown_tx.send(true)?;
    let syncs = background.await?;
    watcher.stop().await;
    laptop.sync.shutdown().await;
    phone.sync.shutdown().await;

    println!("== a tablet hydrates from the server: all three must be identical");
    let tablet = App::launch(&file("tablet")?, &url, &user).await?;
    let expected = tablet.contacts().await?;
    tablet.sync.shutdown().await;
    let mut problems = Vec::new();
    for (name, app) in [("laptop", &laptop), ("phone", &phone)] {
        let rows = app.contacts().await?;
        if rows != expected {
            problems.push(format!(
                "{name} holds {} contacts, the server {}",
                rows.len(),
                expected.len()
            ));
        }
    }
    if expected.len() != from_laptop + from_phone {
        problems.push(format!("the server holds {} contacts", expected.len()));
    }
    if !problems.is_empty() {
        return Err(problems.join("; ").into());
    }
    println!(
        "== converged: {} contacts on laptop, phone and server; {syncs} background syncs",
        expected.len()
    );
    Ok(Report {
        contacts: expected.len(),
        refreshes,
        syncs,
    })
}

#[allow(dead_code)] // `tests/example_app.rs` includes this file and calls `run()`.
#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("\nFAILED: {e}");
        std::process::exit(1);
    }
}
