//! Every signal in every wire format, end to end against real nats-server and PostgreSQL:
//! payloads made by real encoders (opentelemetry-proto's types through prost and through
//! its serde, the OpenTelemetry Python SDK's exporters as committed fixtures, and the
//! NATS-native service design's flat records from `jetscale_model::flat`) are published on
//! the designs' subjects, collected, and checked field by field in telemetry_spans,
//! telemetry_logs, telemetry_distributions, iot_metrics and jetscale_dead_letters. Also: a
//! span published twice, inside and outside the stream's duplicate window, is stored once.

mod flat;
mod otlp;
mod python_sdk;

use crate::support::now_ns;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use serde_json::{json, Value};

const MS: i64 = 1_000_000;

/// Two minutes ago, on a whole millisecond: inside the accepted window, and exact in
/// PostgreSQL's microseconds.
fn base_ns() -> i64 {
    (now_ns() - 120_000 * MS) / MS * MS
}

fn us(ns: i64) -> i64 {
    ns.div_euclid(1000)
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

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "jetscale-test".into(),
        version: "1.0".into(),
        ..Default::default()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
