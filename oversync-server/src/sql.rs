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

/// Most statements [`pipeline`] sends at once: `join_all` polls (and so sends) its futures
/// in order only up to 30 of them.
const PIPELINE_DEPTH: usize = 16;

/// Runs `statements` in order, each prepared once per connection, sending them back to back
/// so that they cost one round trip together instead of one each. Returns the rows of each;
/// the first failure (in statement order) is returned, the later ones only echo it (the
/// transaction is aborted).
pub(crate) async fn pipeline(
    tx: &impl GenericClient,
    statements: &[(&str, Params<'_>)],
) -> Result<Vec<Vec<Row>>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(statements.len());
    for batch in statements.chunks(PIPELINE_DEPTH) {
        let prepared =
            futures_util::future::join_all(batch.iter().map(|(text, _)| tx.prepare_cached(text)))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
        let results = futures_util::future::join_all(
            prepared
                .iter()
                .zip(batch)
                .map(|(stmt, (_, params))| tx.query(stmt, params)),
        )
        .await;
        for result in results {
            out.push(result?);
        }
    }
    Ok(out)
}

/// A transaction begun and ended by statements inside [`pipeline`]s (`BEGIN`, `COMMIT`), so
/// that neither costs a round trip of its own. Dropped while still open (an early return,
/// a cancelled request), it closes its connection rather than return it to the pool inside
/// the transaction.
pub(crate) struct OpenTx(Option<deadpool_postgres::Object>);

impl OpenTx {
    /// `client` must not be in a transaction; the caller's first pipeline begins one.
    pub(crate) fn new(client: deadpool_postgres::Object) -> OpenTx {
        OpenTx(Some(client))
    }

    pub(crate) fn client(&self) -> &deadpool_postgres::Object {
        match &self.0 {
            Some(client) => client,
            // Only the consuming `committed` and `rollback` take it.
            None => unreachable!("transaction used after its end"),
        }
    }

    /// The caller's last pipeline ended with a `COMMIT` that succeeded.
    fn committed(mut self) {
        self.0.take();
    }

    /// Ends the transaction after the caller's attempt: `Some` means its last pipeline
    /// committed; `None` (the attempt declined) and an error roll back.
    pub(crate) async fn end<T>(
        self,
        attempt: Result<Option<T>, crate::error::SyncError>,
    ) -> Result<Option<T>, crate::error::SyncError> {
        match attempt {
            Ok(Some(answer)) => {
                self.committed();
                Ok(Some(answer))
            }
            Ok(None) => {
                self.rollback().await?;
                Ok(None)
            }
            Err(e) => {
                let _ = self.rollback().await;
                Err(e)
            }
        }
    }

    pub(crate) async fn rollback(mut self) -> Result<(), tokio_postgres::Error> {
        if let Some(client) = self.0.take()
            && let Err(e) = client.batch_execute("ROLLBACK").await
        {
            drop(deadpool_postgres::Object::take(client));
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Owned statement lists as [`pipeline`] takes them.
pub(crate) fn params_list<'a>(
    statements: &'a [(&'a str, Vec<&'a (dyn ToSql + Sync)>)],
) -> Vec<(&'a str, Params<'a>)> {
    statements.iter().map(|(t, p)| (*t, p.as_slice())).collect()
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
