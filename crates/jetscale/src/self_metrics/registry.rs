//! The counters as Prometheus / OpenMetrics text, read at scrape time.
//!
//! Names follow the OpenTelemetry Collector's convention (`otelcol_receiver_accepted_metric_points`,
//! `otelcol_exporter_sent_*`), with `jetscale_` for `otelcol_`: `<prefix>_<component kind>_<verb>_<what>`,
//! counters ending in `_total`, units in the name. The receiver is `nats`, the exporter
//! `postgresql`, as in the config file. Process figures use Prometheus's standard
//! `process_*` names, so stock dashboards find them.
//!
//! Everything is a [`Collector`] over the atomics of [`Counters`]: nothing is counted twice,
//! and prometheus-client's own histogram (a lock per observation) stays off the hot path.

use super::{Counters, DeadLetterReason};
use crate::exporters::postgres::batch::Table;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`to_classic_text`]'s output.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry holding the collector's measurements.
pub fn registry(counters: Arc<Counters>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(CountersCollector(counters)));
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// The registry's text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(8 << 10);
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// OpenMetrics text as Prometheus's classic text format (0.0.4), for clients that do not
/// ask for OpenMetrics (curl, `promtool check metrics`, older scrapers): a counter family
/// is named with its `_total` there, and there is no `# UNIT` or `# EOF`.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug)]
struct CountersCollector(Arc<Counters>);

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        if labels.is_empty() {
            // No `{}` after the name.
            return ConstGauge::new(*value).encode(metric);
        }
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &Labels,
    (sum, count, buckets): (f64, u64, Vec<(f64, u64)>),
) -> Result<(), std::fmt::Error> {
    // The encoder takes per-bucket counts and sums them itself.
    let mut previous = 0;
    let per_bucket: Vec<(f64, u64)> = buckets
        .into_iter()
        .map(|(upper, cumulative)| {
            let n = cumulative - previous;
            previous = cumulative;
            (upper, n)
        })
        .collect();
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric
        .encode_family(labels)?
        .encode_histogram::<Labels>(sum, count, &per_bucket, None)
}

impl Collector for CountersCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let t = c.snapshot();
        let nats = || vec![("receiver", "nats")];
        let pg = || vec![("exporter", "postgresql")];
        counter(
            &mut e,
            "jetscale_receiver_received_messages",
            "Deliveries fetched from the JetStream consumer, redeliveries included.",
            &[(nats(), t.received)],
        )?;
        counter(
            &mut e,
            "jetscale_receiver_redelivered_messages",
            "Deliveries JetStream had delivered before (not acknowledged in time, or after a failure).",
            &[(nats(), t.redelivered)],
        )?;
        counter(
            &mut e,
            "jetscale_receiver_accepted_messages",
            "Messages committed with their records stored (dead letters and duplicates not included).",
            &[(nats(), t.messages.saturating_sub(t.dead_letters))],
        )?;
        let reasons: Vec<(Labels, u64)> = DeadLetterReason::ALL
            .iter()
            .map(|r| {
                let n = c.dead_letters_by_reason[*r as usize].load(Ordering::Relaxed);
                (vec![("receiver", "nats"), ("reason", r.label())], n)
            })
            .collect();
        counter(
            &mut e,
            "jetscale_receiver_refused_messages",
            "Messages stored as dead letters, by reason.",
            &reasons,
        )?;
        counter(
            &mut e,
            "jetscale_receiver_duplicate_messages",
            "Deliveries skipped because an earlier transaction had stored them.",
            &[(nats(), t.duplicates)],
        )?;
        let rows = |table: Table| c.rows_by_table[table as usize].load(Ordering::Relaxed);
        for (name, help, n) in [
            (
                "jetscale_receiver_accepted_metric_points",
                "Metric points stored (numeric points and distributions).",
                rows(Table::Metrics) + rows(Table::Distributions),
            ),
            (
                "jetscale_receiver_accepted_spans",
                "Spans stored.",
                rows(Table::Spans),
            ),
            (
                "jetscale_receiver_accepted_log_records",
                "Log records stored.",
                rows(Table::Logs),
            ),
        ] {
            counter(&mut e, name, help, &[(nats(), n)])?;
        }
        let tables: Vec<(Labels, u64)> = [
            (Table::Metrics, "metrics"),
            (Table::Distributions, "distributions"),
            (Table::Spans, "spans"),
            (Table::Logs, "logs"),
        ]
        .into_iter()
        .map(|(table, label)| {
            (
                vec![("exporter", "postgresql"), ("table", label)],
                rows(table),
            )
        })
        .collect();
        counter(
            &mut e,
            "jetscale_exporter_sent_rows",
            "Rows written by committed transactions, by table.",
            &tables,
        )?;
        counter(
            &mut e,
            "jetscale_exporter_transactions",
            "Transactions committed.",
            &[(pg(), t.batches)],
        )?;
        counter(
            &mut e,
            "jetscale_exporter_send_failed_transactions",
            "Attempts to commit a batch that failed (each is retried; nothing is acknowledged until it commits).",
            &[(pg(), t.write_retries)],
        )?;
        histogram(
            &mut e,
            "jetscale_exporter_transaction_duration_seconds",
            "Time from a batch's first attempt to its commit.",
            &pg(),
            c.transaction_duration.cumulative_seconds(),
        )?;
        histogram(
            &mut e,
            "jetscale_exporter_transaction_size_rows",
            "Rows and dead letters per committed transaction.",
            &pg(),
            c.transaction_rows.cumulative(),
        )?;
        histogram(
            &mut e,
            "jetscale_exporter_commit_latency_seconds",
            "Time from a message's publication into the stream to the commit of its rows.",
            &pg(),
            c.latency.cumulative_seconds(),
        )?;
        counter(
            &mut e,
            "jetscale_exporter_series_cache_misses",
            "Series the series cache did not hold: found in the database, or created.",
            &[
                (
                    vec![("exporter", "postgresql"), ("result", "found")],
                    t.series_found,
                ),
                (
                    vec![("exporter", "postgresql"), ("result", "created")],
                    t.series_created,
                ),
            ],
        )?;
        let lag = &c.lag;
        gauge(
            &mut e,
            "jetscale_exporter_series_cache_entries",
            "Series the series cache holds.",
            &[(pg(), lag.series_cached.load(Ordering::Relaxed) as f64)],
        )?;
        gauge(
            &mut e,
            "jetscale_receiver_consumer_lag_messages",
            "The consumer's backlog: not yet delivered (pending) and delivered but not acknowledged (ack_pending).",
            &[
                (
                    vec![("receiver", "nats"), ("state", "pending")],
                    lag.pending.load(Ordering::Relaxed) as f64,
                ),
                (
                    vec![("receiver", "nats"), ("state", "ack_pending")],
                    lag.ack_pending.load(Ordering::Relaxed) as f64,
                ),
            ],
        )?;
        gauge(
            &mut e,
            "jetscale_receiver_consumer_lag_seconds",
            "Age of the oldest message the consumer has not acknowledged (0 when there is none).",
            &[(
                nats(),
                lag.oldest_unacked_ms.load(Ordering::Relaxed) as f64 / 1e3,
            )],
        )?;
        let ready = c.health.readiness().ready;
        gauge(
            &mut e,
            "jetscale_ready",
            "1 while /health/ready answers 200, else 0.",
            &[(vec![], if ready { 1.0 } else { 0.0 })],
        )?;
        Ok(())
    }
}

/// CPU time and memory of this process, from `/proc/self` (Linux).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = process_stats() else {
            return Ok(());
        };
        let cpu = e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the collector process.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.cpu_seconds).encode(cpu)?;
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "Resident memory of the collector process.",
            &[(vec![], stats.resident_bytes as f64)],
        )?;
        gauge(
            &mut e,
            "process_virtual_memory_bytes",
            "Virtual memory of the collector process.",
            &[(vec![], stats.virtual_bytes as f64)],
        )
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
}

fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14, 15 (utime, stime, in clock ticks), 23 (vsize, bytes), 24 (rss, pages);
    // `after` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporters::postgres::writer::Committed;

    #[test]
    fn the_text_carries_every_family_with_its_values() {
        let counters = Arc::new(Counters::default());
        counters.record(&Committed {
            rows: 5,
            rows_by_table: [3, 1, 0, 1],
            messages: 4,
            dead_letters: 1,
            dead_lettered: vec![crate::exporters::postgres::writer::Rejected {
                stream_seq: 9,
                subject: "telemetry.x".into(),
                reason: "malformed: not JSON".into(),
                payload: Default::default(),
            }],
            ..Committed::default()
        });
        let text = render(&registry(counters)).unwrap();
        for line in [
            "jetscale_receiver_accepted_messages_total{receiver=\"nats\"} 3",
            "jetscale_receiver_refused_messages_total{receiver=\"nats\",reason=\"malformed\"} 1",
            "jetscale_receiver_accepted_metric_points_total{receiver=\"nats\"} 4",
            "jetscale_exporter_sent_rows_total{exporter=\"postgresql\",table=\"logs\"} 1",
            "jetscale_exporter_transaction_size_rows_bucket{le=\"8.0\",exporter=\"postgresql\"} 1",
            "jetscale_ready 0.0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"));

        let classic = to_classic_text(&text);
        assert!(classic.contains(
            "# TYPE jetscale_receiver_accepted_messages_total counter\n\
             jetscale_receiver_accepted_messages_total{receiver=\"nats\"} 3\n"
        ));
        assert!(classic.contains("# HELP process_cpu_seconds_total User"));
        assert!(classic.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(!classic.contains("# EOF"));
    }
}
