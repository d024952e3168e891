//! The NATS side: provisioning as `jetscale setup` does, publishing, simulating.

use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::HeaderMap;
use jetscale::config::Settings;
use std::time::Duration;

/// A JetStream context on a plain connection to `url`.
pub async fn jetstream(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("connect nats"))
}

/// Creates the stream and the durable consumer as `jetscale setup` does, through jetscale's own
/// connect (which takes credentials out of the URL and accepts several URLs).
pub async fn provision_stream(settings: &Settings) {
    let client = jetscale::receivers::nats::connect(&settings.nats, "jetscale-setup")
        .await
        .expect("connect nats");
    let js = jetstream::new(client);
    let (_, stream) = jetscale::receivers::nats::ensure_stream(&js, &settings.stream)
        .await
        .expect("stream");
    jetscale::receivers::nats::ensure_consumer(&stream, &settings.consumer)
        .await
        .expect("consumer");
}

/// Publishes one message with `headers` (none: a plain publish) and waits for the stream's
/// acknowledgement.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    headers: &[(&str, &str)],
    payload: impl Into<bytes::Bytes>,
) -> PublishAck {
    let subject = subject.to_owned();
    let ack = if headers.is_empty() {
        js.publish(subject, payload.into()).await
    } else {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        js.publish_with_headers(subject, map, payload.into()).await
    };
    ack.expect("publish").await.expect("publish ack")
}

/// One device's `device.temperature` reading at `time_ns`, as OTLP JSON in the IoT pipeline
/// design's device payload shape (no `service.name`).
pub fn reading(device: &str, time_ns: i64, value: f64) -> String {
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"device.id","value":{{"stringValue":"{device}"}}}},{{"key":"device.location","value":{{"stringValue":"lab"}}}}]}},"scopeMetrics":[{{"metrics":[{{"name":"device.temperature","unit":"Cel","gauge":{{"dataPoints":[{{"timeUnixNano":"{time_ns}","asDouble":{value}}}]}}}}]}}]}}]}}"#
    )
}

/// Publishes `devices × count` simulated messages and returns the report with every point.
pub async fn simulate(nats_url: &str, devices: u32, count: u64) -> jetscale::simulate::Report {
    simulate_with(
        nats_url,
        jetscale::simulate::SimulateOptions {
            devices,
            count: Some(count),
            interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
}

/// Runs the simulator with `options`, recording every point it reports stored.
pub async fn simulate_with(
    nats_url: &str,
    options: jetscale::simulate::SimulateOptions,
) -> jetscale::simulate::Report {
    let options = jetscale::simulate::SimulateOptions {
        record_sent: true,
        ..options
    };
    jetscale::simulate::run(jetstream(nats_url).await, &options, |_| {})
        .await
        .expect("simulate")
}
