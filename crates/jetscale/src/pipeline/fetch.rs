//! The fetch loop: pulls deliveries from the durable consumer, decodes each into the batch
//! being filled, and hands full (or due) batches to the writers. It never acknowledges: the
//! write loop does, once a batch has committed.

use super::{PipelineError, RunOptions};
use crate::ack::{self, Acks};
use crate::config::Settings;
use crate::decode::{DecodeContext, Incoming};
use crate::exporters::postgres::batch::{Batch, Delivery};
use crate::receivers::nats;
use crate::self_metrics::Counters;
use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind, Stream as Messages};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use jetscale_sdk::backoff::{Backoff, Retries};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// A partial batch is written once no message has arrived for this long.
const IDLE_FLUSH: Duration = Duration::from_millis(200);

/// How often the decoder's time window (max_past, max_future) moves on with the clock.
const DECODE_WINDOW_REFRESH: Duration = Duration::from_secs(1);

/// Waits between failed pulls: short at first (a blip), then up to seconds, so a lasting
/// error is reported rather than spun on.
const PULL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

/// Where the fetch loop sends full batches, and finds the ones the writers have emptied.
pub(super) struct Outbox {
    pub full: mpsc::Sender<Batch>,
    pub emptied: mpsc::Receiver<Batch>,
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

    /// Whether every batch sent has been taken by a writer.
    fn is_drained(&self) -> bool {
        self.full.capacity() == self.full.max_capacity()
    }
}

/// The fetch loop's inputs: the consumer to pull from, how to ack (for the cumulative
/// proof), the first empty batch and the channels to the writers.
pub(super) struct Fetch<'a> {
    pub settings: &'a Settings,
    pub options: &'a RunOptions,
    pub nats: &'a async_nats::Client,
    /// The consumer's stream, to create the consumer again if it is deleted.
    pub js_stream: &'a stream::Stream,
    pub consumer: PullConsumer,
    pub acks: &'a Acks,
    /// Where deliveries are counted, and the consumer's binding reported.
    pub counters: &'a Counters,
    pub batch: Batch,
    pub outbox: Outbox,
    /// Deliveries (and redeliveries among them) fetched since the last batch was sent.
    pub fetched: (u64, u64),
}

/// What happened to a delivery handed to the batch.
enum Added {
    Kept,
    /// The writers are gone: stop.
    WritersGone,
}

impl<'a> Fetch<'a> {
    /// Runs until `shutdown`, the consumer is idle (if asked), or a lasting error; the
    /// partial batch is handed to the writers on the way out.
    pub async fn run(mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), PipelineError> {
        let mut messages = self.pull().await?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let settings = self.settings;
        let mut decode_ctx_at = Instant::now();
        let mut ctx = DecodeContext::now(&settings.limits, &settings.resource, settings.encoding);
        let mut retries = PULL_BACKOFF.retries();
        let mut last_message = Instant::now();
        let mut last_proof_attempt = Instant::now();
        self.try_to_prove().await;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                next = messages.next() => {
                    let message = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            if let Some(fresh) = self.recover(e, &mut retries).await? {
                                messages = fresh;
                            }
                            continue;
                        }
                        None => return Err(PipelineError::Consume("the consumer's message stream ended".into())),
                    };
                    last_message = Instant::now();
                    retries.reset();
                    if decode_ctx_at.elapsed() > DECODE_WINDOW_REFRESH {
                        ctx = DecodeContext::now(&settings.limits, &settings.resource, settings.encoding);
                        decode_ctx_at = Instant::now();
                    }
                    if let Added::WritersGone = self.add(&message, &ctx).await {
                        break;
                    }
                }
                _ = tick.tick() => {
                    if self.acks_held()? && last_proof_attempt.elapsed() >= ack::PROOF_INTERVAL {
                        self.try_to_prove().await;
                        last_proof_attempt = Instant::now();
                    }
                    // A partial batch goes when it is due, or as soon as the stream has nothing
                    // more for now: waiting out the timeout then would only add latency.
                    let drained = last_message.elapsed() >= IDLE_FLUSH;
                    if !self.batch.is_empty()
                        && (self.batch.opened.elapsed() >= settings.batch.timeout || drained)
                        && !self.send_batch().await
                    {
                        break;
                    }
                    if self.options.exit_when_idle.is_some_and(|idle| last_message.elapsed() >= idle)
                        && self.is_idle().await
                    {
                        tracing::info!("consumer idle: nothing pending, nothing unacknowledged; stopping");
                        break;
                    }
                }
            }
        }
        // On shutdown the partial batch is written rather than dropped: it is usually small, and
        // an abandoned batch would only be redelivered anyway.
        if !self.batch.is_empty() {
            let _ = self.outbox.full.send(self.batch).await;
        }
        Ok(())
    }

    /// A new message stream on the consumer: its first poll sends a pull request.
    async fn pull(&self) -> Result<Messages, PipelineError> {
        self.consumer
            .stream()
            .max_messages_per_batch(self.settings.consumer.fetch_batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| PipelineError::Consume(e.to_string()))
    }

    /// Decodes a delivery into the batch, and sends the batch on once it is full.
    async fn add(&mut self, message: &jetstream::Message, ctx: &DecodeContext<'_>) -> Added {
        let Ok(info) = message.info() else {
            tracing::warn!(subject = %message.subject, "a delivery without JetStream metadata; skipping it");
            return Added::Kept;
        };
        let stream_seq = info.stream_sequence;
        // Counted per batch (see `send_batch`), not with an atomic per message.
        self.fetched.0 += 1;
        self.fetched.1 += u64::from(info.delivered > 1);
        let published_ns = info.published.unix_timestamp_nanos() as i64;
        let Some(reply) = message.reply.clone() else {
            return Added::Kept;
        };
        if let Acks::Cumulative(cumulative) = self.acks {
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
        if let Err(rejection) = self.batch.add(&incoming, delivery, ctx) {
            tracing::debug!(seq = stream_seq, subject = %message.subject, %rejection, "dead letter");
        }
        if self.batch.size_in_rows() >= self.settings.batch.max_rows && !self.send_batch().await {
            return Added::WritersGone;
        }
        Added::Kept
    }

    /// Hands the batch to the writers; false once they are gone.
    async fn send_batch(&mut self) -> bool {
        let (received, redelivered) = std::mem::take(&mut self.fetched);
        self.counters
            .received
            .fetch_add(received, Ordering::Relaxed);
        self.counters
            .redelivered
            .fetch_add(redelivered, Ordering::Relaxed);
        self.outbox
            .send_and_renew(&mut self.batch, self.settings.batch.max_rows)
            .await
    }

    /// What to do about a failed pull: wait and go on, pull anew, bind the consumer anew, or
    /// stop with the reason. Returns the message stream to read from now, if it changed.
    async fn recover(
        &mut self,
        error: MessagesError,
        retries: &mut Retries,
    ) -> Result<Option<Messages>, PipelineError> {
        match error.kind() {
            // The server (or the way to it) went quiet, or JetStream did not answer the pull:
            // the pull request may be gone with it, and the message stream would only ask
            // again once it expires. Ask now, after a wait so an outage is not hammered.
            MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::NoResponders => {
                let wait = retries.next_delay();
                tracing::warn!(error = %error, retry_in = ?wait, "JetStream pull went unanswered; pulling again");
                tokio::time::sleep(wait).await;
                self.pull().await.map(Some)
            }
            // Sending the pull request failed (the connection is down): the message stream
            // sends it again once the client has reconnected.
            MessagesErrorKind::Pull | MessagesErrorKind::Other => {
                let wait = retries.next_delay();
                tracing::warn!(error = %error, retry_in = ?wait, "JetStream pull failed");
                tokio::time::sleep(wait).await;
                Ok(None)
            }
            MessagesErrorKind::ConsumerDeleted => self.rebind().await.map(Some),
            // The consumer was replaced by one this collector can not pull from as configured.
            MessagesErrorKind::PushBasedConsumer | MessagesErrorKind::RequestLimitExceeded => {
                Err(PipelineError::Consume(format!(
                    "{error}: the consumer `{}` no longer matches the configuration; delete it and run `jetscale setup`",
                    self.settings.consumer.name
                )))
            }
        }
    }

    /// Creates the deleted consumer again, as configured, and pulls from it. What it had not
    /// acknowledged is delivered again, and the ledger skips what is already stored.
    async fn rebind(&mut self) -> Result<Messages, PipelineError> {
        let name = &self.settings.consumer.name;
        self.counters.health.consumer_bound(false);
        tracing::warn!(consumer = %name, "the consumer was deleted; creating it again (deliveries not acknowledged are delivered again, and those already stored are skipped)");
        // The server may still be removing the old one's state: retry for a few seconds.
        let mut retries = PULL_BACKOFF.retries();
        self.consumer = loop {
            match nats::ensure_consumer(self.js_stream, &self.settings.consumer).await {
                Ok((_, consumer)) => break consumer,
                Err(e) if retries.at_max() => {
                    return Err(PipelineError::ConsumerLost {
                        consumer: name.clone(),
                        detail: e.to_string(),
                    })
                }
                Err(e) => {
                    let wait = retries.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "the consumer could not be created again yet");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        self.counters.health.consumer_bound(true);
        if let Acks::Cumulative(cumulative) = self.acks {
            cumulative.restart();
        }
        let messages = self.pull().await?;
        // Before the first delivery, as at start: the new consumer's state proves itself.
        self.try_to_prove().await;
        Ok(messages)
    }

    /// With cumulative acks, asks JetStream whether the held acks can be proven.
    async fn try_to_prove(&mut self) {
        if let Acks::Cumulative(cumulative) = self.acks {
            cumulative.try_to_prove(&mut self.consumer, self.nats).await;
        }
    }

    /// Whether cumulative acks are held; an error once they have been held for too long.
    fn acks_held(&self) -> Result<bool, PipelineError> {
        let Acks::Cumulative(cumulative) = self.acks else {
            return Ok(false);
        };
        let Some(since) = cumulative.held_since() else {
            return Ok(false);
        };
        let held = since.elapsed();
        if held > 3 * self.settings.consumer.ack_wait + Duration::from_secs(30) {
            return Err(PipelineError::AcksHeld {
                consumer: self.settings.consumer.name.clone(),
                held,
            });
        }
        Ok(true)
    }

    /// Whether everything delivered is written and JetStream has nothing pending.
    async fn is_idle(&mut self) -> bool {
        if !self.batch.is_empty() || !self.outbox.is_drained() {
            return false;
        }
        match self.consumer.info().await {
            Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
            Err(_) => false,
        }
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
