//! Finding a PostgreSQL to talk to, for the tests and `pgnotifier demo`.
//!
//! In order: `PGNOTIFIER_TEST_DATABASE_URL`; then the usual local server at
//! `postgres://postgres@127.0.0.1:5432/postgres`; then a throwaway cluster
//! started from the installed server binaries in a temp dir on a free port,
//! as an unprivileged user when running as root. The cluster is stopped and
//! removed when its [`Cluster`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The environment variable that names a database for tests.
pub const TEST_DATABASE_URL_VAR: &str = "PGNOTIFIER_TEST_DATABASE_URL";
/// The local server tried second.
pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Where `initdb` and `pg_ctl` are, if not on PATH or under /usr/lib/postgresql.
pub const BIN_DIR_VAR: &str = "PGNOTIFIER_PG_BIN_DIR";

/// Why no PostgreSQL could be found or started.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error("{TEST_DATABASE_URL_VAR} is set, but that database is unreachable: {0}")]
    EnvUnreachable(ProbeError),
    #[error(
        "no PostgreSQL reachable at 127.0.0.1:5432, and no server binaries (initdb, pg_ctl) in {BIN_DIR_VAR}, on PATH or under /usr/lib/postgresql/*/bin to start one; install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set {TEST_DATABASE_URL_VAR}"
    )]
    NoBinaries,
    #[error("starting a throwaway PostgreSQL failed: {0}")]
    Start(String),
}

/// A database to use: one that was already there, or one we started.
pub enum LocalPostgres {
    Existing(String),
    Throwaway(Cluster),
}

impl LocalPostgres {
    pub fn url(&self) -> &str {
        match self {
            LocalPostgres::Existing(url) => url,
            LocalPostgres::Throwaway(cluster) => &cluster.url,
        }
    }
}

/// Find or start a PostgreSQL, as the module documentation says.
pub fn discover() -> Result<LocalPostgres, LocalPgError> {
    if let Ok(url) = std::env::var(TEST_DATABASE_URL_VAR) {
        return match probe(&url) {
            Ok(()) => Ok(LocalPostgres::Existing(url)),
            Err(e) => Err(LocalPgError::EnvUnreachable(e)),
        };
    }
    if probe(LOCAL_URL).is_ok() {
        return Ok(LocalPostgres::Existing(LOCAL_URL.to_owned()));
    }
    Cluster::start().map(LocalPostgres::Throwaway)
}

/// Connect and run `select 1`, on a private runtime so any caller can use it.
pub fn probe(url: &str) -> Result<(), ProbeError> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProbeError::Runtime)?;
        runtime.block_on(async {
            // The host's own connection path: sockets, libpq forms and sslmode as `run` has them.
            let database = pgnotifier::DatabaseSettings::from_url(&url)?;
            let connecting = tokio::time::timeout(Duration::from_secs(3), database.connect());
            let (client, connection) = connecting.await.map_err(|_| ProbeError::NoAnswer)??;
            tokio::spawn(connection);
            client.simple_query("select 1").await?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| ProbeError::Panicked)?
}

/// Why [`probe`] found no usable database.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Config(#[from] pgnotifier::ConfigError),
    #[error("no answer within 3 s")]
    NoAnswer,
    /// Printed with its causes: the driver keeps the useful part there.
    #[error("{}", pgnotifier::printable::with_causes(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot start a runtime to probe with: {0}")]
    Runtime(std::io::Error),
    #[error("the probe thread panicked")]
    Panicked,
}

/// A PostgreSQL cluster in a temp dir, stopped and removed on drop.
pub struct Cluster {
    url: String,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    /// Server settings beyond the defaults, as `-c name=value` options.
    settings: String,
}

impl Cluster {
    /// initdb a new cluster and start it on a free port on 127.0.0.1.
    pub fn start() -> Result<Self, LocalPgError> {
        Self::start_with(&[])
    }

    /// The same, with server settings (`("wal_level", "logical")`) that
    /// hold across restarts.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Self, LocalPgError> {
        let bin = server_bin_dir().ok_or(LocalPgError::NoBinaries)?;
        let run_as = if is_root() {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let port = free_port().map_err(|e| LocalPgError::Start(format!("no free port: {e}")))?;
        let dir = std::env::temp_dir().join(format!("pgnotifier-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LocalPgError::Start(format!("{}: {e}", dir.display())))?;
        let cluster = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
            bin,
            run_as,
            settings: settings
                .iter()
                .map(|(name, value)| format!(" -c {name}={value}"))
                .collect(),
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid)).map_err(|e| {
                LocalPgError::Start(format!("chown {}: {e}", cluster.dir.display()))
            })?;
        }
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        cluster.start_server()?;
        Ok(cluster)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The temp dir holding the cluster; removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Start the server again after [`stop_server`](Self::stop_server).
    pub fn start_server(&self) -> Result<(), LocalPgError> {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port,
            self.dir.display(),
            self.settings
        );
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        )
    }

    /// Stop the server (fast shutdown), keeping the cluster.
    pub fn stop_server(&self) -> Result<(), LocalPgError> {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), LocalPgError> {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(&self.dir);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .map_err(|e| LocalPgError::Start(format!("{program}: {e}")))?;
        if output.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            Err(LocalPgError::Start(format!(
                "{program} exited with {}: {}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                log
            )))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding initdb and pg_ctl: PATH first, then the newest
/// `/usr/lib/postgresql/*/bin`.
fn server_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR) {
        let dir = PathBuf::from(dir);
        return has_tools(&dir).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_tools(d)) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The `postgres` user if there is one, else `nobody`, from /etc/passwd.
fn unprivileged_user() -> Result<(u32, u32), LocalPgError> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| LocalPgError::Start(format!("/etc/passwd: {e}")))?;
    let find = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() == Some(&name) && fields.len() > 3 {
                Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    find("postgres").or_else(|| find("nobody")).ok_or_else(|| {
        LocalPgError::Start(
            "running as root, and no `postgres` or `nobody` user to run the server as".into(),
        )
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
