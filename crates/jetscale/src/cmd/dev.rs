//! `jetscale dev` and `jetscale demo`: the embedded default. A private nats-server
//! (JetStream, file store) and a private PostgreSQL cluster in a project-local directory on
//! free loopback ports, provisioned, with the collector running.

use super::collect::report_progress;
use super::{query::anomaly_table, setup, simulate, Global};
use anyhow::Context;
use jetscale::config::Settings;
use jetscale::dev::{NatsServer, PostgresCluster};
use jetscale::exporters::postgres::{self, query};
use jetscale::pipeline::{self, Counters, RunOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the servers keep their data (reused across runs).
    #[arg(long, default_value = ".jetscale")]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the servers keep their data.
    #[arg(long, default_value = ".jetscale")]
    pub dir: PathBuf,
    /// Devices in the simulated fleet.
    #[arg(long, default_value_t = 3000)]
    pub devices: u32,
    /// Messages per device.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
    /// Share of devices that overheat.
    #[arg(long, default_value_t = 0.02)]
    pub overheat_share: f64,
}

/// The two private servers and settings pointing at them.
struct Stack {
    nats: NatsServer,
    // Held so the cluster lives as long as the stack (dropping it stops the server).
    _postgres: PostgresCluster,
    settings: Settings,
}

async fn start_stack(global: &Global, dir: &std::path::Path) -> anyhow::Result<Stack> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    // TimescaleDB is the backend the pipeline is designed for: use it when it is installed.
    let timescaledb = jetscale::dev::timescaledb_installed();
    eprintln!(
        "starting a private nats-server and PostgreSQL{} under {}",
        if timescaledb {
            " (TimescaleDB preloaded)"
        } else {
            ""
        },
        dir.display()
    );
    let (nats, postgres) = jetscale::dev::start_stack(&dir, timescaledb)
        .await
        .context("starting the private servers")?;
    // Kept when it is there from an earlier run.
    let database = postgres.create_database("jetscale").await?;
    let global = Global {
        config: global.config.clone(),
        nats_url: Some(nats.url()),
        database_url: Some(database),
        replicas: Some(1),
        log_format: global.log_format,
    };
    let settings = global.settings()?;
    for line in setup::provision(&settings, true, true).await? {
        eprintln!("  {line}");
    }
    Ok(Stack {
        nats,
        _postgres: postgres,
        settings,
    })
}

pub async fn run_dev(global: &Global, args: DevArgs) -> anyhow::Result<()> {
    let stack = start_stack(global, &args.dir).await?;
    println!("nats:     {}", stack.nats.url());
    println!("postgres: {}", stack.settings.store.url);
    println!();
    println!("  export JETSCALE_NATS_URL={}", stack.nats.url());
    println!(
        "  export JETSCALE_DATABASE_URL={}",
        stack.settings.store.url
    );
    println!(
        "  NATS_URL={} python3 examples/iot_device.py",
        stack.nats.url()
    );
    println!("  jetscale simulate --devices 1000 --interval 10s");
    println!(
        "  psql {} -c 'SELECT * FROM iot_metrics_hourly LIMIT 10'",
        stack.settings.store.url
    );
    println!();
    println!("collector running; Ctrl-C stops it and the servers");
    let counters = Arc::new(Counters::default());
    let reporter = tokio::spawn(report_progress(
        counters.clone(),
        Duration::from_secs(10),
        stack.settings.store.series_cache,
    ));
    let result = pipeline::run(
        &stack.settings,
        &RunOptions::default(),
        counters,
        super::shutdown_signal(),
    )
    .await;
    reporter.abort();
    drop(stack);
    result?;
    Ok(())
}

pub async fn run_demo(global: &Global, args: DemoArgs) -> anyhow::Result<()> {
    let stack = start_stack(global, &args.dir).await?;
    let settings = stack.settings.clone();
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let collector = {
        let settings = settings.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let options = RunOptions {
                exit_when_idle: None,
                ..RunOptions::default()
            };
            pipeline::run(&settings, &options, counters, stop_rx).await
        })
    };
    eprintln!(
        "simulating {} devices x {} messages (3 points each), as fast as the stream acknowledges",
        args.devices, args.count
    );
    let started = Instant::now();
    let client = jetscale::receivers::nats::connect(&settings.nats, "jetscale-demo").await?;
    let js = async_nats::jetstream::new(client);
    let options = jetscale::simulate::SimulateOptions {
        devices: args.devices,
        count: Some(args.count),
        interval: Duration::ZERO,
        overheat_share: args.overheat_share,
        ..Default::default()
    };
    let published = jetscale::simulate::run(js, &options, simulate::progress_line).await?;
    eprintln!();
    // Wait until everything acknowledged by the stream is committed.
    let expected_rows = published.points;
    let deadline = Instant::now() + Duration::from_secs(120);
    while counters.rows.load(std::sync::atomic::Ordering::Relaxed) < expected_rows
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let collect_elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let report = collector.await.context("collector task")??;

    let db = postgres::connect(&settings.store).await?;
    let table = jetscale::exporters::postgres::schema::RelationNames::new(&settings.store);
    let stored: i64 = db
        .query_one(&format!("SELECT count(*) FROM {}", table.metrics), &[])
        .await?
        .get(0);
    let dead: i64 = db
        .query_one(&format!("SELECT count(*) FROM {}", table.dead_letters), &[])
        .await?
        .get(0);
    let anomalies = query::anomalies(
        &db,
        &settings.store.schema,
        "device.temperature",
        Duration::from_secs(3600),
        35.0,
    )
    .await?;

    println!();
    println!("jetscale demo summary");
    println!("  storage              {}", report.backend);
    println!(
        "  messages published   {} ({} acknowledged by JetStream)",
        published.published, published.acked
    );
    println!("  rows stored          {stored} (expected {expected_rows})");
    println!("  dead letters         {dead}");
    println!(
        "  publish rate         {:.0} msg/s",
        published.acked as f64 / published.elapsed.as_secs_f64().max(0.001)
    );
    println!(
        "  end-to-end           {:.0} points/s ({} points in {:.1}s, publish to commit)",
        report.rows as f64 / collect_elapsed.as_secs_f64().max(0.001),
        report.rows,
        collect_elapsed.as_secs_f64()
    );
    if let (Some(p50), Some(p99)) = (report.latency_p50, report.latency_p99) {
        println!(
            "  latency p50 / p99    {:.0} ms / {:.0} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "the IoT pipeline design's anomaly query (devices above 35.0 avg temperature in the last hour):"
    );
    print!("{}", anomaly_table(&anomalies));
    drop(stack);
    if stored as u64 != expected_rows {
        anyhow::bail!("stored {stored} rows but {expected_rows} were published");
    }
    Ok(())
}
