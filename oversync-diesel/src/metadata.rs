//! Keeps an install's `_sync_*` metadata schema current across releases of this crate.
//!
//! An app copies the metadata migration (`00000000000000_oversync_metadata`) once:
//! [`write_sync_migrations`](crate::migrations::write_sync_migrations) never rewrites it, and
//! an applied migration must not be edited. So a device holds the metadata schema of the
//! release the app's copy came from, and [`Oversync::open`](crate::Oversync::open) brings it
//! up to this release's before it validates anything, in one transaction:
//!
//! - The metadata `up.sql` only ever grows, by statements that create what is missing
//!   (`CREATE TABLE/INDEX IF NOT EXISTS`, `INSERT ... ON CONFLICT DO NOTHING`). When an index,
//!   or a table appended after the first release, is absent, `open()` runs this release's `up.sql` again, which adds exactly
//!   what the older copy lacked and leaves every existing row as it is. Any other missing
//!   metadata table is damage, not age: `open()` refuses it (`TABLES_ADDED_LATER`).
//! - A change `IF NOT EXISTS` cannot express (a column added to an existing table) is an
//!   [`Upgrade`] in [`UPGRADES`], with a probe telling whether it is applied; `open()` runs
//!   each one that is not, once.
//!
//! A database upgraded by a newer release keeps working with an older one only as far as
//! the additions are ignored (extra tables and indexes are).

use crate::error::Result;
use crate::migrations::METADATA_UP;
use crate::validate::METADATA_TABLES;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, SqliteConnection, sql_query};
use std::collections::HashSet;

/// Metadata tables appended to `up.sql` after the first release (an older copy lacks them);
/// any other missing metadata table is damage. A release that appends a table lists it here.
const TABLES_ADDED_LATER: &[&str] = &["_sync_install_identity", "_sync_quarantine"];

/// One change of the metadata schema that re-running `up.sql` cannot make.
#[derive(Debug)]
pub(crate) struct Upgrade {
    /// What it changes (logged when applied).
    pub name: &'static str,
    /// A query returning one row with a column `n`, non-zero once the change is applied.
    pub applied: &'static str,
    /// The statements that apply it.
    pub sql: &'static str,
}

/// Changes after this release's `up.sql`, oldest first. None yet: everything since the
/// first release was added with `IF NOT EXISTS`.
pub(crate) const UPGRADES: &[Upgrade] = &[];

/// Brings the metadata schema up to this release's; returns what it changed (empty when it
/// was current). A database without any metadata is left alone: `open()` then fails with
/// `SchemaError::MetadataMissing` (the app has not run the sync migrations).
pub(crate) fn upgrade(conn: &mut SqliteConnection) -> Result<Vec<&'static str>> {
    upgrade_with(conn, UPGRADES)
}

fn upgrade_with(conn: &mut SqliteConnection, upgrades: &[Upgrade]) -> Result<Vec<&'static str>> {
    if !needs_upgrade(conn, upgrades)? {
        return Ok(Vec::new());
    }
    let changed = conn.immediate_transaction(|conn| -> Result<Vec<&'static str>> {
        // Again under the write lock: another process may have upgraded meanwhile.
        let mut changed = Vec::new();
        if !missing_objects(conn)?.is_empty() {
            conn.batch_execute(METADATA_UP)?;
            changed.push("metadata tables and indexes");
        }
        for upgrade in upgrades {
            if !is_applied(conn, upgrade)? {
                conn.batch_execute(upgrade.sql)?;
                changed.push(upgrade.name);
            }
        }
        Ok(changed)
    })?;
    if !changed.is_empty() {
        tracing::info!(?changed, "oversync metadata schema upgraded");
    }
    Ok(changed)
}

fn needs_upgrade(conn: &mut SqliteConnection, upgrades: &[Upgrade]) -> Result<bool> {
    let missing = missing_objects(conn)?;
    // No metadata at all, or a missing table that every release's copy has, is not an older
    // copy but a database the app never migrated or one that lost state: re-creating the
    // table would forget what it held, so validation reports it instead
    // (`SchemaError::MetadataMissing`).
    if missing
        .iter()
        .any(|name| METADATA_TABLES.contains(name) && !TABLES_ADDED_LATER.contains(name))
    {
        return Ok(false);
    }
    if !missing.is_empty() {
        return Ok(true);
    }
    for upgrade in upgrades {
        if !is_applied(conn, upgrade)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn is_applied(conn: &mut SqliteConnection, upgrade: &Upgrade) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Applied {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let row: Applied = sql_query(upgrade.applied).get_result(conn)?;
    Ok(row.n != 0)
}

/// Tables and indexes `up.sql` declares that the database lacks.
fn missing_objects(conn: &mut SqliteConnection) -> Result<Vec<&'static str>> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let present: HashSet<String> =
        sql_query("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
            .load::<Name>(conn)?
            .into_iter()
            .map(|n| n.name)
            .collect();
    Ok(declared_objects(METADATA_UP)
        .into_iter()
        .filter(|name| !present.contains(*name))
        .collect())
}

/// The names after `CREATE [UNIQUE] TABLE|INDEX IF NOT EXISTS` in `sql`, comments skipped.
fn declared_objects(sql: &'static str) -> Vec<&'static str> {
    let tokens: Vec<&str> = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .flat_map(str::split_whitespace)
        .collect();
    tokens
        .windows(5)
        .filter(|w| {
            matches!(w[0], "TABLE" | "INDEX") && w[1] == "IF" && w[2] == "NOT" && w[3] == "EXISTS"
        })
        .filter_map(|w| w[4].split('(').next())
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory database");
        conn.batch_execute(METADATA_UP).expect("metadata up.sql");
        conn
    }

    #[test]
    fn up_sql_declares_every_metadata_table() {
        let declared = declared_objects(METADATA_UP);
        for table in METADATA_TABLES {
            assert!(
                declared.contains(table),
                "{table} not found in {declared:?}"
            );
        }
        assert!(declared.contains(&"_sync_outbox_rows_key"), "{declared:?}");
    }

    #[test]
    fn up_sql_can_run_again() {
        let mut conn = fresh();
        conn.batch_execute(METADATA_UP)
            .expect("up.sql must stay re-runnable: open() runs it on older copies");
        assert_eq!(upgrade(&mut conn).expect("upgrade"), Vec::<&str>::new());
    }

    #[test]
    fn an_upgrade_step_runs_once() {
        let mut conn = fresh();
        let steps = [Upgrade {
            name: "_sync_apply_state.note",
            applied: "SELECT COUNT(*) AS n FROM pragma_table_info('_sync_apply_state') WHERE name = 'note'",
            sql: "ALTER TABLE _sync_apply_state ADD COLUMN note TEXT NOT NULL DEFAULT ''",
        }];
        assert_eq!(
            upgrade_with(&mut conn, &steps).expect("first"),
            vec!["_sync_apply_state.note"]
        );
        // Applied: the ALTER would fail if it ran again.
        assert_eq!(
            upgrade_with(&mut conn, &steps).expect("second"),
            Vec::<&str>::new()
        );
        conn.batch_execute("UPDATE _sync_apply_state SET note = 'x'")
            .expect("the new column");
    }

    #[test]
    fn a_database_without_metadata_is_left_alone() {
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory database");
        assert_eq!(upgrade(&mut conn).expect("upgrade"), Vec::<&str>::new());
        assert_eq!(
            missing_objects(&mut conn).expect("objects").len(),
            declared_objects(METADATA_UP).len()
        );
    }
}
