//! Test support for the decoders: a sink that keeps owned copies of every record, with the
//! JSON columns parsed, a context without a time window, and the rows the OpenTelemetry
//! Python SDK's fixtures hold (decoded from JSON and from protobuf alike).

use super::{DecodeContext, Incoming, RecordSink, Rejection};
use crate::config::{Encoding, Limits};
use jetscale_model::{DistributionPoint, LogRecord, MetricKind, MetricPoint, SpanRecord};
use serde_json::{json, Value};

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

/// The default limits but for what `set` changes.
pub(crate) fn limits(set: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    set(&mut limits);
    limits
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

/// A decoder function, as [`super::decode`] dispatches to.
pub(crate) type Decoder =
    fn(&Incoming<'_>, &DecodeContext<'_>, &mut dyn RecordSink) -> Result<(), Rejection>;

/// Runs a decoder function in `ctx`.
pub(crate) fn run_in(
    decoder: Decoder,
    subject: &str,
    payload: &[u8],
    ctx: &DecodeContext<'_>,
) -> Result<Collected, Rejection> {
    let mut sink = Collected::default();
    decoder(&incoming(subject, payload), ctx, &mut sink)?;
    Ok(sink)
}

/// Runs a decoder function with `limits`.
pub(crate) fn run(
    decoder: Decoder,
    subject: &str,
    payload: &[u8],
    limits: &Limits,
) -> Result<Collected, Rejection> {
    run_in(decoder, subject, payload, &ctx(limits))
}

/// Runs a decoder function with default limits and no point accepted before `min_time_ns`.
pub(crate) fn run_from(
    decoder: Decoder,
    subject: &str,
    payload: &[u8],
    min_time_ns: i64,
) -> Result<Collected, Rejection> {
    let limits = Limits::default();
    let ctx = DecodeContext {
        min_time_ns,
        ..ctx(&limits)
    };
    run_in(decoder, subject, payload, &ctx)
}

/// The rejection of a decode that has to fail, checked to say `needle`.
#[track_caller]
pub(crate) fn rejection(outcome: Result<Collected, Rejection>, needle: &str) -> Rejection {
    match outcome {
        Ok(got) => panic!("accepted, but a rejection saying `{needle}` was expected: {got:?}"),
        Err(err) => {
            assert!(err.detail.contains(needle), "`{needle}` expected: {err}");
            err
        }
    }
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

/// The OpenTelemetry Python SDK's metrics, through protobuf's json_format.
pub(crate) fn check_python_metrics(got: &Collected) {
    const T: i64 = 1_700_000_000_000_000_000;
    const START: i64 = T - 60_000_000_000;
    let m = &got.metrics;
    assert_eq!(m.len(), 3, "{m:?}");
    let requests = m.iter().find(|p| p.name == "http.requests").unwrap();
    assert_eq!(
        (
            requests.time,
            &*requests.source,
            &*requests.unit,
            requests.value
        ),
        (T, "checkout", "1", 7.0)
    );
    assert_eq!(requests.kind, MetricKind::CumulativeSum);
    assert_eq!(requests.attributes["route"], "/checkout");
    assert_eq!(requests.attributes["host.cpu_count"], 8);
    assert_eq!(requests.attributes["otel.scope.name"], "checkout.metrics");
    let inflight = m.iter().find(|p| p.name == "http.inflight").unwrap();
    assert_eq!(
        (inflight.value, inflight.kind),
        (3.0, MetricKind::NonMonotonicSum)
    );
    let cpu = m.iter().find(|p| p.name == "cpu.temperature").unwrap();
    assert_eq!(
        (cpu.value, cpu.kind, &*cpu.unit),
        (61.5, MetricKind::Gauge, "Cel")
    );
    assert_eq!(cpu.attributes["core"], 0);
    let d = &got.distributions;
    assert_eq!(d.len(), 3);
    let h = d.iter().find(|p| p.name == "http.duration").unwrap();
    assert_eq!(
        (&*h.kind, &*h.temporality, h.count),
        ("histogram", "cumulative", 4)
    );
    assert_eq!((h.time, h.start), (T, START));
    assert_eq!(
        (h.sum, h.min, h.max),
        (Some(2695.75), Some(3.5), Some(2600.0))
    );
    assert_eq!(
        h.buckets["bounds"],
        json!([
            0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
            7500.0, 10000.0
        ])
    );
    assert_eq!(
        h.buckets["counts"],
        json!([0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    );
    let e = d.iter().find(|p| p.name == "payload.size").unwrap();
    assert_eq!(
        (&*e.kind, e.count, e.sum),
        ("exponential_histogram", 5, Some(1104.0))
    );
    assert_eq!((e.min, e.max), (Some(0.0), Some(1000.0)));
    assert_eq!(e.buckets["scale"], 3);
    assert_eq!(e.buckets["zero_count"], 1);
    assert_eq!(e.buckets["zero_threshold"], 0.0);
    assert_eq!(e.buckets["positive"]["offset"], -1);
    let positive = e.buckets["positive"]["counts"].as_array().unwrap();
    assert_eq!(positive.len(), 128);
    let ones: Vec<usize> = (0..positive.len()).filter(|&i| positive[i] == 1).collect();
    assert_eq!(ones, vec![0, 13, 54, 80]);
    assert_eq!(e.buckets["negative"], json!({"offset": 0, "counts": [0]}));
    let s = d.iter().find(|p| p.name == "rpc.latency").unwrap();
    assert_eq!((&*s.kind, s.count, s.sum), ("summary", 10, Some(4.75)));
    assert_eq!(
        s.buckets,
        json!({"quantiles": [{"quantile": 0.0, "value": 0.05}, {"quantile": 0.5, "value": 0.4}, {"quantile": 1.0, "value": 1.5}]})
    );
    assert_eq!(s.attributes["method"], "Get");
}

/// The OpenTelemetry Python SDK's spans (see tests/fixtures/generate_otel_python.py).
pub(crate) fn check_python_traces(got: &Collected) {
    const T: i64 = 1_700_000_000_000_000_000;
    const MS: i64 = 1_000_000;
    let spans = &got.spans;
    assert_eq!(spans.len(), 3);
    let server = spans.iter().find(|s| s.name == "POST /checkout").unwrap();
    assert_eq!(server.trace_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(server.span_id, "eee19b7ec3c1b171");
    assert_eq!(server.parent_span_id, "eee19b7ec3c1b16f");
    assert_eq!(server.trace_state, "vendor=opaque,rojo=00f067aa0ba902b7");
    assert_eq!((&*server.kind, &*server.service), ("server", "checkout"));
    assert_eq!((server.start, server.end), (T, T + 250 * MS));
    assert_eq!(
        (&*server.status_code, &*server.status_message),
        ("error", "card declined")
    );
    assert_eq!(
        server.attributes,
        json!({"http.request.method": "POST", "http.response.status_code": 500, "retry": true,
               "ratio": 0.25, "tags": ["a", "b"], "otel.span.flags": 768})
    );
    assert_eq!(
        server.events,
        json!([{"time_unix_nano": T + 120 * MS, "name": "exception",
                "attributes": {"exception.type": "ValueError", "exception.message": "card declined"}}])
    );
    // The Python SDK's encoder does not write a link's trace state.
    assert_eq!(
        server.links,
        json!([{"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "00f067aa0ba902b7",
                "trace_state": "", "attributes": {"link.kind": "follows"}, "flags": 768}])
    );
    assert_eq!(server.resource["service.version"], "2.4.1");
    assert_eq!(server.resource["host.cpu_count"], 8);
    assert_eq!(server.resource["otel.scope.name"], "checkout.http");
    assert_eq!(server.resource["scope.attr"], "s");
    let client = spans.iter().find(|s| s.name == "SELECT orders").unwrap();
    assert_eq!(client.parent_span_id, "eee19b7ec3c1b171");
    assert_eq!((&*client.kind, &*client.status_code), ("client", "ok"));
    assert_eq!((client.start, client.end), (T + 10 * MS, T + 35 * MS));
    let internal = spans.iter().find(|s| s.name == "render").unwrap();
    assert_eq!(
        (&*internal.kind, &*internal.status_code),
        ("internal", "unset")
    );
}

/// The OpenTelemetry Python SDK's logs (see tests/fixtures/generate_otel_python.py).
pub(crate) fn check_python_logs(got: &Collected) {
    const T: i64 = 1_700_000_000_000_000_000;
    const MS: i64 = 1_000_000;
    let logs = &got.logs;
    assert_eq!(logs.len(), 3);
    let l = &logs[0];
    assert_eq!((l.time, l.observed), (T + MS, T + 2 * MS));
    assert_eq!((l.severity_number, &*l.severity_text), (17, "ERROR"));
    assert_eq!(l.message, "payment failed: card declined");
    assert_eq!(l.body_json, None);
    assert_eq!(l.attributes, json!({"order.id": "o-17", "attempt": 2}));
    assert_eq!(l.trace_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(l.span_id, "eee19b7ec3c1b171");
    assert_eq!(l.flags, 1);
    assert_eq!(l.service, "checkout");
    assert_eq!(l.resource["service.instance.id"], "checkout-1");
    assert_eq!(l.resource["otel.scope.name"], "checkout.logs");
    let l = &logs[1];
    assert_eq!((l.severity_number, &*l.severity_text), (9, "INFO"));
    assert_eq!(
        l.body_json,
        Some(json!({"event": "checkout", "items": [1, 2.5, "x"], "ok": true}))
    );
    assert_eq!(l.attributes, json!({"event.name": "checkout.completed"}));
    assert_eq!((&*l.trace_id, l.flags), ("", 0));
    let l = &logs[2];
    assert_eq!((l.time, l.observed), (T + 4 * MS, T + 4 * MS));
    assert_eq!(l.severity_number, 14);
    assert_eq!(l.body_json, Some(json!("AAFiaW5hcnk=")));
}
