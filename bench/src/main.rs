//! The end-to-end benchmark harness (issue 6). One command, `scripts/bench.sh`, runs it:
//!
//! 1. database ceiling: the seed workload's rows, pre-encoded, written by binary COPY straight
//!    into the same table (same indexes, same partitions): no NATS, no decoding;
//! 2. stream ceiling: the same pre-filled stream drained by a bare fetch-and-ack consumer, and
//!    publishing and consuming at once;
//! 3. jetscale drain: the real `jetscale collect` binary with its default config draining the
//!    pre-filled stream, with its peak RSS;
//! 4. naive consumer: a nats-py + psycopg `executemany` consumer into the seed's layout;
//! 5. live capacity: the simulator at set rates while the collector runs;
//!
//! then prints a table, writes `target/bench/results.json`, and ends with the drain ÷ ceiling
//! ratio. The decode micro-benchmark is `cargo bench -p jetscale --bench decode`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use jetscale::config::{self, Encoding, Limits, MetricsLayout, Overrides, Settings};
use jetscale::decode::{DecodeContext, Incoming};
use jetscale::dev::{NatsServer, NatsServerOptions, PostgresCluster, PostgresOptions};
use jetscale::exporters::postgres::batch::Table;
use jetscale::exporters::postgres::batch::{Batch, Delivery};
use jetscale::exporters::postgres::series::SeriesCache;
use jetscale::exporters::postgres::{self, schema};
use jetscale::simulate::{self, fleet::Fleet, SimulateOptions};
use jetscale_model::now_unix_nanos;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
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
    #[arg(long)]
    skip_naive: bool,
    #[arg(long)]
    skip_live: bool,
    /// Where servers keep data and results are written.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
}

fn settings(nats: &str, db: &str) -> Result<Settings> {
    Ok(config::defaults(&Overrides {
        nats_url: Some(nats.to_owned()),
        database_url: Some(db.to_owned()),
        replicas: Some(1),
    })?)
}

fn jetscale_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidate = exe.with_file_name("jetscale");
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found: build it with cargo build --release -p jetscale",
            candidate.display()
        )
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (from the state on), which is in
/// parentheses and may hold spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// Parent pid and CPU time (user + system, in seconds) from a process's stat fields.
fn parent_and_cpu(fields: &[String]) -> Option<(u32, f64)> {
    let parent = fields.get(1)?.parse().ok()?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((parent, (user + system) as f64 / ticks))
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc.
fn cpu_secs(pid: u32) -> Option<f64> {
    parent_and_cpu(&stat_fields(pid)?).map(|(_, cpu)| cpu)
}

/// CPU seconds of a process and its live children (a PostgreSQL postmaster's backends).
fn tree_cpu_secs(root: u32) -> f64 {
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| parent_and_cpu(&stat_fields(pid)?))
        .filter(|&(parent, _)| parent == root)
        .map(|(_, cpu)| cpu)
        .sum();
    cpu_secs(root).unwrap_or(0.0) + children
}

/// What the machine's processes spent during the drain, in CPU seconds.
#[derive(Debug, Default, Clone, Copy)]
struct DrainCpu {
    collector: f64,
    nats_server: f64,
    postgres: f64,
}

/// Peak resident memory of a process, from /proc (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine = format!("{cores} cores, {:.0} GiB", mem_gib());
    std::fs::create_dir_all(&args.dir)?;
    let stack_dir = args.dir.join("stack");
    let _ = std::fs::remove_dir_all(&stack_dir);
    std::fs::create_dir_all(&stack_dir)?;
    let stack_dir = stack_dir.canonicalize()?;
    eprintln!(
        "bench: starting private nats-server and PostgreSQL under {}",
        stack_dir.display()
    );
    let nats = NatsServer::start(NatsServerOptions {
        dir: stack_dir.join("nats"),
        ..Default::default()
    })
    .await?;
    let pg = PostgresCluster::start(PostgresOptions {
        dir: stack_dir.join("pg"),
        port: None,
    })
    .await?;

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

    // 1. Database ceiling, for jetscale's default layout and for the seed's wide table.
    let wide_db = pg.create_database("ceiling_wide").await?;
    let ceiling_wide = database_ceiling(
        &nats.url(),
        &wide_db,
        args.ceiling_messages.unwrap_or(args.messages),
        MetricsLayout::Wide,
    )
    .await?;
    eprintln!(
        "bench: database ceiling, seed's wide layout: {:.0} rows/s (best of 1 and 2 connections)",
        ceiling_wide
    );
    results.insert(
        "database_ceiling_wide_rows_per_s".into(),
        json!(ceiling_wide),
    );
    let ceiling_db = pg.create_database("ceiling").await?;
    let ceiling = database_ceiling(
        &nats.url(),
        &ceiling_db,
        args.ceiling_messages.unwrap_or(args.messages),
        MetricsLayout::Series,
    )
    .await?;
    eprintln!(
        "bench: database ceiling, series layout: {:.0} rows/s (best of 1 and 2 connections)",
        ceiling
    );
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
        "database ceiling, seed's wide layout (rows/s)",
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

fn mem_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

/// Rows of the seed workload encoded as the collector encodes them, then COPYed with no
/// NATS and no decoding in the timed part.
async fn database_ceiling(
    nats_url: &str,
    db_url: &str,
    messages: u64,
    layout: MetricsLayout,
) -> Result<f64> {
    let mut s = settings(nats_url, db_url)?;
    s.store.layout = layout;
    let series = (layout == MetricsLayout::Series).then(|| {
        Arc::new(SeriesCache::new(
            jetscale::config::settings::DEFAULT_SERIES_CACHE,
        ))
    });
    let mut client = postgres::connect(&s.store).await?;
    schema::migrate(&mut client, &s.store).await?;
    let names = schema::RelationNames::new(&s.store);
    postgres::maintenance::partitions_ahead(&client, &names, &s.store, Duration::from_secs(3600))
        .await?;
    let limits = Limits::default();
    let ctx = DecodeContext::now(&limits, &[], Encoding::Auto);
    let mut fleet = Fleet::new(&SimulateOptions {
        devices: 10_000,
        ..Default::default()
    });
    let subject = async_nats::Subject::from_static("telemetry.metrics.x");
    let reply = async_nats::Subject::from_static("$JS.ACK.x");
    let mut batches = Vec::new();
    let mut batch = Batch::new(3_600_000_000, 15_000).with_series(series.clone());
    let start = now_unix_nanos() - 600_000_000_000;
    for i in 0..messages {
        let mut payload = Vec::new();
        fleet.next_message((i % 10_000) as usize, start + i as i64 * 1000, &mut payload);
        let payload = bytes::Bytes::from(payload);
        let msg = Incoming {
            subject: subject.as_str(),
            content_type: None,
            format_header: None,
            payload: &payload,
        };
        let _ = batch.add(
            &msg,
            Delivery {
                stream_seq: i + 1,
                reply: reply.clone(),
                headers: None,
                published_ns: 0,
                subject: subject.clone(),
                payload: payload.clone(),
            },
            &ctx,
        );
        if batch.size_in_rows() >= 15_000 {
            let next = batch.new_empty(15_000);
            batches.push(std::mem::replace(&mut batch, next));
        }
    }
    batches.push(batch);
    let rows: usize = batches.iter().map(|b| b.rows(Table::Metrics)).sum();
    // Series are created once, untimed, as a running collector has them cached; the timed
    // part is the points' COPY.
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    for b in &batches {
        let mut rows = b.buffer(Table::Metrics).to_vec();
        if !b.series_patches.is_empty() {
            let tx = client.transaction().await?;
            let resolved = postgres::writer::resolve_series(&tx, &names, b).await?;
            tx.commit().await?;
            postgres::writer::patch_series_ids(&mut rows, &b.series_patches, &resolved.ids)?;
        }
        encoded.push(rows);
    }
    let table = names.quoted(Table::Metrics).to_owned();
    let copy_sql = match layout {
        MetricsLayout::Series => {
            format!("COPY {table} (time, series_id, value) FROM STDIN (FORMAT binary)")
        }
        MetricsLayout::Wide => format!(
            "COPY {table} (time, device_id, location, metric_name, value, unit, attributes) FROM STDIN (FORMAT binary)"
        ),
    };
    let mut best = 0.0f64;
    for connections in [1usize, 2] {
        client.batch_execute(&format!("TRUNCATE {table}")).await?;
        let mut clients = Vec::new();
        for _ in 0..connections {
            clients.push(postgres::connect(&s.store).await?);
        }
        let chunks: Vec<Vec<Vec<u8>>> = (0..connections)
            .map(|c| {
                encoded
                    .iter()
                    .skip(c)
                    .step_by(connections)
                    .cloned()
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (mut client, mine) in clients.into_iter().zip(chunks) {
            let sql = copy_sql.clone();
            tasks.push(tokio::spawn(async move {
                for rows in mine {
                    let tx = client.transaction().await?;
                    let sink = tx.copy_in(sql.as_str()).await?;
                    futures::pin_mut!(sink);
                    use futures::SinkExt;
                    sink.feed(bytes::Bytes::from_static(postgres::copy::HEADER))
                        .await?;
                    sink.feed(bytes::Bytes::from(rows)).await?;
                    sink.feed(bytes::Bytes::from_static(postgres::copy::TRAILER))
                        .await?;
                    sink.finish().await?;
                    tx.commit().await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let rate = rows as f64 / started.elapsed().as_secs_f64();
        eprintln!("bench: database ceiling with {connections} connection(s): {rate:.0} rows/s");
        best = best.max(rate);
    }
    client.batch_execute(&format!("TRUNCATE {table}")).await?;
    Ok(best)
}

/// A durable consumer that fetches and acks, decoding and storing nothing.
async fn bare_drain(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    total: u64,
) -> Result<f64> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 50_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(jetscale::config::settings::DEFAULT_FETCH_BATCH)
        .messages()
        .await?;
    let started = Instant::now();
    let mut seen = 0u64;
    while seen < total {
        let Some(m) = messages.next().await else {
            break;
        };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        seen += 1;
    }
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

/// Seconds to build the index of every points partition in `db_url` that has none, as the
/// collector's maintenance does once a partition has closed.
async fn index_on_close(nats_url: &str, db_url: &str) -> Result<f64> {
    let s = settings(nats_url, db_url)?;
    let client = postgres::connect(&s.store).await?;
    let names = schema::RelationNames::new(&s.store);
    let started = Instant::now();
    let far_future = std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 86_400);
    postgres::maintenance::index_closed_partitions(&client, &names, far_future, i32::MAX).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The servers whose CPU the drain's figures charge to it.
#[derive(Debug, Clone, Copy)]
struct ServerPids {
    nats_server: Option<u32>,
    postmaster: Option<u32>,
}

impl ServerPids {
    fn cpu(&self) -> (f64, f64) {
        (
            self.nats_server.and_then(cpu_secs).unwrap_or(0.0),
            self.postmaster.map_or(0.0, tree_cpu_secs),
        )
    }
}

/// Runs the real collector binary over the pre-filled stream; returns seconds until every
/// message was acknowledged (so committed), its peak RSS, and the CPU the collector and the
/// servers spent meanwhile.
async fn jetscale_drain(
    nats_url: &str,
    db_url: &str,
    stream: &async_nats::jetstream::stream::Stream,
    total: u64,
    config: Option<&Path>,
    servers: ServerPids,
) -> Result<(f64, u64, DrainCpu)> {
    let started = Instant::now();
    let servers_before = servers.cpu();
    let mut command = tokio::process::Command::new(jetscale_binary()?);
    command.args([
        "collect",
        "--exit-when-idle",
        "3s",
        "--nats-url",
        nats_url,
        "--database-url",
        db_url,
    ]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .kill_on_drop(true)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_COLLECTOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .context("starting jetscale collect")?;
    let pid = child.id().unwrap_or(0);
    let mut peak = 0u64;
    let mut done_at = None;
    let mut cpu = DrainCpu::default();
    loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if done_at.is_none() {
            // Read before the ack floor is asked for, so the collector's idle wait for exit
            // is not charged; the servers' figures include the bench's own consumer polls.
            let collector = cpu_secs(pid).unwrap_or(cpu.collector);
            if let Ok(info) = stream.consumer_info("jetscale").await {
                if info.ack_floor.stream_sequence >= total && info.num_ack_pending == 0 {
                    done_at = Some(started.elapsed());
                    let (nats_server, postgres) = servers.cpu();
                    cpu = DrainCpu {
                        collector,
                        nats_server: nats_server - servers_before.0,
                        postgres: postgres - servers_before.1,
                    };
                }
            }
            if done_at.is_none() {
                cpu.collector = collector;
            }
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("jetscale collect exited with {status}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = done_at
        .context("the collector exited before acknowledging every message")?
        .as_secs_f64();
    Ok((secs, peak, cpu))
}

async fn publish_and_consume(
    js: &async_nats::jetstream::Context,
    stream: &async_nats::jetstream::stream::Stream,
    count: u64,
) -> Result<f64> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("both".into()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::New,
            max_ack_pending: 50_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(jetscale::config::settings::DEFAULT_FETCH_BATCH)
        .messages()
        .await?;
    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            simulate::run(
                js,
                &SimulateOptions {
                    devices: 10_000,
                    count: Some(count / 10_000),
                    interval: Duration::ZERO,
                    seed: 9,
                    ..Default::default()
                },
                |_| {},
            )
            .await
        })
    };
    let expected = (count / 10_000) * 10_000;
    let mut seen = 0;
    while seen < expected {
        let Some(m) = messages.next().await else {
            break;
        };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        seen += 1;
    }
    publisher.await??;
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

async fn naive_consumer(nats_url: &str, db_url: &str, count: u64) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("naive_consumer.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([
            "--nats",
            nats_url,
            "--db",
            db_url,
            "--count",
            &count.to_string(),
        ])
        .output()
        .await
        .context("running bench/naive_consumer.py (pip install nats-py psycopg[binary])")?;
    if !out.status.success() {
        bail!(
            "naive consumer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("points_per_s ")
                .and_then(|v| v.trim().parse().ok())
        })
        .context("naive consumer printed no rate")
}

struct LiveStep {
    /// Series created per second while the fleet came online (the untimed warm-up).
    warmup_series_per_s: f64,
    /// The timed collector's peak RSS (its cache holds the fleet's series).
    peak_rss_mib: f64,
    achieved: f64,
    final_lag: u64,
    p99_ms: f64,
    ok: bool,
}

/// SIGTERM: the collector finishes its batches and prints its summary line, returned.
async fn stop(collector: tokio::process::Child) -> Result<String> {
    if let Some(pid) = collector.id() {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let out = collector.wait_with_output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fills the stream with about `messages` seed-000 messages from `publishers` simulators, each
/// with its own connection (nats-server reads each connection on one thread) and its share of
/// the 10,000 devices; returns how many were stored.
async fn prefill(s: &Settings, messages: u64, publishers: u32) -> Result<u64> {
    publish_fleet(s, messages, publishers, SimulateOptions::default()).await
}

/// What one run of the fire-and-forget simulator into a scratch stream measured.
struct ScratchPublish {
    /// Messages confirmed stored per second.
    rate: f64,
    /// CPU per message of this process (the simulator runs in it) and of nats-server; `None`
    /// when a process's `/proc` figures could not be read, or the run was too short for the
    /// kernel's 10 ms CPU ticks to say anything per message.
    simulator_cpu_us: Option<f64>,
    nats_server_cpu_us: Option<f64>,
}

/// Fewer messages than this and a per-message CPU figure is mostly tick rounding.
const MIN_MESSAGES_FOR_CPU: u64 = 100_000;

/// The simulator's best rate: `jetscale simulate --fire-and-forget` into a scratch stream
/// configured `like` the telemetry stream (so the drain's stream is left as it is), split
/// over `publishers` connections.
async fn publish_fire_and_forget(
    s: &Settings,
    js: &async_nats::jetstream::Context,
    like: &async_nats::jetstream::stream::Config,
    messages: u64,
    publishers: u32,
    servers: &ServerPids,
) -> Result<ScratchPublish> {
    let mut config = like.clone();
    config.name = "SCRATCH".into();
    config.subjects = vec!["scratch.>".into()];
    let _ = js.delete_stream("SCRATCH").await;
    js.create_stream(config).await?;
    // Read nats-server's figure alone: `servers.cpu()` also scans /proc for PostgreSQL's
    // backends, which would charge that scan to the simulator.
    let nats_server_cpu = || servers.nats_server.and_then(cpu_secs);
    let cpu_before = (cpu_secs(std::process::id()), nats_server_cpu());
    let started = Instant::now();
    let stored = publish_fleet(
        s,
        messages,
        publishers,
        SimulateOptions {
            subject_prefix: "scratch.metrics".into(),
            fire_and_forget: true,
            ..SimulateOptions::default()
        },
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = (cpu_secs(std::process::id()), nats_server_cpu());
    js.delete_stream("SCRATCH").await?;
    let per_message_us = |before: Option<f64>, after: Option<f64>| {
        let spent = after? - before?;
        (stored >= MIN_MESSAGES_FOR_CPU).then(|| spent * 1e6 / stored as f64)
    };
    Ok(ScratchPublish {
        rate: stored as f64 / secs,
        simulator_cpu_us: per_message_us(cpu_before.0, cpu_after.0),
        nats_server_cpu_us: per_message_us(cpu_before.1, cpu_after.1),
    })
}

/// Publishes about `messages` messages from `publishers` simulators configured like `base`,
/// each on its own connection and with its share of 10,000 devices; returns how many were
/// confirmed stored.
async fn publish_fleet(
    s: &Settings,
    messages: u64,
    publishers: u32,
    base: SimulateOptions,
) -> Result<u64> {
    let publishers = publishers.clamp(1, 100);
    let devices = 10_000 / publishers;
    let per_device = messages.div_ceil(u64::from(devices) * u64::from(publishers));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let client =
            jetscale::receivers::nats::connect(&s.nats, &format!("bench-publisher-{p}")).await?;
        let js = async_nats::jetstream::new(client);
        let opts = SimulateOptions {
            devices,
            count: Some(per_device),
            interval: Duration::ZERO,
            device_prefix: if publishers == 1 {
                SimulateOptions::default().device_prefix
            } else {
                format!("sensor-p{p}-")
            },
            seed: u64::from(p),
            ..base.clone()
        };
        tasks.push(tokio::spawn(async move {
            simulate::run(js, &opts, |_| {}).await
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await??.acked;
    }
    Ok(stored)
}

/// Publish acks the live simulator awaits at once.
const LIVE_MAX_IN_FLIGHT: usize = 32_768;

/// The simulator at `rate` msg/s (devices = rate × 10 at a 10 s interval) while the collector
/// runs; bounded lag and p99 publish-to-commit latency under 2 s pass.
async fn live_step(
    nats: &NatsServer,
    db_url: &str,
    rate: u64,
    length: Duration,
    config: Option<&Path>,
    fire_and_forget: bool,
) -> Result<LiveStep> {
    let s = settings(&nats.url(), db_url)?;
    let client = jetscale::receivers::nats::connect(&s.nats, "bench-live").await?;
    // The load generator must not be what limits the step: with the machine saturated a
    // publish ack can take over 100 ms, and 4,096 acks in flight then cap publishing near
    // 40k msg/s whatever the pipeline does.
    let js = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(LIVE_MAX_IN_FLIGHT)
        .build(client);
    let stream = js.get_stream("TELEMETRY").await?;
    stream.purge().await?;
    let _ = stream.delete_consumer("jetscale").await;
    let spawn_collector = || -> Result<tokio::process::Child> {
        let mut command = tokio::process::Command::new(jetscale_binary()?);
        command.args([
            "collect",
            "--nats-url",
            &nats.url(),
            "--database-url",
            db_url,
        ]);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        Ok(command
            .kill_on_drop(true)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_COLLECTOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()?)
    };
    let devices = u32::try_from(rate * 10).unwrap_or(u32::MAX);
    // Warm-up, untimed: the fleet comes online once, so its series exist, as they do for a
    // fleet that has been running. The timed run then starts a new collector process, whose
    // series cache is empty: it finds the series, it does not create them.
    let warmup = spawn_collector()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warm_started = Instant::now();
    simulate::run(
        js.clone(),
        &SimulateOptions {
            devices,
            count: Some(1),
            interval: Duration::ZERO,
            seed: rate,
            ..Default::default()
        },
        |_| {},
    )
    .await?;
    loop {
        let info = stream.consumer_info("jetscale").await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        if warm_started.elapsed() > Duration::from_secs(600) {
            bail!("the warm-up of {devices} devices did not drain in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warmup_series_per_s = f64::from(devices) * 3.0 / warm_started.elapsed().as_secs_f64();
    stop(warmup).await?;
    let collector = spawn_collector()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = simulate::run(
        js.clone(),
        &SimulateOptions {
            devices,
            duration: Some(length),
            interval: Duration::from_secs(10),
            seed: rate,
            max_in_flight: LIVE_MAX_IN_FLIGHT,
            fire_and_forget,
            ..Default::default()
        },
        |_| {},
    )
    .await?;
    let achieved = report.acked as f64 / report.elapsed.as_secs_f64();
    // Lag right after publishing stops: what the collector still has to do.
    let info = stream.consumer_info("jetscale").await?;
    let final_lag = info.num_pending + info.num_ack_pending as u64;
    // Let it finish, then stop it and read its latency line.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak_rss_mib = collector
        .id()
        .and_then(peak_rss_kib)
        .map_or(0.0, |kib| kib as f64 / 1024.0);
    let text = stop(collector).await?;
    let p99_ms = text
        .split("p99 ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.trim_end_matches("ms").parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    let ok = final_lag < rate * 2 && p99_ms < 2000.0 && achieved > rate as f64 * 0.9;
    Ok(LiveStep {
        warmup_series_per_s,
        peak_rss_mib,
        achieved,
        final_lag,
        p99_ms,
        ok,
    })
}
