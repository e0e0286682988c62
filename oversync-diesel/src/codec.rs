//! Row encodings and their checks. A row exists in three forms:
//! - local: `_sync_dirty_rows.key_json` as the capture triggers write it and a write's
//!   payload as `capture` reads it from the row: BLOBs as lowercase hex, BLOB keys as 32 hex
//!   digits;
//! - wire: what the protocol carries: BLOBs as standard base64, keys (BLOB or TEXT) as
//!   canonical lowercase dashed UUID strings;
//! - SQL: the values bound into the app's tables when server data is applied.
//!
//! Dates and times change form too (see [`ValueKind`]): locally they are Diesel's SQLite
//! text, on the wire RFC 3339 in UTC, and whatever form the server answers with (PostgreSQL's
//! `2026-12-01T19:38:25.351548+00:00`, ...) is written back as Diesel's text, so sorting and
//! comparing the column as text keeps working. Text that is not a date or time stays as is.
//!
//! Everything coming from the server is validated here before it can touch a table or a
//! checkpoint; a violation is an [`InvalidResponse`](crate::Error::InvalidResponse).

use crate::error::{Error, Result};
use crate::table::{ColumnSpec, KeyKind, TableSpec, ValueKind};
use crate::temporal::{Moment, canonical_date, canonical_time};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

/// Per table, the BLOB columns that hold UUIDs besides the key: foreign keys to UUID keys
/// (found by `open()` in SQLite's foreign-key list). They travel as UUID text, like keys.
pub(crate) type UuidRefs =
    std::collections::HashMap<&'static str, std::collections::HashSet<String>>;

/// The hidden owner column of server tables; never part of a payload.
const SCOPE_COLUMN: &str = "_sync_scope_id";

/// Whether column `name` of `spec` travels as UUID text rather than base64.
pub(crate) fn is_uuid_column(spec: &TableSpec, refs: &UuidRefs, name: &str) -> bool {
    (name.eq_ignore_ascii_case(spec.key_column) && spec.key_kind == KeyKind::Blob)
        || spec
            .column(name)
            .is_some_and(|c| c.is_blob && c.kind == ValueKind::Uuid)
        || refs
            .get(spec.table_name)
            .is_some_and(|cols| cols.contains(wire_name(name).as_ref()))
}

/// A column name as it travels: lowercase. Borrowed when it already is (the common case, and
/// a pull looks every column of every row up by it).
pub(crate) fn wire_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(name.to_lowercase())
    }
}

pub(crate) fn invalid(what: impl Into<String>) -> Error {
    Error::InvalidResponse(what.into())
}

fn parse_uuid(text: &str) -> Option<uuid::Uuid> {
    let id = uuid::Uuid::try_parse(text).ok()?;
    // Only the canonical form: lowercase, dashed, 36 characters.
    let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
    (id.hyphenated().encode_lower(&mut canonical) == text).then_some(id)
}

/// Local key value (as in `key_json`) -> wire UUID string.
pub(crate) fn key_local_to_wire(spec: &TableSpec, local: &str) -> Result<String> {
    match spec.key_kind {
        KeyKind::Text => Ok(local.to_string()),
        KeyKind::Blob => {
            let bytes = hex::decode(local).map_err(|_| {
                Error::InvalidState(format!(
                    "{}: BLOB key {local:?} is not hex",
                    spec.table_name
                ))
            })?;
            let id = uuid::Uuid::from_slice(&bytes).map_err(|_| {
                Error::InvalidState(format!("{}: BLOB key is not 16 bytes", spec.table_name))
            })?;
            Ok(id.hyphenated().to_string())
        }
    }
}

/// Wire key object -> (local key value, local `key_json`). Rejects anything but exactly one
/// key column holding a canonical UUID.
pub(crate) fn key_wire_to_local(
    spec: &TableSpec,
    key: &Map<String, Value>,
) -> Result<(String, String)> {
    let column = wire_name(spec.key_column);
    let value = match (key.len(), key.get(column.as_ref())) {
        (1, Some(Value::String(s))) => s,
        _ => {
            return Err(invalid(format!(
                "{}: key {} must be {{\"{column}\": \"<uuid>\"}}",
                spec.table_name,
                Value::Object(key.clone())
            )));
        }
    };
    let id = parse_uuid(value).ok_or_else(|| {
        invalid(format!(
            "{}: key {value:?} is not a canonical UUID",
            spec.table_name
        ))
    })?;
    let local = match spec.key_kind {
        KeyKind::Text => value.clone(),
        KeyKind::Blob => hex::encode(id.as_bytes()),
    };
    let key_json = local_key_json(spec, &local);
    Ok((local, key_json))
}

/// The `key_json` the triggers write for a key value: `{"<column>":"<value>"}`.
pub(crate) fn local_key_json(spec: &TableSpec, local: &str) -> String {
    // What serializing `{column: local}` as a JSON object gives, without building one.
    let mut json = String::with_capacity(local.len() + spec.key_column.len() + 7);
    json.push('{');
    push_json_string(&mut json, &wire_name(spec.key_column));
    json.push(':');
    push_json_string(&mut json, local);
    json.push('}');
    json
}

fn push_json_string(out: &mut String, text: &str) {
    // serde_json escapes only quotes, backslashes and control characters.
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&Value::from(text).to_string());
    }
}

/// The key value inside a local `key_json`.
pub(crate) fn local_key_value(spec: &TableSpec, key_json: &str) -> Result<String> {
    let parsed: Value = serde_json::from_str(key_json).map_err(|e| {
        Error::InvalidState(format!("{}: key_json {key_json:?}: {e}", spec.table_name))
    })?;
    parsed
        .get(spec.key_column.to_lowercase())
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            Error::InvalidState(format!(
                "{}: key_json {key_json:?} lacks the key",
                spec.table_name
            ))
        })
}

/// Captured payload -> wire payload (hex BLOBs to base64, BLOB key to UUID text).
pub(crate) fn payload_local_to_wire(
    spec: &TableSpec,
    refs: &UuidRefs,
    local: &str,
) -> Result<Map<String, Value>> {
    let mut map: Map<String, Value> = serde_json::from_str(local).map_err(|e| {
        Error::InvalidState(format!(
            "{}: captured payload is not JSON: {e}",
            spec.table_name
        ))
    })?;
    for col in spec.columns {
        let name = col.name.to_lowercase();
        if let Some(Value::String(text)) = map.get_mut(&name)
            && let Some(wire) = temporal_local_to_wire(col, text)
        {
            *text = wire;
        }
    }
    for col in spec.columns.iter().filter(|c| c.is_blob) {
        let name = col.name.to_lowercase();
        let Some(Value::String(hex_text)) = map.get(&name) else {
            continue;
        };
        let bytes = hex::decode(hex_text).map_err(|_| {
            Error::InvalidState(format!(
                "{}.{}: captured BLOB is not hex",
                spec.table_name, col.name
            ))
        })?;
        let wire = if is_uuid_column(spec, refs, col.name) {
            uuid::Uuid::from_slice(&bytes)
                .map_err(|_| {
                    Error::InvalidState(format!(
                        "{}.{}: UUID BLOB is not 16 bytes",
                        spec.table_name, col.name
                    ))
                })?
                .hyphenated()
                .to_string()
        } else {
            BASE64.encode(&bytes)
        };
        map.insert(name, Value::String(wire));
    }
    Ok(map)
}

/// Wire payload -> local payload form (base64 and UUID text back to hex), as the triggers
/// would have captured it. Used to compare server rows with local ones.
pub(crate) fn payload_wire_to_local(
    spec: &TableSpec,
    refs: &UuidRefs,
    wire: &Map<String, Value>,
) -> Result<Map<String, Value>> {
    let values = sql_values(spec, refs, wire)?;
    let mut out = Map::new();
    for (col, value) in spec.columns.iter().zip(values) {
        let json = match value {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::from(i),
            SqlValue::Real(f) => Value::from(f),
            SqlValue::Text(t) => Value::String(t),
            SqlValue::Blob(b) => Value::String(hex::encode(b)),
        };
        out.insert(col.name.to_lowercase(), json);
    }
    Ok(out)
}

/// A captured timestamp -> RFC 3339 in UTC (naive timestamps are UTC, as Diesel's
/// `TimestamptzSqlite` reads them), so a `timestamptz` server column stores the same instant
/// whatever its session time zone. Dates, times and non-timestamp text go as captured.
fn temporal_local_to_wire(col: &ColumnSpec, text: &str) -> Option<String> {
    match col.kind {
        ValueKind::Timestamp | ValueKind::TimestampTz => {
            Moment::parse_timestamp(text)?.wire_timestamp()
        }
        _ => None,
    }
}

/// Server text -> the local text Diesel writes for the column's kind, or `None` to keep the
/// text as it is (not a date or time: stored verbatim, as a TEXT column would be).
fn temporal_wire_to_local(col: &ColumnSpec, text: &str) -> Option<String> {
    match col.kind {
        ValueKind::Timestamp => Moment::parse_timestamp(text)?.local_timestamp(),
        ValueKind::TimestampTz => Moment::parse_timestamp(text)?.local_timestamptz(),
        ValueKind::Date => canonical_date(text),
        ValueKind::Time => canonical_time(text),
        _ => None,
    }
}

/// Rejects payload columns the model does not have, and the server's hidden owner column,
/// whatever server sent them: nothing may reach the app's table unchecked.
///
/// One exception keeps a schema rollout working: a column the model does not have whose value
/// is JSON `null` is skipped. The server gains a nullable column before every device is
/// upgraded, so old devices pull rows naming it; a `null` loses nothing (the device has
/// nowhere to store it, and there is no value to push back). A non-null value is still
/// refused: applying the row without it would drop the value the next time the device
/// pushes the row.
fn check_payload_columns(spec: &TableSpec, wire: &Map<String, Value>) -> Result<()> {
    for (name, value) in wire {
        if name.eq_ignore_ascii_case(SCOPE_COLUMN) {
            return Err(invalid(format!(
                "{}: payload carries the hidden column {SCOPE_COLUMN}",
                spec.table_name
            )));
        }
        if spec.column(name).is_none() && !value.is_null() {
            let shown: String = name.chars().take(64).collect();
            return Err(invalid(format!(
                "{}: payload has column {shown:?} with a value, which the model does not have \
                 (upgrade the app to the schema that added it)",
                spec.table_name
            )));
        }
    }
    Ok(())
}

/// A wire row -> the JSON a model's serde `Deserialize` reads (what a conflict resolver
/// receives): BLOBs as byte arrays, booleans as JSON booleans, dates and times in the text
/// `chrono`'s serde forms parse. Values that do not fit stay as they are, for serde to judge.
pub(crate) fn wire_to_model_json(
    spec: &TableSpec,
    refs: &UuidRefs,
    row: &Map<String, Value>,
) -> Map<String, Value> {
    let mut model = row.clone();
    for col in spec.columns {
        let name = col.name.to_lowercase();
        let Some(value) = model.get_mut(&name) else {
            continue;
        };
        let converted = match (&*value, col.kind) {
            (Value::String(s), _) if col.is_blob => if is_uuid_column(spec, refs, col.name) {
                uuid::Uuid::try_parse(s).ok().map(|u| u.as_bytes().to_vec())
            } else {
                BASE64.decode(s).ok()
            }
            .map(|bytes| Value::Array(bytes.into_iter().map(Value::from).collect())),
            (Value::Number(n), ValueKind::Bool) => match n.as_i64() {
                Some(0) => Some(Value::Bool(false)),
                Some(1) => Some(Value::Bool(true)),
                _ => None,
            },
            (Value::String(s), ValueKind::Timestamp) => Moment::parse_timestamp(s)
                .and_then(Moment::local_timestamp)
                .map(|t| Value::String(t.replacen(' ', "T", 1))),
            (Value::String(s), ValueKind::TimestampTz) => Moment::parse_timestamp(s)
                .and_then(Moment::wire_timestamp)
                .map(Value::String),
            (Value::String(s), ValueKind::Date | ValueKind::Time) => {
                temporal_wire_to_local(col, s).map(Value::String)
            }
            _ => None,
        };
        if let Some(converted) = converted {
            *value = converted;
        }
    }
    model
}

/// A value of a serialized model (a merged conflict row) -> wire: booleans as 0/1, which both
/// `boolean` and integer server columns take, timestamps as RFC 3339 in UTC.
pub(crate) fn model_value_to_wire(col: &ColumnSpec, value: Value) -> Value {
    match (value, col.kind) {
        (Value::Bool(b), ValueKind::Bool) => Value::from(i64::from(b)),
        (Value::String(s), _) => Value::String(temporal_local_to_wire(col, &s).unwrap_or(s)),
        (other, _) => other,
    }
}

/// A value to bind into an app table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Wire payload -> one SQL value per model column, in model order. Every model column must
/// be present and no other: a column the model does not have (or the hidden owner column) is
/// an [`InvalidResponse`](crate::Error::InvalidResponse), on every path that takes server rows
/// (pull, push replay, snapshot, conflict rows).
pub(crate) fn sql_values(
    spec: &TableSpec,
    refs: &UuidRefs,
    wire: &Map<String, Value>,
) -> Result<Vec<SqlValue>> {
    check_payload_columns(spec, wire)?;
    let mut out = Vec::with_capacity(spec.columns.len());
    for col in spec.columns {
        let name = wire_name(col.name);
        let value = wire.get(name.as_ref()).ok_or_else(|| {
            invalid(format!(
                "{}: payload lacks column {}",
                spec.table_name, col.name
            ))
        })?;
        let is_key = col.name.eq_ignore_ascii_case(spec.key_column);
        let sql = match value {
            Value::Null if is_key => {
                return Err(invalid(format!("{}: payload key is null", spec.table_name)));
            }
            Value::Null => SqlValue::Null,
            Value::String(s) if is_key => {
                let id = parse_uuid(s).ok_or_else(|| {
                    invalid(format!(
                        "{}: payload key {s:?} is not a canonical UUID",
                        spec.table_name
                    ))
                })?;
                match spec.key_kind {
                    KeyKind::Text => SqlValue::Text(s.clone()),
                    KeyKind::Blob => SqlValue::Blob(id.as_bytes().to_vec()),
                }
            }
            _ if is_key => {
                return Err(invalid(format!(
                    "{}: payload key is not a string",
                    spec.table_name
                )));
            }
            Value::String(s) if col.is_blob && is_uuid_column(spec, refs, col.name) => {
                SqlValue::Blob(
                    parse_uuid(s)
                        .ok_or_else(|| {
                            invalid(format!(
                                "{}.{}: {s:?} is not a canonical UUID",
                                spec.table_name, col.name
                            ))
                        })?
                        .as_bytes()
                        .to_vec(),
                )
            }
            Value::String(s) if col.is_blob => SqlValue::Blob(BASE64.decode(s).map_err(|_| {
                invalid(format!(
                    "{}.{}: BLOB is not standard base64",
                    spec.table_name, col.name
                ))
            })?),
            Value::String(s) => {
                SqlValue::Text(temporal_wire_to_local(col, s).unwrap_or_else(|| s.clone()))
            }
            Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => SqlValue::Integer(i),
                (None, Some(f)) => SqlValue::Real(f),
                _ => {
                    return Err(invalid(format!(
                        "{}.{}: number {n} out of range",
                        spec.table_name, col.name
                    )));
                }
            },
            // json/jsonb server columns: stored as their JSON text.
            Value::Array(_) | Value::Object(_) => SqlValue::Text(value.to_string()),
        };
        out.push(sql);
    }
    Ok(out)
}

/// The key value of a wire payload must be the row's key.
pub(crate) fn check_payload_key(
    spec: &TableSpec,
    wire_key: &str,
    payload: &Map<String, Value>,
) -> Result<()> {
    match payload.get(wire_name(spec.key_column).as_ref()) {
        Some(Value::String(s)) if s == wire_key => Ok(()),
        other => Err(invalid(format!(
            "{}: payload key {other:?} does not match row key {wire_key}",
            spec.table_name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `local_key_json` is byte for byte what serializing the object gives (the triggers'
    /// `json_object` writes the same), for plain and escaped text and any column case.
    #[test]
    fn local_key_json_matches_serde_json() {
        for column in ["id", "Id", "Ünïcode_ID"] {
            let spec = TableSpec {
                key_column: column,
                ..SPEC
            };
            for local in [
                "0b4ea6b4-6f1b-4e5c-9d1b-3c2f8e0e9a11",
                "a\"b",
                "x\\y",
                "t\tab\u{1}",
                "é",
            ] {
                let mut map = Map::new();
                map.insert(column.to_lowercase(), Value::String(local.to_string()));
                assert_eq!(local_key_json(&spec, local), Value::Object(map).to_string());
            }
        }
    }

    const SPEC: TableSpec = TableSpec {
        table_name: "files",
        key_column: "id",
        key_kind: KeyKind::Blob,
        columns: &[
            ColumnSpec {
                name: "id",
                is_blob: true,
                kind: ValueKind::Uuid,
            },
            ColumnSpec {
                name: "name",
                is_blob: false,
                kind: ValueKind::Text,
            },
            ColumnSpec {
                name: "data",
                is_blob: true,
                kind: ValueKind::Blob,
            },
        ],
        triggers: &[],
        up_sql: "",
        down_sql: "",
    };

    #[test]
    fn blob_rows_round_trip_between_local_and_wire() {
        let local = r#"{"id":"0123456789abcdef0123456789abcdef","name":"a","data":"00ff"}"#;
        let wire = payload_local_to_wire(&SPEC, &UuidRefs::new(), local).unwrap();
        assert_eq!(wire["id"], "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(wire["data"], "AP8=");
        let back = payload_wire_to_local(&SPEC, &UuidRefs::new(), &wire).unwrap();
        assert_eq!(
            Value::Object(back),
            serde_json::from_str::<Value>(local).unwrap()
        );
        let (local_key, key_json) =
            key_wire_to_local(&SPEC, wire_key("01234567-89ab-cdef-0123-456789abcdef")).unwrap();
        assert_eq!(local_key, "0123456789abcdef0123456789abcdef");
        assert_eq!(key_json, r#"{"id":"0123456789abcdef0123456789abcdef"}"#);
        assert_eq!(
            key_local_to_wire(&SPEC, &local_key).unwrap(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }

    fn wire_key(id: &str) -> &'static Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(id.into()));
        Box::leak(Box::new(m))
    }

    #[test]
    fn hostile_keys_and_payloads_are_rejected() {
        for bad in [
            "not-a-uuid",
            "01234567-89AB-cdef-0123-456789abcdef",
            "0123456789abcdef0123456789abcdef",
            "",
        ] {
            assert!(
                matches!(
                    key_wire_to_local(&SPEC, wire_key(bad)),
                    Err(Error::InvalidResponse(_))
                ),
                "{bad}"
            );
        }
        let mut two = wire_key("01234567-89ab-cdef-0123-456789abcdef").clone();
        two.insert("other".into(), Value::from(1));
        assert!(key_wire_to_local(&SPEC, &two).is_err());
        let missing: Map<String, Value> =
            serde_json::from_str(r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a"}"#)
                .unwrap();
        assert!(matches!(
            sql_values(&SPEC, &UuidRefs::new(), &missing),
            Err(Error::InvalidResponse(_))
        ));
        let bad_b64: Map<String, Value> = serde_json::from_str(
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":"%%%"}"#,
        )
        .unwrap();
        assert!(matches!(
            sql_values(&SPEC, &UuidRefs::new(), &bad_b64),
            Err(Error::InvalidResponse(_))
        ));
        for extra in [
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":null,"new_col":1}"#,
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":null,"new_col":""}"#,
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":null,"_sync_scope_id":null}"#,
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":null,"_sync_scope_id":"u"}"#,
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":null,"_SYNC_SCOPE_ID":"u"}"#,
        ] {
            let extra: Map<String, Value> = serde_json::from_str(extra).unwrap();
            let err = sql_values(&SPEC, &UuidRefs::new(), &extra).unwrap_err();
            assert!(matches!(err, Error::InvalidResponse(_)), "{err}");
        }
    }

    /// A nullable column the server gained before this device was upgraded: its `null` is
    /// skipped, its values are applied as if it were absent.
    #[test]
    fn unknown_null_columns_are_skipped() {
        let newer: Map<String, Value> = serde_json::from_str(
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":"AP8=","priority":null}"#,
        )
        .unwrap();
        let values = sql_values(&SPEC, &UuidRefs::new(), &newer).unwrap();
        assert_eq!(values.len(), SPEC.columns.len());
        assert_eq!(values[1], SqlValue::Text("a".into()));
        let local = payload_wire_to_local(&SPEC, &UuidRefs::new(), &newer).unwrap();
        assert!(!local.contains_key("priority"), "{local:?}");
    }

    fn column(name: &'static str, kind: ValueKind) -> ColumnSpec {
        ColumnSpec {
            name,
            is_blob: matches!(kind, ValueKind::Blob),
            kind,
        }
    }

    const KINDS: TableSpec = TableSpec {
        table_name: "kinds",
        key_column: "id",
        key_kind: KeyKind::Text,
        columns: &[
            ColumnSpec {
                name: "id",
                is_blob: false,
                kind: ValueKind::Uuid,
            },
            ColumnSpec {
                name: "ts",
                is_blob: false,
                kind: ValueKind::Timestamp,
            },
            ColumnSpec {
                name: "tz",
                is_blob: false,
                kind: ValueKind::TimestampTz,
            },
            ColumnSpec {
                name: "d",
                is_blob: false,
                kind: ValueKind::Date,
            },
            ColumnSpec {
                name: "t",
                is_blob: false,
                kind: ValueKind::Time,
            },
            ColumnSpec {
                name: "flag",
                is_blob: false,
                kind: ValueKind::Bool,
            },
            ColumnSpec {
                name: "u",
                is_blob: true,
                kind: ValueKind::Uuid,
            },
        ],
        triggers: &[],
        up_sql: "",
        down_sql: "",
    };

    #[test]
    fn server_date_and_time_forms_come_back_in_diesel_form() {
        let wire: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "id": "01234567-89ab-cdef-0123-456789abcdef",
            "ts": "2026-12-01T19:38:25.351548",
            "tz": "2026-12-01T20:38:25.35+01:00",
            "d": "2026-12-01",
            "t": "19:38:25.351548",
            "flag": true,
            "u": "11111111-2222-3333-4444-555555555555",
        }))
        .unwrap();
        let values = sql_values(&KINDS, &UuidRefs::new(), &wire).unwrap();
        assert_eq!(
            values[1..6],
            [
                SqlValue::Text("2026-12-01 19:38:25.351548".into()),
                SqlValue::Text("2026-12-01 19:38:25.350+00:00".into()),
                SqlValue::Text("2026-12-01".into()),
                SqlValue::Text("19:38:25.351548".into()),
                SqlValue::Integer(1),
            ]
        );
        assert_eq!(
            values[6],
            SqlValue::Blob(
                uuid::Uuid::parse_str("11111111-2222-3333-4444-555555555555")
                    .unwrap()
                    .as_bytes()
                    .to_vec()
            )
        );
        // Text that is no date stays verbatim.
        let mut odd = wire.clone();
        odd.insert("ts".into(), Value::String("infinity".into()));
        assert_eq!(
            sql_values(&KINDS, &UuidRefs::new(), &odd).unwrap()[1],
            SqlValue::Text("infinity".into())
        );
    }

    #[test]
    fn local_timestamps_go_out_as_utc_rfc3339_and_come_back_unchanged() {
        let local = r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","ts":"2026-12-01 19:39:31.502061202","tz":"2026-12-01 19:39:31.5+00:00","d":"2026-12-01","t":"19:39:31","flag":0,"u":"11111111222233334444555555555555"}"#;
        let wire = payload_local_to_wire(&KINDS, &UuidRefs::new(), local).unwrap();
        assert_eq!(wire["ts"], "2026-12-01T19:39:31.502061202Z");
        assert_eq!(wire["tz"], "2026-12-01T19:39:31.500Z");
        assert_eq!(wire["flag"], 0);
        assert_eq!(wire["u"], "11111111-2222-3333-4444-555555555555");
        let back = payload_wire_to_local(&KINDS, &UuidRefs::new(), &wire).unwrap();
        assert_eq!(back["ts"], "2026-12-01 19:39:31.502061202");
        assert_eq!(back["tz"], "2026-12-01 19:39:31.500+00:00");
        assert_eq!(back["u"], "11111111222233334444555555555555");
    }

    #[test]
    fn model_json_uses_serde_friendly_forms() {
        let wire: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "ts": "2026-12-01 19:38:25.351548+00",
            "tz": "2026-12-01T19:38:25+00:00",
            "flag": 1,
        }))
        .unwrap();
        let model = wire_to_model_json(&KINDS, &UuidRefs::new(), &wire);
        assert_eq!(model["ts"], "2026-12-01T19:38:25.351548");
        assert_eq!(model["tz"], "2026-12-01T19:38:25Z");
        assert_eq!(model["flag"], true);
        let flag = column("flag", ValueKind::Bool);
        assert_eq!(
            model_value_to_wire(&flag, Value::Bool(true)),
            Value::from(1)
        );
        let ts = column("ts", ValueKind::Timestamp);
        assert_eq!(
            model_value_to_wire(&ts, Value::String("2026-12-01T19:38:25.351548".into())),
            "2026-12-01T19:38:25.351548Z"
        );
    }
}
