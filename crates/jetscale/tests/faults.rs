//! Fault suite: nothing lost, nothing twice.
//!
//! Every scenario drives real processes (the `jetscale` binary, private nats-server and
//! PostgreSQL processes), publishes through JetStream while the fault happens, and then counts:
//!
//! - every valid message whose publish JetStream acknowledged is in `iot_metrics` exactly once,
//!   value for value (device, location, metric, time to the microsecond, value bit for bit,
//!   unit), and `count(*)` is three rows per valid message;
//! - every malformed message (about 1 in 100: truncated JSON, wrong types, a 2 MiB payload,
//!   invalid UTF-8, a protobuf-looking blob, JSON of an unknown shape) is in
//!   `jetscale_dead_letters` exactly once, under its own stream sequence, with a reason and its
//!   original size;
//! - the delivery ledger covers every stream sequence exactly once, the consumer has nothing
//!   pending or unacknowledged, and a final `jetscale collect --exit-when-idle 2s` exits 0.
//!
//! Scenarios: (1) the collector SIGKILLed at random moments (during startup and schema
//! migration, and just after a commit) and restarted each time; (2) PostgreSQL stopped in
//! immediate mode and started again mid-ingest; (3) nats-server (file store) restarted with
//! SIGTERM, then with SIGKILL, then stopped while the collector commits and the collector
//! killed before NATS returns (committed but unacknowledged: the ledger must skip the
//! redeliveries); (4) malformed messages among valid ones, each reason checked; (5) two and
//! three collectors sharing the consumer, one SIGKILLed; (6) a three-node NATS cluster with an
//! R3 stream whose leader is SIGKILLed and brought back. Faults are triggered by progress
//! (rows in the database), not by the clock alone, so they land mid-ingest on a slow machine.
//!
//! Faults are injected on private servers only (loopback ports, temporary directories).
//!
//! `JETSCALE_SOAK=1` makes every scenario longer (scenario 1: 100,000 messages, 30 kills);
//! `JETSCALE_FAULTS_SEED=n` changes the seed of every random choice (the default is fixed, so
//! a failure can be replayed); `JETSCALE_FAULTS_KEEP=1` keeps the collectors' logs.

mod common;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use jetscale::config::{Overrides, Settings};
use jetscale::simulate::payload::{write_payload, METRICS};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One stored or expected metric row: device, location, metric, time (µs), value bits, unit.
type Row = (String, String, String, i64, u64, Option<String>);

/// Publishes awaiting their ack at once.
const MAX_IN_FLIGHT: usize = 512;
/// How long one message may take to be acknowledged, retries included, before the test fails.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(120);
/// How long a collector may take to drain what is left.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

fn soak() -> bool {
    std::env::var("JETSCALE_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The seed of every random choice of a scenario (`JETSCALE_FAULTS_SEED` shifts them all).
fn seed(scenario: u64) -> u64 {
    let base = std::env::var("JETSCALE_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x6a65_7473_6361_6c65);
    base.wrapping_mul(31).wrapping_add(scenario)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

// ---------------------------------------------------------------------------------------------
// Publishing

/// The kinds of malformed message the suite publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bad {
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
const ALL_BAD: &[Bad] = &[
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
const SMALL_BAD: &[Bad] = &[
    Bad::Truncated,
    Bad::ValueIsAWord,
    Bad::TimeIsAnArray,
    Bad::InvalidUtf8,
    Bad::ProtobufBlob,
    Bad::UnknownShape,
    Bad::JsonArray,
];

/// The server option that lets the 2 MiB message through.
const BIG_PAYLOADS: &str = "max_payload: 4194304";

/// What to publish.
#[derive(Debug, Clone)]
struct Plan {
    messages: u64,
    devices: u64,
    /// Messages per second: publishing is spread over the fault.
    rate: f64,
    /// Kinds of malformed message, used in turn; about 1 in 100 messages is one. Empty: none.
    bad: &'static [Bad],
    seed: u64,
}

/// What JetStream acknowledged.
#[derive(Debug, Default)]
struct Published {
    /// Every row the valid messages must produce.
    rows: Vec<Row>,
    valid: u64,
    /// Stream sequence -> kind and payload size, of every malformed message.
    malformed: BTreeMap<u64, (Bad, usize)>,
    /// Every acknowledged stream sequence.
    seqs: BTreeSet<u64>,
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

    fn total(&self) -> u64 {
        self.valid + self.malformed.len() as u64
    }
}

/// Connects to one or more comma-separated URLs, reconnecting forever.
async fn connect_nats(url: &str) -> async_nats::Client {
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse().expect("server address"))
        .collect();
    async_nats::ConnectOptions::new()
        .name("faults-publisher")
        .max_reconnects(None)
        .connect(addrs)
        .await
        .expect("connect to nats")
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

/// A valid device message in the seed's shape and the rows it must produce.
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
    let seed_payload = |rng: &mut fastrand::Rng, buf: &mut Vec<u8>, device: &str| {
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
            let full = seed_payload(rng, buf, "dev-trunc");
            let cut = rng.usize(1..full.len() - 1);
            (full[..cut].to_vec(), JSON)
        }
        Bad::ValueIsAWord => {
            let full = String::from_utf8(seed_payload(rng, buf, "dev-word")).expect("utf-8");
            let changed = full.replacen("\"asDouble\":", "\"asDouble\":\"hot\",\"was\":", 1);
            assert_ne!(changed, full);
            (changed.into_bytes(), JSON)
        }
        Bad::TimeIsAnArray => {
            let full = String::from_utf8(seed_payload(rng, buf, "dev-time")).expect("utf-8");
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
            let mut full = seed_payload(rng, buf, "dev-BADBYTES");
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

/// Publishes the plan at its rate and returns what was acknowledged.
async fn publish(url: String, plan: Plan) -> Published {
    let client = connect_nats(&url).await;
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

// ---------------------------------------------------------------------------------------------
// Collectors

/// The collector's config: short ack wait, so deliveries held by a killed collector come back
/// within seconds; small batches, so a run commits several transactions between kills.
fn collector_yaml(replicas: usize, ack_policy: &str) -> String {
    format!(
        "receivers:
  nats:
    jetstream:
      ack_policy: {ack_policy}
      ack_wait: 4s
      fetch_batch: 500
      stream_settings:
        replicas: {replicas}
processors:
  batch:
    send_batch_size: 2000
    timeout: 500ms
exporters:
  postgresql:
    writers: 2
"
    )
}

/// The servers of one scenario, the collector config and the logs of every collector run.
struct Rig {
    name: &'static str,
    dir: Option<tempfile::TempDir>,
    nats_url: String,
    db_url: String,
    config: PathBuf,
    settings: Settings,
    logs: Vec<PathBuf>,
}

impl Rig {
    /// Writes the config and provisions the stream and the durable consumer.
    async fn new(name: &'static str, nats_url: String, db_url: String, replicas: usize) -> Rig {
        Rig::acking(name, nats_url, db_url, replicas, "explicit").await
    }

    /// A rig whose collectors ack by the given `ack_policy`.
    async fn acking(
        name: &'static str,
        nats_url: String,
        db_url: String,
        replicas: usize,
        ack_policy: &str,
    ) -> Rig {
        let dir = common::temp_dir();
        let config = dir.path().join("collector.yaml");
        std::fs::write(&config, collector_yaml(replicas, ack_policy)).expect("write config");
        let settings = jetscale::config::load(
            &config,
            &Overrides {
                nats_url: Some(nats_url.clone()),
                database_url: Some(db_url.clone()),
                replicas: None,
            },
        )
        .expect("collector config");
        let client = jetscale::receivers::nats::connect(&settings.nats, "faults-setup")
            .await
            .expect("connect to nats");
        let js = jetstream::new(client);
        let (_, stream) = jetscale::receivers::nats::ensure_stream(&js, &settings.stream)
            .await
            .expect("stream");
        jetscale::receivers::nats::ensure_consumer(&stream, &settings.consumer)
            .await
            .expect("consumer");
        Rig {
            name,
            dir: Some(dir),
            nats_url,
            db_url,
            config,
            settings,
            logs: Vec::new(),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("rig dir").path()
    }

    /// Starts `jetscale collect` (the real binary), logging to its own file.
    fn collector(&mut self, label: &str, exit_when_idle: Option<&str>) -> Collector {
        let log = self.dir().join(format!("{label}.log"));
        let out = std::fs::File::create(&log).expect("collector log");
        let err = out.try_clone().expect("collector log");
        let mut cmd = tokio::process::Command::new(common::binary());
        cmd.arg("collect")
            .arg("--config")
            .arg(&self.config)
            .arg("--nats-url")
            .arg(&self.nats_url)
            .arg("--database-url")
            .arg(&self.db_url);
        if let Some(idle) = exit_when_idle {
            cmd.arg("--exit-when-idle").arg(idle);
        }
        cmd.env("RUST_LOG", "info,async_nats=warn,tokio_postgres=warn")
            .env_remove("JETSCALE_CONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("start the jetscale binary");
        self.logs.push(log.clone());
        Collector {
            label: label.to_owned(),
            child,
            log,
        }
    }

    async fn js(&self) -> jetstream::Context {
        let client = jetscale::receivers::nats::connect(&self.settings.nats, "faults-check")
            .await
            .expect("connect to nats");
        jetstream::new(client)
    }

    /// The consumer's (pending, unacknowledged) counts.
    async fn consumer_backlog(&self, js: &jetstream::Context) -> Option<(u64, usize)> {
        let stream = js.get_stream(&self.settings.stream.name).await.ok()?;
        let info = stream
            .consumer_info(&self.settings.consumer.name)
            .await
            .ok()?;
        Some((info.num_pending, info.num_ack_pending))
    }

    /// Waits until the consumer has nothing pending and nothing unacknowledged.
    async fn wait_drained(&self, collectors: &mut [Collector]) {
        let js = self.js().await;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut last = None;
        loop {
            for c in collectors.iter_mut() {
                c.assert_running("while draining the backlog");
            }
            last = self.consumer_backlog(&js).await.or(last);
            if last == Some((0, 0)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] the consumer did not drain within {DRAIN_TIMEOUT:?}: (pending, unacked) = {last:?}\n{}",
                self.name,
                self.log_tails(40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The final run: `jetscale collect --exit-when-idle 2s` must finish what is left and
    /// exit 0.
    async fn final_run(&mut self) {
        let mut last = self.collector("final", Some("2s"));
        let status = last.wait(DRAIN_TIMEOUT).await;
        assert!(
            status.success(),
            "[{}] the final collector run failed ({status}):\n{}",
            self.name,
            last.tail(60)
        );
        let log = std::fs::read_to_string(&last.log).unwrap_or_default();
        let summary = log
            .lines()
            .find(|l| l.starts_with("collected "))
            .unwrap_or("(no summary)");
        eprintln!("[{}] final run: {summary}", self.name);
    }

    /// The end of every collector log, for failure messages.
    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let _ = writeln!(out, "--- {} ---\n{}", log.display(), tail(log, lines));
        }
        out
    }

    /// Counts what the database holds now (for progress lines).
    async fn stored_count(&self) -> i64 {
        match tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
                    .query_one("SELECT count(*) FROM iot_metrics", &[])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(-1)
            }
            Err(_) => -1,
        }
    }

    /// Waits until the database holds at least `rows` metric rows, so a fault lands in the
    /// middle of the ingest rather than before the collector got going.
    async fn wait_rows(&self, rows: i64, collectors: &mut [Collector]) -> i64 {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            for c in collectors.iter_mut() {
                c.assert_running("while waiting for rows");
            }
            let stored = self.stored_count().await;
            if stored >= rows {
                return stored;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] only {stored} of {rows} rows after {DRAIN_TIMEOUT:?}\n{}",
                self.name,
                self.log_tails(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The assertions every scenario ends with.
    async fn verify(&self, published: &Published) {
        let name = self.name;
        let fail = |what: String| -> ! {
            panic!("[{name}] {what}\n{}", self.log_tails(25));
        };

        // No collector run panicked (a killed one simply stops mid-line).
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("panicked at") {
                fail(format!("{} shows a panic", log.display()));
            }
        }

        // Every acknowledged message is in the stream, and the consumer is done with all.
        let js = self.js().await;
        let mut stream = js
            .get_stream(&self.settings.stream.name)
            .await
            .expect("stream");
        let state = stream.info().await.expect("stream info").state.clone();
        let last_seq = state.last_sequence;
        if state.messages != published.total()
            || published.seqs.iter().next_back() != Some(&last_seq)
        {
            fail(format!(
                "the stream holds {} messages up to sequence {last_seq}, but {} were acknowledged (highest {:?})",
                state.messages,
                published.total(),
                published.seqs.iter().next_back()
            ));
        }
        let backlog = self.consumer_backlog(&js).await;
        if backlog != Some((0, 0)) {
            fail(format!(
                "the consumer still has (pending, unacked) = {backlog:?}"
            ));
        }

        let db = common::db(&self.db_url).await;

        // Metrics: the multiset of rows is exactly what was sent.
        let rows = db
            .query(
                "SELECT device_id, location, metric_name, (extract(epoch FROM time) * 1000000)::int8, value, unit
                 FROM iot_metrics",
                &[],
            )
            .await
            .expect("select rows");
        let mut stored: Vec<Row> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get::<_, f64>(4).to_bits(),
                    r.get(5),
                )
            })
            .collect();
        let mut expected = published.rows.clone();
        stored.sort_unstable();
        expected.sort_unstable();
        if stored != expected {
            let (missing, extra) = multiset_diff(&expected, &stored);
            fail(format!(
                "iot_metrics differs from what was published: {} rows stored, {} expected; {} missing (first: {:?}), {} extra or duplicated (first: {:?})",
                stored.len(),
                expected.len(),
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                extra.len(),
                extra.iter().take(5).collect::<Vec<_>>()
            ));
        }
        let count: i64 = db
            .query_one("SELECT count(*) FROM iot_metrics", &[])
            .await
            .expect("count")
            .get(0);
        if count as u64 != 3 * published.valid {
            fail(format!(
                "count(*) is {count}, expected 3 x {} valid messages",
                published.valid
            ));
        }

        // Dead letters: each malformed message once, under its own sequence, with a reason.
        let dead = db
            .query(
                "SELECT stream_seq, reason, payload_size FROM jetscale_dead_letters ORDER BY stream_seq",
                &[],
            )
            .await
            .expect("select dead letters");
        let dead_seqs: Vec<u64> = dead.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        let malformed_seqs: Vec<u64> = published.malformed.keys().copied().collect();
        if dead_seqs != malformed_seqs {
            let dead_set: BTreeSet<u64> = dead_seqs.iter().copied().collect();
            let missing: Vec<_> = published
                .malformed
                .iter()
                .filter(|(s, _)| !dead_set.contains(s))
                .take(10)
                .collect();
            fail(format!(
                "dead letters hold sequences {} (first {:?}), the malformed messages were {} (first {:?}); malformed and missing: {missing:?}",
                dead_seqs.len(),
                dead_seqs.iter().take(10).collect::<Vec<_>>(),
                malformed_seqs.len(),
                malformed_seqs.iter().take(10).collect::<Vec<_>>()
            ));
        }
        for row in &dead {
            let seq = row.get::<_, i64>(0) as u64;
            let reason: String = row.get(1);
            let size: i32 = row.get(2);
            let (kind, sent_size) = published.malformed[&seq];
            if reason.trim().is_empty() {
                fail(format!(
                    "the dead letter of sequence {seq} ({kind:?}) has no reason"
                ));
            }
            if size as usize != sent_size {
                fail(format!(
                    "the dead letter of sequence {seq} ({kind:?}) says {size} bytes, {sent_size} were sent"
                ));
            }
        }

        // The ledger: every stream sequence committed once, no gap, no overlap.
        let ranges = db
            .query(
                "SELECT lower(seqs), upper(seqs) FROM jetscale_ledger ORDER BY 1",
                &[],
            )
            .await
            .expect("select ledger");
        let mut next = 1i64;
        for r in &ranges {
            let (lower, upper): (i64, i64) = (r.get(0), r.get(1));
            if lower != next {
                fail(format!(
                    "the ledger jumps from {next} to range [{lower}, {upper}): sequences {} are {}",
                    if lower > next {
                        format!("{next}..{lower}")
                    } else {
                        format!("{lower}..{next}")
                    },
                    if lower > next {
                        "not committed"
                    } else {
                        "committed twice"
                    }
                ));
            }
            next = upper;
        }
        if next != last_seq as i64 + 1 {
            fail(format!(
                "the ledger ends at {next}, the stream at {}",
                last_seq + 1
            ));
        }
        eprintln!(
            "[{name}] verified: {} rows from {} valid messages exactly once, {} dead letters, ledger {} range(s) over 1..={last_seq}",
            stored.len(),
            published.valid,
            dead.len(),
            ranges.len()
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let keep = std::env::var("JETSCALE_FAULTS_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
        if keep || std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("[{}] logs kept in {}", self.name, path.display());
            }
        }
    }
}

/// Elements of `expected` not in `stored`, and of `stored` not in `expected` (both sorted),
/// counting multiplicity.
fn multiset_diff(expected: &[Row], stored: &[Row]) -> (Vec<Row>, Vec<Row>) {
    let (mut i, mut j) = (0, 0);
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    while i < expected.len() || j < stored.len() {
        match (expected.get(i), stored.get(j)) {
            (Some(e), Some(s)) if e == s => {
                i += 1;
                j += 1;
            }
            (Some(e), Some(s)) if e < s => {
                missing.push(e.clone());
                i += 1;
            }
            (Some(_), Some(s)) => {
                extra.push(s.clone());
                j += 1;
            }
            (Some(e), None) => {
                missing.push(e.clone());
                i += 1;
            }
            (None, Some(s)) => {
                extra.push(s.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (missing, extra)
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One `jetscale collect` process.
struct Collector {
    label: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Collector {
    fn tail(&self, lines: usize) -> String {
        format!(
            "--- {} ({}) ---\n{}",
            self.label,
            self.log.display(),
            tail(&self.log, lines)
        )
    }

    /// Fails the test if the process has exited (it should be running).
    fn assert_running(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "collector {} exited on its own {when} ({status}):\n{}",
                self.label,
                self.tail(60)
            );
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT) to the running process.
    fn signal(&mut self, signal: libc::c_int) {
        self.assert_running("before it was signalled");
        let pid = self.child.id().expect("pid") as libc::pid_t;
        // SAFETY: plain syscall on our own unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// SIGKILL: a crash at whatever it was doing.
    async fn sigkill(&mut self) {
        self.assert_running("before it was killed");
        self.child.kill().await.expect("SIGKILL the collector");
    }

    /// SIGTERM, and it must exit 0 within 30 s.
    async fn sigterm(&mut self) {
        self.assert_running("before SIGTERM");
        let pid = self.child.id().expect("pid") as libc::pid_t;
        // SAFETY: plain syscall on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = self.wait(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "collector {} did not shut down cleanly on SIGTERM ({status}):\n{}",
            self.label,
            self.tail(60)
        );
        eprintln!("  {}: {}", self.label, self.summary());
    }

    /// The line `jetscale collect` prints when it ends.
    fn summary(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .find(|l| l.starts_with("collected "))
            .unwrap_or("(no summary)")
            .to_owned()
    }

    /// Waits for the process to exit; fails the test after `timeout`.
    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the collector"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "collector {} did not exit within {timeout:?}:\n{}",
                    self.label,
                    self.tail(60)
                );
            }
        }
    }
}

/// Immediate stop of a private PostgreSQL cluster (it blocks: off the async worker).
fn kill_postgres(pg: &mut jetscale::dev::PostgresCluster) {
    tokio::task::block_in_place(|| pg.kill());
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// (1) The collector SIGKILLed at random moments, restarted each time, while messages are
/// published; then a final run finishes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_at_random_moments() {
    let (messages, kills) = if soak() { (100_000, 30) } else { (20_000, 10) };
    killed_at_random_moments("kill", "explicit", messages, kills).await;
}

/// (1b) The same with cumulative acks (`ack_policy: all`): every restart finds the killed
/// run's deliveries pending and must not ack past them before they are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_at_random_moments_acking_cumulatively() {
    let (messages, kills) = if soak() { (60_000, 20) } else { (12_000, 6) };
    killed_at_random_moments("kill_all", "all", messages, kills).await;
}

async fn killed_at_random_moments(name: &'static str, ack_policy: &str, messages: u64, kills: u64) {
    let nats = common::nats_with(BIG_PAYLOADS).await;
    let db = common::fresh_database(&format!("faults_{name}")).await;
    let mut rig = Rig::acking(name, nats.server.url(), db, 1, ack_policy).await;
    // Publishing lasts about as long as the kills do.
    let rate = messages as f64 / (kills as f64 * 0.8);
    let publisher = tokio::spawn(publish(
        rig.nats_url.clone(),
        Plan {
            messages,
            devices: 50,
            rate,
            bad: ALL_BAD,
            seed: seed(1),
        },
    ));
    let mut rng = fastrand::Rng::with_seed(seed(101));
    let started = Instant::now();
    for k in 0..kills {
        let at_spawn = rig.stored_count().await.max(0);
        let mut collector = rig.collector(&format!("run{k:02}"), None);
        // Even kills land anywhere, startup and schema migration included; odd ones once
        // this run has committed something, in the middle of its writes.
        let how = if k % 2 == 0 {
            let after = Duration::from_millis(rng.u64(100..=900));
            tokio::time::sleep(after).await;
            format!("{after:?} after start")
        } else {
            let since = Instant::now();
            let cap = Duration::from_secs(10);
            while rig.stored_count().await <= at_spawn && since.elapsed() < cap {
                collector.assert_running("before it was killed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let extra = Duration::from_millis(rng.u64(0..=400));
            tokio::time::sleep(extra).await;
            if since.elapsed() >= cap {
                format!("after {cap:?} without a commit (nothing left to do?)")
            } else {
                format!("{extra:?} after its first commit")
            }
        };
        collector.sigkill().await;
        eprintln!(
            "[{name}] kill {}/{kills}, {how}: {} rows stored so far",
            k + 1,
            rig.stored_count().await
        );
    }
    eprintln!(
        "[{name}] {kills} kills in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let published = publisher.await.expect("publisher");
    rig.final_run().await;
    rig.verify(&published).await;
}

/// (2) PostgreSQL stopped in immediate mode (no checkpoint: crash recovery on restart) while
/// the collector writes, and started again; the same collector process carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_immediately_and_restarted() {
    let (messages, outages) = if soak() { (60_000, 5) } else { (12_000, 2) };
    let nats = common::nats_with(BIG_PAYLOADS).await;
    let pg_dir = common::temp_dir();
    let mut pg = jetscale::dev::PostgresCluster::start(jetscale::dev::PostgresOptions {
        dir: pg_dir.path().join("pg"),
        port: None,
    })
    .await
    .expect("a private PostgreSQL cluster");
    let db = pg.create_database("faults_pg").await.expect("database");
    let mut rig = Rig::new("postgres", nats.server.url(), db, 1).await;
    let mut collector = rig.collector("collector", None);
    let publisher = tokio::spawn(publish(
        rig.nats_url.clone(),
        Plan {
            messages,
            devices: 40,
            rate: 2_000.0,
            bad: ALL_BAD,
            seed: seed(2),
        },
    ));
    let mut rng = fastrand::Rng::with_seed(seed(102));
    let total_rows = 3 * messages as i64;
    for n in 0..outages {
        let at = total_rows * (15 + 60 * n as i64 / outages as i64) / 100;
        let before = rig
            .wait_rows(at, std::slice::from_mut(&mut collector))
            .await;
        kill_postgres(&mut pg);
        let down = Duration::from_millis(rng.u64(1000..=3000));
        tokio::time::sleep(down).await;
        collector.assert_running("while PostgreSQL was down");
        pg.start_again().await.expect("PostgreSQL starts again");
        eprintln!(
            "[postgres] outage {}/{outages}: stopped (immediate) at {before} rows, down {down:?}",
            n + 1
        );
    }
    let published = publisher.await.expect("publisher");
    rig.wait_drained(std::slice::from_mut(&mut collector)).await;
    collector.sigterm().await;
    rig.final_run().await;
    rig.verify(&published).await;
    drop(pg);
}

/// (3) nats-server (file store) restarted while the collector consumes and the publisher
/// publishes: once cleanly (SIGTERM), once killed (SIGKILL), both survived by the same
/// collector process; then stopped while the collector commits what it had fetched, the
/// collector killed before NATS comes back (its acks are lost: committed but unacknowledged),
/// and a new collector must skip those redeliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted() {
    let messages = if soak() { 60_000 } else { 15_000 };
    restarted_nats_server("nats", "explicit", messages).await;
}

/// (3b) The same with cumulative acks (`ack_policy: all`): deliveries lost on a reconnect
/// leave gaps in the consumer sequence, and acks must wait until those are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_acking_cumulatively() {
    let messages = if soak() { 60_000 } else { 12_000 };
    restarted_nats_server("nats_all", "all", messages).await;
}

async fn restarted_nats_server(name: &'static str, ack_policy: &str, messages: u64) {
    let mut nats = common::nats_with(BIG_PAYLOADS).await;
    let db = common::fresh_database(&format!("faults_{name}")).await;
    let mut rig = Rig::acking(name, nats.server.url(), db, 1, ack_policy).await;
    let mut collector = rig.collector("collector", None);
    let publisher = tokio::spawn(publish(
        rig.nats_url.clone(),
        Plan {
            messages,
            devices: 40,
            rate: 2_500.0,
            bad: ALL_BAD,
            seed: seed(3),
        },
    ));
    let total_rows = 3 * messages as i64;

    let before = rig
        .wait_rows(total_rows * 15 / 100, std::slice::from_mut(&mut collector))
        .await;
    nats.server.restart().await.expect("nats-server restarts");
    eprintln!("[{name}] restarted (SIGTERM) at {before} rows");

    let before = rig
        .wait_rows(total_rows * 35 / 100, std::slice::from_mut(&mut collector))
        .await;
    nats.server.kill();
    nats.server
        .start_again()
        .await
        .expect("nats-server starts again");
    eprintln!("[{name}] killed (SIGKILL) and started at {before} rows");

    let before = rig
        .wait_rows(total_rows * 55 / 100, std::slice::from_mut(&mut collector))
        .await;
    nats.server.stop().await;
    // The collector writes the batch it holds; its acks have nowhere to go.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = rig.stored_count().await;
    collector.sigkill().await;
    nats.server
        .start_again()
        .await
        .expect("nats-server starts again");
    eprintln!(
        "[{name}] stopped at {before} rows, collector killed at {during} rows while NATS was down, NATS started"
    );
    let mut second = rig.collector("collector-after", None);
    let published = publisher.await.expect("publisher");
    rig.wait_drained(std::slice::from_mut(&mut second)).await;
    second.sigterm().await;
    rig.final_run().await;
    rig.verify(&published).await;
}

/// (4) About 1 in 100 messages malformed in every way the suite knows, among valid ones: each
/// is dead-lettered once with a reason that says what was wrong, nothing valid is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered() {
    let messages = if soak() { 100_000 } else { 12_000 };
    let nats = common::nats_with(BIG_PAYLOADS).await;
    let db = common::fresh_database("faults_bad").await;
    let mut rig = Rig::new("malformed", nats.server.url(), db, 1).await;
    let mut collector = rig.collector("collector", None);
    let published = publish(
        rig.nats_url.clone(),
        Plan {
            messages,
            devices: 50,
            rate: 20_000.0,
            bad: ALL_BAD,
            seed: seed(4),
        },
    )
    .await;
    assert!(
        published.malformed.len() as u64 >= messages / 200,
        "too few malformed messages"
    );
    rig.wait_drained(std::slice::from_mut(&mut collector)).await;
    collector.sigterm().await;
    rig.final_run().await;
    rig.verify(&published).await;

    // Each kind is there, and its reason names the problem.
    let db = common::db(&rig.db_url).await;
    let mut reasons: BTreeMap<Bad, BTreeSet<String>> = BTreeMap::new();
    for row in db
        .query("SELECT stream_seq, reason FROM jetscale_dead_letters", &[])
        .await
        .expect("dead letters")
    {
        let seq = row.get::<_, i64>(0) as u64;
        let reason: String = row.get(1);
        let short: String = reason.chars().take(100).collect();
        reasons
            .entry(published.malformed[&seq].0)
            .or_default()
            .insert(short);
    }
    for kind in ALL_BAD {
        let Some(seen) = reasons.get(kind) else {
            panic!("no {kind:?} message was published: raise the message count");
        };
        eprintln!(
            "[malformed] {kind:?}: {:?}",
            seen.iter().take(2).collect::<Vec<_>>()
        );
        // The reason starts with its class; the detail names the problem.
        let wanted: &[&str] = match kind {
            Bad::Huge => &["limit exceeded: max_message_bytes"],
            Bad::UnknownShape => &["unknown format"],
            // Cut before the `resourceMetrics` key is complete, it is no known format at all.
            Bad::Truncated => &["malformed", "unknown format"],
            // Without a content type, bytes that are not JSON may be tried as OTLP protobuf.
            Bad::ProtobufBlob => &["unknown format", "malformed"],
            _ => &["malformed"],
        };
        assert!(
            seen.iter().all(|r| wanted.iter().any(|w| r.starts_with(w))),
            "{kind:?} dead letters should start with one of {wanted:?}: {seen:?}"
        );
    }
}

/// (5) Several collectors on one durable consumer, started together (their schema migrations
/// race), one SIGKILLed mid-ingest: the others take over its unacknowledged deliveries. With
/// three, another one is then frozen (SIGSTOP) for longer than the ack wait and resumed.
async fn shared_consumer(collectors: usize, scenario: u64) {
    let messages = if soak() { 60_000 } else { 12_000 };
    let name = if collectors == 2 {
        "shared2"
    } else {
        "shared3"
    };
    let nats = common::nats_with(BIG_PAYLOADS).await;
    let db = common::fresh_database(&format!("faults_{name}")).await;
    let mut rig = Rig::new(name, nats.server.url(), db, 1).await;
    let mut running: Vec<Collector> = (0..collectors)
        .map(|i| rig.collector(&format!("collector{i}"), None))
        .collect();
    let publisher = tokio::spawn(publish(
        rig.nats_url.clone(),
        Plan {
            messages,
            devices: 40,
            rate: 3_000.0,
            bad: ALL_BAD,
            seed: seed(scenario),
        },
    ));
    let mut rng = fastrand::Rng::with_seed(seed(100 + scenario));
    rig.wait_rows(3 * messages as i64 / 4, &mut running).await;
    tokio::time::sleep(Duration::from_millis(rng.u64(0..=400))).await;
    let victim = rng.usize(..collectors);
    let before = rig.stored_count().await;
    running[victim].sigkill().await;
    let victim = running.remove(victim);
    eprintln!("[{name}] killed {} at {before} rows", victim.label);
    if collectors >= 3 {
        // A collector frozen past the ack wait (a long GC-like stall, a stopped VM): its
        // deliveries go to the others meanwhile, and when it wakes up it still holds them,
        // possibly in the middle of a transaction. Whatever it commits late must not double.
        let frozen = rng.usize(..running.len());
        let pause = rig.settings.consumer.ack_wait + Duration::from_secs(2);
        let at = rig.stored_count().await;
        running[frozen].signal(libc::SIGSTOP);
        tokio::time::sleep(pause).await;
        running[frozen].signal(libc::SIGCONT);
        eprintln!(
            "[{name}] froze {} for {pause:?} (SIGSTOP at {at} rows, SIGCONT at {} rows)",
            running[frozen].label,
            rig.stored_count().await
        );
    }
    let published = publisher.await.expect("publisher");
    rig.wait_drained(&mut running).await;
    for c in &mut running {
        c.sigterm().await;
    }
    rig.final_run().await;
    rig.verify(&published).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_one_killed() {
    shared_consumer(2, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_one_killed_one_frozen() {
    shared_consumer(3, 6).await;
}

/// (6) A three-node cluster, stream with 3 replicas: the stream leader is SIGKILLed while
/// messages are published and collected, and brought back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_and_restarted() {
    let messages = if soak() { 40_000 } else { 8_000 };
    let dir = common::temp_dir();
    let mut nodes = jetscale::dev::start_cluster(dir.path(), 3)
        .await
        .expect("a three-node nats cluster");
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let db = common::fresh_database("faults_cluster").await;
    let mut rig = Rig::new("cluster", urls.join(","), db, 3).await;
    let mut collector = rig.collector("collector", None);
    let publisher = tokio::spawn(publish(
        rig.nats_url.clone(),
        Plan {
            messages,
            devices: 40,
            rate: 1_500.0,
            bad: SMALL_BAD,
            seed: seed(7),
        },
    ));
    rig.wait_rows(
        3 * messages as i64 / 20,
        std::slice::from_mut(&mut collector),
    )
    .await;
    let js = rig.js().await;
    let mut stream = js
        .get_stream(&rig.settings.stream.name)
        .await
        .expect("stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(
        info.config.num_replicas, 3,
        "the stream must have 3 replicas"
    );
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let index: usize = leader
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("node name n1..n3")
        - 1;
    let before = rig.stored_count().await;
    nodes[index].kill();
    eprintln!("[cluster] killed the stream leader {leader} at {before} rows");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    collector.assert_running("while a node was down");
    nodes[index].start_again().await.expect("node starts again");
    nodes[index]
        .wait_for_meta_leader(Duration::from_secs(30))
        .await
        .expect("the node rejoins");
    eprintln!("[cluster] {leader} is back");
    let published = publisher.await.expect("publisher");
    rig.wait_drained(std::slice::from_mut(&mut collector)).await;
    collector.sigterm().await;
    rig.final_run().await;
    rig.verify(&published).await;
    drop(nodes);
}
