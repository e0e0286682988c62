//! TLS to PostgreSQL: a private cluster serving a certificate signed by a CA made at test
//! time with `openssl`; every `sslmode` behaves as documented (`verify-ca` forgives only a
//! host name the certificate does not carry), and the whole service (pool and watch
//! listener) runs over verified TLS.

mod common;

use common::*;
use oversync_server::demo::{self, DemoConfig};
use oversync_server::tls::Database;
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it, plus an unrelated
/// CA: `(ca.crt, other-ca.crt)`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-subj",
                &format!("/CN=oversync test {ca}"),
            ],
        );
    }
    server_certificate(dir, "server", "DNS:localhost,IP:127.0.0.1");
    (dir.join("ca.crt"), dir.join("other-ca.crt"))
}

/// `<stem>.crt` and `<stem>.key`: a server certificate for `san`, signed by `ca.crt`.
fn server_certificate(dir: &Path, stem: &str, san: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.csr"),
            "-subj",
            "/CN=oversync test server",
        ],
    );
    std::fs::write(
        dir.join(format!("{stem}.ext")),
        format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{stem}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{stem}.crt"),
            "-extfile",
            &format!("{stem}.ext"),
        ],
    );
}

async fn plain_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Copies `<stem>.crt`/`.key` into the data directory as the files `ssl_cert_file` and
/// `ssl_key_file` name.
fn install_certificate(data: &str, dir: &Path, stem: &str) {
    for ext in ["crt", "key"] {
        let to = Path::new(data).join(format!("server.{ext}"));
        std::fs::copy(dir.join(format!("{stem}.{ext}")), &to).unwrap();
        // The server refuses a key readable by others; as root the cluster runs as postgres.
        Command::new("chmod").arg("600").arg(&to).status().unwrap();
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&to)
            .status();
    }
}

/// Turns TLS on in a running cluster: certificate files in its data directory, `ssl = on`,
/// reload.
async fn enable_ssl(url: &str, dir: &Path) {
    let client = plain_client(url).await;
    let data: String = client
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    install_certificate(&data, dir, "server");
    // One statement each: ALTER SYSTEM refuses to run in a multi-statement batch.
    for sql in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    // The reload is asynchronous: wait until the postmaster reports ssl on.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let fresh = plain_client(url).await;
        let on: String = fresh.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ssl never turned on"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Connects as `url` says; `Ok(ssl)` tells whether the session is encrypted.
async fn connect(url: &str, ca: Option<&Path>) -> Result<bool, String> {
    let db = Database::parse(url, ca).map_err(|e| e.to_string())?;
    let (client, conn) = db
        .config
        .connect(db.connector)
        .await
        .map_err(|e| format!("{e:?}"))?;
    tokio::spawn(conn);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    Ok(ssl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_server_with_a_private_ca() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = certificates(dir.path());
    let cluster = tokio::task::spawn_blocking(oversync_testkit::PgCluster::start)
        .await
        .unwrap()
        .expect("private cluster");
    let db = cluster.create_database().await.unwrap();
    enable_ssl(&db.url, dir.path()).await;
    let with = |mode: &str| format!("{}?sslmode={mode}", db.url);

    assert_eq!(connect(&with("disable"), None).await, Ok(false));
    assert_eq!(
        connect(&db.url, None).await,
        Ok(true),
        "prefer takes TLS when offered"
    );
    assert_eq!(connect(&with("prefer"), None).await, Ok(true));
    assert_eq!(connect(&with("require"), None).await, Ok(true));
    assert_eq!(connect(&with("verify-full"), Some(&ca)).await, Ok(true));
    let url_ca = format!("{}&sslrootcert={}", with("verify-full"), ca.display());
    assert_eq!(
        connect(&url_ca, None).await,
        Ok(true),
        "sslrootcert in the URL"
    );
    let wrong = connect(&with("verify-full"), Some(&other_ca)).await;
    assert!(
        matches!(&wrong, Err(e) if e.contains("certificate") || e.contains("Certificate")),
        "a certificate from another CA is refused: {wrong:?}"
    );
    let public = connect(&with("verify-full"), None).await;
    assert!(
        public.is_err(),
        "public roots do not vouch for a private CA: {public:?}"
    );

    // The whole service over verified TLS: pool and watch listener.
    let app = demo::build_app(DemoConfig::new(&url_ca))
        .await
        .expect("service over TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let service = app.service.clone();
    let auth = app.auth.clone();
    let serving = tokio::spawn(demo::serve(listener, app.router, std::future::pending()));
    let api = Api {
        http: reqwest::Client::new(),
        base,
        token: Some(auth.issue("alice", demo::TOKEN_TTL).unwrap()),
        source: Some(new_id()),
    };
    api.connect(false).await;
    let mut watch = api
        .request(reqwest::Method::GET, "/sync/watch?after_bundle_seq=0")
        .send()
        .await
        .unwrap();
    let writer = api.with_source(&new_id());
    let (s, b) = writer.push(1, vec![user_row(&new_id(), "tls")]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut buf = String::new();
    read_until(&mut watch, &mut buf, "\"bundle_seq\":1").await;
    let plain = plain_client(&with("disable")).await;
    let unencrypted: i64 = plain
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = current_database() AND NOT s.ssl AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unencrypted, 0, "every service connection is encrypted");
    serving.abort();
    service.shutdown();

    // A certificate from the right CA that names another host: verify-full refuses it,
    // verify-ca accepts it (and still refuses another CA). The server re-reads its
    // certificate files on reload.
    server_certificate(dir.path(), "elsewhere", "DNS:db.example.invalid");
    let data: String = plain
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    install_certificate(&data, dir.path(), "elsewhere");
    plain
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match connect(&with("verify-full"), Some(&ca)).await {
            Err(e) if e.contains("NotValidForName") => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the reloaded certificate never took effect: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(connect(&with("verify-ca"), Some(&ca)).await, Ok(true));
    let wrong = connect(&with("verify-ca"), Some(&other_ca)).await;
    assert!(
        matches!(&wrong, Err(e) if e.contains("UnknownIssuer")),
        "verify-ca still checks the chain: {wrong:?}"
    );
    drop(cluster);
}
