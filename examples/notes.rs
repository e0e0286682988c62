//! A notes app on Diesel, synced by oversync: two devices of one user edit offline, sync,
//! hit a conflict, and converge. `cargo run --example notes` runs it end to end: it starts
//! a private PostgreSQL cluster and the example server on loopback, so it needs only the
//! PostgreSQL binaries (`initdb`, `pg_ctl`). It exits 0 only when both devices hold exactly
//! the server's rows (checked against a third device that hydrates from the server).
//!
//! The example server serves a fixed business schema; this app uses two of its tables:
//! `users` (the authors) and `posts` (their notes, `author_id` referencing `users`).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use oversync_diesel::transport::{AuthError, Transport, token_fn};
use oversync_diesel::{
    AttachOutcome, Conflict, ConflictResolver, OversyncConfig, OversyncConnection, Resolution,
    SyncEvent, SyncTable,
};
use serde::{Deserialize, Serialize};
use std::error::Error;

diesel::table! { users (id) { id -> Text, name -> Text, email -> Text } }
diesel::table! { posts (id) { id -> Text, title -> Text, content -> Text, author_id -> Nullable<Text> } }
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
}

/// The app's own migration (the sync migrations are added by `run_sync_migrations` below;
/// a real app writes them to its migrations folder with `write_sync_migrations`).
const SCHEMA: &str = "
    CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL);
    CREATE TABLE posts (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL, content TEXT NOT NULL,
        author_id TEXT REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED);
";

/// When both devices changed the same note: keep the server's text and put both titles in.
struct MergeTitles;

impl ConflictResolver for MergeTitles {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        match (conflict.local_as::<Note>(), conflict.server_as::<Note>()) {
            (Ok(Some(mine)), Ok(Some(theirs))) if mine.title != theirs.title => {
                let merged = Note {
                    title: format!("{} | {}", theirs.title, mine.title),
                    ..theirs
                };
                Resolution::merged(&merged).unwrap_or(Resolution::KeepLocal)
            }
            _ => Resolution::AcceptServer,
        }
    }
}

/// One device: its own SQLite file and sync runtime.
struct Device {
    name: &'static str,
    conn: OversyncConnection,
}

impl Device {
    fn open(
        name: &'static str,
        dir: &std::path::Path,
        server: &str,
        user: &str,
    ) -> Result<Device, Box<dyn Error>> {
        let path = dir.join(format!("{name}.db"));
        let config = OversyncConfig::new("business")
            .table::<Author>()
            .table::<Note>();
        let mut conn =
            OversyncConnection::establish(path.to_str().ok_or("path is not UTF-8")?, config)?;
        conn.batch_execute(SCHEMA)?;
        oversync_diesel::migrations::run_sync_migrations(&mut conn)?;
        conn.oversync().open()?;
        conn.set_transport(Transport::new(server, sign_in_provider(server, user))?);
        conn.set_conflict_resolver(MergeTitles);
        Ok(Device { name, conn })
    }

    fn notes(&mut self) -> Result<Vec<Note>, Box<dyn Error>> {
        Ok(posts::table.order(posts::title).load(&mut *self.conn)?)
    }

    fn show(&mut self) -> Result<(), Box<dyn Error>> {
        let notes = self.notes()?;
        let pending = self.conn.oversync().pending_sync_status()?.pending_rows;
        println!(
            "   {} ({} notes, {pending} changes not yet synced)",
            self.name,
            notes.len()
        );
        for note in notes.iter().take(6) {
            println!("     - {:<40} {}", note.title, note.content);
        }
        if notes.len() > 6 {
            println!("     ... and {} more", notes.len() - 6);
        }
        Ok(())
    }

    async fn sync(&mut self) -> Result<(), Box<dyn Error>> {
        let report = self.conn.oversync().sync().await?;
        println!(
            "   {} synced: {:?} / {:?}",
            self.name, report.push, report.pull
        );
        Ok(())
    }
}

/// The demo server's sign-in (`POST /dummy-signin`): a real app plugs in its own auth here.
fn sign_in_provider(server: &str, user: &str) -> impl oversync_diesel::transport::TokenProvider {
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

fn note(title: &str, content: &str, author: &str) -> Note {
    Note {
        id: uuid::Uuid::new_v4().to_string(),
        title: title.into(),
        content: content.into(),
        author_id: Some(author.into()),
    }
}

/// What the run ended with.
#[derive(Debug)]
pub struct Report {
    /// Notes on every device (and the server) at the end.
    pub notes: usize,
    /// Conflicts resolved on the way.
    pub conflicts: usize,
}

/// Runs the whole story; `Err` when anything fails or the devices do not converge.
pub async fn run() -> Result<Report, Box<dyn Error>> {
    println!("== starting a private PostgreSQL and the oversync example server");
    let server = oversync_testkit::TestServer::start_async().await?;
    let url = server.base_url().to_string();
    println!("   server at {url}");
    let dir = tempfile::tempdir()?;
    let user = format!("ada-{}", uuid::Uuid::new_v4().simple());

    println!("\n== the laptop works offline before anyone signs in");
    let mut laptop = Device::open("laptop", dir.path(), &url, &user)?;
    let ada = Author {
        id: uuid::Uuid::new_v4().to_string(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    diesel::insert_into(users::table)
        .values(&ada)
        .execute(&mut *laptop.conn)?;
    let groceries = note("Groceries", "milk, eggs", &ada.id);
    let ideas = note("Ideas", "a sync engine for Diesel", &ada.id);
    let old = note("Old todo", "delete me", &ada.id);
    diesel::insert_into(posts::table)
        .values(&vec![groceries.clone(), ideas.clone(), old.clone()])
        .execute(&mut *laptop.conn)?;
    laptop.show()?;

    println!("\n== Ada signs in on the laptop: its local notes seed her new account");
    let outcome = laptop.conn.oversync().attach(&user).await?;
    println!("   attach: {outcome:?}");
    laptop.sync().await?;

    println!("\n== the phone signs in: it hydrates from the server");
    let mut phone = Device::open("phone", dir.path(), &url, &user)?;
    let outcome = phone.conn.oversync().attach(&user).await?;
    println!("   attach: {outcome:?}");
    phone.show()?;

    println!("\n== both go offline and edit; both rename the same note");
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
        .values(&note("Travel", "pack the charger", &ada.id))
        .execute(&mut *phone.conn)?;
    laptop.show()?;
    phone.show()?;

    println!("\n== the laptop syncs first; the phone's rename then conflicts and is merged");
    let mut phone_events = phone.conn.subscribe();
    laptop.sync().await?;
    phone.sync().await?;
    let mut conflicts = 0;
    while let Ok(event) = phone_events.try_recv() {
        if let SyncEvent::ConflictResolved {
            table,
            key,
            resolution,
        } = event
        {
            println!("   conflict on {table} {key}: {resolution}");
            conflicts += 1;
        }
    }
    laptop.sync().await?;
    laptop.show()?;
    phone.show()?;

    println!("\n== the phone imports 5,000 notes; the push and the laptop's pull show progress");
    let imported: Vec<Note> = (0..5000)
        .map(|i| note(&format!("Imported {i:04}"), "from the old app", &ada.id))
        .collect();
    phone.conn.immediate_transaction(|c| {
        for chunk in imported.chunks(500) {
            diesel::insert_into(posts::table).values(chunk).execute(c)?;
        }
        QueryResult::Ok(())
    })?;
    // Progress arrives as events; print about every tenth (pulls report per bundle).
    let printer = |mut events: tokio::sync::broadcast::Receiver<SyncEvent>, who: &'static str| {
        tokio::spawn(async move {
            let mut last_tenth = u64::MAX;
            while let Ok(event) = events.recv().await {
                if let SyncEvent::Progress { phase, done, total } = event {
                    let tenth = total.map_or(done, |t| done * 10 / t.max(1));
                    if tenth != last_tenth {
                        last_tenth = tenth;
                        let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                        println!("   {who}: {phase:?} {done}{of} rows");
                    }
                }
            }
        })
    };
    let phone_progress = printer(phone.conn.subscribe(), "phone");
    phone.sync().await?;
    let laptop_progress = printer(laptop.conn.subscribe(), "laptop");
    laptop.sync().await?;
    drop((phone_progress, laptop_progress));

    println!("\n== a third device hydrates from the server: all three must be identical");
    let mut tablet = Device::open("tablet", dir.path(), &url, &user)?;
    match tablet.conn.oversync().attach(&user).await? {
        AttachOutcome::UsedRemoteState { rows } => println!("   tablet hydrated {rows} rows"),
        other => return Err(format!("tablet attach: {other:?}").into()),
    }
    let (on_laptop, on_phone, on_server) = (laptop.notes()?, phone.notes()?, tablet.notes()?);
    laptop.show()?;
    phone.show()?;
    tablet.show()?;
    for (name, notes) in [("laptop", &on_laptop), ("phone", &on_phone)] {
        if notes != &on_server {
            let missing = on_server.iter().filter(|n| !notes.contains(n)).count();
            let extra = notes.iter().filter(|n| !on_server.contains(n)).count();
            return Err(format!(
                "{name} differs from the server: {missing} notes missing, {extra} extra"
            )
            .into());
        }
    }
    let merged = on_server
        .iter()
        .find(|n| n.id == ideas.id)
        .ok_or("the renamed note is gone")?;
    if merged.title != "Ideas (laptop) | Ideas (phone)" {
        return Err(format!("unexpected merge result: {:?}", merged.title).into());
    }
    if on_server.iter().any(|n| n.id == old.id) {
        return Err("the deleted note came back".into());
    }
    println!(
        "\n== converged: {} notes on every device, {conflicts} conflict merged",
        on_server.len()
    );
    Ok(Report {
        notes: on_server.len(),
        conflicts,
    })
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    match run().await {
        Ok(_) => {}
        Err(e) => {
            eprintln!("\nFAILED: {e}");
            std::process::exit(1);
        }
    }
}
