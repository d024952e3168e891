//! The flat JSON wire formats of the NATS-native service design: span records, metric points
//! and log records.
//!
//! Field names and shapes are exactly those of that design; unknown fields are ignored so a
//! newer publisher does not break an older collector.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A span record (`telemetry.spans.{service}.{run_id}`), deduplicated by the Nats-Msg-Id
/// `{trace_id}.{span_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FlatSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    pub name: String,
    pub service: String,
    pub kind: String,
    /// RFC 3339.
    pub start_time: String,
    /// RFC 3339.
    pub end_time: String,
    pub duration_ms: f64,
    pub status: String,
    pub attributes: BTreeMap<String, serde_json::Value>,
    pub events: Vec<serde_json::Value>,
    pub error: String,
}

impl FlatSpan {
    /// The Nats-Msg-Id the NATS-native service design uses for spans: `{trace_id}.{span_id}`.
    pub fn msg_id(&self) -> String {
        format!("{}.{}", self.trace_id, self.span_id)
    }
}

/// A metric point (`telemetry.metrics.{service}.{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FlatMetric {
    pub name: String,
    /// `gauge`, `counter`, `histogram`, … as the service reports it.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: f64,
    pub tags: BTreeMap<String, serde_json::Value>,
    pub service: String,
    /// RFC 3339.
    pub timestamp: String,
}

/// A log record (`telemetry.logs.{service}.{level}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FlatLog {
    pub level: String,
    pub message: String,
    pub service: String,
    /// RFC 3339.
    pub timestamp: String,
    pub fields: BTreeMap<String, serde_json::Value>,
    pub error: String,
}

/// Parses an RFC 3339 timestamp (as in the flat records) into nanoseconds since the epoch.
///
/// ```
/// let ns = jetscale_model::flat::rfc3339_to_unix_nanos("2024-01-15T10:30:01.234Z").unwrap();
/// assert_eq!(ns, 1_705_314_601_234_000_000);
/// ```
pub fn rfc3339_to_unix_nanos(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC.
pub fn unix_nanos_to_rfc3339(nanos: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_designs_span_parses() {
        let text = r#"{
            "trace_id": "a1b2c3d4e5f6", "span_id": "f6e5d4c3b2a1", "parent_id": "1a2b3c4d5e6f",
            "name": "worker.executeTask", "service": "worker", "kind": "server",
            "start_time": "2024-01-15T10:30:00Z", "end_time": "2024-01-15T10:30:01.234Z",
            "duration_ms": 1234, "status": "ok",
            "attributes": {"run_id": "abc123", "step_id": "build"}, "events": [], "error": ""
        }"#;
        let span: FlatSpan = serde_json::from_str(text).unwrap();
        assert_eq!(span.msg_id(), "a1b2c3d4e5f6.f6e5d4c3b2a1");
        assert_eq!(span.duration_ms, 1234.0);
        assert_eq!(
            rfc3339_to_unix_nanos(&span.end_time).unwrap()
                - rfc3339_to_unix_nanos(&span.start_time).unwrap(),
            1_234_000_000
        );
    }

    #[test]
    fn the_service_designs_metric_and_log_parse() {
        let metric: FlatMetric = serde_json::from_str(
            r#"{"name": "step.duration_ms", "type": "histogram", "value": 1234.0,
                "tags": {"task_type": "build"}, "service": "worker",
                "timestamp": "2024-01-15T10:30:01Z"}"#,
        )
        .unwrap();
        assert_eq!(metric.kind, "histogram");
        let log: FlatLog = serde_json::from_str(
            r#"{"level": "error", "message": "task handler returned error, will retry",
                "service": "engine", "timestamp": "2024-01-15T10:30:01Z",
                "fields": {"run_id": "abc123", "task_type": "build"},
                "error": "connection refused"}"#,
        )
        .unwrap();
        assert_eq!(log.error, "connection refused");
        assert_eq!(
            unix_nanos_to_rfc3339(rfc3339_to_unix_nanos(&log.timestamp).unwrap()),
            "2024-01-15T10:30:01Z"
        );
    }
}
