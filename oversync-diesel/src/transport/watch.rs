//! `GET /sync/watch`: a Server-Sent Events stream of wake-up hints.

use super::error::TransportError;
use oversync_protocol::BundleChangeEvent;
use std::collections::VecDeque;
use std::time::Duration;

/// Endpoint label used in errors and logs.
pub(crate) const WATCH_ENDPOINT: &str = "GET /sync/watch";

/// Longest SSE line accepted; a longer one ends the stream with a decode error.
const MAX_LINE: usize = 1024 * 1024;

/// One item of a [`WatchStream`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// An `event: bundle`: the server holds bundles up to `bundle_seq`. Only a hint: pull
    /// to get them.
    Bundle(BundleChangeEvent),
    /// A comment line (the server's `: heartbeat`): the connection is alive.
    Heartbeat,
}

/// An open `GET /sync/watch` stream; read it with [`WatchStream::next`].
///
/// The stream ends (`None`) when the server closes it; it yields
/// `Err(TransportError::Network { timed_out: true, .. })` and ends when nothing (not even a
/// heartbeat) arrived for the idle timeout (by default twice the request timeout, at least
/// 60 s; the reference server sends a heartbeat every 25 s). Reconnect with the latest
/// checkpoint after it ends.
pub struct WatchStream {
    response: reqwest::Response,
    parser: SseParser,
    idle_timeout: Option<Duration>,
    done: bool,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("idle_timeout", &self.idle_timeout)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl WatchStream {
    pub(crate) fn new(response: reqwest::Response, idle_timeout: Duration) -> WatchStream {
        WatchStream {
            response,
            parser: SseParser::default(),
            idle_timeout: Some(idle_timeout),
            done: false,
        }
    }

    /// Changes the idle timeout (`None`: wait forever).
    pub fn set_idle_timeout(&mut self, idle_timeout: Option<Duration>) {
        self.idle_timeout = idle_timeout;
    }

    /// The next event; `None` once the stream ended. A `bundle` event whose data does not
    /// decode yields `Err(TransportError::Decode)` and the stream goes on; network failures
    /// and idle timeouts yield one `Err(TransportError::Network)` and end it.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, TransportError>> {
        loop {
            if let Some(item) = self.parser.pop() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let chunk = match self.idle_timeout {
                Some(idle) => match tokio::time::timeout(idle, self.response.chunk()).await {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        self.done = true;
                        return Some(Err(TransportError::Network {
                            message: format!("watch stream idle for {idle:?}"),
                            timed_out: true,
                        }));
                    }
                },
                None => self.response.chunk().await,
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if let Err(e) = self.parser.feed(&bytes) {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Ok(None) => {
                    // An event without its terminating blank line is discarded, as SSE says.
                    tracing::debug!("watch stream closed by the server");
                    self.done = true;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(TransportError::Network {
                        message: format!("reading the watch stream: {e}"),
                        timed_out: e.is_timeout(),
                    }));
                }
            }
        }
    }
}

/// Incremental `text/event-stream` parser (the subset the protocol uses: `event`, `data`,
/// comments; `id` and `retry` are ignored).
#[derive(Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    ready: VecDeque<Result<WatchEvent, TransportError>>,
}

impl SseParser {
    pub(crate) fn pop(&mut self) -> Option<Result<WatchEvent, TransportError>> {
        self.ready.pop_front()
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.buffer.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            let rest = &self.buffer[start..];
            let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                break;
            };
            let consumed = if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    // A trailing CR: wait to see whether LF follows.
                    None => break,
                }
            } else {
                end + 1
            };
            let line = String::from_utf8_lossy(&rest[..end]).into_owned();
            start += consumed;
            self.line(&line);
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE {
            return Err(TransportError::Decode {
                endpoint: WATCH_ENDPOINT.into(),
                message: format!("event-stream line longer than {MAX_LINE} bytes"),
            });
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            self.ready.push_back(Ok(WatchEvent::Heartbeat));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        if event != "bundle" {
            tracing::debug!(event, "ignoring unknown watch event");
            return;
        }
        let item = serde_json::from_str::<BundleChangeEvent>(&data)
            .map(WatchEvent::Bundle)
            .map_err(|e| TransportError::Decode {
                endpoint: WATCH_ENDPOINT.into(),
                message: format!("bundle event {}: {e}", super::preview(data.as_bytes(), 200)),
            });
        self.ready.push_back(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(p: &mut SseParser) -> Vec<Result<WatchEvent, TransportError>> {
        std::iter::from_fn(|| p.pop()).collect()
    }

    #[test]
    fn parses_events_split_anywhere() {
        let text = b": heartbeat\r\n\r\nevent: bundle\r\ndata: {\"bundle_seq\":7,\"source_id\":\"a\"}\r\n\r\nevent: other\ndata: x\n\nevent: bundle\ndata: nope\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            p.feed(&text[..split]).unwrap();
            p.feed(&text[split..]).unwrap();
            let items = drain(&mut p);
            assert_eq!(items.len(), 3, "split at {split}");
            assert!(matches!(items[0], Ok(WatchEvent::Heartbeat)));
            match &items[1] {
                Ok(WatchEvent::Bundle(ev)) => {
                    assert_eq!(ev.bundle_seq, 7);
                    assert_eq!(ev.source_id.as_deref(), Some("a"));
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(matches!(items[2], Err(TransportError::Decode { .. })));
        }
    }
}
