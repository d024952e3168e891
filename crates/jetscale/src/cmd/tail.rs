//! `jetscale tail`: follow the stream, one line per record.

use super::Global;
use jetscale::config::units::parse_duration;
use jetscale::tail::{self, Start, Style, TailOptions};
use std::io::IsTerminal;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when standard output is a terminal and NO_COLOR is not set.
    Auto,
    Always,
    Never,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// NATS subject filter, `*` and `>` wildcards allowed (e.g. telemetry.logs.engine.error,
    /// telemetry.spans.worker.>).
    #[arg(long, default_value = jetscale_model::subject::ALL)]
    pub subject: String,
    /// Replay history first, from this long ago (10m, 2h, 7d) or from an RFC 3339 time.
    #[arg(long, conflicts_with = "last")]
    pub since: Option<String>,
    /// Replay the last N messages matching the filter first (a message may hold many records).
    #[arg(long)]
    pub last: Option<u64>,
    /// One JSON object per record (JSON lines) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Colour the text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Exit after printing this many lines (records and rejected messages).
    #[arg(long)]
    pub count: Option<u64>,
}

impl Args {
    fn start(&self) -> anyhow::Result<Start> {
        if let Some(n) = self.last {
            return Ok(Start::Last(n));
        }
        let Some(since) = &self.since else {
            return Ok(Start::New);
        };
        if let Some(ns) = jetscale_model::flat::rfc3339_to_unix_nanos(since.trim()) {
            return Ok(Start::Since(ns));
        }
        let ago = parse_duration(since).map_err(|e| {
            anyhow::anyhow!(
                "--since {since}: {e}, or an RFC 3339 time such as 2024-01-15T10:30:00Z"
            )
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let start = now.saturating_sub(i128::try_from(ago.as_nanos()).unwrap_or(i128::MAX));
        Ok(Start::Since(i64::try_from(start.max(1)).unwrap_or(1)))
    }

    fn style(&self) -> Style {
        if self.json {
            return Style::Json;
        }
        let colour = match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
            }
        };
        if colour {
            Style::Color
        } else {
            Style::Plain
        }
    }
}

pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let interrupted = interrupted();
    let settings = global.settings()?;
    let options = TailOptions {
        subject: args.subject.clone(),
        start: args.start()?,
        style: args.style(),
        count: args.count,
    };
    let stdout = std::io::stdout().lock();
    let report = tail::run(&settings, &options, stdout, interrupted).await?;
    tracing::debug!(?report, "tail finished");
    Ok(())
}

/// Turns true on Ctrl-C or SIGTERM: the tail stops, removes its consumer and exits 0. The
/// handlers are installed before this returns, so a signal right after start is not missed.
fn interrupted() -> watch::Receiver<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    tokio::spawn(async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot listen for signals; Ctrl-C ends the tail abruptly");
                std::future::pending::<()>().await;
            }
        }
        let _ = tx.send(true);
    });
    rx
}
