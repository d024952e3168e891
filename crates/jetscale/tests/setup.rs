//! `jetscale setup` and the config file, through the real binary: the IoT pipeline design's
//! config as it is, stream settings that drifted, a config with a typo, the consumer's filter.

use crate::support::{self, count_rows, jetscale, provision_stream, succeeds};
use jetscale::exporters::postgres::query::SEED_ANOMALY_SQL;
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_config_runs_as_it_is_with_its_table_name() {
    let nats = support::nats().await;
    let nats_url = nats.server.url();
    let db_url = support::fresh_database("seedcfg").await;
    let config = support::workspace_root().join("examples/collector-config.yaml");
    let setup = || {
        let mut cmd = jetscale(&["setup", "--config"]);
        cmd.arg(&config)
            .args(["--nats-url", &nats_url, "--database-url", &db_url]);
        cmd
    };
    let first = succeeds(&mut setup()).await;
    assert!(first.contains("stream TELEMETRY: created"), "{first}");
    assert!(
        first.contains("consumer otel-collector: created"),
        "{first}"
    );

    // Setup twice changes nothing and says so.
    let second = succeeds(&mut setup()).await;
    assert!(
        second.contains("stream TELEMETRY: exists with the configured settings; nothing changed"),
        "{second}"
    );
    assert!(
        second.contains("consumer otel-collector: exists"),
        "{second}"
    );
    assert!(second.contains("up to date; nothing changed"), "{second}");

    succeeds(&mut jetscale(&[
        "simulate",
        "--devices",
        "50",
        "--count",
        "4",
        "--interval",
        "0s",
        "--nats-url",
        &nats_url,
    ]))
    .await;
    let mut collect = jetscale(&["collect", "--config"]);
    collect
        .arg(&config)
        .args(["--nats-url", &nats_url, "--database-url", &db_url])
        .args(["--exit-when-idle", "1s"])
        .env("HOSTNAME", "collector-host-1");
    succeeds(&mut collect).await;
    let db = support::db(&db_url).await;
    assert_eq!(count_rows(&db, "otel_metrics").await, 600);
    // The design's table name is a view of the configured table, so its SQL works.
    assert_eq!(count_rows(&db, "iot_metrics").await, 600);
    db.batch_execute(SEED_ANOMALY_SQL)
        .await
        .expect("the anomaly query runs");
    // The resource processor's ${HOSTNAME} upsert.
    let host: String = db
        .query_one(
            "SELECT attributes->>'pipeline.processed_at' FROM otel_metrics LIMIT 1",
            &[],
        )
        .await
        .expect("a row")
        .get(0);
    assert_eq!(host, "collector-host-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_stream_settings_are_reported_and_updated() {
    let nats = support::nats().await;
    let dir = support::temp_dir();
    let service_design = dir.path().join("service-design.yaml");
    // The NATS-native service design's stream settings.
    std::fs::write(
        &service_design,
        "receivers:\n  nats:\n    jetstream:\n      stream_settings:\n        max_age: 7d\n        max_bytes: 1GB\n        duplicate_window: 5s\n",
    )
    .expect("write config");
    let nats_url = nats.server.url();
    let run = |config: Option<&Path>| {
        let mut cmd = jetscale(&["setup", "--nats-only", "--nats-url", &nats_url]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        async move { succeeds(&mut cmd).await }
    };
    assert!(run(None).await.contains("stream TELEMETRY: created"));
    let updated = run(Some(&service_design)).await;
    assert!(updated.contains("max_age: 2d -> 7d"), "{updated}");
    assert!(
        updated.contains("max_bytes: 50000000000 -> 1000000000"),
        "{updated}"
    );
    assert!(updated.contains("duplicate_window: 2m -> 5s"), "{updated}");
    assert!(run(Some(&service_design)).await.contains("nothing changed"));
    let info = support::jetstream(&nats_url)
        .await
        .get_stream("TELEMETRY")
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .config
        .clone();
    assert_eq!(info.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(info.duplicate_window, Duration::from_secs(5));
}

#[test]
fn a_malformed_config_names_its_error() {
    let dir = support::temp_dir();
    let path = dir.path().join("bad.yaml");
    let example =
        std::fs::read_to_string(support::workspace_root().join("examples/collector-config.yaml"))
            .expect("the example config");
    std::fs::write(&path, example.replace("send_batch_size", "send_batch_sise"))
        .expect("write config");
    let out = std::process::Command::new(support::binary())
        .args(["collect", "--config"])
        .arg(&path)
        .output()
        .expect("run jetscale");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("processors.batch"), "{err}");
    assert!(err.contains("send_batch_sise"), "{err}");
    // Secrets from the config never reach the output.
    assert!(!err.contains("password@"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_filter_selecting_the_whole_stream_is_left_off() {
    // nats-server 2.9 scans the stream to count a filtered consumer's pending messages: on
    // a deep backlog every consumer info took seconds of a core.
    let mut stack = support::stack("consumer_filter").await;
    let js = stack.js().await;
    let mut stream = js
        .get_stream(&stack.settings.stream.name)
        .await
        .expect("stream");
    assert_eq!(
        stream.info().await.expect("stream info").config.subjects,
        ["telemetry.>"]
    );
    let info = stream
        .consumer_info(&stack.settings.consumer.name)
        .await
        .expect("consumer info");
    assert_eq!(
        info.config.filter_subject, "",
        "telemetry.> is the whole stream"
    );

    // It still collects everything.
    stack.simulate(20, 1).await;
    assert_eq!(stack.collect().await.messages, 20);

    // A filter narrower than the stream is kept.
    stack.settings.consumer.name = "metrics-only".into();
    stack.settings.consumer.filter_subject = "telemetry.metrics.>".into();
    provision_stream(&stack.settings).await;
    let info = stream
        .consumer_info("metrics-only")
        .await
        .expect("consumer info");
    assert_eq!(info.config.filter_subject, "telemetry.metrics.>");
}
