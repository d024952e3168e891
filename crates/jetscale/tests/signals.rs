//! Every signal in every wire format, end to end against real nats-server and PostgreSQL:
//! payloads made by real encoders (opentelemetry-proto's types through prost and through
//! its serde, the OpenTelemetry Python SDK's exporters as committed fixtures, and seed 001's
//! flat records from `jetscale_model::flat`) are published on the seeds' subjects, collected,
//! and checked field by field in telemetry_spans, telemetry_logs, telemetry_distributions,
//! iot_metrics and jetscale_dead_letters. Also: a span published twice, inside and outside
//! the stream's duplicate window, is stored once.

mod common;

use async_nats::jetstream::{self, message::PublishMessage};
use jetscale_model::flat::{unix_nanos_to_rfc3339, FlatLog, FlatMetric, FlatSpan};
use jetscale_model::subject;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value as Any, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1 as logs;
use opentelemetry_proto::tonic::metrics::v1 as metrics;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as trace;
use prost::Message as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const MS: i64 = 1_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Two minutes ago, on a whole millisecond: inside the accepted window, and exact in
/// PostgreSQL's microseconds.
fn base_ns() -> i64 {
    (now_ns() - 120_000 * MS) / MS * MS
}

fn us(ns: i64) -> i64 {
    ns.div_euclid(1000)
}

async fn jetstream(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("connect nats"))
}

/// Publishes and waits for the stream's acknowledgement; returns whether the stream
/// dropped it as a duplicate.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    headers: &[(&'static str, &str)],
    msg_id: Option<&str>,
) -> bool {
    let mut msg = PublishMessage::build().payload(payload.into());
    for (name, value) in headers {
        msg = msg.header(*name, *value);
    }
    if let Some(id) = msg_id {
        msg = msg.message_id(id);
    }
    js.send_publish(subject.to_owned(), msg)
        .await
        .expect("publish")
        .await
        .expect("publish ack")
        .duplicate
}

/// The rows of a query, each as one JSON object (`to_jsonb` of the row), numbers
/// normalized by [`norm`].
async fn rows(db: &tokio_postgres::Client, sql: &str) -> Vec<Value> {
    db.query(&format!("SELECT to_jsonb(q) FROM ({sql}) q"), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| norm(r.get::<_, Value>(0)))
        .collect()
}

/// PostgreSQL renders a `double precision` 250.0 as `250` in JSON: doubles with no
/// fraction are compared as integers on both sides (every other number as it is).
fn norm(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(norm).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, norm(v))).collect()),
        other => other,
    }
}

fn norms(values: Vec<Value>) -> Vec<Value> {
    values.into_iter().map(norm).collect()
}

const SPANS: &str = "SELECT (extract(epoch FROM time) * 1000000)::int8 AS start_us,
    (extract(epoch FROM end_time) * 1000000)::int8 AS end_us, trace_id, span_id, parent_span_id,
    name, service, kind, status_code, status_message, trace_state, duration_ms, attributes,
    resource, events, links, error FROM telemetry_spans";
const LOGS: &str = "SELECT (extract(epoch FROM time) * 1000000)::int8 AS time_us,
    (extract(epoch FROM observed_time) * 1000000)::int8 AS observed_us, service, severity_number,
    severity_text, message, body, attributes, resource, trace_id, span_id, flags, error
    FROM telemetry_logs";
const METRICS: &str = "SELECT (extract(epoch FROM time) * 1000000)::int8 AS time_us, device_id,
    location, metric_name, value, unit, attributes FROM iot_metrics";
const DISTRIBUTIONS: &str = "SELECT (extract(epoch FROM time) * 1000000)::int8 AS time_us,
    (extract(epoch FROM start_time) * 1000000)::int8 AS start_us, device_id, location,
    metric_name, unit, kind, temporality, count, sum, min, max, buckets, attributes
    FROM telemetry_distributions";

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Any {
    Any::StringValue(v.into())
}

fn resource(attributes: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource {
        attributes,
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "jetscale-test".into(),
        version: "1.0".into(),
        ..Default::default()
    })
}

/// One server span; `n` makes its ids unique.
fn trace_request(t: i64, n: u8) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![trace::ResourceSpans {
            resource: resource(vec![
                kv("service.name", s("checkout")),
                kv("deployment.environment", s("prod")),
            ]),
            scope_spans: vec![trace::ScopeSpans {
                scope: scope(),
                spans: vec![trace::Span {
                    trace_id: vec![n; 16],
                    span_id: vec![n, 0, 0, 0, 0, 0, 0, 1],
                    parent_span_id: vec![0xAA; 8],
                    trace_state: "vendor=x".into(),
                    flags: 1,
                    name: "POST /pay".into(),
                    kind: trace::span::SpanKind::Server as i32,
                    start_time_unix_nano: t as u64,
                    end_time_unix_nano: (t + 1_234_567_000) as u64,
                    attributes: vec![
                        kv("http.status", Any::IntValue(500)),
                        kv("ratio", Any::DoubleValue(0.1)),
                        kv("ok", Any::BoolValue(false)),
                        kv("raw", Any::BytesValue(vec![1, 2, 3])),
                        kv(
                            "tags",
                            Any::ArrayValue(ArrayValue {
                                values: vec![AnyValue {
                                    value: Some(s("a")),
                                }],
                            }),
                        ),
                    ],
                    events: vec![trace::span::Event {
                        time_unix_nano: (t + MS) as u64,
                        name: "exception".into(),
                        attributes: vec![kv("exception.message", s("boom"))],
                        ..Default::default()
                    }],
                    links: vec![trace::span::Link {
                        trace_id: vec![0xBB; 16],
                        span_id: vec![0xCC; 8],
                        trace_state: "l=1".into(),
                        attributes: vec![kv("link.kind", s("follows"))],
                        flags: 1,
                        ..Default::default()
                    }],
                    status: Some(trace::Status {
                        message: "card declined".into(),
                        code: trace::status::StatusCode::Error as i32,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn expected_span(t: i64, n: u8) -> Value {
    json!({
        "start_us": us(t), "end_us": us(t + 1_234_567_000),
        "trace_id": hex(&[n; 16]), "span_id": hex(&[n, 0, 0, 0, 0, 0, 0, 1]),
        "parent_span_id": "aaaaaaaaaaaaaaaa", "name": "POST /pay", "service": "checkout",
        "kind": "server", "status_code": "error", "status_message": "card declined",
        "trace_state": "vendor=x", "duration_ms": 1_234_567_000_f64 / 1e6,
        "attributes": {"http.status": 500, "ratio": 0.1, "ok": false, "raw": "AQID",
                       "tags": ["a"], "otel.span.flags": 1},
        "resource": {"service.name": "checkout", "deployment.environment": "prod",
                     "otel.scope.name": "jetscale-test", "otel.scope.version": "1.0"},
        "events": [{"time_unix_nano": t + MS, "name": "exception",
                    "attributes": {"exception.message": "boom"}}],
        "links": [{"trace_id": "bb".repeat(16), "span_id": "cc".repeat(8), "trace_state": "l=1",
                   "attributes": {"link.kind": "follows"}, "flags": 1}],
        "error": null,
    })
}

fn log_request(t: i64, tag: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![logs::ResourceLogs {
            resource: resource(vec![kv("service.name", s("engine"))]),
            scope_logs: vec![logs::ScopeLogs {
                scope: scope(),
                log_records: vec![
                    logs::LogRecord {
                        time_unix_nano: t as u64,
                        observed_time_unix_nano: (t + MS) as u64,
                        severity_number: logs::SeverityNumber::Error as i32,
                        severity_text: "ERROR".into(),
                        body: Some(AnyValue {
                            value: Some(s(&format!("{tag}: task failed"))),
                        }),
                        attributes: vec![kv("run_id", s("abc123"))],
                        flags: 1,
                        trace_id: vec![0xAB; 16],
                        span_id: vec![0x01; 8],
                        ..Default::default()
                    },
                    logs::LogRecord {
                        observed_time_unix_nano: (t + 2 * MS) as u64,
                        severity_number: logs::SeverityNumber::Warn2 as i32,
                        body: Some(AnyValue {
                            value: Some(Any::KvlistValue(KeyValueList {
                                values: vec![
                                    kv("source", s(tag)),
                                    kv(
                                        "b",
                                        Any::ArrayValue(ArrayValue {
                                            values: vec![
                                                AnyValue {
                                                    value: Some(Any::BoolValue(true)),
                                                },
                                                AnyValue {
                                                    value: Some(Any::DoubleValue(2.5)),
                                                },
                                            ],
                                        }),
                                    ),
                                ],
                            })),
                        }),
                        event_name: "checkout.done".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn expected_logs(t: i64, tag: &str) -> Vec<Value> {
    let resource = json!({"service.name": "engine", "otel.scope.name": "jetscale-test",
                          "otel.scope.version": "1.0"});
    vec![
        json!({"time_us": us(t), "observed_us": us(t + MS), "service": "engine",
               "severity_number": 17, "severity_text": "ERROR",
               "message": format!("{tag}: task failed"), "body": null,
               "attributes": {"run_id": "abc123"}, "resource": resource,
               "trace_id": "ab".repeat(16), "span_id": "01".repeat(8), "flags": 1, "error": null}),
        json!({"time_us": us(t + 2 * MS), "observed_us": us(t + 2 * MS), "service": "engine",
               "severity_number": 14, "severity_text": null,
               "message": format!(r#"{{"source":"{tag}","b":[true,2.5]}}"#),
               "body": {"source": tag, "b": [true, 2.5]},
               "attributes": {"event.name": "checkout.done"}, "resource": resource,
               "trace_id": null, "span_id": null, "flags": 0, "error": null}),
    ]
}

fn metric_request(t: i64, device: &str) -> ExportMetricsServiceRequest {
    use metrics::metric::Data;
    use metrics::number_data_point::Value as Number;
    let point = |value| metrics::NumberDataPoint {
        time_unix_nano: t as u64,
        value: Some(value),
        attributes: vec![kv("sensor", s("a"))],
        ..Default::default()
    };
    let metric = |name: &str, unit: &str, data| metrics::Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![metrics::ResourceMetrics {
            resource: resource(vec![
                kv("service.name", s("iot-sensor")),
                kv("device.id", s(device)),
                kv("device.location", s("dock-4")),
            ]),
            scope_metrics: vec![metrics::ScopeMetrics {
                scope: scope(),
                metrics: vec![
                    metric(
                        "device.temperature",
                        "Cel",
                        Data::Gauge(metrics::Gauge {
                            data_points: vec![point(Number::AsDouble(21.125))],
                        }),
                    ),
                    metric(
                        "door.opened",
                        "1",
                        Data::Sum(metrics::Sum {
                            data_points: vec![point(Number::AsInt(-3))],
                            aggregation_temporality: metrics::AggregationTemporality::Delta as i32,
                            is_monotonic: false,
                        }),
                    ),
                    metric(
                        "request.latency",
                        "ms",
                        Data::Histogram(metrics::Histogram {
                            data_points: vec![metrics::HistogramDataPoint {
                                start_time_unix_nano: (t - 60_000 * MS) as u64,
                                time_unix_nano: t as u64,
                                count: 6,
                                sum: Some(30.5),
                                bucket_counts: vec![1, 2, 3],
                                explicit_bounds: vec![1.0, 10.0],
                                min: Some(0.5),
                                max: Some(12.0),
                                ..Default::default()
                            }],
                            aggregation_temporality: metrics::AggregationTemporality::Cumulative
                                as i32,
                        }),
                    ),
                    metric(
                        "payload.size",
                        "By",
                        Data::ExponentialHistogram(metrics::ExponentialHistogram {
                            data_points: vec![metrics::ExponentialHistogramDataPoint {
                                time_unix_nano: t as u64,
                                count: 4,
                                sum: Some(10.0),
                                scale: 2,
                                zero_count: 1,
                                positive: Some(
                                    metrics::exponential_histogram_data_point::Buckets {
                                        offset: -1,
                                        bucket_counts: vec![1, 2],
                                    },
                                ),
                                ..Default::default()
                            }],
                            aggregation_temporality: metrics::AggregationTemporality::Delta as i32,
                        }),
                    ),
                    metric(
                        "rpc.duration",
                        "s",
                        Data::Summary(metrics::Summary {
                            data_points: vec![metrics::SummaryDataPoint {
                                time_unix_nano: t as u64,
                                count: 10,
                                sum: 4.75,
                                quantile_values: vec![
                                    metrics::summary_data_point::ValueAtQuantile {
                                        quantile: 0.5,
                                        value: 0.4,
                                    },
                                    metrics::summary_data_point::ValueAtQuantile {
                                        quantile: 0.99,
                                        value: 1.5,
                                    },
                                ],
                                ..Default::default()
                            }],
                        }),
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn expected_metrics(t: i64, device: &str) -> (Vec<Value>, Vec<Value>) {
    let shared = json!({"service.name": "iot-sensor", "otel.scope.name": "jetscale-test",
                        "otel.scope.version": "1.0"});
    let with = |extra: Value| {
        let mut a = shared.clone();
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let numbers = vec![
        json!({"time_us": us(t), "device_id": device, "location": "dock-4",
               "metric_name": "device.temperature", "value": 21.125, "unit": "Cel",
               "attributes": with(json!({"sensor": "a"}))}),
        json!({"time_us": us(t), "device_id": device, "location": "dock-4",
               "metric_name": "door.opened", "value": -3.0, "unit": "1",
               "attributes": with(json!({"sensor": "a", "metric.kind": "delta_sum"}))}),
    ];
    let distributions = vec![
        json!({"time_us": us(t), "start_us": null, "device_id": device, "location": "dock-4",
               "metric_name": "payload.size", "unit": "By", "kind": "exponential_histogram",
               "temporality": "delta", "count": 4, "sum": 10.0, "min": null, "max": null,
               "buckets": {"scale": 2, "zero_count": 1, "zero_threshold": 0.0,
                           "positive": {"offset": -1, "counts": [1, 2]},
                           "negative": {"offset": 0, "counts": []}},
               "attributes": shared}),
        json!({"time_us": us(t), "start_us": us(t - 60_000 * MS), "device_id": device,
               "location": "dock-4", "metric_name": "request.latency", "unit": "ms",
               "kind": "histogram", "temporality": "cumulative", "count": 6, "sum": 30.5,
               "min": 0.5, "max": 12.0,
               "buckets": {"bounds": [1.0, 10.0], "counts": [1, 2, 3]}, "attributes": shared}),
        json!({"time_us": us(t), "start_us": null, "device_id": device, "location": "dock-4",
               "metric_name": "rpc.duration", "unit": "s", "kind": "summary",
               "temporality": "cumulative", "count": 10, "sum": 4.75, "min": null, "max": null,
               "buckets": {"quantiles": [{"quantile": 0.5, "value": 0.4},
                                         {"quantile": 0.99, "value": 1.5}]},
               "attributes": shared}),
    ];
    (numbers, distributions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_protobuf_and_json_of_every_signal_land_field_by_field() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("otlp").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    let js = jetstream(&nats.server.url()).await;
    let t = base_ns();
    const PROTO: (&str, &str) = ("Content-Type", "application/x-protobuf");
    const JSON: (&str, &str) = ("Content-Type", "application/json");

    // Traces: protobuf by Content-Type, by the subject alone, by trial on a subject that
    // names no signal; OTLP/JSON from opentelemetry-proto's serde.
    let spans = subject::spans("checkout", "run1");
    publish(
        &js,
        &spans,
        trace_request(t, 1).encode_to_vec(),
        &[PROTO],
        None,
    )
    .await;
    publish(&js, &spans, trace_request(t, 2).encode_to_vec(), &[], None).await;
    publish(
        &js,
        "telemetry.misc.checkout",
        trace_request(t, 3).encode_to_vec(),
        &[],
        None,
    )
    .await;
    let json = serde_json::to_vec(&trace_request(t, 4)).unwrap();
    publish(&js, &spans, json, &[JSON], None).await;
    // Logs: protobuf with the SDK's header, OTLP/JSON by content.
    let log_subject = subject::logs("engine", "error");
    let pb = log_request(t, "pb").encode_to_vec();
    publish(
        &js,
        &log_subject,
        pb,
        &[("Jetscale-Format", "otlp-proto;signal=logs")],
        None,
    )
    .await;
    let json = serde_json::to_vec(&log_request(t + 10 * MS, "json")).unwrap();
    publish(&js, &log_subject, json, &[], None).await;
    // Metrics: protobuf on seed 000's device subject, OTLP/JSON with the format header.
    let pb = metric_request(t, "sensor-pb").encode_to_vec();
    publish(&js, &subject::device_metrics("sensor-pb"), pb, &[], None).await;
    let json = serde_json::to_vec(&metric_request(t, "sensor-json")).unwrap();
    let json_format = ("Jetscale-Format", "otlp-json");
    publish(
        &js,
        &subject::device_metrics("sensor-json"),
        json,
        &[json_format],
        None,
    )
    .await;
    // Messages of no known format: dead-lettered with the reason.
    publish(&js, &log_subject, b"hello world".to_vec(), &[], None).await;
    publish(
        &js,
        "telemetry.metrics.x",
        br#"{"temperature": 21}"#.to_vec(),
        &[],
        None,
    )
    .await;
    let yaml = ("Jetscale-Format", "yaml");
    publish(
        &js,
        "telemetry.metrics.x",
        b"temperature: 21".to_vec(),
        &[yaml],
        None,
    )
    .await;

    let report = common::collect_until_idle(&settings).await;
    assert_eq!(report.messages, 11);
    assert_eq!(report.dead_letters, 3);
    let db = common::db(&db_url).await;

    let got = rows(&db, &format!("{SPANS} ORDER BY trace_id")).await;
    let expected: Vec<Value> = (1..=4).map(|n| expected_span(t, n)).collect();
    assert_eq!(got, norms(expected));

    let got = rows(&db, &format!("{LOGS} ORDER BY time")).await;
    let mut expected = expected_logs(t, "pb");
    expected.extend(expected_logs(t + 10 * MS, "json"));
    expected.sort_by_key(|v| v["time_us"].as_i64());
    assert_eq!(got, norms(expected));

    for device in ["sensor-pb", "sensor-json"] {
        let (numbers, distributions) = expected_metrics(t, device);
        let got = rows(
            &db,
            &format!("{METRICS} WHERE device_id = '{device}' ORDER BY metric_name"),
        )
        .await;
        assert_eq!(got, norms(numbers), "{device}");
        let got = rows(
            &db,
            &format!("{DISTRIBUTIONS} WHERE device_id = '{device}' ORDER BY metric_name"),
        )
        .await;
        assert_eq!(got, norms(distributions), "{device}");
    }

    let dead = rows(
        &db,
        "SELECT subject, reason FROM jetscale_dead_letters ORDER BY stream_seq",
    )
    .await;
    assert_eq!(dead.len(), 3);
    for d in &dead {
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.starts_with("unknown format: "), "{reason}");
    }
    assert!(dead[2]["reason"].as_str().unwrap().contains("yaml"));
}

/// Files written by the OpenTelemetry Python SDK (tests/fixtures/generate_otel_python.py),
/// all times relative to this instant.
const PYTHON_BASE_NS: i64 = 1_700_000_000_000_000_000;

fn in_fixture_range(v: i64) -> bool {
    (PYTHON_BASE_NS - 120_000 * MS..=PYTHON_BASE_NS + 60_000 * MS).contains(&v)
}

/// Moves every timestamp of a protobuf fixture by `delta`, in place: OTLP times are
/// fixed64, so every other byte stays as the Python encoder wrote it.
fn shift_protobuf(mut bytes: Vec<u8>, delta: i64) -> Vec<u8> {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let v = i64::from_le_bytes(word);
        if in_fixture_range(v) {
            bytes[i..i + 8].copy_from_slice(&(v + delta).to_le_bytes());
            i += 8;
        } else {
            i += 1;
        }
    }
    bytes
}

/// Moves every `"1700…"` timestamp string of a JSON fixture by `delta`, leaving the rest
/// of the text as protobuf's json_format wrote it.
fn shift_json(text: &str, delta: i64) -> Vec<u8> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('"') {
        out.push_str(&rest[..=pos]);
        rest = &rest[pos + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 19 && rest.as_bytes().get(19) == Some(&b'"') {
            if let Ok(v) = rest[..19].parse::<i64>() {
                if in_fixture_range(v) {
                    out.push_str(&(v + delta).to_string());
                    rest = &rest[19..];
                }
            }
        }
    }
    out.push_str(rest);
    out.into_bytes()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_python_sdk_output_lands_field_by_field() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("python").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    let js = jetstream(&nats.server.url()).await;
    let pb_delta = base_ns() - PYTHON_BASE_NS;
    // The JSON copies land one second later, so their spans are distinct rows.
    let json_delta = pb_delta + 1000 * MS;
    for signal in ["traces", "metrics", "logs"] {
        let subject = match signal {
            "traces" => subject::spans("checkout", "py"),
            "metrics" => subject::service_metric("checkout", "all"),
            _ => subject::logs("checkout", "mixed"),
        };
        let pb = shift_protobuf(fixture(&format!("otel_python_{signal}.pb")), pb_delta);
        let ct = ("Content-Type", "application/x-protobuf");
        publish(&js, &subject, pb, &[ct], None).await;
        let text = String::from_utf8(fixture(&format!("otel_python_{signal}.json"))).unwrap();
        publish(&js, &subject, shift_json(&text, json_delta), &[], None).await;
    }
    let report = common::collect_until_idle(&settings).await;
    assert_eq!((report.messages, report.dead_letters), (6, 0));
    let db = common::db(&db_url).await;

    for delta in [pb_delta, json_delta] {
        let t = PYTHON_BASE_NS + delta;
        // Every record of one copy is at or up to 250 ms after t; the copies are 1 s apart.
        let window = format!(
            "(extract(epoch FROM time) * 1000000)::int8 BETWEEN {} AND {}",
            us(t),
            us(t + 900 * MS)
        );
        let spans = rows(&db, &format!("{SPANS} WHERE {window} ORDER BY time")).await;
        assert_eq!(spans.len(), 3, "{spans:?}");
        let server = &spans[0];
        assert_eq!(server["start_us"], us(t));
        assert_eq!(server["end_us"], us(t + 250 * MS));
        assert_eq!(server["trace_id"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(server["span_id"], "eee19b7ec3c1b171");
        assert_eq!(server["parent_span_id"], "eee19b7ec3c1b16f");
        assert_eq!(server["trace_state"], "vendor=opaque,rojo=00f067aa0ba902b7");
        assert_eq!(server["name"], "POST /checkout");
        assert_eq!(server["service"], "checkout");
        assert_eq!(server["kind"], "server");
        assert_eq!(server["status_code"], "error");
        assert_eq!(server["status_message"], "card declined");
        assert_eq!(server["duration_ms"], 250.0);
        assert_eq!(
            server["attributes"],
            json!({"http.request.method": "POST", "http.response.status_code": 500,
                   "retry": true, "ratio": 0.25, "tags": ["a", "b"], "otel.span.flags": 768})
        );
        assert_eq!(
            server["events"],
            json!([{"time_unix_nano": t + 120 * MS, "name": "exception",
                    "attributes": {"exception.type": "ValueError",
                                   "exception.message": "card declined"}}])
        );
        assert_eq!(
            server["links"][0]["trace_id"],
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            server["links"][0]["attributes"],
            json!({"link.kind": "follows"})
        );
        assert_eq!(server["resource"]["service.instance.id"], "checkout-1");
        assert_eq!(server["resource"]["telemetry.sdk.language"], "python");
        let client = &spans[1];
        assert_eq!(
            (&client["name"], &client["kind"], &client["status_code"]),
            (&json!("SELECT orders"), &json!("client"), &json!("ok"))
        );
        assert_eq!(client["parent_span_id"], "eee19b7ec3c1b171");
        assert_eq!(spans[2]["name"], "render");
        assert_eq!(spans[2]["kind"], "internal");
        assert_eq!(spans[2]["status_code"], "unset");

        let logs = rows(&db, &format!("{LOGS} WHERE {window} ORDER BY time")).await;
        assert_eq!(logs.len(), 3);
        assert_eq!(logs[0]["time_us"], us(t + MS));
        assert_eq!(logs[0]["observed_us"], us(t + 2 * MS));
        assert_eq!(logs[0]["severity_number"], 17);
        assert_eq!(logs[0]["severity_text"], "ERROR");
        assert_eq!(logs[0]["message"], "payment failed: card declined");
        assert_eq!(
            logs[0]["attributes"],
            json!({"order.id": "o-17", "attempt": 2})
        );
        assert_eq!(logs[0]["trace_id"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(logs[0]["span_id"], "eee19b7ec3c1b171");
        assert_eq!(logs[0]["flags"], 1);
        assert_eq!(logs[0]["service"], "checkout");
        assert_eq!(
            logs[1]["body"],
            json!({"event": "checkout", "items": [1, 2.5, "x"], "ok": true})
        );
        assert_eq!(
            logs[1]["attributes"],
            json!({"event.name": "checkout.completed"})
        );
        assert_eq!(logs[2]["time_us"], us(t + 4 * MS));
        assert_eq!(logs[2]["severity_number"], 14);
        assert_eq!(logs[2]["body"], "AAFiaW5hcnk=");

        let numbers = rows(
            &db,
            &format!("{METRICS} WHERE {window} ORDER BY metric_name"),
        )
        .await;
        let names: Vec<&str> = numbers
            .iter()
            .map(|m| m["metric_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cpu.temperature", "http.inflight", "http.requests"]);
        assert_eq!(numbers[0]["value"], 61.5);
        assert_eq!(numbers[0]["unit"], "Cel");
        assert_eq!(numbers[0]["device_id"], "checkout");
        assert_eq!(numbers[1]["value"], 3.0);
        assert_eq!(numbers[1]["attributes"]["metric.kind"], "non_monotonic_sum");
        assert_eq!(numbers[2]["value"], 7.0);
        assert_eq!(numbers[2]["attributes"]["metric.kind"], "cumulative_sum");
        assert_eq!(numbers[2]["attributes"]["route"], "/checkout");
        assert_eq!(numbers.iter().filter(|m| m["time_us"] == us(t)).count(), 3);

        let dist = rows(
            &db,
            &format!("{DISTRIBUTIONS} WHERE {window} ORDER BY metric_name"),
        )
        .await;
        assert_eq!(dist.len(), 3);
        let h = &dist[0];
        assert_eq!(h["metric_name"], "http.duration");
        assert_eq!(
            (&h["kind"], &h["temporality"]),
            (&json!("histogram"), &json!("cumulative"))
        );
        assert_eq!(
            (h["count"].as_i64(), h["sum"].as_f64()),
            (Some(4), Some(2695.75))
        );
        assert_eq!(
            (h["min"].as_f64(), h["max"].as_f64()),
            (Some(3.5), Some(2600.0))
        );
        assert_eq!(h["start_us"], us(t - 60_000 * MS));
        assert_eq!(
            h["buckets"]["counts"],
            json!([0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
        );
        let e = &dist[1];
        assert_eq!(e["metric_name"], "payload.size");
        assert_eq!(e["kind"], "exponential_histogram");
        assert_eq!(
            (e["count"].as_i64(), e["sum"].as_f64()),
            (Some(5), Some(1104.0))
        );
        assert_eq!(e["buckets"]["scale"], 3);
        assert_eq!(e["buckets"]["positive"]["offset"], -1);
        assert_eq!(
            e["buckets"]["positive"]["counts"].as_array().unwrap().len(),
            128
        );
        let q = &dist[2];
        assert_eq!(q["metric_name"], "rpc.latency");
        assert_eq!(
            q["buckets"],
            norm(json!({"quantiles": [{"quantile": 0.0, "value": 0.05},
                                      {"quantile": 0.5, "value": 0.4},
                                      {"quantile": 1.0, "value": 1.5}]}))
        );
    }
}

fn flat_span(t: i64, span_id: &str) -> FlatSpan {
    FlatSpan {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: span_id.into(),
        parent_id: "00f067aa0ba902b7".into(),
        name: "worker.executeTask".into(),
        service: "worker".into(),
        kind: "server".into(),
        start_time: unix_nanos_to_rfc3339(t),
        end_time: unix_nanos_to_rfc3339(t + 1234 * MS),
        duration_ms: 1234.0,
        status: "ok".into(),
        attributes: BTreeMap::from([
            ("run_id".into(), json!("abc123")),
            ("step_id".into(), json!("build")),
        ]),
        events: vec![],
        error: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_flat_records_land_field_by_field() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("flat").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    let js = jetstream(&nats.server.url()).await;
    let t = base_ns();

    let ok = flat_span(t, "a1b2c3d4e5f60718");
    let failed = FlatSpan {
        span_id: "a1b2c3d4e5f60719".into(),
        parent_id: ok.span_id.clone(),
        name: "worker.fetch".into(),
        kind: "client".into(),
        start_time: unix_nanos_to_rfc3339(t + 10 * MS),
        // No end time: start plus duration.
        end_time: String::new(),
        duration_ms: 250.5,
        status: "error".into(),
        events: vec![json!({"name": "retry", "attempt": 1})],
        error: "connection refused".into(),
        ..ok.clone()
    };
    for span in [&ok, &failed] {
        let subject = subject::spans(&span.service, "abc123");
        let payload = serde_json::to_vec(span).unwrap();
        publish(&js, &subject, payload, &[], Some(&span.msg_id())).await;
    }
    let histogram = FlatMetric {
        name: "step.duration_ms".into(),
        kind: "histogram".into(),
        value: 1234.0,
        tags: BTreeMap::from([("task_type".into(), json!("build"))]),
        service: "worker".into(),
        timestamp: unix_nanos_to_rfc3339(t),
    };
    let gauge = FlatMetric {
        name: "queue.depth".into(),
        kind: "gauge".into(),
        value: 0.1 + 0.2,
        tags: BTreeMap::new(),
        ..histogram.clone()
    };
    for metric in [&histogram, &gauge] {
        let subject = subject::service_metric(&metric.service, &metric.name);
        publish(
            &js,
            &subject,
            serde_json::to_vec(metric).unwrap(),
            &[],
            None,
        )
        .await;
    }
    let log = FlatLog {
        level: "error".into(),
        message: "task handler returned error, will retry".into(),
        service: "engine".into(),
        timestamp: unix_nanos_to_rfc3339(t + 5 * MS),
        fields: BTreeMap::from([
            ("run_id".into(), json!("abc123")),
            ("task_type".into(), json!("build")),
        ]),
        error: "connection refused".into(),
    };
    let subject = subject::logs(&log.service, &log.level);
    let header = ("Jetscale-Format", "flat-log");
    publish(
        &js,
        &subject,
        serde_json::to_vec(&log).unwrap(),
        &[header],
        None,
    )
    .await;

    let report = common::collect_until_idle(&settings).await;
    assert_eq!((report.messages, report.dead_letters), (5, 0));
    let db = common::db(&db_url).await;

    let spans = rows(&db, &format!("{SPANS} ORDER BY time")).await;
    assert_eq!(
        spans,
        norms(vec![
            json!({"start_us": us(t), "end_us": us(t + 1234 * MS),
                   "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "a1b2c3d4e5f60718",
                   "parent_span_id": "00f067aa0ba902b7", "name": "worker.executeTask",
                   "service": "worker", "kind": "server", "status_code": "ok",
                   "status_message": null, "trace_state": null, "duration_ms": 1234.0,
                   "attributes": {"run_id": "abc123", "step_id": "build"}, "resource": {},
                   "events": [], "links": [], "error": null}),
            json!({"start_us": us(t + 10 * MS), "end_us": us(t + 10 * MS + 250_500_000),
                   "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "a1b2c3d4e5f60719",
                   "parent_span_id": "a1b2c3d4e5f60718", "name": "worker.fetch",
                   "service": "worker", "kind": "client", "status_code": "error",
                   "status_message": null, "trace_state": null, "duration_ms": 250.5,
                   "attributes": {"run_id": "abc123", "step_id": "build"}, "resource": {},
                   "events": [{"name": "retry", "attempt": 1}], "links": [],
                   "error": "connection refused"}),
        ])
    );
    let metrics = rows(&db, &format!("{METRICS} ORDER BY metric_name")).await;
    assert_eq!(
        metrics,
        norms(vec![
            json!({"time_us": us(t), "device_id": "worker", "location": "",
                   "metric_name": "queue.depth", "value": 0.1 + 0.2, "unit": null,
                   "attributes": {"metric.type": "gauge"}}),
            json!({"time_us": us(t), "device_id": "worker", "location": "",
                   "metric_name": "step.duration_ms", "value": 1234.0, "unit": null,
                   "attributes": {"task_type": "build", "metric.type": "histogram"}}),
        ])
    );
    // Bit for bit, not through JSON.
    let value: f64 = db
        .query_one(
            "SELECT value FROM iot_metrics WHERE metric_name = 'queue.depth'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(value.to_bits(), (0.1_f64 + 0.2).to_bits());
    let logs = rows(&db, LOGS).await;
    assert_eq!(
        logs,
        vec![
            json!({"time_us": us(t + 5 * MS), "observed_us": null, "service": "engine",
                    "severity_number": 17, "severity_text": "error",
                    "message": "task handler returned error, will retry", "body": null,
                    "attributes": {"run_id": "abc123", "task_type": "build"}, "resource": {},
                    "trace_id": null, "span_id": null, "flags": 0,
                    "error": "connection refused"})
        ]
    );
    // The queries the issue names: a trace by id, a service's errors in a window.
    let trace: i64 = db
        .query_one(
            "SELECT count(*) FROM telemetry_spans WHERE trace_id = '4bf92f3577b34da6a3ce929d0e0e4736'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(trace, 2);
    let errors: i64 = db
        .query_one(
            "SELECT count(*) FROM telemetry_spans WHERE service = 'worker'
             AND (status_code = 'error' OR error <> '') AND time > now() - interval '1 hour'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_published_twice_is_stored_once_inside_and_outside_the_duplicate_window() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("dedup").await;
    let mut settings = common::settings(&nats.server.url(), &db_url);
    settings.stream.duplicate_window = Duration::from_secs(1);
    common::provision_stream(&settings).await;
    let js = jetstream(&nats.server.url()).await;
    let t = base_ns();

    let flat = flat_span(t, "0123456789abcdef");
    let flat_payload = serde_json::to_vec(&flat).unwrap();
    let flat_subject = subject::spans("worker", "abc123");
    let otlp = trace_request(t, 7).encode_to_vec();
    let otlp_id = format!("{}.{}", hex(&[7; 16]), hex(&[7, 0, 0, 0, 0, 0, 0, 1]));
    let otlp_subject = subject::spans("checkout", "r7");
    let ct = [("Content-Type", "application/x-protobuf")];
    let send_both = || async {
        let a = publish(
            &js,
            &flat_subject,
            flat_payload.clone(),
            &[],
            Some(&flat.msg_id()),
        )
        .await;
        let b = publish(&js, &otlp_subject, otlp.clone(), &ct, Some(&otlp_id)).await;
        (a, b)
    };

    // A publisher's retry inside the window: the stream drops it.
    assert_eq!(send_both().await, (false, false));
    assert_eq!(
        send_both().await,
        (true, true),
        "inside the window: duplicates"
    );
    let first = common::collect_until_idle(&settings).await;
    assert_eq!(first.messages, 2);

    // The same spans again after the window: new messages to the stream, the same rows to
    // the database.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        send_both().await,
        (false, false),
        "outside the window: new messages"
    );
    let second = common::collect_until_idle(&settings).await;
    assert_eq!((second.messages, second.dead_letters), (2, 0));

    // And twice in one batch (no message id at all): one row still.
    publish(&js, &flat_subject, flat_payload.clone(), &[], None).await;
    publish(&js, &flat_subject, flat_payload.clone(), &[], None).await;
    let third = common::collect_until_idle(&settings).await;
    assert_eq!((third.messages, third.dead_letters), (2, 0));

    let mut stream = js.get_stream(&settings.stream.name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 6);
    let db = common::db(&db_url).await;
    let stored = rows(
        &db,
        "SELECT trace_id, span_id, count(*) AS copies FROM telemetry_spans GROUP BY 1, 2 ORDER BY 1",
    )
    .await;
    assert_eq!(
        stored,
        vec![
            json!({"trace_id": "07".repeat(16), "span_id": "0700000000000001", "copies": 1}),
            json!({"trace_id": flat.trace_id, "span_id": flat.span_id, "copies": 1}),
        ]
    );
}
