//! Push conflicts and how to resolve them.
//!
//! The server rejects a whole push when a row's `base_row_version` is stale
//! (`409 push_conflict`). The [`ConflictResolver`] set on the connection decides per row:
//! take the server's row, keep the local intent (rebased on the server version), or write an
//! explicit merge. The push then retries with the same `source_bundle_id`. The server names
//! one conflicting row per answer, so retries continue while each resolves a row not resolved
//! before in this push (bounded by the bundle's row count, plus two for rows that conflict
//! again); an invalid merge or an exhausted budget fails closed with the local intent kept.
//!
//! Invalid resolutions fail with [`Error::InvalidResolution`]: a merge that changes the key,
//! misses a column or does not fit the column types, and [`Resolution::KeepLocal`] for a
//! local *update* of a row the server has deleted (keeping the update would silently bring
//! back a row another device deleted). Nothing is applied then: the frozen bundle goes back
//! to the dirty set, the local row keeps the device's value, and later local edits coalesce
//! with it. To recreate such a row on purpose, return [`Resolution::Merged`] with the full
//! row (pushed as an insert over the deletion); to let the deletion win, return
//! [`Resolution::AcceptServer`]. `KeepLocal` stays valid for a local insert over a deleted
//! key (the device created the row anew) and for local deletes.
//!
//! `Merged` over a server delete is a deliberate difference from the reference clients
//! (go-oversync's `oversqlite` and sqlitenow-kmp refuse `KeepMerged` for a stale update of a
//! deleted row, as they and we refuse `KeepLocal`). `KeepLocal` is what a generic
//! "client wins" resolver returns for every conflict, so accepting it would bring back rows
//! other devices deleted without anyone deciding so; a `Merged` row is built by the app for
//! this one conflict, with every column, after it saw `server_row` is `None`. Refusing it
//! would leave an app that wants to restore a row (an "undo delete" flow) only the detour of
//! accepting the delete and inserting the row again. So it is accepted and pushed as an
//! insert over the deletion; the refusal of `KeepLocal` matches the contract case
//! `deleted-authoritative-invalid-resolver-restores-dirty-rows`.
//!
//! A custom resolver can work with the app's own model type through serde:
//!
//! ```
//! use oversync_diesel::{Conflict, ConflictResolver, Resolution};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Note { id: String, title: String, body: Option<String> }
//!
//! /// Keeps the server's title and appends the local body to the server's.
//! struct MergeBodies;
//!
//! impl ConflictResolver for MergeBodies {
//!     fn resolve(&self, conflict: &Conflict) -> Resolution {
//!         let (Ok(Some(local)), Ok(Some(server))) = (conflict.local_as::<Note>(), conflict.server_as::<Note>()) else {
//!             return Resolution::AcceptServer;
//!         };
//!         let merged = Note {
//!             body: Some(format!("{}\n{}", server.body.unwrap_or_default(), local.body.unwrap_or_default())),
//!             ..server
//!         };
//!         Resolution::merged(&merged).unwrap_or(Resolution::KeepLocal)
//!     }
//! }
//! ```

use crate::error::{Error, Result};
use crate::table::TableSpec;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use oversync_protocol::Op;
use serde_json::{Map, Value};

/// One conflicting row, as the server reported it.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub(crate) spec: &'static TableSpec,
    pub(crate) refs: crate::codec::UuidRefs,
    /// Table name.
    pub table: String,
    /// Row key (canonical UUID string).
    pub key: String,
    /// What this device tried to do.
    pub local_op: Op,
    /// The row this device tried to write (wire form: BLOBs base64), `None` for a delete.
    pub local_row: Option<Map<String, Value>>,
    /// The server version the local change was based on.
    pub base_row_version: i64,
    /// The server's current version of the row.
    pub server_row_version: i64,
    /// The server has the row deleted.
    pub server_row_deleted: bool,
    /// The server's current row (wire form), `None` when deleted.
    pub server_row: Option<Map<String, Value>>,
}

impl Conflict {
    /// The local row decoded as a model type (`Deserialize`); BLOB columns as byte arrays.
    pub fn local_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.local_row
            .as_ref()
            .map(|row| decode_model(self.spec, &self.refs, row))
            .transpose()
    }

    /// The server row decoded as a model type.
    pub fn server_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.server_row
            .as_ref()
            .map(|row| decode_model(self.spec, &self.refs, row))
            .transpose()
    }
}

/// What to do with one conflicting row.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Take the server's row (or its deletion); the local change is dropped.
    AcceptServer,
    /// Keep the local change, rebased on the server's version. Invalid (fails with
    /// [`Error::InvalidResolution`], nothing applied) for a local update of a row the server
    /// deleted: return [`Resolution::Merged`] with the full row to recreate it on purpose,
    /// or [`Resolution::AcceptServer`] to let the deletion win.
    KeepLocal,
    /// Write this full row locally and push it. BLOB columns may be byte arrays (model form)
    /// or base64 strings (wire form); the key must be the conflicting row's key.
    Merged(Map<String, Value>),
}

impl Resolution {
    /// A merge from a model value (`Serialize`, fields named like the columns).
    pub fn merged<T: serde::Serialize>(row: &T) -> Result<Resolution> {
        match serde_json::to_value(row) {
            Ok(Value::Object(map)) => Ok(Resolution::Merged(map)),
            Ok(_) => Err(Error::InvalidResolution(
                "a merged row must serialize to a JSON object".into(),
            )),
            Err(e) => Err(Error::InvalidResolution(format!(
                "merged row does not serialize: {e}"
            ))),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Resolution::AcceptServer => "accept_server",
            Resolution::KeepLocal => "keep_local",
            Resolution::Merged(_) => "merged",
        }
    }
}

/// Decides how push conflicts end. Runs synchronously inside the push.
pub trait ConflictResolver: Send + Sync + 'static {
    /// The resolution for one conflicting row.
    fn resolve(&self, conflict: &Conflict) -> Resolution;
}

/// The server's row always wins (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerWins;

impl ConflictResolver for ServerWins {
    fn resolve(&self, _: &Conflict) -> Resolution {
        Resolution::AcceptServer
    }
}

/// The local change always wins, rebased on the server's version, except over a deletion
/// on the server, which an update cannot undo ([`Resolution::KeepLocal`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientWins;

impl ConflictResolver for ClientWins {
    fn resolve(&self, _: &Conflict) -> Resolution {
        Resolution::KeepLocal
    }
}

/// Wire row -> model JSON (BLOBs as byte arrays) -> `T`.
fn decode_model<T: serde::de::DeserializeOwned>(
    spec: &TableSpec,
    refs: &crate::codec::UuidRefs,
    row: &Map<String, Value>,
) -> Result<T> {
    let model = crate::codec::wire_to_model_json(spec, refs, row);
    serde_json::from_value(Value::Object(model)).map_err(|e| {
        Error::InvalidResolution(format!(
            "{}: row does not decode as the model: {e}",
            spec.table_name
        ))
    })
}

/// A merged row -> wire form, checked: every column present, the key unchanged.
pub(crate) fn merged_to_wire(
    spec: &TableSpec,
    refs: &crate::codec::UuidRefs,
    key: &str,
    merged: &Map<String, Value>,
) -> Result<Map<String, Value>> {
    let fail = |why: String| {
        Error::InvalidResolution(format!("{}: merged row for {key}: {why}", spec.table_name))
    };
    let mut wire = Map::new();
    for col in spec.columns {
        let name = col.name.to_lowercase();
        let value = merged
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(col.name))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| fail(format!("column {} is missing", col.name)))?;
        let is_key = col.name.eq_ignore_ascii_case(spec.key_column);
        let value = match value {
            Value::Array(items) if col.is_blob => {
                let bytes: Option<Vec<u8>> = items
                    .iter()
                    .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                let bytes =
                    bytes.ok_or_else(|| fail(format!("{} is not a byte array", col.name)))?;
                if crate::codec::is_uuid_column(spec, refs, col.name) {
                    Value::String(
                        uuid::Uuid::from_slice(&bytes)
                            .map_err(|_| fail(format!("{} is not 16 bytes", col.name)))?
                            .hyphenated()
                            .to_string(),
                    )
                } else {
                    Value::String(BASE64.encode(bytes))
                }
            }
            other => crate::codec::model_value_to_wire(col, other),
        };
        if is_key && value.as_str() != Some(key) {
            return Err(fail("the key must stay the conflicting row's key".into()));
        }
        wire.insert(name, value);
    }
    // The same checks the engine applies to server rows: types must be storable.
    crate::codec::sql_values(spec, refs, &wire).map_err(|e| fail(e.to_string()))?;
    Ok(wire)
}
