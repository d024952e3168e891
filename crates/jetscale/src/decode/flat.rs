//! The flat JSON records of the NATS-native service design, exactly as written there: span
//! records, metric points and log records with RFC 3339 timestamps (`jetscale_model::flat`
//! holds the publisher's side). Strings are borrowed from the message; `null` is accepted
//! wherever a Go publisher may write it (nil maps and slices) and means "absent".

use super::attributes::{
    check_text, preview, separate, too_many, write_json_string, write_json_value, write_key,
};
use super::numbers::LenientF64;
use super::{DecodeContext, Incoming, RecordSink, Rejection};
use crate::config::Limits;
use jetscale_model::flat::rfc3339_to_unix_nanos;
use jetscale_model::subject::{self, Signal};
use jetscale_model::{severity_number, LogRecord, MetricKind, MetricPoint, SpanRecord};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Ids longer than this are not ids.
const MAX_ID_BYTES: usize = 128;

#[derive(Deserialize)]
struct FlatSpan<'a> {
    #[serde(borrow, default)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    span_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parent_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    start_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    end_time: Option<Cow<'a, str>>,
    #[serde(default)]
    duration_ms: Option<LenientF64>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
    #[serde(default)]
    events: Option<Vec<Value>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FlatMetric<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Option<LenientF64>,
    #[serde(default)]
    tags: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FlatLog<'a> {
    #[serde(borrow, default)]
    level: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default)]
    fields: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

fn text<'s>(what: &str, v: &'s Option<Cow<'_, str>>) -> Result<&'s str, Rejection> {
    let s = v.as_deref().unwrap_or("");
    check_text(what, s)?;
    Ok(s)
}

/// An RFC 3339 time as nanoseconds; `None` when absent or empty.
fn time(what: &str, v: &Option<Cow<'_, str>>) -> Result<Option<i64>, Rejection> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(t) => rfc3339_to_unix_nanos(t).map(Some).ok_or_else(|| {
            Rejection::malformed(format!("{what} `{}` is not an RFC 3339 time", preview(t)))
        }),
    }
}

/// The service: the record's, else the subject's `{service}` token (the NATS-native service
/// design puts it right after the signal), else an error.
fn service<'s>(
    record: &'s Option<Cow<'_, str>>,
    msg: &'s Incoming<'_>,
    signal: Signal,
) -> Result<&'s str, Rejection> {
    let from_record = text("service", record)?;
    if !from_record.is_empty() {
        return Ok(from_record);
    }
    match subject::parse(msg.subject) {
        Some((s, rest)) if s == signal => rest
            .first()
            .copied()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Rejection::malformed("the record has no service")),
        _ => Err(Rejection::malformed("the record has no service")),
    }
}

/// Writes a flat record's map as one JSON object into `out`, with the attribute limits;
/// `extra` members are appended after it.
fn object(
    out: &mut String,
    map: Option<&Map<String, Value>>,
    extra: &[(&str, &str)],
    limits: &Limits,
) -> Result<(), Rejection> {
    let n = map.map_or(0, Map::len) + extra.len();
    if n > limits.max_attributes {
        return Err(too_many(n, limits));
    }
    out.clear();
    out.push('{');
    for (k, v) in map.into_iter().flatten() {
        separate(out);
        write_key(out, k, limits)?;
        write_json_value(out, v, limits, 0)?;
    }
    for (k, v) in extra {
        separate(out);
        write_key(out, k, limits)?;
        write_json_string(out, v)?;
    }
    out.push('}');
    Ok(())
}

fn id<'s>(what: &str, v: &'s Option<Cow<'_, str>>, required: bool) -> Result<&'s str, Rejection> {
    let s = text(what, v)?;
    if s.is_empty() && required {
        return Err(Rejection::malformed(format!("flat span has no {what}")));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(Rejection::malformed(format!(
            "{what} of {} bytes is too long for an id",
            s.len()
        )));
    }
    Ok(s)
}

/// Decodes one flat span record.
pub fn decode_span(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let span: FlatSpan = super::from_json_slice(msg.payload)
        .map_err(|e| Rejection::malformed(format!("flat span record: {e}")))?;
    let limits = ctx.limits;
    let trace_id = id("trace_id", &span.trace_id, true)?;
    let span_id = id("span_id", &span.span_id, true)?;
    let parent = id("parent_id", &span.parent_id, false)?;
    let start = time("start_time", &span.start_time)?
        .ok_or_else(|| Rejection::malformed("flat span has no start_time"))?;
    ctx.check_time(start)?;
    let end = match time("end_time", &span.end_time)? {
        Some(end) => end,
        None => match span.duration_ms {
            Some(d) if d.0.is_finite() && d.0 >= 0.0 && d.0 < 1e15 => {
                start.saturating_add((d.0 * 1e6).round() as i64)
            }
            Some(d) => {
                return Err(Rejection::malformed(format!(
                    "duration_ms {} is not a duration",
                    d.0
                )))
            }
            None => start,
        },
    };
    if end < start {
        return Err(Rejection::malformed("end_time is before start_time"));
    }
    let service = service(&span.service, msg, Signal::Spans)?;
    let mut attributes = String::new();
    object(&mut attributes, span.attributes.as_ref(), &[], limits)?;
    let mut events = String::from("[");
    for event in span.events.iter().flatten() {
        separate(&mut events);
        write_json_value(&mut events, event, limits, 0)?;
    }
    events.push(']');
    let kind = match text("kind", &span.kind)? {
        "" => "unspecified",
        k => k,
    };
    let status = match text("status", &span.status)? {
        "" => "unset",
        s => s,
    };
    sink.span(&SpanRecord {
        trace_id,
        span_id,
        parent_span_id: parent,
        name: text("name", &span.name)?,
        service,
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        status_code: status,
        status_message: "",
        trace_state: "",
        attributes: &attributes,
        resource: "",
        events: &events,
        links: "",
        error: text("error", &span.error)?,
    })
}

/// Decodes one flat metric point.
pub fn decode_metric(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let metric: FlatMetric = super::from_json_slice(msg.payload)
        .map_err(|e| Rejection::malformed(format!("flat metric point: {e}")))?;
    let name = text("name", &metric.name)?;
    if name.is_empty() {
        return Err(Rejection::malformed("flat metric point has no name"));
    }
    let value = metric
        .value
        .ok_or_else(|| {
            Rejection::malformed(format!("flat metric `{}` has no value", preview(name)))
        })?
        .0;
    let time = time("timestamp", &metric.timestamp)?
        .ok_or_else(|| Rejection::malformed("flat metric point has no timestamp"))?;
    ctx.check_time(time)?;
    let source = service(&metric.service, msg, Signal::Metrics)?;
    let kind_text = text("type", &metric.kind)?;
    let kind = match kind_text.to_ascii_lowercase().as_str() {
        "counter" | "sum" | "cumulative" => MetricKind::CumulativeSum,
        "delta" => MetricKind::DeltaSum,
        "updowncounter" | "up_down_counter" => MetricKind::NonMonotonicSum,
        _ => MetricKind::Gauge,
    };
    let extra: &[(&str, &str)] = if kind_text.is_empty() {
        &[]
    } else {
        &[("metric.type", kind_text)]
    };
    let mut attributes = String::new();
    object(&mut attributes, metric.tags.as_ref(), extra, ctx.limits)?;
    sink.metric(&MetricPoint {
        time_unix_nano: time,
        source,
        location: "",
        name,
        unit: "",
        value,
        kind,
        attributes: &attributes,
    })
}

/// Decodes one flat log record.
pub fn decode_log(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let log: FlatLog = super::from_json_slice(msg.payload)
        .map_err(|e| Rejection::malformed(format!("flat log record: {e}")))?;
    let time = time("timestamp", &log.timestamp)?
        .ok_or_else(|| Rejection::malformed("flat log record has no timestamp"))?;
    ctx.check_time(time)?;
    let service = service(&log.service, msg, Signal::Logs)?;
    let level = text("level", &log.level)?;
    let mut attributes = String::new();
    object(&mut attributes, log.fields.as_ref(), &[], ctx.limits)?;
    sink.log(&LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: 0,
        service,
        severity_number: severity_number(level),
        severity_text: level,
        message: text("message", &log.message)?,
        body_json: "",
        attributes: &attributes,
        resource: "",
        trace_id: "",
        span_id: "",
        flags: 0,
        error: text("error", &log.error)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{self, Collected};
    use crate::decode::RejectionKind;
    use serde_json::json;

    const SPAN: &str = r#"{
        "trace_id": "a1b2c3d4e5f6", "span_id": "f6e5d4c3b2a1", "parent_id": "1a2b3c4d5e6f",
        "name": "worker.executeTask", "service": "worker", "kind": "server",
        "start_time": "2024-01-15T10:30:00Z", "end_time": "2024-01-15T10:30:01.234Z",
        "duration_ms": 1234, "status": "ok",
        "attributes": {"run_id": "abc123", "step_id": "build"}, "events": [], "error": ""
    }"#;
    const METRIC: &str = r#"{
        "name": "step.duration_ms", "type": "histogram", "value": 1234.0,
        "tags": {"task_type": "build"}, "service": "worker", "timestamp": "2024-01-15T10:30:01Z"
    }"#;
    const LOG: &str = r#"{
        "level": "error", "message": "task handler returned error, will retry",
        "service": "engine", "timestamp": "2024-01-15T10:30:01Z",
        "fields": {"run_id": "abc123", "task_type": "build"}, "error": "connection refused"
    }"#;
    const T0: i64 = 1_705_314_600_000_000_000;

    fn run(
        decoder: testing::Decoder,
        subject: &str,
        payload: &str,
    ) -> Result<Collected, Rejection> {
        testing::run(decoder, subject, payload.as_bytes(), &Limits::default())
    }

    #[test]
    fn seed_span_maps_every_field() {
        let s = run(decode_span, "telemetry.spans.worker.abc123", SPAN)
            .unwrap()
            .spans
            .remove(0);
        assert_eq!(
            (&*s.trace_id, &*s.span_id, &*s.parent_span_id),
            ("a1b2c3d4e5f6", "f6e5d4c3b2a1", "1a2b3c4d5e6f")
        );
        assert_eq!(
            (&*s.name, &*s.service, &*s.kind),
            ("worker.executeTask", "worker", "server")
        );
        assert_eq!((s.start, s.end), (T0, T0 + 1_234_000_000));
        assert_eq!((&*s.status_code, &*s.status_message), ("ok", ""));
        assert_eq!(
            s.attributes,
            json!({"run_id": "abc123", "step_id": "build"})
        );
        assert_eq!(s.events, json!([]));
        assert_eq!(s.links, json!([]));
        assert_eq!(s.resource, json!({}));
        assert_eq!((&*s.error, &*s.trace_state), ("", ""));
    }

    #[test]
    fn span_end_from_duration_events_and_nulls() {
        let payload = r#"{"trace_id": "t", "span_id": "s", "name": "n", "service": "",
            "start_time": "2024-01-15T10:30:00.5+01:00", "duration_ms": 2.5, "status": "error",
            "attributes": null, "events": [{"name": "retry", "time": "2024-01-15T09:30:00.6Z", "attempt": 2}],
            "error": "timeout", "parent_id": null, "kind": null}"#;
        let s = run(decode_span, "telemetry.spans.billing.r9", payload)
            .unwrap()
            .spans
            .remove(0);
        let start = T0 - 3_600_000_000_000 + 500_000_000;
        assert_eq!((s.start, s.end), (start, start + 2_500_000));
        assert_eq!(s.service, "billing");
        assert_eq!(
            (&*s.kind, &*s.status_code, &*s.error),
            ("unspecified", "error", "timeout")
        );
        assert_eq!(s.parent_span_id, "");
        assert_eq!(s.attributes, json!({}));
        assert_eq!(
            s.events,
            json!([{"name": "retry", "time": "2024-01-15T09:30:00.6Z", "attempt": 2}])
        );
        // Neither end_time nor duration: a point in time.
        let payload = r#"{"trace_id": "t", "span_id": "s", "start_time": "2024-01-15T10:30:00Z", "service": "w"}"#;
        let s = run(decode_span, "x", payload).unwrap().spans.remove(0);
        assert_eq!((s.start, s.end), (T0, T0));
    }

    #[test]
    fn bad_spans_are_rejected() {
        for (payload, reason) in [
            (
                SPAN.replace(r#""trace_id": "a1b2c3d4e5f6""#, r#""trace_id": """#),
                "trace_id",
            ),
            (
                SPAN.replace(r#""span_id": "f6e5d4c3b2a1", "#, ""),
                "span_id",
            ),
            (
                SPAN.replace("2024-01-15T10:30:00Z", "yesterday"),
                "RFC 3339",
            ),
            (
                SPAN.replace(r#""start_time": "2024-01-15T10:30:00Z","#, ""),
                "start_time",
            ),
            (SPAN.replace("10:30:01.234Z", "10:29:00Z"), "before"),
            (SPAN.replace(r#""service": "worker","#, ""), "no service"),
            (
                SPAN.replace(r#""attributes": {"#, r#""attributes": ["#)
                    .replace("\"build\"}", "\"build\"]"),
                "flat span",
            ),
            (SPAN.replace("worker.executeTask", "a\\u0000b"), "NUL"),
        ] {
            let err = run(decode_span, "other.subject", &payload).unwrap_err();
            assert_eq!(err.kind, RejectionKind::Malformed, "{err}");
            assert!(err.detail.contains(reason), "{reason}: {err}");
        }
        let limits = Limits {
            max_attributes: 1,
            ..Limits::default()
        };
        let err = testing::run(decode_span, "x", SPAN.as_bytes(), &limits).unwrap_err();
        assert!(err.detail.contains("max_attributes"), "{err}");
        let limits = Limits {
            max_value_depth: 0,
            ..Limits::default()
        };
        let nested = SPAN.replace(r#""events": []"#, r#""events": [{"a": 1}]"#);
        let err = testing::run(decode_span, "x", nested.as_bytes(), &limits).unwrap_err();
        assert!(err.detail.contains("max_value_depth"), "{err}");
        let old = testing::run_from(decode_span, "x", SPAN.as_bytes(), T0 + 1);
        testing::rejection(old, "max_past");
    }

    #[test]
    fn seed_metric_maps_every_field() {
        let m = run(
            decode_metric,
            "telemetry.metrics.worker.step.duration_ms",
            METRIC,
        )
        .unwrap()
        .metrics
        .remove(0);
        assert_eq!(m.time, T0 + 1_000_000_000);
        assert_eq!(
            (&*m.source, &*m.location, &*m.name, &*m.unit),
            ("worker", "", "step.duration_ms", "")
        );
        assert_eq!(m.value, 1234.0);
        assert_eq!(m.kind, MetricKind::Gauge);
        assert_eq!(
            m.attributes,
            json!({"task_type": "build", "metric.type": "histogram"})
        );
        let counter = METRIC
            .replace("histogram", "counter")
            .replace(r#""tags": {"task_type": "build"}"#, r#""tags": null"#);
        let m = run(decode_metric, "x", &counter).unwrap().metrics.remove(0);
        assert_eq!(m.kind, MetricKind::CumulativeSum);
        assert_eq!(m.attributes, json!({"metric.type": "counter"}));
        // Doubles arrive bit for bit.
        let exact = METRIC.replace("1234.0", "0.30000000000000004");
        assert_eq!(
            run(decode_metric, "x", &exact).unwrap().metrics[0]
                .value
                .to_bits(),
            0.30000000000000004_f64.to_bits()
        );
        // The subject's service token stands in for a missing service.
        let anonymous = METRIC.replace(r#""service": "worker", "#, "");
        assert_eq!(
            run(
                decode_metric,
                "telemetry.metrics.planner.step.duration_ms",
                &anonymous
            )
            .unwrap()
            .metrics[0]
                .source,
            "planner"
        );
    }

    #[test]
    fn bad_metrics_are_rejected() {
        for (payload, reason) in [
            (METRIC.replace(r#""value": 1234.0,"#, ""), "no value"),
            (METRIC.replace("1234.0", "\"lots\""), "flat metric point"),
            (
                METRIC.replace(r#""name": "step.duration_ms","#, ""),
                "no name",
            ),
            (
                METRIC.replace(r#", "timestamp": "2024-01-15T10:30:01Z""#, ""),
                "no timestamp",
            ),
            (METRIC.replace(r#""service": "worker", "#, ""), "no service"),
        ] {
            let err = run(decode_metric, "other", &payload).unwrap_err();
            assert!(err.detail.contains(reason), "{reason}: {err}");
        }
        let limits = Limits {
            max_attribute_key_bytes: 4,
            ..Limits::default()
        };
        let err = testing::run(decode_metric, "x", METRIC.as_bytes(), &limits).unwrap_err();
        assert!(err.detail.contains("max_attribute_key_bytes"), "{err}");
        let limits = Limits {
            max_attribute_value_bytes: 4,
            ..Limits::default()
        };
        let err = testing::run(decode_metric, "x", METRIC.as_bytes(), &limits).unwrap_err();
        assert!(err.detail.contains("max_attribute_value_bytes"), "{err}");
    }

    #[test]
    fn seed_log_maps_every_field() {
        let l = run(decode_log, "telemetry.logs.engine.error", LOG)
            .unwrap()
            .logs
            .remove(0);
        assert_eq!((l.time, l.observed), (T0 + 1_000_000_000, 0));
        assert_eq!(l.service, "engine");
        assert_eq!((l.severity_number, &*l.severity_text), (17, "error"));
        assert_eq!(l.message, "task handler returned error, will retry");
        assert_eq!(l.body_json, None);
        assert_eq!(
            l.attributes,
            json!({"run_id": "abc123", "task_type": "build"})
        );
        assert_eq!(l.resource, json!({}));
        assert_eq!((&*l.trace_id, &*l.span_id, l.flags), ("", "", 0));
        assert_eq!(l.error, "connection refused");
        for (level, n) in [
            ("info", 9),
            ("WARN", 13),
            ("debug", 5),
            ("fatal", 21),
            ("chatty", 0),
        ] {
            let payload = LOG.replace(
                "\"error\", \"message\"",
                &format!("\"{level}\", \"message\""),
            );
            let l = run(decode_log, "x", &payload).unwrap().logs.remove(0);
            assert_eq!((l.severity_number, &*l.severity_text), (n, level));
        }
        let err = run(decode_log, "x", &LOG.replace("2024-01-15T10:30:01Z", "")).unwrap_err();
        assert!(err.detail.contains("no timestamp"), "{err}");
    }
}
