//! Background upkeep that TimescaleDB's job scheduler would do: partitions ahead of time,
//! the hourly rollup, retention. Every step is a SECURITY DEFINER function guarded by an
//! advisory lock, so any number of collectors can run it and the collector's role needs
//! no DDL rights.

use super::schema::{Backend, RelationNames};
use super::writer::ensure_partition_range;
use super::StoreError;
use crate::config::{MetricsLayout, StoreSettings};
use crate::exporters::postgres::batch::Table;
use std::time::{Duration, SystemTime};
use tokio_postgres::Client;

/// What one round of maintenance did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Upkeep {
    pub partitions_created: i32,
    pub partitions_dropped: i32,
    pub rollup_buckets: i32,
    pub partitions_indexed: i32,
}

/// How long after its end a points partition is indexed (`index_open_partitions: false`):
/// points that arrive late for a just-closed hour still skip index maintenance, and the
/// build, which holds back writes to that one partition, starts once they have tailed off.
pub const INDEX_AFTER_CLOSE: Duration = Duration::from_secs(600);
/// Partitions indexed per round: the build takes seconds to minutes, one is enough between
/// rounds.
const INDEX_PER_ROUND: i32 = 1;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Creates the partitions from one chunk back to `ahead` in the future.
pub async fn partitions_ahead(
    client: &Client,
    names: &RelationNames,
    settings: &StoreSettings,
    ahead: Duration,
) -> Result<i32, StoreError> {
    let width = settings.chunk_interval.as_micros() as i64;
    let now = now_us();
    let from = now - now.rem_euclid(width) - width;
    let mut created = 0;
    for table in Table::ALL {
        created += ensure_partition_range(
            client,
            names,
            table,
            from,
            now + ahead.as_micros() as i64 + width,
            settings.chunk_interval,
        )
        .await?;
    }
    Ok(created)
}

/// Builds the `(series_id, time DESC)` index of up to `limit` points partitions that ended
/// before `closed_before` and have none; returns how many it built.
pub async fn index_closed_partitions(
    client: &Client,
    names: &RelationNames,
    closed_before: SystemTime,
    limit: i32,
) -> Result<i32, StoreError> {
    Ok(client
        .query_one(
            &format!(
                "SELECT {}.jetscale_index_closed_points($1, $2)",
                names.schema
            ),
            &[&closed_before, &limit],
        )
        .await?
        .get(0))
}

/// One round: partitions, rollup, retention, then indexes of closed partitions, as the
/// backend needs.
pub async fn run_once(
    client: &Client,
    names: &RelationNames,
    settings: &StoreSettings,
    backend: &Backend,
    ahead: Duration,
) -> Result<Upkeep, StoreError> {
    let mut upkeep = Upkeep::default();
    if backend.native_partitions() {
        upkeep.partitions_created = partitions_ahead(client, names, settings, ahead).await?;
    }
    if !backend.continuous_aggregate() {
        upkeep.rollup_buckets = client
            .query_one(
                &format!("SELECT {}.jetscale_refresh_rollup($1)", names.schema),
                &[&names.table],
            )
            .await?
            .get(0);
    }
    let raw_cutoff = SystemTime::now() - settings.retention;
    let rollup_cutoff = SystemTime::now() - settings.rollup_retention;
    match backend {
        Backend::Native => {
            for table in Table::ALL {
                let dropped: i32 = client
                    .query_one(
                        &format!("SELECT {}.jetscale_drop_partitions($1, $2)", names.schema),
                        &[&names.plain(table), &raw_cutoff],
                    )
                    .await?
                    .get(0);
                upkeep.partitions_dropped += dropped;
            }
        }
        Backend::Timescale {
            apache_only: true, ..
        } => {
            // No retention jobs without the TSL license; drop_chunks itself is Apache.
            for table in Table::ALL {
                let dropped = client
                    .query(
                        &format!(
                            "SELECT drop_chunks('{}', older_than => $1::timestamptz)",
                            names.quoted(table).replace('\'', "''")
                        ),
                        &[&raw_cutoff],
                    )
                    .await?;
                upkeep.partitions_dropped += dropped.len() as i32;
            }
        }
        Backend::Timescale { .. } => {}
    }
    if !backend.continuous_aggregate() {
        client
            .execute(
                &format!("DELETE FROM {} WHERE bucket < $1", names.hourly_data),
                &[&rollup_cutoff],
            )
            .await?;
    }
    // Last: the build can take minutes, and retention may have dropped what it would index.
    if backend.native_partitions()
        && names.layout == MetricsLayout::Series
        && !settings.index_open_partitions
    {
        upkeep.partitions_indexed = index_closed_partitions(
            client,
            names,
            SystemTime::now() - INDEX_AFTER_CLOSE,
            INDEX_PER_ROUND,
        )
        .await?;
    }
    Ok(upkeep)
}
