//! Multi-row statements built at runtime that Diesel still keeps prepared.
//!
//! `diesel::sql_query` is never cached: every call prepares its SQL again, and preparing a
//! statement on a synced table also compiles that table's triggers (an apply of 20k rows
//! spent 13% of its instructions in SQLite's parser). A [`CachedStatement`] is keyed in
//! Diesel's statement cache by its text and bind types, so it is prepared once per
//! connection. Two rules keep that cache small and its hits frequent:
//! - batches are cut into a few fixed sizes ([`statement_sizes`]), so one table has at most
//!   [`STATEMENT_ROWS`]`.len()` texts per kind of statement;
//! - a NULL binds with its column's type ([`BindType`]), so a text's bind types do not vary
//!   with which values are NULL. A value of another type than its column's (a JSON number
//!   that is an integer in a REAL column, say) is still bound as it is, exactly as before,
//!   and that one statement is then left out of the cache rather than adding an entry.
//!
//! Diesel writes each bind's `?` itself, so a statement's text marks where its binds go with
//! [`MARK`] (a NUL, which no SQL text or quoted name can hold) instead.

use crate::codec::SqlValue;
use crate::table::{ColumnSpec, ValueKind};
use diesel::QueryResult;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Binary, Double, Nullable, Text, Untyped};
use diesel::sqlite::{Sqlite, SqliteConnection};

/// Where a bind goes in a [`CachedStatement`]'s text.
pub(crate) const MARK: char = '\0';

/// `n` bind marks separated by commas: `(?, ?, ?)` is `format!("({})", marks(3))`.
pub(crate) fn marks(n: usize) -> String {
    vec![MARK.to_string(); n].join(", ")
}

/// Rows per statement, largest first; the last must be 1 so that any count can be cut.
const STATEMENT_ROWS: [usize; 3] = [64, 8, 1];

/// Cuts `rows` into statement sizes from [`STATEMENT_ROWS`], largest first, none above
/// `most` (a statement's bound-parameter limit in rows).
fn statement_sizes(mut rows: usize, most: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    for size in STATEMENT_ROWS.into_iter().filter(|s| *s <= most.max(1)) {
        while rows >= size {
            sizes.push(size);
            rows -= size;
        }
    }
    sizes
}

/// Runs `rows` as statements of the sizes [`statement_sizes`] gives, none above `most` rows:
/// `text(n)` writes the statement for `n` rows (once per size), `run` executes it for one
/// slice of `rows`.
pub(crate) fn in_statements<T>(
    rows: &[T],
    most: usize,
    text: impl Fn(usize) -> String,
    mut run: impl FnMut(&Template, &[T]) -> crate::error::Result<()>,
) -> crate::error::Result<()> {
    let mut templates: Vec<(usize, Template)> = Vec::with_capacity(STATEMENT_ROWS.len());
    let mut rest = rows;
    for size in statement_sizes(rows.len(), most) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let at = match templates.iter().position(|(s, _)| *s == size) {
            Some(at) => at,
            None => {
                templates.push((size, Template::new(text(size))));
                templates.len() - 1
            }
        };
        run(&templates[at].1, chunk)?;
    }
    Ok(())
}

/// `rows` copies of `row` separated by commas: the `VALUES` list of a multi-row statement.
pub(crate) fn value_rows(rows: usize, row: &str) -> String {
    vec![row; rows].join(", ")
}

/// The SQLite type a column's values bind as; a NULL binds with it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindType {
    Text,
    Integer,
    Real,
    Blob,
}

impl BindType {
    /// How the codec stores a value of `column` locally.
    pub(crate) fn of_column(column: &ColumnSpec) -> Self {
        match column.kind {
            _ if column.is_blob => BindType::Blob,
            ValueKind::Blob => BindType::Blob,
            ValueKind::Integer | ValueKind::Bool => BindType::Integer,
            ValueKind::Real => BindType::Real,
            ValueKind::Text
            | ValueKind::Timestamp
            | ValueKind::TimestampTz
            | ValueKind::Date
            | ValueKind::Time
            | ValueKind::Uuid => BindType::Text,
        }
    }
}

/// One bound value, borrowed from where it already lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bind<'a> {
    /// A value of an app column, with that column's type.
    Value(&'a SqlValue, BindType),
    Text(&'a str),
    Integer(i64),
}

impl Bind<'_> {
    /// The value's own type is its column's (or it is NULL).
    fn keeps_its_type(&self) -> bool {
        match self {
            Bind::Value(value, ty) => matches!(
                (value, ty),
                (SqlValue::Null, _)
                    | (SqlValue::Integer(_), BindType::Integer)
                    | (SqlValue::Real(_), BindType::Real)
                    | (SqlValue::Text(_), BindType::Text)
                    | (SqlValue::Blob(_), BindType::Blob)
            ),
            Bind::Text(_) | Bind::Integer(_) => true,
        }
    }
}

static NULL_TEXT: Option<String> = None;
static NULL_INTEGER: Option<i64> = None;
static NULL_REAL: Option<f64> = None;
static NULL_BLOB: Option<Vec<u8>> = None;

/// A statement's text with [`MARK`]s where its binds go, split once (Diesel walks a statement
/// several times per execution: for its cache key, its cacheability and its binds).
#[derive(Debug)]
pub(crate) struct Template {
    text: String,
    /// Byte offsets of the marks in `text`.
    marks: Vec<usize>,
}

impl Template {
    pub(crate) fn new(text: String) -> Self {
        let marks = text.match_indices(MARK).map(|(at, _)| at).collect();
        Template { text, marks }
    }
}

/// A [`Template`] and its binds, run through Diesel's statement cache (see the module docs).
/// Loads rows like `sql_query` ([`diesel::QueryableByName`]).
#[derive(Debug)]
pub(crate) struct CachedStatement<'a> {
    template: &'a Template,
    binds: Vec<Bind<'a>>,
    /// Every bind has its column's type (see [`Bind::keeps_its_type`]).
    cacheable: bool,
}

impl<'a> CachedStatement<'a> {
    pub(crate) fn new(template: &'a Template) -> Self {
        CachedStatement {
            template,
            binds: Vec::with_capacity(template.marks.len()),
            cacheable: true,
        }
    }

    pub(crate) fn bind_all(mut self, binds: impl IntoIterator<Item = Bind<'a>>) -> Self {
        for bind in binds {
            self.cacheable &= bind.keeps_its_type();
            self.binds.push(bind);
        }
        self
    }
}

impl QueryFragment<Sqlite> for CachedStatement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        if !self.cacheable {
            out.unsafe_to_cache_prepared();
        }
        let Template { text, marks } = self.template;
        if marks.len() != self.binds.len() {
            return Err(diesel::result::Error::QueryBuilderError(
                format!(
                    "statement has {} bind marks and {} binds",
                    marks.len(),
                    self.binds.len()
                )
                .into(),
            ));
        }
        let mut start = 0;
        for (bind, &at) in self.binds.iter().zip(marks) {
            out.push_sql(&text[start..at]);
            start = at + MARK.len_utf8();
            match *bind {
                Bind::Text(text) => out.push_bind_param::<Text, str>(text)?,
                Bind::Integer(ref i) => out.push_bind_param::<BigInt, i64>(i)?,
                Bind::Value(value, ty) => match (value, ty) {
                    (SqlValue::Null, BindType::Text) => {
                        out.push_bind_param::<Nullable<Text>, _>(&NULL_TEXT)?
                    }
                    (SqlValue::Null, BindType::Integer) => {
                        out.push_bind_param::<Nullable<BigInt>, _>(&NULL_INTEGER)?
                    }
                    (SqlValue::Null, BindType::Real) => {
                        out.push_bind_param::<Nullable<Double>, _>(&NULL_REAL)?
                    }
                    (SqlValue::Null, BindType::Blob) => {
                        out.push_bind_param::<Nullable<Binary>, _>(&NULL_BLOB)?
                    }
                    (SqlValue::Integer(i), _) => out.push_bind_param::<BigInt, i64>(i)?,
                    (SqlValue::Real(f), _) => out.push_bind_param::<Double, f64>(f)?,
                    (SqlValue::Text(t), _) => out.push_bind_param::<Text, String>(t)?,
                    (SqlValue::Blob(b), _) => out.push_bind_param::<Binary, Vec<u8>>(b)?,
                },
            }
        }
        out.push_sql(&text[start..]);
        Ok(())
    }
}

impl QueryId for CachedStatement<'_> {
    type QueryId = ();
    // Not known from the type: Diesel keys the cache by the SQL text and the bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for CachedStatement<'_> {
    type SqlType = Untyped;
}

impl diesel::RunQueryDsl<SqliteConnection> for CachedStatement<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;

    #[test]
    fn sizes_cover_every_count_with_few_texts() {
        for rows in 0..300 {
            let sizes = statement_sizes(rows, 1000);
            assert_eq!(sizes.iter().sum::<usize>(), rows);
            assert!(sizes.iter().all(|s| STATEMENT_ROWS.contains(s)));
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        }
        assert_eq!(statement_sizes(130, 1000), vec![64, 64, 1, 1]);
        // A parameter limit below the largest size skips it.
        assert_eq!(statement_sizes(20, 10), vec![8, 8, 1, 1, 1, 1]);
        assert_eq!(statement_sizes(3, 0), vec![1, 1, 1]);
    }

    #[derive(QueryableByName, Debug, PartialEq)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        kind: String,
    }

    /// Values keep their own SQLite type whether or not the statement is cached: an integer in
    /// a REAL-typed bind stays an integer, and NULLs are NULL.
    #[test]
    fn binds_keep_values_exactly() {
        let mut conn = SqliteConnection::establish(":memory:").expect("memory db");
        conn.batch_execute("CREATE TABLE t (a, b)").expect("table");
        let sql = &Template::new(format!(
            "INSERT INTO t (a, b) VALUES ({0}), ({0})",
            marks(2)
        ));
        let values = [
            SqlValue::Integer(3),
            SqlValue::Null,
            SqlValue::Text("x".into()),
            SqlValue::Blob(vec![1, 2]),
        ];
        for types in [
            [
                BindType::Real,
                BindType::Text,
                BindType::Text,
                BindType::Blob,
            ],
            [
                BindType::Integer,
                BindType::Integer,
                BindType::Text,
                BindType::Blob,
            ],
        ] {
            CachedStatement::new(sql)
                .bind_all(values.iter().zip(types).map(|(v, t)| Bind::Value(v, t)))
                .execute(&mut conn)
                .expect("insert");
        }
        let select = Template::new(
            "SELECT quote(a) || ',' || quote(b) AS t, typeof(a) || ',' || typeof(b) AS kind \
             FROM t WHERE a <> \0 ORDER BY rowid"
                .into(),
        );
        let rows: Vec<Row> = CachedStatement::new(&select)
            .bind_all([Bind::Text("none")])
            .load(&mut conn)
            .expect("load");
        let expected = |t: &str, kind: &str| Row {
            t: t.into(),
            kind: kind.into(),
        };
        assert_eq!(
            rows,
            vec![
                expected("3,NULL", "integer,null"),
                expected("'x',X'0102'", "text,blob"),
                expected("3,NULL", "integer,null"),
                expected("'x',X'0102'", "text,blob"),
            ]
        );
        // A count that does not match the marks is an error, not a shifted bind.
        let short = CachedStatement::new(sql)
            .bind_all([Bind::Integer(1)])
            .execute(&mut conn);
        assert!(
            matches!(short, Err(diesel::result::Error::QueryBuilderError(_))),
            "{short:?}"
        );
    }
}
