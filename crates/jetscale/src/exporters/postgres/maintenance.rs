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

/// Brings the hourly rollup's materialization up to date; returns how many hours it
/// (re)computed. Native rollup: closed hours since the last run and invalidated ones. A
/// TimescaleDB continuous aggregate: the closed hours writers recorded as late
/// ([`refresh_late_hours`]); its policy does the rest.
pub async fn refresh_rollup(
    client: &Client,
    names: &RelationNames,
    backend: &Backend,
) -> Result<i32, StoreError> {
    if backend.continuous_aggregate() {
        return refresh_late_hours(client, names).await;
    }
    Ok(client
        .query_one(
            &format!("SELECT {}.jetscale_refresh_rollup($1)", names.schema),
            &[&names.table],
        )
        .await?
        .get(0))
}

/// Refreshes the continuous aggregate over the closed hours writers recorded in
/// `jetscale_rollup_invalidations`, one `refresh_continuous_aggregate` per run of
/// consecutive hours. Real-time aggregation covers only hours above the aggregate's own
/// watermark, so a late row into an already materialized hour stays invisible until a
/// refresh over that hour; TimescaleDB logs the invalidation itself, and this call is what
/// makes the refresh happen now rather than at the policy's next run. The hours are taken
/// out first, so a writer recording one meanwhile queues it for the next call, and put
/// back if a refresh fails. `refresh_continuous_aggregate` cannot run in a transaction: the
/// client must be in autocommit.
pub async fn refresh_late_hours(client: &Client, names: &RelationNames) -> Result<i32, StoreError> {
    let aggregate = match names.layout {
        MetricsLayout::Wide => &names.hourly,
        MetricsLayout::Series => &names.points_hourly,
    };
    // Only the aggregate's owner may refresh it. A least-privilege collector leaves the hours
    // queued for an owner's upkeep and to the refresh policy, which runs as the owner.
    if !owns(client, aggregate).await? {
        return Ok(0);
    }
    let taken: Vec<SystemTime> = client
        .query(
            &format!(
                "DELETE FROM {} WHERE relation = $1 RETURNING bucket",
                names.own("jetscale_rollup_invalidations")
            ),
            &[&names.table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let call = format!(
        "CALL refresh_continuous_aggregate('{}', $1::timestamptz, $2::timestamptz)",
        aggregate.replace('\'', "''")
    );
    for (start, end) in hour_runs(&taken) {
        if let Err(e) = client.execute(&call, &[&start, &end]).await {
            let _ = client
                .execute(
                    &format!(
                        "INSERT INTO {} (relation, bucket) SELECT $1, b FROM unnest($2::timestamptz[]) AS b ON CONFLICT DO NOTHING",
                        names.own("jetscale_rollup_invalidations")
                    ),
                    &[&names.table, &taken],
                )
                .await;
            return Err(e.into());
        }
    }
    Ok(taken.len() as i32)
}

/// Whether the session's role owns `relation` (a quoted name), directly or by membership.
async fn owns(client: &Client, relation: &str) -> Result<bool, StoreError> {
    Ok(client
        .query_one(
            "SELECT pg_has_role((SELECT relowner FROM pg_class WHERE oid = $1::text::regclass), 'MEMBER')",
            &[&relation],
        )
        .await?
        .get(0))
}

/// Sorted hour starts as `[start, end)` windows of consecutive hours.
fn hour_runs(hours: &[SystemTime]) -> Vec<(SystemTime, SystemTime)> {
    const HOUR: Duration = Duration::from_secs(3600);
    let mut sorted = hours.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(SystemTime, SystemTime)> = Vec::new();
    for h in sorted {
        match runs.last_mut() {
            Some((_, end)) if *end == h => *end = h + HOUR,
            _ => runs.push((h, h + HOUR)),
        }
    }
    runs
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
    upkeep.rollup_buckets = refresh_rollup(client, names, backend).await?;
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
        Backend::Timescale { apache_only, .. } => {
            // Without the TSL license there are no retention jobs; with it, the jobs run in
            // TimescaleDB's background workers, which were seen failing on a build (every job
            // "cannot drop portal"), so the owner's upkeep drops expired chunks as well: the
            // same idempotent call the policy makes. drop_chunks needs the table's owner; a
            // least-privilege collector leaves licensed retention to the policy.
            if *apache_only || owns(client, names.quoted(Table::Metrics)).await? {
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_hours_make_one_window() {
        let at = |h: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(h * 3600);
        assert_eq!(
            hour_runs(&[at(5), at(3), at(4), at(9), at(4)]),
            [(at(3), at(6)), (at(9), at(10))]
        );
        assert!(hour_runs(&[]).is_empty());
    }
}
