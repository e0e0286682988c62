//! Optional wake-ups: a background task that holds `GET /sync/watch` and pulls when the
//! server announces new bundles, so other devices' writes arrive without the app polling.
//!
//! The task works on its own connection to the same database file (SQLite in WAL mode lets
//! both work side by side), shares the app's event channel (so `TablesChanged` reaches the
//! UI), reconnects with backoff, pulls on a timer while the stream is down, and stops when
//! the handle is stopped or dropped. It only pulls: when local changes wait, it emits
//! [`SyncEvent::RemoteChanges`](crate::SyncEvent::RemoteChanges) and leaves the push to the
//! app's own `sync()`.

use crate::connection::OversyncConnection;
use crate::error::{Error, Result};
use crate::events::SyncEvent;
use crate::pull::PullOutcome;
use crate::transport::WatchEvent;
use std::time::Duration;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Pull this often while the stream is unavailable.
    pub poll_interval: Duration,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll_interval: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A running watcher. [`stop`](Self::stop) it to end it cleanly; dropping it stops it too.
pub struct WatchHandle {
    stop: signal::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// Stops the task and waits until it has finished its current step.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl OversyncConnection {
    /// Starts watching for other devices' bundles (needs an attached user, a transport, a
    /// server advertising `bundle_change_watch`, and a connection made by
    /// [`establish`](Self::establish), whose database file the watcher opens again). Call it
    /// inside a tokio runtime.
    pub async fn start_watch(&mut self, options: WatchOptions) -> Result<WatchHandle> {
        let url = self.database_url().ok_or(Error::WatchUnsupported(
            "the connection was not made by OversyncConnection::establish, so its file is unknown"
                .into(),
        ))?;
        let transport = self.oversync().transport()?;
        let source = self.oversync().ensure_attached()?.current_source_id;
        let caps = transport.capabilities(&source).await?;
        if !caps.feature("bundle_change_watch") {
            return Err(Error::WatchUnsupported(
                "the server does not advertise bundle_change_watch".into(),
            ));
        }
        let mut second = self.sibling(&url)?;
        second.oversync().open()?;
        let (stop_tx, stop_rx) = signal::channel(false);
        let task = tokio::spawn(async move { watch_loop(second, options, stop_rx).await });
        Ok(WatchHandle {
            stop: stop_tx,
            task: Some(task),
        })
    }
}

/// Waits `delay` unless stopped first; true when stopped.
async fn sleep_or_stop(delay: Duration, stop: &mut signal::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn pull_once(conn: &mut OversyncConnection) {
    match conn.oversync().pull_to_stable().await {
        Ok(PullOutcome::BlockedByPendingChanges { .. }) => {
            let _ = conn.runtime().events.send(SyncEvent::RemoteChanges);
        }
        Ok(PullOutcome::UpToDate { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "watch-triggered pull failed"),
    }
}

async fn watch_loop(
    mut conn: OversyncConnection,
    options: WatchOptions,
    mut stop: signal::Receiver<bool>,
) {
    let mut backoff = options.backoff_min;
    // Anything committed while no one was watching.
    pull_once(&mut conn).await;
    loop {
        if *stop.borrow() {
            return;
        }
        let (transport, source, after) = {
            let o = conn.oversync();
            let Ok(transport) = o.transport() else { return };
            let Ok(attachment) = crate::state::attachment_state(o.conn) else {
                return;
            };
            (
                transport,
                attachment.current_source_id,
                attachment.last_bundle_seq_seen,
            )
        };
        match transport.watch(&source, after).await {
            Ok(mut stream) => {
                backoff = options.backoff_min;
                loop {
                    let next = tokio::select! {
                        next = stream.next() => next,
                        _ = stop.changed() => return,
                    };
                    match next {
                        Some(Ok(WatchEvent::Bundle(event))) => {
                            let seen = conn.oversync().last_bundle_seq_seen().unwrap_or(0);
                            if event.bundle_seq > seen {
                                pull_once(&mut conn).await;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "watch stream failed; reconnecting");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, ?backoff, "watch unavailable; polling meanwhile");
                // While the stream is down, a timed pull keeps the data fresh.
                pull_once(&mut conn).await;
                let wait = if e.is_retryable() {
                    backoff
                } else {
                    options.poll_interval
                };
                if sleep_or_stop(wait.min(options.poll_interval), &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(options.backoff_max);
            }
        }
    }
}
