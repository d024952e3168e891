//! The collector's own telemetry, checked against real processes: `/metrics` agrees with the
//! database, a real Prometheus scrapes it and every query of the Grafana dashboard in
//! `dashboards/` returns data, `promtool check metrics` accepts the text, and `/health/ready`
//! follows PostgreSQL and nats-server going away and coming back.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool`); fails loudly without it.

use crate::support;
use jetscale::config::Settings;
use jetscale::dev::free_port;
use jetscale::pipeline::{self, Counters, RunOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A GET over a fresh connection: `(status, body)`; `None` when nothing answers.
async fn http_get(address: SocketAddr, path_and_query: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// The body of a chunked response.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Waits (up to `within`) until `check` holds; fails the test with `what` otherwise.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 60 s) until `/health/ready` answers `status` with a body containing `says`.
async fn wait_ready(address: SocketAddr, what: &str, status: u16, says: &str) {
    wait_for(what, Duration::from_secs(60), || async {
        matches!(http_get(address, "/health/ready").await, Some((s, body)) if s == status && body.contains(says))
    })
    .await;
}

/// Asks the in-process collector to stop, and fails the test unless it stopped cleanly.
async fn stop_collector(stop: tokio::sync::watch::Sender<bool>, collector: Collector) {
    let _ = stop.send(true);
    collector
        .await
        .expect("collector task")
        .expect("collector ran without error");
}

type Collector = tokio::task::JoinHandle<Result<pipeline::RunReport, pipeline::PipelineError>>;

/// `/metrics` as `name{labels}` → value, the labels as written.
async fn scrape(address: SocketAddr) -> BTreeMap<String, f64> {
    let (status, text) = http_get(address, "/metrics")
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of `name` (all label sets).
fn total(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// Starts the collector in-process on `settings` with a fresh set of counters.
fn spawn_collector(
    settings: &Settings,
) -> (Arc<Counters>, tokio::sync::watch::Sender<bool>, Collector) {
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let settings = settings.clone();
    let run_counters = counters.clone();
    let task = tokio::spawn(async move {
        pipeline::run(&settings, &RunOptions::default(), run_counters, stopped).await
    });
    (counters, stop, task)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A private Prometheus scraping `target` every second; killed when dropped.
struct Prometheus {
    address: SocketAddr,
    _process: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = support::temp_dir();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: jetscale\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let address = loopback(free_port());
        let process = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus must start (apt-get install -y prometheus)");
        wait_for(
            "Prometheus to be ready",
            Duration::from_secs(60),
            || async { matches!(http_get(address, "/-/ready").await, Some((200, _))) },
        )
        .await;
        Prometheus {
            address,
            _process: process,
            _dir: dir,
        }
    }

    /// The instant vector `expr` evaluates to now.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http_get(self.address, &path)
            .await
            .expect("Prometheus answers");
        assert_eq!(status, 200, "{expr}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON from Prometheus");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of the dashboard, with Grafana's variables as a test run sets them.
fn dashboard_queries(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("dashboard JSON");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push(
                expr.replace("$__rate_interval", "15s")
                    .replace("$job", ".*"),
            );
        }
    }
    assert!(queries.len() >= 10, "the dashboard has its panels");
    queries
}

/// Runs `promtool check metrics` on `text`; fails the test with its findings.
async fn promtool_check_metrics(text: &str) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must run (apt-get install -y prometheus)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_database_and_feed_every_dashboard_query() {
    let metrics_address = loopback(free_port());
    let stack = support::stack_with("observability", |s| {
        s.telemetry.metrics_address = Some(metrics_address);
    })
    .await;
    let (counters, stop, collector) = spawn_collector(&stack.settings);
    wait_ready(metrics_address, "the collector to be ready", 200, "").await;
    let prometheus = Prometheus::start(metrics_address).await;
    wait_for("a first scrape", Duration::from_secs(30), || async {
        !prometheus
            .query("up{job=\"jetscale\"} == 1")
            .await
            .is_empty()
    })
    .await;

    // Published while Prometheus watches, so every rate has something to show.
    const POISON: u64 = 7;
    let report = stack.simulate(4, 50).await;
    let js = stack.js().await;
    for n in 0..POISON {
        support::publish(
            &js,
            "telemetry.metrics.broken",
            &[],
            format!("not json {n}"),
        )
        .await;
    }
    let messages = report.acked + POISON;
    wait_for(
        "every message committed",
        Duration::from_secs(120),
        || async { counters.snapshot().messages >= messages },
    )
    .await;
    // Enough scrapes after the commits for every rate and quantile to cover them.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let db = stack.db().await;
    let metrics = scrape(metrics_address).await;
    let stored = support::count_rows(&db, "iot_metrics").await as f64;
    let dead = support::count_rows(&db, "jetscale_dead_letters").await as f64;
    assert_eq!(dead, POISON as f64);
    assert_eq!(
        total(&metrics, "jetscale_receiver_accepted_metric_points_total"),
        stored,
        "records accepted = rows stored"
    );
    assert_eq!(
        total(&metrics, "jetscale_exporter_sent_rows_total"),
        stored,
        "rows written = rows stored (only metric rows were sent)"
    );
    assert_eq!(
        total(&metrics, "jetscale_receiver_refused_messages_total"),
        dead,
        "dead letters = rows in the dead-letter table"
    );
    assert_eq!(
        metrics.get(
            "jetscale_receiver_refused_messages_total{receiver=\"nats\",reason=\"unknown_format\"}"
        ),
        Some(&dead),
        "{metrics:#?}"
    );
    assert_eq!(
        total(&metrics, "jetscale_receiver_accepted_messages_total"),
        report.acked as f64
    );
    assert!(total(&metrics, "jetscale_receiver_received_messages_total") >= messages as f64);
    assert_eq!(
        total(&metrics, "jetscale_exporter_commit_latency_seconds_count"),
        messages as f64
    );
    assert!(total(&metrics, "process_resident_memory_bytes") > 0.0);

    let (_, text) = http_get(metrics_address, "/metrics")
        .await
        .expect("/metrics");
    promtool_check_metrics(&text).await;

    let queries =
        dashboard_queries(&support::workspace_root().join("dashboards/jetscale-pipeline.json"));
    let mut empty = Vec::new();
    for query in &queries {
        if prometheus.query(query).await.is_empty() {
            empty.push(query.clone());
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );

    stop_collector(stop, collector).await;
}

/// `/health/ready` and the lag follow PostgreSQL and nats-server going away and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_lag_follow_the_servers() {
    let mut nats = support::nats().await;
    // A cluster of its own: this test stops it.
    let (_pg_dir, mut pg) = support::own_postgres().await;
    let db_url = pg.create_database("health").await.expect("database");
    let address = loopback(free_port());
    let mut settings = support::settings(&nats.server.url(), &db_url);
    settings.telemetry.metrics_address = Some(address);
    settings.telemetry.unready_after = Duration::from_secs(1);
    support::provision_stream(&settings).await;
    let (_counters, stop, collector) = spawn_collector(&settings);
    wait_for(
        "alive as soon as it listens",
        Duration::from_secs(30),
        || async { matches!(http_get(address, "/health/live").await, Some((200, _))) },
    )
    .await;
    wait_ready(address, "ready at start", 200, "").await;
    let js = support::jetstream(&nats.server.url()).await;
    let lag = || async {
        let m = scrape(address).await;
        (
            total(&m, "jetscale_receiver_consumer_lag_messages"),
            total(&m, "jetscale_receiver_consumer_lag_seconds"),
        )
    };

    // PostgreSQL stops: commits fail, readiness goes after `unready_after`, the lag grows.
    tokio::task::block_in_place(|| pg.kill());
    for n in 0..20 {
        let reading = support::reading("dev-1", support::now_ns() + n, n as f64);
        support::publish(&js, "telemetry.metrics.dev-1", &[], reading).await;
    }
    wait_ready(
        address,
        "not ready while PostgreSQL is down",
        503,
        "database has refused commits",
    )
    .await;
    wait_for("the lag to rise", Duration::from_secs(30), || async {
        let (messages, seconds) = lag().await;
        messages >= 20.0 && seconds > 0.0
    })
    .await;
    pg.start_again().await.expect("PostgreSQL starts again");
    wait_ready(address, "ready once PostgreSQL is back", 200, "").await;
    wait_for("the lag back to zero", Duration::from_secs(30), || async {
        lag().await == (0.0, 0.0)
    })
    .await;

    // nats-server stops: not ready, saying NATS; ready again once the client reconnects.
    nats.server.stop().await;
    wait_ready(
        address,
        "not ready while NATS is down",
        503,
        "NATS is not connected",
    )
    .await;
    nats.server
        .start_again()
        .await
        .expect("nats-server starts again");
    wait_ready(address, "ready once NATS is back", 200, "").await;

    stop_collector(stop, collector).await;
}

/// A collector whose NATS user may not create consumers: when its consumer is deleted it
/// cannot bind again by itself, so the not-ready state lasts until an admin creates it.
const NO_CONSUMER_CREATE: &str = r#"
authorization {
  users = [
    {user: admin, password: admin}
    {user: collector, password: collector, permissions: {
      publish: {allow: ">", deny: ["$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>"]}
      subscribe: {allow: ">"}
    }}
  ]
}
"#;

/// `/health/ready` says the consumer is gone while it is, and is ready again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_consumer_deleted_and_created_again() {
    let nats = support::nats_with(NO_CONSUMER_CREATE).await;
    let db_url = support::fresh_database("health_consumer").await;
    let address = loopback(free_port());
    let mut admin = support::settings(&nats.server.url(), &db_url);
    admin.nats.auth.user = Some("admin".into());
    admin.nats.auth.password = Some("admin".into());
    support::provision_stream(&admin).await;
    let mut settings = admin.clone();
    settings.nats.auth.user = Some("collector".into());
    settings.nats.auth.password = Some("collector".into());
    settings.telemetry.metrics_address = Some(address);
    let (_counters, stop, collector) = spawn_collector(&settings);
    wait_ready(address, "ready at start", 200, "").await;

    let client = jetscale::receivers::nats::connect(&admin.nats, "test-admin")
        .await
        .expect("admin connects");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&admin.stream.name).await.expect("stream");
    stream
        .delete_consumer(&admin.consumer.name)
        .await
        .expect("delete the consumer");
    wait_ready(
        address,
        "not ready while the consumer is gone",
        503,
        "consumer was deleted",
    )
    .await;
    jetscale::receivers::nats::ensure_consumer(&stream, &admin.consumer)
        .await
        .expect("the admin creates the consumer again");
    wait_ready(address, "ready once the consumer is back", 200, "").await;

    stop_collector(stop, collector).await;
}

/// `--log-format json`: every line the collector writes to stderr is one JSON object, the
/// fatal error included, so an operator's log shipper never sees a line it cannot parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let nats = support::nats().await;
    let db_url = support::fresh_database("json_logs").await;
    // A setup that logs (NATS connected) and then fails (no such database): both kinds of line.
    let missing = format!("{}_missing", db_url);
    let out = support::jetscale(&[
        "--log-format",
        "json",
        "setup",
        "--nats-url",
        &nats.server.url(),
        "--database-url",
        &missing,
    ])
    .output()
    .await
    .expect("run jetscale");
    assert!(
        !out.status.success(),
        "setup against a missing database must fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    assert!(
        lines.iter().any(|v| v["level"] == "INFO"),
        "an ordinary log line: {stderr}"
    );
    assert!(
        lines.iter().any(|v| v["level"] == "ERROR"),
        "the fatal error as a JSON line: {stderr}"
    );
}
