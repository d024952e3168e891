//! The TimescaleDB side of the schema: hypertables, the continuous aggregate behind the
//! IoT design's `_hourly` relation, and retention policies, with the calls the installed version
//! supports.

use super::tables::metrics_storage_sql;
use super::{interval, Backend, RelationNames};
use crate::config::{MetricsLayout, StoreSettings};
use crate::exporters::postgres::batch::Table;
use std::time::Duration;

/// The IoT design's schema for TimescaleDB, with the calls its version supports.
pub(super) fn timescale_sql(
    n: &RelationNames,
    s: &StoreSettings,
    backend: &Backend,
    major: u32,
    minor: u32,
) -> String {
    let v213 = (major, minor) >= (2, 13);
    // A hypertable's indexes are made on every chunk as it is created.
    let mut sql = metrics_storage_sql(
        n,
        "",
        &hypertable_sql(n.quoted(Table::Metrics), s, major, minor),
        true,
    );
    if backend.direct_compress() {
        // Compressed batches segmented by series and ordered by time: what the
        // `(series_id, time)` index gives uncompressed chunks.
        let segment = match n.layout {
            MetricsLayout::Series => "series_id",
            MetricsLayout::Wide => "device_id",
        };
        sql.push_str(&format!(
            "ALTER TABLE {} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment}', timescaledb.compress_orderby = 'time DESC');\n",
            n.quoted(Table::Metrics)
        ));
    }
    if backend.continuous_aggregate() {
        let aggregate = match n.layout {
            MetricsLayout::Wide => {
                sql.push_str(&continuous_aggregate_sql(
                    &n.hourly,
                    &n.metrics,
                    "device_id, location, metric_name",
                    "avg",
                    v213,
                ));
                &n.hourly
            }
            // A continuous aggregate reads one hypertable: it sums per series, and the
            // IoT design's `_hourly` relation is a view regrouping those sums by device, location
            // and metric.
            MetricsLayout::Series => {
                sql.push_str(&continuous_aggregate_sql(
                    &n.points_hourly,
                    &n.points,
                    "series_id",
                    "sum",
                    v213,
                ));
                sql.push_str(&format!(
                    r#"
CREATE OR REPLACE VIEW {hourly} AS
SELECT h.bucket, s.device_id, s.location, s.metric_name,
       sum(h.sum_value) / sum(h.sample_count) AS avg_value, min(h.min_value) AS min_value,
       max(h.max_value) AS max_value, sum(h.sample_count)::bigint AS sample_count
FROM {points_hourly} h JOIN {series} s ON s.series_id = h.series_id
GROUP BY 1, 2, 3, 4;
"#,
                    points_hourly = n.points_hourly,
                    series = n.series,
                    hourly = n.hourly,
                ));
                &n.points_hourly
            }
        };
        // The refresh window must end before raw retention starts, or a refresh over dropped
        // raw data would empty the aggregate.
        let start_offset = (s.retention / 2).max(Duration::from_secs(2 * 3600));
        sql.push_str(&format!(
            "SELECT add_continuous_aggregate_policy('{}', start_offset => INTERVAL '{}', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);\n",
            literal(aggregate),
            interval(start_offset),
        ));
        sql.push_str(&retention_sql(aggregate, s.rollup_retention));
    }
    if !matches!(
        backend,
        Backend::Timescale {
            apache_only: true,
            ..
        }
    ) {
        sql.push_str(&retention_sql(n.quoted(Table::Metrics), s.retention));
    }
    sql
}

/// The other signals' tables as hypertables, with raw retention where the license has it.
pub(super) fn signal_hypertables_sql(
    n: &RelationNames,
    s: &StoreSettings,
    backend: &Backend,
) -> String {
    let Backend::Timescale {
        major,
        minor,
        apache_only,
        ..
    } = backend
    else {
        return String::new();
    };
    let mut sql = String::new();
    for table in [Table::Distributions, Table::Spans, Table::Logs] {
        sql.push_str(&hypertable_sql(n.quoted(table), s, *major, *minor));
        if !apache_only {
            sql.push_str(&retention_sql(n.quoted(table), s.retention));
        }
    }
    sql
}

/// `create_hypertable` on `time` in `chunk_interval` chunks (`by_range` from 2.13 on).
fn hypertable_sql(table: &str, s: &StoreSettings, major: u32, minor: u32) -> String {
    let (name, chunk) = (literal(table), interval(s.chunk_interval));
    if (major, minor) >= (2, 13) {
        format!("SELECT create_hypertable('{name}', by_range('time', INTERVAL '{chunk}'), if_not_exists => TRUE);\n")
    } else {
        format!("SELECT create_hypertable('{name}', 'time', chunk_time_interval => INTERVAL '{chunk}', if_not_exists => TRUE);\n")
    }
}

fn retention_sql(relation: &str, keep: Duration) -> String {
    format!(
        "SELECT add_retention_policy('{}', INTERVAL '{}', if_not_exists => TRUE);\n",
        literal(relation),
        interval(keep)
    )
}

/// An hourly continuous aggregate of `source` per `group`, with `first` (`avg` or `sum`) of
/// the values, their min, max and count. Since 2.13 continuous aggregates are
/// materialized-only by default; the IoT design's dashboards expect the current hour too, so
/// `realtime` turns that off.
fn continuous_aggregate_sql(
    view: &str,
    source: &str,
    group: &str,
    first: &str,
    realtime: bool,
) -> String {
    let mut sql = format!(
        r#"
CREATE MATERIALIZED VIEW IF NOT EXISTS {view}
WITH (timescaledb.continuous) AS
SELECT
    time_bucket('1 hour', time) AS bucket,
    {group},
    {first}(value) AS {first}_value,
    min(value) AS min_value,
    max(value) AS max_value,
    count(*) AS sample_count
FROM {source}
GROUP BY bucket, {group}
WITH NO DATA;
"#
    );
    if realtime {
        sql.push_str(&format!(
            "ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = false);\n"
        ));
    }
    sql
}

/// A quoted relation name as the inside of a SQL string literal (`regclass` arguments).
fn literal(relation: &str) -> String {
    relation.replace('\'', "''")
}
