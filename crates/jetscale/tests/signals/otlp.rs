//! OTLP requests of every signal built with opentelemetry-proto's types, sent as protobuf and
//! as OTLP/JSON, and the rows each must become.

use super::{base_ns, hex, norms, rows, scope, us, DISTRIBUTIONS, LOGS, METRICS, MS, SPANS};
use crate::support::otlp::{kv, resource, string as s};
use crate::support::{self, publish};
use jetscale_model::subject;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value as Any, AnyValue, ArrayValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1 as logs;
use opentelemetry_proto::tonic::metrics::v1 as metrics;
use opentelemetry_proto::tonic::trace::v1 as trace;
use prost::Message as _;
use serde_json::{json, Value};

/// One server span; `n` makes its ids unique.
pub(super) fn trace_request(t: i64, n: u8) -> ExportTraceServiceRequest {
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
        for (k, v) in extra.as_object().expect("an object") {
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

/// A message to publish: subject, headers, payload.
type Message<'a> = (String, &'a [(&'a str, &'a str)], Vec<u8>);

/// A request as OTLP/JSON, through opentelemetry-proto's serde.
fn otlp_json(request: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(request).expect("OTLP/JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_protobuf_and_json_of_every_signal_land_field_by_field() {
    let stack = support::stack("otlp").await;
    let js = stack.js().await;
    let t = base_ns();
    const PROTO: (&str, &str) = ("Content-Type", "application/x-protobuf");
    const JSON: (&str, &str) = ("Content-Type", "application/json");
    const PROTO_LOGS: (&str, &str) = ("Jetscale-Format", "otlp-proto;signal=logs");
    const OTLP_JSON: (&str, &str) = ("Jetscale-Format", "otlp-json");
    const YAML: (&str, &str) = ("Jetscale-Format", "yaml");

    let spans = subject::spans("checkout", "run1");
    let log_subject = subject::logs("engine", "error");
    let unknown = "telemetry.metrics.x".to_owned();
    let messages: Vec<Message> = vec![
        // Traces: protobuf by Content-Type, by the subject alone, by trial on a subject that
        // names no signal; OTLP/JSON from opentelemetry-proto's serde.
        (spans.clone(), &[PROTO], trace_request(t, 1).encode_to_vec()),
        (spans.clone(), &[], trace_request(t, 2).encode_to_vec()),
        (
            "telemetry.misc.checkout".into(),
            &[],
            trace_request(t, 3).encode_to_vec(),
        ),
        (spans, &[JSON], otlp_json(&trace_request(t, 4))),
        // Logs: protobuf with the SDK's header, OTLP/JSON by content.
        (
            log_subject.clone(),
            &[PROTO_LOGS],
            log_request(t, "pb").encode_to_vec(),
        ),
        (
            log_subject.clone(),
            &[],
            otlp_json(&log_request(t + 10 * MS, "json")),
        ),
        // Metrics: protobuf on the IoT pipeline design's device subject, OTLP/JSON with the
        // format header.
        (
            subject::device_metrics("sensor-pb"),
            &[],
            metric_request(t, "sensor-pb").encode_to_vec(),
        ),
        (
            subject::device_metrics("sensor-json"),
            &[OTLP_JSON],
            otlp_json(&metric_request(t, "sensor-json")),
        ),
        // Messages of no known format: dead-lettered with the reason.
        (log_subject, &[], b"hello world".to_vec()),
        (unknown.clone(), &[], br#"{"temperature": 21}"#.to_vec()),
        (unknown, &[YAML], b"temperature: 21".to_vec()),
    ];
    for (subject, headers, payload) in messages {
        publish(&js, &subject, headers, payload).await;
    }

    let report = stack.collect().await;
    assert_eq!(report.messages, 11);
    assert_eq!(report.dead_letters, 3);
    let db = stack.db().await;

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
        let reason = d["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("unknown format: "), "{d}");
    }
    assert!(
        dead[2]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("yaml")),
        "{}",
        dead[2]
    );
}
