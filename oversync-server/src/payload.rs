//! Conversions between wire payloads (BLOBs as standard base64) and database payloads
//! (`to_jsonb` rows, where `bytea` appears as `\x<hex>`).

use crate::bootstrap::{KeyKind, SCOPE_COLUMN, TableInfo};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oversync_protocol::canonical_json;
use serde_json::{Map, Value};

/// Turns a database row image into the canonical wire text: hidden owner column removed,
/// `bytea` values re-encoded as base64, canonical JSON (as the reference stores it).
pub(crate) fn wire_payload_text(info: &TableInfo, db_payload: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(db_payload).map_err(|e| e.to_string())?;
    let Value::Object(mut map) = value else {
        return Err("row image is not a JSON object".into());
    };
    map.remove(SCOPE_COLUMN);
    for (column, value) in map.iter_mut() {
        if !info.is_bytea(column) {
            continue;
        }
        if let Value::String(text) = value {
            let bytes = decode_db_bytea(text)?;
            *value = Value::String(STANDARD.encode(bytes));
        }
    }
    Ok(canonical_json(&Value::Object(map)))
}

fn decode_db_bytea(text: &str) -> Result<Vec<u8>, String> {
    match text
        .strip_prefix("\\x")
        .or_else(|| text.strip_prefix("\\X"))
    {
        Some(h) => hex::decode(h).map_err(|e| format!("invalid bytea hex: {e}")),
        None => STANDARD
            .decode(text)
            .map_err(|e| format!("invalid bytea value: {e}")),
    }
}

/// Canonical text form of a key value; UUID keys must be canonical lowercase dashed.
pub(crate) fn normalize_key(info: &TableInfo, key: &Map<String, Value>) -> Result<String, String> {
    let name = format!("{}.{}", info.schema, info.table);
    let value = key
        .get(&info.key_column)
        .ok_or_else(|| format!("row key for {name} must include {:?}", info.key_column))?;
    let Value::String(text) = value else {
        return Err(format!(
            "row key {name}.{} must be a string",
            info.key_column
        ));
    };
    if key.len() != 1 {
        return Err(format!(
            "row key for {name} must contain only {:?}",
            info.key_column
        ));
    }
    match info.key_kind {
        KeyKind::Uuid => match uuid::Uuid::parse_str(text) {
            Ok(u) if u.hyphenated().to_string() == *text => Ok(text.clone()),
            _ => Err(format!(
                "row key {name}.{} must use canonical dashed lowercase UUID text",
                info.key_column
            )),
        },
        KeyKind::Text => {
            if text.is_empty() {
                return Err(format!(
                    "row key {name}.{} must not be empty",
                    info.key_column
                ));
            }
            Ok(text.clone())
        }
    }
}

/// Validates a pushed after-image and converts it to the database form stored for apply:
/// known columns only, key column equal to the row key (added if absent), no hidden owner
/// column, base64 BLOBs decoded to `\x<hex>`.
pub(crate) fn db_payload_from_wire(
    info: &TableInfo,
    key_text: &str,
    payload: &Value,
) -> Result<String, String> {
    let name = format!("{}.{}", info.schema, info.table);
    let Value::Object(map) = payload else {
        return Err(format!("payload for {name} must be a JSON object"));
    };
    let mut out = Map::with_capacity(map.len() + 1);
    for (column, value) in map {
        let column_lc = column.to_ascii_lowercase();
        if column_lc == SCOPE_COLUMN {
            return Err(format!(
                "payload for {name} must not include hidden scope column {SCOPE_COLUMN:?}"
            ));
        }
        if !info.columns.contains_key(&column_lc) {
            return Err(format!(
                "payload for {name} contains unknown column {column:?}"
            ));
        }
        let value = if info.is_bytea(&column_lc) {
            match value {
                Value::Null => Value::Null,
                Value::String(text) => {
                    let bytes = STANDARD.decode(text).map_err(|_| {
                        format!("payload binary field {name}.{column} must be valid base64")
                    })?;
                    Value::String(format!("\\x{}", hex::encode(bytes)))
                }
                _ => {
                    return Err(format!(
                        "payload binary field {name}.{column} must be a base64 string"
                    ));
                }
            }
        } else {
            value.clone()
        };
        if out.insert(column_lc, value).is_some() {
            return Err(format!("payload for {name} repeats column {column:?}"));
        }
    }
    match out.get(&info.key_column) {
        None => {
            out.insert(info.key_column.clone(), Value::String(key_text.to_owned()));
        }
        Some(Value::String(k)) if k == key_text => {}
        Some(_) => {
            return Err(format!(
                "payload key {name}.{} must match request key",
                info.key_column
            ));
        }
    }
    Ok(canonical_json(&Value::Object(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn info() -> TableInfo {
        let mut columns = BTreeMap::new();
        columns.insert("id".to_owned(), "uuid".to_owned());
        columns.insert("name".to_owned(), "text".to_owned());
        columns.insert("data".to_owned(), "bytea".to_owned());
        TableInfo {
            id: 1,
            schema: "business".into(),
            table: "files".into(),
            key_column: "id".into(),
            key_kind: KeyKind::Uuid,
            columns,
        }
    }

    const ID: &str = "abcdef01-1111-4111-8111-111111111111";

    #[test]
    fn wire_to_db_and_back() {
        let db = db_payload_from_wire(&info(), ID, &json!({"name": "a", "data": "AAEC"})).unwrap();
        assert_eq!(
            db,
            format!(r#"{{"data":"\\x000102","id":"{ID}","name":"a"}}"#)
        );
        let wire = wire_payload_text(
            &info(),
            &format!(r#"{{"data":"\\x000102","id":"{ID}","name":"a","_sync_scope_id":"u"}}"#),
        )
        .unwrap();
        assert_eq!(wire, format!(r#"{{"data":"AAEC","id":"{ID}","name":"a"}}"#));
    }

    #[test]
    fn rejects_bad_payloads() {
        let i = info();
        assert!(db_payload_from_wire(&i, ID, &json!([1])).is_err());
        assert!(db_payload_from_wire(&i, ID, &json!({"_sync_scope_id": "x"})).is_err());
        assert!(db_payload_from_wire(&i, ID, &json!({"nope": 1})).is_err());
        assert!(db_payload_from_wire(&i, ID, &json!({"data": "!!"})).is_err());
        assert!(db_payload_from_wire(&i, ID, &json!({"data": 5})).is_err());
        assert!(
            db_payload_from_wire(
                &i,
                ID,
                &json!({"id": "22222222-2222-4222-8222-222222222222"})
            )
            .is_err()
        );
        assert!(db_payload_from_wire(&i, ID, &json!({"Name": "a", "name": "b"})).is_err());
    }

    #[test]
    fn keys() {
        let i = info();
        let key = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(normalize_key(&i, &key(json!({"id": ID}))).unwrap(), ID);
        assert!(normalize_key(&i, &key(json!({"id": ID.to_uppercase()}))).is_err());
        assert!(normalize_key(&i, &key(json!({"id": "x"}))).is_err());
        assert!(normalize_key(&i, &key(json!({"id": 5}))).is_err());
        assert!(normalize_key(&i, &key(json!({"uuid": ID}))).is_err());
        assert!(normalize_key(&i, &key(json!({"id": ID, "x": "y"}))).is_err());
    }
}
