//! `GET /sync/watch`: Server-Sent Events wake-ups fed by PostgreSQL LISTEN/NOTIFY.
//!
//! Commits send `pg_notify` inside their transaction; one listener connection per process
//! forwards notifications to a per-user [`tokio::sync::watch`] channel holding the newest
//! event, so slow subscribers only ever miss intermediate hints, never the latest one.

use crate::SyncService;
use crate::auth::Actor;
use crate::body::QueryParams;
use crate::error::SyncError;
use crate::scope::require_initialized;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use oversync_protocol::{BundleChangeEvent, codes};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Per-user latest-event channels of the process.
#[derive(Default)]
pub(crate) struct WatchHub {
    users: Mutex<HashMap<i64, watch::Sender<Option<BundleChangeEvent>>>>,
}

impl WatchHub {
    fn subscribe(&self, user_pk: i64) -> watch::Receiver<Option<BundleChangeEvent>> {
        let mut users = match self.users.lock() {
            Ok(u) => u,
            Err(p) => p.into_inner(),
        };
        users.retain(|_, tx| tx.receiver_count() > 0);
        users
            .entry(user_pk)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Publishes `event` if it is newer than what subscribers already have.
    pub(crate) fn publish(&self, user_pk: i64, event: BundleChangeEvent) {
        let users = match self.users.lock() {
            Ok(u) => u,
            Err(p) => p.into_inner(),
        };
        if let Some(tx) = users.get(&user_pk) {
            tx.send_if_modified(|current| {
                let newer = current
                    .as_ref()
                    .is_none_or(|c| c.bundle_seq < event.bundle_seq);
                if newer {
                    *current = Some(event.clone());
                }
                newer
            });
        }
    }

    fn active_users(&self) -> Vec<i64> {
        match self.users.lock() {
            Ok(u) => u
                .iter()
                .filter(|(_, tx)| tx.receiver_count() > 0)
                .map(|(k, _)| *k)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Open watch streams of the process.
    pub(crate) fn total_subscribers(&self) -> usize {
        match self.users.lock() {
            Ok(u) => u.values().map(|tx| tx.receiver_count()).sum(),
            Err(_) => 0,
        }
    }

    /// Number of open watch streams of one user.
    pub(crate) fn subscriber_count(&self, user_pk: i64) -> usize {
        match self.users.lock() {
            Ok(u) => u.get(&user_pk).map_or(0, |tx| tx.receiver_count()),
            Err(_) => 0,
        }
    }
}

impl SyncService {
    /// Open watch streams of `user_id` in this process (diagnostics and tests).
    pub async fn watch_subscriber_count(&self, user_id: &str) -> Result<usize, SyncError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT user_pk FROM sync.user_state WHERE user_id = $1",
                &[&user_id],
            )
            .await?;
        Ok(row.map_or(0, |r| self.hub.subscriber_count(r.get(0))))
    }
}

#[derive(Deserialize)]
struct Notification {
    user_pk: i64,
    bundle_seq: i64,
    source_id: Option<String>,
    source_bundle_id: Option<i64>,
}

/// Keeps a LISTEN connection open while the service lives, reconnecting with backoff.
pub(crate) async fn run_listener(service: Weak<SyncService>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(svc) = service.upgrade() else { return };
        let pg_config = svc.pg_config.clone();
        let tls = svc.tls.clone();
        let channel = svc.config.watch.channel.clone();
        drop(svc);
        match listen_once(&service, pg_config, tls, &channel).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, "bundle change listener failed; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn listen_once(
    service: &Weak<SyncService>,
    pg_config: tokio_postgres::Config,
    tls: crate::tls::Connector,
    channel: &str,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = pg_config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt as _;
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(Ok(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", crate::sql::quote_ident(channel)))
        .await?;
    // Catch up subscribers that may have missed notifications while disconnected.
    if let Some(svc) = service.upgrade() {
        let users = svc.hub.active_users();
        if !users.is_empty() {
            let rows = client
                .query(
                    "SELECT user_pk, next_bundle_seq - 1 FROM sync.user_state WHERE user_pk = ANY($1)",
                    &[&users],
                )
                .await?;
            for r in rows {
                svc.hub.publish(
                    r.get(0),
                    BundleChangeEvent {
                        bundle_seq: r.get(1),
                        source_id: None,
                        source_bundle_id: None,
                    },
                );
            }
        }
    }
    let result = loop {
        let Some(message) = rx.recv().await else {
            break Ok(());
        };
        let payload = match message {
            Ok(p) => p,
            Err(e) => break Err(e),
        };
        let Some(svc) = service.upgrade() else {
            break Ok(());
        };
        match serde_json::from_str::<Notification>(&payload) {
            Ok(n) if n.user_pk > 0 && n.bundle_seq > 0 => svc.hub.publish(
                n.user_pk,
                BundleChangeEvent {
                    bundle_seq: n.bundle_seq,
                    source_id: n.source_id,
                    source_bundle_id: n.source_bundle_id,
                },
            ),
            _ => tracing::warn!(payload, "ignored invalid bundle change notification"),
        }
    };
    driver.abort();
    result
}

pub(crate) async fn watch(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    RawQuery(query): RawQuery,
) -> Result<Response, SyncError> {
    if !service.config.watch.enabled {
        return Err(SyncError::Unavailable {
            code: codes::BUNDLE_CHANGE_WATCH_DISABLED,
            message: "Bundle change watch is disabled".into(),
        });
    }
    let q = QueryParams::parse(query.as_deref());
    let after = q
        .int("after_bundle_seq", codes::INVALID_REQUEST)?
        .unwrap_or(0);
    if after < 0 {
        return Err(SyncError::bad_request(
            codes::INVALID_REQUEST,
            "after_bundle_seq must be >= 0",
        ));
    }
    let history = {
        let client = service.client().await?;
        require_initialized(&client, &actor.user_id).await?
    };
    let mut rx = service.hub.subscribe(history.user_pk);
    // Wake the client at once if it is already behind.
    if history.latest_bundle_seq > after {
        service.hub.publish(
            history.user_pk,
            BundleChangeEvent {
                bundle_seq: history.latest_bundle_seq,
                source_id: None,
                source_bundle_id: None,
            },
        );
    }
    rx.mark_changed();
    // Draining ends the stream, so the client reconnects to an instance that stays.
    let drained = Box::pin(service.drain.begun());
    let events = stream::unfold(
        (rx, after, drained),
        |(mut rx, mut last, mut drained)| async move {
            loop {
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    () = &mut drained => return None,
                }
                let event = rx.borrow_and_update().clone();
                if let Some(event) = event
                    && event.bundle_seq > last
                {
                    last = event.bundle_seq;
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    let sse = Event::default().event("bundle").data(data);
                    return Some((Ok::<_, Infallible>(sse), (rx, last, drained)));
                }
            }
        },
    );
    Ok(sse_response(events, service.config.watch.heartbeat))
}

fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    heartbeat: Duration,
) -> Response {
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    response.headers_mut().insert(
        "X-Accel-Buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}
