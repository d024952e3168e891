//! The collector runtime: fetch → decode → batch → write (one transaction) → ack, over
//! bounded channels, so a slow database slows consumption and the backlog stays in
//! JetStream. Memory is bounded by `(writers + 1) × batch size` messages plus one pull
//! request's worth of prefetched messages.

use crate::ack::{self, Acks, Cumulative};
use crate::config::{AckPolicy, MetricsLayout, Settings};
use crate::decode::{DecodeContext, Incoming};
use crate::exporters::postgres::batch::{Batch, Delivery};
use crate::exporters::postgres::ledger::{self, StreamKey, StreamState};
use crate::exporters::postgres::maintenance;
use crate::exporters::postgres::schema::{self, Backend, RelationNames};
use crate::exporters::postgres::series::SeriesCache;
use crate::exporters::postgres::writer::{PartitionCache, SharedCaches, Writer};
use crate::exporters::postgres::{self, StoreError};
use crate::receivers::nats::{self, StreamError};
use async_nats::jetstream;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch, Mutex};

/// A partial batch is written once no message has arrived for this long.
const IDLE_FLUSH: Duration = Duration::from_millis(200);

/// Why the collector stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("consuming from JetStream failed: {0}")]
    Consume(String),
    #[error("cumulative acks (ack_policy = all) held for {held:?} without proof that nothing unknown is pending: another collector is probably consuming `{consumer}`. ack_policy = all allows one collector per consumer: stop the others, or use ack_policy = explicit")]
    AcksHeld { consumer: String, held: Duration },
    #[error("another collector already consumes `{consumer}` with ack_policy = all, which allows one collector per consumer (its cumulative acks would hold this one's back): stop it, or give this collector its own consumer")]
    ConsumerTaken { consumer: String },
}

/// Options of one collector run besides the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once the consumer has had nothing pending for this long (backfills, tests).
    pub exit_when_idle: Option<Duration>,
    /// Accept a stream recreated under the same name (see the ledger's stream check).
    pub accept_new_stream: bool,
    /// Skip schema migration (the schema was set up by `jetscale setup` as its owner).
    pub skip_migrations: bool,
}

/// Counters the collector keeps; shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub rows: AtomicU64,
    pub dead_letters: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
    pub write_retries: AtomicU64,
    /// Series the cache missed and the database already had.
    pub series_found: AtomicU64,
    pub series_created: AtomicU64,
    pub latency: crate::self_metrics::LatencyHistogram,
}

impl Counters {
    /// Counts a committed batch, and its messages' publish-to-commit latency.
    fn record(&self, done: &crate::exporters::postgres::writer::Committed) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.messages, done.messages);
        add(&self.rows, done.rows);
        add(&self.dead_letters, done.dead_letters);
        add(&self.duplicates, done.duplicates);
        add(&self.batches, 1);
        add(&self.series_found, done.series_found);
        add(&self.series_created, done.series_created);
        let now_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        for published in &done.published_ns {
            self.latency.record_ns(now_ns - published);
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub messages: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub duplicates: u64,
    pub batches: u64,
    /// Series the cache missed that the database already had, and series created.
    pub series_found: u64,
    pub series_created: u64,
    pub elapsed: Duration,
    pub latency_p50: Option<Duration>,
    pub latency_p99: Option<Duration>,
    pub backend: String,
}

/// Runs the collector until `shutdown` turns true (or the consumer is idle, if asked).
pub async fn run(
    settings: &Settings,
    options: &RunOptions,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunReport, PipelineError> {
    let started = Instant::now();
    let nats = nats::connect(&settings.nats, "jetscale-collector").await?;
    let js = jetstream::new(nats.clone());
    let (_, js_stream) = nats::ensure_stream(&js, &settings.stream).await?;
    let (_, consumer) = nats::ensure_consumer(&js_stream, &settings.consumer).await?;
    let acks = match settings.consumer.ack_policy {
        AckPolicy::Explicit => Acks::Each,
        AckPolicy::All => Acks::Cumulative(Arc::new(Cumulative::new())),
    };

    let names = RelationNames::new(&settings.store);
    let mut admin = postgres::connect(&settings.store).await?;
    let backend = if options.skip_migrations {
        schema::check_layout(&admin, &names).await?;
        schema::detect_backend(&admin, &settings.store).await?
    } else {
        schema::migrate(&mut admin, &settings.store)
            .await?
            .backend
            .unwrap_or(Backend::Native)
    };
    tracing::info!(backend = %backend, table = %names.metrics, "database ready");
    let key = register_stream(&js, &admin, &names, settings, options).await?;
    if settings.consumer.ack_policy == AckPolicy::All && !claim_consumer(&admin, settings).await? {
        return Err(PipelineError::ConsumerTaken {
            consumer: settings.consumer.name.clone(),
        });
    }
    if backend.native_partitions() {
        maintenance::partitions_ahead(&admin, &names, &settings.store, settings.limits.max_future)
            .await?;
    }

    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(settings.store.writers);
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    let (emptied_tx, emptied_rx) = mpsc::channel::<Batch>(settings.store.writers + 1);
    let series = (settings.store.layout == MetricsLayout::Series)
        .then(|| Arc::new(SeriesCache::new(settings.store.series_cache)));
    if let Some(cache) = &series {
        let loaded = crate::exporters::postgres::series::warm(&admin, &names.series, cache).await?;
        tracing::info!(series = loaded, "series cache warmed");
    }
    let caches = SharedCaches {
        partitions: Arc::new(PartitionCache::default()),
        series: series.clone(),
    };
    let mut writers = Vec::new();
    for index in 0..settings.store.writers {
        let client = postgres::connect(&settings.store).await?;
        let writer = Writer::new(
            client,
            names.clone(),
            key,
            settings.stream.name.clone(),
            backend.clone(),
            settings.store.chunk_interval,
            caches.clone(),
        );
        writers.push(tokio::spawn(write_loop(
            index,
            writer,
            settings.clone(),
            nats.clone(),
            acks.clone(),
            batch_rx.clone(),
            emptied_tx.clone(),
            counters.clone(),
            shutdown.clone(),
        )));
    }
    let upkeep = tokio::spawn(upkeep_loop(
        admin,
        names.clone(),
        settings.clone(),
        backend.clone(),
        key,
        js_stream.clone(),
        shutdown.clone(),
    ));

    let empty_batch = Batch::new(
        settings.store.chunk_interval.as_micros() as i64,
        settings.batch.max_rows,
    )
    .with_series(series);
    let fetched = fetch_loop(
        settings,
        options,
        &consumer,
        &nats,
        &acks,
        empty_batch,
        Outbox {
            full: batch_tx,
            emptied: emptied_rx,
        },
        &mut shutdown,
    )
    .await;
    // The batch channel is closed: writers finish what they hold, then stop.
    for w in writers {
        let _ = w.await;
    }
    upkeep.abort();
    // Bounded: with NATS gone a flush would wait for a reconnection that may never come.
    let _ = tokio::time::timeout(Duration::from_secs(5), nats.flush()).await;
    fetched?;
    Ok(RunReport {
        messages: counters.messages.load(Ordering::Relaxed),
        rows: counters.rows.load(Ordering::Relaxed),
        dead_letters: counters.dead_letters.load(Ordering::Relaxed),
        duplicates: counters.duplicates.load(Ordering::Relaxed),
        batches: counters.batches.load(Ordering::Relaxed),
        series_found: counters.series_found.load(Ordering::Relaxed),
        series_created: counters.series_created.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency_p50: counters.latency.quantile(0.5),
        latency_p99: counters.latency.quantile(0.99),
        backend: backend.to_string(),
    })
}

/// Takes the session-level advisory lock that makes this the consumer's only collector.
/// Safety does not rest on it (cumulative acks are proven, see `ack::Cumulative`); it turns
/// a second collector, which would only stall both, into a clear error at start.
async fn claim_consumer(
    admin: &tokio_postgres::Client,
    settings: &Settings,
) -> Result<bool, StoreError> {
    let key = format!(
        "jetscale ack_policy=all {}/{}",
        settings.stream.name, settings.consumer.name
    );
    // A collector restarted right after being killed may find its predecessor's database
    // session not yet ended: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = admin
            .query_one("SELECT pg_try_advisory_lock(hashtext($1)::bigint)", &[&key])
            .await?;
        if row.get(0) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn register_stream(
    js: &jetstream::Context,
    admin: &tokio_postgres::Client,
    names: &RelationNames,
    settings: &Settings,
    options: &RunOptions,
) -> Result<StreamKey, PipelineError> {
    let mut s = js
        .get_stream(&settings.stream.name)
        .await
        .map_err(|e| StreamError::JetStream {
            step: "get stream",
            detail: e.to_string(),
        })?;
    let info = s.info().await.map_err(|e| StreamError::JetStream {
        step: "stream info",
        detail: e.to_string(),
    })?;
    let state = StreamState {
        name: settings.stream.name.clone(),
        created: SystemTime::from(info.created),
        last_seq: info.state.last_sequence,
    };
    Ok(ledger::register(
        admin,
        names,
        &state,
        &settings.consumer.name,
        options.accept_new_stream,
    )
    .await?)
}

/// Where the fetch loop sends full batches, and finds the ones the writers have emptied.
struct Outbox {
    full: mpsc::Sender<Batch>,
    emptied: mpsc::Receiver<Batch>,
}

impl Outbox {
    /// An empty batch to fill next: one a writer handed back, or a new one like `batch`.
    fn take_reusable_batch(&mut self, batch: &Batch, max_rows: usize) -> Batch {
        match self.emptied.try_recv() {
            Ok(mut reused) => {
                reused.opened = Instant::now();
                reused
            }
            Err(_) => batch.new_empty(max_rows),
        }
    }

    /// Sends `batch` to the writers and starts an empty one in its place; false once the
    /// writers are gone.
    async fn send_and_renew(&mut self, batch: &mut Batch, max_rows: usize) -> bool {
        let next = self.take_reusable_batch(batch, max_rows);
        let full = std::mem::replace(batch, next);
        self.full.send(full).await.is_ok()
    }
}

/// The headers the decoder reads, found in one pass: looking each up by name would build a
/// header name (an allocation for the custom ones) and hash it, three times per message.
#[derive(Default)]
struct DecodeHeaders<'a> {
    content_type: Option<&'a str>,
    jetscale_format: Option<&'a str>,
    otlp_signal: Option<&'a str>,
}

impl<'a> DecodeHeaders<'a> {
    fn of(headers: Option<&'a async_nats::HeaderMap>) -> Self {
        let mut found = DecodeHeaders::default();
        for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
            let slot = match name.as_ref() {
                "Content-Type" => &mut found.content_type,
                "Jetscale-Format" => &mut found.jetscale_format,
                "Otlp-Signal" => &mut found.otlp_signal,
                _ => continue,
            };
            *slot = values.first().map(|v| v.as_str());
        }
        found
    }
}

#[allow(clippy::too_many_arguments)]
async fn fetch_loop(
    settings: &Settings,
    options: &RunOptions,
    consumer: &jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    nats: &async_nats::Client,
    acks: &Acks,
    mut batch: Batch,
    mut outbox: Outbox,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.consumer.fetch_batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| PipelineError::Consume(e.to_string()))?;
    let mut last_message = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut consumer = consumer.clone();
    let mut decode_ctx_at = Instant::now();
    let mut ctx = DecodeContext::now(&settings.limits, &settings.resource, settings.encoding);
    let mut pull_backoff = Duration::from_millis(50);
    let mut last_proof_attempt = Instant::now();
    if let Acks::Cumulative(cumulative) = acks {
        try_to_prove(cumulative, &mut consumer, nats).await;
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            next = messages.next() => {
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Missed heartbeats and the like: the stream of messages recovers by
                        // itself once NATS is back. Back off so a lasting error (a deleted
                        // consumer, a lost permission) is reported, not spun on.
                        tracing::warn!(error = %e, retry_in = ?pull_backoff, "JetStream pull failed");
                        tokio::time::sleep(pull_backoff).await;
                        pull_backoff = (pull_backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                    None => return Err(PipelineError::Consume("the consumer's message stream ended".into())),
                };
                last_message = Instant::now();
                pull_backoff = Duration::from_millis(50);
                if decode_ctx_at.elapsed() > Duration::from_secs(1) {
                    ctx = DecodeContext::now(&settings.limits, &settings.resource, settings.encoding);
                    decode_ctx_at = Instant::now();
                }
                let Ok(info) = message.info() else {
                    tracing::warn!(subject = %message.subject, "a delivery without JetStream metadata; skipping it");
                    continue;
                };
                let stream_seq = info.stream_sequence;
                let published_ns = info.published.unix_timestamp_nanos() as i64;
                let Some(reply) = message.reply.clone() else { continue };
                if let Acks::Cumulative(cumulative) = acks {
                    cumulative.seen(info.consumer_sequence, stream_seq, reply.clone());
                }
                let headers = message.headers.as_ref();
                let found = DecodeHeaders::of(headers);
                let incoming = Incoming {
                    subject: message.subject.as_str(),
                    content_type: found.content_type,
                    format_header: found.jetscale_format.or(found.otlp_signal),
                    payload: &message.payload,
                };
                let delivery = Delivery {
                    stream_seq,
                    reply,
                    headers,
                    published_ns,
                    subject: message.subject.clone(),
                    payload: message.payload.clone(),
                };
                if let Err(rejection) = batch.add(&incoming, delivery, &ctx) {
                    tracing::debug!(seq = stream_seq, subject = %message.subject, %rejection, "dead letter");
                }
                if batch.size_in_rows() >= settings.batch.max_rows
                    && !outbox.send_and_renew(&mut batch, settings.batch.max_rows).await
                {
                    break;
                }
            }
            _ = tick.tick() => {
                if let Acks::Cumulative(cumulative) = acks {
                    if let Some(since) = cumulative.held_since() {
                        let held = since.elapsed();
                        if held > 3 * settings.consumer.ack_wait + Duration::from_secs(30) {
                            return Err(PipelineError::AcksHeld { consumer: settings.consumer.name.clone(), held });
                        }
                        if last_proof_attempt.elapsed() >= PROOF_INTERVAL {
                            try_to_prove(cumulative, &mut consumer, nats).await;
                            last_proof_attempt = Instant::now();
                        }
                    }
                }
                // A partial batch goes when it is due, or as soon as the stream has nothing
                // more for now: waiting out the timeout then would only add latency.
                let drained = last_message.elapsed() >= IDLE_FLUSH;
                if !batch.is_empty()
                    && (batch.opened.elapsed() >= settings.batch.timeout || drained)
                    && !outbox.send_and_renew(&mut batch, settings.batch.max_rows).await
                {
                    break;
                }
                if let Some(idle) = options.exit_when_idle {
                    if batch.is_empty() && last_message.elapsed() >= idle && outbox.full.capacity() == outbox.full.max_capacity() {
                        if let Ok(info) = consumer.info().await {
                            if info.num_pending == 0 && info.num_ack_pending == 0 {
                                tracing::info!("consumer idle: nothing pending, nothing unacknowledged; stopping");
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    // On shutdown the partial batch is written rather than dropped: it is usually small, and
    // an abandoned batch would only be redelivered anyway.
    if !batch.is_empty() {
        let _ = outbox.full.send(batch).await;
    }
    Ok(())
}

/// How often a collector holding cumulative acks asks JetStream whether it can prove them.
const PROOF_INTERVAL: Duration = Duration::from_millis(500);

/// Asks the consumer's state and, if it proves every pending delivery was seen here, sends
/// the cumulative ack that was waiting.
async fn try_to_prove(
    cumulative: &Cumulative,
    consumer: &mut jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    nats: &async_nats::Client,
) {
    let attempt = cumulative.attempt();
    let info = match consumer.info().await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "consumer info failed; cumulative acks stay held");
            return;
        }
    };
    let state = ack::ConsumerState {
        num_ack_pending: info.num_ack_pending,
        ack_floor_stream_seq: info.ack_floor.stream_sequence,
        last_delivered_consumer_seq: info.delivered.consumer_sequence,
    };
    if let Some(reply) = cumulative.prove(attempt, state) {
        ack::send(nats, std::slice::from_ref(&reply)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    index: usize,
    mut writer: Writer,
    settings: Settings,
    nats: async_nats::Client,
    acks: Acks,
    batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    emptied: mpsc::Sender<Batch>,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let next = batches.lock().await.recv().await;
        let Some(mut batch) = next else { return };
        let mut backoff = Duration::from_millis(100);
        let mut last_progress = Instant::now();
        loop {
            let write_started = Instant::now();
            match writer.write(&batch).await {
                Ok(done) => {
                    let written = write_started.elapsed();
                    acks.committed(
                        &nats,
                        &done.replies,
                        batch.messages.iter().map(|m| m.stream_seq),
                    )
                    .await;
                    tracing::debug!(
                        writer = index,
                        write_ms = written.as_millis() as u64,
                        ack_ms = (write_started.elapsed() - written).as_millis() as u64,
                        waited_in_queue_ms = batch
                            .opened
                            .elapsed()
                            .saturating_sub(write_started.elapsed())
                            .as_millis() as u64,
                        "batch timings"
                    );
                    counters.record(&done);
                    tracing::debug!(
                        writer = index,
                        rows = done.rows,
                        messages = done.messages,
                        dead_letters = done.dead_letters,
                        duplicates = done.duplicates,
                        "batch committed"
                    );
                    break;
                }
                Err(e) => {
                    counters.write_retries.fetch_add(1, Ordering::Relaxed);
                    if *shutdown.borrow() && !e.is_transient() {
                        tracing::error!(error = %e, "abandoning a batch at shutdown; it will be redelivered");
                        break;
                    }
                    tracing::warn!(writer = index, error = %e, retry_in = ?backoff, "batch not written; retrying (nothing is acknowledged until it commits)");
                    let replies: Vec<_> = batch
                        .messages
                        .iter()
                        .flat_map(|m| m.replies().cloned())
                        .collect();
                    if last_progress.elapsed() >= settings.consumer.ack_wait / 3 {
                        ack::in_progress(&nats, &replies).await;
                        last_progress = Instant::now();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    if writer.is_closed() {
                        match postgres::connect(&settings.store).await {
                            Ok(client) => writer.reconnect(client),
                            Err(e) => tracing::warn!(error = %e, "database still unreachable"),
                        }
                    }
                    if *shutdown.borrow() && backoff >= Duration::from_secs(10) {
                        tracing::warn!(
                            "shutting down with a batch unwritten; it will be redelivered"
                        );
                        break;
                    }
                }
            }
        }
        // Emptied here, on the writer's thread, rather than dropped: the fetch loop refills
        // it without allocating. When the fetch loop has gone (or holds enough), it drops.
        batch.clear();
        let _ = emptied.try_send(batch);
    }
}

async fn upkeep_loop(
    mut admin: tokio_postgres::Client,
    names: RelationNames,
    settings: Settings,
    backend: Backend,
    key: StreamKey,
    js_stream: jetstream::stream::Stream,
    shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        if *shutdown.borrow() {
            return;
        }
        if admin.is_closed() {
            match postgres::connect(&settings.store).await {
                Ok(c) => admin = c,
                Err(_) => continue,
            }
            if settings.consumer.ack_policy == AckPolicy::All
                && !matches!(claim_consumer(&admin, &settings).await, Ok(true))
            {
                tracing::warn!(consumer = %settings.consumer.name, "could not reclaim the consumer after reconnecting to the database: another collector may have started; acks stay safe but may be held");
            }
        }
        match maintenance::run_once(
            &admin,
            &names,
            &settings.store,
            &backend,
            settings.limits.max_future,
        )
        .await
        {
            Ok(u)
                if u.partitions_created
                    + u.partitions_dropped
                    + u.partitions_indexed
                    + u.rollup_buckets
                    > 0 =>
            {
                tracing::info!(
                    created = u.partitions_created,
                    dropped = u.partitions_dropped,
                    indexed = u.partitions_indexed,
                    rollup_buckets = u.rollup_buckets,
                    "maintenance"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "maintenance failed; will retry"),
        }
        let floor = match js_stream.consumer_info(&settings.consumer.name).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(_) => continue,
        };
        if let Err(e) = ledger::prune(&mut admin, &names, key, &settings.consumer.name, floor).await
        {
            tracing::warn!(error = %e, "ledger pruning failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeHeaders;

    #[test]
    fn the_decoders_headers_are_found_in_one_pass() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "dev-1-7");
        headers.insert("Content-Type", "application/x-protobuf");
        headers.insert("Otlp-Signal", "logs");
        headers.insert("Jetscale-Format", "otlp_proto");
        let found = DecodeHeaders::of(Some(&headers));
        assert_eq!(found.content_type, Some("application/x-protobuf"));
        assert_eq!(found.jetscale_format, Some("otlp_proto"));
        assert_eq!(found.otlp_signal, Some("logs"));

        // Names match exactly, as a lookup by name did.
        let mut other = async_nats::HeaderMap::new();
        other.insert("content-type", "text/plain");
        let found = DecodeHeaders::of(Some(&other));
        assert_eq!(found.content_type, None);
        assert!(DecodeHeaders::of(None).content_type.is_none());
    }
}
