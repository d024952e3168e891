//! The write loop: one per database connection. Takes a full batch, commits it in one
//! transaction (retrying for as long as the database is away, the deliveries kept in
//! progress meanwhile), then acknowledges it and republishes its dead letters.

use super::dead_letters::Republish;
use crate::ack::{self, Acks};
use crate::config::Settings;
use crate::exporters::postgres;
use crate::exporters::postgres::batch::Batch;
use crate::exporters::postgres::writer::{Committed, Writer};
use crate::self_metrics::Counters;
use jetscale_sdk::backoff::Backoff;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Mutex};

/// Waits between attempts at a batch the database did not take. Jittered, so the writers
/// (of this collector and of others) do not all come back to a recovering database at once.
const WRITE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// One writer's loop and what it needs: its connection, the batches to take and where to
/// hand them back emptied, how to ack, and the counters to keep.
pub(super) struct Write {
    pub index: usize,
    pub writer: Writer,
    pub settings: Settings,
    pub nats: async_nats::Client,
    pub acks: Acks,
    pub dead_letters: Republish,
    pub batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    pub emptied: mpsc::Sender<Batch>,
    pub counters: Arc<Counters>,
    pub shutdown: watch::Receiver<bool>,
}

impl Write {
    /// Writes batches until the fetch loop closes the channel.
    pub async fn run(mut self) {
        loop {
            let next = self.batches.lock().await.recv().await;
            let Some(mut batch) = next else { return };
            self.write(&batch).await;
            // Emptied here, on the writer's thread, rather than dropped: the fetch loop
            // refills it without allocating. When the fetch loop has gone (or holds enough),
            // it drops.
            batch.clear();
            let _ = self.emptied.try_send(batch);
        }
    }

    /// Commits the batch, then acks it; or gives it up at shutdown, to be redelivered.
    async fn write(&mut self, batch: &Batch) {
        let mut retries = WRITE_BACKOFF.retries();
        let mut last_progress = Instant::now();
        let first_attempt = Instant::now();
        loop {
            let write_started = Instant::now();
            let e = match self.writer.write(batch).await {
                Ok(done) => {
                    self.counters.health.committed();
                    self.counters
                        .transaction_duration
                        .record_ns(first_attempt.elapsed().as_nanos() as i64);
                    return self.committed(batch, &done, write_started).await;
                }
                Err(e) => e,
            };
            self.counters.write_retries.fetch_add(1, Ordering::Relaxed);
            self.counters.health.commit_failed();
            if *self.shutdown.borrow() && !e.is_transient() {
                tracing::error!(error = %e, "abandoning a batch at shutdown; it will be redelivered");
                return;
            }
            let wait = retries.next_delay();
            tracing::warn!(writer = self.index, error = %e, retry_in = ?wait, "batch not written; retrying (nothing is acknowledged until it commits)");
            if last_progress.elapsed() >= self.settings.consumer.ack_wait / 3 {
                let replies: Vec<_> = batch
                    .messages
                    .iter()
                    .flat_map(|m| m.replies().cloned())
                    .collect();
                ack::in_progress(&self.nats, &replies).await;
                last_progress = Instant::now();
            }
            tokio::time::sleep(wait).await;
            self.reconnect_if_closed().await;
            if *self.shutdown.borrow() && retries.at_max() {
                tracing::warn!("shutting down with a batch unwritten; it will be redelivered");
                return;
            }
        }
    }

    /// Acks a committed batch, republishes its dead letters, and counts it.
    async fn committed(&mut self, batch: &Batch, done: &Committed, write_started: Instant) {
        let written = write_started.elapsed();
        self.acks
            .committed(
                &self.nats,
                &done.replies,
                batch.messages.iter().map(|m| m.stream_seq),
            )
            .await;
        let acked = write_started.elapsed();
        // After the ack, so a NATS in trouble never holds it back.
        self.dead_letters
            .publish(&self.nats, &done.dead_lettered)
            .await;
        tracing::debug!(
            writer = self.index,
            write_ms = written.as_millis() as u64,
            ack_ms = (acked - written).as_millis() as u64,
            waited_in_queue_ms = write_started
                .saturating_duration_since(batch.opened)
                .as_millis() as u64,
            "batch timings"
        );
        self.counters.record(done);
        tracing::debug!(
            writer = self.index,
            rows = done.rows,
            messages = done.messages,
            dead_letters = done.dead_letters,
            duplicates = done.duplicates,
            "batch committed"
        );
    }

    async fn reconnect_if_closed(&mut self) {
        if !self.writer.is_closed() {
            return;
        }
        match postgres::connect(&self.settings.store).await {
            Ok(client) => self.writer.reconnect(client),
            Err(e) => tracing::warn!(error = %e, "database still unreachable"),
        }
    }
}
