//! What `#[derive(SyncTable)]` produces: a static description of one synced table.

/// How a table's sync key column stores its UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `TEXT` holding a canonical lowercase dashed UUID.
    Text,
    /// `BLOB` holding the 16 UUID bytes.
    Blob,
}

/// What a column's values are, as the model field's Rust type says (or `#[sync(kind = ...)]`).
///
/// The kind decides how a value changes form between SQLite and the server, so that a value
/// written locally reads back in the same text form after a sync (see the README's type table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// Anything stored as it comes (`String` and types the derive cannot see through).
    Text,
    /// `i8`..`i64`, `u8`..`u32`: SQLite INTEGER; server booleans arrive as 0/1.
    Integer,
    /// `f32`/`f64`: SQLite REAL.
    Real,
    /// `bool`: SQLite 0/1, server `boolean` (or an integer column).
    Bool,
    /// Byte types: SQLite BLOB, base64 on the wire.
    Blob,
    /// `chrono::NaiveDateTime` (Diesel `Timestamp`): `YYYY-MM-DD HH:MM:SS[.f]`, taken as UTC.
    Timestamp,
    /// `chrono::DateTime<Utc>` (Diesel `TimestamptzSqlite`): `YYYY-MM-DD HH:MM:SS[.f]+00:00`.
    TimestampTz,
    /// `chrono::NaiveDate` (Diesel `Date`): `YYYY-MM-DD`.
    Date,
    /// `chrono::NaiveTime` (Diesel `Time`): `HH:MM:SS[.f]`.
    Time,
    /// `uuid::Uuid` or a UUID key: canonical text, or 16 bytes in a BLOB column.
    Uuid,
}

/// One column of a synced table, in model field order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    /// SQL column name.
    pub name: &'static str,
    /// The column stores BLOBs: lowercase hex locally, base64 on the wire (UUID text for keys).
    pub is_blob: bool,
    /// What the values are, which fixes their local and wire text forms.
    pub kind: ValueKind,
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
    /// Capture triggers (each also refuses app writes during a sync transition).
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
/// - `#[sync(kind = "...")]` on a non-key field names its [`ValueKind`] when the type does not
///   tell (a newtype): `"text"`, `"integer"`, `"real"`, `"bool"`, `"blob"`, `"timestamp"`,
///   `"timestamptz"`, `"date"`, `"time"` or `"uuid"` (with `blob` for a 16-byte UUID column).
///   Without it the kind follows the type: `String`, integers, `f32`/`f64`, `bool`, byte types,
///   `NaiveDateTime`, `DateTime<_>`, `NaiveDate`, `NaiveTime`, `Uuid` and `Option`s of these.
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
