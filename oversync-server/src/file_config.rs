//! Configuration of the `oversync-server` binary: a TOML file, overridden by flags and
//! environment variables. Every problem is a [`ConfigError`] naming the key (or flag) and
//! what it accepts.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"        # env OVERSYNC_LISTEN, flag --listen
//! app_name = "todo-app"
//!
//! [database]
//! url = "postgres://app@127.0.0.1/app"   # env DATABASE_URL, flag --database-url
//! pool_size = 16
//!
//! [sync]
//! schema = "app"                    # the client's OversyncConfig schema
//! tables = ["tags", "todos"]        # omit: every table of `schema` with _sync_scope_id
//! migrations_dir = "server-migrations"   # relative to this file
//! migrate_on_start = false          # flag --migrate
//!
//! [auth]
//! algorithm = "HS256"               # HS256 (secret), RS256 / ES256 (public_key_file), or jwks_file
//! secret_env = "OVERSYNC_JWT_SECRET"  # or `secret = "..."`
//! # public_key_file = "jwt.pub.pem"
//! # jwks_file = "jwks.json"
//! user_claim = "sub"
//! issuer = "https://auth.example.com"
//! audience = ["todo-app"]
//! leeway_seconds = 0
//!
//! [limits]                          # any field of oversync_server::Limits; *_ttl in seconds
//! max_rows_per_push_chunk = 5000
//!
//! [watch]
//! enabled = true
//! heartbeat_seconds = 25
//! ```

use crate::config::{Limits, WatchConfig};
use crate::jwt::{JwtChecks, JwtKeySource};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the key or flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS message.
        reason: String,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type); the message
    /// names the key, its line, and the accepted keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A key has a value outside what is allowed.
    #[error("config key {key}: {message}")]
    Invalid {
        /// Dotted key (`auth.algorithm`) or flag (`--listen`).
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A required setting is absent.
    #[error("config key {key} is required: {hint}")]
    Missing {
        /// Dotted key.
        key: String,
        /// How to provide it.
        hint: String,
    },
    /// A command-line problem.
    #[error("{0}\n\nRun `oversync-server --help` for usage.")]
    Usage(String),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    sync: SyncSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    watch: WatchSection,
    #[serde(default)]
    retention: RetentionSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<String>,
    app_name: Option<String>,
    // Production operation (issue 15).
    drain_timeout_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: Option<String>,
    pool_size: Option<i64>,
    // Production operation (issue 15).
    statement_timeout_seconds: Option<i64>,
    ca_file: Option<PathBuf>,
}

/// `[retention]`: bounded history (issue 15).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionSection {
    keep_days: Option<i64>,
    keep_last: Option<i64>,
    sweep_interval_seconds: Option<i64>,
    batch: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncSection {
    schema: Option<String>,
    tables: Option<Vec<String>>,
    migrations_dir: Option<PathBuf>,
    migrate_on_start: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    algorithm: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    user_claim: Option<String>,
    issuer: Option<String>,
    audience: Option<Vec<String>>,
    leeway_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    default_rows_per_push_chunk: Option<i64>,
    max_rows_per_push_chunk: Option<i64>,
    push_session_ttl_seconds: Option<i64>,
    default_rows_per_committed_bundle_chunk: Option<i64>,
    max_rows_per_committed_bundle_chunk: Option<i64>,
    default_rows_per_snapshot_chunk: Option<i64>,
    max_rows_per_snapshot_chunk: Option<i64>,
    snapshot_session_ttl_seconds: Option<i64>,
    max_rows_per_snapshot_session: Option<i64>,
    max_bytes_per_snapshot_session: Option<i64>,
    initialization_lease_ttl_seconds: Option<i64>,
    default_bundles_per_pull: Option<i64>,
    max_bundles_per_pull: Option<i64>,
    retained_bundles_per_user: Option<i64>,
    retention_prune_batch: Option<i64>,
    max_body_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchSection {
    enabled: Option<bool>,
    heartbeat_seconds: Option<i64>,
    channel: Option<String>,
}

/// What the binary was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve sync (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Validate the configuration (and the database schema) and exit.
    Check,
    /// Print usage.
    Help,
}

/// Parsed command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--database-url URL`.
    pub database_url: Option<String>,
    /// `--listen ADDR`.
    pub listen: Option<String>,
    /// `--schema NAME`.
    pub schema: Option<String>,
    /// `--tables a,b`.
    pub tables: Option<Vec<String>>,
    /// `--migrations DIR`.
    pub migrations_dir: Option<PathBuf>,
    /// `--migrate`.
    pub migrate: bool,
    /// `--drain-timeout SECONDS`.
    pub drain_timeout_seconds: Option<i64>,
}

/// Usage text of `--help`.
pub const USAGE: &str = "\
oversync-server: oversync protocol server for a PostgreSQL schema

USAGE:
    oversync-server [serve] [OPTIONS]    serve /sync/* (default)
    oversync-server migrate [OPTIONS]    apply pending migrations of sync.migrations_dir, exit
    oversync-server check [OPTIONS]      validate config and schema, exit

OPTIONS (each overrides the config file):
    -c, --config FILE        TOML config file                  [env OVERSYNC_CONFIG]
        --database-url URL   database.url                      [env DATABASE_URL]
        --listen ADDR        server.listen (127.0.0.1:8080)    [env OVERSYNC_LISTEN]
        --schema NAME        sync.schema
        --tables A,B         sync.tables (default: every table of the schema with _sync_scope_id)
        --migrations DIR     sync.migrations_dir
        --migrate            apply pending migrations before serving
        --drain-timeout SECS server.drain_timeout_seconds (default 30)
    -h, --help               this text

CONFIG KEYS:
    [server]    listen, app_name, drain_timeout_seconds (default 30: on SIGTERM or ctrl-c,
                running requests get this long to finish while new ones are answered 503
                with Retry-After and watch streams end)
    [database]  url, pool_size (1..=1000, default 16)
    [sync]      schema (required, ^[a-z0-9_]+$), tables, migrations_dir, migrate_on_start
    [auth]      algorithm = HS256 | RS256 | ES256 (default HS256, or taken from the JWKS keys)
                secret | secret_env (HS256; default env OVERSYNC_JWT_SECRET)
                public_key_file (PEM, RS256/ES256) | jwks_file (JSON key set, `kid` selects)
                user_claim (default sub), issuer, audience (list), leeway_seconds (default 0)
                exp is required; nbf, iss and aud are checked
    [limits]    default_rows_per_push_chunk, max_rows_per_push_chunk, push_session_ttl_seconds,
                default_rows_per_committed_bundle_chunk, max_rows_per_committed_bundle_chunk,
                default_rows_per_snapshot_chunk, max_rows_per_snapshot_chunk,
                snapshot_session_ttl_seconds, max_rows_per_snapshot_session,
                max_bytes_per_snapshot_session, initialization_lease_ttl_seconds,
                default_bundles_per_pull, max_bundles_per_pull, retained_bundles_per_user,
                retention_prune_batch, max_body_bytes
    [watch]     enabled (default true), heartbeat_seconds (default 25), channel
    [database]  statement_timeout_seconds (default: the server's; cancels longer statements)
                ca_file (PEM CA certificates for sslmode=verify-ca/verify-full; default: public roots)
                url's sslmode: disable | prefer (default) | require | verify-ca | verify-full
    [retention] keep_days (bundles younger are kept), keep_last (newest N per user are kept,
                same as limits.retained_bundles_per_user; 0 = the count rule keeps nothing),
                sweep_interval_seconds (default 300), batch (bundles per transaction).
                A bundle goes only when every configured rule lets it go.

The server refuses to start on a schema it cannot serve and names the table and the rule.
";

/// Parses `args` (without the program name).
pub fn parse_args(args: &[String]) -> Result<(Command, Flags), ConfigError> {
    let mut flags = Flags::default();
    let mut command = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = |flag: &str| -> Result<String, ConfigError> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| ConfigError::Usage(format!("{flag} needs a value")))
        };
        match name {
            "-h" | "--help" => return Ok((Command::Help, flags)),
            "-c" | "--config" => flags.config = Some(PathBuf::from(value("--config")?)),
            "--database-url" => flags.database_url = Some(value("--database-url")?),
            "--listen" => flags.listen = Some(value("--listen")?),
            "--schema" => flags.schema = Some(value("--schema")?),
            "--tables" => {
                flags.tables = Some(
                    value("--tables")?
                        .split(',')
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .collect(),
                )
            }
            "--migrations" => flags.migrations_dir = Some(PathBuf::from(value("--migrations")?)),
            "--migrate" => flags.migrate = true,
            "--drain-timeout" => {
                let v = value("--drain-timeout")?;
                flags.drain_timeout_seconds = Some(v.parse().map_err(|_| {
                    ConfigError::Usage(format!("--drain-timeout {v:?} must be a number of seconds"))
                })?);
            }
            "serve" | "migrate" | "check" if command.is_none() => {
                command = Some(match name {
                    "serve" => Command::Serve,
                    "migrate" => Command::Migrate,
                    _ => Command::Check,
                });
            }
            other => {
                return Err(ConfigError::Usage(format!(
                    "unknown argument {other:?} (commands: serve, migrate, check)"
                )));
            }
        }
        i += 1;
    }
    Ok((command.unwrap_or(Command::Serve), flags))
}

/// Fully resolved settings of the binary.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Connection pool size.
    pub pool_size: usize,
    /// Listen address.
    pub listen: String,
    /// `app_name` of capabilities and status.
    pub app_name: String,
    /// Business schema.
    pub schema: String,
    /// Registered tables; `None` = every table of the schema with `_sync_scope_id`.
    pub tables: Option<Vec<String>>,
    /// Migration directory (resolved against the config file's directory).
    pub migrations_dir: Option<PathBuf>,
    /// Apply migrations before serving.
    pub migrate_on_start: bool,
    /// Verification keys.
    pub auth_keys: JwtKeySource,
    /// Claim checks.
    pub auth_checks: JwtChecks,
    /// Limits.
    pub limits: Limits,
    /// Watch settings.
    pub watch: WatchConfig,
    /// How long running requests may take to finish after SIGTERM or ctrl-c.
    pub drain_timeout: Duration,
    /// `database.statement_timeout_seconds`.
    pub statement_timeout: Option<Duration>,
    /// `database.ca_file`: PEM certificates `sslmode=verify-ca` and `verify-full` trust.
    pub ca_file: Option<PathBuf>,
    /// Age rule and sweep of the retained history.
    pub retention: crate::retention::RetentionConfig,
}

/// Default of `server.drain_timeout_seconds`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn valid_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    if crate::bootstrap::is_valid_identifier(value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{value:?} must match ^[a-z0-9_]+$ (at most 63 bytes)"),
        ))
    }
}

fn positive(key: &str, value: Option<i64>, default: i64) -> Result<i64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v > 0 => Ok(v),
        Some(v) => Err(invalid(key, format!("{v} must be a positive integer"))),
    }
}

fn non_negative(key: &str, value: Option<i64>, default: i64) -> Result<i64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 0 => Ok(v),
        Some(v) => Err(invalid(key, format!("{v} must be >= 0 (0 = unlimited)"))),
    }
}

fn seconds(key: &str, value: Option<i64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v > 0 => Ok(Duration::from_secs(v as u64)),
        Some(v) => Err(invalid(
            key,
            format!("{v} must be a positive number of seconds"),
        )),
    }
}

fn limits(l: &LimitsSection) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let k = |name: &str| format!("limits.{name}");
    let out = Limits {
        default_rows_per_push_chunk: positive(
            &k("default_rows_per_push_chunk"),
            l.default_rows_per_push_chunk,
            d.default_rows_per_push_chunk,
        )?,
        max_rows_per_push_chunk: positive(
            &k("max_rows_per_push_chunk"),
            l.max_rows_per_push_chunk,
            d.max_rows_per_push_chunk,
        )?,
        push_session_ttl: seconds(
            &k("push_session_ttl_seconds"),
            l.push_session_ttl_seconds,
            d.push_session_ttl,
        )?,
        default_rows_per_committed_bundle_chunk: positive(
            &k("default_rows_per_committed_bundle_chunk"),
            l.default_rows_per_committed_bundle_chunk,
            d.default_rows_per_committed_bundle_chunk,
        )?,
        max_rows_per_committed_bundle_chunk: positive(
            &k("max_rows_per_committed_bundle_chunk"),
            l.max_rows_per_committed_bundle_chunk,
            d.max_rows_per_committed_bundle_chunk,
        )?,
        default_rows_per_snapshot_chunk: positive(
            &k("default_rows_per_snapshot_chunk"),
            l.default_rows_per_snapshot_chunk,
            d.default_rows_per_snapshot_chunk,
        )?,
        max_rows_per_snapshot_chunk: positive(
            &k("max_rows_per_snapshot_chunk"),
            l.max_rows_per_snapshot_chunk,
            d.max_rows_per_snapshot_chunk,
        )?,
        snapshot_session_ttl: seconds(
            &k("snapshot_session_ttl_seconds"),
            l.snapshot_session_ttl_seconds,
            d.snapshot_session_ttl,
        )?,
        max_rows_per_snapshot_session: non_negative(
            &k("max_rows_per_snapshot_session"),
            l.max_rows_per_snapshot_session,
            d.max_rows_per_snapshot_session,
        )?,
        max_bytes_per_snapshot_session: non_negative(
            &k("max_bytes_per_snapshot_session"),
            l.max_bytes_per_snapshot_session,
            d.max_bytes_per_snapshot_session,
        )?,
        initialization_lease_ttl: seconds(
            &k("initialization_lease_ttl_seconds"),
            l.initialization_lease_ttl_seconds,
            d.initialization_lease_ttl,
        )?,
        default_bundles_per_pull: positive(
            &k("default_bundles_per_pull"),
            l.default_bundles_per_pull,
            d.default_bundles_per_pull,
        )?,
        max_bundles_per_pull: positive(
            &k("max_bundles_per_pull"),
            l.max_bundles_per_pull,
            d.max_bundles_per_pull,
        )?,
        retained_bundles_per_user: non_negative(
            &k("retained_bundles_per_user"),
            l.retained_bundles_per_user,
            d.retained_bundles_per_user,
        )?,
        retention_prune_batch: positive(
            &k("retention_prune_batch"),
            l.retention_prune_batch,
            d.retention_prune_batch,
        )?,
        max_body_bytes: positive(
            &k("max_body_bytes"),
            l.max_body_bytes,
            d.max_body_bytes as i64,
        )? as usize,
    };
    for (default_key, default, max_key, max) in [
        (
            "default_rows_per_push_chunk",
            out.default_rows_per_push_chunk,
            "max_rows_per_push_chunk",
            out.max_rows_per_push_chunk,
        ),
        (
            "default_rows_per_committed_bundle_chunk",
            out.default_rows_per_committed_bundle_chunk,
            "max_rows_per_committed_bundle_chunk",
            out.max_rows_per_committed_bundle_chunk,
        ),
        (
            "default_rows_per_snapshot_chunk",
            out.default_rows_per_snapshot_chunk,
            "max_rows_per_snapshot_chunk",
            out.max_rows_per_snapshot_chunk,
        ),
        (
            "default_bundles_per_pull",
            out.default_bundles_per_pull,
            "max_bundles_per_pull",
            out.max_bundles_per_pull,
        ),
    ] {
        if default > max {
            return Err(invalid(
                &k(default_key),
                format!("{default} must not exceed limits.{max_key} ({max})"),
            ));
        }
    }
    Ok(out)
}

fn read_key_file(key: &str, base: &Path, path: &Path) -> Result<String, ConfigError> {
    let full = base.join(path);
    std::fs::read_to_string(&full)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", full.display())))
}

fn auth(
    a: &AuthSection,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(JwtKeySource, JwtChecks), ConfigError> {
    let algorithm = match a.algorithm.as_deref() {
        None => None,
        Some("HS256") => Some(Algorithm::HS256),
        Some("RS256") => Some(Algorithm::RS256),
        Some("ES256") => Some(Algorithm::ES256),
        Some(other) => {
            return Err(invalid(
                "auth.algorithm",
                format!("{other:?} is not supported; allowed: \"HS256\", \"RS256\", \"ES256\""),
            ));
        }
    };
    let given = [
        a.secret.is_some() || a.secret_env.is_some(),
        a.public_key_file.is_some(),
        a.jwks_file.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 {
        return Err(invalid(
            "auth",
            "set only one of secret/secret_env, public_key_file, jwks_file",
        ));
    }
    let source = if let Some(path) = &a.public_key_file {
        let algorithm = match algorithm {
            Some(alg @ (Algorithm::RS256 | Algorithm::ES256)) => alg,
            _ => {
                return Err(invalid(
                    "auth.algorithm",
                    "public_key_file needs algorithm = \"RS256\" or \"ES256\"",
                ));
            }
        };
        JwtKeySource::PublicKeyPem {
            algorithm,
            pem: read_key_file("auth.public_key_file", base, path)?,
        }
    } else if let Some(path) = &a.jwks_file {
        JwtKeySource::Jwks(read_key_file("auth.jwks_file", base, path)?)
    } else {
        if !matches!(algorithm, None | Some(Algorithm::HS256)) {
            return Err(invalid(
                "auth.algorithm",
                "RS256 and ES256 need auth.public_key_file or auth.jwks_file",
            ));
        }
        let var = a.secret_env.as_deref().unwrap_or("OVERSYNC_JWT_SECRET");
        let secret = match (&a.secret, env(var)) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s,
            (None, None) => {
                return Err(ConfigError::Missing {
                    key: "auth.secret".into(),
                    hint: format!(
                        "set the environment variable {var}, or auth.secret, auth.public_key_file or auth.jwks_file"
                    ),
                });
            }
        };
        if secret.len() < 16 {
            return Err(invalid(
                "auth.secret",
                "an HS256 secret must be at least 16 bytes",
            ));
        }
        JwtKeySource::Secret(secret)
    };
    if let Some(claim) = &a.user_claim
        && claim.trim().is_empty()
    {
        return Err(invalid("auth.user_claim", "must not be empty"));
    }
    if a.audience.as_ref().is_some_and(|v| v.is_empty()) {
        return Err(invalid(
            "auth.audience",
            "must list at least one audience (or be omitted)",
        ));
    }
    let checks = JwtChecks {
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
        user_claim: a.user_claim.clone(),
        leeway_seconds: non_negative("auth.leeway_seconds", a.leeway_seconds, 0)? as u64,
    };
    Ok((source, checks))
}

impl ServerSettings {
    /// Reads the config file (if any) and applies flags and `env` on top.
    pub fn load(
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServerSettings, ConfigError> {
        let config_path = flags
            .config
            .clone()
            .or_else(|| env("OVERSYNC_CONFIG").map(PathBuf::from));
        let (file, base) = match &config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let base = path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                (file, base)
            }
            None => (FileConfig::default(), PathBuf::from(".")),
        };
        Self::resolve(file, &base, flags, env)
    }

    fn resolve(
        file: FileConfig,
        base: &Path,
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServerSettings, ConfigError> {
        let database_url = flags
            .database_url
            .clone()
            .or_else(|| env("DATABASE_URL"))
            .or(file.database.url)
            .ok_or_else(|| ConfigError::Missing {
                key: "database.url".into(),
                hint: "set it in the config file, DATABASE_URL or --database-url".into(),
            })?;
        let ca_file = file.database.ca_file.as_ref().map(|f| base.join(f));
        if let Err(e) = crate::tls::Database::parse(&database_url, ca_file.as_deref()) {
            let key = match e {
                crate::tls::TlsError::CaFile { .. } => "database.ca_file",
                _ => "database.url",
            };
            return Err(invalid(key, e.to_string()));
        }
        let pool_size = match file.database.pool_size {
            None => 16,
            Some(n @ 1..=1000) => n as usize,
            Some(n) => {
                return Err(invalid(
                    "database.pool_size",
                    format!("{n} must be 1..=1000"),
                ));
            }
        };
        let listen = flags
            .listen
            .clone()
            .or_else(|| env("OVERSYNC_LISTEN"))
            .or(file.server.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("{listen:?} must be an IP:port address such as 127.0.0.1:8080"),
            ));
        }
        let schema = flags
            .schema
            .clone()
            .or(file.sync.schema)
            .ok_or_else(|| ConfigError::Missing {
                key: "sync.schema".into(),
                hint: "the PostgreSQL schema of the synced tables (the client's OversyncConfig schema)".into(),
            })?;
        valid_identifier("sync.schema", &schema)?;
        let tables = flags.tables.clone().or(file.sync.tables);
        if let Some(tables) = &tables {
            if tables.is_empty() {
                return Err(invalid(
                    "sync.tables",
                    "must list at least one table, or be omitted to serve every table with _sync_scope_id",
                ));
            }
            for t in tables {
                valid_identifier("sync.tables", t)?;
            }
        }
        let migrations_dir = match (&flags.migrations_dir, file.sync.migrations_dir) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(dir)) => Some(base.join(dir)),
            (None, None) => None,
        };
        let migrate_on_start = flags.migrate || file.sync.migrate_on_start.unwrap_or(false);
        if migrate_on_start && migrations_dir.is_none() {
            return Err(ConfigError::Missing {
                key: "sync.migrations_dir".into(),
                hint: "migrating on start needs the directory of NNNN_name.sql files".into(),
            });
        }
        let (auth_keys, auth_checks) = auth(&file.auth, base, env)?;
        let mut watch = WatchConfig::default();
        if let Some(enabled) = file.watch.enabled {
            watch.enabled = enabled;
        }
        watch.heartbeat = seconds(
            "watch.heartbeat_seconds",
            file.watch.heartbeat_seconds,
            watch.heartbeat,
        )?;
        if let Some(channel) = file.watch.channel {
            valid_identifier("watch.channel", &channel)?;
            watch.channel = channel;
        }
        let app_name = file
            .server
            .app_name
            .unwrap_or_else(|| "oversync-server".to_owned());
        if app_name.trim().is_empty() {
            return Err(invalid("server.app_name", "must not be empty"));
        }
        let drain_timeout = seconds(
            if flags.drain_timeout_seconds.is_some() {
                "--drain-timeout"
            } else {
                "server.drain_timeout_seconds"
            },
            flags
                .drain_timeout_seconds
                .or(file.server.drain_timeout_seconds),
            DEFAULT_DRAIN_TIMEOUT,
        )?;
        let statement_timeout = match file.database.statement_timeout_seconds {
            None => None,
            v => Some(seconds(
                "database.statement_timeout_seconds",
                v,
                Duration::ZERO,
            )?),
        };
        let mut limits = limits(&file.limits)?;
        let r = &file.retention;
        limits.retained_bundles_per_user = non_negative(
            "retention.keep_last",
            r.keep_last,
            limits.retained_bundles_per_user,
        )?;
        limits.retention_prune_batch =
            positive("retention.batch", r.batch, limits.retention_prune_batch)?;
        let retention = crate::retention::RetentionConfig {
            max_age: match r.keep_days {
                None => None,
                Some(d) if (1..=36_500).contains(&d) => {
                    Some(Duration::from_secs(d as u64 * 24 * 3600))
                }
                Some(d) => {
                    return Err(invalid(
                        "retention.keep_days",
                        format!("{d} must be 1..=36500"),
                    ));
                }
            },
            sweep_interval: Some(seconds(
                "retention.sweep_interval_seconds",
                r.sweep_interval_seconds,
                Duration::from_secs(300),
            )?),
        };
        Ok(ServerSettings {
            ca_file,
            statement_timeout,
            retention,
            drain_timeout,
            database_url,
            pool_size,
            listen,
            app_name,
            schema,
            tables,
            migrations_dir,
            migrate_on_start,
            auth_keys,
            auth_checks,
            limits,
            watch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    fn load(toml_text: &str) -> Result<ServerSettings, ConfigError> {
        let file: FileConfig = toml::from_str(toml_text).map_err(|e| ConfigError::Parse {
            path: "test.toml".into(),
            message: e.to_string(),
        })?;
        let env = |name: &str| (name == "OVERSYNC_JWT_SECRET").then(|| SECRET.to_owned());
        ServerSettings::resolve(file, Path::new("."), &Flags::default(), &env)
    }

    const BASE: &str =
        "[database]\nurl = \"postgres://p@127.0.0.1/db\"\n[sync]\nschema = \"app\"\n";

    #[test]
    fn production_keys_resolve_and_name_their_errors() {
        let s = load(
            "[database]\nurl = \"postgres://p@127.0.0.1/db\"\nstatement_timeout_seconds = 9\n\
             [sync]\nschema = \"app\"\n[server]\ndrain_timeout_seconds = 5\n\
             [retention]\nkeep_days = 30\nkeep_last = 100\nsweep_interval_seconds = 60\nbatch = 50\n",
        )
        .unwrap();
        assert_eq!(s.drain_timeout, Duration::from_secs(5));
        assert_eq!(s.statement_timeout, Some(Duration::from_secs(9)));
        assert_eq!(
            s.retention.max_age,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        assert_eq!(s.retention.sweep_interval, Some(Duration::from_secs(60)));
        assert_eq!(s.limits.retained_bundles_per_user, 100);
        assert_eq!(s.limits.retention_prune_batch, 50);
        let d = load(BASE).unwrap();
        assert_eq!(d.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(d.statement_timeout, None);
        assert_eq!(d.retention.max_age, None);
        for (text, key) in [
            (
                format!("{BASE}[retention]\nkeep_days = 0\n"),
                "retention.keep_days",
            ),
            (
                format!("{BASE}[retention]\nkeep_last = -1\n"),
                "retention.keep_last",
            ),
            (
                format!("{BASE}[server]\ndrain_timeout_seconds = 0\n"),
                "server.drain_timeout_seconds",
            ),
        ] {
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let (_, flags) = parse_args(&["--drain-timeout".into(), "7".into()]).unwrap();
        assert_eq!(flags.drain_timeout_seconds, Some(7));
        assert!(parse_args(&["--drain-timeout".into(), "x".into()]).is_err());
    }

    #[test]
    fn minimal_config_has_defaults() {
        let s = load(BASE).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.tables, None);
        assert!(matches!(s.auth_keys, JwtKeySource::Secret(ref k) if k == SECRET));
        assert_eq!(s.limits.max_rows_per_push_chunk, 5000);
    }

    #[test]
    fn errors_name_the_key_and_what_is_allowed() {
        let cases = [
            (
                format!("{BASE}[server]\nlistn = \"x\"\n"),
                vec!["listn", "listen", "app_name"],
            ),
            (
                format!("{BASE}[auth]\nalgorithm = \"HS512\"\n"),
                vec!["auth.algorithm", "HS256", "RS256", "ES256"],
            ),
            (
                format!("{BASE}[limits]\nmax_rows_per_push_chunk = 0\n"),
                vec!["limits.max_rows_per_push_chunk", "positive"],
            ),
            (
                format!("{BASE}[limits]\ndefault_rows_per_push_chunk = 9000\n"),
                vec![
                    "limits.default_rows_per_push_chunk",
                    "max_rows_per_push_chunk",
                ],
            ),
            (
                format!("{BASE}[limits]\nmax_rows_per_push_chunk = \"many\"\n"),
                vec!["max_rows_per_push_chunk", "invalid type"],
            ),
            (
                "[sync]\nschema = \"app\"\n".to_owned(),
                vec!["database.url", "DATABASE_URL"],
            ),
            (
                "[database]\nurl = \"postgres://p@h/db\"\n".to_owned(),
                vec!["sync.schema"],
            ),
            (
                "[database]\nurl = \"postgres://p@h/db\"\n[sync]\nschema = \"App\"\n".to_owned(),
                vec!["sync.schema", "^[a-z0-9_]+$"],
            ),
            (
                format!("{BASE}[server]\nlisten = \"localhost\"\n"),
                vec!["server.listen", "IP:port"],
            ),
            (
                format!("{BASE}[auth]\nalgorithm = \"RS256\"\n"),
                vec!["auth.algorithm", "public_key_file"],
            ),
            (
                format!("{BASE}[auth]\nsecret = \"short\"\n"),
                vec!["auth.secret", "16 bytes"],
            ),
            (
                format!("{BASE}[auth]\nsecret = \"{SECRET}\"\njwks_file = \"k.json\"\n"),
                vec!["auth", "only one of"],
            ),
            (
                format!("{BASE}[auth]\nsecret_env = \"NOPE\"\n"),
                vec!["auth.secret", "NOPE"],
            ),
            (
                format!("{BASE}[auth]\njwks_file = \"/nonexistent/jwks.json\"\n"),
                vec!["auth.jwks_file", "/nonexistent/jwks.json"],
            ),
            (
                format!("{BASE}tables = []\n"),
                vec!["sync.tables", "at least one"],
            ),
            (
                format!("{BASE}migrate_on_start = true\n"),
                vec!["sync.migrations_dir"],
            ),
        ];
        for (text, needles) in cases {
            let err = load(&text).expect_err(&text).to_string();
            for needle in needles {
                assert!(err.contains(needle), "{err:?} should contain {needle:?}");
            }
        }
    }

    #[test]
    fn flags_parse_and_override() {
        let args: Vec<String> = [
            "migrate",
            "--config",
            "a.toml",
            "--listen=127.0.0.1:9",
            "--tables",
            "a, b",
            "--migrate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (cmd, flags) = parse_args(&args).unwrap();
        assert_eq!(cmd, Command::Migrate);
        assert_eq!(flags.config, Some(PathBuf::from("a.toml")));
        assert_eq!(flags.listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(flags.tables, Some(vec!["a".into(), "b".into()]));
        assert!(flags.migrate);
        assert_eq!(parse_args(&["--help".into()]).unwrap().0, Command::Help);
        let err = parse_args(&["--lisen".into()]).unwrap_err().to_string();
        assert!(err.contains("--lisen"), "{err}");
        let err = parse_args(&["--listen".into()]).unwrap_err().to_string();
        assert!(err.contains("--listen needs a value"), "{err}");
    }
}
