//! The capture and guard triggers of one synced table, as SQLite SQL.
//!
//! Capture rules (one coalesced `_sync_dirty_rows` row per key, see the protocol README):
//! - a write's op is `UPDATE` when the server holds the key live (`_sync_row_state.deleted = 0`),
//!   else `INSERT`; so insert-then-update stays an INSERT and delete-then-reinsert of a synced
//!   row becomes an UPDATE;
//! - a delete of a row the server holds becomes `DELETE` (payload NULL), and so does a delete
//!   of a key still in the frozen outbox (its push may have committed; replay rebases the
//!   DELETE on the committed version); a delete of a row the server never had and no push
//!   carries removes the pending entry, leaving nothing to push;
//! - a key-changing update is a delete of the old key followed by a write of the new key;
//! - the upsert never rewrites `base_row_version` or `dirty_ordinal`, so the first touch keeps
//!   both (`dirty_ordinal` is the table's rowid, assigned as max + 1 without a scan).
//!
//! Every lookup is a primary-key or unique-index seek, so capture cost per row stays flat as
//! the dirty set grows. Nothing is captured while `_sync_apply_state.apply_mode = 1` (the
//! runtime is writing server data), and the guard triggers abort app writes with
//! `SYNC_TRANSITION_PENDING` while a destructive sync transition is in progress.

/// The local schema name recorded in `_sync_*` state; the remote schema is mapped at runtime.
pub const LOCAL_SCHEMA: &str = "main";

pub struct Column<'a> {
    pub name: &'a str,
    pub is_blob: bool,
    pub is_real: bool,
}

pub struct TableTriggers<'a> {
    pub table: &'a str,
    pub key_column: &'a str,
    pub key_is_blob: bool,
    pub columns: Vec<Column<'a>>,
}

pub struct Trigger {
    pub name: String,
    pub sql: String,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl TableTriggers<'_> {
    /// Trigger names follow the reference client (`trg_<table>_<suffix>`).
    fn trigger_name(&self, suffix: &str) -> String {
        format!("trg_{}_{}", self.table.to_lowercase(), suffix)
    }

    fn column_value(&self, row: &str, column: &str, is_blob: bool, is_real: bool) -> String {
        let value = format!("{row}.{}", ident(column));
        if is_blob {
            // hex() turns NULL into '' so NULL is kept explicitly; the wire encoding
            // (base64, or UUID text for keys) is applied when a push is frozen.
            format!("CASE WHEN {value} IS NULL THEN NULL ELSE lower(hex({value})) END")
        } else if is_real {
            // json_object renders doubles with 15 digits; 17 round-trip every finite double.
            format!(
                "CASE WHEN typeof({value}) = 'real' AND abs({value}) <= 1.7976931348623157e308 \
                 THEN json(printf('%!.17g', {value})) ELSE {value} END"
            )
        } else {
            value
        }
    }

    fn key_json(&self, row: &str) -> String {
        format!(
            "json_object({}, {})",
            literal(&self.key_column.to_lowercase()),
            self.column_value(row, self.key_column, self.key_is_blob, false)
        )
    }

    fn payload_json(&self, row: &str) -> String {
        let pairs: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{}, {}",
                    literal(&c.name.to_lowercase()),
                    self.column_value(row, c.name, c.is_blob, c.is_real)
                )
            })
            .collect();
        format!("json_object({})", pairs.join(", "))
    }

    /// Aborts a write whose key the protocol cannot carry, before it reaches the outbox.
    /// (Shape by a `?`-only GLOB, digits by `unhex`: a 32-class GLOB cost more than the insert.)
    fn key_check(&self, row: &str) -> String {
        let key = format!("{row}.{}", ident(self.key_column));
        let (valid, what) = if self.key_is_blob {
            (
                format!("typeof({key}) = 'blob' AND length({key}) = 16"),
                "a 16-byte BLOB UUID",
            )
        } else {
            (
                format!(
                    "typeof({key}) = 'text' AND {key} GLOB '????????-????-????-????-????????????' \
                     AND lower({key}) = {key} AND length(unhex(replace({key}, '-', ''))) = 16"
                ),
                "a lowercase dashed UUID string",
            )
        };
        format!(
            "SELECT RAISE(ABORT, {}) WHERE ({valid}) IS NOT 1;",
            literal(&format!(
                "oversync: {}.{} must be {what}",
                self.table, self.key_column
            ))
        )
    }

    /// `_sync_row_state` lookup for the row's key. Scalar subqueries, not a join: a join
    /// against a derived key table makes SQLite build an ephemeral b-tree on every write.
    fn row_state(&self, column: &str, key: &str) -> String {
        format!(
            "(SELECT {column} FROM _sync_row_state WHERE schema_name = '{LOCAL_SCHEMA}' AND table_name = {} AND key_json = {key})",
            literal(self.table)
        )
    }

    fn capture_write(&self, row: &str) -> String {
        let key = self.key_json(row);
        format!(
            "INSERT INTO _sync_dirty_rows(schema_name, table_name, key_json, op, base_row_version, payload)
  VALUES ('{LOCAL_SCHEMA}', {table}, {key},
          CASE WHEN {deleted} = 0 THEN 'UPDATE' ELSE 'INSERT' END,
          IFNULL({version}, 0), {payload})
  ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET op = excluded.op, payload = excluded.payload;",
            table = literal(self.table),
            deleted = self.row_state("deleted", &key),
            version = self.row_state("row_version", &key),
            payload = self.payload_json(row),
        )
    }

    fn capture_delete(&self, row: &str) -> String {
        let table = literal(self.table);
        let key = self.key_json(row);
        // The server may hold the key: it says so in `_sync_row_state`, or the key is in the
        // frozen outbox, whose push may commit at any moment (or already has, unacknowledged).
        let server_may_hold = format!(
            "(EXISTS (SELECT 1 FROM _sync_row_state
                    WHERE schema_name = '{LOCAL_SCHEMA}' AND table_name = {table} AND key_json = {key} AND deleted = 0)
       OR EXISTS (SELECT 1 FROM _sync_outbox_rows WHERE table_name = {table} AND key_json = {key}))"
        );
        format!(
            "DELETE FROM _sync_dirty_rows
  WHERE schema_name = '{LOCAL_SCHEMA}' AND table_name = {table} AND key_json = {key}
    AND NOT {server_may_hold};
  INSERT INTO _sync_dirty_rows(schema_name, table_name, key_json, op, base_row_version, payload)
  SELECT '{LOCAL_SCHEMA}', {table}, {key}, 'DELETE', IFNULL({version}, 0), NULL
  WHERE {server_may_hold}
  ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET op = 'DELETE', payload = NULL;",
            version = self.row_state("row_version", &key),
        )
    }

    pub fn triggers(&self) -> Vec<Trigger> {
        let table = ident(self.table);
        let capturing =
            "IFNULL((SELECT apply_mode FROM _sync_apply_state WHERE singleton_key = 1), 0) = 0";
        let key = ident(self.key_column);
        let mut out = Vec::new();
        for (suffix, event) in [
            ("bi_guard", "INSERT"),
            ("bu_guard", "UPDATE"),
            ("bd_guard", "DELETE"),
        ] {
            let name = self.trigger_name(suffix);
            out.push(Trigger {
                sql: format!(
                    "CREATE TRIGGER {} BEFORE {event} ON {table}
WHEN IFNULL((SELECT kind FROM _sync_operation_state WHERE singleton_key = 1), 'none') != 'none'
  AND {capturing}
BEGIN
  SELECT RAISE(ABORT, 'SYNC_TRANSITION_PENDING');
END",
                    ident(&name)
                ),
                name,
            });
        }
        // Diesel never caches prepared UPDATE statements, so every app update compiles the
        // table's UPDATE triggers anew: the key-change trigger is declared `UPDATE OF <key>`
        // so only statements that set the key compile it, and same-key updates skip the key
        // check (the key was checked when it was written).
        let bodies = [
            (
                "ai",
                "AFTER INSERT".to_string(),
                String::new(),
                format!("{}\n  {}", self.key_check("NEW"), self.capture_write("NEW")),
            ),
            (
                "au",
                "AFTER UPDATE".to_string(),
                format!(" AND OLD.{key} IS NEW.{key}"),
                self.capture_write("NEW"),
            ),
            (
                "au_key",
                format!("AFTER UPDATE OF {key}"),
                format!(" AND OLD.{key} IS NOT NEW.{key}"),
                format!(
                    "{}\n  {}\n  {}",
                    self.key_check("NEW"),
                    self.capture_delete("OLD"),
                    self.capture_write("NEW")
                ),
            ),
            (
                "ad",
                "AFTER DELETE".to_string(),
                String::new(),
                self.capture_delete("OLD"),
            ),
        ];
        for (suffix, event, extra_condition, body) in bodies {
            let name = self.trigger_name(suffix);
            out.push(Trigger {
                sql: format!(
                    "CREATE TRIGGER {} {event} ON {table}
WHEN {capturing}{extra_condition}
BEGIN
  {body}
END",
                    ident(&name)
                ),
                name,
            });
        }
        out
    }

    /// The migration that installs the triggers and registers the table (idempotent).
    pub fn up_sql(&self, triggers: &[Trigger]) -> String {
        let mut sql = format!(
            "-- oversync: capture triggers for table {table}, generated by #[derive(SyncTable)].\n\
             -- Do not edit: regenerate with oversync_diesel::migrations::write_sync_migrations.\n\
             INSERT INTO _sync_managed_tables(schema_name, table_name) VALUES ('{LOCAL_SCHEMA}', {table}) ON CONFLICT DO NOTHING;\n",
            table = literal(self.table)
        );
        for trigger in triggers {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {};\n{};\n",
                ident(&trigger.name),
                trigger.sql
            ));
        }
        sql
    }

    /// The migration that removes the triggers and the registration. Pending rows stay in
    /// `_sync_dirty_rows`, so reverting a migration never drops local intent.
    pub fn down_sql(&self, triggers: &[Trigger]) -> String {
        let mut sql = String::new();
        for trigger in triggers {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {};\n",
                ident(&trigger.name)
            ));
        }
        sql.push_str(&format!(
            "DELETE FROM _sync_managed_tables WHERE schema_name = '{LOCAL_SCHEMA}' AND table_name = {};\n",
            literal(self.table)
        ));
        sql
    }
}
