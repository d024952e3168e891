//! The two storage layouts of metric points against real nats-server and PostgreSQL: the
//! series layout (narrow points, one row per series, `iot_metrics` a view) and the IoT
//! pipeline design's wide table, each value for value, and the refusal to write one over the
//! other.

use crate::support::{
    self, assert_stored_as_sent, count, count_rows, publish, query, reading, texts,
};
use jetscale::config::MetricsLayout;
use jetscale::exporters::postgres::maintenance::{index_closed_partitions, INDEX_AFTER_CLOSE};
use jetscale::exporters::postgres::query::SEED_ANOMALY_SQL;
use jetscale::exporters::postgres::schema::{self, RelationNames};

async fn relkind(db: &tokio_postgres::Client, relation: &str) -> Option<String> {
    db.query_opt(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)",
        &[&relation],
    )
    .await
    .expect("relkind")
    .map(|r| r.get(0))
}

async fn index_defs(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    texts(
        db,
        "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
        &[&table],
    )
    .await
}

/// The relkind of the points and wide tables: a TimescaleDB hypertable is a plain table
/// (`r`) whose chunks inherit from it, a natively partitioned one is `p`.
fn partitioned_kind() -> Option<&'static str> {
    Some(if support::timescaledb() { "r" } else { "p" })
}

/// Whether `defs` hold the points' `(series_id, time DESC)` index.
fn has_series_time(defs: &[String]) -> bool {
    defs.iter()
        .any(|d| d.contains("(series_id, \"time\" DESC)"))
}

/// The points table's partitions (TimescaleDB: chunks) that hold rows, oldest first, each
/// with its index definitions.
async fn partitions_with_rows(db: &tokio_postgres::Client) -> Vec<(String, Vec<String>)> {
    let names = texts(
        db,
        "SELECT c.relname::text FROM iot_metrics_points p JOIN pg_class c ON c.oid = p.tableoid
         GROUP BY 1 ORDER BY min(p.time)",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_partitions_are_indexed_once_they_have_closed() {
    let stack = support::stack("index_on_close").await;
    assert!(!stack.settings.store.index_open_partitions, "the default");

    // A device that was offline sends a reading from three hours ago (a closed hour) while
    // the fleet sends current ones (the open hour).
    let three_hours_ago = support::now_ns() - 3 * 3600 * 1_000_000_000;
    let js = stack.js().await;
    let late = "telemetry.metrics.late-1";
    publish(&js, late, &[], reading("late-1", three_hours_ago, 41.5)).await;
    stack.simulate(50, 1).await;
    assert_eq!(stack.collect().await.messages, 51);

    let db = stack.db().await;
    if support::timescaledb() {
        return hypertable_chunks_are_indexed_as_they_are_created(&stack, &db).await;
    }
    assert!(
        index_defs(&db, "iot_metrics_points").await.is_empty(),
        "no index on the parent"
    );
    // What the collector's maintenance does every round, until nothing is left to do.
    let names = RelationNames::new(&stack.settings.store);
    let closed_before = std::time::SystemTime::now() - INDEX_AFTER_CLOSE;
    let index_closed = |limit| index_closed_partitions(&db, &names, closed_before, limit);
    while index_closed(1).await.expect("index closed partitions") > 0 {}

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
    assert_eq!(index_closed(10).await.expect("index closed partitions"), 0);

    late_row_lands_in_the_indexed_old_partition(&stack, &db, three_hours_ago, old).await;

    // Turned on, the parent's index adopts the partitions' own instead of building twice;
    // turned off again, the parent's index is kept and setup says how to drop it.
    let mut on = stack.settings.clone();
    on.store.index_open_partitions = true;
    let mut admin = stack.db().await;
    schema::migrate(&mut admin, &on.store)
        .await
        .expect("migrate with index_open_partitions");
    assert_eq!(index_defs(&db, "iot_metrics_points").await.len(), 1);
    for (partition, defs) in partitions_with_rows(&db).await {
        assert_eq!(defs.len(), 1, "{partition}: {defs:?}");
    }
    let report = schema::migrate(&mut admin, &stack.settings.store)
        .await
        .expect("migrate without index_open_partitions");
    assert!(
        report.notes.iter().any(|n| n.contains("DROP INDEX")),
        "{:?}",
        report.notes
    );
    assert_eq!(index_defs(&db, "iot_metrics_points").await.len(), 1);
}

/// The closed hour answers through its index; a row arriving late still lands in it.
async fn late_row_lands_in_the_indexed_old_partition(
    stack: &support::Stack,
    db: &tokio_postgres::Client,
    three_hours_ago: i64,
    old: &str,
) {
    let ten_seconds_later = three_hours_ago + 10_000_000_000;
    let js = stack.js().await;
    let late = "telemetry.metrics.late-1";
    publish(&js, late, &[], reading("late-1", ten_seconds_later, 42.5)).await;
    assert_eq!(stack.collect().await.messages, 1);
    let device_sql = format!(
        "SELECT count(*) FROM iot_metrics WHERE device_id = 'late-1' AND time <= to_timestamp({})",
        (three_hours_ago + 60_000_000_000) / 1_000_000_000
    );
    assert_eq!(count(db, &device_sql).await, 2);
    db.batch_execute("SET enable_seqscan = off")
        .await
        .expect("no sequential scans");
    let plan = texts(db, &format!("EXPLAIN {device_sql}"), &[]).await;
    assert!(
        plan.iter().any(|l| l.contains(old) && l.contains("Index")),
        "{plan:#?}"
    );
    db.batch_execute("RESET enable_seqscan")
        .await
        .expect("reset");
}

/// TimescaleDB builds a hypertable's indexes on each chunk as it creates it, so the open
/// chunk and the closed one alike carry the `(series_id, time DESC)` index (there is no
/// closing step, and `index_open_partitions` is a native-partitioning setting).
async fn hypertable_chunks_are_indexed_as_they_are_created(
    stack: &support::Stack,
    db: &tokio_postgres::Client,
) {
    assert!(
        has_series_time(&index_defs(db, "iot_metrics_points").await),
        "the hypertable has the index"
    );
    let chunks = partitions_with_rows(db).await;
    assert!(chunks.len() >= 2, "{chunks:?}");
    for (chunk, defs) in &chunks {
        assert!(has_series_time(defs), "{chunk} is indexed: {defs:?}");
    }
    let three_hours_ago = count(
        db,
        "SELECT (extract(epoch FROM time) * 1e9)::int8 FROM iot_metrics WHERE device_id = 'late-1'",
    )
    .await;
    late_row_lands_in_the_indexed_old_partition(stack, db, three_hours_ago, &chunks[0].0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_open_partitions_keeps_the_index_on_the_parent() {
    let stack = support::stack_with("index_on_insert", |s| {
        s.store.index_open_partitions = true;
    })
    .await;
    stack.simulate(50, 1).await;
    assert_eq!(stack.collect().await.messages, 50);

    let db = stack.db().await;
    let parent = index_defs(&db, "iot_metrics_points").await;
    assert!(has_series_time(&parent), "{parent:?}");
    // A hypertable also keeps TimescaleDB's default `time DESC` index on the parent and
    // every chunk.
    let per_table = if support::timescaledb() { 2 } else { 1 };
    assert_eq!(parent.len(), per_table, "{parent:?}");
    for (partition, defs) in partitions_with_rows(&db).await {
        assert_eq!(
            defs.len(),
            per_table,
            "{partition} is indexed on insert: {defs:?}"
        );
        assert!(has_series_time(&defs), "{partition}: {defs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_collector_finds_its_fleet_in_the_warmed_cache() {
    let stack = support::stack("series_warm").await;

    stack.simulate(300, 1).await;
    let first = stack.collect().await;
    assert_eq!(first.messages, 300);
    assert_eq!(first.series_created, 900, "300 devices x 3 metrics");
    assert_eq!(first.series_found, 0);

    // A new process: its cache is loaded from the series table at start, so the fleet's
    // next round costs no lookup in the database.
    stack.simulate(300, 1).await;
    let second = stack.collect().await;
    assert_eq!(second.messages, 300);
    assert_eq!(second.series_created, 0);
    assert_eq!(
        second.series_found, 0,
        "every series came from the warmed cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_are_stored_once_and_shared_by_collectors_with_small_caches() {
    // 1,500 series through a cache of 1,024: ids are evicted and looked up again.
    let stack = support::stack_with("series", |s| s.store.series_cache = 1024).await;

    let first = stack.simulate(500, 2).await;
    // Two collectors with empty caches on one consumer create the same series at once.
    let (a, b) = tokio::join!(stack.collect(), stack.collect());
    assert_eq!(a.messages + b.messages, 1000);
    let db = stack.db().await;
    assert_eq!(relkind(&db, "iot_metrics").await.as_deref(), Some("v"));
    assert_eq!(
        relkind(&db, "iot_metrics_points").await.as_deref(),
        partitioned_kind()
    );
    assert_eq!(
        count_rows(&db, "iot_metrics_series").await,
        1500,
        "500 devices x 3 metrics, each series once"
    );

    // The same devices again, collected by a fresh process: the series are found, not
    // created again.
    let second = stack.simulate(500, 1).await;
    let again = stack.collect().await;
    assert_eq!(again.messages, 500);
    assert_eq!(count_rows(&db, "iot_metrics_series").await, 1500);

    let stored = assert_stored_as_sent(&db, &[&first, &second]).await;
    assert_eq!(stored, 4500);

    // Every point belongs to a series; the points table has no index of its own (its
    // partitions get one when they close: the test above).
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM iot_metrics_points p LEFT JOIN iot_metrics_series s USING (series_id) WHERE s.series_id IS NULL"
        )
        .await,
        0
    );
    let parent = index_defs(&db, "iot_metrics_points").await;
    if support::timescaledb() {
        assert!(has_series_time(&parent), "{parent:?}");
    } else {
        assert!(parent.is_empty(), "{parent:?}");
    }

    // The IoT pipeline design's anomaly query plans through the view and answers.
    let rows = query(&db, SEED_ANOMALY_SQL).await;
    let hot = count(
        &db,
        "SELECT count(*) FROM (SELECT device_id FROM iot_metrics WHERE metric_name = 'device.temperature'
           AND time > now() - INTERVAL '1 hour' GROUP BY device_id, location HAVING avg(value) > 35.0) t",
    )
    .await;
    assert_eq!(rows.len() as i64, hot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wide_layout_is_the_seeds_table_value_for_value() {
    let stack = support::stack_with("wide", |s| s.store.layout = MetricsLayout::Wide).await;

    let sent = stack.simulate(100, 3).await;
    let report = stack.collect().await;
    assert_eq!(report.rows, 900);
    let db = stack.db().await;
    assert_eq!(
        relkind(&db, "iot_metrics").await.as_deref(),
        partitioned_kind()
    );
    assert_eq!(relkind(&db, "iot_metrics_series").await, None);
    let mut indexes = texts(
        &db,
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'iot_metrics'",
        &[],
    )
    .await;
    indexes.sort();
    // create_hypertable adds its default `time DESC` index beside the IoT design's two.
    let mut expected = vec!["idx_device_time", "idx_location_metric"];
    if support::timescaledb() {
        expected.push("iot_metrics_time_idx");
    }
    assert_eq!(indexes, expected);

    assert_stored_as_sent(&db, &[&sent]).await;

    // The hourly relation answers like the IoT pipeline design's aggregate over the wide
    // table too.
    let from_view = "SELECT device_id, metric_name, sample_count, min_value, max_value
                     FROM iot_metrics_hourly ORDER BY bucket, device_id, location, metric_name";
    let from_raw = "SELECT device_id, metric_name, count(*), min(value), max(value) FROM iot_metrics
                    GROUP BY time_bucket('1 hour', time), device_id, location, metric_name ORDER BY time_bucket('1 hour', time), device_id, location, metric_name";
    let client = &db;
    let summary = |sql: &'static str| async move {
        query(client, sql)
            .await
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect::<Vec<(String, String, i64, f64, f64)>>()
    };
    assert_eq!(summary(from_view).await, summary(from_raw).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_layout_is_never_written_over_the_other() {
    let db_url = support::fresh_database("switch").await;
    let mut settings = support::settings("nats://127.0.0.1:1", &db_url);
    let mut client = support::db(&db_url).await;
    schema::migrate(&mut client, &settings.store)
        .await
        .expect("series layout");

    settings.store.layout = MetricsLayout::Wide;
    let refused = schema::migrate(&mut client, &settings.store)
        .await
        .expect_err("wide over series is refused");
    assert!(refused.to_string().contains("layout: series"), "{refused}");

    settings.store.metrics_table = "plain_metrics".into();
    schema::migrate(&mut client, &settings.store)
        .await
        .expect("a wide table of another name");
    settings.store.layout = MetricsLayout::Series;
    let refused = schema::migrate(&mut client, &settings.store)
        .await
        .expect_err("series over wide is refused");
    assert!(refused.to_string().contains("layout: wide"), "{refused}");
}
