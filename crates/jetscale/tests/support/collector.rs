//! Running the collector: in-process through `pipeline::run`, or the real binary.

use jetscale::config::Settings;
use jetscale::pipeline::{self, PipelineError, RunOptions, RunReport};
use std::time::Duration;

/// Runs the collector in-process with `options`; fails the test unless it ends `within`.
pub async fn run_collector(
    settings: &Settings,
    options: &RunOptions,
    within: Duration,
) -> Result<RunReport, PipelineError> {
    // Never signalled: the run ends when the consumer is idle or on an error.
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::time::timeout(
        within,
        pipeline::run(settings, options, Default::default(), rx),
    )
    .await
    .expect("collector finished in time")
}

/// Runs the collector in-process until the consumer is idle.
pub async fn collect_until_idle(settings: &Settings) -> RunReport {
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    run_collector(settings, &options, Duration::from_secs(180))
        .await
        .expect("collector ran without error")
}

/// The real binary with `args`, blind to the caller's `JETSCALE_CONFIG`, killed if the test
/// drops it.
pub fn jetscale(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(super::binary());
    cmd.args(args)
        .env_remove("JETSCALE_CONFIG")
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end, fails the test with its stderr unless it succeeded, and returns
/// its stdout.
pub async fn succeeds(cmd: &mut tokio::process::Command) -> String {
    let out = cmd.output().await.expect("run jetscale");
    assert!(
        out.status.success(),
        "{:?} failed ({}): {}",
        cmd.as_std(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
