//! `jetscale tail` against a private nats-server: the real binary, its stdout read line by
//! line. Every signal and wire format is published by hand (the NATS-native service design's
//! flat records, OTLP JSON, OTLP protobuf from the `opentelemetry-proto` types) and what the
//! tail prints is checked. The collector's durable consumer must come out of every tail
//! exactly as it went in.

mod filters;
mod formats;
mod payloads;
mod replay;

use crate::support::{self, Nats};
use async_nats::jetstream::{self, consumer};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const UNUSED_DB: &str = "postgres://unused@127.0.0.1:1/unused";
const JSON_HEADERS: &[(&str, &str)] = &[("Content-Type", "application/json")];

// ---------------------------------------------------------------------------------------------
// Harness

/// A private nats-server with the stream and the collector's durable consumer; no database.
struct Env {
    nats: Nats,
    settings: jetscale::config::Settings,
    js: jetstream::Context,
}

async fn env() -> Env {
    env_with(|_| {}).await
}

async fn env_with(adjust: impl FnOnce(&mut jetscale::config::Settings)) -> Env {
    let nats = support::nats().await;
    let mut settings = support::settings(&nats.server.url(), UNUSED_DB);
    adjust(&mut settings);
    support::provision_stream(&settings).await;
    let js = support::jetstream(&nats.server.url()).await;
    Env { nats, settings, js }
}

impl Env {
    fn url(&self) -> String {
        self.nats.server.url()
    }

    /// Publishes and waits for the stream's acknowledgement; returns the stream sequence.
    async fn publish(&self, subject: &str, headers: &[(&str, &str)], payload: Vec<u8>) -> u64 {
        support::publish(&self.js, subject, headers, payload)
            .await
            .sequence
    }

    /// Publishes `device`'s reading, in the simulator's payload, on its subject as JSON;
    /// returns the stream sequence.
    async fn publish_reading(
        &self,
        device: &str,
        location: &str,
        time_ns: i64,
        values: [f64; 3],
    ) -> u64 {
        let subject = format!("telemetry.metrics.{device}");
        let payload = device_payload(device, location, time_ns, values);
        self.publish(&subject, JSON_HEADERS, payload).await
    }

    async fn stream(&self) -> jetstream::stream::Stream {
        self.js
            .get_stream(&self.settings.stream.name)
            .await
            .expect("stream")
    }

    async fn consumer_count(&self) -> usize {
        self.stream()
            .await
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count
    }

    /// Waits until a tail's consumer exists next to the durable one (live mode only sees what
    /// is published after that).
    async fn wait_for_tail_consumer(&self) {
        for _ in 0..200 {
            if self.consumer_count().await >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the tail's consumer never appeared");
    }

    async fn durable(&self) -> consumer::Consumer<consumer::pull::Config> {
        self.stream()
            .await
            .get_consumer(&self.settings.consumer.name)
            .await
            .expect("durable consumer")
    }

    /// Runs a tail that ends by itself (`--count`) and returns its lines.
    async fn run_tail(&self, args: &[&str]) -> Vec<String> {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tail_command(&self.url(), args).output(),
        )
        .await
        .expect("tail finished in time (did --count wait for lines that never came?)")
        .expect("run jetscale tail");
        assert!(
            output.status.success(),
            "tail failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("UTF-8 output")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs a tail with `--json` that ends by itself and returns the objects it printed.
    async fn tail_json(&self, args: &[&str]) -> Vec<Value> {
        parse_json(&self.run_tail(&[args, &["--json"]].concat()).await)
    }

    /// A tail's run that must fail; returns its stderr.
    async fn tail_fails(&self, args: &[&str]) -> String {
        let output = tail_command(&self.url(), args)
            .output()
            .await
            .expect("run jetscale tail");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// `jetscale tail ARGS` against `url`, blind to the caller's JETSCALE_* settings.
fn tail_command(url: &str, args: &[&str]) -> Command {
    let mut cmd = support::jetscale(&["tail"]);
    cmd.args(args)
        .args(["--nats-url", url])
        .env_remove("JETSCALE_NATS_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// A running `jetscale tail` with its stdout read line by line.
struct Tail {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Tail {
    fn spawn(url: &str, args: &[&str]) -> Tail {
        let mut child = tail_command(url, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run jetscale tail");
        let stdout = child.stdout.take().expect("stdout");
        Tail {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next printed line, or None after `wait` without one (or at the end of output).
    async fn next_line(&mut self, wait: Duration) -> Option<String> {
        match tokio::time::timeout(wait, self.lines.next_line()).await {
            Ok(Ok(line)) => line,
            _ => None,
        }
    }

    /// Up to `n` lines, waiting at most `wait` for each.
    async fn take(&mut self, n: usize, wait: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next_line(wait).await {
                Some(line) => out.push(line),
                None => break,
            }
        }
        out
    }

    /// Ctrl-C, then the exit status.
    async fn interrupt(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on the pid of our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGINT);
            }
        }
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("tail exits after Ctrl-C")
            .expect("wait")
    }

    /// Waits for the process to end by itself (`--count`), and returns the status.
    async fn wait(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("tail exits by itself")
            .expect("wait")
    }
}

fn parse_json(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn rfc3339(ns: i64) -> String {
    jetscale_model::flat::unix_nanos_to_rfc3339(ns)
}

fn ms_time(ns: i64) -> String {
    jetscale::tail::time_ms(ns)
}

fn device_payload(device: &str, location: &str, time_ns: i64, values: [f64; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    jetscale::simulate::payload::write_payload(&mut out, device, location, time_ns, values);
    out
}

/// Fails with a message that says when the format's decoder is simply not in `decode()` yet.
fn assert_decoded(format: &str, objects: &[Value], records: usize) {
    if let Some(r) = objects.iter().find(|o| o["signal"] == "rejected") {
        panic!(
            "{format}: decode() rejected the message, so the tail printed the rejection instead of the records \
             (DECODER NOT IN YET when the reason calls the format unknown / not stored, or the kind of point unhandled): {}",
            r["reason"]
        );
    }
    assert_eq!(objects.len(), records, "{format}: {objects:?}");
}
