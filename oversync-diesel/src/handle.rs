//! The sync handle returned by [`OversyncConnection::oversync`](crate::OversyncConnection::oversync).

use crate::config::OversyncConfig;
use crate::error::{Error, Result};
use diesel::SqliteConnection;

/// Borrowed sync handle over one [`OversyncConnection`](crate::OversyncConnection).
///
/// Each concern lives in its own module: [`open`](Self::open) and
/// [`uninstall_sync`](Self::uninstall_sync) in `lifecycle`, statuses in `status`.
pub struct Oversync<'a> {
    pub(crate) conn: &'a mut SqliteConnection,
    pub(crate) config: &'a OversyncConfig,
    pub(crate) opened: &'a mut bool,
}

impl Oversync<'_> {
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if *self.opened {
            Ok(())
        } else {
            Err(Error::NotOpen)
        }
    }
}
