//! Test harness shared by the server's and the client's tests: a private PostgreSQL
//! cluster on a free loopback port, one fresh database per test, and the example oversync
//! server running in process on a free `127.0.0.1` port.
//!
//! Starting a cluster takes seconds, so a test binary normally shares one:
//! [`PgCluster::shared`] starts it on first use and a watchdog process stops it
//! (`pg_ctl stop -m immediate`) and removes its directory when the test process exits,
//! however it exits. [`PgCluster::start`] gives an owned cluster that is stopped on drop.
//!
//! `initdb` and `postgres` refuse to run as root; when the tests run as root the cluster
//! runs as the `postgres` system user (`runuser -u postgres --`). Binaries are found on
//! `PATH`, then via `pg_config --bindir`.
//!
//! ```no_run
//! use oversync_testkit::TestServer;
//!
//! // Blocking: usable from plain #[test] functions and from async tests alike.
//! let server = TestServer::start().expect("start example server");
//! let base = server.base_url(); // e.g. "http://127.0.0.1:40123"
//! let token = server.token("alice"); // same JWT as POST /dummy-signin would return
//! // ... drive the server over HTTP with `Authorization: Bearer {token}` and
//! //     `Oversync-Source-ID: <uuid>` ...
//! drop(server); // stops the server; the shared cluster lives until the process exits
//! ```
//!
//! In async tests: `let server = TestServer::start_async().await?;`. To point tests at an
//! external server instead, read [`external_server_url`] (`OVERSYNC_TEST_SERVER_URL`).

use oversync_server::SyncService;
use oversync_server::demo::{self, DemoConfig, JwtAuth};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Harness failures.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// PostgreSQL binaries were not found.
    #[error(
        "PostgreSQL binaries not found (need initdb and pg_ctl on PATH or via pg_config --bindir; install the `postgresql` package)"
    )]
    BinariesNotFound,
    /// A command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// What ran.
        command: String,
        /// Exit status and output.
        detail: String,
    },
    /// Filesystem problem.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Database problem.
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The example server failed to start.
    #[error("example server: {0}")]
    Server(String),
}

/// Environment variable naming an external server for end-to-end tests.
pub const SERVER_URL_ENV: &str = "OVERSYNC_TEST_SERVER_URL";

/// `OVERSYNC_TEST_SERVER_URL`, when set and non-empty.
pub fn external_server_url() -> Option<String> {
    std::env::var(SERVER_URL_ENV)
        .ok()
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
}

/// A running private PostgreSQL cluster (user `postgres`, trust auth, loopback only).
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    data: PathBuf,
    port: u16,
    bindir: PathBuf,
    as_postgres: bool,
    owned: bool,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn find_bindir() -> Result<PathBuf, TestkitError> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|d| has_tools(d))
            .collect();
        dirs.sort();
        if let Some(dir) = dirs.pop() {
            return Ok(dir);
        }
    }
    Err(TestkitError::BinariesNotFound)
}

fn free_port() -> Result<u16, TestkitError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgCluster {
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<(), TestkitError> {
        let out = cmd.stdin(Stdio::null()).output()?;
        if out.status.success() {
            return Ok(());
        }
        Err(TestkitError::Command {
            command: what.to_owned(),
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// Starts a new cluster, stopped and deleted when dropped.
    pub fn start() -> Result<PgCluster, TestkitError> {
        let bindir = find_bindir()?;
        let as_postgres = running_as_root();
        let root = tempfile::Builder::new()
            .prefix("oversync-pg-")
            .tempdir()?
            .keep();
        let mut cluster = PgCluster {
            data: root.join("data"),
            root,
            port: 0,
            bindir,
            as_postgres,
            owned: true,
        };
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&cluster.root);
            cluster.run(chown, "chown")?;
        }
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&cluster.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        cluster.run(initdb, "initdb")?;
        let mut last_err = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            let options = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                cluster.port,
                cluster.root.display()
            );
            let mut pg_ctl = cluster.command("pg_ctl");
            pg_ctl
                .arg("-D")
                .arg(&cluster.data)
                .arg("-l")
                .arg(cluster.root.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]);
            match cluster.run(pg_ctl, "pg_ctl start") {
                Ok(()) => return Ok(cluster),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(TestkitError::BinariesNotFound))
    }

    /// The cluster shared by every test of this process, started on first use. A watchdog
    /// process stops it and removes its files once this process has exited.
    pub fn shared() -> Result<&'static PgCluster, TestkitError> {
        static SHARED: OnceLock<Result<PgCluster, String>> = OnceLock::new();
        let result = SHARED.get_or_init(|| {
            let mut cluster = PgCluster::start().map_err(|e| e.to_string())?;
            cluster.owned = false;
            cluster.spawn_watchdog().map_err(|e| e.to_string())?;
            Ok(cluster)
        });
        result.as_ref().map_err(|e| TestkitError::Server(e.clone()))
    }

    fn spawn_watchdog(&self) -> Result<(), TestkitError> {
        let pid = std::process::id();
        let pg_ctl = self.bindir.join("pg_ctl");
        let runner = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runner}'{}' -D '{}' stop -m immediate >/dev/null 2>&1; rm -rf '{}'",
            pg_ctl.display(),
            self.data.display(),
            self.root.display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(())
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of database `name` as user `postgres`.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a fresh empty database with a unique name.
    pub async fn create_database(&self) -> Result<TestDatabase, TestkitError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "oversync_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) =
            tokio_postgres::connect(&self.database_url("postgres"), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        drop(client);
        let _ = driver.await;
        Ok(TestDatabase {
            url: self.database_url(&name),
            name,
        })
    }

    /// [`PgCluster::create_database`] for synchronous callers (must not be called from
    /// inside a tokio runtime).
    pub fn create_database_blocking(&self) -> Result<TestDatabase, TestkitError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.create_database())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A database created for one test.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    /// Database name.
    pub name: String,
    /// Connection URL.
    pub url: String,
}

/// The example server running in process on a background thread with its own runtime.
pub struct TestServer {
    base_url: String,
    database: TestDatabase,
    auth: JwtAuth,
    service: Arc<SyncService>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("base_url", &self.base_url)
            .field("database", &self.database.name)
            .finish_non_exhaustive()
    }
}

type Started = Result<(String, TestDatabase, JwtAuth, Arc<SyncService>), TestkitError>;

impl TestServer {
    /// Starts the example server on a fresh database of the shared cluster.
    pub fn start() -> Result<TestServer, TestkitError> {
        Self::start_with(|_| {})
    }

    /// Like [`TestServer::start`], letting the test adjust the configuration (limits,
    /// watch heartbeat, JWT secret) before the server starts.
    pub fn start_with(
        configure: impl FnOnce(&mut DemoConfig) + Send + 'static,
    ) -> Result<TestServer, TestkitError> {
        let cluster = PgCluster::shared()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Started>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("oversync-test-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = async {
                        let database = cluster.create_database().await?;
                        let mut config = DemoConfig::new(&database.url);
                        configure(&mut config);
                        let secret = config.jwt_secret.clone();
                        let app = demo::build_app(config)
                            .await
                            .map_err(|e| TestkitError::Server(e.to_string()))?;
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let url = format!("http://{}", listener.local_addr()?);
                        Ok::<_, TestkitError>((url, database, secret, app, listener))
                    }
                    .await;
                    match started {
                        Ok((url, database, secret, app, listener)) => {
                            let service = app.service.clone();
                            let _ = ready_tx.send(Ok((
                                url,
                                database,
                                JwtAuth::new(&secret),
                                service.clone(),
                            )));
                            let (stop_all, mut stopped) = tokio::sync::watch::channel(false);
                            let mut graceful = stopped.clone();
                            let serve = demo::serve(listener, app.router, async move {
                                let _ = graceful.wait_for(|s| *s).await;
                            });
                            let deadline = async move {
                                let _ = stopped.wait_for(|s| *s).await;
                                // Open SSE streams would keep a graceful shutdown waiting.
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            };
                            tokio::spawn(async move {
                                let _ = stop_rx.await;
                                let _ = stop_all.send(true);
                            });
                            tokio::select! {
                                _ = serve => {}
                                _ = deadline => {}
                            }
                            service.shutdown();
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (base_url, database, auth, service) = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|e| TestkitError::Server(format!("server did not start: {e}")))??;
        Ok(TestServer {
            base_url,
            database,
            auth,
            service,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// [`TestServer::start`] from async code (runs the blocking start off the runtime).
    pub async fn start_async() -> Result<TestServer, TestkitError> {
        tokio::task::spawn_blocking(TestServer::start)
            .await
            .map_err(|e| TestkitError::Server(e.to_string()))?
    }

    /// [`TestServer::start_with`] from async code.
    pub async fn start_async_with(
        configure: impl FnOnce(&mut DemoConfig) + Send + 'static,
    ) -> Result<TestServer, TestkitError> {
        tokio::task::spawn_blocking(move || TestServer::start_with(configure))
            .await
            .map_err(|e| TestkitError::Server(e.to_string()))?
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The server's database.
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// A bearer token for `user`, as `POST /dummy-signin` would issue.
    pub fn token(&self, user: &str) -> String {
        self.auth
            .issue(user, demo::TOKEN_TTL)
            .unwrap_or_else(|e| panic!("signing a test token failed: {e}"))
    }

    /// The running sync service (e.g. for [`SyncService::begin_server_write`]).
    pub fn service(&self) -> &Arc<SyncService> {
        &self.service
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Schema of the test-only value-kinds table, apart from the reference's `business` schema.
pub const VALUE_KINDS_SCHEMA: &str = "value_kinds";

/// A configuration hook for [`TestServer::start_with`] that adds the test-only table
/// `value_kinds.value_rows`: one column per server type a synced Diesel value lands in
/// (TEXT, INTEGER, BIGINT, DOUBLE PRECISION, BOOLEAN, BYTEA, TIMESTAMP, TIMESTAMPTZ, DATE,
/// TIME, UUID), plus a boolean model field on a BIGINT column and a naive timestamp on a
/// TIMESTAMPTZ column. Used to check that values keep their local form through a sync.
pub fn with_value_kinds_table(config: &mut DemoConfig) {
    config.extra_schema_sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.value_rows (
    _sync_scope_id TEXT NOT NULL,
    id UUID NOT NULL,
    label TEXT NOT NULL,
    small INTEGER NULL,
    big BIGINT NULL,
    ratio DOUBLE PRECISION NULL,
    flag BOOLEAN NULL,
    flag_int BIGINT NULL,
    data BYTEA NULL,
    at_naive TIMESTAMP NULL,
    at_tz TIMESTAMPTZ NULL,
    naive_in_tz TIMESTAMPTZ NULL,
    day DATE NULL,
    clock TIME NULL,
    ref_text UUID NULL,
    ref_blob UUID NULL,
    PRIMARY KEY (_sync_scope_id, id)
);",
        s = VALUE_KINDS_SCHEMA
    );
    config.extra_tables = vec![oversync_server::TableSpec::new(
        VALUE_KINDS_SCHEMA,
        "value_rows",
        "id",
    )];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_cluster_serves_databases_and_is_removed_on_drop() {
        let cluster = PgCluster::start().expect("cluster starts");
        let root = cluster.root.clone();
        let port = cluster.port();
        let a = cluster.create_database_blocking().expect("database a");
        let b = cluster.create_database_blocking().expect("database b");
        assert_ne!(a.name, b.name);
        assert!(
            a.url
                .starts_with(&format!("postgres://postgres@127.0.0.1:{port}/"))
        );
        assert!(root.join("data").is_dir());
        drop(cluster);
        assert!(!root.exists(), "temp dir removed");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "server stopped"
        );
    }
}
