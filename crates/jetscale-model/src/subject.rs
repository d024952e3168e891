//! Subject conventions of the TELEMETRY stream (the IoT pipeline design and the NATS-native
//! service design).
//!
//! Subjects route messages; they never decide the wire format (the IoT pipeline design puts
//! OTLP JSON on `telemetry.metrics.{device}` and the NATS-native service design puts flat
//! records on `telemetry.metrics.{service}.{name}`).

/// Root of every telemetry subject.
pub const ROOT: &str = "telemetry";
/// Filter that covers every telemetry subject.
pub const ALL: &str = "telemetry.>";

/// The signal a subject is published under, when it follows the conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `telemetry.metrics.…`
    Metrics,
    /// `telemetry.spans.…`
    Spans,
    /// `telemetry.logs.…`
    Logs,
}

impl Signal {
    /// The subject token after `telemetry.`.
    pub const fn token(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Spans => "spans",
            Signal::Logs => "logs",
        }
    }
}

/// Splits a subject into its signal and the tokens after it, if it follows the conventions.
///
/// ```
/// use jetscale_model::subject::{parse, Signal};
/// let (signal, rest) = parse("telemetry.metrics.sensor-001").unwrap();
/// assert_eq!(signal, Signal::Metrics);
/// assert_eq!(rest, vec!["sensor-001"]);
/// ```
pub fn parse(subject: &str) -> Option<(Signal, Vec<&str>)> {
    let mut tokens = subject.split('.');
    if tokens.next()? != ROOT {
        return None;
    }
    let signal = match tokens.next()? {
        "metrics" => Signal::Metrics,
        "spans" => Signal::Spans,
        "logs" => Signal::Logs,
        _ => return None,
    };
    Some((signal, tokens.collect()))
}

/// The device token of an IoT device's metrics subject `telemetry.metrics.{device_id}`.
///
/// Returns `None` for any other shape (a service's `telemetry.metrics.{service}.{name}`
/// has more tokens and names no device).
pub fn device_of(subject: &str) -> Option<&str> {
    match parse(subject)? {
        (Signal::Metrics, rest) if rest.len() == 1 => Some(rest[0]),
        _ => None,
    }
}

/// Whether a string can be used as one subject token: non-empty, no dots, wildcards or
/// whitespace (NATS would split or reject it).
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .bytes()
            .any(|b| matches!(b, b'.' | b'*' | b'>' | b' ' | b'\t' | b'\r' | b'\n' | 0))
}

/// `telemetry.metrics.{device_id}`, the subject an IoT device publishes on.
pub fn device_metrics(device_id: &str) -> String {
    format!("{ROOT}.metrics.{device_id}")
}

/// `telemetry.metrics.{service}.{name}` (the NATS-native service
/// design). Dots in the metric name stay tokens.
pub fn service_metric(service: &str, name: &str) -> String {
    format!("{ROOT}.metrics.{service}.{name}")
}

/// `telemetry.spans.{service}.{run_id}` (the NATS-native service design).
pub fn spans(service: &str, run_id: &str) -> String {
    format!("{ROOT}.spans.{service}.{run_id}")
}

/// `telemetry.logs.{service}.{level}` (the NATS-native service design).
pub fn logs(service: &str, level: &str) -> String {
    format!("{ROOT}.logs.{service}.{level}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_token_only_for_the_iot_device_shape() {
        assert_eq!(
            device_of("telemetry.metrics.sensor-001"),
            Some("sensor-001")
        );
        assert_eq!(device_of("telemetry.metrics.worker.step.duration_ms"), None);
        assert_eq!(device_of("telemetry.logs.engine"), None);
        assert_eq!(device_of("other.metrics.x"), None);
    }

    #[test]
    fn tokens_reject_separators_and_wildcards() {
        assert!(is_valid_token("sensor-001"));
        for bad in ["", "a.b", "*", ">", "a b"] {
            assert!(!is_valid_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn builders_follow_the_service_design() {
        assert_eq!(spans("worker", "abc123"), "telemetry.spans.worker.abc123");
        assert_eq!(
            service_metric("worker", "step.duration_ms"),
            "telemetry.metrics.worker.step.duration_ms"
        );
        assert_eq!(logs("engine", "info"), "telemetry.logs.engine.info");
    }
}
