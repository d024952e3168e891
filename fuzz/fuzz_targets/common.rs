//! What every decode target shares: the subjects a message may arrive on, a fixed clock, one
//! resource processor (so the upsert path runs too), and the first byte of the input as the
//! pick of subject and headers.

use jetscale::config::{AttributeAction, AttributeActionKind, Encoding, Limits};
use jetscale::decode::{DecodeContext, Discard, Incoming};

/// The subjects a message may arrive on (the protobuf signal can come from the subject).
const SUBJECTS: [&str; 4] = [
    "telemetry.metrics.sensor-001",
    "telemetry.spans.api.run-1",
    "telemetry.logs.api.error",
    "other.subject",
];

/// The subject `pick` chooses.
pub fn subject(pick: u8) -> &'static str {
    SUBJECTS[usize::from(pick) % SUBJECTS.len()]
}

/// A message's subject, `Content-Type` and `Jetscale-Format` headers.
pub type Envelope = (&'static str, Option<&'static str>, Option<&'static str>);

/// Decodes `data` after its first byte, on the subject and with the headers that `envelope`
/// makes of that byte.
pub fn decode_picked(data: &[u8], envelope: impl FnOnce(u8) -> Envelope) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let (subject, content_type, format) = envelope(pick);
    decode(subject, content_type, format, payload);
}

/// Decodes `payload` with the default limits and a fixed time window (2020 to 2033), so a
/// run is reproducible.
fn decode(subject: &str, content_type: Option<&str>, format: Option<&str>, payload: &[u8]) {
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
    let _ = jetscale::decode::decode(&msg, &ctx, &mut Discard::default());
}
