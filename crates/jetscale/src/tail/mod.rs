//! `jetscale tail`: follows the stream and prints one line per decoded record.
//!
//! Messages go through the collector's own [`decode`], so the tail shows exactly what the
//! collector would store (or why it would dead-letter a message), for every format `decode`
//! knows. Rendering is a [`RecordSink`] that only ever appends lines: it never fails a message.
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

use crate::config::Settings;
use crate::decode::{decode, DecodeContext, Incoming, RecordSink, Rejection};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use jetscale_model::{
    now_unix_nanos, DistributionPoint, LogRecord, MetricKind, MetricPoint, SpanRecord,
};
use serde::Serialize;
use serde_json::value::RawValue;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;
use tokio::sync::watch;

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Readable text, no escape codes.
    Plain,
    /// Readable text with ANSI colours, for a terminal.
    Color,
    /// One JSON object per line, every field of the record.
    Json,
}

/// Where a message came from: shown on rejection lines and in JSON output.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub subject: &'a str,
    /// The stream sequence; `None` for a core subscription.
    pub stream_seq: Option<u64>,
    /// When the server stored the message (the receive time for a core subscription).
    pub published_ns: i64,
}

/// A [`RecordSink`] that renders every record as one line. It never rejects anything.
#[derive(Debug)]
pub struct TailSink<'a> {
    style: Style,
    origin: Origin<'a>,
    lines: Vec<String>,
}

impl<'a> TailSink<'a> {
    pub fn new(style: Style, origin: Origin<'a>) -> Self {
        TailSink {
            style,
            origin,
            lines: Vec::new(),
        }
    }

    /// The lines rendered so far, one per record, without newlines.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

impl RecordSink for TailSink<'_> {
    fn metric(&mut self, point: &MetricPoint<'_>) -> Result<(), Rejection> {
        self.lines
            .push(render_metric(self.style, &self.origin, point));
        Ok(())
    }

    fn distribution(&mut self, point: &DistributionPoint<'_>) -> Result<(), Rejection> {
        self.lines
            .push(render_distribution(self.style, &self.origin, point));
        Ok(())
    }

    fn span(&mut self, span: &SpanRecord<'_>) -> Result<(), Rejection> {
        self.lines.push(render_span(self.style, &self.origin, span));
        Ok(())
    }

    fn log(&mut self, log: &LogRecord<'_>) -> Result<(), Rejection> {
        self.lines.push(render_log(self.style, &self.origin, log));
        Ok(())
    }
}

/// What one message renders to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line per record, or the single rejection line.
    pub lines: Vec<String>,
    /// Whether the message was rejected (the collector would dead-letter it).
    pub rejected: bool,
}

/// Decodes one message and renders it. A message that does not decode renders as one line
/// with its subject and the reason; records decoded before the failure are dropped, as the
/// collector rolls them back.
pub fn render_message(
    style: Style,
    incoming: &Incoming<'_>,
    origin: &Origin<'_>,
    ctx: &DecodeContext<'_>,
) -> Rendered {
    let mut sink = TailSink::new(style, *origin);
    match decode(incoming, ctx, &mut sink) {
        Ok(()) => Rendered {
            lines: sink.into_lines(),
            rejected: false,
        },
        Err(rejection) => Rendered {
            lines: vec![render_rejection(style, origin, &rejection)],
            rejected: true,
        },
    }
}

/// The decode context the collector would have used for a message stored at `published_ns`:
/// its limits and processors, with the time window around the message's own arrival (so a
/// replay from history judges old messages as they were judged live).
pub fn context_at(settings: &Settings, published_ns: i64) -> DecodeContext<'_> {
    let limits = &settings.limits;
    DecodeContext {
        limits,
        resource_actions: &settings.resource,
        encoding: settings.encoding,
        min_time_ns: published_ns.saturating_sub(nanos(limits.max_past)),
        max_time_ns: published_ns.saturating_add(nanos(limits.max_future)),
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Text lines

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BLUE: &str = "\x1b[34m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";
const BOLD_RED: &str = "\x1b[1;31m";

/// A line being built. Every piece of data is escaped: a record is always exactly one line,
/// and nothing a publisher sends can put escape codes on the user's terminal.
struct Line {
    buf: String,
    color: bool,
}

impl Line {
    fn new(style: Style) -> Self {
        Line {
            buf: String::with_capacity(128),
            color: style == Style::Color,
        }
    }

    /// The common head: time, signal (padded so the columns line up), source.
    fn head(style: Style, time_ns: i64, signal: &str, signal_color: &str, source: &str) -> Self {
        let mut line = Line::new(style);
        line.paint(DIM, &time_ms(time_ns));
        line.buf.push(' ');
        line.paint(signal_color, &format!("{signal:<6}"));
        line.buf.push(' ');
        line.paint(BOLD, or_dash(source));
        line
    }

    fn paint(&mut self, code: &str, text: &str) {
        if self.color {
            self.buf.push_str(code);
            push_escaped(&mut self.buf, text);
            self.buf.push_str(RESET);
        } else {
            push_escaped(&mut self.buf, text);
        }
    }

    /// ` text`
    fn word(&mut self, text: &str) {
        self.buf.push(' ');
        push_escaped(&mut self.buf, text);
    }

    /// ` text` in a colour.
    fn word_in(&mut self, code: &str, text: &str) {
        self.buf.push(' ');
        self.paint(code, text);
    }

    /// ` key=value`, dimmed key, skipped when the value is empty.
    fn field(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        self.buf.push(' ');
        self.paint(DIM, &format!("{key}="));
        push_escaped(&mut self.buf, value);
    }

    /// ` key="value"` with the value quoted (for free text such as errors), in a colour.
    fn quoted(&mut self, code: &str, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let text = format!("{key}={value:?}");
        self.word_in(code, &text);
    }

    fn finish(self) -> String {
        self.buf
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Appends `text` with control characters (newlines, ESC, ...) written as escapes.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

const MS_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// RFC 3339 in UTC with milliseconds: `2024-01-15T10:30:01.234Z`.
pub fn time_ms(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(MS_FORMAT).ok())
        .unwrap_or_else(|| format!("@{ns}ns"))
}

/// A float as the shortest text that reads back to the same value.
fn number(v: f64) -> String {
    let mut s = String::new();
    let _ = write!(s, "{v}");
    s
}

/// Milliseconds with at most three decimals, trailing zeros dropped: `1234`, `0.125`.
fn millis(ns: i64) -> String {
    let text = format!("{:.3}", ns as f64 / 1e6);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// The level word of a log record: its severity text, else the name of its OTLP number.
pub fn level_of(log: &LogRecord<'_>) -> String {
    if !log.severity_text.is_empty() {
        return log.severity_text.to_ascii_uppercase();
    }
    match log.severity_number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "-",
    }
    .to_owned()
}

fn level_color(log: &LogRecord<'_>) -> &'static str {
    let number = if log.severity_number > 0 {
        log.severity_number
    } else {
        jetscale_model::severity_number(log.severity_text)
    };
    match number {
        21.. => BOLD_RED,
        17..=20 => RED,
        13..=16 => YELLOW,
        9..=12 => GREEN,
        _ => DIM,
    }
}

/// `time metric source name=value unit [kind=..] [location=..]`
pub fn render_metric(style: Style, origin: &Origin<'_>, p: &MetricPoint<'_>) -> String {
    if style == Style::Json {
        return json_line(&MetricJson {
            signal: "metric",
            time: rfc3339(p.time_unix_nano),
            time_unix_nano: p.time_unix_nano,
            source: p.source,
            location: p.location,
            name: p.name,
            value: json_number(p.value),
            unit: p.unit,
            kind: p.kind.as_str(),
            attributes: json_text(p.attributes, "{}"),
            subject: origin.subject,
            seq: origin.stream_seq,
        });
    }
    let mut line = Line::head(style, p.time_unix_nano, "metric", CYAN, p.source);
    line.buf.push(' ');
    line.paint(CYAN, p.name);
    line.buf.push('=');
    line.paint(BOLD, &number(p.value));
    if !p.unit.is_empty() {
        line.word(p.unit);
    }
    if p.kind != MetricKind::Gauge {
        line.field("kind", p.kind.as_str());
    }
    line.field("location", p.location);
    line.finish()
}

/// `time dist source name count=N sum=S unit kind [location=..]`
pub fn render_distribution(style: Style, origin: &Origin<'_>, p: &DistributionPoint<'_>) -> String {
    if style == Style::Json {
        return json_line(&DistributionJson {
            signal: "dist",
            time: rfc3339(p.time_unix_nano),
            time_unix_nano: p.time_unix_nano,
            start_time: (p.start_time_unix_nano != 0).then(|| rfc3339(p.start_time_unix_nano)),
            start_time_unix_nano: p.start_time_unix_nano,
            source: p.source,
            location: p.location,
            name: p.name,
            unit: p.unit,
            kind: p.kind,
            temporality: p.temporality,
            count: p.count,
            sum: p.sum.map(json_number),
            min: p.min.map(json_number),
            max: p.max.map(json_number),
            buckets: json_text(p.buckets, "{}"),
            attributes: json_text(p.attributes, "{}"),
            subject: origin.subject,
            seq: origin.stream_seq,
        });
    }
    let mut line = Line::head(style, p.time_unix_nano, "dist", BLUE, p.source);
    line.buf.push(' ');
    line.paint(BLUE, p.name);
    line.field("count", &p.count.to_string());
    line.field("sum", &p.sum.map_or_else(|| "-".to_owned(), number));
    if !p.unit.is_empty() {
        line.word(p.unit);
    }
    line.word_in(DIM, p.kind);
    line.field("location", p.location);
    line.finish()
}

/// `time span service name kind STATUS 12.5ms trace_id/span_id [error="..."]`
pub fn render_span(style: Style, origin: &Origin<'_>, s: &SpanRecord<'_>) -> String {
    let duration_ns = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
    if style == Style::Json {
        return json_line(&SpanJson {
            signal: "span",
            time: rfc3339(s.start_time_unix_nano),
            start_time_unix_nano: s.start_time_unix_nano,
            end_time: rfc3339(s.end_time_unix_nano),
            end_time_unix_nano: s.end_time_unix_nano,
            duration_ms: json_number(duration_ns as f64 / 1e6),
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            name: s.name,
            service: s.service,
            kind: s.kind,
            status: s.status_code,
            status_message: s.status_message,
            trace_state: s.trace_state,
            attributes: json_text(s.attributes, "{}"),
            resource: json_text(s.resource, "{}"),
            events: json_text(s.events, "[]"),
            links: json_text(s.links, "[]"),
            error: s.error,
            subject: origin.subject,
            seq: origin.stream_seq,
        });
    }
    let failed = s.status_code.eq_ignore_ascii_case("error") || !s.error.is_empty();
    let mut line = Line::head(style, s.start_time_unix_nano, "span", MAGENTA, s.service);
    line.buf.push(' ');
    line.paint(MAGENTA, or_dash(s.name));
    line.word(or_dash(s.kind));
    let status = or_dash(s.status_code).to_ascii_uppercase();
    line.word_in(if failed { RED } else { GREEN }, &status);
    line.word(&format!("{}ms", millis(duration_ns)));
    line.word_in(
        DIM,
        &format!("{}/{}", or_dash(s.trace_id), or_dash(s.span_id)),
    );
    if !s.error.is_empty() {
        line.quoted(RED, "error", s.error);
    } else if failed {
        line.quoted(RED, "error", s.status_message);
    }
    line.finish()
}

/// `time log service LEVEL message [error="..."] [trace_id=..]`
pub fn render_log(style: Style, origin: &Origin<'_>, l: &LogRecord<'_>) -> String {
    if style == Style::Json {
        return json_line(&LogJson {
            signal: "log",
            time: rfc3339(l.time_unix_nano),
            time_unix_nano: l.time_unix_nano,
            observed_time: (l.observed_time_unix_nano != 0)
                .then(|| rfc3339(l.observed_time_unix_nano)),
            observed_time_unix_nano: l.observed_time_unix_nano,
            service: l.service,
            level: level_of(l),
            severity_number: l.severity_number,
            severity_text: l.severity_text,
            message: l.message,
            body: if l.body_json.is_empty() {
                None
            } else {
                Some(json_text(l.body_json, "null"))
            },
            attributes: json_text(l.attributes, "{}"),
            resource: json_text(l.resource, "{}"),
            trace_id: l.trace_id,
            span_id: l.span_id,
            flags: l.flags,
            error: l.error,
            subject: origin.subject,
            seq: origin.stream_seq,
        });
    }
    let mut line = Line::head(style, l.time_unix_nano, "log", level_color(l), l.service);
    line.word_in(level_color(l), &format!("{:<5}", level_of(l)));
    line.word(l.message);
    line.quoted(RED, "error", l.error);
    if !l.trace_id.is_empty() {
        line.buf.push(' ');
        line.paint(DIM, &format!("trace_id={}", l.trace_id));
    }
    line.finish()
}

/// `time reject subject reason`: a message the collector would dead-letter.
pub fn render_rejection(style: Style, origin: &Origin<'_>, rejection: &Rejection) -> String {
    if style == Style::Json {
        return json_line(&RejectionJson {
            signal: "rejected",
            time: rfc3339(origin.published_ns),
            subject: origin.subject,
            seq: origin.stream_seq,
            reason: rejection.to_string(),
        });
    }
    let mut line = Line::new(style);
    line.paint(DIM, &time_ms(origin.published_ns));
    line.buf.push(' ');
    line.paint(BOLD_RED, "reject");
    line.buf.push(' ');
    line.paint(BOLD, origin.subject);
    line.word_in(RED, &rejection.to_string());
    line.finish()
}

// ---------------------------------------------------------------------------------------------
// JSON lines

/// JSON text carried by a record, embedded as JSON (not as a string) when it parses.
#[derive(Serialize)]
#[serde(untagged)]
enum Json<'a> {
    Raw(&'a RawValue),
    Text(&'a str),
}

fn json_text<'a>(text: &'a str, empty: &'static str) -> Json<'a> {
    let text = if text.trim().is_empty() { empty } else { text };
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => Json::Raw(raw),
        Err(_) => Json::Text(text),
    }
}

/// A float as a JSON number; NaN and the infinities (which JSON lacks) as strings.
fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(v.to_string()))
}

fn rfc3339(ns: i64) -> String {
    jetscale_model::flat::unix_nanos_to_rfc3339(ns)
}

fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        format!(
            "{{\"signal\":\"error\",\"reason\":{:?}}}",
            format!("cannot render the record as JSON: {e}")
        )
    })
}

#[derive(Serialize)]
struct MetricJson<'a> {
    signal: &'static str,
    time: String,
    time_unix_nano: i64,
    source: &'a str,
    location: &'a str,
    name: &'a str,
    value: serde_json::Value,
    unit: &'a str,
    kind: &'static str,
    attributes: Json<'a>,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct DistributionJson<'a> {
    signal: &'static str,
    time: String,
    time_unix_nano: i64,
    start_time: Option<String>,
    start_time_unix_nano: i64,
    source: &'a str,
    location: &'a str,
    name: &'a str,
    unit: &'a str,
    kind: &'a str,
    temporality: &'a str,
    count: u64,
    sum: Option<serde_json::Value>,
    min: Option<serde_json::Value>,
    max: Option<serde_json::Value>,
    buckets: Json<'a>,
    attributes: Json<'a>,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct SpanJson<'a> {
    signal: &'static str,
    time: String,
    start_time_unix_nano: i64,
    end_time: String,
    end_time_unix_nano: i64,
    duration_ms: serde_json::Value,
    trace_id: &'a str,
    span_id: &'a str,
    parent_span_id: &'a str,
    name: &'a str,
    service: &'a str,
    kind: &'a str,
    status: &'a str,
    status_message: &'a str,
    trace_state: &'a str,
    attributes: Json<'a>,
    resource: Json<'a>,
    events: Json<'a>,
    links: Json<'a>,
    error: &'a str,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct LogJson<'a> {
    signal: &'static str,
    time: String,
    time_unix_nano: i64,
    observed_time: Option<String>,
    observed_time_unix_nano: i64,
    service: &'a str,
    level: String,
    severity_number: i32,
    severity_text: &'a str,
    message: &'a str,
    body: Option<Json<'a>>,
    attributes: Json<'a>,
    resource: Json<'a>,
    trace_id: &'a str,
    span_id: &'a str,
    flags: i32,
    error: &'a str,
    subject: &'a str,
    seq: Option<u64>,
}

#[derive(Serialize)]
struct RejectionJson<'a> {
    signal: &'static str,
    time: String,
    subject: &'a str,
    seq: Option<u64>,
    reason: String,
}

// ---------------------------------------------------------------------------------------------
// Following the stream

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
                tokio::select! {
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
                            Ok(true) => break Ok(()),
                            Ok(false) => {}
                            Err(e) => break Err(e),
                        }
                        // Caught up: show what there is now rather than when the buffer fills.
                        if pending == 0 {
                            match printer.flush() {
                                Ok(true) => break Ok(()),
                                Ok(false) => {}
                                Err(e) => break Err(e),
                            }
                        }
                    }
                    _ = tick.tick() => {
                        match printer.flush() {
                            Ok(true) => break Ok(()),
                            Ok(false) => {}
                            Err(e) => break Err(e),
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_705_314_601_234_567_890; // 2024-01-15T10:30:01.234567890Z

    fn origin() -> Origin<'static> {
        Origin {
            subject: "telemetry.metrics.sensor-1",
            stream_seq: Some(7),
            published_ns: T,
        }
    }

    fn metric() -> MetricPoint<'static> {
        MetricPoint {
            time_unix_nano: T,
            source: "sensor-1",
            location: "warehouse-a",
            name: "device.temperature",
            unit: "Cel",
            value: 23.5,
            kind: MetricKind::Gauge,
            attributes: r#"{"service.name":"iot-sensor"}"#,
        }
    }

    fn span() -> SpanRecord<'static> {
        SpanRecord {
            trace_id: "a1b2c3d4e5f6",
            span_id: "f6e5d4c3b2a1",
            parent_span_id: "1a2b3c4d5e6f",
            name: "worker.executeTask",
            service: "worker",
            kind: "server",
            start_time_unix_nano: 1_705_314_600_000_000_000,
            end_time_unix_nano: 1_705_314_601_234_000_000,
            status_code: "ok",
            status_message: "",
            trace_state: "",
            attributes: r#"{"run_id":"abc123","step_id":"build"}"#,
            resource: "{}",
            events: "[]",
            links: "",
            error: "",
        }
    }

    fn log() -> LogRecord<'static> {
        LogRecord {
            time_unix_nano: T,
            observed_time_unix_nano: 0,
            service: "engine",
            severity_number: 17,
            severity_text: "error",
            message: "task handler returned error, will retry",
            body_json: "",
            attributes: r#"{"run_id":"abc123","task_type":"build"}"#,
            resource: "{}",
            trace_id: "",
            span_id: "",
            flags: 0,
            error: "connection refused",
        }
    }

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        assert_eq!(time_ms(T), "2024-01-15T10:30:01.234Z");
        assert_eq!(time_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn metric_line() {
        let line = render_metric(Style::Plain, &origin(), &metric());
        assert_eq!(
            line,
            "2024-01-15T10:30:01.234Z metric sensor-1 device.temperature=23.5 Cel location=warehouse-a"
        );
        let mut sum = metric();
        sum.kind = MetricKind::CumulativeSum;
        sum.unit = "";
        sum.location = "";
        sum.name = "requests";
        sum.value = 10.0;
        assert_eq!(
            render_metric(Style::Plain, &origin(), &sum),
            "2024-01-15T10:30:01.234Z metric sensor-1 requests=10 kind=cumulative_sum"
        );
    }

    #[test]
    fn distribution_line() {
        let p = DistributionPoint {
            time_unix_nano: T,
            start_time_unix_nano: 0,
            source: "worker",
            location: "",
            name: "step.duration_ms",
            unit: "ms",
            kind: "histogram",
            temporality: "delta",
            count: 3,
            sum: Some(12.5),
            min: None,
            max: None,
            buckets: r#"{"bounds":[10],"counts":[2,1]}"#,
            attributes: "{}",
        };
        assert_eq!(
            render_distribution(Style::Plain, &origin(), &p),
            "2024-01-15T10:30:01.234Z dist   worker step.duration_ms count=3 sum=12.5 ms histogram"
        );
        let no_sum = DistributionPoint { sum: None, ..p };
        assert!(render_distribution(Style::Plain, &origin(), &no_sum).contains("count=3 sum=-"));
    }

    #[test]
    fn span_line() {
        assert_eq!(
            render_span(Style::Plain, &origin(), &span()),
            "2024-01-15T10:30:00.000Z span   worker worker.executeTask server OK 1234ms a1b2c3d4e5f6/f6e5d4c3b2a1"
        );
        let failed = SpanRecord {
            status_code: "error",
            error: "boom\nsecond line",
            end_time_unix_nano: 1_705_314_600_000_125_000,
            ..span()
        };
        assert_eq!(
            render_span(Style::Plain, &origin(), &failed),
            "2024-01-15T10:30:00.000Z span   worker worker.executeTask server ERROR 0.125ms a1b2c3d4e5f6/f6e5d4c3b2a1 error=\"boom\\nsecond line\""
        );
        let otlp_error = SpanRecord {
            status_code: "error",
            status_message: "deadline exceeded",
            ..span()
        };
        assert!(render_span(Style::Plain, &origin(), &otlp_error)
            .ends_with(" ERROR 1234ms a1b2c3d4e5f6/f6e5d4c3b2a1 error=\"deadline exceeded\""));
    }

    #[test]
    fn log_line() {
        assert_eq!(
            render_log(Style::Plain, &origin(), &log()),
            "2024-01-15T10:30:01.234Z log    engine ERROR task handler returned error, will retry error=\"connection refused\""
        );
        let otlp = LogRecord {
            severity_text: "",
            severity_number: 9,
            error: "",
            trace_id: "5b8efff798038103d269b633813fc60c",
            span_id: "eee19b7ec3c1b174",
            message: "line one\nline two",
            ..log()
        };
        assert_eq!(
            render_log(Style::Plain, &origin(), &otlp),
            "2024-01-15T10:30:01.234Z log    engine INFO  line one\\nline two trace_id=5b8efff798038103d269b633813fc60c"
        );
    }

    #[test]
    fn rejection_line() {
        let r = Rejection::malformed("expected a JSON object");
        assert_eq!(
            render_rejection(Style::Plain, &origin(), &r),
            "2024-01-15T10:30:01.234Z reject telemetry.metrics.sensor-1 malformed: expected a JSON object"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_rejection(Style::Json, &origin(), &r)).unwrap();
        assert_eq!(json["signal"], "rejected");
        assert_eq!(json["subject"], "telemetry.metrics.sensor-1");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["reason"], "malformed: expected a JSON object");
    }

    #[test]
    fn data_can_not_break_the_line_or_the_terminal() {
        let evil = MetricPoint {
            source: "dev\x1b[2J",
            name: "a\nb",
            ..metric()
        };
        for style in [Style::Plain, Style::Color] {
            let line = render_metric(style, &origin(), &evil);
            assert!(!line.contains('\n'), "{line:?}");
            assert!(!line.contains("\x1b[2J"), "{line:?}");
            assert!(line.contains("dev\\u{1b}[2J"), "{line:?}");
        }
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = render_log(Style::Plain, &origin(), &log());
        let color = render_log(Style::Color, &origin(), &log());
        assert!(!plain.contains('\x1b'));
        assert!(color.contains(RED), "{color:?}");
        let stripped = strip_ansi(&color);
        assert_eq!(stripped, plain);
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn json_lines_carry_every_field_with_attributes_as_objects() {
        let m: serde_json::Value =
            serde_json::from_str(&render_metric(Style::Json, &origin(), &metric())).unwrap();
        assert_eq!(m["signal"], "metric");
        assert_eq!(m["time"], "2024-01-15T10:30:01.23456789Z");
        assert_eq!(m["time_unix_nano"], T);
        assert_eq!(m["source"], "sensor-1");
        assert_eq!(m["location"], "warehouse-a");
        assert_eq!(m["value"], 23.5);
        assert_eq!(m["unit"], "Cel");
        assert_eq!(m["kind"], "gauge");
        assert_eq!(m["attributes"]["service.name"], "iot-sensor");
        assert_eq!(m["seq"], 7);

        let s: serde_json::Value =
            serde_json::from_str(&render_span(Style::Json, &origin(), &span())).unwrap();
        assert_eq!(s["signal"], "span");
        assert_eq!(s["duration_ms"], 1234.0);
        assert_eq!(s["parent_span_id"], "1a2b3c4d5e6f");
        assert_eq!(s["attributes"]["step_id"], "build");
        assert_eq!(s["events"], serde_json::json!([]));
        assert_eq!(s["links"], serde_json::json!([]));
        assert_eq!(s["status"], "ok");

        let l: serde_json::Value =
            serde_json::from_str(&render_log(Style::Json, &origin(), &log())).unwrap();
        assert_eq!(l["signal"], "log");
        assert_eq!(l["level"], "ERROR");
        assert_eq!(l["severity_number"], 17);
        assert_eq!(l["fields"], serde_json::Value::Null);
        assert_eq!(l["attributes"]["task_type"], "build");
        assert_eq!(l["error"], "connection refused");
        assert_eq!(l["body"], serde_json::Value::Null);

        let nan = MetricPoint {
            value: f64::NAN,
            attributes: "not json",
            ..metric()
        };
        let n: serde_json::Value =
            serde_json::from_str(&render_metric(Style::Json, &origin(), &nan)).unwrap();
        assert_eq!(n["value"], "NaN");
        assert_eq!(n["attributes"], "not json");
    }

    #[test]
    fn decoded_messages_render_and_bad_ones_become_one_line() {
        let settings = crate::config::defaults(&crate::config::Overrides::default()).unwrap();
        let now = now_unix_nanos();
        let mut payload = Vec::new();
        crate::simulate::payload::write_payload(
            &mut payload,
            "sensor-9",
            "warehouse-b",
            now,
            [21.25, 40.0, 99.5],
        );
        let origin = Origin {
            subject: "telemetry.metrics.sensor-9",
            stream_seq: Some(1),
            published_ns: now,
        };
        let incoming = Incoming {
            subject: origin.subject,
            content_type: None,
            format_header: None,
            payload: &payload,
        };
        let ctx = context_at(&settings, now);
        let rendered = render_message(Style::Plain, &incoming, &origin, &ctx);
        assert!(!rendered.rejected);
        assert_eq!(rendered.lines.len(), 3);
        assert!(rendered.lines[0]
            .ends_with(" metric sensor-9 device.temperature=21.25 Cel location=warehouse-b"));
        assert!(rendered.lines[2].contains(" device.battery=99.5 % "));

        let garbage = Incoming {
            payload: b"hello",
            ..incoming
        };
        let rendered = render_message(Style::Plain, &garbage, &origin, &ctx);
        assert!(rendered.rejected);
        assert_eq!(rendered.lines.len(), 1);
        assert!(rendered.lines[0].contains(" reject telemetry.metrics.sensor-9 unknown format"));
    }

    #[test]
    fn replayed_messages_are_judged_at_their_arrival() {
        let settings = crate::config::defaults(&crate::config::Overrides::default()).unwrap();
        let old = now_unix_nanos() - 30 * 86_400 * 1_000_000_000;
        let ctx = context_at(&settings, old);
        assert!(ctx.check_time(old).is_ok());
    }
}
