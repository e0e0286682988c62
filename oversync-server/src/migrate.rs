//! Numbered SQL migrations of the business schema (`NNNN_name.sql` files, as
//! `oversync_diesel::server_schema::write_server_migration` writes them), applied in order
//! and recorded in `sync.schema_migrations` (version, name, SHA-256 checksum, applied_at).
//!
//! An applied migration is never re-run, and one whose file changed since it was applied is
//! refused: the fix for a wrong migration is the next migration.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why migrations were not applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `.sql` file whose name is not `NNNN_name.sql`.
    #[error("{path}: migration files must be named NNNN_name.sql (a number, `_`, lower-case name)")]
    BadName {
        /// The file.
        path: PathBuf,
    },
    /// Two files with the same number.
    #[error("migrations {first} and {second} share version {version}")]
    DuplicateVersion {
        /// The version.
        version: i64,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// An applied migration's file was edited.
    #[error(
        "migration {version} ({name}) was edited after it was applied (checksum {applied} applied, {current} now); restore it and put the change in a new migration"
    )]
    Edited {
        /// Version.
        version: i64,
        /// Name.
        name: String,
        /// Checksum recorded when applied.
        applied: String,
        /// Checksum of the file now.
        current: String,
    },
    /// A migration's SQL failed (the migration was rolled back).
    #[error("migration {version} ({name}) failed: {message}")]
    Failed {
        /// Version.
        version: i64,
        /// Name.
        name: String,
        /// Database message.
        message: String,
    },
    /// Connecting or recording failed.
    #[error("migration bookkeeping: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// One migration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The number before `_`.
    pub version: i64,
    /// The name after `_`, without `.sql`.
    pub name: String,
    /// SQL text.
    pub sql: String,
    /// Lowercase hex SHA-256 of the text.
    pub checksum: String,
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions applied now.
    pub applied: Vec<i64>,
    /// Versions that were already applied.
    pub already_applied: Vec<i64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the migrations of `dir`, sorted by version.
pub fn read_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let mut out: Vec<(Migration, String)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some(stem) = file.strip_suffix(".sql") else {
            continue;
        };
        let parsed = stem.split_once('_').and_then(|(n, name)| {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            (ok && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<i64>().ok().map(|v| (v, name.to_owned())))
                .flatten()
        });
        let Some((version, name)) = parsed else {
            return Err(MigrateError::BadName { path });
        };
        let sql = std::fs::read_to_string(&path).map_err(io(&path))?;
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        if let Some((_, other)) = out.iter().find(|(m, _)| m.version == version) {
            return Err(MigrateError::DuplicateVersion {
                version,
                first: other.clone(),
                second: file,
            });
        }
        out.push((
            Migration {
                version,
                name,
                sql,
                checksum,
            },
            file,
        ));
    }
    out.sort_by_key(|(m, _)| m.version);
    Ok(out.into_iter().map(|(m, _)| m).collect())
}

const LOCK_KEY: i64 = 0x6f76_6d69_6772_6174;

/// Applies the migrations of `dir` that are not recorded yet, each in its own transaction
/// together with its record; concurrent runs are serialized by an advisory lock.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<MigrateReport, MigrateError> {
    let migrations = read_dir(dir)?;
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS sync;
             CREATE TABLE IF NOT EXISTS sync.schema_migrations (
                 version BIGINT PRIMARY KEY,
                 name TEXT NOT NULL,
                 checksum TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );",
        )
        .await?;
    let mut report = MigrateReport::default();
    for m in migrations {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        let applied = tx
            .query_opt(
                "SELECT checksum FROM sync.schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?;
        if let Some(row) = applied {
            let checksum: String = row.get(0);
            if checksum != m.checksum {
                return Err(MigrateError::Edited {
                    version: m.version,
                    name: m.name,
                    applied: checksum,
                    current: m.checksum,
                });
            }
            report.already_applied.push(m.version);
            continue;
        }
        tx.batch_execute(&m.sql)
            .await
            .map_err(|e| MigrateError::Failed {
                version: m.version,
                name: m.name.clone(),
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string()),
            })?;
        tx.execute(
            "INSERT INTO sync.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = %m.name, "applied migration");
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_checked() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("0002_b.sql"), "SELECT 2;").unwrap();
        std::fs::write(dir.join("0001_a.sql"), "SELECT 1;").unwrap();
        std::fs::write(dir.join("README.md"), "not sql").unwrap();
        let m = read_dir(&dir).unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.version, m.name.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (2, "b")]
        );
        std::fs::write(dir.join("1_a.sql"), "SELECT 1;").unwrap();
        assert!(matches!(
            read_dir(&dir),
            Err(MigrateError::DuplicateVersion { version: 1, .. })
        ));
        std::fs::remove_file(dir.join("1_a.sql")).unwrap();
        std::fs::write(dir.join("three.sql"), "SELECT 3;").unwrap();
        assert!(matches!(read_dir(&dir), Err(MigrateError::BadName { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "oversync-migrate-test-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
