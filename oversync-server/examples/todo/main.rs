//! A todo app with its own tables, synced through `oversync-server`, with nothing
//! hand-written on the server side: the app generates its sync migrations and its server
//! schema from its models, the diesel CLI and `oversync-server migrate` apply them, the
//! server runs from `oversync-server.toml`, and two devices converge, across a schema
//! change (`todos.priority`, a new nullable column) rolled out while both have unsynced rows.
//!
//! ```text
//! cargo build -p oversync-server --bin oversync-server
//! cargo run -p oversync-server --example todo
//! ```
//!
//! needs the PostgreSQL binaries (`initdb`, `pg_ctl`: the example starts a private cluster
//! through `oversync-testkit`) and the diesel CLI. `-- generate <release> <name>` is the
//! app's generator (see `app.rs`). Exits 0 only when both devices hold exactly the server's
//! rows, read from PostgreSQL.
//!
//! The rollout order it follows (docs/your-app.md explains why):
//! 1. the server is migrated first (a new nullable column; no restart);
//! 2. devices still on release 1 keep syncing: the column's `null`s are skipped;
//! 3. each device is upgraded (`diesel migration run` adds the column and the regenerated
//!    triggers), its unsynced rows kept and pushed afterwards;
//! 4. once an upgraded device writes a value into the column, a device still on release 1
//!    stops pulling with `Error::InvalidResponse` naming the column, rather than drop the
//!    value, until it is upgraded; nothing it holds is lost.

#[path = "app.rs"]
pub mod app;

use app::schema::{tags, todo_tags, todos};
use app::{Release, Tag, Todo, TodoTag, v1};
use diesel::prelude::*;
use oversync_diesel::transport::{AuthError, Transport, token_fn};
use oversync_diesel::{AttachOutcome, OversyncConnection};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The HS256 secret shared by the identity provider (here: `token` below) and the server
/// (`secret_env = "TODO_JWT_SECRET"`).
const SECRET: &str = "todo-example-secret-not-for-production";

// ---------------------------------------------------------------------------------------
// Auth: a real app asks its identity provider; the example plays it and signs the tokens
// the server's `[auth]` section accepts (issuer, audience, expiry).

fn token(user: &str) -> Result<String, AuthError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| AuthError(e.to_string()))?
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({
            "sub": user, "iss": "todo-auth", "aud": "todo-app", "exp": now + 600, "nbf": now - 1
        }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .map_err(|e| AuthError(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// The server: the `oversync-server` binary, run as an operator would.

/// A running `oversync-server`, stopped on drop.
struct Server {
    child: Child,
    base_url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct ServerCommand {
    binary: PathBuf,
    database_url: String,
    migrations: PathBuf,
}

impl ServerCommand {
    fn command(&self, verb: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(verb)
            .arg("--config")
            .arg(app::app_dir().join("oversync-server.toml"))
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--migrations")
            .arg(&self.migrations)
            .env("TODO_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .env_remove("OVERSYNC_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// `oversync-server migrate`: applies the pending server migrations.
    fn migrate(&self) -> Result<()> {
        let out = self.command("migrate").output()?;
        if !out.status.success() {
            return Err(format!(
                "oversync-server migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    }

    /// `oversync-server serve` on a free loopback port; ready once its health check answers.
    async fn serve(&self) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = self
            .command("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()?;
        let mut server = Server {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(format!("oversync-server exited before serving: {status}").into());
            }
            let health = http
                .get(format!("{}/syncx/health", server.base_url))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Copies server migration `file_name` into the staged directory the server migrates from
/// (a release of the server ships the migrations up to its own).
fn ship_server_migration(staged: &Path, number: &str) -> Result<()> {
    std::fs::create_dir_all(staged)?;
    for entry in std::fs::read_dir(app::server_migrations_dir())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .ok_or("no name")?
            .to_string_lossy()
            .into_owned();
        if name.starts_with(number) {
            std::fs::copy(&path, staged.join(&name))?;
            return Ok(());
        }
    }
    Err(format!("server migration {number} is missing").into())
}

// ---------------------------------------------------------------------------------------
// A device: its own SQLite file, migrated with the diesel CLI, opened for one release.

struct Device {
    name: &'static str,
    work: PathBuf,
    user: String,
    release: Release,
    conn: OversyncConnection,
}

impl Device {
    fn open(
        name: &'static str,
        work: &Path,
        release: Release,
        server: &str,
        user: &str,
    ) -> Result<Self> {
        let path = work.join(format!("{name}.db"));
        app::diesel_migration_run(&path, release, work)?;
        let mut conn = OversyncConnection::establish(
            path.to_str().ok_or("path is not UTF-8")?,
            release.config(),
        )?;
        conn.oversync().open()?; // on every launch: validates the tables against the models
        let signed_in = user.to_owned();
        conn.set_transport(Transport::new(
            server,
            token_fn(move |_refresh| {
                let t = token(&signed_in);
                async move { t }
            }),
        )?);
        Ok(Device {
            name,
            work: work.to_path_buf(),
            user: user.to_owned(),
            release,
            conn,
        })
    }

    /// Installs release 2 over release 1: closes the database, applies the new migrations
    /// with the diesel CLI (unsynced rows stay where they are), and opens it again.
    fn upgrade(mut self, server: &str) -> Result<Self> {
        let pending = self.pending()?;
        let Device {
            name,
            work,
            user,
            conn,
            ..
        } = self;
        drop(conn);
        let mut device = Device::open(name, &work, Release::Two, server, &user)?;
        let kept = device.pending()?;
        if kept != pending {
            return Err(format!("{name}: {pending} unsynced changes before, {kept} after").into());
        }
        println!("   {name} upgraded to release 2 with {pending} unsynced changes");
        Ok(device)
    }

    fn pending(&mut self) -> Result<u64> {
        Ok(self.conn.oversync().pending_sync_status()?.pending_rows)
    }

    async fn attach(&mut self, user: &str) -> Result<AttachOutcome> {
        let outcome = self.conn.oversync().attach(user).await?;
        println!("   {} attach: {outcome:?}", self.name);
        Ok(outcome)
    }

    async fn sync(&mut self) -> Result<()> {
        let report = self.conn.oversync().sync().await?;
        println!(
            "   {} synced: {:?} / {:?}",
            self.name, report.push, report.pull
        );
        Ok(())
    }

    /// Every row of the three tables, in key order (`priority` is `None` on release 1).
    fn rows(&mut self) -> Result<Rows> {
        let todos = match self.release {
            Release::Two => todos::table
                .order(todos::id)
                .load::<Todo>(&mut *self.conn)?,
            Release::One => v1::schema::todos::table
                .order(v1::schema::todos::id)
                .load::<v1::Todo>(&mut *self.conn)?
                .into_iter()
                .map(|t| Todo {
                    id: t.id,
                    title: t.title,
                    done: t.done,
                    priority: None,
                })
                .collect(),
        };
        Ok(Rows {
            tags: tags::table.order(tags::id).load(&mut *self.conn)?,
            todos,
            links: todo_tags::table
                .order(todo_tags::id)
                .load(&mut *self.conn)?,
        })
    }
}

/// The synced rows of one device, or of the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// `tags`.
    pub tags: Vec<Tag>,
    /// `todos`.
    pub todos: Vec<Todo>,
    /// `todo_tags`.
    pub links: Vec<TodoTag>,
}

/// The user's rows as the server holds them, read from PostgreSQL.
async fn server_rows(database_url: &str, user: &str) -> Result<Rows> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let tags = client
        .query(
            "SELECT id::text, label FROM todo.tags WHERE _sync_scope_id = $1 ORDER BY id::text",
            &[&user],
        )
        .await?
        .iter()
        .map(|r| Tag {
            id: r.get(0),
            label: r.get(1),
        })
        .collect();
    let todos = client
        .query(
            "SELECT id::text, title, done, priority FROM todo.todos WHERE _sync_scope_id = $1 ORDER BY id::text",
            &[&user],
        )
        .await?
        .iter()
        .map(|r| Todo {
            id: r.get(0),
            title: r.get(1),
            done: r.get(2),
            priority: r.get::<_, Option<i64>>(3).map(|p| p as i32),
        })
        .collect();
    let links = client
        .query(
            "SELECT id::text, todo_id::text, tag_id::text FROM todo.todo_tags WHERE _sync_scope_id = $1 ORDER BY id::text",
            &[&user],
        )
        .await?
        .iter()
        .map(|r| TodoTag {
            id: r.get(0),
            todo_id: r.get(1),
            tag_id: r.get(2),
        })
        .collect();
    Ok(Rows { tags, todos, links })
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn todo(title: &str) -> v1::Todo {
    v1::Todo {
        id: id(),
        title: title.into(),
        done: false,
    }
}

// ---------------------------------------------------------------------------------------
// The story.

/// What the run ended with.
#[derive(Debug)]
pub struct Report {
    /// The server's rows, equal to both devices'.
    pub server: Rows,
    /// The error a release 1 device stopped with once release 2 wrote a priority.
    pub old_device_error: String,
}

/// Runs the whole story against the `oversync-server` binary at `server_binary`.
pub async fn run(server_binary: &Path) -> Result<Report> {
    let work = tempfile::tempdir()?;
    let work = work.path();
    // One account per run, so reruns against the same database never share one.
    let user = format!("ada-{}", uuid::Uuid::new_v4().simple());

    println!("== 1. the generated migrations match the models (the app's CI check)");
    app::check_generated(work)?;

    println!("\n== 2. a private PostgreSQL; the server is migrated and started from its config");
    let db = oversync_testkit::PgCluster::shared()?
        .create_database()
        .await?;
    let server_cmd = ServerCommand {
        binary: server_binary.to_path_buf(),
        database_url: db.url.clone(),
        migrations: work.join("server-migrations"),
    };
    ship_server_migration(&server_cmd.migrations, "0001")?;
    server_cmd.migrate()?;
    let server = server_cmd.serve().await?;
    let url = server.base_url.clone();
    println!("   oversync-server at {url}");

    println!("\n== 3. the laptop (release 1) starts the account; the phone hydrates from it");
    let mut laptop = Device::open("laptop", work, Release::One, &url, &user)?;
    laptop.attach(&user).await?;
    let home = Tag {
        id: id(),
        label: "home".into(),
    };
    let plants = todo("water the plants");
    let rent = todo("pay rent");
    laptop.conn.immediate_transaction(|c| {
        diesel::insert_into(tags::table).values(&home).execute(c)?;
        diesel::insert_into(v1::schema::todos::table)
            .values(&vec![plants.clone(), rent.clone()])
            .execute(c)?;
        diesel::insert_into(todo_tags::table)
            .values(&TodoTag {
                id: id(),
                todo_id: plants.id.clone(),
                tag_id: home.id.clone(),
            })
            .execute(c)
    })?;
    laptop.sync().await?;
    let mut phone = Device::open("phone", work, Release::One, &url, &user)?;
    if !matches!(
        phone.attach(&user).await?,
        AttachOutcome::UsedRemoteState { .. }
    ) {
        return Err("the phone did not hydrate from the server".into());
    }

    println!("\n== 4. both edit offline (unsynced rows on both)");
    let milk = todo("buy milk");
    let call = todo("call mum");
    diesel::insert_into(v1::schema::todos::table)
        .values(&milk)
        .execute(&mut *laptop.conn)?;
    diesel::update(v1::schema::todos::table.find(&plants.id))
        .set(v1::schema::todos::done.eq(true))
        .execute(&mut *laptop.conn)?;
    diesel::update(v1::schema::todos::table.find(&rent.id))
        .set(v1::schema::todos::title.eq("pay rent by friday"))
        .execute(&mut *phone.conn)?;
    diesel::insert_into(v1::schema::todos::table)
        .values(&call)
        .execute(&mut *phone.conn)?;
    println!(
        "   unsynced: laptop {}, phone {}",
        laptop.pending()?,
        phone.pending()?
    );

    println!("\n== 5. release 2, server first: migration 0002 adds todos.priority (no restart)");
    ship_server_migration(&server_cmd.migrations, "0002")?;
    server_cmd.migrate()?;

    println!("\n== 6. the laptop, still on release 1, syncs: the new column's nulls are skipped");
    laptop.sync().await?;

    println!("\n== 7. the laptop edits again, then is upgraded with that change unsynced");
    let bike = todo("fix the bike");
    diesel::insert_into(v1::schema::todos::table)
        .values(&bike)
        .execute(&mut *laptop.conn)?;
    let mut laptop = laptop.upgrade(&url)?;
    laptop.attach(&user).await?;
    diesel::update(todos::table.find(&milk.id))
        .set(todos::priority.eq(Some(1)))
        .execute(&mut *laptop.conn)?;
    laptop.sync().await?;

    println!("\n== 8. the phone, still on release 1, syncs: it cannot store milk's priority");
    let old_device_error = match phone.sync().await {
        Err(e) => match e.downcast_ref::<oversync_diesel::Error>() {
            Some(oversync_diesel::Error::InvalidResponse(what)) if what.contains("priority") => {
                println!("   phone stopped, as it must: {what}");
                what.clone()
            }
            _ => return Err(format!("the phone failed otherwise: {e}").into()),
        },
        Ok(()) => return Err("a release 1 device took a row with a priority".into()),
    };

    println!("\n== 9. the phone is upgraded (with a change made meanwhile, unsynced) and syncs");
    diesel::update(v1::schema::todos::table.find(&call.id))
        .set(v1::schema::todos::done.eq(true))
        .execute(&mut *phone.conn)?;
    let mut phone = phone.upgrade(&url)?;
    phone.attach(&user).await?;
    phone.sync().await?;
    // Deleting a todo cascades to its tag links, here and on the server.
    diesel::delete(todos::table.find(&plants.id)).execute(&mut *phone.conn)?;
    phone.sync().await?;
    laptop.sync().await?;

    println!("\n== 10. both devices hold exactly the server's rows");
    let server_rows = server_rows(&db.url, &user).await?;
    let mut problems = Vec::new();
    for device in [&mut laptop, &mut phone] {
        let pending = device.pending()?;
        if pending > 0 {
            problems.push(format!("{}: {pending} changes not synced", device.name));
        }
        let rows = device.rows()?;
        if rows != server_rows {
            problems.push(format!(
                "{}: {rows:?}\n    server: {server_rows:?}",
                device.name
            ));
        }
    }
    let titles: Vec<(&str, Option<i32>)> = server_rows
        .todos
        .iter()
        .map(|t| (t.title.as_str(), t.priority))
        .collect();
    for expected in [
        ("pay rent by friday", None),
        ("buy milk", Some(1)),
        ("call mum", None),
        ("fix the bike", None),
    ] {
        if !titles.contains(&expected) {
            problems.push(format!("the server lacks {expected:?}: {titles:?}"));
        }
    }
    if titles.len() != 4 || !server_rows.links.is_empty() {
        problems.push(format!(
            "the deleted todo or its link survived: {server_rows:?}"
        ));
    }
    if !problems.is_empty() {
        return Err(format!("the devices did not converge:\n  {}", problems.join("\n  ")).into());
    }
    println!(
        "   converged: {} todos, {} tags, identical on laptop, phone and server",
        server_rows.todos.len(),
        server_rows.tags.len()
    );
    drop(server);
    Ok(Report {
        server: server_rows,
        old_device_error,
    })
}

/// The `oversync-server` binary next to this example's (`target/debug/`), or `$OVERSYNC_SERVER`.
fn server_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("OVERSYNC_SERVER") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?
        .join(format!("oversync-server{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        return Err(format!(
            "{} is missing: run `cargo build -p oversync-server --bin oversync-server` first",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

#[allow(dead_code)] // `tests/example_todo.rs` includes this file and calls `run()`.
#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [verb, release, name] if verb == "generate" => {
            let release = match release.as_str() {
                "1" => Release::One,
                "2" => Release::Two,
                _ => {
                    eprintln!("release must be 1 or 2");
                    std::process::exit(2);
                }
            };
            app::generate(release, name).map(|written| {
                for path in written {
                    println!("wrote {}", path.display());
                }
            })
        }
        [] => match server_binary() {
            Ok(bin) => run(&bin).await.map(|_| ()),
            Err(e) => Err(e),
        },
        _ => {
            eprintln!("usage: todo [generate <1|2> <migration_name>]");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("\nFAILED: {e}");
        std::process::exit(1);
    }
}
