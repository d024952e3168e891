//! What every decode target shares: a sink that discards, a fixed clock, one resource
//! processor (so the upsert path runs too).

use jetscale::config::{AttributeAction, AttributeActionKind, Encoding, Limits};
use jetscale::decode::{DecodeContext, Incoming, RecordSink, Rejection};
use jetscale_model::{DistributionPoint, LogRecord, MetricPoint, SpanRecord};

/// Accepts every record and keeps nothing.
pub struct Discard;

impl RecordSink for Discard {
    fn metric(&mut self, _: &MetricPoint<'_>) -> Result<(), Rejection> {
        Ok(())
    }
    fn distribution(&mut self, _: &DistributionPoint<'_>) -> Result<(), Rejection> {
        Ok(())
    }
    fn span(&mut self, _: &SpanRecord<'_>) -> Result<(), Rejection> {
        Ok(())
    }
    fn log(&mut self, _: &LogRecord<'_>) -> Result<(), Rejection> {
        Ok(())
    }
}

/// The subjects a message may arrive on (the protobuf signal can come from the subject).
pub const SUBJECTS: [&str; 4] = [
    "telemetry.metrics.sensor-001",
    "telemetry.spans.api.run-1",
    "telemetry.logs.api.error",
    "other.subject",
];

/// Decodes `payload` with the default limits and a fixed time window (2020 to 2033), so a
/// run is reproducible.
pub fn decode(subject: &str, content_type: Option<&str>, format: Option<&str>, payload: &[u8]) {
    let limits = Limits::default();
    let actions = [AttributeAction {
        key: "pipeline.processed_at".into(),
        kind: AttributeActionKind::Upsert,
        value_json: "\"fuzz\"".into(),
        value_text: Some("fuzz".into()),
    }];
    let ctx = DecodeContext {
        limits: &limits,
        resource_actions: &actions,
        encoding: Encoding::Auto,
        min_time_ns: 1_577_836_800_000_000_000,
        max_time_ns: 2_000_000_000_000_000_000,
    };
    let msg = Incoming {
        subject,
        content_type,
        format_header: format,
        payload,
    };
    let _ = jetscale::decode::decode(&msg, &ctx, &mut Discard);
}
