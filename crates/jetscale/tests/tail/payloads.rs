//! Payloads of every signal in every wire format the tail prints.

use super::rfc3339;
use crate::support::otlp::{kv, resource, string};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;

pub const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
pub const SPAN_ID: &str = "eee19b7ec3c1b174";
pub const PARENT_ID: &str = "eee19b7ec3c1b173";
/// The flat span's `Nats-Msg-Id`: its trace id and span id, as the SDK sets it.
pub const FLAT_SPAN_MSG_ID: &str = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4.f6e5d4c3b2a1f6e5";

/// The headers the SDK sends with an OTLP protobuf request (`format`: its Jetscale-Format).
pub fn proto_headers(format: &'static str) -> [(&'static str, &'static str); 2] {
    [
        ("Content-Type", "application/x-protobuf"),
        ("Jetscale-Format", format),
    ]
}

/// The OTLP/JSON resource of the `checkout` service.
fn checkout() -> serde_json::Value {
    serde_json::json!({"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]})
}

pub fn flat_span(start_ns: i64) -> Vec<u8> {
    serde_json::json!({
        "trace_id": "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4",
        "span_id": "f6e5d4c3b2a1f6e5",
        "parent_id": "1a2b3c4d5e6f1a2b",
        "name": "worker.executeTask",
        "service": "worker",
        "kind": "server",
        "start_time": rfc3339(start_ns),
        "end_time": rfc3339(start_ns + 1_234_000_000),
        "duration_ms": 1234,
        "status": "error",
        "attributes": {"run_id": "abc123", "step_id": "build"},
        "events": [],
        "error": "connection refused"
    })
    .to_string()
    .into_bytes()
}

pub fn flat_metric(ns: i64) -> Vec<u8> {
    serde_json::json!({
        "name": "step.duration_ms",
        "type": "gauge",
        "value": 1234.5,
        "tags": {"task_type": "build"},
        "service": "worker",
        "timestamp": rfc3339(ns)
    })
    .to_string()
    .into_bytes()
}

pub fn flat_log(ns: i64) -> Vec<u8> {
    serde_json::json!({
        "level": "error",
        "message": "task handler returned error, will retry",
        "service": "engine",
        "timestamp": rfc3339(ns),
        "fields": {"run_id": "abc123", "task_type": "build"},
        "error": "connection refused"
    })
    .to_string()
    .into_bytes()
}

pub fn otlp_json_traces(start_ns: i64) -> Vec<u8> {
    serde_json::json!({"resourceSpans": [{
        "resource": checkout(),
        "scopeSpans": [{"scope": {"name": "tail-test"}, "spans": [{
            "traceId": TRACE_ID, "spanId": SPAN_ID, "parentSpanId": PARENT_ID,
            "name": "GET /cart", "kind": 2,
            "startTimeUnixNano": start_ns.to_string(),
            "endTimeUnixNano": (start_ns + 12_500_000).to_string(),
            "attributes": [{"key": "http.method", "value": {"stringValue": "GET"}}],
            "status": {"code": 2, "message": "upstream timeout"}
        }]}]
    }]})
    .to_string()
    .into_bytes()
}

pub fn otlp_json_logs(ns: i64) -> Vec<u8> {
    serde_json::json!({"resourceLogs": [{
        "resource": checkout(),
        "scopeLogs": [{"logRecords": [{
            "timeUnixNano": ns.to_string(),
            "severityNumber": 13, "severityText": "WARN",
            "body": {"stringValue": "cart is slow"},
            "traceId": TRACE_ID, "spanId": SPAN_ID,
            "attributes": [{"key": "cart.items", "value": {"intValue": "3"}}]
        }]}]
    }]})
    .to_string()
    .into_bytes()
}

pub fn otlp_json_histogram(ns: i64) -> Vec<u8> {
    serde_json::json!({"resourceMetrics": [{
        "resource": checkout(),
        "scopeMetrics": [{"metrics": [{
            "name": "http.server.duration", "unit": "ms",
            "histogram": {"aggregationTemporality": 2, "dataPoints": [{
                "startTimeUnixNano": (ns - 60_000_000_000).to_string(),
                "timeUnixNano": ns.to_string(),
                "count": "3", "sum": 12.5,
                "bucketCounts": ["2", "1"], "explicitBounds": [10.0]
            }]}
        }]}]
    }]})
    .to_string()
    .into_bytes()
}

fn hex_bytes(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex")
}

pub fn otlp_proto_traces(start_ns: i64) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(vec![kv("service.name", string("payments"))]),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: hex_bytes(TRACE_ID),
                    span_id: hex_bytes(SPAN_ID),
                    parent_span_id: hex_bytes(PARENT_ID),
                    name: "charge".to_owned(),
                    kind: SpanKind::Client as i32,
                    start_time_unix_nano: start_ns as u64,
                    end_time_unix_nano: (start_ns + 250_000_000) as u64,
                    attributes: vec![kv("payment.provider", string("acme"))],
                    status: Some(Status {
                        code: StatusCode::Ok as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

pub fn otlp_proto_logs(ns: i64) -> Vec<u8> {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(vec![kv("service.name", string("payments"))]),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: ns as u64,
                    severity_number: 17,
                    severity_text: "ERROR".to_owned(),
                    body: Some(AnyValue {
                        value: Some(string("card declined")),
                    }),
                    trace_id: hex_bytes(TRACE_ID),
                    span_id: hex_bytes(SPAN_ID),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

pub fn otlp_proto_metrics(ns: i64) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(vec![
                kv("service.name", string("iot-sensor")),
                kv("device.id", string("sensor-pb")),
                kv("device.location", string("warehouse-c")),
            ]),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "device.temperature".to_owned(),
                    unit: "Cel".to_owned(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: ns as u64,
                            value: Some(number_data_point::Value::AsDouble(22.75)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}
