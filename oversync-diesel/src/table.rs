//! What `#[derive(SyncTable)]` produces: a static description of one synced table.

/// How a table's sync key column stores its UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `TEXT` holding a canonical lowercase dashed UUID.
    Text,
    /// `BLOB` holding the 16 UUID bytes.
    Blob,
}

/// One column of a synced table, in model field order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    /// SQL column name.
    pub name: &'static str,
    /// The column stores BLOBs: captured as lowercase hex, sent as base64 (UUID text for keys).
    pub is_blob: bool,
}

/// One trigger the table's sync migration installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerSpec {
    /// Trigger name (`trg_<table>_<suffix>`).
    pub name: &'static str,
    /// The exact `CREATE TRIGGER` statement, as stored in `sqlite_master`.
    pub sql: &'static str,
}

/// Static description of a synced table, emitted by `#[derive(SyncTable)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// SQLite table name.
    pub table_name: &'static str,
    /// The one sync key column.
    pub key_column: &'static str,
    /// How the key stores its UUID.
    pub key_kind: KeyKind,
    /// Every column of the table, in model order.
    pub columns: &'static [ColumnSpec],
    /// Guard and capture triggers.
    pub triggers: &'static [TriggerSpec],
    /// Migration SQL that registers the table and installs its triggers (idempotent).
    pub up_sql: &'static str,
    /// Migration SQL that removes the triggers and the registration.
    pub down_sql: &'static str,
}

impl TableSpec {
    /// The column spec for `name` (ASCII case-insensitive, as SQLite compares identifiers).
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// A Diesel model whose table oversync keeps in sync. Derive it; do not implement it by hand.
///
/// # Attributes
/// - `#[diesel(table_name = ...)]` on the struct names the table (Diesel's default, the
///   snake_case struct name plus `s`, applies without it).
/// - `#[diesel(column_name = ...)]` on a field renames its column, as in Diesel.
/// - `#[sync(key)]` marks the one key field. Its type says how the UUID is stored: `String` or
///   `uuid::Uuid` for a `TEXT` column, `Vec<u8>` or `[u8; 16]` for a 16-byte `BLOB` column. For
///   a newtype write `#[sync(key, kind = "text")]` or `#[sync(key, kind = "blob")]`.
/// - `#[sync(blob)]` marks a non-key column as `BLOB` when its type is not a byte type.
///
/// Missing, repeated, integer, `Option<_>` and non-UUID keys are compile errors.
///
/// # Example
/// ```
/// use oversync_diesel::{KeyKind, SyncTable};
///
/// #[derive(SyncTable)]
/// #[diesel(table_name = notes)]
/// struct Note {
///     #[sync(key)]
///     id: String,
///     title: String,
///     #[diesel(column_name = body)]
///     text: Option<String>,
/// }
///
/// assert_eq!(Note::SPEC.table_name, "notes");
/// assert_eq!(Note::SPEC.key_kind, KeyKind::Text);
/// assert_eq!(Note::SPEC.columns[2].name, "body");
/// assert!(Note::SPEC.up_sql.contains("CREATE TRIGGER \"trg_notes_ai\""));
/// ```
pub trait SyncTable {
    /// The table's description, computed at compile time.
    const SPEC: &'static TableSpec;
}
