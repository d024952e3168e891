//! The collector's own measurements: counters live in the pipeline; this holds the latency
//! histogram (publish → commit), fixed-size so it never grows with traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
