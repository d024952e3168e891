//! A private PostgreSQL cluster: `initdb` once, then `postgres` as our own child process.
//!
//! `postgres` runs directly rather than through `pg_ctl`, so the pid we hold is the
//! postmaster's and kill / stop / drop act on it without a pid file in between.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::child::{spawn_logged, start_on_port, wait_until_ready, ServerProcess, StartLog};
use super::{find_in_path, is_executable, log_len, log_tail, prepare_dir, DevError};

/// How long the server has to accept a connection (includes crash recovery after a kill).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `initdb` may take on a slow disk.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fast shutdown (SIGINT: checkpoint, then exit) may take before we escalate.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long an immediate shutdown (SIGQUIT) may take before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// How long to keep retrying while a previous postmaster's backends still hold the data dir.
const LEFTOVER_GRACE: Duration = Duration::from_secs(10);
/// Environment variable naming the directory with `initdb` and `postgres`.
const ENV_BIN_DIR: &str = "JETSCALE_PG_BIN";
/// Where Debian installs the versions side by side.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// The user the binaries run as when we are root (they refuse to run as root).
const RUN_AS_USER: &str = "postgres";
/// Longest unix socket path (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where the cluster lives and which port it listens on.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Directory owned by the cluster: `data/` (the data directory), `postgres.log`,
    /// `initdb.log` and the unix socket. Created if missing; reused (no initdb) if `data/`
    /// already holds a cluster. When running as root, it is chowned (recursively) to the
    /// `postgres` user, so give the cluster a directory of its own.
    pub dir: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one (and retries with another if taken).
    pub port: Option<u16>,
}

/// A uid/gid pair to run the binaries as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// The two programs we run.
#[derive(Debug, Clone)]
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

/// A running (or stopped, awaiting restart) private PostgreSQL cluster on 127.0.0.1.
///
/// The superuser is `postgres` with `trust` authentication (loopback only). The cluster is
/// killed on drop and dies with this process; the same directory and port are reused across
/// [`PostgresCluster::kill`] / [`PostgresCluster::start_again`], so fault tests see a database
/// that crashed and recovered.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), jetscale::dev::DevError> {
/// use jetscale::dev::{PostgresCluster, PostgresOptions};
/// let dir = std::env::temp_dir().join("jetscale-pg");
/// let mut pg = PostgresCluster::start(PostgresOptions { dir, port: None }).await?;
/// let url = pg.create_database("telemetry").await?;
/// pg.kill();
/// pg.start_again().await?;
/// # drop(url); Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresCluster {
    port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    binaries: Binaries,
    run_as: Option<RunAs>,
    log_path: PathBuf,
    process: ServerProcess,
    /// `shared_preload_libraries`, comma-separated; empty for none.
    preload: String,
}

impl PostgresCluster {
    /// Creates the cluster if `<dir>/data` holds none (`initdb`), starts `postgres` and waits
    /// (up to 30 s) until a connection succeeds.
    ///
    /// As root, the binaries run as the `postgres` user: `dir` is chowned to it and every
    /// directory above `dir` must be enterable by it ([`DevError::DirNotTraversable`] names
    /// the one that is not).
    pub async fn start(opts: PostgresOptions) -> Result<PostgresCluster, DevError> {
        Self::start_preloading(opts, &[]).await
    }

    /// [`start`](Self::start) with `shared_preload_libraries` set to `libraries` (for example
    /// `["timescaledb"]`, which TimescaleDB needs before its extension can be created), on
    /// every start of this cluster.
    pub async fn start_preloading(
        opts: PostgresOptions,
        libraries: &[&str],
    ) -> Result<PostgresCluster, DevError> {
        let binaries = find_binaries()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(RUN_AS_USER)?)
        } else {
            None
        };
        let dir = prepare_dir(&opts.dir)?;
        if let Some(user) = run_as {
            check_traversable(&dir, user)?;
            chown_tree(&dir, user)?;
        }
        let data_dir = dir.join("data");
        if !data_dir.join("PG_VERSION").exists() {
            initdb(&binaries, &dir, &data_dir, run_as).await?;
        }
        let (dir, data_dir, binaries) = (&dir, &data_dir, &binaries);
        start_on_port(opts.port, |port| async move {
            let mut cluster = PostgresCluster {
                port,
                dir: dir.clone(),
                data_dir: data_dir.clone(),
                binaries: binaries.clone(),
                run_as,
                log_path: dir.join("postgres.log"),
                process: ServerProcess::default(),
                preload: libraries.join(","),
            };
            cluster.launch().await?;
            Ok(cluster)
        })
        .await
    }

    /// Spawns the postmaster and waits until it accepts connections. Retries for a while when
    /// the previous postmaster's backends still hold the data directory (after a SIGKILL).
    async fn launch(&mut self) -> Result<(), DevError> {
        let deadline = Instant::now() + LEFTOVER_GRACE;
        loop {
            let log_from = log_len(&self.log_path);
            self.spawn()?;
            match self.wait_ready(log_from).await {
                Ok(()) => return Ok(()),
                Err(err)
                    if Instant::now() < deadline
                        && (exit_log_contains(&err, "pre-existing shared memory block")
                            || exit_log_contains(
                                &err,
                                "lock file \"postmaster.pid\" already exists",
                            )) =>
                {
                    tracing::debug!("previous postmaster still shutting down; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => {
                    self.kill();
                    return Err(err);
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<(), DevError> {
        let socket_dir = if self.dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len()
            <= MAX_SOCKET_PATH
        {
            self.dir.clone().into_os_string()
        } else {
            // Too long for a unix socket path: TCP only.
            tracing::debug!(dir = %self.dir.display(), "directory path too long for a unix socket; TCP only");
            Default::default()
        };
        let mut cmd = Command::new(&self.binaries.postgres);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(socket_dir)
            .args([
                "-c",
                "fsync=on",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=512MB",
                // Bulk COPY fills 1 GB of WAL in seconds; the default then checkpoints (and
                // writes full pages again) every few seconds. Durability is unchanged:
                // fsync and synchronous_commit stay on.
                "-c",
                "max_wal_size=8GB",
                "-c",
                "checkpoint_timeout=15min",
                "-c",
                "wal_buffers=64MB",
                "-c",
                "log_min_messages=warning",
            ])
            .current_dir(&self.dir)
            .env_remove("PGDATA");
        if !self.preload.is_empty() {
            cmd.arg("-c")
                .arg(format!("shared_preload_libraries={}", self.preload));
        }
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let child = spawn_logged(cmd, &self.log_path)?;
        tracing::debug!(pid = child.pid(), port = self.port, dir = %self.dir.display(), "postgres started");
        self.process.started(child);
        Ok(())
    }

    /// Polls until a connection succeeds, failing early if the postmaster exits.
    async fn wait_ready(&mut self, log_from: u64) -> Result<(), DevError> {
        let start = StartLog {
            what: format!(
                "postgres on port {} ({})",
                self.port,
                self.data_dir.display()
            ),
            log: self.log_path.clone(),
            from: log_from,
        };
        let (url, data_dir, port) = (self.url(), &self.data_dir, self.port);
        let probe = || is_ready(&url, data_dir, port);
        let interval = Duration::from_millis(100);
        wait_until_ready(&mut self.process, &start, READY_TIMEOUT, interval, probe).await
    }

    /// The superuser URL of the `postgres` database,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The superuser URL of database `db` (which must exist; see
    /// [`PostgresCluster::create_database`]).
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (holds `data/`, `postgres.log` and the unix socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory, `<dir>/data`, e.g. to corrupt or inspect files in fault tests.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (stdout and stderr of the postmaster, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the postmaster is still alive (reaps it if it exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Connects as the superuser to database `db`, driving the connection on a tokio task.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, DevError> {
        let (client, connection) = tokio_postgres::connect(&self.url_for(db), NoTls)
            .await
            .map_err(|source| DevError::Postgres {
                context: format!("connecting to {}", self.url_for(db)),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "private postgres connection ended");
            }
        });
        Ok(client)
    }

    /// Creates database `name` (kept if it already exists, so a demo can be started again on
    /// the same directory) and returns its URL. Names are limited to `[a-z0-9_]+`, so they
    /// need no quoting rules beyond the ones applied here.
    pub async fn create_database(&self, name: &str) -> Result<String, DevError> {
        if !valid_database_name(name) {
            return Err(DevError::InvalidDatabaseName(name.to_owned()));
        }
        let client = self.connect("postgres").await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(|source| DevError::Postgres {
                context: format!("looking up database {name}"),
                source,
            })?
            .is_some();
        if !exists {
            match client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await
            {
                Ok(()) => {}
                // Someone else created it between our check and our CREATE.
                Err(err) if err.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
                Err(source) => {
                    return Err(DevError::Postgres {
                        context: format!("creating database {name}"),
                        source,
                    })
                }
            }
        }
        Ok(self.url_for(name))
    }

    /// Immediate shutdown (SIGQUIT, SIGKILL after 5 s) and wait: no checkpoint, so the next
    /// start runs crash recovery, as after a power cut of the server process. Blocks the
    /// calling thread for that time. Does nothing when not running.
    pub fn kill(&mut self) {
        self.process.stop_blocking(&[(libc::SIGQUIT, QUIT_GRACE)]);
    }

    /// Fast shutdown (SIGINT: disconnect clients, checkpoint, exit) and wait; immediate
    /// shutdown (SIGQUIT) after 30 s, SIGKILL 5 s later.
    pub async fn stop(&mut self) {
        let rungs = [(libc::SIGINT, STOP_GRACE), (libc::SIGQUIT, QUIT_GRACE)];
        self.process.stop(&rungs).await;
    }

    /// Freezes the postmaster (SIGSTOP): existing sessions keep working (backends are
    /// separate processes) but no new connection is accepted. [`PostgresCluster::resume`]
    /// undoes it.
    pub fn pause(&mut self) {
        self.process.pause();
    }

    /// Resumes a postmaster frozen by [`PostgresCluster::pause`] (SIGCONT).
    pub fn resume(&mut self) {
        self.process.resume();
    }

    /// Stops the cluster if it runs (fast shutdown), then starts it again.
    pub async fn restart(&mut self) -> Result<(), DevError> {
        self.stop().await;
        self.start_again().await
    }

    /// Starts the cluster again after [`PostgresCluster::kill`] or [`PostgresCluster::stop`]
    /// with the same directory and port, and waits until it accepts connections (after crash
    /// recovery, if it was killed). Does nothing when it is still running.
    pub async fn start_again(&mut self) -> Result<(), DevError> {
        if !self.process.needs_start() {
            return Ok(());
        }
        self.launch().await
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a connection to `url` succeeds and the server answering on `port` is ours: its
/// `data_directory` must be our data directory. Another server may hold the port while ours
/// is about to fail binding it, and may well let `postgres` in.
async fn is_ready(url: &str, data_dir: &Path, port: u16) -> Result<(), String> {
    let attempt = tokio::time::timeout(Duration::from_secs(2), tokio_postgres::connect(url, NoTls));
    let (client, connection) = match attempt.await {
        Ok(Ok(connected)) => connected,
        Ok(Err(err)) => return Err(format!("connect: {err}")),
        Err(_) => return Err("connect: no answer within 2 s".to_owned()),
    };
    let connection = tokio::spawn(connection);
    let theirs = client
        .query_one("SHOW data_directory", &[])
        .await
        .and_then(|row| row.try_get::<_, String>(0))
        .map_err(|err| format!("SHOW data_directory: {err}"));
    drop(client);
    let _ = connection.await;
    let theirs = theirs?;
    if Path::new(&theirs) == data_dir {
        Ok(())
    } else {
        Err(format!(
            "port {port} answers with data directory {theirs}, not ours"
        ))
    }
}

/// `[a-z0-9_]+`, at most 63 bytes (PostgreSQL's identifier limit).
fn valid_database_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `err` is an early exit whose log mentions `needle`.
fn exit_log_contains(err: &DevError, needle: &str) -> bool {
    matches!(err, DevError::Exited { tail, .. } if tail.contains(needle))
}

/// Finds `initdb` and `postgres`: `$JETSCALE_PG_BIN`, the newest `/usr/lib/postgresql/*/bin`,
/// then `PATH`.
/// Whether TimescaleDB's library is installed beside the PostgreSQL binaries a private
/// cluster would use: then a cluster started with it preloaded can create the extension.
pub fn timescaledb_installed() -> bool {
    find_binaries().is_ok_and(|b| {
        b.postgres
            .parent()
            .and_then(Path::parent)
            .is_some_and(|root| root.join("lib").join("timescaledb.so").exists())
    })
}

fn find_binaries() -> Result<Binaries, DevError> {
    let not_found = |searched: String| DevError::BinaryNotFound {
        name: "PostgreSQL (initdb and postgres)",
        searched,
        install: "apt-get install -y postgresql",
        env_var: ENV_BIN_DIR,
        env_kind: "directory holding initdb and postgres",
    };
    let in_dir = |dir: &Path| {
        let binaries = Binaries {
            initdb: dir.join("initdb"),
            postgres: dir.join("postgres"),
        };
        (is_executable(&binaries.initdb) && is_executable(&binaries.postgres)).then_some(binaries)
    };
    if let Some(dir) = std::env::var_os(ENV_BIN_DIR) {
        let dir = PathBuf::from(dir);
        return in_dir(&dir).ok_or_else(|| not_found(format!("{ENV_BIN_DIR}={}", dir.display())));
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version: Option<Vec<u32>> = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect();
            Some((version?, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some(binaries) = versions.iter().rev().find_map(|(_, dir)| in_dir(dir)) {
        return Ok(binaries);
    }
    match (find_in_path("initdb"), find_in_path("postgres")) {
        (Some(initdb), Some(postgres)) => Ok(Binaries { initdb, postgres }),
        _ => Err(not_found(format!("{DEBIAN_ROOT}/*/bin, PATH"))),
    }
}

/// Looks up a user's uid and primary gid.
fn lookup_user(name: &'static str) -> Result<RunAs, DevError> {
    let Ok(cname) = CString::new(name) else {
        return Err(DevError::UserNotFound { user: name });
    };
    let mut buf_len = 16 * 1024;
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; buf_len];
        // SAFETY: passwd is plain old data; all-zero is a valid (empty) value for it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and buf_len matches buf.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf_len < 1 << 20 {
            buf_len *= 4;
            continue;
        }
        if rc != 0 || result.is_null() {
            return Err(DevError::UserNotFound { user: name });
        }
        return Ok(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

/// Fails with the first directory above `dir` that `user` cannot enter.
///
/// The binaries run with the user's uid and primary gid only (supplementary groups are
/// dropped on spawn), so exactly those decide.
fn check_traversable(dir: &Path, user: RunAs) -> Result<(), DevError> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| DevError::io(format!("inspecting directory {}", ancestor.display()), e))?;
        let mode = meta.mode();
        let allowed = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !allowed {
            return Err(DevError::DirNotTraversable {
                dir: ancestor.to_path_buf(),
                user: RUN_AS_USER,
            });
        }
    }
    Ok(())
}

/// `chown -R user: dir`, touching only entries owned by someone else and never following
/// symlinks.
fn chown_tree(dir: &Path, user: RunAs) -> Result<(), DevError> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| DevError::io(format!("inspecting {}", dir.display()), e))?;
    if meta.uid() != user.uid || meta.gid() != user.gid {
        std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid)).map_err(|e| {
            DevError::io(
                format!("changing the owner of {} to {RUN_AS_USER}", dir.display()),
                e,
            )
        })?;
    }
    if meta.is_dir() {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| DevError::io(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DevError::io(format!("listing {}", dir.display()), e))?;
            chown_tree(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// The locale for initdb: C.UTF-8 when installed (byte-order collation with UTF-8 character
/// classes), else C; never the caller's environment, so every run behaves the same.
fn initdb_locale() -> &'static str {
    let installed = ["/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8"]
        .iter()
        .any(|p| Path::new(p).is_dir());
    if installed {
        "C.UTF-8"
    } else {
        "C"
    }
}

/// Runs `initdb` for `data_dir`, logging to `<dir>/initdb.log`.
async fn initdb(
    binaries: &Binaries,
    dir: &Path,
    data_dir: &Path,
    run_as: Option<RunAs>,
) -> Result<(), DevError> {
    let log = dir.join("initdb.log");
    let log_from = log_len(&log);
    let mut cmd = Command::new(&binaries.initdb);
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .arg(format!("--locale={}", initdb_locale()))
        .current_dir(dir)
        .env_remove("PGDATA");
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let mut child = spawn_logged(cmd, &log)?;
    let failure = match child.wait_for(INITDB_TIMEOUT).await {
        Some(status) if status.success() => return Ok(()),
        Some(status) => status.to_string(),
        None => {
            child.kill_and_reap();
            format!("timed out after {INITDB_TIMEOUT:?}")
        }
    };
    Err(DevError::InitDb {
        data_dir: data_dir.to_path_buf(),
        status: failure,
        log: log.clone(),
        tail: log_tail(&log, log_from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn database_names_are_validated() {
        assert!(valid_database_name("jetscale_test_1"));
        for bad in ["", "Upper", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert!(!valid_database_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn untraversable_parent_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Someone who is neither the owner nor in the group.
        let stranger = RunAs {
            uid: u32::MAX - 7,
            gid: u32::MAX - 7,
        };
        let err = check_traversable(&closed.join("pg"), stranger).unwrap_err();
        match &err {
            DevError::DirNotTraversable { dir, .. } => assert_eq!(dir, &closed),
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("chmod o+x"));
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        check_traversable(&closed.join("pg"), stranger).unwrap();
    }

    #[tokio::test]
    async fn committed_rows_survive_kill_and_restart() {
        let tmp = tempfile::tempdir().unwrap();
        // tempdir is 0700; the postgres user (when we are root) must be able to enter it.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut pg = PostgresCluster::start(PostgresOptions {
            dir: tmp.path().join("pg"),
            port: None,
        })
        .await
        .unwrap();
        assert_eq!(
            pg.url(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
        );
        assert!(pg.data_dir().join("PG_VERSION").is_file());

        let client = pg.connect("postgres").await.unwrap();
        let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        client
            .batch_execute("create table kept (v int); insert into kept values (42)")
            .await
            .unwrap();

        let port = pg.port();
        pg.kill();
        assert!(!pg.is_running());
        assert!(client.query_one("select 1", &[]).await.is_err());

        pg.start_again().await.unwrap();
        assert_eq!(pg.port(), port);
        let client = pg.connect("postgres").await.unwrap();
        let v: i32 = client
            .query_one("select v from kept", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 42);

        let url = pg.create_database("jetscale_dev_test").await.unwrap();
        assert_eq!(url, pg.url_for("jetscale_dev_test"));
        assert_eq!(
            pg.create_database("jetscale_dev_test").await.unwrap(),
            url,
            "creating an existing database keeps it"
        );
        let (db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        let name: String = db
            .query_one("select current_database()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "jetscale_dev_test");
        assert!(matches!(
            pg.create_database("Bad-Name").await,
            Err(DevError::InvalidDatabaseName(_))
        ));

        pg.restart().await.unwrap();
        let client = pg.connect("jetscale_dev_test").await.unwrap();
        client.query_one("select 1", &[]).await.unwrap();
        pg.stop().await;
        assert!(!pg.is_running());
    }
}
