//! `jetscale simulate`: a fleet of devices publishing the IoT pipeline design's payload.

use super::Global;
use jetscale::config::units::parse_duration;
use jetscale::simulate::{self, Progress, SimulateOptions};
use std::io::Write;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: u32,
    /// Messages per device (default: until --duration or Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// Time between a device's messages (0s: as fast as the server acknowledges).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub interval: Duration,
    /// Stop after this long.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Cap on messages per second, all devices together.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Share of devices that overheat (0 to 1).
    #[arg(long, default_value_t = 0.02)]
    pub overheat_share: f64,
    /// Publish acknowledgements awaited at once (with --fire-and-forget: messages not yet
    /// confirmed).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// How long a message is retried (same Nats-Msg-Id) before it counts as an error: covers
    /// a stream leader election or a short loss of the connection. Must not exceed the
    /// stream's duplicate window (checked before the run).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub retry_budget: Duration,
    /// Load runs: publish most messages as plain NATS messages (no ack, no Nats-Msg-Id), each
    /// group of up to 1,000 confirmed by one acknowledged JetStream publish. Never duplicates;
    /// a message lost with the connection counts as an error.
    #[arg(long)]
    pub fire_and_forget: bool,
    /// Random seed for the readings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Args {
    pub fn options(&self) -> SimulateOptions {
        SimulateOptions {
            devices: self.devices,
            count: self.count,
            duration: self.duration,
            interval: self.interval,
            rate: self.rate,
            overheat_share: self.overheat_share,
            max_in_flight: self.max_in_flight,
            retry_budget: self.retry_budget,
            seed: self.seed,
            fire_and_forget: self.fire_and_forget,
            ..SimulateOptions::default()
        }
    }
}

pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let settings = global.settings()?;
    let client = jetscale::receivers::nats::connect(&settings.nats, "jetscale-simulate").await?;
    let js = async_nats::jetstream::new(client);
    let options = args.options();
    let report = tokio::select! {
        r = simulate::run(js, &options, progress_line) => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!();
            anyhow::bail!("interrupted");
        }
    };
    eprintln!();
    println!(
        "published {} messages ({} points), {} acknowledged, {} errors, in {:.1}s: {:.0} msg/s",
        report.published,
        report.points,
        report.acked,
        report.errors,
        report.elapsed.as_secs_f64(),
        report.acked as f64 / report.elapsed.as_secs_f64().max(0.001)
    );
    if report.errors > 0 {
        anyhow::bail!(
            "{} messages were not acknowledged by the stream",
            report.errors
        );
    }
    Ok(())
}

/// One live line on stderr: sent, acked, rate, errors.
pub fn progress_line(p: &Progress) {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\rsimulate: sent {:>9}  acked {:>9}  {:>8.0} msg/s  in flight {:>5}  errors {}  {:>5.1}s ",
        p.sent,
        p.acked,
        p.rate,
        p.in_flight,
        p.errors,
        p.elapsed.as_secs_f64()
    );
    let _ = err.flush();
}
