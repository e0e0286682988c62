//! The example server, a drop-in for the reference `examples/nethttp_server`.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/oversync JWT_SECRET=secret \
//!     oversync-example-server --listen 127.0.0.1:8080
//! ```
//! The listen address comes from `--listen ADDR`, else `LISTEN_ADDR`, else
//! `127.0.0.1:8080` (loopback only unless asked otherwise).

use oversync_server::demo::{self, DemoConfig};
use std::process::ExitCode;

const DEFAULT_DATABASE_URL: &str =
    "postgres://postgres:postgres@localhost:5432/clisync_example?sslmode=disable";

fn listen_addr() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" | "-l" => {
                listen = Some(args.next().ok_or("--listen needs an address")?);
            }
            other if other.starts_with("--listen=") => {
                listen = Some(other.trim_start_matches("--listen=").to_owned());
            }
            "--help" | "-h" => {
                return Err(
                    "usage: oversync-example-server [--listen ADDR]  (env: DATABASE_URL, JWT_SECRET, LISTEN_ADDR)"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(listen
        .or_else(|| std::env::var("LISTEN_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned()))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = match listen_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let mut config = DemoConfig::new(&database_url);
    match std::env::var("JWT_SECRET") {
        Ok(secret) if !secret.is_empty() => config.jwt_secret = secret,
        _ => tracing::warn!("Using default JWT secret - change in production!"),
    }
    let app = match demo::build_app(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("failed to set up server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%addr, "oversync example server listening");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = demo::serve(listener, app.router, shutdown).await {
        eprintln!("server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
