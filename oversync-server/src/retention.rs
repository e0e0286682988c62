//! Retained history: bundles are pruned by count and age rules ([`RetentionConfig`]),
//! at commit for the committing user and by a background sweep for everyone; requests at
//! or below the floor answer `409 history_pruned`.

use crate::error::SyncError;
use deadpool_postgres::GenericClient;
use oversync_protocol::codes;

/// Age rule and background sweep of the retained history; the count rule is
/// [`crate::Limits::retained_bundles_per_user`].
///
/// A bundle is pruned only when every configured rule lets it go: older than `max_age`
/// (when set) and outside the newest `retained_bundles_per_user` (when not 0). With neither
/// rule nothing is pruned. Whatever the rules say, the floor never passes what an open
/// snapshot session will pull from next, never moves while an initialization lease is
/// active, and always keeps the newest bundle (so an up-to-date device is never pruned).
#[derive(Clone, Debug, Default)]
pub struct RetentionConfig {
    /// Bundles committed more recently than this are kept (`None`: age keeps nothing).
    pub max_age: Option<std::time::Duration>,
    /// How often the background sweep runs on every user (`None`: no sweep; commits
    /// still apply the rules to their own user).
    pub sweep_interval: Option<std::time::Duration>,
}

/// The rules of one service, as applied to one user.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) keep_last: i64,
    pub(crate) max_age_seconds: Option<f64>,
    pub(crate) batch: i64,
}

impl Policy {
    pub(crate) fn of(service: &crate::SyncService) -> Policy {
        Policy {
            keep_last: service.config.limits.retained_bundles_per_user,
            max_age_seconds: service.config.retention.max_age.map(|a| a.as_secs_f64()),
            batch: service.config.limits.retention_prune_batch,
        }
    }

    pub(crate) fn prunes_anything(&self) -> bool {
        self.keep_last > 0 || self.max_age_seconds.is_some()
    }
}

/// What [`apply_policy`] decides on, for `$1` = user_pk and `$2` = the age rule in seconds.
/// A commit pipelines it with its other statements ([`apply_policy_from`]).
pub(crate) const POLICY_STATE: &str = "SELECT next_bundle_seq - 1, retained_bundle_floor,
            (scope_state = 1 AND lease_expires_at > now()),
            (SELECT MIN(snapshot_bundle_seq) FROM sync.snapshot_sessions
              WHERE user_pk = $1 AND expires_at > now()),
            CASE WHEN $2::float8 IS NULL THEN NULL ELSE
              (SELECT MAX(bundle_seq) FROM sync.bundle_log
                WHERE user_pk = $1
                  AND committed_at < now() - make_interval(secs => $2::float8)) END
       FROM sync.user_state WHERE user_pk = $1";

/// Advances the user's floor by at most one batch and deletes the bundles at or below it
/// (their rows go with them). The caller holds the user's lock. Returns the bundles
/// deleted.
pub(crate) async fn apply_policy(
    tx: &impl GenericClient,
    user_pk: i64,
    policy: Policy,
) -> Result<i64, SyncError> {
    if !policy.prunes_anything() {
        return Ok(0);
    }
    let row = crate::sql::query_one(tx, POLICY_STATE, &[&user_pk, &policy.max_age_seconds]).await?;
    apply_policy_from(tx, user_pk, policy, &row).await
}

/// [`apply_policy`] given the row of [`POLICY_STATE`] read in this transaction.
pub(crate) async fn apply_policy_from(
    tx: &impl GenericClient,
    user_pk: i64,
    policy: Policy,
    row: &tokio_postgres::Row,
) -> Result<i64, SyncError> {
    let Some(target) = prune_target(policy, row) else {
        return Ok(0);
    };
    let [floor, rows, log] = PRUNE;
    crate::sql::exec(tx, floor, &[&user_pk, &target]).await?;
    crate::sql::exec(tx, rows, &[&user_pk, &target]).await?;
    let deleted = crate::sql::query(tx, log, &[&user_pk, &target]).await?;
    Ok(deleted.len() as i64)
}

/// The statements pruning user `$1` up to bundle `$2` ([`prune_target`]), in order: the
/// floor, the bundles' rows (no foreign key cascades them, see bootstrap.rs), the bundles
/// (one row returned per bundle deleted).
pub(crate) const PRUNE: [&str; 3] = [
    "UPDATE sync.user_state SET retained_bundle_floor = $2 WHERE user_pk = $1",
    "DELETE FROM sync.bundle_rows WHERE user_pk = $1 AND bundle_seq <= $2",
    "DELETE FROM sync.bundle_log WHERE user_pk = $1 AND bundle_seq <= $2 RETURNING bundle_seq",
];

/// The new floor the rules give for the row of [`POLICY_STATE`], if it moves.
pub(crate) fn prune_target(policy: Policy, row: &tokio_postgres::Row) -> Option<i64> {
    let (latest, floor): (i64, i64) = (row.get(0), row.get(1));
    let leased: Option<bool> = row.get(2);
    let snapshot_seq: Option<i64> = row.get(3);
    let old_enough: Option<i64> = row.get(4);
    if leased == Some(true) {
        return None;
    }
    // Both rules must allow a bundle to go: the smaller target wins.
    let by_count = (policy.keep_last > 0).then(|| latest - policy.keep_last);
    let by_age = policy.max_age_seconds.map(|_| old_enough.unwrap_or(0));
    let mut target = match (by_count, by_age) {
        (Some(c), Some(a)) => c.min(a),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return None,
    };
    // A snapshot at S is followed by a pull after S, which needs floor < S.
    if let Some(s) = snapshot_seq {
        target = target.min(s - 1);
    }
    target = target.min(latest - 1);
    if policy.batch > 0 {
        target = target.min(floor + policy.batch);
    }
    (target > floor).then_some(target)
}

/// Users visited per page of a sweep.
const SWEEP_PAGE: i64 = 100;

impl crate::SyncService {
    /// Applies the retention rules to every user, one batch per transaction, until no
    /// floor moves. Safe to run on several instances at once (each user is locked as a
    /// commit locks it). Returns the bundles deleted.
    pub async fn sweep_retention(&self) -> Result<i64, SyncError> {
        let policy = Policy::of(self);
        if !policy.prunes_anything() {
            return Ok(0);
        }
        // Without the age rule only users holding more than `keep_last` bundles can
        // prune; with it, any user holding more than the newest bundle.
        let candidates_above = if policy.max_age_seconds.is_none() {
            policy.keep_last
        } else {
            1
        };
        let mut deleted = 0;
        let mut after = 0_i64;
        loop {
            let users = {
                let client = self.client().await?;
                client
                    .query(
                        "SELECT user_pk, user_id FROM sync.user_state
                          WHERE user_pk > $1 AND next_bundle_seq - 1 - retained_bundle_floor > $3
                          ORDER BY user_pk LIMIT $2",
                        &[&after, &SWEEP_PAGE, &candidates_above],
                    )
                    .await?
            };
            let Some(last) = users.last() else {
                return Ok(deleted);
            };
            after = last.get(0);
            for user in &users {
                let (user_pk, user_id): (i64, String) = (user.get(0), user.get(1));
                loop {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    crate::scope::lock_user(&tx, &user_id).await?;
                    let n = apply_policy(&tx, user_pk, policy).await?;
                    tx.commit().await?;
                    if n == 0 {
                        break;
                    }
                    deleted += n;
                    self.metrics_history_deleted(n);
                }
            }
        }
    }
}

/// Runs [`crate::SyncService::sweep_retention`] every `interval` while the service lives.
pub(crate) async fn run_sweeper(
    service: std::sync::Weak<crate::SyncService>,
    interval: std::time::Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(svc) = service.upgrade() else { return };
        match svc.sweep_retention().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted_bundles = n, "retention sweep"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying next interval"),
        }
    }
}

/// `history_pruned` if `seq` is at or below a positive `floor`, as the reference server has
/// it: a checkpoint equal to the floor is pruned too, so a floor at the head prunes the
/// head itself (clients then catch up from a snapshot). Unlike the reference, a checkpoint
/// of 0 (a device that never applied a bundle) is pruned as well once the floor is above
/// 0: bundles `1..=floor` are gone, and answering the bundles after the floor instead
/// would hand that device a history with a hole at its start.
pub(crate) fn enforce_floor(user_id: &str, seq: i64, floor: i64) -> Result<(), SyncError> {
    if floor > 0 && seq <= floor {
        return Err(SyncError::conflict(
            codes::HISTORY_PRUNED,
            format!(
                "requested checkpoint {seq} is older than retained history floor {floor} for user {user_id}"
            ),
        ));
    }
    Ok(())
}

/// Counts a `history_pruned` answer for `/syncx/status` (outside the failed transaction).
pub(crate) async fn record_history_pruned(service: &crate::SyncService) {
    if let Ok(client) = service.pool.get().await {
        let _ = client
            .execute("SELECT nextval('sync.history_pruned_error_seq')", &[])
            .await;
    }
}

/// Sets a user's retained floor directly (test helper and admin use). Returns false if the
/// user is unknown; fails with `invalid_request` when the floor is beyond the latest bundle.
pub async fn set_retained_floor(
    service: &crate::SyncService,
    user_id: &str,
    floor: i64,
) -> Result<bool, SyncError> {
    if floor < 0 {
        return Err(SyncError::bad_request(
            codes::INVALID_REQUEST,
            "retained_bundle_floor must be non-negative",
        ));
    }
    let client = service.pool.get().await?;
    let Some(row) = client
        .query_opt(
            "SELECT next_bundle_seq - 1 FROM sync.user_state WHERE user_id = $1",
            &[&user_id],
        )
        .await?
    else {
        return Ok(false);
    };
    let latest: i64 = row.get(0);
    if floor > latest {
        return Err(SyncError::bad_request(
            codes::INVALID_REQUEST,
            format!("retained_bundle_floor {floor} is beyond the latest bundle_seq {latest}"),
        ));
    }
    client
        .execute(
            "UPDATE sync.user_state SET retained_bundle_floor = $2 WHERE user_id = $1",
            &[&user_id, &floor],
        )
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::enforce_floor;

    fn pruned(seq: i64, floor: i64) -> bool {
        enforce_floor("u", seq, floor).is_err()
    }

    #[test]
    fn the_floor_itself_and_everything_below_it_is_pruned() {
        assert!(!pruned(0, 0), "no floor: a fresh device pulls from 0");
        assert!(!pruned(5, 0));
        assert!(
            pruned(0, 3),
            "a fresh device cannot pull a history that lost 1..=3"
        );
        assert!(pruned(2, 3));
        assert!(
            pruned(3, 3),
            "a checkpoint equal to the floor is pruned, as the reference"
        );
        assert!(!pruned(4, 3));
    }
}
