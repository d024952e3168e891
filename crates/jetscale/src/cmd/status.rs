//! `jetscale status`: the pipeline at a glance, once, as JSON, or refreshed.

use super::Global;
use anyhow::Context;
use jetscale::config::units::parse_duration;
use jetscale::status;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object (per refresh with --watch, one per line) for scripts.
    #[arg(long)]
    pub json: bool,
    /// Refresh every INTERVAL (default 2s) until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<String>,
    /// The NATS user is the collector's least-privilege one (`jetscale nats-config`): read
    /// only what it may (no consumer list, no lag).
    #[arg(long)]
    pub collector_user: bool,
}

pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let settings = global.settings()?;
    let every = args
        .watch
        .as_deref()
        .map(|w| parse_duration(w).map_err(|e| anyhow::anyhow!("--watch {w}: {e}")))
        .transpose()?;
    let options = status::StatusOptions {
        collector_user: args.collector_user,
    };
    loop {
        let snapshot = status::gather(&settings, options).await;
        let mut stdout = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer(&mut stdout, &snapshot).context("writing the status")?;
            writeln!(stdout)?;
        } else {
            if every.is_some() {
                // Clear the screen and go home: the new snapshot replaces the old one.
                write!(stdout, "\x1b[2J\x1b[H")?;
            }
            write!(stdout, "{}", status::render(&snapshot))?;
        }
        stdout.flush()?;
        drop(stdout);
        let Some(every) = every else {
            // Scripts learn from the exit code whether everything could be read.
            if snapshot.stream.is_none() || snapshot.database.is_none() {
                anyhow::bail!(
                    "status incomplete: NATS or the database could not be read (its notes say why)"
                );
            }
            return Ok(());
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // Nothing to finish: a snapshot only reads.
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
