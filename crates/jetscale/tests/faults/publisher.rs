//! The publisher of every scenario: valid device messages and malformed ones at a steady
//! rate, each retried until JetStream acknowledges it, and a record of what was acknowledged.

use super::seed;
use crate::support::now_ns;
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use jetscale::config::NatsSettings;
use jetscale::simulate::payload::{write_payload, METRICS};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One stored or expected metric row: device, location, metric, time (µs), value bits, unit.
pub type Row = (String, String, String, i64, u64, Option<String>);

/// Publishes awaiting their ack at once.
const MAX_IN_FLIGHT: usize = 512;
/// How long one message may take to be acknowledged, retries included, before the test fails.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(120);

/// The kinds of malformed message the suite publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bad {
    /// A valid device payload cut short.
    Truncated,
    /// `"asDouble": "hot"`.
    ValueIsAWord,
    /// `"timeUnixNano": [..]`.
    TimeIsAnArray,
    /// 2 MiB of JSON, over the collector's 1 MiB `max_message_bytes`.
    Huge,
    /// A device payload whose device id holds bytes that are not UTF-8.
    InvalidUtf8,
    /// Bytes that look like protobuf, without a content type.
    ProtobufBlob,
    /// A JSON object of no format jetscale knows.
    UnknownShape,
    /// A JSON array declared as JSON.
    JsonArray,
}

/// Every kind; needs a server with `max_payload` above 2 MiB.
pub const ALL_BAD: &[Bad] = &[
    Bad::Truncated,
    Bad::ValueIsAWord,
    Bad::TimeIsAnArray,
    Bad::Huge,
    Bad::InvalidUtf8,
    Bad::ProtobufBlob,
    Bad::UnknownShape,
    Bad::JsonArray,
];

/// Every kind that fits the default 1 MiB `max_payload`.
pub const SMALL_BAD: &[Bad] = &[
    Bad::Truncated,
    Bad::ValueIsAWord,
    Bad::TimeIsAnArray,
    Bad::InvalidUtf8,
    Bad::ProtobufBlob,
    Bad::UnknownShape,
    Bad::JsonArray,
];

/// The server option that lets the 2 MiB message through.
pub const BIG_PAYLOADS: &str = "max_payload: 4194304";

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    pub messages: u64,
    pub devices: u64,
    /// Messages per second: publishing is spread over the fault.
    pub rate: f64,
    /// Kinds of malformed message, used in turn; about 1 in 100 messages is one. Empty: none.
    pub bad: &'static [Bad],
    pub seed: u64,
}

/// `messages` from `devices` devices at `rate` a second, every kind of malformed message among
/// them, random choices seeded for `scenario`.
pub fn plan(messages: u64, devices: u64, rate: f64, scenario: u64) -> Plan {
    Plan {
        messages,
        devices,
        rate,
        bad: ALL_BAD,
        seed: seed(scenario),
    }
}

/// What JetStream acknowledged.
#[derive(Debug, Default)]
pub struct Published {
    /// Every row the valid messages must produce.
    pub rows: Vec<Row>,
    pub valid: u64,
    /// Stream sequence -> kind and payload size, of every malformed message.
    pub malformed: BTreeMap<u64, (Bad, usize)>,
    /// Every acknowledged stream sequence.
    pub seqs: BTreeSet<u64>,
    /// Publishes tried again after an error or a lost ack.
    retries: u64,
    /// Acks saying "duplicate" (a retry of a message already stored).
    duplicates: u64,
    elapsed: Duration,
}

enum Meta {
    Valid(Vec<Row>),
    Bad(Bad, usize),
}

struct Acked {
    seq: u64,
    retries: u64,
    duplicate: bool,
    meta: Meta,
}

impl Published {
    fn record(&mut self, acked: Acked) {
        assert!(
            self.seqs.insert(acked.seq),
            "JetStream acknowledged two different messages with stream sequence {}",
            acked.seq
        );
        self.retries += acked.retries;
        self.duplicates += u64::from(acked.duplicate);
        match acked.meta {
            Meta::Valid(rows) => {
                self.valid += 1;
                self.rows.extend(rows);
            }
            Meta::Bad(kind, size) => {
                self.malformed.insert(acked.seq, (kind, size));
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.valid + self.malformed.len() as u64
    }
}

/// A double for a data point: mostly sensor-like, some arbitrary bit patterns and edge cases,
/// so "value for value" means bit for bit.
fn value(rng: &mut fastrand::Rng) -> f64 {
    const EDGES: [f64; 10] = [
        0.0,
        -0.0,
        5e-324,
        f64::MIN_POSITIVE,
        f64::MAX,
        -f64::MAX,
        0.1,
        1e21,
        -273.15,
        123_456_789.123_456_79,
    ];
    match rng.u8(0..20) {
        0..=2 => loop {
            let v = f64::from_bits(rng.u64(..));
            if v.is_finite() {
                break v;
            }
        },
        3 => EDGES[rng.usize(..EDGES.len())],
        _ => rng.f64() * 120.0 - 20.0,
    }
}

/// A valid message in the IoT pipeline design's device payload shape and the rows it must
/// produce.
fn valid_message(
    rng: &mut fastrand::Rng,
    i: u64,
    devices: u64,
    now: i64,
    buf: &mut Vec<u8>,
) -> (String, Vec<Row>) {
    let d = i % devices;
    let device = format!("dev-{d:04}");
    let location = format!("site-{}", d % 7);
    // Within the last two hours: several hourly partitions, all inside the accepted window.
    let time = now - rng.i64(0..7_200_000_000_000);
    let values = [value(rng), value(rng), value(rng)];
    write_payload(buf, &device, &location, time, values);
    let rows = METRICS
        .iter()
        .zip(values)
        .enumerate()
        .map(|(k, ((name, unit), v))| {
            (
                device.clone(),
                location.clone(),
                (*name).to_owned(),
                (time + k as i64).div_euclid(1000),
                v.to_bits(),
                Some((*unit).to_owned()),
            )
        })
        .collect();
    (device, rows)
}

/// A malformed payload of the given kind and its content type, if it declares one.
fn bad_message(
    rng: &mut fastrand::Rng,
    kind: Bad,
    now: i64,
    buf: &mut Vec<u8>,
) -> (Vec<u8>, Option<&'static str>) {
    const JSON: Option<&str> = Some("application/json");
    let device_payload = |rng: &mut fastrand::Rng, buf: &mut Vec<u8>, device: &str| {
        let values = [value(rng), value(rng), value(rng)];
        write_payload(
            buf,
            device,
            "site-0",
            now - rng.i64(0..3_600_000_000_000),
            values,
        );
        buf.clone()
    };
    match kind {
        Bad::Truncated => {
            let full = device_payload(rng, buf, "dev-trunc");
            let cut = rng.usize(1..full.len() - 1);
            (full[..cut].to_vec(), JSON)
        }
        Bad::ValueIsAWord => {
            let full = String::from_utf8(device_payload(rng, buf, "dev-word")).expect("utf-8");
            let changed = full.replacen("\"asDouble\":", "\"asDouble\":\"hot\",\"was\":", 1);
            assert_ne!(changed, full);
            (changed.into_bytes(), JSON)
        }
        Bad::TimeIsAnArray => {
            let full = String::from_utf8(device_payload(rng, buf, "dev-time")).expect("utf-8");
            let changed = full.replacen("\"timeUnixNano\":", "\"timeUnixNano\":[1,2],\"was\":", 1);
            assert_ne!(changed, full);
            (changed.into_bytes(), JSON)
        }
        Bad::Huge => {
            let mut huge = String::with_capacity(2 * 1024 * 1024 + 64);
            huge.push_str(r#"{"resourceMetrics":[],"padding":""#);
            while huge.len() < 2 * 1024 * 1024 {
                huge.push_str("0123456789abcdef");
            }
            huge.push_str("\"}");
            (huge.into_bytes(), JSON)
        }
        Bad::InvalidUtf8 => {
            let mut full = device_payload(rng, buf, "dev-BADBYTES");
            let at = full
                .windows(8)
                .position(|w| w == b"BADBYTES")
                .expect("marker");
            full.splice(at..at + 8, [0xff, 0xfe, b'x', 0xc3, 0x28, 0x80, 0xed, 0xa0]);
            assert!(std::str::from_utf8(&full).is_err());
            (full, JSON)
        }
        Bad::ProtobufBlob => {
            let mut blob = vec![0x0a, 0x92, 0x01, 0x0a, 0x1b, 0x0a, 0x0c];
            blob.extend_from_slice(b"service.name");
            blob.extend_from_slice(&[0x12, 0x0b, 0x0a, 0x09]);
            blob.extend_from_slice(b"iot-senso");
            for _ in 0..rng.usize(16..300) {
                blob.push(rng.u8(..));
            }
            (blob, None)
        }
        Bad::UnknownShape => {
            let text = format!(
                r#"{{"sensor":"dev-{}","readings":[{},{}],"ts":"2024-01-01T00:00:00Z"}}"#,
                rng.u32(..),
                rng.u8(..),
                rng.u8(..)
            );
            (text.into_bytes(), if rng.bool() { JSON } else { None })
        }
        Bad::JsonArray => (b"[{\"resourceMetrics\":[]}]".to_vec(), JSON),
    }
}

/// Publishes one message until JetStream acknowledges it. Retries keep the `Nats-Msg-Id`, so
/// a message stored whose ack was lost is not stored twice (the stream's duplicate window).
async fn publish_one(
    js: jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    meta: Meta,
) -> Acked {
    let deadline = Instant::now() + PUBLISH_DEADLINE;
    let mut retries = 0;
    loop {
        let attempt = async {
            js.publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        let error = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(ack)) => {
                return Acked {
                    seq: ack.sequence,
                    retries,
                    duplicate: ack.duplicate,
                    meta,
                }
            }
            Ok(Err(e)) => e,
            Err(_) => "no ack within 10 s".to_owned(),
        };
        assert!(
            Instant::now() < deadline,
            "a publish to {subject} was not acknowledged within {PUBLISH_DEADLINE:?}: {error}"
        );
        retries += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes the plan at its rate and returns what was acknowledged. The connection reconnects
/// forever, to every server of a cluster.
pub async fn publish(nats: NatsSettings, plan: Plan) -> Published {
    let client = jetscale::receivers::nats::connect(&nats, "faults-publisher")
        .await
        .expect("connect to nats");
    let js = jetstream::new(client);
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let run = rng.u64(..);
    let now = now_ns();
    let started = Instant::now();
    let mut out = Published::default();
    let mut in_flight = FuturesUnordered::new();
    let mut buf = Vec::with_capacity(1024);
    let mut next_bad = 0usize;
    for i in 0..plan.messages {
        let due = started + Duration::from_secs_f64(i as f64 / plan.rate);
        loop {
            if in_flight.len() >= MAX_IN_FLIGHT {
                let acked = in_flight.next().await.expect("in flight");
                out.record(acked);
                continue;
            }
            if Instant::now() >= due {
                break;
            }
            tokio::select! {
                Some(acked) = in_flight.next(), if !in_flight.is_empty() => out.record(acked),
                _ = tokio::time::sleep_until(due.into()) => break,
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("faults-{run:016x}-{i}").as_str());
        let (subject, payload, meta) = if !plan.bad.is_empty() && rng.u32(0..100) == 0 {
            let kind = plan.bad[next_bad % plan.bad.len()];
            next_bad += 1;
            let (payload, content_type) = bad_message(&mut rng, kind, now, &mut buf);
            if let Some(ct) = content_type {
                headers.insert("Content-Type", ct);
            }
            let size = payload.len();
            (
                format!("telemetry.metrics.bad-{:?}", kind).to_ascii_lowercase(),
                Bytes::from(payload),
                Meta::Bad(kind, size),
            )
        } else {
            let (device, rows) = valid_message(&mut rng, i, plan.devices, now, &mut buf);
            headers.insert("Content-Type", "application/json");
            (
                format!("telemetry.metrics.{device}"),
                Bytes::copy_from_slice(&buf),
                Meta::Valid(rows),
            )
        };
        in_flight.push(publish_one(js.clone(), subject, headers, payload, meta));
    }
    while let Some(acked) = in_flight.next().await {
        out.record(acked);
    }
    out.elapsed = started.elapsed();
    eprintln!(
        "published {} messages ({} valid, {} malformed) in {:.1}s; {} retried publishes, {} duplicate acks",
        out.total(),
        out.valid,
        out.malformed.len(),
        out.elapsed.as_secs_f64(),
        out.retries,
        out.duplicates
    );
    out
}
