//! `POST /sync/connect`: first-connect lifecycle with exclusive initialization leases.

use crate::SyncService;
use crate::auth::Actor;
use crate::body::JsonBody;
use crate::error::SyncError;
use crate::scope::{self, INITIALIZED, INITIALIZING, UNINITIALIZED};
use axum::Json;
use axum::extract::State;
use oversync_protocol::{ConnectRequest, ConnectResolution, ConnectResponse};
use std::sync::Arc;

impl SyncService {
    /// Resolves the connect lifecycle for `actor`.
    pub async fn connect(
        &self,
        actor: &Actor,
        req: &ConnectRequest,
    ) -> Result<ConnectResponse, SyncError> {
        let _op = self.begin_op();
        let ttl = self.config.limits.initialization_lease_ttl;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        scope::lock_user(&tx, &actor.user_id).await?;
        let user_pk = scope::ensure_user(&tx, &actor.user_id).await?;
        let state = scope::load_scope_for_update(&tx, user_pk).await?;
        let response = |resolution| ConnectResponse {
            resolution,
            initialization_id: None,
            lease_expires_at: None,
            retry_after_seconds: None,
        };
        let resp = match state.state {
            INITIALIZED => response(ConnectResolution::RemoteAuthoritative),
            UNINITIALIZED if req.has_local_pending_rows => {
                let (id, expires) =
                    scope::begin_initializing(&tx, user_pk, &actor.source_id, ttl).await?;
                ConnectResponse {
                    initialization_id: Some(id),
                    lease_expires_at: Some(expires),
                    ..response(ConnectResolution::InitializeLocal)
                }
            }
            UNINITIALIZED => {
                scope::mark_initialized(&tx, user_pk, &actor.source_id).await?;
                response(ConnectResolution::InitializeEmpty)
            }
            INITIALIZING if state.initializer_source_id.as_deref() == Some(&actor.source_id) => {
                if req.has_local_pending_rows {
                    let expires = scope::refresh_lease(&tx, user_pk, ttl).await?;
                    ConnectResponse {
                        initialization_id: state.initialization_id.clone(),
                        lease_expires_at: Some(expires),
                        ..response(ConnectResolution::InitializeLocal)
                    }
                } else {
                    scope::mark_initialized(&tx, user_pk, &actor.source_id).await?;
                    response(ConnectResolution::InitializeEmpty)
                }
            }
            _ => ConnectResponse {
                retry_after_seconds: Some(state.lease_seconds_left.max(1)),
                lease_expires_at: state.lease_expires_at.clone(),
                ..response(ConnectResolution::RetryLater)
            },
        };
        tx.commit().await?;
        Ok(resp)
    }
}

pub(crate) async fn connect(
    State(service): State<Arc<SyncService>>,
    actor: Actor,
    JsonBody(req): JsonBody<ConnectRequest>,
) -> Result<Json<ConnectResponse>, SyncError> {
    Ok(Json(service.connect(&actor, &req).await?))
}
