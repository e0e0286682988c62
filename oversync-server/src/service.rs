//! The sync service: shared state of all handlers, and the router that exposes them.

use crate::bootstrap::{BootstrapError, Registry, bootstrap};
use crate::config::ServiceConfig;
use crate::error::SyncError;
use crate::watch::WatchHub;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::IntoResponse;
use axum::routing::{Route, delete, get, post};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::task::JoinHandle;
use tower_layer::Layer;
use tower_service::Service;

/// Shared state of the sync runtime. Create it with [`SyncService::start`], mount
/// [`SyncService::router`] behind the host's auth layer (which must insert an
/// [`crate::AuthenticatedUser`] extension), and use [`SyncService::begin_server_write`] for
/// server-originated writes.
pub struct SyncService {
    pub(crate) pool: Pool,
    pub(crate) pg_config: tokio_postgres::Config,
    pub(crate) tls: crate::tls::Connector,
    pub(crate) config: ServiceConfig,
    registry: RwLock<Arc<Registry>>,
    pub(crate) hub: WatchHub,
    pub(crate) inflight: AtomicI64,
    pub(crate) drain: crate::drain::Drain,
    pub(crate) metrics: crate::metrics::Metrics,
    /// Background tasks (watch listener, retention sweep), aborted on shutdown.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService")
            .field("app_name", &self.config.app_name)
            .finish_non_exhaustive()
    }
}

/// Builds a connection pool for `pg_config`; sessions use UTC so timestamps in payloads
/// are rendered as `+00:00`, as the reference does. Options already in `pg_config` (such
/// as `-c statement_timeout=...`) are kept.
pub fn connect_pool(pg_config: tokio_postgres::Config, max_size: usize) -> Pool {
    let connector = crate::tls::Connector::for_config(&pg_config);
    connect_pool_with(pg_config, max_size, connector)
}

/// [`connect_pool`] with an explicit TLS connector (from [`crate::tls::Database::parse`]).
pub fn connect_pool_with(
    mut pg_config: tokio_postgres::Config,
    max_size: usize,
    connector: crate::tls::Connector,
) -> Pool {
    let options = pg_config.get_options().unwrap_or_default().to_owned();
    pg_config.options(format!("{options} -c TimeZone=UTC").trim_start());
    let manager = Manager::from_config(
        pg_config,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Building a pool without a runtime-specific timeout cannot fail.
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .unwrap_or_else(|e| unreachable!("pool builder without timeouts: {e}"))
}

impl SyncService {
    /// Connects, bootstraps the `sync` schema for `config.tables` and starts the watch
    /// listener (when enabled). Must run inside a tokio runtime.
    pub async fn start(
        pg_config: tokio_postgres::Config,
        config: ServiceConfig,
    ) -> Result<Arc<SyncService>, BootstrapError> {
        let connector = crate::tls::Connector::for_config(&pg_config);
        Self::start_with_tls(pg_config, connector, config).await
    }

    /// [`SyncService::start`] over TLS as [`crate::tls::Database::parse`] set it up.
    pub async fn start_with_tls(
        pg_config: tokio_postgres::Config,
        connector: crate::tls::Connector,
        config: ServiceConfig,
    ) -> Result<Arc<SyncService>, BootstrapError> {
        let pool = connect_pool_with(
            pg_config.clone(),
            config.pool_size.max(2),
            connector.clone(),
        );
        let registry = {
            let mut client = pool
                .get()
                .await
                .map_err(|e| BootstrapError::InvalidConfig(format!("database connection: {e}")))?;
            bootstrap(&mut client, &config.tables).await?
        };
        let service = Arc::new(SyncService {
            pool,
            pg_config,
            tls: connector,
            config,
            registry: RwLock::new(Arc::new(registry)),
            hub: WatchHub::default(),
            inflight: AtomicI64::new(0),
            drain: Default::default(),
            metrics: Default::default(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        if let Ok(mut tasks) = service.tasks.lock() {
            if service.config.watch.enabled {
                tasks.push(tokio::spawn(crate::watch::run_listener(Arc::downgrade(
                    &service,
                ))));
            }
            if let Some(interval) = service.config.retention.sweep_interval {
                tasks.push(tokio::spawn(crate::retention::run_sweeper(
                    Arc::downgrade(&service),
                    interval,
                )));
            }
        }
        Ok(service)
    }

    /// Re-runs bootstrap (after the host recreated business tables) and swaps the registry.
    pub async fn rebootstrap(&self) -> Result<(), BootstrapError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| BootstrapError::InvalidConfig(format!("database connection: {e}")))?;
        let registry = bootstrap(&mut client, &self.config.tables).await?;
        if let Ok(mut slot) = self.registry.write() {
            *slot = Arc::new(registry);
        }
        Ok(())
    }

    /// Re-reads the catalog columns of `tables` (after a migration added columns while the
    /// server runs) and swaps them into the registry. Returns whether anything changed.
    pub(crate) async fn refresh_columns(
        &self,
        tables: &[(String, String)],
    ) -> Result<bool, SyncError> {
        let client = self.client().await?;
        let mut fresh = Vec::with_capacity(tables.len());
        for (schema, table) in tables {
            let columns = crate::bootstrap::read_columns(&**client, schema, table).await?;
            fresh.push((schema, table, columns));
        }
        // Applied to the registry current under the lock, so a concurrent refresh is kept.
        let mut slot = match self.registry.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = Registry::clone(&slot);
        let mut changed = false;
        for (schema, table, columns) in fresh {
            changed |= next.set_columns(schema, table, columns);
        }
        if changed {
            *slot = Arc::new(next);
        }
        Ok(changed)
    }

    /// Stops the background tasks (watch listener, retention sweep).
    pub fn shutdown(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for handle in tasks.drain(..) {
                handle.abort();
            }
        }
    }

    /// The connection pool (for host queries; business-table writes must go through
    /// [`SyncService::begin_server_write`]).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The current registry of tables.
    pub fn registry(&self) -> Arc<Registry> {
        match self.registry.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, SyncError> {
        Ok(self.pool.get().await?)
    }

    pub(crate) fn begin_op(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(&self.inflight)
    }

    /// Routes `/sync/*` (needs an [`crate::AuthenticatedUser`] extension, else 401) and the
    /// unauthenticated `/syncx/health` and `/syncx/status`.
    pub fn router(self: &Arc<Self>) -> Router {
        self.sync_routes().merge(self.public_routes())
    }

    /// Only the `/sync/*` routes, for a host that authenticates in an outer layer. A request
    /// rejected there never reaches the metrics and request-id layer; prefer
    /// [`Self::sync_routes_with_auth`].
    pub fn sync_routes(self: &Arc<Self>) -> Router {
        self.sync_routes_with(|routes| routes)
    }

    /// The `/sync/*` routes with the host's authentication layer (which inserts an
    /// [`crate::AuthenticatedUser`] or answers 401) placed inside the metrics and request-id
    /// layer, so rejected requests are counted by route and status and carry an
    /// `x-request-id` like every other answer.
    pub fn sync_routes_with_auth<L>(self: &Arc<Self>, auth: L) -> Router
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.sync_routes_with(|routes| routes.layer(auth))
    }

    /// Layers, inside out: handlers, the `Oversync-User-ID` answer header (reads the user the
    /// auth layer set), `authenticate`, metrics and request id, drain.
    fn sync_routes_with(
        self: &Arc<Self>,
        authenticate: impl FnOnce(Router<Arc<Self>>) -> Router<Arc<Self>>,
    ) -> Router {
        let routes = Router::new()
            .route("/sync/capabilities", get(crate::status::capabilities))
            .route("/sync/connect", post(crate::connect::connect))
            .route("/sync/push-sessions", post(crate::push_sessions::create))
            .route(
                "/sync/push-sessions/{push_id}/chunks",
                post(crate::push_sessions::upload_chunk),
            )
            .route(
                "/sync/push-sessions/{push_id}/commit",
                post(crate::push_sessions::commit),
            )
            .route(
                "/sync/push-sessions/{push_id}",
                delete(crate::push_sessions::delete),
            )
            .route(
                "/sync/committed-bundles/{bundle_seq}/rows",
                get(crate::committed_bundles::rows),
            )
            .route("/sync/pull", get(crate::pull::pull))
            .route("/sync/watch", get(crate::watch::watch))
            .route("/sync/snapshot-sessions", post(crate::snapshots::create))
            .route(
                "/sync/snapshot-sessions/{snapshot_id}",
                get(crate::snapshots::chunk).delete(crate::snapshots::delete),
            )
            .layer(DefaultBodyLimit::max(self.config.limits.max_body_bytes))
            .layer(axum::middleware::from_fn(crate::auth::name_token_user));
        authenticate(routes)
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                crate::metrics::observe,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                crate::drain::guard,
            ))
            .with_state(self.clone())
    }

    /// Only the unauthenticated `/syncx/health`, `/syncx/status` and `/metrics`.
    pub fn public_routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/syncx/health", get(crate::status::health))
            .route("/syncx/status", get(crate::status::status))
            .route("/metrics", get(crate::metrics::metrics))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                crate::metrics::observe,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                crate::drain::guard,
            ))
            .with_state(self.clone())
    }
}

impl Drop for SyncService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counts an operation as in flight for `/syncx/status`.
pub(crate) struct InflightGuard<'a>(&'a AtomicI64);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
