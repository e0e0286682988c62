//! Writing authoritative server rows into the app's tables: used by push replay, pull and
//! snapshot rebuild. Callers own the transaction and have set apply mode, so the capture
//! triggers stay quiet; foreign keys are deferred to commit, so rows may arrive in any order
//! (cycles included).
//!
//! Rows are written in multi-row statements of a few fixed sizes, each prepared once per
//! connection ([`crate::statement`]): preparing a statement on a synced table compiles its
//! triggers.

use crate::codec::SqlValue;
use crate::error::Result;
use crate::statement::{Bind, BindType, CachedStatement, in_statements, marks, value_rows};
use crate::table::TableSpec;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use std::collections::{HashMap, HashSet};

/// One authoritative row effect, validated and decoded.
#[derive(Debug, Clone)]
pub(crate) struct RowEffect {
    pub spec: &'static TableSpec,
    /// Key value as stored locally (UUID text, or 32 hex digits for BLOB keys).
    pub key: String,
    /// `key_json` as the triggers write it.
    pub key_json: String,
    pub row_version: i64,
    /// Column values in model order; `None` deletes the row.
    pub values: Option<Vec<SqlValue>>,
}

/// Drops the effects of an older bundle on keys a newer bundle already wrote locally.
///
/// A device replays its own committed bundle at once, before pulling the bundles other devices
/// committed just before it; those older bundles must not undo what the newer one did (an
/// insert of a child into a parent our bundle deleted would even break a foreign key). Row
/// versions are bundle sequences, so `_sync_row_state.row_version > row_version` means the
/// local row is already newer. One primary-key seek per row, batched.
pub(crate) fn drop_superseded(
    conn: &mut SqliteConnection,
    effects: Vec<RowEffect>,
) -> Result<Vec<RowEffect>> {
    #[derive(QueryableByName)]
    struct Newer {
        #[diesel(sql_type = Text)]
        table_name: String,
        #[diesel(sql_type = Text)]
        key_json: String,
    }
    let mut newer: HashSet<(String, String)> = HashSet::new();
    let row = format!("({})", marks(3));
    in_statements(
        &effects,
        MAX_PARAMS / 3,
        |size| {
            format!(
                "SELECT rs.table_name, rs.key_json FROM (VALUES {}) AS e \
                 JOIN _sync_row_state AS rs ON rs.schema_name = 'main' AND rs.table_name = e.column1 \
                   AND rs.key_json = e.column2 WHERE rs.row_version > e.column3",
                value_rows(size, &row)
            )
        },
        |template, chunk| {
            let query = CachedStatement::new(template).bind_all(chunk.iter().flat_map(|e| {
                [
                    Bind::Text(e.spec.table_name),
                    Bind::Text(&e.key_json),
                    Bind::Integer(e.row_version),
                ]
            }));
            newer.extend(
                query
                    .load::<Newer>(conn)?
                    .into_iter()
                    .map(|n| (n.table_name, n.key_json)),
            );
            Ok(())
        },
    )?;
    if newer.is_empty() {
        return Ok(effects);
    }
    Ok(effects
        .into_iter()
        .filter(|e| !newer.contains(&(e.spec.table_name.to_string(), e.key_json.clone())))
        .collect())
}

/// Deletes the rows of `tables` left without their parent after a pulled bundle was applied
/// with some of its effects dropped by [`drop_superseded`].
///
/// Only a dropped effect can leave an orphan (every earlier commit passed its foreign-key
/// check, and the server's bundle was consistent): the bundle upserted a child of a parent
/// whose local state is already newer and deleted (a conflict resolution that applied the
/// server's delete before the pull reached it). The server's own constraints then delete or
/// move that child by the parent's newer version, which a later bundle of the same pull
/// delivers; until then the child is dropped too, instead of failing the bundle's deferred
/// foreign-key check every time. Runs in the apply transaction, so nothing is captured.
pub(crate) fn drop_orphans(conn: &mut SqliteConnection, tables: &HashSet<String>) -> Result<()> {
    #[derive(QueryableByName)]
    struct Orphan {
        #[diesel(sql_type = Nullable<BigInt>)]
        rowid: Option<i64>,
    }
    // A deleted orphan may orphan its own non-cascading children: a few passes at most.
    // Only the upserted tables are checked (a whole-database check scans every table).
    for _ in 0..8 {
        let mut deleted = 0;
        for table in tables {
            let orphans: Vec<Orphan> =
                diesel::sql_query(format!("PRAGMA foreign_key_check({})", ident(table)))
                    .load(conn)?;
            for rowid in orphans.into_iter().filter_map(|o| o.rowid) {
                deleted +=
                    diesel::sql_query(format!("DELETE FROM {} WHERE rowid = ?", ident(table)))
                        .bind::<BigInt, _>(rowid)
                        .execute(conn)?;
            }
        }
        if deleted == 0 {
            break;
        }
    }
    Ok(())
}

/// Upper bound of bound parameters per statement (SQLite's default limit is 32766).
const MAX_PARAMS: usize = 30_000;
/// Row effects gathered before they are written (one key twice flushes earlier).
const ROWS_PER_FLUSH: usize = 512;

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn key_value(spec: &TableSpec, key: &str) -> Result<SqlValue> {
    Ok(match spec.key_kind {
        crate::KeyKind::Text => SqlValue::Text(key.to_string()),
        crate::KeyKind::Blob => SqlValue::Blob(hex::decode(key).map_err(|_| {
            crate::Error::InvalidState(format!("{}: key {key:?} is not hex", spec.table_name))
        })?),
    })
}

/// Applies `effects` in order. Keys in `keep_local` (keys with newer local intent) get their
/// row state updated but their app row left alone. Returns the tables that changed.
pub(crate) fn apply_effects(
    conn: &mut SqliteConnection,
    effects: Vec<RowEffect>,
    keep_local: &HashSet<(String, String)>,
) -> Result<HashSet<&'static str>> {
    apply_inner(conn, effects, keep_local, true)
}

/// Writes rows into the app's tables only, leaving `_sync_row_state` alone: used to put
/// local intent back on top of a snapshot.
pub(crate) fn write_local_rows(
    conn: &mut SqliteConnection,
    effects: Vec<RowEffect>,
) -> Result<HashSet<&'static str>> {
    apply_inner(conn, effects, &HashSet::new(), false)
}

fn apply_inner(
    conn: &mut SqliteConnection,
    effects: Vec<RowEffect>,
    keep_local: &HashSet<(String, String)>,
    record_state: bool,
) -> Result<HashSet<&'static str>> {
    defer_foreign_keys(conn)?;
    let mut changed = HashSet::new();
    let mut batch = Batch::default();
    for effect in effects {
        // A key seen twice must not be reordered by batching: flush first.
        if !batch
            .keys
            .insert((effect.spec.table_name, effect.key.clone()))
        {
            batch.flush(conn, &mut changed)?;
            batch
                .keys
                .insert((effect.spec.table_name, effect.key.clone()));
        }
        let local =
            keep_local.contains(&(effect.spec.table_name.to_string(), effect.key_json.clone()));
        if record_state {
            batch.row_states.push((
                effect.spec.table_name,
                effect.key_json.clone(),
                effect.row_version,
                effect.values.is_none(),
            ));
        }
        if !local {
            match effect.values {
                Some(values) => batch
                    .upserts
                    .entry(effect.spec.table_name)
                    .or_insert_with(|| (effect.spec, Vec::new()))
                    .1
                    .push(values),
                None => batch
                    .deletes
                    .entry(effect.spec.table_name)
                    .or_insert_with(|| (effect.spec, Vec::new()))
                    .1
                    .push(key_value(effect.spec, &effect.key)?),
            }
        }
        if batch.row_states.len() >= ROWS_PER_FLUSH {
            batch.flush(conn, &mut changed)?;
        }
    }
    batch.flush(conn, &mut changed)?;
    Ok(changed)
}

/// Defers foreign-key checks to the commit of the caller's transaction. Setting the pragma
/// expires every prepared statement of the connection (SQLite prepares each again), and a
/// commit turns it off, so it is set once per transaction, not once per call.
fn defer_foreign_keys(conn: &mut SqliteConnection) -> Result<()> {
    if crate::state::pragma_int(conn, "defer_foreign_keys")? == 0 {
        conn.batch_execute("PRAGMA defer_foreign_keys = ON")?;
    }
    Ok(())
}

#[derive(Default)]
struct Batch {
    keys: HashSet<(&'static str, String)>,
    upserts: HashMap<&'static str, (&'static TableSpec, Vec<Vec<SqlValue>>)>,
    deletes: HashMap<&'static str, (&'static TableSpec, Vec<SqlValue>)>,
    row_states: Vec<(&'static str, String, i64, bool)>,
}

impl Batch {
    fn flush(
        &mut self,
        conn: &mut SqliteConnection,
        changed: &mut HashSet<&'static str>,
    ) -> Result<()> {
        for (table, (spec, rows)) in self.upserts.drain() {
            changed.insert(table);
            upsert_rows(conn, spec, rows)?;
        }
        for (table, (spec, keys)) in self.deletes.drain() {
            changed.insert(table);
            delete_rows(conn, spec, keys)?;
        }
        upsert_row_states(conn, std::mem::take(&mut self.row_states))?;
        self.keys.clear();
        Ok(())
    }
}

fn upsert_rows(
    conn: &mut SqliteConnection,
    spec: &TableSpec,
    rows: Vec<Vec<SqlValue>>,
) -> Result<()> {
    let columns: Vec<String> = spec.columns.iter().map(|c| ident(c.name)).collect();
    let types: Vec<BindType> = spec.columns.iter().map(BindType::of_column).collect();
    let updates: Vec<String> = spec
        .columns
        .iter()
        .filter(|c| !c.name.eq_ignore_ascii_case(spec.key_column))
        .map(|c| format!("{0} = excluded.{0}", ident(c.name)))
        .collect();
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let row = format!("({})", marks(columns.len()));
    in_statements(
        &rows,
        MAX_PARAMS / columns.len().max(1),
        |size| {
            format!(
                "INSERT INTO {} ({}) VALUES {} ON CONFLICT({}) {conflict}",
                ident(spec.table_name),
                columns.join(", "),
                value_rows(size, &row),
                ident(spec.key_column),
            )
        },
        |template, chunk| {
            CachedStatement::new(template)
                .bind_all(chunk.iter().flat_map(|row| {
                    row.iter()
                        .zip(types.iter().copied())
                        .map(|(value, ty)| Bind::Value(value, ty))
                }))
                .execute(conn)?;
            Ok(())
        },
    )
}

fn delete_rows(conn: &mut SqliteConnection, spec: &TableSpec, keys: Vec<SqlValue>) -> Result<()> {
    let ty = match spec.key_kind {
        crate::KeyKind::Text => BindType::Text,
        crate::KeyKind::Blob => BindType::Blob,
    };
    in_statements(
        &keys,
        MAX_PARAMS,
        |size| {
            format!(
                "DELETE FROM {} WHERE {} IN ({})",
                ident(spec.table_name),
                ident(spec.key_column),
                marks(size)
            )
        },
        |template, chunk| {
            CachedStatement::new(template)
                .bind_all(chunk.iter().map(|key| Bind::Value(key, ty)))
                .execute(conn)?;
            Ok(())
        },
    )
}

fn upsert_row_states(
    conn: &mut SqliteConnection,
    states: Vec<(&'static str, String, i64, bool)>,
) -> Result<()> {
    let row = format!("('main', {})", marks(4));
    in_statements(
        &states,
        MAX_PARAMS / 4,
        |size| {
            format!(
                "INSERT INTO _sync_row_state(schema_name, table_name, key_json, row_version, deleted) VALUES {} \
                 ON CONFLICT(schema_name, table_name, key_json) DO UPDATE SET row_version = excluded.row_version, deleted = excluded.deleted",
                value_rows(size, &row)
            )
        },
        |template, chunk| {
            CachedStatement::new(template)
                .bind_all(
                    chunk
                        .iter()
                        .flat_map(|(table, key_json, version, deleted)| {
                            [
                                Bind::Text(table),
                                Bind::Text(key_json),
                                Bind::Integer(*version),
                                Bind::Integer(i64::from(*deleted)),
                            ]
                        }),
                )
                .execute(conn)?;
            Ok(())
        },
    )
}

/// Runs `f` in an immediate transaction with apply mode on (capture off for runtime writes).
pub(crate) fn in_apply_transaction<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<T>,
) -> Result<T> {
    conn.immediate_transaction(|conn| {
        conn.batch_execute("UPDATE _sync_apply_state SET apply_mode = 1 WHERE singleton_key = 1")?;
        let out = f(conn)?;
        conn.batch_execute("UPDATE _sync_apply_state SET apply_mode = 0 WHERE singleton_key = 1")?;
        Ok(out)
    })
}
