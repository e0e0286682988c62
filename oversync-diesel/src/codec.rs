//! Row encodings and their checks. A row exists in three forms:
//! - local: what the capture triggers write (`_sync_dirty_rows.payload`, `key_json`): BLOBs
//!   as lowercase hex, BLOB keys as 32 hex digits;
//! - wire: what the protocol carries: BLOBs as standard base64, keys (BLOB or TEXT) as
//!   canonical lowercase dashed UUID strings;
//! - SQL: the values bound into the app's tables when server data is applied.
//!
//! Everything coming from the server is validated here before it can touch a table or a
//! checkpoint; a violation is an [`InvalidResponse`](crate::Error::InvalidResponse).

use crate::error::{Error, Result};
use crate::table::{KeyKind, TableSpec};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

/// Per table, the BLOB columns that hold UUIDs besides the key: foreign keys to UUID keys
/// (found by `open()` in SQLite's foreign-key list). They travel as UUID text, like keys.
pub(crate) type UuidRefs =
    std::collections::HashMap<&'static str, std::collections::HashSet<String>>;

/// Whether column `name` of `spec` travels as UUID text rather than base64.
pub(crate) fn is_uuid_column(spec: &TableSpec, refs: &UuidRefs, name: &str) -> bool {
    (name.eq_ignore_ascii_case(spec.key_column) && spec.key_kind == KeyKind::Blob)
        || refs
            .get(spec.table_name)
            .is_some_and(|cols| cols.contains(&name.to_lowercase()))
}

pub(crate) fn invalid(what: impl Into<String>) -> Error {
    Error::InvalidResponse(what.into())
}

fn parse_uuid(text: &str) -> Option<uuid::Uuid> {
    let id = uuid::Uuid::try_parse(text).ok()?;
    // Only the canonical form: lowercase, dashed, 36 characters.
    (id.hyphenated().to_string() == text).then_some(id)
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
    let column = spec.key_column.to_lowercase();
    let value = match (key.len(), key.get(&column)) {
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
    let mut map = Map::new();
    map.insert(
        spec.key_column.to_lowercase(),
        Value::String(local.to_string()),
    );
    Value::Object(map).to_string()
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
/// be present; columns the model does not know are ignored (the server may have more).
pub(crate) fn sql_values(
    spec: &TableSpec,
    refs: &UuidRefs,
    wire: &Map<String, Value>,
) -> Result<Vec<SqlValue>> {
    let mut out = Vec::with_capacity(spec.columns.len());
    for col in spec.columns {
        let name = col.name.to_lowercase();
        let value = wire.get(&name).ok_or_else(|| {
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
            Value::String(s) => SqlValue::Text(s.clone()),
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
    match payload.get(&spec.key_column.to_lowercase()) {
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
    use crate::table::ColumnSpec;

    const SPEC: TableSpec = TableSpec {
        table_name: "files",
        key_column: "id",
        key_kind: KeyKind::Blob,
        columns: &[
            ColumnSpec {
                name: "id",
                is_blob: true,
            },
            ColumnSpec {
                name: "name",
                is_blob: false,
            },
            ColumnSpec {
                name: "data",
                is_blob: true,
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
        let extra: Map<String, Value> = serde_json::from_str(
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a","data":null,"new_col":1}"#,
        )
        .unwrap();
        assert_eq!(
            sql_values(&SPEC, &UuidRefs::new(), &extra).unwrap()[2],
            SqlValue::Null
        );
    }
}
