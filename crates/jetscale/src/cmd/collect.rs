//! `jetscale collect`: run the collector.

use super::Global;
use jetscale::config::units::parse_duration;
use jetscale::pipeline::{self, Counters, RunOptions};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop once the consumer has nothing pending for this long (e.g. 2s).
    #[arg(long, value_parser = parse_duration)]
    pub exit_when_idle: Option<Duration>,
    /// Accept a stream that was recreated under the same name.
    #[arg(long)]
    pub accept_new_stream: bool,
    /// Do not migrate the schema (run `jetscale setup` as the owner instead).
    #[arg(long)]
    pub no_migrate: bool,
    /// Progress line interval.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub progress_every: Duration,
}

pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let settings = global.settings()?;
    tracing::info!(
        nats = %jetscale::redact::redact_url(&settings.nats.url),
        database = %jetscale::redact::redact_url(&settings.store.url),
        stream = %settings.stream.name,
        consumer = %settings.consumer.name,
        "collector starting"
    );
    let counters = Arc::new(Counters::default());
    let reporter = tokio::spawn(report_progress(counters.clone(), args.progress_every));
    let options = RunOptions {
        exit_when_idle: args.exit_when_idle,
        accept_new_stream: args.accept_new_stream,
        skip_migrations: args.no_migrate,
    };
    let report = pipeline::run(&settings, &options, counters, super::shutdown_signal()).await;
    reporter.abort();
    let report = report?;
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_owned(), |d| {
            format!("{:.0}ms", d.as_secs_f64() * 1e3)
        })
    };
    println!(
        "collected {} messages ({} rows, {} dead letters, {} duplicates skipped) in {:.1}s: {:.0} rows/s; publish-to-commit latency p50 {} p99 {}",
        report.messages,
        report.rows,
        report.dead_letters,
        report.duplicates,
        report.elapsed.as_secs_f64(),
        report.rows as f64 / report.elapsed.as_secs_f64().max(0.001),
        ms(report.latency_p50),
        ms(report.latency_p99),
    );
    Ok(())
}

/// Logs a progress line periodically: what was committed and how fast.
pub async fn report_progress(counters: Arc<Counters>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let rows = counters.rows.load(Ordering::Relaxed);
        let rate = (rows - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
        last = (Instant::now(), rows);
        tracing::info!(
            messages = counters.messages.load(Ordering::Relaxed),
            rows,
            rows_per_s = rate as u64,
            dead_letters = counters.dead_letters.load(Ordering::Relaxed),
            duplicates = counters.duplicates.load(Ordering::Relaxed),
            retries = counters.write_retries.load(Ordering::Relaxed),
            "progress"
        );
    }
}
