//! Clean restarts: once [`SyncService::begin_drain`] is called, requests already running
//! finish, new ones are answered `503 service_unavailable` with `Retry-After` (a client or
//! load balancer retries them on another instance), `/syncx/health` reports the instance as
//! unavailable, and open `/sync/watch` streams end so their clients reconnect elsewhere.
//!
//! All protocol state (push and snapshot sessions, leases) lives in PostgreSQL, so nothing
//! a client started is lost when the process that served its last request goes away.

use crate::SyncService;
use crate::error::error_response;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use oversync_protocol::codes;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// `Retry-After` of answers refused while draining, in seconds: another instance (or this
/// one restarted) is expected to answer by then.
const RETRY_AFTER_SECONDS: u64 = 1;

/// Drain state of one service.
pub(crate) struct Drain {
    draining: watch::Sender<bool>,
    requests: AtomicI64,
    idle: tokio::sync::Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: watch::channel(false).0,
            requests: AtomicI64::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }
}

impl Drain {
    /// Resolves once draining has begun (at once if it has).
    pub(crate) fn begun(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }
}

/// How [`SyncService::drain`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every request that was running has finished.
    Drained,
    /// The deadline passed with this many requests still running.
    DeadlineExceeded {
        /// Requests still running at the deadline.
        in_flight: i64,
    },
}

impl SyncService {
    /// Starts draining: new requests are refused with `503` and `Retry-After`, watch
    /// streams end. Idempotent.
    pub fn begin_drain(&self) {
        self.drain.draining.send_replace(true);
    }

    /// Whether [`SyncService::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        *self.drain.draining.borrow()
    }

    /// Requests being handled now (a watch stream counts only until its headers are sent).
    pub fn requests_in_flight(&self) -> i64 {
        self.drain.requests.load(Ordering::SeqCst)
    }

    /// Begins draining and waits until the requests already running have finished, or
    /// `deadline` has passed.
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        self.begin_drain();
        let wait_idle = async {
            loop {
                let notified = self.drain.idle.notified();
                if self.requests_in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(deadline, wait_idle).await {
            Ok(()) => DrainOutcome::Drained,
            Err(_) => DrainOutcome::DeadlineExceeded {
                in_flight: self.requests_in_flight(),
            },
        }
    }
}

/// Decrements the in-flight count even when the request future is dropped.
struct RequestGuard<'a>(&'a Drain);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        if self.0.requests.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Middleware of every route: refuses new requests while draining, counts running ones.
pub(crate) async fn guard(
    State(service): State<Arc<SyncService>>,
    req: Request,
    next: Next,
) -> Response {
    let drain = &service.drain;
    drain.requests.fetch_add(1, Ordering::SeqCst);
    let _counted = RequestGuard(drain);
    if service.is_draining() {
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::SERVICE_UNAVAILABLE,
            "server is shutting down; retry (another instance may answer)",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(req).await
}
