//! `jetscale collect`: run the collector.

use super::Global;
use jetscale::config::units::parse_duration;
use jetscale::pipeline::{self, Counters, RunOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop once the consumer has nothing pending for this long (e.g. 2s), after bringing the
    /// hourly rollup up to date over the hours the drained backlog fell in.
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
    let reporter = tokio::spawn(report_progress(
        counters.clone(),
        args.progress_every,
        settings.store.series_cache,
    ));
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

/// Logs a progress line periodically: what was committed and how fast, and a warning when
/// the series cache is too small for the fleet.
pub async fn report_progress(counters: Arc<Counters>, every: Duration, series_cache: usize) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut cache_watch = CacheWatch::default();
    loop {
        tick.tick().await;
        let now = counters.snapshot();
        let (rows, found) = (now.rows, now.series_found);
        let elapsed = last.0.elapsed().as_secs_f64().max(0.001);
        let rate = (rows - last.1) as f64 / elapsed;
        if cache_watch.thrashing(found - last.2, rows - last.1) {
            tracing::warn!(
                series_cache,
                lookups_per_s = ((found - last.2) as f64 / elapsed) as u64,
                "the series cache misses series the database already has, interval after \
                 interval: the fleet has more active series than it holds, and every miss is \
                 a lookup in the database. Raise exporters.postgresql.series_cache above the \
                 number of active series (about 35 bytes of memory each)"
            );
        }
        last = (Instant::now(), rows, found);
        tracing::info!(
            messages = now.messages,
            rows,
            rows_per_s = rate as u64,
            dead_letters = now.dead_letters,
            duplicates = now.duplicates,
            retries = now.write_retries,
            series_created = now.series_created,
            series_lookups = found,
            "progress"
        );
    }
}

/// Tells a cache too small for the fleet from the misses any collector sees: after a
/// restart beyond what warming loaded, or while another collector creates new series.
/// Those pass; lookups for more than 5 % of the rows, interval after interval, do not.
#[derive(Debug, Default)]
struct CacheWatch {
    streak: u32,
    warned: bool,
}

impl CacheWatch {
    const INTERVALS: u32 = 6;

    /// Whether to warn now (once per episode).
    fn thrashing(&mut self, lookups: u64, rows: u64) -> bool {
        if lookups > 0 && lookups * 20 > rows {
            self.streak += 1;
        } else {
            self.streak = 0;
            self.warned = false;
        }
        if self.streak >= Self::INTERVALS && !self.warned {
            self.warned = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::CacheWatch;

    #[test]
    fn warns_once_when_lookups_persist() {
        let mut watch = CacheWatch::default();
        let warnings: Vec<bool> = (0..20).map(|_| watch.thrashing(1_000, 10_000)).collect();
        assert_eq!(warnings.iter().filter(|w| **w).count(), 1);
        assert!(warnings[CacheWatch::INTERVALS as usize - 1]);
    }

    #[test]
    fn passing_misses_do_not_warn() {
        let mut watch = CacheWatch::default();
        // A restart's first intervals, then a steady fleet, then a new batch of devices.
        let pattern = [(5_000, 10_000), (3_000, 10_000), (0, 10_000), (10, 10_000)];
        for _ in 0..10 {
            for (lookups, rows) in pattern {
                assert!(!watch.thrashing(lookups, rows));
            }
        }
        assert!(!watch.thrashing(0, 0));
    }
}
