//! A notes app on Diesel, synced by oversync: two devices of one user edit offline, sync,
//! hit a conflict, and converge.
//!
//! ```text
//! cargo run --example notes
//! ```
//!
//! runs it end to end: it starts a private PostgreSQL cluster and the example server on
//! loopback (through `oversync-testkit`), so it needs only the PostgreSQL binaries (`initdb`,
//! `pg_ctl`). It exits 0 only when both devices hold exactly the server's rows, checked
//! against a third device that hydrates from the server; otherwise it prints what differs
//! and exits 1.
//!
//! The example server serves a fixed business schema, so this app uses two of its tables:
//! `users` (the notes' authors) and `posts` (the notes, `author_id` referencing `users`).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::transport::{AuthError, TokenProvider, Transport, token_fn};
use oversync_diesel::{
    AttachOutcome, Conflict, ConflictResolver, OversyncConfig, OversyncConnection, Resolution,
    SyncEvent, SyncTable,
};
use oversync_diesel::{PullOutcome, PushOutcome};
use serde::{Deserialize, Serialize};
use std::error::Error;
use tokio::sync::broadcast::error::RecvError;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------
// The app: Diesel schema, models and its own migration. Nothing here knows about sync but
// the `SyncTable` derive and the `#[sync(key)]` marker on the UUID key.

diesel::table! { users (id) { id -> Text, name -> Text, email -> Text, created_at -> Nullable<Text>, updated_at -> Nullable<Text> } }
diesel::table! { posts (id) { id -> Text, title -> Text, content -> Text, author_id -> Nullable<Text>, created_at -> Nullable<Text>, updated_at -> Nullable<Text> } }
diesel::joinable!(posts -> users (author_id));
diesel::allow_tables_to_appear_in_same_query!(users, posts);

/// An author.
#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable, Serialize, Deserialize)]
#[diesel(table_name = users)]
pub struct Author {
    #[sync(key)]
    pub id: String,
    pub name: String,
    pub email: String,
    /// Filled by the server (its column default); the local table has every server column,
    /// since a payload column the model lacks is refused.
    pub created_at: Option<String>,
    /// Filled by the server.
    pub updated_at: Option<String>,
}

/// A note.
#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable, Serialize, Deserialize)]
#[diesel(table_name = posts)]
pub struct Note {
    #[sync(key)]
    pub id: String,
    pub title: String,
    pub content: String,
    pub author_id: Option<String>,
    /// Filled by the server.
    pub created_at: Option<String>,
    /// Filled by the server.
    pub updated_at: Option<String>,
}

/// The app's own migration (the sync migrations are added by `run_sync_migrations` below;
/// a real app writes them next to its own with `write_sync_migrations`).
const SCHEMA: &str = "
    CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL,
        created_at TEXT, updated_at TEXT);
    CREATE TABLE posts (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL, content TEXT NOT NULL,
        author_id TEXT REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED, created_at TEXT, updated_at TEXT);
";

fn note(title: &str, content: &str, author: &Author) -> Note {
    Note {
        id: uuid::Uuid::new_v4().to_string(),
        title: title.into(),
        content: content.into(),
        author_id: Some(author.id.clone()),
        created_at: None,
        updated_at: None,
    }
}

// ---------------------------------------------------------------------------------------
// Conflicts: when both devices changed the same note, the second push is rejected and the
// resolver decides. This one keeps the server's row and puts both titles in it.

struct MergeTitles;

impl ConflictResolver for MergeTitles {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        match (conflict.local_as::<Note>(), conflict.server_as::<Note>()) {
            (Ok(Some(mine)), Ok(Some(theirs))) if mine.title != theirs.title => {
                let merged = Note {
                    title: format!("{} + {}", theirs.title, mine.title),
                    ..theirs
                };
                Resolution::merged(&merged).unwrap_or(Resolution::KeepLocal)
            }
            _ => Resolution::AcceptServer,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Auth: the app owns it. The demo server signs anyone in at `POST /dummy-signin`; a real app
// returns its user's token here (the provider is asked again with `refresh = true` on a 401).

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
// One device: its own SQLite file, wrapped in an `OversyncConnection`.

struct Device {
    name: &'static str,
    conn: OversyncConnection,
}

impl Device {
    fn open(name: &'static str, dir: &std::path::Path, server: &str, user: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.db"));
        let config = OversyncConfig::new("business")
            .table::<Author>()
            .table::<Note>();
        let mut conn =
            OversyncConnection::establish(path.to_str().ok_or("path is not UTF-8")?, config)?;
        conn.batch_execute(SCHEMA)?;
        oversync_diesel::migrations::run_sync_migrations(&mut conn)?;
        conn.oversync().open()?; // on every launch: validates the schema against the models
        conn.set_transport(Transport::new(server, sign_in(server, user))?);
        conn.set_conflict_resolver(MergeTitles);
        Ok(Device { name, conn })
    }

    fn authors(&mut self) -> Result<Vec<Author>> {
        Ok(users::table.order(users::id).load(&mut *self.conn)?)
    }

    fn notes(&mut self) -> Result<Vec<Note>> {
        Ok(posts::table.order(posts::id).load(&mut *self.conn)?)
    }

    fn pending(&mut self) -> Result<u64> {
        Ok(self.conn.oversync().pending_sync_status()?.pending_rows)
    }

    async fn attach(&mut self, user: &str) -> Result<AttachOutcome> {
        let outcome = self.conn.oversync().attach(user).await?;
        println!("   {} attach: {outcome:?}", self.name);
        Ok(outcome)
    }

    /// `sync()` (push, then pull), printing conflicts and, with `progress`, a line about every
    /// tenth of a long push or pull, live, from the connection's `SyncEvent`s.
    async fn sync(&mut self, progress: bool) -> Result<u32> {
        let mut events = self.conn.subscribe();
        let name = self.name;
        let mut printer = ProgressPrinter::default();
        let mut handle = self.conn.oversync();
        let sync = handle.sync();
        tokio::pin!(sync);
        let report = loop {
            tokio::select! {
                report = &mut sync => break report?,
                event = events.recv() => match event {
                    Ok(event) => printer.show(name, event, progress),
                    Err(RecvError::Lagged(_) | RecvError::Closed) => {}
                },
            }
        };
        while let Ok(event) = events.try_recv() {
            printer.show(name, event, progress);
        }
        let pushed = match report.push {
            PushOutcome::NothingToPush => "nothing to push".to_string(),
            PushOutcome::Pushed { rows_pushed, .. } => format!("pushed {rows_pushed} rows"),
            PushOutcome::ResolvedWithoutPush { .. } => "server kept its rows".to_string(),
        };
        let pulled = match report.pull {
            PullOutcome::UpToDate {
                bundles_applied,
                rows_applied,
                ..
            } => format!("pulled {rows_applied} rows in {bundles_applied} bundles"),
            PullOutcome::BlockedByPendingChanges { pending_rows } => {
                format!("pull waits for {pending_rows} local changes")
            }
        };
        println!("   {name} synced: {pushed}, {pulled}");
        Ok(printer.conflicts)
    }
}

#[derive(Default)]
struct ProgressPrinter {
    last_tenth: Option<(oversync_diesel::Phase, u64)>,
    conflicts: u32,
}

impl ProgressPrinter {
    fn show(&mut self, device: &str, event: SyncEvent, progress: bool) {
        match event {
            SyncEvent::Progress { phase, done, total } if progress => {
                // Pushes know their total; pulls report rows applied after each bundle.
                let tenth = total.map_or(done / 500, |t| done * 10 / t.max(1));
                if self.last_tenth != Some((phase, tenth)) {
                    self.last_tenth = Some((phase, tenth));
                    match total {
                        Some(t) => println!(
                            "   {device}: {phase:?} {done:>5} of {t} rows ({}%)",
                            done * 100 / t.max(1)
                        ),
                        None => println!("   {device}: {phase:?} {done:>5} rows"),
                    }
                }
            }
            SyncEvent::ConflictResolved {
                table,
                key,
                resolution,
            } => {
                self.conflicts += 1;
                println!("   {device}: conflict on {table} {key}: {resolution}");
            }
            _ => {}
        }
    }
}

/// The devices' notes side by side, one line per note (matched by key), unsynced counts on top.
fn show(devices: &mut [&mut Device]) -> Result<()> {
    const WIDTH: usize = 38;
    const LINES: usize = 6;
    let mut columns = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for device in devices.iter_mut() {
        let mut notes = device.notes()?;
        notes.sort_by(|a, b| a.title.cmp(&b.title));
        for n in &notes {
            if !keys.contains(&n.id) {
                keys.push(n.id.clone());
            }
        }
        let pending = device.pending()?;
        let header = format!(
            "{} ({} notes, {pending} unsynced)",
            device.name,
            notes.len()
        );
        columns.push((header, notes));
    }
    let cell = |s: String| {
        let s: String = s.chars().take(WIDTH).collect();
        format!("{s:<WIDTH$}")
    };
    let header: Vec<String> = columns.iter().map(|(h, _)| cell(h.clone())).collect();
    println!("   | {}", header.join(" | ").trim_end());
    for key in keys.iter().take(LINES) {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, notes)| {
                cell(
                    notes
                        .iter()
                        .find(|n| &n.id == key)
                        .map_or("-".into(), |n| format!("{}: {}", n.title, n.content)),
                )
            })
            .collect();
        println!("   | {}", cells.join(" | ").trim_end());
    }
    if keys.len() > LINES {
        println!("   | ... and {} more notes", keys.len() - LINES);
    }
    Ok(())
}

/// Rows of `ours` and `theirs` that differ, by key (at most 10 lines).
fn differences<T: std::fmt::Debug + PartialEq>(
    ours: &[T],
    theirs: &[T],
    key: impl Fn(&T) -> &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for row in ours {
        match theirs.iter().find(|t| key(t) == key(row)) {
            None => out.push(format!("only here: {row:?}")),
            Some(t) if t != row => out.push(format!("here {row:?}, server {t:?}")),
            Some(_) => {}
        }
    }
    for row in theirs {
        if !ours.iter().any(|o| key(o) == key(row)) {
            out.push(format!("missing: {row:?}"));
        }
    }
    let more = out.len().saturating_sub(10);
    out.truncate(10);
    if more > 0 {
        out.push(format!("... and {more} more"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The story.

/// What the run ended with.
#[derive(Debug)]
pub struct Report {
    /// Notes on every device (and the server) at the end.
    pub notes: usize,
    /// Conflicts resolved on the way.
    pub conflicts: u32,
}

/// Runs the whole story; `Err` when anything fails or the devices do not converge.
pub async fn run() -> Result<Report> {
    println!("== 1. start a private PostgreSQL and the oversync example server");
    let server = oversync_testkit::TestServer::start_async().await?;
    let url = server.base_url().to_string();
    println!("   server at {url}");
    let dir = tempfile::tempdir()?;
    let user = format!("ada-{}", uuid::Uuid::new_v4().simple());

    println!("\n== 2. the laptop is used offline before Ada ever signs in");
    let mut laptop = Device::open("laptop", dir.path(), &url, &user)?;
    let ada = Author {
        id: uuid::Uuid::new_v4().to_string(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        created_at: None,
        updated_at: None,
    };
    let groceries = note("Groceries", "milk, eggs", &ada);
    let ideas = note("Ideas", "a sync engine", &ada);
    let old = note("Old todo", "delete me", &ada);
    laptop.conn.immediate_transaction(|c| {
        diesel::insert_into(users::table).values(&ada).execute(c)?;
        diesel::insert_into(posts::table)
            .values(&vec![groceries.clone(), ideas.clone(), old.clone()])
            .execute(c)
    })?;
    show(&mut [&mut laptop])?;

    println!("\n== 3. Ada signs in on the laptop: its local notes seed her new account");
    laptop.attach(&user).await?;
    laptop.sync(false).await?;

    println!("\n== 4. she signs in on her phone: it hydrates from the server");
    let mut phone = Device::open("phone", dir.path(), &url, &user)?;
    phone.attach(&user).await?;
    show(&mut [&mut laptop, &mut phone])?;

    println!("\n== 5. both are offline and edit; both rename the note \"Ideas\"");
    diesel::update(posts::table.find(&ideas.id))
        .set(posts::title.eq("Ideas (laptop)"))
        .execute(&mut *laptop.conn)?;
    diesel::delete(posts::table.find(&old.id)).execute(&mut *laptop.conn)?;
    diesel::update(posts::table.find(&ideas.id))
        .set(posts::title.eq("Ideas (phone)"))
        .execute(&mut *phone.conn)?;
    diesel::update(posts::table.find(&groceries.id))
        .set(posts::content.eq("milk, eggs, coffee"))
        .execute(&mut *phone.conn)?;
    diesel::insert_into(posts::table)
        .values(&note("Travel", "pack the charger", &ada))
        .execute(&mut *phone.conn)?;
    show(&mut [&mut laptop, &mut phone])?;

    println!("\n== 6. back online: the laptop syncs first, so the phone's rename conflicts");
    println!("   (resolver MergeTitles: keep the server's row, both titles in it)");
    let mut conflicts = laptop.sync(false).await?;
    conflicts += phone.sync(false).await?;
    conflicts += laptop.sync(false).await?;
    show(&mut [&mut laptop, &mut phone])?;

    println!("\n== 7. the phone imports 5,000 notes from another app; the sync shows progress");
    let imported: Vec<Note> = (0..5000)
        .map(|i| note(&format!("Imported {i:04}"), "from the old app", &ada))
        .collect();
    phone.conn.immediate_transaction(|c| {
        for chunk in imported.chunks(500) {
            diesel::insert_into(posts::table).values(chunk).execute(c)?;
        }
        QueryResult::Ok(())
    })?;
    conflicts += phone.sync(true).await?;
    conflicts += laptop.sync(true).await?;
    show(&mut [&mut laptop, &mut phone])?;

    println!("\n== 8. a new tablet hydrates from the server: all three must be identical");
    let mut tablet = Device::open("tablet", dir.path(), &url, &user)?;
    if !matches!(
        tablet.attach(&user).await?,
        AttachOutcome::UsedRemoteState { .. }
    ) {
        return Err("the tablet did not hydrate from the server".into());
    }
    show(&mut [&mut laptop, &mut phone, &mut tablet])?;
    let (server_authors, server_notes) = (tablet.authors()?, tablet.notes()?);
    let mut problems = Vec::new();
    for device in [&mut laptop, &mut phone] {
        let name = device.name;
        let pending = device.pending()?;
        if pending > 0 {
            problems.push(format!("{name}: {pending} changes not synced"));
        }
        for line in differences(&device.authors()?, &server_authors, |a| &a.id) {
            problems.push(format!("{name} users: {line}"));
        }
        for line in differences(&device.notes()?, &server_notes, |n| &n.id) {
            problems.push(format!("{name} posts: {line}"));
        }
    }
    match server_notes.iter().find(|n| n.id == ideas.id) {
        Some(n) if n.title == "Ideas (laptop) + Ideas (phone)" => {}
        other => problems.push(format!("the conflicting note is not merged: {other:?}")),
    }
    if server_notes.iter().any(|n| n.id == old.id) {
        problems.push("the deleted note came back".into());
    }
    if !problems.is_empty() {
        return Err(format!("the devices did not converge:\n  {}", problems.join("\n  ")).into());
    }
    println!(
        "\n== converged: {} author(s) and {} notes, identical on laptop, phone and server; \
         {conflicts} conflict merged",
        server_authors.len(),
        server_notes.len(),
    );
    Ok(Report {
        notes: server_notes.len(),
        conflicts,
    })
}

#[allow(dead_code)] // `tests/example_notes.rs` includes this file and calls `run()`.
#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("\nFAILED: {e}");
        std::process::exit(1);
    }
}
