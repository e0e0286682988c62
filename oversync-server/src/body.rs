//! Request body and query decoding with the OpenAPI error shape (never axum's plain text).

use crate::error::SyncError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use oversync_protocol::codes;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// Reads the whole body within the router's `DefaultBodyLimit`.
pub(crate) async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, SyncError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return SyncError::TooLarge;
        }
        SyncError::bad_request(codes::INVALID_REQUEST, "failed to read request body")
    })
}

/// A JSON request body; malformed JSON is `400 invalid_request`, an oversized body
/// `413 request_too_large`.
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = SyncError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        parse_object(&bytes)
            .map(JsonBody)
            .map_err(|m| SyncError::bad_request(codes::INVALID_REQUEST, m))
    }
}

/// Parses a JSON object body into `T`. Non-object documents are refused (serde would
/// otherwise accept arrays as structs).
pub(crate) fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON body: {e}"))?;
    if !value.is_object() {
        return Err("request body must be a JSON object".into());
    }
    serde_json::from_value(value).map_err(|e| format!("invalid request body: {e}"))
}

/// The single path parameter of a route. One that does not decode (invalid UTF-8 after
/// percent-decoding) comes out empty, so the handler answers with its own OpenAPI error
/// (not found / invalid) instead of axum's plain-text rejection.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| v)
            .unwrap_or_default();
        Ok(PathParam(value))
    }
}

/// Parsed query string.
pub(crate) struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k), percent_decode(v));
        }
        QueryParams(map)
    }

    /// A raw parameter value.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An optional integer parameter; a present but unparsable value is an error.
    pub(crate) fn int(&self, name: &str, code: &'static str) -> Result<Option<i64>, SyncError> {
        match self.0.get(name).map(|v| v.trim()) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| SyncError::bad_request(code, format!("{name} must be an integer"))),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = QueryParams::parse(Some("a=1&b=%32%33&c=x+y&d=%zz&e=%E2%82%AC&f"));
        assert_eq!(q.int("a", "c").unwrap(), Some(1));
        assert_eq!(q.int("b", "c").unwrap(), Some(23));
        assert!(q.int("c", "c").is_err());
        assert_eq!(q.0["c"], "x y");
        assert_eq!(q.0["d"], "%zz");
        assert_eq!(q.0["e"], "\u{20ac}");
        assert_eq!(q.int("f", "c").unwrap(), None);
        assert_eq!(q.int("missing", "c").unwrap(), None);
    }
}
