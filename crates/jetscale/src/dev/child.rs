//! The child processes of the private servers: spawning them so they die with us, sending
//! them signals only while they are ours, stopping them by a ladder of signals, and waiting
//! for them to become ready.
//!
//! [`NatsServer`](super::NatsServer) and [`PostgresCluster`](super::PostgresCluster) differ in
//! how they are configured and probed, not in how their process is controlled: both hold a
//! [`ServerProcess`].

use super::{log_tail, open_log, pick_port, DevError};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the async waits look at the child again.
const ASYNC_POLL: Duration = Duration::from_millis(20);
/// How often the blocking waits look at the child again.
const BLOCKING_POLL: Duration = Duration::from_millis(10);

/// A request to the spawner thread: the command, and where to send the result.
type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Spawns `cmd` from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`.
///
/// The kernel sends the parent-death signal when the *thread* that forked the child exits,
/// not the process: spawning from a tokio worker or blocking-pool thread would kill the server
/// when that thread is retired. A dedicated thread that lives as long as the process makes
/// the signal mean "the parent process died".
pub(crate) fn spawn_supervised(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe functions prctl and getppid.
    unsafe {
        use std::os::unix::process::CommandExt;
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            // After setuid (std runs pre_exec closures after changing credentials, and a
            // credential change clears the setting), so it sticks.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent process exited during spawn"));
            }
            Ok(())
        });
    }

    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("jetscale-dev-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(err) = started {
            tracing::warn!(error = %err, "cannot start the spawner thread; children are spawned without it");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let sent = sender
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((cmd, reply_tx));
    match sent {
        Ok(()) => reply_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("spawner thread is gone"))),
        // The thread could not be started: spawn here (the signal then follows this thread).
        Err(mpsc::SendError((mut cmd, _))) => cmd.spawn(),
    }
}

/// Spawns `cmd` supervised (see [`spawn_supervised`]) with no stdin and its stdout and stderr
/// appended to `log`.
pub(crate) fn spawn_logged(mut cmd: Command, log: &Path) -> Result<ChildProcess, DevError> {
    let (stdout, stderr) = open_log(log)?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let program = PathBuf::from(cmd.get_program());
    let child = spawn_supervised(cmd).map_err(|source| DevError::Spawn { program, source })?;
    Ok(ChildProcess::new(child))
}

/// What a look at a child found, against a deadline.
enum Wait {
    Exited(ExitStatus),
    TimedOut,
    Pending,
}

/// A child process we own: signals are only ever sent before it is reaped, so they cannot
/// hit a recycled pid.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    pub(crate) fn new(child: Child) -> Self {
        ChildProcess {
            child,
            status: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` unless the process has already been reaped.
    pub(crate) fn signal(&mut self, signal: libc::c_int) {
        if self.try_wait().is_some() {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: plain syscall; the pid is our unreaped child, so it names that process.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// The exit status, if the process has exited (reaping it).
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.status = status,
                Err(err) => tracing::debug!(error = %err, "waitpid failed"),
            }
        }
        self.status
    }

    fn look(&mut self, deadline: Instant) -> Wait {
        match self.try_wait() {
            Some(status) => Wait::Exited(status),
            None if Instant::now() >= deadline => Wait::TimedOut,
            None => Wait::Pending,
        }
    }

    /// Waits up to `timeout` without blocking the async runtime.
    pub(crate) async fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.look(deadline) {
                Wait::Exited(status) => return Some(status),
                Wait::TimedOut => return None,
                Wait::Pending => tokio::time::sleep(ASYNC_POLL).await,
            }
        }
    }

    /// Waits up to `timeout`, blocking the thread (for `Drop` and the synchronous kills).
    fn wait_for_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.look(deadline) {
                Wait::Exited(status) => return Some(status),
                Wait::TimedOut => return None,
                Wait::Pending => std::thread::sleep(BLOCKING_POLL),
            }
        }
    }

    /// SIGKILL and reap.
    pub(crate) fn kill_and_reap(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if let Err(err) = self.child.kill() {
            tracing::debug!(error = %err, "SIGKILL failed");
        }
        match self.child.wait() {
            Ok(status) => self.status = Some(status),
            Err(err) => tracing::debug!(error = %err, "waitpid after SIGKILL failed"),
        }
    }

    /// Sends `signal` and SIGCONT: a paused process would not act on the first otherwise.
    fn ask(&mut self, signal: libc::c_int) {
        self.signal(signal);
        self.signal(libc::SIGCONT);
    }

    fn escalating(&self, signal: libc::c_int, grace: Duration) {
        tracing::warn!(
            pid = self.pid(),
            signal,
            ?grace,
            "child did not exit in time; escalating"
        );
    }
}

/// One rung of a shutdown: a signal, and how long the process has to exit after it.
pub(crate) type Rung = (libc::c_int, Duration);

/// A private server's process across its restarts: none while it is stopped or killed.
#[derive(Debug, Default)]
pub(crate) struct ServerProcess {
    child: Option<ChildProcess>,
}

impl ServerProcess {
    /// Holds a freshly spawned process.
    pub(crate) fn started(&mut self, child: ChildProcess) {
        self.child = Some(child);
    }

    /// The process id while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildProcess::pid)
    }

    /// Whether the process is still alive (reaps it if it exited on its own).
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().is_none(),
            None => false,
        }
    }

    /// Whether it must be started again: not when it runs; a process that exited is
    /// forgotten.
    pub(crate) fn needs_start(&mut self) -> bool {
        if self.is_running() {
            return false;
        }
        self.child = None;
        true
    }

    /// The exit status of a process that exited (during startup), which is then forgotten.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait()?;
        self.child = None;
        Some(status)
    }

    /// Freezes the process (SIGSTOP).
    pub(crate) fn pause(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.signal(libc::SIGSTOP);
        }
    }

    /// Resumes a frozen process (SIGCONT).
    pub(crate) fn resume(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.signal(libc::SIGCONT);
        }
    }

    /// Sends each rung's signal in turn until the process exits within the rung's grace, then
    /// SIGKILLs it; waits without blocking the runtime. Does nothing when not running.
    pub(crate) async fn stop(&mut self, rungs: &[Rung]) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        for &(signal, grace) in rungs {
            child.ask(signal);
            if child.wait_for(grace).await.is_some() {
                return;
            }
            child.escalating(signal, grace);
        }
        child.kill_and_reap();
    }

    /// [`ServerProcess::stop`] blocking the thread, for `Drop` and the synchronous kills.
    pub(crate) fn stop_blocking(&mut self, rungs: &[Rung]) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        for &(signal, grace) in rungs {
            child.ask(signal);
            if child.wait_for_blocking(grace).is_some() {
                return;
            }
            child.escalating(signal, grace);
        }
        child.kill_and_reap();
    }
}

/// The server one start is about and the part of its log this start wrote, for the errors
/// that end a start.
pub(crate) struct StartLog {
    /// Which server, e.g. `nats-server on port 4300 (/tmp/x)`.
    pub(crate) what: String,
    pub(crate) log: PathBuf,
    /// The log's length before this start.
    pub(crate) from: u64,
}

impl StartLog {
    pub(crate) fn exited(&self, status: ExitStatus) -> DevError {
        DevError::Exited {
            what: self.what.clone(),
            status,
            log: self.log.clone(),
            tail: log_tail(&self.log, self.from),
        }
    }

    pub(crate) fn not_ready(&self, timeout: Duration, detail: String) -> DevError {
        DevError::NotReady {
            what: self.what.clone(),
            timeout,
            detail,
            log: self.log.clone(),
            tail: log_tail(&self.log, self.from),
        }
    }
}

/// Asks `probe` every `interval` until it answers, failing early when the process exits and
/// with the last answer after `timeout`.
pub(crate) async fn wait_until_ready<T, Probe, Answer>(
    process: &mut ServerProcess,
    start: &StartLog,
    timeout: Duration,
    interval: Duration,
    mut probe: Probe,
) -> Result<T, DevError>
where
    Probe: FnMut() -> Answer,
    Answer: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            return Err(start.exited(status));
        }
        let detail = match probe().await {
            Ok(ready) => return Ok(ready),
            Err(detail) => detail,
        };
        if Instant::now() >= deadline {
            return Err(start.not_ready(timeout, detail));
        }
        tokio::time::sleep(interval).await;
    }
}

/// Starts a server on `port`, or on a free port of our choosing, choosing again (twice at
/// most) when another process took it between our pick and the server's bind.
pub(crate) async fn start_on_port<S, Start, Started>(
    port: Option<u16>,
    mut start: Start,
) -> Result<S, DevError>
where
    Start: FnMut(u16) -> Started,
    Started: Future<Output = Result<S, DevError>>,
{
    let attempts = if port.is_some() { 1 } else { 3 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let chosen = match port {
            Some(port) => port,
            None => pick_port()?,
        };
        match start(chosen).await {
            Ok(server) => return Ok(server),
            Err(err) if attempt < attempts && is_port_conflict(&err) => {
                tracing::warn!(
                    port = chosen,
                    "port taken meanwhile, retrying with a new one"
                );
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether a failed start was another process taking our port between pick and bind
/// (`address already in use`, as nats-server and PostgreSQL both put it).
fn is_port_conflict(err: &DevError) -> bool {
    matches!(err, DevError::Exited { tail, .. } if tail.to_ascii_lowercase().contains("already in use"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> ServerProcess {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut process = ServerProcess::default();
        process.started(spawn_logged(cmd, &dir.join("sleep.log")).unwrap());
        process
    }

    #[tokio::test]
    async fn a_paused_process_still_stops_on_the_first_rung() {
        let tmp = tempfile::tempdir().unwrap();
        let mut process = sleeper(tmp.path());
        assert!(process.is_running() && process.pid().is_some());
        process.pause();
        let stopping = Instant::now();
        process
            .stop(&[(libc::SIGTERM, Duration::from_secs(10))])
            .await;
        assert!(stopping.elapsed() < Duration::from_secs(10));
        assert!(!process.is_running() && process.pid().is_none());
        assert!(process.needs_start());
    }

    #[test]
    fn an_ignored_signal_escalates_to_sigkill() {
        let tmp = tempfile::tempdir().unwrap();
        let mut process = sleeper(tmp.path());
        // SIGWINCH's default action is to ignore it.
        process.stop_blocking(&[(libc::SIGWINCH, Duration::from_millis(100))]);
        assert!(!process.is_running());
    }

    #[tokio::test]
    async fn an_exit_during_startup_ends_the_wait_with_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("false.log");
        let mut process = ServerProcess::default();
        process.started(spawn_logged(Command::new("false"), &log).unwrap());
        let start = StartLog {
            what: "false".into(),
            log,
            from: 0,
        };
        let probe = || async { Err::<(), _>("not yet".to_owned()) };
        let err = wait_until_ready(
            &mut process,
            &start,
            Duration::from_secs(10),
            Duration::from_millis(10),
            probe,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DevError::Exited { .. }), "{err}");
        assert!(process.needs_start());
    }

    #[tokio::test]
    async fn only_a_port_we_chose_is_chosen_again() {
        let mut tried = Vec::new();
        let mut taken = |port| {
            tried.push(port);
            async move {
                Err::<(), _>(DevError::Exited {
                    what: format!("server on port {port}"),
                    status: std::os::unix::process::ExitStatusExt::from_raw(256),
                    log: PathBuf::new(),
                    tail: "bind: Address already in use".into(),
                })
            }
        };
        assert!(start_on_port(Some(4222), &mut taken).await.is_err());
        assert!(start_on_port(None, &mut taken).await.is_err());
        assert_eq!(tried.len(), 4, "{tried:?}");
        assert_eq!(tried[0], 4222);
    }
}
