//! A record, or a rejection, as one JSON object per line: every field of the record, its
//! times as RFC 3339 and as nanoseconds, attributes embedded as JSON objects.

use super::{level_of, Origin};
use crate::decode::Rejection;
use jetscale_model::{DistributionPoint, LogRecord, MetricPoint, SpanRecord};
use serde::Serialize;
use serde_json::value::RawValue;

/// The JSON line of a metric point.
pub(super) fn metric(origin: &Origin<'_>, p: &MetricPoint<'_>) -> String {
    json_line(&MetricJson {
        signal: "metric",
        time: rfc3339(p.time_unix_nano),
        time_unix_nano: p.time_unix_nano,
        source: p.source,
        location: p.location,
        name: p.name,
        value: json_number(p.value),
        unit: p.unit,
        kind: p.kind.as_str(),
        attributes: json_text(p.attributes, "{}"),
        subject: origin.subject,
        seq: origin.stream_seq,
    })
}

/// The JSON line of a distribution point.
pub(super) fn distribution(origin: &Origin<'_>, p: &DistributionPoint<'_>) -> String {
    json_line(&DistributionJson {
        signal: "dist",
        time: rfc3339(p.time_unix_nano),
        time_unix_nano: p.time_unix_nano,
        start_time: (p.start_time_unix_nano != 0).then(|| rfc3339(p.start_time_unix_nano)),
        start_time_unix_nano: p.start_time_unix_nano,
        source: p.source,
        location: p.location,
        name: p.name,
        unit: p.unit,
        kind: p.kind,
        temporality: p.temporality,
        count: p.count,
        sum: p.sum.map(json_number),
        min: p.min.map(json_number),
        max: p.max.map(json_number),
        buckets: json_text(p.buckets, "{}"),
        attributes: json_text(p.attributes, "{}"),
        subject: origin.subject,
        seq: origin.stream_seq,
    })
}

/// The JSON line of a span.
pub(super) fn span(origin: &Origin<'_>, s: &SpanRecord<'_>) -> String {
    let duration_ns = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
    json_line(&SpanJson {
        signal: "span",
        time: rfc3339(s.start_time_unix_nano),
        start_time_unix_nano: s.start_time_unix_nano,
        end_time: rfc3339(s.end_time_unix_nano),
        end_time_unix_nano: s.end_time_unix_nano,
        duration_ms: json_number(duration_ns as f64 / 1e6),
        trace_id: s.trace_id,
        span_id: s.span_id,
        parent_span_id: s.parent_span_id,
        name: s.name,
        service: s.service,
        kind: s.kind,
        status: s.status_code,
        status_message: s.status_message,
        trace_state: s.trace_state,
        attributes: json_text(s.attributes, "{}"),
        resource: json_text(s.resource, "{}"),
        events: json_text(s.events, "[]"),
        links: json_text(s.links, "[]"),
        error: s.error,
        subject: origin.subject,
        seq: origin.stream_seq,
    })
}

/// The JSON line of a log record.
pub(super) fn log(origin: &Origin<'_>, l: &LogRecord<'_>) -> String {
    json_line(&LogJson {
        signal: "log",
        time: rfc3339(l.time_unix_nano),
        time_unix_nano: l.time_unix_nano,
        observed_time: (l.observed_time_unix_nano != 0).then(|| rfc3339(l.observed_time_unix_nano)),
        observed_time_unix_nano: l.observed_time_unix_nano,
        service: l.service,
        level: level_of(l),
        severity_number: l.severity_number,
        severity_text: l.severity_text,
        message: l.message,
        body: if l.body_json.is_empty() {
            None
        } else {
            Some(json_text(l.body_json, "null"))
        },
        attributes: json_text(l.attributes, "{}"),
        resource: json_text(l.resource, "{}"),
        trace_id: l.trace_id,
        span_id: l.span_id,
        flags: l.flags,
        error: l.error,
        subject: origin.subject,
        seq: origin.stream_seq,
    })
}

/// The JSON line of a rejected message: its subject, sequence and the reason.
pub(super) fn rejection(origin: &Origin<'_>, rejection: &Rejection) -> String {
    json_line(&RejectionJson {
        signal: "rejected",
        time: rfc3339(origin.published_ns),
        subject: origin.subject,
        seq: origin.stream_seq,
        reason: rejection.to_string(),
    })
}

/// JSON text carried by a record, embedded as JSON (not as a string) when it parses.
#[derive(Serialize)]
#[serde(untagged)]
enum Json<'a> {
    Raw(&'a RawValue),
    Text(&'a str),
}

fn json_text<'a>(text: &'a str, empty: &'static str) -> Json<'a> {
    let text = if text.trim().is_empty() { empty } else { text };
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => Json::Raw(raw),
        Err(_) => Json::Text(text),
    }
}

/// A float as a JSON number; NaN and the infinities (which JSON lacks) as strings.
fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(v.to_string()))
}

fn rfc3339(ns: i64) -> String {
    jetscale_model::flat::unix_nanos_to_rfc3339(ns)
}

fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(
            "{{\"signal\":\"error\",\"reason\":{:?}}}",
            format!("cannot render the record as JSON: {e}")
        )
    })
}

#[derive(Serialize)]
struct MetricJson<'a> {
    signal: &'static str,
    time: String,
    time_unix_nano: i64,
    source: &'a str,
    location: &'a str,
    name: &'a str,
    value: serde_json::Value,
    unit: &'a str,
    kind: &'static str,
    attributes: Json<'a>,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct DistributionJson<'a> {
    signal: &'static str,
    time: String,
    time_unix_nano: i64,
    start_time: Option<String>,
    start_time_unix_nano: i64,
    source: &'a str,
    location: &'a str,
    name: &'a str,
    unit: &'a str,
    kind: &'a str,
    temporality: &'a str,
    count: u64,
    sum: Option<serde_json::Value>,
    min: Option<serde_json::Value>,
    max: Option<serde_json::Value>,
    buckets: Json<'a>,
    attributes: Json<'a>,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct SpanJson<'a> {
    signal: &'static str,
    time: String,
    start_time_unix_nano: i64,
    end_time: String,
    end_time_unix_nano: i64,
    duration_ms: serde_json::Value,
    trace_id: &'a str,
    span_id: &'a str,
    parent_span_id: &'a str,
    name: &'a str,
    service: &'a str,
    kind: &'a str,
    status: &'a str,
    status_message: &'a str,
    trace_state: &'a str,
    attributes: Json<'a>,
    resource: Json<'a>,
    events: Json<'a>,
    links: Json<'a>,
    error: &'a str,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct LogJson<'a> {
    signal: &'static str,
    time: String,
    time_unix_nano: i64,
    observed_time: Option<String>,
    observed_time_unix_nano: i64,
    service: &'a str,
    level: String,
    severity_number: i32,
    severity_text: &'a str,
    message: &'a str,
    body: Option<Json<'a>>,
    attributes: Json<'a>,
    resource: Json<'a>,
    trace_id: &'a str,
    span_id: &'a str,
    flags: i32,
    error: &'a str,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct RejectionJson<'a> {
    signal: &'static str,
    time: String,
    subject: &'a str,
    seq: Option<u64>,
    reason: String,
}
