//! End-to-end tests of the spine against real nats-server and PostgreSQL processes:
//! simulate → stream → collect → database, value for value.

use crate::support::{
    self, assert_stored_as_sent, count, count_rows, publish, query, reading, texts,
};
use jetscale::exporters::postgres::query::SEED_ANOMALY_SQL;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleet_lands_exactly_once_value_for_value() {
    let stack = support::stack("fleet").await;

    let sent = stack.simulate(200, 5).await;
    assert_eq!(sent.acked, 1000);
    let report = stack.collect().await;
    assert_eq!(report.messages, 1000);
    assert_eq!(report.rows, 3000);
    assert_eq!(report.dead_letters, 0);

    let db = stack.db().await;
    assert_eq!(assert_stored_as_sent(&db, &[&sent]).await, 3000);

    // The IoT pipeline design's columns, filled from its device payload.
    let row = db
        .query_one(
            "SELECT location, unit, attributes FROM iot_metrics WHERE metric_name = 'device.temperature' LIMIT 1",
            &[],
        )
        .await
        .expect("a temperature row");
    let location: String = row.get(0);
    let unit: String = row.get(1);
    let attributes: serde_json::Value = row.get(2);
    assert!(location.starts_with("warehouse-"), "{location}");
    assert_eq!(unit, "Cel");
    assert_eq!(attributes["service.name"], "iot-sensor");

    // A second run finds nothing new: everything was acknowledged after its commit.
    let again = stack.collect().await;
    assert_eq!(again.messages, 0);
    assert_eq!(count_rows(&db, "iot_metrics").await, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_and_forget_fleet_lands_exactly_once_too() {
    let stack = support::stack("fire_and_forget").await;

    // 2,600 messages: two full groups of plain publishes, then a partial one confirmed when
    // the run ends; most carry no Nats-Msg-Id, so nothing but the collector stands between
    // them and a duplicate row.
    let sent = support::simulate_with(
        &stack.nats_url(),
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
    let report = stack.collect().await;
    assert_eq!((report.messages, report.rows), (2600, 7800));

    assert_stored_as_sent(&stack.db().await, &[&sent]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sql_runs_verbatim_and_the_hourly_rollup_matches_raw_data() {
    let stack = support::stack("seedsql").await;
    let options = jetscale::simulate::SimulateOptions {
        devices: 100,
        count: Some(3),
        interval: Duration::ZERO,
        overheat_share: 0.1,
        ..Default::default()
    };
    support::simulate_with(&stack.nats_url(), options).await;
    stack.collect().await;
    let db = stack.db().await;

    // The IoT pipeline design's anomaly query, character for character.
    db.batch_execute(SEED_ANOMALY_SQL)
        .await
        .expect("the anomaly query runs");
    let rows = query(&db, SEED_ANOMALY_SQL.trim_end_matches(';')).await;
    let by_hand = count(
        &db,
        "SELECT count(*) FROM (SELECT device_id FROM iot_metrics WHERE metric_name = 'device.temperature'
         GROUP BY device_id, location HAVING avg(value) > 35.0) t",
    )
    .await;
    assert_eq!(rows.len() as i64, by_hand);
    let via_cli = jetscale::exporters::postgres::query::anomalies(
        &db,
        "public",
        "device.temperature",
        Duration::from_secs(3600),
        35.0,
    )
    .await
    .expect("the CLI's anomaly query");
    assert_eq!(via_cli.len(), rows.len());

    // The continuous aggregate's relation answers like the design's definition, before and
    // after the refresh materializes closed hours.
    let from_view = "SELECT bucket, device_id, location, metric_name, avg_value, min_value, max_value, sample_count
                     FROM iot_metrics_hourly ORDER BY 1, 2, 3, 4";
    let from_raw = "SELECT time_bucket('1 hour', time) AS bucket, device_id, location, metric_name,
                           avg(value), min(value), max(value), count(*)
                    FROM iot_metrics GROUP BY bucket, device_id, location, metric_name ORDER BY 1, 2, 3, 4";
    let client = &db;
    let summary = |sql: &'static str| async move {
        query(client, sql)
            .await
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(1),
                    r.get::<_, String>(3),
                    r.get::<_, i64>(7),
                    r.get::<_, f64>(5),
                    r.get::<_, f64>(6),
                )
            })
            .collect::<Vec<_>>()
    };
    let raw = summary(from_raw).await;
    assert_eq!(raw.len(), 300);
    assert_eq!(summary(from_view).await, raw);
    // Pretend the data is old: move it two hours back, invalidate, refresh.
    let materialized = if support::timescaledb() {
        // The continuous aggregate: refreshed by hand (outside a transaction, as TimescaleDB
        // requires) instead of waiting for its policy; its rows live in a hypertable of
        // their own.
        // A chunk's check constraint refuses an UPDATE that would move a row out of it.
        db.batch_execute(
            "WITH moved AS (DELETE FROM iot_metrics_points RETURNING time, series_id, value)
             INSERT INTO iot_metrics_points (time, series_id, value)
             SELECT time - INTERVAL '2 hours', series_id, value FROM moved",
        )
        .await
        .expect("move the points back");
        db.batch_execute(
            "CALL refresh_continuous_aggregate('iot_metrics_points_hourly', NULL, now() - INTERVAL '1 hour')",
        )
        .await
        .expect("refresh");
        let table = texts(
            &db,
            "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name)
             FROM timescaledb_information.continuous_aggregates WHERE view_name = 'iot_metrics_points_hourly'",
            &[],
        )
        .await;
        count_rows(&db, &table[0]).await
    } else {
        db.batch_execute(
            "SELECT jetscale_ensure_partitions('iot_metrics_points', date_bin('1 hour', now() - INTERVAL '4 hours', TIMESTAMPTZ '2000-01-03'), now(), INTERVAL '1 hour');
             UPDATE iot_metrics_points SET time = time - INTERVAL '2 hours';
             SELECT jetscale_refresh_rollup('iot_metrics');
             INSERT INTO jetscale_rollup_invalidations SELECT 'iot_metrics', b FROM generate_series(date_bin('1 hour', now() - INTERVAL '3 hours', TIMESTAMPTZ '2000-01-03'), now(), INTERVAL '1 hour') b ON CONFLICT DO NOTHING;
             SELECT jetscale_refresh_rollup('iot_metrics');",
        )
        .await
        .expect("refresh");
        count_rows(&db, "iot_metrics_hourly_data").await
    };
    assert_eq!(materialized, 300, "closed hours are materialized");
    let raw = summary(from_raw).await;
    let view = summary(from_view).await;
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
    let stack = support::stack("dlq").await;
    let js = stack.js().await;
    let now = support::now_ns();
    let good = reading("sensor-x", now, 21.5);
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
    let subject = "telemetry.metrics.sensor-x";
    for (_, payload) in &bad {
        publish(&js, subject, &[], payload.clone()).await;
    }
    publish(&js, subject, &[], good.clone()).await;
    let report = stack.collect().await;
    assert_eq!(report.rows, 1);
    assert_eq!(report.dead_letters, bad.len() as u64);
    let db = stack.db().await;
    let rows = query(
        &db,
        "SELECT stream_seq, subject, reason, payload, payload_size FROM jetscale_dead_letters ORDER BY stream_seq",
    )
    .await;
    assert_eq!(rows.len(), bad.len());
    for (row, (label, payload)) in rows.iter().zip(&bad) {
        let reason: String = row.get(2);
        assert!(!reason.is_empty(), "{label}: a reason");
        assert_eq!(row.get::<_, String>(1), subject);
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
async fn the_seeds_python_device_publishes_into_the_stack() {
    let stack = support::stack("python").await;
    let script = support::workspace_root().join("examples/iot_device.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .env("NATS_URL", stack.nats_url())
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
    let report = stack.collect().await;
    assert_eq!(report.rows, 9);
    let rows = query(
        &stack.db().await,
        "SELECT metric_name, unit, location, value FROM iot_metrics WHERE device_id = 'sensor-py-1' ORDER BY time",
    )
    .await;
    assert_eq!(rows.len(), 9);
    let metrics: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        metrics.into_iter().collect::<Vec<_>>(),
        vec!["device.battery", "device.humidity", "device.temperature"]
    );
    assert!(rows.iter().all(|r| r.get::<_, String>(2) == "warehouse-a"));
}
