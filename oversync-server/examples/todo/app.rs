//! The todo app's own code, as a real app keeps it in its library crate: the Diesel schema,
//! the models, and the generator that keeps the sync migrations and the server schema in
//! step with the models. Nothing here knows about sync but the `SyncTable` derive.
//!
//! Two releases of the app exist side by side so the story can roll a schema change out:
//! release 1 has no `todos.priority`, release 2 (the current models) adds it as a nullable
//! column.

use diesel::prelude::*;
use oversync_diesel::server_schema::{self, ServerSchema};
use oversync_diesel::{OversyncConfig, SyncTable, TableSpec, migrations};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The server schema (`[sync] schema` of `oversync-server.toml`).
pub const SCHEMA: &str = "todo";

/// The current Diesel schema (what `diesel print-schema` writes into `schema.rs`; the
/// `except_tables = ["^_sync_"]` filter of `diesel.toml` keeps the metadata tables out).
pub mod schema {
    diesel::table! { tags (id) { id -> Text, label -> Text } }
    diesel::table! {
        todos (id) { id -> Text, title -> Text, done -> Bool, priority -> Nullable<Integer> }
    }
    diesel::table! { todo_tags (id) { id -> Text, todo_id -> Text, tag_id -> Text } }
    diesel::joinable!(todo_tags -> todos (todo_id));
    diesel::joinable!(todo_tags -> tags (tag_id));
    diesel::allow_tables_to_appear_in_same_query!(tags, todos, todo_tags);
}

use schema::{tags, todo_tags, todos};

/// A tag.
#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable, Serialize, Deserialize)]
#[diesel(table_name = tags)]
pub struct Tag {
    /// UUID text.
    #[sync(key)]
    pub id: String,
    /// Shown name.
    pub label: String,
}

/// A todo (release 2: with a priority).
#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable, Serialize, Deserialize)]
#[diesel(table_name = todos)]
pub struct Todo {
    /// UUID text.
    #[sync(key)]
    pub id: String,
    /// What to do.
    pub title: String,
    /// Done or not.
    pub done: bool,
    /// Added in release 2; nullable, so rows written by release 1 have none.
    pub priority: Option<i32>,
}

/// A tag on a todo; deleting either side deletes it (`ON DELETE CASCADE`, here and on the
/// server).
#[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable, Serialize, Deserialize)]
#[diesel(table_name = todo_tags)]
pub struct TodoTag {
    /// UUID text.
    #[sync(key)]
    pub id: String,
    /// The todo.
    pub todo_id: String,
    /// The tag.
    pub tag_id: String,
}

/// Release 1 of the app, still installed on devices that were not upgraded yet.
pub mod v1 {
    use super::*;

    /// Release 1's `todos` table.
    pub mod schema {
        diesel::table! { todos (id) { id -> Text, title -> Text, done -> Bool } }
    }

    /// A todo in release 1.
    #[derive(Debug, Clone, PartialEq, Queryable, Insertable, SyncTable, Serialize, Deserialize)]
    #[diesel(table_name = schema::todos)]
    pub struct Todo {
        /// UUID text.
        #[sync(key)]
        pub id: String,
        /// What to do.
        pub title: String,
        /// Done or not.
        pub done: bool,
    }
}

/// An app release: which models it has and which migrations it ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Without `todos.priority`.
    One,
    /// The current models.
    Two,
}

/// The first app migration of release 2; release 1 ships every migration sorting before it.
const FIRST_OF_RELEASE_2: &str = "_todo_priority";

impl Release {
    /// The synced tables, parents first.
    pub fn specs(self) -> Vec<&'static TableSpec> {
        let todo = match self {
            Release::One => v1::Todo::SPEC,
            Release::Two => Todo::SPEC,
        };
        vec![Tag::SPEC, todo, TodoTag::SPEC]
    }

    /// The sync config the app opens its connection with.
    pub fn config(self) -> OversyncConfig {
        self.specs()
            .into_iter()
            .fold(OversyncConfig::new(SCHEMA), |c, spec| c.table_spec(spec))
    }

    /// The Diesel migrations this release ships, in order.
    pub fn migrations(self) -> Result<Vec<PathBuf>> {
        let mut all: Vec<PathBuf> = std::fs::read_dir(migrations_dir())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        all.sort();
        if self == Release::One
            && let Some(cut) = all
                .iter()
                .position(|p| p.to_string_lossy().ends_with(FIRST_OF_RELEASE_2))
        {
            all.truncate(cut);
        }
        Ok(all)
    }
}

/// This example's directory (`oversync-server/examples/todo`).
pub fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/todo")
}

/// The app's Diesel migrations: its own, and the generated sync ones.
pub fn migrations_dir() -> PathBuf {
    app_dir().join("migrations")
}

/// The server's numbered migrations, generated from the app's schema.
pub fn server_migrations_dir() -> PathBuf {
    app_dir().join("server-migrations")
}

/// Applies `release`'s migrations to the SQLite file `db` with the diesel CLI, as a
/// developer (or an installer) would: `diesel migration run`. A directory holding exactly
/// the release's migrations is staged in `work`.
pub fn diesel_migration_run(db: &Path, release: Release, work: &Path) -> Result<()> {
    let staged = work.join(format!("migrations-{release:?}"));
    if !staged.exists() {
        for dir in release.migrations()? {
            let target = staged.join(dir.file_name().ok_or("migration without a name")?);
            std::fs::create_dir_all(&target)?;
            for file in ["up.sql", "down.sql"] {
                std::fs::copy(dir.join(file), target.join(file))?;
            }
        }
    }
    // Run where no diesel.toml is found, so the CLI does not rewrite any schema.rs.
    let out = Command::new(std::env::var("DIESEL").unwrap_or_else(|_| "diesel".into()))
        .current_dir(work)
        .arg("migration")
        .arg("run")
        .arg("--database-url")
        .arg(db)
        .arg("--migration-dir")
        .arg(&staged)
        .output()
        .map_err(|e| {
            format!(
                "cannot run the diesel CLI ({e}); install it with \
                 `cargo install diesel_cli --no-default-features --features sqlite-bundled`"
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "diesel migration run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// The server schema of `release`, read from a scratch SQLite database migrated with it.
pub fn server_schema_of(release: Release, work: &Path) -> Result<ServerSchema> {
    let db = work.join(format!("schema-{release:?}.db"));
    diesel_migration_run(&db, release, work)?;
    let mut conn = SqliteConnection::establish(db.to_str().ok_or("path is not UTF-8")?)?;
    Ok(server_schema::read_spec_tables(
        &mut conn,
        SCHEMA,
        &release.specs(),
    )?)
}

/// The generator, run after editing a model (`cargo run -p oversync-server --example todo
/// -- generate <name>`, after `diesel migration generate <name>` wrote the app's own
/// migration): writes the trigger migrations of changed models next to the app's
/// migrations, then the next server migration. Already-written files are never edited.
pub fn generate(release: Release, name: &str) -> Result<Vec<PathBuf>> {
    let mut written = migrations::write_sync_migrations(&migrations_dir(), &release.specs())?;
    let work = tempfile::tempdir()?;
    let schema = server_schema_of(release, work.path())?;
    written.extend(server_schema::write_server_migration(
        &server_migrations_dir(),
        name,
        &schema,
    )?);
    Ok(written)
}

/// Fails when a model changed without running the generator: the trigger migrations and
/// the server migrations must describe the current models (the app's CI runs this).
pub fn check_generated(work: &Path) -> Result<()> {
    migrations::check_sync_migrations(&migrations_dir(), &Release::Two.specs())?;
    // The metadata migration is written once; inside this repository it must follow the
    // metadata schema the library embeds (`open()` checks its tables).
    let name = migrations::METADATA_MIGRATION_NAME;
    let ours = std::fs::read_to_string(migrations_dir().join(name).join("up.sql"))?;
    let library = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(name);
    if ours != std::fs::read_to_string(library.join("up.sql"))? {
        return Err(format!(
            "migrations/{name} differs from the library's: copy {} over it",
            library.display()
        )
        .into());
    }
    let schema = server_schema_of(Release::Two, work)?;
    let latest = server_schema::latest_snapshot(&server_migrations_dir())?
        .ok_or("no server migration yet")?;
    if server_schema::migration_ddl(&latest, &schema)?.is_some() {
        return Err("the server migrations are behind the models: run the generator".into());
    }
    Ok(())
}
