//! Checks shared by the decoder targets: decode, re-encode, canonical JSON, bundle_hash.
#![allow(dead_code)]

use oversync_protocol::{BundleHasher, BundleRow, bundle_hash, canonical_json};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Debug;

/// Decodes `T` from `data` as the client does (`serde_json::from_slice`). When it decodes,
/// the value must re-encode, decode back to itself, and its encoding must go through
/// [`canonical`].
pub fn decode<T: DeserializeOwned + Serialize + PartialEq + Debug>(data: &[u8]) -> Option<T> {
    let decoded: T = serde_json::from_slice(data).ok()?;
    let value = serde_json::to_value(&decoded).expect("a decoded response re-encodes");
    let again: T = serde_json::from_value(value.clone()).expect("a re-encoded response decodes");
    assert_eq!(again, decoded, "decode(encode(x)) == x");
    canonical(&value);
    Some(decoded)
}

/// `canonical_json` must not panic, must be valid JSON, and must be a fixed point.
pub fn canonical(value: &Value) -> String {
    let text = canonical_json(value);
    let reparsed: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("canonical JSON does not parse ({e}): {text}"));
    assert_eq!(
        canonical_json(&reparsed),
        text,
        "canonical JSON is a fixed point"
    );
    text
}

/// `bundle_hash` of decoded rows: the incremental hasher agrees with the one-shot hash,
/// and every key and payload goes through [`canonical`].
pub fn hash_rows(rows: &[BundleRow]) -> String {
    let whole = bundle_hash(rows);
    let mut hasher = BundleHasher::new();
    for row in rows {
        hasher.push(row);
        canonical(&Value::Object(row.key.clone()));
        if let Some(payload) = &row.payload {
            canonical(payload);
        }
    }
    assert_eq!(hasher.row_count(), rows.len() as u64);
    let incremental = hasher.finish();
    assert_eq!(
        incremental, whole,
        "incremental and whole bundle_hash agree"
    );
    assert_eq!(whole.len(), 64);
    whole
}

/// Splits a selector byte (which decoder to use) from the document.
pub fn select(data: &[u8], choices: u8) -> Option<(u8, &[u8])> {
    let (first, rest) = data.split_first()?;
    Some((first % choices, rest))
}
