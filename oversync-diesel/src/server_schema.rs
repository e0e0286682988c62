//! The server's PostgreSQL schema, derived from the app's own SQLite schema.
//!
//! After `diesel migration run`, the app database holds the synced tables exactly as the
//! models use them. [`read_tables`] reads them (`sqlite_master`, `pragma_table_info`,
//! `pragma_foreign_key_list`, `pragma_index_list`), [`postgres_ddl`] renders the DDL the
//! server needs, and [`write_server_migration`] writes it as the next numbered migration of
//! a directory that `oversync-server migrate` applies.
//!
//! What the DDL adds to each table, so the server's bootstrap accepts it:
//! * the hidden owner column `_sync_scope_id TEXT NOT NULL`;
//! * the primary key `(_sync_scope_id, <key>)` and every unique index led by the scope column;
//! * foreign keys `(_sync_scope_id, col) REFERENCES parent (_sync_scope_id, key)`,
//!   `DEFERRABLE INITIALLY DEFERRED`, with their `ON DELETE` / `ON UPDATE` actions kept
//!   (`SET NULL` names only the referencing column, so the scope column stays set).
//!
//! Type mapping, from the SQLite declared type (SQLite's affinity rules, checked in order):
//!
//! | SQLite declared type                      | PostgreSQL          |
//! |-------------------------------------------|---------------------|
//! | the sync key, and columns referencing one | `uuid`              |
//! | contains `BOOL`                           | `boolean`           |
//! | contains `INT`                            | `bigint`            |
//! | contains `CHAR`, `CLOB` or `TEXT`         | `text`              |
//! | contains `BLOB`                           | `bytea`             |
//! | contains `REAL`, `FLOA` or `DOUB`         | `double precision`  |
//! | contains `DATE` or `TIME` (Diesel's `Timestamp`, `Date`, `Time`) | `text` |
//!
//! Timestamps stay `text`: the client sends Diesel's SQLite text form
//! (`2024-05-01 12:00:00.123`) and must get the same bytes back; a `timestamptz` column
//! would come back re-rendered (`2024-05-01T12:00:00.123+00:00`). Any other declared type
//! (`NUMERIC`, `DECIMAL`, none) is refused with [`ServerSchemaError::UnsupportedType`].
//!
//! Later model changes become the next migration, never an edit of an applied one: each
//! generated file starts with a snapshot line (`-- oversync-schema: {...}`), and
//! [`write_server_migration`] diffs the current tables against the newest snapshot. New
//! tables, new nullable columns, new foreign keys and new unique indexes are additive;
//! anything else (a dropped or retyped column, a new `NOT NULL` column) is refused with
//! [`ServerSchemaError::IncompatibleChange`], because existing server rows could not follow.

use crate::table::TableSpec;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel::{QueryableByName, SqliteConnection, sql_query};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The hidden owner column of every server table.
pub const SCOPE_COLUMN: &str = "_sync_scope_id";

/// First-line marker of a generated migration, followed by the JSON schema snapshot.
pub const SNAPSHOT_MARKER: &str = "-- oversync-schema: ";

/// Why the server schema could not be derived or written.
#[derive(Debug, thiserror::Error)]
pub enum ServerSchemaError {
    /// Reading the SQLite catalog failed.
    #[error("reading the SQLite schema: {0}")]
    Sqlite(#[from] diesel::result::Error),
    /// Reading or writing the migration directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No tables to describe.
    #[error("no synced tables: _sync_managed_tables is empty and no table was given")]
    NoTables,
    /// A listed table is not in the database.
    #[error("table {table} does not exist in the SQLite database")]
    TableMissing {
        /// Table name.
        table: String,
    },
    /// A name the server cannot register (it needs `^[a-z0-9_]+$`, at most 63 bytes).
    #[error("{what} {name:?} must match ^[a-z0-9_]+$ (at most 63 bytes) to be synced")]
    InvalidName {
        /// `schema`, `table` or `column`.
        what: &'static str,
        /// The offending name.
        name: String,
    },
    /// The table has no single-column primary key to use as the sync key.
    #[error("table {table}: the sync key must be its only primary-key column")]
    NoKey {
        /// Table name.
        table: String,
    },
    /// A declared type outside the mapping.
    #[error(
        "column {table}.{column} has declared type {declared:?}; supported are INTEGER/BIGINT, BOOLEAN, TEXT/VARCHAR, BLOB, REAL/DOUBLE/FLOAT, TIMESTAMP/DATETIME/DATE/TIME"
    )]
    UnsupportedType {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
        /// Its SQLite declared type.
        declared: String,
    },
    /// A foreign key the server cannot enforce per scope.
    #[error("foreign key {table}.{column}: {reason}")]
    UnsupportedForeignKey {
        /// Referencing table.
        table: String,
        /// Referencing column (first column of a composite key).
        column: String,
        /// What is wrong and what to change.
        reason: String,
    },
    /// The schema changed in a way a forward migration cannot express.
    #[error("{table}: {change}; write a new table or a manual migration instead")]
    IncompatibleChange {
        /// `table` or `table.column`.
        table: String,
        /// The change.
        change: String,
    },
    /// A migration file's snapshot line could not be read.
    #[error("{path}: invalid schema snapshot line: {reason}")]
    BadSnapshot {
        /// The file.
        path: PathBuf,
        /// Parse error.
        reason: String,
    },
}

/// One column of a server table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerColumn {
    /// Column name.
    pub name: String,
    /// PostgreSQL type (`uuid`, `text`, `bigint`, ...).
    pub pg_type: String,
    /// `NOT NULL`.
    pub not_null: bool,
}

/// One single-column foreign key to another synced table's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerForeignKey {
    /// Referencing column.
    pub column: String,
    /// Referenced table (its sync key is the target).
    pub references: String,
    /// `ON DELETE` action in SQL (`NO ACTION`, `CASCADE`, `SET NULL`, ...).
    pub on_delete: String,
    /// `ON UPDATE` action in SQL.
    pub on_update: String,
}

/// One synced table as the server stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTable {
    /// Table name.
    pub name: String,
    /// Sync key column (a `uuid` on the server).
    pub key_column: String,
    /// Columns in SQLite order (the scope column excluded).
    pub columns: Vec<ServerColumn>,
    /// Foreign keys in SQLite order.
    pub foreign_keys: Vec<ServerForeignKey>,
    /// Unique indexes besides the primary key, by column list (scope column excluded).
    pub unique: Vec<Vec<String>>,
}

/// The set of synced tables in one PostgreSQL schema, as recorded in a migration snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSchema {
    /// PostgreSQL schema name (the client's `OversyncConfig` schema).
    pub schema: String,
    /// Tables in creation order.
    pub tables: Vec<ServerTable>,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct PragmaColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    decl_type: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
    #[diesel(sql_type = Integer)]
    pk: i32,
}

#[derive(QueryableByName)]
struct PragmaForeignKey {
    #[diesel(sql_type = Integer)]
    id: i32,
    #[diesel(sql_type = Integer)]
    seq: i32,
    #[diesel(sql_type = Text)]
    to_table: String,
    #[diesel(sql_type = Text)]
    from_column: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    to_column: Option<String>,
    #[diesel(sql_type = Text)]
    on_update: String,
    #[diesel(sql_type = Text)]
    on_delete: String,
}

#[derive(QueryableByName)]
struct PragmaIndex {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    origin: String,
    #[diesel(sql_type = Integer)]
    partial: i32,
}

#[derive(QueryableByName)]
struct PragmaIndexColumn {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    name: Option<String>,
}

fn valid_name(what: &'static str, name: &str) -> Result<(), ServerSchemaError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ServerSchemaError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

/// The PostgreSQL type of a non-key, non-reference column (see the module's table).
pub fn map_declared_type(declared: &str) -> Option<&'static str> {
    let upper = declared.to_ascii_uppercase();
    let has = |words: &[&str]| words.iter().any(|w| upper.contains(w));
    if has(&["BOOL"]) {
        Some("boolean")
    } else if has(&["INT"]) {
        Some("bigint")
    } else if has(&["CHAR", "CLOB", "TEXT"]) {
        Some("text")
    } else if has(&["BLOB"]) {
        Some("bytea")
    } else if has(&["REAL", "FLOA", "DOUB"]) {
        Some("double precision")
    } else if has(&["DATE", "TIME"]) {
        Some("text")
    } else {
        None
    }
}

/// Reads the synced tables of `conn`: the given `tables` (table names or the
/// [`TableSpec`]s' names), or, when empty, every table of `_sync_managed_tables`. The
/// result is in the given (or registration) order.
pub fn read_tables(
    conn: &mut SqliteConnection,
    schema: &str,
    tables: &[&str],
) -> Result<ServerSchema, ServerSchemaError> {
    valid_name("schema", schema)?;
    let names: Vec<String> = if tables.is_empty() {
        sql_query("SELECT table_name AS name FROM _sync_managed_tables ORDER BY rowid")
            .load::<Name>(conn)?
            .into_iter()
            .map(|n| n.name)
            .collect()
    } else {
        tables.iter().map(|t| (*t).to_owned()).collect()
    };
    if names.is_empty() {
        return Err(ServerSchemaError::NoTables);
    }
    // Keys first: a reference column's type is its parent's key type.
    let mut raw = Vec::with_capacity(names.len());
    let mut keys = BTreeMap::new();
    for name in &names {
        let exists = sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
        )
        .bind::<Text, _>(name)
        .get_result::<Name>(conn)
        .optional()?;
        let Some(exists) = exists else {
            return Err(ServerSchemaError::TableMissing {
                table: name.clone(),
            });
        };
        let table = exists.name;
        valid_name("table", &table)?;
        let columns: Vec<PragmaColumn> = sql_query(
            "SELECT name, type AS decl_type, \"notnull\" AS not_null, pk FROM pragma_table_info(?) ORDER BY cid",
        )
        .bind::<Text, _>(&table)
        .load(conn)?;
        let pk: Vec<&PragmaColumn> = columns.iter().filter(|c| c.pk > 0).collect();
        let key = match pk.as_slice() {
            [only] => only.name.clone(),
            _ => return Err(ServerSchemaError::NoKey { table }),
        };
        keys.insert(table.clone(), key.clone());
        raw.push((table, key, columns));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (table, key, columns) in raw {
        out.push(read_table(conn, &table, &key, &columns, &keys)?);
    }
    Ok(ServerSchema {
        schema: schema.to_owned(),
        tables: out,
    })
}

/// [`read_tables`] for the tables of the given specs.
pub fn read_spec_tables(
    conn: &mut SqliteConnection,
    schema: &str,
    specs: &[&TableSpec],
) -> Result<ServerSchema, ServerSchemaError> {
    let names: Vec<&str> = specs.iter().map(|s| s.table_name).collect();
    if names.is_empty() {
        return Err(ServerSchemaError::NoTables);
    }
    read_tables(conn, schema, &names)
}

fn read_table(
    conn: &mut SqliteConnection,
    table: &str,
    key: &str,
    columns: &[PragmaColumn],
    keys: &BTreeMap<String, String>,
) -> Result<ServerTable, ServerSchemaError> {
    let fks: Vec<PragmaForeignKey> = sql_query(
        "SELECT id, seq, \"table\" AS to_table, \"from\" AS from_column, \"to\" AS to_column,
                on_update, on_delete
         FROM pragma_foreign_key_list(?) ORDER BY id, seq",
    )
    .bind::<Text, _>(table)
    .load(conn)?;
    let mut foreign_keys = Vec::new();
    for fk in &fks {
        let fk_error = |reason: String| ServerSchemaError::UnsupportedForeignKey {
            table: table.to_owned(),
            column: fk.from_column.clone(),
            reason,
        };
        if fk.seq > 0 || fks.iter().filter(|o| o.id == fk.id).count() > 1 {
            if fk.seq == 0 {
                return Err(fk_error(
                    "composite foreign keys are not supported; reference the parent's sync key"
                        .into(),
                ));
            }
            continue;
        }
        let Some((parent, parent_key)) = keys
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(&fk.to_table))
        else {
            return Err(fk_error(format!(
                "references {}, which is not synced (the synced tables must be FK-closed)",
                fk.to_table
            )));
        };
        if let Some(to) = &fk.to_column
            && !to.eq_ignore_ascii_case(parent_key)
        {
            return Err(fk_error(format!(
                "references {parent}.{to}; only the parent's sync key {parent_key} can be referenced"
            )));
        }
        let action = |a: &str, on_update: bool| -> Result<String, ServerSchemaError> {
            match a.to_ascii_uppercase().as_str() {
                "NO ACTION" | "" => Ok("NO ACTION".into()),
                "RESTRICT" => Ok("RESTRICT".into()),
                "CASCADE" => Ok("CASCADE".into()),
                "SET NULL" if !on_update => Ok("SET NULL".into()),
                other => Err(fk_error(format!(
                    "ON {} {other} is not supported by a scope-inclusive foreign key",
                    if on_update { "UPDATE" } else { "DELETE" }
                ))),
            }
        };
        foreign_keys.push(ServerForeignKey {
            column: fk.from_column.clone(),
            references: parent.clone(),
            on_delete: action(&fk.on_delete, false)?,
            on_update: action(&fk.on_update, true)?,
        });
    }

    // SQLite numbers foreign keys from the last declared; list them in column order.
    foreign_keys.sort_by_key(|f| columns.iter().position(|c| c.name == f.column));

    let mut out_columns = Vec::with_capacity(columns.len());
    for c in columns {
        valid_name("column", &c.name)?;
        if c.name == SCOPE_COLUMN {
            return Err(ServerSchemaError::InvalidName {
                what: "column",
                name: c.name.clone(),
            });
        }
        let is_ref = foreign_keys.iter().any(|f| f.column == c.name);
        let pg_type = if c.name == key || is_ref {
            "uuid"
        } else {
            map_declared_type(&c.decl_type).ok_or_else(|| ServerSchemaError::UnsupportedType {
                table: table.to_owned(),
                column: c.name.clone(),
                declared: c.decl_type.clone(),
            })?
        };
        out_columns.push(ServerColumn {
            name: c.name.clone(),
            pg_type: pg_type.to_owned(),
            not_null: c.not_null != 0 || c.name == key,
        });
    }

    let indexes: Vec<PragmaIndex> =
        sql_query("SELECT name, origin, partial FROM pragma_index_list(?) WHERE \"unique\" = 1")
            .bind::<Text, _>(table)
            .load(conn)?;
    let mut unique = Vec::new();
    for index in indexes {
        // The primary key becomes (scope, key); partial unique indexes cannot be
        // scope-led on the server's terms, so they stay client-only.
        if index.origin == "pk" || index.partial != 0 {
            continue;
        }
        let cols: Vec<PragmaIndexColumn> =
            sql_query("SELECT name FROM pragma_index_info(?) ORDER BY seqno")
                .bind::<Text, _>(&index.name)
                .load(conn)?;
        let cols: Option<Vec<String>> = cols.into_iter().map(|c| c.name).collect();
        // An expression index has NULL column names; the server refuses those.
        if let Some(cols) = cols
            && cols != [key.to_owned()]
            && !unique.contains(&cols)
        {
            unique.push(cols);
        }
    }
    Ok(ServerTable {
        name: table.to_owned(),
        key_column: key.to_owned(),
        columns: out_columns,
        foreign_keys,
        unique,
    })
}

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", q(schema), q(table))
}

fn column_sql(c: &ServerColumn) -> String {
    format!(
        "{} {}{}",
        q(&c.name),
        c.pg_type,
        if c.not_null { " NOT NULL" } else { "" }
    )
}

fn unique_sql(schema: &str, table: &ServerTable, cols: &[String]) -> String {
    let name = format!("{}_{}_key", table.name, cols.join("_"));
    let list: Vec<String> = cols.iter().map(|c| q(c)).collect();
    format!(
        "CREATE UNIQUE INDEX {} ON {} ({}, {});\n",
        q(&truncate_ident(&name)),
        qualified(schema, &table.name),
        q(SCOPE_COLUMN),
        list.join(", ")
    )
}

fn foreign_key_sql(schema: &ServerSchema, table: &ServerTable, fk: &ServerForeignKey) -> String {
    let parent_key = schema
        .tables
        .iter()
        .find(|t| t.name == fk.references)
        .map_or("id", |t| t.key_column.as_str());
    let name = truncate_ident(&format!("{}_{}_fkey", table.name, fk.column));
    let on_delete = match fk.on_delete.as_str() {
        // Only the referencing column is nulled: the scope column is part of the key.
        "SET NULL" => format!(" ON DELETE SET NULL ({})", q(&fk.column)),
        "NO ACTION" => String::new(),
        other => format!(" ON DELETE {other}"),
    };
    let on_update = match fk.on_update.as_str() {
        "NO ACTION" => String::new(),
        other => format!(" ON UPDATE {other}"),
    };
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}, {}) REFERENCES {} ({}, {}){on_delete}{on_update} DEFERRABLE INITIALLY DEFERRED;\n",
        qualified(&schema.schema, &table.name),
        q(&name),
        q(SCOPE_COLUMN),
        q(&fk.column),
        qualified(&schema.schema, &fk.references),
        q(SCOPE_COLUMN),
        q(parent_key),
    )
}

/// PostgreSQL truncates identifiers at 63 bytes; do it visibly so names stay stable.
fn truncate_ident(name: &str) -> String {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

fn create_table_sql(schema: &str, table: &ServerTable) -> String {
    let mut sql = format!("CREATE TABLE {} (\n", qualified(schema, &table.name));
    let _ = writeln!(sql, "    {} text NOT NULL,", q(SCOPE_COLUMN));
    for c in &table.columns {
        let _ = writeln!(sql, "    {},", column_sql(c));
    }
    let _ = writeln!(
        sql,
        "    PRIMARY KEY ({}, {})\n);",
        q(SCOPE_COLUMN),
        q(&table.key_column)
    );
    for cols in &table.unique {
        sql.push_str(&unique_sql(schema, table, cols));
    }
    sql
}

/// The complete DDL creating `schema` and its tables (foreign keys added after all tables,
/// so cycles and any table order work).
pub fn postgres_ddl(schema: &ServerSchema) -> String {
    let mut sql = format!("CREATE SCHEMA IF NOT EXISTS {};\n\n", q(&schema.schema));
    for t in &schema.tables {
        sql.push_str(&create_table_sql(&schema.schema, t));
        sql.push('\n');
    }
    for t in &schema.tables {
        for fk in &t.foreign_keys {
            sql.push_str(&foreign_key_sql(schema, t, fk));
        }
    }
    sql
}

/// The forward DDL from `previous` to `current`, or `None` when nothing changed. Refuses
/// changes that are not additive.
pub fn migration_ddl(
    previous: &ServerSchema,
    current: &ServerSchema,
) -> Result<Option<String>, ServerSchemaError> {
    if previous.schema != current.schema {
        return Err(ServerSchemaError::IncompatibleChange {
            table: current.schema.clone(),
            change: format!(
                "the schema name changed from {} to {}",
                previous.schema, current.schema
            ),
        });
    }
    let s = &current.schema;
    let mut sql = String::new();
    let mut fks = String::new();
    for old in &previous.tables {
        if !current.tables.iter().any(|t| t.name == old.name) {
            return Err(ServerSchemaError::IncompatibleChange {
                table: old.name.clone(),
                change: "the table was removed".into(),
            });
        }
    }
    for table in &current.tables {
        let Some(old) = previous.tables.iter().find(|t| t.name == table.name) else {
            sql.push_str(&create_table_sql(s, table));
            for fk in &table.foreign_keys {
                fks.push_str(&foreign_key_sql(current, table, fk));
            }
            continue;
        };
        let incompatible = |change: String| ServerSchemaError::IncompatibleChange {
            table: table.name.clone(),
            change,
        };
        if old.key_column != table.key_column {
            return Err(incompatible(format!(
                "the sync key changed from {} to {}",
                old.key_column, table.key_column
            )));
        }
        for c in &old.columns {
            match table.columns.iter().find(|n| n.name == c.name) {
                None => return Err(incompatible(format!("column {} was removed", c.name))),
                Some(n) if n != c => {
                    return Err(incompatible(format!(
                        "column {} changed from {} to {}",
                        c.name,
                        column_sql(c),
                        column_sql(n)
                    )));
                }
                Some(_) => {}
            }
        }
        for c in &table.columns {
            if old.columns.iter().any(|o| o.name == c.name) {
                continue;
            }
            if c.not_null {
                return Err(incompatible(format!(
                    "new column {} is NOT NULL, which existing rows cannot satisfy; add it nullable",
                    c.name
                )));
            }
            let _ = writeln!(
                sql,
                "ALTER TABLE {} ADD COLUMN {};",
                qualified(s, &table.name),
                column_sql(c)
            );
        }
        for fk in &table.foreign_keys {
            match old.foreign_keys.iter().find(|o| o.column == fk.column) {
                None => fks.push_str(&foreign_key_sql(current, table, fk)),
                Some(o) if o != fk => {
                    return Err(incompatible(format!(
                        "foreign key on {} changed",
                        fk.column
                    )));
                }
                Some(_) => {}
            }
        }
        for old_fk in &old.foreign_keys {
            if !table.foreign_keys.iter().any(|f| f.column == old_fk.column) {
                return Err(incompatible(format!(
                    "foreign key on {} was removed",
                    old_fk.column
                )));
            }
        }
        for cols in &table.unique {
            if !old.unique.contains(cols) {
                sql.push_str(&unique_sql(s, table, cols));
            }
        }
    }
    sql.push_str(&fks);
    if sql.is_empty() {
        return Ok(None);
    }
    Ok(Some(sql))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ServerSchemaError + '_ {
    move |source| ServerSchemaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Numbered migrations (`NNNN_name.sql`) of `dir`, sorted by number.
fn migration_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ServerSchemaError> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let Some((number, _)) = stem.split_once('_') else {
            continue;
        };
        if let Ok(n) = number.parse::<u64>() {
            files.push((n, path));
        }
    }
    files.sort();
    Ok(files)
}

/// The schema snapshot recorded in the newest generated migration of `dir`.
pub fn latest_snapshot(dir: &Path) -> Result<Option<ServerSchema>, ServerSchemaError> {
    for (_, path) in migration_files(dir)?.into_iter().rev() {
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let Some(line) = text.lines().find(|l| l.starts_with(SNAPSHOT_MARKER)) else {
            continue;
        };
        let json = &line[SNAPSHOT_MARKER.len()..];
        return serde_json::from_str(json)
            .map(Some)
            .map_err(|e| ServerSchemaError::BadSnapshot {
                path: path.clone(),
                reason: e.to_string(),
            });
    }
    Ok(None)
}

/// Writes the next server migration for `schema` into `dir` (created if missing):
/// `0001_<name>.sql` with the full DDL the first time, then the forward DDL since the newest
/// snapshot. Returns the new file, or `None` when the schema is unchanged. `name` must
/// match `^[a-z0-9_]+$`.
pub fn write_server_migration(
    dir: &Path,
    name: &str,
    schema: &ServerSchema,
) -> Result<Option<PathBuf>, ServerSchemaError> {
    valid_name("migration name", name)?;
    let body = match latest_snapshot(dir)? {
        None => postgres_ddl(schema),
        Some(previous) => match migration_ddl(&previous, schema)? {
            None => return Ok(None),
            Some(sql) => sql,
        },
    };
    let next = migration_files(dir)?.last().map_or(1, |(n, _)| n + 1);
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join(format!("{next:04}_{name}.sql"));
    // Serializing plain strings and bools cannot fail.
    let snapshot = serde_json::to_string(schema).unwrap_or_default();
    let text = format!(
        "{SNAPSHOT_MARKER}{snapshot}\n-- Generated by oversync_diesel::server_schema; apply with `oversync-server migrate`.\n-- Never edit an applied migration: change the models and generate the next one.\n\n{body}"
    );
    std::fs::write(&path, text).map_err(io_error(&path))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;

    fn conn(sql: &str) -> SqliteConnection {
        let mut c = SqliteConnection::establish(":memory:").unwrap();
        c.batch_execute(sql).unwrap();
        c
    }

    const TODOS: &str = "
        CREATE TABLE _sync_managed_tables (schema_name TEXT NOT NULL, table_name TEXT NOT NULL,
            PRIMARY KEY (schema_name, table_name));
        CREATE TABLE tags (id TEXT PRIMARY KEY NOT NULL, label TEXT NOT NULL UNIQUE);
        CREATE TABLE todos (
            id BLOB PRIMARY KEY NOT NULL,
            title VARCHAR(200) NOT NULL,
            done BOOLEAN NOT NULL DEFAULT 0,
            priority INTEGER,
            weight DOUBLE,
            due TIMESTAMP,
            attachment BLOB,
            tag_id TEXT REFERENCES tags(id) ON DELETE CASCADE,
            parent_id BLOB REFERENCES todos(id) ON DELETE SET NULL
        );
        INSERT INTO _sync_managed_tables VALUES ('main', 'tags'), ('main', 'todos');
    ";

    #[test]
    fn maps_types_keys_and_foreign_keys() {
        let mut c = conn(TODOS);
        let schema = read_tables(&mut c, "app", &[]).unwrap();
        let ddl = postgres_ddl(&schema);
        let expected = r#"CREATE SCHEMA IF NOT EXISTS "app";

CREATE TABLE "app"."tags" (
    "_sync_scope_id" text NOT NULL,
    "id" uuid NOT NULL,
    "label" text NOT NULL,
    PRIMARY KEY ("_sync_scope_id", "id")
);
CREATE UNIQUE INDEX "tags_label_key" ON "app"."tags" ("_sync_scope_id", "label");

CREATE TABLE "app"."todos" (
    "_sync_scope_id" text NOT NULL,
    "id" uuid NOT NULL,
    "title" text NOT NULL,
    "done" boolean NOT NULL,
    "priority" bigint,
    "weight" double precision,
    "due" text,
    "attachment" bytea,
    "tag_id" uuid,
    "parent_id" uuid,
    PRIMARY KEY ("_sync_scope_id", "id")
);

ALTER TABLE "app"."todos" ADD CONSTRAINT "todos_tag_id_fkey" FOREIGN KEY ("_sync_scope_id", "tag_id") REFERENCES "app"."tags" ("_sync_scope_id", "id") ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE "app"."todos" ADD CONSTRAINT "todos_parent_id_fkey" FOREIGN KEY ("_sync_scope_id", "parent_id") REFERENCES "app"."todos" ("_sync_scope_id", "id") ON DELETE SET NULL ("parent_id") DEFERRABLE INITIALLY DEFERRED;
"#;
        assert_eq!(ddl, expected);
    }

    #[test]
    fn refuses_what_the_server_cannot_serve() {
        let mut c = conn("CREATE TABLE t (id TEXT PRIMARY KEY, amount NUMERIC)");
        let err = read_tables(&mut c, "app", &["t"]).unwrap_err();
        assert!(
            matches!(&err, ServerSchemaError::UnsupportedType { column, .. } if column == "amount"),
            "{err}"
        );
        let mut c = conn("CREATE TABLE t (a TEXT, b TEXT, PRIMARY KEY (a, b))");
        assert!(matches!(
            read_tables(&mut c, "app", &["t"]).unwrap_err(),
            ServerSchemaError::NoKey { .. }
        ));
        let mut c = conn(
            "CREATE TABLE p (id TEXT PRIMARY KEY, code TEXT UNIQUE);
             CREATE TABLE c (id TEXT PRIMARY KEY, p_code TEXT REFERENCES p(code));",
        );
        let err = read_tables(&mut c, "app", &["p", "c"]).unwrap_err();
        assert!(
            err.to_string().contains("only the parent's sync key"),
            "{err}"
        );
        let err = read_tables(&mut c, "app", &["c"]).unwrap_err();
        assert!(err.to_string().contains("FK-closed"), "{err}");
        let mut c = conn("CREATE TABLE Bad (id TEXT PRIMARY KEY)");
        assert!(matches!(
            read_tables(&mut c, "app", &["Bad"]).unwrap_err(),
            ServerSchemaError::InvalidName { what: "table", .. }
        ));
        let mut c = conn("CREATE TABLE t (id TEXT PRIMARY KEY)");
        assert!(matches!(
            read_tables(&mut c, "App", &["t"]).unwrap_err(),
            ServerSchemaError::InvalidName { what: "schema", .. }
        ));
    }

    #[test]
    fn migrations_are_numbered_and_additive() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = conn(TODOS);
        let v1 = read_tables(&mut c, "app", &[]).unwrap();
        let first = write_server_migration(dir.path(), "initial", &v1)
            .unwrap()
            .unwrap();
        assert!(first.ends_with("0001_initial.sql"));
        assert_eq!(
            write_server_migration(dir.path(), "again", &v1).unwrap(),
            None
        );
        c.batch_execute(
            "ALTER TABLE todos ADD COLUMN note TEXT;
             CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, todo_id TEXT NOT NULL REFERENCES todos(id) ON DELETE CASCADE);
             INSERT INTO _sync_managed_tables VALUES ('main', 'notes');",
        )
        .unwrap();
        let v2 = read_tables(&mut c, "app", &[]).unwrap();
        let second = write_server_migration(dir.path(), "note", &v2)
            .unwrap()
            .unwrap();
        assert!(second.ends_with("0002_note.sql"));
        let text = std::fs::read_to_string(&second).unwrap();
        assert!(text.contains(r#"ALTER TABLE "app"."todos" ADD COLUMN "note" text;"#));
        assert!(text.contains(r#"CREATE TABLE "app"."notes""#));
        assert!(text.contains(r#"REFERENCES "app"."todos" ("_sync_scope_id", "id") ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED"#));
        assert!(!text.contains(r#"CREATE TABLE "app"."todos""#));
        assert_eq!(latest_snapshot(dir.path()).unwrap(), Some(v2.clone()));

        c.batch_execute("ALTER TABLE todos ADD COLUMN rank INTEGER NOT NULL DEFAULT 0")
            .unwrap();
        let v3 = read_tables(&mut c, "app", &[]).unwrap();
        let err = write_server_migration(dir.path(), "rank", &v3).unwrap_err();
        assert!(err.to_string().contains("rank is NOT NULL"), "{err}");
        c.batch_execute("ALTER TABLE todos DROP COLUMN rank; ALTER TABLE todos DROP COLUMN note")
            .unwrap();
        let v4 = read_tables(&mut c, "app", &[]).unwrap();
        let err = write_server_migration(dir.path(), "drop", &v4).unwrap_err();
        assert!(err.to_string().contains("column note was removed"), "{err}");
    }
}
