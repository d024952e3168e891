//! A batch: the binary COPY rows of many messages, which message owns which rows, the
//! dead letters, and the acknowledgement handles. One batch is one database transaction.

use crate::decode::{self, DecodeContext, Incoming, RecordSink, Rejection};
use crate::exporters::postgres::copy::RowWriter;
use crate::exporters::postgres::series::{NewSeries, SeriesCache, SeriesKey};
use jetscale_model::{DistributionPoint, LogRecord, MetricPoint, SpanRecord};
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// The tables a batch writes rows into, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Metrics = 0,
    Distributions = 1,
    Spans = 2,
    Logs = 3,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Metrics,
        Table::Distributions,
        Table::Spans,
        Table::Logs,
    ];
}

/// Raw bytes kept of a dead-lettered message.
pub const DEAD_LETTER_PAYLOAD_CAP: usize = 64 * 1024;

/// One delivered message of the batch.
#[derive(Debug, Clone)]
pub struct MessageEntry {
    /// Stream sequence: the identity the delivery ledger records.
    pub stream_seq: u64,
    /// The message's bytes in each of [`Batch::buffers`].
    pub rows: [Range<usize>; 4],
    pub row_count: [u32; 4],
    /// The message's entries in [`Batch::series_patches`].
    pub patches: Range<usize>,
    /// Index into [`Batch::dead_letters`] when the message is dead-lettered instead.
    pub dead_letter: Option<usize>,
    /// Reply subject of the message's first delivery in the batch.
    pub reply: async_nats::Subject,
    /// Reply subjects of later deliveries of it in the batch (a redelivery can arrive while
    /// the first is still here): all are acknowledged after the commit. Kept apart so the
    /// usual single delivery allocates nothing.
    pub redeliveries: Vec<async_nats::Subject>,
    /// Publish time, for end-to-end latency.
    pub published_ns: i64,
    /// Kept (reference-counted, not copied) so a message the database refuses can be
    /// dead-lettered whole.
    pub subject: async_nats::Subject,
    pub payload: bytes::Bytes,
}

impl MessageEntry {
    /// Reply subjects of every delivery of this message in the batch.
    pub fn replies(&self) -> impl Iterator<Item = &async_nats::Subject> {
        std::iter::once(&self.reply).chain(&self.redeliveries)
    }
}

/// A message that can not be stored, kept with everything needed to understand it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stream_seq: u64,
    pub subject: String,
    pub headers: String,
    pub reason: String,
    /// The first [`DEAD_LETTER_PAYLOAD_CAP`] bytes of the message.
    pub payload: Vec<u8>,
    pub payload_size: usize,
}

impl DeadLetter {
    /// A dead letter keeping the first [`DEAD_LETTER_PAYLOAD_CAP`] bytes of `payload` and its
    /// whole size; `headers` is a JSON object.
    pub fn new(
        stream_seq: u64,
        subject: &str,
        headers: String,
        reason: String,
        payload: &[u8],
    ) -> Self {
        DeadLetter {
            stream_seq,
            subject: subject.to_owned(),
            headers,
            reason,
            payload: payload[..payload.len().min(DEAD_LETTER_PAYLOAD_CAP)].to_vec(),
            payload_size: payload.len(),
        }
    }
}

/// Rows and deliveries bound for one transaction.
#[derive(Debug)]
pub struct Batch {
    /// Binary COPY rows per [`Table`] (no header or trailer).
    pub buffers: [Vec<u8>; 4],
    pub row_counts: [usize; 4],
    pub messages: Vec<MessageEntry>,
    pub dead_letters: Vec<DeadLetter>,
    /// Start of every partition (chunk) the rows fall in, in microseconds since the epoch.
    pub chunks: BTreeSet<i64>,
    /// Chunks of the other tables (distributions, spans, logs), which are fewer rows.
    pub other_table_chunks: [BTreeSet<i64>; 3],
    /// Start of every hour the rows fall in (rollup buckets), microseconds since the epoch.
    pub hours: BTreeSet<i64>,
    /// Series layout: the cache metric rows' series ids come from. `None`: the wide layout,
    /// every column on every row.
    series: Option<Arc<SeriesCache>>,
    /// Series the cache did not know, for the writer to find or create in the transaction.
    pub new_series: Vec<NewSeries>,
    new_series_index: HashMap<SeriesKey, u32>,
    /// `(offset of a placeholder series id in the metrics buffer, index into new_series)`.
    pub series_patches: Vec<(usize, u32)>,
    pending_series: PendingSeries,
    by_seq: HashMap<u64, usize, BuildHasherDefault<SeqHasher>>,
    chunk_us: i64,
    last_chunk: i64,
    last_hour: i64,
    pub opened: Instant,
}

const HOUR_US: i64 = 3_600_000_000;

/// Bytes a cleared batch keeps of each row buffer for its next use.
pub const RETAINED_BYTES: usize = 4 << 20;

/// Hashes a stream sequence for the batch's redelivery lookup. The keys are JetStream's own
/// consecutive sequence numbers, not attacker-chosen, so SipHash's flood resistance buys
/// nothing here; a multiply spreads them over the table at a fraction of its cost.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Batch {
    /// An empty batch whose partitions are `chunk_us` microseconds wide.
    pub fn new(chunk_us: i64, capacity_rows: usize) -> Self {
        Batch {
            buffers: [
                Vec::with_capacity(capacity_rows * 96),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ],
            row_counts: [0; 4],
            messages: Vec::new(),
            dead_letters: Vec::new(),
            chunks: BTreeSet::new(),
            other_table_chunks: Default::default(),
            hours: BTreeSet::new(),
            series: None,
            new_series: Vec::new(),
            new_series_index: HashMap::new(),
            series_patches: Vec::new(),
            pending_series: PendingSeries::default(),
            by_seq: HashMap::default(),
            chunk_us: chunk_us.max(1),
            last_chunk: i64::MIN,
            last_hour: i64::MIN,
            opened: Instant::now(),
        }
    }

    /// Metric points in the series layout: `(time, series_id, value)` rows, ids from `cache`.
    pub fn with_series(mut self, cache: Option<Arc<SeriesCache>>) -> Self {
        self.series = cache;
        self
    }

    /// An empty batch with the same partition width and layout.
    pub fn new_empty(&self, capacity_rows: usize) -> Batch {
        Batch::new(self.chunk_us, capacity_rows).with_series(self.series.clone())
    }

    /// Empties the batch for reuse, keeping its allocations (within [`RETAINED_BYTES`] per
    /// buffer, so one burst of large rows does not hold memory for good): a batch is a few
    /// hundred kilobytes of buffers and tables that would otherwise be allocated, grown,
    /// page-faulted and freed again for every transaction.
    pub fn clear(&mut self) {
        for buffer in &mut self.buffers {
            buffer.clear();
            buffer.shrink_to(RETAINED_BYTES);
        }
        self.row_counts = [0; 4];
        self.messages.clear();
        self.dead_letters.clear();
        self.chunks.clear();
        for chunks in &mut self.other_table_chunks {
            chunks.clear();
        }
        self.hours.clear();
        self.new_series.clear();
        self.new_series_index.clear();
        self.series_patches.clear();
        self.pending_series.clear();
        self.by_seq.clear();
        self.last_chunk = i64::MIN;
        self.last_hour = i64::MIN;
        self.opened = Instant::now();
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Rows plus dead letters: what the batch size bounds.
    pub fn size_in_rows(&self) -> usize {
        self.row_counts.iter().sum::<usize>() + self.dead_letters.len()
    }

    /// Rows bound for one table.
    pub fn rows(&self, table: Table) -> usize {
        self.row_counts[table as usize]
    }

    /// The encoded rows of one table.
    pub fn buffer(&self, table: Table) -> &[u8] {
        &self.buffers[table as usize]
    }

    fn buffer_lens(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.buffers[i].len())
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
            existing.redeliveries.push(meta.reply);
            return Ok(());
        }
        self.by_seq.insert(meta.stream_seq, self.messages.len());
        let start = self.buffer_lens();
        let rows_before = self.row_counts;
        let chunks_before = (self.last_chunk, self.last_hour);
        let patches_before = self.series_patches.len();
        self.pending_series.clear();
        let mut sink = BatchSink {
            batch: self,
            rows: [0; 4],
        };
        let outcome = decode::decode(msg, ctx, &mut sink);
        let rows = sink.rows;
        match &outcome {
            Ok(()) => {
                self.resolve_series();
                self.messages.push(MessageEntry {
                    stream_seq: meta.stream_seq,
                    rows: [0, 1, 2, 3].map(|i| start[i]..self.buffers[i].len()),
                    row_count: rows,
                    patches: patches_before..self.series_patches.len(),
                    dead_letter: None,
                    reply: meta.reply,
                    redeliveries: Vec::new(),
                    published_ns: meta.published_ns,
                    subject: meta.subject,
                    payload: meta.payload,
                })
            }
            Err(rejection) => {
                for (buffer, len) in self.buffers.iter_mut().zip(start) {
                    buffer.truncate(len);
                }
                self.row_counts = rows_before;
                (self.last_chunk, self.last_hour) = chunks_before;
                self.dead_letter(msg, meta, &rejection.to_string());
            }
        }
        outcome
    }

    /// Fills in the series ids of the decoded message's points: known ones from the cache,
    /// looked up together; unknown ones as placeholders for the writer to patch.
    fn resolve_series(&mut self) {
        let Some(cache) = &self.series else {
            return;
        };
        if self.pending_series.keys.is_empty() {
            // Spans, logs, distributions: no lock to take.
            return;
        }
        let mut pending = std::mem::take(&mut self.pending_series);
        cache.get_many(&pending.keys, &mut pending.ids);
        let metrics = &mut self.buffers[Table::Metrics as usize];
        let mut field_start = 0;
        for ((key, point), id) in pending.keys.iter().zip(&pending.points).zip(&pending.ids) {
            let fields = point.field_ends.map(|end| {
                let field = pending.text.get(field_start..end).unwrap_or_default();
                field_start = end;
                field
            });
            if let Some(id) = id {
                if let Some(slot) = metrics.get_mut(point.id_offset..point.id_offset + 8) {
                    slot.copy_from_slice(&id.to_be_bytes());
                }
                continue;
            }
            let new_series = &mut self.new_series;
            let index = *self.new_series_index.entry(*key).or_insert_with(|| {
                let [device_id, location, metric_name, unit, attributes] = fields;
                new_series.push(NewSeries {
                    key: *key,
                    device_id: device_id.to_owned(),
                    location: location.to_owned(),
                    metric_name: metric_name.to_owned(),
                    unit: unit.to_owned(),
                    attributes: attributes.to_owned(),
                });
                (new_series.len() - 1) as u32
            });
            self.series_patches.push((point.id_offset, index));
        }
        pending.clear();
        self.pending_series = pending;
    }

    /// Adds a delivery as a dead letter with the given reason.
    pub fn dead_letter(&mut self, msg: &Incoming<'_>, meta: Delivery<'_>, reason: &str) {
        self.by_seq.insert(meta.stream_seq, self.messages.len());
        let index = self.dead_letters.len();
        self.dead_letters.push(DeadLetter::new(
            meta.stream_seq,
            msg.subject,
            meta.headers
                .map_or_else(|| "{}".to_owned(), headers_to_json),
            reason.to_owned(),
            msg.payload,
        ));
        self.messages.push(MessageEntry {
            stream_seq: meta.stream_seq,
            rows: self.buffer_lens().map(|len| len..len),
            row_count: [0; 4],
            patches: self.series_patches.len()..self.series_patches.len(),
            dead_letter: Some(index),
            reply: meta.reply,
            redeliveries: Vec::new(),
            published_ns: meta.published_ns,
            subject: meta.subject,
            payload: meta.payload,
        });
    }

    /// Turns every message of the batch into a dead letter with `reason`, its rows dropped:
    /// the database refused them (the writer isolates such a message in a batch of its own).
    /// A message that was a dead letter already keeps its record with the new reason; the
    /// headers of one that was not are no longer at hand and are stored as `{}`.
    pub fn refuse_all(&mut self, reason: &str) {
        for buffer in &mut self.buffers {
            buffer.clear();
        }
        self.row_counts = [0; 4];
        // The series of refused rows are not created: their placeholders went with the rows.
        self.series_patches.clear();
        for m in &mut self.messages {
            m.rows = [0, 0, 0, 0].map(|z| z..z);
            m.row_count = [0; 4];
            m.patches = 0..0;
            match m.dead_letter.and_then(|i| self.dead_letters.get_mut(i)) {
                Some(d) => reason.clone_into(&mut d.reason),
                None => {
                    self.dead_letters.push(DeadLetter::new(
                        m.stream_seq,
                        &m.subject,
                        "{}".into(),
                        reason.to_owned(),
                        &m.payload,
                    ));
                    m.dead_letter = Some(self.dead_letters.len() - 1);
                }
            }
        }
    }

    /// A batch holding only the chosen messages (by index), for retrying part of a batch.
    pub fn select(&self, keep: &[usize]) -> Batch {
        let mut out = self.new_empty(0);
        // Series indexes stay valid: the list is shared whole, patches move with their rows.
        out.new_series = self.new_series.clone();
        out.new_series_index = self.new_series_index.clone();
        for &i in keep {
            let Some(m) = self.messages.get(i) else {
                continue;
            };
            let start = out.buffer_lens();
            for i in 0..4 {
                out.buffers[i].extend_from_slice(&self.buffers[i][m.rows[i].clone()]);
                out.row_counts[i] += m.row_count[i] as usize;
            }
            let dead_letter = m
                .dead_letter
                .and_then(|d| self.dead_letters.get(d))
                .map(|d| {
                    out.dead_letters.push(d.clone());
                    out.dead_letters.len() - 1
                });
            let patches_start = out.series_patches.len();
            for &(offset, series) in &self.series_patches[m.patches.clone()] {
                out.series_patches
                    .push((offset - m.rows[0].start + start[0], series));
            }
            out.by_seq.insert(m.stream_seq, out.messages.len());
            let end = out.buffer_lens();
            out.messages.push(MessageEntry {
                rows: [0, 1, 2, 3].map(|i| start[i]..end[i]),
                patches: patches_start..out.series_patches.len(),
                dead_letter,
                ..m.clone()
            });
        }
        out.chunks = self.chunks.clone();
        out.other_table_chunks = self.other_table_chunks.clone();
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
    /// Rendered as JSON only if the message is dead-lettered.
    pub headers: Option<&'a async_nats::HeaderMap>,
    pub published_ns: i64,
    pub subject: async_nats::Subject,
    pub payload: bytes::Bytes,
}

struct BatchSink<'b> {
    batch: &'b mut Batch,
    rows: [u32; 4],
}

impl BatchSink<'_> {
    fn row(&mut self, table: Table, fields: i16) -> RowWriter<'_> {
        let i = table as usize;
        self.batch.row_counts[i] += 1;
        self.rows[i] += 1;
        RowWriter::begin(&mut self.batch.buffers[i], fields)
    }

    fn note_other(&mut self, table: Table, unix_ns: i64) {
        let us = unix_ns.div_euclid(1000);
        let chunk = us - us.rem_euclid(self.batch.chunk_us);
        self.batch.other_table_chunks[table as usize - 1].insert(chunk);
    }
}

/// The metric points of the message being decoded, whose series ids are looked up together
/// once it is decoded ([`Batch::resolve_series`]): once a fleet outgrows the CPU's caches
/// each lookup is a trip to memory, and a message's trips can overlap. The buffers are
/// reused from message to message.
#[derive(Debug, Default)]
struct PendingSeries {
    keys: Vec<SeriesKey>,
    points: Vec<PendingPoint>,
    /// Every point's identity fields, back to back, in case its series is new.
    text: String,
    ids: Vec<Option<i64>>,
}

#[derive(Debug)]
struct PendingPoint {
    /// Where the row's series id goes in the metrics buffer.
    id_offset: usize,
    /// Where each of the point's identity fields ends in [`PendingSeries::text`].
    field_ends: [usize; 5],
}

impl PendingSeries {
    fn clear(&mut self) {
        self.keys.clear();
        self.points.clear();
        self.text.clear();
    }
}

impl BatchSink<'_> {
    /// A `(time, series_id, value)` row with a placeholder series id, filled in by
    /// [`Batch::resolve_series`] once the message is decoded.
    fn series_point(&mut self, p: &MetricPoint<'_>) {
        let key = SeriesKey::of(p.source, p.location, p.name, p.unit, p.attributes);
        let batch = &mut *self.batch;
        let buffer = &mut batch.buffers[Table::Metrics as usize];
        let mut row = RowWriter::begin(buffer, 3);
        row.timestamptz_ns(p.time_unix_nano);
        let id_offset = row.int8_offset(0);
        row.float8(p.value);
        let pending = &mut batch.pending_series;
        let field_ends = [p.source, p.location, p.name, p.unit, p.attributes].map(|field| {
            pending.text.push_str(field);
            pending.text.len()
        });
        pending.keys.push(key);
        pending.points.push(PendingPoint {
            id_offset,
            field_ends,
        });
        batch.row_counts[Table::Metrics as usize] += 1;
        self.rows[Table::Metrics as usize] += 1;
    }
}

fn opt_float(w: &mut RowWriter<'_>, v: Option<f64>) {
    match v {
        Some(v) => w.float8(v),
        None => w.null(),
    };
}

fn json_or(w: &mut RowWriter<'_>, text: &str, empty: &str) {
    w.jsonb(if text.is_empty() { empty } else { text });
}

impl RecordSink for BatchSink<'_> {
    fn metric(&mut self, p: &MetricPoint<'_>) -> Result<(), Rejection> {
        self.batch.note_time(p.time_unix_nano);
        if self.batch.series.is_some() {
            self.series_point(p);
            return Ok(());
        }
        self.row(Table::Metrics, 7)
            .timestamptz_ns(p.time_unix_nano)
            .text(p.source)
            .text(p.location)
            .text(p.name)
            .float8(p.value)
            .text_or_null(p.unit)
            .jsonb(p.attributes);
        Ok(())
    }

    fn distribution(&mut self, p: &DistributionPoint<'_>) -> Result<(), Rejection> {
        self.note_other(Table::Distributions, p.time_unix_nano);
        let mut w = self.row(Table::Distributions, 14);
        w.timestamptz_ns(p.time_unix_nano);
        if p.start_time_unix_nano > 0 {
            w.timestamptz_ns(p.start_time_unix_nano);
        } else {
            w.null();
        }
        w.text(p.source)
            .text(p.location)
            .text(p.name)
            .text_or_null(p.unit)
            .text(p.kind)
            .text(p.temporality)
            .int8(i64::try_from(p.count).unwrap_or(i64::MAX));
        opt_float(&mut w, p.sum);
        opt_float(&mut w, p.min);
        opt_float(&mut w, p.max);
        json_or(&mut w, p.buckets, "{}");
        json_or(&mut w, p.attributes, "{}");
        Ok(())
    }

    fn span(&mut self, s: &SpanRecord<'_>) -> Result<(), Rejection> {
        self.note_other(Table::Spans, s.start_time_unix_nano);
        let duration_ms = (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e6;
        let mut w = self.row(Table::Spans, 17);
        w.timestamptz_ns(s.start_time_unix_nano)
            .timestamptz_ns(s.end_time_unix_nano)
            .text(s.trace_id)
            .text(s.span_id)
            .text_or_null(s.parent_span_id)
            .text(s.name)
            .text(s.service)
            .text(s.kind)
            .text(s.status_code)
            .text_or_null(s.status_message)
            .text_or_null(s.trace_state)
            .float8(duration_ms);
        json_or(&mut w, s.attributes, "{}");
        json_or(&mut w, s.resource, "{}");
        json_or(&mut w, s.events, "[]");
        json_or(&mut w, s.links, "[]");
        w.text_or_null(s.error);
        Ok(())
    }

    fn log(&mut self, l: &LogRecord<'_>) -> Result<(), Rejection> {
        self.note_other(Table::Logs, l.time_unix_nano);
        let mut w = self.row(Table::Logs, 13);
        w.timestamptz_ns(l.time_unix_nano);
        if l.observed_time_unix_nano > 0 {
            w.timestamptz_ns(l.observed_time_unix_nano);
        } else {
            w.null();
        }
        w.text(l.service)
            .int4(l.severity_number)
            .text_or_null(l.severity_text)
            .text(l.message);
        if l.body_json.is_empty() {
            w.null();
        } else {
            w.jsonb(l.body_json);
        }
        json_or(&mut w, l.attributes, "{}");
        json_or(&mut w, l.resource, "{}");
        w.text_or_null(l.trace_id)
            .text_or_null(l.span_id)
            .int4(l.flags)
            .text_or_null(l.error);
        Ok(())
    }
}

/// Message headers as a JSON object of arrays, for dead letters.
fn headers_to_json(headers: &async_nats::HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for (name, values) in headers.iter() {
        let values: Vec<serde_json::Value> = values
            .iter()
            .map(|v| serde_json::Value::String(v.as_str().to_owned()))
            .collect();
        map.insert(name.to_string(), serde_json::Value::Array(values));
    }
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::decode::testing;
    use crate::simulate::payload::write_payload;

    const HOUR_NS: i64 = 3_600_000_000_000;

    fn payload(device: &str, time_ns: i64) -> Vec<u8> {
        let mut out = Vec::new();
        write_payload(&mut out, device, "lab", time_ns, [21.5, 40.0, 88.0]);
        out
    }

    fn add(batch: &mut Batch, seq: u64, body: &[u8], reply: &str) -> Result<(), Rejection> {
        let limits = Limits::default();
        let incoming = Incoming {
            subject: "telemetry.lab.dev",
            content_type: None,
            format_header: None,
            payload: body,
        };
        let delivery = Delivery {
            stream_seq: seq,
            reply: reply.into(),
            headers: None,
            published_ns: 0,
            subject: "telemetry.lab.dev".into(),
            payload: bytes::Bytes::copy_from_slice(body),
        };
        batch.add(&incoming, delivery, &testing::ctx(&limits))
    }

    /// Everything a writer reads from a batch, for comparing two batches.
    fn contents(b: &Batch) -> impl PartialEq + std::fmt::Debug {
        let messages: Vec<_> = b
            .messages
            .iter()
            .map(|m| {
                let replies: Vec<String> = m.replies().map(|r| r.to_string()).collect();
                (
                    m.stream_seq,
                    m.rows.clone(),
                    m.row_count,
                    m.patches.clone(),
                    m.dead_letter,
                    replies,
                )
            })
            .collect();
        let dead: Vec<_> = b
            .dead_letters
            .iter()
            .map(|d| (d.stream_seq, d.reason.clone()))
            .collect();
        let new_series: Vec<_> = b
            .new_series
            .iter()
            .map(|s| {
                (
                    s.device_id.clone(),
                    s.metric_name.clone(),
                    s.attributes.clone(),
                )
            })
            .collect();
        (
            b.buffers.clone(),
            b.row_counts,
            messages,
            dead,
            b.chunks.clone(),
            b.other_table_chunks.clone(),
            b.hours.clone(),
            new_series,
            b.series_patches.clone(),
        )
    }

    fn fill(batch: &mut Batch, first_seq: u64, hour: i64) {
        let t = 1_700_000_000_000_000_000 + hour * HOUR_NS;
        add(batch, first_seq, &payload("dev-1", t), "r.1").unwrap();
        add(batch, first_seq + 1, &payload("dev-2", t + 1), "r.2").unwrap();
        let _ = add(batch, first_seq + 2, b"{not json", "r.3");
    }

    #[test]
    fn a_cleared_batch_refills_exactly_like_a_new_one() {
        let cache = Some(Arc::new(SeriesCache::new(1024)));
        let mut reused = Batch::new(HOUR_US, 16).with_series(cache.clone());
        // A first use that leaves something behind in every part of the batch.
        fill(&mut reused, 1, 0);
        add(&mut reused, 1, &payload("dev-1", 5), "r.again").unwrap();
        assert!(!reused.dead_letters.is_empty() && !reused.new_series.is_empty());
        reused.clear();
        assert!(reused.is_empty());
        assert_eq!(reused.size_in_rows(), 0);

        let mut fresh = Batch::new(HOUR_US, 16).with_series(cache);
        fill(&mut reused, 100, 5);
        fill(&mut fresh, 100, 5);
        assert_eq!(contents(&reused), contents(&fresh));
        assert_eq!(reused.hours.len(), 1, "the first use's hour is gone");
    }

    #[test]
    fn a_redelivery_in_the_same_batch_adds_its_reply_and_no_rows() {
        let mut batch = Batch::new(HOUR_US, 16);
        let body = payload("dev-1", 1_700_000_000_000_000_000);
        add(&mut batch, 7, &body, "first").unwrap();
        let rows = batch.size_in_rows();
        add(&mut batch, 7, &body, "second").unwrap();
        assert_eq!(batch.size_in_rows(), rows);
        assert_eq!(batch.messages.len(), 1);
        let replies: Vec<String> = batch.messages[0].replies().map(|r| r.to_string()).collect();
        assert_eq!(replies, ["first", "second"]);
    }

    #[test]
    fn clearing_gives_back_what_a_burst_of_large_rows_grew() {
        let mut batch = Batch::new(HOUR_US, 16);
        batch.buffers[Table::Logs as usize].reserve(RETAINED_BYTES * 3);
        batch.buffers[Table::Metrics as usize].extend_from_slice(&[0; 1024]);
        let kept = batch.buffers[Table::Metrics as usize].capacity();
        batch.clear();
        assert!(batch.buffers[Table::Logs as usize].capacity() <= RETAINED_BYTES);
        assert_eq!(batch.buffers[Table::Metrics as usize].capacity(), kept);
        assert!(batch.buffers.iter().all(Vec::is_empty));
    }

    #[test]
    fn a_refused_message_becomes_a_dead_letter_without_rows_or_series() {
        let cache = Some(Arc::new(SeriesCache::new(1024)));
        let mut batch = Batch::new(HOUR_US, 16).with_series(cache);
        let body = payload("dev-1", 1_700_000_000_000_000_000);
        add(&mut batch, 7, &body, "r.7").unwrap();
        assert!(!batch.series_patches.is_empty());
        batch.refuse_all("rejected by the database: value out of range (22003)");
        assert_eq!(batch.size_in_rows(), 1, "the dead letter alone");
        assert!(batch.buffers.iter().all(Vec::is_empty));
        assert!(batch.series_patches.is_empty());
        let dead = &batch.dead_letters[0];
        assert_eq!((dead.stream_seq, dead.payload.as_slice()), (7, &body[..]));
        assert_eq!(dead.payload_size, body.len());
        assert_eq!(batch.messages[0].dead_letter, Some(0));

        // A dead letter the database refused keeps its one record, with the new reason.
        let mut poison = Batch::new(HOUR_US, 16);
        let _ = add(&mut poison, 8, b"{not json", "r.8");
        poison.refuse_all("rejected by the database: bad header (22P02)");
        assert_eq!(poison.dead_letters.len(), 1);
        assert!(poison.dead_letters[0].reason.contains("22P02"));
    }

    #[test]
    fn dead_letters_keep_a_capped_copy_and_the_whole_size() {
        let big = vec![b'x'; DEAD_LETTER_PAYLOAD_CAP + 10];
        let dead = DeadLetter::new(1, "telemetry.x", "{}".into(), "why".into(), &big);
        assert_eq!(dead.payload.len(), DEAD_LETTER_PAYLOAD_CAP);
        assert_eq!(dead.payload_size, big.len());
    }

    #[test]
    fn sequence_hashes_spread_consecutive_numbers() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<SeqHasher>::default();
        let buckets: BTreeSet<u64> = (1_000_000..1_000_256u64)
            .map(|seq| hasher.hash_one(seq) >> 56)
            .collect();
        // The table picks buckets and control bytes from the hash's bits: consecutive
        // sequences must not pile onto a few values of the top byte.
        assert!(buckets.len() > 128, "{} distinct top bytes", buckets.len());
    }
}
