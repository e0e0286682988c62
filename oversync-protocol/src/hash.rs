//! `bundle_hash`: lowercase hex SHA-256 over the canonical JSON of the bundle's logical rows.
//!
//! The hashed document is a JSON array with one object per row, in row order:
//! `{"key":..,"op":..,"payload":..,"row_ordinal":N,"row_version":..,"schema":..,"table":..}`
//! where `row_ordinal` counts from 0 and `payload` is `null` for DELETE (and whenever it is
//! absent). The array is encoded with [`crate::canonical`], so the hash can be computed one
//! row at a time, as committed-bundle pages arrive, with [`BundleHasher`].

use crate::canonical::{write_canonical_json, write_canonical_object, write_number, write_string};
use crate::wire::{BundleRow, Op};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Incremental `bundle_hash` computation; rows must be pushed in bundle order.
#[derive(Clone, Default)]
pub struct BundleHasher {
    digest: Sha256,
    rows: u64,
    bytes: u64,
    scratch: String,
}

impl std::fmt::Debug for BundleHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleHasher")
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl BundleHasher {
    /// A hasher for an empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next row; its `row_ordinal` is the number of rows pushed before it.
    pub fn push(&mut self, row: &BundleRow) {
        let payload = if row.op == Op::Delete {
            None
        } else {
            row.payload.as_ref()
        };
        self.push_parts(
            &row.schema,
            &row.table,
            &row.key,
            row.op,
            row.row_version,
            payload,
        );
    }

    /// Adds the next row from its parts (avoids building a [`BundleRow`]).
    pub fn push_parts(
        &mut self,
        schema: &str,
        table: &str,
        key: &serde_json::Map<String, Value>,
        op: Op,
        row_version: i64,
        payload: Option<&Value>,
    ) {
        self.push_row(schema, table, key, op, row_version, |s| match payload {
            Some(p) if op != Op::Delete => write_canonical_json(s, p),
            _ => s.push_str("null"),
        });
    }

    /// [`BundleHasher::push_parts`] with the payload already in canonical JSON text (as a
    /// server stores it), which is hashed as is instead of being parsed again.
    pub fn push_parts_canonical(
        &mut self,
        schema: &str,
        table: &str,
        key: &serde_json::Map<String, Value>,
        op: Op,
        row_version: i64,
        canonical_payload: Option<&str>,
    ) {
        self.push_row(
            schema,
            table,
            key,
            op,
            row_version,
            |s| match canonical_payload {
                Some(p) if op != Op::Delete => s.push_str(p),
                _ => s.push_str("null"),
            },
        );
    }

    fn push_row(
        &mut self,
        schema: &str,
        table: &str,
        key: &serde_json::Map<String, Value>,
        op: Op,
        row_version: i64,
        write_payload: impl FnOnce(&mut String),
    ) {
        let s = &mut self.scratch;
        s.clear();
        s.push(if self.rows == 0 { '[' } else { ',' });
        // Keys in byte order: key, op, payload, row_ordinal, row_version, schema, table.
        s.push_str("{\"key\":");
        write_canonical_object(s, key);
        s.push_str(",\"op\":\"");
        s.push_str(op.as_str());
        s.push_str("\",\"payload\":");
        write_payload(s);
        s.push_str(",\"row_ordinal\":");
        write_number(s, self.rows as f64);
        s.push_str(",\"row_version\":");
        write_number(s, row_version as f64);
        s.push_str(",\"schema\":");
        write_string(s, schema);
        s.push_str(",\"table\":");
        write_string(s, table);
        s.push('}');
        self.digest.update(s.as_bytes());
        self.bytes += s.len() as u64;
        self.rows += 1;
    }

    /// Number of rows pushed so far.
    pub fn row_count(&self) -> u64 {
        self.rows
    }

    /// Length in bytes of the canonical document (the reference's `byte_count`).
    pub fn byte_count(&self) -> u64 {
        self.bytes + if self.rows == 0 { 2 } else { 1 }
    }

    /// Finishes the document and returns the lowercase hex SHA-256.
    pub fn finish(mut self) -> String {
        if self.rows == 0 {
            self.digest.update(b"[]");
        } else {
            self.digest.update(b"]");
        }
        hex::encode(self.digest.finalize())
    }
}

/// `bundle_hash` of a complete list of rows (ordinals are list positions).
pub fn bundle_hash(rows: &[BundleRow]) -> String {
    let mut hasher = BundleHasher::new();
    for row in rows {
        hasher.push(row);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync_key;
    use serde_json::json;

    fn rows() -> Vec<BundleRow> {
        vec![
            BundleRow {
                schema: "business".into(),
                table: "users".into(),
                key: sync_key("id", "11111111-1111-4111-8111-111111111111"),
                op: Op::Insert,
                row_version: 7,
                payload: Some(json!({
                    "id": "11111111-1111-4111-8111-111111111111",
                    "name": "Ann <&>",
                    "email": "ann@example.com",
                    "created_at": "2026-11-22T14:21:16.78569+00:00",
                    "score": 1.5,
                    "n": 10
                })),
            },
            BundleRow {
                schema: "business".into(),
                table: "posts".into(),
                key: sync_key("id", "22222222-2222-4222-8222-222222222222"),
                op: Op::Delete,
                row_version: 7,
                payload: None,
            },
        ]
    }

    /// The document the reference hashes for [`rows`], written out by hand from its
    /// definition (Go `encoding/json` over `[]map[string]any`).
    const EXPECTED_DOC: &str = concat!(
        r#"[{"key":{"id":"11111111-1111-4111-8111-111111111111"},"op":"INSERT","#,
        r#""payload":{"created_at":"2026-11-22T14:21:16.78569+00:00","email":"ann@example.com","#,
        r#""id":"11111111-1111-4111-8111-111111111111","n":10,"name":"Ann \u003c\u0026\u003e","score":1.5},"#,
        r#""row_ordinal":0,"row_version":7,"schema":"business","table":"users"},"#,
        r#"{"key":{"id":"22222222-2222-4222-8222-222222222222"},"op":"DELETE","payload":null,"#,
        r#""row_ordinal":1,"row_version":7,"schema":"business","table":"posts"}]"#
    );

    #[test]
    fn hash_matches_reference_definition() {
        let expected = hex::encode(Sha256::digest(EXPECTED_DOC.as_bytes()));
        assert_eq!(bundle_hash(&rows()), expected);
        // Fixed value so an accidental change to the encoding is caught even if the
        // document above were edited in the same change.
        assert_eq!(
            expected,
            "d0a6a01cebc89546dc94ca6e2316e562abc7954224152767e063f9a4cc0e8e21"
        );
    }

    #[test]
    fn byte_count_is_document_length() {
        let mut h = BundleHasher::new();
        for r in rows() {
            h.push(&r);
        }
        assert_eq!(h.byte_count(), EXPECTED_DOC.len() as u64);
        assert_eq!(BundleHasher::new().byte_count(), 2);
    }

    #[test]
    fn delete_payload_is_ignored_and_empty_bundle_hashes_empty_array() {
        let mut r = rows();
        r[1].payload = Some(json!({"ignored": true}));
        assert_eq!(bundle_hash(&r), bundle_hash(&rows()));
        assert_eq!(
            bundle_hash(&[]),
            hex::encode(Sha256::digest(b"[]")),
            "empty bundle"
        );
    }

    #[test]
    fn canonical_text_payload_hashes_like_the_value() {
        let mut h = BundleHasher::new();
        for r in rows() {
            let text = r.payload.as_ref().map(crate::canonical_json);
            h.push_parts_canonical(
                &r.schema,
                &r.table,
                &r.key,
                r.op,
                r.row_version,
                text.as_deref(),
            );
        }
        assert_eq!(h.byte_count(), EXPECTED_DOC.len() as u64);
        assert_eq!(h.finish(), bundle_hash(&rows()));
    }

    #[test]
    fn incremental_equals_whole() {
        let r = rows();
        let mut h = BundleHasher::new();
        h.push(&r[0]);
        let mut h2 = h.clone();
        h2.push(&r[1]);
        assert_eq!(h2.finish(), bundle_hash(&r));
    }
}
