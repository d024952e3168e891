//! The servers of one scenario, the collector config, the collectors started on them and the
//! waits between faults.

use super::collector::{tail, Collector};
use super::publisher::{publish, Plan, Published, BIG_PAYLOADS};
use super::DRAIN_TIMEOUT;
use crate::support::{self, Nats};
use async_nats::jetstream;
use jetscale::config::{Overrides, Settings};
use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The collector's config: short ack wait, so deliveries held by a killed collector come back
/// within seconds; small batches, so a run commits several transactions between kills.
fn collector_yaml(replicas: usize, ack_policy: &str) -> String {
    format!(
        "receivers:
  nats:
    jetstream:
      ack_policy: {ack_policy}
      ack_wait: 4s
      fetch_batch: 500
      stream_settings:
        replicas: {replicas}
processors:
  batch:
    send_batch_size: 2000
    timeout: 500ms
exporters:
  postgresql:
    writers: 2
    backend: {backend}
",
        backend = support::backend()
    )
}

/// The servers of one scenario, the collector config and the logs of every collector run.
pub struct Rig {
    pub name: &'static str,
    dir: Option<tempfile::TempDir>,
    nats_url: String,
    pub db_url: String,
    config: PathBuf,
    pub settings: Settings,
    logs: Vec<PathBuf>,
}

impl Rig {
    /// Writes the config and provisions the stream and the durable consumer.
    pub async fn new(name: &'static str, nats_url: String, db_url: String, replicas: usize) -> Rig {
        Rig::acking(name, nats_url, db_url, replicas, "explicit").await
    }

    /// A rig whose collectors ack by the given `ack_policy`.
    pub async fn acking(
        name: &'static str,
        nats_url: String,
        db_url: String,
        replicas: usize,
        ack_policy: &str,
    ) -> Rig {
        let dir = support::temp_dir();
        let config = dir.path().join("collector.yaml");
        std::fs::write(&config, collector_yaml(replicas, ack_policy)).expect("write config");
        let settings = jetscale::config::load(
            &config,
            &Overrides {
                nats_url: Some(nats_url.clone()),
                database_url: Some(db_url.clone()),
                replicas: None,
            },
        )
        .expect("collector config");
        support::provision_stream(&settings).await;
        Rig {
            name,
            dir: Some(dir),
            nats_url,
            db_url,
            config,
            settings,
            logs: Vec::new(),
        }
    }

    /// A private nats-server that lets the 2 MiB message through, a fresh database, and a rig
    /// on both whose collectors ack by `ack_policy`.
    pub async fn on_one_server(name: &'static str, ack_policy: &str) -> (Nats, Rig) {
        let nats = support::nats_with(BIG_PAYLOADS).await;
        let db = support::fresh_database(&format!("faults_{name}")).await;
        let rig = Rig::acking(name, nats.server.url(), db, 1, ack_policy).await;
        (nats, rig)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("rig dir").path()
    }

    /// Starts `jetscale collect` (the real binary), logging to its own file.
    pub fn collector(&mut self, label: &str, exit_when_idle: Option<&str>) -> Collector {
        let log = self.dir().join(format!("{label}.log"));
        let out = std::fs::File::create(&log).expect("collector log");
        let err = out.try_clone().expect("collector log");
        let mut cmd = support::jetscale(&["collect"]);
        cmd.arg("--config").arg(&self.config).args([
            "--nats-url",
            &self.nats_url,
            "--database-url",
            &self.db_url,
        ]);
        if let Some(idle) = exit_when_idle {
            cmd.args(["--exit-when-idle", idle]);
        }
        cmd.env("RUST_LOG", "info,async_nats=warn,tokio_postgres=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("start the jetscale binary");
        self.logs.push(log.clone());
        Collector {
            label: label.to_owned(),
            child,
            log,
        }
    }

    /// Publishes `plan` in the background; the handle yields what was acknowledged.
    pub fn spawn_publisher(&self, plan: Plan) -> JoinHandle<Published> {
        tokio::spawn(publish(self.settings.nats.clone(), plan))
    }

    pub async fn js(&self) -> jetstream::Context {
        let client = jetscale::receivers::nats::connect(&self.settings.nats, "faults-check")
            .await
            .expect("connect to nats");
        jetstream::new(client)
    }

    /// The consumer's (pending, unacknowledged) counts.
    pub async fn consumer_backlog(&self, js: &jetstream::Context) -> Option<(u64, usize)> {
        let stream = js.get_stream(&self.settings.stream.name).await.ok()?;
        let info = stream
            .consumer_info(&self.settings.consumer.name)
            .await
            .ok()?;
        Some((info.num_pending, info.num_ack_pending))
    }

    /// Polls `probe` every `every` until it is done (`Ok`), failing the test if one of the
    /// collectors stops or if it is not done within [`DRAIN_TIMEOUT`]; `Err` says where it
    /// stands, for that failure.
    async fn wait_until<T, F, Fut>(
        &self,
        collectors: &mut [Collector],
        when: &str,
        every: Duration,
        probe: F,
    ) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            for c in collectors.iter_mut() {
                c.assert_running(when);
            }
            let status = match probe().await {
                Ok(done) => return done,
                Err(status) => status,
            };
            assert!(
                Instant::now() < deadline,
                "[{}] {status} after {DRAIN_TIMEOUT:?}\n{}",
                self.name,
                self.log_tails(40)
            );
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until the consumer has nothing pending and nothing unacknowledged.
    pub async fn wait_drained(&self, collectors: &mut [Collector]) {
        let js = &self.js().await;
        // The last counts read: a failed read (a server restarting) keeps the one before.
        let last = &Cell::new(None);
        let when = "while draining the backlog";
        let every = Duration::from_millis(250);
        self.wait_until(collectors, when, every, || async move {
            last.set(self.consumer_backlog(js).await.or(last.get()));
            match last.get() {
                Some((0, 0)) => Ok(()),
                other => Err(format!(
                    "the consumer did not drain: (pending, unacked) = {other:?}"
                )),
            }
        })
        .await
    }

    /// Waits until the database holds at least `rows` metric rows, so a fault lands in the
    /// middle of the ingest rather than before the collector got going.
    pub async fn wait_rows(&self, rows: i64, collectors: &mut [Collector]) -> i64 {
        let when = "while waiting for rows";
        let every = Duration::from_millis(20);
        self.wait_until(collectors, when, every, || async move {
            let stored = self.stored_count().await;
            if stored >= rows {
                Ok(stored)
            } else {
                Err(format!("only {stored} of {rows} rows"))
            }
        })
        .await
    }

    /// The final run: `jetscale collect --exit-when-idle 2s` must finish what is left and
    /// exit 0.
    pub async fn final_run(&mut self) {
        let mut last = self.collector("final", Some("2s"));
        let what = format!("[{}] the final collector run failed", self.name);
        let summary = last.exits_cleanly(DRAIN_TIMEOUT, &what).await;
        eprintln!("[{}] final run: {summary}", self.name);
    }

    /// How every scenario ends: the publisher done, the backlog drained by the `running`
    /// collectors and each stopped cleanly (with none running, the final run alone drains
    /// it), a final run, and the checks. Returns what was published.
    pub async fn finish(
        &mut self,
        publisher: JoinHandle<Published>,
        running: &mut [Collector],
    ) -> Published {
        let published = publisher.await.expect("publisher");
        if !running.is_empty() {
            self.wait_drained(running).await;
            for c in running {
                c.sigterm().await;
            }
        }
        self.final_run().await;
        self.verify(&published).await;
        published
    }

    /// The end of every collector log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let _ = writeln!(out, "--- {} ---\n{}", log.display(), tail(log, lines));
        }
        out
    }

    /// The collector logs so far.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// Counts what the database holds now (for progress lines); -1 while it can not answer.
    pub async fn stored_count(&self) -> i64 {
        match tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
                    .query_one("SELECT count(*) FROM iot_metrics", &[])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(-1)
            }
            Err(_) => -1,
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let keep = std::env::var("JETSCALE_FAULTS_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
        if keep || std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("[{}] logs kept in {}", self.name, path.display());
            }
        }
    }
}
