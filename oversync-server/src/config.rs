//! Service configuration: registered tables, limits, watch.

use std::time::Duration;

/// One business table the host registers for sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Schema name (lower case `[a-z0-9_]+`).
    pub schema: String,
    /// Table name (lower case `[a-z0-9_]+`).
    pub table: String,
    /// The visible sync key column (`uuid` or `text`).
    pub key_column: String,
}

impl TableSpec {
    /// `TableSpec::new("business", "users", "id")`.
    pub fn new(schema: &str, table: &str, key_column: &str) -> Self {
        Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
            key_column: key_column.to_owned(),
        }
    }

    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Size and time limits; the defaults are the reference server's.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Advertised default rows per push chunk.
    pub default_rows_per_push_chunk: i64,
    /// Largest accepted push chunk.
    pub max_rows_per_push_chunk: i64,
    /// Lifetime of an idle staging push session.
    pub push_session_ttl: Duration,
    /// Default committed-bundle page size.
    pub default_rows_per_committed_bundle_chunk: i64,
    /// Largest committed-bundle page.
    pub max_rows_per_committed_bundle_chunk: i64,
    /// Default snapshot page size.
    pub default_rows_per_snapshot_chunk: i64,
    /// Largest snapshot page.
    pub max_rows_per_snapshot_chunk: i64,
    /// Lifetime of a snapshot session.
    pub snapshot_session_ttl: Duration,
    /// Largest snapshot session in rows (0 = unlimited).
    pub max_rows_per_snapshot_session: i64,
    /// Largest snapshot session in payload bytes (0 = unlimited).
    pub max_bytes_per_snapshot_session: i64,
    /// Lifetime of an initialization lease.
    pub initialization_lease_ttl: Duration,
    /// Default `max_bundles` of a pull.
    pub default_bundles_per_pull: i64,
    /// Largest `max_bundles` of a pull.
    pub max_bundles_per_pull: i64,
    /// Committed bundles kept per user before the floor advances (0 = keep all).
    pub retained_bundles_per_user: i64,
    /// Most bundles pruned in one retention step.
    pub retention_prune_batch: i64,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_rows_per_push_chunk: 1000,
            max_rows_per_push_chunk: 5000,
            push_session_ttl: Duration::from_secs(15 * 60),
            default_rows_per_committed_bundle_chunk: 1000,
            max_rows_per_committed_bundle_chunk: 5000,
            default_rows_per_snapshot_chunk: 1000,
            max_rows_per_snapshot_chunk: 5000,
            snapshot_session_ttl: Duration::from_secs(15 * 60),
            max_rows_per_snapshot_session: 0,
            max_bytes_per_snapshot_session: 0,
            initialization_lease_ttl: Duration::from_secs(15 * 60),
            default_bundles_per_pull: 1000,
            max_bundles_per_pull: 5000,
            retained_bundles_per_user: 10_000,
            retention_prune_batch: 1000,
            // 5000 rows of a few KiB each fit comfortably; anything larger is refused with 413.
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

/// `GET /sync/watch` settings.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Whether the endpoint is served (and advertised as `bundle_change_watch`).
    pub enabled: bool,
    /// PostgreSQL NOTIFY channel.
    pub channel: String,
    /// Interval of `: heartbeat` comments.
    pub heartbeat: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            channel: "oversync_bundle_change_v1".to_owned(),
            heartbeat: Duration::from_secs(25),
        }
    }
}

/// Everything [`crate::SyncService::start`] needs besides the database.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Reported as `app_name`.
    pub app_name: String,
    /// Reported as `schema_version`.
    pub schema_version: i64,
    /// Registered business tables.
    pub tables: Vec<TableSpec>,
    /// Limits.
    pub limits: Limits,
    /// Watch settings.
    pub watch: WatchConfig,
    /// Size of the service's PostgreSQL connection pool.
    pub pool_size: usize,
    /// Age rule and background sweep of the retained history.
    pub retention: crate::retention::RetentionConfig,
}

impl ServiceConfig {
    /// A configuration with default limits for the given tables.
    pub fn new(app_name: &str, tables: Vec<TableSpec>) -> Self {
        Self {
            app_name: app_name.to_owned(),
            schema_version: 1,
            tables,
            limits: Limits::default(),
            watch: WatchConfig::default(),
            pool_size: 16,
            retention: Default::default(),
        }
    }
}
