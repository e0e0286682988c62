//! Read-only checks `open()` makes before it changes anything: the database must match the
//! registered models and the sync migrations must be installed.

use crate::codec::UuidRefs;
use crate::config::OversyncConfig;
use crate::error::{Error, SchemaError};
use crate::order::PushOrder;
use crate::table::{KeyKind, TableSpec};
use diesel::prelude::*;
use diesel::sql_types::{Integer, Nullable, Text};
use diesel::{QueryableByName, SqliteConnection, sql_query};

/// The metadata tables the sync migrations create.
pub(crate) const METADATA_TABLES: &[&str] = &[
    "_sync_managed_tables",
    "_sync_dirty_rows",
    "_sync_row_state",
    "_sync_apply_state",
    "_sync_source_state",
    "_sync_attachment_state",
    "_sync_operation_state",
    "_sync_outbox_bundle",
    "_sync_outbox_rows",
    "_sync_push_stage",
    "_sync_snapshot_stage",
    "_sync_install_identity",
    "_sync_quarantine",
];

#[derive(QueryableByName)]
struct TableColumn {
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
struct ForeignKey {
    #[diesel(sql_type = Text)]
    to_table: String,
    #[diesel(sql_type = Text)]
    from_column: String,
}

#[derive(QueryableByName)]
struct SqlText {
    #[diesel(sql_type = Nullable<Text>)]
    sql: Option<String>,
}

fn object_sql(
    conn: &mut SqliteConnection,
    kind: &str,
    name: &str,
) -> QueryResult<Option<Option<String>>> {
    sql_query("SELECT sql FROM sqlite_master WHERE type = ? AND name = ? COLLATE NOCASE")
        .bind::<Text, _>(kind)
        .bind::<Text, _>(name)
        .get_result::<SqlText>(conn)
        .optional()
        .map(|row| row.map(|r| r.sql))
}

/// Checks everything; returns the first problem found, table by table in config order.
/// On success returns the BLOB foreign-key columns, which hold UUIDs, and the order pushes
/// carry rows in (from the foreign keys between the managed tables).
pub(crate) fn validate(
    conn: &mut SqliteConnection,
    config: &OversyncConfig,
) -> Result<(UuidRefs, PushOrder), Error> {
    for table in METADATA_TABLES {
        if object_sql(conn, "table", table)?.is_none() {
            return Err(SchemaError::MetadataMissing {
                table: (*table).to_string(),
            }
            .into());
        }
    }
    let mut refs = UuidRefs::new();
    let mut edges = Vec::new();
    for spec in config.tables() {
        let (blob_fks, parents) = validate_table(conn, config, spec)?;
        if !blob_fks.is_empty() {
            refs.insert(spec.table_name, blob_fks);
        }
        edges.extend(
            parents
                .into_iter()
                .map(|p| (spec.table_name.to_string(), p)),
        );
    }
    let names: Vec<&str> = config.tables().iter().map(|t| t.table_name).collect();
    let order = PushOrder::new(&names, &edges);
    let stored = crate::state::attachment_state(conn)?.schema_name;
    if !stored.is_empty() && stored != config.schema() {
        return Err(SchemaError::SchemaNameMismatch {
            stored,
            configured: config.schema().to_string(),
        }
        .into());
    }
    Ok((refs, order))
}

/// Checks one table; returns its BLOB foreign-key columns and the tables it references.
fn validate_table(
    conn: &mut SqliteConnection,
    config: &OversyncConfig,
    spec: &TableSpec,
) -> Result<(std::collections::HashSet<String>, Vec<String>), Error> {
    let table = spec.table_name.to_string();
    if object_sql(conn, "table", spec.table_name)?.is_none() {
        return Err(SchemaError::TableMissing { table }.into());
    }
    let columns: Vec<TableColumn> = sql_query(
        "SELECT name, type AS decl_type, \"notnull\" AS not_null, pk FROM pragma_table_info(?)",
    )
    .bind::<Text, _>(spec.table_name)
    .load(conn)?;

    for col in spec.columns {
        if !columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(col.name))
        {
            return Err(SchemaError::ColumnMissing {
                table,
                column: col.name.to_string(),
            }
            .into());
        }
    }
    for col in &columns {
        let Some(model) = spec.column(&col.name) else {
            return Err(SchemaError::UnexpectedColumn {
                table,
                column: col.name.clone(),
            }
            .into());
        };
        let declared_blob = col.decl_type.to_ascii_uppercase().contains("BLOB");
        let is_key = col.name.eq_ignore_ascii_case(spec.key_column);
        if is_key {
            let pk_columns = columns.iter().filter(|c| c.pk > 0).count();
            if col.pk != 1 || pk_columns != 1 {
                return Err(SchemaError::KeyNotPrimaryKey {
                    table,
                    column: col.name.clone(),
                }
                .into());
            }
            if col.not_null == 0 {
                return Err(SchemaError::KeyNullable {
                    table,
                    column: col.name.clone(),
                }
                .into());
            }
            let upper = col.decl_type.to_ascii_uppercase();
            let declared_text = ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t));
            let ok = match spec.key_kind {
                KeyKind::Text => declared_text,
                KeyKind::Blob => declared_blob,
            };
            if !ok {
                return Err(SchemaError::KeyType {
                    table,
                    column: col.name.clone(),
                    declared: col.decl_type.clone(),
                    expected: spec.key_kind,
                }
                .into());
            }
        } else if declared_blob != model.is_blob {
            return Err(SchemaError::BlobMismatch {
                table,
                column: col.name.clone(),
                declared: col.decl_type.clone(),
                model_is_blob: model.is_blob,
            }
            .into());
        }
    }

    let foreign_keys: Vec<ForeignKey> = sql_query(
        "SELECT \"table\" AS to_table, \"from\" AS from_column FROM pragma_foreign_key_list(?)",
    )
    .bind::<Text, _>(spec.table_name)
    .load(conn)?;
    let mut blob_fks = std::collections::HashSet::new();
    let mut parents = Vec::new();
    for fk in foreign_keys {
        if spec.column(&fk.from_column).is_some_and(|c| c.is_blob) {
            blob_fks.insert(fk.from_column.to_lowercase());
        }
        if config.table_named(&fk.to_table).is_none() {
            return Err(SchemaError::ForeignKeyOutsideManagedSet {
                table,
                column: fk.from_column,
                references: fk.to_table,
            }
            .into());
        }
        parents.push(fk.to_table);
    }

    let registered = sql_query(
        "SELECT table_name AS sql FROM _sync_managed_tables WHERE schema_name = 'main' AND table_name = ? COLLATE NOCASE",
    )
    .bind::<Text, _>(spec.table_name)
    .get_result::<SqlText>(conn)
    .optional()?;
    if registered.is_none() {
        return Err(SchemaError::NotRegistered { table }.into());
    }

    for trigger in spec.triggers {
        match object_sql(conn, "trigger", trigger.name)? {
            None => {
                return Err(SchemaError::TriggerMissing {
                    table,
                    trigger: trigger.name.to_string(),
                }
                .into());
            }
            Some(installed) => {
                if normalize_sql(installed.as_deref().unwrap_or("")) != normalize_sql(trigger.sql) {
                    return Err(SchemaError::TriggerStale {
                        table,
                        trigger: trigger.name.to_string(),
                    }
                    .into());
                }
            }
        }
    }
    Ok((blob_fks, parents))
}

fn normalize_sql(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
