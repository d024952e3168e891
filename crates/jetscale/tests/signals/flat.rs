//! The NATS-native service design's flat records (span, metric point, log record) from
//! `jetscale_model::flat`, and a span published twice.

use super::otlp::trace_request;
use super::{base_ns, hex, norms, rows, us, LOGS, METRICS, MS, SPANS};
use crate::support::{self, count, publish};
use jetscale_model::flat::{unix_nanos_to_rfc3339, FlatLog, FlatMetric, FlatSpan};
use jetscale_model::subject;
use prost::Message as _;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn flat_json(record: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(record).expect("flat JSON")
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
async fn flat_records_land_field_by_field() {
    let stack = support::stack("flat").await;
    let js = stack.js().await;
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
        let id = span.msg_id();
        publish(&js, &subject, &[("Nats-Msg-Id", &id)], flat_json(span)).await;
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
        publish(&js, &subject, &[], flat_json(metric)).await;
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
    publish(&js, &subject, &[header], flat_json(&log)).await;

    let report = stack.collect().await;
    assert_eq!((report.messages, report.dead_letters), (5, 0));
    let db = stack.db().await;

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
        .expect("the gauge's row")
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
    let trace = count(
        &db,
        "SELECT count(*) FROM telemetry_spans WHERE trace_id = '4bf92f3577b34da6a3ce929d0e0e4736'",
    )
    .await;
    assert_eq!(trace, 2);
    let errors = count(
        &db,
        "SELECT count(*) FROM telemetry_spans WHERE service = 'worker'
         AND (status_code = 'error' OR error <> '') AND time > now() - interval '1 hour'",
    )
    .await;
    assert_eq!(errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_published_twice_is_stored_once_inside_and_outside_the_duplicate_window() {
    let stack = support::stack_with("dedup", |s| {
        s.stream.duplicate_window = Duration::from_secs(1);
    })
    .await;
    let js = stack.js().await;
    let t = base_ns();

    let flat = flat_span(t, "0123456789abcdef");
    let flat_payload = flat_json(&flat);
    let flat_id = flat.msg_id();
    let flat_subject = subject::spans("worker", "abc123");
    let otlp = trace_request(t, 7).encode_to_vec();
    let otlp_id = format!("{}.{}", hex(&[7; 16]), hex(&[7, 0, 0, 0, 0, 0, 0, 1]));
    let otlp_subject = subject::spans("checkout", "r7");
    let flat_headers = [("Nats-Msg-Id", flat_id.as_str())];
    let otlp_headers = [
        ("Content-Type", "application/x-protobuf"),
        ("Nats-Msg-Id", otlp_id.as_str()),
    ];
    // Whether the stream dropped each as a duplicate.
    let send_both = || async {
        let a = publish(&js, &flat_subject, &flat_headers, flat_payload.clone()).await;
        let b = publish(&js, &otlp_subject, &otlp_headers, otlp.clone()).await;
        (a.duplicate, b.duplicate)
    };

    // A publisher's retry inside the window: the stream drops it.
    assert_eq!(send_both().await, (false, false));
    assert_eq!(
        send_both().await,
        (true, true),
        "inside the window: duplicates"
    );
    let first = stack.collect().await;
    assert_eq!(first.messages, 2);

    // The same spans again after the window: new messages to the stream, the same rows to
    // the database.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        send_both().await,
        (false, false),
        "outside the window: new messages"
    );
    let second = stack.collect().await;
    assert_eq!((second.messages, second.dead_letters), (2, 0));

    // And twice in one batch (no message id at all): one row still.
    for _ in 0..2 {
        publish(&js, &flat_subject, &[], flat_payload.clone()).await;
    }
    let third = stack.collect().await;
    assert_eq!((third.messages, third.dead_letters), (2, 0));

    let mut stream = js
        .get_stream(&stack.settings.stream.name)
        .await
        .expect("stream");
    assert_eq!(stream.info().await.expect("stream info").state.messages, 6);
    let db = stack.db().await;
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
