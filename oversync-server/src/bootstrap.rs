//! Bootstrap: validates the registered business tables against the supported envelope,
//! creates the `sync` schema and installs the owner-guard and capture triggers.

use crate::config::TableSpec;
use crate::sql::{quote_literal, table_ident};
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio_postgres::GenericClient;

/// The hidden owner column every registered table carries.
pub const SCOPE_COLUMN: &str = "_sync_scope_id";

/// Why bootstrap refused to start. `Unsupported` names the table and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A registered table falls outside the supported schema envelope.
    #[error("registered table {table} is unsupported: {rule}")]
    Unsupported {
        /// `schema.table`.
        table: String,
        /// The rule, in words.
        rule: String,
    },
    /// The configuration itself is invalid (no tables, bad names, duplicates).
    #[error("invalid sync configuration: {0}")]
    InvalidConfig(String),
    /// Database failure while inspecting or creating objects.
    #[error("bootstrap database error: {0}")]
    Database(#[from] tokio_postgres::Error),
}

fn unsupported(table: &str, rule: impl Into<String>) -> BootstrapError {
    BootstrapError::Unsupported {
        table: table.to_owned(),
        rule: rule.into(),
    }
}

/// Kind of the visible sync key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// PostgreSQL `uuid`; wire value is the canonical lowercase dashed string.
    Uuid,
    /// PostgreSQL `text`.
    Text,
}

/// Runtime metadata of one registered table.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// Stable id in `sync.table_catalog`.
    pub id: i32,
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Sync key column.
    pub key_column: String,
    /// Sync key kind.
    pub key_kind: KeyKind,
    /// Visible columns (name → PostgreSQL udt name), hidden scope column excluded.
    pub columns: BTreeMap<String, String>,
}

impl TableInfo {
    /// `"schema"."table"`.
    pub fn ident(&self) -> String {
        table_ident(&self.schema, &self.table)
    }

    /// Whether `column` holds binary data (base64 on the wire).
    pub fn is_bytea(&self, column: &str) -> bool {
        self.columns.get(column).map(String::as_str) == Some("bytea")
    }

    /// SQL cast applied to a `text[]` parameter holding key values.
    pub fn key_array_cast(&self) -> &'static str {
        match self.key_kind {
            KeyKind::Uuid => "::text[]::uuid[]",
            KeyKind::Text => "::text[]",
        }
    }

    /// SQL cast applied to a text parameter holding a key value.
    pub fn key_cast(&self) -> &'static str {
        match self.key_kind {
            KeyKind::Uuid => "::text::uuid",
            KeyKind::Text => "::text",
        }
    }
}

/// The validated set of registered tables.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    tables: Vec<TableInfo>,
    by_name: HashMap<(String, String), usize>,
    by_id: HashMap<i32, usize>,
}

impl Registry {
    /// Tables in `table_id` order.
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// Lookup by schema and table name.
    pub fn by_name(&self, schema: &str, table: &str) -> Option<&TableInfo> {
        self.by_name
            .get(&(schema.to_owned(), table.to_owned()))
            .map(|&i| &self.tables[i])
    }

    /// Lookup by catalog id.
    pub fn by_id(&self, id: i32) -> Option<&TableInfo> {
        self.by_id.get(&id).map(|&i| &self.tables[i])
    }

    /// Sorted `schema.table` names.
    pub fn qualified_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{}.{}", t.schema, t.table))
            .collect();
        names.sort();
        names
    }
}

impl Registry {
    /// Replaces the visible columns of `schema.table`; false when the table is unknown or
    /// the columns are unchanged.
    pub(crate) fn set_columns(
        &mut self,
        schema: &str,
        table: &str,
        columns: BTreeMap<String, String>,
    ) -> bool {
        let Some(&i) = self.by_name.get(&(schema.to_owned(), table.to_owned())) else {
            return false;
        };
        if self.tables[i].columns == columns {
            return false;
        }
        self.tables[i].columns = columns;
        true
    }
}

/// Visible columns (name → udt name) of `schema.table` as the catalog has them now.
pub(crate) async fn read_columns(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<BTreeMap<String, String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = $2 AND column_name <> $3",
            &[&schema, &table, &SCOPE_COLUMN],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Lower-case ASCII letters, digits and `_`, as the reference accepts.
pub(crate) fn is_valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

const BOOTSTRAP_LOCK_KEY: i64 = 0x6f76_6572_7379_6e63;

/// Validates `specs`, creates or checks the `sync` schema and installs triggers, all in one
/// transaction serialized by an advisory lock. Returns the runtime registry.
pub async fn bootstrap(
    client: &mut tokio_postgres::Client,
    specs: &[TableSpec],
) -> Result<Registry, BootstrapError> {
    validate_config(specs)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK_KEY])
        .await?;
    let mut infos = inspect_tables(&tx, specs).await?;
    validate_unique_indexes(&tx, &infos).await?;
    validate_foreign_keys(&tx, &infos).await?;
    tx.batch_execute(SYNC_SCHEMA_SQL).await?;
    assign_catalog_ids(&tx, &mut infos).await?;
    for info in &infos {
        install_triggers(&tx, info).await?;
    }
    tx.commit().await?;

    let mut registry = Registry::default();
    infos.sort_by_key(|t| t.id);
    for (i, info) in infos.into_iter().enumerate() {
        registry
            .by_name
            .insert((info.schema.clone(), info.table.clone()), i);
        registry.by_id.insert(info.id, i);
        registry.tables.push(info);
    }
    Ok(registry)
}

/// The specs to register for `schema`: the listed `tables`, or (when `None`) every table
/// of the schema that carries [`SCOPE_COLUMN`]. Each key column is read from the table's
/// primary key `(_sync_scope_id, key)`; a table without one gets `id`, and bootstrap then
/// names what is missing.
pub async fn resolve_table_specs(
    client: &impl GenericClient,
    schema: &str,
    tables: Option<&[String]>,
) -> Result<Vec<TableSpec>, BootstrapError> {
    let names: Vec<String> = match tables {
        Some(t) => t.to_vec(),
        None => client
            .query(
                "SELECT c.relname::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attname = $2
                 ORDER BY c.relname",
                &[&schema, &SCOPE_COLUMN],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    if names.is_empty() {
        return Err(BootstrapError::InvalidConfig(format!(
            "schema {schema} has no table with the owner column {SCOPE_COLUMN}: apply the server migrations (oversync-server migrate) or list the tables in sync.tables"
        )));
    }
    let mut specs = Vec::with_capacity(names.len());
    for table in names {
        let pk: Vec<String> = client
            .query_opt(
                "SELECT ARRAY(SELECT a.attname::text FROM unnest(idx.indkey) WITH ORDINALITY k(n, o)
                              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.n ORDER BY k.o)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_index idx ON idx.indrelid = c.oid AND idx.indisprimary
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&schema, &table],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or_default();
        let key = match pk.as_slice() {
            [scope, key] if scope == SCOPE_COLUMN => key.clone(),
            _ => "id".to_owned(),
        };
        specs.push(TableSpec::new(schema, &table, &key));
    }
    Ok(specs)
}

fn validate_config(specs: &[TableSpec]) -> Result<(), BootstrapError> {
    let mut seen = HashSet::new();
    for spec in specs {
        let name = spec.qualified_name();
        for (what, value) in [
            ("schema", &spec.schema),
            ("table", &spec.table),
            ("key column", &spec.key_column),
        ] {
            if !is_valid_identifier(value) {
                return Err(BootstrapError::InvalidConfig(format!(
                    "{name}: {what} {value:?} must match ^[a-z0-9_]+$"
                )));
            }
        }
        if spec.key_column == SCOPE_COLUMN {
            return Err(unsupported(
                &name,
                format!("the hidden scope column {SCOPE_COLUMN} cannot be the sync key"),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(BootstrapError::InvalidConfig(format!(
                "{name} is registered twice"
            )));
        }
    }
    Ok(())
}

async fn inspect_tables(
    tx: &impl GenericClient,
    specs: &[TableSpec],
) -> Result<Vec<TableInfo>, BootstrapError> {
    let mut infos = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.qualified_name();
        let rows = tx
            .query(
                "SELECT column_name::text, udt_name::text, is_nullable::text = 'YES'
                 FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = $2
                 ORDER BY ordinal_position",
                &[&spec.schema, &spec.table],
            )
            .await?;
        if rows.is_empty() {
            return Err(unsupported(&name, "table does not exist"));
        }
        let mut columns = BTreeMap::new();
        let mut scope: Option<(String, bool)> = None;
        for row in rows {
            let column: String = row.get(0);
            let udt: String = row.get(1);
            let nullable: bool = row.get(2);
            if column == SCOPE_COLUMN {
                scope = Some((udt, nullable));
            } else {
                columns.insert(column, udt);
            }
        }
        match scope {
            Some((udt, false)) if udt == "text" => {}
            _ => {
                return Err(unsupported(
                    &name,
                    format!("must define the owner column {SCOPE_COLUMN} TEXT NOT NULL"),
                ));
            }
        }
        let key_kind = match columns.get(&spec.key_column).map(String::as_str) {
            Some("uuid") => KeyKind::Uuid,
            Some("text") => KeyKind::Text,
            Some(other) => {
                return Err(unsupported(
                    &name,
                    format!(
                        "sync key column {} has type {other}; only uuid and text are supported",
                        spec.key_column
                    ),
                ));
            }
            None => {
                return Err(unsupported(
                    &name,
                    format!("sync key column {} does not exist", spec.key_column),
                ));
            }
        };
        infos.push(TableInfo {
            id: 0,
            schema: spec.schema.clone(),
            table: spec.table.clone(),
            key_column: spec.key_column.clone(),
            key_kind,
            columns,
        });
    }
    Ok(infos)
}

async fn validate_unique_indexes(
    tx: &impl GenericClient,
    infos: &[TableInfo],
) -> Result<(), BootstrapError> {
    for info in infos {
        let name = format!("{}.{}", info.schema, info.table);
        let rows = tx
            .query(
                "SELECT i.relname::text, idx.indpred IS NOT NULL, idx.indexprs IS NOT NULL,
                        ARRAY(SELECT COALESCE(a.attname::text, '')
                              FROM unnest(idx.indkey) WITH ORDINALITY AS k(attnum, ord)
                              LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                              ORDER BY k.ord)
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_index idx ON idx.indrelid = c.oid
                 JOIN pg_class i ON i.oid = idx.indexrelid
                 WHERE n.nspname = $1 AND c.relname = $2 AND idx.indisunique
                 ORDER BY i.relname",
                &[&info.schema, &info.table],
            )
            .await?;
        let mut has_identity = false;
        for row in rows {
            let index: String = row.get(0);
            let partial: bool = row.get(1);
            let expressions: bool = row.get(2);
            let cols: Vec<String> = row.get(3);
            if partial || expressions {
                return Err(unsupported(
                    &name,
                    format!("partial or expression unique index {index} is not supported"),
                ));
            }
            if cols.first().map(String::as_str) != Some(SCOPE_COLUMN) {
                return Err(unsupported(
                    &name,
                    format!("unique index {index} must begin with {SCOPE_COLUMN}"),
                ));
            }
            if cols.len() == 2 && cols[1] == info.key_column {
                has_identity = true;
            }
        }
        if !has_identity {
            return Err(unsupported(
                &name,
                format!(
                    "must have a unique constraint on ({SCOPE_COLUMN}, {})",
                    info.key_column
                ),
            ));
        }
    }
    Ok(())
}

async fn validate_foreign_keys(
    tx: &impl GenericClient,
    infos: &[TableInfo],
) -> Result<(), BootstrapError> {
    let registered: HashMap<(String, String), &TableInfo> = infos
        .iter()
        .map(|t| ((t.schema.clone(), t.table.clone()), t))
        .collect();
    for info in infos {
        let name = format!("{}.{}", info.schema, info.table);
        let rows = tx
            .query(
                "SELECT con.conname::text, pn.nspname::text, pc.relname::text, con.condeferrable,
                        ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                              JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
                        ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                              JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
                 FROM pg_constraint con
                 JOIN pg_class c ON c.oid = con.conrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_class pc ON pc.oid = con.confrelid
                 JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                 WHERE con.contype = 'f' AND n.nspname = $1 AND c.relname = $2
                 ORDER BY con.conname",
                &[&info.schema, &info.table],
            )
            .await?;
        for row in rows {
            let constraint: String = row.get(0);
            let parent_schema: String = row.get(1);
            let parent_table: String = row.get(2);
            let deferrable: bool = row.get(3);
            let cols: Vec<String> = row.get(4);
            let parent_cols: Vec<String> = row.get(5);
            let Some(parent) = registered.get(&(parent_schema.clone(), parent_table.clone()))
            else {
                return Err(unsupported(
                    &name,
                    format!(
                        "foreign key {constraint} references {parent_schema}.{parent_table}, which is not registered (the table set must be FK-closed)"
                    ),
                ));
            };
            if !deferrable {
                return Err(unsupported(
                    &name,
                    format!("foreign key {constraint} must be DEFERRABLE"),
                ));
            }
            let scoped = cols.len() == 2
                && cols[0] == SCOPE_COLUMN
                && parent_cols.len() == 2
                && parent_cols[0] == SCOPE_COLUMN
                && parent_cols[1] == parent.key_column;
            if !scoped {
                return Err(unsupported(
                    &name,
                    format!(
                        "foreign key {constraint} must be scope-inclusive: ({SCOPE_COLUMN}, col) REFERENCES {parent_schema}.{parent_table} ({SCOPE_COLUMN}, {})",
                        parent.key_column
                    ),
                ));
            }
        }
    }
    Ok(())
}

async fn assign_catalog_ids(
    tx: &impl GenericClient,
    infos: &mut [TableInfo],
) -> Result<(), BootstrapError> {
    for info in infos.iter_mut() {
        let kind = match info.key_kind {
            KeyKind::Uuid => "uuid",
            KeyKind::Text => "text",
        };
        // Existing ids are kept so stored history stays readable across restarts.
        let row = tx
            .query_one(
                "INSERT INTO sync.table_catalog (table_id, schema_name, table_name, key_column, key_kind)
                 VALUES ((SELECT COALESCE(MAX(table_id), 0) + 1 FROM sync.table_catalog), $1, $2, $3, $4)
                 ON CONFLICT (schema_name, table_name)
                 DO UPDATE SET key_column = EXCLUDED.key_column, key_kind = EXCLUDED.key_kind
                 RETURNING table_id",
                &[&info.schema, &info.table, &info.key_column, &kind],
            )
            .await?;
        info.id = row.get(0);
    }
    Ok(())
}

async fn install_triggers(tx: &impl GenericClient, info: &TableInfo) -> Result<(), BootstrapError> {
    let table = info.ident();
    let id = quote_literal(&info.id.to_string());
    let key = quote_literal(&info.key_column);
    // Inserts are captured once per statement from its transition table: a PL/pgSQL call
    // and a stage insert per row was most of a bulk apply. A transition table misses rows
    // inserted straight into a partition or an inheritance child, so such tables (and
    // partitions themselves, which cannot have one) keep the row-level capture.
    let plain: bool = tx
        .query_one(
            "SELECT c.relkind = 'r' AND NOT c.relispartition
                    AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&info.schema, &info.table],
        )
        .await?
        .get(0);
    let capture = if plain {
        format!(
            "CREATE TRIGGER oversync_capture AFTER UPDATE OR DELETE ON {table}
               FOR EACH ROW EXECUTE FUNCTION sync.capture_row_change({id}, {key});
             CREATE TRIGGER oversync_capture_insert AFTER INSERT ON {table}
               REFERENCING NEW TABLE AS oversync_inserted
               FOR EACH STATEMENT EXECUTE FUNCTION sync.capture_inserted_rows({id}, {key});"
        )
    } else {
        format!(
            "CREATE TRIGGER oversync_capture AFTER INSERT OR UPDATE OR DELETE ON {table}
               FOR EACH ROW EXECUTE FUNCTION sync.capture_row_change({id}, {key});"
        )
    };
    let sql = format!(
        "DROP TRIGGER IF EXISTS oversync_owner_guard ON {table};
         DROP TRIGGER IF EXISTS oversync_capture ON {table};
         DROP TRIGGER IF EXISTS oversync_capture_insert ON {table};
         CREATE TRIGGER oversync_owner_guard BEFORE INSERT OR UPDATE OR DELETE ON {table}
           FOR EACH ROW EXECUTE FUNCTION sync.guard_row_owner();
         {capture}"
    );
    tx.batch_execute(&sql).await?;
    Ok(())
}

/// DDL of the `sync` schema; idempotent.
const SYNC_SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS sync;

-- Every per-user table is keyed by the user first, so the schema can be distributed by user.
-- Databases bootstrapped before that had the session tables and the capture stage keyed by
-- a session id or ordinal alone. They hold only transient state, so they are recreated:
-- a push or snapshot in flight during the upgrade restarts (its session is not found).
DO $upgrade$
BEGIN
    IF to_regclass('sync.push_session_rows') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM information_schema.columns
         WHERE table_schema = 'sync' AND table_name = 'push_session_rows' AND column_name = 'user_pk'
    ) THEN
        DROP TABLE IF EXISTS sync.push_session_rows, sync.push_sessions,
            sync.snapshot_rows, sync.snapshot_sessions, sync.capture_stage;
    END IF;
END
$upgrade$;

CREATE TABLE IF NOT EXISTS sync.table_catalog (
    table_id INTEGER PRIMARY KEY,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    key_column TEXT NOT NULL,
    key_kind TEXT NOT NULL CHECK (key_kind IN ('uuid', 'text')),
    UNIQUE (schema_name, table_name)
);

-- One row per user: bundle sequence, retained floor and scope (initialization) state.
CREATE TABLE IF NOT EXISTS sync.user_state (
    user_pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE,
    next_bundle_seq BIGINT NOT NULL DEFAULT 1 CHECK (next_bundle_seq >= 1),
    retained_bundle_floor BIGINT NOT NULL DEFAULT 0,
    scope_state SMALLINT NOT NULL DEFAULT 0 CHECK (scope_state IN (0, 1, 2)),
    initializer_source_id TEXT,
    initialization_id UUID,
    lease_expires_at TIMESTAMPTZ,
    initialized_at TIMESTAMPTZ,
    initialized_by_source_id TEXT,
    CHECK (retained_bundle_floor >= 0 AND retained_bundle_floor <= next_bundle_seq - 1)
);

CREATE TABLE IF NOT EXISTS sync.source_state (
    user_pk BIGINT NOT NULL REFERENCES sync.user_state(user_pk) ON DELETE CASCADE,
    source_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'reserved', 'retired')),
    max_committed_source_bundle_id BIGINT NOT NULL DEFAULT 0,
    replaced_by_source_id TEXT,
    retirement_reason TEXT,
    PRIMARY KEY (user_pk, source_id)
);

-- No foreign keys on the two tables a commit writes a row of per bundle row: PostgreSQL
-- checks a foreign key once per inserted row (the same parent every time), which cost more
-- than the insert itself. The ids come from the user's locked `user_state` row and the
-- registry; rows of a deleted user go by `sync.delete_user_rows`, of a pruned bundle by
-- retention. Databases bootstrapped before that lose the constraints here.
CREATE TABLE IF NOT EXISTS sync.row_state (
    user_pk BIGINT NOT NULL,
    table_id INTEGER NOT NULL,
    key_text TEXT NOT NULL,
    bundle_seq BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_pk, table_id, key_text)
);

-- Row effects captured by triggers inside the current transaction; emptied before commit.
CREATE UNLOGGED TABLE IF NOT EXISTS sync.capture_stage (
    ordinal BIGINT GENERATED ALWAYS AS IDENTITY,
    txid BIGINT NOT NULL,
    user_pk BIGINT NOT NULL,
    table_id INTEGER NOT NULL,
    op SMALLINT NOT NULL,
    key_text TEXT NOT NULL,
    payload JSONB,
    PRIMARY KEY (user_pk, ordinal)
);
CREATE INDEX IF NOT EXISTS capture_stage_txid_idx ON sync.capture_stage (txid, user_pk, ordinal);

CREATE TABLE IF NOT EXISTS sync.bundle_log (
    user_pk BIGINT NOT NULL REFERENCES sync.user_state(user_pk) ON DELETE CASCADE,
    bundle_seq BIGINT NOT NULL,
    source_id TEXT NOT NULL,
    source_bundle_id BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    byte_count BIGINT NOT NULL,
    bundle_hash TEXT NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_pk, bundle_seq),
    UNIQUE (user_pk, source_id, source_bundle_id)
);

CREATE TABLE IF NOT EXISTS sync.bundle_rows (
    user_pk BIGINT NOT NULL,
    bundle_seq BIGINT NOT NULL,
    row_ordinal BIGINT NOT NULL,
    table_id INTEGER NOT NULL,
    key_text TEXT NOT NULL,
    op SMALLINT NOT NULL CHECK (op IN (1, 2, 3)),
    payload TEXT,
    PRIMARY KEY (user_pk, bundle_seq, row_ordinal)
);
-- Deleted with their bundle by retention (see `sync.row_state` for why no foreign key).
-- The upgrade drops the old constraints only where they exist: `ALTER TABLE` locks the table
-- exclusively even when there is nothing to drop, and bootstrap runs on every start, also
-- beside other instances serving the same database.
DO $upgrade$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'sync.row_state'::regclass AND contype = 'f') THEN
        ALTER TABLE sync.row_state DROP CONSTRAINT IF EXISTS row_state_user_pk_fkey;
        ALTER TABLE sync.row_state DROP CONSTRAINT IF EXISTS row_state_table_id_fkey;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'sync.bundle_rows'::regclass AND contype = 'f') THEN
        ALTER TABLE sync.bundle_rows DROP CONSTRAINT IF EXISTS bundle_rows_user_pk_bundle_seq_fkey;
    END IF;
END
$upgrade$;

-- What the foreign keys' ON DELETE CASCADE did for a user deleted by hand: the per-row
-- tables go with the user (the other per-user tables still cascade).
CREATE OR REPLACE FUNCTION sync.delete_user_rows() RETURNS TRIGGER LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM sync.row_state WHERE user_pk = OLD.user_pk;
    DELETE FROM sync.bundle_rows WHERE user_pk = OLD.user_pk;
    RETURN OLD;
END
$fn$;
DO $upgrade$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'sync.user_state'::regclass
                     AND tgname = 'oversync_delete_user_rows') THEN
        CREATE TRIGGER oversync_delete_user_rows AFTER DELETE ON sync.user_state
            FOR EACH ROW EXECUTE FUNCTION sync.delete_user_rows();
    END IF;
END
$upgrade$;

CREATE TABLE IF NOT EXISTS sync.push_sessions (
    push_id UUID NOT NULL,
    user_pk BIGINT NOT NULL REFERENCES sync.user_state(user_pk) ON DELETE CASCADE,
    source_id TEXT NOT NULL,
    source_bundle_id BIGINT NOT NULL,
    planned_row_count BIGINT NOT NULL CHECK (planned_row_count > 0),
    next_expected_row_ordinal BIGINT NOT NULL DEFAULT 0,
    initialization_id UUID,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_pk, push_id),
    UNIQUE (user_pk, source_id, source_bundle_id)
);
CREATE INDEX IF NOT EXISTS push_sessions_expires_idx ON sync.push_sessions (expires_at);
-- Requests name a session by id alone (the owner is checked after loading it).
CREATE INDEX IF NOT EXISTS push_sessions_push_id_idx ON sync.push_sessions (push_id);

CREATE TABLE IF NOT EXISTS sync.push_session_rows (
    user_pk BIGINT NOT NULL,
    push_id UUID NOT NULL,
    row_ordinal BIGINT NOT NULL,
    table_id INTEGER NOT NULL,
    key_text TEXT NOT NULL,
    op SMALLINT NOT NULL CHECK (op IN (1, 2, 3)),
    base_row_version BIGINT NOT NULL,
    payload TEXT,
    PRIMARY KEY (user_pk, push_id, row_ordinal),
    FOREIGN KEY (user_pk, push_id) REFERENCES sync.push_sessions(user_pk, push_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS push_session_rows_push_id_idx ON sync.push_session_rows (push_id, row_ordinal);

CREATE TABLE IF NOT EXISTS sync.snapshot_sessions (
    snapshot_id UUID NOT NULL,
    user_pk BIGINT NOT NULL REFERENCES sync.user_state(user_pk) ON DELETE CASCADE,
    snapshot_bundle_seq BIGINT NOT NULL,
    row_count BIGINT NOT NULL DEFAULT 0,
    byte_count BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_pk, snapshot_id)
);
CREATE INDEX IF NOT EXISTS snapshot_sessions_expires_idx ON sync.snapshot_sessions (expires_at);
CREATE INDEX IF NOT EXISTS snapshot_sessions_snapshot_id_idx ON sync.snapshot_sessions (snapshot_id);

-- Unlogged: a snapshot is a copy the server can make again, so its rows skip the WAL. After a
-- crash PostgreSQL empties the table; a page of a session whose rows are gone answers not
-- found, and the client starts a new snapshot.
CREATE UNLOGGED TABLE IF NOT EXISTS sync.snapshot_rows (
    user_pk BIGINT NOT NULL,
    snapshot_id UUID NOT NULL,
    row_ordinal BIGINT NOT NULL,
    table_id INTEGER NOT NULL,
    key_text TEXT NOT NULL,
    row_version BIGINT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (user_pk, snapshot_id, row_ordinal),
    FOREIGN KEY (user_pk, snapshot_id) REFERENCES sync.snapshot_sessions(user_pk, snapshot_id) ON DELETE CASCADE
);
-- Databases bootstrapped before had the snapshot rows logged, and a second index on
-- `(snapshot_id, row_ordinal)`: one more b-tree insert per row of every snapshot build, for
-- no reader (pages are read on the primary key; the session row names the user).
DO $upgrade$
BEGIN
    IF to_regclass('sync.snapshot_rows_snapshot_id_idx') IS NOT NULL THEN
        DROP INDEX sync.snapshot_rows_snapshot_id_idx;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = 'sync.snapshot_rows'::regclass AND relpersistence = 'p') THEN
        ALTER TABLE sync.snapshot_rows SET UNLOGGED;
    END IF;
END
$upgrade$;

CREATE SEQUENCE IF NOT EXISTS sync.accepted_push_replay_seq;
CREATE SEQUENCE IF NOT EXISTS sync.rejected_registered_write_seq;
CREATE SEQUENCE IF NOT EXISTS sync.history_pruned_error_seq;

-- Registered tables may only be written inside a sync bundle (push commit or server write),
-- and only rows of the bundle's user: this is the database-level isolation guard.
CREATE OR REPLACE FUNCTION sync.guard_row_owner() RETURNS TRIGGER LANGUAGE plpgsql AS $fn$
DECLARE
    owner TEXT := NULLIF(current_setting('oversync.bundle_user_id', true), '');
BEGIN
    IF owner IS NULL THEN
        PERFORM nextval('sync.rejected_registered_write_seq');
        RAISE EXCEPTION 'write to registered table %.% requires an oversync bundle context',
            TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'P0001';
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW._sync_scope_id IS NULL OR NEW._sync_scope_id = '' THEN
            NEW._sync_scope_id := owner;
        ELSIF NEW._sync_scope_id <> owner THEN
            RAISE EXCEPTION 'scope mismatch on %.%', TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'P0001';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD._sync_scope_id <> owner THEN
        RAISE EXCEPTION 'scope mismatch on %.%', TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'P0001';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW._sync_scope_id IS DISTINCT FROM OLD._sync_scope_id THEN
            RAISE EXCEPTION 'scope change on %.% is not allowed', TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'P0001';
        END IF;
        RETURN NEW;
    END IF;
    RETURN OLD;
END
$fn$;

-- Records each row effect (including cascades and effects of other triggers) for the bundle.
CREATE OR REPLACE FUNCTION sync.capture_row_change() RETURNS TRIGGER LANGUAGE plpgsql AS $fn$
DECLARE
    v_user_pk BIGINT := NULLIF(current_setting('oversync.bundle_user_pk', true), '')::bigint;
    v_table_id INTEGER := TG_ARGV[0]::integer;
    v_key_column TEXT := TG_ARGV[1];
    old_key TEXT;
    new_key TEXT;
BEGIN
    IF v_user_pk IS NULL THEN
        RAISE EXCEPTION 'oversync bundle context is missing for %.%', TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_key := to_jsonb(OLD) ->> v_key_column;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_key := to_jsonb(NEW) ->> v_key_column;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO sync.capture_stage (txid, user_pk, table_id, op, key_text, payload)
        VALUES (txid_current(), v_user_pk, v_table_id, 3, old_key, NULL);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key THEN
        -- A key change is a delete of the old key and an insert of the new one.
        INSERT INTO sync.capture_stage (txid, user_pk, table_id, op, key_text, payload)
        VALUES (txid_current(), v_user_pk, v_table_id, 3, old_key, NULL);
        INSERT INTO sync.capture_stage (txid, user_pk, table_id, op, key_text, payload)
        VALUES (txid_current(), v_user_pk, v_table_id, 1, new_key, to_jsonb(NEW) - '_sync_scope_id');
        RETURN NEW;
    END IF;
    INSERT INTO sync.capture_stage (txid, user_pk, table_id, op, key_text, payload)
    VALUES (txid_current(), v_user_pk, v_table_id, CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE 2 END,
            new_key, to_jsonb(NEW) - '_sync_scope_id');
    RETURN NEW;
END
$fn$;

-- The INSERT side of `capture_row_change` for a whole statement: one stage insert from the
-- statement's transition table, in the order the rows were inserted (the stage's ordinal
-- keeps that order, as the row-level trigger's did).
CREATE OR REPLACE FUNCTION sync.capture_inserted_rows() RETURNS TRIGGER LANGUAGE plpgsql AS $fn$
DECLARE
    v_user_pk BIGINT := NULLIF(current_setting('oversync.bundle_user_pk', true), '')::bigint;
    v_table_id INTEGER := TG_ARGV[0]::integer;
    v_key_column TEXT := TG_ARGV[1];
BEGIN
    IF v_user_pk IS NULL THEN
        -- A statement that inserted nothing needs no context (the row trigger never fired).
        IF EXISTS (SELECT 1 FROM oversync_inserted) THEN
            RAISE EXCEPTION 'oversync bundle context is missing for %.%', TG_TABLE_SCHEMA, TG_TABLE_NAME;
        END IF;
        RETURN NULL;
    END IF;
    INSERT INTO sync.capture_stage (txid, user_pk, table_id, op, key_text, payload)
    SELECT txid_current(), v_user_pk, v_table_id, 1, r.doc ->> v_key_column, r.doc - '_sync_scope_id'
    FROM (SELECT to_jsonb(i) AS doc FROM oversync_inserted i) r;
    RETURN NULL;
END
$fn$;
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_valid_identifier("users_2"));
        assert!(!is_valid_identifier("Users"));
        assert!(!is_valid_identifier("a\"b"));
        assert!(!is_valid_identifier(""));
        assert!(!is_valid_identifier(&"a".repeat(64)));
    }

    #[test]
    fn config_validation_names_the_table() {
        let err =
            validate_config(&[TableSpec::new("business", "users", SCOPE_COLUMN)]).unwrap_err();
        assert!(err.to_string().contains("business.users"), "{err}");
        let err = validate_config(&[
            TableSpec::new("b", "t", "id"),
            TableSpec::new("b", "t", "id"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(validate_config(&[TableSpec::new("b", "T", "id")]).is_err());
    }
}
