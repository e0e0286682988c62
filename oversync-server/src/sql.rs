//! Quoting of identifiers and literals for the few statements that need dynamic names.
//! Every name comes from the validated registry; quoting is still applied everywhere.
//! Statements on the hot paths run prepared once per connection ([`exec`], [`query`]).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Parameters of one statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Executes `sql` as a statement prepared once per pooled connection: a text statement costs
/// two round trips (parse, then bind and execute) and a fresh plan on every call.
pub(crate) async fn exec(
    tx: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.execute(&stmt, params).await
}

/// [`exec`] returning the rows.
pub(crate) async fn query(
    tx: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query(&stmt, params).await
}

/// [`exec`] returning exactly one row.
pub(crate) async fn query_one(
    tx: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query_one(&stmt, params).await
}

/// [`exec`] returning at most one row.
pub(crate) async fn query_opt(
    tx: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query_opt(&stmt, params).await
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on since PG 9.1).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `"schema"."table"`.
pub(crate) fn table_ident(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// SQLSTATE classes caused by the pushed data itself (bad values, constraint violations,
/// the owner guard), reported as 400 rather than 500.
pub(crate) fn is_data_error(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|c| {
        let code = c.code();
        code.starts_with("22") || code.starts_with("23") || code == "P0001" || code == "42703"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(table_ident("s", "t"), "\"s\".\"t\"");
    }
}
