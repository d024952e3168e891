//! Following the stream: the consumer (or subscription) the tail reads through, and the
//! printer that decodes, renders and writes what it delivers.
//!
//! The tail never touches the collector's durable consumer. It reads through an ordered,
//! ephemeral pull consumer of its own (no acknowledgements, memory storage, one replica,
//! removed when the tail exits and by the server after 30 s of inactivity anyway). On a
//! work-queue stream, where NATS forbids a second consumer over the same subjects, it follows
//! with a core NATS subscription instead (live only: history can not be replayed there
//! without consuming it).
//!
//! History:
//! - `--since`: the consumer starts at a time (`DeliverPolicy::ByStartTime`).
//! - `--last N`: the last N *messages* matching the filter. The stream knows only its first and
//!   last sequence, not where the N-th last matching message is, so the tail probes: it creates
//!   the consumer at `max(first_seq, last_seq + 1 - window)` with `window = N` and reads the
//!   consumer's `num_pending` (the server counts the matching messages from there). When the
//!   filter covers the whole stream that first probe is the answer. Otherwise, while fewer than
//!   N match and the window has not reached the start of the stream, the probe is deleted and
//!   the window grows fourfold. The consumer that is kept skips its first `num_pending - N`
//!   messages without decoding them, so exactly the last N matching messages are printed,
//!   followed by everything that arrives afterwards.

use super::{context_at, render_message, Origin, Style};
use crate::config::Settings;
use crate::decode::Incoming;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use jetscale_model::now_unix_nanos;
use std::io::Write;
use std::time::Duration;
use tokio::sync::watch;

/// Where the tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only messages that arrive from now on.
    New,
    /// Messages stored at or after this time (nanoseconds since the epoch), then live.
    Since(i64),
    /// The last N messages matching the filter, then live.
    Last(u64),
}

/// What to follow and how to print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailOptions {
    /// NATS subject filter, wildcards allowed.
    pub subject: String,
    pub start: Start,
    pub style: Style,
    /// Stop after this many lines (record and rejection lines alike).
    pub count: Option<u64>,
}

/// What a tail did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailReport {
    /// Messages decoded (skipped ones not counted).
    pub messages: u64,
    /// Lines printed.
    pub lines: u64,
    /// Messages that did not decode.
    pub rejected: u64,
    /// Messages passed over to start exactly N back (`--last`).
    pub skipped: u64,
}

/// Why the tail could not run.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Connect(#[from] crate::receivers::nats::StreamError),
    #[error("{step} failed: {detail}")]
    JetStream { step: &'static str, detail: String },
    #[error("{0}")]
    Options(String),
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

fn js_err(step: &'static str) -> impl Fn(String) -> TailError {
    move |detail| TailError::JetStream { step, detail }
}

/// Follows the stream until `count` lines are printed, the shutdown channel turns true, or
/// the output is closed (a reader such as `head` that has seen enough is not an error).
pub async fn run<W: Write>(
    settings: &Settings,
    options: &TailOptions,
    out: W,
    shutdown: watch::Receiver<bool>,
) -> Result<TailReport, TailError> {
    if options.subject.trim().is_empty() || options.subject.contains(char::is_whitespace) {
        return Err(TailError::Options(format!(
            "`{}` is not a NATS subject filter (tokens separated by dots, `*` and `>` as wildcards)",
            options.subject
        )));
    }
    if options.count == Some(0) {
        return Ok(TailReport::default());
    }
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    // Connecting and creating the consumer can wait on the server: Ctrl-C works there too.
    let source = tokio::select! {
        biased;
        _ = &mut stop => return Ok(TailReport::default()),
        source = prepare(settings, options) => source?,
    };
    let mut printer = Printer {
        settings,
        options,
        out: std::io::BufWriter::new(out),
        report: TailReport::default(),
    };
    match source {
        Source::Core(sub) => follow_core(sub, &mut printer, stop).await?,
        Source::Ordered {
            stream,
            consumer,
            skip,
        } => follow_ordered(&stream, *consumer, skip, &mut printer, stop).await?,
    }
    Ok(printer.report)
}

/// What the tail reads from.
enum Source {
    /// A core subscription (work-queue streams).
    Core(async_nats::Subscriber),
    /// The tail's ordered consumer, and how many of its first messages to pass over.
    Ordered {
        stream: Box<stream::Stream>,
        consumer: Box<consumer::Consumer<consumer::pull::OrderedConfig>>,
        skip: u64,
    },
}

async fn prepare(settings: &Settings, options: &TailOptions) -> Result<Source, TailError> {
    let client = crate::receivers::nats::connect(&settings.nats, "jetscale-tail").await?;
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(&settings.stream.name).await.map_err(|e| {
        js_err("looking up the stream")(format!(
            "stream {}: {e} (create it with `jetscale setup`)",
            settings.stream.name
        ))
    })?;
    let info = stream
        .info()
        .await
        .map_err(|e| js_err("stream info")(e.to_string()))?
        .clone();
    if info.config.retention == stream::RetentionPolicy::WorkQueue {
        if options.start != Start::New {
            return Err(TailError::Options(format!(
                "stream {} is a work queue: its history can not be read without taking it from the collector, so only live tailing works (drop --since/--last)",
                settings.stream.name
            )));
        }
        tracing::info!(
            "stream {} is a work queue: following with a core subscription",
            settings.stream.name
        );
        let sub = client
            .subscribe(options.subject.clone())
            .await
            .map_err(|e| js_err("subscribing")(e.to_string()))?;
        // The subscription is registered once the server has seen it: from then on nothing
        // published is missed.
        client
            .flush()
            .await
            .map_err(|e| js_err("subscribing")(e.to_string()))?;
        return Ok(Source::Core(sub));
    }
    let (consumer, skip) = open_consumer(&stream, &info, options).await?;
    Ok(Source::Ordered {
        stream: Box::new(stream),
        consumer: Box::new(consumer),
        skip,
    })
}

async fn follow_core<W: Write>(
    mut sub: async_nats::Subscriber,
    printer: &mut Printer<'_, W>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), TailError> {
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            next = sub.next() => {
                let Some(message) = next else { break };
                let origin = Origin {
                    subject: message.subject.as_str(),
                    stream_seq: None,
                    published_ns: now_unix_nanos(),
                };
                if printer.print(&message, &origin)? {
                    break;
                }
                if printer.flush()? {
                    break;
                }
            }
        }
    }
    let _ = sub.unsubscribe().await;
    printer.flush().map(|_| ())
}

async fn follow_ordered<W: Write>(
    stream: &stream::Stream,
    consumer: consumer::Consumer<consumer::pull::OrderedConfig>,
    mut skip: u64,
    printer: &mut Printer<'_, W>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), TailError> {
    let mut names = vec![consumer.cached_info().name.clone()];
    let result = match consumer.messages().await {
        Ok(mut messages) => {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Whether the tail is done: `count` reached or the output closed.
                let done = tokio::select! {
                    biased;
                    _ = &mut stop => break Ok(()),
                    next = messages.next() => {
                        let message = match next {
                            Some(Ok(m)) => m,
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "tail consumer");
                                continue;
                            }
                            None => break Ok(()),
                        };
                        let Ok(meta) = message.info() else { continue };
                        if names.last().map(String::as_str) != Some(meta.consumer) {
                            // The ordered consumer was recreated under a new name; remember it
                            // so it can be removed on exit.
                            names.push(meta.consumer.to_owned());
                        }
                        let pending = meta.pending;
                        if skip > 0 {
                            skip -= 1;
                            printer.report.skipped += 1;
                            continue;
                        }
                        let origin = Origin {
                            subject: message.subject.as_str(),
                            stream_seq: Some(meta.stream_sequence),
                            published_ns: i64::try_from(meta.published.unix_timestamp_nanos())
                                .unwrap_or(i64::MAX),
                        };
                        match printer.print(&message, &origin) {
                            // Caught up: show what there is now rather than when the buffer
                            // fills.
                            Ok(false) if pending == 0 => printer.flush(),
                            printed => printed,
                        }
                    }
                    _ = tick.tick() => printer.flush(),
                };
                match done {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
            }
        }
        Err(e) => Err(js_err("reading from the tail consumer")(e.to_string())),
    };
    // Remove the tail's consumers now instead of leaving them to the inactivity timeout.
    for name in &names {
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.delete_consumer(name)).await;
    }
    result.and_then(|()| printer.flush().map(|_| ()))
}

/// Resolves when the channel turns true; never when its sender is gone.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn ordered_config(
    subject: &str,
    deliver_policy: consumer::DeliverPolicy,
) -> consumer::pull::OrderedConfig {
    consumer::pull::OrderedConfig {
        name: Some(format!("jetscale_tail_{:08x}", fastrand::u32(..))),
        description: Some("jetscale tail: ephemeral, ordered, acknowledges nothing".to_owned()),
        filter_subject: subject.to_owned(),
        deliver_policy,
        ..Default::default()
    }
}

/// Creates the tail's ordered consumer at the right place, and says how many of its first
/// messages to pass over (for `--last`; see the module documentation).
async fn open_consumer(
    stream: &stream::Stream,
    info: &stream::Info,
    options: &TailOptions,
) -> Result<(consumer::Consumer<consumer::pull::OrderedConfig>, u64), TailError> {
    let create = |policy: consumer::DeliverPolicy| async move {
        stream
            .create_consumer(ordered_config(&options.subject, policy))
            .await
            .map_err(|e| {
                let text = e.to_string();
                let hint = if text.contains("filter") || text.contains("subset") {
                    format!(
                        " (is `{}` inside the stream's subjects {}?)",
                        options.subject,
                        info.config.subjects.join(", ")
                    )
                } else {
                    String::new()
                };
                js_err("creating the tail consumer")(format!("{text}{hint}"))
            })
    };
    match options.start {
        Start::New | Start::Last(0) => Ok((create(consumer::DeliverPolicy::New).await?, 0)),
        Start::Since(ns) => {
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                .map_err(|e| TailError::Options(format!("--since: {e}")))?;
            Ok((
                create(consumer::DeliverPolicy::ByStartTime { start_time }).await?,
                0,
            ))
        }
        Start::Last(n) => {
            let first = info.state.first_sequence.max(1);
            let last = info.state.last_sequence;
            if info.state.messages == 0 {
                let policy = consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: last.saturating_add(1),
                };
                return Ok((create(policy).await?, 0));
            }
            let mut window = n;
            loop {
                let start = last.saturating_add(1).saturating_sub(window).max(first);
                let consumer = create(consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                })
                .await?;
                let pending = consumer.cached_info().num_pending;
                if pending >= n || start <= first {
                    return Ok((consumer, pending.saturating_sub(n)));
                }
                let name = consumer.cached_info().name.clone();
                let _ = stream.delete_consumer(&name).await;
                window = window.saturating_mul(4);
            }
        }
    }
}

/// Decodes, renders and writes messages, counting lines.
struct Printer<'a, W: Write> {
    settings: &'a Settings,
    options: &'a TailOptions,
    out: std::io::BufWriter<W>,
    report: TailReport,
}

impl<W: Write> Printer<'_, W> {
    /// Prints one message. True when the tail is done: `count` reached or the output closed.
    fn print(
        &mut self,
        message: &async_nats::Message,
        origin: &Origin<'_>,
    ) -> Result<bool, TailError> {
        let headers = message.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let incoming = Incoming {
            subject: origin.subject,
            content_type: header("Content-Type"),
            format_header: header("Jetscale-Format"),
            payload: &message.payload,
        };
        let ctx = context_at(self.settings, origin.published_ns);
        let rendered = render_message(self.options.style, &incoming, origin, &ctx);
        self.report.messages += 1;
        if rendered.rejected {
            self.report.rejected += 1;
        }
        for line in &rendered.lines {
            if self.options.count.is_some_and(|c| self.report.lines >= c) {
                return Ok(true);
            }
            let written = self
                .out
                .write_all(line.as_bytes())
                .and_then(|()| self.out.write_all(b"\n"));
            if let Err(e) = written {
                return closed_or(e);
            }
            self.report.lines += 1;
        }
        Ok(self.options.count.is_some_and(|c| self.report.lines >= c))
    }

    /// Writes out what is buffered. True when the output is closed.
    fn flush(&mut self) -> Result<bool, TailError> {
        match self.out.flush() {
            Ok(()) => Ok(false),
            Err(e) => closed_or(e),
        }
    }
}

/// A closed pipe ends the tail quietly; any other write error is an error.
fn closed_or(e: std::io::Error) -> Result<bool, TailError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(true)
    } else {
        Err(TailError::Output(e))
    }
}
