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
//! a failure can be replayed); `JETSCALE_FAULTS_KEEP=1` keeps the collectors' logs. The suite
//! alone: `cargo test -p jetscale --test tests faults::`.
//!
//! Scenarios (1) and (5) are in `collector_kills`, (2) in `db_outage`, (3) in `nats_restart`,
//! (4) in `poison`, (6) in `cluster`; `publisher` publishes and records what was acknowledged,
//! `rig` and `collector` run the collectors, `verify` holds the checks every scenario ends with.

mod cluster;
mod collector;
mod collector_kills;
mod db_outage;
mod nats_restart;
mod poison;
mod publisher;
mod rig;
mod verify;

use std::time::Duration;

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
