//! An app keeps the copy of the metadata migration (`00000000000000_oversync_metadata`) it
//! generated with an older release and never edits it; `open()` brings the metadata schema up
//! to this release's, keeping every captured change.

mod common;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use oversync_diesel::OversyncConnection;

const UP: &str = include_str!("../../migrations/00000000000000_oversync_metadata/up.sql");

/// The metadata `up.sql` of an older release: sections are only ever appended, so this
/// release's cut before `section` is exactly what that release wrote.
fn older_copy(section: &str) -> &'static str {
    let at = UP
        .find(section)
        .unwrap_or_else(|| panic!("{section} not in up.sql"));
    &UP[..at]
}

fn objects(conn: &mut SqliteConnection) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE name LIKE '\\_sync\\_%' ESCAPE '\\' ORDER BY name",
    )
    .load::<Name>(conn)
    .expect("schema")
    .into_iter()
    .map(|n| n.name)
    .collect()
}

#[test]
fn open_upgrades_an_older_metadata_copy_and_keeps_captured_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    let path = path.to_str().expect("utf-8 path");
    {
        // A device migrated by an app whose copy predates quarantine and the count index.
        let mut raw = SqliteConnection::establish(path).expect("sqlite");
        raw.batch_execute(SCHEMA).expect("app tables");
        raw.batch_execute(older_copy("-- ---- quarantine (appended) ----"))
            .expect("older metadata");
        for spec in config().tables() {
            raw.batch_execute(spec.up_sql).expect("triggers");
        }
        exec(
            &mut raw,
            "INSERT INTO authors (id, name) VALUES ('5d1d3b5e-7c2a-4f6e-9a1b-2c3d4e5f6a7b', 'Ursula')",
        );
        let before = objects(&mut raw);
        assert!(
            !before.contains(&"_sync_quarantine".to_string()),
            "{before:?}"
        );
        assert!(
            !before.contains(&"_sync_dirty_rows_count".to_string()),
            "{before:?}"
        );
    }

    let mut conn = OversyncConnection::establish(path, config()).expect("connection");
    conn.oversync().open().expect("open upgrades the metadata");
    let after = objects(&mut conn);
    for added in ["_sync_quarantine", "_sync_dirty_rows_count"] {
        assert!(
            after.contains(&added.to_string()),
            "{added} missing: {after:?}"
        );
    }
    let status = conn.oversync().pending_sync_status().expect("status");
    assert_eq!(
        status.pending_rows, 1,
        "the change captured before the upgrade is kept"
    );
    assert_eq!(status.quarantined_rows, 0);

    // Current now: the next launch changes nothing, and capture works on.
    drop(conn);
    let mut conn = OversyncConnection::establish(path, config()).expect("connection");
    conn.oversync().open().expect("second open");
    assert_eq!(objects(&mut conn), after);
    exec(
        &mut conn,
        "INSERT INTO authors (id, name) VALUES ('6e2e4c6f-8d3b-4a7f-8b2c-3d4e5f6a7b8c', 'Octavia')",
    );
    assert_eq!(
        conn.oversync().pending_sync_status().unwrap().pending_rows,
        2
    );
}

/// A database that never ran the sync migrations is not "older": `open()` still refuses it.
#[test]
fn open_does_not_create_missing_metadata() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    let mut conn =
        OversyncConnection::establish(path.to_str().expect("utf-8 path"), config()).expect("conn");
    conn.batch_execute(SCHEMA).expect("app tables");
    let err = conn.oversync().open().expect_err("no metadata");
    assert!(
        matches!(
            err,
            oversync_diesel::Error::Schema(oversync_diesel::SchemaError::MetadataMissing { .. })
        ),
        "{err:?}"
    );
    assert!(objects(&mut conn).is_empty());
}
