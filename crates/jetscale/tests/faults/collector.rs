//! One `jetscale collect` process of a scenario: signalled, killed, waited for, its log read.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One `jetscale collect` process.
pub struct Collector {
    pub label: String,
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Collector {
    pub fn tail(&self, lines: usize) -> String {
        format!(
            "--- {} ({}) ---\n{}",
            self.label,
            self.log.display(),
            tail(&self.log, lines)
        )
    }

    /// Fails the test if the process has exited (it should be running).
    pub fn assert_running(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "collector {} exited on its own {when} ({status}):\n{}",
                self.label,
                self.tail(60)
            );
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT, SIGTERM) to the running process.
    pub fn signal(&mut self, signal: libc::c_int) {
        self.assert_running("before it was signalled");
        let pid = self.child.id().expect("pid") as libc::pid_t;
        // SAFETY: plain syscall on our own unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// SIGKILL: a crash at whatever it was doing.
    pub async fn sigkill(&mut self) {
        self.assert_running("before it was killed");
        self.child.kill().await.expect("SIGKILL the collector");
    }

    /// SIGTERM, and it must exit 0 within 30 s.
    pub async fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
        let what = format!(
            "collector {} did not shut down cleanly on SIGTERM",
            self.label
        );
        let summary = self.exits_cleanly(Duration::from_secs(30), &what).await;
        eprintln!("  {}: {summary}", self.label);
    }

    /// Waits for the process to exit 0 within `timeout` (else fails the test saying `what`
    /// went wrong) and returns its summary line.
    pub async fn exits_cleanly(&mut self, timeout: Duration, what: &str) -> String {
        let status = self.wait(timeout).await;
        assert!(status.success(), "{what} ({status}):\n{}", self.tail(60));
        self.summary()
    }

    /// The line `jetscale collect` prints when it ends.
    fn summary(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .find(|l| l.starts_with("collected "))
            .unwrap_or("(no summary)")
            .to_owned()
    }

    /// Waits for the process to exit; fails the test after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the collector"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "collector {} did not exit within {timeout:?}:\n{}",
                    self.label,
                    self.tail(60)
                );
            }
        }
    }
}
