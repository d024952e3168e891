//! Publishing with the simulator: the pre-fill of the stream, and the simulator's own best
//! rate (fire-and-forget, into a scratch stream).

use crate::procfs::{cpu_secs, ServerPids};
use anyhow::Result;
use jetscale::config::Settings;
use jetscale::simulate::{self, SimulateOptions};
use std::time::{Duration, Instant};

/// Fills the stream with about `messages` device messages (the IoT pipeline design's) from
/// `publishers` simulators, each with its own connection (nats-server reads each connection on
/// one thread) and its share of the 10,000 devices; returns how many were stored.
pub(crate) async fn prefill(s: &Settings, messages: u64, publishers: u32) -> Result<u64> {
    publish_fleet(s, messages, publishers, SimulateOptions::default()).await
}

/// What one run of the fire-and-forget simulator into a scratch stream measured.
pub(crate) struct ScratchPublish {
    /// Messages confirmed stored per second.
    pub(crate) rate: f64,
    /// CPU per message of this process (the simulator runs in it) and of nats-server; `None`
    /// when a process's `/proc` figures could not be read, or the run was too short for the
    /// kernel's 10 ms CPU ticks to say anything per message.
    pub(crate) simulator_cpu_us: Option<f64>,
    pub(crate) nats_server_cpu_us: Option<f64>,
}

/// Fewer messages than this and a per-message CPU figure is mostly tick rounding.
const MIN_MESSAGES_FOR_CPU: u64 = 100_000;

/// The simulator's best rate: `jetscale simulate --fire-and-forget` into a scratch stream
/// configured `like` the telemetry stream (so the drain's stream is left as it is), split
/// over `publishers` connections.
pub(crate) async fn publish_fire_and_forget(
    s: &Settings,
    js: &async_nats::jetstream::Context,
    like: &async_nats::jetstream::stream::Config,
    messages: u64,
    publishers: u32,
    servers: &ServerPids,
) -> Result<ScratchPublish> {
    let mut config = like.clone();
    config.name = "SCRATCH".into();
    config.subjects = vec!["scratch.>".into()];
    let _ = js.delete_stream("SCRATCH").await;
    js.create_stream(config).await?;
    // Read nats-server's figure alone: `servers.cpu()` also scans /proc for PostgreSQL's
    // backends, which would charge that scan to the simulator.
    let nats_server_cpu = || servers.nats_server.and_then(cpu_secs);
    let cpu_before = (cpu_secs(std::process::id()), nats_server_cpu());
    let started = Instant::now();
    let stored = publish_fleet(
        s,
        messages,
        publishers,
        SimulateOptions {
            subject_prefix: "scratch.metrics".into(),
            fire_and_forget: true,
            ..SimulateOptions::default()
        },
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = (cpu_secs(std::process::id()), nats_server_cpu());
    js.delete_stream("SCRATCH").await?;
    let per_message_us = |before: Option<f64>, after: Option<f64>| {
        let spent = after? - before?;
        (stored >= MIN_MESSAGES_FOR_CPU).then(|| spent * 1e6 / stored as f64)
    };
    Ok(ScratchPublish {
        rate: stored as f64 / secs,
        simulator_cpu_us: per_message_us(cpu_before.0, cpu_after.0),
        nats_server_cpu_us: per_message_us(cpu_before.1, cpu_after.1),
    })
}

/// Publishes about `messages` messages from `publishers` simulators configured like `base`,
/// each on its own connection and with its share of 10,000 devices; returns how many were
/// confirmed stored.
async fn publish_fleet(
    s: &Settings,
    messages: u64,
    publishers: u32,
    base: SimulateOptions,
) -> Result<u64> {
    let publishers = publishers.clamp(1, 100);
    let devices = 10_000 / publishers;
    let per_device = messages.div_ceil(u64::from(devices) * u64::from(publishers));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let client =
            jetscale::receivers::nats::connect(&s.nats, &format!("bench-publisher-{p}")).await?;
        let js = async_nats::jetstream::new(client);
        let opts = SimulateOptions {
            devices,
            count: Some(per_device),
            interval: Duration::ZERO,
            device_prefix: if publishers == 1 {
                SimulateOptions::default().device_prefix
            } else {
                format!("sensor-p{p}-")
            },
            seed: u64::from(p),
            ..base.clone()
        };
        tasks.push(tokio::spawn(async move {
            simulate::run(js, &opts, |_| {}).await
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await??.acked;
    }
    Ok(stored)
}
