//! The example server: a drop-in for the reference `examples/nethttp_server`.
//!
//! Same routes, the same `business` schema, HS256 JWT sign-in at `POST /dummy-signin`
//! (any password, `sub` = user, 5 minutes), and the test helpers `POST /test/reset`,
//! `POST /test/retention-floor` and `GET /test/watch-subscribers`. Tests run it in process
//! with [`build_app`] + [`serve`]; the `oversync-example-server` binary runs it standalone.

use crate::auth::AuthenticatedUser;
use crate::body::JsonBody;
use crate::bootstrap::BootstrapError;
use crate::config::{Limits, ServiceConfig, TableSpec, WatchConfig};
use crate::error::{SyncError, error_response};
use crate::sql::{quote_ident, table_ident};
use crate::{SyncService, retention};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// JWT secret used when `JWT_SECRET` is unset (same as the reference).
pub const DEFAULT_JWT_SECRET: &str = "your-secret-key-change-in-production";
/// Application name reported by the example server.
pub const DEFAULT_APP_NAME: &str = "nethttp-server-example";
/// Lifetime of a `/dummy-signin` token.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// Failures building the example app.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `DATABASE_URL` could not be parsed.
    #[error("invalid database url: {0}")]
    DatabaseUrl(String),
    /// The database refused a statement.
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No database connection.
    #[error("database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// Bootstrap failed.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
}

/// Configuration of the example server.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// PostgreSQL URL (`postgres://user:pass@host:port/db`).
    pub database_url: String,
    /// HS256 secret of `/dummy-signin` tokens.
    pub jwt_secret: String,
    /// `app_name` in capabilities and status.
    pub app_name: String,
    /// Schema holding the business tables (default `business`).
    pub business_schema: String,
    /// Limits.
    pub limits: Limits,
    /// Watch settings.
    pub watch: WatchConfig,
    /// Test-only tables beyond the reference's business schema: idempotent SQL run after the
    /// business schema, and the tables it creates, registered for sync. Empty by default, so
    /// the server stays a drop-in for the reference.
    pub extra_schema_sql: String,
    /// The tables `extra_schema_sql` creates.
    pub extra_tables: Vec<TableSpec>,
    /// Retention age rule and sweep.
    pub retention: crate::retention::RetentionConfig,
}

impl DemoConfig {
    /// Defaults for everything but the database.
    pub fn new(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            jwt_secret: DEFAULT_JWT_SECRET.to_owned(),
            app_name: DEFAULT_APP_NAME.to_owned(),
            business_schema: "business".to_owned(),
            limits: Limits::default(),
            watch: WatchConfig::default(),
            extra_schema_sql: String::new(),
            extra_tables: Vec::new(),
            retention: Default::default(),
        }
    }
}

/// The registered tables of the reference example.
pub fn registered_tables(schema: &str) -> Vec<TableSpec> {
    [
        "users",
        "posts",
        "categories",
        "teams",
        "team_members",
        "files",
        "file_reviews",
        "typed_rows",
    ]
    .iter()
    .map(|t| TableSpec::new(schema, t, "id"))
    .collect()
}

/// SQL creating the reference example's business tables in `schema`.
pub fn business_schema_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    let t = |name: &str| table_ident(schema, name);
    format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {users} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    PRIMARY KEY (_sync_scope_id, id)
);
CREATE TABLE IF NOT EXISTS {posts} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    title TEXT NOT NULL,
    content TEXT NOT NULL,
    author_id UUID,
    created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    PRIMARY KEY (_sync_scope_id, id),
    CONSTRAINT posts_author_id_fkey FOREIGN KEY (_sync_scope_id, author_id)
        REFERENCES {users}(_sync_scope_id, id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS {categories} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    name TEXT NOT NULL,
    parent_id UUID,
    PRIMARY KEY (_sync_scope_id, id),
    CONSTRAINT categories_parent_id_fkey FOREIGN KEY (_sync_scope_id, parent_id)
        REFERENCES {categories}(_sync_scope_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS {teams} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    name TEXT NOT NULL,
    captain_member_id UUID,
    PRIMARY KEY (_sync_scope_id, id)
);
CREATE TABLE IF NOT EXISTS {team_members} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    name TEXT NOT NULL,
    team_id UUID NOT NULL,
    PRIMARY KEY (_sync_scope_id, id),
    CONSTRAINT team_members_team_id_fkey FOREIGN KEY (_sync_scope_id, team_id)
        REFERENCES {teams}(_sync_scope_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
                   JOIN pg_namespace n ON n.oid = t.relnamespace
                   WHERE c.conname = 'teams_captain_member_id_fkey' AND n.nspname = {schema_lit}) THEN
        ALTER TABLE {teams} ADD CONSTRAINT teams_captain_member_id_fkey
            FOREIGN KEY (_sync_scope_id, captain_member_id)
            REFERENCES {team_members}(_sync_scope_id, id) DEFERRABLE INITIALLY DEFERRED;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {files} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    name TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (_sync_scope_id, id)
);
CREATE TABLE IF NOT EXISTS {file_reviews} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    review TEXT NOT NULL,
    file_id UUID NOT NULL,
    PRIMARY KEY (_sync_scope_id, id),
    CONSTRAINT file_reviews_file_id_fkey FOREIGN KEY (_sync_scope_id, file_id)
        REFERENCES {files}(_sync_scope_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS {typed_rows} (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    name TEXT NOT NULL,
    note TEXT NULL,
    count_value BIGINT NULL,
    enabled_flag BIGINT NOT NULL,
    rating DOUBLE PRECISION NULL,
    data BYTEA NULL,
    created_at TIMESTAMPTZ NULL,
    PRIMARY KEY (_sync_scope_id, id)
);
"#,
        users = t("users"),
        posts = t("posts"),
        categories = t("categories"),
        teams = t("teams"),
        team_members = t("team_members"),
        files = t("files"),
        file_reviews = t("file_reviews"),
        typed_rows = t("typed_rows"),
        schema_lit = crate::sql::quote_literal(schema),
    )
}

/// HS256 tokens of the demo auth (`sub` = user id).
#[derive(Clone)]
pub struct JwtAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtAuth")
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: u64,
    nbf: u64,
    iat: u64,
}

impl JwtAuth {
    /// Auth with the given shared secret.
    pub fn new(secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// Issues a token for `user` valid for `ttl`.
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: "go-oversync-examples".into(),
            sub: user.trim().to_owned(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Returns the `sub` of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        let sub = data.claims.sub.trim().to_owned();
        (!sub.is_empty()).then_some(sub)
    }
}

/// Plain-text 401, as the reference's `http.Error` writes it.
fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

async fn require_jwt(State(auth): State<JwtAuth>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if header.is_empty() {
        return unauthorized("Authorization header required");
    }
    let parts: Vec<&str> = header.split(' ').collect();
    if parts.len() != 2 || parts[0] != "Bearer" {
        return unauthorized("Invalid authorization header format");
    }
    let Some(user) = auth.verify(parts[1]) else {
        return unauthorized("Invalid token");
    };
    req.extensions_mut().insert(AuthenticatedUser(user));
    next.run(req).await
}

async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert("Access-Control-Allow-Origin", HeaderValue::from_static("*"));
    h.insert(
        "Access-Control-Allow-Headers",
        HeaderValue::from_static("Authorization, Content-Type, Oversync-Source-ID"),
    );
    h.insert(
        "Access-Control-Allow-Methods",
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert("Access-Control-Max-Age", HeaderValue::from_static("600"));
    response
}

/// The built example application.
#[derive(Clone)]
pub struct DemoApp {
    /// The sync runtime.
    pub service: Arc<SyncService>,
    /// Demo token issuer/verifier.
    pub auth: JwtAuth,
    /// The complete router (sync routes behind JWT, demo and test routes).
    pub router: Router,
    /// Business schema name.
    pub business_schema: String,
}

impl std::fmt::Debug for DemoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoApp")
            .field("business_schema", &self.business_schema)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct DemoState {
    service: Arc<SyncService>,
    auth: JwtAuth,
    schema: String,
}

/// Creates the business schema, bootstraps sync and builds the router.
pub async fn build_app(config: DemoConfig) -> Result<DemoApp, DemoError> {
    let database = crate::tls::Database::parse(&config.database_url, None)
        .map_err(|e| DemoError::DatabaseUrl(e.to_string()))?;
    let pg_config = database.config.clone();
    {
        let pool =
            crate::service::connect_pool_with(pg_config.clone(), 1, database.connector.clone());
        let client = pool.get().await?;
        client
            .batch_execute(&business_schema_sql(&config.business_schema))
            .await?;
        if !config.extra_schema_sql.is_empty() {
            client.batch_execute(&config.extra_schema_sql).await?;
        }
    }
    let mut tables = registered_tables(&config.business_schema);
    tables.extend(config.extra_tables.iter().cloned());
    let mut service_config = ServiceConfig::new(&config.app_name, tables);
    service_config.limits = config.limits.clone();
    service_config.watch = config.watch.clone();
    service_config.retention = config.retention.clone();
    let service =
        SyncService::start_with_tls(pg_config, database.connector, service_config).await?;
    let auth = JwtAuth::new(&config.jwt_secret);
    let state = DemoState {
        service: service.clone(),
        auth: auth.clone(),
        schema: config.business_schema.clone(),
    };
    let sync =
        service.sync_routes_with_auth(middleware::from_fn_with_state(auth.clone(), require_jwt));
    let demo = Router::new()
        .route("/dummy-signin", post(dummy_signin))
        .route("/test/reset", post(reset))
        .route("/test/retention-floor", post(retention_floor))
        .route("/test/watch-subscribers", get(watch_subscribers))
        .with_state(state);
    let router = sync
        .merge(service.public_routes())
        .merge(demo)
        .layer(middleware::from_fn(cors));
    Ok(DemoApp {
        service,
        auth,
        router,
        business_schema: config.business_schema,
    })
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Deserialize)]
struct SigninRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    #[allow(dead_code)]
    password: String,
}

async fn dummy_signin(
    State(state): State<DemoState>,
    JsonBody(req): JsonBody<SigninRequest>,
) -> Response {
    if req.user.is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", "user required");
    }
    match state.auth.issue(&req.user, TOKEN_TTL) {
        Ok(token) => Json(json!({
            "token": token,
            "expires_in": TOKEN_TTL.as_secs(),
            "user": req.user,
        }))
        .into_response(),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "token_error",
            e.to_string(),
        ),
    }
}

/// Drops and recreates the business and sync schemas, then bootstraps again.
pub async fn reset_database(service: &SyncService, schema: &str) -> Result<(), DemoError> {
    {
        let client = service.pool().get().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS sync CASCADE; DROP SCHEMA IF EXISTS {} CASCADE;",
                quote_ident(schema)
            ))
            .await?;
        client.batch_execute(&business_schema_sql(schema)).await?;
    }
    service.rebootstrap().await?;
    Ok(())
}

async fn reset(State(state): State<DemoState>) -> Response {
    match reset_database(&state.service, &state.schema).await {
        Ok(()) => Json(json!({"status": "ok", "schema": state.schema})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reset failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reset_failed",
                e.to_string(),
            )
        }
    }
}

#[derive(Deserialize)]
struct FloorRequest {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    retained_bundle_floor: i64,
}

async fn retention_floor(
    State(state): State<DemoState>,
    JsonBody(req): JsonBody<FloorRequest>,
) -> Response {
    let user_id = req.user_id.trim();
    if user_id.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "user_id required",
        );
    }
    match retention::set_retained_floor(&state.service, user_id, req.retained_bundle_floor).await {
        Ok(true) => Json(json!({
            "status": "ok",
            "user_id": user_id,
            "retained_bundle_floor": req.retained_bundle_floor,
        }))
        .into_response(),
        Ok(false) => error_response(
            StatusCode::NOT_FOUND,
            "user_state_not_found",
            "no sync user_state row exists for user_id",
        ),
        Err(e) => e.into_response(),
    }
}

async fn watch_subscribers(
    State(state): State<DemoState>,
    RawQuery(query): RawQuery,
) -> Result<Response, SyncError> {
    let q = crate::body::QueryParams::parse(query.as_deref());
    let user_id = q.get("user_id").unwrap_or_default();
    if user_id.trim().is_empty() {
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "user_id required",
        ));
    }
    let count = state.service.watch_subscriber_count(user_id.trim()).await?;
    Ok(Json(json!({
        "user_id": user_id.trim(),
        "subscriber_count": count,
        "process_local_only": true,
    }))
    .into_response())
}
