//! SQL types for model fields that Diesel's SQLite backend does not map by itself.
//!
//! Diesel has no `Uuid` SQL type for SQLite, so a `uuid::Uuid` field cannot be `Queryable`
//! or `Insertable` against a `TEXT` column. [`UuidText`] is a `uuid::Uuid` stored as its
//! canonical text (lowercase, dashed), the form the protocol sends, usable as the
//! `#[sync(key)]` field and as a foreign-key field:
//!
//! ```
//! use diesel::prelude::*;
//! use oversync_diesel::SyncTable;
//! use oversync_diesel::types::UuidText;
//!
//! diesel::table! { notes (id) { id -> Text, title -> Text, parent_id -> Nullable<Text> } }
//!
//! #[derive(Queryable, Insertable, SyncTable)]
//! #[diesel(table_name = notes)]
//! struct Note {
//!     #[sync(key)]
//!     id: UuidText,
//!     title: String,
//!     parent_id: Option<UuidText>,
//! }
//!
//! let note = Note { id: uuid::Uuid::new_v4().into(), title: "hi".into(), parent_id: None };
//! assert_eq!(note.id.to_string().len(), 36);
//! ```

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use diesel::sqlite::{Sqlite, SqliteValue};
use serde::{Deserialize, Serialize};

/// A `uuid::Uuid` stored in a SQLite `TEXT` column as canonical lowercase dashed text.
/// Reading text that is not a UUID fails the query with a deserialization error naming the
/// value.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
)]
#[diesel(sql_type = Text)]
#[serde(transparent)]
pub struct UuidText(pub uuid::Uuid);

impl UuidText {
    /// A new random (v4) UUID.
    pub fn new_v4() -> Self {
        UuidText(uuid::Uuid::new_v4())
    }
}

impl From<uuid::Uuid> for UuidText {
    fn from(id: uuid::Uuid) -> Self {
        UuidText(id)
    }
}

impl From<UuidText> for uuid::Uuid {
    fn from(id: UuidText) -> Self {
        id.0
    }
}

impl std::fmt::Display for UuidText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for UuidText {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(UuidText)
    }
}

impl ToSql<Text, Sqlite> for UuidText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.hyphenated().to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<Text, Sqlite> for UuidText {
    fn from_sql(bytes: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(bytes)?;
        uuid::Uuid::parse_str(&text)
            .map(UuidText)
            .map_err(|e| format!("{text:?} is not a UUID: {e}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::prelude::*;
    use diesel::sql_types::Text;

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        id: UuidText,
    }

    #[test]
    fn round_trips_as_canonical_text_and_refuses_other_text() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        let id: UuidText = "0123ABCD-89ab-cdef-0123-456789abcdef".parse().unwrap();
        let stored: Vec<Row> = diesel::sql_query("SELECT ? AS id")
            .bind::<Text, _>(id)
            .load(&mut conn)
            .unwrap();
        assert_eq!(stored[0].id, id);
        #[derive(QueryableByName)]
        struct Raw {
            #[diesel(sql_type = Text)]
            text: String,
        }
        let raw: Raw = diesel::sql_query("SELECT ? AS text")
            .bind::<Text, _>(id)
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(raw.text, "0123abcd-89ab-cdef-0123-456789abcdef");
        let err = diesel::sql_query("SELECT 'nope' AS id")
            .load::<Row>(&mut conn)
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("\"nope\" is not a UUID"), "{err}");
    }
}
