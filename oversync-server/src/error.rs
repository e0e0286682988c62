//! Errors of the sync runtime and their HTTP mapping (status + OpenAPI error body).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oversync_protocol::{
    ErrorResponse, PushConflictDetails, PushConflictResponse, SourceRetiredResponse, codes,
};

/// The pushed row a [`SyncError::RowRejected`] is about.
#[derive(Debug)]
pub struct RejectedRow {
    /// `push_chunk_invalid` or `push_commit_invalid`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The row's ordinal in the push session.
    pub row_ordinal: i64,
    /// The row's schema.
    pub schema: String,
    /// The row's table.
    pub table: String,
    /// The row's key as the client sent it (`{"id": "..."}`), when known.
    pub key: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Every failure a sync operation can report. Each variant maps to one HTTP status and
/// `error` code of the OpenAPI file.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// 400 with the given code (request-shape problems).
    #[error("{message}")]
    BadRequest {
        /// Error code, see [`codes`].
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// 400 naming the pushed row the server refuses (a value, constraint or foreign key of
    /// that row). The body is the generic `{"error", "message"}` plus the additive fields
    /// `row_ordinal`, `schema`, `table` and `key`, so a client can set that row aside and
    /// push the rest; clients that ignore the extra fields see an ordinary 400.
    #[error("{}", .0.message)]
    RowRejected(Box<RejectedRow>),
    /// 413: the request body exceeds the configured limit.
    #[error("request body is too large")]
    TooLarge,
    /// 401: no authenticated user.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: the session belongs to another user.
    #[error("{message}")]
    Forbidden {
        /// `push_session_forbidden` or `snapshot_session_forbidden`.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// 404.
    #[error("{message}")]
    NotFound {
        /// Error code.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// 409 with the given code (lifecycle and sequencing conflicts).
    #[error("{message}")]
    Conflict {
        /// Error code.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// 410 (expired session or lease).
    #[error("{message}")]
    Gone {
        /// Error code.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// 409 `push_conflict` with the structured conflict.
    #[error("{message}")]
    PushConflict {
        /// Human-readable message.
        message: String,
        /// The first conflicting row.
        conflict: Box<PushConflictDetails>,
    },
    /// 409 `source_retired`.
    #[error("source {source_id} was retired")]
    SourceRetired {
        /// The retired source.
        source_id: String,
        /// Its replacement, if known.
        replaced_by: Option<String>,
    },
    /// 503 (shutting down or watch disabled).
    #[error("{message}")]
    Unavailable {
        /// Error code.
        code: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// A server-originated write changed no registered row.
    #[error("server write for {scope_id} via {writer_id} produced no registered-table effects")]
    NoCapturedChanges {
        /// Target scope.
        scope_id: String,
        /// Writer source id.
        writer_id: String,
    },
    /// 500: database or internal failure (details are logged, not sent).
    #[error("internal error: {0}")]
    Internal(String),
}

impl SyncError {
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        SyncError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        SyncError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn gone(code: &'static str, message: impl Into<String>) -> Self {
        SyncError::Gone {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        SyncError::NotFound {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        SyncError::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        SyncError::Internal(format!("{context}: {err}"))
    }

    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            SyncError::BadRequest { .. }
            | SyncError::RowRejected(_)
            | SyncError::NoCapturedChanges { .. } => StatusCode::BAD_REQUEST,
            SyncError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SyncError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            SyncError::Forbidden { .. } => StatusCode::FORBIDDEN,
            SyncError::NotFound { .. } => StatusCode::NOT_FOUND,
            SyncError::Conflict { .. }
            | SyncError::PushConflict { .. }
            | SyncError::SourceRetired { .. } => StatusCode::CONFLICT,
            SyncError::Gone { .. } => StatusCode::GONE,
            SyncError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SyncError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            SyncError::RowRejected(row) => row.code,
            SyncError::BadRequest { code, .. }
            | SyncError::Forbidden { code, .. }
            | SyncError::NotFound { code, .. }
            | SyncError::Conflict { code, .. }
            | SyncError::Gone { code, .. }
            | SyncError::Unavailable { code, .. } => code,
            SyncError::TooLarge => codes::REQUEST_TOO_LARGE,
            SyncError::Unauthenticated(_) => codes::AUTHENTICATION_FAILED,
            SyncError::PushConflict { .. } => codes::PUSH_CONFLICT,
            SyncError::SourceRetired { .. } => codes::SOURCE_RETIRED,
            SyncError::NoCapturedChanges { .. } => codes::PUSH_COMMIT_INVALID,
            SyncError::Internal(_) => codes::INTERNAL_ERROR,
        }
    }
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(err: tokio_postgres::Error) -> Self {
        match err.as_db_error() {
            Some(db) => SyncError::Internal(format!(
                "database: {} ({}){}",
                db.message(),
                db.code().code(),
                db.where_().map(|w| format!(" at {w}")).unwrap_or_default()
            )),
            None => SyncError::Internal(format!("database: {err}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for SyncError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        SyncError::Internal(format!("database pool: {err}"))
    }
}

/// Writes an `{"error", "message"}` body with the given status.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorResponse {
            error: code.to_owned(),
            message: message.into(),
        }),
    )
        .into_response()
}

impl IntoResponse for SyncError {
    fn into_response(self) -> Response {
        let code = crate::metrics::ErrorCode(self.code());
        let mut response = self.render();
        response.extensions_mut().insert(code);
        response
    }
}

impl SyncError {
    fn render(self) -> Response {
        let status = self.status();
        match self {
            SyncError::PushConflict { message, conflict } => (
                status,
                Json(PushConflictResponse {
                    error: codes::PUSH_CONFLICT.to_owned(),
                    message,
                    conflict: *conflict,
                }),
            )
                .into_response(),
            SyncError::SourceRetired {
                ref source_id,
                ref replaced_by,
            } => {
                let message = match replaced_by {
                    Some(r) => format!("source {source_id} was retired and replaced by {r}"),
                    None => format!("source {source_id} was retired"),
                };
                (
                    status,
                    Json(SourceRetiredResponse {
                        error: codes::SOURCE_RETIRED.to_owned(),
                        message,
                        source_id: source_id.clone(),
                        replaced_by_source_id: replaced_by.clone(),
                    }),
                )
                    .into_response()
            }
            SyncError::RowRejected(row) => (
                status,
                Json(serde_json::json!({
                    "error": row.code,
                    "message": row.message,
                    "row_ordinal": row.row_ordinal,
                    "schema": row.schema,
                    "table": row.table,
                    "key": row.key,
                })),
            )
                .into_response(),
            SyncError::Internal(detail) => {
                // Internals (SQL, constraint names) stay in the log.
                tracing::error!(error = %detail, "sync request failed");
                error_response(status, codes::INTERNAL_ERROR, "internal server error")
            }
            other => {
                let code = other.code();
                error_response(status, code, other.to_string())
            }
        }
    }
}
