//! [`TransportError`]: every way a call to the server can fail.

use super::auth::AuthError;
use oversync_protocol::codes;

/// A failed call to the oversync server.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The server answered with a non-success status (other than a `401` that a token
    /// refresh cured), usually with the error body `{"error": code, "message": text}`.
    #[error("{request} answered {status}{}: {message}", if code.is_empty() { String::new() } else { format!(" {code}") })]
    Server {
        /// The method and path that failed, e.g. `GET /sync/committed-bundles/7/rows`.
        request: String,
        /// HTTP status.
        status: u16,
        /// The body's `error` field (see [`oversync_protocol::codes`]); empty when the body
        /// was not JSON (e.g. the reference server's plain-text `401`, a proxy's HTML `502`).
        code: String,
        /// The body's `message` field, or the first 512 characters of a non-JSON body.
        message: String,
        /// The JSON body, when it was JSON: structured errors such as `push_conflict` or
        /// `source_retired` carry more than `error` and `message`.
        body: Option<serde_json::Value>,
    },
    /// The server answered `401` even after one token refresh.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The server's last answer (first 512 characters).
        message: String,
    },
    /// The server named the user the token authenticated (the
    /// [`USER_ID_HEADER`](oversync_protocol::USER_ID_HEADER) response header), and it is not
    /// the user this call was for ([`Transport::expecting_user`](super::Transport::expecting_user)):
    /// the app handed over a token of another account. The answer was not used; nothing is
    /// retried.
    #[error(
        "{request}: the token is for user {token_user:?}, but the device is attached to user {expected_user:?}"
    )]
    TokenUserMismatch {
        /// The method and path whose answer named the other user.
        request: String,
        /// The user the device is attached to (or attaching).
        expected_user: String,
        /// The user the server says the token is for.
        token_user: String,
    },
    /// The token provider failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Connection refused or reset, DNS failure, a body cut short, or a timeout; reported
    /// after the retries were exhausted.
    #[error("network error{}: {message}", if *timed_out { " (timed out)" } else { "" })]
    Network {
        /// What failed.
        message: String,
        /// Whether it was a timeout.
        timed_out: bool,
    },
    /// A success answer whose body did not decode as the expected type (truncated, wrong
    /// shape, not JSON).
    #[error("undecodable answer from {endpoint}: {message}")]
    Decode {
        /// The endpoint, e.g. `GET /sync/pull`.
        endpoint: String,
        /// The decoding error and the start of the body.
        message: String,
    },
    /// The base URL is not a valid `http`/`https` URL.
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
    /// The request could not be built from the arguments (an empty or `.`/`..` session id,
    /// a source id or token that is not a valid header value). Nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl TransportError {
    /// The server's `error` code, when it sent one (never `Some("")`).
    pub fn code(&self) -> Option<&str> {
        match self {
            TransportError::Server { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered (`401` for [`TransportError::Unauthorized`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            TransportError::Server { status, .. } => Some(*status),
            TransportError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }

    /// Whether the same request may succeed later: network failures and `5xx` answers
    /// (except `bundle_change_watch_disabled`, a configuration answer). The transport has
    /// already retried these as far as its [`TransportConfig`](super::TransportConfig) allows.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Server { status, code, .. } => {
                *status >= 500 && code != codes::BUNDLE_CHANGE_WATCH_DISABLED
            }
            TransportError::Network { .. } => true,
            _ => false,
        }
    }

    /// Whether this is a timeout (of the request, or of an idle watch stream).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            TransportError::Network {
                timed_out: true,
                ..
            }
        )
    }
}
