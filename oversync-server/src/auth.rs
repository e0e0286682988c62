//! The authenticated actor of a sync request.
//!
//! Auth is the host's: its middleware authenticates the request and inserts an
//! [`AuthenticatedUser`] extension. The sync handlers then read the [`Actor`]: that user plus
//! the `Oversync-Source-ID` header.

use crate::error::SyncError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use oversync_protocol::{SOURCE_ID_HEADER, codes};

/// Longest accepted source id; it travels in NOTIFY payloads and indexes.
pub const MAX_SOURCE_ID_LEN: usize = 256;
/// Longest accepted user id.
pub const MAX_USER_ID_LEN: usize = 256;

/// Request extension the host's auth layer inserts with the authenticated user id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedUser(pub String);

/// User and source of one sync request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// Authenticated user (the sync scope).
    pub user_id: String,
    /// Client source id from the `Oversync-Source-ID` header.
    pub source_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = SyncError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let user_id = parts
            .extensions
            .get::<AuthenticatedUser>()
            .map(|u| u.0.trim().to_owned())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                SyncError::Unauthenticated("authenticated user_id not found in request".into())
            })?;
        if user_id.len() > MAX_USER_ID_LEN {
            return Err(SyncError::Unauthenticated("user id is too long".into()));
        }
        let source_id = parts
            .headers
            .get(SOURCE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        if source_id.is_empty() {
            return Err(SyncError::bad_request(
                codes::INVALID_REQUEST,
                format!("{SOURCE_ID_HEADER} header is required"),
            ));
        }
        if source_id.len() > MAX_SOURCE_ID_LEN {
            return Err(SyncError::bad_request(
                codes::INVALID_REQUEST,
                format!("{SOURCE_ID_HEADER} must be at most {MAX_SOURCE_ID_LEN} bytes"),
            ));
        }
        Ok(Actor { user_id, source_id })
    }
}

/// Adds [`USER_ID_HEADER`](oversync_protocol::USER_ID_HEADER) to every `/sync/*` answer
/// whose request the host's auth layer authenticated, so a client can tell that its token
/// belongs to another user than the one it is attached to. A user id that is not a valid
/// header value is not sent (the client then cannot compare, and does not).
pub(crate) async fn name_token_user(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let user = request
        .extensions()
        .get::<AuthenticatedUser>()
        .map(|u| u.0.trim().to_owned())
        .filter(|u| !u.is_empty() && u.len() <= MAX_USER_ID_LEN)
        .and_then(|u| axum::http::HeaderValue::from_str(&u).ok());
    let mut response = next.run(request).await;
    if let Some(user) = user {
        response
            .headers_mut()
            .insert(oversync_protocol::USER_ID_HEADER, user);
    }
    response
}
