//! Retained history: each user keeps the newest `retained_bundles_per_user` bundles;
//! requests at or below the floor answer `409 history_pruned`.

use crate::error::SyncError;
use deadpool_postgres::GenericClient;
use oversync_protocol::codes;

/// Advances the user's floor after a commit and deletes bundles at or below it.
pub(crate) async fn apply_policy(
    tx: &impl GenericClient,
    user_pk: i64,
    window: i64,
    batch: i64,
) -> Result<(), SyncError> {
    if window <= 0 {
        return Ok(());
    }
    let row = tx
        .query_one(
            "SELECT next_bundle_seq - 1, retained_bundle_floor FROM sync.user_state WHERE user_pk = $1",
            &[&user_pk],
        )
        .await?;
    let (latest, floor): (i64, i64) = (row.get(0), row.get(1));
    let mut target = (latest - window).max(0);
    if target <= floor {
        return Ok(());
    }
    if batch > 0 {
        target = target.min(floor + batch);
    }
    tx.execute(
        "UPDATE sync.user_state SET retained_bundle_floor = $2 WHERE user_pk = $1",
        &[&user_pk, &target],
    )
    .await?;
    tx.execute(
        "DELETE FROM sync.bundle_log WHERE user_pk = $1 AND bundle_seq <= $2",
        &[&user_pk, &target],
    )
    .await?;
    Ok(())
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
