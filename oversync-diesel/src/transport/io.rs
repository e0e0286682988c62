//! The transport's own I/O thread.
//!
//! The engine does its SQLite work synchronously on the thread that drives the sync (the
//! `SyncClient` engine thread runs a `current_thread` runtime). Sockets owned by that runtime
//! make no progress while it writes rows, so a page could only be requested after the last
//! one was staged. Every HTTP attempt therefore runs on one small runtime of the process
//! ([`run`]), which owns all of the transport's connections; and a paged download asks for
//! its next page before it writes the current one ([`spawn`]), so the server builds that
//! page, and this thread decodes it, while the engine writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// The I/O runtime, built on first use; `None` when its thread could not be started (the
/// caller's runtime then does the I/O, as before).
fn io_runtime() -> Option<&'static Handle> {
    static IO: OnceLock<Option<Runtime>> = OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("oversync-io")
            .enable_all()
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no I/O thread; requests run on the caller's runtime"))
            .ok()
    })
    .as_ref()
    .map(Runtime::handle)
}

/// `future`, started at once on the I/O runtime; dropping the handle cancels it.
pub(crate) fn spawn<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Background<T> {
    match io_runtime() {
        Some(io) => Background::Spawned(io.spawn(future)),
        None => Background::Inline(Box::pin(future)),
    }
}

/// Runs `future` on the I/O runtime and waits for it.
pub(crate) async fn run<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    spawn(future).await
}

/// A future running on the I/O runtime (or, without one, on the caller's when awaited).
pub(crate) enum Background<T> {
    Spawned(JoinHandle<T>),
    Inline(Pin<Box<dyn Future<Output = T> + Send>>),
}

impl<T> std::fmt::Debug for Background<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Background::Spawned(_) => "Background::Spawned",
            Background::Inline(_) => "Background::Inline",
        })
    }
}

impl<T> Future for Background<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut *self {
            Background::Spawned(handle) => match Pin::new(handle).poll(cx) {
                Poll::Ready(Ok(value)) => Poll::Ready(value),
                // Only `Drop` aborts the task, so a join error is the task's panic.
                Poll::Ready(Err(e)) => std::panic::resume_unwind(e.into_panic()),
                Poll::Pending => Poll::Pending,
            },
            Background::Inline(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if let Background::Spawned(handle) = self {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn a_spawned_future_runs_while_the_caller_blocks_and_stops_when_dropped() {
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let answer = spawn(async move {
            flag.store(true, Ordering::SeqCst);
            41 + 1
        });
        // The caller's (only) thread never yields here, yet the future ran.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !started.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(started.load(Ordering::SeqCst));
        assert_eq!(answer.await, 42);

        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let slow = spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            flag.store(true, Ordering::SeqCst);
        });
        drop(slow);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !finished.load(Ordering::SeqCst),
            "a dropped request keeps running"
        );
        assert_eq!(run(async { "ran" }).await, "ran");
    }
}
