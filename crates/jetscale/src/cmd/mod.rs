//! Subcommands, one file each. Flags are parsed here, resolved into settings once, and the
//! settings handed down.

mod collect;
mod dev;
mod nats_config;
mod query;
mod setup;
mod simulate;
mod status;
mod tail;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jetscale::config::{self, Overrides, Settings};
use std::path::PathBuf;
use tokio::sync::watch;

/// NATS JetStream → TimescaleDB/PostgreSQL telemetry pipeline.
#[derive(Debug, Parser)]
#[command(name = "jetscale", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the servers are; these beat what the config file says.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Collector config file (the OpenTelemetry Collector shape of the IoT
    /// pipeline design).
    #[arg(long, short, global = true, env = "JETSCALE_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URL (overrides receivers.nats.url).
    #[arg(long, global = true, env = "JETSCALE_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// PostgreSQL connection string (overrides exporters.postgresql.endpoint).
    #[arg(
        long,
        global = true,
        env = "JETSCALE_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Stream replicas for setup: 1 on a single server, 3 on a cluster.
    #[arg(long, global = true)]
    pub replicas: Option<usize>,
    /// Log lines on stderr: `text` for people, `json` (one object per line) for log shippers.
    #[arg(
        long,
        global = true,
        env = "JETSCALE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or check the stream, the durable consumer and the database schema.
    Setup(setup::Args),
    /// Consume the stream into the database until stopped.
    Collect(collect::Args),
    /// Publish a simulated fleet of devices (the IoT pipeline design's OTLP JSON
    /// payload).
    Simulate(simulate::Args),
    /// Run the queries users run.
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// Start a private nats-server and PostgreSQL, set them up, and collect until Ctrl-C.
    Dev(dev::DevArgs),
    /// One command end to end: private servers, setup, a simulated fleet, collection, a summary.
    Demo(dev::DemoArgs),
    /// Print a least-privilege nats-server authorization block (devices, collector, admin).
    NatsConfig(nats_config::Args),
    /// Follow the stream live, one line per record (never touches the collector's consumer).
    Tail(tail::Args),
    /// The stream, the consumers, the lag and the database at a glance (reads only).
    Status(status::Args),
}

impl Global {
    /// Loads the config file (or the defaults) with the flag and env overrides on top.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let overrides = Overrides {
            nats_url: self.nats_url.clone(),
            database_url: self.database_url.clone(),
            replicas: self.replicas,
        };
        match &self.config {
            Some(path) => config::load(path, &overrides).context("loading the configuration"),
            None => config::defaults(&overrides).context("resolving the default configuration"),
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup(args) => setup::run(&cli.global, args).await,
        Command::Collect(args) => collect::run(&cli.global, args).await,
        Command::Simulate(args) => simulate::run(&cli.global, args).await,
        Command::Query(q) => query::run(&cli.global, q).await,
        Command::Dev(args) => dev::run_dev(&cli.global, args).await,
        Command::Demo(args) => dev::run_demo(&cli.global, args).await,
        Command::NatsConfig(args) => nats_config::run(&cli.global, args).await,
        Command::Tail(args) => tail::run(&cli.global, args).await,
        Command::Status(args) => status::run(&cli.global, args).await,
    }
}

/// A channel that turns true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.send(true);
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!(
            "stopping: finishing the batches in flight (nothing unacknowledged is lost)"
        );
        let _ = tx.send(true);
    });
    rx
}
