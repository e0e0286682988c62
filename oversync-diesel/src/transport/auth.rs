//! Bearer-token supply: the [`TokenProvider`] trait and its two ready-made forms.

use std::future::Future;
use std::pin::Pin;

/// A [`TokenProvider`] could not supply a token (e.g. sign-in failed, the user signed out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token provider failed: {0}")]
pub struct AuthError(pub String);

impl AuthError {
    /// An error with the given description.
    pub fn new(message: impl Into<String>) -> AuthError {
        AuthError(message.into())
    }
}

/// The boxed future a [`TokenProvider`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, AuthError>> + Send + 'a>>;

/// Supplies bearer tokens to a [`Transport`](super::Transport).
///
/// It is called before every request attempt, because tokens expire (the reference demo
/// server's last 5 minutes); a provider normally caches its token and renews it shortly
/// before expiry. After a `401` answer it is called once with `refresh = true` and must then
/// return a fresh token (e.g. by signing in again); a second `401` fails the call with
/// [`TransportError::Unauthorized`](super::TransportError::Unauthorized).
///
/// It may run on any tokio runtime: the caller's, or the transport's own I/O thread, which
/// asks for the next page of a download ahead of time.
///
/// Most apps use [`token_fn`] or [`StaticToken`]; implement the trait for a provider with
/// its own state:
///
/// ```
/// use oversync_diesel::transport::{AuthError, TokenFuture, TokenProvider};
/// use std::sync::Mutex;
///
/// struct Session {
///     token: Mutex<String>,
/// }
///
/// impl TokenProvider for Session {
///     fn token(&self, refresh: bool) -> TokenFuture<'_> {
///         Box::pin(async move {
///             if refresh {
///                 // Sign in again here and store the new token.
///                 *self.token.lock().map_err(|_| AuthError::new("poisoned"))? = "fresh".into();
///             }
///             Ok(self.token.lock().map_err(|_| AuthError::new("poisoned"))?.clone())
///         })
///     }
/// }
///
/// let session = Session { token: Mutex::new("old".into()) };
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert_eq!(rt.block_on(session.token(false)).unwrap(), "old");
/// assert_eq!(rt.block_on(session.token(true)).unwrap(), "fresh");
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// The bearer token to send (without the `Bearer ` prefix). `refresh` is `true` right
    /// after the server rejected the previous token with `401`.
    fn token(&self, refresh: bool) -> TokenFuture<'_>;
}

/// A fixed token; a refresh returns the same token, so a `401` becomes
/// [`TransportError::Unauthorized`](super::TransportError::Unauthorized) after one retry.
#[derive(Clone)]
pub struct StaticToken(pub String);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl TokenProvider for StaticToken {
    fn token(&self, _refresh: bool) -> TokenFuture<'_> {
        Box::pin(std::future::ready(Ok(self.0.clone())))
    }
}

struct FnProvider<F>(F);

impl<F, Fut> TokenProvider for FnProvider<F>
where
    F: Fn(bool) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, AuthError>> + Send + 'static,
{
    fn token(&self, refresh: bool) -> TokenFuture<'_> {
        Box::pin((self.0)(refresh))
    }
}

/// A [`TokenProvider`] from an async closure `Fn(refresh: bool) -> Result<String, AuthError>`.
///
/// ```
/// use oversync_diesel::transport::{AuthError, token_fn};
///
/// let provider = token_fn(|refresh| async move {
///     // Return the cached token, or sign in again when `refresh` is true.
///     Ok::<_, AuthError>(if refresh { "new".to_string() } else { "cached".to_string() })
/// });
/// # let _ = provider;
/// ```
pub fn token_fn<F, Fut>(f: F) -> impl TokenProvider
where
    F: Fn(bool) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, AuthError>> + Send + 'static,
{
    FnProvider(f)
}
