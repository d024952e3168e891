//! A batch: the binary COPY rows of many messages, which message owns which rows, the
//! dead letters, and the acknowledgement handles. One batch is one database transaction.

use crate::decode::{self, DecodeContext, Incoming, RecordSink, Rejection};
use crate::store::copy::RowWriter;
use jetscale_model::MetricPoint;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::time::Instant;

/// Raw bytes kept of a dead-lettered message.
pub const DEAD_LETTER_PAYLOAD_CAP: usize = 64 * 1024;

/// One delivered message of the batch.
#[derive(Debug, Clone)]
pub struct MessageEntry {
    /// Stream sequence: the identity the delivery ledger records.
    pub stream_seq: u64,
    /// The message's bytes in [`Batch::metrics`].
    pub rows: Range<usize>,
    pub row_count: u32,
    /// Index into [`Batch::dead_letters`] when the message is dead-lettered instead.
    pub dead_letter: Option<usize>,
    /// Reply subjects of every delivery of this message in the batch (a redelivery can
    /// arrive while the first is still here): all are acknowledged after the commit.
    pub replies: Vec<async_nats::Subject>,
    /// Publish time, for end-to-end latency.
    pub published_ns: i64,
    /// Kept (reference-counted, not copied) so a message the database refuses can be
    /// dead-lettered whole.
    pub subject: async_nats::Subject,
    pub payload: bytes::Bytes,
}

/// A message that can not be stored, kept with everything needed to understand it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stream_seq: u64,
    pub subject: String,
    pub headers: String,
    pub reason: String,
    pub payload: Vec<u8>,
    pub payload_size: usize,
}

/// Rows and deliveries bound for one transaction.
#[derive(Debug)]
pub struct Batch {
    /// Binary COPY rows for the metrics table (no header or trailer).
    pub metrics: Vec<u8>,
    pub metric_rows: usize,
    pub messages: Vec<MessageEntry>,
    pub dead_letters: Vec<DeadLetter>,
    /// Start of every partition (chunk) the rows fall in, in microseconds since the epoch.
    pub chunks: BTreeSet<i64>,
    /// Start of every hour the rows fall in (rollup buckets), microseconds since the epoch.
    pub hours: BTreeSet<i64>,
    by_seq: HashMap<u64, usize>,
    chunk_us: i64,
    last_chunk: i64,
    last_hour: i64,
    pub opened: Instant,
}

const HOUR_US: i64 = 3_600_000_000;

impl Batch {
    /// An empty batch whose partitions are `chunk_us` microseconds wide.
    pub fn new(chunk_us: i64, capacity_rows: usize) -> Self {
        Batch {
            metrics: Vec::with_capacity(capacity_rows * 96),
            metric_rows: 0,
            messages: Vec::new(),
            dead_letters: Vec::new(),
            chunks: BTreeSet::new(),
            hours: BTreeSet::new(),
            by_seq: HashMap::new(),
            chunk_us: chunk_us.max(1),
            last_chunk: i64::MIN,
            last_hour: i64::MIN,
            opened: Instant::now(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Rows plus dead letters: what the batch size bounds.
    pub fn weight(&self) -> usize {
        self.metric_rows + self.dead_letters.len()
    }

    /// Adds a delivery. A message already in the batch (a redelivery) only adds its reply
    /// subject; a message that fails to decode becomes a dead letter, its partial rows
    /// rolled back.
    pub fn add(
        &mut self,
        msg: &Incoming<'_>,
        meta: Delivery<'_>,
        ctx: &DecodeContext<'_>,
    ) -> Result<(), Rejection> {
        if let Some(existing) = self
            .by_seq
            .get(&meta.stream_seq)
            .and_then(|&i| self.messages.get_mut(i))
        {
            existing.replies.push(meta.reply);
            return Ok(());
        }
        self.by_seq.insert(meta.stream_seq, self.messages.len());
        let start = self.metrics.len();
        let rows_before = self.metric_rows;
        let chunks_before = (self.last_chunk, self.last_hour);
        let mut sink = BatchSink {
            batch: self,
            rows: 0,
        };
        let outcome = decode::decode(msg, ctx, &mut sink);
        let rows = sink.rows;
        match &outcome {
            Ok(()) => self.messages.push(MessageEntry {
                stream_seq: meta.stream_seq,
                rows: start..self.metrics.len(),
                row_count: rows,
                dead_letter: None,
                replies: vec![meta.reply],
                published_ns: meta.published_ns,
                subject: meta.subject,
                payload: meta.payload,
            }),
            Err(rejection) => {
                self.metrics.truncate(start);
                self.metric_rows = rows_before;
                (self.last_chunk, self.last_hour) = chunks_before;
                self.dead_letter(msg, meta, &rejection.to_string());
            }
        }
        outcome
    }

    /// Adds a delivery as a dead letter with the given reason.
    pub fn dead_letter(&mut self, msg: &Incoming<'_>, meta: Delivery<'_>, reason: &str) {
        self.by_seq.insert(meta.stream_seq, self.messages.len());
        let index = self.dead_letters.len();
        self.dead_letters.push(DeadLetter {
            stream_seq: meta.stream_seq,
            subject: msg.subject.to_owned(),
            headers: meta.headers_json.to_owned(),
            reason: reason.to_owned(),
            payload: msg.payload[..msg.payload.len().min(DEAD_LETTER_PAYLOAD_CAP)].to_vec(),
            payload_size: msg.payload.len(),
        });
        self.messages.push(MessageEntry {
            stream_seq: meta.stream_seq,
            rows: self.metrics.len()..self.metrics.len(),
            row_count: 0,
            dead_letter: Some(index),
            replies: vec![meta.reply],
            published_ns: meta.published_ns,
            subject: meta.subject,
            payload: meta.payload,
        });
    }

    /// A batch holding only the chosen messages (by index), for retrying part of a batch.
    pub fn select(&self, keep: &[usize]) -> Batch {
        let mut out = Batch::new(self.chunk_us, 0);
        for &i in keep {
            let Some(m) = self.messages.get(i) else {
                continue;
            };
            let start = out.metrics.len();
            out.metrics.extend_from_slice(&self.metrics[m.rows.clone()]);
            out.metric_rows += m.row_count as usize;
            let dead_letter = m
                .dead_letter
                .and_then(|d| self.dead_letters.get(d))
                .map(|d| {
                    out.dead_letters.push(d.clone());
                    out.dead_letters.len() - 1
                });
            out.by_seq.insert(m.stream_seq, out.messages.len());
            out.messages.push(MessageEntry {
                rows: start..out.metrics.len(),
                dead_letter,
                ..m.clone()
            });
        }
        out.chunks = self.chunks.clone();
        out.hours = self.hours.clone();
        out.opened = self.opened;
        out
    }

    fn note_time(&mut self, unix_ns: i64) {
        let us = unix_ns.div_euclid(1000);
        let chunk = us - us.rem_euclid(self.chunk_us);
        if chunk != self.last_chunk {
            self.chunks.insert(chunk);
            self.last_chunk = chunk;
        }
        let hour = us - us.rem_euclid(HOUR_US);
        if hour != self.last_hour {
            self.hours.insert(hour);
            self.last_hour = hour;
        }
    }
}

/// Delivery metadata of one message.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub stream_seq: u64,
    pub reply: async_nats::Subject,
    pub headers_json: &'a str,
    pub published_ns: i64,
    pub subject: async_nats::Subject,
    pub payload: bytes::Bytes,
}

struct BatchSink<'b> {
    batch: &'b mut Batch,
    rows: u32,
}

impl RecordSink for BatchSink<'_> {
    fn metric(&mut self, p: &MetricPoint<'_>) -> Result<(), Rejection> {
        self.batch.note_time(p.time_unix_nano);
        RowWriter::begin(&mut self.batch.metrics, 7)
            .timestamptz_ns(p.time_unix_nano)
            .text(p.source)
            .text(p.location)
            .text(p.name)
            .float8(p.value)
            .text_or_null(p.unit)
            .jsonb(p.attributes);
        self.batch.metric_rows += 1;
        self.rows += 1;
        Ok(())
    }
}
