//! `GET /sync/capabilities`, `GET /syncx/status`, `GET /syncx/health`.

use crate::SyncService;
use crate::auth::Actor;
use crate::error::SyncError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oversync_protocol::{
    BundleCapabilitiesLimits, CapabilitiesResponse, PROTOCOL_VERSION, RegisteredTableSpec,
    StatusResponse,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl SyncService {
    /// Feature flags advertised by capabilities and status.
    pub fn features(&self) -> BTreeMap<String, bool> {
        let on = [
            "bundle_pull",
            "push_session_chunking",
            "committed_bundle_row_fetch",
            "snapshot_chunking",
            "status_endpoint",
            "graceful_shutdown",
            "capabilities_endpoint",
            "history_pruned_errors",
            "bundle_push",
            "structured_sync_keys",
            "registered_write_rejection_enforced",
            "accepted_push_replay_visibility",
            "committed_bundle_visibility",
            "retained_floor_visibility",
            "retained_window_visibility",
            "history_pruned_visibility",
            "connect_lifecycle",
            "scope_initialization_leases",
        ];
        let mut features: BTreeMap<String, bool> =
            on.iter().map(|f| ((*f).to_owned(), true)).collect();
        features.insert("server_checkpoint_tracking".into(), false);
        features.insert("bundle_change_watch".into(), self.config.watch.enabled);
        features
    }

    /// The capabilities document.
    pub fn capabilities(&self) -> CapabilitiesResponse {
        let registry = self.registry();
        let l = &self.config.limits;
        let nonzero = |v: i64| (v > 0).then_some(v);
        CapabilitiesResponse {
            protocol_version: PROTOCOL_VERSION.to_owned(),
            schema_version: self.config.schema_version,
            app_name: Some(self.config.app_name.clone()),
            registered_tables: registry.qualified_names(),
            registered_table_specs: {
                let mut specs: Vec<RegisteredTableSpec> = registry
                    .tables()
                    .iter()
                    .map(|t| RegisteredTableSpec {
                        schema: t.schema.clone(),
                        table: t.table.clone(),
                        sync_key_columns: vec![t.key_column.clone()],
                    })
                    .collect();
                specs.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
                specs
            },
            features: self.features(),
            bundle_limits: Some(BundleCapabilitiesLimits {
                max_rows_per_bundle: None,
                max_bytes_per_bundle: None,
                max_bundles_per_pull: nonzero(l.max_bundles_per_pull),
                default_rows_per_push_chunk: nonzero(l.default_rows_per_push_chunk),
                max_rows_per_push_chunk: nonzero(l.max_rows_per_push_chunk),
                push_session_ttl_seconds: nonzero(l.push_session_ttl.as_secs() as i64),
                default_rows_per_committed_bundle_chunk: nonzero(
                    l.default_rows_per_committed_bundle_chunk,
                ),
                max_rows_per_committed_bundle_chunk: nonzero(l.max_rows_per_committed_bundle_chunk),
                default_rows_per_snapshot_chunk: nonzero(l.default_rows_per_snapshot_chunk),
                max_rows_per_snapshot_chunk: nonzero(l.max_rows_per_snapshot_chunk),
                snapshot_session_ttl_seconds: nonzero(l.snapshot_session_ttl.as_secs() as i64),
                max_rows_per_snapshot_session: nonzero(l.max_rows_per_snapshot_session),
                max_bytes_per_snapshot_session: nonzero(l.max_bytes_per_snapshot_session),
                initialization_lease_ttl_seconds: nonzero(
                    l.initialization_lease_ttl.as_secs() as i64
                ),
            }),
        }
    }

    /// The status snapshot of `/syncx/status`.
    pub async fn status(&self) -> Result<StatusResponse, SyncError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT
                    (SELECT COUNT(*) FROM sync.user_state WHERE retained_bundle_floor > next_bundle_seq - 1),
                    (SELECT COALESCE(MAX(next_bundle_seq - 1), 0) FROM sync.user_state),
                    (SELECT COALESCE(MIN(retained_bundle_floor), 0) FROM sync.user_state),
                    (SELECT COALESCE(MAX(retained_bundle_floor), 0) FROM sync.user_state),
                    (SELECT COALESCE(MIN(GREATEST(next_bundle_seq - 1 - retained_bundle_floor, 0)), 0) FROM sync.user_state),
                    (SELECT COALESCE(MAX(GREATEST(next_bundle_seq - 1 - retained_bundle_floor, 0)), 0) FROM sync.user_state),
                    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM sync.history_pruned_error_seq),
                    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM sync.accepted_push_replay_seq),
                    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM sync.rejected_registered_write_seq),
                    (SELECT COUNT(*) FROM sync.bundle_log),
                    (SELECT COALESCE(SUM(byte_count), 0)::bigint FROM sync.bundle_log)",
                &[],
            )
            .await?;
        let ahead: i64 = row.get(0);
        Ok(StatusResponse {
            status: if ahead > 0 { "unhealthy" } else { "healthy" }.to_owned(),
            version: PROTOCOL_VERSION.to_owned(),
            app_name: self.config.app_name.clone(),
            lifecycle: "running".to_owned(),
            accepting_operations: true,
            inflight_operations: self.inflight.load(Ordering::Relaxed),
            registered_tables: self.registry().qualified_names(),
            features: self.features(),
            user_state_retention_floor_ahead_count: ahead,
            latest_bundle_seq_max: row.get(1),
            retained_bundle_floor_min: row.get(2),
            retained_bundle_floor_max: row.get(3),
            retained_bundle_window_min: row.get(4),
            retained_bundle_window_max: row.get(5),
            history_pruned_error_count: row.get(6),
            accepted_push_replay_count: row.get(7),
            rejected_registered_write_count: row.get(8),
            committed_bundle_count: row.get(9),
            committed_bundle_bytes: row.get(10),
        })
    }
}

pub(crate) async fn capabilities(
    State(service): State<Arc<SyncService>>,
    _actor: Actor,
) -> Json<CapabilitiesResponse> {
    Json(service.capabilities())
}

pub(crate) async fn status(State(service): State<Arc<SyncService>>) -> Response {
    match service.status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn health(State(service): State<Arc<SyncService>>) -> Response {
    match service.status().await {
        Ok(s) => {
            let code = if s.status == "healthy" {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, Json(s)).into_response()
        }
        Err(e) => {
            // Readiness probes want a status, not an error: the database is unreachable.
            tracing::warn!(error = %e, "health check failed");
            let body = StatusResponse {
                status: "unhealthy".to_owned(),
                version: PROTOCOL_VERSION.to_owned(),
                app_name: service.config.app_name.clone(),
                lifecycle: "running".to_owned(),
                accepting_operations: false,
                inflight_operations: service.inflight.load(Ordering::Relaxed),
                registered_tables: service.registry().qualified_names(),
                features: service.features(),
                user_state_retention_floor_ahead_count: 0,
                latest_bundle_seq_max: 0,
                retained_bundle_floor_min: 0,
                retained_bundle_floor_max: 0,
                retained_bundle_window_min: 0,
                retained_bundle_window_max: 0,
                history_pruned_error_count: 0,
                accepted_push_replay_count: 0,
                rejected_registered_write_count: 0,
                committed_bundle_count: 0,
                committed_bundle_bytes: 0,
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
