//! Whether a committed bundle the server attributes to this outbox's source tuple really is
//! this outbox's bundle.
//!
//! Two copies of one database file (a restored backup, a cloned device) share a source id and
//! its sequence, so the second copy's push can be answered `already_committed` with the first
//! copy's bundle. Accepting it would drop the second copy's writes silently. The committed
//! bundle is therefore compared with the outbox in wire form as its pages arrive: every
//! outbox row present once, with the same kind of op and payload values equivalent the way the
//! server normalizes them (numbers, timestamps, booleans, JSON), so a legitimate bundle is
//! never refused. Rows for keys the outbox does not hold are the server's own effects of the
//! push (a cascade, a trigger) and are allowed.

use crate::codec::{self, UuidRefs};
use crate::config::OversyncConfig;
use crate::error::Result;
use crate::statement::{Bind, CachedStatement, Template};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use oversync_protocol::{BundleRow, Op};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::LazyLock;

#[derive(QueryableByName)]
struct Frozen {
    #[diesel(sql_type = BigInt)]
    row_ordinal: i64,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    key_json: String,
    #[diesel(sql_type = Text)]
    op: String,
    #[diesel(sql_type = Nullable<Text>)]
    local_payload: Option<String>,
}

/// Compares a committed bundle with the frozen outbox page by page, as the bundle's pages
/// arrive, so nothing is read back or parsed twice.
///
/// A server that commits rows in the order they were pushed puts committed row `i` beside
/// outbox row `i`: those are compared from one range read of the outbox. Any other row is
/// looked up by key (a server effect shifts the rows after it, and the order is the
/// server's to choose).
pub(crate) struct OutboxCheck {
    source_bundle_id: i64,
    /// Which outbox rows a committed row matched: each must match exactly once.
    matched: Vec<bool>,
    matched_count: usize,
    /// The first difference found; later rows are not compared.
    differs: Option<String>,
}

impl OutboxCheck {
    /// A check against the outbox frozen as `source_bundle_id` with `row_count` rows.
    pub(crate) fn new(source_bundle_id: i64, row_count: i64) -> Self {
        OutboxCheck {
            source_bundle_id,
            matched: vec![false; usize::try_from(row_count).unwrap_or(0)],
            matched_count: 0,
            differs: None,
        }
    }

    /// Checks the committed rows `first_ordinal..` of one page of a bundle of
    /// `committed_rows` rows.
    pub(crate) fn page(
        &mut self,
        conn: &mut SqliteConnection,
        config: &OversyncConfig,
        refs: &UuidRefs,
        committed_rows: i64,
        first_ordinal: i64,
        rows: &[BundleRow],
    ) -> Result<()> {
        let frozen = self.matched.len();
        if self.differs.is_none() && usize::try_from(committed_rows).unwrap_or(0) < frozen {
            self.differs = Some(format!(
                "the bundle has {committed_rows} rows, the outbox {frozen}"
            ));
        }
        if self.differs.is_some() || rows.is_empty() {
            return Ok(());
        }
        let beside: HashMap<i64, Frozen> = diesel::sql_query(
            "SELECT row_ordinal, table_name, key_json, op, local_payload FROM _sync_outbox_rows \
             WHERE source_bundle_id = ? AND row_ordinal >= ? AND row_ordinal < ?",
        )
        .bind::<BigInt, _>(self.source_bundle_id)
        .bind::<BigInt, _>(first_ordinal)
        .bind::<BigInt, _>(first_ordinal + rows.len() as i64)
        .load::<Frozen>(conn)?
        .into_iter()
        .map(|f| (f.row_ordinal, f))
        .collect();
        for (ordinal, row) in (first_ordinal..).zip(rows) {
            let check = row_check(conn, config, refs, row, beside.get(&ordinal))?;
            let why = match check {
                RowCheck::Matches(frozen_ordinal) => match usize::try_from(frozen_ordinal)
                    .ok()
                    .and_then(|i| self.matched.get_mut(i))
                {
                    Some(seen) if !*seen => {
                        *seen = true;
                        self.matched_count += 1;
                        continue;
                    }
                    Some(_) => "repeats a key".to_string(),
                    None => format!("matches outbox row {frozen_ordinal}, beyond its rows"),
                },
                RowCheck::ServerEffect => continue,
                RowCheck::Differs(why) => why,
            };
            self.differs = Some(format!(
                "row {ordinal} ({} {:?}): {why}",
                row.table, row.key
            ));
            return Ok(());
        }
        Ok(())
    }

    /// `None` when the whole bundle was this outbox's intent; otherwise what differs first
    /// (the bundle belongs to another install sharing this source id).
    pub(crate) fn finish(self) -> Option<String> {
        if self.differs.is_some() {
            return self.differs;
        }
        (self.matched_count != self.matched.len()).then(|| {
            format!(
                "the bundle holds {} of the outbox's {} rows",
                self.matched_count,
                self.matched.len()
            )
        })
    }
}

/// How one committed row relates to the outbox.
enum RowCheck {
    /// It is the outbox row of this ordinal, as sent.
    Matches(i64),
    /// Its key is not in the outbox: an effect the server's own schema added (a cascade).
    ServerEffect,
    /// It cannot be this outbox's row.
    Differs(String),
}

/// Checks one committed row; `beside` is the outbox row of the same ordinal, if any.
fn row_check(
    conn: &mut SqliteConnection,
    config: &OversyncConfig,
    refs: &UuidRefs,
    row: &BundleRow,
    beside: Option<&Frozen>,
) -> Result<RowCheck> {
    if row.schema != config.schema() {
        return Ok(RowCheck::Differs(format!("schema {}", row.schema)));
    }
    let Some(spec) = config.table_named(&row.table) else {
        return Ok(RowCheck::Differs("table not registered here".into()));
    };
    let Ok((_, key_json)) = codec::key_wire_to_local(spec, &row.key) else {
        return Ok(RowCheck::Differs("key is not this table's key".into()));
    };
    // Once per committed row out of push order: a cached statement, not one prepared per row.
    static FROZEN_ROW: LazyLock<Template> = LazyLock::new(|| {
        Template::new(
            "SELECT row_ordinal, table_name, key_json, op, local_payload FROM _sync_outbox_rows WHERE table_name = \0 AND key_json = \0"
                .into(),
        )
    });
    let looked_up;
    let frozen = match beside {
        Some(f) if f.table_name == spec.table_name && f.key_json == key_json => f,
        _ => {
            looked_up = CachedStatement::new(&FROZEN_ROW)
                .bind_all([Bind::Text(spec.table_name), Bind::Text(&key_json)])
                .get_result::<Frozen>(conn)
                .optional()?;
            match &looked_up {
                Some(f) => f,
                None => return Ok(RowCheck::ServerEffect),
            }
        }
    };
    let deletes = (
        row.op == Op::Delete,
        Op::parse(&frozen.op) == Some(Op::Delete),
    );
    match deletes {
        (true, true) => return Ok(RowCheck::Matches(frozen.row_ordinal)),
        (false, false) => {}
        // The server may record a write as INSERT or UPDATE, but never swaps write and delete.
        _ => {
            return Ok(RowCheck::Differs(format!(
                "op {} where the outbox has {}",
                row.op.as_str(),
                frozen.op
            )));
        }
    }
    let (Some(local), Some(committed)) = (frozen.local_payload.as_deref(), row.payload.as_ref())
    else {
        return Ok(RowCheck::Differs("write without payload".into()));
    };
    let local = codec::payload_local_to_wire(spec, refs, local)?;
    let Value::Object(committed) = committed else {
        return Ok(RowCheck::Differs("payload is not an object".into()));
    };
    Ok(payload_mismatch(&local, committed)
        .map_or(RowCheck::Matches(frozen.row_ordinal), RowCheck::Differs))
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
    use crate::table::{ColumnSpec, KeyKind, TableSpec, ValueKind};
    use diesel::connection::SimpleConnection;
    use serde_json::json;

    const NOTES: TableSpec = TableSpec {
        table_name: "notes",
        key_column: "id",
        key_kind: KeyKind::Text,
        columns: &[
            ColumnSpec {
                name: "id",
                is_blob: false,
                kind: ValueKind::Text,
            },
            ColumnSpec {
                name: "n",
                is_blob: false,
                kind: ValueKind::Integer,
            },
        ],
        up_sql: "",
        down_sql: "",
        triggers: &[],
    };

    /// The UUID key named by one letter.
    fn id(key: &str) -> String {
        format!(
            "00000000-0000-4000-8000-0000000000{:02x}",
            key.as_bytes()[0]
        )
    }

    /// An outbox of `keys` (upserts with `n` = position, "d" deleted), frozen as bundle 7.
    fn outbox(keys: &[&str]) -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(crate::migrations::METADATA_UP).unwrap();
        for (i, key) in keys.iter().enumerate() {
            let (op, payload) = if *key == "d" {
                ("DELETE", None)
            } else {
                ("INSERT", Some(json!({"id": id(key), "n": i}).to_string()))
            };
            diesel::sql_query(
                "INSERT INTO _sync_outbox_rows(source_bundle_id, row_ordinal, schema_name, table_name, key_json, wire_key_json, op, base_row_version, local_payload) \
                 VALUES (7, ?, 'app', 'notes', ?, '', ?, 0, ?)",
            )
            .bind::<BigInt, _>(i as i64)
            .bind::<Text, _>(json!({"id": id(key)}).to_string())
            .bind::<Text, _>(op)
            .bind::<Nullable<Text>, _>(payload)
            .execute(&mut conn)
            .unwrap();
        }
        conn
    }

    fn committed(key: &str, n: usize) -> BundleRow {
        BundleRow {
            schema: "app".into(),
            table: "notes".into(),
            key: oversync_protocol::sync_key("id", &id(key)),
            op: if key == "d" { Op::Delete } else { Op::Update },
            row_version: 3,
            // The server renders the integer as a float: still the same value.
            payload: (key != "d").then(|| json!({"id": id(key), "n": n as f64})),
        }
    }

    /// Runs the check over `rows` in pages of `page` rows.
    fn check(
        conn: &mut SqliteConnection,
        frozen: i64,
        rows: &[BundleRow],
        page: usize,
    ) -> Option<String> {
        let config = OversyncConfig::new("app").table_spec(&NOTES);
        let mut check = OutboxCheck::new(7, frozen);
        for (i, chunk) in rows.chunks(page).enumerate() {
            let first = (i * page) as i64;
            check
                .page(
                    conn,
                    &config,
                    &UuidRefs::new(),
                    rows.len() as i64,
                    first,
                    chunk,
                )
                .unwrap();
        }
        check.finish()
    }

    #[test]
    fn a_bundle_in_push_order_or_any_other_with_server_effects_is_the_outbox() {
        let keys = ["a", "b", "d", "c"];
        let mut conn = outbox(&keys);
        let in_order: Vec<BundleRow> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| committed(k, i))
            .collect();
        assert_eq!(check(&mut conn, 4, &in_order, 2), None);
        // A cascade row first shifts every row off its outbox ordinal; reversed, only one
        // row sits beside its own.
        let mut shifted = vec![committed("x", 9)];
        shifted.extend(in_order.iter().cloned());
        assert_eq!(check(&mut conn, 4, &shifted, 3), None);
        let reversed: Vec<BundleRow> = in_order.iter().rev().cloned().collect();
        assert_eq!(check(&mut conn, 4, &reversed, 1), None);
    }

    #[test]
    fn another_installs_bundle_is_told_apart() {
        let keys = ["a", "b", "c"];
        let mut conn = outbox(&keys);
        let ours: Vec<BundleRow> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| committed(k, i))
            .collect();
        // A value differs.
        let mut other = ours.clone();
        other[1] = committed("b", 5);
        let why = check(&mut conn, 3, &other, 2).expect("a changed value");
        assert!(why.contains("row 1") && why.contains("n is 5"), "{why}");
        // A row is missing (the bundle is shorter), or replaced by a repeat of another key.
        assert!(
            check(&mut conn, 3, &ours[..2], 2)
                .expect("short")
                .contains("2 rows")
        );
        let repeated = vec![ours[0].clone(), ours[1].clone(), ours[0].clone()];
        assert!(
            check(&mut conn, 3, &repeated, 2)
                .expect("repeat")
                .contains("repeats a key")
        );
        // A delete where the outbox wrote, or a write where it deleted.
        let mut swapped = ours.clone();
        swapped[2] = BundleRow {
            op: Op::Delete,
            payload: None,
            ..ours[2].clone()
        };
        assert!(
            check(&mut conn, 3, &swapped, 3)
                .expect("op")
                .contains("op DELETE")
        );
        // Every row present but one outbox row never matched: a foreign key the outbox lacks.
        let mut foreign = ours.clone();
        foreign[2] = committed("z", 2);
        let why = check(&mut conn, 3, &foreign, 3).expect("unmatched");
        assert!(why.contains("2 of the outbox's 3"), "{why}");
    }

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
