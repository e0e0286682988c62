//! HTTP transport to an oversync server.
//!
//! [`Transport`] speaks the protocol's endpoints (`oversync-openapi.yaml`): it sends the
//! app-owned bearer token (from a [`TokenProvider`], asked before every attempt) and the
//! `Oversync-Source-ID` header, applies a per-attempt timeout, retries network failures
//! and `5xx` answers with jittered exponential backoff, refreshes the token once on `401`,
//! and turns every failure into a typed [`TransportError`] carrying the server's `error`
//! code. It never panics on what the network delivers.

mod auth;
mod error;
mod io;
pub(crate) use io::spawn as spawn_io;
mod pull_body;
mod retry;
pub(crate) use retry::jittered_backoff;
mod watch;

pub use auth::{AuthError, StaticToken, TokenFuture, TokenProvider, token_fn};
pub use error::TransportError;
pub use pull_body::{PullBodyDecoder, PullEachError, PullPageEnd, PullPart};
pub use retry::TransportConfig;
pub use watch::{WatchEvent, WatchStream};

use oversync_protocol::{
    CapabilitiesResponse, CommittedBundleRowsResponse, ConnectRequest, ConnectResponse,
    PullResponse, PushSessionChunkRequest, PushSessionChunkResponse, PushSessionCommitResponse,
    PushSessionCreateRequest, PushSessionCreateResponse, SOURCE_ID_HEADER, SnapshotChunkResponse,
    SnapshotSession, SnapshotSessionCreateRequest,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// `POST /sync/snapshot-sessions` may take this many times `request_timeout`: the server
/// builds the whole snapshot before it answers.
pub const SNAPSHOT_CREATE_TIMEOUT_FACTOR: u32 = 4;

/// At most this much of an error body is read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Error messages taken from non-JSON bodies keep this many characters.
const MAX_ERROR_MESSAGE: usize = 512;

/// The client side of one oversync server. Cheap to clone (the HTTP connection pool, the
/// token provider and the configuration are shared).
///
/// ```no_run
/// use oversync_diesel::transport::{StaticToken, Transport};
/// use oversync_protocol::ConnectRequest;
///
/// # async fn demo() -> Result<(), oversync_diesel::transport::TransportError> {
/// let transport = Transport::new("https://sync.example.com", StaticToken("jwt".into()))?;
/// let source_id = "0b5c3f0e-5c1e-4d52-9f6a-1d2e3f4a5b6c";
/// let caps = transport.capabilities(source_id).await?;
/// assert_eq!(caps.protocol_version, "v1");
/// let answer = transport.connect(source_id, &ConnectRequest { has_local_pending_rows: false }).await?;
/// println!("{:?}", answer.resolution);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    /// The user this handle's calls are for (see [`Transport::expecting_user`]).
    user: Option<Arc<str>>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    base_str: String,
    auth: Box<dyn TokenProvider>,
    config: TransportConfig,
    retry_observers: std::sync::RwLock<Vec<RetryObserver>>,
}

/// A retry about to happen: which endpoint, which retry, after how long, and why.
#[derive(Debug)]
pub struct RetryNotice<'a> {
    /// The endpoint, as `METHOD /path` (no query).
    pub endpoint: &'a str,
    /// 1 for the first retry.
    pub retry: u32,
    /// The backoff before it.
    pub delay: Duration,
    /// The failure being retried.
    pub error: &'a TransportError,
}

type RetryObserver = Arc<dyn Fn(&RetryNotice<'_>) + Send + Sync>;

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("base_url", &self.inner.base_str)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt hands back on success.
enum Answer {
    /// The whole body.
    Body(Vec<u8>),
    /// The open response, body unread (watch).
    Stream(reqwest::Response),
}

/// A request to send, possibly several times.
struct Call<'a> {
    method: Method,
    url: Url,
    /// `METHOD /path` for logs and errors.
    endpoint: String,
    source_id: &'a str,
    body: Option<Vec<u8>>,
    /// `Some(accept)`: hand back the open response (`Accept: accept`) and leave its body to
    /// the caller, which bounds the reading itself.
    stream: Option<&'static str>,
    /// Limit of one attempt.
    timeout: Duration,
    /// Whether a timed-out attempt is retried.
    retry_timeouts: bool,
}

impl Transport {
    /// A transport to the server at `base_url` (e.g. `https://sync.example.com`, or a URL
    /// with a path prefix such as `https://example.com/api`) with the default
    /// [`TransportConfig`]. Fails with [`TransportError::InvalidUrl`] unless `base_url` is an
    /// absolute `http`/`https` URL with a host and without query or fragment.
    ///
    /// ```
    /// use oversync_diesel::transport::{AuthError, Transport, TransportError, token_fn};
    ///
    /// let transport = Transport::new(
    ///     "http://127.0.0.1:8080/",
    ///     token_fn(|refresh| async move {
    ///         // Return the signed-in user's token; sign in again when `refresh` is true.
    ///         let _ = refresh;
    ///         Ok::<_, AuthError>("token".to_string())
    ///     }),
    /// )
    /// .expect("valid URL");
    /// assert_eq!(transport.base_url(), "http://127.0.0.1:8080");
    /// assert!(matches!(
    ///     Transport::new("ftp://example.com", oversync_diesel::transport::StaticToken("t".into())),
    ///     Err(TransportError::InvalidUrl(_))
    /// ));
    /// ```
    pub fn new(base_url: &str, auth: impl TokenProvider) -> Result<Transport, TransportError> {
        Self::with_config(base_url, auth, TransportConfig::default())
    }

    /// Like [`Transport::new`], with explicit timeouts and retry policy. Redirects are not
    /// followed: a `3xx` answer is a [`TransportError::Server`].
    pub fn with_config(
        base_url: &str,
        auth: impl TokenProvider,
        config: TransportConfig,
    ) -> Result<Transport, TransportError> {
        let invalid = |why: &str| TransportError::InvalidUrl(format!("{base_url:?}: {why}"));
        let mut base = Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.cannot_be_a_base() || base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("a host is required"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        // Normalize the path prefix: no trailing slash.
        let prefix = base.path().trim_end_matches('/').to_owned();
        base.set_path(&prefix);
        let base_str = base.as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TransportError::Network {
                message: format!("building the HTTP client: {e}"),
                timed_out: false,
            })?;
        Ok(Transport {
            user: None,
            inner: Arc::new(Inner {
                http,
                base,
                base_str,
                auth: Box::new(auth),
                config,
                retry_observers: std::sync::RwLock::new(Vec::new()),
            }),
        })
    }

    /// Calls `observer` before every automatic retry (the engine turns these into
    /// `SyncEvent::RetryScheduled`). Observers stay for the transport's lifetime.
    pub fn on_retry(&self, observer: impl Fn(&RetryNotice<'_>) + Send + Sync + 'static) {
        if let Ok(mut observers) = self.inner.retry_observers.write() {
            observers.push(Arc::new(observer));
        }
    }

    /// This transport for calls made on behalf of `user_id` (sharing the connection pool and
    /// token provider). A server that names the token's user in the
    /// [`USER_ID_HEADER`](oversync_protocol::USER_ID_HEADER) response header (ours does)
    /// and names another user gets [`TransportError::TokenUserMismatch`] instead of the
    /// answer; against a server that does not say, a `401` or `403` names `user_id` in its
    /// message. The engine uses it with the attached user for every call of a push, pull or
    /// attach, so a token of another account fails before anything is applied locally.
    pub fn expecting_user(&self, user_id: &str) -> Transport {
        Transport {
            inner: self.inner.clone(),
            user: Some(Arc::from(user_id.trim())),
        }
    }

    /// The user set by [`Transport::expecting_user`], if any.
    pub fn expected_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The server's base URL, normalized without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_str
    }

    /// The configuration in use.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// The jittered backoff before retry number `retry` (1-based) of this configuration, for
    /// callers that retry a request above the transport (an answer that is not retryable
    /// here but is for them).
    pub(crate) fn retry_delay(&self, retry: u32) -> std::time::Duration {
        retry::backoff(&self.inner.config, retry)
    }

    /// `GET /sync/capabilities`.
    pub async fn capabilities(
        &self,
        source_id: &str,
    ) -> Result<CapabilitiesResponse, TransportError> {
        let url = self.url(&["sync", "capabilities"], &[]);
        self.json(Method::GET, url, source_id, None::<&()>).await
    }

    /// `POST /sync/connect`.
    pub async fn connect(
        &self,
        source_id: &str,
        req: &ConnectRequest,
    ) -> Result<ConnectResponse, TransportError> {
        let url = self.url(&["sync", "connect"], &[]);
        self.json(Method::POST, url, source_id, Some(req)).await
    }

    /// `POST /sync/push-sessions`: opens a staging session, or reports that this
    /// `source_bundle_id` was already committed.
    pub async fn create_push_session(
        &self,
        source_id: &str,
        req: &PushSessionCreateRequest,
    ) -> Result<PushSessionCreateResponse, TransportError> {
        let url = self.url(&["sync", "push-sessions"], &[]);
        self.json(Method::POST, url, source_id, Some(req)).await
    }

    /// `POST /sync/push-sessions/{push_id}/chunks`. Retried after a timeout like any call: a
    /// duplicate is rejected by the server with a typed error (`push_chunk_out_of_order`).
    pub async fn upload_push_chunk(
        &self,
        source_id: &str,
        push_id: &str,
        req: &PushSessionChunkRequest,
    ) -> Result<PushSessionChunkResponse, TransportError> {
        let id = session_id(push_id, "push_id")?;
        let url = self.url(&["sync", "push-sessions", id, "chunks"], &[]);
        self.json(Method::POST, url, source_id, Some(req)).await
    }

    /// `POST /sync/push-sessions/{push_id}/commit` (no request body).
    pub async fn commit_push_session(
        &self,
        source_id: &str,
        push_id: &str,
    ) -> Result<PushSessionCommitResponse, TransportError> {
        let id = session_id(push_id, "push_id")?;
        let url = self.url(&["sync", "push-sessions", id, "commit"], &[]);
        self.json(Method::POST, url, source_id, None::<&()>).await
    }

    /// `DELETE /sync/push-sessions/{push_id}` (`204`; any success status is accepted).
    pub async fn delete_push_session(
        &self,
        source_id: &str,
        push_id: &str,
    ) -> Result<(), TransportError> {
        let id = session_id(push_id, "push_id")?;
        let url = self.url(&["sync", "push-sessions", id], &[]);
        self.send(Method::DELETE, url, source_id, None)
            .await
            .map(drop)
    }

    /// `GET /sync/committed-bundles/{bundle_seq}/rows`: one page of a committed bundle's
    /// rows. `after_row_ordinal` is the previous page's `next_row_ordinal` (`None` for the
    /// first page); `max_rows` defaults to the server's page size.
    pub async fn committed_bundle_rows(
        &self,
        source_id: &str,
        bundle_seq: i64,
        after_row_ordinal: Option<i64>,
        max_rows: Option<u32>,
    ) -> Result<CommittedBundleRowsResponse, TransportError> {
        let seq = bundle_seq.to_string();
        let mut query = Vec::new();
        if let Some(after) = after_row_ordinal {
            query.push(("after_row_ordinal", after.to_string()));
        }
        if let Some(max) = max_rows {
            query.push(("max_rows", max.to_string()));
        }
        let url = self.url(&["sync", "committed-bundles", &seq, "rows"], &query);
        self.json(Method::GET, url, source_id, None::<&()>).await
    }

    /// `GET /sync/pull?after_bundle_seq=N&max_bundles=M[&target_bundle_seq=S]`. Pass the
    /// first page's `stable_bundle_seq` as `target_bundle_seq` on later pages.
    pub async fn pull(
        &self,
        source_id: &str,
        after_bundle_seq: i64,
        max_bundles: u32,
        target_bundle_seq: Option<i64>,
    ) -> Result<PullResponse, TransportError> {
        let mut query = vec![
            ("after_bundle_seq", after_bundle_seq.to_string()),
            ("max_bundles", max_bundles.to_string()),
        ];
        if let Some(target) = target_bundle_seq {
            query.push(("target_bundle_seq", target.to_string()));
        }
        let url = self.url(&["sync", "pull"], &query);
        self.json(Method::GET, url, source_id, None::<&()>).await
    }

    /// `GET /sync/pull` like [`Transport::pull`], decoded as the body arrives: `on_part` gets
    /// the answer's `stable_bundle_seq` first, then each complete bundle in order, so the
    /// page is never held whole. Returns the answer's end (`stable_bundle_seq`, `has_more`).
    ///
    /// A body cut short (a network failure or a timeout while reading it) is asked for again
    /// from the last bundle `on_part` accepted, with the `stable_bundle_seq` it was given as
    /// `target_bundle_seq`, under the same retry policy as any call (a retry that follows
    /// accepted bundles starts the count again). The request timeout bounds the time spent
    /// waiting on the network, not the time spent in `on_part`.
    ///
    /// # Errors
    ///
    /// [`PullEachError::Transport`] as for any call (a body that is not a pull answer is a
    /// [`TransportError::Decode`]); [`PullEachError::Stopped`] with what `on_part` returned.
    pub async fn pull_each<E>(
        &self,
        source_id: &str,
        after_bundle_seq: i64,
        max_bundles: u32,
        target_bundle_seq: Option<i64>,
        mut on_part: impl FnMut(PullPart) -> Result<(), E>,
    ) -> Result<PullPageEnd, PullEachError<E>> {
        let (mut after, mut target) = (after_bundle_seq, target_bundle_seq);
        let mut retries = 0u32;
        let timeout = self.inner.config.request_timeout;
        loop {
            let mut query = vec![
                ("after_bundle_seq", after.to_string()),
                ("max_bundles", max_bundles.to_string()),
            ];
            if let Some(target) = target {
                query.push(("target_bundle_seq", target.to_string()));
            }
            let url = self.url(&["sync", "pull"], &query);
            let endpoint = format!("GET {}", url.path());
            let call = Call {
                method: Method::GET,
                url,
                endpoint: endpoint.clone(),
                source_id,
                body: None,
                stream: Some("application/json"),
                timeout,
                retry_timeouts: true,
            };
            let Answer::Stream(response) =
                self.execute(call).await.map_err(PullEachError::Transport)?
            else {
                return Err(PullEachError::Transport(TransportError::Decode {
                    endpoint,
                    message: "no body".into(),
                }));
            };
            let mut accepted = false;
            let read = read_pull_body(response, &endpoint, timeout, &mut |part| {
                let (stable, seq) = match &part {
                    PullPart::Stable(stable) => (Some(*stable), None),
                    PullPart::Bundle(bundle) => (None, Some(bundle.bundle_seq)),
                };
                on_part(part)?;
                target = stable.or(target);
                if let Some(seq) = seq {
                    after = seq;
                    accepted = true;
                }
                Ok(())
            })
            .await;
            let failure = match read {
                Ok(end) => return Ok(end),
                Err(PullEachError::Transport(e))
                    if e.is_retryable()
                        && (accepted || retries < self.inner.config.max_retries) =>
                {
                    e
                }
                Err(other) => return Err(other),
            };
            retries = if accepted { 1 } else { retries + 1 };
            let delay = self.announce_retry(&endpoint, retries, &failure);
            tokio::time::sleep(delay).await;
        }
    }

    /// `POST /sync/snapshot-sessions` (with `source_replacement` for a rotated rebuild).
    ///
    /// The server copies the whole snapshot before it answers, so one attempt may take
    /// [`SNAPSHOT_CREATE_TIMEOUT_FACTOR`] times `request_timeout`, and an attempt that times
    /// out is not retried: the error ([`TransportError::is_timeout`]) goes to the caller and
    /// the next sync starts over. Retrying at once would start the same build again under
    /// the same limit (our server cancels an abandoned build when the connection closes,
    /// but a server that does not would run both). Network failures and `5xx` answers are
    /// retried as for any call.
    pub async fn create_snapshot_session(
        &self,
        source_id: &str,
        req: &SnapshotSessionCreateRequest,
    ) -> Result<SnapshotSession, TransportError> {
        let url = self.url(&["sync", "snapshot-sessions"], &[]);
        let endpoint = format!("POST {}", url.path());
        let body = serde_json::to_vec(req).map_err(|e| {
            TransportError::InvalidRequest(format!("encoding the {endpoint} body: {e}"))
        })?;
        let call = Call {
            method: Method::POST,
            url,
            endpoint: endpoint.clone(),
            source_id,
            body: Some(body),
            stream: None,
            timeout: self
                .inner
                .config
                .request_timeout
                .saturating_mul(SNAPSHOT_CREATE_TIMEOUT_FACTOR),
            retry_timeouts: false,
        };
        match self.execute(call).await? {
            Answer::Body(bytes) => decode(endpoint, &bytes),
            Answer::Stream(_) => decode(endpoint, &[]),
        }
    }

    /// `GET /sync/snapshot-sessions/{snapshot_id}?after_row_ordinal=N&max_rows=M`: one page
    /// of a snapshot (start with `after_row_ordinal = 0`, then the previous page's
    /// `next_row_ordinal`).
    pub async fn snapshot_chunk(
        &self,
        source_id: &str,
        snapshot_id: &str,
        after_row_ordinal: i64,
        max_rows: u32,
    ) -> Result<SnapshotChunkResponse, TransportError> {
        let id = session_id(snapshot_id, "snapshot_id")?;
        let query = [
            ("after_row_ordinal", after_row_ordinal.to_string()),
            ("max_rows", max_rows.to_string()),
        ];
        let url = self.url(&["sync", "snapshot-sessions", id], &query);
        self.json(Method::GET, url, source_id, None::<&()>).await
    }

    /// `DELETE /sync/snapshot-sessions/{snapshot_id}` (`204`; any success status is accepted).
    pub async fn delete_snapshot_session(
        &self,
        source_id: &str,
        snapshot_id: &str,
    ) -> Result<(), TransportError> {
        let id = session_id(snapshot_id, "snapshot_id")?;
        let url = self.url(&["sync", "snapshot-sessions", id], &[]);
        self.send(Method::DELETE, url, source_id, None)
            .await
            .map(drop)
    }

    /// Opens `GET /sync/watch?after_bundle_seq=N`, a Server-Sent Events stream of wake-up
    /// hints (use it only when capabilities advertise `bundle_change_watch`). Opening is
    /// retried, refreshed and timed like any call; the open stream is read with
    /// [`WatchStream::next`].
    pub async fn watch(
        &self,
        source_id: &str,
        after_bundle_seq: i64,
    ) -> Result<WatchStream, TransportError> {
        let url = self.url(
            &["sync", "watch"],
            &[("after_bundle_seq", after_bundle_seq.to_string())],
        );
        let call = Call {
            method: Method::GET,
            endpoint: watch::WATCH_ENDPOINT.to_owned(),
            url,
            source_id,
            body: None,
            stream: Some("text/event-stream"),
            timeout: self.inner.config.request_timeout,
            retry_timeouts: true,
        };
        match self.execute(call).await? {
            Answer::Stream(response) => {
                let content_type = response
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !content_type
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
                {
                    return Err(TransportError::Decode {
                        endpoint: watch::WATCH_ENDPOINT.into(),
                        message: format!("expected text/event-stream, got {content_type:?}"),
                    });
                }
                let idle = (self.inner.config.request_timeout * 2).max(Duration::from_secs(60));
                Ok(WatchStream::new(response, idle))
            }
            Answer::Body(_) => Err(TransportError::Decode {
                endpoint: watch::WATCH_ENDPOINT.into(),
                message: "no stream".into(),
            }),
        }
    }

    /// `base + /segments...` with each segment percent-encoded, plus the query.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        url
    }

    /// Sends a request and decodes the JSON answer as `T`.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        source_id: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, TransportError> {
        let endpoint = format!("{method} {}", url.path());
        let body = match body {
            Some(body) => Some(serde_json::to_vec(body).map_err(|e| {
                TransportError::InvalidRequest(format!("encoding the {endpoint} body: {e}"))
            })?),
            None => None,
        };
        let bytes = self.send(method, url, source_id, body).await?;
        decode(endpoint, &bytes)
    }

    /// Sends a request and returns the success body.
    async fn send(
        &self,
        method: Method,
        url: Url,
        source_id: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, TransportError> {
        let call = Call {
            endpoint: format!("{method} {}", url.path()),
            method,
            url,
            source_id,
            body,
            stream: None,
            timeout: self.inner.config.request_timeout,
            retry_timeouts: true,
        };
        match self.execute(call).await? {
            Answer::Body(bytes) => Ok(bytes),
            Answer::Stream(_) => Ok(Vec::new()),
        }
    }

    /// The retry loop: token, attempt, then refresh on the first 401 and back off on
    /// retryable failures.
    async fn execute(&self, call: Call<'_>) -> Result<Answer, TransportError> {
        let inner = &self.inner;
        let source = HeaderValue::from_str(call.source_id)
            .ok()
            .filter(|_| !call.source_id.is_empty())
            .ok_or_else(|| {
                TransportError::InvalidRequest(format!(
                    "source id {:?} is not a valid header value",
                    call.source_id
                ))
            })?;
        let mut retries = 0u32;
        let mut refreshed = false;
        let mut refresh_now = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let span = tracing::debug_span!(
                "oversync_request",
                method = %call.method,
                path = %call.url.path(),
                attempt,
            );
            let outcome = async {
                let token = inner.auth.token(refresh_now).await?;
                let mut authorization =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        TransportError::InvalidRequest(
                            "the token is not a valid header value".into(),
                        )
                    })?;
                authorization.set_sensitive(true);
                let result = self.attempt(&call, authorization, source.clone()).await;
                match &result {
                    Ok(_) => tracing::debug!("succeeded"),
                    Err(e) => tracing::debug!(status = e.status(), error = %e, "failed"),
                }
                result
            }
            .instrument(span)
            .await;
            refresh_now = false;
            match outcome {
                Err(TransportError::Server {
                    status: 401,
                    message,
                    ..
                }) => {
                    if refreshed {
                        let message = match self.user.as_deref() {
                            Some(user) => {
                                format!("{message} (the device is attached to user {user:?})")
                            }
                            None => message,
                        };
                        return Err(TransportError::Unauthorized { message });
                    }
                    tracing::debug!(endpoint = %call.endpoint, "401: refreshing the token and retrying once");
                    refreshed = true;
                    refresh_now = true;
                }
                Err(e)
                    if e.is_retryable()
                        && retries < inner.config.max_retries
                        && (call.retry_timeouts || !e.is_timeout()) =>
                {
                    retries += 1;
                    tracing::debug!(attempt, "attempt failed");
                    let delay = self.announce_retry(&call.endpoint, retries, &e);
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Logs retry number `retry` of `endpoint`, tells the retry observers, and returns the
    /// backoff to wait before it.
    fn announce_retry(&self, endpoint: &str, retry: u32, error: &TransportError) -> Duration {
        let delay = retry::backoff(&self.inner.config, retry);
        tracing::warn!(endpoint, retry, ?delay, %error, "oversync request failed; retrying");
        let observers = self
            .inner
            .retry_observers
            .read()
            .map(|o| o.clone())
            .unwrap_or_default();
        for observer in observers {
            observer(&RetryNotice {
                endpoint,
                retry,
                delay,
                error,
            });
        }
        delay
    }

    /// One attempt, bounded by the request timeout, on the I/O runtime (see `io`).
    async fn attempt(
        &self,
        call: &Call<'_>,
        authorization: HeaderValue,
        source: HeaderValue,
    ) -> Result<Answer, TransportError> {
        let timeout = call.timeout;
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header(AUTHORIZATION, authorization)
            .header(SOURCE_ID_HEADER, source);
        if let Some(accept) = call.stream {
            request = request.header(ACCEPT, accept);
        } else {
            request = request.timeout(timeout).header(ACCEPT, "application/json");
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let sent = Sent {
            endpoint: call.endpoint.clone(),
            request: format!("{} {}", call.method, call.url.path()),
            user: self.user.clone(),
            stream: call.stream.is_some(),
            timeout,
        };
        io::run(sent.answer(request).in_current_span()).await
    }
}

/// An attempt on its way: what its answer is checked against.
struct Sent {
    /// `METHOD /path` for logs and errors.
    endpoint: String,
    /// `METHOD /path` as the server's errors name it.
    request: String,
    /// The user the token must be for, if known.
    user: Option<Arc<str>>,
    /// Hand back the open response instead of reading its body.
    stream: bool,
    timeout: Duration,
}

impl Sent {
    /// Sends `request` and reads its answer, all within the attempt's timeout.
    async fn answer(self, request: reqwest::RequestBuilder) -> Result<Answer, TransportError> {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let timed_out = || TransportError::Network {
            message: format!("{} timed out after {timeout:?}", self.endpoint),
            timed_out: true,
        };
        let response = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| network(&self.endpoint, "sending", &e))?;
        let status = response.status();
        tracing::debug!(status = status.as_u16(), "answer");
        if let (Some(expected), Some(token_user)) = (
            self.user.as_deref(),
            response.headers().get(oversync_protocol::USER_ID_HEADER),
        ) {
            let token_user = String::from_utf8_lossy(token_user.as_bytes());
            if token_user.trim() != expected {
                return Err(TransportError::TokenUserMismatch {
                    request: self.request,
                    expected_user: expected.to_owned(),
                    token_user: token_user.trim().to_owned(),
                });
            }
        }
        if !status.is_success() {
            let (bytes, _) = tokio::time::timeout_at(deadline, read_body(response, MAX_ERROR_BODY))
                .await
                .unwrap_or_default();
            let mut error = server_error(self.request, status.as_u16(), &bytes);
            if let (
                Some(user),
                TransportError::Server {
                    status: 403,
                    message,
                    ..
                },
            ) = (self.user.as_deref(), &mut error)
            {
                message.push_str(&format!(" (the device is attached to user {user:?})"));
            }
            return Err(error);
        }
        if self.stream {
            return Ok(Answer::Stream(response));
        }
        match tokio::time::timeout_at(deadline, read_body(response, usize::MAX)).await {
            Err(_) => Err(timed_out()),
            Ok((_, Some(e))) => Err(network(&self.endpoint, "reading the answer of", &e)),
            Ok((bytes, None)) => Ok(Answer::Body(bytes)),
        }
    }
}

/// Decodes a success body of `endpoint` as `T`.
fn decode<T: DeserializeOwned>(endpoint: String, bytes: &[u8]) -> Result<T, TransportError> {
    serde_json::from_slice(bytes).map_err(|e| TransportError::Decode {
        message: format!("{e}; body starts {}", preview(bytes, 200)),
        endpoint,
    })
}

/// Reads a pull answer as it arrives, handing each part to `on_part`. `timeout` bounds the
/// waiting on the network only: time spent in `on_part` moves the deadline.
async fn read_pull_body<E>(
    mut response: reqwest::Response,
    endpoint: &str,
    timeout: Duration,
    on_part: &mut impl FnMut(PullPart) -> Result<(), E>,
) -> Result<PullPageEnd, PullEachError<E>> {
    let decode = |message: String| {
        PullEachError::Transport(TransportError::Decode {
            endpoint: endpoint.to_owned(),
            message,
        })
    };
    let mut deadline = Instant::now() + timeout;
    let mut decoder = PullBodyDecoder::new();
    let mut parts = Vec::new();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => {
                return Err(PullEachError::Transport(TransportError::Network {
                    message: format!("{endpoint} timed out after {timeout:?}"),
                    timed_out: true,
                }));
            }
            Ok(Err(e)) => {
                return Err(PullEachError::Transport(network(
                    endpoint,
                    "reading the answer of",
                    &e,
                )));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        decoder.feed(&chunk, &mut parts).map_err(decode)?;
        if !parts.is_empty() {
            let started = Instant::now();
            for part in parts.drain(..) {
                on_part(part).map_err(PullEachError::Stopped)?;
            }
            deadline += started.elapsed();
        }
    }
    let end = decoder.finish(&mut parts).map_err(decode)?;
    for part in parts {
        on_part(part).map_err(PullEachError::Stopped)?;
    }
    Ok(end)
}

/// Reads up to `limit` bytes of a body; returns what was read and the error that cut it short.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> (Vec<u8>, Option<reqwest::Error>) {
    let capacity = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(limit)
        .min(16 * 1024 * 1024);
    let mut bytes = Vec::with_capacity(capacity);
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => return (bytes, Some(e)),
        }
    }
    (bytes, None)
}

/// Maps a non-success answer: JSON `{"error","message"}` when possible, else the text.
fn server_error(request: String, status: u16, bytes: &[u8]) -> TransportError {
    let body = serde_json::from_slice::<serde_json::Value>(bytes).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let code = field("error").unwrap_or_default();
    let message = field("message")
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| preview(bytes, MAX_ERROR_MESSAGE));
    TransportError::Server {
        request,
        status,
        code,
        message,
        body,
    }
}

fn network(endpoint: &str, doing: &str, e: &reqwest::Error) -> TransportError {
    use std::error::Error as _;
    let mut message = format!("{doing} {endpoint}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    TransportError::Network {
        message,
        timed_out: e.is_timeout(),
    }
}

/// The first `max_chars` characters of `bytes` as text, trimmed.
pub(crate) fn preview(bytes: &[u8], max_chars: usize) -> String {
    let head = &bytes[..bytes.len().min(max_chars.saturating_mul(4))];
    let text = String::from_utf8_lossy(head);
    text.trim().chars().take(max_chars).collect()
}

/// Checks a server-issued session id used as a path segment.
fn session_id<'a>(id: &'a str, what: &str) -> Result<&'a str, TransportError> {
    if id.is_empty() || id == "." || id == ".." {
        return Err(TransportError::InvalidRequest(format!(
            "{what} {id:?} cannot be used in a URL"
        )));
    }
    Ok(id)
}
