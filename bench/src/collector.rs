//! The real `jetscale collect` binary under measurement: draining the pre-filled stream, and
//! keeping up with a live fleet.

use crate::procfs::{cpu_secs, peak_rss_kib, ServerPids};
use crate::settings;
use anyhow::{bail, Context, Result};
use jetscale::dev::NatsServer;
use jetscale::exporters::postgres::{self, schema};
use jetscale::simulate::{self, SimulateOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn jetscale_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidate = exe.with_file_name("jetscale");
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found: build it with cargo build --release -p jetscale",
            candidate.display()
        )
    }
}

/// `jetscale collect` on these servers (with this config file), killed when dropped, logging
/// at `$BENCH_COLLECTOR_LOG` (default `warn`).
fn collect_command(
    nats_url: &str,
    db_url: &str,
    config: Option<&Path>,
) -> Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(jetscale_binary()?);
    command.args(["collect", "--nats-url", nats_url, "--database-url", db_url]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.kill_on_drop(true).env(
        "RUST_LOG",
        std::env::var("BENCH_COLLECTOR_LOG").unwrap_or_else(|_| "warn".into()),
    );
    Ok(command)
}

/// What the machine's processes spent during the drain, in CPU seconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DrainCpu {
    pub(crate) collector: f64,
    pub(crate) nats_server: f64,
    pub(crate) postgres: f64,
}

/// Runs the real collector binary over the pre-filled stream; returns seconds until every
/// message was acknowledged (so committed), its peak RSS, and the CPU the collector and the
/// servers spent meanwhile.
pub(crate) async fn jetscale_drain(
    nats_url: &str,
    db_url: &str,
    stream: &async_nats::jetstream::stream::Stream,
    total: u64,
    config: Option<&Path>,
    servers: ServerPids,
) -> Result<(f64, u64, DrainCpu)> {
    let started = Instant::now();
    let servers_before = servers.cpu();
    let mut child = collect_command(nats_url, db_url, config)?
        .args(["--exit-when-idle", "3s"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting jetscale collect")?;
    let pid = child.id().unwrap_or(0);
    let mut peak = 0u64;
    let mut done_at = None;
    let mut cpu = DrainCpu::default();
    loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if done_at.is_none() {
            // Read before the ack floor is asked for, so the collector's idle wait for exit
            // is not charged; the servers' figures include the bench's own consumer polls.
            let collector = cpu_secs(pid).unwrap_or(cpu.collector);
            if let Ok(info) = stream.consumer_info("jetscale").await {
                if info.ack_floor.stream_sequence >= total && info.num_ack_pending == 0 {
                    done_at = Some(started.elapsed());
                    let (nats_server, postgres) = servers.cpu();
                    cpu = DrainCpu {
                        collector,
                        nats_server: nats_server - servers_before.0,
                        postgres: postgres - servers_before.1,
                    };
                }
            }
            if done_at.is_none() {
                cpu.collector = collector;
            }
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("jetscale collect exited with {status}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = done_at
        .context("the collector exited before acknowledging every message")?
        .as_secs_f64();
    Ok((secs, peak, cpu))
}

/// Seconds to build the index of every points partition in `db_url` that has none, as the
/// collector's maintenance does once a partition has closed.
pub(crate) async fn index_on_close(nats_url: &str, db_url: &str) -> Result<f64> {
    let s = settings(nats_url, db_url)?;
    let client = postgres::connect(&s.store).await?;
    let names = schema::RelationNames::new(&s.store);
    let started = Instant::now();
    let far_future = std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 86_400);
    postgres::maintenance::index_closed_partitions(&client, &names, far_future, i32::MAX).await?;
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) struct LiveStep {
    /// Series created per second while the fleet came online (the untimed warm-up).
    pub(crate) warmup_series_per_s: f64,
    /// The timed collector's peak RSS (its cache holds the fleet's series).
    pub(crate) peak_rss_mib: f64,
    pub(crate) achieved: f64,
    pub(crate) final_lag: u64,
    pub(crate) p99_ms: f64,
    pub(crate) ok: bool,
}

/// SIGTERM: the collector finishes its batches and prints its summary line, returned.
async fn stop(collector: tokio::process::Child) -> Result<String> {
    if let Some(pid) = collector.id() {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let out = collector.wait_with_output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Publish acks the live simulator awaits at once.
const LIVE_MAX_IN_FLIGHT: usize = 32_768;

/// The simulator at `rate` msg/s (devices = rate × 10 at a 10 s interval) while the collector
/// runs; bounded lag and p99 publish-to-commit latency under 2 s pass.
pub(crate) async fn live_step(
    nats: &NatsServer,
    db_url: &str,
    rate: u64,
    length: Duration,
    config: Option<&Path>,
    fire_and_forget: bool,
) -> Result<LiveStep> {
    let s = settings(&nats.url(), db_url)?;
    let client = jetscale::receivers::nats::connect(&s.nats, "bench-live").await?;
    // The load generator must not be what limits the step: with the machine saturated a
    // publish ack can take over 100 ms, and 4,096 acks in flight then cap publishing near
    // 40k msg/s whatever the pipeline does.
    let js = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(LIVE_MAX_IN_FLIGHT)
        .build(client);
    let stream = js.get_stream("TELEMETRY").await?;
    stream.purge().await?;
    let _ = stream.delete_consumer("jetscale").await;
    let spawn_collector = || -> Result<tokio::process::Child> {
        let mut command = collect_command(&nats.url(), db_url, config)?;
        Ok(command.stdout(Stdio::piped()).spawn()?)
    };
    let devices = u32::try_from(rate * 10).unwrap_or(u32::MAX);
    // Warm-up, untimed: the fleet comes online once, so its series exist, as they do for a
    // fleet that has been running. The timed run then starts a new collector process, whose
    // series cache is empty: it finds the series, it does not create them.
    let warmup = spawn_collector()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warm_started = Instant::now();
    simulate::run(
        js.clone(),
        &SimulateOptions {
            devices,
            count: Some(1),
            interval: Duration::ZERO,
            seed: rate,
            ..Default::default()
        },
        |_| {},
    )
    .await?;
    loop {
        let info = stream.consumer_info("jetscale").await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        if warm_started.elapsed() > Duration::from_secs(600) {
            bail!("the warm-up of {devices} devices did not drain in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warmup_series_per_s = f64::from(devices) * 3.0 / warm_started.elapsed().as_secs_f64();
    stop(warmup).await?;
    let collector = spawn_collector()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = simulate::run(
        js.clone(),
        &SimulateOptions {
            devices,
            duration: Some(length),
            interval: Duration::from_secs(10),
            seed: rate,
            max_in_flight: LIVE_MAX_IN_FLIGHT,
            fire_and_forget,
            ..Default::default()
        },
        |_| {},
    )
    .await?;
    let achieved = report.acked as f64 / report.elapsed.as_secs_f64();
    // Lag right after publishing stops: what the collector still has to do.
    let info = stream.consumer_info("jetscale").await?;
    let final_lag = info.num_pending + info.num_ack_pending as u64;
    // Let it finish, then stop it and read its latency line.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak_rss_mib = collector
        .id()
        .and_then(peak_rss_kib)
        .map_or(0.0, |kib| kib as f64 / 1024.0);
    let text = stop(collector).await?;
    let p99_ms = text
        .split("p99 ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.trim_end_matches("ms").parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    let ok = final_lag < rate * 2 && p99_ms < 2000.0 && achieved > rate as f64 * 0.9;
    Ok(LiveStep {
        warmup_series_per_s,
        peak_rss_mib,
        achieved,
        final_lag,
        p99_ms,
        ok,
    })
}
