//! TLS for the database connection, on rustls, with libpq's `sslmode` meaning:
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | no |
//! | `require` | always | no |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert`, and the host name |
//!
//! `sslrootcert` is a PEM file; libpq's default, `~/.postgresql/root.crt`,
//! is used when it is not set.
//!
//! As in libpq, a Unix socket never uses TLS, whatever `sslmode` says: the
//! socket's permissions are its protection.

use futures_util::future::{ready, Either, Ready};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::settings::ConfigError;

/// A TLS setting that cannot be used; `sslmode` is the setting at fault.
fn refused(reason: String) -> ConfigError {
    ConfigError::invalid("sslmode", reason)
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates; the checks are ours.
    pub(crate) fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Make ring the process's rustls provider, once. Libraries that build
/// their TLS config from the process default (wasi-http's client, the
/// replication client) find two providers compiled in, and would refuse to
/// pick one; every connection of ours names ring itself.
pub(crate) fn ring_as_process_default() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS connector for `mode`, or why it cannot be built (naming the setting).
pub(crate) fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<Connector, ConfigError> {
    if mode == SslMode::Disable {
        return Ok(Connector(None));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(AnyCertificate {
            provider: provider.clone(),
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(root_store(mode, root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| refused(format!("sslrootcert: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refused(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Connector(Some(MakeRustlsConnect::new(config))))
}

type Rustls = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

/// The stream of a database connection: TCP or Unix socket, maybe TLS.
pub(crate) type DbStream = <Rustls as TlsConnect<Socket>>::Stream;

/// Makes each connection's TLS: rustls for a TCP host, none for a Unix
/// socket (tokio-postgres names it with an empty host name) or with
/// `sslmode=disable`.
#[derive(Clone)]
pub(crate) struct Connector(Option<MakeRustlsConnect>);

impl MakeTlsConnect<Socket> for Connector {
    type Stream = DbStream;
    type TlsConnect = HostTls;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<HostTls, Self::Error> {
        match &mut self.0 {
            Some(rustls) if !host.is_empty() => {
                MakeTlsConnect::<Socket>::make_tls_connect(rustls, host).map(HostTls::Rustls)
            }
            _ => Ok(HostTls::Plain),
        }
    }
}

/// One connection attempt's TLS.
pub(crate) enum HostTls {
    Rustls(Rustls),
    /// Never asked to connect: a socket's server declines TLS, and
    /// `sslmode=disable` never asks for it.
    Plain,
}

impl TlsConnect<Socket> for HostTls {
    type Stream = DbStream;
    type Error = std::io::Error;
    type Future = Either<<Rustls as TlsConnect<Socket>>::Future, Ready<std::io::Result<DbStream>>>;

    fn connect(self, stream: Socket) -> Self::Future {
        match self {
            HostTls::Rustls(tls) => Either::Left(tls.connect(stream)),
            HostTls::Plain => Either::Right(ready(Err(std::io::Error::other(
                "TLS is not used on a Unix socket",
            )))),
        }
    }
}

/// The CA file `verify-ca` and `verify-full` check against: `sslrootcert`,
/// else libpq's default, `~/.postgresql/root.crt`.
pub(crate) fn root_cert_path(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<PathBuf, ConfigError> {
    Ok(match root_cert {
        Some(path) => path.to_owned(),
        None => std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".postgresql/root.crt"))
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                refused(format!(
                    "sslmode={} needs the CA certificate to check the server against: set sslrootcert (or PGSSLROOTCERT) to a PEM file; ~/.postgresql/root.crt does not exist",
                    mode.as_str()
                ))
            })?,
    })
}

fn root_store(mode: SslMode, root_cert: Option<&Path>) -> Result<RootCertStore, ConfigError> {
    let path = root_cert_path(mode, root_cert)?;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| refused(format!("sslrootcert {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| refused(format!("sslrootcert {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| refused(format!("sslrootcert {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(refused(format!(
            "sslrootcert {}: no certificate in the file",
            path.display()
        )));
    }
    Ok(roots)
}

/// `prefer` and `require`: encrypt, but take whatever certificate the server
/// shows (the handshake signatures are still checked).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
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
