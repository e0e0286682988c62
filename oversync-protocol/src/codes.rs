//! Machine-readable `error` codes carried by `ErrorResponse` bodies.
//!
//! The set is the one the reference server emits; clients should treat unknown codes by their
//! HTTP status.

/// Malformed request: bad JSON, bad query parameter, missing `Oversync-Source-ID`.
pub const INVALID_REQUEST: &str = "invalid_request";
/// The request body is larger than the server accepts.
pub const REQUEST_TOO_LARGE: &str = "request_too_large";
/// No authenticated user (library router used without an auth layer).
pub const AUTHENTICATION_FAILED: &str = "authentication_failed";
/// The server is shutting down.
pub const SERVICE_UNAVAILABLE: &str = "service_unavailable";
/// Wrong HTTP method for a route.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// Unknown route.
pub const NOT_FOUND: &str = "not_found";

/// `POST /sync/connect` body invalid.
pub const CONNECT_INVALID: &str = "connect_invalid";
/// `POST /sync/connect` failed on the server.
pub const CONNECT_FAILED: &str = "connect_failed";

/// Push-session create request invalid.
pub const PUSH_SESSION_INVALID: &str = "push_session_invalid";
/// Push chunk invalid (also: deleting a committed session).
pub const PUSH_CHUNK_INVALID: &str = "push_chunk_invalid";
/// Push commit invalid (incomplete staging, rows the database rejects).
pub const PUSH_COMMIT_INVALID: &str = "push_commit_invalid";
/// Chunk `start_row_ordinal` is not the next expected one.
pub const PUSH_CHUNK_OUT_OF_ORDER: &str = "push_chunk_out_of_order";
/// Push session id unknown.
pub const PUSH_SESSION_NOT_FOUND: &str = "push_session_not_found";
/// Push session expired.
pub const PUSH_SESSION_EXPIRED: &str = "push_session_expired";
/// Push session belongs to another user.
pub const PUSH_SESSION_FORBIDDEN: &str = "push_session_forbidden";
/// Whole-bundle optimistic-concurrency conflict (`PushConflictResponse`).
pub const PUSH_CONFLICT: &str = "push_conflict";

/// The user's scope is not initialized yet (connect first).
pub const SCOPE_UNINITIALIZED: &str = "scope_uninitialized";
/// Another source holds the initialization lease.
pub const SCOPE_INITIALIZING: &str = "scope_initializing";
/// The initialization lease no longer belongs to this push.
pub const INITIALIZATION_STALE: &str = "initialization_stale";
/// The initialization lease expired.
pub const INITIALIZATION_EXPIRED: &str = "initialization_expired";

/// Requested history is below the retained floor.
pub const HISTORY_PRUNED: &str = "history_pruned";
/// `source_bundle_id` is not the next expected value for the source.
pub const SOURCE_SEQUENCE_OUT_OF_ORDER: &str = "source_sequence_out_of_order";
/// The source's sequence moved between push create and commit.
pub const SOURCE_SEQUENCE_CHANGED: &str = "source_sequence_changed";
/// The source was retired by a rotated rebuild (`SourceRetiredResponse`).
pub const SOURCE_RETIRED: &str = "source_retired";
/// The replacement source of a rotated rebuild conflicts with durable state.
pub const SOURCE_REPLACEMENT_INVALID: &str = "source_replacement_invalid";

/// Committed-bundle row request invalid.
pub const COMMITTED_BUNDLE_CHUNK_INVALID: &str = "committed_bundle_chunk_invalid";
/// Committed bundle not found.
pub const COMMITTED_BUNDLE_NOT_FOUND: &str = "committed_bundle_not_found";

/// Snapshot-session create request invalid.
pub const SNAPSHOT_SESSION_INVALID: &str = "snapshot_session_invalid";
/// Snapshot chunk request invalid.
pub const SNAPSHOT_CHUNK_INVALID: &str = "snapshot_chunk_invalid";
/// Snapshot session id unknown.
pub const SNAPSHOT_SESSION_NOT_FOUND: &str = "snapshot_session_not_found";
/// Snapshot session expired.
pub const SNAPSHOT_SESSION_EXPIRED: &str = "snapshot_session_expired";
/// Snapshot session belongs to another user.
pub const SNAPSHOT_SESSION_FORBIDDEN: &str = "snapshot_session_forbidden";

/// Watch is disabled on this server.
pub const BUNDLE_CHANGE_WATCH_DISABLED: &str = "bundle_change_watch_disabled";
/// Watch is not allowed for this actor.
pub const BUNDLE_CHANGE_WATCH_FORBIDDEN: &str = "bundle_change_watch_forbidden";
/// Watch setup failed.
pub const BUNDLE_CHANGE_WATCH_FAILED: &str = "bundle_change_watch_failed";

/// Unexpected server failure (the status is 500).
pub const INTERNAL_ERROR: &str = "internal_error";
