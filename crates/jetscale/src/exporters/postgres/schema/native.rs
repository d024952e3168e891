//! The native PostgreSQL side of the schema: range-partitioned tables and the functions that
//! create, drop and index their partitions, and the hourly rollup jetscale maintains itself
//! where there is no continuous aggregate.

use super::tables::metrics_storage_sql;
use super::RelationNames;
use crate::config::{MetricsLayout, StoreSettings};
use crate::exporters::postgres::batch::Table;

/// The metrics table as a partitioned table, and the functions that manage its partitions.
pub(super) fn native_sql(n: &RelationNames, s: &StoreSettings) -> String {
    let schema_plain = n.schema.trim_matches('"');
    format!(
        r#"
{metrics_table}

-- Creates the missing partitions of a jetscale table between two aligned times. SECURITY
-- DEFINER so a collector role that may only insert can still have partitions made.
CREATE OR REPLACE FUNCTION {s}.jetscale_ensure_partitions(p_table TEXT, p_from TIMESTAMPTZ, p_to TIMESTAMPTZ, p_width INTERVAL)
RETURNS INTEGER LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog SET "TimeZone" = 'UTC' AS $fn$
DECLARE
    t TIMESTAMPTZ := p_from;
    part TEXT;
    created INTEGER := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {schema_t} WHERE component = p_table) THEN
        RAISE EXCEPTION 'jetscale_ensure_partitions: % is not a jetscale table', p_table;
    END IF;
    IF p_width < INTERVAL '1 minute' OR p_to - p_from > p_width * 10000 THEN
        RAISE EXCEPTION 'jetscale_ensure_partitions: refusing % partitions of %', (p_to - p_from) / p_width, p_width;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('jetscale.partitions.' || p_table));
    WHILE t < p_to LOOP
        part := p_table || '_p' || to_char(t, 'YYYYMMDD_HH24MI');
        IF to_regclass(format('%I.%I', '{schema_plain}', part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                           '{schema_plain}', part, '{schema_plain}', p_table, t, t + p_width);
            created := created + 1;
        END IF;
        t := t + p_width;
    END LOOP;
    RETURN created;
END
$fn$;

-- Drops partitions wholly older than the cutoff: retention without DELETE.
CREATE OR REPLACE FUNCTION {s}.jetscale_drop_partitions(p_table TEXT, p_older_than TIMESTAMPTZ)
RETURNS INTEGER LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog SET "TimeZone" = 'UTC' AS $fn$
DECLARE
    child RECORD;
    upper_bound TIMESTAMPTZ;
    dropped INTEGER := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {schema_t} WHERE component = p_table) THEN
        RAISE EXCEPTION 'jetscale_drop_partitions: % is not a jetscale table', p_table;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('jetscale.partitions.' || p_table));
{each_partition}
        IF upper_bound IS NOT NULL AND upper_bound <= p_older_than THEN
            EXECUTE format('DROP TABLE %s', child.rel);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$fn$;
INSERT INTO {rollup_state} (relation) VALUES ('{table}') ON CONFLICT DO NOTHING;
{index_closed}
"#,
        metrics_table =
            metrics_storage_sql(n, " PARTITION BY RANGE (time)", "", s.index_open_partitions),
        s = n.schema,
        table = n.table,
        schema_t = n.own("jetscale_schema"),
        rollup_state = n.own("jetscale_rollup_state"),
        each_partition = each_partition(
            &format!("format('%I.%I', '{schema_plain}', p_table)::regclass"),
            ""
        ),
        index_closed = if n.layout == MetricsLayout::Series {
            index_closed_points_sql(n)
        } else {
            String::new()
        },
    )
}

/// The function that gives each closed partition of the points table its `(series_id, time
/// DESC)` index. An open partition takes rows without index maintenance (a B-tree insert per
/// row was two thirds of PostgreSQL's cost per row: BENCHMARKS.md run H); once it has closed,
/// one `CREATE INDEX` builds the index by sorting, about a third of what the inserts cost.
/// Partitions that already have an index (all of them while the parent has one) are skipped.
/// SECURITY DEFINER, the points table fixed in the body, so an insert-only role can run it.
fn index_closed_points_sql(n: &RelationNames) -> String {
    format!(
        r#"
CREATE OR REPLACE FUNCTION {s}.jetscale_index_closed_points(p_closed_before TIMESTAMPTZ, p_limit INTEGER)
RETURNS INTEGER LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog SET "TimeZone" = 'UTC' AS $fn$
DECLARE
    child RECORD;
    upper_bound TIMESTAMPTZ;
    indexed INTEGER := 0;
BEGIN
    -- One collector builds at a time; the others skip the round rather than queue behind it.
    IF NOT pg_try_advisory_xact_lock(hashtext('jetscale.index.' || '{points_plain}')) THEN
        RETURN 0;
    END IF;
{each_partition}
        EXIT WHEN indexed >= p_limit;
        IF upper_bound IS NOT NULL AND upper_bound <= p_closed_before THEN
            EXECUTE format('CREATE INDEX ON %s (series_id, time DESC)', child.rel);
            indexed := indexed + 1;
        END IF;
    END LOOP;
    RETURN indexed;
END
$fn$;
"#,
        s = n.schema,
        points_plain = n.plain(Table::Metrics),
        each_partition = each_partition(
            &format!("'{}'::regclass", n.points),
            "\n          AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid)\n        ORDER BY c.relname DESC"
        ),
    )
}

/// The head of a plpgsql loop over the partitions of `parent` (a `regclass` expression),
/// narrowed by `more` (SQL after the WHERE clause), each as `child.rel` with the end of its
/// range in `upper_bound` (NULL for a partition without one).
fn each_partition(parent: &str, more: &str) -> String {
    format!(
        r#"    FOR child IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = {parent}{more}
    LOOP
        upper_bound := substring(child.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;"#
    )
}

/// The hourly rollup maintained by jetscale (plain PostgreSQL, or TimescaleDB without TSL):
/// closed hours are materialized into `_hourly_data` (sum, min, max, count) by
/// `jetscale_refresh_rollup`, and a row committed into an hour below the watermark records
/// that hour in `jetscale_rollup_invalidations` in the same transaction. The `_hourly` view
/// reads materialized hours that no invalidation names, and aggregates live from raw rows the
/// hours at or above the watermark plus the invalidated ones, so at any snapshot it equals
/// the aggregate of the raw rows: a backfill is visible the moment it commits, not at the
/// next refresh. The invalidation table is empty between refreshes unless late rows came, so
/// the extra cost is an anti-join against an empty table; each invalidated hour costs a
/// range scan of its raw rows until the next refresh materializes it.
pub(super) fn native_rollup_sql(n: &RelationNames) -> String {
    let schema_plain = n.schema.trim_matches('"');
    let watermark = format!(
        "(SELECT watermark FROM {} WHERE relation = '{}')",
        n.own("jetscale_rollup_state"),
        n.table
    );
    // The raw rows the view aggregates live: open hours, then invalidated ones, one range
    // scan per invalidated hour. The lateral subquery's `OFFSET 0` keeps the planner from
    // flattening it into a join it may drive from the raw side: that plan read every raw
    // row, invalidations or not (7x the dashboard query's cost on 48 hours of rows), where
    // this one reads none while the invalidation table is empty, and prunes partitions per
    // invalidated hour.
    let live_rows = |columns: &str, raw: &str| {
        format!(
            "SELECT {columns} FROM {raw} r WHERE r.time >= {watermark}
      UNION ALL
      SELECT {columns} FROM {inv} i
      CROSS JOIN LATERAL (SELECT * FROM {raw} x
                          WHERE x.time >= i.bucket AND x.time < i.bucket + INTERVAL '1 hour' OFFSET 0) r
      WHERE i.relation = '{table}' AND i.bucket < {watermark}",
            inv = n.own("jetscale_rollup_invalidations"),
            table = n.table,
        )
    };
    let live_hours = match n.layout {
        MetricsLayout::Wide => format!(
            "SELECT date_bin('1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, device_id, location, metric_name,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS sample_count
FROM ({rows}) live
GROUP BY 1, 2, 3, 4",
            rows = live_rows("r.time, r.device_id, r.location, r.metric_name, r.value", &n.metrics),
        ),
        // Summed per series first, then regrouped: one join per series and hour, not per point.
        MetricsLayout::Series => format!(
            "SELECT a.bucket, s.device_id, s.location, s.metric_name,
       sum(a.sum_value) / sum(a.sample_count) AS avg_value, min(a.min_value) AS min_value,
       max(a.max_value) AS max_value, sum(a.sample_count)::bigint AS sample_count
FROM (SELECT date_bin('1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, series_id,
             sum(value) AS sum_value, min(value) AS min_value, max(value) AS max_value, count(*) AS sample_count
      FROM ({rows}) live
      GROUP BY 1, 2) a
JOIN {series} s ON s.series_id = a.series_id
GROUP BY 1, 2, 3, 4",
            rows = live_rows("r.time, r.series_id, r.value", &n.points),
            series = n.series,
        ),
    };
    format!(
        r#"
CREATE TABLE IF NOT EXISTS {data} (
    bucket       TIMESTAMPTZ NOT NULL,
    device_id    TEXT NOT NULL,
    location     TEXT NOT NULL,
    metric_name  TEXT NOT NULL,
    sum_value    DOUBLE PRECISION NOT NULL,
    min_value    DOUBLE PRECISION NOT NULL,
    max_value    DOUBLE PRECISION NOT NULL,
    sample_count BIGINT NOT NULL,
    PRIMARY KEY (bucket, device_id, location, metric_name)
);
INSERT INTO {rollup_state} (relation) VALUES ('{table}') ON CONFLICT DO NOTHING;
CREATE OR REPLACE VIEW {hourly} AS
SELECT d.bucket, d.device_id, d.location, d.metric_name,
       d.sum_value / d.sample_count AS avg_value, d.min_value, d.max_value, d.sample_count
FROM {data} d
WHERE d.bucket < {watermark}
  AND NOT EXISTS (SELECT 1 FROM {invalidations} i WHERE i.relation = '{table}' AND i.bucket = d.bucket)
UNION ALL
{live_hours};

-- Materializes the hours closed since the last run and recomputes invalidated ones. Takes
-- the rollup lock exclusively: writers hold it shared, so no row can commit into an hour
-- between its materialization and the watermark moving past it.
CREATE OR REPLACE FUNCTION {s}.jetscale_refresh_rollup(p_table TEXT)
RETURNS INTEGER LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog SET "TimeZone" = 'UTC' AS $fn$
DECLARE
    old_wm TIMESTAMPTZ;
    new_wm TIMESTAMPTZ := date_bin('1 hour', now(), TIMESTAMPTZ '2000-01-03 00:00:00+00');
    b TIMESTAMPTZ;
    refreshed INTEGER := 0;
    series_layout BOOLEAN := to_regclass(format('%I.%I', '{schema_plain}', p_table || '_points')) IS NOT NULL
                             AND to_regclass(format('%I.%I', '{schema_plain}', p_table || '_series')) IS NOT NULL;
    raw_table TEXT := CASE WHEN series_layout THEN p_table || '_points' ELSE p_table END;
    agg TEXT := CASE WHEN series_layout THEN
                  format('SELECT a.b, s.device_id, s.location, s.metric_name, sum(a.sv), min(a.mn), max(a.mx), sum(a.c) '
                      || 'FROM (SELECT date_bin(''1 hour'', time, TIMESTAMPTZ ''2000-01-03 00:00:00+00'') AS b, series_id, '
                      || 'sum(value) AS sv, min(value) AS mn, max(value) AS mx, count(*) AS c FROM %1$I.%2$I '
                      || 'WHERE time >= $1 AND time < $2 GROUP BY 1, 2) a JOIN %1$I.%3$I s ON s.series_id = a.series_id '
                      || 'GROUP BY 1, 2, 3, 4', '{schema_plain}', p_table || '_points', p_table || '_series')
                ELSE
                  format('SELECT date_bin(''1 hour'', time, TIMESTAMPTZ ''2000-01-03 00:00:00+00''), device_id, location, metric_name, '
                      || 'sum(value), min(value), max(value), count(*) FROM %I.%I WHERE time >= $1 AND time < $2 GROUP BY 1, 2, 3, 4',
                         '{schema_plain}', p_table)
                END;
    upsert TEXT := ' ON CONFLICT (bucket, device_id, location, metric_name) DO UPDATE SET sum_value = EXCLUDED.sum_value, '
             || 'min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value, sample_count = EXCLUDED.sample_count';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {schema_t} WHERE component = p_table) THEN
        RAISE EXCEPTION 'jetscale_refresh_rollup: % is not a jetscale table', p_table;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('jetscale.rollup.' || p_table));
    SELECT watermark INTO old_wm FROM {rollup_state} WHERE relation = p_table FOR UPDATE;
    IF old_wm IS NULL THEN
        RETURN 0;
    END IF;
    IF old_wm = '-infinity' THEN
        EXECUTE format('SELECT date_bin(''1 hour'', min(time), TIMESTAMPTZ ''2000-01-03 00:00:00+00'') FROM %I.%I', '{schema_plain}', raw_table) INTO old_wm;
        old_wm := coalesce(least(old_wm, new_wm), new_wm);
    END IF;
    IF new_wm > old_wm THEN
        EXECUTE format('INSERT INTO %I.%I ', '{schema_plain}', p_table || '_hourly_data') || agg || upsert
            USING old_wm, new_wm;
        refreshed := refreshed + (extract(epoch FROM new_wm - old_wm) / 3600)::INTEGER;
    END IF;
    FOR b IN DELETE FROM {invalidations} WHERE relation = p_table AND bucket < old_wm RETURNING bucket LOOP
        EXECUTE format('DELETE FROM %I.%I WHERE bucket = $1', '{schema_plain}', p_table || '_hourly_data') USING b;
        EXECUTE format('INSERT INTO %I.%I ', '{schema_plain}', p_table || '_hourly_data') || agg || upsert
            USING b, b + INTERVAL '1 hour';
        refreshed := refreshed + 1;
    END LOOP;
    UPDATE {rollup_state} SET watermark = greatest(old_wm, new_wm), refreshed_at = now() WHERE relation = p_table;
    RETURN refreshed;
END
$fn$;
"#,
        data = n.hourly_data,
        hourly = n.hourly,
        table = n.table,
        s = n.schema,
        schema_t = n.own("jetscale_schema"),
        rollup_state = n.own("jetscale_rollup_state"),
        invalidations = n.own("jetscale_rollup_invalidations"),
    )
}
