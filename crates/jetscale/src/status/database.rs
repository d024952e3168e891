//! The database side of the snapshot, in `SELECT`s only: a role granted nothing but `SELECT`
//! on jetscale's tables (and `CONNECT`) can run every one. Backends are told apart by what
//! the catalog shows, never by `detect` (which may try to create the extension).

use super::rfc3339;
use crate::config::{MetricsLayout, Settings};
use crate::exporters::postgres::batch::Table;
use crate::exporters::postgres::schema::RelationNames;
use crate::exporters::postgres::{self, StoreError};
use serde::Serialize;
use std::future::Future;
use std::time::SystemTime;
use time::OffsetDateTime;
use tokio_postgres::Client;

/// Dead-letter reasons listed at most; the rest are summed into the total.
const MAX_REASONS: i64 = 20;

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStatus {
    /// What the last migration recorded (`jetscale_schema.backend`).
    pub backend: Option<String>,
    pub timescaledb: bool,
    pub size_bytes: Option<i64>,
    /// Newest `committed_at` of the delivery ledger: the last batch any collector committed.
    pub last_commit: Option<String>,
    pub last_commit_age_seconds: Option<f64>,
    /// Dead letters received in the last hour, by the reason's kind (the text before its
    /// first colon), most frequent first.
    pub dead_letters_last_hour: Vec<DeadLetterCount>,
    pub dead_letters_total: Option<i64>,
    /// Series layout: rows of the series table; absent in the wide layout.
    pub series: Option<i64>,
    /// Each table's partitions (native) or chunks (TimescaleDB), oldest first by name.
    pub tables: Vec<RelationSize>,
    pub rollup: Option<JobRun>,
    /// Closed hours queued for a rollup refresh.
    pub rollup_queued_hours: Option<i64>,
    pub retention: RetentionStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterCount {
    pub reason: String,
    pub count: i64,
}

/// A table and its partitions or chunks.
#[derive(Debug, Clone, Serialize)]
pub struct RelationSize {
    pub table: String,
    pub partitions: Vec<Partition>,
    /// Every partition together, with indexes and TOAST.
    pub total_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub name: String,
    pub bytes: i64,
    /// Native partitions: the time range (`FOR VALUES FROM (..) TO (..)`).
    pub range: Option<String>,
}

/// A background job's last run: TimescaleDB's `job_stats`, or jetscale's rollup state.
#[derive(Debug, Clone, Serialize)]
pub struct JobRun {
    pub job: String,
    pub last_run: Option<String>,
    pub last_run_age_seconds: Option<f64>,
    pub last_status: Option<String>,
    pub next_run: Option<String>,
    pub failures: Option<i64>,
    /// Native rollup: hours below this are materialized.
    pub watermark: Option<String>,
    /// TimescaleDB retention policy: its `drop_after` (the rollup's differs from the raw
    /// tables').
    pub drop_after: Option<String>,
    /// TimescaleDB: the newest error this job logged (`job_errors`), what to fix.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetentionStatus {
    /// `exporters.postgresql.retention` of this configuration.
    pub configured_seconds: u64,
    /// TimescaleDB retention policies' runs; empty on the native path, whose drops are
    /// done by the collectors' upkeep and not recorded (the oldest partition shows it).
    pub jobs: Vec<JobRun>,
}

pub(super) async fn gather(
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<DatabaseStatus, StoreError> {
    let client = postgres::connect(&settings.store).await?;
    // Read-only whatever the role may do: a status never writes, even by mistake.
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await?;
    let names = RelationNames::new(&settings.store);
    let c = &client;
    let timescaledb = read(notes, "extension", async {
        Ok(c.query_opt(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await?
        .is_some())
    })
    .await
    .unwrap_or(false);
    let backend = read(notes, "schema version", async {
        Ok(c.query_opt(
            &format!(
                "SELECT backend FROM {} WHERE component = $1",
                names.own("jetscale_schema")
            ),
            &[&names.table],
        )
        .await?
        .map(|r| r.get::<_, String>(0)))
    })
    .await
    .flatten();
    let size_bytes = read(notes, "database size", async {
        Ok(
            c.query_one("SELECT pg_database_size(current_database())", &[])
                .await?
                .get::<_, i64>(0),
        )
    })
    .await;
    let last_commit = read(notes, "last commit", async {
        Ok(at(c
            .query_one(
                &format!(
                    "SELECT max(committed_at) FROM {}",
                    names.own("jetscale_ledger")
                ),
                &[],
            )
            .await?
            .get(0)))
    })
    .await
    .flatten();
    let dead_letters_last_hour = read(notes, "dead letters", dead_letters(c, &names))
        .await
        .unwrap_or_default();
    let dead_letters_total = read(notes, "dead letters", async {
        Ok(
            c.query_one(&format!("SELECT count(*) FROM {}", names.dead_letters), &[])
                .await?
                .get::<_, i64>(0),
        )
    })
    .await;
    let series = match settings.store.layout {
        MetricsLayout::Series => {
            read(notes, "series", async {
                Ok(
                    c.query_one(&format!("SELECT count(*) FROM {}", names.series), &[])
                        .await?
                        .get::<_, i64>(0),
                )
            })
            .await
        }
        MetricsLayout::Wide => None,
    };
    let mut tables = Vec::new();
    for table in Table::ALL {
        if let Some(t) = read(notes, names.plain(table), partitions(c, &names, table)).await {
            tables.push(t);
        }
    }
    let (rollup, retention_jobs) = if timescaledb {
        read(notes, "TimescaleDB jobs", timescale_jobs(c))
            .await
            .unwrap_or_default()
    } else {
        (
            read(notes, "rollup state", native_rollup(c, &names))
                .await
                .flatten(),
            Vec::new(),
        )
    };
    let rollup_queued_hours = read(notes, "rollup queue", async {
        Ok(c.query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE relation = $1",
                names.own("jetscale_rollup_invalidations")
            ),
            &[&names.table],
        )
        .await?
        .get::<_, i64>(0))
    })
    .await;
    Ok(DatabaseStatus {
        backend,
        timescaledb,
        size_bytes,
        last_commit: last_commit.map(rfc3339),
        last_commit_age_seconds: last_commit.map(super::age_seconds),
        dead_letters_last_hour,
        dead_letters_total,
        series,
        tables,
        rollup,
        rollup_queued_hours,
        retention: RetentionStatus {
            configured_seconds: settings.store.retention.as_secs(),
            jobs: retention_jobs,
        },
    })
}

/// Runs one read; a failure (no such table yet, no right to read it) becomes a note.
async fn read<T>(
    notes: &mut Vec<String>,
    what: &str,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Option<T> {
    match query.await {
        Ok(v) => Some(v),
        Err(e) => {
            let detail = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            notes.push(format!("{what}: {detail}"));
            None
        }
    }
}

async fn dead_letters(
    c: &Client,
    names: &RelationNames,
) -> Result<Vec<DeadLetterCount>, tokio_postgres::Error> {
    let rows = c
        .query(
            &format!(
                "SELECT left(split_part(reason, ':', 1), 80) AS kind, count(*) FROM {} \
                 WHERE received_at > now() - interval '1 hour' \
                 GROUP BY kind ORDER BY count(*) DESC, kind LIMIT $1",
                names.dead_letters
            ),
            &[&MAX_REASONS],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadLetterCount {
            reason: r.get(0),
            count: r.get(1),
        })
        .collect())
}

/// Children by inheritance: native partitions and TimescaleDB chunks alike.
async fn partitions(
    c: &Client,
    names: &RelationNames,
    table: Table,
) -> Result<RelationSize, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT child.relname::text, pg_total_relation_size(child.oid), \
                    pg_get_expr(child.relpartbound, child.oid) \
             FROM pg_inherits i JOIN pg_class child ON child.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1) ORDER BY child.relname",
            &[&names.quoted(table)],
        )
        .await?;
    let partitions: Vec<Partition> = rows
        .iter()
        .map(|r| Partition {
            name: r.get(0),
            bytes: r.get(1),
            range: r.get(2),
        })
        .collect();
    Ok(RelationSize {
        table: names.plain(table).to_owned(),
        total_bytes: partitions.iter().map(|p| p.bytes).sum(),
        partitions,
    })
}

async fn native_rollup(
    c: &Client,
    names: &RelationNames,
) -> Result<Option<JobRun>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            &format!(
                "SELECT CASE WHEN isfinite(watermark) THEN watermark END, refreshed_at \
                 FROM {} WHERE relation = $1",
                names.own("jetscale_rollup_state")
            ),
            &[&names.table],
        )
        .await?;
    Ok(row.map(|r| {
        let watermark = at(r.get(0));
        let refreshed = at(r.get(1));
        JobRun {
            job: "jetscale rollup".to_owned(),
            last_run: refreshed.map(rfc3339),
            last_run_age_seconds: refreshed.map(super::age_seconds),
            last_status: None,
            next_run: None,
            failures: None,
            watermark: watermark.map(rfc3339),
            drop_after: None,
            last_error: None,
        }
    }))
}

/// The continuous aggregate's refresh policy and the retention policies, from TimescaleDB's
/// job catalog.
async fn timescale_jobs(
    c: &Client,
) -> Result<(Option<JobRun>, Vec<JobRun>), tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT j.proc_name::text, format('%s %s', j.proc_name, j.hypertable_name), \
                    s.last_run_started_at, s.last_run_status, s.next_start, s.total_failures, \
                    j.config->>'drop_after', \
                    (SELECT e.err_message FROM timescaledb_information.job_errors e \
                     WHERE e.job_id = j.job_id ORDER BY e.finish_time DESC LIMIT 1) \
             FROM timescaledb_information.jobs j \
             LEFT JOIN timescaledb_information.job_stats s USING (job_id) \
             WHERE j.proc_name IN ('policy_refresh_continuous_aggregate', 'policy_retention') \
             ORDER BY j.job_id",
            &[],
        )
        .await?;
    let mut rollup = None;
    let mut retention = Vec::new();
    for r in &rows {
        let last = at(r.get(2));
        let next = at(r.get(4));
        let run = JobRun {
            job: r.get(1),
            last_run: last.map(rfc3339),
            last_run_age_seconds: last.map(super::age_seconds),
            last_status: r.get(3),
            next_run: next.map(rfc3339),
            failures: r.get(5),
            watermark: None,
            drop_after: r.get(6),
            last_error: r.get(7),
        };
        if r.get::<_, String>(0) == "policy_retention" {
            retention.push(run);
        } else if rollup.is_none() {
            rollup = Some(run);
        }
    }
    Ok((rollup, retention))
}

/// A timestamp column as the time crate's type (tokio-postgres reads `SystemTime`). Infinite
/// timestamps do not fit `SystemTime`: the queries turn them into NULL first.
fn at(t: Option<SystemTime>) -> Option<OffsetDateTime> {
    t.map(OffsetDateTime::from)
}
