//! The tables and views every backend has: bookkeeping (ledger, dead letters, rollup state),
//! the metrics storage in either layout, the other signals' tables, and the IoT design's names.

use super::{Backend, RelationNames};
use crate::config::MetricsLayout;
use crate::exporters::postgres::batch::Table;

/// Tables every backend needs: delivery ledger, dead letters, bookkeeping.
pub(super) fn bookkeeping_sql(n: &RelationNames) -> String {
    let streams = n.own("jetscale_streams");
    let ledger = n.own("jetscale_ledger");
    let dead_table = n
        .dead_letters
        .rsplit('.')
        .next()
        .unwrap_or("dl")
        .trim_matches('"');
    let dead_idx = format!("\"{dead_table}_received_at\"");
    format!(
        r#"
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE TABLE IF NOT EXISTS {schema_t} (
    component  TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    backend    TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {streams} (
    stream_key     SERIAL PRIMARY KEY,
    stream_name    TEXT NOT NULL,
    stream_created TIMESTAMPTZ NOT NULL,
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream_name, stream_created)
);
CREATE TABLE IF NOT EXISTS {ledger} (
    stream_key   INTEGER NOT NULL REFERENCES {streams} (stream_key) ON DELETE CASCADE,
    seqs         INT8RANGE NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT jetscale_ledger_no_overlap EXCLUDE USING gist (stream_key WITH =, seqs WITH &&)
);
CREATE TABLE IF NOT EXISTS {consumers} (
    stream_key INTEGER NOT NULL REFERENCES {streams} (stream_key) ON DELETE CASCADE,
    consumer   TEXT NOT NULL,
    ack_floor  BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_key, consumer)
);
CREATE TABLE IF NOT EXISTS {dead} (
    id           BIGSERIAL PRIMARY KEY,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    stream       TEXT NOT NULL,
    stream_seq   BIGINT NOT NULL,
    subject      TEXT NOT NULL,
    headers      JSONB,
    reason       TEXT NOT NULL,
    payload      BYTEA,
    payload_size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {dead_idx} ON {dead} (received_at);
CREATE TABLE IF NOT EXISTS {rollup_state} (
    relation     TEXT PRIMARY KEY,
    watermark    TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    refreshed_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS {invalidations} (
    relation TEXT NOT NULL,
    bucket   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (relation, bucket)
);
"#,
        schema_t = n.own("jetscale_schema"),
        consumers = n.own("jetscale_consumers"),
        dead = n.dead_letters,
        dead_idx = dead_idx,
        rollup_state = n.own("jetscale_rollup_state"),
        invalidations = n.own("jetscale_rollup_invalidations"),
    )
}

/// The IoT design's `iot_metrics` columns plus `attributes`, and its two indexes. `partition_clause`
/// makes it a partitioned table; `after_create` runs before the indexes (create_hypertable).
fn metrics_table_sql(n: &RelationNames, partition_clause: &str, after_create: &str) -> String {
    format!(
        r#"
CREATE TABLE IF NOT EXISTS {metrics} (
    time        TIMESTAMPTZ NOT NULL,
    device_id   TEXT NOT NULL,
    location    TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    unit        TEXT,
    attributes  JSONB NOT NULL DEFAULT '{{}}'
){partition_clause};
{after_create}
CREATE INDEX IF NOT EXISTS {idx_device} ON {metrics} (device_id, time DESC);
CREATE INDEX IF NOT EXISTS {idx_location} ON {metrics} (location, metric_name, time DESC);
"#,
        metrics = n.metrics,
        idx_device = n.index("idx_device_time", "device_time"),
        idx_location = n.index("idx_location_metric", "location_metric"),
    )
}

/// Where metric points are stored. Wide: the IoT design's table. Series: a narrow points table
/// with one `(series_id, time)` index, the series table (B-tree indexes on device and on
/// metric and location: hash indexes were measured 2.5x slower to insert into as the table
/// grows, which a fleet coming online pays for every series), and the IoT design's
/// columns as a view, so the IoT design's SQL runs verbatim. `after_create` runs after the points
/// (or wide) table is created and before its indexes (create_hypertable). Without
/// `index_points_on_insert` the points table has no index of its own: each partition gets one
/// when it closes (`jetscale_index_closed_points`).
pub(super) fn metrics_storage_sql(
    n: &RelationNames,
    partition_clause: &str,
    after_create: &str,
    index_points_on_insert: bool,
) -> String {
    if n.layout == MetricsLayout::Wide {
        return metrics_table_sql(n, partition_clause, after_create);
    }
    let idx = |suffix: &str| format!("\"{}_{suffix}\"", n.table);
    let points_index = if index_points_on_insert {
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} (series_id, time DESC);",
            idx("points_series_time"),
            n.points
        )
    } else {
        String::new()
    };
    format!(
        r#"
CREATE TABLE IF NOT EXISTS {series} (
    series_id   BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    series_key  UUID NOT NULL UNIQUE,
    device_id   TEXT NOT NULL,
    location    TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    unit        TEXT,
    attributes  JSONB NOT NULL DEFAULT '{{}}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {series_device} ON {series} (device_id);
CREATE INDEX IF NOT EXISTS {series_metric} ON {series} (metric_name, location);
CREATE TABLE IF NOT EXISTS {points} (
    time      TIMESTAMPTZ NOT NULL,
    series_id BIGINT NOT NULL,
    value     DOUBLE PRECISION NOT NULL
){partition_clause};
{after_create}
{points_index}
CREATE OR REPLACE VIEW {metrics} AS
SELECT p.time, s.device_id, s.location, s.metric_name, p.value, s.unit, s.attributes
FROM {points} p JOIN {series} s ON s.series_id = p.series_id;
"#,
        series = n.series,
        points = n.points,
        metrics = n.metrics,
        series_device = idx("series_device"),
        series_metric = idx("series_metric"),
    )
}

/// Tables for the other signals: distribution points, spans, logs. Partitioned by time like
/// the metrics table (hypertables on TimescaleDB), with the indexes users' queries need: a
/// trace by id, a service's errors in a window, a device's or service's metric over time.
pub(super) fn signal_tables_sql(n: &RelationNames, backend: &Backend) -> String {
    let partition = if backend.native_partitions() {
        " PARTITION BY RANGE (time)"
    } else {
        ""
    };
    let idx = |table: Table, suffix: &str| format!("\"{}_{suffix}\"", n.plain(table));
    format!(
        r#"
CREATE TABLE IF NOT EXISTS {dist} (
    time        TIMESTAMPTZ NOT NULL,
    start_time  TIMESTAMPTZ,
    device_id   TEXT NOT NULL,
    location    TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    unit        TEXT,
    kind        TEXT NOT NULL,
    temporality TEXT NOT NULL,
    count       BIGINT NOT NULL,
    sum         DOUBLE PRECISION,
    min         DOUBLE PRECISION,
    max         DOUBLE PRECISION,
    buckets     JSONB NOT NULL,
    attributes  JSONB NOT NULL DEFAULT '{{}}'
){partition};
CREATE INDEX IF NOT EXISTS {dist_source} ON {dist} (device_id, metric_name, time DESC);
CREATE INDEX IF NOT EXISTS {dist_name} ON {dist} (metric_name, time DESC);
CREATE TABLE IF NOT EXISTS {spans} (
    time           TIMESTAMPTZ NOT NULL,
    end_time       TIMESTAMPTZ NOT NULL,
    trace_id       TEXT NOT NULL,
    span_id        TEXT NOT NULL,
    parent_span_id TEXT,
    name           TEXT NOT NULL,
    service        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    status_code    TEXT NOT NULL,
    status_message TEXT,
    trace_state    TEXT,
    duration_ms    DOUBLE PRECISION NOT NULL,
    attributes     JSONB NOT NULL DEFAULT '{{}}',
    resource       JSONB NOT NULL DEFAULT '{{}}',
    events         JSONB NOT NULL DEFAULT '[]',
    links          JSONB NOT NULL DEFAULT '[]',
    error          TEXT
){partition};
CREATE UNIQUE INDEX IF NOT EXISTS {spans_id} ON {spans} (trace_id, span_id, time);
CREATE INDEX IF NOT EXISTS {spans_service} ON {spans} (service, time DESC);
CREATE INDEX IF NOT EXISTS {spans_errors} ON {spans} (service, time DESC) WHERE status_code = 'error' OR error <> '';
CREATE TABLE IF NOT EXISTS {logs} (
    time            TIMESTAMPTZ NOT NULL,
    observed_time   TIMESTAMPTZ,
    service         TEXT NOT NULL,
    severity_number INTEGER NOT NULL,
    severity_text   TEXT,
    message         TEXT NOT NULL,
    body            JSONB,
    attributes      JSONB NOT NULL DEFAULT '{{}}',
    resource        JSONB NOT NULL DEFAULT '{{}}',
    trace_id        TEXT,
    span_id         TEXT,
    flags           INTEGER NOT NULL DEFAULT 0,
    error           TEXT
){partition};
CREATE INDEX IF NOT EXISTS {logs_service} ON {logs} (service, time DESC);
CREATE INDEX IF NOT EXISTS {logs_errors} ON {logs} (service, time DESC) WHERE severity_number >= 17;
CREATE INDEX IF NOT EXISTS {logs_trace} ON {logs} (trace_id) WHERE trace_id IS NOT NULL;
"#,
        dist = n.distributions,
        spans = n.spans,
        logs = n.logs,
        dist_source = idx(Table::Distributions, "source_time"),
        dist_name = idx(Table::Distributions, "name_time"),
        spans_id = idx(Table::Spans, "id"),
        spans_service = idx(Table::Spans, "service_time"),
        spans_errors = idx(Table::Spans, "errors"),
        logs_service = idx(Table::Logs, "service_time"),
        logs_errors = idx(Table::Logs, "errors"),
        logs_trace = idx(Table::Logs, "trace"),
    )
}

/// The IoT design's config writes `otel_metrics`, its schema and query read `iot_metrics`: when the
/// configured table is not `iot_metrics`, the IoT design's names become views of it (if free), so
/// the IoT design's SQL runs verbatim either way. Native PostgreSQL also gets `time_bucket`.
pub(super) fn seed_aliases_sql(n: &RelationNames) -> String {
    let mut sql = String::new();
    if n.table != "iot_metrics" {
        for (alias, target) in [
            ("iot_metrics", &n.metrics),
            ("iot_metrics_hourly", &n.hourly),
        ] {
            sql.push_str(&format!(
                "DO $do$ BEGIN
                   IF to_regclass('{s}.{alias}') IS NULL THEN
                     EXECUTE 'CREATE VIEW {s}.{alias} AS SELECT * FROM {target}';
                   END IF;
                 END $do$;\n",
                s = n.schema.replace('\'', "''"),
                target = target.replace('\'', "''"),
            ));
        }
    }
    sql.push_str(&format!(
        "DO $do$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'time_bucket') THEN
             EXECUTE 'CREATE FUNCTION {s}.time_bucket(bucket_width INTERVAL, ts TIMESTAMPTZ) RETURNS TIMESTAMPTZ
                      LANGUAGE sql IMMUTABLE PARALLEL SAFE
                      AS ''SELECT date_bin(bucket_width, ts, TIMESTAMPTZ ''''2000-01-03 00:00:00+00'''')''';
           END IF;
         END $do$;\n",
        s = n.schema.replace('\'', "''"),
    ));
    sql
}
