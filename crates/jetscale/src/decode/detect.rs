//! Which decoder a message goes to: headers first, then content.

use super::{Incoming, Rejection, RejectionKind};
use crate::config::Encoding;

/// Every wire format jetscale recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OtlpJsonMetrics,
    OtlpJsonTraces,
    OtlpJsonLogs,
    OtlpProtoMetrics,
    OtlpProtoTraces,
    OtlpProtoLogs,
    FlatSpan,
    FlatMetric,
    FlatLog,
}

/// Decides the format of a message.
pub fn detect(msg: &Incoming<'_>, encoding: Encoding) -> Result<Format, Rejection> {
    let first = msg
        .payload
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace());
    let is_json_object = first == Some(b'{');
    let content_type = msg
        .content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_ascii_lowercase());
    let declared_json = match content_type.as_deref() {
        Some("application/json") => Some(true),
        Some("application/x-protobuf" | "application/protobuf") => Some(false),
        _ => None,
    }
    .or(match encoding {
        Encoding::OtlpJson | Encoding::FlatJson => Some(true),
        Encoding::OtlpProto => Some(false),
        Encoding::Auto => None,
    });
    match declared_json {
        Some(true) | None if is_json_object => json_kind(msg.payload).ok_or_else(|| {
            Rejection::new(
                RejectionKind::UnknownFormat,
                "a JSON object with none of resourceMetrics, resourceSpans, resourceLogs or the flat record keys",
            )
        }),
        Some(true) => Err(Rejection::malformed("declared JSON, but the payload is not a JSON object")),
        _ => Err(Rejection::new(
            RejectionKind::UnknownFormat,
            "not a JSON object, and no decoder for this content type",
        )),
    }
}

/// Looks at the top-level keys of a JSON object, without parsing values.
fn json_kind(payload: &[u8]) -> Option<Format> {
    // The OTLP envelope keys are unique to their signal; checking the head of the payload
    // keeps this O(1) for the common case and falls back to a full scan only when needed.
    let has = |key: &[u8]| memmem(payload, key);
    if has(b"\"resourceMetrics\"") || has(b"\"resource_metrics\"") {
        Some(Format::OtlpJsonMetrics)
    } else if has(b"\"resourceSpans\"") || has(b"\"resource_spans\"") {
        Some(Format::OtlpJsonTraces)
    } else if has(b"\"resourceLogs\"") || has(b"\"resource_logs\"") {
        Some(Format::OtlpJsonLogs)
    } else if has(b"\"span_id\"") && has(b"\"trace_id\"") {
        Some(Format::FlatSpan)
    } else if has(b"\"level\"") && has(b"\"message\"") {
        Some(Format::FlatLog)
    } else if has(b"\"name\"") && has(b"\"value\"") {
        Some(Format::FlatMetric)
    } else {
        None
    }
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming<'a>(payload: &'a [u8], content_type: Option<&'a str>) -> Incoming<'a> {
        Incoming {
            subject: "telemetry.metrics.x",
            content_type,
            format_header: None,
            payload,
        }
    }

    #[test]
    fn content_decides_when_headers_are_silent() {
        let otlp = br#"{"resourceMetrics": []}"#;
        assert_eq!(
            detect(&incoming(otlp, None), Encoding::Auto).unwrap(),
            Format::OtlpJsonMetrics
        );
        let flat = br#"{"name": "step.duration_ms", "type": "histogram", "value": 1.0}"#;
        assert_eq!(
            detect(&incoming(flat, None), Encoding::Auto).unwrap(),
            Format::FlatMetric
        );
    }

    #[test]
    fn garbage_is_rejected_not_guessed() {
        assert!(detect(&incoming(b"hello", None), Encoding::Auto).is_err());
        assert!(detect(&incoming(br#"{"foo": 1}"#, None), Encoding::Auto).is_err());
        assert!(detect(
            &incoming(b"hello", Some("application/json")),
            Encoding::Auto
        )
        .is_err());
    }
}
