//! `--backends`: the drain (and, unless `--skip-live`, the live capacity) per storage backend,
//! layout and `direct_compress` setting in one run, with a results table per backend (issue 20).
//!
//! Each backend gets its own private stack: plain PostgreSQL, or PostgreSQL with TimescaleDB
//! preloaded. The stream is filled once per stack and every case drains all of it with a new
//! durable consumer, into its own database, so the cases of one backend read the same
//! messages.

use crate::collector::{index_on_close, jetscale_drain, live_step};
use crate::procfs::ServerPids;
use crate::publish::prefill;
use crate::settings;
use anyhow::{bail, Context, Result};
use jetscale::dev::PostgresCluster;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// The storage engines `--backends` accepts, as `exporters.postgresql.backend` spells them.
pub(crate) const BACKENDS: [&str; 2] = ["postgresql", "timescaledb"];

/// One drained configuration.
#[derive(Debug, Clone)]
struct Case {
    layout: String,
    direct_compress: bool,
}

impl Case {
    fn name(&self) -> String {
        if self.direct_compress {
            format!("{} + direct_compress", self.layout)
        } else {
            self.layout.clone()
        }
    }
    fn database(&self) -> String {
        let dc = if self.direct_compress { "_dc" } else { "" };
        format!("drain_{}{dc}", self.layout)
    }
}

/// What the matrix run needs from the command line.
pub(crate) struct MatrixOptions<'a> {
    pub(crate) backends: &'a [String],
    pub(crate) layouts: &'a [String],
    pub(crate) messages: u64,
    pub(crate) publishers: u32,
    pub(crate) ack_policy: &'a str,
    pub(crate) live_rates: Option<&'a [u64]>,
    pub(crate) live_seconds: u64,
    pub(crate) live_fire_and_forget: bool,
}

/// Runs every case on every backend; returns the results, keyed by backend.
pub(crate) async fn run(dir: &Path, machine: &str, o: &MatrixOptions<'_>) -> Result<Value> {
    // Loudly, before anything is measured: a TimescaleDB run on a machine without the
    // extension would otherwise fail only after the PostgreSQL cases had run.
    if o.backends.iter().any(|b| b == "timescaledb") && !jetscale::dev::timescaledb_installed() {
        bail!(
            "--backends timescaledb: TimescaleDB is not installed beside the PostgreSQL binaries \
             (no lib/timescaledb.so); build it with scripts/timescaledb.sh or drop it from --backends"
        );
    }
    let mut all = serde_json::Map::new();
    for backend in o.backends {
        let cases = cases(backend, o.layouts);
        let rows = run_backend(dir, backend, &cases, o).await?;
        print_table(machine, backend, o, &rows);
        all.insert(backend.clone(), Value::Array(rows));
    }
    Ok(Value::Object(all))
}

/// `direct_compress` is a TimescaleDB setting: plain PostgreSQL runs each layout once.
fn cases(backend: &str, layouts: &[String]) -> Vec<Case> {
    let compress: &[bool] = if backend == "timescaledb" {
        &[false, true]
    } else {
        &[false]
    };
    layouts
        .iter()
        .flat_map(|layout| {
            compress.iter().map(|&direct_compress| Case {
                layout: layout.clone(),
                direct_compress,
            })
        })
        .collect()
}

async fn run_backend(
    dir: &Path,
    backend: &str,
    cases: &[Case],
    o: &MatrixOptions<'_>,
) -> Result<Vec<Value>> {
    let timescaledb = backend == "timescaledb";
    let stack_dir = dir.join(format!("stack-{backend}"));
    let _ = std::fs::remove_dir_all(&stack_dir);
    std::fs::create_dir_all(&stack_dir)?;
    let stack_dir = stack_dir.canonicalize()?;
    eprintln!(
        "bench: {backend}: starting private nats-server and PostgreSQL{} under {}",
        if timescaledb {
            " with TimescaleDB preloaded"
        } else {
            ""
        },
        stack_dir.display()
    );
    let (nats, pg) = jetscale::dev::start_stack(&stack_dir, timescaledb)
        .await
        .with_context(|| format!("starting the {backend} stack"))?;
    let servers = ServerPids {
        nats_server: nats.pid(),
        postmaster: pg.pid(),
    };

    let s = settings(&nats.url(), &pg.create_database("prefill").await?)?;
    let client = jetscale::receivers::nats::connect(&s.nats, "bench").await?;
    let js = async_nats::jetstream::new(client);
    let (_, stream) = jetscale::receivers::nats::ensure_stream(&js, &s.stream).await?;
    let started = Instant::now();
    let total = prefill(&s, o.messages, o.publishers).await?;
    eprintln!(
        "bench: {backend}: pre-filled {total} messages at {:.0} msg/s",
        total as f64 / started.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for case in cases {
        // A new durable consumer starts at the stream's first message (deliver all).
        let _ = stream.delete_consumer("jetscale").await;
        let config = write_config(&stack_dir, backend, case, o.ack_policy, "drain")?;
        let db_name = case.database();
        let db = pg.create_database(&db_name).await?;
        let (secs, rss_kib, cpu) =
            jetscale_drain(&nats.url(), &db, &stream, total, Some(&config), servers).await?;
        let stored = check_storage(&pg, &db_name, timescaledb, case, total * 3).await?;
        // Plain PostgreSQL's series layout defers the points index to when a partition
        // closes; charge it here, as on TimescaleDB the index is kept up during the COPY.
        let index_secs = if !timescaledb && case.layout == "series" {
            index_on_close(&nats.url(), &db).await?
        } else {
            0.0
        };
        let points = (total * 3) as f64;
        let per_message_us = |cpu_secs: f64| cpu_secs * 1e6 / total as f64;
        let row = json!({
            "case": case.name(),
            "layout": case.layout,
            "direct_compress": case.direct_compress,
            "drain_points_per_s": points / secs,
            "drain_msgs_per_s": total as f64 / secs,
            "index_on_close_secs": index_secs,
            "drain_with_index_points_per_s": points / (secs + index_secs),
            "peak_rss_mib": rss_kib as f64 / 1024.0,
            "cpu_us_per_message": {
                "collector": per_message_us(cpu.collector),
                "nats_server": per_message_us(cpu.nats_server),
                "postgres": per_message_us(cpu.postgres),
            },
            "database_mib": stored.database_mib,
            "compressed_chunks": stored.compressed_chunks,
            "chunks": stored.chunks,
            "rows_per_compressed_batch": stored.rows_per_batch,
        });
        eprintln!("bench: {backend}, {}: {row}", case.name());
        rows.push(row);
    }

    // The live step purges the stream, so it comes after every drain of this stack.
    if let Some(rates) = o.live_rates {
        for (case, row) in cases.iter().zip(rows.iter_mut()) {
            let config = write_config(&stack_dir, backend, case, o.ack_policy, "live")?;
            let mut best = 0u64;
            let mut steps = Vec::new();
            for &rate in rates {
                let dc = if case.direct_compress { "_dc" } else { "" };
                let db = pg
                    .create_database(&format!("live_{}{dc}_{rate}", case.layout))
                    .await?;
                let step = live_step(
                    &nats,
                    &db,
                    rate,
                    Duration::from_secs(o.live_seconds),
                    Some(&config),
                    o.live_fire_and_forget,
                )
                .await?;
                eprintln!(
                    "bench: {backend}, {}: live {rate} msg/s: achieved {:.0} msg/s, lag {} msgs, p99 {:.0} ms -> {}",
                    case.name(),
                    step.achieved,
                    step.final_lag,
                    step.p99_ms,
                    if step.ok { "ok" } else { "over capacity" }
                );
                steps.push(json!({"rate": rate, "achieved": step.achieved, "lag": step.final_lag, "p99_ms": step.p99_ms, "ok": step.ok}));
                if !step.ok {
                    break;
                }
                best = best.max(rate);
            }
            row["live_steps"] = json!(steps);
            row["live_capacity_devices_at_10s"] = json!(best * 10);
        }
    }
    Ok(rows)
}

/// The collector's config for one case: backend, layout and `direct_compress` spelled out,
/// so `backend: timescaledb` makes the collector fail rather than fall back to native.
fn write_config(
    dir: &Path,
    backend: &str,
    case: &Case,
    ack_policy: &str,
    step: &str,
) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("{step}-{}.yaml", case.database()));
    std::fs::write(
        &path,
        format!(
            "receivers:\n  nats:\n    jetstream:\n      ack_policy: {ack_policy}\n\
             exporters:\n  postgresql:\n    backend: {backend}\n    layout: {}\n    direct_compress: {}\n",
            case.layout, case.direct_compress
        ),
    )?;
    Ok(path)
}

struct Stored {
    database_mib: f64,
    chunks: i64,
    compressed_chunks: i64,
    /// Rows per compressed batch: how much a compressed segment holds after the drain.
    rows_per_batch: Option<f64>,
}

/// Mean rows per batch in the points hypertable's compressed chunks, from TimescaleDB's
/// catalog and each batch's `_ts_meta_count`; `None` when there are none.
async fn rows_per_compressed_batch(
    client: &tokio_postgres::Client,
    layout: &str,
) -> Result<Option<f64>> {
    let table = if layout == "series" {
        "iot_metrics_points"
    } else {
        "iot_metrics"
    };
    let relations = client
        .query(
            "SELECT format('%I.%I', cc.schema_name, cc.table_name) \
             FROM _timescaledb_catalog.chunk c \
             JOIN _timescaledb_catalog.chunk cc ON cc.id = c.compressed_chunk_id \
             JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id \
             WHERE h.table_name = $1",
            &[&table],
        )
        .await
        .context("reading TimescaleDB's chunk catalog")?;
    let (mut batches, mut rows) = (0i64, 0i64);
    for relation in relations {
        let name: String = relation.get(0);
        let row = client
            .query_one(
                &format!("SELECT count(*), coalesce(sum(_ts_meta_count), 0)::int8 FROM {name}"),
                &[],
            )
            .await
            .with_context(|| format!("counting the batches of {name}"))?;
        batches += row.get::<_, i64>(0);
        rows += row.get::<_, i64>(1);
    }
    Ok((batches > 0).then(|| rows as f64 / batches as f64))
}

/// Checks that the drain stored every point in the engine asked for, and reads what it took.
async fn check_storage(
    pg: &PostgresCluster,
    db: &str,
    timescaledb: bool,
    case: &Case,
    expected_points: u64,
) -> Result<Stored> {
    let client = pg.connect(db).await?;
    // `iot_metrics` is the table (wide) or the view over points and series (series).
    let rows: i64 = client
        .query_one("SELECT count(*) FROM iot_metrics", &[])
        .await?
        .get(0);
    if u64::try_from(rows).ok() != Some(expected_points) {
        bail!(
            "{db}: {rows} rows in iot_metrics after the drain, {expected_points} expected: \
             the collector lost or duplicated points (run with BENCH_COLLECTOR_LOG=info)"
        );
    }
    let database_mib: f64 = client
        .query_one(
            "SELECT pg_database_size(current_database())::float8 / 1048576",
            &[],
        )
        .await?
        .get(0);
    let (chunks, compressed_chunks) = if timescaledb {
        let table = if case.layout == "series" {
            "iot_metrics_points"
        } else {
            "iot_metrics"
        };
        let row = client
            .query_opt(
                "SELECT count(*), count(*) FILTER (WHERE is_compressed) \
                 FROM timescaledb_information.chunks WHERE hypertable_name = $1",
                &[&table],
            )
            .await
            .context("the TimescaleDB drain left no timescaledb_information.chunks")?
            .context("no chunk counts")?;
        let chunks: i64 = row.get(0);
        if chunks == 0 {
            bail!("{db}: {table} is not a hypertable with chunks: the collector did not use TimescaleDB");
        }
        (chunks, row.get(1))
    } else {
        (0, 0)
    };
    let rows_per_batch = if compressed_chunks > 0 {
        rows_per_compressed_batch(&client, &case.layout).await?
    } else {
        None
    };
    Ok(Stored {
        database_mib,
        chunks,
        compressed_chunks,
        rows_per_batch,
    })
}

fn print_table(machine: &str, backend: &str, o: &MatrixOptions<'_>, rows: &[Value]) {
    let f = |row: &Value, key: &str| row[key].as_f64().unwrap_or(f64::NAN);
    println!();
    println!(
        "jetscale drain on {backend} ({machine}; {} messages x 3 points)",
        o.messages
    );
    println!(
        "{:<26} {:>11} {:>9} {:>11} {:>8} {:>17} {:>8} {:>9} {:>9} {:>8}",
        "case",
        "points/s",
        "index s",
        "incl. index",
        "RSS MiB",
        "CPU/msg C/N/PG µs",
        "DB MiB",
        "chunks",
        "rows/batch",
        "live dev"
    );
    for row in rows {
        let cpu = &row["cpu_us_per_message"];
        let c = |k: &str| cpu[k].as_f64().unwrap_or(f64::NAN);
        let chunks = format!(
            "{}/{}",
            row["compressed_chunks"].as_i64().unwrap_or(0),
            row["chunks"].as_i64().unwrap_or(0)
        );
        let live = row
            .get("live_capacity_devices_at_10s")
            .map_or_else(|| "-".to_owned(), Value::to_string);
        println!(
            "{:<26} {:>11.0} {:>9.2} {:>11.0} {:>8.1} {:>17} {:>8.0} {:>9} {:>9} {:>8}",
            row["case"].as_str().unwrap_or("?"),
            f(row, "drain_points_per_s"),
            f(row, "index_on_close_secs"),
            f(row, "drain_with_index_points_per_s"),
            f(row, "peak_rss_mib"),
            format!(
                "{:.1}/{:.1}/{:.1}",
                c("collector"),
                c("nats_server"),
                c("postgres")
            ),
            f(row, "database_mib"),
            chunks,
            row["rows_per_compressed_batch"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
            live
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts() -> Vec<String> {
        vec!["series".to_owned(), "wide".to_owned()]
    }

    #[test]
    fn direct_compress_is_tried_on_timescaledb_only() {
        let names = |backend| {
            cases(backend, &layouts())
                .iter()
                .map(Case::name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("postgresql"), ["series", "wide"]);
        assert_eq!(
            names("timescaledb"),
            [
                "series",
                "series + direct_compress",
                "wide",
                "wide + direct_compress"
            ]
        );
    }

    #[test]
    fn each_case_config_names_its_backend_layout_and_direct_compress() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let case = Case {
            layout: "wide".to_owned(),
            direct_compress: true,
        };
        let path = write_config(dir.path(), "timescaledb", &case, "all", "drain")?;
        let s = jetscale::config::load(
            &path,
            &jetscale::config::Overrides {
                nats_url: Some("nats://127.0.0.1:4222".to_owned()),
                database_url: Some("postgres://localhost/bench".to_owned()),
                replicas: Some(1),
            },
        )?;
        assert_eq!(
            s.store.backend,
            jetscale::config::BackendChoice::Timescaledb
        );
        assert_eq!(s.store.layout, jetscale::config::MetricsLayout::Wide);
        assert!(s.store.direct_compress);
        Ok(())
    }
}
