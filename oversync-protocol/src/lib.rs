//! Wire types of the oversync protocol (the OpenAPI contract of the reference server
//! go-oversync, `swagger/two_way_sync.yaml`; see `docs/protocol.md`), shared by the client
//! (`oversync-diesel`) and the server (`oversync-server`).
//!
//! * [`wire`]: request and response bodies as serde types. Decoding is lenient where the
//!   contract allows it (optional fields default, unknown fields are ignored), because the
//!   reference server omits zero-valued optional fields.
//! * [`codes`]: the machine-readable `error` codes of error bodies.
//! * [`canonical`] and [`hash`]: the canonical JSON encoding and the `bundle_hash` of a
//!   committed bundle, byte-for-byte as the reference server computes them.
//!
//! ```
//! use oversync_protocol::{BundleHasher, BundleRow, Op};
//! use serde_json::json;
//!
//! let row = BundleRow {
//!     schema: "business".into(),
//!     table: "users".into(),
//!     key: oversync_protocol::sync_key("id", "2b1f6c1e-8f7c-4a51-9d5e-0f6c1d2e3a4b"),
//!     op: Op::Insert,
//!     row_version: 1,
//!     payload: Some(json!({"id": "2b1f6c1e-8f7c-4a51-9d5e-0f6c1d2e3a4b", "name": "Ann"})),
//! };
//! let mut hasher = BundleHasher::new();
//! hasher.push(&row);
//! let hash = hasher.finish();
//! assert_eq!(hash.len(), 64);
//! assert_eq!(hash, oversync_protocol::bundle_hash(std::slice::from_ref(&row)));
//! ```

#![warn(missing_docs)]

pub mod canonical;
pub mod codes;
pub mod hash;
pub mod wire;

pub use canonical::{canonical_json, write_canonical_json};
pub use hash::{BundleHasher, bundle_hash};
pub use wire::*;

/// Request header that carries the client's sync source id on every `/sync/*` request.
pub const SOURCE_ID_HEADER: &str = "Oversync-Source-ID";
/// Response header naming the user the request's token authenticated (our server's
/// extension; the OpenAPI leaves response headers open and the reference server does not send
/// it). A client compares it with the user it is attached to, so a token of another account
/// is refused before any of the device's rows reach that account.
pub const USER_ID_HEADER: &str = "Oversync-User-ID";

/// The protocol version reported by `GET /sync/capabilities`.
pub const PROTOCOL_VERSION: &str = "v1";
