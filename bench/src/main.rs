//! The end-to-end benchmark harness (issue 6). One command, `scripts/bench.sh`, runs it:
//!
//! 1. database ceiling: the rows of the IoT pipeline design's workload, pre-encoded, written by
//!    binary COPY straight into the same table (same indexes, same partitions): no NATS, no
//!    decoding;
//! 2. stream ceiling: the same pre-filled stream drained by a bare fetch-and-ack consumer, and
//!    publishing and consuming at once;
//! 3. jetscale drain: the real `jetscale collect` binary with its default config draining the
//!    pre-filled stream, with its peak RSS;
//! 4. naive consumer: a nats-py + psycopg `executemany` consumer into the IoT pipeline
//!    design's `iot_metrics` layout;
//! 5. live capacity: the simulator at set rates while the collector runs;
//!
//! then prints a table, writes `target/bench/results.json`, and ends with the drain ÷ ceiling
//! ratio. The decode micro-benchmark is `cargo bench -p jetscale --bench decode`.
//!
//! With `--backends` it runs instead the drain (and the live capacity) per storage backend,
//! layout and `direct_compress` setting (`backends.rs`), writing `results-backends.json`.

mod backends;
mod ceilings;
mod collector;
mod naive;
mod procfs;
mod publish;

use anyhow::Result;
use ceilings::{bare_drain, database_ceiling, publish_and_consume};
use clap::Parser;
use collector::{index_on_close, jetscale_drain, live_step};
use jetscale::config::{self, MetricsLayout, Overrides, Settings};
use naive::naive_consumer;
use procfs::{mem_gib, ServerPids};
use publish::{prefill, publish_fire_and_forget};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "jetscale end-to-end benchmarks")]
struct Args {
    /// Messages in the pre-filled stream (3 points each).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Simulators pre-filling the stream at once, each on its own connection.
    #[arg(long, default_value_t = 2)]
    publishers: u32,
    /// Messages for the database ceiling (pre-encoded in memory); default: as many as the
    /// stream holds, so both write the same rows into an index of the same size.
    #[arg(long)]
    ceiling_messages: Option<u64>,
    /// Messages the naive Python consumer drains (it is slow; its rate is what counts).
    #[arg(long, default_value_t = 100_000)]
    naive_messages: u64,
    /// Live-capacity rates to try, messages/s (devices = rate × 10 at a 10 s interval).
    #[arg(long, value_delimiter = ',', default_value = "20000,30000,40000,50000")]
    live_rates: Vec<u64>,
    /// Seconds per live-capacity step.
    #[arg(long, default_value_t = 20)]
    live_seconds: u64,
    /// Live steps publish with `--fire-and-forget` (plain publishes confirmed in groups)
    /// instead of awaiting each publish ack as devices do: nats-server's work on publish acks
    /// then no longer competes with the collector for the cores, which isolates the collector's
    /// capacity when acked publishing cannot reach the rate.
    #[arg(long)]
    live_fire_and_forget: bool,
    /// Config file for the drained collector (to compare settings); default: built-in defaults.
    #[arg(long)]
    collector_config: Option<PathBuf>,
    /// How the drained and live collectors ack: `explicit` (the default) or `all`
    /// (cumulative acks; written into a generated config unless --collector-config is given).
    #[arg(long, default_value = "explicit", value_parser = ["explicit", "all"])]
    ack_policy: String,
    /// Instead of the full run: drain (and, unless --skip-live, live capacity) per backend,
    /// e.g. `postgresql,timescaledb`, for each of --layouts, and on TimescaleDB with and
    /// without `direct_compress`; a table per backend. Each backend gets its own stack.
    #[arg(long, value_delimiter = ',', value_parser = backends::BACKENDS)]
    backends: Vec<String>,
    /// Metric layouts the --backends run drains.
    #[arg(long, value_delimiter = ',', default_value = "series,wide", value_parser = ["series", "wide"])]
    layouts: Vec<String>,
    #[arg(long)]
    skip_naive: bool,
    #[arg(long)]
    skip_live: bool,
    /// Where servers keep data and results are written.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
}

/// The collector's default settings, pointed at the bench's servers.
pub(crate) fn settings(nats: &str, db: &str) -> Result<Settings> {
    Ok(config::defaults(&Overrides {
        nats_url: Some(nats.to_owned()),
        database_url: Some(db.to_owned()),
        replicas: Some(1),
    })?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine = format!("{cores} cores, {:.0} GiB", mem_gib());
    std::fs::create_dir_all(&args.dir)?;
    if !args.backends.is_empty() {
        return run_backends(&args, &machine).await;
    }
    let stack_dir = args.dir.join("stack");
    let _ = std::fs::remove_dir_all(&stack_dir);
    std::fs::create_dir_all(&stack_dir)?;
    let stack_dir = stack_dir.canonicalize()?;
    eprintln!(
        "bench: starting private nats-server and PostgreSQL under {}",
        stack_dir.display()
    );
    let (nats, pg) = jetscale::dev::start_stack(&stack_dir, false).await?;

    let mut results = serde_json::Map::new();
    results.insert("machine".into(), json!(machine));
    results.insert("messages".into(), json!(args.messages));
    results.insert("ack_policy".into(), json!(args.ack_policy));
    let collector_config = match (&args.collector_config, args.ack_policy.as_str()) {
        (Some(given), _) => Some(given.clone()),
        (None, "explicit") => None,
        (None, policy) => {
            let path = stack_dir.join("collector.yaml");
            std::fs::write(
                &path,
                format!("receivers:\n  nats:\n    jetstream:\n      ack_policy: {policy}\n"),
            )?;
            Some(path)
        }
    };

    // 1. Database ceiling, for the IoT pipeline design's wide table and for jetscale's
    // default layout (whose database the stream's settings then use).
    let messages = args.ceiling_messages.unwrap_or(args.messages);
    let (ceiling_wide, _) = database_ceiling(
        &nats.url(),
        &pg,
        "ceiling_wide",
        messages,
        MetricsLayout::Wide,
    )
    .await?;
    results.insert(
        "database_ceiling_wide_rows_per_s".into(),
        json!(ceiling_wide),
    );
    let (ceiling, ceiling_db) =
        database_ceiling(&nats.url(), &pg, "ceiling", messages, MetricsLayout::Series).await?;
    results.insert("database_ceiling_rows_per_s".into(), json!(ceiling));

    // 2. Stream: pre-fill, then a bare consumer.
    let s = settings(&nats.url(), &ceiling_db)?;
    let client = jetscale::receivers::nats::connect(&s.nats, "bench").await?;
    let js = async_nats::jetstream::new(client.clone());
    let (_, stream) = jetscale::receivers::nats::ensure_stream(&js, &s.stream).await?;
    let started = Instant::now();
    let total = prefill(&s, args.messages, args.publishers).await?;
    let publish_rate = total as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "bench: pre-filled {total} messages at {publish_rate:.0} msg/s ({} publishing connection(s))",
        args.publishers
    );
    results.insert("publish_msgs_per_s".into(), json!(publish_rate));

    let servers = ServerPids {
        nats_server: nats.pid(),
        postmaster: pg.pid(),
    };
    let unacked = publish_fire_and_forget(
        &s,
        &js,
        &stream.cached_info().config,
        args.messages.min(500_000),
        args.publishers,
        &servers,
    )
    .await?;
    eprintln!(
        "bench: simulator with --fire-and-forget {:.0} msg/s",
        unacked.rate
    );
    results.insert(
        "publish_fire_and_forget_msgs_per_s".into(),
        json!(unacked.rate),
    );
    // Its CPU per message says what rate it could reach with a core to itself, whatever
    // limits nats-server's storing.
    let micros = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    eprintln!(
        "bench: CPU per message while publishing fire-and-forget: simulator {} µs, nats-server {} µs",
        micros(unacked.simulator_cpu_us),
        micros(unacked.nats_server_cpu_us)
    );
    results.insert(
        "publish_fire_and_forget_simulator_cpu_us_per_message".into(),
        json!(unacked.simulator_cpu_us),
    );
    results.insert(
        "publish_fire_and_forget_nats_server_cpu_us_per_message".into(),
        json!(unacked.nats_server_cpu_us),
    );

    let bare = bare_drain(&stream, "bare", total).await?;
    eprintln!("bench: bare fetch-and-ack drain {:.0} msg/s", bare);
    results.insert("stream_ceiling_msgs_per_s".into(), json!(bare));

    // 3. jetscale drain.
    let drain_db = pg.create_database("drain").await?;
    let (drain_secs, rss_kib, drain_cpu) = jetscale_drain(
        &nats.url(),
        &drain_db,
        &stream,
        total,
        collector_config.as_deref(),
        servers,
    )
    .await?;
    let drain_points = (total * 3) as f64 / drain_secs;
    eprintln!(
        "bench: jetscale drain {:.0} points/s ({:.0} msg/s), peak RSS {} MiB",
        drain_points,
        total as f64 / drain_secs,
        rss_kib / 1024
    );
    results.insert("jetscale_drain_points_per_s".into(), json!(drain_points));
    let per_message_us = |secs: f64| secs * 1e6 / total as f64;
    eprintln!(
        "bench: CPU per message during the drain: collector {:.2} µs, nats-server {:.2} µs, PostgreSQL {:.2} µs ({:.0} % of the machine's cores busy)",
        per_message_us(drain_cpu.collector),
        per_message_us(drain_cpu.nats_server),
        per_message_us(drain_cpu.postgres),
        100.0 * (drain_cpu.collector + drain_cpu.nats_server + drain_cpu.postgres)
            / (drain_secs * cores as f64),
    );
    results.insert(
        "drain_cpu_us_per_message".into(),
        json!({
            "collector": per_message_us(drain_cpu.collector),
            "nats_server": per_message_us(drain_cpu.nats_server),
            "postgres": per_message_us(drain_cpu.postgres),
        }),
    );
    results.insert(
        "jetscale_peak_rss_mib".into(),
        json!(rss_kib as f64 / 1024.0),
    );

    // 3b. The drain's deferred cost: each points partition is indexed once it closes
    // (`index_open_partitions: false`, the default). Built here at once, as maintenance would
    // an hour later, to report what it costs beside the drain.
    let index_secs = index_on_close(&nats.url(), &drain_db).await?;
    let drain_with_index = (total * 3) as f64 / (drain_secs + index_secs);
    eprintln!(
        "bench: closing partitions' index build {index_secs:.2} s ({:.0} rows/s); drain with it {drain_with_index:.0} points/s",
        (total * 3) as f64 / index_secs.max(1e-9)
    );
    results.insert("index_on_close_secs".into(), json!(index_secs));
    results.insert(
        "jetscale_drain_with_index_points_per_s".into(),
        json!(drain_with_index),
    );

    // 2b. Publishing and consuming at once (fresh messages, a consumer from "new").
    let both = publish_and_consume(&js, &stream, 200_000.min(total)).await?;
    eprintln!("bench: publish and consume at once {:.0} msg/s", both);
    results.insert("publish_and_consume_msgs_per_s".into(), json!(both));

    // 4. Naive consumer.
    let naive = if args.skip_naive {
        None
    } else {
        let naive_db = pg.create_database("naive").await?;
        let rate = naive_consumer(&nats.url(), &naive_db, args.naive_messages).await?;
        eprintln!(
            "bench: naive nats-py + psycopg consumer {:.0} points/s",
            rate
        );
        results.insert("naive_points_per_s".into(), json!(rate));
        Some(rate)
    };

    // 5. Live capacity.
    if !args.skip_live {
        let mut best = 0u64;
        let mut steps = Vec::new();
        for &rate in &args.live_rates {
            let db = pg.create_database(&format!("live_{rate}")).await?;
            let step = live_step(
                &nats,
                &db,
                rate,
                Duration::from_secs(args.live_seconds),
                collector_config.as_deref(),
                args.live_fire_and_forget,
            )
            .await?;
            eprintln!(
                "bench: live {rate} msg/s ({} devices at 10 s; warm-up created {:.0} series/s): achieved {:.0} msg/s, lag {} msgs, p99 {:.0} ms, collector peak RSS {:.1} MiB -> {}",
                rate * 10,
                step.warmup_series_per_s,
                step.achieved,
                step.final_lag,
                step.p99_ms,
                step.peak_rss_mib,
                if step.ok { "ok" } else { "over capacity" }
            );
            steps.push(json!({"rate": rate, "devices": rate * 10, "warmup_series_per_s": step.warmup_series_per_s, "achieved": step.achieved, "lag": step.final_lag, "p99_ms": step.p99_ms, "peak_rss_mib": step.peak_rss_mib, "ok": step.ok}));
            if step.ok {
                best = best.max(rate);
            } else {
                break;
            }
        }
        results.insert("live_steps".into(), json!(steps));
        results.insert(
            "live_fire_and_forget".into(),
            json!(args.live_fire_and_forget),
        );
        results.insert("live_capacity_devices_at_10s".into(), json!(best * 10));
    }

    let lower_ceiling = ceiling.min(bare * 3.0);
    let ratio = drain_points / lower_ceiling;
    results.insert("drain_over_lower_ceiling".into(), json!(ratio));
    if let Some(n) = naive {
        results.insert("drain_over_naive".into(), json!(drain_points / n));
    }
    let out = args.dir.join("results.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::Value::Object(results.clone()))?,
    )?;

    println!();
    println!(
        "jetscale benchmarks ({machine}; {} messages x 3 points)",
        args.messages
    );
    println!("{:<44} {:>14}", "measure", "value");
    let row = |name: &str, value: String| println!("{name:<44} {value:>14}");
    row(
        "database ceiling, series layout (rows/s)",
        format!("{ceiling:.0}"),
    );
    row(
        "database ceiling, wide iot_metrics (rows/s)",
        format!("{ceiling_wide:.0}"),
    );
    row(
        "stream ceiling (bare fetch+ack, msg/s)",
        format!("{bare:.0}"),
    );
    row("stream ceiling (points/s)", format!("{:.0}", bare * 3.0));
    row("publish alone (msg/s)", format!("{publish_rate:.0}"));
    row(
        "publish alone, fire-and-forget (msg/s)",
        format!("{:.0}", unacked.rate),
    );
    row(
        "f-a-f publish CPU/msg: simulator, NATS (µs)",
        format!(
            "{} {}",
            micros(unacked.simulator_cpu_us),
            micros(unacked.nats_server_cpu_us)
        ),
    );
    row("publish + consume at once (msg/s)", format!("{both:.0}"));
    row("jetscale drain (points/s)", format!("{drain_points:.0}"));
    row(
        "closing index build (s)",
        format!(
            "{:.2}",
            results["index_on_close_secs"].as_f64().unwrap_or(0.0)
        ),
    );
    row(
        "drain incl. index build (points/s)",
        format!(
            "{:.0}",
            results["jetscale_drain_with_index_points_per_s"]
                .as_f64()
                .unwrap_or(0.0)
        ),
    );
    row(
        "jetscale peak RSS (MiB)",
        format!("{:.1}", rss_kib as f64 / 1024.0),
    );
    row(
        "drain CPU/msg: collector, NATS, PG (µs)",
        format!(
            "{:.1} {:.1} {:.1}",
            per_message_us(drain_cpu.collector),
            per_message_us(drain_cpu.nats_server),
            per_message_us(drain_cpu.postgres)
        ),
    );
    if let Some(n) = naive {
        row("naive consumer (points/s)", format!("{n:.0}"));
        row("drain / naive", format!("{:.2}", drain_points / n));
    }
    if let Some(d) = results.get("live_capacity_devices_at_10s") {
        let name = if args.live_fire_and_forget {
            "live capacity, f-a-f publishing (devices)"
        } else {
            "live capacity (devices at 10 s)"
        };
        row(name, d.to_string());
    }
    println!("results: {}", out.display());
    println!("drain / lower ceiling = {ratio:.2}");
    drop(pg);
    drop(nats);
    Ok(())
}

/// `--backends`: the per-backend drain and live runs, then their results file.
async fn run_backends(args: &Args, machine: &str) -> Result<()> {
    if args.collector_config.is_some() {
        anyhow::bail!(
            "--backends writes one collector config per case; drop --collector-config (use --ack-policy)"
        );
    }
    let options = backends::MatrixOptions {
        backends: &args.backends,
        layouts: &args.layouts,
        messages: args.messages,
        publishers: args.publishers,
        ack_policy: &args.ack_policy,
        live_rates: (!args.skip_live).then_some(args.live_rates.as_slice()),
        live_seconds: args.live_seconds,
        live_fire_and_forget: args.live_fire_and_forget,
    };
    let by_backend = backends::run(&args.dir, machine, &options).await?;
    let out = args.dir.join("results-backends.json");
    let results = json!({
        "machine": machine,
        "messages": args.messages,
        "ack_policy": args.ack_policy,
        "live_fire_and_forget": args.live_fire_and_forget,
        "backends": by_backend,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("results: {}", out.display());
    Ok(())
}
