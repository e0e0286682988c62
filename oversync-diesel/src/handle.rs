//! The sync handle returned by [`OversyncConnection::oversync`](crate::OversyncConnection::oversync).

use crate::config::OversyncConfig;
use crate::connection::Runtime;
use crate::error::{Error, Result};
use crate::events::SyncEvent;
use crate::transport::Transport;
use diesel::SqliteConnection;

/// Borrowed sync handle over one [`OversyncConnection`](crate::OversyncConnection).
///
/// Each concern lives in its own module: `lifecycle` (open, attach, detach, uninstall),
/// `push` (freeze, upload, commit, replay), `pull`, `snapshot` (rebuild), `conflict`,
/// `status`. Methods that talk to the server are `async`; they run their SQLite work on
/// the calling task between network awaits.
pub struct Oversync<'a> {
    pub(crate) conn: &'a mut SqliteConnection,
    pub(crate) config: &'a OversyncConfig,
    pub(crate) rt: &'a mut Runtime,
}

impl Oversync<'_> {
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.rt.opened {
            Ok(())
        } else {
            Err(Error::NotOpen)
        }
    }

    pub(crate) fn transport(&self) -> Result<Transport> {
        self.rt.transport.clone().ok_or(Error::NoTransport)
    }

    pub(crate) fn emit(&self, event: SyncEvent) {
        // No receiver is fine: events are optional.
        let _ = self.rt.events.send(event);
    }
}
