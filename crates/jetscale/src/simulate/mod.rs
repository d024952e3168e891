//! A fleet of simulated IoT devices publishing the seed's OTLP JSON payload through JetStream.
//!
//! It is the load generator of `jetscale simulate`, the demo, the tests and the benchmarks, so
//! it must never be what limits a measurement: payloads are written by hand into a reused
//! buffer ([`payload`]), one task drives every device (a heap of due times, or round-robin when
//! devices publish back to back), and up to `max_in_flight` publish acks are awaited at once.
//!
//! Delivery is at-least-once and deduplicated: each message carries
//! `Nats-Msg-Id: {device_id}-{seq}-{run nonce}`, so re-publishing after a lost or failed ack is
//! safe within the stream's duplicate window, and two runs never collide.
//!
//! With `fire_and_forget` most messages go out as plain NATS publishes (no headers, no ack):
//! a publish ack and a deduplication header cost nats-server half to all of what storing the
//! message costs (BENCHMARKS.md, run I). Every [`CONFIRM_EVERY`]th message, the first, the last and any after which
//! the fleet falls idle are still JetStream publishes whose ack confirms, by the connection's
//! ordering, the plain ones before it; a plain message is never retried, so never duplicated,
//! and one lost with a connection is counted as an error when its confirmation fails.

pub mod fleet;
pub mod payload;

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, Subject};
use bytes::{Bytes, BytesMut};
use futures::future::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use jetscale_model::now_unix_nanos;
use tokio::time::Instant;

pub use fleet::{Fleet, Message};

/// Attempts per message (first publish included) before it counts as an error.
const MAX_ATTEMPTS: u32 = 4;
/// Pause before re-publishing a message whose publish or ack failed. One fixed value keeps the
/// retry queue in due order without a heap.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// The seed's payload is JSON; saying so lets the collector pick its decoder without sniffing.
const CONTENT_TYPE: async_nats::header::HeaderName =
    async_nats::header::HeaderName::from_static("Content-Type");
/// Fire-and-forget runs: at most this many plain publishes between two confirming ones.
pub const CONFIRM_EVERY: u64 = 1000;
/// How often `progress` is called.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Burst the rate pacer tolerates: timers are coarse (about 1 ms), so strict spacing would
/// undershoot high rates.
const PACER_TOLERANCE: Duration = Duration::from_millis(10);
/// Messages that must fail for good, with nothing acknowledged at all, before the run gives up:
/// at that point the server or its permissions are wrong, not a message.
const GIVE_UP_AFTER: u64 = 10;

/// Size of the blocks payloads are carved from.
const PAYLOAD_BLOCK: usize = 64 * 1024;

/// What to simulate and how hard to push.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// Number of devices (`sensor-000001` ..).
    pub devices: u32,
    /// Messages per device; with `duration`, whichever ends first; with neither, the run lasts
    /// until its future is dropped.
    pub count: Option<u64>,
    /// Wall-clock limit: no new message is started after it (in-flight ones are still awaited).
    pub duration: Option<Duration>,
    /// Time between two messages of one device (the seed sleeps 10 s). Device start times are
    /// spread evenly over one interval, so the fleet produces a steady `devices / interval`
    /// msg/s rather than bursts. Zero: publish as fast as acks come back.
    pub interval: Duration,
    /// Cap on total messages per second across the fleet.
    pub rate: Option<f64>,
    /// Share of devices (0..=1) whose temperature drifts to 36–45 °C, for anomaly queries.
    pub overheat_share: f64,
    /// Number of distinct `device.location` values (`warehouse-a` ..).
    pub locations: u32,
    /// Subjects are `{subject_prefix}.{device_id}`.
    pub subject_prefix: String,
    /// Device ids are `{device_prefix}{n:06}`.
    pub device_prefix: String,
    /// Publish acks awaited concurrently; bounds memory and the server's backlog of replies.
    pub max_in_flight: usize,
    /// Seed of every device's values: equal seeds give equal value sequences.
    pub seed: u64,
    /// Keep every acknowledged point in [`Report::sent`], so tests can check that each value
    /// landed in the database bit for bit. Costs memory; off for load runs.
    pub record_sent: bool,
    /// Publish most messages as plain NATS messages, confirmed in groups (see the module's
    /// documentation): for load runs that must not be limited by publish acks.
    pub fire_and_forget: bool,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            devices: 10,
            count: None,
            duration: None,
            interval: Duration::from_secs(10),
            rate: None,
            overheat_share: 0.02,
            locations: 8,
            subject_prefix: "telemetry.metrics".to_owned(),
            device_prefix: "sensor-".to_owned(),
            max_in_flight: 4096,
            seed: 0,
            record_sent: false,
            fire_and_forget: false,
        }
    }
}

impl SimulateOptions {
    /// Checks the options before anything is published, so a typo fails with a sentence rather
    /// than with a server error on the first message.
    pub fn validate(&self) -> Result<(), SimulateError> {
        let bad = |msg: String| Err(SimulateError::InvalidOptions(msg));
        if self.devices == 0 {
            return bad("devices must be at least 1".into());
        }
        if self.locations == 0 {
            return bad("locations must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.overheat_share) {
            return bad(format!(
                "overheat_share must be between 0 and 1 (a share of devices), got {}",
                self.overheat_share
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return bad(format!(
                    "rate must be a positive number of messages per second, got {rate}"
                ));
            }
        }
        if let Err(why) = check_subject_prefix(&self.subject_prefix) {
            return bad(format!(
                "subject prefix {:?} {why} (example: telemetry.metrics)",
                self.subject_prefix
            ));
        }
        if let Some(c) = self
            .device_prefix
            .chars()
            .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        {
            return bad(format!(
                "device prefix {:?} contains {c:?}: a device id must be a single subject token \
                 (no '.', '*', '>' or whitespace)",
                self.device_prefix
            ));
        }
        Ok(())
    }
}

fn check_subject_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("is empty");
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Err("has an empty token (leading, trailing or doubled '.')");
        }
        if token.contains(['*', '>']) {
            return Err("contains a wildcard ('*' or '>'); messages need a literal subject");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("contains whitespace");
        }
    }
    Ok(())
}

/// A snapshot handed to the progress callback about once a second (and once at the end).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Distinct messages handed to the client so far.
    pub sent: u64,
    /// Messages the stream acknowledged (stored).
    pub acked: u64,
    /// Messages given up on after all retries.
    pub errors: u64,
    /// Re-publish attempts so far (failed publishes or acks that were retried).
    pub retried: u64,
    /// Messages sent whose ack is pending, or waiting to be retried.
    pub in_flight: usize,
    /// Acknowledged messages per second since the previous snapshot.
    pub rate: f64,
    /// Time since the run started.
    pub elapsed: Duration,
}

/// The outcome of a finished run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Distinct messages published (first attempts). After a run that ended by itself,
    /// `published == acked + errors`.
    pub published: u64,
    /// Messages the stream acknowledged.
    pub acked: u64,
    /// Messages given up on after all retries.
    pub errors: u64,
    /// Wall time of the run, including waiting for the last acks.
    pub elapsed: Duration,
    /// Data points acknowledged: three per acknowledged message.
    pub points: u64,
    /// Every acknowledged point, in acknowledgement order; empty unless `record_sent`.
    pub sent: Vec<SentPoint>,
}

/// One acknowledged data point, as it should appear in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct SentPoint {
    /// `device.id` resource attribute.
    pub device_id: String,
    /// `device.location` resource attribute.
    pub location: String,
    /// Metric name (`device.temperature`, `device.humidity`, `device.battery`).
    pub metric: &'static str,
    /// The point's `timeUnixNano`.
    pub time_unix_nano: i64,
    /// The point's `asDouble`, to be compared bit for bit.
    pub value: f64,
}

/// Why a run stopped early. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The options cannot work; nothing was published.
    #[error("invalid simulate options: {0}")]
    InvalidOptions(String),
    /// The server answered with "no responders": no JetStream stream captures the subject (or
    /// JetStream is off).
    #[error(
        "no stream listens on {subject}: run `jetscale setup` first (or create a JetStream \
         stream whose subjects cover it, such as `telemetry.>`, on a server started with \
         JetStream enabled)"
    )]
    NoStream {
        /// The subject of the rejected message.
        subject: String,
    },
    /// A message is larger than the server's `max_payload`.
    #[error(
        "a message to {subject} is larger than the server accepts: raise `max_payload` in the \
         nats-server configuration"
    )]
    TooLarge {
        /// The subject of the rejected message.
        subject: String,
        /// The client's error.
        #[source]
        source: PublishError,
    },
    /// Nothing was acknowledged and messages keep failing: the server, the stream or the
    /// user's permissions are wrong, so continuing would only count errors.
    #[error(
        "nothing was acknowledged and {failed} messages failed after {MAX_ATTEMPTS} attempts \
         each (last one to {subject}): check that nats-server runs with JetStream enabled, that \
         a stream covers the subject (`jetscale setup`) and that this user may publish to it"
    )]
    Publish {
        /// Messages given up on.
        failed: u64,
        /// The subject of the last failed message.
        subject: String,
        /// The last error.
        #[source]
        source: PublishError,
    },
}

/// Runs the fleet until `count` messages per device or `duration` (whichever comes first) and
/// returns what happened; with neither limit it runs until the future is dropped (callers pair
/// it with Ctrl-C in `tokio::select!`; acks in flight at that moment are simply not counted).
///
/// `progress` is called about once a second, and once more at the end.
pub async fn run(
    js: async_nats::jetstream::Context,
    opts: &SimulateOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<Report, SimulateError> {
    opts.validate()?;
    let start = Instant::now();
    let mut runner = Runner::new(opts, start);
    if opts.fire_and_forget {
        runner.plain = Some(js.client());
    }
    let deadline = opts.duration.map(|d| start + d);
    let mut schedule = Schedule::new(opts, start);
    let mut pacer = opts.rate.map(|rate| Pacer::new(rate, start));
    let mut next_progress = start + PROGRESS_EVERY;
    let mut last_snapshot = (start, 0u64);

    loop {
        let mut now = Instant::now();
        if now >= next_progress {
            progress(&runner.snapshot(now, &mut last_snapshot));
            next_progress += PROGRESS_EVERY;
            if next_progress <= now {
                // Fell behind (a long await): skip the missed ticks instead of firing them all.
                next_progress = now + PROGRESS_EVERY;
            }
        }
        // Take every ack that is already there before deciding what to do next.
        while let Some(Some((p, res))) = runner.in_flight.next().now_or_never() {
            runner.on_done(p, res, now)?;
        }
        if runner.retries.front().is_some_and(|r| r.due <= now) {
            if let Some(retry) = runner.retries.pop_front() {
                runner.retried += 1;
                runner.publish(&js, retry.pending, true).await?;
            }
            continue;
        }

        let generating = !schedule.is_done() && deadline.is_none_or(|d| now < d);
        if !generating && runner.in_flight.is_empty() && runner.retries.is_empty() {
            if runner.unconfirmed_count > 0 {
                // The deadline passed between two messages sooner than foreseen: the last
                // plain ones were never confirmed, so they are not reported as stored.
                tracing::warn!(
                    messages = runner.unconfirmed_count,
                    "plain messages published after the last confirmation count as errors"
                );
                runner.errors += std::mem::take(&mut runner.unconfirmed_count);
                runner.unconfirmed.clear();
            }
            break;
        }
        let mut wake = next_progress;
        if generating {
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            if runner.outstanding() < opts.max_in_flight {
                if let Some((due, device)) = schedule.peek() {
                    let ready = pacer.as_ref().map_or(due, |p| due.max(p.ready_at()));
                    if ready <= now {
                        schedule.advance();
                        if let Some(p) = pacer.as_mut() {
                            p.consume(now);
                        }
                        // A fire-and-forget run confirms before it would wait or stop, so
                        // no plain message is left unconfirmed at the end or while idle.
                        let idle_next = schedule.peek().is_none_or(|(due, _)| {
                            let ready = pacer.as_ref().map_or(due, |p| due.max(p.ready_at()));
                            ready > now || deadline.is_some_and(|d| ready >= d)
                        });
                        let pending = runner.next_message(device);
                        runner.published += 1;
                        // ... and before the in-flight limit would stop it with nothing
                        // in flight to wait for.
                        let confirm = idle_next
                            || runner.published % CONFIRM_EVERY == 1
                            || runner.outstanding() + 1 >= opts.max_in_flight;
                        runner.publish(&js, pending, confirm).await?;
                        continue;
                    }
                    wake = wake.min(ready);
                }
            }
        }
        if let Some(r) = runner.retries.front() {
            wake = wake.min(r.due);
        }
        tokio::select! {
            biased;
            Some((p, res)) = runner.in_flight.next(), if !runner.in_flight.is_empty() => {
                now = Instant::now();
                runner.on_done(p, res, now)?;
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }

    let now = Instant::now();
    progress(&runner.snapshot(now, &mut last_snapshot));
    Ok(Report {
        published: runner.published,
        acked: runner.acked,
        errors: runner.errors,
        elapsed: now - start,
        points: runner.acked * 3,
        sent: runner.sent,
    })
}

/// A message between its first publish and its final outcome; enough to re-publish it
/// unchanged (same payload, same Nats-Msg-Id) and to record it once acknowledged.
#[derive(Debug)]
struct Pending {
    device: u32,
    seq: u64,
    time_unix_nano: i64,
    values: [f64; 3],
    payload: Bytes,
    attempts: u32,
    /// Fire-and-forget runs: plain messages published since the previous confirming one,
    /// which this message's ack confirms (and its failure loses).
    covers: u64,
    /// Those messages, kept when `record_sent` is on (their payloads dropped).
    covered: Vec<Pending>,
}

struct Retry {
    due: Instant,
    pending: Pending,
}

type AckOutcome = (Pending, Result<PublishAck, PublishError>);

/// Awaits one publish ack and hands back its message. A named future instead of an `async`
/// block so `FuturesUnordered` can hold it without a second box per message (the client already
/// boxes the ack future).
struct AckWait {
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
struct Runner {
    fleet: Fleet,
    subjects: Vec<Subject>,
    nonce: String,
    buf: Vec<u8>,
    /// Payloads are carved from shared 64 KiB blocks, one allocation for dozens of
    /// messages; a block is freed when the last of its messages is acknowledged.
    payloads: BytesMut,
    in_flight: FuturesUnordered<AckWait>,
    retries: VecDeque<Retry>,
    record_sent: bool,
    /// Fire-and-forget runs: the connection plain messages are published on.
    plain: Option<async_nats::Client>,
    /// Plain messages not yet handed to a confirming message.
    unconfirmed: Vec<Pending>,
    unconfirmed_count: u64,
    /// Plain messages whose confirmation is pending (in flight or being retried).
    awaiting_confirmation: u64,
    start: Instant,
    published: u64,
    acked: u64,
    errors: u64,
    retried: u64,
    sent: Vec<SentPoint>,
}

impl Runner {
    fn new(opts: &SimulateOptions, start: Instant) -> Self {
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

    fn outstanding(&self) -> usize {
        self.in_flight.len()
            + self.retries.len()
            + (self.unconfirmed_count + self.awaiting_confirmation) as usize
    }

    fn subject(&self, device: u32) -> &str {
        self.subjects
            .get(device as usize)
            .map_or("", Subject::as_str)
    }

    fn next_message(&mut self, device: u32) -> Pending {
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
    async fn publish(
        &mut self,
        js: &async_nats::jetstream::Context,
        mut pending: Pending,
        confirm: bool,
    ) -> Result<(), SimulateError> {
        pending.attempts += 1;
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
    fn on_done(
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
        if pending.attempts < MAX_ATTEMPTS {
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

    fn snapshot(&self, now: Instant, last: &mut (Instant, u64)) -> Progress {
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

/// Which device publishes next, and when.
enum Schedule {
    /// `interval == 0`: every device is always due; take them in turn.
    RoundRobin {
        next: u32,
        devices: u32,
        /// Messages left in total (`None`: unbounded).
        left: Option<u128>,
        start: Instant,
    },
    /// Device `i`'s message `r` is due at `start + r × interval + interval × i / devices`:
    /// the fleet spread evenly over the interval, each device at a fixed rate, so a late
    /// message does not shift its device's phase. Due times only ever grow in the order
    /// (round, device), so the next is computed instead of kept in a queue.
    Timed {
        next: u32,
        round: u64,
        devices: u32,
        /// Messages per device (`None`: unbounded).
        rounds: Option<u64>,
        start: Instant,
        interval_ns: u128,
    },
}

impl Schedule {
    fn new(opts: &SimulateOptions, start: Instant) -> Self {
        if opts.interval.is_zero() {
            return Schedule::RoundRobin {
                next: 0,
                devices: opts.devices,
                left: opts.count.map(|c| u128::from(c) * u128::from(opts.devices)),
                start,
            };
        }
        Schedule::Timed {
            next: 0,
            round: 0,
            devices: opts.devices,
            rounds: opts.count,
            start,
            interval_ns: opts.interval.as_nanos(),
        }
    }

    fn is_done(&self) -> bool {
        self.peek().is_none()
    }

    /// The next device and when it is due.
    fn peek(&self) -> Option<(Instant, u32)> {
        match self {
            Schedule::RoundRobin {
                next, left, start, ..
            } => (*left != Some(0)).then_some((*start, *next)),
            Schedule::Timed {
                next,
                round,
                devices,
                rounds,
                start,
                interval_ns,
            } => {
                if *devices == 0 || *rounds == Some(*round) {
                    return None;
                }
                let offset = interval_ns * u128::from(*round)
                    + interval_ns * u128::from(*next) / u128::from(*devices);
                let due = start.checked_add(Duration::from_nanos(u64::try_from(offset).ok()?))?;
                Some((due, *next))
            }
        }
    }

    /// Marks the device returned by `peek` as sent and moves on to the next.
    fn advance(&mut self) {
        match self {
            Schedule::RoundRobin {
                next,
                devices,
                left,
                ..
            } => {
                *next = (*next + 1) % (*devices).max(1);
                if let Some(l) = left {
                    *l = l.saturating_sub(1);
                }
            }
            Schedule::Timed {
                next,
                round,
                devices,
                ..
            } => {
                *next += 1;
                if *next >= *devices {
                    *next = 0;
                    *round += 1;
                }
            }
        }
    }
}

/// Caps total messages per second (GCRA: a theoretical arrival time advanced by one period per
/// message, with a small burst tolerance).
struct Pacer {
    period: Duration,
    tat: Instant,
}

impl Pacer {
    fn new(rate: f64, start: Instant) -> Self {
        Pacer {
            period: Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX / 4),
            tat: start,
        }
    }

    fn ready_at(&self) -> Instant {
        self.tat.checked_sub(PACER_TOLERANCE).unwrap_or(self.tat)
    }

    fn consume(&mut self, now: Instant) {
        let base = self.tat.max(now);
        self.tat = base.checked_add(self.period).unwrap_or(base);
    }
}

/// A per-run token for Nats-Msg-Id, so a second run with the same seed within the duplicate
/// window is not discarded as a replay of the first.
fn run_nonce() -> String {
    let mut rng = fastrand::Rng::new();
    let mixed = rng.u64(..) ^ (now_unix_nanos() as u64) ^ u64::from(std::process::id());
    format!("{mixed:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};

    /// A private nats-server with JetStream on a free loopback port; killed on drop.
    struct NatsServer {
        child: Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl NatsServer {
        async fn start() -> (Self, async_nats::Client) {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server"
            } else {
                "nats-server"
            };
            let child = Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server");
            let server = NatsServer {
                child,
                url: format!("nats://127.0.0.1:{port}"),
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            let client = loop {
                match async_nats::connect(&server.url).await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => {
                        panic!("nats-server on {} did not come up: {e}", server.url)
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            (server, client)
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn options_are_validated() {
        let ok = SimulateOptions::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SimulateOptions {
                devices: 0,
                ..ok.clone()
            },
            SimulateOptions {
                rate: Some(0.0),
                ..ok.clone()
            },
            SimulateOptions {
                overheat_share: 1.5,
                ..ok.clone()
            },
            SimulateOptions {
                subject_prefix: "telemetry.>".into(),
                ..ok.clone()
            },
            SimulateOptions {
                subject_prefix: "telemetry..metrics".into(),
                ..ok.clone()
            },
            SimulateOptions {
                device_prefix: "a.b".into(),
                ..ok.clone()
            },
        ] {
            let err = bad.validate().expect_err("invalid");
            assert!(matches!(err, SimulateError::InvalidOptions(_)), "{err}");
        }
    }

    #[test]
    fn timed_schedule_spreads_devices_over_the_interval() {
        let start = Instant::now();
        let opts = SimulateOptions {
            devices: 4,
            count: Some(2),
            interval: Duration::from_secs(8),
            ..SimulateOptions::default()
        };
        let mut s = Schedule::new(&opts, start);
        let mut order = Vec::new();
        while let Some((due, device)) = s.peek() {
            order.push(((due - start).as_secs(), device));
            s.advance();
        }
        assert_eq!(
            order,
            [
                (0, 0),
                (2, 1),
                (4, 2),
                (6, 3),
                (8, 0),
                (10, 1),
                (12, 2),
                (14, 3)
            ]
        );
        assert!(s.is_done());
    }

    #[test]
    fn round_robin_schedule_stops_after_count() {
        let opts = SimulateOptions {
            devices: 3,
            count: Some(2),
            interval: Duration::ZERO,
            ..SimulateOptions::default()
        };
        let mut s = Schedule::new(&opts, Instant::now());
        let mut devices = Vec::new();
        while let Some((_, d)) = s.peek() {
            devices.push(d);
            s.advance();
        }
        assert_eq!(devices, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn pacer_spaces_messages() {
        let start = Instant::now();
        let mut p = Pacer::new(1000.0, start);
        // Within the tolerance a short burst goes at once, then one per millisecond.
        let mut burst = 0;
        while p.ready_at() <= start {
            p.consume(start);
            burst += 1;
        }
        assert!((10..=11).contains(&burst), "burst {burst}");
        assert_eq!(p.ready_at() - start, Duration::from_millis(burst - 10));
    }

    #[tokio::test]
    async fn publishes_to_a_real_server() {
        let (server, client) = NatsServer::start().await;
        let js = async_nats::jetstream::new(client);
        let stream = telemetry_stream(&js).await;

        let opts = SimulateOptions {
            devices: 200,
            count: Some(5),
            interval: Duration::ZERO,
            record_sent: true,
            seed: 7,
            ..SimulateOptions::default()
        };
        let mut calls = 0;
        let report = run(js.clone(), &opts, |_| calls += 1)
            .await
            .expect("simulate run");
        assert_eq!(report.published, 1000);
        assert_eq!(report.acked, 1000);
        assert_eq!(report.errors, 0);
        assert_eq!(report.points, 3000);
        assert_eq!(report.sent.len(), 3000);
        assert!(calls >= 1, "final progress call");

        let mut stream = stream;
        let info = stream.info().await.expect("stream info");
        assert_eq!(info.state.messages, 1000);

        // Read the stream back in order: each device's timestamps strictly increase, and every
        // value is the one the simulator recorded, bit for bit.
        let expected: HashMap<(String, &str, i64), u64> = report
            .sent
            .iter()
            .map(|p| {
                (
                    (p.device_id.clone(), p.metric, p.time_unix_nano),
                    p.value.to_bits(),
                )
            })
            .collect();
        assert_eq!(expected.len(), 3000, "(device, metric, time) is unique");
        let mut last_time: HashMap<String, i64> = HashMap::new();
        let mut msg_ids = std::collections::HashSet::new();
        for seq in 1..=1000 {
            let msg = stream.get_raw_message(seq).await.expect("get message");
            let headers = &msg.headers;
            assert_eq!(
                headers.get("Content-Type").map(|v| v.as_str()),
                Some("application/json")
            );
            let id = headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .expect("Nats-Msg-Id");
            assert!(msg_ids.insert(id), "Nats-Msg-Id is unique");
            let doc: serde_json::Value = serde_json::from_slice(&msg.payload).expect("JSON");
            let rm = &doc["resourceMetrics"][0];
            let device = rm["resource"]["attributes"][1]["value"]["stringValue"]
                .as_str()
                .expect("device id")
                .to_owned();
            assert_eq!(msg.subject.as_str(), format!("telemetry.metrics.{device}"));
            let metrics = rm["scopeMetrics"][0]["metrics"]
                .as_array()
                .expect("metrics");
            let mut first = None;
            for m in metrics {
                let point = &m["gauge"]["dataPoints"][0];
                let time: i64 = point["timeUnixNano"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("timeUnixNano");
                first.get_or_insert(time);
                let value = point["asDouble"].as_f64().expect("asDouble");
                let name = m["name"].as_str().expect("name");
                let key = (
                    device.clone(),
                    fleet::metric_name(
                        payload::METRICS
                            .iter()
                            .position(|x| x.0 == name)
                            .expect("known metric"),
                    ),
                    time,
                );
                assert_eq!(expected.get(&key), Some(&value.to_bits()), "{key:?}");
            }
            let time = first.expect("three points");
            if let Some(prev) = last_time.insert(device.clone(), time) {
                assert!(time > prev, "{device}: {time} after {prev}");
            }
        }
        assert_eq!(last_time.len(), 200);

        // A subject no stream covers fails fast with advice.
        let err = run(
            js,
            &SimulateOptions {
                devices: 3,
                count: Some(1),
                interval: Duration::ZERO,
                subject_prefix: "nowhere.metrics".into(),
                ..SimulateOptions::default()
            },
            |_| {},
        )
        .await
        .expect_err("no stream");
        assert!(
            matches!(&err, SimulateError::NoStream { subject } if subject.starts_with("nowhere.metrics.sensor-")),
            "{err}"
        );
        assert!(err.to_string().contains("jetscale setup"), "{err}");
        drop(server);
    }

    #[tokio::test]
    async fn interval_and_duration_pace_the_fleet() {
        let (_server, client) = NatsServer::start().await;
        let js = async_nats::jetstream::new(client);
        telemetry_stream(&js).await;
        // 50 devices every 500 ms = 100 msg/s for 1.2 s: exactly 120 messages are due before
        // the deadline (two rounds, then devices 0..20 of the third, due at 1000..1190 ms). A
        // loaded machine may start the last few too late, never more.
        let opts = SimulateOptions {
            devices: 50,
            interval: Duration::from_millis(500),
            duration: Some(Duration::from_millis(1200)),
            ..SimulateOptions::default()
        };
        let report = run(js.clone(), &opts, |_| {}).await.expect("run");
        assert!(
            (100..=120).contains(&report.acked),
            "acked {} in {:?}",
            report.acked,
            report.elapsed
        );
        // A rate cap of 200 msg/s over 1 s, devices publishing back to back: 200 plus the
        // pacer's 10 ms burst allowance at most.
        let opts = SimulateOptions {
            devices: 10,
            interval: Duration::ZERO,
            rate: Some(200.0),
            duration: Some(Duration::from_secs(1)),
            ..SimulateOptions::default()
        };
        let report = run(js, &opts, |_| {}).await.expect("run");
        assert!(
            (150..=203).contains(&report.acked),
            "acked {} in {:?}",
            report.acked,
            report.elapsed
        );
    }

    async fn telemetry_stream(
        js: &async_nats::jetstream::Context,
    ) -> async_nats::jetstream::stream::Stream {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "TELEMETRY".into(),
            subjects: vec!["telemetry.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream")
    }

    #[tokio::test]
    async fn fire_and_forget_stores_every_message_once_and_confirms_them_all() {
        let (_server, client) = NatsServer::start().await;
        let js = async_nats::jetstream::new(client);
        let mut stream = telemetry_stream(&js).await;
        // 2,600 messages: not a multiple of CONFIRM_EVERY, so the run's end confirms a
        // partial group.
        let opts = SimulateOptions {
            devices: 200,
            count: Some(13),
            interval: Duration::ZERO,
            record_sent: true,
            fire_and_forget: true,
            ..SimulateOptions::default()
        };
        let report = run(js.clone(), &opts, |_| {}).await.expect("run");
        assert_eq!(
            (report.published, report.acked, report.errors),
            (2600, 2600, 0)
        );
        assert_eq!(report.sent.len(), 7800);
        assert_eq!(stream.info().await.expect("info").state.messages, 2600);

        let mut with_headers = 0;
        let mut stored = std::collections::HashSet::new();
        for seq in 1..=2600 {
            let msg = stream.get_raw_message(seq).await.expect("get message");
            if !msg.headers.is_empty() {
                with_headers += 1;
            }
            let doc: serde_json::Value = serde_json::from_slice(&msg.payload).expect("JSON");
            let rm = &doc["resourceMetrics"][0];
            let device = rm["resource"]["attributes"][1]["value"]["stringValue"]
                .as_str()
                .expect("device id")
                .to_owned();
            let time = rm["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"][0]
                ["timeUnixNano"]
                .as_str()
                .expect("time")
                .parse::<i64>()
                .expect("number");
            assert!(stored.insert((device, time)), "message {seq} stored twice");
        }
        // Messages 1, 1001, 2001 and the last are confirming JetStream publishes.
        assert_eq!(
            with_headers, 4,
            "only confirming messages carry a Nats-Msg-Id"
        );
        let recorded: std::collections::HashSet<(String, i64)> = report
            .sent
            .iter()
            .filter(|p| p.metric == fleet::metric_name(0))
            .map(|p| (p.device_id.clone(), p.time_unix_nano))
            .collect();
        assert_eq!(
            recorded, stored,
            "the report records exactly what was stored"
        );
    }

    #[tokio::test]
    async fn fire_and_forget_with_a_small_in_flight_limit_and_a_paced_fleet_confirms_all() {
        let (_server, client) = NatsServer::start().await;
        let js = async_nats::jetstream::new(client);
        let mut stream = telemetry_stream(&js).await;
        // An in-flight limit below CONFIRM_EVERY must confirm early instead of stalling.
        let opts = SimulateOptions {
            devices: 50,
            count: Some(10),
            interval: Duration::ZERO,
            max_in_flight: 16,
            fire_and_forget: true,
            ..SimulateOptions::default()
        };
        let report = tokio::time::timeout(Duration::from_secs(30), run(js.clone(), &opts, |_| {}))
            .await
            .expect("no stall")
            .expect("run");
        assert_eq!((report.acked, report.errors), (500, 0));

        // A paced fleet with a deadline goes idle between messages: what it published by the
        // deadline is confirmed, none left over.
        let opts = SimulateOptions {
            devices: 50,
            interval: Duration::from_millis(200),
            duration: Some(Duration::from_millis(1000)),
            fire_and_forget: true,
            ..SimulateOptions::default()
        };
        let report = run(js.clone(), &opts, |_| {}).await.expect("run");
        assert!(report.acked >= 150, "acked {}", report.acked);
        assert_eq!(report.errors, 0);
        assert_eq!(report.published, report.acked);
        assert_eq!(
            stream.info().await.expect("info").state.messages,
            500 + report.acked
        );
    }

    #[tokio::test]
    async fn fire_and_forget_without_a_stream_says_so() {
        let (_server, client) = NatsServer::start().await;
        let js = async_nats::jetstream::new(client);
        let err = run(
            js,
            &SimulateOptions {
                devices: 3,
                count: Some(5),
                interval: Duration::ZERO,
                fire_and_forget: true,
                ..SimulateOptions::default()
            },
            |_| {},
        )
        .await
        .expect_err("no stream");
        assert!(matches!(&err, SimulateError::NoStream { .. }), "{err}");
    }
}
