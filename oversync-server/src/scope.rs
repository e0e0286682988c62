//! Per-user scope state (uninitialized / initializing with a lease / initialized), per-source
//! sequencing, and the transaction context that lets triggers capture a bundle.

use crate::error::SyncError;
use crate::sql;
use deadpool_postgres::GenericClient;
use oversync_protocol::codes;
use std::time::Duration;

pub(crate) const UNINITIALIZED: i16 = 0;
pub(crate) const INITIALIZING: i16 = 1;
pub(crate) const INITIALIZED: i16 = 2;

/// SQL rendering a timestamptz as RFC 3339 UTC with microseconds.
pub(crate) fn rfc3339(column: &str) -> String {
    format!(r#"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#)
}

/// Serializes all writes of one user (push, connect, server writes) for the transaction.
pub(crate) async fn lock_user(tx: &impl GenericClient, user_id: &str) -> Result<(), SyncError> {
    sql::exec(tx, LOCK_USER, &[&user_id]).await?;
    Ok(())
}

/// [`lock_user`]'s statement, for pipelines.
pub(crate) const LOCK_USER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Serializes the push sessions of one source of a user: a create against the commit of
/// the same source (a create retried while its commit runs answers `already_committed`),
/// without waiting for the user's other sources. Taken before the user's lock wherever
/// both are held, so the two cannot deadlock (two-key space, apart from [`lock_user`]'s).
pub(crate) const LOCK_SOURCE: &str = "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))";

/// Returns the user's `user_pk`, creating the user row on first use.
pub(crate) async fn ensure_user(tx: &impl GenericClient, user_id: &str) -> Result<i64, SyncError> {
    sql::exec(
        tx,
        "INSERT INTO sync.user_state (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING",
        &[&user_id],
    )
    .await?;
    let row = sql::query_one(
        tx,
        "SELECT user_pk FROM sync.user_state WHERE user_id = $1",
        &[&user_id],
    )
    .await?;
    Ok(row.get(0))
}

/// Locked scope state of one user (lease already expired if due).
pub(crate) struct Scope {
    pub state: i16,
    pub initializer_source_id: Option<String>,
    pub initialization_id: Option<String>,
    pub lease_expires_at: Option<String>,
    pub lease_seconds_left: i64,
}

pub(crate) async fn load_scope_for_update(
    tx: &impl GenericClient,
    user_pk: i64,
) -> Result<Scope, SyncError> {
    // An expired lease gives the scope back to whoever connects next.
    sql::exec(
        tx,
        "UPDATE sync.user_state SET scope_state = 0, initializer_source_id = NULL,
             initialization_id = NULL, lease_expires_at = NULL
         WHERE user_pk = $1 AND scope_state = 1 AND lease_expires_at <= now()",
        &[&user_pk],
    )
    .await?;
    let text = format!(
        "SELECT scope_state, initializer_source_id, initialization_id::text, {},
                COALESCE(GREATEST(1, CEIL(EXTRACT(EPOCH FROM lease_expires_at - now())))::bigint, 1)
         FROM sync.user_state WHERE user_pk = $1 FOR UPDATE",
        rfc3339("lease_expires_at")
    );
    let row = sql::query_one(tx, &text, &[&user_pk]).await?;
    Ok(Scope {
        state: row.get(0),
        initializer_source_id: row.get(1),
        initialization_id: row.get(2),
        lease_expires_at: row.get(3),
        lease_seconds_left: row.get(4),
    })
}

/// Marks the scope initialized (authoritative on the server from now on).
pub(crate) async fn mark_initialized(
    tx: &impl GenericClient,
    user_pk: i64,
    source_id: &str,
) -> Result<(), SyncError> {
    sql::exec(
        tx,
        "UPDATE sync.user_state SET scope_state = 2, initializer_source_id = NULL,
             initialization_id = NULL, lease_expires_at = NULL,
             initialized_at = now(), initialized_by_source_id = $2
         WHERE user_pk = $1",
        &[&user_pk, &source_id],
    )
    .await?;
    Ok(())
}

/// Grants `source_id` the exclusive initialization lease; returns (id, expiry).
pub(crate) async fn begin_initializing(
    tx: &impl GenericClient,
    user_pk: i64,
    source_id: &str,
    ttl: Duration,
) -> Result<(String, String), SyncError> {
    let id = uuid::Uuid::new_v4().to_string();
    let secs = ttl.as_secs_f64();
    let text = format!(
        "UPDATE sync.user_state SET scope_state = 1, initializer_source_id = $2,
             initialization_id = $3::text::uuid, lease_expires_at = now() + make_interval(secs => $4),
             initialized_at = NULL, initialized_by_source_id = NULL
         WHERE user_pk = $1 RETURNING {}",
        rfc3339("lease_expires_at")
    );
    let row = sql::query_one(tx, &text, &[&user_pk, &source_id, &id, &secs]).await?;
    Ok((id, row.get(0)))
}

/// Extends the current lease; returns the new expiry.
pub(crate) async fn refresh_lease(
    tx: &impl GenericClient,
    user_pk: i64,
    ttl: Duration,
) -> Result<String, SyncError> {
    let secs = ttl.as_secs_f64();
    let text = format!(
        "UPDATE sync.user_state SET lease_expires_at = now() + make_interval(secs => $2)
         WHERE user_pk = $1 RETURNING {}",
        rfc3339("lease_expires_at")
    );
    let row = sql::query_one(tx, &text, &[&user_pk, &secs]).await?;
    Ok(row.get(0))
}

/// Checks that `source_id` still holds the lease `initialization_id`, and extends it.
pub(crate) async fn require_active_lease(
    tx: &impl GenericClient,
    user_pk: i64,
    source_id: &str,
    initialization_id: &str,
    ttl: Duration,
) -> Result<(), SyncError> {
    let row = sql::query_one(tx,
            "SELECT scope_state, lease_expires_at > now(), initializer_source_id, initialization_id::text
             FROM sync.user_state WHERE user_pk = $1 FOR UPDATE",
            &[&user_pk],
        )
        .await?;
    let state: i16 = row.get(0);
    let active: Option<bool> = row.get(1);
    let owner: Option<String> = row.get(2);
    let lease_id: Option<String> = row.get(3);
    if state != INITIALIZING {
        return Err(SyncError::conflict(
            codes::INITIALIZATION_STALE,
            "scope is no longer initializing",
        ));
    }
    if active != Some(true) {
        return Err(SyncError::gone(
            codes::INITIALIZATION_EXPIRED,
            "initialization lease has expired",
        ));
    }
    if owner.as_deref() != Some(source_id) {
        return Err(SyncError::conflict(
            codes::INITIALIZATION_STALE,
            "source does not own the active initialization lease",
        ));
    }
    if lease_id.as_deref() != Some(initialization_id) {
        return Err(SyncError::conflict(
            codes::INITIALIZATION_STALE,
            "initialization_id does not match the active initialization lease",
        ));
    }
    refresh_lease(tx, user_pk, ttl).await?;
    Ok(())
}

/// Sequence state of an initialized user, read without locks.
pub(crate) struct UserHistory {
    pub user_pk: i64,
    pub latest_bundle_seq: i64,
    pub retained_floor: i64,
}

/// Fails with `scope_uninitialized` / `scope_initializing` unless the user's scope is
/// initialized; returns its history bounds.
pub(crate) async fn require_initialized(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<UserHistory, SyncError> {
    let row = sql::query_opt(
        client,
        "SELECT user_pk, scope_state, lease_expires_at > now(), next_bundle_seq - 1,
                    retained_bundle_floor
             FROM sync.user_state WHERE user_id = $1",
        &[&user_id],
    )
    .await?;
    let uninitialized = || {
        SyncError::conflict(
            codes::SCOPE_UNINITIALIZED,
            format!("sync scope for user {user_id} is not initialized"),
        )
    };
    let Some(row) = row else {
        return Err(uninitialized());
    };
    let state: i16 = row.get(1);
    match state {
        INITIALIZED => Ok(UserHistory {
            user_pk: row.get(0),
            latest_bundle_seq: row.get(3),
            retained_floor: row.get(4),
        }),
        INITIALIZING if row.get::<_, Option<bool>>(2) == Some(true) => Err(SyncError::conflict(
            codes::SCOPE_INITIALIZING,
            format!("sync scope for user {user_id} is initializing"),
        )),
        _ => Err(uninitialized()),
    }
}

/// Next expected `source_bundle_id` of a source and its highest committed one.
/// A retired source fails with `source_retired`.
pub(crate) async fn expected_source_bundle_id(
    tx: &impl GenericClient,
    user_pk: i64,
    source_id: &str,
) -> Result<(i64, i64), SyncError> {
    let row = sql::query_opt(
        tx,
        "SELECT state, max_committed_source_bundle_id, replaced_by_source_id
             FROM sync.source_state WHERE user_pk = $1 AND source_id = $2 FOR UPDATE",
        &[&user_pk, &source_id],
    )
    .await?;
    expected_from(source_id, row.as_ref())
}

/// [`expected_source_bundle_id`] given the source's `(state, max_committed_source_bundle_id,
/// replaced_by_source_id)` row, read `FOR UPDATE` in this transaction.
pub(crate) fn expected_from(
    source_id: &str,
    row: Option<&tokio_postgres::Row>,
) -> Result<(i64, i64), SyncError> {
    let Some(row) = row else {
        return Ok((1, 0));
    };
    let state: String = row.get(0);
    if state == "retired" {
        return Err(SyncError::SourceRetired {
            source_id: source_id.to_owned(),
            replaced_by: row.get(2),
        });
    }
    let max: i64 = row.get(1);
    Ok((max + 1, max))
}

/// Records `$3` as the highest committed bundle of source `$2` of user `$1`.
pub(crate) const ACTIVATE_SOURCE: &str =
    "INSERT INTO sync.source_state (user_pk, source_id, state, max_committed_source_bundle_id)
     VALUES ($1, $2, 'active', $3)
     ON CONFLICT (user_pk, source_id) DO UPDATE
     SET state = 'active', max_committed_source_bundle_id = EXCLUDED.max_committed_source_bundle_id,
         replaced_by_source_id = NULL, retirement_reason = NULL";

/// Records `source_bundle_id` as the source's highest committed bundle.
pub(crate) async fn activate_source(
    tx: &impl GenericClient,
    user_pk: i64,
    source_id: &str,
    source_bundle_id: i64,
) -> Result<(), SyncError> {
    sql::exec(
        tx,
        ACTIVATE_SOURCE,
        &[&user_pk, &source_id, &source_bundle_id],
    )
    .await?;
    Ok(())
}

/// Sets the transaction-local settings the owner guard and capture triggers read, and
/// defers foreign keys so rows can be applied in any order.
pub(crate) async fn set_bundle_context(
    tx: &impl GenericClient,
    user_id: &str,
    user_pk: i64,
) -> Result<(), SyncError> {
    sql::exec(
        tx,
        "SELECT set_config('oversync.bundle_user_id', $1, true),
                set_config('oversync.bundle_user_pk', $2, true)",
        &[&user_id, &user_pk.to_string()],
    )
    .await?;
    tx.batch_execute("SET CONSTRAINTS ALL DEFERRED").await?;
    Ok(())
}
