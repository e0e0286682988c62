//! Observability: `GET /metrics` in the Prometheus text format, and a request id on every
//! request (`x-request-id` taken from the request when it is sane, generated otherwise,
//! echoed in the response and attached to every log line of the request).
//!
//! Written by hand: a few atomics and one fixed-bucket latency histogram per route, method
//! and status, which is all an operator needs to alert on and small enough to keep here.

use crate::SyncService;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use oversync_protocol::codes;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument as _;

/// Upper bounds (seconds) of the request latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The protocol error code of an error response, set by [`crate::SyncError`] so the
/// metrics layer can count conflicts and `history_pruned` without reading bodies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters of one service (one process).
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    bundles_committed: AtomicU64,
    rows_committed: AtomicU64,
    pull_rows_served: AtomicU64,
    committed_bundle_rows_served: AtomicU64,
    snapshot_rows_served: AtomicU64,
    push_conflicts: AtomicU64,
    history_pruned: AtomicU64,
    bundles_pruned: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Metrics {
    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let mut requests = match self.requests.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let h = requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default();
        h.count += 1;
        h.sum += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i] += 1;
            }
        }
    }

    pub(crate) fn committed(&self, rows: i64) {
        add(&self.bundles_committed, 1);
        add(&self.rows_committed, rows.max(0) as usize);
    }

    pub(crate) fn pull_rows(&self, rows: usize) {
        add(&self.pull_rows_served, rows);
    }

    pub(crate) fn committed_bundle_rows(&self, rows: usize) {
        add(&self.committed_bundle_rows_served, rows);
    }

    pub(crate) fn snapshot_rows(&self, rows: usize) {
        add(&self.snapshot_rows_served, rows);
    }
}

impl SyncService {
    /// Counts bundles the retention rules deleted.
    pub(crate) fn metrics_history_deleted(&self, bundles: i64) {
        add(&self.metrics.bundles_pruned, bundles.max(0) as usize);
    }

    /// This process's metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let mut out = String::new();
        out.push_str(
            "# HELP oversync_http_requests_total HTTP requests by route, method and status.\n\
             # TYPE oversync_http_requests_total counter\n",
        );
        let requests = match m.requests.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        for ((route, method, status), h) in requests.iter() {
            let _ = writeln!(
                out,
                "oversync_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                h.count
            );
        }
        out.push_str(
            "# HELP oversync_http_request_duration_seconds Request latency by route, method and status.\n\
             # TYPE oversync_http_request_duration_seconds histogram\n",
        );
        for ((route, method, status), h) in requests.iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "oversync_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "oversync_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 oversync_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 oversync_http_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        drop(requests);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = [
            (
                "oversync_bundles_committed_total",
                "Bundles committed (pushes and server writes).",
                load(&m.bundles_committed),
            ),
            (
                "oversync_rows_committed_total",
                "Row effects in committed bundles.",
                load(&m.rows_committed),
            ),
            (
                "oversync_pull_rows_served_total",
                "Rows served by /sync/pull.",
                load(&m.pull_rows_served),
            ),
            (
                "oversync_committed_bundle_rows_served_total",
                "Rows served by /sync/committed-bundles/*/rows.",
                load(&m.committed_bundle_rows_served),
            ),
            (
                "oversync_snapshot_rows_served_total",
                "Rows served by snapshot session chunks.",
                load(&m.snapshot_rows_served),
            ),
            (
                "oversync_push_conflicts_total",
                "Push commits answered push_conflict.",
                load(&m.push_conflicts),
            ),
            (
                "oversync_history_pruned_total",
                "Requests answered history_pruned.",
                load(&m.history_pruned),
            ),
            (
                "oversync_bundles_pruned_total",
                "Bundles deleted by the retention rules.",
                load(&m.bundles_pruned),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let pool = self.pool.status();
        let gauges = [
            (
                "oversync_db_pool_max_size",
                "Configured size of the PostgreSQL pool.",
                pool.max_size as i64,
            ),
            (
                "oversync_db_pool_connections",
                "Open PostgreSQL connections of the pool.",
                pool.size as i64,
            ),
            (
                "oversync_db_pool_available",
                "Idle pooled connections (negative: tasks waiting).",
                pool.available as i64,
            ),
            (
                "oversync_db_pool_waiting",
                "Tasks waiting for a pooled connection.",
                pool.waiting as i64,
            ),
            (
                "oversync_watch_subscribers",
                "Open /sync/watch streams of this process.",
                self.hub.total_subscribers() as i64,
            ),
            (
                "oversync_requests_in_flight",
                "Requests being handled now.",
                self.requests_in_flight(),
            ),
            (
                "oversync_draining",
                "1 while the process drains for shutdown.",
                i64::from(self.is_draining()),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(service): State<Arc<SyncService>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        service.render_metrics(),
    )
        .into_response()
}

/// A client-supplied request id is kept when it is short printable ASCII (it goes into
/// logs and a response header); anything else is replaced.
fn accepted_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

/// Route-level middleware: request id, a log line per request, latency and counters.
pub(crate) async fn observe(
    State(service): State<Arc<SyncService>>,
    req: Request,
    next: Next,
) -> Response {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(accepted_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!("request", id = %request_id, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    match response.extensions().get::<ErrorCode>().map(|c| c.0) {
        Some(codes::PUSH_CONFLICT) => add(&service.metrics.push_conflicts, 1),
        Some(codes::HISTORY_PRUNED) => add(&service.metrics.history_pruned, 1),
        _ => {}
    }
    service.metrics.observe(&route, &method, status, elapsed);
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = (elapsed * 1000.0) as u64,
            "request served"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}
