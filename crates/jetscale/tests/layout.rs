//! The two storage layouts of metric points against real nats-server and PostgreSQL: the
//! series layout (narrow points, one row per series, `iot_metrics` a view) and the seed's
//! wide table, each value for value, and the refusal to write one over the other.

mod common;

use jetscale::config::MetricsLayout;
use jetscale::exporters::postgres::query::SEED_ANOMALY_SQL;

async fn relkind(db: &tokio_postgres::Client, relation: &str) -> Option<String> {
    db.query_opt(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)",
        &[&relation],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// The first column of every row `sql` returns, as text.
async fn texts(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    db.query(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn index_defs(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    texts(
        db,
        "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
        &[&table],
    )
    .await
}

/// The points table's partitions that hold rows, oldest first, each with its index
/// definitions.
async fn partitions_with_rows(db: &tokio_postgres::Client) -> Vec<(String, Vec<String>)> {
    let names = texts(
        db,
        "SELECT DISTINCT tableoid::regclass::text FROM iot_metrics_points ORDER BY 1",
        &[],
    )
    .await;
    let mut out = Vec::new();
    for name in names {
        let defs = index_defs(db, &name).await;
        out.push((name, defs));
    }
    out
}

/// One device's reading of `device.temperature` at `time_ns`, as OTLP JSON.
fn reading_at(device: &str, time_ns: i64, value: f64) -> String {
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"device.id","value":{{"stringValue":"{device}"}}}},{{"key":"device.location","value":{{"stringValue":"lab"}}}}]}},"scopeMetrics":[{{"metrics":[{{"name":"device.temperature","unit":"Cel","gauge":{{"dataPoints":[{{"timeUnixNano":"{time_ns}","asDouble":{value}}}]}}}}]}}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_partitions_are_indexed_once_they_have_closed() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("index_on_close").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    assert!(!settings.store.index_open_partitions, "the default");
    common::provision_stream(&settings).await;

    // A device that was offline sends a reading from three hours ago (a closed hour) while
    // the fleet sends current ones (the open hour).
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let three_hours_ago = now_ns - 3 * 3600 * 1_000_000_000;
    let js = async_nats::jetstream::new(async_nats::connect(nats.server.url()).await.unwrap());
    js.publish(
        "telemetry.metrics.late-1",
        reading_at("late-1", three_hours_ago, 41.5).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    common::simulate(&nats.server.url(), 50, 1).await;
    let report = common::collect_until_idle(&settings).await;
    assert_eq!(report.messages, 51);

    let db = common::db(&db_url).await;
    assert!(
        index_defs(&db, "iot_metrics_points").await.is_empty(),
        "no index on the parent"
    );
    // What the collector's maintenance does every round, until nothing is left to do.
    let names = jetscale::exporters::postgres::schema::RelationNames::new(&settings.store);
    let closed_before = std::time::SystemTime::now()
        - jetscale::exporters::postgres::maintenance::INDEX_AFTER_CLOSE;
    while jetscale::exporters::postgres::maintenance::index_closed_partitions(
        &db,
        &names,
        closed_before,
        1,
    )
    .await
    .unwrap()
        > 0
    {}

    let partitions = partitions_with_rows(&db).await;
    assert!(partitions.len() >= 2, "{partitions:?}");
    let (old, old_defs) = &partitions[0];
    assert_eq!(
        old_defs.len(),
        1,
        "the closed partition {old}: {old_defs:?}"
    );
    assert!(
        old_defs[0].contains("(series_id, \"time\" DESC)"),
        "{old_defs:?}"
    );
    let (open, open_defs) = &partitions[partitions.len() - 1];
    assert!(
        open_defs.is_empty(),
        "the open partition {open} takes rows unindexed: {open_defs:?}"
    );
    // Built once: another round finds nothing to do.
    assert_eq!(
        jetscale::exporters::postgres::maintenance::index_closed_partitions(
            &db,
            &names,
            closed_before,
            10
        )
        .await
        .unwrap(),
        0
    );

    // The closed hour answers through its index; a row arriving late still lands in it.
    js.publish(
        "telemetry.metrics.late-1",
        reading_at("late-1", three_hours_ago + 10_000_000_000, 42.5).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(common::collect_until_idle(&settings).await.messages, 1);
    let device_sql = format!(
        "SELECT count(*) FROM iot_metrics WHERE device_id = 'late-1' AND time <= to_timestamp({})",
        (three_hours_ago + 60_000_000_000) / 1_000_000_000
    );
    assert_eq!(count(&db, &device_sql).await, 2);
    db.batch_execute("SET enable_seqscan = off").await.unwrap();
    let plan = texts(&db, &format!("EXPLAIN {device_sql}"), &[]).await;
    assert!(
        plan.iter().any(
            |l| l.contains(old.rsplit('.').next().unwrap_or(old).trim_matches('"'))
                && l.contains("Index")
        ),
        "{plan:#?}"
    );

    // Turned on, the parent's index adopts the partitions' own instead of building twice;
    // turned off again, the parent's index is kept and setup says how to drop it.
    let mut on = settings.clone();
    on.store.index_open_partitions = true;
    let mut admin = common::db(&db_url).await;
    jetscale::exporters::postgres::schema::migrate(&mut admin, &on.store)
        .await
        .unwrap();
    assert_eq!(index_defs(&db, "iot_metrics_points").await.len(), 1);
    for (partition, defs) in partitions_with_rows(&db).await {
        assert_eq!(defs.len(), 1, "{partition}: {defs:?}");
    }
    let report = jetscale::exporters::postgres::schema::migrate(&mut admin, &settings.store)
        .await
        .unwrap();
    assert!(
        report.notes.iter().any(|n| n.contains("DROP INDEX")),
        "{:?}",
        report.notes
    );
    assert_eq!(index_defs(&db, "iot_metrics_points").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_open_partitions_keeps_the_index_on_the_parent() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("index_on_insert").await;
    let mut settings = common::settings(&nats.server.url(), &db_url);
    settings.store.index_open_partitions = true;
    common::provision_stream(&settings).await;
    common::simulate(&nats.server.url(), 50, 1).await;
    assert_eq!(common::collect_until_idle(&settings).await.messages, 50);

    let db = common::db(&db_url).await;
    let parent = index_defs(&db, "iot_metrics_points").await;
    assert_eq!(parent.len(), 1, "{parent:?}");
    assert!(
        parent[0].contains("(series_id, \"time\" DESC)"),
        "{parent:?}"
    );
    for (partition, defs) in partitions_with_rows(&db).await {
        assert_eq!(defs.len(), 1, "{partition} is indexed on insert: {defs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_collector_finds_its_fleet_in_the_warmed_cache() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("series_warm").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;

    common::simulate(&nats.server.url(), 300, 1).await;
    let first = common::collect_until_idle(&settings).await;
    assert_eq!(first.messages, 300);
    assert_eq!(first.series_created, 900, "300 devices x 3 metrics");
    assert_eq!(first.series_found, 0);

    // A new process: its cache is loaded from the series table at start, so the fleet's
    // next round costs no lookup in the database.
    common::simulate(&nats.server.url(), 300, 1).await;
    let second = common::collect_until_idle(&settings).await;
    assert_eq!(second.messages, 300);
    assert_eq!(second.series_created, 0);
    assert_eq!(
        second.series_found, 0,
        "every series came from the warmed cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_are_stored_once_and_shared_by_collectors_with_small_caches() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("series").await;
    let mut settings = common::settings(&nats.server.url(), &db_url);
    // 1,500 series through a cache of 1,024: ids are evicted and looked up again.
    settings.store.series_cache = 1024;
    common::provision_stream(&settings).await;

    let first = common::simulate(&nats.server.url(), 500, 2).await;
    // Two collectors with empty caches on one consumer create the same series at once.
    let (a, b) = tokio::join!(
        common::collect_until_idle(&settings),
        common::collect_until_idle(&settings)
    );
    assert_eq!(a.messages + b.messages, 1000);
    let db = common::db(&db_url).await;
    assert_eq!(relkind(&db, "iot_metrics").await.as_deref(), Some("v"));
    assert_eq!(
        relkind(&db, "iot_metrics_points").await.as_deref(),
        Some("p")
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM iot_metrics_series").await,
        1500,
        "500 devices x 3 metrics, each series once"
    );

    // The same devices again, collected by a fresh process: the series are found, not
    // created again.
    let second = common::simulate(&nats.server.url(), 500, 1).await;
    let again = common::collect_until_idle(&settings).await;
    assert_eq!(again.messages, 500);
    assert_eq!(
        count(&db, "SELECT count(*) FROM iot_metrics_series").await,
        1500
    );

    let mut stored = common::stored_points(&db, "iot_metrics").await;
    let mut expected = common::sent_points(&first);
    expected.extend(common::sent_points(&second));
    stored.sort();
    expected.sort();
    assert_eq!(stored.len(), 4500);
    assert_eq!(stored, expected, "every value once, bit for bit");

    // Every point belongs to a series; the points table has no index of its own (its
    // partitions get one when they close: the test below).
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM iot_metrics_points p LEFT JOIN iot_metrics_series s USING (series_id) WHERE s.series_id IS NULL"
        )
        .await,
        0
    );
    assert!(index_defs(&db, "iot_metrics_points").await.is_empty());

    // The seed's query plans through the view and answers.
    let rows = db.query(SEED_ANOMALY_SQL, &[]).await;
    assert!(rows.is_ok(), "{rows:?}");
    let hot: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT device_id FROM iot_metrics WHERE metric_name = 'device.temperature'
               AND time > now() - INTERVAL '1 hour' GROUP BY device_id, location HAVING avg(value) > 35.0) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows.unwrap().len() as i64, hot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wide_layout_is_the_seeds_table_value_for_value() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("wide").await;
    let mut settings = common::settings(&nats.server.url(), &db_url);
    settings.store.layout = MetricsLayout::Wide;
    common::provision_stream(&settings).await;

    let sent = common::simulate(&nats.server.url(), 100, 3).await;
    let report = common::collect_until_idle(&settings).await;
    assert_eq!(report.rows, 900);
    let db = common::db(&db_url).await;
    assert_eq!(relkind(&db, "iot_metrics").await.as_deref(), Some("p"));
    assert_eq!(relkind(&db, "iot_metrics_series").await, None);
    let mut indexes = texts(
        &db,
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'iot_metrics'",
        &[],
    )
    .await;
    indexes.sort();
    assert_eq!(indexes, ["idx_device_time", "idx_location_metric"]);

    let mut stored = common::stored_points(&db, "iot_metrics").await;
    let mut expected = common::sent_points(&sent);
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);

    // The hourly relation answers like the seed's aggregate over the wide table too.
    let from_view = "SELECT device_id, metric_name, sample_count, min_value, max_value
                     FROM iot_metrics_hourly ORDER BY bucket, device_id, location, metric_name";
    let from_raw = "SELECT device_id, metric_name, count(*), min(value), max(value) FROM iot_metrics
                    GROUP BY time_bucket('1 hour', time), device_id, location, metric_name ORDER BY time_bucket('1 hour', time), device_id, location, metric_name";
    let summary = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, i64, f64, f64)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    };
    assert_eq!(
        summary(db.query(from_view, &[]).await.unwrap()),
        summary(db.query(from_raw, &[]).await.unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_layout_is_never_written_over_the_other() {
    let db_url = common::fresh_database("switch").await;
    let mut settings = common::settings("nats://127.0.0.1:1", &db_url);
    let mut client = common::db(&db_url).await;
    jetscale::exporters::postgres::schema::migrate(&mut client, &settings.store)
        .await
        .expect("series layout");

    settings.store.layout = MetricsLayout::Wide;
    let refused = jetscale::exporters::postgres::schema::migrate(&mut client, &settings.store)
        .await
        .expect_err("wide over series is refused");
    assert!(refused.to_string().contains("layout: series"), "{refused}");

    settings.store.metrics_table = "plain_metrics".into();
    jetscale::exporters::postgres::schema::migrate(&mut client, &settings.store)
        .await
        .expect("a wide table of another name");
    settings.store.layout = MetricsLayout::Series;
    let refused = jetscale::exporters::postgres::schema::migrate(&mut client, &settings.store)
        .await
        .expect_err("series over wide is refused");
    assert!(refused.to_string().contains("layout: wide"), "{refused}");
}
