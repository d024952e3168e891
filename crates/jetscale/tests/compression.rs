//! TimescaleDB compression (`exporters.postgresql.compress_after`) on a private cluster that
//! preloads the extension: the columnstore policy on the points, spans and logs hypertables
//! with the segment-by and order-by the project's queries want; chunks compressed by hand
//! still take the late rows the collector accepts; the IoT design's anomaly query and the
//! hourly rollup answer the same before and after compression.

use crate::backends::preloaded_database;
use crate::support::{self, count, publish, query, reading};
use jetscale::config::{BackendChoice, MetricsLayout, Settings};
use jetscale::exporters::postgres::query::ANOMALY_SQL;
use jetscale::exporters::postgres::schema;
use std::time::Duration;

const HOUR_NS: i64 = 3600 * 1_000_000_000;

/// Test settings on `db_url` that demand TimescaleDB, accept points a day late and compress
/// chunks two days old.
fn compressing(nats_url: &str, db_url: &str) -> Settings {
    let mut s = support::settings(nats_url, db_url);
    s.store.backend = BackendChoice::Timescaledb;
    s.limits.max_past = Duration::from_secs(86_400);
    s.store.compress_after = Some(Duration::from_secs(2 * 86_400));
    s
}

/// (hypertable, segment-by, order-by, compress_after) of every compression policy.
async fn policies(db: &tokio_postgres::Client) -> Vec<(String, String, String, String)> {
    query(
        db,
        "SELECT j.hypertable_name::text,
                (SELECT string_agg(attname::text, ', ' ORDER BY segmentby_column_index)
                   FROM timescaledb_information.compression_settings c
                  WHERE c.hypertable_name = j.hypertable_name AND segmentby_column_index IS NOT NULL),
                (SELECT string_agg(attname::text || CASE WHEN orderby_asc THEN '' ELSE ' DESC' END, ', ' ORDER BY orderby_column_index)
                   FROM timescaledb_information.compression_settings c
                  WHERE c.hypertable_name = j.hypertable_name AND orderby_column_index IS NOT NULL),
                justify_interval((j.config->>'compress_after')::interval)::text
         FROM timescaledb_information.jobs j
         WHERE j.proc_name = 'policy_compression' ORDER BY 1",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_adds_a_columnstore_policy_for_points_spans_and_logs() {
    let Some(db_url) = preloaded_database("compress_policy").await else {
        return;
    };
    let nats = support::nats().await;
    let s = compressing(&nats.server.url(), &db_url);
    let mut db = support::db(&db_url).await;
    let report = schema::migrate(&mut db, &s.store).await.expect("setup");
    assert!(
        report.notes.iter().any(|n| n.contains("compressed")),
        "{:?}",
        report.notes
    );
    let expected = [
        ("iot_metrics_points", "series_id"),
        ("telemetry_logs", "service"),
        ("telemetry_spans", "service"),
    ]
    .map(|(table, segment)| {
        (
            table.to_owned(),
            segment.to_owned(),
            "time DESC".to_owned(),
            "2 days".to_owned(),
        )
    });
    assert_eq!(policies(&db).await, expected);

    // Setup again, with compressed chunks and a changed age: no error, one policy per table
    // at the new age.
    db.batch_execute(
        "INSERT INTO iot_metrics_points (time, series_id, value) VALUES (now() - INTERVAL '1 hour', 1, 1.0);
         SELECT compress_chunk(c) FROM show_chunks('iot_metrics_points') c;",
    )
    .await
    .expect("a compressed chunk");
    let mut later = s.clone();
    later.store.compress_after = Some(Duration::from_secs(3 * 86_400));
    schema::migrate(&mut db, &later.store)
        .await
        .expect("setup again over compressed chunks");
    let ages: Vec<String> = policies(&db).await.into_iter().map(|p| p.3).collect();
    assert_eq!(ages, ["3 days"; 3]);

    // Switched off: the policies go, and setup says so.
    later.store.compress_after = None;
    let report = schema::migrate(&mut db, &later.store)
        .await
        .expect("setup with compression off");
    assert!(policies(&db).await.is_empty());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("compression is off")),
        "{:?}",
        report.notes
    );
}

/// The wide layout (the IoT design's table as written) has no series id: its batches are
/// segmented by device and metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wide_table_is_segmented_by_device_and_metric() {
    let Some(db_url) = preloaded_database("compress_wide").await else {
        return;
    };
    let nats = support::nats().await;
    let mut s = compressing(&nats.server.url(), &db_url);
    s.store.layout = MetricsLayout::Wide;
    let mut db = support::db(&db_url).await;
    schema::migrate(&mut db, &s.store).await.expect("setup");
    let wide = policies(&db).await;
    assert_eq!(
        wide.first()
            .map(|p| (p.0.as_str(), p.1.as_str(), p.2.as_str())),
        Some(("iot_metrics", "device_id, metric_name", "time DESC")),
        "{wide:?}"
    );
}

/// The anomaly query over `window`, every device above 0 °C, as (device, location, avg).
async fn anomalies(db: &tokio_postgres::Client, window: &str) -> Vec<(String, String, f64)> {
    db.query(ANOMALY_SQL, &[&"device.temperature", &window, &0.0f64])
        .await
        .expect("anomaly query")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The hourly rollup as (bucket, device, metric, count, min, max, avg).
async fn rollup(db: &tokio_postgres::Client) -> Vec<RollupRow> {
    query(
        db,
        "SELECT bucket::text, device_id, metric_name, sample_count, min_value, max_value, avg_value
         FROM iot_metrics_hourly ORDER BY 1, 2, 3",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        )
    })
    .collect()
}

/// Averages may be summed in another order from compressed batches: equal to 1e-12.
fn assert_close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-12 * a.abs().max(1.0),
        "{what}: {a} vs {b}"
    );
}

type RollupRow = (String, String, String, i64, f64, f64, f64);

/// Rollups equal row for row: keys, counts, min and max exactly, averages to 1e-12 (the
/// open hour is aggregated from raw rows, which compression may hand over in another order).
fn assert_same_rollup(a: &[RollupRow], b: &[RollupRow]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (&x.0, &x.1, &x.2, x.3, x.4, x.5),
            (&y.0, &y.1, &y.2, y.3, y.4, y.5)
        );
        assert_close(x.6, y.6, &x.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_chunks_take_late_rows_and_answer_the_same() {
    let Some(db_url) = preloaded_database("compress_late").await else {
        return;
    };
    let nats = support::nats().await;
    let s = compressing(&nats.server.url(), &db_url);
    support::provision_stream(&s).await;
    let js = support::jetstream(&nats.server.url()).await;
    // Twenty devices, a reading every ten minutes for the last six hours: six chunks.
    let now = support::now_ns() - 60_000_000_000;
    for device in 0..20 {
        for step in 0..36i64 {
            let value = 20.0 + f64::from(device) * 0.37 + step as f64 * 0.011;
            let id = format!("dev-{device}");
            let time = now - step * HOUR_NS / 6;
            publish(
                &js,
                &format!("telemetry.metrics.{id}"),
                &[],
                reading(&id, time, value),
            )
            .await;
        }
    }
    assert_eq!(support::collect_until_idle(&s).await.messages, 720);
    let db = support::db(&db_url).await;
    // Materialize the closed hours, as the policy would.
    db.batch_execute(
        "CALL refresh_continuous_aggregate('iot_metrics_points_hourly', NULL, date_trunc('hour', now()))",
    )
    .await
    .expect("refresh the rollup");
    let anomalies_before = anomalies(&db, "7 hours").await;
    assert_eq!(anomalies_before.len(), 20);
    let rollup_before = rollup(&db).await;
    assert!(rollup_before.len() >= 20 * 6, "{}", rollup_before.len());

    let chunks = count(
        &db,
        "SELECT count(*) FROM show_chunks('iot_metrics_points')",
    )
    .await;
    assert!(chunks >= 6, "{chunks} chunks");
    db.batch_execute("SELECT compress_chunk(c) FROM show_chunks('iot_metrics_points') c")
        .await
        .expect("compress every chunk by hand");
    let compressed = "SELECT count(*) FROM timescaledb_information.chunks
                      WHERE hypertable_name = 'iot_metrics_points' AND is_compressed";
    assert_eq!(count(&db, compressed).await, chunks);

    // The same answers from the columnstore.
    let anomalies_after = anomalies(&db, "7 hours").await;
    assert_eq!(anomalies_after.len(), anomalies_before.len());
    for (a, b) in anomalies_after.iter().zip(&anomalies_before) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert_close(a.2, b.2, &a.0);
    }
    assert_same_rollup(&rollup(&db).await, &rollup_before);

    // A reading five hours late (the collector accepts a day) lands in a compressed chunk.
    let late_time = now - 5 * HOUR_NS + 7_000_000;
    let late_value = 1234.5678901234567;
    publish(
        &js,
        "telemetry.metrics.dev-late",
        &[],
        reading("dev-late", late_time, late_value),
    )
    .await;
    let report = support::collect_until_idle(&s).await;
    assert_eq!((report.messages, report.dead_letters), (1, 0));
    let stored = query(
        &db,
        "SELECT (extract(epoch FROM time) * 1000000)::int8, value FROM iot_metrics WHERE device_id = 'dev-late'",
    )
    .await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].get::<_, i64>(0), late_time / 1000);
    assert_eq!(stored[0].get::<_, f64>(1).to_bits(), late_value.to_bits());
    // Its chunk is still a compressed one (the row waits beside the columnstore until the
    // chunk is recompressed).
    let late_chunk_compressed = count(
        &db,
        &format!(
            "SELECT count(*) FROM timescaledb_information.chunks
             WHERE hypertable_name = 'iot_metrics_points' AND is_compressed
               AND range_start <= to_timestamp({t}) AND range_end > to_timestamp({t})",
            t = late_time as f64 / 1e9
        ),
    )
    .await;
    assert_eq!(
        late_chunk_compressed, 1,
        "the late row's chunk is compressed"
    );

    // The late row reaches the rollup once its hour is refreshed, beside the rest unchanged.
    db.batch_execute(
        "CALL refresh_continuous_aggregate('iot_metrics_points_hourly', NULL, date_trunc('hour', now()))",
    )
    .await
    .expect("refresh the rollup");
    let after = rollup(&db).await;
    let late: Vec<_> = after.iter().filter(|r| r.1 == "dev-late").collect();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!((late[0].3, late[0].4), (1, late_value));
    let rest: Vec<_> = after.into_iter().filter(|r| r.1 != "dev-late").collect();
    assert_same_rollup(&rest, &rollup_before);
}
