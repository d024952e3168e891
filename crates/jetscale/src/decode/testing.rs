//! Test support for the decoders: a sink that keeps owned copies of every record, with the
//! JSON columns parsed, and a context without a time window.

use super::{DecodeContext, Incoming, RecordSink, Rejection};
use crate::config::{Encoding, Limits};
use jetscale_model::{DistributionPoint, LogRecord, MetricKind, MetricPoint, SpanRecord};
use serde_json::Value;

fn json(text: &str, empty: &str) -> Value {
    let text = if text.is_empty() { empty } else { text };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metric {
    pub time: i64,
    pub source: String,
    pub location: String,
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub kind: MetricKind,
    pub attributes: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Distribution {
    pub time: i64,
    pub start: i64,
    pub source: String,
    pub location: String,
    pub name: String,
    pub unit: String,
    pub kind: String,
    pub temporality: String,
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub buckets: Value,
    pub attributes: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub service: String,
    pub kind: String,
    pub start: i64,
    pub end: i64,
    pub status_code: String,
    pub status_message: String,
    pub trace_state: String,
    pub attributes: Value,
    pub resource: Value,
    pub events: Value,
    pub links: Value,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Log {
    pub time: i64,
    pub observed: i64,
    pub service: String,
    pub severity_number: i32,
    pub severity_text: String,
    pub message: String,
    pub body_json: Option<Value>,
    pub attributes: Value,
    pub resource: Value,
    pub trace_id: String,
    pub span_id: String,
    pub flags: i32,
    pub error: String,
}

/// Every record a decoder produced, owned.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub metrics: Vec<Metric>,
    pub distributions: Vec<Distribution>,
    pub spans: Vec<Span>,
    pub logs: Vec<Log>,
}

impl RecordSink for Collected {
    fn metric(&mut self, p: &MetricPoint<'_>) -> Result<(), Rejection> {
        self.metrics.push(Metric {
            time: p.time_unix_nano,
            source: p.source.to_owned(),
            location: p.location.to_owned(),
            name: p.name.to_owned(),
            unit: p.unit.to_owned(),
            value: p.value,
            kind: p.kind,
            attributes: json(p.attributes, "{}"),
        });
        Ok(())
    }
    fn distribution(&mut self, p: &DistributionPoint<'_>) -> Result<(), Rejection> {
        self.distributions.push(Distribution {
            time: p.time_unix_nano,
            start: p.start_time_unix_nano,
            source: p.source.to_owned(),
            location: p.location.to_owned(),
            name: p.name.to_owned(),
            unit: p.unit.to_owned(),
            kind: p.kind.to_owned(),
            temporality: p.temporality.to_owned(),
            count: p.count,
            sum: p.sum,
            min: p.min,
            max: p.max,
            buckets: json(p.buckets, "{}"),
            attributes: json(p.attributes, "{}"),
        });
        Ok(())
    }
    fn span(&mut self, s: &SpanRecord<'_>) -> Result<(), Rejection> {
        self.spans.push(Span {
            trace_id: s.trace_id.to_owned(),
            span_id: s.span_id.to_owned(),
            parent_span_id: s.parent_span_id.to_owned(),
            name: s.name.to_owned(),
            service: s.service.to_owned(),
            kind: s.kind.to_owned(),
            start: s.start_time_unix_nano,
            end: s.end_time_unix_nano,
            status_code: s.status_code.to_owned(),
            status_message: s.status_message.to_owned(),
            trace_state: s.trace_state.to_owned(),
            attributes: json(s.attributes, "{}"),
            resource: json(s.resource, "{}"),
            events: json(s.events, "[]"),
            links: json(s.links, "[]"),
            error: s.error.to_owned(),
        });
        Ok(())
    }
    fn log(&mut self, l: &LogRecord<'_>) -> Result<(), Rejection> {
        self.logs.push(Log {
            time: l.time_unix_nano,
            observed: l.observed_time_unix_nano,
            service: l.service.to_owned(),
            severity_number: l.severity_number,
            severity_text: l.severity_text.to_owned(),
            message: l.message.to_owned(),
            body_json: (!l.body_json.is_empty()).then(|| json(l.body_json, "null")),
            attributes: json(l.attributes, "{}"),
            resource: json(l.resource, "{}"),
            trace_id: l.trace_id.to_owned(),
            span_id: l.span_id.to_owned(),
            flags: l.flags,
            error: l.error.to_owned(),
        });
        Ok(())
    }
}

/// A context that accepts any time after the epoch.
pub(crate) fn ctx(limits: &Limits) -> DecodeContext<'_> {
    DecodeContext {
        limits,
        resource_actions: &[],
        encoding: Encoding::Auto,
        min_time_ns: 1,
        max_time_ns: i64::MAX,
    }
}

/// A message without headers.
pub(crate) fn incoming<'a>(subject: &'a str, payload: &'a [u8]) -> Incoming<'a> {
    Incoming {
        subject,
        content_type: None,
        format_header: None,
        payload,
    }
}

/// Runs a decoder function with default limits.
pub(crate) fn run(
    decoder: fn(&Incoming<'_>, &DecodeContext<'_>, &mut dyn RecordSink) -> Result<(), Rejection>,
    subject: &str,
    payload: &[u8],
    limits: &Limits,
) -> Result<Collected, Rejection> {
    let mut sink = Collected::default();
    decoder(&incoming(subject, payload), &ctx(limits), &mut sink)?;
    Ok(sink)
}

/// A committed golden fixture (crates/jetscale/tests/fixtures).
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The OTLP specification's example files, shipped inside the opentelemetry-proto crate
/// and copied to tests/fixtures/otlp_spec_*.json.
pub(crate) fn spec_example(signal: &str) -> Vec<u8> {
    fixture(&format!("otlp_spec_{signal}.json"))
}
