//! A small service instrumented with `tracing`: the jetscale layer publishes its spans and
//! logs to the TELEMETRY stream, and it publishes a couple of metric points directly.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p jetscale-sdk --example service
//! ```
//!
//! The stream must exist (`jetscale setup` creates it). Spans land on
//! `telemetry.spans.example-worker.{run_id}`, logs on `telemetry.logs.example-worker.{level}`,
//! metrics on `telemetry.metrics.example-worker.{name}`.

use jetscale_sdk::{FlatMetric, JetscaleLayer, Publisher};
use std::time::{Duration, Instant};
use tracing::field::Empty;
use tracing_subscriber::prelude::*;

const SERVICE: &str = "example-worker";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let publisher = Publisher::connect(&url).await?;

    // Spans and events go to NATS through the layer (all levels), and are printed locally
    // too (`RUST_LOG`, default `info`).
    let layer = JetscaleLayer::new(publisher.clone(), SERVICE);
    let telemetry = layer.handle();
    let local = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(local))
        .with(layer)
        .init();

    let run_id = run(&publisher).await?;

    // Everything the layer queued is published before the process exits.
    telemetry.flush().await?;
    let stats = telemetry.stats();
    println!(
        "run {run_id}: {} records published, {} failed, {} dropped",
        stats.published, stats.failed, stats.dropped
    );
    Ok(())
}

/// The service's work: one traced run of three steps, then two metric points about it.
/// Returns the run id. (The integration tests call this with their own subscriber.)
pub async fn run(publisher: &Publisher) -> Result<String, jetscale_sdk::Error> {
    let run_id = format!("run-{}", &jetscale_sdk::ids::span_id()[..8]);
    let started = Instant::now();
    let outcome = execute_run(&run_id).await;

    // Metric points, published directly and acknowledged by the stream.
    for (name, kind, value) in [
        (
            "run.duration_ms",
            "histogram",
            started.elapsed().as_secs_f64() * 1000.0,
        ),
        (
            "run.failed_steps",
            "counter",
            f64::from(u8::from(outcome.is_err())),
        ),
    ] {
        publisher
            .publish_metric(&FlatMetric {
                name: name.to_owned(),
                kind: kind.to_owned(),
                value,
                tags: [("run_id".to_owned(), run_id.clone().into())].into(),
                service: SERVICE.to_owned(),
                timestamp: now_rfc3339(),
            })
            .await?;
    }
    Ok(run_id)
}

/// One span for the run (its `run_id` is inherited by every child span and log).
#[tracing::instrument(name = "worker.run", fields(run_id = %run_id, otel.kind = "server"))]
async fn execute_run(run_id: &str) -> Result<(), String> {
    tracing::info!(steps = 3, "run started");
    let mut result = Ok(());
    for step in ["fetch", "build", "upload"] {
        if let Err(err) = execute_step(step).await {
            tracing::warn!(step, error = %err, "step failed, continuing");
            result = Err(err);
        }
    }
    tracing::info!(ok = result.is_ok(), "run finished");
    result
}

/// A child span per step; a failed step records `error`, which marks its span as failed.
#[tracing::instrument(name = "worker.executeTask", fields(step_id = step, error = Empty))]
async fn execute_step(step: &str) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    tracing::debug!(bytes = 4096, "step working");
    if step == "upload" {
        let err = "connection refused".to_owned();
        tracing::Span::current().record("error", err.as_str());
        return Err(err);
    }
    Ok(())
}

fn now_rfc3339() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    jetscale_model::flat::unix_nanos_to_rfc3339(nanos)
}
