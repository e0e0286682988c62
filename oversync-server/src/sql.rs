//! Quoting of identifiers and literals for the few statements that need dynamic names.
//! Every name comes from the validated registry; quoting is still applied everywhere.

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
