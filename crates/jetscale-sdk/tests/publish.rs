//! Publishing against a real, private nats-server with JetStream: what lands in the stream,
//! on which subject, with which headers, and what the stream deduplicates.

use async_nats::jetstream::{self, message::StreamMessage, stream::Stream};
use jetscale_sdk::opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use jetscale_sdk::opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use jetscale_sdk::opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use jetscale_sdk::{
    ids, DeviceReading, Error, ExportLogsServiceRequest, ExportMetricsServiceRequest,
    ExportTraceServiceRequest, FlatLog, FlatMetric, FlatSpan, JetscaleLayer, Message, Publisher,
    PublisherOptions, RetryPolicy,
};
use prost::Message as _;
use serde_json::{json, Value};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tracing_subscriber::prelude::*;

/// A nats-server of our own on a free port, with JetStream in a temporary directory; killed
/// when dropped. Never the machine's server on 4222.
struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> NatsServer {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> NatsServer {
        for _ in 0..5 {
            let store = tempfile::tempdir().expect("temporary directory");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new("/usr/sbin/nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.path())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return NatsServer {
                        child,
                        port,
                        _store: store,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken in between: try another one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server did not start");
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TELEMETRY stream with the NATS-native service design's settings: `telemetry.>`, a 5 s
/// duplicate window.
async fn create_stream(client: &async_nats::Client) -> Stream {
    let js = jetstream::new(client.clone());
    let config = jetstream::stream::Config {
        name: "TELEMETRY".into(),
        subjects: vec!["telemetry.>".into()],
        duplicate_window: Duration::from_secs(5),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(stream) => return stream,
            Err(err) if Instant::now() < deadline => {
                eprintln!("stream not created yet: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("cannot create the stream: {err}"),
        }
    }
}

/// A server of its own, a publisher connected to it with the default options, and the stream.
async fn connected() -> (NatsServer, Publisher, Stream) {
    let server = NatsServer::start();
    let publisher = Publisher::connect(&server.url()).await.unwrap();
    let stream = create_stream(publisher.client()).await;
    (server, publisher, stream)
}

async fn stored_count(stream: &mut Stream) -> u64 {
    stream.info().await.expect("stream info").state.messages
}

async fn stored(stream: &Stream, sequence: u64) -> StreamMessage {
    stream
        .get_raw_message(sequence)
        .await
        .unwrap_or_else(|e| panic!("message {sequence}: {e}"))
}

const JSON: &str = "application/json";
const PROTOBUF: &str = "application/x-protobuf";

/// The stored message `sequence`, after checking its subject, its `Jetscale-Format` (`None`:
/// no such header) and its `Content-Type`.
async fn stored_as(
    stream: &Stream,
    sequence: u64,
    subject: &str,
    format: Option<&str>,
    content_type: &str,
) -> StreamMessage {
    let msg = stored(stream, sequence).await;
    assert_eq!(msg.subject.as_str(), subject, "message {sequence}");
    assert_eq!(
        header(&msg, "Jetscale-Format"),
        format,
        "message {sequence}"
    );
    assert_eq!(
        header(&msg, "Content-Type"),
        Some(content_type),
        "message {sequence}"
    );
    msg
}

fn header<'a>(msg: &'a StreamMessage, name: &str) -> Option<&'a str> {
    msg.headers.get(name).map(|v| v.as_str())
}

fn json_of(msg: &StreamMessage) -> Value {
    serde_json::from_slice(&msg.payload).expect("JSON payload")
}

fn string(value: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

#[tokio::test]
async fn every_record_lands_on_its_subject_with_its_headers_and_payload() {
    let (_server, publisher, mut stream) = connected().await;

    // The flat records as the NATS-native service design writes them: each is published
    // from the SDK's type and must be stored as exactly this JSON.
    let (trace_id, span_id, parent_id) = (ids::trace_id(), ids::span_id(), ids::span_id());
    let span_json = json!({
        "trace_id": trace_id, "span_id": span_id, "parent_id": parent_id,
        "name": "worker.executeTask", "service": "worker", "kind": "server",
        "start_time": "2024-01-15T10:30:00Z", "end_time": "2024-01-15T10:30:01.234Z",
        "duration_ms": 1234.0, "status": "ok",
        "attributes": {"run_id": "abc123", "step_id": "build"}, "events": [], "error": ""
    });
    let metric_json = json!({"name": "step.duration_ms", "type": "histogram", "value": 1234.0,
                             "tags": {"task_type": "build"}, "service": "worker",
                             "timestamp": "2024-01-15T10:30:01Z"});
    let log_json = json!({"level": "error", "message": "task handler returned error, will retry",
                          "service": "engine", "timestamp": "2024-01-15T10:30:01Z",
                          "fields": {"run_id": "abc123"}, "error": "connection refused"});
    let span: FlatSpan = serde_json::from_value(span_json.clone()).unwrap();
    let metric: FlatMetric = serde_json::from_value(metric_json.clone()).unwrap();
    let log: FlatLog = serde_json::from_value(log_json.clone()).unwrap();
    assert_eq!(
        (span.trace_id.as_str(), span.duration_ms),
        (trace_id.as_str(), 1234.0)
    );
    assert_eq!((metric.kind.as_str(), metric.value), ("histogram", 1234.0));
    assert_eq!(log.error, "connection refused");
    let metrics_request: ExportMetricsServiceRequest =
        serde_json::from_str(&DeviceReading::new("sensor-002", 19.0, 55.5, 12.0).to_otlp_json())
            .unwrap();
    let traces_request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "otlp.span".into(),
                    start_time_unix_nano: 1_705_314_600_000_000_000,
                    end_time_unix_nano: 1_705_314_601_000_000_000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let logs_request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 1_705_314_601_000_000_000,
                    severity_number: 17,
                    severity_text: "ERROR".into(),
                    body: string("disk full"),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let reading = DeviceReading {
        time_unix_nano: 1_705_314_601_000_000_000,
        ..DeviceReading::new("sensor-001", 21.5, 40.0, 87.0)
    };

    let acks = [
        publisher.publish_span(&span).await.unwrap(),
        publisher.publish_metric(&metric).await.unwrap(),
        publisher.publish_log(&log).await.unwrap(),
        publisher
            .publish_otlp_metrics("sensor-002", &metrics_request)
            .await
            .unwrap(),
        publisher
            .publish_otlp_traces("worker", "abc123", &traces_request)
            .await
            .unwrap(),
        publisher
            .publish_otlp_logs("engine", "error", &logs_request)
            .await
            .unwrap(),
        publisher.publish_device_reading(&reading).await.unwrap(),
    ];
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.stream, "TELEMETRY");
        assert_eq!(ack.sequence, i as u64 + 1);
        assert!(!ack.duplicate);
    }
    assert_eq!(stored_count(&mut stream).await, 7);

    let spans = "telemetry.spans.worker.abc123";
    let msg = stored_as(&stream, 1, spans, Some("flat-span"), JSON).await;
    let msg_id = format!("{trace_id}.{span_id}");
    assert_eq!(header(&msg, "Nats-Msg-Id"), Some(msg_id.as_str()));
    assert_eq!(json_of(&msg), span_json);

    let metrics = "telemetry.metrics.worker.step.duration_ms";
    let msg = stored_as(&stream, 2, metrics, Some("flat-metric"), JSON).await;
    assert_eq!(header(&msg, "Nats-Msg-Id").map(str::len), Some(32));
    assert_eq!(json_of(&msg), metric_json);

    let logs = "telemetry.logs.engine.error";
    let msg = stored_as(&stream, 3, logs, Some("flat-log"), JSON).await;
    assert_eq!(header(&msg, "Nats-Msg-Id").map(str::len), Some(32));
    assert_eq!(json_of(&msg), log_json);

    let format = Some("otlp-proto;signal=metrics");
    let msg = stored_as(&stream, 4, "telemetry.metrics.sensor-002", format, PROTOBUF).await;
    assert_eq!(
        ExportMetricsServiceRequest::decode(msg.payload.clone()).unwrap(),
        metrics_request
    );

    let format = Some("otlp-proto;signal=traces");
    let msg = stored_as(&stream, 5, spans, format, PROTOBUF).await;
    assert_eq!(
        ExportTraceServiceRequest::decode(msg.payload.clone()).unwrap(),
        traces_request
    );

    let format = Some("otlp-proto;signal=logs");
    let msg = stored_as(&stream, 6, logs, format, PROTOBUF).await;
    assert_eq!(
        ExportLogsServiceRequest::decode(msg.payload.clone()).unwrap(),
        logs_request
    );

    let msg = stored_as(&stream, 7, "telemetry.metrics.sensor-001", None, JSON).await;
    assert_eq!(
        std::str::from_utf8(&msg.payload).unwrap(),
        reading.to_otlp_json()
    );
}

#[tokio::test]
async fn the_same_span_published_twice_is_stored_once() {
    let (_server, publisher, mut stream) = connected().await;

    let span = FlatSpan {
        trace_id: ids::trace_id(),
        span_id: ids::span_id(),
        name: "worker.executeTask".into(),
        service: "worker".into(),
        status: "ok".into(),
        ..Default::default()
    };
    let first = publisher.publish_span(&span).await.unwrap();
    let second = publisher.publish_span(&span).await.unwrap();
    assert!(!first.duplicate);
    assert!(
        second.duplicate,
        "the retry is recognised by its Nats-Msg-Id"
    );
    assert_eq!(second.sequence, first.sequence);
    // In one batch too.
    let acks = publisher
        .publish_many([&span, &span])
        .await
        .expect("both acknowledged");
    assert!(acks.iter().all(|ack| ack.duplicate));
    assert_eq!(stored_count(&mut stream).await, 1);

    // A metric message sent twice (what a retry does) is one stored message as well; a new
    // message for the same point is not a retry and is stored.
    let metric = FlatMetric {
        name: "queue.depth".into(),
        kind: "gauge".into(),
        value: 3.0,
        service: "worker".into(),
        ..Default::default()
    };
    let message = Message::metric(&metric).unwrap();
    assert!(!publisher.publish(message.clone()).await.unwrap().duplicate);
    assert!(publisher.publish(message).await.unwrap().duplicate);
    assert!(!publisher.publish_metric(&metric).await.unwrap().duplicate);
    assert_eq!(stored_count(&mut stream).await, 3);
}

#[tokio::test]
async fn publish_many_pipelines_in_order_and_reports_each_failure() {
    let server = NatsServer::start();
    let publisher = PublisherOptions::new()
        .max_in_flight(64)
        .connect(&server.url())
        .await
        .unwrap();
    let mut stream = create_stream(publisher.client()).await;

    let points: Vec<FlatMetric> = (0..2_000)
        .map(|i| FlatMetric {
            name: "sensor.reading".into(),
            kind: "gauge".into(),
            value: f64::from(i),
            service: "bench".into(),
            ..Default::default()
        })
        .collect();
    let acks = publisher.publish_many(&points).await.unwrap();
    assert_eq!(acks.len(), 2_000);
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.sequence, i as u64 + 1, "sent in input order");
    }
    assert_eq!(publisher.in_flight(), 0);
    assert_eq!(stored_count(&mut stream).await, 2_000);
    let last = stored(&stream, 2_000).await;
    assert_eq!(json_of(&last)["value"], 1999.0);

    // A record that can not become a message fails alone; the others are published.
    let mut mixed = points[..3].to_vec();
    mixed[1].name = "bad name".into();
    let err = publisher.publish_many(&mixed).await.unwrap_err();
    assert_eq!(err.published(), 2);
    let failures: Vec<_> = err.failures().collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, 1);
    assert!(matches!(failures[0].1, Error::InvalidToken { .. }));
    assert_eq!(stored_count(&mut stream).await, 2_002);
}

#[tokio::test]
async fn publishing_retries_until_the_stream_exists() {
    let server = NatsServer::start();
    let log = started_log();

    // No stream and no retries: the error says so, and that it is worth retrying.
    let once = PublisherOptions::new()
        .retry(RetryPolicy::none())
        .connect(&server.url())
        .await
        .unwrap();
    let err = once.publish_log(&log).await.unwrap_err();
    assert!(matches!(err, Error::Publish { attempts: 1, .. }), "{err}");
    assert!(err.is_retriable());
    assert!(!err.may_be_stored(), "no responders: nothing stored");

    // With retries, a stream created a moment later gets the message.
    let patient = PublisherOptions::new()
        .retry(RetryPolicy {
            attempts: 20,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..RetryPolicy::default()
        })
        .connect(&server.url())
        .await
        .unwrap();
    let client = patient.client().clone();
    let creator = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        create_stream(&client).await
    });
    let ack = patient.publish_log(&log).await.unwrap();
    assert_eq!(ack.sequence, 1);
    let mut stream = creator.await.unwrap();
    assert_eq!(stored_count(&mut stream).await, 1);
}

#[tokio::test]
async fn credentials_are_used_and_refusals_reported() {
    let server = NatsServer::start_with(&["--user", "device", "--pass", "s3cret"]);
    let err = Publisher::connect(&server.url()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let err = PublisherOptions::new()
        .user_and_password("device", "wrong")
        .connect(&server.url())
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("wrong"));

    let publisher = PublisherOptions::new()
        .user_and_password("device", "s3cret")
        .connect(&server.url())
        .await
        .unwrap();
    let mut stream = create_stream(publisher.client()).await;
    publisher
        .publish_device_reading(&DeviceReading::new("sensor-001", 21.5, 40.0, 87.0))
        .await
        .unwrap();
    assert_eq!(stored_count(&mut stream).await, 1);

    // Credentials in the URL work too, and a wrong password never shows in the error.
    let url = format!("nats://device:wrong-pw@127.0.0.1:{}", server.port);
    let err = Publisher::connect(&url).await.unwrap_err();
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    let url = format!("nats://device:s3cret@127.0.0.1:{}", server.port);
    let publisher = Publisher::connect(&url).await.unwrap();
    publisher
        .publish_device_reading(&DeviceReading::new("sensor-002", 20.0, 41.0, 86.0))
        .await
        .unwrap();
    assert_eq!(stored_count(&mut stream).await, 2);
}

#[tokio::test]
async fn the_tracing_layer_publishes_spans_with_children_and_events_as_logs() {
    let (_server, publisher, mut stream) = connected().await;

    let layer = JetscaleLayer::new(publisher, "checkout");
    let handle = layer.handle();
    let subscriber = tracing_subscriber::registry().with(layer);
    {
        let _default = tracing::subscriber::set_default(subscriber);
        let parent = tracing::info_span!("order.place", run_id = "run-42", order = 7u64);
        parent.in_scope(|| {
            let child = tracing::info_span!("payment.charge", amount = 12.5);
            child.in_scope(|| {
                tracing::info!(provider = "acme", "charged the card");
            });
        });
    }
    handle.flush().await.unwrap();
    let stats = handle.stats();
    assert_eq!(
        (stats.queued, stats.published, stats.failed, stats.dropped),
        (3, 3, 0, 0)
    );
    assert_eq!(stored_count(&mut stream).await, 3);

    let mut spans = Vec::new();
    let mut logs = Vec::new();
    for sequence in 1..=3 {
        let msg = stored(&stream, sequence).await;
        match header(&msg, "Jetscale-Format") {
            Some("flat-span") => {
                assert_eq!(msg.subject.as_str(), "telemetry.spans.checkout.run-42");
                let span: FlatSpan = serde_json::from_slice(&msg.payload).unwrap();
                assert_eq!(header(&msg, "Nats-Msg-Id"), Some(span.msg_id().as_str()));
                spans.push(span);
            }
            Some("flat-log") => {
                assert_eq!(msg.subject.as_str(), "telemetry.logs.checkout.info");
                assert_eq!(header(&msg, "Content-Type"), Some("application/json"));
                logs.push(serde_json::from_slice::<FlatLog>(&msg.payload).unwrap());
            }
            other => panic!("unexpected format {other:?} on {}", msg.subject),
        }
    }
    let parent = spans.iter().find(|s| s.name == "order.place").unwrap();
    let child = spans.iter().find(|s| s.name == "payment.charge").unwrap();
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.parent_id, parent.span_id);
    assert_eq!(parent.parent_id, "");
    assert_eq!(parent.trace_id.len(), 32);
    assert_eq!(child.span_id.len(), 16);
    assert_eq!(parent.service, "checkout");
    assert_eq!(parent.status, "ok");
    assert_eq!(parent.attributes["order"], 7);
    assert_eq!(child.attributes["amount"], 12.5);
    assert!(child.duration_ms <= parent.duration_ms);

    let log = &logs[0];
    assert_eq!(log.level, "info");
    assert_eq!(log.message, "charged the card");
    assert_eq!(log.service, "checkout");
    assert_eq!(log.fields["provider"], "acme");
    assert_eq!(log.fields["trace_id"], parent.trace_id.as_str());
    assert_eq!(log.fields["span_id"], child.span_id.as_str());
    assert_eq!(log.fields["run_id"], "run-42");
}

/// The example's code, run here with the test's own subscriber and server.
#[allow(dead_code)]
#[path = "../examples/service.rs"]
mod example_service;

#[tokio::test]
async fn the_example_service_publishes_its_spans_logs_and_metrics() {
    let (_server, publisher, mut stream) = connected().await;

    let layer = JetscaleLayer::new(publisher.clone(), "example-worker");
    let handle = layer.handle();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let run_id = example_service::run(&publisher).await.unwrap();
    handle.flush().await.unwrap();
    let stats = handle.stats();
    assert_eq!((stats.published, stats.failed, stats.dropped), (10, 0, 0));

    // 4 spans and 6 logs through the layer, 2 metric points published directly.
    assert_eq!(stored_count(&mut stream).await, 12);
    let mut spans = Vec::new();
    let mut subjects = Vec::new();
    for sequence in 1..=12 {
        let msg = stored(&stream, sequence).await;
        subjects.push(msg.subject.to_string());
        if header(&msg, "Jetscale-Format") == Some("flat-span") {
            spans.push(serde_json::from_slice::<FlatSpan>(&msg.payload).unwrap());
        }
    }
    let run = spans.iter().find(|s| s.name == "worker.run").unwrap();
    assert_eq!(run.attributes["run_id"], run_id.as_str());
    assert_eq!(run.kind, "server");
    assert_eq!(spans.len(), 4);
    for step in spans.iter().filter(|s| s.name == "worker.executeTask") {
        assert_eq!(step.trace_id, run.trace_id);
        assert_eq!(step.parent_id, run.span_id);
        let failed = step.attributes["step_id"] == "upload";
        assert_eq!(step.status, if failed { "error" } else { "ok" });
    }
    let spans_subject = format!("telemetry.spans.example-worker.{run_id}");
    assert_eq!(subjects.iter().filter(|s| **s == spans_subject).count(), 4);
    for expected in [
        "telemetry.logs.example-worker.info",
        "telemetry.logs.example-worker.debug",
        "telemetry.logs.example-worker.warn",
        "telemetry.metrics.example-worker.run.duration_ms",
        "telemetry.metrics.example-worker.run.failed_steps",
    ] {
        assert!(
            subjects.iter().any(|s| s == expected),
            "{expected} in {subjects:?}"
        );
    }
}

#[tokio::test]
async fn retries_are_bounded_by_time_not_by_count() {
    let server = NatsServer::start();
    let log = started_log();
    // No stream ever: "no responders" comes back at once, so a count of attempts would be
    // spent in a few hundred milliseconds; the budget keeps the message for 1.5 s.
    let publisher = PublisherOptions::new()
        .retry(RetryPolicy {
            max_elapsed: Duration::from_millis(1500),
            ..RetryPolicy::default()
        })
        .connect(&server.url())
        .await
        .unwrap();
    let err = publisher.publish_log(&log).await.unwrap_err();
    match &err {
        Error::Publish {
            attempts, elapsed, ..
        } => {
            assert!(*attempts > 4, "{err}");
            assert!(*elapsed >= Duration::from_millis(1500), "{err}");
        }
        other => panic!("{other}"),
    }
    assert!(!err.may_be_stored(), "{err}");
    assert!(err.to_string().contains("did not store it"), "{err}");
}

#[tokio::test]
async fn an_unanswered_publish_may_be_stored_and_a_full_buffer_pushes_back() {
    let server = NatsServer::start();
    // A plain subscriber on the subject takes the publish and never answers: to the publisher
    // it is a server that got the message and whose ack was lost.
    let client = async_nats::connect(server.url()).await.unwrap();
    let _silent = client
        .subscribe("telemetry.logs.engine.info")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let publisher = PublisherOptions::new()
        .max_in_flight(1)
        .ack_timeout(Duration::from_millis(1500))
        .retry(RetryPolicy {
            max_elapsed: Duration::from_millis(300),
            ..RetryPolicy::default()
        })
        .connect(&server.url())
        .await
        .unwrap();
    let log = started_log();
    let first = {
        let publisher = publisher.clone();
        let log = log.clone();
        tokio::spawn(async move { publisher.publish_log(&log).await })
    };
    while publisher.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The one slot stays taken for longer than the budget: the second message is refused,
    // not queued, and was never sent.
    let err = publisher.publish_log(&log).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backpressure {
                max_in_flight: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.may_be_stored());
    let err = first.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Publish { .. }), "{err}");
    assert!(
        err.may_be_stored(),
        "an ack timeout may hide a stored message: {err}"
    );
    assert!(err.to_string().contains("same Nats-Msg-Id"), "{err}");
}

/// An info log of the engine service.
fn started_log() -> FlatLog {
    FlatLog {
        level: "info".into(),
        message: "started".into(),
        service: "engine".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_duplicate_window_shorter_than_the_budget_is_reported() {
    let server = NatsServer::start();
    let publisher = Publisher::connect(&server.url()).await.unwrap();
    create_stream(publisher.client()).await; // the service design's 5 s window
    let err = publisher
        .check_duplicate_window("TELEMETRY")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateWindowTooShort { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("duplicate_window"), "{err}");
    let within = PublisherOptions::new()
        .retry(RetryPolicy {
            max_elapsed: Duration::from_secs(5),
            ..RetryPolicy::default()
        })
        .connect(&server.url())
        .await
        .unwrap();
    within.check_duplicate_window("TELEMETRY").await.unwrap();
    let err = within.check_duplicate_window("NOPE").await.unwrap_err();
    assert!(matches!(err, Error::StreamInfo { .. }), "{err}");
}
