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

impl std::fmt::Debug for Oversync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oversync")
            .field("schema", &self.config.schema())
            .field("opened", &self.rt.opened)
            .finish_non_exhaustive()
    }
}

impl Oversync<'_> {
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.rt.opened {
            Ok(())
        } else {
            Err(Error::NotOpen)
        }
    }

    /// The transport, expecting the token to be the attached user's (or, while a remote
    /// replace is pending, its target user's): see [`Transport::expecting_user`].
    pub(crate) fn transport(&mut self) -> Result<Transport> {
        let transport = self.rt.transport.clone().ok_or(Error::NoTransport)?;
        let attachment = crate::state::attachment_state(self.conn)?;
        let user = if attachment.binding_state == "attached" {
            attachment.attached_user_id
        } else {
            crate::state::operation_state(self.conn)?.target_user_id
        };
        Ok(if user.trim().is_empty() {
            transport
        } else {
            transport.expecting_user(&user)
        })
    }

    /// Page size for a paged download, from the server's (default, max) limits.
    pub(crate) fn page_size(
        &self,
        pick: impl Fn(&oversync_protocol::BundleCapabilitiesLimits) -> (Option<i64>, Option<i64>),
    ) -> u32 {
        let (default, max) = self.rt.limits.as_ref().map(pick).unwrap_or((None, None));
        page_rows(default, max)
    }

    pub(crate) fn emit(&self, event: SyncEvent) {
        // No receiver is fine: events are optional.
        let _ = self.rt.events.send(event);
    }
}

/// Rows per page to ask for: the server's default (bounded memory), within its maximum and
/// the protocol's 5000; 1000 when the server does not say.
pub(crate) fn page_rows(default: Option<i64>, max: Option<i64>) -> u32 {
    let default = default.filter(|n| *n > 0).unwrap_or(1000);
    let max = max.filter(|n| *n > 0).unwrap_or(5000);
    default.min(max).clamp(1, 5000) as u32
}
