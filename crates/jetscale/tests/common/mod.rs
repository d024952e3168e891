//! Shared harness for integration tests: private nats-server per test, one private
//! PostgreSQL cluster per test binary with a fresh database per test, settings pointing at
//! them, and helpers to run the real binary. A server that can not start fails the test.

#![allow(dead_code)]

use jetscale::config::{self, Overrides, Settings};
use jetscale::dev::{NatsServer, NatsServerOptions, PostgresCluster, PostgresOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

static POSTGRES: OnceCell<PostgresCluster> = OnceCell::const_new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under target/ that the postgres user can traverse, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("target tmpdir");
    let dir = tempfile::Builder::new()
        .prefix("jetscale-test-")
        .tempdir_in(&base)
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The per-binary PostgreSQL cluster.
pub async fn postgres() -> &'static PostgresCluster {
    POSTGRES
        .get_or_init(|| async {
            let dir = temp_dir().keep();
            PostgresCluster::start(PostgresOptions {
                dir: dir.join("pg"),
                port: None,
            })
            .await
            .expect("a private PostgreSQL cluster must start (apt-get install -y postgresql)")
        })
        .await
}

/// A fresh database on the shared cluster; returns its URL.
pub async fn fresh_database(label: &str) -> String {
    let pg = postgres().await;
    let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
    let name = format!("t_{}_{}_{}", label, std::process::id(), n);
    pg.create_database(&name).await.expect("create database")
}

/// A private nats-server (JetStream, file store) in its own directory.
pub struct Nats {
    pub server: NatsServer,
    _dir: tempfile::TempDir,
}

pub async fn nats() -> Nats {
    nats_with("").await
}

pub async fn nats_with(extra_config: &str) -> Nats {
    let dir = temp_dir();
    let server = NatsServer::start(NatsServerOptions {
        dir: dir.path().join("nats"),
        extra_config: extra_config.to_owned(),
        ..Default::default()
    })
    .await
    .expect("a private nats-server must start (apt-get install -y nats-server)");
    Nats { server, _dir: dir }
}

/// Default settings pointed at the given servers, with a short batch timeout for tests.
pub fn settings(nats_url: &str, database_url: &str) -> Settings {
    let mut s = config::defaults(&Overrides {
        nats_url: Some(nats_url.to_owned()),
        database_url: Some(database_url.to_owned()),
        replicas: Some(1),
    })
    .expect("default settings");
    s.batch.timeout = Duration::from_millis(500);
    s
}

/// Path of the built `jetscale` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jetscale"))
}

/// Workspace root (for examples/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Connects to a database URL.
pub async fn db(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to test database");
    tokio::spawn(conn);
    client
}

/// Runs the collector in-process until the consumer is idle.
pub async fn collect_until_idle(settings: &Settings) -> jetscale::pipeline::RunReport {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let options = jetscale::pipeline::RunOptions {
        exit_when_idle: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(180),
        jetscale::pipeline::run(settings, &options, Default::default(), rx),
    )
    .await
    .expect("collector finished in time")
    .expect("collector ran without error")
}

/// Publishes `devices × count` simulated messages and returns the report with every point.
pub async fn simulate(nats_url: &str, devices: u32, count: u64) -> jetscale::simulate::Report {
    simulate_with(
        nats_url,
        jetscale::simulate::SimulateOptions {
            devices,
            count: Some(count),
            interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
}

/// Runs the simulator with `options`, recording every point it reports stored.
pub async fn simulate_with(
    nats_url: &str,
    options: jetscale::simulate::SimulateOptions,
) -> jetscale::simulate::Report {
    let client = async_nats::connect(nats_url).await.expect("connect nats");
    let js = async_nats::jetstream::new(client);
    let options = jetscale::simulate::SimulateOptions {
        record_sent: true,
        ..options
    };
    jetscale::simulate::run(js, &options, |_| {})
        .await
        .expect("simulate")
}

/// Creates the stream as `jetscale setup` does.
pub async fn provision_stream(settings: &Settings) {
    let client = async_nats::connect(&settings.nats.url)
        .await
        .expect("connect nats");
    let js = async_nats::jetstream::new(client);
    let (_, stream) = jetscale::receivers::nats::ensure_stream(&js, &settings.stream)
        .await
        .expect("stream");
    jetscale::receivers::nats::ensure_consumer(&stream, &settings.consumer)
        .await
        .expect("consumer");
}

/// Every row of the metrics table as (device, metric, time µs, value bits).
pub async fn stored_points(
    client: &tokio_postgres::Client,
    table: &str,
) -> Vec<(String, String, i64, u64)> {
    let rows = client
        .query(
            &format!(
                "SELECT device_id, metric_name, (extract(epoch FROM time) * 1000000)::int8, value FROM {table}"
            ),
            &[],
        )
        .await
        .expect("select points");
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, f64>(3).to_bits()))
        .collect()
}

/// What the simulator sent, in the same shape as [`stored_points`].
pub fn sent_points(report: &jetscale::simulate::Report) -> Vec<(String, String, i64, u64)> {
    report
        .sent
        .iter()
        .map(|p| {
            (
                p.device_id.clone(),
                p.metric.to_owned(),
                p.time_unix_nano.div_euclid(1000),
                p.value.to_bits(),
            )
        })
        .collect()
}
