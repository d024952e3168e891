//! Private nats-server and PostgreSQL processes for the one-command local stack and for tests.
//!
//! `jetscale dev` / `jetscale demo` need a NATS JetStream server and a PostgreSQL cluster
//! without asking the user to configure either, and the integration and fault tests need
//! servers they may kill, pause and restart without disturbing anything else on the machine.
//! This module starts both as child processes on free loopback ports, in directories the
//! caller chooses, and owns their pids:
//!
//! - [`NatsServer`] / [`start_cluster`]: `nats-server` with a file-backed JetStream store.
//! - [`PostgresCluster`]: `initdb` (once) and `postgres` run directly (not through `pg_ctl`),
//!   as the `postgres` user when we are root, since both refuse to run as root.
//!
//! Children are spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`, so they
//! die with this process even when it is killed, and every handle kills its child on drop:
//! tests never leak servers.

mod child;
mod nats;
mod postgres;

pub use nats::{start_cluster, NatsServer, NatsServerOptions};
pub use postgres::{timescaledb_installed, PostgresCluster, PostgresOptions};

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How many lines of a server's log an error message carries.
const LOG_TAIL_LINES: usize = 30;

/// Why a private server could not be started, stopped or used.
///
/// One variant per failing step; every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A server binary is not installed (or not where we looked).
    #[error("{name} not found (looked in: {searched}); install it: {install}, or set {env_var} to the binary's {env_kind}")]
    BinaryNotFound {
        /// The program that is missing, e.g. `nats-server`.
        name: &'static str,
        /// Where we looked, for the message.
        searched: String,
        /// The command that installs it.
        install: &'static str,
        /// The environment variable that overrides the search.
        env_var: &'static str,
        /// What the environment variable must name (`path` or `directory`).
        env_kind: &'static str,
    },
    /// The operating system refused to start a program.
    #[error("could not start {program}: {source}; check that it is executable and that the directory exists")]
    Spawn {
        /// The program we tried to run.
        program: PathBuf,
        /// The error from `fork`/`exec`.
        #[source]
        source: io::Error,
    },
    /// A server exited before it became ready.
    #[error("{what} exited during startup ({status}); see {log}:\n{tail}")]
    Exited {
        /// Which server, e.g. `nats-server on port 4300`.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// A server did not become ready in time.
    #[error("{what} was not ready after {timeout:?} ({detail}); see {log}:\n{tail}")]
    NotReady {
        /// Which server.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// The last failed readiness check.
        detail: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// `initdb` failed.
    #[error("initdb failed for {data_dir} ({status}); see {log}:\n{tail}")]
    InitDb {
        /// The data directory it was creating.
        data_dir: PathBuf,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// We are root and the user the database must run as does not exist.
    #[error("user {user:?} does not exist; PostgreSQL refuses to run as root: install it (apt-get install -y postgresql creates the user) or create it with `useradd --system {user}`")]
    UserNotFound {
        /// The missing user.
        user: &'static str,
    },
    /// A directory on the way to the data directory cannot be entered by the database user.
    #[error("directory {dir} cannot be traversed by user {user:?}, so PostgreSQL cannot reach its data directory; run `chmod o+x {dir}` or choose a directory elsewhere")]
    DirNotTraversable {
        /// The directory lacking the execute permission.
        dir: PathBuf,
        /// The user that needs it.
        user: &'static str,
    },
    /// A database name outside `[a-z0-9_]+`.
    #[error("invalid database name {0:?}: use only lowercase letters, digits and underscores")]
    InvalidDatabaseName(String),
    /// A path that cannot be written into a server's config file.
    #[error("path {0} cannot be used in a server config (it must be valid UTF-8 without quotes or newlines); choose another directory")]
    UnusablePath(PathBuf),
    /// A SQL statement failed on a running private cluster.
    #[error("{context}: {source}")]
    Postgres {
        /// What we were doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A file system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl DevError {
    /// Wraps an I/O error with what we were doing.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        DevError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Starts the local stack of `jetscale dev` and the benchmarks: a private nats-server in
/// `<dir>/nats` and a private PostgreSQL cluster in `<dir>/pg`, each on free ports, the
/// cluster preloading TimescaleDB when `timescaledb` is set (see [`timescaledb_installed`]).
pub async fn start_stack(
    dir: &Path,
    timescaledb: bool,
) -> Result<(NatsServer, PostgresCluster), DevError> {
    let nats = NatsServer::start(NatsServerOptions {
        dir: dir.join("nats"),
        ..Default::default()
    })
    .await?;
    let options = PostgresOptions {
        dir: dir.join("pg"),
        ..Default::default()
    };
    let preload: &[&str] = if timescaledb { &["timescaledb"] } else { &[] };
    let postgres = PostgresCluster::start_preloading(options, preload).await?;
    Ok((nats, postgres))
}

/// Ports handed out by this process, so two servers started back to back never get the same
/// one (the kernel may return a just-released port again).
fn issued_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a loopback TCP port that was free a moment ago and that this process has not
/// handed out before.
///
/// The port is found by binding `127.0.0.1:0`; another process may still take it before the
/// server binds it, which is why [`NatsServer::start`] and [`PostgresCluster::start`] retry
/// with a new port when they chose it themselves.
pub fn try_free_port() -> io::Result<u16> {
    let mut issued = issued_ports()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Keep the listeners open while searching so the kernel cannot hand us the same one twice.
    let mut held = Vec::new();
    for _ in 0..64 {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        if issued.insert(port) {
            return Ok(port);
        }
        held.push(listener);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no unused loopback port found after 64 attempts",
    ))
}

/// Returns a free loopback TCP port, never the same one twice within this process.
///
/// # Panics
///
/// When no socket can be bound on 127.0.0.1 at all (no loopback interface); use
/// [`try_free_port`] to handle that as an error.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(err) => panic!("cannot find a free port on 127.0.0.1: {err}"),
    }
}

/// `try_free_port` as a [`DevError`].
pub(crate) fn pick_port() -> Result<u16, DevError> {
    try_free_port().map_err(|e| DevError::io("finding a free port on 127.0.0.1", e))
}

/// Length of a log file now, so the error of this run shows only this run's lines.
pub(crate) fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last lines of a log file written after byte `from`, for error messages.
pub(crate) fn log_tail(path: &Path, from: u64) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = from.max(len.saturating_sub(MAX_BYTES)).min(len);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            if tail.is_empty() {
                "(log is empty)".to_owned()
            } else {
                tail.join("\n")
            }
        }
        Err(err) => format!("(cannot read log: {err})"),
    }
}

/// Opens (appending, creating) a log file for a child's stdout and stderr.
pub(crate) fn open_log(path: &Path) -> Result<(File, File), DevError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DevError::io(format!("opening log file {}", path.display()), e))?;
    let second = file
        .try_clone()
        .map_err(|e| DevError::io(format!("duplicating log file {}", path.display()), e))?;
    Ok((file, second))
}

/// Creates `dir` and returns its absolute, canonical path (config files and `-D` need one).
pub(crate) fn prepare_dir(dir: &Path) -> Result<PathBuf, DevError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DevError::io(format!("creating directory {}", dir.display()), e))?;
    std::fs::canonicalize(dir)
        .map_err(|e| DevError::io(format!("resolving directory {}", dir.display()), e))
}

/// Finds an executable called `name` on `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_repeats() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            assert!(seen.insert(free_port()), "free_port returned a port twice");
        }
    }

    #[test]
    fn log_tail_keeps_last_lines_after_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut text = String::from("old run\n");
        let from = text.len() as u64;
        for i in 0..100 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, from);
        assert_eq!(tail.lines().count(), LOG_TAIL_LINES);
        assert!(tail.ends_with("line 99"));
        assert!(!tail.contains("old run"));
        assert_eq!(log_tail(&path, 1 << 40), "(log is empty)");
        assert!(log_tail(&dir.path().join("missing"), 0).starts_with("(cannot read log"));
    }
}
