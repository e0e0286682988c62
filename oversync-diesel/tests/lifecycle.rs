//! `open()` validation (typed errors, nothing changed on failure), idempotence, statuses and
//! `uninstall_sync()`, on real SQLite files.

mod common;

use common::*;
use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;
use diesel::sql_types::Text;
use oversync_diesel::{
    Binding, Error, KeyKind, OversyncConfig, OversyncConnection, SchemaError, SyncTable,
};

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Snapshot {
    #[diesel(sql_type = Text)]
    state: String,
}

/// Everything in `_sync_*` state, to prove a failed open changed nothing.
fn sync_state(conn: &mut diesel::SqliteConnection) -> String {
    let rows: Vec<Snapshot> = diesel::sql_query(
        "SELECT (SELECT json_group_array(json_array(current_source_id, binding_state, schema_name)) FROM _sync_attachment_state) || \
                (SELECT json_group_array(source_id) FROM _sync_source_state) || \
                (SELECT json_group_array(apply_mode) FROM _sync_apply_state) AS state",
    )
    .load(conn)
    .expect("state");
    rows.into_iter().map(|r| r.state).collect()
}

/// A fresh database with the full schema and migrations, broken by `sabotage`, then opened.
fn open_after(sabotage: &str) -> (Result<oversync_diesel::OpenReport, Error>, String, String) {
    let mut db = fresh_db(false);
    oversync_diesel::migrations::run_sync_migrations(&mut db.conn).unwrap();
    db.conn
        .batch_execute(sabotage)
        .unwrap_or_else(|e| panic!("{sabotage}: {e}"));
    let before = sync_state(&mut db.conn);
    let result = db.conn.oversync().open();
    let after = sync_state(&mut db.conn);
    (result, before, after)
}

fn schema_err(result: Result<oversync_diesel::OpenReport, Error>) -> SchemaError {
    match result {
        Err(Error::Schema(e)) => e,
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[test]
fn open_creates_a_source_once_and_is_idempotent() {
    let mut db = fresh_db(false);
    oversync_diesel::migrations::run_sync_migrations(&mut db.conn).unwrap();
    assert!(matches!(
        db.conn.oversync().pending_sync_status(),
        Err(Error::NotOpen)
    ));
    let first = db.conn.oversync().open().unwrap();
    assert!(first.created_source);
    assert!(uuid::Uuid::parse_str(&first.source_id).is_ok());
    let second = db.conn.oversync().open().unwrap();
    assert_eq!(second.source_id, first.source_id);
    assert!(!second.created_source);

    // Also across a new connection to the same file.
    let path = db.path();
    let mut other = OversyncConnection::establish(path.to_str().unwrap(), config()).unwrap();
    let third = other.oversync().open().unwrap();
    assert_eq!(third.source_id, first.source_id);

    let info = other.oversync().source_info().unwrap();
    assert_eq!(info.current_source_id, first.source_id);
    assert_eq!(info.binding, Binding::Anonymous);
    assert_eq!(info.schema, "business");
    assert_eq!(info.last_bundle_seq_seen, 0);
    assert!(!info.rebuild_required && !info.source_recovery_required);
    assert_eq!(info.source_recovery_reason, None);
}

#[test]
fn open_resets_a_leftover_apply_mode() {
    let mut db = fresh_db(true);
    exec(&mut db.conn, "UPDATE _sync_apply_state SET apply_mode = 1");
    db.conn.oversync().open().unwrap();
    exec(
        &mut db.conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'x', NULL, NULL)",
            uuid(1)
        ),
    );
    assert_eq!(
        dirty_rows(&mut db.conn).len(),
        1,
        "capture resumes after a crash mid-apply"
    );
}

#[test]
fn open_reports_each_schema_problem_and_changes_nothing() {
    let cases: Vec<(&str, SchemaError)> = vec![
        (
            "DROP TABLE _sync_row_state",
            SchemaError::MetadataMissing {
                table: "_sync_row_state".into(),
            },
        ),
        (
            "DROP TABLE blobs",
            SchemaError::TableMissing {
                table: "blobs".into(),
            },
        ),
        (
            "PRAGMA foreign_keys = OFF; DROP TABLE authors; \
             CREATE TABLE authors (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, rating REAL); PRAGMA foreign_keys = ON;",
            SchemaError::ColumnMissing {
                table: "authors".into(),
                column: "born".into(),
            },
        ),
        (
            "ALTER TABLE authors ADD COLUMN extra TEXT",
            SchemaError::UnexpectedColumn {
                table: "authors".into(),
                column: "extra".into(),
            },
        ),
        (
            "DROP TABLE blobs; CREATE TABLE blobs (id TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL)",
            SchemaError::KeyType {
                table: "blobs".into(),
                column: "id".into(),
                declared: "TEXT".into(),
                expected: KeyKind::Blob,
            },
        ),
        (
            "DROP TABLE blobs; CREATE TABLE blobs (id BLOB PRIMARY KEY, data BLOB NOT NULL)",
            SchemaError::KeyNullable {
                table: "blobs".into(),
                column: "id".into(),
            },
        ),
        (
            "DROP TABLE blobs; CREATE TABLE blobs (id BLOB NOT NULL UNIQUE, data BLOB NOT NULL)",
            SchemaError::KeyNotPrimaryKey {
                table: "blobs".into(),
                column: "id".into(),
            },
        ),
        (
            "DROP TABLE blobs; CREATE TABLE blobs (id BLOB PRIMARY KEY NOT NULL, data TEXT NOT NULL)",
            SchemaError::BlobMismatch {
                table: "blobs".into(),
                column: "data".into(),
                declared: "TEXT".into(),
                model_is_blob: true,
            },
        ),
        (
            "CREATE TABLE publishers (id TEXT PRIMARY KEY); DROP TABLE blobs; \
             CREATE TABLE blobs (id BLOB PRIMARY KEY NOT NULL, data BLOB NOT NULL REFERENCES publishers(id))",
            SchemaError::ForeignKeyOutsideManagedSet {
                table: "blobs".into(),
                column: "data".into(),
                references: "publishers".into(),
            },
        ),
        (
            "DROP TRIGGER trg_books_ad",
            SchemaError::TriggerMissing {
                table: "books".into(),
                trigger: "trg_books_ad".into(),
            },
        ),
        (
            "DROP TRIGGER trg_books_ad; CREATE TRIGGER trg_books_ad AFTER DELETE ON books BEGIN SELECT 1; END",
            SchemaError::TriggerStale {
                table: "books".into(),
                trigger: "trg_books_ad".into(),
            },
        ),
        (
            "DELETE FROM _sync_managed_tables WHERE table_name = 'books'",
            SchemaError::NotRegistered {
                table: "books".into(),
            },
        ),
        (
            "UPDATE _sync_attachment_state SET schema_name = 'other'",
            SchemaError::SchemaNameMismatch {
                stored: "other".into(),
                configured: "business".into(),
            },
        ),
    ];
    for (sabotage, expected) in cases {
        let (result, before, after) = open_after(sabotage);
        let err = schema_err(result);
        assert_eq!(err, expected, "after: {sabotage}");
        assert_eq!(
            before, after,
            "a failed open must not change sync state ({sabotage})"
        );
        let message = err.to_string();
        assert!(!message.is_empty());
    }
}

#[test]
fn config_errors_are_typed() {
    let conn = || <diesel::SqliteConnection as diesel::Connection>::establish(":memory:").unwrap();
    let err = |config| match OversyncConnection::new(conn(), config) {
        Err(Error::Config(e)) => e,
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("expected a config error"),
    };
    use oversync_diesel::ConfigError;
    assert_eq!(err(OversyncConfig::new("")), ConfigError::EmptySchema);
    assert_eq!(err(OversyncConfig::new("business")), ConfigError::NoTables);
    assert_eq!(
        err(OversyncConfig::new("business")
            .table::<Author>()
            .table::<Author>()),
        ConfigError::DuplicateTable {
            table: "authors".into()
        }
    );
}

#[test]
fn pending_status_counts_dirty_rows() {
    let mut db = fresh_db(true);
    assert_eq!(
        db.conn
            .oversync()
            .pending_sync_status()
            .unwrap()
            .pending_rows,
        0
    );
    for n in 1..=3 {
        exec(
            &mut db.conn,
            &format!(
                "INSERT INTO authors VALUES ('{}', 'x', NULL, NULL)",
                uuid(n)
            ),
        );
    }
    let status = db.conn.oversync().pending_sync_status().unwrap();
    assert_eq!(status.pending_rows, 3);
    assert!(status.blocked_detach);
}

#[test]
fn uninstall_refuses_with_pending_rows_then_removes_everything() {
    let mut db = fresh_db(true);
    exec(
        &mut db.conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'x', NULL, NULL)",
            uuid(1)
        ),
    );
    match db.conn.oversync().uninstall_sync() {
        Err(Error::UnsyncedData { pending_rows }) => assert_eq!(pending_rows, 1),
        other => panic!("expected UnsyncedData, got {other:?}"),
    }
    assert_eq!(
        dirty_rows(&mut db.conn).len(),
        1,
        "refusal keeps local intent"
    );

    // Pretend the row reached the server.
    exec(&mut db.conn, "DELETE FROM _sync_dirty_rows");
    db.conn.oversync().uninstall_sync().unwrap();

    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let leftovers: Vec<Name> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE name LIKE '\\_sync\\_%' ESCAPE '\\' OR name LIKE 'trg\\_%' ESCAPE '\\'",
    )
    .load(&mut *db.conn)
    .unwrap();
    assert!(
        leftovers.is_empty(),
        "left: {:?}",
        leftovers.iter().map(|n| &n.name).collect::<Vec<_>>()
    );
    // App data stays, and writes work without capture.
    exec(
        &mut db.conn,
        &format!(
            "INSERT INTO authors VALUES ('{}', 'y', NULL, NULL)",
            uuid(2)
        ),
    );
    assert!(matches!(
        db.conn.oversync().source_info(),
        Err(Error::NotOpen)
    ));
}

#[test]
fn spec_matches_the_model() {
    let spec = Book::SPEC;
    assert_eq!(spec.table_name, "books");
    assert_eq!(spec.key_column, "id");
    assert_eq!(spec.key_kind, KeyKind::Text);
    let cols: Vec<(&str, bool)> = spec.columns.iter().map(|c| (c.name, c.is_blob)).collect();
    assert_eq!(
        cols,
        vec![
            ("id", false),
            ("author_id", false),
            ("title", false),
            ("cover", true)
        ]
    );
    assert_eq!(BlobRow::SPEC.key_kind, KeyKind::Blob);
    let names: Vec<&str> = spec.triggers.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "trg_books_ai",
            "trg_books_au",
            "trg_books_au_key",
            "trg_books_ad"
        ]
    );
}
