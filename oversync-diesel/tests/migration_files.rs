//! Generated migration files: writing, staleness checks, regeneration after a model change,
//! and both ways apps apply them (`embed_migrations!` and the `diesel` CLI).
//!
//! `tests/fixtures/migrations` is kept exactly as an app would keep its migrations: the app's
//! own table migration plus the generated sync migrations. Regenerate it with
//! `OVERSYNC_REGENERATE_FIXTURES=1 cargo test -p oversync-diesel --test migration_files`.

mod common;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use oversync_diesel::migrations::{
    METADATA_MIGRATION_NAME, check_sync_migrations, write_sync_migrations,
};
use oversync_diesel::{Error, OversyncConnection, SchemaError, SyncTable, TableSpec};
use std::path::{Path, PathBuf};

const FIXTURE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/fixtures/migrations");

fn tables() -> Vec<&'static TableSpec> {
    vec![Author::SPEC, Book::SPEC, BlobRow::SPEC]
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrations")
}

fn dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The previous version of the authors model: one column fewer (only its spec is used).
#[allow(dead_code)]
#[derive(SyncTable)]
#[diesel(table_name = authors)]
struct AuthorV1 {
    #[sync(key)]
    id: String,
    name: String,
    rating: Option<f64>,
}

#[test]
fn fixture_migrations_are_fresh() {
    if std::env::var_os("OVERSYNC_REGENERATE_FIXTURES").is_some() {
        write_sync_migrations(&fixture_dir(), &tables()).unwrap();
    }
    // The test an app keeps: it fails when a model changed without regenerating.
    check_sync_migrations(&fixture_dir(), &tables()).unwrap();
}

#[test]
fn write_is_idempotent_and_check_reports_what_is_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("migrations");
    match check_sync_migrations(&dir, &tables()) {
        Err(Error::StaleMigrations { tables, .. }) => {
            assert_eq!(
                tables,
                vec![METADATA_MIGRATION_NAME, "authors", "books", "blobs"]
            );
        }
        other => panic!("expected StaleMigrations, got {other:?}"),
    }
    let written = write_sync_migrations(&dir, &tables()).unwrap();
    assert_eq!(written.len(), 4);
    check_sync_migrations(&dir, &tables()).unwrap();
    assert!(
        write_sync_migrations(&dir, &tables()).unwrap().is_empty(),
        "nothing to rewrite"
    );

    let names = dirs(&dir);
    assert_eq!(names[0], METADATA_MIGRATION_NAME);
    let versions: Vec<&str> = names.iter().map(|n| n.split('_').next().unwrap()).collect();
    let mut unique = versions.clone();
    unique.dedup();
    assert_eq!(
        unique.len(),
        versions.len(),
        "diesel needs distinct versions: {names:?}"
    );
    for name in &names[1..] {
        let v = name.split('_').next().unwrap();
        assert_eq!(v.len(), "2026-01-01-000000".len(), "{name}");
    }
    let authors = names
        .iter()
        .find(|n| n.ends_with("_oversync_authors"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join(authors).join("up.sql")).unwrap(),
        Author::SPEC.up_sql
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(authors).join("down.sql")).unwrap(),
        Author::SPEC.down_sql
    );
}

#[test]
fn a_new_column_needs_no_new_trigger_migration() {
    // The triggers name only the key (payloads are read from the row at freeze), so a model
    // that gained `born` keeps its migration; the fixture's second generation of trigger
    // migrations (v1 -> current, whose down.sql restores v1) covers a trigger change.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("migrations");
    write_sync_migrations(&dir, &[AuthorV1::SPEC]).unwrap();
    check_sync_migrations(&dir, &[Author::SPEC]).unwrap();
    assert!(
        write_sync_migrations(&dir, &[Author::SPEC])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn embedded_migrations_install_everything_open_needs_and_revert_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("app.db");
    let mut conn = OversyncConnection::establish(path.to_str().unwrap(), config()).unwrap();
    let applied = conn.run_pending_migrations(FIXTURE_MIGRATIONS).unwrap();
    // Metadata, the app's tables, and two generations of trigger migrations per table (the
    // v1 triggers, then the current ones): a database that ran the old ones upgrades in place.
    assert_eq!(applied.len(), 8);
    conn.oversync().open().unwrap();
    exec(
        &mut conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'x', NULL, NULL)",
            uuid(1)
        ),
    );
    assert_eq!(dirty_rows(&mut conn).len(), 1);

    // Reverting the newest sync migration puts that table's v1 triggers back; open notices.
    conn.revert_last_migration(FIXTURE_MIGRATIONS).unwrap();
    match conn.oversync().open() {
        Err(Error::Schema(SchemaError::TriggerStale { .. })) => {}
        other => panic!("expected a stale-trigger error, got {other:?}"),
    }
    conn.revert_all_migrations(FIXTURE_MIGRATIONS).unwrap();
    let mut plain = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    assert!(
        plain
            .batch_execute("SELECT 1 FROM _sync_dirty_rows")
            .is_err(),
        "metadata removed"
    );
}

#[test]
fn diesel_cli_migration_run_installs_everything_open_needs() {
    let diesel = std::env::var("DIESEL_CLI").unwrap_or_else(|_| "diesel".into());
    if std::process::Command::new(&diesel)
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("OVERSYNC_SKIP_DIESEL_CLI").is_some(),
            "the diesel CLI is not installed: `cargo install diesel_cli --no-default-features --features sqlite-bundled`, \
             or set OVERSYNC_SKIP_DIESEL_CLI=1 to skip this test"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("app.db");
    let out = std::process::Command::new(&diesel)
        .args(["migration", "run", "--database-url"])
        .arg(&path)
        .arg("--migration-dir")
        .arg(fixture_dir())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diesel migration run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = OversyncConnection::establish(path.to_str().unwrap(), config()).unwrap();
    conn.oversync().open().unwrap();
    exec(
        &mut conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'x', NULL, NULL)",
            uuid(1)
        ),
    );
    exec(
        &mut conn,
        &format!(
            "INSERT INTO books VALUES ('{}', '{}', NULL, NULL)",
            uuid(2),
            uuid(1)
        ),
    );
    exec(
        &mut conn,
        &format!("DELETE FROM authors WHERE id = '{}'", uuid(1)),
    );
    assert!(
        dirty_rows(&mut conn).is_empty(),
        "capture and cascades work on a CLI-migrated database"
    );
}
