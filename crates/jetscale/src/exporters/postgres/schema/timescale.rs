//! The TimescaleDB side of the schema: hypertables, the continuous aggregate behind the
//! IoT design's `_hourly` relation, retention and compression (columnstore) policies, with the
//! calls the installed version supports.

use super::tables::metrics_storage_sql;
use super::{interval, Backend, RelationNames};
use crate::config::units::format_duration;
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
    sql.push_str(&columnstore_sql(
        n,
        Table::Metrics,
        s,
        backend,
        backend.direct_compress(),
    ));
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
        if COMPRESSED.contains(&table) {
            sql.push_str(&columnstore_sql(n, table, s, backend, false));
        }
    }
    sql
}

/// The tables a compression (columnstore) policy covers: the bulk of an IoT fleet's data.
pub(super) const COMPRESSED: [Table; 3] = [Table::Metrics, Table::Spans, Table::Logs];

/// The age after which chunks are compressed, when this backend compresses at all: the
/// setting is on, earlier than the retention (the default, `max_past` plus a chunk, is not
/// when `max_past` is the retention), and TimescaleDB has its TSL features (an Apache-only
/// build has no compression).
pub(super) fn compression(s: &StoreSettings, backend: &Backend) -> Option<Duration> {
    match backend {
        Backend::Timescale {
            apache_only: false, ..
        } => s.compress_after.filter(|after| *after < s.retention),
        _ => None,
    }
}

/// What `jetscale setup` says about compression on TimescaleDB.
pub(super) fn compression_note(n: &RelationNames, s: &StoreSettings, backend: &Backend) -> String {
    let tables = COMPRESSED
        .iter()
        .map(|t| n.quoted(*t))
        .collect::<Vec<_>>()
        .join(", ");
    match (backend, compression(s, backend)) {
        (Backend::Timescale { apache_only: true, .. }, _) => format!(
            "no compression: this TimescaleDB is the Apache-licensed build (timescaledb.license = 'apache'), which has no columnstore; {tables} stay row-store (install the Timescale License build to compress them)"
        ),
        (_, None) => match s.compress_after {
            Some(after) => format!(
                "no compression: compress_after ({}, by default limits.max_past plus one chunk interval) is not shorter than the retention ({}), so chunks would be dropped before they are compressed; set limits.max_past below the retention (e.g. 1d) or exporters.postgresql.compress_after between the two",
                format_duration(after),
                format_duration(s.retention)
            ),
            None => format!(
                "compression is off (exporters.postgresql.compress_after: off): {tables} stay row-store"
            ),
        },
        (_, Some(after)) => format!(
            "chunks of {tables} older than {} are compressed into the columnstore (segment by {}, order by time DESC); late rows still land in them",
            format_duration(after),
            [Table::Metrics, Table::Spans, Table::Logs]
                .iter()
                .map(|t| format!("{} for {}", segment_by(n, *t), n.plain(*t)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The column compressed batches are grouped by, per table: the key this project's queries
/// filter on, so a query reads the batches of its series, device or service only, each
/// ordered by time like the uncompressed `(key, time DESC)` indexes.
fn segment_by(n: &RelationNames, table: Table) -> &'static str {
    match (table, n.layout) {
        // The anomaly query and the rollup read a metric's series over a time window.
        (Table::Metrics, MetricsLayout::Series) => "series_id",
        (Table::Metrics, MetricsLayout::Wide) => "device_id, metric_name",
        // A service's spans or logs in a window (the `(service, time DESC)` indexes).
        (Table::Spans | Table::Logs, _) => "service",
        (Table::Distributions, _) => "device_id, metric_name",
    }
}

/// Compression settings for `table`, and its policy (replaced, so a changed `compress_after`
/// takes effect; removed when compression is off), with the columnstore names from 2.18 on
/// and the `compress` ones before. The settings are set only while the table has none:
/// TimescaleDB refuses to change them once chunks are compressed, and a second `setup` must
/// not fail on that.
fn columnstore_sql(
    n: &RelationNames,
    table: Table,
    s: &StoreSettings,
    backend: &Backend,
    direct_compress: bool,
) -> String {
    let Backend::Timescale {
        major,
        minor,
        apache_only: false,
        ..
    } = backend
    else {
        return String::new();
    };
    let after = compression(s, backend);
    let columnstore = (*major, *minor) >= (2, 18);
    let (relation, name) = (n.quoted(table), literal(n.quoted(table)));
    let segment = segment_by(n, table);
    let set = if columnstore {
        format!("ALTER TABLE {relation} SET (timescaledb.enable_columnstore = true, timescaledb.segmentby = '{segment}', timescaledb.orderby = 'time DESC')")
    } else {
        format!("ALTER TABLE {relation} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment}', timescaledb.compress_orderby = 'time DESC')")
    };
    let mut sql = String::new();
    if after.is_some() || direct_compress {
        sql.push_str(&format!(
            r#"DO $jetscale$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                 WHERE format('%I.%I', hypertable_schema, hypertable_name)::regclass = '{name}'::regclass
                   AND compression_enabled) THEN
    EXECUTE $ddl${set}$ddl$;
  END IF;
END $jetscale$;
"#
        ));
    }
    if columnstore {
        sql.push_str(&format!(
            "CALL remove_columnstore_policy('{name}', if_exists => true);\n"
        ));
    } else {
        sql.push_str(&format!(
            "SELECT remove_compression_policy('{name}', if_exists => true);\n"
        ));
    }
    if let Some(after) = after {
        let after = interval(after);
        if columnstore {
            sql.push_str(&format!(
                "CALL add_columnstore_policy('{name}', after => INTERVAL '{after}');\n"
            ));
        } else {
            sql.push_str(&format!(
                "SELECT add_compression_policy('{name}', compress_after => INTERVAL '{after}');\n"
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Overrides};

    fn store(compress_after: Option<Duration>) -> StoreSettings {
        let mut s = config::defaults(&Overrides::default())
            .expect("defaults")
            .store;
        s.compress_after = compress_after;
        s
    }

    fn timescale(minor: u32, apache_only: bool) -> Backend {
        Backend::Timescale {
            major: 2,
            minor,
            apache_only,
            direct_compress: false,
        }
    }

    /// The columnstore names from 2.18, the `compress` ones before, nothing on the Apache
    /// build; a policy only when compression is on.
    #[test]
    fn compression_calls_follow_the_version_and_license() {
        let s = store(Some(Duration::from_secs(2 * 86_400)));
        let n = RelationNames::new(&s);
        let new = columnstore_sql(&n, Table::Spans, &s, &timescale(28, false), false);
        assert!(
            new.contains("timescaledb.enable_columnstore = true"),
            "{new}"
        );
        assert!(new.contains("timescaledb.segmentby = 'service'"), "{new}");
        assert!(
            new.contains("add_columnstore_policy('\"public\".\"telemetry_spans\"', after => INTERVAL '172800 seconds')"),
            "{new}"
        );
        let old = columnstore_sql(&n, Table::Metrics, &s, &timescale(17, false), false);
        assert!(
            old.contains("timescaledb.compress_segmentby = 'series_id'"),
            "{old}"
        );
        assert!(old.contains("add_compression_policy("), "{old}");
        assert!(!old.contains("columnstore"), "{old}");
        assert_eq!(
            columnstore_sql(&n, Table::Logs, &s, &timescale(28, true), false),
            ""
        );
        let note = compression_note(&n, &s, &timescale(28, true));
        assert!(note.contains("Apache"), "{note}");

        // Off: the policy is removed and none added.
        let off = store(None);
        let sql = columnstore_sql(&n, Table::Logs, &off, &timescale(28, false), false);
        assert!(sql.contains("remove_columnstore_policy"), "{sql}");
        assert!(!sql.contains("add_columnstore_policy"), "{sql}");
        assert!(!sql.contains("ALTER TABLE"), "{sql}");
    }

    /// The default (`max_past` = retention, plus a chunk) reaches past the retention: no
    /// policy, and the note says what to change.
    #[test]
    fn the_default_age_past_the_retention_compresses_nothing() {
        let s = config::defaults(&Overrides::default())
            .expect("defaults")
            .store;
        let backend = timescale(28, false);
        assert!(s.compress_after.is_some_and(|a| a >= s.retention));
        assert_eq!(compression(&s, &backend), None);
        let note = compression_note(&RelationNames::new(&s), &s, &backend);
        assert!(note.contains("limits.max_past"), "{note}");
    }
}
