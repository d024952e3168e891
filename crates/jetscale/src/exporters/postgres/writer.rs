//! Writes one batch in one transaction: ledger claim, binary COPY of the rows, dead letters,
//! rollup invalidations, commit. Redelivered messages already committed are skipped (and
//! still acknowledged); a message whose rows the database refuses is isolated by splitting
//! the batch and dead-lettered alone, so one bad row never costs the batch.

use super::copy::{HEADER, TRAILER};
use super::ledger::{self, StreamKey};
use super::schema::{Backend, RelationNames};
use super::series::{SeriesCache, SeriesKey};
use super::StoreError;
use crate::config::MetricsLayout;
use crate::decode::{Rejection, RejectionKind};
use crate::exporters::postgres::batch::{Batch, DeadLetter, Table};
use bytes::Bytes;
use futures::SinkExt;
use jetscale_sdk::backoff::Backoff;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_postgres::Client;

/// What a committed batch did. Every reply subject in it may now be acknowledged.
#[derive(Debug, Default)]
pub struct Committed {
    pub rows: usize,
    /// The rows by table (indexed by `Table as usize`), for the self-metrics.
    pub rows_by_table: [usize; 4],
    pub messages: usize,
    pub dead_letters: usize,
    /// Messages skipped because an earlier transaction had committed them.
    pub duplicates: usize,
    pub replies: Vec<async_nats::Subject>,
    /// Publish times of the committed messages, for latency figures.
    pub published_ns: Vec<i64>,
    /// Series looked up in the database because the cache did not hold them.
    pub series_found: usize,
    /// Series created.
    pub series_created: usize,
    /// The dead letters this batch stored (not those an earlier transaction had), for
    /// republishing; empty for a batch without any.
    pub dead_lettered: Vec<Rejected>,
}

/// A message stored as a dead letter by a committed batch: its original bytes, where they
/// came from, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub stream_seq: u64,
    pub subject: async_nats::Subject,
    pub reason: String,
    pub payload: Bytes,
}

impl Committed {
    fn merge(&mut self, other: Committed) {
        self.rows += other.rows;
        for (mine, theirs) in self.rows_by_table.iter_mut().zip(other.rows_by_table) {
            *mine += theirs;
        }
        self.messages += other.messages;
        self.dead_letters += other.dead_letters;
        self.duplicates += other.duplicates;
        self.series_found += other.series_found;
        self.series_created += other.series_created;
        self.replies.extend(other.replies);
        self.published_ns.extend(other.published_ns);
        self.dead_lettered.extend(other.dead_lettered);
    }
}

/// Partitions known to exist, shared by every writer of the process.
#[derive(Debug, Default)]
pub struct PartitionCache(Mutex<HashSet<(Table, i64)>>);

impl PartitionCache {
    fn missing(&self, table: Table, chunks: impl Iterator<Item = i64>) -> Vec<i64> {
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        chunks.filter(|c| !known.contains(&(table, *c))).collect()
    }
    fn add(&self, table: Table, chunk: i64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((table, chunk));
    }
}

/// What every writer of the process shares: the partitions known to exist and, in the
/// series layout, the series ids.
#[derive(Debug, Clone, Default)]
pub struct SharedCaches {
    pub partitions: Arc<PartitionCache>,
    pub series: Option<Arc<SeriesCache>>,
}

/// One database connection writing batches.
pub struct Writer {
    client: Client,
    names: RelationNames,
    key: StreamKey,
    stream: String,
    backend: Backend,
    chunk: Duration,
    partitions: Arc<PartitionCache>,
    series: Option<Arc<SeriesCache>>,
    copy_sql: [String; 4],
    /// Session settings applied since the connection was made.
    session_ready: bool,
}

const MAX_LEDGER_RETRIES: u32 = 8;

/// Waits between attempts after a ledger conflict: short, as the other transaction has
/// already committed, and jittered so two writers that collided do not collide again.
const LEDGER_CONFLICT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(5), Duration::from_millis(40));

impl Writer {
    pub fn new(
        client: Client,
        names: RelationNames,
        key: StreamKey,
        stream: String,
        backend: Backend,
        chunk: Duration,
        caches: SharedCaches,
    ) -> Self {
        let SharedCaches { partitions, series } = caches;
        let copy_sql = [
            match names.layout {
                MetricsLayout::Series => format!(
                    "COPY {} (time, series_id, value) FROM STDIN (FORMAT binary)",
                    names.points
                ),
                MetricsLayout::Wide => format!(
                    "COPY {} (time, device_id, location, metric_name, value, unit, attributes) FROM STDIN (FORMAT binary)",
                    names.metrics
                ),
            },
            format!(
                "COPY {} (time, start_time, device_id, location, metric_name, unit, kind, temporality, count, sum, min, max, buckets, attributes) FROM STDIN (FORMAT binary)",
                names.distributions
            ),
            "COPY jetscale_spans_stage (time, end_time, trace_id, span_id, parent_span_id, name, service, kind, status_code, status_message, trace_state, duration_ms, attributes, resource, events, links, error) FROM STDIN (FORMAT binary)".to_owned(),
            format!(
                "COPY {} (time, observed_time, service, severity_number, severity_text, message, body, attributes, resource, trace_id, span_id, flags, error) FROM STDIN (FORMAT binary)",
                names.logs
            ),
        ];
        Writer {
            client,
            names,
            key,
            stream,
            backend,
            chunk,
            partitions,
            series,
            copy_sql,
            session_ready: false,
        }
    }

    /// Whether the connection is gone (the caller reconnects).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Writes a batch. Transient errors are returned for the caller to retry the same
    /// batch; data errors are handled here.
    pub async fn write(&mut self, batch: &Batch) -> Result<Committed, StoreError> {
        if !self.session_ready {
            if self.backend.direct_compress() {
                // TimescaleDB 2.21+: COPY compresses in memory and writes columnstore batches.
                self.client
                    .batch_execute("SET timescaledb.enable_direct_compress_copy = on")
                    .await?;
            }
            self.session_ready = true;
        }
        self.ensure_partitions(batch).await?;
        self.write_isolating(batch).await
    }

    async fn ensure_partitions(&self, batch: &Batch) -> Result<(), StoreError> {
        if !self.backend.native_partitions() {
            return Ok(());
        }
        for table in Table::ALL {
            let chunks = match table {
                Table::Metrics => &batch.chunks,
                other => &batch.other_table_chunks[other as usize - 1],
            };
            if chunks.is_empty() {
                continue;
            }
            for chunk in self.partitions.missing(table, chunks.iter().copied()) {
                ensure_partition_range(
                    &self.client,
                    &self.names,
                    table,
                    chunk,
                    chunk + 1,
                    self.chunk,
                )
                .await?;
                self.partitions.add(table, chunk);
            }
        }
        Ok(())
    }

    fn write_isolating<'a>(
        &'a mut self,
        batch: &'a Batch,
    ) -> Pin<Box<dyn Future<Output = Result<Committed, StoreError>> + Send + 'a>> {
        Box::pin(async move {
            match self.write_once(batch).await {
                Err(e) if e.is_data_error() => {
                    if batch.messages.len() > 1 {
                        tracing::warn!(error = %e, messages = batch.messages.len(), "database refused a batch; splitting it to isolate the message");
                        let mid = batch.messages.len() / 2;
                        let first: Vec<usize> = (0..mid).collect();
                        let second: Vec<usize> = (mid..batch.messages.len()).collect();
                        let mut done = self.write_isolating(&batch.select(&first)).await?;
                        done.merge(self.write_isolating(&batch.select(&second)).await?);
                        Ok(done)
                    } else {
                        let mut single = batch.select(&[0]);
                        let reason = Rejection::new(RejectionKind::Database, db_message(&e));
                        tracing::warn!(seq = single.messages.first().map(|m| m.stream_seq), %reason, "dead-lettering a message");
                        single.refuse_all(&reason.to_string());
                        self.write_once(&single).await
                    }
                }
                other => other,
            }
        })
    }

    async fn write_once(&mut self, batch: &Batch) -> Result<Committed, StoreError> {
        let mut retries = LEDGER_CONFLICT_BACKOFF.retries();
        loop {
            match self.transaction(batch).await {
                Err(e) if e.is_ledger_conflict() && retries.count() < MAX_LEDGER_RETRIES => {
                    // Another collector committed some of these messages a moment ago; the
                    // next attempt sees its ranges and skips them.
                    tokio::time::sleep(retries.next_delay()).await;
                }
                other => return other,
            }
        }
    }

    async fn transaction(&mut self, batch: &Batch) -> Result<Committed, StoreError> {
        let names = &self.names;
        let native_rollup = !self.backend.continuous_aggregate();
        let tx = self.client.transaction().await?;
        if native_rollup {
            tx.execute(
                "SELECT pg_advisory_xact_lock_shared(hashtext('jetscale.rollup.' || $1))",
                &[&names.table],
            )
            .await?;
        }
        let min = batch
            .messages
            .iter()
            .map(|m| m.stream_seq)
            .min()
            .unwrap_or(0);
        let max = batch
            .messages
            .iter()
            .map(|m| m.stream_seq)
            .max()
            .unwrap_or(0);
        let committed = ledger::committed_within(&tx, names, self.key, min, max).await?;
        let is_committed = |seq: u64| committed.iter().any(|&(l, u)| seq >= l && seq < u);
        let keep: Vec<usize> = (0..batch.messages.len())
            .filter(|&i| !is_committed(batch.messages[i].stream_seq))
            .collect();
        let mut outcome = Committed {
            duplicates: batch.messages.len() - keep.len(),
            ..Committed::default()
        };
        outcome.replies = batch
            .messages
            .iter()
            .flat_map(|m| m.replies().cloned())
            .collect();
        let selected;
        let work = if keep.len() == batch.messages.len() {
            batch
        } else {
            selected = batch.select(&keep);
            &selected
        };
        let mut seqs: Vec<u64> = work.messages.iter().map(|m| m.stream_seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        if !seqs.is_empty() {
            ledger::record(&tx, names, self.key, &seqs).await?;
        }
        // Series the cache did not know are found or created in this transaction, so a
        // series row commits with its first points and a rolled-back batch leaves no ids
        // in the cache.
        let (patched_metrics, resolved) = if work.series_patches.is_empty() {
            (None, ResolvedSeries::default())
        } else {
            let resolved = resolve_series(&tx, names, work).await?;
            let mut buffer = work.buffer(Table::Metrics).to_vec();
            patch_series_ids(&mut buffer, &work.series_patches, &resolved.ids)?;
            (Some(buffer), resolved)
        };
        for table in Table::ALL {
            if work.rows(table) == 0 {
                continue;
            }
            let copy_sql = &self.copy_sql[table as usize];
            if table == Table::Spans {
                // A span published again after the stream's duplicate window is a new
                // message to JetStream; the unique (trace_id, span_id, time) index makes it
                // the same row to the database.
                // Columns spelled out rather than `LIKE` the spans table: LIKE needs SELECT
                // on it, which a least-privilege collector role does not have.
                tx.batch_execute(SPANS_STAGE_SQL).await?;
            }
            let sink = tx.copy_in(copy_sql.as_str()).await?;
            futures::pin_mut!(sink);
            sink.feed(Bytes::from_static(HEADER)).await?;
            let rows = match (&patched_metrics, table) {
                (Some(patched), Table::Metrics) => patched.as_slice(),
                _ => work.buffer(table),
            };
            sink.feed(Bytes::copy_from_slice(rows)).await?;
            sink.feed(Bytes::from_static(TRAILER)).await?;
            sink.finish().await?;
            if table == Table::Spans {
                tx.execute(
                    &format!(
                        // No conflict target: naming one needs SELECT on its columns. The
                        // (trace_id, span_id, time) index is the table's only unique one.
                        "INSERT INTO {} ({SPAN_COLUMNS}) SELECT {SPAN_COLUMNS} FROM jetscale_spans_stage ON CONFLICT DO NOTHING",
                        names.spans
                    ),
                    &[],
                )
                .await?;
            }
        }
        if !work.dead_letters.is_empty() {
            insert_dead_letters(&tx, names, &self.stream, &work.dead_letters).await?;
        }
        if work.rows(Table::Metrics) > 0 {
            record_late_hours(&tx, names, native_rollup, &work.hours).await?;
        }
        tx.commit().await?;
        if let Some(cache) = &self.series {
            cache.insert_all(resolved.entries);
        }
        outcome.series_found = resolved.found;
        outcome.series_created = resolved.created;
        outcome.rows = work.row_counts.iter().sum();
        outcome.rows_by_table = work.row_counts;
        outcome.messages = work.messages.len();
        outcome.dead_letters = work.dead_letters.len();
        outcome.published_ns = work.messages.iter().map(|m| m.published_ns).collect();
        if !work.dead_letters.is_empty() {
            outcome.dead_lettered = work
                .messages
                .iter()
                .filter_map(|m| {
                    let dead = work.dead_letters.get(m.dead_letter?)?;
                    Some(Rejected {
                        stream_seq: m.stream_seq,
                        subject: m.subject.clone(),
                        reason: dead.reason.clone(),
                        payload: m.payload.clone(),
                    })
                })
                .collect();
        }
        Ok(outcome)
    }
}

/// Records, in the batch's transaction, the hours whose rollup these rows make stale, so
/// they are never shown stale and the next refresh recomputes them. Native rollup: hours
/// below its watermark (the `_hourly` view aggregates them live until refreshed). A
/// TimescaleDB continuous aggregate: closed hours, by this collector's clock, which may lie
/// below the aggregate's own watermark, where real-time aggregation does not look; the
/// upkeep loop refreshes them within seconds, and before `--exit-when-idle` exits. Rows of
/// the current hour, the common case, cost a continuous aggregate no statement at all.
async fn record_late_hours(
    tx: &tokio_postgres::Transaction<'_>,
    names: &RelationNames,
    native_rollup: bool,
    hours_us: &std::collections::BTreeSet<i64>,
) -> Result<(), StoreError> {
    let to_time = |us: i64| SystemTime::UNIX_EPOCH + Duration::from_micros(us.max(0) as u64);
    let inv = names.own("jetscale_rollup_invalidations");
    if native_rollup {
        let hours: Vec<SystemTime> = hours_us.iter().map(|&us| to_time(us)).collect();
        tx.execute(
            &format!(
                "INSERT INTO {inv} (relation, bucket)
                 SELECT $1, b FROM unnest($2::timestamptz[]) AS b
                 WHERE b < (SELECT watermark FROM {state} WHERE relation = $1)
                 ON CONFLICT DO NOTHING",
                state = names.own("jetscale_rollup_state"),
            ),
            &[&names.table, &hours],
        )
        .await?;
        return Ok(());
    }
    const HOUR_US: i64 = 3_600_000_000;
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let current_hour = now_us - now_us.rem_euclid(HOUR_US);
    let closed: Vec<SystemTime> = hours_us
        .range(..current_hour)
        .map(|&us| to_time(us))
        .collect();
    if !closed.is_empty() {
        tx.execute(
            &format!(
                "INSERT INTO {inv} (relation, bucket) SELECT $1, b FROM unnest($2::timestamptz[]) AS b ON CONFLICT DO NOTHING"
            ),
            &[&names.table, &closed],
        )
        .await?;
    }
    Ok(())
}

/// Writes resolved series ids over their placeholders in a copy of the metrics rows.
pub fn patch_series_ids(
    rows: &mut [u8],
    patches: &[(usize, u32)],
    ids: &[Option<i64>],
) -> Result<(), StoreError> {
    for &(offset, series) in patches {
        let id = ids.get(series as usize).copied().flatten().ok_or_else(|| {
            StoreError::Other("a new series was neither found nor created".into())
        })?;
        let slot = rows.get_mut(offset..offset + 8).ok_or_else(|| {
            StoreError::Other("a series placeholder lies outside the batch".into())
        })?;
        slot.copy_from_slice(&id.to_be_bytes());
    }
    Ok(())
}

/// The series a batch's points refer to that the cache did not know.
#[derive(Debug, Default)]
pub struct ResolvedSeries {
    /// The id of each entry of `batch.new_series` that is referred to.
    pub ids: Vec<Option<i64>>,
    /// `(key, id)` pairs for the cache, once the transaction commits.
    pub entries: Vec<(SeriesKey, i64)>,
    /// Series that already existed: cache misses (a restart, another collector's new
    /// series, or a fleet larger than the cache).
    pub found: usize,
    /// Series this transaction created.
    pub created: usize,
}

/// Finds or creates the series the batch's patches refer to.
pub async fn resolve_series(
    tx: &tokio_postgres::Transaction<'_>,
    names: &RelationNames,
    batch: &Batch,
) -> Result<ResolvedSeries, StoreError> {
    // Inserted in key order, so two writers creating overlapping series lock them in the
    // same order and never deadlock. One entry per key, so equal indexes end up adjacent.
    let mut wanted: Vec<u32> = batch.series_patches.iter().map(|&(_, s)| s).collect();
    wanted.sort_unstable_by_key(|&i| batch.new_series.get(i as usize).map(|s| s.key));
    wanted.dedup();
    let mut ids: Vec<Option<i64>> = vec![None; batch.new_series.len()];
    // One index probe per key, whatever the planner thinks of the table's size: a hash
    // join would scan the whole series table for every batch.
    let lookup = format!(
        "SELECT t.i, s.series_id FROM unnest($1::text[]) WITH ORDINALITY AS t(k, i)
         CROSS JOIN LATERAL (SELECT series_id FROM {} WHERE series_key = t.k::uuid) s",
        names.series
    );
    find_series(tx, &lookup, batch, &wanted, &mut ids).await?;
    let found = ids.iter().flatten().count();
    let missing: Vec<u32> = wanted
        .iter()
        .copied()
        .filter(|&i| ids[i as usize].is_none())
        .collect();
    if !missing.is_empty() {
        let column = |f: fn(&super::series::NewSeries) -> String| -> Vec<String> {
            missing
                .iter()
                .filter_map(|&i| batch.new_series.get(i as usize))
                .map(f)
                .collect()
        };
        let keys = column(|s| s.key.uuid_text());
        let devices = column(|s| s.device_id.clone());
        let locations = column(|s| s.location.clone());
        let metrics = column(|s| s.metric_name.clone());
        let units = column(|s| s.unit.clone());
        let attributes = column(|s| {
            if s.attributes.is_empty() {
                "{}".to_owned()
            } else {
                s.attributes.clone()
            }
        });
        tx.execute(
            &format!(
                "INSERT INTO {} (series_key, device_id, location, metric_name, unit, attributes)
                 SELECT k::uuid, d, l, m, NULLIF(u, ''), a::jsonb
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS t(k, d, l, m, u, a)
                 ORDER BY k
                 ON CONFLICT (series_key) DO NOTHING",
                names.series
            ),
            &[&keys, &devices, &locations, &metrics, &units, &attributes],
        )
        .await?;
        // Ours, or another writer's that committed while this insert waited on it.
        find_series(tx, &lookup, batch, &missing, &mut ids).await?;
    }
    let entries: Vec<(SeriesKey, i64)> = wanted
        .iter()
        .filter_map(|&i| {
            let id = ids[i as usize]?;
            Some((batch.new_series.get(i as usize)?.key, id))
        })
        .collect();
    Ok(ResolvedSeries {
        created: entries.len().saturating_sub(found),
        found,
        ids,
        entries,
    })
}

/// Looks up the ids of the `pending` entries of `batch.new_series` into `ids`.
async fn find_series(
    tx: &tokio_postgres::Transaction<'_>,
    lookup: &str,
    batch: &Batch,
    pending: &[u32],
    ids: &mut [Option<i64>],
) -> Result<(), StoreError> {
    let keys: Vec<String> = pending
        .iter()
        .filter_map(|&i| batch.new_series.get(i as usize))
        .map(|s| s.key.uuid_text())
        .collect();
    for row in tx.query(lookup, &[&keys]).await? {
        let ordinal: i64 = row.get(0);
        let id: i64 = row.get(1);
        let series = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|o| pending.get(o));
        if let Some(slot) = series.and_then(|&s| ids.get_mut(s as usize)) {
            *slot = Some(id);
        }
    }
    Ok(())
}

/// The spans table's columns, in the staging table's order.
const SPAN_COLUMNS: &str = "time, end_time, trace_id, span_id, parent_span_id, name, service, kind, status_code, status_message, trace_state, duration_ms, attributes, resource, events, links, error";

/// The per-session staging table spans are copied into before the deduplicating insert.
const SPANS_STAGE_SQL: &str = "CREATE TEMP TABLE IF NOT EXISTS jetscale_spans_stage (
    time TIMESTAMPTZ, end_time TIMESTAMPTZ, trace_id TEXT, span_id TEXT, parent_span_id TEXT,
    name TEXT, service TEXT, kind TEXT, status_code TEXT, status_message TEXT, trace_state TEXT,
    duration_ms DOUBLE PRECISION, attributes JSONB, resource JSONB, events JSONB, links JSONB,
    error TEXT) ON COMMIT DELETE ROWS";

/// Creates partitions for the chunks `[from_chunk, to_chunk)` (microseconds since the epoch,
/// aligned to the chunk width).
pub async fn ensure_partition_range(
    client: &Client,
    names: &RelationNames,
    table: Table,
    from_us: i64,
    to_us: i64,
    width: Duration,
) -> Result<i32, StoreError> {
    let from = SystemTime::UNIX_EPOCH + Duration::from_micros(from_us.max(0) as u64);
    let to_us = to_us.max(from_us + 1);
    let width_us = width.as_micros() as i64;
    let to_aligned = to_us + (width_us - to_us.rem_euclid(width_us)) % width_us;
    let to = SystemTime::UNIX_EPOCH + Duration::from_micros(to_aligned.max(0) as u64);
    let width_secs = format!("{} seconds", width.as_secs());
    let row = client
        .query_one(
            &format!(
                "SELECT {}.jetscale_ensure_partitions($1, $2, $3, $4::text::interval)",
                names.schema
            ),
            &[&names.plain(table), &from, &to, &width_secs],
        )
        .await?;
    Ok(row.get(0))
}

async fn insert_dead_letters(
    tx: &tokio_postgres::Transaction<'_>,
    names: &RelationNames,
    stream: &str,
    dead: &[DeadLetter],
) -> Result<(), StoreError> {
    let clean = |s: &str| s.replace('\0', "\u{fffd}");
    let seqs: Vec<i64> = dead.iter().map(|d| d.stream_seq as i64).collect();
    let subjects: Vec<String> = dead.iter().map(|d| clean(&d.subject)).collect();
    let headers: Vec<String> = dead.iter().map(|d| clean(&d.headers)).collect();
    let reasons: Vec<String> = dead.iter().map(|d| clean(&d.reason)).collect();
    let payloads: Vec<&[u8]> = dead.iter().map(|d| d.payload.as_slice()).collect();
    let sizes: Vec<i32> = dead
        .iter()
        .map(|d| d.payload_size.min(i32::MAX as usize) as i32)
        .collect();
    tx.execute(
        &format!(
            "INSERT INTO {} (stream, stream_seq, subject, headers, reason, payload, payload_size)
             SELECT $1, s, subj, h::jsonb, r, p, n
             FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::int4[]) AS t(s, subj, h, r, p, n)",
            names.dead_letters
        ),
        &[&stream, &seqs, &subjects, &headers, &reasons, &payloads, &sizes],
    )
    .await?;
    Ok(())
}

fn db_message(e: &StoreError) -> String {
    match e {
        StoreError::Db(db) => db
            .as_db_error()
            .map(|d| format!("{} ({})", d.message(), d.code().code()))
            .unwrap_or_else(|| db.to_string()),
        other => other.to_string(),
    }
}

impl Writer {
    /// Replaces a lost connection.
    pub fn reconnect(&mut self, client: Client) {
        self.client = client;
        self.session_ready = false;
    }
}
