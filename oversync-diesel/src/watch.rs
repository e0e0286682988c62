//! Optional wake-ups: a background task that holds `GET /sync/watch` and pulls when the
//! server announces new bundles, so other devices' writes arrive without the app polling.
//!
//! The task works on its own connection to the same database file (SQLite in WAL mode lets
//! both work side by side), shares the app's event channel (so `TablesChanged` reaches the
//! UI) and stops when the handle is stopped or dropped, cancelling a connect or pull in
//! flight. Every reconnect (the stream ended, broke, sent a malformed event, or could not
//! be opened) first pulls what the stream may have announced meanwhile, then waits a
//! jittered exponential backoff, so a server that closes streams at once sees a bounded
//! connection rate. A server that does not advertise `bundle_change_watch` is polled every
//! `poll_interval` instead. The task only pulls: when local changes wait, it emits
//! [`SyncEvent::RemoteChanges`](crate::SyncEvent::RemoteChanges) and leaves the push to the
//! app's own `sync()`.

use crate::connection::OversyncConnection;
use crate::error::{Error, Result};
use crate::events::SyncEvent;
use crate::pull::PullOutcome;
use crate::transport::{WatchEvent, jittered_backoff};
use std::time::Duration;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Pull this often while the stream is unavailable, and always when the server does not
    /// offer the stream.
    pub poll_interval: Duration,
    /// First reconnect delay; doubles per reconnect up to `backoff_max`, each delay jittered
    /// into its upper half. It starts again from here after a stream that stayed open for at
    /// least `backoff_max`.
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
/// `stop` takes `&self`, so the handle can live in an `Arc` or app state shared by tasks.
#[derive(Debug)]
pub struct WatchHandle {
    stop: signal::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl WatchHandle {
    /// Stops the task and waits until it has finished its current step. Calling it again
    /// (or from another clone of an `Arc`) returns at once.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Whether the watcher task has ended (stopped, or its database became unusable).
    pub fn is_finished(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl OversyncConnection {
    /// Starts watching for other devices' bundles (needs an attached user, a transport and
    /// a connection made by [`establish`](Self::establish), whose database file the watcher
    /// opens again). When the server does not advertise `bundle_change_watch`, the watcher
    /// polls every [`WatchOptions::poll_interval`] instead. Call it inside a tokio runtime.
    pub async fn start_watch(&mut self, options: WatchOptions) -> Result<WatchHandle> {
        let url = self.database_url().ok_or(Error::WatchUnsupported(
            "the connection was not made by OversyncConnection::establish, so its file is unknown"
                .into(),
        ))?;
        let transport = self.oversync().transport()?;
        let source = self.oversync().ensure_attached()?.current_source_id;
        let caps = transport.capabilities(&source).await?;
        let mode = if caps.feature("bundle_change_watch") {
            Mode::Stream
        } else {
            tracing::debug!("server does not advertise bundle_change_watch; polling instead");
            Mode::Poll
        };
        let mut second = self.sibling(&url)?;
        second.oversync().open()?;
        let (stop_tx, stop_rx) = signal::channel(false);
        let task = tokio::spawn(async move { watch_loop(second, options, mode, stop_rx).await });
        Ok(WatchHandle {
            stop: stop_tx,
            task: std::sync::Mutex::new(Some(task)),
        })
    }
}

/// Whether the server offers the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Stream,
    Poll,
}

/// Waits `delay` unless stopped first; true when stopped.
async fn sleep_or_stop(delay: Duration, stop: &mut signal::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Pulls once unless stopped first (a pull in flight is dropped between its transactions,
/// which leaves nothing half applied); true when stopped.
async fn pull_or_stop(conn: &mut OversyncConnection, stop: &mut signal::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = pull_once(conn) => *stop.borrow(),
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

/// How a stream ended.
enum StreamEnd {
    Stopped,
    /// Closed, broken or malformed.
    Ended,
}

/// Reads one open stream, pulling on every announced bundle not yet applied.
async fn read_stream(
    conn: &mut OversyncConnection,
    stream: &mut crate::transport::WatchStream,
    stop: &mut signal::Receiver<bool>,
) -> StreamEnd {
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = stop.changed() => return StreamEnd::Stopped,
        };
        match next {
            Some(Ok(WatchEvent::Bundle(event))) => {
                let seen = conn.oversync().last_bundle_seq_seen().unwrap_or(0);
                if event.bundle_seq > seen && pull_or_stop(conn, stop).await {
                    return StreamEnd::Stopped;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "watch stream failed; reconnecting");
                return StreamEnd::Ended;
            }
            None => return StreamEnd::Ended,
        }
    }
}

async fn watch_loop(
    mut conn: OversyncConnection,
    options: WatchOptions,
    mode: Mode,
    mut stop: signal::Receiver<bool>,
) {
    // Anything committed while no one was watching.
    if pull_or_stop(&mut conn, &mut stop).await {
        return;
    }
    // Reconnects since the last healthy stream: the backoff exponent.
    let mut reconnects = 0u32;
    loop {
        if mode == Mode::Poll {
            if sleep_or_stop(options.poll_interval, &mut stop).await
                || pull_or_stop(&mut conn, &mut stop).await
            {
                return;
            }
            continue;
        }
        let (transport, source, after) = {
            let mut o = conn.oversync();
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
        let opened = tokio::select! {
            opened = transport.watch(&source, after) => opened,
            _ = stop.changed() => return,
        };
        let wait = match opened {
            Ok(mut stream) => {
                let opened_at = tokio::time::Instant::now();
                if let StreamEnd::Stopped = read_stream(&mut conn, &mut stream, &mut stop).await {
                    return;
                }
                // Only a stream that stayed up for a while proves the server healthy; one
                // that ends at once (even after a heartbeat) keeps the backoff growing.
                if opened_at.elapsed() >= options.backoff_max {
                    reconnects = 0;
                }
                reconnects += 1;
                jittered_backoff(options.backoff_min, options.backoff_max, reconnects)
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "watch unavailable; polling meanwhile");
                reconnects += 1;
                jittered_backoff(options.backoff_min, options.backoff_max, reconnects)
            }
            Err(e) => {
                tracing::debug!(error = %e, "watch refused; polling until the next attempt");
                options.poll_interval
            }
        };
        // Whatever the stream announced (or would have) since it went down, then the pause.
        if pull_or_stop(&mut conn, &mut stop).await
            || sleep_or_stop(wait.min(options.poll_interval), &mut stop).await
        {
            return;
        }
    }
}
