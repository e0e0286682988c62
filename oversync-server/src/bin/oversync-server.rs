//! `oversync-server`: serves the oversync protocol for one PostgreSQL schema, configured by
//! a TOML file, flags and environment (`oversync-server --help`); `migrate` applies the
//! schema's numbered migrations.

use oversync_server::file_config::{self, Command, ServerSettings};
use oversync_server::jwt::{self, JwtVerifier};
use oversync_server::{ServiceConfig, SyncService, bootstrap, migrate, service};
use std::process::ExitCode;

/// Exit code of a configuration or usage error (as `sysexits` EX_USAGE-like tools do).
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, flags) = match file_config::parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("oversync-server: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if command == Command::Help {
        print!("{}", file_config::USAGE);
        return ExitCode::SUCCESS;
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let settings = match ServerSettings::load(&flags, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oversync-server: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oversync-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: ServerSettings) -> Result<(), String> {
    let database =
        oversync_server::tls::Database::parse(&settings.database_url, settings.ca_file.as_deref())
            .map_err(|e| format!("config key database.url: {e}"))?;
    let mut pg = database.config.clone();
    if let Some(timeout) = settings.statement_timeout {
        let options = pg.get_options().unwrap_or_default().to_owned();
        pg.options(format!(
            "{options} -c statement_timeout={}",
            timeout.as_millis()
        ));
    }
    // Migrations and table discovery need one connection; the service opens its own pool.
    let pool = service::connect_pool_with(pg.clone(), 1, database.connector.clone());
    let mut client = pool
        .get()
        .await
        .map_err(|e| format!("cannot connect to database.url: {e}"))?;
    if command == Command::Migrate || settings.migrate_on_start {
        let Some(dir) = &settings.migrations_dir else {
            return Err(
                "config key sync.migrations_dir is required: migrate needs the directory of NNNN_name.sql files (or --migrations DIR)"
                    .into(),
            );
        };
        let report = migrate::apply(&mut client, dir)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            applied = ?report.applied,
            already_applied = report.already_applied.len(),
            dir = %dir.display(),
            "migrations up to date"
        );
        if command == Command::Migrate {
            return Ok(());
        }
    }
    let specs =
        bootstrap::resolve_table_specs(&**client, &settings.schema, settings.tables.as_deref())
            .await
            .map_err(|e| e.to_string())?;
    drop(client);
    drop(pool);
    let verifier = JwtVerifier::new(&settings.auth_keys, settings.auth_checks.clone())
        .map_err(|e| format!("config key {e}"))?;
    let mut config = ServiceConfig::new(&settings.app_name, specs);
    config.limits = settings.limits.clone();
    config.watch = settings.watch.clone();
    config.pool_size = settings.pool_size;
    config.retention = settings.retention.clone();
    // Bootstrap validates every table and names the rule a table breaks.
    let sync = SyncService::start_with_tls(pg, database.connector, config)
        .await
        .map_err(|e| format!("cannot serve schema {}: {e}", settings.schema))?;
    let tables = sync.registry().qualified_names();
    if command == Command::Check {
        println!("ok: {} serves {}", settings.schema, tables.join(", "));
        return Ok(());
    }
    let router = sync
        .sync_routes_with_auth(axum::middleware::from_fn_with_state(
            verifier,
            jwt::require_bearer,
        ))
        .merge(sync.public_routes());
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on server.listen {}: {e}", settings.listen))?;
    tracing::info!(addr = %settings.listen, tables = ?tables, "oversync-server listening");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    tokio::select! {
        result = &mut serving => {
            sync.shutdown();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("server error: {e}")),
                Err(e) => Err(format!("server task: {e}")),
            };
        }
        () = shutdown_signal() => {}
    }
    // Drain first (new requests 503, watch streams end), then stop accepting.
    tracing::info!(deadline = ?settings.drain_timeout, "shutdown requested; draining");
    match sync.drain(settings.drain_timeout).await {
        oversync_server::DrainOutcome::Drained => tracing::info!("drained"),
        oversync_server::DrainOutcome::DeadlineExceeded { in_flight } => {
            tracing::warn!(in_flight, "drain deadline passed; stopping anyway")
        }
    }
    let _ = stop.send(());
    // Idle keep-alive connections close at once; anything still open is cut after a moment.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), serving).await;
    sync.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
