//! A private `nats-server` with JetStream on a file store: one process, or a cluster of them.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::child::{spawn_logged, start_on_port, wait_until_ready, ServerProcess, StartLog};
use super::{find_in_path, is_executable, log_len, pick_port, prepare_dir, DevError};

/// How long a server has to accept clients and report JetStream healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a cluster has to elect a JetStream meta leader.
const META_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Health check used for a single server: JetStream is up (no cluster quorum needed).
const HEALTH_JS_ENABLED: &str = "/healthz?js-enabled-only=true";
/// Environment variable naming the nats-server binary to use.
const ENV_BINARY: &str = "JETSCALE_NATS_SERVER";
/// Where Debian and the upstream packages put the binary when it is not on `PATH`.
const FALLBACK_BINARIES: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];

/// What to start: where, on which port, with which extra configuration.
///
/// `..Default::default()` fills the rest; `dir` is required in practice (the default, an
/// empty path, means the current directory).
#[derive(Debug, Clone, Default)]
pub struct NatsServerOptions {
    /// Directory for `nats.conf`, `nats.log` and the JetStream store (`store/`); created if
    /// missing. Reusing a directory reuses its streams.
    pub dir: PathBuf,
    /// Client port; `None` picks a free one (and retries with another if it is taken).
    pub port: Option<u16>,
    /// Appended verbatim to the generated config: `authorization {...}`, `accounts {...}`,
    /// `cluster {...}`, `tls {...}`, ... so tests can run the server the way a deployment does.
    pub extra_config: String,
    /// `server_name`; required for JetStream clustering, where names must be unique.
    pub server_name: Option<String>,
}

/// A running (or killed, awaiting restart) private `nats-server`.
///
/// Owns the process: dropping it kills the server, and the server dies with this process.
/// The same port, config file and store directory are used across [`NatsServer::kill`] /
/// [`NatsServer::start_again`], so fault tests see a server that crashed and came back.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), jetscale::dev::DevError> {
/// use jetscale::dev::{NatsServer, NatsServerOptions};
/// let dir = std::env::temp_dir().join("jetscale-nats");
/// let mut server = NatsServer::start(NatsServerOptions { dir, ..Default::default() }).await?;
/// let client = async_nats::connect(server.url()).await;
/// server.kill();
/// server.start_again().await?;
/// # drop(client); Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    /// The HTTP monitoring port (`/healthz`, `/jsz`, `/varz`), for tests that inspect the
    /// server's own view.
    pub monitor_port: u16,
    port: u16,
    dir: PathBuf,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    process: ServerProcess,
}

impl NatsServer {
    /// Writes the config, starts the server and waits (up to 15 s) until it accepts clients
    /// and `/healthz?js-enabled-only=true` answers 200.
    ///
    /// Fails with [`DevError::BinaryNotFound`] when nats-server is not installed, and with
    /// [`DevError::Exited`] / [`DevError::NotReady`] carrying the end of `nats.log` otherwise.
    pub async fn start(opts: NatsServerOptions) -> Result<NatsServer, DevError> {
        let binary = find_binary()?;
        let sync_always = supports_sync_interval(&binary).await;
        let dir = prepare_dir(&opts.dir)?;
        let (opts, dir, binary) = (&opts, &dir, &binary);
        start_on_port(opts.port, |port| async move {
            let monitor_port = pick_port()?;
            let mut server =
                NatsServer::prepare(opts, dir, binary, sync_always, port, monitor_port)?;
            server.launch(HEALTH_JS_ENABLED).await?;
            Ok(server)
        })
        .await
    }

    /// Writes `nats.conf` for the given ports without starting anything.
    fn prepare(
        opts: &NatsServerOptions,
        dir: &Path,
        binary: &Path,
        sync_always: bool,
        port: u16,
        monitor_port: u16,
    ) -> Result<NatsServer, DevError> {
        let config = render_config(opts, dir, port, monitor_port, sync_always)?;
        let config_path = dir.join("nats.conf");
        std::fs::write(&config_path, config)
            .map_err(|e| DevError::io(format!("writing {}", config_path.display()), e))?;
        Ok(NatsServer {
            monitor_port,
            port,
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            config_path,
            log_path: dir.join("nats.log"),
            process: ServerProcess::default(),
        })
    }

    /// Spawns the process and waits for `health_path`; on failure the process is killed.
    async fn launch(&mut self, health_path: &str) -> Result<(), DevError> {
        let log_from = log_len(&self.log_path);
        self.spawn()?;
        match self.wait_ready(health_path, log_from).await {
            Ok(()) => Ok(()),
            Err(err) => {
                self.kill();
                Err(err)
            }
        }
    }

    fn spawn(&mut self) -> Result<(), DevError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&self.config_path).current_dir(&self.dir);
        let child = spawn_logged(cmd, &self.log_path)?;
        tracing::debug!(pid = child.pid(), port = self.port, dir = %self.dir.display(), "nats-server started");
        self.process.started(child);
        Ok(())
    }

    /// What the errors of a start that began when the log was `log_from` long name.
    fn start_log(&self, log_from: u64) -> StartLog {
        StartLog {
            what: format!("nats-server on port {} ({})", self.port, self.dir.display()),
            log: self.log_path.clone(),
            from: log_from,
        }
    }

    /// Polls until `health_path` answers 200 and the client port is served by this very
    /// server (not by another one holding the port).
    async fn wait_ready(&mut self, health_path: &str, log_from: u64) -> Result<(), DevError> {
        let start = self.start_log(log_from);
        let (port, monitor_port) = (self.port, self.monitor_port);
        let probe = || is_ready(port, monitor_port, health_path);
        let interval = Duration::from_millis(50);
        wait_until_ready(&mut self.process, &start, READY_TIMEOUT, interval, probe).await
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding `nats.conf`, `nats.log` and `store/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The monitoring base URL, `http://127.0.0.1:MONITOR_PORT`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The generated config file; edit it between [`NatsServer::kill`] and
    /// [`NatsServer::start_again`] to restart with a different configuration.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The server's log file (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id while the server runs, to send it signals of one's own.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process is still alive (reaps it if it exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills the server at once (SIGKILL) and waits for it: a crash, as far as clients and
    /// the store can tell. Does nothing when it is not running.
    pub fn kill(&mut self) {
        self.process.stop_blocking(&[]);
    }

    /// Stops the server cleanly (SIGTERM), SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        self.process.stop(&[(libc::SIGTERM, STOP_GRACE)]).await;
    }

    /// Freezes the server (SIGSTOP) to simulate a hung process: connections stay open but
    /// nothing is answered. [`NatsServer::resume`] undoes it.
    pub fn pause(&mut self) {
        self.process.pause();
    }

    /// Resumes a server frozen by [`NatsServer::pause`] (SIGCONT).
    pub fn resume(&mut self) {
        self.process.resume();
    }

    /// Stops the server if it runs, then starts it again with the same port, config and store.
    pub async fn restart(&mut self) -> Result<(), DevError> {
        self.stop().await;
        self.start_again().await
    }

    /// Starts the server again after [`NatsServer::kill`] or [`NatsServer::stop`], with the
    /// same port, config file and store, and waits until JetStream is up. Does nothing when
    /// the server is still running. In a cluster, follow it with
    /// [`NatsServer::wait_for_meta_leader`] before relying on JetStream.
    pub async fn start_again(&mut self) -> Result<(), DevError> {
        if !self.process.needs_start() {
            return Ok(());
        }
        self.launch(HEALTH_JS_ENABLED).await
    }

    /// Waits until this server knows a JetStream meta leader (clustered servers only; a
    /// standalone server has no meta group and times out), returning the leader's name.
    pub async fn wait_for_meta_leader(&mut self, timeout: Duration) -> Result<String, DevError> {
        let deadline = Instant::now() + timeout;
        let start = self.start_log(log_len(&self.log_path).saturating_sub(16 * 1024));
        loop {
            if !self.is_running() {
                return Err(start.not_ready(timeout, "the server is not running".into()));
            }
            let detail = match http_get(self.monitor_port, "/jsz").await {
                Ok((200, body)) => match meta_leader(&body) {
                    Some(leader) => return Ok(leader),
                    None => "no JetStream meta leader elected yet".to_owned(),
                },
                Ok((status, body)) => format!("GET /jsz: {status} {}", body.trim()),
                Err(err) => format!("GET /jsz: {err}"),
            };
            if Instant::now() >= deadline {
                return Err(start.not_ready(timeout, detail));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a JetStream cluster of `nodes` servers named `n1`, `n2`, ... in
/// `<base_dir>/n1`, ... (cluster name `jetscale-test`, routes between all of them on loopback)
/// and waits until every node is healthy and knows the meta leader.
///
/// For tests of R3 streams, leader loss and node restarts; a node is an ordinary
/// [`NatsServer`], so it can be killed and started again like one.
pub async fn start_cluster(base_dir: &Path, nodes: usize) -> Result<Vec<NatsServer>, DevError> {
    let binary = find_binary()?;
    let sync_always = supports_sync_interval(&binary).await;
    let mut client_ports = Vec::with_capacity(nodes);
    let mut cluster_ports = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        client_ports.push(pick_port()?);
        cluster_ports.push(pick_port()?);
    }
    let mut servers = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let name = format!("n{}", i + 1);
        let routes: Vec<String> = cluster_ports
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, port)| format!("    nats-route://127.0.0.1:{port}"))
            .collect();
        let opts = NatsServerOptions {
            dir: base_dir.join(&name),
            port: Some(client_ports[i]),
            extra_config: format!(
                "cluster {{\n  name: jetscale-test\n  listen: 127.0.0.1:{}\n  routes: [\n{}\n  ]\n}}\n",
                cluster_ports[i],
                routes.join("\n")
            ),
            server_name: Some(name),
        };
        let dir = prepare_dir(&opts.dir)?;
        let monitor_port = pick_port()?;
        let mut server = NatsServer::prepare(
            &opts,
            &dir,
            &binary,
            sync_always,
            client_ports[i],
            monitor_port,
        )?;
        server.spawn()?;
        servers.push(server);
    }
    // All processes run before we wait on any, so the routes can form.
    for server in &mut servers {
        server.wait_ready(HEALTH_JS_ENABLED, 0).await?;
    }
    for server in &mut servers {
        server.wait_for_meta_leader(META_LEADER_TIMEOUT).await?;
    }
    Ok(servers)
}

/// Finds the nats-server binary: `$JETSCALE_NATS_SERVER`, `PATH`, then the package locations.
fn find_binary() -> Result<PathBuf, DevError> {
    let not_found = |searched: String| DevError::BinaryNotFound {
        name: "nats-server",
        searched,
        install: "apt-get install -y nats-server",
        env_var: ENV_BINARY,
        env_kind: "path",
    };
    if let Some(path) = std::env::var_os(ENV_BINARY) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(not_found(format!("{ENV_BINARY}={}", path.display())))
        };
    }
    if let Some(path) = find_in_path("nats-server") {
        return Ok(path);
    }
    FALLBACK_BINARIES
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .ok_or_else(|| not_found(format!("PATH, {}", FALLBACK_BINARIES.join(", "))))
}

/// Whether the server knows `sync_interval` (2.10+): with it, a publish is acknowledged only
/// after fsync; 2.9 (Debian's) rejects the option. Asked once per binary.
async fn supports_sync_interval(binary: &Path) -> bool {
    /// `(major, minor)` per binary; `None` when it could not be determined.
    type Versions = HashMap<PathBuf, Option<(u32, u32)>>;
    static VERSIONS: OnceLock<Mutex<Versions>> = OnceLock::new();
    let cache = VERSIONS.get_or_init(|| Mutex::new(HashMap::new()));
    let cached = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(binary)
        .copied();
    let version = match cached {
        Some(version) => version,
        None => {
            let output = tokio::process::Command::new(binary)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .await;
            let version = match output {
                Ok(out) => parse_version(&String::from_utf8_lossy(&out.stdout))
                    .or_else(|| parse_version(&String::from_utf8_lossy(&out.stderr))),
                Err(err) => {
                    tracing::warn!(binary = %binary.display(), error = %err, "cannot run nats-server --version");
                    None
                }
            };
            if version.is_none() {
                tracing::warn!(binary = %binary.display(), "unknown nats-server version; not enabling sync_interval: always");
            }
            cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(binary.to_path_buf(), version);
            version
        }
    };
    matches!(version, Some((major, minor)) if (major, minor) >= (2, 10))
}

/// `nats-server: v2.9.10` -> `(2, 9)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    text.split_whitespace().find_map(|word| {
        let mut parts = word.trim_start_matches('v').split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    })
}

/// A path as a double-quoted config string.
fn quoted(path: &Path) -> Result<String, DevError> {
    match path.to_str() {
        Some(s) if !s.contains(['"', '\\', '\n', '\r']) => Ok(format!("\"{s}\"")),
        _ => Err(DevError::UnusablePath(path.to_path_buf())),
    }
}

/// The generated `nats.conf`.
fn render_config(
    opts: &NatsServerOptions,
    dir: &Path,
    port: u16,
    monitor_port: u16,
    sync_always: bool,
) -> Result<String, DevError> {
    let mut config = String::from("# generated by jetscale::dev; edits survive kill/start_again\n");
    if let Some(name) = &opts.server_name {
        config.push_str(&format!("server_name: {}\n", quoted(Path::new(name))?));
    }
    config.push_str(&format!("listen: 127.0.0.1:{port}\n"));
    config.push_str(&format!("http: 127.0.0.1:{monitor_port}\n"));
    config.push_str("jetstream {\n");
    config.push_str(&format!("  store_dir: {}\n", quoted(&dir.join("store"))?));
    config.push_str("  max_mem: 256M\n  max_file: 100G\n");
    if sync_always {
        config.push_str("  sync_interval: always\n");
    }
    config.push_str("}\n");
    if !opts.extra_config.is_empty() {
        config.push_str(&opts.extra_config);
        config.push('\n');
    }
    Ok(config)
}

/// Whether the server answers 200 on `health_path` and the client port is served by it.
async fn is_ready(port: u16, monitor_port: u16, health_path: &str) -> Result<(), String> {
    match http_get(monitor_port, health_path).await {
        Ok((200, _)) => serves_client_port(port, monitor_port).await,
        Ok((status, body)) => Err(format!("GET {health_path}: {status} {}", body.trim())),
        Err(err) => Err(format!("GET {health_path}: {err}")),
    }
}

/// Whether the client port is served by *this* server: the `server_id` in the INFO line a
/// client receives must equal the one `/varz` reports. A bare TCP connect is not enough,
/// since another server may hold the port while ours is about to fail binding it.
async fn serves_client_port(port: u16, monitor_port: u16) -> Result<(), String> {
    let ours = match http_get(monitor_port, "/varz").await {
        Ok((200, body)) => json_str(&body, "server_id")
            .ok_or_else(|| "GET /varz: no server_id in the answer".to_owned())?,
        Ok((status, _)) => return Err(format!("GET /varz: {status}")),
        Err(err) => return Err(format!("GET /varz: {err}")),
    };
    let theirs = client_info_server_id(port)
        .await
        .map_err(|err| format!("client port {port}: {err}"))?;
    if theirs == ours {
        Ok(())
    } else {
        Err(format!(
            "client port {port} answers as server {theirs}, not as ours ({ours})"
        ))
    }
}

/// A top-level string field of a JSON document.
fn json_str(json: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(value.get(field)?.as_str()?.to_owned())
}

/// Connects to a client port and returns the `server_id` of the `INFO {...}` line every
/// NATS server sends first.
async fn client_info_server_id(port: u16) -> io::Result<String> {
    const MAX_INFO: u64 = 64 * 1024;
    let read_info = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut line = Vec::new();
        let mut reader = tokio::io::BufReader::new(stream.take(MAX_INFO));
        tokio::io::AsyncBufReadExt::read_until(&mut reader, b'\n', &mut line).await?;
        Ok::<_, io::Error>(line)
    };
    let line = within_2s(read_info, "no INFO").await?;
    let text = String::from_utf8_lossy(&line);
    text.trim_end()
        .strip_prefix("INFO ")
        .and_then(|json| json_str(json, "server_id"))
        .ok_or_else(|| unexpected("a NATS INFO line", &text))
}

/// `exchange` given two seconds; `silence` says what was missing when it took longer.
async fn within_2s<T>(
    exchange: impl std::future::Future<Output = io::Result<T>>,
    silence: &str,
) -> io::Result<T> {
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{silence} within 2 s")))?
}

/// An answer that is not `expected` (`a NATS INFO line`), quoted (its first 80 characters).
fn unexpected(expected: &str, text: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "not {expected}: {:?}",
            text.chars().take(80).collect::<String>()
        ),
    )
}

/// The meta leader's name from a `/jsz` body, if one is elected.
fn meta_leader(body: &str) -> Option<String> {
    let jsz: serde_json::Value = serde_json::from_str(body).ok()?;
    let leader = jsz.get("meta_cluster")?.get("leader")?.as_str()?;
    (!leader.is_empty()).then(|| leader.to_owned())
}

/// `GET path` on the loopback monitoring port with a raw HTTP/1.0 request (no HTTP client
/// dependency for two endpoints); returns the status code and the body.
async fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    const MAX_RESPONSE: u64 = 4 * 1024 * 1024;
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    let response = within_2s(exchange, "no answer").await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| unexpected("an HTTP response", &text))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::{self, stream::StorageType};

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn config_has_listen_store_and_extra() {
        let opts = NatsServerOptions {
            dir: "/x".into(),
            server_name: Some("n1".into()),
            extra_config: "authorization { token: s3cret }".into(),
            ..Default::default()
        };
        let old = render_config(&opts, Path::new("/x"), 4300, 8300, false).unwrap();
        assert!(old.contains("server_name: \"n1\"\n"));
        assert!(old.contains("listen: 127.0.0.1:4300\n"));
        assert!(old.contains("http: 127.0.0.1:8300\n"));
        assert!(old.contains("store_dir: \"/x/store\""));
        assert!(!old.contains("sync_interval"));
        assert!(old.ends_with("authorization { token: s3cret }\n"));
        let new = render_config(&opts, Path::new("/x"), 4300, 8300, true).unwrap();
        assert!(new.contains("  sync_interval: always\n}"));
        assert!(matches!(
            render_config(&opts, Path::new("/x\"y"), 1, 2, true),
            Err(DevError::UnusablePath(_))
        ));
    }

    #[test]
    fn reads_meta_leader() {
        assert_eq!(
            meta_leader(r#"{"meta_cluster":{"name":"c","leader":"n2","cluster_size":3}}"#),
            Some("n2".into())
        );
        assert_eq!(meta_leader(r#"{"meta_cluster":{"leader":""}}"#), None);
        assert_eq!(meta_leader(r#"{"config":{}}"#), None);
    }

    async fn message_count(url: &str, stream: &str) -> u64 {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client);
        let mut stream = js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    #[tokio::test]
    async fn stream_survives_kill_and_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let mut server = NatsServer::start(NatsServerOptions {
            dir: tmp.path().join("nats"),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        assert!(server.dir().join("nats.conf").is_file());

        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: "DEVTEST".into(),
            subjects: vec!["devtest.>".into()],
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..10 {
            js.publish(format!("devtest.{i}"), "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        drop(js);

        let port = server.port();
        let pid = server.pid().unwrap();
        server.kill();
        assert!(!server.is_running());
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());

        server.start_again().await.unwrap();
        assert_eq!(server.port(), port);
        assert_ne!(server.pid().unwrap(), pid);
        assert_eq!(message_count(&server.url(), "DEVTEST").await, 10);

        server.restart().await.unwrap();
        assert_eq!(message_count(&server.url(), "DEVTEST").await, 10);

        // A paused server answers nothing; stopping it still works (SIGCONT follows SIGTERM).
        server.pause();
        let stopping = Instant::now();
        server.stop().await;
        assert!(stopping.elapsed() < STOP_GRACE, "SIGTERM was not delivered");
        assert!(!server.is_running());
    }

    async fn start_with(dir: &Path, extra_config: &str) -> Result<NatsServer, DevError> {
        NatsServer::start(NatsServerOptions {
            dir: dir.to_path_buf(),
            extra_config: extra_config.into(),
            ..Default::default()
        })
        .await
    }

    #[tokio::test]
    async fn extra_config_is_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let server = start_with(tmp.path(), "authorization { token: s3cret }")
            .await
            .unwrap();
        assert!(
            async_nats::connect(server.url()).await.is_err(),
            "the token from extra_config must be required"
        );
        async_nats::ConnectOptions::with_token("s3cret".into())
            .connect(server.url())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bad_config_fails_with_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let err = start_with(tmp.path(), "this is { not valid")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DevError::Exited { .. }), "{message}");
        assert!(message.contains("nats.log"), "{message}");
    }

    #[tokio::test]
    async fn three_node_cluster_elects_leader_and_survives_node_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = start_cluster(tmp.path(), 3).await.unwrap();
        assert_eq!(nodes.len(), 3);

        let client = async_nats::connect(nodes[0].url()).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: "R3".into(),
            subjects: vec!["r3.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("r3.a", "x".into()).await.unwrap().await.unwrap();
        drop(js);

        nodes[2].kill();
        nodes[2].start_again().await.unwrap();
        nodes[2]
            .wait_for_meta_leader(Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(message_count(&nodes[1].url(), "R3").await, 1);
    }
}
