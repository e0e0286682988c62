//! Whether a committed bundle the server attributes to this outbox's source tuple really is
//! this outbox's bundle.
//!
//! Two copies of one database file (a restored backup, a cloned device) share a source id and
//! its sequence, so the second copy's push can be answered `already_committed` with the first
//! copy's bundle. Accepting it would drop the second copy's writes silently. The staged bundle
//! is therefore compared with the outbox, key by key, in wire form: every outbox row present
//! once, with the same kind of op and payload values equivalent the way the server normalizes
//! them (numbers, timestamps, booleans, JSON), so a legitimate bundle is never refused. Rows
//! for keys the outbox does not hold are the server's own effects of the push (a cascade, a
//! trigger) and are allowed.

use crate::codec::{self, UuidRefs};
use crate::config::OversyncConfig;
use crate::error::Result;
use crate::statement::{Bind, CachedStatement, Template};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use oversync_protocol::Op;
use serde_json::{Map, Value};
use std::sync::LazyLock;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Staged {
    #[diesel(sql_type = BigInt)]
    row_ordinal: i64,
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    key_json: String,
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = Nullable<Text>)]
    payload: Option<String>,
}

#[derive(QueryableByName)]
struct Frozen {
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = Nullable<Text>)]
    local_payload: Option<String>,
}

/// Rows compared per page, so memory stays bounded for large bundles.
const PAGE: i64 = 1000;

/// `None` when the staged bundle `bundle_seq` is exactly the outbox's intent; otherwise what
/// differs first (the bundle belongs to another install sharing this source id).
pub(crate) fn outbox_mismatch(
    conn: &mut SqliteConnection,
    config: &OversyncConfig,
    refs: &UuidRefs,
    bundle_seq: i64,
) -> Result<Option<String>> {
    let staged: Count =
        diesel::sql_query("SELECT COUNT(*) AS n FROM _sync_push_stage WHERE bundle_seq = ?")
            .bind::<BigInt, _>(bundle_seq)
            .get_result(conn)?;
    let frozen: Count =
        diesel::sql_query("SELECT COUNT(*) AS n FROM _sync_outbox_rows").get_result(conn)?;
    if staged.n < frozen.n {
        return Ok(Some(format!(
            "bundle {bundle_seq} has {} rows, the outbox {}",
            staged.n, frozen.n
        )));
    }
    let distinct: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM (SELECT DISTINCT table_name, key_json FROM _sync_push_stage WHERE bundle_seq = ?)",
    )
    .bind::<BigInt, _>(bundle_seq)
    .get_result(conn)?;
    if distinct.n != staged.n {
        return Ok(Some(format!("bundle {bundle_seq} repeats a key")));
    }
    // Distinct staged keys: every outbox key matched once means every outbox row is present.
    let mut from = 0i64;
    let mut matched = 0i64;
    loop {
        let page: Vec<Staged> = diesel::sql_query(
            "SELECT row_ordinal, schema_name, table_name, key_json, op, payload FROM _sync_push_stage \
             WHERE bundle_seq = ? AND row_ordinal >= ? ORDER BY row_ordinal LIMIT ?",
        )
        .bind::<BigInt, _>(bundle_seq)
        .bind::<BigInt, _>(from)
        .bind::<BigInt, _>(PAGE)
        .load(conn)?;
        let Some(last) = page.last() else {
            return Ok((matched != frozen.n).then(|| {
                format!(
                    "bundle {bundle_seq} holds {matched} of the outbox's {} rows",
                    frozen.n
                )
            }));
        };
        from = last.row_ordinal + 1;
        for row in page {
            match row_mismatch(conn, config, refs, &row)? {
                RowCheck::Matches => matched += 1,
                RowCheck::ServerEffect => {}
                RowCheck::Differs(why) => {
                    return Ok(Some(format!(
                        "bundle {bundle_seq} row {} ({} {}): {why}",
                        row.row_ordinal, row.table_name, row.key_json
                    )));
                }
            }
        }
    }
}

/// How one committed row relates to the outbox.
enum RowCheck {
    /// It is an outbox row, as sent.
    Matches,
    /// Its key is not in the outbox: an effect the server's own schema added (a cascade).
    ServerEffect,
    /// It cannot be this outbox's row.
    Differs(String),
}

fn row_mismatch(
    conn: &mut SqliteConnection,
    config: &OversyncConfig,
    refs: &UuidRefs,
    row: &Staged,
) -> Result<RowCheck> {
    if row.schema_name != config.schema() {
        return Ok(RowCheck::Differs(format!("schema {}", row.schema_name)));
    }
    let Some(spec) = config.table_named(&row.table_name) else {
        return Ok(RowCheck::Differs("table not registered here".into()));
    };
    let Ok(Value::Object(key)) = serde_json::from_str::<Value>(&row.key_json) else {
        return Ok(RowCheck::Differs("key is not an object".into()));
    };
    let Ok((_, key_json)) = codec::key_wire_to_local(spec, &key) else {
        return Ok(RowCheck::Differs("key is not this table's key".into()));
    };
    // Once per committed row: a cached statement, not one prepared per row.
    static FROZEN_ROW: LazyLock<Template> = LazyLock::new(|| {
        Template::new(
            "SELECT op, local_payload FROM _sync_outbox_rows WHERE table_name = \0 AND key_json = \0"
                .into(),
        )
    });
    let frozen: Option<Frozen> = CachedStatement::new(&FROZEN_ROW)
        .bind_all([Bind::Text(spec.table_name), Bind::Text(&key_json)])
        .get_result(conn)
        .optional()?;
    let Some(frozen) = frozen else {
        return Ok(RowCheck::ServerEffect);
    };
    let deletes = (
        Op::parse(&row.op) == Some(Op::Delete),
        Op::parse(&frozen.op) == Some(Op::Delete),
    );
    match deletes {
        (true, true) => return Ok(RowCheck::Matches),
        (false, false) => {}
        // The server may record a write as INSERT or UPDATE, but never swaps write and delete.
        _ => {
            return Ok(RowCheck::Differs(format!(
                "op {} where the outbox has {}",
                row.op, frozen.op
            )));
        }
    }
    let (Some(local), Some(committed)) = (frozen.local_payload, row.payload.as_deref()) else {
        return Ok(RowCheck::Differs("write without payload".into()));
    };
    let local = codec::payload_local_to_wire(spec, refs, &local)?;
    let Ok(Value::Object(committed)) = serde_json::from_str::<Value>(committed) else {
        return Ok(RowCheck::Differs("payload is not an object".into()));
    };
    Ok(payload_mismatch(&local, &committed).map_or(RowCheck::Matches, RowCheck::Differs))
}

/// Every column this install sent must be present with an equivalent value; columns only the
/// server has are not this install's concern.
fn payload_mismatch(sent: &Map<String, Value>, committed: &Map<String, Value>) -> Option<String> {
    sent.iter()
        .find_map(|(column, value)| match committed.get(column) {
            Some(other) if equivalent(value, other) => None,
            Some(other) => Some(format!("{column} is {other}, the outbox has {value}")),
            None => Some(format!("{column} is missing")),
        })
}

/// Whether two wire values denote the same stored value after the server's normalization.
pub(crate) fn equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        _ if a == b => true,
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64().is_some() && x.as_f64() == y.as_f64(),
        },
        (Value::Bool(p), Value::Number(n)) | (Value::Number(n), Value::Bool(p)) => {
            n.as_i64() == Some(i64::from(*p))
        }
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .is_some_and(|f| Some(f) == n.as_f64()),
        (Value::String(s), Value::String(t)) => match (instant_nanos(s), instant_nanos(t)) {
            // PostgreSQL keeps microseconds and renders its own offset.
            (Some(x), Some(y)) => (x - y).abs() < 1000,
            _ => false,
        },
        (Value::String(s), other @ (Value::Object(_) | Value::Array(_)))
        | (other @ (Value::Object(_) | Value::Array(_)), Value::String(s)) => {
            serde_json::from_str::<Value>(s).is_ok_and(|v| equivalent(&v, other))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equivalent(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| equivalent(v, w)))
        }
        _ => false,
    }
}

/// An RFC 3339 / ISO 8601 timestamp (`YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH[:MM]]`, no offset
/// read as UTC) as nanoseconds since the Unix epoch; `None` for anything else.
fn instant_nanos(text: &str) -> Option<i128> {
    let s = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    if s.len() < 19
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + i128::from(s[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset_seconds: i64 = match s.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = num(i + 1..i + 3)?;
            let rest = &s[i + 3..];
            let minutes = match rest {
                [] => 0,
                [b':', ..] if rest.len() == 3 => num(i + 4..i + 6)?,
                _ if rest.len() == 2 => num(i + 3..i + 5)?,
                _ => return None,
            };
            let total = hours * 3600 + minutes * 60;
            if *sign == b'-' { -total } else { total }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(i128::from(seconds) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_compare_as_instants() {
        let pairs = [
            (
                "2026-11-22T14:21:16.785690Z",
                "2026-11-22T14:21:16.78569+00:00",
            ),
            ("2000-02-29T00:00:00Z", "2000-02-29T01:00:00+01:00"),
            ("2000-02-29T00:00:00Z", "2000-02-28T19:30:00-0430"),
            ("2026-01-01 00:00:00", "2026-01-01T00:00:00Z"),
            (
                "2026-01-01T00:00:00.123456789Z",
                "2026-01-01T00:00:00.123457Z",
            ),
        ];
        for (a, b) in pairs {
            assert!(equivalent(&json!(a), &json!(b)), "{a} vs {b}");
        }
        assert!(!equivalent(
            &json!("2026-01-01T00:00:00Z"),
            &json!("2026-01-01T00:00:01Z")
        ));
        assert!(!equivalent(&json!("abc"), &json!("abd")));
        assert_eq!(instant_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(instant_nanos("not a time at all!!"), None);
    }

    #[test]
    fn numbers_booleans_and_json_compare_by_value() {
        assert!(equivalent(&json!(2.0), &json!(2)));
        assert!(equivalent(&json!(0.1 + 0.2), &json!(0.30000000000000004)));
        assert!(!equivalent(&json!(1), &json!(2)));
        assert!(equivalent(&json!(true), &json!(1)));
        assert!(equivalent(&json!("1.50"), &json!(1.5)));
        assert!(equivalent(
            &json!("{\"b\": 1, \"a\": [2.0]}"),
            &json!({"a": [2], "b": 1})
        ));
        assert!(!equivalent(&json!(null), &json!(0)));
        assert!(!equivalent(&json!("x"), &json!(null)));
    }
}
