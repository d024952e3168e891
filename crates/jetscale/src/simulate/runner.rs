//! The state of one run apart from scheduling: messages between their first publish and their
//! outcome, their acks, their retries, the confirmation of fire-and-forget messages, and the
//! counts and points the report is made of.

use super::fleet::{self, Fleet, Message};
use super::{Progress, SentPoint, SimulateError, SimulateOptions};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, Subject};
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use jetscale_model::now_unix_nanos;
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Pause before re-publishing a message whose publish or ack failed. One fixed value keeps the
/// retry queue in due order without a heap.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// The device payload is JSON; saying so lets the collector pick its decoder without sniffing.
const CONTENT_TYPE: async_nats::header::HeaderName =
    async_nats::header::HeaderName::from_static("Content-Type");
/// Messages that must fail for good, with nothing acknowledged at all, before the run gives up:
/// at that point the server or its permissions are wrong, not a message.
const GIVE_UP_AFTER: u64 = 10;

/// Size of the blocks payloads are carved from.
const PAYLOAD_BLOCK: usize = 64 * 1024;

/// A message between its first publish and its final outcome; enough to re-publish it
/// unchanged (same payload, same Nats-Msg-Id) and to record it once acknowledged.
#[derive(Debug)]
pub(super) struct Pending {
    device: u32,
    seq: u64,
    time_unix_nano: i64,
    values: [f64; 3],
    payload: Bytes,
    attempts: u32,
    /// When the first attempt was sent: retries stop `retry_budget` after it.
    first_sent: Instant,
    /// Fire-and-forget runs: plain messages published since the previous confirming one,
    /// which this message's ack confirms (and its failure loses).
    covers: u64,
    /// Those messages, kept when `record_sent` is on (their payloads dropped).
    covered: Vec<Pending>,
}

pub(super) struct Retry {
    pub(super) due: Instant,
    pub(super) pending: Pending,
}

type AckOutcome = (Pending, Result<PublishAck, PublishError>);

/// Awaits one publish ack and hands back its message. A named future instead of an `async`
/// block so `FuturesUnordered` can hold it without a second box per message (the client already
/// boxes the ack future).
pub(super) struct AckWait {
    pending: Option<Pending>,
    ack: <PublishAckFuture as IntoFuture>::IntoFuture,
}

impl AckWait {
    fn new(pending: Pending, ack: PublishAckFuture) -> Self {
        AckWait {
            pending: Some(pending),
            ack: ack.into_future(),
        }
    }
}

impl Future for AckWait {
    type Output = AckOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AckOutcome> {
        let res = ready!(self.ack.as_mut().poll(cx));
        match self.pending.take() {
            Some(pending) => Poll::Ready((pending, res)),
            // Polled again after completion: FuturesUnordered never does this.
            None => Poll::Pending,
        }
    }
}

/// The state of one run, apart from scheduling.
pub(super) struct Runner {
    pub(super) fleet: Fleet,
    pub(super) subjects: Vec<Subject>,
    pub(super) nonce: String,
    pub(super) buf: Vec<u8>,
    /// Payloads are carved from shared 64 KiB blocks, one allocation for dozens of
    /// messages; a block is freed when the last of its messages is acknowledged.
    pub(super) payloads: BytesMut,
    pub(super) in_flight: FuturesUnordered<AckWait>,
    pub(super) retries: VecDeque<Retry>,
    pub(super) record_sent: bool,
    pub(super) retry_budget: Duration,
    /// Fire-and-forget runs: the connection plain messages are published on.
    pub(super) plain: Option<async_nats::Client>,
    /// Plain messages not yet handed to a confirming message.
    pub(super) unconfirmed: Vec<Pending>,
    pub(super) unconfirmed_count: u64,
    /// Plain messages whose confirmation is pending (in flight or being retried).
    pub(super) awaiting_confirmation: u64,
    pub(super) start: Instant,
    pub(super) published: u64,
    pub(super) acked: u64,
    pub(super) errors: u64,
    pub(super) retried: u64,
    pub(super) sent: Vec<SentPoint>,
}

impl Runner {
    pub(super) fn new(opts: &SimulateOptions, start: Instant) -> Self {
        let fleet = Fleet::new(opts);
        let subjects = fleet
            .devices
            .iter()
            .map(|d| Subject::from(format!("{}.{}", opts.subject_prefix, d.id)))
            .collect();
        Runner {
            fleet,
            subjects,
            nonce: run_nonce(),
            buf: Vec::with_capacity(1024),
            payloads: BytesMut::with_capacity(PAYLOAD_BLOCK),
            in_flight: FuturesUnordered::new(),
            retries: VecDeque::new(),
            record_sent: opts.record_sent,
            retry_budget: opts.retry_budget,
            plain: None,
            unconfirmed: Vec::new(),
            unconfirmed_count: 0,
            awaiting_confirmation: 0,
            start,
            published: 0,
            acked: 0,
            errors: 0,
            retried: 0,
            sent: Vec::new(),
        }
    }

    pub(super) fn outstanding(&self) -> usize {
        self.in_flight.len()
            + self.retries.len()
            + (self.unconfirmed_count + self.awaiting_confirmation) as usize
    }

    fn subject(&self, device: u32) -> &str {
        self.subjects
            .get(device as usize)
            .map_or("", Subject::as_str)
    }

    pub(super) fn next_message(&mut self, device: u32) -> Pending {
        let msg = self
            .fleet
            .next_message(device as usize, now_unix_nanos(), &mut self.buf)
            .unwrap_or(Message {
                seq: 0,
                time_unix_nano: 0,
                values: [0.0; 3],
            });
        Pending {
            device,
            seq: msg.seq,
            time_unix_nano: msg.time_unix_nano,
            values: msg.values,
            payload: self.carve_payload(),
            attempts: 0,
            first_sent: Instant::now(),
            covers: 0,
            covered: Vec::new(),
        }
    }

    fn carve_payload(&mut self) -> Bytes {
        if self.payloads.capacity() < self.buf.len() {
            self.payloads = BytesMut::with_capacity(PAYLOAD_BLOCK.max(self.buf.len()));
        }
        self.payloads.extend_from_slice(&self.buf);
        self.payloads.split().freeze()
    }

    /// Hands one message to the client and queues its ack. Acks that complete meanwhile are
    /// processed: the client's own in-flight limit may make the publish wait for a permit that
    /// only our completed acks release, so not polling them here could stall forever.
    ///
    /// In a fire-and-forget run a message that need not `confirm` is published plainly.
    pub(super) async fn publish(
        &mut self,
        js: &async_nats::jetstream::Context,
        mut pending: Pending,
        confirm: bool,
    ) -> Result<(), SimulateError> {
        pending.attempts += 1;
        if pending.attempts == 1 {
            pending.first_sent = Instant::now();
        }
        let Some(subject) = self.subjects.get(pending.device as usize).cloned() else {
            return Ok(());
        };
        if let Some(plain) = &self.plain {
            if !confirm {
                if let Err(err) = plain.publish(subject, pending.payload.clone()).await {
                    // Only a closed client fails here; nothing reached the server.
                    tracing::warn!(error = %err, "plain publish failed");
                    self.errors += 1;
                    return Ok(());
                }
                self.unconfirmed_count += 1;
                if self.record_sent {
                    pending.payload = Bytes::new();
                    self.unconfirmed.push(pending);
                }
                return Ok(());
            }
            if pending.attempts == 1 {
                pending.covers = std::mem::take(&mut self.unconfirmed_count);
                pending.covered = std::mem::take(&mut self.unconfirmed);
                self.awaiting_confirmation += pending.covers;
            }
        }
        let device_id = self
            .fleet
            .device_id(pending.device as usize)
            .unwrap_or_default();
        let mut msg_id = String::with_capacity(device_id.len() + self.nonce.len() + 22);
        msg_id.push_str(device_id);
        msg_id.push('-');
        msg_id.push_str(itoa::Buffer::new().format(pending.seq));
        msg_id.push('-');
        msg_id.push_str(&self.nonce);
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        headers.insert(CONTENT_TYPE, "application/json");

        let send = js.publish_with_headers(subject, headers, pending.payload.clone());
        tokio::pin!(send);
        let sent = loop {
            tokio::select! {
                biased;
                res = &mut send => break res,
                Some((p, res)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.on_done(p, res, Instant::now())?;
                }
            }
        };
        match sent {
            Ok(ack) => self.in_flight.push(AckWait::new(pending, ack)),
            Err(err) => self.on_done(pending, Err(err), Instant::now())?,
        }
        Ok(())
    }

    /// Books one attempt's outcome: counts it, records the points, or queues a retry.
    pub(super) fn on_done(
        &mut self,
        pending: Pending,
        res: Result<PublishAck, PublishError>,
        now: Instant,
    ) -> Result<(), SimulateError> {
        let err = match res {
            Ok(ack) => {
                if ack.duplicate && pending.attempts == 1 {
                    tracing::debug!(
                        subject = self.subject(pending.device),
                        "first publish reported as duplicate"
                    );
                }
                self.acked += 1 + pending.covers;
                self.awaiting_confirmation -= pending.covers;
                if self.record_sent {
                    for covered in &pending.covered {
                        self.record(covered);
                    }
                    self.record(&pending);
                }
                return Ok(());
            }
            Err(err) => err,
        };
        match err.kind() {
            // With nothing stored yet, "no responders" means there is no stream: say so now
            // instead of retrying thousands of messages. Later it can be a leader election.
            PublishErrorKind::StreamNotFound if self.acked == 0 => {
                return Err(SimulateError::NoStream {
                    subject: self.subject(pending.device).to_owned(),
                });
            }
            PublishErrorKind::MaxPayloadExceeded => {
                return Err(SimulateError::TooLarge {
                    subject: self.subject(pending.device).to_owned(),
                    source: err,
                });
            }
            _ => {}
        }
        // Bounded by time, not by count: "no responders" during a leader election comes back
        // at once, and a count would be spent long before the election is over. The last retry
        // starts within the budget, so inside a duplicate window at least as long.
        if now.saturating_duration_since(pending.first_sent) < self.retry_budget {
            tracing::debug!(subject = self.subject(pending.device), attempt = pending.attempts, error = %err, "publish failed, will retry");
            self.retries.push_back(Retry {
                due: now + RETRY_BACKOFF,
                pending,
            });
            return Ok(());
        }
        self.errors += 1 + pending.covers;
        self.awaiting_confirmation -= pending.covers;
        tracing::warn!(
            subject = self.subject(pending.device),
            attempts = pending.attempts,
            retried_for = ?now.saturating_duration_since(pending.first_sent),
            unconfirmed_before_it = pending.covers,
            error = %err,
            "giving up on a message"
        );
        if self.acked == 0 && self.errors >= GIVE_UP_AFTER {
            return Err(SimulateError::Publish {
                failed: self.errors,
                subject: self.subject(pending.device).to_owned(),
                source: err,
            });
        }
        Ok(())
    }

    fn record(&mut self, p: &Pending) {
        let Some(device) = self.fleet.devices.get(p.device as usize) else {
            return;
        };
        let location = self.fleet.location_of(device);
        for (i, value) in p.values.iter().enumerate() {
            self.sent.push(SentPoint {
                device_id: device.id.clone(),
                location: location.to_owned(),
                metric: fleet::metric_name(i),
                time_unix_nano: p.time_unix_nano.saturating_add(i as i64),
                value: *value,
            });
        }
    }

    pub(super) fn snapshot(&self, now: Instant, last: &mut (Instant, u64)) -> Progress {
        let dt = (now - last.0).as_secs_f64();
        let rate = if dt > 0.0 {
            (self.acked - last.1) as f64 / dt
        } else {
            0.0
        };
        *last = (now, self.acked);
        Progress {
            sent: self.published,
            acked: self.acked,
            errors: self.errors,
            retried: self.retried,
            in_flight: self.outstanding(),
            rate,
            elapsed: now - self.start,
        }
    }
}

/// A per-run token for Nats-Msg-Id, so a second run with the same seed within the duplicate
/// window is not discarded as a replay of the first.
fn run_nonce() -> String {
    let mut rng = fastrand::Rng::new();
    let mixed = rng.u64(..) ^ (now_unix_nanos() as u64) ^ u64::from(std::process::id());
    format!("{mixed:016x}")
}
