//! Schema migrations: the seed's schema on TimescaleDB when the extension is there, and the
//! same relation names and columns on plain PostgreSQL (range partitions as chunks, an
//! incrementally maintained rollup as the continuous aggregate, partition drops as
//! retention). All DDL runs under an advisory lock so collectors starting together do not
//! race (timescaledb issue 4149), and every statement is idempotent.

use super::StoreError;
use crate::config::{MetricsLayout, StoreSettings};
use crate::exporters::postgres::batch::Table;
use std::time::Duration;
use tokio_postgres::Client;

/// Bumped when the jetscale-owned objects change shape.
pub const SCHEMA_VERSION: i32 = 3;
const MIGRATION_LOCK: i64 = 0x6a65_7473_6361_6c65; // "jetscale"

/// Which storage engine is behind the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Plain PostgreSQL: declarative partitioning and jetscale's own rollup and retention.
    Native,
    /// TimescaleDB `major.minor`; `apache_only` when built without the TSL features
    /// (no continuous aggregate policies, no retention jobs).
    Timescale {
        major: u32,
        minor: u32,
        apache_only: bool,
        /// `direct_compress` configured: COPY writes compressed batches (2.21+).
        direct_compress: bool,
    },
}

impl Backend {
    /// Whether the hourly rollup is a TimescaleDB continuous aggregate with a policy.
    pub fn continuous_aggregate(&self) -> bool {
        match self {
            Backend::Native => false,
            Backend::Timescale {
                major,
                minor,
                apache_only,
                direct_compress,
            } => {
                // Continuous aggregates see directly compressed COPYs from 2.24 on; before
                // that jetscale keeps the rollup itself.
                !apache_only && (!direct_compress || (*major, *minor) >= (2, 24))
            }
        }
    }
    /// Whether writers switch on `timescaledb.enable_direct_compress_copy`.
    pub fn direct_compress(&self) -> bool {
        matches!(
            self,
            Backend::Timescale {
                direct_compress: true,
                ..
            }
        )
    }
    /// Whether jetscale creates and drops partitions itself.
    pub fn native_partitions(&self) -> bool {
        matches!(self, Backend::Native)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Native => f.write_str("PostgreSQL (native partitions)"),
            Backend::Timescale {
                major,
                minor,
                apache_only,
                direct_compress,
            } => write!(
                f,
                "TimescaleDB {major}.{minor}{}{}",
                if *apache_only {
                    " (Apache license: jetscale runs rollups and retention)"
                } else {
                    ""
                },
                if *direct_compress {
                    " with direct compress"
                } else {
                    ""
                }
            ),
        }
    }
}

/// The quoted names of every relation jetscale creates, validated identifiers, quoted once here.
#[derive(Debug, Clone)]
pub struct RelationNames {
    pub schema: String,
    pub table: String,
    pub layout: MetricsLayout,
    /// `"schema"."table"`: what users query (a view in the series layout).
    pub metrics: String,
    /// Series layout: the narrow points table and the series table.
    pub points: String,
    pub series: String,
    /// Series layout on TimescaleDB: the continuous aggregate per series behind `hourly`.
    pub points_hourly: String,
    /// The rollup users query: `"schema"."table_hourly"`.
    pub hourly: String,
    /// Native rollup storage.
    pub hourly_data: String,
    pub dead_letters: String,
    pub distributions: String,
    pub spans: String,
    pub logs: String,
    plain: [String; 4],
}

impl RelationNames {
    pub fn new(s: &StoreSettings) -> Self {
        let q = |name: &str| format!("\"{}\".\"{}\"", s.schema, name);
        let points_plain = format!("{}_points", s.metrics_table);
        RelationNames {
            schema: format!("\"{}\"", s.schema),
            table: s.metrics_table.clone(),
            layout: s.layout,
            metrics: q(&s.metrics_table),
            points: q(&points_plain),
            series: q(&format!("{}_series", s.metrics_table)),
            points_hourly: q(&format!("{}_points_hourly", s.metrics_table)),
            hourly: q(&format!("{}_hourly", s.metrics_table)),
            hourly_data: q(&format!("{}_hourly_data", s.metrics_table)),
            dead_letters: q(&s.dead_letter_table),
            distributions: q(&s.distributions_table),
            spans: q(&s.spans_table),
            logs: q(&s.logs_table),
            plain: [
                match s.layout {
                    MetricsLayout::Series => points_plain,
                    MetricsLayout::Wide => s.metrics_table.clone(),
                },
                s.distributions_table.clone(),
                s.spans_table.clone(),
                s.logs_table.clone(),
            ],
        }
    }
    /// The unquoted name of the table rows go into (as the partition functions take it).
    pub fn plain(&self, table: Table) -> &str {
        &self.plain[table as usize]
    }
    /// The quoted name of the table rows go into.
    pub fn quoted(&self, table: Table) -> &str {
        match table {
            Table::Metrics => match self.layout {
                MetricsLayout::Series => &self.points,
                MetricsLayout::Wide => &self.metrics,
            },
            Table::Distributions => &self.distributions,
            Table::Spans => &self.spans,
            Table::Logs => &self.logs,
        }
    }
    /// A jetscale bookkeeping table in the same schema.
    pub fn own(&self, name: &str) -> String {
        format!("{}.\"{name}\"", self.schema)
    }
    fn index(&self, seed_name: &str, suffix: &str) -> String {
        // The seed's index names when the seed's table name is used, prefixed otherwise.
        if self.table == "iot_metrics" {
            seed_name.to_owned()
        } else {
            format!("{}_{suffix}", self.table)
        }
    }
}

/// What `migrate` did, for `jetscale setup` to report.
#[derive(Debug, Default)]
pub struct MigrationReport {
    pub backend: Option<Backend>,
    pub already_current: bool,
    pub notes: Vec<String>,
}

/// Finds out which backend is available, installing TimescaleDB when it can.
pub async fn detect_backend(
    client: &Client,
    settings: &StoreSettings,
) -> Result<Backend, StoreError> {
    let installed = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await?;
    let version: Option<String> = match installed {
        Some(row) => Some(row.get(0)),
        None => {
            let available = client
                .query_opt(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
                    &[],
                )
                .await?;
            if available.is_some() {
                match client
                    .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                    .await
                {
                    Ok(()) => client
                        .query_opt(
                            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                            &[],
                        )
                        .await?
                        .map(|r| r.get(0)),
                    Err(e) => {
                        tracing::warn!(error = %e, "timescaledb is available but could not be created (is it in shared_preload_libraries?); using native partitioning");
                        None
                    }
                }
            } else {
                None
            }
        }
    };
    let Some(version) = version else {
        return Ok(Backend::Native);
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let license: Option<String> = client
        .query_opt("SELECT current_setting('timescaledb.license', true)", &[])
        .await?
        .and_then(|r| r.get(0));
    if settings.direct_compress && (major, minor) < (2, 21) {
        return Err(StoreError::Other(format!(
            "exporters.postgresql.direct_compress needs TimescaleDB 2.21 or later, this database has {major}.{minor}: upgrade the extension or remove the setting"
        )));
    }
    Ok(Backend::Timescale {
        major,
        minor,
        apache_only: license.as_deref() == Some("apache"),
        direct_compress: settings.direct_compress,
    })
}

fn interval(d: Duration) -> String {
    format!("{} seconds", d.as_secs())
}

/// Creates or updates every table, index, view and function, under an advisory lock.
pub async fn migrate(
    client: &mut Client,
    settings: &StoreSettings,
) -> Result<MigrationReport, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client, settings).await;
    // Unlock even when the migration failed, so another collector can try.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(
    client: &mut Client,
    settings: &StoreSettings,
) -> Result<MigrationReport, StoreError> {
    let names = RelationNames::new(settings);
    let mut report = MigrationReport::default();
    let backend = detect_backend(client, settings).await?;
    report.backend = Some(backend.clone());
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", names.schema))
        .await?;
    check_layout(client, &names).await?;
    let current: Option<i32> = match client
        .query_opt(
            &format!(
                "SELECT version FROM {} WHERE component = $1",
                names.own("jetscale_schema")
            ),
            &[&names.table],
        )
        .await
    {
        Ok(row) => row.map(|r| r.get(0)),
        Err(_) => None,
    };
    report.already_current = current == Some(SCHEMA_VERSION);
    let tx = client.transaction().await?;
    tx.batch_execute(&bookkeeping_sql(&names)).await?;
    match &backend {
        Backend::Native => tx.batch_execute(&native_sql(&names, settings)).await?,
        Backend::Timescale { major, minor, .. } => {
            tx.batch_execute(&timescale_sql(&names, settings, &backend, *major, *minor))
                .await?
        }
    }
    if !backend.continuous_aggregate() {
        tx.batch_execute(&native_rollup_sql(&names)).await?;
    }
    tx.batch_execute(&signal_tables_sql(&names, &backend, settings))
        .await?;
    for table in Table::ALL {
        if names.plain(table) == names.table {
            continue;
        }
        // Registered so the partition functions accept them.
        tx.execute(
            &format!(
                "INSERT INTO {} (component, version, backend) VALUES ($1, $2, $3) ON CONFLICT (component) DO NOTHING",
                names.own("jetscale_schema")
            ),
            &[&names.plain(table), &SCHEMA_VERSION, &backend.to_string()],
        )
        .await?;
    }
    tx.batch_execute(&seed_aliases_sql(&names)).await?;
    tx.execute(
        &format!(
            "INSERT INTO {} (component, version, backend, applied_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, backend = EXCLUDED.backend,
               applied_at = CASE WHEN {0}.version = EXCLUDED.version THEN {0}.applied_at ELSE now() END",
            names.own("jetscale_schema")
        ),
        &[&names.table, &SCHEMA_VERSION, &backend.to_string()],
    )
    .await?;
    tx.commit().await?;
    if names.layout == MetricsLayout::Series {
        report.notes.push(format!(
            "{} is a view of {} (time, series_id, value) joined with {} (one row per device, location, metric, unit and attributes)",
            names.metrics, names.points, names.series
        ));
    }
    if backend.native_partitions() {
        report.notes.push(format!(
            "{} is range-partitioned by time in {} chunks; jetscale creates partitions ahead and on demand",
            names.quoted(Table::Metrics),
            crate::config::units::format_duration(settings.chunk_interval)
        ));
        if names.layout == MetricsLayout::Series && !settings.index_open_partitions {
            report
                .notes
                .push(open_partitions_note(client, &names).await?);
        }
    }
    Ok(report)
}

/// How the points table's partitions are indexed, when they are meant to be indexed on close:
/// an index on the parent (made by an earlier `index_open_partitions: true`) still indexes
/// every partition on insert, and is kept, since dropping it is the user's call.
async fn open_partitions_note(
    client: &Client,
    names: &RelationNames,
) -> Result<String, StoreError> {
    let parent_indexes: Vec<String> = client
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = to_regclass($1)",
            &[&names.points],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(if parent_indexes.is_empty() {
        format!(
            "{} partitions take rows unindexed while open and get their (series_id, time DESC) index when they close (index_open_partitions: true indexes on insert)",
            names.points
        )
    } else {
        format!(
            "{} has {} on the parent, so every partition is indexed on insert; DROP INDEX it to index partitions when they close (faster writes), or set index_open_partitions: true to keep it",
            names.points,
            parent_indexes.join(", ")
        )
    })
}

/// Refuses to migrate over the other layout's relations, with what to do instead.
pub async fn check_layout(client: &Client, names: &RelationNames) -> Result<(), StoreError> {
    let kind = |relation: String| async move {
        client
            .query_opt(
                "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&relation],
            )
            .await
            .map(|row| row.map(|r| r.get::<_, String>(0)))
    };
    let metrics_kind = kind(names.metrics.clone()).await?;
    let points_kind = kind(names.points.clone()).await?;
    match names.layout {
        MetricsLayout::Series if matches!(metrics_kind.as_deref(), Some("r" | "p")) => {
            Err(StoreError::Other(format!(
                "{} already exists as a table (the wide layout): set exporters.postgresql.layout: wide to keep writing it, or rename it to switch to the series layout",
                names.metrics
            )))
        }
        MetricsLayout::Wide if metrics_kind.as_deref() == Some("v") && points_kind.is_some() => {
            Err(StoreError::Other(format!(
                "{} is jetscale's series-layout view of {}: set exporters.postgresql.layout: series (or leave it out) to keep writing it",
                names.metrics, names.points
            )))
        }
        _ => Ok(()),
    }
}

/// Tables every backend needs: delivery ledger, dead letters, bookkeeping.
fn bookkeeping_sql(n: &RelationNames) -> String {
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

/// The seed's `iot_metrics` columns plus `attributes`, and its two indexes. `partition_clause`
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

/// Where metric points are stored. Wide: the seed's table. Series: a narrow points table
/// with one `(series_id, time)` index, the series table (B-tree indexes on device and on
/// metric and location: hash indexes were measured 2.5x slower to insert into as the table
/// grows, which a fleet coming online pays for every series), and the seed's
/// columns as a view, so the seed's SQL runs verbatim. `after_create` runs after the points
/// (or wide) table is created and before its indexes (create_hypertable). Without
/// `index_points_on_insert` the points table has no index of its own: each partition gets one
/// when it closes (`jetscale_index_closed_points`).
fn metrics_storage_sql(
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

/// The metrics table as a partitioned table, and the functions that manage its partitions.
fn native_sql(n: &RelationNames, s: &StoreSettings) -> String {
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
    FOR child IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = format('%I.%I', '{schema_plain}', p_table)::regclass
    LOOP
        upper_bound := substring(child.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
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
        metrics_table = metrics_storage_sql(
            n,
            " PARTITION BY RANGE (time)",
            "",
            s.index_open_partitions
        ),
        s = n.schema,
        table = n.table,
        schema_t = n.own("jetscale_schema"),
        rollup_state = n.own("jetscale_rollup_state"),
        index_closed = if n.layout == MetricsLayout::Series {
            index_closed_points_sql(n)
        } else {
            String::new()
        },
    )
    .replace("{chunk}", &interval(s.chunk_interval))
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
    FOR child IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = '{points}'::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid)
        ORDER BY c.relname DESC
    LOOP
        EXIT WHEN indexed >= p_limit;
        upper_bound := substring(child.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
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
        points = n.points,
        points_plain = n.plain(Table::Metrics),
    )
}

/// Tables for the other signals: distribution points, spans, logs. Partitioned by time like
/// the metrics table (hypertables on TimescaleDB), with the indexes users' queries need: a
/// trace by id, a service's errors in a window, a device's or service's metric over time.
fn signal_tables_sql(n: &RelationNames, backend: &Backend, s: &StoreSettings) -> String {
    let partition = if backend.native_partitions() {
        " PARTITION BY RANGE (time)"
    } else {
        ""
    };
    let idx = |table: Table, suffix: &str| format!("\"{}_{suffix}\"", n.plain(table));
    let mut sql = format!(
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
    );
    if let Backend::Timescale {
        major,
        minor,
        apache_only,
        ..
    } = backend
    {
        for table in [Table::Distributions, Table::Spans, Table::Logs] {
            let name = n.quoted(table).replace('\'', "''");
            let chunk = interval(s.chunk_interval);
            if (*major, *minor) >= (2, 13) {
                sql.push_str(&format!("SELECT create_hypertable('{name}', by_range('time', INTERVAL '{chunk}'), if_not_exists => TRUE);\n"));
            } else {
                sql.push_str(&format!("SELECT create_hypertable('{name}', 'time', chunk_time_interval => INTERVAL '{chunk}', if_not_exists => TRUE);\n"));
            }
            if !apache_only {
                sql.push_str(&format!(
                    "SELECT add_retention_policy('{name}', INTERVAL '{}', if_not_exists => TRUE);\n",
                    interval(s.retention)
                ));
            }
        }
    }
    sql
}

/// The seed's schema for TimescaleDB, with the calls its version supports.
fn timescale_sql(
    n: &RelationNames,
    s: &StoreSettings,
    backend: &Backend,
    major: u32,
    minor: u32,
) -> String {
    let v213 = (major, minor) >= (2, 13);
    let storage = n.quoted(Table::Metrics).replace('\'', "''");
    let chunk = interval(s.chunk_interval);
    let hypertable = if v213 {
        format!("SELECT create_hypertable('{storage}', by_range('time', INTERVAL '{chunk}'), if_not_exists => TRUE);")
    } else {
        format!("SELECT create_hypertable('{storage}', 'time', chunk_time_interval => INTERVAL '{chunk}', if_not_exists => TRUE);")
    };
    // A hypertable's indexes are made on every chunk as it is created.
    let mut sql = metrics_storage_sql(n, "", &hypertable, true);
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
        // The refresh window must end before raw retention starts, or a refresh over dropped
        // raw data would empty the aggregate.
        let start_offset = (s.retention / 2).max(Duration::from_secs(2 * 3600));
        // Since 2.13 continuous aggregates are materialized-only by default; the seed's
        // dashboards expect the current hour too.
        let realtime = |view: &str| {
            if v213 {
                format!(
                    "ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = false);"
                )
            } else {
                String::new()
            }
        };
        let (aggregate, aggregate_sql) = match n.layout {
            MetricsLayout::Wide => (
                n.hourly.clone(),
                format!(
                    r#"
CREATE MATERIALIZED VIEW IF NOT EXISTS {hourly}
WITH (timescaledb.continuous) AS
SELECT
    time_bucket('1 hour', time) AS bucket,
    device_id,
    location,
    metric_name,
    avg(value) AS avg_value,
    min(value) AS min_value,
    max(value) AS max_value,
    count(*) AS sample_count
FROM {metrics}
GROUP BY bucket, device_id, location, metric_name
WITH NO DATA;
{realtime}
"#,
                    hourly = n.hourly,
                    metrics = n.metrics,
                    realtime = realtime(&n.hourly),
                ),
            ),
            // A continuous aggregate reads one hypertable: it sums per series, and the
            // seed's `_hourly` relation is a view regrouping those sums by device, location
            // and metric.
            MetricsLayout::Series => (
                n.points_hourly.clone(),
                format!(
                    r#"
CREATE MATERIALIZED VIEW IF NOT EXISTS {points_hourly}
WITH (timescaledb.continuous) AS
SELECT
    time_bucket('1 hour', time) AS bucket,
    series_id,
    sum(value) AS sum_value,
    min(value) AS min_value,
    max(value) AS max_value,
    count(*) AS sample_count
FROM {points}
GROUP BY bucket, series_id
WITH NO DATA;
{realtime}
CREATE OR REPLACE VIEW {hourly} AS
SELECT h.bucket, s.device_id, s.location, s.metric_name,
       sum(h.sum_value) / sum(h.sample_count) AS avg_value, min(h.min_value) AS min_value,
       max(h.max_value) AS max_value, sum(h.sample_count)::bigint AS sample_count
FROM {points_hourly} h JOIN {series} s ON s.series_id = h.series_id
GROUP BY 1, 2, 3, 4;
"#,
                    points_hourly = n.points_hourly,
                    points = n.points,
                    series = n.series,
                    hourly = n.hourly,
                    realtime = realtime(&n.points_hourly),
                ),
            ),
        };
        sql.push_str(&aggregate_sql);
        let aggregate = aggregate.replace('\'', "''");
        sql.push_str(&format!(
            r#"
SELECT add_continuous_aggregate_policy('{aggregate}', start_offset => INTERVAL '{start}', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
SELECT add_retention_policy('{aggregate}', INTERVAL '{rollup}', if_not_exists => TRUE);
"#,
            start = interval(start_offset),
            rollup = interval(s.rollup_retention),
        ));
    }
    if !matches!(
        backend,
        Backend::Timescale {
            apache_only: true,
            ..
        }
    ) {
        sql.push_str(&format!(
            "SELECT add_retention_policy('{storage}', INTERVAL '{}', if_not_exists => TRUE);\n",
            interval(s.retention)
        ));
    }
    sql
}

/// The hourly rollup maintained by jetscale (plain PostgreSQL, or TimescaleDB without TSL):
/// closed hours are materialized once into `_hourly_data` (sum, min, max, count), late rows
/// invalidate their hour, and the `_hourly` view adds the open hours live from raw data, so
/// it always answers like a real-time continuous aggregate.
fn native_rollup_sql(n: &RelationNames) -> String {
    let schema_plain = n.schema.trim_matches('"');
    let open_hours = match n.layout {
        MetricsLayout::Wide => format!(
            "SELECT date_bin('1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, device_id, location, metric_name,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS sample_count
FROM {metrics}
WHERE time >= (SELECT watermark FROM {rollup_state} WHERE relation = '{table}')
GROUP BY 1, 2, 3, 4",
            metrics = n.metrics,
            rollup_state = n.own("jetscale_rollup_state"),
            table = n.table,
        ),
        // Summed per series first, then regrouped: one join per series and hour, not per point.
        MetricsLayout::Series => format!(
            "SELECT a.bucket, s.device_id, s.location, s.metric_name,
       sum(a.sum_value) / sum(a.sample_count) AS avg_value, min(a.min_value) AS min_value,
       max(a.max_value) AS max_value, sum(a.sample_count)::bigint AS sample_count
FROM (SELECT date_bin('1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, series_id,
             sum(value) AS sum_value, min(value) AS min_value, max(value) AS max_value, count(*) AS sample_count
      FROM {points}
      WHERE time >= (SELECT watermark FROM {rollup_state} WHERE relation = '{table}')
      GROUP BY 1, 2) a
JOIN {series} s ON s.series_id = a.series_id
GROUP BY 1, 2, 3, 4",
            points = n.points,
            series = n.series,
            rollup_state = n.own("jetscale_rollup_state"),
            table = n.table,
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
SELECT bucket, device_id, location, metric_name,
       sum_value / sample_count AS avg_value, min_value, max_value, sample_count
FROM {data}
WHERE bucket < (SELECT watermark FROM {rollup_state} WHERE relation = '{table}')
UNION ALL
{open_hours};

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

/// The seed's config writes `otel_metrics`, its schema and query read `iot_metrics`: when the
/// configured table is not `iot_metrics`, the seed's names become views of it (if free), so
/// the seed's SQL runs verbatim either way. Native PostgreSQL also gets `time_bucket`.
fn seed_aliases_sql(n: &RelationNames) -> String {
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
