//! The one place that acknowledges JetStream deliveries, and only from a committed write's
//! outcome (or, while a write is being retried, to say the work is still in progress).
//!
//! Two policies, chosen by `receivers.nats.jetstream.ack_policy`:
//! - `explicit` (the default): each delivery is acked by its own reply subject. Safe with any
//!   number of collectors sharing the consumer.
//! - `all`: one cumulative ack (`AckPolicy::All`) per committed run of deliveries, which
//!   halves the messages nats-server handles per delivery. A cumulative ack for stream
//!   sequence `S` acknowledges *every* pending delivery at or below `S`, whoever holds it, so
//!   [`Cumulative`] sends one only once it has proved that every such delivery is committed.

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use async_nats::{Client, Subject};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long to wait for acks to reach the server. A flush waits for a reconnection when NATS
/// is down; an ack that does not get through only means a redelivery the ledger skips.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a collector holding cumulative acks asks JetStream whether it can prove them.
pub const PROOF_INTERVAL: Duration = Duration::from_millis(500);

/// How committed deliveries are acknowledged.
#[derive(Clone)]
pub enum Acks {
    /// Each delivery by its own reply subject.
    Each,
    /// One cumulative ack per committed run (`AckPolicy::All` consumers).
    Cumulative(Arc<Cumulative>),
}

impl Acks {
    /// Acknowledges a committed batch: its `replies`, or, cumulatively, whatever committed
    /// run its stream sequences complete.
    pub async fn committed(
        &self,
        client: &Client,
        replies: &[Subject],
        stream_seqs: impl Iterator<Item = u64>,
    ) {
        match self {
            Acks::Each => send(client, replies).await,
            Acks::Cumulative(acks) => {
                if let Some(reply) = acks.commit(stream_seqs) {
                    send(client, std::slice::from_ref(&reply)).await;
                }
            }
        }
    }
}

/// Sends `+ACK` to each reply subject. A lost ack is harmless: the message is redelivered
/// and the ledger skips it.
pub async fn send(client: &Client, replies: &[Subject]) {
    for reply in replies {
        if let Err(e) = client
            .publish(reply.clone(), Bytes::from(AckKind::Ack))
            .await
        {
            tracing::debug!(error = %e, "ack not sent; the message will be redelivered and skipped");
        }
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "acks not flushed; they will be redelivered and skipped")
        }
        Err(_) => tracing::warn!(
            "NATS unreachable: acks not confirmed; the messages will be redelivered and skipped"
        ),
    }
}

/// Tells JetStream the deliveries are still being worked on (the database is slow or
/// down), so they are not redelivered or counted towards MaxDeliver meanwhile.
pub async fn in_progress(client: &Client, replies: &[Subject]) {
    for reply in replies {
        let _ = client
            .publish(reply.clone(), Bytes::from(AckKind::Progress))
            .await;
    }
    let _ = client.flush().await;
}

/// Cumulative acknowledgement with proof.
///
/// JetStream numbers every delivery of a consumer (the consumer sequence, one more per
/// delivery, redeliveries included) and hands out new messages in stream order. So while
/// this collector has seen every consumer sequence since a moment when nothing pending was
/// unknown to it, every pending delivery is one it has seen: a redelivery of a seen message,
/// or a new message later in the stream than anything seen. A cumulative ack up to the
/// longest committed prefix of what it has seen then acknowledges only committed messages.
///
/// A skipped consumer sequence (a delivery lost on a reconnect, or taken by another
/// collector) breaks that: acks are held until the proof is re-established by the
/// consumer's own count — when `num_ack_pending` equals the deliveries seen above the ack
/// floor and none is in flight, nothing pending is unknown. A lost delivery is redelivered
/// after `ack_wait`, seen, and the count then matches.
pub struct Cumulative {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Deliveries seen and not yet covered by a cumulative ack, by stream sequence.
    seen: BTreeMap<u64, Seen>,
    /// The consumer sequence of the next delivery, if every delivery has been seen.
    next_delivery: Option<u64>,
    /// The first consumer sequence seen since the last skipped one.
    run_start: Option<u64>,
    /// Whether every pending delivery is known to be in `seen`.
    proven: bool,
    /// Skipped consumer sequences so far; a proof attempt spanning one is void.
    breaks: u64,
    /// Since when acks have been held for want of proof.
    held_since: Option<Instant>,
}

struct Seen {
    consumer_seq: u64,
    reply: Subject,
    committed: bool,
}

/// What was seen when a proof attempt asked for the consumer's state.
#[derive(Debug, Clone, Copy)]
pub struct ProofAttempt {
    last_seen: Option<u64>,
    breaks: u64,
}

/// The consumer's state as JetStream reported it.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerState {
    pub num_ack_pending: usize,
    pub ack_floor_stream_seq: u64,
    pub last_delivered_consumer_seq: u64,
}

impl Default for Cumulative {
    fn default() -> Self {
        Self::new()
    }
}

impl Cumulative {
    pub fn new() -> Self {
        Cumulative {
            state: Mutex::new(State {
                held_since: Some(Instant::now()),
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a delivery, in the order deliveries arrive.
    pub fn seen(&self, consumer_seq: u64, stream_seq: u64, reply: Subject) {
        let mut s = self.lock();
        if s.next_delivery.is_some_and(|next| next != consumer_seq) {
            if s.proven {
                tracing::warn!(
                    expected = s.next_delivery,
                    got = consumer_seq,
                    "a delivery of the consumer was not received here (lost on a reconnect, or taken by another collector): cumulative acks held until JetStream's count proves nothing unknown is pending"
                );
                s.held_since = Some(Instant::now());
            }
            s.proven = false;
            s.breaks += 1;
            s.run_start = None;
        }
        s.next_delivery = Some(consumer_seq + 1);
        s.run_start.get_or_insert(consumer_seq);
        let committed = s.seen.get(&stream_seq).is_some_and(|e| e.committed);
        s.seen.insert(
            stream_seq,
            Seen {
                consumer_seq,
                reply,
                committed,
            },
        );
    }

    /// Marks stream sequences committed; returns the reply subject to ack cumulatively, if
    /// a longer committed prefix can now be acknowledged.
    pub fn commit(&self, stream_seqs: impl Iterator<Item = u64>) -> Option<Subject> {
        let mut s = self.lock();
        for seq in stream_seqs {
            if let Some(entry) = s.seen.get_mut(&seq) {
                entry.committed = true;
            }
        }
        s.ackable()
    }

    /// Starts a proof attempt: call before asking JetStream for the consumer's state.
    pub fn attempt(&self) -> ProofAttempt {
        let s = self.lock();
        ProofAttempt {
            last_seen: s.next_delivery.map(|n| n - 1),
            breaks: s.breaks,
        }
    }

    /// Completes a proof attempt with the consumer's state, fetched after [`attempt`]. Returns
    /// the reply subject to ack cumulatively once proven, if any committed prefix is waiting.
    ///
    /// [`attempt`]: Cumulative::attempt
    pub fn prove(&self, attempt: ProofAttempt, consumer: ConsumerState) -> Option<Subject> {
        let mut s = self.lock();
        if s.proven || s.breaks != attempt.breaks {
            return None;
        }
        // Every delivery made when JetStream answered must have been seen when it was asked…
        let all_seen = match attempt.last_seen {
            Some(last) => consumer.last_delivered_consumer_seq == last,
            // …or nothing seen yet: then whatever arrived since must follow on directly.
            None => s
                .run_start
                .is_none_or(|first| first == consumer.last_delivered_consumer_seq + 1),
        };
        // …and every pending delivery must be one seen (above the floor, everything seen is
        // pending: only cumulative acks, none sent while unproven, remove deliveries).
        let seen_pending = match attempt.last_seen {
            Some(last) => s
                .seen
                .range(consumer.ack_floor_stream_seq + 1..)
                .filter(|(_, e)| e.consumer_seq <= last)
                .count(),
            None => 0,
        };
        if !all_seen || consumer.num_ack_pending != seen_pending {
            return None;
        }
        if attempt.last_seen.is_none() && s.next_delivery.is_none() {
            s.next_delivery = Some(consumer.last_delivered_consumer_seq + 1);
        }
        s.proven = true;
        if let Some(since) = s.held_since.take() {
            tracing::info!(held_for = ?since.elapsed(), "cumulative acks proven safe; acking");
        }
        s.ackable()
    }

    /// Whether cumulative acks are held, and since when.
    pub fn held_since(&self) -> Option<Instant> {
        let s = self.lock();
        (!s.proven).then_some(s.held_since).flatten()
    }

    /// Starts over, as at start-up, on a consumer bound anew (the old one was deleted): its
    /// consumer sequences start again, so nothing seen before proves anything about it.
    /// Deliveries of the old consumer still being written are stored and skipped when the
    /// new one delivers them again.
    pub fn restart(&self) {
        let mut s = self.lock();
        *s = State {
            // A proof attempt begun before the restart is void.
            breaks: s.breaks + 1,
            held_since: Some(Instant::now()),
            ..State::default()
        };
    }

    /// Asks the consumer's state and, if it proves every pending delivery was seen here,
    /// sends the cumulative ack that was waiting.
    pub async fn try_to_prove(&self, consumer: &mut PullConsumer, client: &Client) {
        let attempt = self.attempt();
        let info = match consumer.info().await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "consumer info failed; cumulative acks stay held");
                return;
            }
        };
        let state = ConsumerState {
            num_ack_pending: info.num_ack_pending,
            ack_floor_stream_seq: info.ack_floor.stream_sequence,
            last_delivered_consumer_seq: info.delivered.consumer_sequence,
        };
        if let Some(reply) = self.prove(attempt, state) {
            send(client, std::slice::from_ref(&reply)).await;
        }
    }
}

impl State {
    /// The longest committed prefix of what was seen, removed and answered by the reply of
    /// its last delivery.
    fn ackable(&mut self) -> Option<Subject> {
        if !self.proven {
            return None;
        }
        let boundary = self
            .seen
            .iter()
            .find(|(_, e)| !e.committed)
            .map(|(seq, _)| *seq);
        let acked = match boundary {
            Some(first_uncommitted) => {
                let rest = self.seen.split_off(&first_uncommitted);
                std::mem::replace(&mut self.seen, rest)
            }
            None => std::mem::take(&mut self.seen),
        };
        acked.into_values().next_back().map(|last| last.reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(seq: u64) -> Subject {
        Subject::from(format!("$JS.ACK.s.c.1.{seq}.{seq}.0.0"))
    }

    fn state(pending: usize, floor: u64, delivered: u64) -> ConsumerState {
        ConsumerState {
            num_ack_pending: pending,
            ack_floor_stream_seq: floor,
            last_delivered_consumer_seq: delivered,
        }
    }

    fn proven_empty() -> Cumulative {
        let acks = Cumulative::new();
        let attempt = acks.attempt();
        assert_eq!(acks.prove(attempt, state(0, 0, 0)), None);
        assert!(acks.held_since().is_none());
        acks
    }

    #[test]
    fn acks_the_longest_committed_prefix_by_its_last_reply() {
        let acks = proven_empty();
        for seq in 1..=6 {
            acks.seen(seq, seq, reply(seq));
        }
        // The second batch commits first: nothing below it may be acked yet.
        assert_eq!(acks.commit(4..=6), None);
        assert_eq!(acks.commit(1..=3), Some(reply(6)));
        assert_eq!(acks.commit(std::iter::empty()), None);
    }

    #[test]
    fn nothing_is_acked_before_the_consumer_is_proven() {
        let acks = Cumulative::new();
        acks.seen(1, 1, reply(1));
        assert_eq!(acks.commit(1..=1), None);
        assert!(acks.held_since().is_some());
    }

    #[test]
    fn a_skipped_delivery_holds_acks_until_the_count_proves_it_gone() {
        let acks = proven_empty();
        acks.seen(1, 1, reply(1));
        acks.seen(2, 2, reply(2));
        // Delivery 3 (stream 3) went elsewhere.
        acks.seen(4, 4, reply(4));
        assert_eq!(acks.commit([1, 2, 4].into_iter()), None);
        // JetStream still holds stream 3 pending: 4 pending, 3 seen.
        let attempt = acks.attempt();
        assert_eq!(acks.prove(attempt, state(4, 0, 4)), None);
        // Redelivered here after ack_wait, as delivery 5; committed.
        acks.seen(5, 3, reply(3));
        assert_eq!(acks.commit(3..=3), None);
        let attempt = acks.attempt();
        assert_eq!(acks.prove(attempt, state(4, 0, 5)), Some(reply(4)));
        assert!(acks.held_since().is_none());
    }

    #[test]
    fn a_proof_is_void_if_deliveries_were_in_flight_or_another_skip_came() {
        let acks = Cumulative::new();
        acks.seen(1, 1, reply(1));
        let attempt = acks.attempt();
        // Delivery 2 was made before JetStream answered but not yet received.
        assert_eq!(acks.prove(attempt, state(2, 0, 2)), None);
        acks.seen(2, 2, reply(2));
        let attempt = acks.attempt();
        acks.seen(4, 4, reply(4));
        assert_eq!(acks.prove(attempt, state(2, 0, 2)), None);
    }

    #[test]
    fn after_a_restart_pending_deliveries_of_the_previous_run_hold_acks() {
        let acks = Cumulative::new();
        let attempt = acks.attempt();
        // 10 delivered to a collector that died, 3 of them never acked.
        assert_eq!(acks.prove(attempt, state(3, 7, 10)), None);
        acks.seen(11, 11, reply(11));
        acks.commit(11..=11);
        // Redelivered here after ack_wait.
        for (consumer_seq, stream_seq) in [(12, 8), (13, 9), (14, 10)] {
            acks.seen(consumer_seq, stream_seq, reply(stream_seq));
        }
        acks.commit(8..=10);
        let attempt = acks.attempt();
        assert_eq!(acks.prove(attempt, state(4, 7, 14)), Some(reply(11)));
    }

    #[test]
    fn a_restart_forgets_the_old_consumer_and_voids_proofs_under_way() {
        let acks = proven_empty();
        acks.seen(1, 1, reply(1));
        acks.seen(2, 2, reply(2));
        let attempt = acks.attempt();
        // The consumer is deleted and bound anew: its deliveries number from 1 again.
        acks.restart();
        assert!(acks.held_since().is_some());
        assert_eq!(acks.prove(attempt, state(0, 0, 0)), None, "begun before");
        let attempt = acks.attempt();
        assert_eq!(acks.prove(attempt, state(0, 0, 0)), None);
        assert!(acks.held_since().is_none());
        // The old batch commits late: nothing of it is acked on the new consumer...
        assert_eq!(acks.commit(1..=2), None);
        // ...whose own deliveries, the same messages again, are acked once committed.
        acks.seen(1, 1, reply(11));
        acks.seen(2, 2, reply(12));
        assert_eq!(acks.commit(1..=2), Some(reply(12)));
    }

    #[test]
    fn acks_are_the_bytes_jetstream_reads() {
        assert_eq!(Bytes::from(AckKind::Ack), Bytes::from_static(b"+ACK"));
        assert_eq!(Bytes::from(AckKind::Progress), Bytes::from_static(b"+WPI"));
    }

    #[test]
    fn a_first_delivery_that_does_not_follow_the_reported_one_is_not_proven() {
        let acks = Cumulative::new();
        let attempt = acks.attempt();
        // Deliveries 11 and 12 arrive while JetStream reports 10 delivered, none pending:
        // 11 followed on directly, so the run is complete.
        acks.seen(11, 11, reply(11));
        assert_eq!(acks.prove(attempt, state(0, 10, 10)), None);
        assert!(acks.held_since().is_none());
        assert_eq!(acks.commit(11..=11), Some(reply(11)));

        let acks = Cumulative::new();
        let attempt = acks.attempt();
        acks.seen(12, 12, reply(12));
        assert_eq!(acks.prove(attempt, state(0, 10, 10)), None);
        assert!(acks.held_since().is_some());
    }
}
