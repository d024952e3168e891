//! Which decoder a message goes to: headers first, then content; the subject only ever
//! names the signal of a protobuf message nothing else describes. The rules are documented
//! in docs/formats.md.
//!
//! 1. `Jetscale-Format: otlp-json | otlp-proto | flat-span | flat-metric | flat-log`, with
//!    an optional `;signal=metrics|traces|logs` (a bare `metrics|traces|logs` value, as an
//!    `Otlp-Signal` header carries, names the signal and leaves the encoding to the rest).
//! 2. `Content-Type: application/json` (the JSON is then recognised by its top-level keys)
//!    or `application/x-protobuf` / `application/protobuf` (optionally `;signal=…`).
//! 3. The configured encoding (`otlp_json`, `flat_json`, `otlp_proto`; `auto` looks).
//! 4. Content: a JSON object by its top-level keys; anything else is OTLP protobuf.
//!
//! The signal of a protobuf message: the header's or Content-Type's `signal`, else the
//! subject's signal token (`telemetry.metrics.*`, `telemetry.spans.*` = traces,
//! `telemetry.logs.*`), else the protobuf decoder tries each signal (see `otlp_proto`).

use super::attributes::KeyVisitor;
use super::{Incoming, Rejection, RejectionKind};
use crate::config::Encoding;
use jetscale_model::subject::{self, Signal};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// Every wire format jetscale recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OtlpJsonMetrics,
    OtlpJsonTraces,
    OtlpJsonLogs,
    OtlpProtoMetrics,
    OtlpProtoTraces,
    OtlpProtoLogs,
    /// OTLP protobuf whose signal nothing declared: each signal is tried.
    OtlpProto,
    FlatSpan,
    FlatMetric,
    FlatLog,
}

/// The names the `Jetscale-Format` header takes.
pub const FORMAT_HEADER: &str = "Jetscale-Format";

/// What the headers (or configuration) say about the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    Json,
    /// OTLP/JSON only (the `otlp-json` header value).
    OtlpJson,
    Proto,
    Flat(Format),
    Nothing,
}

/// Decides the format of a message.
pub fn detect(msg: &Incoming<'_>, encoding: Encoding) -> Result<Format, Rejection> {
    let mut declared = Declared::Nothing;
    let mut signal = None;
    if let Some(header) = msg.format_header {
        (declared, signal) = parse_format_header(header)?;
    }
    let content_type = msg.content_type.map(parse_content_type);
    if let Some((mime, ct_signal)) = &content_type {
        signal = signal.or(*ct_signal);
        if declared == Declared::Nothing {
            declared = match mime {
                MediaType::Json => Declared::Json,
                MediaType::Protobuf => Declared::Proto,
                MediaType::Other => Declared::Nothing,
            };
        }
    }
    if declared == Declared::Nothing {
        declared = match encoding {
            Encoding::OtlpJson | Encoding::FlatJson => Declared::Json,
            Encoding::OtlpProto => Declared::Proto,
            Encoding::Auto => Declared::Nothing,
        };
    }
    let proto = |signal: Option<Signal>| match signal.or_else(|| subject_signal(msg.subject)) {
        Some(Signal::Metrics) => Format::OtlpProtoMetrics,
        Some(Signal::Spans) => Format::OtlpProtoTraces,
        Some(Signal::Logs) => Format::OtlpProtoLogs,
        None => Format::OtlpProto,
    };
    match declared {
        Declared::Flat(format) => Ok(format),
        Declared::Proto => Ok(proto(signal)),
        Declared::OtlpJson => match signal {
            Some(Signal::Metrics) => Ok(Format::OtlpJsonMetrics),
            Some(Signal::Spans) => Ok(Format::OtlpJsonTraces),
            Some(Signal::Logs) => Ok(Format::OtlpJsonLogs),
            None => match json_kind(msg.payload)? {
                Some(f @ (Format::OtlpJsonMetrics | Format::OtlpJsonTraces | Format::OtlpJsonLogs)) => Ok(f),
                _ => Err(Rejection::new(
                    RejectionKind::UnknownFormat,
                    "declared otlp-json, but the object has none of resourceMetrics, resourceSpans, resourceLogs",
                )),
            },
        },
        Declared::Json => {
            if !looks_like_json(msg.payload) {
                return Err(Rejection::malformed(
                    "declared JSON, but the payload is not a JSON object",
                ));
            }
            json_kind(msg.payload)?.ok_or_else(unknown_json)
        }
        Declared::Nothing => {
            if !looks_like_json(msg.payload) {
                return Ok(proto(signal));
            }
            match json_kind(msg.payload) {
                Ok(Some(format)) => Ok(format),
                // Certainly JSON (it starts with `{`): it is none of ours.
                Ok(None) if msg.payload.first() == Some(&b'{') => Err(unknown_json()),
                Err(e) if msg.payload.first() == Some(&b'{') => Err(e),
                // Leading whitespace and `{` could also be protobuf: a first field of
                // length 123 is `\n{`.
                _ => Ok(proto(signal)),
            }
        }
    }
}

/// Whether the headers or the configuration say the payload is protobuf (so a payload
/// that does not decode is malformed, not of an unknown format).
pub fn declares_protobuf(msg: &Incoming<'_>, encoding: Encoding) -> bool {
    if let Some(header) = msg.format_header {
        match parse_format_header(header) {
            Ok((Declared::Nothing, _)) => {}
            Ok((declared, _)) => return declared == Declared::Proto,
            Err(_) => return false,
        }
    }
    match msg.content_type.map(parse_content_type) {
        Some((MediaType::Protobuf, _)) => true,
        Some((MediaType::Json, _)) => false,
        _ => encoding == Encoding::OtlpProto,
    }
}

fn unknown_json() -> Rejection {
    Rejection::new(
        RejectionKind::UnknownFormat,
        "a JSON object with none of resourceMetrics, resourceSpans, resourceLogs or the flat record keys \
         (trace_id+span_id, level+message, name+value)",
    )
}

fn subject_signal(subject_text: &str) -> Option<Signal> {
    subject::parse(subject_text).map(|(signal, _)| signal)
}

fn parse_signal(value: &str) -> Option<Signal> {
    match value.trim().trim_matches('"').to_ascii_lowercase().as_str() {
        "metrics" | "metric" => Some(Signal::Metrics),
        "traces" | "trace" | "spans" | "span" => Some(Signal::Spans),
        "logs" | "log" => Some(Signal::Logs),
        _ => None,
    }
}

/// `Jetscale-Format: kind[;signal=…]`.
fn parse_format_header(header: &str) -> Result<(Declared, Option<Signal>), Rejection> {
    let mut parts = header.split(';');
    let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut signal = None;
    for param in parts {
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case("signal") {
                signal = Some(parse_signal(v).ok_or_else(|| {
                    Rejection::new(
                        RejectionKind::UnknownFormat,
                        format!(
                            "{FORMAT_HEADER} signal `{}` is not metrics, traces or logs",
                            super::attributes::preview(v.trim())
                        ),
                    )
                })?);
            }
        }
    }
    let declared = match kind.as_str() {
        "otlp-json" | "otlp_json" => Declared::OtlpJson,
        "otlp-proto" | "otlp_proto" | "otlp-protobuf" => Declared::Proto,
        "flat-span" | "flat_span" => Declared::Flat(Format::FlatSpan),
        "flat-metric" | "flat_metric" => Declared::Flat(Format::FlatMetric),
        "flat-log" | "flat_log" => Declared::Flat(Format::FlatLog),
        other => match parse_signal(other) {
            // A bare signal (an `Otlp-Signal` header): the encoding is left to the rest.
            Some(s) => {
                signal = Some(s);
                Declared::Nothing
            }
            None => {
                return Err(Rejection::new(
                    RejectionKind::UnknownFormat,
                    format!(
                        "{FORMAT_HEADER} `{}` is not one of otlp-json, otlp-proto, flat-span, flat-metric, flat-log",
                        super::attributes::preview(header)
                    ),
                ))
            }
        },
    };
    Ok((declared, signal))
}

/// What a Content-Type's media type says about the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaType {
    Json,
    Protobuf,
    Other,
}

/// The media type (compared without regard to case, with nothing allocated: this runs for
/// every message) and the `signal` parameter.
fn parse_content_type(content_type: &str) -> (MediaType, Option<Signal>) {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    let media = if mime.eq_ignore_ascii_case("application/json") {
        MediaType::Json
    } else if mime.eq_ignore_ascii_case("application/x-protobuf")
        || mime.eq_ignore_ascii_case("application/protobuf")
    {
        MediaType::Protobuf
    } else {
        MediaType::Other
    };
    let signal = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("signal"))
        .and_then(|(_, v)| parse_signal(v));
    (media, signal)
}

fn looks_like_json(payload: &[u8]) -> bool {
    payload.iter().copied().find(|b| !b.is_ascii_whitespace()) == Some(b'{')
}

/// Recognises a JSON object by its top-level keys (values are skipped, not parsed):
/// `Ok(None)` for an object that is none of ours, `Err` for text that is not JSON.
fn json_kind(payload: &[u8]) -> Result<Option<Format>, Rejection> {
    if let Some(format) = first_key_format(payload) {
        return Ok(Some(format));
    }
    let keys: TopKeys = serde_json::from_slice(payload)
        .map_err(|e| Rejection::malformed(format!("invalid JSON: {e}")))?;
    let has = |k: Key| keys.0 & (1 << k as u16) != 0;
    Ok(if has(Key::ResourceMetrics) {
        Some(Format::OtlpJsonMetrics)
    } else if has(Key::ResourceSpans) {
        Some(Format::OtlpJsonTraces)
    } else if has(Key::ResourceLogs) {
        Some(Format::OtlpJsonLogs)
    } else if has(Key::SpanId) && has(Key::TraceId) {
        Some(Format::FlatSpan)
    } else if has(Key::Level) && has(Key::Message) {
        Some(Format::FlatLog)
    } else if has(Key::Name) && has(Key::Value) {
        Some(Format::FlatMetric)
    } else {
        None
    })
}

/// The OTLP envelope key when it is the object's first key: then it is a top-level key by
/// construction, and the full key scan (a second tokenization of the whole payload) can be
/// skipped. Every OTLP encoder writes the envelope key first.
fn first_key_format(payload: &[u8]) -> Option<Format> {
    let mut rest = payload;
    let skip_ws = |b: &[u8]| -> usize { b.iter().take_while(|c| c.is_ascii_whitespace()).count() };
    rest = &rest[skip_ws(rest)..];
    rest = rest.strip_prefix(b"{")?;
    rest = &rest[skip_ws(rest)..];
    let key_end = rest.iter().skip(1).position(|&c| c == b'"')? + 2;
    let key = rest.get(..key_end)?;
    let after = rest.get(key_end..)?;
    // The key must be followed by its colon, or it was not a key.
    if after.get(skip_ws(after)) != Some(&b':') {
        return None;
    }
    match key {
        b"\"resourceMetrics\"" | b"\"resource_metrics\"" => Some(Format::OtlpJsonMetrics),
        b"\"resourceSpans\"" | b"\"resource_spans\"" => Some(Format::OtlpJsonTraces),
        b"\"resourceLogs\"" | b"\"resource_logs\"" => Some(Format::OtlpJsonLogs),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Key {
    ResourceMetrics,
    ResourceSpans,
    ResourceLogs,
    SpanId,
    TraceId,
    Level,
    Message,
    Name,
    Value,
    Other,
}

/// The set of known keys at the top level of an object, as bits of [`Key`].
struct TopKeys(u16);

struct KeyName(Key);

impl<'de> de::Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor {
            expecting: "an object key",
            name: |key: &str| {
                KeyName(match key {
                    "resourceMetrics" | "resource_metrics" => Key::ResourceMetrics,
                    "resourceSpans" | "resource_spans" => Key::ResourceSpans,
                    "resourceLogs" | "resource_logs" => Key::ResourceLogs,
                    "span_id" => Key::SpanId,
                    "trace_id" => Key::TraceId,
                    "level" => Key::Level,
                    "message" => Key::Message,
                    "name" => Key::Name,
                    "value" => Key::Value,
                    _ => Key::Other,
                })
            },
        })
    }
}

impl<'de> de::Deserialize<'de> for TopKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopKeys, A::Error> {
                let mut bits = 0u16;
                while let Some(KeyName(key)) = map.next_key()? {
                    if !matches!(key, Key::Other) {
                        bits |= 1 << key as u16;
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(TopKeys(bits))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming<'a>(
        subject: &'a str,
        payload: &'a [u8],
        content_type: Option<&'a str>,
        format_header: Option<&'a str>,
    ) -> Incoming<'a> {
        Incoming {
            subject,
            content_type,
            format_header,
            payload,
        }
    }

    fn auto(payload: &[u8]) -> Result<Format, Rejection> {
        detect(
            &incoming("telemetry.metrics.x", payload, None, None),
            Encoding::Auto,
        )
    }

    #[test]
    fn content_decides_when_headers_are_silent() {
        assert_eq!(
            auto(br#"{"resourceMetrics": []}"#).unwrap(),
            Format::OtlpJsonMetrics
        );
        assert_eq!(
            auto(br#" {"resourceSpans": []}"#).unwrap(),
            Format::OtlpJsonTraces
        );
        assert_eq!(
            auto(br#"{"resource_logs": []}"#).unwrap(),
            Format::OtlpJsonLogs
        );
        let flat = br#"{"name": "step.duration_ms", "type": "histogram", "value": 1.0}"#;
        assert_eq!(auto(flat).unwrap(), Format::FlatMetric);
        let span = br#"{"trace_id": "a", "span_id": "b", "name": "n", "attributes": {"value": 1}}"#;
        assert_eq!(auto(span).unwrap(), Format::FlatSpan);
        let log = br#"{"level": "info", "message": "m", "fields": {"name": "x", "value": 2}}"#;
        assert_eq!(auto(log).unwrap(), Format::FlatLog);
        // Keys nested below the top level do not count.
        let nested = br#"{"name": "m", "value": 1, "tags": {"resourceMetrics": 1, "trace_id": "t", "span_id": "s"}}"#;
        assert_eq!(auto(nested).unwrap(), Format::FlatMetric);
        // Not JSON: protobuf, its signal from the subject.
        assert_eq!(auto(b"\x0a\x02\x0a\x00").unwrap(), Format::OtlpProtoMetrics);
        for (subject, format) in [
            ("telemetry.spans.w.r", Format::OtlpProtoTraces),
            ("telemetry.logs.w.info", Format::OtlpProtoLogs),
            ("devices.raw", Format::OtlpProto),
        ] {
            assert_eq!(
                detect(&incoming(subject, b"\x0a\x00", None, None), Encoding::Auto).unwrap(),
                format
            );
        }
        // `\n{` starts a protobuf whose first field is 123 bytes long: not JSON.
        let mut proto = vec![b'\n', b'{'];
        proto.extend(vec![0x80; 123]);
        assert_eq!(auto(&proto).unwrap(), Format::OtlpProtoMetrics);
    }

    #[test]
    fn garbage_is_rejected_not_guessed() {
        assert_eq!(
            auto(br#"{"foo": 1}"#).unwrap_err().kind,
            RejectionKind::UnknownFormat
        );
        // Broken JSON behind a leading envelope key goes to its decoder, which rejects it as
        // malformed; without that key the key scan itself rejects it.
        assert_eq!(
            auto(br#"{"resourceMetrics": [}"#).unwrap(),
            Format::OtlpJsonMetrics
        );
        assert_eq!(
            auto(br#"{"a": 1, "resourceMetrics": [}"#).unwrap_err().kind,
            RejectionKind::Malformed
        );
        assert!(detect(
            &incoming("x", b"hello", Some("application/json"), None),
            Encoding::Auto
        )
        .is_err());
        let err = detect(&incoming("x", b"{}", None, Some("yaml")), Encoding::Auto).unwrap_err();
        assert_eq!(err.kind, RejectionKind::UnknownFormat);
        assert!(err.detail.contains("Jetscale-Format"), "{err}");
        let err = detect(
            &incoming("x", b"{}", None, Some("otlp-proto;signal=profiles")),
            Encoding::Auto,
        )
        .unwrap_err();
        assert!(err.detail.contains("profiles"), "{err}");
        let err = detect(
            &incoming(
                "x",
                br#"{"name": "a", "value": 1}"#,
                None,
                Some("otlp-json"),
            ),
            Encoding::Auto,
        )
        .unwrap_err();
        assert_eq!(err.kind, RejectionKind::UnknownFormat);
    }

    #[test]
    fn headers_decide_before_content() {
        let cases: &[(Option<&str>, Option<&str>, &str, Format)] = &[
            (
                None,
                Some("otlp-json"),
                r#"{"resourceLogs": []}"#,
                Format::OtlpJsonLogs,
            ),
            (
                None,
                Some("otlp-json; signal=traces"),
                "{}",
                Format::OtlpJsonTraces,
            ),
            (None, Some("OTLP-PROTO"), "", Format::OtlpProtoMetrics),
            (
                None,
                Some("otlp-proto;signal=logs"),
                "",
                Format::OtlpProtoLogs,
            ),
            (None, Some("flat-span"), "{}", Format::FlatSpan),
            (None, Some("flat-metric"), "{}", Format::FlatMetric),
            (None, Some("flat-log"), "{}", Format::FlatLog),
            // A bare signal (Otlp-Signal): the content decides the encoding.
            (None, Some("traces"), "\x0a\x00", Format::OtlpProtoTraces),
            (
                Some("application/x-protobuf"),
                None,
                "{}",
                Format::OtlpProtoMetrics,
            ),
            (
                Some("application/protobuf; signal=traces"),
                None,
                "",
                Format::OtlpProtoTraces,
            ),
            (
                Some("application/x-protobuf"),
                Some("logs"),
                "",
                Format::OtlpProtoLogs,
            ),
            (
                Some("application/json; charset=utf-8"),
                None,
                r#"{"level": "x", "message": "y"}"#,
                Format::FlatLog,
            ),
            // The header wins over Content-Type.
            (
                Some("application/json"),
                Some("otlp-proto"),
                "{}",
                Format::OtlpProtoMetrics,
            ),
        ];
        for (ct, header, payload, expected) in cases {
            let msg = incoming("telemetry.metrics.x", payload.as_bytes(), *ct, *header);
            assert_eq!(
                detect(&msg, Encoding::Auto).unwrap(),
                *expected,
                "{ct:?} {header:?}"
            );
        }
        // The configured encoding, when the headers are silent.
        let msg = incoming("telemetry.logs.a.b", b"{}", None, None);
        assert_eq!(
            detect(&msg, Encoding::OtlpProto).unwrap(),
            Format::OtlpProtoLogs
        );
        assert!(declares_protobuf(&msg, Encoding::OtlpProto));
        assert!(!declares_protobuf(&msg, Encoding::Auto));
        let msg = incoming("x", b"\x0a\x00", None, Some("traces"));
        assert!(!declares_protobuf(&msg, Encoding::Auto));
        let msg = incoming("x", b"", Some("application/x-protobuf"), None);
        assert!(declares_protobuf(&msg, Encoding::Auto));
    }
}

#[cfg(test)]
mod first_key_tests {
    use super::*;

    #[test]
    fn the_envelope_key_first_is_recognised_without_a_full_scan() {
        assert_eq!(
            first_key_format(br#" { "resourceMetrics" : []}"#),
            Some(Format::OtlpJsonMetrics)
        );
        assert_eq!(
            first_key_format(br#"{"resource_spans":[]}"#),
            Some(Format::OtlpJsonTraces)
        );
        assert_eq!(
            first_key_format(br#"{"resourceLogs":[]}"#),
            Some(Format::OtlpJsonLogs)
        );
        // Not first, or not a key: left to the full scan.
        assert_eq!(
            first_key_format(br#"{"name":"x","resourceMetrics":[]}"#),
            None
        );
        assert_eq!(first_key_format(br#"["resourceMetrics"]"#), None);
        assert_eq!(first_key_format(br#"{"resourceMetrics"}"#), None);
        assert_eq!(first_key_format(b"{"), None);
    }
}
