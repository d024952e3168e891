//! Schema migrations: the seed's schema on TimescaleDB when the extension is there, and the
//! same relation names and columns on plain PostgreSQL (range partitions as chunks, an
//! incrementally maintained rollup as the continuous aggregate, partition drops as
//! retention). All DDL runs under an advisory lock so collectors starting together do not
//! race (timescaledb issue 4149), and every statement is idempotent.

use super::StoreError;
use crate::config::StoreSettings;
use crate::process::Table;
use std::time::Duration;
use tokio_postgres::Client;

/// Bumped when the jetscale-owned objects change shape.
pub const SCHEMA_VERSION: i32 = 1;
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
    },
}

impl Backend {
    /// Whether the hourly rollup is a TimescaleDB continuous aggregate with a policy.
    pub fn continuous_aggregate(&self) -> bool {
        matches!(
            self,
            Backend::Timescale {
                apache_only: false,
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
            } => write!(
                f,
                "TimescaleDB {major}.{minor}{}",
                if *apache_only {
                    " (Apache license: jetscale runs rollups and retention)"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Names of everything jetscale creates, validated identifiers, quoted once here.
#[derive(Debug, Clone)]
pub struct Names {
    pub schema: String,
    pub table: String,
    /// `"schema"."table"`.
    pub metrics: String,
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

impl Names {
    pub fn new(s: &StoreSettings) -> Self {
        let q = |name: &str| format!("\"{}\".\"{}\"", s.schema, name);
        Names {
            schema: format!("\"{}\"", s.schema),
            table: s.metrics_table.clone(),
            metrics: q(&s.metrics_table),
            hourly: q(&format!("{}_hourly", s.metrics_table)),
            hourly_data: q(&format!("{}_hourly_data", s.metrics_table)),
            dead_letters: q(&s.dead_letter_table),
            distributions: q(&s.distributions_table),
            spans: q(&s.spans_table),
            logs: q(&s.logs_table),
            plain: [
                s.metrics_table.clone(),
                s.distributions_table.clone(),
                s.spans_table.clone(),
                s.logs_table.clone(),
            ],
        }
    }
    /// The unquoted name of a table (as the partition functions take it).
    pub fn plain(&self, table: Table) -> &str {
        &self.plain[table as usize]
    }
    /// The quoted name of a table.
    pub fn quoted(&self, table: Table) -> &str {
        match table {
            Table::Metrics => &self.metrics,
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
pub async fn detect_backend(client: &Client) -> Result<Backend, StoreError> {
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
    Ok(Backend::Timescale {
        major,
        minor,
        apache_only: license.as_deref() == Some("apache"),
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
    let names = Names::new(settings);
    let mut report = MigrationReport::default();
    let backend = detect_backend(client).await?;
    report.backend = Some(backend.clone());
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", names.schema))
        .await?;
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
        Backend::Timescale {
            major,
            minor,
            apache_only,
        } => {
            tx.batch_execute(&timescale_sql(
                &names,
                settings,
                *major,
                *minor,
                *apache_only,
            ))
            .await?
        }
    }
    if !backend.continuous_aggregate() {
        tx.batch_execute(&native_rollup_sql(&names)).await?;
    }
    tx.batch_execute(&signal_tables_sql(&names, &backend, settings))
        .await?;
    for table in [Table::Distributions, Table::Spans, Table::Logs] {
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
    if backend.native_partitions() {
        report.notes.push(format!(
            "{} is range-partitioned by time in {} chunks; jetscale creates partitions ahead and on demand",
            names.metrics,
            crate::config::units::format_duration(settings.chunk_interval)
        ));
    }
    Ok(report)
}

/// Tables every backend needs: delivery ledger, dead letters, bookkeeping.
fn bookkeeping_sql(n: &Names) -> String {
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
fn metrics_table_sql(n: &Names, partition_clause: &str, after_create: &str) -> String {
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

/// The metrics table as a partitioned table, and the functions that manage its partitions.
fn native_sql(n: &Names, s: &StoreSettings) -> String {
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
"#,
        metrics_table = metrics_table_sql(n, " PARTITION BY RANGE (time)", ""),
        s = n.schema,
        table = n.table,
        schema_t = n.own("jetscale_schema"),
        rollup_state = n.own("jetscale_rollup_state"),
    )
    .replace("{chunk}", &interval(s.chunk_interval))
}

/// Tables for the other signals: distribution points, spans, logs. Partitioned by time like
/// the metrics table (hypertables on TimescaleDB), with the indexes users' queries need: a
/// trace by id, a service's errors in a window, a device's or service's metric over time.
fn signal_tables_sql(n: &Names, backend: &Backend, s: &StoreSettings) -> String {
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
    n: &Names,
    s: &StoreSettings,
    major: u32,
    minor: u32,
    apache_only: bool,
) -> String {
    let v213 = (major, minor) >= (2, 13);
    let hypertable = if v213 {
        format!(
            "SELECT create_hypertable('{m}', by_range('time', INTERVAL '{c}'), if_not_exists => TRUE);",
            m = n.metrics.replace('\'', "''"),
            c = interval(s.chunk_interval)
        )
    } else {
        format!(
            "SELECT create_hypertable('{m}', 'time', chunk_time_interval => INTERVAL '{c}', if_not_exists => TRUE);",
            m = n.metrics.replace('\'', "''"),
            c = interval(s.chunk_interval)
        )
    };
    let mut sql = metrics_table_sql(n, "", &hypertable);
    if !apache_only {
        // The refresh window must end before raw retention starts, or a refresh over dropped
        // raw data would empty the aggregate.
        let start_offset = (s.retention / 2).max(Duration::from_secs(2 * 3600));
        sql.push_str(&format!(
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
SELECT add_continuous_aggregate_policy('{hourly_lit}', start_offset => INTERVAL '{start}', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
SELECT add_retention_policy('{metrics_lit}', INTERVAL '{raw}', if_not_exists => TRUE);
SELECT add_retention_policy('{hourly_lit}', INTERVAL '{rollup}', if_not_exists => TRUE);
"#,
            hourly = n.hourly,
            metrics = n.metrics,
            // Since 2.13 continuous aggregates are materialized-only by default; the seed's
            // dashboards expect the current hour too.
            realtime = if v213 {
                format!("ALTER MATERIALIZED VIEW {} SET (timescaledb.materialized_only = false);", n.hourly)
            } else {
                String::new()
            },
            hourly_lit = n.hourly.replace('\'', "''"),
            metrics_lit = n.metrics.replace('\'', "''"),
            start = interval(start_offset),
            raw = interval(s.retention),
            rollup = interval(s.rollup_retention),
        ));
    }
    sql
}

/// The hourly rollup maintained by jetscale (plain PostgreSQL, or TimescaleDB without TSL):
/// closed hours are materialized once into `_hourly_data` (sum, min, max, count), late rows
/// invalidate their hour, and the `_hourly` view adds the open hours live from raw data, so
/// it always answers like a real-time continuous aggregate.
fn native_rollup_sql(n: &Names) -> String {
    let schema_plain = n.schema.trim_matches('"');
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
SELECT date_bin('1 hour', time, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket, device_id, location, metric_name,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS sample_count
FROM {metrics}
WHERE time >= (SELECT watermark FROM {rollup_state} WHERE relation = '{table}')
GROUP BY 1, 2, 3, 4;

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
    agg TEXT := 'SELECT date_bin(''1 hour'', time, TIMESTAMPTZ ''2000-01-03 00:00:00+00''), device_id, location, metric_name, '
             || 'sum(value), min(value), max(value), count(*) FROM %I.%I WHERE time >= $1 AND time < $2 GROUP BY 1, 2, 3, 4';
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
        EXECUTE format('SELECT date_bin(''1 hour'', min(time), TIMESTAMPTZ ''2000-01-03 00:00:00+00'') FROM %I.%I', '{schema_plain}', p_table) INTO old_wm;
        old_wm := coalesce(least(old_wm, new_wm), new_wm);
    END IF;
    IF new_wm > old_wm THEN
        EXECUTE format('INSERT INTO %I.%I ' || agg || upsert, '{schema_plain}', p_table || '_hourly_data', '{schema_plain}', p_table)
            USING old_wm, new_wm;
        refreshed := refreshed + (extract(epoch FROM new_wm - old_wm) / 3600)::INTEGER;
    END IF;
    FOR b IN DELETE FROM {invalidations} WHERE relation = p_table AND bucket < old_wm RETURNING bucket LOOP
        EXECUTE format('DELETE FROM %I.%I WHERE bucket = $1', '{schema_plain}', p_table || '_hourly_data') USING b;
        EXECUTE format('INSERT INTO %I.%I ' || agg || upsert, '{schema_plain}', p_table || '_hourly_data', '{schema_plain}', p_table)
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
        metrics = n.metrics,
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
fn seed_aliases_sql(n: &Names) -> String {
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
