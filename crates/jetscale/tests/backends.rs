//! `exporters.postgresql.backend` against real clusters: TimescaleDB when the server preloads
//! it, the native fallback when it is installed but not preloaded (over a connection that
//! never saw the FATAL answer), a clear error when `timescaledb` is asked for and cannot be
//! had, and `postgresql` never touching the extension. The case where TimescaleDB is not
//! installed at all is decided by the same code from `pg_available_extensions` and is
//! unit-tested in `schema/backend.rs`: this machine has TimescaleDB installed, and PostgreSQL
//! 15 cannot hide an installed extension from one cluster.
//!
//! These tests need TimescaleDB installed into the PostgreSQL tree (`scripts/bootstrap.sh`
//! builds it from the vendored source): they fail, saying so, when it is not and the source is
//! there, and are skipped with a notice when neither is (the product runs without it).

use crate::support;
use jetscale::config::{BackendChoice, Settings};
use jetscale::dev::{PostgresCluster, PostgresOptions};
use jetscale::exporters::postgres::maintenance;
use jetscale::exporters::postgres::query::SEED_ANOMALY_SQL;
use jetscale::exporters::postgres::schema::{self, Backend};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::OnceCell;

static PRELOADED: OnceCell<PostgresCluster> = OnceCell::const_new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether TimescaleDB is installed, asked of the ordinary test cluster. When it is not, the
/// test fails if `scripts/bootstrap.sh` could have installed it (the vendored source is
/// there), and is skipped, saying so on stderr, if it could not: the README's commands must
/// keep working on a machine with neither.
async fn timescaledb_installed() -> bool {
    let db = support::postgres()
        .await
        .connect("postgres")
        .await
        .expect("connect to the test cluster");
    let available = db
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await
        .expect("pg_available_extensions")
        .is_some();
    if available {
        return true;
    }
    let archive = std::env::var_os("JETSCALE_TIMESCALEDB_ARCHIVE").map_or_else(
        || support::workspace_root().join("../shared/vendor/timescaledb-2.28.3.tar.gz"),
        PathBuf::from,
    );
    assert!(
        !archive.exists(),
        "TimescaleDB is not installed into this PostgreSQL, but its source is at {}: run scripts/bootstrap.sh (it builds and installs it)",
        archive.display()
    );
    eprintln!(
        "SKIPPED: TimescaleDB is not installed and {} is absent, so the backend tests cannot run here",
        archive.display()
    );
    false
}

/// A fresh database on a private cluster started with `shared_preload_libraries=timescaledb`,
/// shared by this binary's tests; `None` when TimescaleDB cannot be had here.
pub(crate) async fn preloaded_database(label: &str) -> Option<String> {
    if !timescaledb_installed().await {
        return None;
    }
    let pg = PRELOADED
        .get_or_init(|| async {
            let dir = support::temp_dir().keep();
            PostgresCluster::start_preloading(
                PostgresOptions {
                    dir: dir.join("pg"),
                    port: None,
                },
                &["timescaledb"],
            )
            .await
            .expect("a private PostgreSQL cluster preloading timescaledb must start")
        })
        .await;
    let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
    let url = pg
        .create_database(&format!("ts_{label}_{}_{n}", std::process::id()))
        .await
        .expect("create database");
    Some(url)
}

/// A fresh database on the ordinary test cluster, which has TimescaleDB installed but does not
/// preload it; `None` when TimescaleDB cannot be had here.
async fn not_preloaded_database(label: &str) -> Option<String> {
    if !timescaledb_installed().await {
        return None;
    }
    Some(support::fresh_database(label).await)
}

fn settings(nats_url: &str, db_url: &str, backend: BackendChoice) -> Settings {
    let mut s = support::settings(nats_url, db_url);
    s.store.backend = backend;
    s
}

/// `jetscale setup` with `exporters.postgresql.backend` set in a config file.
fn setup(dir: &Path, nats_url: &str, db_url: &str, backend: &str) -> Output {
    let config = dir.join(format!("backend-{backend}.yaml"));
    std::fs::write(
        &config,
        format!("exporters:\n  postgresql:\n    backend: {backend}\n"),
    )
    .expect("write config");
    Command::new(support::binary())
        .args(["setup", "--config"])
        .arg(&config)
        .args(["--nats-url", nats_url, "--database-url", db_url])
        .output()
        .expect("run jetscale setup")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The extension absent from the database and the points table range-partitioned.
async fn assert_native(db: &tokio_postgres::Client) {
    assert!(!extension_created(db).await);
    let kind: String = db
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'iot_metrics_points'::regclass",
            &[],
        )
        .await
        .expect("points table")
        .get(0);
    assert_eq!(kind, "p", "range-partitioned");
}

async fn extension_created(db: &tokio_postgres::Client) -> bool {
    db.query_opt(
        "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
        &[],
    )
    .await
    .expect("pg_extension")
    .is_some()
}

/// A small fleet published and collected; returns the rows the IoT design's anomaly query gave.
async fn collect_a_few_rows(settings: &Settings, db: &tokio_postgres::Client) -> usize {
    let sent = support::simulate(&settings.nats.url, 20, 3).await;
    assert_eq!(sent.acked, 60);
    let report = support::collect_until_idle(settings).await;
    assert_eq!((report.messages, report.rows), (60, 180));
    support::assert_stored_as_sent(db, &[&sent]).await;
    db.query(SEED_ANOMALY_SQL.trim_end_matches(';'), &[])
        .await
        .expect("the IoT design's anomaly query runs")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_timescaledb_gets_hypertables_and_a_continuous_aggregate() {
    let nats = support::nats().await;
    let Some(db_url) = preloaded_database("auto").await else {
        return;
    };
    let dir = support::temp_dir();
    let out = setup(dir.path(), &nats.server.url(), &db_url, "auto");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("on TimescaleDB 2."), "{stdout}");
    assert!(
        stdout.contains("created the timescaledb extension"),
        "{stdout}"
    );

    let db = support::db(&db_url).await;
    let hypertables: Vec<String> = db
        .query(
            "SELECT hypertable_name::text FROM timescaledb_information.hypertables ORDER BY 1",
            &[],
        )
        .await
        .expect("hypertables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        hypertables,
        [
            "iot_metrics_points",
            "telemetry_distributions",
            "telemetry_logs",
            "telemetry_spans"
        ]
    );
    let aggregate: String = db
        .query_one(
            "SELECT view_name::text FROM timescaledb_information.continuous_aggregates",
            &[],
        )
        .await
        .expect("one continuous aggregate")
        .get(0);
    assert_eq!(aggregate, "iot_metrics_points_hourly");

    let settings = settings(&nats.server.url(), &db_url, BackendChoice::Auto);
    let anomalies = collect_a_few_rows(&settings, &db).await;
    let hot: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM iot_metrics WHERE metric_name = 'device.temperature'
             AND time > now() - INTERVAL '1 hour' GROUP BY device_id, location HAVING avg(value) > 35.0) t",
            &[],
        )
        .await
        .expect("by hand")
        .get(0);
    assert_eq!(anomalies as i64, hot);
    // Real-time aggregation: the open hour is in the rollup before any refresh ran.
    let rolled: i64 = db
        .query_one(
            "SELECT sum(sample_count)::int8 FROM iot_metrics_hourly",
            &[],
        )
        .await
        .expect("hourly rollup")
        .get(0);
    assert_eq!(rolled, 180);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_but_not_preloaded_falls_back_to_native_and_says_how_to_enable() {
    let nats = support::nats().await;
    let Some(db_url) = not_preloaded_database("fallback").await else {
        return;
    };
    let dir = support::temp_dir();
    let out = setup(dir.path(), &nats.server.url(), &db_url, "auto");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("on PostgreSQL (native partitions)"),
        "{stdout}"
    );
    for report in [&stdout, &stderr] {
        assert!(report.contains("installed but not preloaded"), "{report}");
        assert!(
            report.contains("shared_preload_libraries = 'timescaledb'"),
            "{report}"
        );
        assert!(report.contains("backend: postgresql"), "{report}");
    }

    let db = support::db(&db_url).await;
    assert_native(&db).await;
    // The collector migrates again at start, keeps the native tables, and writes.
    let settings = settings(&nats.server.url(), &db_url, BackendChoice::Auto);
    collect_a_few_rows(&settings, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescaledb_backend_that_cannot_be_had_is_a_clear_error() {
    let nats = support::nats().await;
    let Some(db_url) = not_preloaded_database("refused").await else {
        return;
    };
    let dir = support::temp_dir();
    let out = setup(dir.path(), &nats.server.url(), &db_url, "timescaledb");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("backend is timescaledb"), "{stderr}");
    assert!(stderr.contains("not preloaded"), "{stderr}");
    assert!(
        stderr.contains("shared_preload_libraries = 'timescaledb'"),
        "{stderr}"
    );
    assert!(!stderr.contains("connection closed"), "{stderr}");

    // Nothing was made on the way to the error.
    let db = support::db(&db_url).await;
    assert!(!extension_created(&db).await);
    let made = db
        .query_one("SELECT to_regclass('iot_metrics') IS NOT NULL", &[])
        .await
        .expect("to_regclass")
        .get::<_, bool>(0);
    assert!(!made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_backend_never_creates_the_extension_on_a_preloaded_server() {
    let Some(db_url) = preloaded_database("native").await else {
        return;
    };
    let settings = settings("nats://127.0.0.1:1", &db_url, BackendChoice::Postgresql);
    let mut admin = jetscale::exporters::postgres::connect(&settings.store)
        .await
        .expect("connect");
    let report = schema::migrate(&mut admin, &settings.store)
        .await
        .expect("migrate");
    assert_eq!(report.backend, Some(Backend::Native));
    assert!(
        report.backend_reason.contains("postgresql"),
        "{}",
        report.backend_reason
    );
    let db = support::db(&db_url).await;
    assert_native(&db).await;
    // Asking for TimescaleDB now, on the schema made natively, is refused with what to do.
    let mut asked = settings.clone();
    asked.store.backend = BackendChoice::Timescaledb;
    let err = schema::migrate(&mut admin, &asked.store)
        .await
        .expect_err("a native schema is not converted")
        .to_string();
    assert!(err.contains("native PostgreSQL partitioning"), "{err}");
    // And `auto` keeps it native rather than creating the extension over native tables.
    asked.store.backend = BackendChoice::Auto;
    let report = schema::migrate(&mut admin, &asked.store)
        .await
        .expect("migrate with auto");
    assert_eq!(report.backend, Some(Backend::Native));
    assert!(
        report.backend_reason.contains("jetscale_schema records it"),
        "{}",
        report.backend_reason
    );
    assert!(!extension_created(&db).await);
}

/// TimescaleDB's retention jobs run in background workers, which were seen failing on every
/// run on one build: the owner's upkeep drops expired chunks itself, so raw data never
/// outlives the retention because of the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upkeep_drops_expired_chunks_on_timescaledb() {
    let nats = support::nats().await;
    let Some(db_url) = preloaded_database("retention").await else {
        return;
    };
    let dir = support::temp_dir();
    let out = setup(dir.path(), &nats.server.url(), &db_url, "timescaledb");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = settings(&nats.server.url(), &db_url, BackendChoice::Timescaledb);
    let db = support::db(&db_url).await;
    db.batch_execute(
        "INSERT INTO telemetry_logs (time, service, severity_number, message) VALUES
             (now() - interval '10 days', 'svc', 9, 'expired'),
             (now() - interval '1 hour', 'svc', 9, 'kept')",
    )
    .await
    .expect("insert logs");
    let backend = schema::detect_backend(&db, &s.store)
        .await
        .expect("the backend setup chose");
    assert!(matches!(backend, Backend::Timescale { .. }), "{backend}");
    let names = schema::RelationNames::new(&s.store);
    let upkeep = maintenance::run_once(&db, &names, &s.store, &backend, s.limits.max_future)
        .await
        .expect("upkeep as the owner");
    assert!(upkeep.partitions_dropped >= 1, "{upkeep:?}");
    let left = support::texts(&db, "SELECT message FROM telemetry_logs ORDER BY time", &[]).await;
    assert_eq!(left, ["kept"]);
}
