//! Which tables sync, and against which remote schema.

use crate::error::ConfigError;
use crate::table::{SyncTable, TableSpec};

/// The sync configuration of one local database.
///
/// ```
/// use oversync_diesel::{OversyncConfig, SyncTable};
///
/// #[derive(SyncTable)]
/// #[diesel(table_name = notes)]
/// struct Note {
///     #[sync(key)]
///     id: String,
///     title: String,
/// }
///
/// let config = OversyncConfig::new("business").table::<Note>();
/// assert_eq!(config.schema(), "business");
/// assert_eq!(config.tables()[0].table_name, "notes");
/// ```
#[derive(Clone, Debug)]
pub struct OversyncConfig {
    schema: String,
    tables: Vec<&'static TableSpec>,
}

impl OversyncConfig {
    /// A config syncing against `schema`, the server-side schema of the synced tables
    /// (`business` on the reference example server). Locally every table lives in `main`.
    pub fn new(schema: impl Into<String>) -> Self {
        OversyncConfig {
            schema: schema.into(),
            tables: Vec::new(),
        }
    }

    /// Registers a synced table.
    pub fn table<T: SyncTable>(mut self) -> Self {
        self.tables.push(T::SPEC);
        self
    }

    /// Registers a synced table by its spec (for code that handles specs dynamically).
    pub fn table_spec(mut self, spec: &'static TableSpec) -> Self {
        self.tables.push(spec);
        self
    }

    /// The remote schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The registered tables, in registration order.
    pub fn tables(&self) -> &[&'static TableSpec] {
        &self.tables
    }

    /// The spec of a registered table.
    pub fn table_named(&self, name: &str) -> Option<&'static TableSpec> {
        self.tables
            .iter()
            .copied()
            .find(|t| t.table_name.eq_ignore_ascii_case(name))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.schema.trim().is_empty() {
            return Err(ConfigError::EmptySchema);
        }
        if self.tables.is_empty() {
            return Err(ConfigError::NoTables);
        }
        for (i, t) in self.tables.iter().enumerate() {
            if self.tables[..i]
                .iter()
                .any(|o| o.table_name.eq_ignore_ascii_case(t.table_name))
            {
                return Err(ConfigError::DuplicateTable {
                    table: t.table_name.to_string(),
                });
            }
        }
        Ok(())
    }
}
