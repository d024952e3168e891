//! Shared harness for integration tests: private nats-server per test, one private
//! PostgreSQL cluster for the whole binary with a fresh database per test, settings pointing
//! at them, and helpers to run the collector and the real binary. A server that can not start
//! fails the test.
//!
//! `JETSCALE_TEST_BACKEND` picks the storage engine the shared cluster and [`settings`] use:
//! `postgresql` (the default; `backend: postgresql` is set explicitly so the native runs never
//! pay a failed `CREATE EXTENSION`) or `timescaledb` (the cluster preloads the extension and
//! the settings demand it, so a run that silently fell back to native would fail).

mod collector;
pub mod otlp;
mod store;
mod stream;

pub use collector::{collect_until_idle, jetscale, run_collector, succeeds};
pub use store::{assert_stored_as_sent, count, count_rows, db, query, texts};
pub use stream::{jetstream, provision_stream, publish, reading, simulate, simulate_with};

use jetscale::config::{self, BackendChoice, Overrides, Settings};
use jetscale::dev::{NatsServer, NatsServerOptions, PostgresCluster, PostgresOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

static POSTGRES: OnceCell<PostgresCluster> = OnceCell::const_new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

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

/// The storage engine this run tests (`JETSCALE_TEST_BACKEND`, default `postgresql`).
pub fn backend() -> BackendChoice {
    match std::env::var("JETSCALE_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("postgresql") => BackendChoice::Postgresql,
        Ok("timescaledb") => BackendChoice::Timescaledb,
        Ok(other) => panic!("JETSCALE_TEST_BACKEND={other}: use postgresql or timescaledb"),
    }
}

/// Whether this run tests TimescaleDB (assertions that differ per backend ask this).
pub fn timescaledb() -> bool {
    backend() == BackendChoice::Timescaledb
}

/// The PostgreSQL cluster every test of this binary shares; it preloads TimescaleDB when the
/// run tests it.
pub async fn postgres() -> &'static PostgresCluster {
    POSTGRES
        .get_or_init(|| async {
            let dir = temp_dir().keep();
            let options = PostgresOptions {
                dir: dir.join("pg"),
                port: None,
            };
            let preload: &[&str] = if timescaledb() { &["timescaledb"] } else { &[] };
            PostgresCluster::start_preloading(options, preload)
                .await
                .expect("a private PostgreSQL cluster must start (apt-get install -y postgresql; for JETSCALE_TEST_BACKEND=timescaledb also scripts/timescaledb.sh)")
        })
        .await
}

/// A PostgreSQL cluster of a test's own, for a test that stops or restarts it; preloads
/// TimescaleDB like the shared one. Keep the directory as long as the cluster.
pub async fn own_postgres() -> (tempfile::TempDir, PostgresCluster) {
    let dir = temp_dir();
    let options = PostgresOptions {
        dir: dir.path().join("pg"),
        port: None,
    };
    let preload: &[&str] = if timescaledb() { &["timescaledb"] } else { &[] };
    let cluster = PostgresCluster::start_preloading(options, preload)
        .await
        .expect("a private PostgreSQL cluster");
    (dir, cluster)
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
    s.store.backend = backend();
    s
}

/// Path of the built `jetscale` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jetscale"))
}

/// Workspace root (for examples/ and docs/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What most tests start from: a private nats-server with the stream and the durable consumer
/// provisioned, a fresh database, and the settings that point at both.
pub struct Stack {
    pub nats: Nats,
    pub db_url: String,
    pub settings: Settings,
}

/// A [`Stack`] with the default test settings; `label` names its database.
pub async fn stack(label: &str) -> Stack {
    stack_with(label, |_| {}).await
}

/// A [`Stack`] whose settings `adjust` changes before the stream is provisioned.
pub async fn stack_with(label: &str, adjust: impl FnOnce(&mut Settings)) -> Stack {
    let nats = nats().await;
    let db_url = fresh_database(label).await;
    let mut settings = settings(&nats.server.url(), &db_url);
    adjust(&mut settings);
    provision_stream(&settings).await;
    Stack {
        nats,
        db_url,
        settings,
    }
}

impl Stack {
    pub fn nats_url(&self) -> String {
        self.nats.server.url()
    }

    /// A client of the stack's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        db(&self.db_url).await
    }

    /// A JetStream context on the stack's server.
    pub async fn js(&self) -> async_nats::jetstream::Context {
        jetstream(&self.nats_url()).await
    }

    /// Runs the collector in-process until the consumer is idle.
    pub async fn collect(&self) -> jetscale::pipeline::RunReport {
        collect_until_idle(&self.settings).await
    }

    /// Publishes `devices × count` simulated messages; the report holds every point.
    pub async fn simulate(&self, devices: u32, count: u64) -> jetscale::simulate::Report {
        simulate(&self.nats_url(), devices, count).await
    }
}
