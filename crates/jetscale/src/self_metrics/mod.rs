//! The collector's own measurements: the counters of what it committed, the
//! publish-to-commit latency histogram, the consumer's lag and the collector's health, all
//! fixed-size atomics so they never grow with traffic and never take a lock on the hot path.
//!
//! [`registry`] turns them into Prometheus / OpenMetrics text at scrape time, [`health`]
//! decides readiness, and [`http`] serves both on one listener (`service.telemetry.metrics.address`).

pub mod health;
pub mod http;
pub mod registry;

use crate::exporters::postgres::writer::Committed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Declares the counters once: the live, shared [`Counters`] and the [`Totals`] read from
/// them, so a new counter is one line and every report carries it.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters the collector keeps; shared with whoever reports progress.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Publish-to-commit latency of committed messages.
            pub latency: LatencyHistogram,
            /// How long each committed transaction took, from its first attempt.
            pub transaction_duration: LatencyHistogram,
            /// Rows (and dead letters) per committed transaction.
            pub transaction_rows: SizeHistogram,
            /// Rows written per table, indexed by `Table as usize`.
            pub rows_by_table: [AtomicU64; 4],
            /// Dead letters by [`DeadLetterReason`].
            pub dead_letters_by_reason: [AtomicU64; DeadLetterReason::ALL.len()],
            /// The consumer's backlog, as last polled.
            pub lag: Lag,
            /// Whether the collector can do its job, for `/health/ready`.
            pub health: health::Health,
        }

        /// The counters' values at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Totals {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter.
            pub fn snapshot(&self) -> Totals {
                Totals {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Messages committed (stored or dead-lettered).
    messages,
    /// Rows written.
    rows,
    /// Messages stored as dead letters.
    dead_letters,
    /// Messages skipped because an earlier transaction had committed them.
    duplicates,
    /// Transactions committed.
    batches,
    /// Failed attempts to write a batch.
    write_retries,
    /// Series the cache missed and the database already had.
    series_found,
    /// Series created.
    series_created,
    /// Deliveries fetched from the consumer (first deliveries and redeliveries).
    received,
    /// Deliveries JetStream had delivered before (its `num_delivered` above 1).
    redelivered,
}

impl Counters {
    /// Counts a committed batch, and its messages' publish-to-commit latency.
    pub fn record(&self, done: &Committed) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.messages, done.messages);
        add(&self.rows, done.rows);
        add(&self.dead_letters, done.dead_letters);
        add(&self.duplicates, done.duplicates);
        add(&self.batches, 1);
        add(&self.series_found, done.series_found);
        add(&self.series_created, done.series_created);
        for (counter, rows) in self.rows_by_table.iter().zip(done.rows_by_table) {
            add(counter, rows);
        }
        for dead in &done.dead_lettered {
            let reason = DeadLetterReason::of(&dead.reason) as usize;
            add(&self.dead_letters_by_reason[reason], 1);
        }
        self.transaction_rows
            .record((done.rows + done.dead_letters) as u64);
        let now_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        self.latency
            .record_all(done.published_ns.iter().map(|published| now_ns - published));
    }
}

/// Why a message was dead-lettered: the class its stored reason starts with (a bounded
/// set, so it can be a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    UnknownFormat,
    Malformed,
    Limit,
    Identity,
    Database,
    Other,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::UnknownFormat,
        DeadLetterReason::Malformed,
        DeadLetterReason::Limit,
        DeadLetterReason::Identity,
        DeadLetterReason::Database,
        DeadLetterReason::Other,
    ];

    /// The class of a stored reason (`"<kind>: <detail>"`, the kind as
    /// [`RejectionKind`](crate::decode::RejectionKind) displays it).
    pub fn of(reason: &str) -> Self {
        use crate::decode::RejectionKind as K;
        let kind = reason.split(':').next().unwrap_or_default();
        [
            (K::UnknownFormat, DeadLetterReason::UnknownFormat),
            (K::Malformed, DeadLetterReason::Malformed),
            (K::Limit, DeadLetterReason::Limit),
            (K::Identity, DeadLetterReason::Identity),
            (K::Database, DeadLetterReason::Database),
        ]
        .into_iter()
        .find(|(k, _)| k.to_string() == kind)
        .map_or(DeadLetterReason::Other, |(_, r)| r)
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterReason::UnknownFormat => "unknown_format",
            DeadLetterReason::Malformed => "malformed",
            DeadLetterReason::Limit => "limit",
            DeadLetterReason::Identity => "identity",
            DeadLetterReason::Database => "database",
            DeadLetterReason::Other => "other",
        }
    }
}

/// The consumer's backlog as the lag poller last saw it.
#[derive(Debug, Default)]
pub struct Lag {
    /// Messages the consumer has not delivered yet.
    pub pending: AtomicU64,
    /// Messages delivered and not acknowledged yet.
    pub ack_pending: AtomicU64,
    /// Age of the oldest unacknowledged message, in milliseconds (0 when there is none).
    pub oldest_unacked_ms: AtomicU64,
    /// Series the series cache holds.
    pub series_cached: AtomicU64,
}

/// Buckets of ~19% width from 1 µs to about 2.5 hours.
const BUCKETS: usize = 128;

/// A lock-free log-scale histogram of durations.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// Powers of two from 1 to 2^20 (and more): sizes of transactions in rows.
const SIZE_BUCKETS: usize = 22;

/// A lock-free histogram of sizes, one bucket per power of two.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    counts: [AtomicU64; SIZE_BUCKETS],
    sum: AtomicU64,
}

impl SizeHistogram {
    pub fn record(&self, size: u64) {
        // Bucket i holds sizes up to 2^i.
        let bucket = (u64::BITS - size.saturating_sub(1).leading_zeros()) as usize;
        self.counts[bucket.min(SIZE_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(size, Ordering::Relaxed);
    }

    /// `(sum, count, cumulative buckets as (upper bound, count))`, the last bound infinite.
    pub fn cumulative(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut seen = 0;
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                seen += c.load(Ordering::Relaxed);
                let upper = if i == SIZE_BUCKETS - 1 {
                    f64::INFINITY
                } else {
                    (1u64 << i) as f64
                };
                (upper, seen)
            })
            .collect();
        (self.sum.load(Ordering::Relaxed) as f64, seen, buckets)
    }
}

fn bucket_of(ns: i64) -> usize {
    let us = (ns.max(1000) / 1000) as f64;
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

fn upper_ns(bucket: usize) -> u64 {
    (2f64.powf((bucket + 1) as f64 / 4.0) * 1000.0) as u64
}

impl LatencyHistogram {
    pub fn record_ns(&self, ns: i64) {
        self.counts[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns.max(0) as u64, Ordering::Relaxed);
    }

    /// Records many durations: one atomic add per duration for its bucket, one for the sum.
    pub fn record_all(&self, durations_ns: impl Iterator<Item = i64>) {
        let mut sum = 0u64;
        for ns in durations_ns {
            self.counts[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
            sum = sum.wrapping_add(ns.max(0) as u64);
        }
        self.sum_ns.fetch_add(sum, Ordering::Relaxed);
    }

    /// In seconds, for exposition: `(sum, count, cumulative buckets)` with one bound per
    /// power of two from about 1 ms to about 2.4 hours (every fourth internal bucket, so
    /// a scrape carries 25 buckets, not 128), the last one infinite.
    pub fn cumulative_seconds(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut seen = 0;
        let mut buckets = Vec::with_capacity(26);
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            // Upper bounds 2^((i+1)/4) µs: whole powers of two at i = 3, 7, 11, ...
            if i >= 39 && i % 4 == 3 && i < BUCKETS - 1 {
                buckets.push((upper_ns(i) as f64 / 1e9, seen));
            }
        }
        buckets.push((f64::INFINITY, seen));
        (
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            seen,
            buckets,
        )
    }

    /// The upper bound of the bucket holding quantile `q`.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Duration::from_nanos(upper_ns(i)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_what_was_recorded() {
        let counters = Counters::default();
        let done = Committed {
            rows: 7,
            messages: 3,
            dead_letters: 1,
            duplicates: 1,
            series_created: 2,
            ..Committed::default()
        };
        counters.record(&done);
        counters.record(&done);
        counters.write_retries.fetch_add(1, Ordering::Relaxed);
        let totals = counters.snapshot();
        let expected = Totals {
            messages: 6,
            rows: 14,
            dead_letters: 2,
            duplicates: 2,
            batches: 2,
            write_retries: 1,
            series_found: 0,
            series_created: 4,
            received: 0,
            redelivered: 0,
        };
        assert_eq!(totals, expected);
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        for ms in 1..=100 {
            h.record_ns(ms * 1_000_000);
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1000.0;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((50.0..62.0).contains(&p50), "{p50}");
        assert!((99.0..120.0).contains(&p99), "{p99}");
        let (sum, count, buckets) = h.cumulative_seconds();
        assert_eq!(count, 100);
        assert!((sum - 5.05).abs() < 1e-9, "{sum}");
        // Cumulative, bounds rising, the last one infinite and holding everything.
        assert!(buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 100)));
        let first_ms = buckets[0].0 * 1e3;
        assert!((1.0..1.1).contains(&first_ms), "{first_ms}");
    }

    #[test]
    fn sizes_fall_in_power_of_two_buckets() {
        let h = SizeHistogram::default();
        for size in [1, 2, 3, 4, 5, 5000] {
            h.record(size);
        }
        let (sum, count, buckets) = h.cumulative();
        assert_eq!((sum, count), (5015.0, 6));
        let at = |bound: f64| buckets.iter().find(|b| b.0 == bound).map(|b| b.1);
        assert_eq!(at(1.0), Some(1));
        assert_eq!(at(2.0), Some(2));
        assert_eq!(at(4.0), Some(4));
        assert_eq!(at(8.0), Some(5));
        assert_eq!(at(4096.0), Some(5));
        assert_eq!(at(8192.0), Some(6));
    }

    #[test]
    fn dead_letter_reasons_are_read_from_the_stored_reason() {
        use crate::decode::{Rejection, RejectionKind};
        let stored = Rejection::new(RejectionKind::Limit, "max_message_bytes: 9 > 8").to_string();
        assert_eq!(DeadLetterReason::of(&stored), DeadLetterReason::Limit);
        let stored = Rejection::malformed("expected a JSON object").to_string();
        assert_eq!(DeadLetterReason::of(&stored), DeadLetterReason::Malformed);
        assert_eq!(
            DeadLetterReason::of("something else"),
            DeadLetterReason::Other
        );
    }
}
