//! The sync migrations: the embedded `_sync_*` metadata schema, and per-table trigger
//! migrations written from the derived [`TableSpec`]s as Diesel migration directories.
//!
//! Apps keep the generated files next to their own migrations, so `diesel migration run` or
//! `embed_migrations!` + `run_pending_migrations` installs them, and keep a test calling
//! [`check_sync_migrations`] so a model edited without regenerating fails CI:
//!
//! ```
//! use oversync_diesel::{SyncTable, migrations};
//!
//! #[derive(SyncTable)]
//! #[diesel(table_name = notes)]
//! struct Note {
//!     #[sync(key)]
//!     id: String,
//!     title: String,
//! }
//!
//! # fn main() -> Result<(), oversync_diesel::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let migrations_dir = dir.path();
//! // In a tiny bin or build step of the app (run again after editing a model):
//! migrations::write_sync_migrations(migrations_dir, &[Note::SPEC])?;
//! // In the app's tests:
//! migrations::check_sync_migrations(migrations_dir, &[Note::SPEC])?;
//! # Ok(()) }
//! ```

use crate::connection::OversyncConnection;
use crate::error::{Error, Result};
use crate::table::TableSpec;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use std::fs;
use std::path::{Path, PathBuf};

/// The `_sync_*` metadata schema (top-level `migrations/` of the oversync repository).
pub const METADATA_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Directory name of the metadata migration; its version sorts before any app migration.
pub const METADATA_MIGRATION_NAME: &str = "00000000000000_oversync_metadata";
pub(crate) const METADATA_UP: &str =
    include_str!("../../migrations/00000000000000_oversync_metadata/up.sql");
const METADATA_DOWN: &str =
    include_str!("../../migrations/00000000000000_oversync_metadata/down.sql");

/// Runs the metadata migration and installs the triggers of every registered table, for
/// apps that do not keep migration files. Idempotent.
pub fn run_sync_migrations(conn: &mut OversyncConnection) -> Result<()> {
    let tables = conn.config().tables().to_vec();
    let sqlite: &mut SqliteConnection = conn;
    sqlite
        .run_pending_migrations(METADATA_MIGRATIONS)
        .map_err(|e| Error::InvalidState(format!("metadata migration failed: {e}")))?;
    sqlite.immediate_transaction(|c| -> Result<()> {
        for spec in &tables {
            c.batch_execute(spec.up_sql)?;
        }
        Ok(())
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source: std::sync::Arc::new(source),
    }
}

fn table_suffix(spec: &TableSpec) -> String {
    format!("_oversync_{}", spec.table_name.to_lowercase())
}

/// Sub-directories of `dir` whose name ends with `suffix`, sorted (so by version).
fn migration_dirs(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && name.ends_with(suffix) && name.len() > suffix.len() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(io_err(path))
}

/// Tables whose generated migration is missing or stale, with the previous up.sql if any.
type StaleTables = Vec<(&'static TableSpec, Option<String>)>;

/// The metadata migration is missing; these tables need a new trigger migration.
type Plan = (bool, StaleTables);

/// What needs (re)writing: the metadata migration when absent, and each table whose newest
/// generated migration does not install exactly its current triggers.
fn plan(dir: &Path, tables: &[&'static TableSpec]) -> Result<Plan> {
    let needs_metadata = !dir.join(METADATA_MIGRATION_NAME).join("up.sql").exists();
    let mut stale = Vec::new();
    for spec in tables {
        let latest = migration_dirs(dir, &table_suffix(spec))?.pop();
        match latest {
            Some(latest) => {
                let up = read(&latest.join("up.sql"))?;
                if up != spec.up_sql {
                    stale.push((*spec, Some(up)));
                }
            }
            None => stale.push((*spec, None)),
        }
    }
    Ok((needs_metadata, stale))
}

/// Writes the metadata migration (once) and a trigger migration for each table whose
/// triggers changed since the last generated one, into the Diesel migrations directory
/// `dir`. A changed model gets a new, later migration (already-applied ones are never
/// edited), whose `down.sql` restores the previous triggers. Returns the directories written.
pub fn write_sync_migrations(dir: &Path, tables: &[&'static TableSpec]) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (needs_metadata, stale) = plan(dir, tables)?;
    let mut written = Vec::new();
    if needs_metadata {
        let target = dir.join(METADATA_MIGRATION_NAME);
        fs::create_dir_all(&target).map_err(io_err(&target))?;
        write(&target.join("up.sql"), METADATA_UP)?;
        write(&target.join("down.sql"), METADATA_DOWN)?;
        written.push(target);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (i, (spec, previous_up)) in stale.into_iter().enumerate() {
        // Distinct, increasing versions: Diesel requires unique versions and applies in order.
        let version = diesel_version(now + i as u64);
        let target = dir.join(format!("{version}{}", table_suffix(spec)));
        fs::create_dir_all(&target).map_err(io_err(&target))?;
        write(&target.join("up.sql"), spec.up_sql)?;
        let mut down = spec.down_sql.to_string();
        if let Some(previous) = previous_up {
            down.push_str("-- restore the triggers of the previous sync migration\n");
            down.push_str(&previous);
        }
        write(&target.join("down.sql"), &down)?;
        written.push(target);
    }
    Ok(written)
}

/// Fails with [`Error::StaleMigrations`] when `dir` lacks the metadata migration or a
/// table's newest generated migration differs from what its model generates now.
pub fn check_sync_migrations(dir: &Path, tables: &[&'static TableSpec]) -> Result<()> {
    let (needs_metadata, stale) = plan(dir, tables)?;
    let mut names: Vec<String> = stale
        .iter()
        .map(|(s, _)| s.table_name.to_string())
        .collect();
    if needs_metadata {
        names.insert(0, METADATA_MIGRATION_NAME.to_string());
    }
    if names.is_empty() {
        Ok(())
    } else {
        Err(Error::StaleMigrations {
            dir: dir.to_path_buf(),
            tables: names,
        })
    }
}

/// Diesel's migration version format, `YYYY-MM-DD-HHMMSS`, in UTC.
fn diesel_version(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::diesel_version;

    #[test]
    fn versions_use_diesel_format() {
        assert_eq!(diesel_version(0), "1970-01-01-000000");
        assert_eq!(diesel_version(951_782_400), "2000-02-29-000000");
        assert_eq!(diesel_version(1_795_416_245), "2026-11-23-064405");
    }
}
