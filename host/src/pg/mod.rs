//! The database: where and how to connect to PostgreSQL.
//!
//! Settings follow libpq: a URL (flag, `DATABASE_URL` or the config file)
//! wins, and the `PG*` environment variables fill in what it leaves out.
//! Passwords never leave this module except inside the connection config;
//! everything printable goes through [`DatabaseSettings::redacted`].
//! [`connection`] keeps a connection up: reconnecting, and driving it.

pub(crate) mod advisory;
pub mod connection;
pub(crate) mod replication;
pub mod tls;

use crate::settings::ConfigError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tls::{Connector, DbStream, SslMode};
use tokio_postgres::config::Host;
use tokio_postgres::Socket;

/// Where and how to connect to PostgreSQL.
#[derive(Clone)]
pub struct DatabaseSettings {
    pg: tokio_postgres::Config,
    ssl_mode: SslMode,
    /// `sslrootcert`, for connections the driver does not make (replication).
    root_cert: Option<PathBuf>,
    tls: Connector,
}

impl DatabaseSettings {
    /// From a URL or key=value string, with the `PG*` variables filling gaps.
    /// `sslmode` takes libpq's five values, and `sslrootcert` names the CA file.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let (rest, tls) = take_tls_params(url);
        // The parser's message never repeats the input, so no password leaks here.
        let pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            ConfigError::invalid("database URL", e.to_string())
        })?;
        Self::completed(pg, tls)
    }

    /// From the `PG*` environment variables alone, like `psql` with no arguments.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::completed(tokio_postgres::Config::new(), TlsParams::default())
    }

    /// `url` if given, else `DATABASE_URL`, else the `PG*` variables.
    pub fn resolve(url: Option<&str>) -> Result<Self, ConfigError> {
        match url {
            Some(url) => Self::from_url(url),
            None => match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => Self::from_url(&url),
                _ => Self::from_env(),
            },
        }
    }

    fn completed(mut pg: tokio_postgres::Config, tls: TlsParams) -> Result<Self, ConfigError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let ssl_mode = match tls.mode.or_else(|| env("PGSSLMODE")) {
            None => SslMode::default(),
            Some(value) => SslMode::parse(&value).ok_or_else(|| {
                ConfigError::invalid(
                    "sslmode",
                    format!("{value:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"),
                )
            })?,
        };
        let root_cert = tls
            .root_cert
            .or_else(|| env("PGSSLROOTCERT"))
            .map(PathBuf::from);
        let tls = tls::connector(ssl_mode, root_cert.as_deref())?;
        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            match env("PGHOST") {
                Some(hosts) => hosts.split(',').for_each(|h| {
                    pg.host(h.trim());
                }),
                None => match default_socket_dir(default_port(&pg)) {
                    Some(dir) => {
                        pg.host_path(dir);
                    }
                    None => {
                        pg.host("localhost");
                    }
                },
            }
        }
        pg.ssl_mode(negotiation(ssl_mode, pg.get_hosts())?);
        if pg.get_ports().is_empty() {
            if let Some(port) = env("PGPORT") {
                let port = port.parse::<u16>().map_err(|_| {
                    ConfigError::invalid("PGPORT", format!("{port:?} is not a port number"))
                })?;
                pg.port(port);
            }
        }
        if pg.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".to_owned());
            pg.user(&user);
        }
        if pg.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                pg.password(password);
            }
        }
        if pg.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                pg.dbname(&db);
            }
        }
        if pg.get_application_name().is_none() {
            pg.application_name("pgnotifier");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        // A peer that vanished without a FIN is noticed in about a minute
        // even while idle; the heartbeat bounds it more tightly.
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        Ok(Self {
            pg,
            ssl_mode,
            root_cert,
            tls,
        })
    }

    /// The settings as a URL without the password, for logs and messages.
    pub fn redacted(&self) -> String {
        let user = self.pg.get_user().unwrap_or("");
        let ports = self.pg.get_ports();
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let name = match host {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(p) => format!("[{}]", p.display()),
                };
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{name}:{port}"),
                    None => name,
                }
            })
            .collect();
        let db = self.pg.get_dbname().unwrap_or(user);
        let password = if self.pg.get_password().is_some() {
            ":***"
        } else {
            ""
        };
        let ssl = match self.ssl_mode {
            SslMode::Prefer => String::new(),
            mode => format!("?sslmode={}", mode.as_str()),
        };
        format!("postgres://{user}{password}@{}/{db}{ssl}", hosts.join(","))
    }

    /// The driver's settings, for the capability pool.
    pub(crate) fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    pub(crate) fn tls_connector(&self) -> Connector {
        self.tls.clone()
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Whether any configured host accepts a TCP (or Unix socket) connection
    /// on its port. No PostgreSQL protocol is spoken.
    pub(crate) async fn accepts_connections(&self) -> bool {
        let ports = self.pg.get_ports();
        for (i, host) in self.pg.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let attempt = async {
                match host {
                    Host::Tcp(name) => tokio::net::TcpStream::connect((name.as_str(), port))
                        .await
                        .is_ok(),
                    Host::Unix(dir) => {
                        tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                            .await
                            .is_ok()
                    }
                }
            };
            if let Ok(true) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return true;
            }
        }
        false
    }

    /// Open a connection with these settings, TLS as `sslmode` says.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<Socket, DbStream>,
        ),
        tokio_postgres::Error,
    > {
        self.pg.connect(self.tls.clone()).await
    }
}

/// libpq's default: the socket directory where a server listens on `port`
/// (Debian's, then upstream's `/tmp`), else Debian's if it exists.
fn default_socket_dir(port: u16) -> Option<&'static Path> {
    let dirs = ["/var/run/postgresql", "/tmp"].map(Path::new);
    dirs.into_iter()
        .find(|dir| dir.join(format!(".s.PGSQL.{port}")).exists())
        .or_else(|| {
            dirs.into_iter()
                .find(|dir| dir.ends_with("postgresql") && dir.is_dir())
        })
}

/// The port a lone default host would use: the URL's, `PGPORT`, or 5432.
fn default_port(pg: &tokio_postgres::Config) -> u16 {
    pg.get_ports()
        .first()
        .copied()
        .or_else(|| std::env::var("PGPORT").ok()?.parse().ok())
        .unwrap_or(5432)
}

/// What tokio-postgres negotiates for these hosts. A Unix socket never uses
/// TLS (as in libpq), so a list of sockets alone negotiates none. One
/// `sslmode` covers every host of a list, so a list that mixes sockets with
/// TCP hosts cannot also require TLS of the TCP ones.
fn negotiation(
    mode: SslMode,
    hosts: &[Host],
) -> Result<tokio_postgres::config::SslMode, ConfigError> {
    let sockets = hosts.iter().filter(|h| matches!(h, Host::Unix(_))).count();
    if sockets > 0 && sockets == hosts.len() {
        return Ok(tokio_postgres::config::SslMode::Disable);
    }
    let negotiated = mode.negotiation();
    if sockets > 0 && negotiated == tokio_postgres::config::SslMode::Require {
        return Err(ConfigError::invalid(
            "sslmode",
            format!(
                "sslmode={} cannot apply to a host list that mixes Unix socket directories with TCP hosts: sockets never use TLS; list only one kind",
                mode.as_str()
            ),
        ));
    }
    Ok(negotiated)
}

/// `sslmode` and `sslrootcert` as written in a URL, which tokio-postgres
/// does not take (it knows neither `verify-*` nor `sslrootcert`).
#[derive(Default)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Split `sslmode` and `sslrootcert` off a URL or key=value string.
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut tls = TlsParams::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            tls.mode = Some(value);
            true
        }
        "sslrootcert" => {
            tls.root_cert = Some(value);
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(key, percent_decode(value))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter(|word| match word.split_once('=') {
                Some((key, value)) => !take(key, value.trim_matches('\'').to_owned()),
                None => true,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, tls)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A database error as PostgreSQL words it, without the driver's prefix.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_url_hides_the_password() {
        let db = DatabaseSettings::from_url("postgres://alice:s3cret@db.example:6543/app").unwrap();
        let shown = db.redacted();
        assert_eq!(shown, "postgres://alice:***@db.example:6543/app");
        assert!(!format!("{db:?}").contains("s3cret"));
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_from_urls_in_both_forms() {
        let (rest, tls) = take_tls_params(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let (rest, tls) = take_tls_params("host=h sslmode=require dbname=db");
        assert_eq!(rest, "host=h dbname=db");
        assert_eq!(tls.mode.as_deref(), Some("require"));
        let db = DatabaseSettings::from_url("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(db.ssl_mode(), SslMode::Require);
        assert_eq!(db.redacted(), "postgres://u@h:5432/db?sslmode=require");
    }

    #[test]
    fn a_bad_sslmode_or_a_missing_root_certificate_is_a_clear_error() {
        let err = DatabaseSettings::from_url("postgres://u@h/db?sslmode=sure").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sslmode: \"sure\" is not one of"),
            "{err}"
        );
        let err = DatabaseSettings::from_url(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("sslrootcert /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn bad_url_is_a_clear_error_without_the_input() {
        let err = DatabaseSettings::from_url("postgres://bob:pw@host:notaport/db").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("database URL:"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }
}
