//! Every signal, every format, as text and as JSON. These go through decode(): a format
//! whose decoder is not in yet prints a rejection, and `assert_decoded` says so.

use super::payloads::*;
use super::{
    assert_decoded, device_payload, env, ms_time, parse_json, rfc3339, Tail, JSON_HEADERS,
};
use crate::support::now_ns;
use serde_json::{json, Value};
use std::time::Duration;

/// What the tail printed for one message published on a fresh stream, as text and as JSON,
/// read back with `--last 1`, after checking that `format` decoded into `records` records.
/// Waits at most a few seconds for the records, so a rejected message (one line) does not
/// hang the test when more records were expected.
async fn print(
    format: &str,
    subject: &str,
    headers: &[(&str, &str)],
    payload: Vec<u8>,
    records: usize,
) -> (Vec<String>, Vec<Value>) {
    let env = env().await;
    let seq = env.publish(subject, headers, payload).await;
    let mut text = Tail::spawn(
        &env.url(),
        &["--subject", subject, "--last", "1", "--color", "never"],
    );
    let lines = text.take(records, Duration::from_secs(5)).await;
    assert!(text.interrupt().await.success());
    let mut json = Tail::spawn(&env.url(), &["--subject", subject, "--last", "1", "--json"]);
    let objects = parse_json(&json.take(records, Duration::from_secs(5)).await);
    assert!(json.interrupt().await.success());
    for o in &objects {
        assert_eq!(o["seq"], seq, "{o}");
        assert_eq!(o["subject"], subject, "{o}");
    }
    assert_decoded(format, &objects, records);
    (lines, objects)
}

/// [`print`] for a message of one record: its one text line and its JSON object.
async fn print_record(
    format: &str,
    subject: &str,
    headers: &[(&str, &str)],
    payload: Vec<u8>,
) -> (String, Value) {
    let (mut lines, mut objects) = print(format, subject, headers, payload, 1).await;
    assert_eq!(lines.len(), 1, "{format}: {lines:?}");
    (lines.remove(0), objects.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_metrics_print() {
    let now = now_ns();
    let payload = device_payload("sensor-7", "warehouse-d", now, [23.5, 41.0, 97.25]);
    let subject = "telemetry.metrics.sensor-7";
    let (lines, objects) = print("OTLP JSON metrics", subject, &[], payload, 3).await;
    assert_eq!(
        lines,
        vec![
            format!(
                "{} metric sensor-7 device.temperature=23.5 Cel location=warehouse-d",
                ms_time(now)
            ),
            format!(
                "{} metric sensor-7 device.humidity=41 % location=warehouse-d",
                ms_time(now + 1)
            ),
            format!(
                "{} metric sensor-7 device.battery=97.25 % location=warehouse-d",
                ms_time(now + 2)
            ),
        ]
    );
    assert_eq!(objects[0]["time"], rfc3339(now));
    assert_eq!(objects[0]["attributes"]["service.name"], "iot-sensor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_spans_print() {
    let start = now_ns() - 2_000_000_000;
    let id = ("Nats-Msg-Id", FLAT_SPAN_MSG_ID);
    let subject = "telemetry.spans.worker.abc123";
    let (line, o) = print_record("flat span", subject, &[id], flat_span(start)).await;
    assert_eq!(o["signal"], "span");
    assert_eq!(o["name"], "worker.executeTask");
    assert_eq!(o["service"], "worker");
    assert_eq!(o["trace_id"], "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4");
    assert_eq!(o["span_id"], "f6e5d4c3b2a1f6e5");
    assert_eq!(o["parent_span_id"], "1a2b3c4d5e6f1a2b");
    assert_eq!(o["duration_ms"], 1234.0);
    assert_eq!(o["attributes"]["run_id"], "abc123");
    assert_eq!(o["error"], "connection refused");
    assert_eq!(
        line,
        format!(
            "{} span   worker worker.executeTask server ERROR 1234ms a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4/f6e5d4c3b2a1f6e5 error=\"connection refused\"",
            ms_time(start)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_metrics_print() {
    let now = now_ns();
    let subject = "telemetry.metrics.worker.step.duration_ms";
    let (line, o) = print_record("flat metric point", subject, &[], flat_metric(now)).await;
    assert_eq!(o["signal"], "metric");
    assert_eq!(o["source"], "worker");
    assert_eq!(o["name"], "step.duration_ms");
    assert_eq!(o["value"], 1234.5);
    assert_eq!(o["attributes"]["task_type"], "build", "{o}");
    let expected = format!("{} metric worker step.duration_ms=1234.5", ms_time(now));
    assert!(line.starts_with(&expected), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_logs_print() {
    let now = now_ns();
    let subject = "telemetry.logs.engine.error";
    let (line, o) = print_record("flat log record", subject, &[], flat_log(now)).await;
    assert_eq!(o["signal"], "log");
    assert_eq!(o["service"], "engine");
    assert_eq!(o["level"], "ERROR");
    assert_eq!(o["message"], "task handler returned error, will retry");
    assert_eq!(o["attributes"]["run_id"], "abc123", "{o}");
    assert_eq!(o["error"], "connection refused");
    assert_eq!(
        line,
        format!(
            "{} log    engine ERROR task handler returned error, will retry error=\"connection refused\"",
            ms_time(now)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_traces_print() {
    let start = now_ns() - 1_000_000_000;
    let subject = "telemetry.spans.checkout.run1";
    let payload = otlp_json_traces(start);
    let (line, o) = print_record("OTLP JSON traces", subject, JSON_HEADERS, payload).await;
    assert_eq!(o["signal"], "span");
    assert_eq!(o["service"], "checkout");
    assert_eq!(o["trace_id"], TRACE_ID);
    assert_eq!(o["parent_span_id"], PARENT_ID);
    assert_eq!(o["status"], "error");
    assert_eq!(o["status_message"], "upstream timeout");
    assert_eq!(o["attributes"]["http.method"], "GET", "{o}");
    assert_eq!(
        line,
        format!(
            "{} span   checkout GET /cart server ERROR 12.5ms {TRACE_ID}/{SPAN_ID} error=\"upstream timeout\"",
            ms_time(start)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_logs_print() {
    let now = now_ns();
    let subject = "telemetry.logs.checkout.warn";
    let payload = otlp_json_logs(now);
    let (line, o) = print_record("OTLP JSON logs", subject, JSON_HEADERS, payload).await;
    assert_eq!(o["signal"], "log");
    assert_eq!(o["service"], "checkout");
    assert_eq!(o["severity_number"], 13);
    assert_eq!(o["message"], "cart is slow");
    assert_eq!(o["trace_id"], TRACE_ID);
    assert_eq!(o["span_id"], SPAN_ID);
    assert_eq!(o["attributes"]["cart.items"], 3, "{o}");
    let expected = "checkout WARN  cart is slow trace_id=";
    assert_eq!(
        line,
        format!("{} log    {expected}{TRACE_ID}", ms_time(now))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_histograms_print() {
    let now = now_ns();
    let subject = "telemetry.metrics.checkout";
    let payload = otlp_json_histogram(now);
    let (line, o) = print_record("OTLP JSON histogram", subject, JSON_HEADERS, payload).await;
    assert_eq!(o["signal"], "dist");
    assert_eq!(o["source"], "checkout");
    assert_eq!(o["kind"], "histogram");
    assert_eq!(o["count"], 3);
    assert_eq!(o["sum"], 12.5);
    assert_eq!(o["buckets"]["bounds"], json!([10.0]), "{o}");
    assert_eq!(o["buckets"]["counts"], json!([2, 1]), "{o}");
    let expected = "dist   checkout http.server.duration count=3 sum=12.5 ms histogram";
    assert_eq!(line, format!("{} {expected}", ms_time(now)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_protobuf_traces_print() {
    let start = now_ns() - 1_000_000_000;
    let subject = "telemetry.spans.payments.run2";
    let headers = &proto_headers("otlp-proto;signal=traces");
    let payload = otlp_proto_traces(start);
    let (line, o) = print_record("OTLP protobuf traces", subject, headers, payload).await;
    assert_eq!(o["trace_id"], TRACE_ID);
    assert_eq!(o["attributes"]["payment.provider"], "acme");
    let expected = "span   payments charge client OK 250ms";
    let ids = format!("{TRACE_ID}/{SPAN_ID}");
    assert_eq!(line, format!("{} {expected} {ids}", ms_time(start)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_protobuf_logs_print() {
    let now = now_ns();
    let subject = "telemetry.logs.payments.error";
    let headers = &proto_headers("otlp-proto;signal=logs");
    let payload = otlp_proto_logs(now);
    let (line, o) = print_record("OTLP protobuf logs", subject, headers, payload).await;
    assert_eq!(o["severity_number"], 17);
    let expected = "log    payments ERROR card declined trace_id=";
    assert_eq!(line, format!("{} {expected}{TRACE_ID}", ms_time(now)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_protobuf_metrics_print() {
    let now = now_ns();
    let subject = "telemetry.metrics.sensor-pb";
    let headers = &proto_headers("otlp-proto;signal=metrics");
    let payload = otlp_proto_metrics(now);
    let (line, o) = print_record("OTLP protobuf metrics", subject, headers, payload).await;
    assert_eq!(o["value"], 22.75);
    let expected = "metric sensor-pb device.temperature=22.75 Cel location=warehouse-c";
    assert_eq!(line, format!("{} {expected}", ms_time(now)));
}
