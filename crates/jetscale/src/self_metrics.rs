//! The collector's own measurements: the counters of what it committed and the
//! publish-to-commit latency histogram, fixed-size so they never grow with traffic.

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
        let now_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        for published in &done.published_ns {
            self.latency.record_ns(now_ns - published);
        }
    }
}

/// Buckets of ~19% width from 1 µs to about 2.5 hours.
const BUCKETS: usize = 128;

/// A lock-free log-scale histogram of durations.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
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
    }
}
