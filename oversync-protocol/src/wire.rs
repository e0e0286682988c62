//! Request and response bodies of the oversync HTTP API.
//!
//! Field names and shapes follow `oversync-openapi.yaml`. Optional fields decode with
//! defaults because the reference server omits zero values (`omitempty`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Structured sync key of a row: `{"<key column>": "<key value as string>"}`.
pub type SyncKey = Map<String, Value>;

/// Builds the one-column [`SyncKey`] `{column: value}`.
pub fn sync_key(column: &str, value: &str) -> SyncKey {
    let mut key = Map::new();
    key.insert(column.to_owned(), Value::String(value.to_owned()));
    key
}

/// Row operation. Decoding accepts any letter case and surrounding blanks, as the reference
/// server does for pushed rows; encoding is always upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// The row was created.
    Insert,
    /// The row was changed.
    Update,
    /// The row was removed.
    Delete,
}

impl Op {
    /// Wire spelling: `INSERT`, `UPDATE` or `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }

    /// Parses the wire spelling, case-insensitively.
    pub fn parse(text: &str) -> Option<Op> {
        match text.trim().to_ascii_uppercase().as_str() {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Op::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("invalid op {text:?}")))
    }
}

/// One row effect of a committed bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleRow {
    /// Schema of the table, e.g. `business`.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Sync key of the row.
    pub key: SyncKey,
    /// Operation.
    pub op: Op,
    /// The `bundle_seq` of the bundle that wrote this row effect.
    pub row_version: i64,
    /// Full-row after-image for INSERT/UPDATE; absent for DELETE. BLOB columns are base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// One complete committed bundle, as returned by pull.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    /// Per-user sequence number of the bundle.
    pub bundle_seq: i64,
    /// Source that committed the bundle.
    pub source_id: String,
    /// The source's own counter for this bundle.
    pub source_bundle_id: i64,
    /// Number of rows (sent by the reference server; optional in the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_count: Option<i64>,
    /// `bundle_hash` of the rows (sent by the reference server; optional in the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_hash: Option<String>,
    /// Row effects in bundle order.
    #[serde(default)]
    pub rows: Vec<BundleRow>,
}

/// One dirty row a client pushes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushRequestRow {
    /// Schema of the table (the server treats empty as `public`).
    #[serde(default)]
    pub schema: String,
    /// Table name.
    #[serde(default)]
    pub table: String,
    /// Sync key of the row.
    #[serde(default)]
    pub key: SyncKey,
    /// Operation.
    pub op: Op,
    /// `row_version` the client last saw for this row (0 if never synced).
    #[serde(default)]
    pub base_row_version: i64,
    /// Full-row after-image for INSERT/UPDATE; must be absent for DELETE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// `POST /sync/connect` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Whether the client holds anonymous local rows that could seed an empty scope.
    #[serde(default)]
    pub has_local_pending_rows: bool,
}

/// Outcome of `POST /sync/connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectResolution {
    /// The server already holds the user's data: hydrate from a snapshot.
    RemoteAuthoritative,
    /// This source may seed the scope from local rows (carry `initialization_id`).
    InitializeLocal,
    /// The scope was initialized empty.
    InitializeEmpty,
    /// Another source is initializing; retry after `retry_after_seconds`.
    RetryLater,
}

/// `POST /sync/connect` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectResponse {
    /// The lifecycle decision.
    pub resolution: ConnectResolution,
    /// Initialization lease token (`initialize_local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization_id: Option<String>,
    /// Lease expiry, RFC 3339 (`initialize_local`, `retry_later`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    /// Suggested delay (`retry_later`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<i64>,
}

/// `POST /sync/push-sessions` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushSessionCreateRequest {
    /// The source's bundle counter for this push (starts at 1, contiguous).
    #[serde(default)]
    pub source_bundle_id: i64,
    /// Total number of rows the session will receive.
    #[serde(default)]
    pub planned_row_count: i64,
    /// Initialization lease token when seeding a scope (`initialize_local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization_id: Option<String>,
}

/// `POST /sync/push-sessions` response: a new staging session, or the metadata of the
/// bundle this `(source_id, source_bundle_id)` already committed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PushSessionCreateResponse {
    /// A staging session was opened.
    Staging {
        /// Session id for chunk/commit/delete.
        push_id: String,
        /// Echo of the planned row count.
        #[serde(default)]
        planned_row_count: i64,
        /// Next `start_row_ordinal` the server expects (0; omitted by the reference).
        #[serde(default)]
        next_expected_row_ordinal: i64,
    },
    /// The tuple was committed before; fetch its rows instead of pushing again.
    AlreadyCommitted {
        /// Committed bundle sequence.
        bundle_seq: i64,
        /// Source id of the bundle.
        source_id: String,
        /// Source bundle id of the bundle.
        source_bundle_id: i64,
        /// Number of rows in the bundle.
        #[serde(default)]
        row_count: i64,
        /// `bundle_hash` of the bundle.
        bundle_hash: String,
    },
}

/// `POST /sync/push-sessions/{push_id}/chunks` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushSessionChunkRequest {
    /// Ordinal of the first row of this chunk (contiguous from 0).
    #[serde(default)]
    pub start_row_ordinal: i64,
    /// Rows of this chunk (non-empty).
    #[serde(default)]
    pub rows: Vec<PushRequestRow>,
}

/// `POST /sync/push-sessions/{push_id}/chunks` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushSessionChunkResponse {
    /// Session id.
    pub push_id: String,
    /// Next expected `start_row_ordinal`.
    #[serde(default)]
    pub next_expected_row_ordinal: i64,
}

/// `POST /sync/push-sessions/{push_id}/commit` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushSessionCommitResponse {
    /// Committed bundle sequence.
    pub bundle_seq: i64,
    /// Source id of the bundle.
    pub source_id: String,
    /// Source bundle id of the bundle.
    pub source_bundle_id: i64,
    /// Number of rows of the authoritative bundle (may differ from the pushed count).
    #[serde(default)]
    pub row_count: i64,
    /// `bundle_hash` of the authoritative rows.
    pub bundle_hash: String,
}

/// `GET /sync/committed-bundles/{bundle_seq}/rows` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommittedBundleRowsResponse {
    /// Bundle sequence.
    pub bundle_seq: i64,
    /// Source id of the bundle.
    pub source_id: String,
    /// Source bundle id of the bundle.
    pub source_bundle_id: i64,
    /// Total rows of the bundle.
    #[serde(default)]
    pub row_count: i64,
    /// `bundle_hash` of the whole bundle.
    pub bundle_hash: String,
    /// This page's rows; the first row of the page has ordinal `after_row_ordinal + 1`
    /// (or 0 on the first page).
    #[serde(default)]
    pub rows: Vec<BundleRow>,
    /// Ordinal of the last returned row (echo of `after_row_ordinal`, or 0, when empty).
    #[serde(default)]
    pub next_row_ordinal: i64,
    /// Whether rows remain after `next_row_ordinal`.
    #[serde(default)]
    pub has_more: bool,
}

/// `GET /sync/pull` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Frozen ceiling of this pull session; pass it back as `target_bundle_seq`.
    pub stable_bundle_seq: i64,
    /// Complete bundles in order.
    #[serde(default)]
    pub bundles: Vec<Bundle>,
    /// Whether more bundles remain up to `stable_bundle_seq`.
    #[serde(default)]
    pub has_more: bool,
}

/// One current row of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// Schema of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Sync key.
    pub key: SyncKey,
    /// `bundle_seq` that last wrote the row.
    pub row_version: i64,
    /// Full-row after-image.
    pub payload: Value,
}

/// Reason of a rotated rebuild (`source_replacement.reason`).
pub mod replacement_reason {
    /// Pull or replay hit the retained floor.
    pub const HISTORY_PRUNED: &str = "history_pruned";
    /// Push create saw a gap in the source sequence.
    pub const SOURCE_SEQUENCE_OUT_OF_ORDER: &str = "source_sequence_out_of_order";
    /// The sequence moved between create and commit.
    pub const SOURCE_SEQUENCE_CHANGED: &str = "source_sequence_changed";
    /// The source was retired.
    pub const SOURCE_RETIRED: &str = "source_retired";
    /// All accepted reasons.
    pub const ALL: [&str; 4] = [
        HISTORY_PRUNED,
        SOURCE_SEQUENCE_OUT_OF_ORDER,
        SOURCE_SEQUENCE_CHANGED,
        SOURCE_RETIRED,
    ];
}

/// `source_replacement` of a snapshot-session create request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotSourceReplacement {
    /// Must equal the request's `Oversync-Source-ID`.
    pub previous_source_id: String,
    /// Fresh source id to use after the rebuild.
    pub new_source_id: String,
    /// One of [`replacement_reason::ALL`].
    pub reason: String,
}

/// `POST /sync/snapshot-sessions` request (the body itself is optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSessionCreateRequest {
    /// Rotated-rebuild intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_replacement: Option<SnapshotSourceReplacement>,
}

/// `POST /sync/snapshot-sessions` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotSession {
    /// Session id.
    pub snapshot_id: String,
    /// The bundle_seq the snapshot is frozen at.
    pub snapshot_bundle_seq: i64,
    /// Total rows.
    #[serde(default)]
    pub row_count: i64,
    /// Total payload bytes (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_count: Option<i64>,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// `GET /sync/snapshot-sessions/{snapshot_id}` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotChunkResponse {
    /// Session id.
    pub snapshot_id: String,
    /// The bundle_seq the snapshot is frozen at.
    pub snapshot_bundle_seq: i64,
    /// This page's rows.
    #[serde(default)]
    pub rows: Vec<SnapshotRow>,
    /// Cursor for the next page (`after_row_ordinal`).
    #[serde(default)]
    pub next_row_ordinal: i64,
    /// Whether more rows remain.
    #[serde(default)]
    pub has_more: bool,
}

/// Bundle-related limits advertised by capabilities. Absent fields mean "not reported".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BundleCapabilitiesLimits {
    /// Max row effects per bundle (absent/0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_bundle: Option<i64>,
    /// Max payload bytes per bundle (absent/0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_bundle: Option<i64>,
    /// Max `max_bundles` of a pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bundles_per_pull: Option<i64>,
    /// Default push chunk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_rows_per_push_chunk: Option<i64>,
    /// Max rows per push chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_push_chunk: Option<i64>,
    /// Push session TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_session_ttl_seconds: Option<i64>,
    /// Default committed-bundle page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_rows_per_committed_bundle_chunk: Option<i64>,
    /// Max committed-bundle page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_committed_bundle_chunk: Option<i64>,
    /// Default snapshot page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_rows_per_snapshot_chunk: Option<i64>,
    /// Max snapshot page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_snapshot_chunk: Option<i64>,
    /// Snapshot session TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_session_ttl_seconds: Option<i64>,
    /// Max rows of one snapshot session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_snapshot_session: Option<i64>,
    /// Max payload bytes of one snapshot session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_snapshot_session: Option<i64>,
    /// Initialization lease duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization_lease_ttl_seconds: Option<i64>,
}

/// One registered table in capabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisteredTableSpec {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Sync key columns (one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_key_columns: Vec<String>,
}

/// `GET /sync/capabilities` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// `v1`.
    pub protocol_version: String,
    /// Host schema version.
    #[serde(default)]
    pub schema_version: i64,
    /// Host application name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// `schema.table` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registered_tables: Vec<String>,
    /// Registered tables with their key columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registered_table_specs: Vec<RegisteredTableSpec>,
    /// Feature flags, e.g. `bundle_change_watch`.
    #[serde(default)]
    pub features: std::collections::BTreeMap<String, bool>,
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_limits: Option<BundleCapabilitiesLimits>,
}

impl CapabilitiesResponse {
    /// Whether a feature flag is present and true.
    pub fn feature(&self, name: &str) -> bool {
        self.features.get(name).copied().unwrap_or(false)
    }
}

/// Generic error body `{"error": code, "message": text}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Machine-readable code, see [`crate::codes`].
    pub error: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
}

/// `409 source_retired` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRetiredResponse {
    /// Always `source_retired`.
    pub error: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// The retired source.
    pub source_id: String,
    /// Its replacement, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by_source_id: Option<String>,
}

/// Structured conflict of a rejected push commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushConflictDetails {
    /// Schema of the conflicting row.
    pub schema: String,
    /// Table of the conflicting row.
    pub table: String,
    /// Key of the conflicting row.
    pub key: SyncKey,
    /// The pushed operation.
    pub op: Op,
    /// The pushed base version.
    #[serde(default)]
    pub base_row_version: i64,
    /// Server's current version (0 if the server never saw the row).
    #[serde(default)]
    pub server_row_version: i64,
    /// Whether the server row is a tombstone.
    #[serde(default)]
    pub server_row_deleted: bool,
    /// Server's current row (null when deleted or missing).
    #[serde(default)]
    pub server_row: Option<Value>,
}

/// `409 push_conflict` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushConflictResponse {
    /// Always `push_conflict`.
    pub error: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// The first conflicting row.
    pub conflict: PushConflictDetails,
}

/// `data:` of an SSE `bundle` event on `/sync/watch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleChangeEvent {
    /// Newest known bundle_seq.
    pub bundle_seq: i64,
    /// Source of that bundle, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// Source bundle id of that bundle, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_bundle_id: Option<i64>,
}

/// `GET /syncx/status` and `/syncx/health` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// Protocol version.
    #[serde(default)]
    pub version: String,
    /// Host application name.
    #[serde(default)]
    pub app_name: String,
    /// `running`, `shutting_down` or `closed`.
    #[serde(default)]
    pub lifecycle: String,
    /// Whether new operations are accepted.
    #[serde(default)]
    pub accepting_operations: bool,
    /// Operations in flight.
    #[serde(default)]
    pub inflight_operations: i64,
    /// Registered `schema.table` names.
    #[serde(default)]
    pub registered_tables: Vec<String>,
    /// Feature flags.
    #[serde(default)]
    pub features: std::collections::BTreeMap<String, bool>,
    /// Users whose floor is ahead of their latest bundle (should be 0).
    #[serde(default)]
    pub user_state_retention_floor_ahead_count: i64,
    /// Highest latest bundle_seq over users.
    #[serde(default)]
    pub latest_bundle_seq_max: i64,
    /// Lowest retained floor over users.
    #[serde(default)]
    pub retained_bundle_floor_min: i64,
    /// Highest retained floor over users.
    #[serde(default)]
    pub retained_bundle_floor_max: i64,
    /// Smallest retained window over users.
    #[serde(default)]
    pub retained_bundle_window_min: i64,
    /// Largest retained window over users.
    #[serde(default)]
    pub retained_bundle_window_max: i64,
    /// `history_pruned` answers given.
    #[serde(default)]
    pub history_pruned_error_count: i64,
    /// `already_committed` answers given.
    #[serde(default)]
    pub accepted_push_replay_count: i64,
    /// Business-table writes rejected for lack of bundle context.
    #[serde(default)]
    pub rejected_registered_write_count: i64,
    /// Committed bundles stored.
    #[serde(default)]
    pub committed_bundle_count: i64,
    /// Canonical bytes of committed bundles stored.
    #[serde(default)]
    pub committed_bundle_bytes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn staging_response_decodes_without_zero_fields() {
        // The reference omits `next_expected_row_ordinal` when it is 0.
        let v: PushSessionCreateResponse = serde_json::from_value(
            json!({"push_id": "p", "status": "staging", "planned_row_count": 3}),
        )
        .unwrap();
        assert_eq!(
            v,
            PushSessionCreateResponse::Staging {
                push_id: "p".into(),
                planned_row_count: 3,
                next_expected_row_ordinal: 0
            }
        );
        let a: PushSessionCreateResponse = serde_json::from_value(json!({
            "status": "already_committed", "bundle_seq": 4, "source_id": "s",
            "source_bundle_id": 2, "row_count": 1, "bundle_hash": "ab"
        }))
        .unwrap();
        assert!(matches!(
            a,
            PushSessionCreateResponse::AlreadyCommitted { bundle_seq: 4, .. }
        ));
        assert_eq!(
            serde_json::to_value(&a).unwrap()["status"],
            json!("already_committed")
        );
    }

    #[test]
    fn delete_rows_omit_payload_and_ops_are_lenient() {
        let row = BundleRow {
            schema: "s".into(),
            table: "t".into(),
            key: sync_key("id", "k"),
            op: Op::Delete,
            row_version: 2,
            payload: None,
        };
        let v = serde_json::to_value(&row).unwrap();
        assert!(v.get("payload").is_none());
        let r: PushRequestRow =
            serde_json::from_value(json!({"schema":"s","table":"t","key":{"id":"k"},"op":" update ","base_row_version":1,"payload":{"id":"k"}})).unwrap();
        assert_eq!(r.op, Op::Update);
        assert!(serde_json::from_value::<PushRequestRow>(json!({"op": "UPSERT"})).is_err());
    }

    #[test]
    fn conflict_serializes_null_server_row() {
        let c = PushConflictDetails {
            schema: "s".into(),
            table: "t".into(),
            key: sync_key("id", "k"),
            op: Op::Insert,
            base_row_version: 0,
            server_row_version: 3,
            server_row_deleted: true,
            server_row: None,
        };
        assert_eq!(serde_json::to_value(&c).unwrap()["server_row"], Value::Null);
    }

    #[test]
    fn snapshot_request_rejects_unknown_fields() {
        assert!(serde_json::from_str::<SnapshotSessionCreateRequest>(r#"{"x":1}"#).is_err());
        assert!(serde_json::from_str::<SnapshotSessionCreateRequest>("{}").is_ok());
    }
}
