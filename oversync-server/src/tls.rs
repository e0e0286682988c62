//! TLS to PostgreSQL with rustls: `sslmode` of the database URL (`disable`, `prefer`,
//! `require`, `verify-ca`, `verify-full`) and a CA file for servers whose certificate is not signed by
//! a public root (managed databases usually hand out such a CA bundle).
//!
//! * `disable`: plain TCP.
//! * `prefer` (tokio-postgres' default): TLS when the server offers it, without checking
//!   the certificate; plain otherwise.
//! * `require`: TLS or fail, without checking the certificate (as libpq without a root
//!   certificate).
//! * `verify-ca`: TLS, the chain checked against the CA file (or the public web roots), the
//!   host name not checked (for a database reached by an address its certificate does not
//!   name, such as a private IP behind a managed service's CA).
//! * `verify-full`: TLS, the chain checked as for `verify-ca` and the certificate checked to
//!   name the host of the URL.
//!
//! `allow` (plain first, TLS only when the server insists) is refused: tokio-postgres cannot
//! fall back that way, and `prefer` is the safer choice.
//!
//! `sslrootcert=FILE` in the URL is accepted as the CA file too.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// Why a database URL or its TLS settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `sslmode` has a value this server does not implement.
    #[error(
        "sslmode={0} is not supported (use disable, prefer, require, verify-ca or verify-full)"
    )]
    UnsupportedMode(String),
    /// The URL does not parse.
    #[error("not a PostgreSQL URL (postgres://user@host:port/db): {0}")]
    Url(String),
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// How the connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if offered, unverified.
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, chain verified, host name not.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

/// A parsed database URL: the tokio-postgres configuration and the matching connector.
#[derive(Clone, Debug)]
pub struct Database {
    /// Connection settings (`sslmode` mapped to what tokio-postgres knows).
    pub config: tokio_postgres::Config,
    /// TLS mode asked for.
    pub ssl_mode: SslMode,
    /// The connector to pass to every connection.
    pub connector: Connector,
}

/// Splits `sslmode` and `sslrootcert` off the query string (tokio-postgres knows neither
/// `verify-ca`, `verify-full` nor `sslrootcert`).
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None, None);
    };
    let (mut mode, mut root) = (None, None);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some(("sslmode", v)) => {
                mode = Some(v.to_owned());
                false
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.to_owned());
                false
            }
            _ => !kv.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, mode, root)
}

impl Database {
    /// Parses `url`, honouring its `sslmode`; `ca_file` (or the URL's `sslrootcert`) holds
    /// the PEM certificates `verify-ca` and `verify-full` trust.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Database, TlsError> {
        let (plain_url, mode, root) = take_tls_params(url);
        let mut config = tokio_postgres::Config::from_str(&plain_url)
            .map_err(|e| TlsError::Url(e.to_string()))?;
        let ssl_mode = match mode.as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => return Err(TlsError::UnsupportedMode(other.to_owned())),
        };
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let ca = ca_file.map(Path::to_path_buf).or(root.map(PathBuf::from));
        let connector = match ssl_mode {
            SslMode::Disable => Connector::none(),
            SslMode::Prefer | SslMode::Require => Connector::unverified()?,
            SslMode::VerifyCa => Connector::verified(ca.as_deref(), HostCheck::Skip)?,
            SslMode::VerifyFull => Connector::verified(ca.as_deref(), HostCheck::Verify)?,
        };
        Ok(Database {
            config,
            ssl_mode,
            connector,
        })
    }
}

/// A rustls connector for tokio-postgres (cheap to clone).
#[derive(Clone)]
pub struct Connector {
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.config.is_some())
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Connector {
    /// No TLS, for `sslmode=disable` (with any other mode the handshake would fail).
    pub fn none() -> Connector {
        Connector { config: None }
    }

    /// What a configuration built without [`Database::parse`] gets: nothing for
    /// `disable`, unverified TLS otherwise (tokio-postgres knows no verifying mode).
    pub fn for_config(config: &tokio_postgres::Config) -> Connector {
        match config.get_ssl_mode() {
            PgSslMode::Disable => Connector::none(),
            _ => Connector::unverified().unwrap_or_else(|_| Connector::none()),
        }
    }

    /// TLS without certificate checks (`prefer`, `require`).
    pub fn unverified() -> Result<Connector, TlsError> {
        let provider = provider();
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(Connector {
            config: Some(Arc::new(config)),
        })
    }

    /// TLS checking the chain against `ca_file` (PEM), or the public web roots, and the host
    /// name as `host` says.
    pub fn verified(ca_file: Option<&Path>, host: HostCheck) -> Result<Connector, TlsError> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let ca_error = |reason: String| TlsError::CaFile {
                    path: path.to_path_buf(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| ca_error(format!("not PEM certificates: {e}")))?;
                if certs.is_empty() {
                    return Err(ca_error("holds no PEM certificate".into()));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| ca_error(format!("unusable certificate: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let config = match host {
            HostCheck::Verify => builder.with_root_certificates(roots),
            HostCheck::Skip => {
                let chain =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
            }
        }
        .with_no_client_auth();
        Ok(Connector {
            config: Some(Arc::new(config)),
        })
    }
}

/// Whether a verified connection also checks that the certificate names the URL's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCheck {
    /// `verify-full`.
    Verify,
    /// `verify-ca`.
    Skip,
}

/// `verify-ca`: the full web-PKI check, with only a host-name mismatch forgiven. webpki
/// checks the chain before the name, so a name error means the chain was accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` and `prefer` encrypt without authenticating the server, as libpq does without
/// a root certificate; signatures are still checked so the handshake is well-formed.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, io::Error> {
        let config = self.config.clone();
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("host {domain:?}: {e}"))
        })?;
        Ok(Connect { config, name })
    }
}

/// One pending TLS handshake.
pub struct Connect {
    config: Option<Arc<ClientConfig>>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                io::Error::other("TLS was attempted with sslmode=disable's connector")
            })?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(TlsStream(stream))
        })
    }
}

/// An established TLS connection.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding is optional; without it SCRAM still authenticates.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_split_off_and_modes_parsed() {
        let (url, mode, root) = take_tls_params(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=/ca.pem",
        );
        assert_eq!(url, "postgres://u@h/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        assert_eq!(
            Database::parse("postgres://u@h/db", None).unwrap().ssl_mode,
            SslMode::Prefer
        );
        assert_eq!(
            Database::parse("postgres://u@h/db?sslmode=disable", None)
                .unwrap()
                .ssl_mode,
            SslMode::Disable
        );
        assert_eq!(
            Database::parse("postgres://u@h/db?sslmode=verify-ca", None)
                .unwrap()
                .ssl_mode,
            SslMode::VerifyCa
        );
        assert!(matches!(
            Database::parse("postgres://u@h/db?sslmode=allow", None),
            Err(TlsError::UnsupportedMode(m)) if m == "allow"
        ));
        assert!(matches!(
            Database::parse(
                "postgres://u@h/db?sslmode=verify-full",
                Some(Path::new("/nonexistent.pem"))
            ),
            Err(TlsError::CaFile { .. })
        ));
    }
}
