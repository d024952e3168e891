//! End-to-end tests of the spine against real nats-server and PostgreSQL processes:
//! simulate → stream → collect → database, value for value.

mod common;

use jetscale::exporters::postgres::query::SEED_ANOMALY_SQL;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleet_lands_exactly_once_value_for_value() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("fleet").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;

    let sent = common::simulate(&nats.server.url(), 200, 5).await;
    assert_eq!(sent.acked, 1000);
    let report = common::collect_until_idle(&settings).await;
    assert_eq!(report.messages, 1000);
    assert_eq!(report.rows, 3000);
    assert_eq!(report.dead_letters, 0);

    let db = common::db(&db_url).await;
    let mut stored = common::stored_points(&db, "iot_metrics").await;
    let mut expected = common::sent_points(&sent);
    stored.sort();
    expected.sort();
    assert_eq!(stored.len(), 3000);
    assert_eq!(
        stored, expected,
        "every value stored bit for bit, none twice"
    );

    // Columns of the seed's schema, filled from the seed's payload.
    let row = db
        .query_one(
            "SELECT location, unit, attributes FROM iot_metrics WHERE metric_name = 'device.temperature' LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let location: String = row.get(0);
    let unit: String = row.get(1);
    let attributes: serde_json::Value = row.get(2);
    assert!(location.starts_with("warehouse-"), "{location}");
    assert_eq!(unit, "Cel");
    assert_eq!(attributes["service.name"], "iot-sensor");

    // A second run finds nothing new: everything was acknowledged after its commit.
    let again = common::collect_until_idle(&settings).await;
    assert_eq!(again.messages, 0);
    let count: i64 = db
        .query_one("SELECT count(*) FROM iot_metrics", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_and_forget_fleet_lands_exactly_once_too() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("fire_and_forget").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;

    // 2,600 messages: two full groups of plain publishes, then a partial one confirmed when
    // the run ends; most carry no Nats-Msg-Id, so nothing but the collector stands between
    // them and a duplicate row.
    let sent = common::simulate_with(
        &nats.server.url(),
        jetscale::simulate::SimulateOptions {
            devices: 200,
            count: Some(13),
            interval: Duration::ZERO,
            fire_and_forget: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!((sent.acked, sent.errors), (2600, 0));
    let report = common::collect_until_idle(&settings).await;
    assert_eq!((report.messages, report.rows), (2600, 7800));

    let db = common::db(&db_url).await;
    let mut stored = common::stored_points(&db, "iot_metrics").await;
    let mut expected = common::sent_points(&sent);
    stored.sort();
    expected.sort();
    assert_eq!(
        stored, expected,
        "every value stored bit for bit, none twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sql_runs_verbatim_and_the_hourly_rollup_matches_raw_data() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("seedsql").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    let client = async_nats::connect(nats.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let options = jetscale::simulate::SimulateOptions {
        devices: 100,
        count: Some(3),
        interval: Duration::ZERO,
        overheat_share: 0.1,
        ..Default::default()
    };
    jetscale::simulate::run(js, &options, |_| {}).await.unwrap();
    common::collect_until_idle(&settings).await;
    let db = common::db(&db_url).await;

    // The seed's anomaly query, character for character.
    db.batch_execute(SEED_ANOMALY_SQL)
        .await
        .expect("seed anomaly query runs");
    let rows = db
        .query(SEED_ANOMALY_SQL.trim_end_matches(';'), &[])
        .await
        .unwrap();
    let by_hand: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT device_id FROM iot_metrics WHERE metric_name = 'device.temperature'
             GROUP BY device_id, location HAVING avg(value) > 35.0) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows.len() as i64, by_hand);
    let via_cli = jetscale::exporters::postgres::query::anomalies(
        &db,
        "public",
        "device.temperature",
        Duration::from_secs(3600),
        35.0,
    )
    .await
    .unwrap();
    assert_eq!(via_cli.len(), rows.len());

    // The continuous aggregate's relation answers like the seed's definition, before and
    // after the refresh materializes closed hours.
    let from_view = "SELECT bucket, device_id, location, metric_name, avg_value, min_value, max_value, sample_count
                     FROM iot_metrics_hourly ORDER BY 1, 2, 3, 4";
    let from_raw = "SELECT time_bucket('1 hour', time) AS bucket, device_id, location, metric_name,
                           avg(value), min(value), max(value), count(*)
                    FROM iot_metrics GROUP BY bucket, device_id, location, metric_name ORDER BY 1, 2, 3, 4";
    let summary = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, i64, f64, f64)> {
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, String>(1),
                    r.get::<_, String>(3),
                    r.get::<_, i64>(7),
                    r.get::<_, f64>(5),
                    r.get::<_, f64>(6),
                )
            })
            .collect()
    };
    let raw = summary(db.query(from_raw, &[]).await.unwrap());
    assert_eq!(raw.len(), 300);
    assert_eq!(summary(db.query(from_view, &[]).await.unwrap()), raw);
    // Pretend the data is old: move it two hours back, invalidate, refresh.
    db.batch_execute(
        "SELECT jetscale_ensure_partitions('iot_metrics_points', date_bin('1 hour', now() - INTERVAL '4 hours', TIMESTAMPTZ '2000-01-03'), now(), INTERVAL '1 hour');
         UPDATE iot_metrics_points SET time = time - INTERVAL '2 hours';
         SELECT jetscale_refresh_rollup('iot_metrics');
         INSERT INTO jetscale_rollup_invalidations SELECT 'iot_metrics', b FROM generate_series(date_bin('1 hour', now() - INTERVAL '3 hours', TIMESTAMPTZ '2000-01-03'), now(), INTERVAL '1 hour') b ON CONFLICT DO NOTHING;
         SELECT jetscale_refresh_rollup('iot_metrics');",
    )
    .await
    .expect("refresh");
    let materialized: i64 = db
        .query_one("SELECT count(*) FROM iot_metrics_hourly_data", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(materialized, 300, "closed hours are materialized");
    let raw = summary(db.query(from_raw, &[]).await.unwrap());
    let view = summary(db.query(from_view, &[]).await.unwrap());
    assert_eq!(view.len(), raw.len());
    for (v, r) in view.iter().zip(&raw) {
        assert_eq!((&v.0, &v.1, v.2), (&r.0, &r.1, r.2));
        assert!(
            (v.3 - r.3).abs() <= 1e-9 * r.3.abs().max(1.0),
            "avg {} vs {}",
            v.3,
            r.3
        );
        assert_eq!(v.4, r.4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_and_the_rest_stored() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("dlq").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    let client = async_nats::connect(nats.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let good = format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"device.id","value":{{"stringValue":"sensor-x"}}}},{{"key":"device.location","value":{{"stringValue":"lab"}}}}]}},"scopeMetrics":[{{"metrics":[{{"name":"device.temperature","unit":"Cel","gauge":{{"dataPoints":[{{"timeUnixNano":"{now}","asDouble":21.5}}]}}}}]}}]}}]}}"#
    );
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
        ("wrong type", good.replace("21.5", "\"hot\"").into_bytes()),
        (
            "invalid utf-8",
            [
                &good.as_bytes()[..60],
                &[0xff, 0xfe],
                &good.as_bytes()[60..],
            ]
            .concat(),
        ),
        ("unknown", br#"{"hello": "world"}"#.to_vec()),
        ("binary", vec![0x0a, 0x03, 0x01, 0x02, 0x00]),
        (
            "future",
            good.replace(
                &now.to_string(),
                &(now + 86_400_000_000_000 * 3).to_string(),
            )
            .into_bytes(),
        ),
        ("nul", good.replace("lab", "l\\u0000ab").into_bytes()),
    ];
    for (_, payload) in &bad {
        js.publish("telemetry.metrics.sensor-x", payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish("telemetry.metrics.sensor-x", good.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let report = common::collect_until_idle(&settings).await;
    assert_eq!(report.rows, 1);
    assert_eq!(report.dead_letters, bad.len() as u64);
    let db = common::db(&db_url).await;
    let rows = db
        .query("SELECT stream_seq, subject, reason, payload, payload_size FROM jetscale_dead_letters ORDER BY stream_seq", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), bad.len());
    for (row, (label, payload)) in rows.iter().zip(&bad) {
        let reason: String = row.get(2);
        assert!(!reason.is_empty(), "{label}: a reason");
        assert_eq!(row.get::<_, String>(1), "telemetry.metrics.sensor-x");
        assert_eq!(
            &row.get::<_, Vec<u8>>(3),
            payload,
            "{label}: raw bytes kept"
        );
        assert_eq!(row.get::<_, i32>(4) as usize, payload.len());
    }
    let reasons: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert!(reasons[5].contains("max_future"), "{}", reasons[5]);
    assert!(reasons[6].contains("NUL"), "{}", reasons[6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_config_runs_as_it_is_with_its_table_name() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("seedcfg").await;
    let config = common::workspace_root().join("examples/collector-config.yaml");
    let setup = Command::new(common::binary())
        .args(["setup", "--config"])
        .arg(&config)
        .args(["--nats-url", &nats.server.url(), "--database-url", &db_url])
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let first = String::from_utf8_lossy(&setup.stdout).to_string();
    assert!(first.contains("stream TELEMETRY: created"), "{first}");
    assert!(
        first.contains("consumer otel-collector: created"),
        "{first}"
    );

    // Setup twice changes nothing and says so.
    let again = Command::new(common::binary())
        .args(["setup", "--config"])
        .arg(&config)
        .args(["--nats-url", &nats.server.url(), "--database-url", &db_url])
        .output()
        .unwrap();
    let second = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success());
    assert!(
        second.contains("stream TELEMETRY: exists with the configured settings; nothing changed"),
        "{second}"
    );
    assert!(
        second.contains("consumer otel-collector: exists"),
        "{second}"
    );
    assert!(second.contains("up to date; nothing changed"), "{second}");

    let sim = Command::new(common::binary())
        .args([
            "simulate",
            "--devices",
            "50",
            "--count",
            "4",
            "--interval",
            "0s",
            "--nats-url",
            &nats.server.url(),
        ])
        .output()
        .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let collect = Command::new(common::binary())
        .args(["collect", "--config"])
        .arg(&config)
        .args([
            "--nats-url",
            &nats.server.url(),
            "--database-url",
            &db_url,
            "--exit-when-idle",
            "1s",
        ])
        .env("HOSTNAME", "collector-host-1")
        .output()
        .unwrap();
    assert!(
        collect.status.success(),
        "{}",
        String::from_utf8_lossy(&collect.stderr)
    );
    let db = common::db(&db_url).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM otel_metrics", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 600);
    // The seed's schema name is a view of the configured table, so the seed's SQL works.
    let n: i64 = db
        .query_one("SELECT count(*) FROM iot_metrics", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 600);
    db.batch_execute(SEED_ANOMALY_SQL).await.unwrap();
    // The resource processor's ${HOSTNAME} upsert.
    let host: String = db
        .query_one(
            "SELECT attributes->>'pipeline.processed_at' FROM otel_metrics LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(host, "collector-host-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_stream_settings_are_reported_and_updated() {
    let nats = common::nats().await;
    let dir = common::temp_dir();
    let seed_001 = dir.path().join("seed001.yaml");
    std::fs::write(
        &seed_001,
        "receivers:\n  nats:\n    jetstream:\n      stream_settings:\n        max_age: 7d\n        max_bytes: 1GB\n        duplicate_window: 5s\n",
    )
    .unwrap();
    let run = |config: Option<&std::path::Path>| {
        let mut cmd = Command::new(common::binary());
        cmd.args(["setup", "--nats-only", "--nats-url", &nats.server.url()]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(run(None).contains("stream TELEMETRY: created"));
    let updated = run(Some(&seed_001));
    assert!(updated.contains("max_age: 2d -> 7d"), "{updated}");
    assert!(
        updated.contains("max_bytes: 50000000000 -> 1000000000"),
        "{updated}"
    );
    assert!(updated.contains("duplicate_window: 2m -> 5s"), "{updated}");
    assert!(run(Some(&seed_001)).contains("nothing changed"));
    let client = async_nats::connect(nats.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let info = js
        .get_stream("TELEMETRY")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(info.duplicate_window, Duration::from_secs(5));
}

#[test]
fn a_malformed_config_names_its_error() {
    let dir = common::temp_dir();
    let path = dir.path().join("bad.yaml");
    let seed =
        std::fs::read_to_string(common::workspace_root().join("examples/collector-config.yaml"))
            .unwrap();
    std::fs::write(&path, seed.replace("send_batch_size", "send_batch_sise")).unwrap();
    let out = Command::new(common::binary())
        .args(["collect", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("processors.batch"), "{err}");
    assert!(err.contains("send_batch_sise"), "{err}");
    // Secrets from the config never reach the output.
    assert!(!err.contains("password@"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_python_device_publishes_into_the_stack() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("python").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    let script = common::workspace_root().join("examples/iot_device.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("NATS_URL", nats.server.url())
        .env("DEVICE_ID", "sensor-py-1")
        .env("COUNT", "3")
        .env("INTERVAL", "0")
        .output()
        .expect("python3 runs (the README's test command installs nats-py)");
    assert!(
        out.status.success(),
        "iot_device.py failed (pip install nats-py): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = common::collect_until_idle(&settings).await;
    assert_eq!(report.rows, 9);
    let db = common::db(&db_url).await;
    let rows = db
        .query(
            "SELECT metric_name, unit, location, value FROM iot_metrics WHERE device_id = 'sensor-py-1' ORDER BY time",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 9);
    let metrics: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        metrics.into_iter().collect::<Vec<_>>(),
        vec!["device.battery", "device.humidity", "device.temperature"]
    );
    assert!(rows.iter().all(|r| r.get::<_, String>(2) == "warehouse-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_filter_selecting_the_whole_stream_is_left_off() {
    // nats-server 2.9 scans the stream to count a filtered consumer's pending messages: on
    // a deep backlog every consumer info took seconds of a core.
    let nats = common::nats().await;
    let db_url = common::fresh_database("consumer_filter").await;
    let mut settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    let client = async_nats::connect(nats.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&settings.stream.name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.subjects,
        ["telemetry.>"]
    );
    let info = stream.consumer_info(&settings.consumer.name).await.unwrap();
    assert_eq!(
        info.config.filter_subject, "",
        "telemetry.> is the whole stream"
    );

    // It still collects everything.
    common::simulate(&nats.server.url(), 20, 1).await;
    assert_eq!(common::collect_until_idle(&settings).await.messages, 20);

    // A filter narrower than the stream is kept.
    settings.consumer.name = "metrics-only".into();
    settings.consumer.filter_subject = "telemetry.metrics.>".into();
    common::provision_stream(&settings).await;
    let info = stream.consumer_info("metrics-only").await.unwrap();
    assert_eq!(info.config.filter_subject, "telemetry.metrics.>");
}
