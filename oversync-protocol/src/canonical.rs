//! Canonical JSON as the reference server produces it for `bundle_hash`.
//!
//! The reference calls its encoding "RFC 8785 canonical JSON" and implements it as Go's
//! `encoding/json` over a value decoded into `any`. The result is RFC 8785 with the few
//! differences of Go's encoder, which we reproduce exactly because hashes must match
//! byte for byte:
//!
//! * every number goes through an IEEE-754 double (integers above 2^53 round), printed in
//!   the shortest round-trip form, plain decimal for `1e-6 <= |x| < 1e21`, exponent form
//!   otherwise (`1e+21`, `1.5e-7`); negative zero prints as `-0`;
//! * object keys are sorted by their UTF-8 bytes;
//! * strings escape `"`, `\\`, control characters (`\b \f \n \r \t`, others as `\u00XX`),
//!   and also `<`, `>`, `&`, U+2028 and U+2029 as `\u003c`, `\u003e`, `\u0026`, `\u2028`,
//!   `\u2029` (Go's HTML-safe escaping); everything else is written as UTF-8.

use serde_json::Value;
use std::fmt::Write as _;

/// Returns the canonical encoding of `value`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical_json(&mut out, value);
    out
}

/// Appends the canonical encoding of `value` to `out`.
pub fn write_canonical_json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            // Go decodes every JSON number into a float64 before re-encoding it.
            let f = n.as_f64().unwrap_or(0.0);
            write_number(out, f);
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_canonical_object(out, map),
    }
}

/// Appends the canonical encoding of the object `map` to `out` (members in byte order of
/// their names).
pub fn write_canonical_object(out: &mut String, map: &serde_json::Map<String, Value>) {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    // Usually sorted already (serde_json's default map is ordered), which this sort detects.
    members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, name);
        out.push(':');
        write_canonical_json(out, value);
    }
    out.push('}');
}

/// Writes a float64 the way Go's `encoding/json` does (ES6 number-to-string for finite values).
pub(crate) fn write_number(out: &mut String, f: f64) {
    if !f.is_finite() {
        // JSON cannot carry these; serde_json never produces them from parsed input.
        out.push_str("null");
        return;
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust's `{:e}` yields the shortest round-trip digits, e.g. `1.5e-7`, `1e21`.
        let formatted = format!("{f:e}");
        let (mantissa, exponent) = formatted.split_once('e').unwrap_or((&formatted, "0"));
        out.push_str(mantissa);
        out.push('e');
        if let Some(negative) = exponent.strip_prefix('-') {
            out.push('-');
            out.push_str(negative);
        } else {
            out.push('+');
            out.push_str(exponent);
        }
    } else {
        // Rust's Display of f64 is the shortest round-trip form without exponent.
        let _ = write!(out, "{f}");
    }
}

pub(crate) fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{0}'..='\u{1f}' => {
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> String {
        canonical_json(&serde_json::from_str::<Value>(text).unwrap())
    }

    #[test]
    fn numbers_follow_go_float64_encoding() {
        assert_eq!(num("0"), "0");
        assert_eq!(num("-0.0"), "-0");
        assert_eq!(num("1.0"), "1");
        assert_eq!(num("1.50"), "1.5");
        assert_eq!(num("123456789"), "123456789");
        assert_eq!(num("9007199254740993"), "9007199254740992");
        assert_eq!(num("1e20"), "100000000000000000000");
        assert_eq!(num("1e21"), "1e+21");
        assert_eq!(num("1.5e300"), "1.5e+300");
        assert_eq!(num("0.000001"), "0.000001");
        assert_eq!(num("0.0000001"), "1e-7");
        assert_eq!(num("-1.25e-10"), "-1.25e-10");
        assert_eq!(num("0.1"), "0.1");
        assert_eq!(num("3.14159"), "3.14159");
    }

    #[test]
    fn strings_use_go_escaping() {
        let v = json!("a\"b\\c\n\t\r\u{8}\u{c}\u{1}\u{1f}<>&\u{2028}\u{2029}é😀\u{7f}");
        assert_eq!(
            canonical_json(&v),
            "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\\u003c\\u003e\\u0026\\u2028\\u2029é😀\u{7f}\""
        );
    }

    #[test]
    fn objects_sort_keys_by_bytes_and_nest() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x", "B": false, "é": 1, "aa": {}});
        assert_eq!(
            canonical_json(&v),
            r#"{"B":false,"a":"x","aa":{},"b":[1,{"a":true,"z":null}],"é":1}"#
        );
    }
}
