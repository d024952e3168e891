//! Bytes to records. The format of each message is decided by its headers first
//! (`Content-Type`, `Jetscale-Format`), then by its content; the subject never decides it.
//! Every failure is a [`Rejection`] that names what was wrong, so the message can be
//! dead-lettered with that reason instead of retried forever.

pub mod attributes;
pub mod detect;
pub mod flat;
pub mod numbers;
pub mod otlp_json;
pub mod otlp_proto;
#[cfg(test)]
pub(crate) mod testing;

pub use detect::{detect, Format};

use crate::config::{AttributeAction, Encoding, Limits};
use jetscale_model::{DistributionPoint, LogRecord, MetricPoint, SpanRecord};

/// Why a message can not be stored. Always dead-lettered, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub detail: String,
}

/// The class of a rejection, stored in the dead-letter table's `reason` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// Not any format jetscale reads.
    UnknownFormat,
    /// The format was recognised but the content does not follow it.
    Malformed,
    /// A configured limit was exceeded; the detail names the limit.
    Limit,
    /// Payload and subject disagree about who sent it.
    Identity,
    /// The database refused the message's rows.
    Database,
}

impl std::fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectionKind::UnknownFormat => "unknown format",
            RejectionKind::Malformed => "malformed",
            RejectionKind::Limit => "limit exceeded",
            RejectionKind::Identity => "identity mismatch",
            RejectionKind::Database => "rejected by the database",
        })
    }
}

impl Rejection {
    pub fn new(kind: RejectionKind, detail: impl Into<String>) -> Self {
        Rejection {
            kind,
            detail: detail.into(),
        }
    }
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RejectionKind::Malformed, detail)
    }
    pub fn limit(detail: impl Into<String>) -> Self {
        Self::new(RejectionKind::Limit, detail)
    }
}

/// Where decoded records go. The batch implements it and encodes rows as they arrive, so
/// records never have to be collected in between.
pub trait RecordSink {
    /// One numeric point (gauge, sum, or a flat metric point).
    fn metric(&mut self, point: &MetricPoint<'_>) -> Result<(), Rejection>;
    /// One histogram, exponential histogram or summary point.
    fn distribution(&mut self, point: &DistributionPoint<'_>) -> Result<(), Rejection>;
    /// One span.
    fn span(&mut self, span: &SpanRecord<'_>) -> Result<(), Rejection>;
    /// One log record.
    fn log(&mut self, log: &LogRecord<'_>) -> Result<(), Rejection>;
}

/// A sink that keeps nothing but a count of the records it is given: for measuring or
/// fuzzing the decoders alone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Discard {
    /// Records received, of every kind.
    pub records: u64,
}

impl Discard {
    fn count(&mut self) -> Result<(), Rejection> {
        self.records += 1;
        Ok(())
    }
}

impl RecordSink for Discard {
    fn metric(&mut self, _: &MetricPoint<'_>) -> Result<(), Rejection> {
        self.count()
    }
    fn distribution(&mut self, _: &DistributionPoint<'_>) -> Result<(), Rejection> {
        self.count()
    }
    fn span(&mut self, _: &SpanRecord<'_>) -> Result<(), Rejection> {
        self.count()
    }
    fn log(&mut self, _: &LogRecord<'_>) -> Result<(), Rejection> {
        self.count()
    }
}

/// What every decoder needs besides the bytes: limits, processors and the clock.
#[derive(Debug, Clone)]
pub struct DecodeContext<'a> {
    pub limits: &'a Limits,
    pub resource_actions: &'a [AttributeAction],
    pub encoding: Encoding,
    /// Points before this are rejected (nanoseconds since the epoch).
    pub min_time_ns: i64,
    /// Points after this are rejected.
    pub max_time_ns: i64,
}

impl<'a> DecodeContext<'a> {
    /// A context whose time window is taken from the limits and the current time.
    pub fn now(
        limits: &'a Limits,
        resource_actions: &'a [AttributeAction],
        encoding: Encoding,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        DecodeContext {
            limits,
            resource_actions,
            encoding,
            min_time_ns: now.saturating_sub(limits.max_past.as_nanos() as i64),
            max_time_ns: now.saturating_add(limits.max_future.as_nanos() as i64),
        }
    }

    /// Checks a point's time against the window.
    pub fn check_time(&self, time_ns: i64) -> Result<(), Rejection> {
        if time_ns <= 0 {
            return Err(Rejection::malformed(
                "data point has timeUnixNano 0 or missing",
            ));
        }
        if time_ns < self.min_time_ns {
            return Err(Rejection::limit(format!(
                "max_past: point at {} is older than the retention window (earliest accepted {})",
                jetscale_model::flat::unix_nanos_to_rfc3339(time_ns),
                jetscale_model::flat::unix_nanos_to_rfc3339(self.min_time_ns)
            )));
        }
        if time_ns > self.max_time_ns {
            return Err(Rejection::limit(format!(
                "max_future: point at {} is too far in the future (latest accepted {})",
                jetscale_model::flat::unix_nanos_to_rfc3339(time_ns),
                jetscale_model::flat::unix_nanos_to_rfc3339(self.max_time_ns)
            )));
        }
        Ok(())
    }
}

/// Deserializes a JSON payload. A payload that is valid UTF-8 as a whole (nearly every one)
/// is checked in one pass and parsed as text, so serde_json does not validate each string
/// again on its own: one long check is much cheaper than hundreds of short ones (about a
/// tenth of the metrics decode). Any other payload takes serde_json's byte path, so it is
/// rejected, or accepted, with the same errors as before.
pub(crate) fn from_json_slice<'a, T: serde::Deserialize<'a>>(
    payload: &'a [u8],
) -> serde_json::Result<T> {
    match std::str::from_utf8(payload) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(payload),
    }
}

/// A message as the decoders see it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub subject: &'a str,
    pub content_type: Option<&'a str>,
    pub format_header: Option<&'a str>,
    pub payload: &'a [u8],
}

/// Decodes one message into the sink. On error the sink may hold part of the message:
/// the caller rolls it back.
pub fn decode(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    if msg.payload.len() > ctx.limits.max_message_bytes {
        return Err(Rejection::limit(format!(
            "max_message_bytes: message is {} bytes, the limit is {}",
            msg.payload.len(),
            ctx.limits.max_message_bytes
        )));
    }
    let format = detect(msg, ctx.encoding)?;
    let outcome = match format {
        Format::OtlpJsonMetrics => otlp_json::metrics::decode_metrics(msg, ctx, sink),
        Format::OtlpJsonTraces => otlp_json::traces::decode_traces(msg, ctx, sink),
        Format::OtlpJsonLogs => otlp_json::logs::decode_logs(msg, ctx, sink),
        Format::OtlpProtoMetrics => otlp_proto::decode_metrics(msg, ctx, sink),
        Format::OtlpProtoTraces => otlp_proto::decode_traces(msg, ctx, sink),
        Format::OtlpProtoLogs => otlp_proto::decode_logs(msg, ctx, sink),
        Format::OtlpProto => otlp_proto::decode_any(msg, ctx, sink),
        Format::FlatSpan => flat::decode_span(msg, ctx, sink),
        Format::FlatMetric => flat::decode_metric(msg, ctx, sink),
        Format::FlatLog => flat::decode_log(msg, ctx, sink),
    };
    match outcome {
        // Protobuf was only a guess (nothing declared it, the payload is not JSON) and the
        // bytes are not protobuf of the subject's signal: say so, rather than "malformed".
        Err(rejection)
            if matches!(
                format,
                Format::OtlpProtoMetrics | Format::OtlpProtoTraces | Format::OtlpProtoLogs
            ) && rejection.kind == RejectionKind::Malformed
                && rejection.detail.starts_with("OTLP protobuf")
                && !detect::declares_protobuf(msg, ctx.encoding) =>
        {
            Err(Rejection::new(
                RejectionKind::UnknownFormat,
                format!(
                    "not JSON, and not OTLP protobuf of the subject's signal ({}); send a {} or Content-Type header to say what it is",
                    rejection.detail,
                    detect::FORMAT_HEADER
                ),
            ))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{self, Collected};
    use super::*;
    use crate::config::Limits;

    fn run(
        subject: &str,
        payload: &[u8],
        content_type: Option<&str>,
        format_header: Option<&str>,
    ) -> Result<Collected, Rejection> {
        let limits = Limits::default();
        let msg = Incoming {
            subject,
            content_type,
            format_header,
            payload,
        };
        let mut sink = Collected::default();
        decode(&msg, &testing::ctx(&limits), &mut sink)?;
        Ok(sink)
    }

    /// How many rows of each kind: metrics, distributions, spans, logs.
    fn counts(got: &Collected) -> [usize; 4] {
        [
            got.metrics.len(),
            got.distributions.len(),
            got.spans.len(),
            got.logs.len(),
        ]
    }

    #[test]
    fn every_format_reaches_its_decoder() {
        let fixture = testing::fixture;
        let (traces_json, logs_json, metrics_json) = (
            fixture("otel_python_traces.json"),
            fixture("otel_python_logs.json"),
            fixture("otel_python_metrics.json"),
        );
        let (traces_pb, logs_pb) = (
            fixture("otel_python_traces.pb"),
            fixture("otel_python_logs.pb"),
        );
        let flat_log = br#"{"level": "info", "message": "m", "service": "s", "timestamp": "2024-01-15T10:30:01Z"}"#;
        let flat_metric = br#"{"name": "n", "type": "gauge", "value": 1, "service": "s", "timestamp": "2024-01-15T10:30:01Z"}"#;
        let flat_span = br#"{"trace_id": "t", "span_id": "s", "service": "s", "start_time": "2024-01-15T10:30:01Z"}"#;
        const SPANS: [usize; 4] = [0, 0, 3, 0];
        for (subject, payload, content_type, header, expected) in [
            ("telemetry.spans.a.b", &traces_json[..], None, None, SPANS),
            ("telemetry.logs.a.b", &logs_json, None, None, [0, 0, 0, 3]),
            (
                "telemetry.metrics.a",
                &metrics_json,
                None,
                None,
                [3, 3, 0, 0],
            ),
            // Protobuf by subject, by header, by Content-Type, and by trial.
            ("telemetry.spans.a.b", &traces_pb, None, None, SPANS),
            (
                "x",
                &traces_pb,
                None,
                Some("otlp-proto;signal=traces"),
                SPANS,
            ),
            (
                "x",
                &traces_pb,
                Some("application/x-protobuf; signal=traces"),
                None,
                SPANS,
            ),
            ("devices.any", &traces_pb, None, None, SPANS),
            (
                "x",
                &logs_pb,
                Some("application/x-protobuf"),
                None,
                [0, 0, 0, 3],
            ),
            ("telemetry.logs.s.info", flat_log, None, None, [0, 0, 0, 1]),
            ("x", flat_metric, None, Some("flat-metric"), [1, 0, 0, 0]),
            ("x", flat_span, None, None, [0, 0, 1, 0]),
        ] {
            let got = run(subject, payload, content_type, header)
                .unwrap_or_else(|e| panic!("{subject} {content_type:?} {header:?}: {e}"));
            assert_eq!(
                counts(&got),
                expected,
                "{subject} {content_type:?} {header:?}"
            );
        }
    }

    #[test]
    fn unknown_formats_are_rejected_with_a_reason() {
        for (subject, payload, header) in [
            ("telemetry.metrics.x", &b"hello"[..], None),
            ("telemetry.logs.x.info", &b"hello world"[..], None),
            ("telemetry.spans.x.y", &b"hello world"[..], None),
            ("telemetry.spans.x.y", &b"\x00\x01\x02"[..], None),
            ("devices.raw", &b"plain text"[..], None),
            ("x", &br#"{"temperature": 21.5}"#[..], None),
            ("x", &b"{}"[..], Some("csv")),
        ] {
            let err = run(subject, payload, None, header).unwrap_err();
            assert_eq!(err.kind, RejectionKind::UnknownFormat, "{subject}: {err}");
            assert!(!err.detail.is_empty());
        }
        // Declared protobuf that is not: malformed, with the decoder's reason.
        let err = run(
            "telemetry.metrics.x",
            b"hello",
            Some("application/x-protobuf"),
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, RejectionKind::Malformed, "{err}");
        assert!(err.detail.starts_with("OTLP protobuf metrics"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_judged_as_serde_json_judges_bytes() {
        let device = super::otlp_json::metrics::tests::DEVICE_PAYLOAD.as_bytes();
        let with = |from: &str, to: &[u8]| {
            let at = device
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .expect("the device payload holds the text replaced");
            [&device[..at], to, &device[at + from.len()..]].concat()
        };
        // In a string that is read: rejected, with serde_json's own message and position.
        let bad = with("warehouse-a", b"warehouse-\xff");
        let err = run("telemetry.metrics.sensor-001", &bad, None, None).unwrap_err();
        let expected = serde_json::from_slice::<serde_json::Value>(&bad).unwrap_err();
        assert_eq!(err.kind, RejectionKind::Malformed, "{err}");
        assert!(err.detail.ends_with(&expected.to_string()), "{err}");
        // In an unknown field's string, which serde_json skips unread: accepted, as before.
        let ignored = with(r#""unit": "Cel""#, b"\"unit\": \"Cel\", \"note\": \"\xff\"");
        assert_eq!(
            run("telemetry.metrics.sensor-001", &ignored, None, None)
                .unwrap()
                .metrics
                .len(),
            3
        );
    }

    #[test]
    fn message_size_is_checked_first() {
        let limits = Limits {
            max_message_bytes: 10,
            ..Limits::default()
        };
        let msg = testing::incoming("x", b"{\"resourceSpans\": []}");
        let err = decode(&msg, &testing::ctx(&limits), &mut Collected::default()).unwrap_err();
        assert!(err.detail.contains("max_message_bytes"), "{err}");
    }
}
