//! A fleet of simulated IoT devices publishing the IoT pipeline design's OTLP JSON payload
//! through JetStream.
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
//! message costs (BENCHMARKS.md, run I). Every [`CONFIRM_EVERY`]th message, the first, the
//! last and any after which the fleet falls idle are still JetStream publishes whose ack
//! confirms, by the connection's ordering, the plain ones before it; a plain message is never
//! retried, so never duplicated, and one lost with a connection is counted as an error when
//! its confirmation fails.
//!
//! This module holds the run loop ([`run`]) and what it reports; the rest is one job a file:
//! [`fleet`] and [`payload`] make the devices' messages, `options` checks what to simulate,
//! `schedule` says which device publishes next and when, and `runner` publishes, awaits the
//! acks, retries and counts.

pub mod fleet;
mod options;
pub mod payload;
mod runner;
mod schedule;

use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use futures::future::FutureExt;
use futures::stream::StreamExt;
use tokio::time::Instant;

pub use fleet::{Fleet, Message};
pub use options::SimulateOptions;
use runner::Runner;
use schedule::{Pacer, Schedule};

/// Fire-and-forget runs: at most this many plain publishes between two confirming ones.
pub const CONFIRM_EVERY: u64 = 1000;
/// How often `progress` is called.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
    /// The retry budget is longer than the stream's duplicate window: a late retry of a
    /// message already stored would store it twice. Refused rather than warned about, since
    /// a device must keep each reading once.
    #[error(
        "the retry budget ({budget:?}) is longer than the duplicate window of stream {stream} \
         ({window:?}): a retry after the window would store a reading twice; raise \
         duplicate_window to at least {budget:?} and run `jetscale setup`, or pass a shorter \
         --retry-budget"
    )]
    DuplicateWindow {
        /// The stream the subject belongs to.
        stream: String,
        /// Its duplicate window.
        window: Duration,
        /// The run's retry budget.
        budget: Duration,
    },
    /// Nothing was acknowledged and messages keep failing: the server, the stream or the
    /// user's permissions are wrong, so continuing would only count errors.
    #[error(
        "nothing was acknowledged and {failed} messages failed, each retried for the whole \
         retry budget (last one to {subject}): check that nats-server runs with JetStream enabled, that \
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
    check_duplicate_window(&js, opts).await?;
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

/// Refuses a retry budget longer than the duplicate window of the stream the fleet publishes
/// to. A stream that cannot be looked up (none yet, no permission to read its info) is left
/// to the first publish, which says what is wrong.
async fn check_duplicate_window(
    js: &async_nats::jetstream::Context,
    opts: &SimulateOptions,
) -> Result<(), SimulateError> {
    let subject = format!("{}.{}000001", opts.subject_prefix, opts.device_prefix);
    let stream = match js.stream_by_subject(subject).await {
        Ok(name) => name,
        Err(err) => {
            tracing::debug!(error = %err, "no stream found before the run; not checking its duplicate window");
            return Ok(());
        }
    };
    let window = match js.get_stream(&stream).await {
        Ok(mut s) => match s.info().await {
            Ok(info) => info.config.duplicate_window,
            Err(_) => return Ok(()),
        },
        Err(_) => return Ok(()),
    };
    if window >= opts.retry_budget {
        return Ok(());
    }
    Err(SimulateError::DuplicateWindow {
        stream,
        window,
        budget: opts.retry_budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{NatsServer, NatsServerOptions};
    use std::collections::HashMap;

    /// A private nats-server, the one `jetscale dev` runs, and its directory: both go when
    /// dropped.
    struct TestServer {
        _server: NatsServer,
        _dir: tempfile::TempDir,
    }

    async fn start_server() -> (TestServer, async_nats::jetstream::Context) {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start(NatsServerOptions {
            dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .expect("nats-server");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let server = TestServer {
            _server: server,
            _dir: dir,
        };
        (server, async_nats::jetstream::new(client))
    }

    #[tokio::test]
    async fn publishes_to_a_real_server() {
        let (server, js) = start_server().await;
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
        let (_server, js) = start_server().await;
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
        let (_server, js) = start_server().await;
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
        let (_server, js) = start_server().await;
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
    async fn a_retry_budget_longer_than_the_duplicate_window_is_refused() {
        let (_server, js) = start_server().await;
        // The NATS-native service design's 5 s window.
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "TELEMETRY".into(),
            subjects: vec!["telemetry.>".into()],
            duplicate_window: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .expect("create stream");
        let opts = SimulateOptions {
            devices: 3,
            count: Some(1),
            interval: Duration::ZERO,
            ..SimulateOptions::default()
        };
        let err = run(js.clone(), &opts, |_| {}).await.expect_err("refused");
        assert!(
            matches!(err, SimulateError::DuplicateWindow { ref stream, .. } if stream == "TELEMETRY"),
            "{err}"
        );
        assert!(err.to_string().contains("--retry-budget"), "{err}");
        // A budget within the window runs.
        let opts = SimulateOptions {
            retry_budget: Duration::from_secs(5),
            ..opts
        };
        let report = run(js, &opts, |_| {}).await.expect("run");
        assert_eq!((report.acked, report.errors), (3, 0));
    }

    #[tokio::test]
    async fn fire_and_forget_without_a_stream_says_so() {
        let (_server, js) = start_server().await;
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
