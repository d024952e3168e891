//! Readiness: the collector is ready only while NATS is connected, the consumer is bound
//! and the database accepts commits. Each loop reports what it sees into atomics; the
//! verdict (and the reasons, for the body of `/health/ready`) is worked out on request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What the loops report. `Default` is "starting": not ready until the pipeline says so.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once start-up is done (stream, consumer and schema checked).
    started: AtomicBool,
    /// The consumer is bound: false from a `consumer deleted` until it is created again.
    consumer_bound: AtomicBool,
    /// Milliseconds since `epoch` at the first of the commits failing now; 0 when the last
    /// attempt committed.
    failing_since_ms: AtomicU64,
    /// The NATS connection, asked for its state on each request.
    nats: OnceLock<async_nats::Client>,
    epoch: OnceLock<Instant>,
    /// How long commits may fail before the collector is not ready (milliseconds).
    unready_after_ms: AtomicU64,
}

/// The answer to `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// One line per failing condition; empty when ready.
    pub reasons: Vec<String>,
}

impl Health {
    fn now_ms(&self) -> u64 {
        // Never 0, so 0 can mean "not failing".
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }

    /// Start-up is done: the pipeline runs with `nats`, commits may fail for `unready_after`.
    pub fn started(&self, nats: &async_nats::Client, unready_after: Duration) {
        let _ = self.nats.set(nats.clone());
        self.unready_after_ms
            .store(unready_after.as_millis() as u64, Ordering::Relaxed);
        self.consumer_bound.store(true, Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
    }

    /// The consumer was deleted (`false`), or bound again (`true`).
    pub fn consumer_bound(&self, bound: bool) {
        self.consumer_bound.store(bound, Ordering::Relaxed);
    }

    /// A transaction committed.
    pub fn committed(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// An attempt to commit failed (the first failure of a run of them starts the clock).
    pub fn commit_failed(&self) {
        let now = self.now_ms();
        let _ =
            self.failing_since_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the collector is ready, and if not, why.
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if !self.started.load(Ordering::Relaxed) {
            reasons.push(
                "starting: the stream, the consumer and the database are being checked".to_owned(),
            );
        }
        if let Some(nats) = self.nats.get() {
            let state = nats.connection_state();
            if state != async_nats::connection::State::Connected {
                reasons.push(format!(
                    "NATS is not connected ({state}); the client is reconnecting"
                ));
            }
        }
        if self.started.load(Ordering::Relaxed) && !self.consumer_bound.load(Ordering::Relaxed) {
            reasons.push("the consumer was deleted; the collector is creating it again".to_owned());
        }
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since != 0 {
            let failing = Duration::from_millis(self.now_ms().saturating_sub(since));
            let limit = Duration::from_millis(self.unready_after_ms.load(Ordering::Relaxed));
            if failing > limit {
                reasons.push(format!(
                    "the database has refused commits for {:.0}s (more than service.telemetry.health.unready_after, {:.0}s); the collector keeps retrying",
                    failing.as_secs_f64(),
                    limit.as_secs_f64()
                ));
            }
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_started_nor_after_commits_fail_too_long() {
        let health = Health::default();
        assert!(!health.readiness().ready);
        assert!(health.readiness().reasons[0].starts_with("starting"));
        // Started without a NATS client to ask: only the other conditions count.
        health.started.store(true, Ordering::Relaxed);
        health.consumer_bound(true);
        health.unready_after_ms.store(20, Ordering::Relaxed);
        assert_eq!(health.readiness().reasons, Vec::<String>::new());
        health.commit_failed();
        assert!(health.readiness().ready, "failing for less than the limit");
        std::thread::sleep(Duration::from_millis(40));
        health.commit_failed();
        let readiness = health.readiness();
        assert!(!readiness.ready);
        assert!(
            readiness.reasons[0].contains("refused commits"),
            "{readiness:?}"
        );
        health.committed();
        assert!(health.readiness().ready);
        health.consumer_bound(false);
        assert!(health.readiness().reasons[0].contains("consumer was deleted"));
    }
}
