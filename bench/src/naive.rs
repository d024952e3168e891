//! The naive consumer jetscale is compared with: `bench/naive_consumer.py`, nats-py and
//! psycopg's `executemany`.

use anyhow::{bail, Context, Result};
use std::path::Path;

pub(crate) async fn naive_consumer(nats_url: &str, db_url: &str, count: u64) -> Result<f64> {
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
