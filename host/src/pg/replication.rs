//! A logical replication session on the same settings as every other
//! connection: hosts, ports, user, password, database and `sslmode` as
//! libpq reads them. The session itself is `pgwire-replication`'s (SCRAM,
//! MD5, TLS on rustls); this module only translates the settings.

use super::tls::{root_cert_path, SslMode};
use super::DatabaseSettings;
use crate::settings::ConfigError;
use pgwire_replication::{Lsn, ReplicationConfig, TlsConfig};
use tokio_postgres::config::Host;

/// What a replication session reads: a slot, through `pgoutput`, with the
/// publication it names, from a position.
#[derive(Clone, Debug)]
pub(crate) struct SlotRead<'a> {
    pub(crate) slot: &'a str,
    pub(crate) publication: &'a str,
    pub(crate) from: Lsn,
    /// Events the session holds before the reader takes them.
    pub(crate) buffer_events: usize,
}

impl DatabaseSettings {
    /// One replication session's settings per configured host, in order:
    /// the caller tries each as the driver does.
    pub(crate) fn replication(
        &self,
        read: &SlotRead<'_>,
    ) -> Result<Vec<ReplicationConfig>, ConfigError> {
        super::tls::ring_as_process_default();
        let pg = &self.pg;
        let user = pg.get_user().unwrap_or("postgres");
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = pg.get_dbname().unwrap_or(user);
        let ports = pg.get_ports();
        let tls = self.replication_tls()?;
        // Row changes' values written as notify_row writes them: time
        // stamps in the ISO style (which the relay turns into to_jsonb's
        // ISO 8601 itself), names (regclass and its kind) qualified as
        // under notify_row's search path. After the user's own options.
        let ours = "-c datestyle=ISO,MDY -c search_path=pg_catalog,pg_temp";
        let options = match pg.get_options() {
            Some(own) => format!("{own} {ours}"),
            None => ours.to_owned(),
        };
        let configs = pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                let config = match host {
                    Host::Tcp(name) => ReplicationConfig::new(
                        name.clone(),
                        user,
                        password.clone(),
                        database,
                        read.slot,
                        read.publication,
                    )
                    .with_port(port)
                    .with_tls(tls.clone()),
                    // As in libpq, a socket never uses TLS.
                    Host::Unix(dir) => ReplicationConfig::unix(
                        dir.to_string_lossy(),
                        port,
                        user,
                        password.clone(),
                        database,
                        read.slot,
                        read.publication,
                    ),
                };
                config
                    .with_start_lsn(read.from)
                    .with_buffer_size(read.buffer_events)
                    .with_application_name("pgnotifier relay")
                    .with_options(options.clone())
                    // The slot's confirmed position follows the relay within
                    // a second; what it relayed is in PostgreSQL already.
                    .with_status_interval(std::time::Duration::from_secs(1))
            })
            .collect();
        Ok(configs)
    }

    fn replication_tls(&self) -> Result<TlsConfig, ConfigError> {
        let root = |mode| root_cert_path(mode, self.root_cert.as_deref()).map(Some);
        Ok(match self.ssl_mode {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::disabled()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig::verify_ca(root(SslMode::VerifyCa)?),
            SslMode::VerifyFull => TlsConfig::verify_full(root(SslMode::VerifyFull)?),
        })
    }
}
