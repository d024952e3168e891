//! The collector runtime: fetch → decode → batch → write (one transaction) → ack, over
//! bounded channels, so a slow database slows consumption and the backlog stays in
//! JetStream. Memory is bounded by `(writers + 1) × batch size` messages plus one pull
//! request's worth of prefetched messages.
//!
//! Start-up is here ([`run`]); each loop has a file of its own: [`fetch`] pulls deliveries
//! and decodes them into batches, [`write`] commits each batch and acks it, and [`upkeep`]
//! keeps partitions, rollups and the ledger in shape meanwhile.

pub mod dead_letters;
mod fetch;
mod lag;
mod upkeep;
mod write;

pub use crate::self_metrics::{Counters, Totals};

use crate::ack::{Acks, Cumulative};
use crate::config::{AckPolicy, ConfigError, MetricsLayout, Settings};
use crate::exporters::postgres::batch::Batch;
use crate::exporters::postgres::ledger::{self, StreamState};
use crate::exporters::postgres::maintenance;
use crate::exporters::postgres::schema::{self, Backend, RelationNames};
use crate::exporters::postgres::series::SeriesCache;
use crate::exporters::postgres::writer::{PartitionCache, SharedCaches, Writer};
use crate::exporters::postgres::{self, StoreError};
use crate::receivers::nats::{self, StreamError};
use async_nats::jetstream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch, Mutex};

/// Why the collector stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("consuming from JetStream failed: {0}")]
    Consume(String),
    #[error("the consumer `{consumer}` was deleted and could not be created again: {detail}. Create it (`jetscale setup`) and start the collector again")]
    ConsumerLost { consumer: String, detail: String },
    #[error("cumulative acks (ack_policy = all) held for {held:?} without proof that nothing unknown is pending: another collector is probably consuming `{consumer}`. ack_policy = all allows one collector per consumer: stop the others, or use ack_policy = explicit")]
    AcksHeld { consumer: String, held: Duration },
    #[error("another collector already consumes `{consumer}` with ack_policy = all, which allows one collector per consumer (its cumulative acks would hold this one's back): stop it, or give this collector its own consumer")]
    ConsumerTaken { consumer: String },
    #[error(transparent)]
    Listen(#[from] crate::self_metrics::http::ListenError),
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

/// What a finished run did: the counters' final [`Totals`] (read through it, as
/// `report.rows`), and how long and how fast.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub totals: Totals,
    pub elapsed: Duration,
    pub latency_p50: Option<Duration>,
    pub latency_p99: Option<Duration>,
    pub backend: String,
}

impl std::ops::Deref for RunReport {
    type Target = Totals;

    fn deref(&self) -> &Totals {
        &self.totals
    }
}

/// Runs the collector until `shutdown` turns true (or the consumer is idle, if asked).
pub async fn run(
    settings: &Settings,
    options: &RunOptions,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunReport, PipelineError> {
    let started = Instant::now();
    // First, so that /health/live answers (and /health/ready says why not) during start-up.
    let _listener = match settings.telemetry.metrics_address {
        Some(address) => Some(crate::self_metrics::http::serve(address, counters.clone()).await?),
        None => None,
    };
    let nats = nats::connect(&settings.nats, "jetscale-collector").await?;
    let js = jetstream::new(nats.clone());
    let (_, js_stream) = nats::ensure_stream(&js, &settings.stream).await?;
    if let Some(subject) = &settings.dead_letter_subject {
        // The configured subjects were checked; the stream's own may differ from them.
        let stream_subjects = &js_stream.cached_info().config.subjects;
        crate::config::settings::check_dead_letter_subject(subject, stream_subjects)?;
    }
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
    let state = stream_state(&js_stream, &settings.stream.name).await?;
    let key = ledger::register(
        &admin,
        &names,
        &state,
        &settings.consumer.name,
        options.accept_new_stream,
    )
    .await?;
    if settings.consumer.ack_policy == AckPolicy::All
        && !ledger::claim_consumer(&admin, &settings.stream.name, &settings.consumer.name).await?
    {
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
    let dead_letters = dead_letters::Republish::new(settings);
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
        let write = write::Write {
            index,
            writer,
            settings: settings.clone(),
            nats: nats.clone(),
            acks: acks.clone(),
            dead_letters: dead_letters.clone(),
            batches: batch_rx.clone(),
            emptied: emptied_tx.clone(),
            counters: counters.clone(),
            shutdown: shutdown.clone(),
        };
        writers.push(tokio::spawn(write.run()));
    }
    let upkeep = upkeep::Upkeep {
        admin,
        names: names.clone(),
        settings: settings.clone(),
        backend: backend.clone(),
        key,
        js_stream: js_stream.clone(),
        shutdown: shutdown.clone(),
    };
    let upkeep = tokio::spawn(upkeep.run());
    let lag = tokio::spawn(
        lag::Lag {
            js_stream: js_stream.clone(),
            consumer: settings.consumer.name.clone(),
            series: series.clone(),
            counters: counters.clone(),
        }
        .run(),
    );
    counters
        .health
        .started(&nats, settings.telemetry.unready_after);

    let empty_batch = Batch::new(
        settings.store.chunk_interval.as_micros() as i64,
        settings.batch.max_rows,
    )
    .with_series(series);
    let fetch = fetch::Fetch {
        settings,
        options,
        nats: &nats,
        js_stream: &js_stream,
        consumer,
        acks: &acks,
        counters: &counters,
        batch: empty_batch,
        outbox: fetch::Outbox {
            full: batch_tx,
            emptied: emptied_rx,
        },
        fetched: (0, 0),
    };
    let fetched = fetch.run(&mut shutdown).await;
    // The batch channel is closed: writers finish what they hold, then stop.
    for w in writers {
        let _ = w.await;
    }
    upkeep.abort();
    lag.abort();
    if options.exit_when_idle.is_some() && fetched.is_ok() {
        refresh_before_exit(settings, &names, &backend).await;
    }
    // Bounded: with NATS gone a flush would wait for a reconnection that may never come.
    let _ = tokio::time::timeout(Duration::from_secs(5), nats.flush()).await;
    fetched?;
    Ok(RunReport {
        totals: counters.snapshot(),
        elapsed: started.elapsed(),
        latency_p50: counters.latency.quantile(0.5),
        latency_p99: counters.latency.quantile(0.99),
        backend: backend.to_string(),
    })
}

/// Brings the hourly rollup up to date before an idle collector exits: the drained backlog is
/// usually late hours, and with no collector left running, no upkeep round would materialize
/// them (native: the view shows them, aggregated live, at a cost on every query) or refresh
/// them (a continuous aggregate shows them stale). Failure costs no data, so it is a warning.
async fn refresh_before_exit(settings: &Settings, names: &RelationNames, backend: &Backend) {
    let refreshed = match postgres::connect(&settings.store).await {
        Ok(client) => maintenance::refresh_rollup(&client, names, backend).await,
        Err(e) => Err(e),
    };
    match refreshed {
        Ok(hours) => tracing::info!(hours, "hourly rollup refreshed before exiting"),
        Err(e) => {
            tracing::warn!(error = %e, rollup = %names.hourly, "could not refresh the hourly rollup before exiting: it is complete for queries on plain PostgreSQL, but a TimescaleDB continuous aggregate stays stale for late hours until a collector runs again or its policy runs (or CALL refresh_continuous_aggregate)")
        }
    }
}

/// The stream as the delivery ledger identifies it: name, creation time, last sequence.
async fn stream_state(
    js_stream: &jetstream::stream::Stream,
    name: &str,
) -> Result<StreamState, StreamError> {
    let info = js_stream
        .get_info()
        .await
        .map_err(|e| StreamError::JetStream {
            step: "stream info",
            detail: e.to_string(),
        })?;
    Ok(StreamState {
        name: name.to_owned(),
        created: SystemTime::from(info.created),
        last_seq: info.state.last_sequence,
    })
}
