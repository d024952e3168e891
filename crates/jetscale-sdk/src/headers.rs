//! The headers the SDK sets, and the wire formats it declares with them.
//!
//! Every message carries `Content-Type` and a `Nats-Msg-Id`; messages in a format jetscale
//! defines also carry `Jetscale-Format`, so the collector never has to guess from the
//! payload. The IoT design's device payload ([`DeviceReading`](crate::DeviceReading)) carries only
//! `Content-Type: application/json`, like the IoT design's Python device.

use jetscale_model::subject::Signal;

/// Header naming the jetscale wire format of the payload (values: [`Format::header_value`]).
pub const FORMAT: &str = "Jetscale-Format";
/// The `Content-Type` header.
pub const CONTENT_TYPE: &str = "Content-Type";
/// JetStream's deduplication header.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// `Content-Type` of JSON payloads (flat records, OTLP JSON).
pub const JSON: &str = "application/json";
/// `Content-Type` of OTLP protobuf payloads.
pub const PROTOBUF: &str = "application/x-protobuf";

/// A wire format the SDK publishes, as declared by the `Jetscale-Format` header.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::headers::Format;
/// use jetscale_model::subject::Signal;
///
/// assert_eq!(Format::FlatSpan.header_value(), "flat-span");
/// assert_eq!(Format::OtlpProto(Signal::Spans).header_value(), "otlp-proto;signal=traces");
/// assert_eq!(Format::parse("otlp-proto; signal=metrics"), Some(Format::OtlpProto(Signal::Metrics)));
/// assert_eq!(Format::OtlpProto(Signal::Logs).content_type(), "application/x-protobuf");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A NATS-native service design span record (`flat-span`).
    FlatSpan,
    /// A NATS-native service design metric point (`flat-metric`).
    FlatMetric,
    /// A NATS-native service design log record (`flat-log`).
    FlatLog,
    /// An OTLP `Export*ServiceRequest` in protobuf (`otlp-proto;signal=metrics|traces|logs`).
    OtlpProto(Signal),
    /// An OTLP `Export*ServiceRequest` in OTLP/JSON (`otlp-json;signal=metrics|traces|logs`).
    OtlpJson(Signal),
}

impl Format {
    /// The value of the `Jetscale-Format` header.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::headers::Format;
    /// assert_eq!(Format::FlatLog.header_value(), "flat-log");
    /// ```
    pub const fn header_value(self) -> &'static str {
        match self {
            Format::FlatSpan => "flat-span",
            Format::FlatMetric => "flat-metric",
            Format::FlatLog => "flat-log",
            Format::OtlpProto(Signal::Metrics) => "otlp-proto;signal=metrics",
            Format::OtlpProto(Signal::Spans) => "otlp-proto;signal=traces",
            Format::OtlpProto(Signal::Logs) => "otlp-proto;signal=logs",
            Format::OtlpJson(Signal::Metrics) => "otlp-json;signal=metrics",
            Format::OtlpJson(Signal::Spans) => "otlp-json;signal=traces",
            Format::OtlpJson(Signal::Logs) => "otlp-json;signal=logs",
        }
    }

    /// The `Content-Type` that goes with the format.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::headers::Format;
    /// assert_eq!(Format::FlatMetric.content_type(), "application/json");
    /// ```
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::OtlpProto(_) => PROTOBUF,
            _ => JSON,
        }
    }

    /// Reads a `Jetscale-Format` header value; case and whitespace around `;` and `=` do not
    /// matter. `None` for a value this version does not know.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::headers::Format;
    /// assert_eq!(Format::parse("Flat-Span"), Some(Format::FlatSpan));
    /// assert_eq!(Format::parse("otlp-proto"), None);
    /// ```
    pub fn parse(value: &str) -> Option<Format> {
        let mut parts = value.split(';').map(str::trim);
        let base = parts.next()?.to_ascii_lowercase();
        let mut signal = None;
        for param in parts {
            let (key, val) = param.split_once('=')?;
            if key.trim().eq_ignore_ascii_case("signal") {
                signal = Some(match val.trim().to_ascii_lowercase().as_str() {
                    "metrics" => Signal::Metrics,
                    "traces" | "spans" => Signal::Spans,
                    "logs" => Signal::Logs,
                    _ => return None,
                });
            }
        }
        match (base.as_str(), signal) {
            ("flat-span", _) => Some(Format::FlatSpan),
            ("flat-metric", _) => Some(Format::FlatMetric),
            ("flat-log", _) => Some(Format::FlatLog),
            ("otlp-proto", Some(s)) => Some(Format::OtlpProto(s)),
            ("otlp-json", Some(s)) => Some(Format::OtlpJson(s)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_through_its_header() {
        let all = [
            Format::FlatSpan,
            Format::FlatMetric,
            Format::FlatLog,
            Format::OtlpProto(Signal::Metrics),
            Format::OtlpProto(Signal::Spans),
            Format::OtlpProto(Signal::Logs),
            Format::OtlpJson(Signal::Metrics),
            Format::OtlpJson(Signal::Spans),
            Format::OtlpJson(Signal::Logs),
        ];
        for format in all {
            assert_eq!(Format::parse(format.header_value()), Some(format));
        }
        assert_eq!(Format::parse("otlp-proto;signal=profiles"), None);
        assert_eq!(Format::parse("something-else"), None);
    }
}
