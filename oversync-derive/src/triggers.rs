//! The capture triggers of one synced table, as SQLite SQL.
//!
//! Capture rules (one coalesced `_sync_dirty_rows` row per key, see the protocol README):
//! - a write's op is `UPDATE` when the server holds the key live (`_sync_row_state.deleted = 0`),
//!   else `INSERT`; so insert-then-update stays an INSERT and delete-then-reinsert of a synced
//!   row becomes an UPDATE;
//! - a delete of a row the server holds becomes `DELETE`, and so does a delete of a key still
//!   in the frozen outbox (its push may have committed; replay rebases the DELETE on the
//!   committed version); a delete of a row the server never had and no push carries removes
//!   the pending entry, leaving nothing to push;
//! - a key-changing update is a delete of the old key followed by a write of the new key;
//! - the upsert never rewrites `base_row_version` or `dirty_ordinal`, so the first touch keeps
//!   both (`dirty_ordinal` is the table's rowid, assigned as max + 1 without a scan).
//!
//! The triggers only mark the key dirty (op, base version, ordinal); a write's payload is read
//! from the row itself when the outbox is frozen (the runtime's `capture` module), so a
//! trigger renders no JSON of the row and stays small. Small matters most for updates: Diesel
//! never caches prepared UPDATE statements, so every app update compiles the table's UPDATE
//! triggers anew. A write's stored `payload` is NULL (or, after a rejected push went back to
//! the dirty set, the frozen one, used only if the row is gone).
//!
//! Every lookup is a primary-key or unique-index seek, so capture cost per row stays flat as
//! the dirty set grows. Nothing is captured while `_sync_apply_state.apply_mode = 1` (the
//! runtime is writing server data), and app writes abort with `SYNC_TRANSITION_PENDING` while
//! a destructive sync transition is in progress (the first step of each capture trigger: an
//! AFTER trigger's abort undoes the statement as a BEFORE trigger's would, and a separate
//! guard trigger cost a second trigger program per written row).

/// The local schema name recorded in `_sync_*` state; the remote schema is mapped at runtime.
pub const LOCAL_SCHEMA: &str = "main";

/// Suffixes of triggers earlier versions installed and this one does not: the migration
/// drops them, so a database upgraded from the old triggers keeps none of them.
const RETIRED_SUFFIXES: [&str; 3] = ["bi_guard", "bu_guard", "bd_guard"];

pub struct TableTriggers<'a> {
    pub table: &'a str,
    pub key_column: &'a str,
    pub key_is_blob: bool,
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

    /// The key as `_sync_dirty_rows.key_json` holds it: BLOB keys as lowercase hex (their
    /// wire form, UUID text, is applied when a push is frozen).
    fn key_json(&self, row: &str) -> String {
        let key = format!("{row}.{}", ident(self.key_column));
        let value = if self.key_is_blob {
            format!("lower(hex({key}))")
        } else {
            key
        };
        format!(
            "json_object({}, {value})",
            literal(&self.key_column.to_lowercase())
        )
    }

    /// Aborts a write whose key the protocol cannot carry, before it reaches the outbox.
    /// (Shape by a `?`-only GLOB, digits by `unhex` skipping the dashes: a 32-class GLOB cost
    /// more than the insert, and `replace()` to drop the dashes first cost a string copy.)
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
                     AND length(unhex({key}, '-')) = 16 AND lower({key}) = {key}"
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

    /// `FROM` clause yielding one row with the key's `_sync_row_state` as `rs` (NULLs when the
    /// server never had it): one seek for both the op and the base version.
    fn row_state_join(&self, key: &str) -> String {
        format!(
            "FROM (SELECT 1) LEFT JOIN _sync_row_state AS rs ON rs.schema_name = '{LOCAL_SCHEMA}' AND rs.table_name = {} AND rs.key_json = {key}",
            literal(self.table)
        )
    }

    /// Marks the row's key dirty as a write. `on_conflict` handles a key already dirty.
    fn capture_write(&self, row: &str, on_conflict: &str) -> String {
        let key = self.key_json(row);
        format!(
            "INSERT INTO _sync_dirty_rows(schema_name, table_name, key_json, op, base_row_version)
  SELECT '{LOCAL_SCHEMA}', {table}, {key}, CASE WHEN rs.deleted = 0 THEN 'UPDATE' ELSE 'INSERT' END, IFNULL(rs.row_version, 0)
  {join} WHERE true
  ON CONFLICT(schema_name, table_name, key_json) DO {on_conflict};",
            table = literal(self.table),
            join = self.row_state_join(&key),
        )
    }

    /// A write of a new or re-inserted key: a pending DELETE of it becomes a write again.
    fn capture_insert(&self, row: &str) -> String {
        self.capture_write(row, "UPDATE SET op = excluded.op, payload = NULL")
    }

    fn capture_delete(&self, row: &str) -> String {
        let table = literal(self.table);
        let key = self.key_json(row);
        // The server may hold the key: it says so in `_sync_row_state`, or the key is in the
        // frozen outbox, whose push may commit at any moment (or already has, unacknowledged).
        // The entry is removed when it may not; else (`changes() = 0`) a DELETE is upserted.
        let in_outbox = format!(
            "EXISTS (SELECT 1 FROM _sync_outbox_rows WHERE table_name = {table} AND key_json = {key})"
        );
        format!(
            "DELETE FROM _sync_dirty_rows
  WHERE schema_name = '{LOCAL_SCHEMA}' AND table_name = {table} AND key_json = {key}
    AND NOT EXISTS (SELECT 1 FROM _sync_row_state
                    WHERE schema_name = '{LOCAL_SCHEMA}' AND table_name = {table} AND key_json = {key} AND deleted = 0)
    AND NOT {in_outbox};
  INSERT INTO _sync_dirty_rows(schema_name, table_name, key_json, op, base_row_version)
  SELECT '{LOCAL_SCHEMA}', {table}, {key}, 'DELETE', IFNULL(rs.row_version, 0)
  {join} WHERE changes() = 0 AND (rs.deleted = 0 OR {in_outbox})
  ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET op = 'DELETE', payload = NULL;",
            join = self.row_state_join(&key),
        )
    }

    pub fn triggers(&self) -> Vec<Trigger> {
        let table = ident(self.table);
        let capturing =
            "IFNULL((SELECT apply_mode FROM _sync_apply_state WHERE singleton_key = 1), 0) = 0";
        let guard = "SELECT RAISE(ABORT, 'SYNC_TRANSITION_PENDING') FROM _sync_operation_state WHERE singleton_key = 1 AND kind != 'none';";
        let key = ident(self.key_column);
        // The key-change trigger is declared `UPDATE OF <key>` so only statements that set the
        // key compile it, and same-key updates skip the key check (the key was checked when
        // it was written). A same-key update of a dirty key changes nothing in its entry: the
        // row exists, so the entry is a write, and the payload is read at freeze.
        let bodies = [
            (
                "ai",
                "AFTER INSERT".to_string(),
                String::new(),
                format!(
                    "{}\n  {}",
                    self.key_check("NEW"),
                    self.capture_insert("NEW")
                ),
            ),
            (
                "au",
                "AFTER UPDATE".to_string(),
                format!(" AND OLD.{key} IS NEW.{key}"),
                self.capture_write("NEW", "NOTHING"),
            ),
            (
                "au_key",
                format!("AFTER UPDATE OF {key}"),
                format!(" AND OLD.{key} IS NOT NEW.{key}"),
                format!(
                    "{}\n  {}\n  {}",
                    self.key_check("NEW"),
                    self.capture_delete("OLD"),
                    self.capture_insert("NEW")
                ),
            ),
            (
                "ad",
                "AFTER DELETE".to_string(),
                String::new(),
                self.capture_delete("OLD"),
            ),
        ];
        let mut out = Vec::new();
        for (suffix, event, extra_condition, body) in bodies {
            let name = self.trigger_name(suffix);
            out.push(Trigger {
                sql: format!(
                    "CREATE TRIGGER {} {event} ON {table}
WHEN {capturing}{extra_condition}
BEGIN
  {guard}
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
        for suffix in RETIRED_SUFFIXES {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {};\n",
                ident(&self.trigger_name(suffix))
            ));
        }
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
