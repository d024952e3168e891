//! What a run simulates and how hard it pushes, checked before anything is published.

use super::SimulateError;
use std::time::Duration;

/// What to simulate and how hard to push.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// Number of devices (`sensor-000001` ..).
    pub devices: u32,
    /// Messages per device; with `duration`, whichever ends first; with neither, the run lasts
    /// until its future is dropped.
    pub count: Option<u64>,
    /// Wall-clock limit: no new message is started after it (in-flight ones are still awaited).
    pub duration: Option<Duration>,
    /// Time between two messages of one device (the IoT pipeline design's device sleeps 10 s).
    /// Device start times are spread evenly over one interval, so the fleet produces a steady
    /// `devices / interval` msg/s rather than bursts. Zero: publish as fast as acks come back.
    pub interval: Duration,
    /// Cap on total messages per second across the fleet.
    pub rate: Option<f64>,
    /// Share of devices (0..=1) whose temperature drifts to 36–45 °C, for anomaly queries.
    pub overheat_share: f64,
    /// Number of distinct `device.location` values (`warehouse-a` ..).
    pub locations: u32,
    /// Subjects are `{subject_prefix}.{device_id}`.
    pub subject_prefix: String,
    /// Device ids are `{device_prefix}{n:06}`.
    pub device_prefix: String,
    /// Messages held at once, awaiting their ack or their next retry; bounds memory and the
    /// server's backlog of replies. When it is full (the stream stays unavailable), devices
    /// wait instead of the heap growing.
    pub max_in_flight: usize,
    /// How long a message is retried (same `Nats-Msg-Id`) before it counts as an error: long
    /// enough for a stream leader election or a short loss of the connection. Must fit the
    /// stream's duplicate window, which the run checks before it starts.
    pub retry_budget: Duration,
    /// Seed of every device's values: equal seeds give equal value sequences.
    pub seed: u64,
    /// Keep every acknowledged point in [`Report::sent`], so tests can check that each value
    /// landed in the database bit for bit. Costs memory; off for load runs.
    pub record_sent: bool,
    /// Publish most messages as plain NATS messages, confirmed in groups (see the module's
    /// documentation): for load runs that must not be limited by publish acks.
    pub fire_and_forget: bool,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            devices: 10,
            count: None,
            duration: None,
            interval: Duration::from_secs(10),
            rate: None,
            overheat_share: 0.02,
            locations: 8,
            subject_prefix: "telemetry.metrics".to_owned(),
            device_prefix: "sensor-".to_owned(),
            max_in_flight: 4096,
            retry_budget: jetscale_sdk::DEFAULT_RETRY_BUDGET,
            seed: 0,
            record_sent: false,
            fire_and_forget: false,
        }
    }
}

impl SimulateOptions {
    /// Checks the options before anything is published, so a typo fails with a sentence rather
    /// than with a server error on the first message.
    pub fn validate(&self) -> Result<(), SimulateError> {
        let bad = |msg: String| Err(SimulateError::InvalidOptions(msg));
        if self.devices == 0 {
            return bad("devices must be at least 1".into());
        }
        if self.locations == 0 {
            return bad("locations must be at least 1".into());
        }
        if self.retry_budget.is_zero() {
            return bad("the retry budget must be longer than zero (default 30s)".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.overheat_share) {
            return bad(format!(
                "overheat_share must be between 0 and 1 (a share of devices), got {}",
                self.overheat_share
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return bad(format!(
                    "rate must be a positive number of messages per second, got {rate}"
                ));
            }
        }
        if let Err(why) = check_subject_prefix(&self.subject_prefix) {
            return bad(format!(
                "subject prefix {:?} {why} (example: telemetry.metrics)",
                self.subject_prefix
            ));
        }
        if let Some(c) = self
            .device_prefix
            .chars()
            .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        {
            return bad(format!(
                "device prefix {:?} contains {c:?}: a device id must be a single subject token \
                 (no '.', '*', '>' or whitespace)",
                self.device_prefix
            ));
        }
        Ok(())
    }
}

fn check_subject_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("is empty");
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Err("has an empty token (leading, trailing or doubled '.')");
        }
        if token.contains(['*', '>']) {
            return Err("contains a wildcard ('*' or '>'); messages need a literal subject");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("contains whitespace");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let ok = SimulateOptions::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SimulateOptions {
                devices: 0,
                ..ok.clone()
            },
            SimulateOptions {
                retry_budget: Duration::ZERO,
                ..ok.clone()
            },
            SimulateOptions {
                rate: Some(0.0),
                ..ok.clone()
            },
            SimulateOptions {
                overheat_share: 1.5,
                ..ok.clone()
            },
            SimulateOptions {
                subject_prefix: "telemetry.>".into(),
                ..ok.clone()
            },
            SimulateOptions {
                subject_prefix: "telemetry..metrics".into(),
                ..ok.clone()
            },
            SimulateOptions {
                device_prefix: "a.b".into(),
                ..ok.clone()
            },
        ] {
            let err = bad.validate().expect_err("invalid");
            assert!(matches!(err, SimulateError::InvalidOptions(_)), "{err}");
        }
    }
}
