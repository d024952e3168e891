//! Schema migrations: the IoT design's schema on TimescaleDB when the extension is there, and the
//! same relation names and columns on plain PostgreSQL (range partitions as chunks, an
//! incrementally maintained rollup as the continuous aggregate, partition drops as
//! retention). All DDL runs under an advisory lock so collectors starting together do not
//! race (timescaledb issue 4149), and every statement is idempotent.

mod backend;
mod native;
mod tables;
mod timescale;

pub use backend::{detect, detect_backend, Backend, Detection};

use super::StoreError;
use crate::config::{MetricsLayout, StoreSettings};
use crate::exporters::postgres::batch::Table;
use native::{native_rollup_sql, native_sql};
use std::time::Duration;
use tables::{bookkeeping_sql, seed_aliases_sql, signal_tables_sql};
use timescale::{signal_hypertables_sql, timescale_sql};
use tokio_postgres::Client;

/// Bumped when the jetscale-owned objects change shape.
pub const SCHEMA_VERSION: i32 = 3;
const MIGRATION_LOCK: i64 = 0x6a65_7473_6361_6c65; // "jetscale"

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
        // The IoT design's index names when the IoT design's table name is used, prefixed otherwise.
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
    /// Why that backend (see [`Detection`]).
    pub backend_reason: String,
    pub already_current: bool,
    pub notes: Vec<String>,
}

/// The version and backend an earlier migration recorded for this metrics table. Unreadable
/// (no bookkeeping table yet, or a role that may not read it) counts as nothing recorded.
async fn recorded_schema(client: &Client, names: &RelationNames) -> Option<(i32, String)> {
    client
        .query_opt(
            &format!(
                "SELECT version, backend FROM {} WHERE component = $1",
                names.own("jetscale_schema")
            ),
            &[&names.table],
        )
        .await
        .ok()
        .flatten()
        .map(|row| (row.get(0), row.get(1)))
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
    let recorded = recorded_schema(client, &names).await;
    let detection = backend::detect_with(client, settings, recorded.as_ref()).await?;
    let backend = detection.backend;
    report.backend = Some(backend.clone());
    report.backend_reason = detection.reason;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", names.schema))
        .await?;
    check_layout(client, &names).await?;
    report.already_current = recorded.is_some_and(|(version, _)| version == SCHEMA_VERSION);
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
    tx.batch_execute(&signal_tables_sql(&names, &backend))
        .await?;
    tx.batch_execute(&signal_hypertables_sql(&names, settings, &backend))
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
    if !backend.native_partitions() {
        report
            .notes
            .push(timescale::compression_note(&names, settings, &backend));
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
