//! The hourly rollup (`iot_metrics_hourly`) against the raw aggregate it stands for, after a
//! backfill of many closed hours: on plain PostgreSQL (jetscale's own rollup) the moment the
//! rows commit, with no refresh in between, and after one; after `--exit-when-idle` the
//! rollup is materialized; on TimescaleDB late rows into hours the continuous aggregate has
//! already materialized are refreshed before the idle collector exits. Both layouts each.

use crate::support::{self, Stack};
use jetscale::config::{BackendChoice, MetricsLayout, Settings};
use jetscale::pipeline::{self, RunOptions};
use std::time::Duration;

const DEVICES: i64 = 20;
const HOURS: i64 = 12;
/// Readings per device, metric and hour: one every 10 minutes.
const PER_HOUR: i64 = 6;
const METRICS: [&str; 2] = ["device.temperature", "device.humidity"];
const HOUR_NS: i64 = 3_600_000_000_000;

/// One device's readings of one closed hour, every 10 minutes from `offset_min`, as the IoT
/// design's OTLP JSON payload with both metrics.
fn hour_payload(device: i64, hour_ns: i64, offset_min: i64, salt: i64) -> String {
    let metrics: Vec<String> = METRICS
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let points: Vec<String> = (0..PER_HOUR)
                .map(|k| {
                    let t = hour_ns + (k * 10 + offset_min) * 60_000_000_000;
                    // Values with fractions, distinct per device, hour, metric and reading.
                    let v = ((device * 31 + (hour_ns / HOUR_NS) * 7 + k * 3 + m as i64 + salt) % 97)
                        as f64
                        * 0.37
                        + 0.125;
                    format!(r#"{{"timeUnixNano":"{t}","asDouble":{v}}}"#)
                })
                .collect();
            format!(
                r#"{{"name":"{name}","unit":"1","gauge":{{"dataPoints":[{}]}}}}"#,
                points.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"device.id","value":{{"stringValue":"dev-{device}"}}}},{{"key":"device.location","value":{{"stringValue":"site-{}"}}}}]}},"scopeMetrics":[{{"metrics":[{}]}}]}}]}}"#,
        device % 3,
        metrics.join(",")
    )
}

/// Publishes `HOURS` closed hours of history for every device, newest hour first, as a fleet
/// catching up would; returns the rows it adds.
async fn backfill(settings: &Settings, offset_min: i64, salt: i64) -> i64 {
    let js = support::jetstream(&settings.nats.url).await;
    let now = support::now_ns();
    let current_hour = now - now.rem_euclid(HOUR_NS);
    for back in 1..=HOURS {
        for device in 0..DEVICES {
            let payload = hour_payload(device, current_hour - back * HOUR_NS, offset_min, salt);
            support::publish(
                &js,
                &format!("telemetry.metrics.dev-{device}"),
                &[],
                payload,
            )
            .await;
        }
    }
    HOURS * DEVICES * METRICS.len() as i64 * PER_HOUR
}

/// Raw (hour, device, location, metric) groups of `iot_metrics`, groups in
/// `iot_metrics_hourly`, and groups that differ between them. Counts, minima and maxima must be
/// equal; averages within 1e-9 (relative), as the sums are added up in another order.
async fn rollup_vs_raw(db: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "WITH raw AS (
                 SELECT time_bucket('1 hour', time) AS bucket, device_id, location, metric_name,
                        avg(value) AS a, min(value) AS mn, max(value) AS mx, count(*) AS c
                 FROM iot_metrics GROUP BY 1, 2, 3, 4),
             rollup AS (
                 SELECT bucket, device_id, location, metric_name,
                        avg_value AS a, min_value AS mn, max_value AS mx, sample_count AS c
                 FROM iot_metrics_hourly)
             SELECT (SELECT count(*) FROM raw), (SELECT count(*) FROM rollup),
                    count(*) FILTER (WHERE raw.c IS DISTINCT FROM rollup.c
                        OR raw.mn IS DISTINCT FROM rollup.mn OR raw.mx IS DISTINCT FROM rollup.mx
                        OR raw.a IS NULL OR rollup.a IS NULL
                        OR abs(raw.a - rollup.a) > 1e-9 * greatest(1, abs(raw.a)))
             FROM raw FULL JOIN rollup USING (bucket, device_id, location, metric_name)",
            &[],
        )
        .await
        .expect("compare the rollup with the raw aggregate");
    (row.get(0), row.get(1), row.get(2))
}

/// Fails unless `iot_metrics_hourly` equals the raw aggregate of `iot_metrics` for every
/// group, and there are `groups` of them.
async fn assert_rollup_is_raw(db: &tokio_postgres::Client, groups: i64, when: &str) {
    assert_eq!(
        rollup_vs_raw(db).await,
        (groups, groups, 0),
        "{when}: raw groups, rollup groups, groups that differ"
    );
}

const GROUPS: i64 = HOURS * DEVICES * METRICS.len() as i64;

async fn native_stack(label: &str, layout: MetricsLayout) -> Stack {
    support::stack_with(label, |s| {
        s.store.layout = layout;
        s.store.backend = BackendChoice::Postgresql;
    })
    .await
}

/// Hours waiting in the invalidation table.
async fn invalidated(db: &tokio_postgres::Client) -> i64 {
    support::count_rows(db, "jetscale_rollup_invalidations").await
}

/// A collector runs; once its first upkeep round has put the watermark at the current hour,
/// `HOURS` closed hours are backfilled below it. Right after the rows commit, before the next
/// round, the rollup must already equal the raw aggregate (the bug: it showed none of them),
/// and again after a refresh has materialized them.
async fn backfill_shows_at_once(layout: MetricsLayout) {
    let stack = native_stack("rollup_live", layout).await;
    let db = stack.db().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let settings = stack.settings.clone();
    let collector = tokio::spawn(async move {
        pipeline::run(
            &settings,
            &RunOptions::default(),
            Default::default(),
            stopped,
        )
        .await
    });
    wait_for(
        &db,
        "SELECT count(*) FROM jetscale_rollup_state WHERE watermark > '-infinity'",
        1,
    )
    .await;

    let rows = backfill(&stack.settings, 0, 0).await;
    wait_for(&db, "SELECT count(*) FROM iot_metrics", rows).await;
    // Every backfilled hour still waits for a refresh: no upkeep round ran in between.
    assert_eq!(
        invalidated(&db).await,
        HOURS,
        "hours invalidated, not yet refreshed"
    );
    assert_rollup_is_raw(&db, GROUPS, "right after the backfill committed").await;

    let refreshed =
        support::count(&db, "SELECT jetscale_refresh_rollup('iot_metrics')::bigint").await;
    assert_eq!(refreshed, HOURS, "hours the refresh recomputed");
    assert_eq!(invalidated(&db).await, 0);
    assert_eq!(
        support::count_rows(&db, "iot_metrics_hourly_data").await,
        GROUPS
    );
    assert_rollup_is_raw(&db, GROUPS, "after a refresh").await;

    stop.send(true).expect("signal the collector");
    let report = collector
        .await
        .expect("collector task")
        .expect("collector ran");
    assert_eq!(report.rows as i64, rows);
}

/// Polls `sql` (a count) until it answers `want` (an error, as before the collector has
/// made the schema, is "not yet"); fails after two minutes.
async fn wait_for(db: &tokio_postgres::Client, sql: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = db
            .query_one(sql, &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| e.to_string());
        if got == Ok(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: {got:?}, waited for {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_wide_rollup_shows_a_backfill_as_soon_as_it_commits() {
    backfill_shows_at_once(MetricsLayout::Wide).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_series_rollup_shows_a_backfill_as_soon_as_it_commits() {
    backfill_shows_at_once(MetricsLayout::Series).await;
}

/// A backlog drained with `--exit-when-idle` leaves the rollup materialized: the collector
/// refreshes it before exiting, so dashboards do not aggregate raw rows until some later
/// collector's upkeep round.
async fn exit_when_idle_materializes(layout: MetricsLayout) {
    let mut stack = native_stack("rollup_exit", layout).await;
    // One batch for the whole backlog, committed at the batch timeout: the collector's first
    // upkeep round (at start) runs before it, so the backfilled hours are late hours.
    stack.settings.batch.max_rows = 100_000;
    let db = stack.db().await;
    stack.collect().await;
    assert_eq!(invalidated(&db).await, 0);

    let rows = backfill(&stack.settings, 0, 0).await;
    let report = stack.collect().await;
    assert_eq!(report.rows as i64, rows);
    assert_eq!(invalidated(&db).await, 0, "late hours left unrefreshed");
    assert_eq!(
        support::count_rows(&db, "iot_metrics_hourly_data").await,
        GROUPS,
        "groups materialized"
    );
    assert_rollup_is_raw(&db, GROUPS, "after collect --exit-when-idle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_wide_rollup_is_materialized_before_exit_when_idle() {
    exit_when_idle_materializes(MetricsLayout::Wide).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_series_rollup_is_materialized_before_exit_when_idle() {
    exit_when_idle_materializes(MetricsLayout::Series).await;
}

/// On TimescaleDB: a backfill, the continuous aggregate materialized over it (as its policy
/// would), then late rows into those same hours. Real-time aggregation covers only hours above
/// the aggregate's watermark, so without a refresh over them the rollup stays stale; the idle
/// collector refreshes them before it exits.
async fn timescale_late_rows_refreshed(layout: MetricsLayout) {
    let nats = support::nats().await;
    let Some(db_url) = crate::backends::preloaded_database("rollup").await else {
        return;
    };
    let mut settings = support::settings(&nats.server.url(), &db_url);
    settings.store.layout = layout;
    settings.store.backend = BackendChoice::Timescaledb;
    support::provision_stream(&settings).await;
    let db = support::db(&db_url).await;
    let aggregate = match layout {
        MetricsLayout::Wide => "iot_metrics_hourly",
        MetricsLayout::Series => "iot_metrics_points_hourly",
    };

    let first = backfill(&settings, 0, 0).await;
    support::collect_until_idle(&settings).await;
    assert_rollup_is_raw(&db, GROUPS, "after the first backfill").await;
    db.batch_execute(&format!(
        "CALL refresh_continuous_aggregate('{aggregate}', NULL, time_bucket('1 hour', now()))"
    ))
    .await
    .expect("materialize the aggregate");

    let late = backfill(&settings, 5, 11).await;
    let report = support::collect_until_idle(&settings).await;
    assert_eq!(report.rows as i64, late);
    assert_eq!(support::count_rows(&db, "iot_metrics").await, first + late);
    assert_rollup_is_raw(&db, GROUPS, "right after the late rows were drained").await;
    assert_eq!(invalidated(&db).await, 0, "late hours left unrefreshed");
    db.batch_execute(&format!(
        "CALL refresh_continuous_aggregate('{aggregate}', NULL, time_bucket('1 hour', now()))"
    ))
    .await
    .expect("refresh the aggregate");
    assert_rollup_is_raw(&db, GROUPS, "after a refresh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescale_wide_rollup_refreshes_late_hours_before_exit_when_idle() {
    timescale_late_rows_refreshed(MetricsLayout::Wide).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescale_series_rollup_refreshes_late_hours_before_exit_when_idle() {
    timescale_late_rows_refreshed(MetricsLayout::Series).await;
}

/// On TimescaleDB, while a collector runs: late rows into materialized hours are refreshed by
/// its upkeep loop soon after they commit, without the collector exiting. Waits (up to a
/// minute, untimed otherwise) for the recorded hours to be taken, then compares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescale_running_collector_refreshes_late_hours() {
    let nats = support::nats().await;
    let Some(db_url) = crate::backends::preloaded_database("rollup_running").await else {
        return;
    };
    let mut settings = support::settings(&nats.server.url(), &db_url);
    settings.store.layout = MetricsLayout::Series;
    settings.store.backend = BackendChoice::Timescaledb;
    support::provision_stream(&settings).await;
    let db = support::db(&db_url).await;
    let first = backfill(&settings, 0, 0).await;
    support::collect_until_idle(&settings).await;
    db.batch_execute(
        "CALL refresh_continuous_aggregate('iot_metrics_points_hourly', NULL, time_bucket('1 hour', now()))",
    )
    .await
    .expect("materialize the aggregate");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = settings.clone();
    let collector = tokio::spawn(async move {
        pipeline::run(
            &running,
            &RunOptions::default(),
            Default::default(),
            stopped,
        )
        .await
    });
    let late = backfill(&settings, 5, 11).await;
    wait_for(&db, "SELECT count(*) FROM iot_metrics", first + late).await;
    // The hours are taken out of the table before the refresh runs: wait for the rollup.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rollup_vs_raw(&db).await != (GROUPS, GROUPS, 0) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_rollup_is_raw(
        &db,
        GROUPS,
        "once the running collector refreshed the late hours",
    )
    .await;
    assert_eq!(invalidated(&db).await, 0, "late hours left unrefreshed");
    stop.send(true).expect("signal the collector");
    collector
        .await
        .expect("collector task")
        .expect("collector ran");
}
