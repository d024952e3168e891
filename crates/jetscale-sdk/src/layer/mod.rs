//! A `tracing-subscriber` layer that publishes a service's own spans as span records and its
//! events as log records.
//!
//! The layer never blocks the instrumented code on NATS: it builds the record and puts it in
//! a bounded channel with `try_send`; a background task publishes from there. When the channel
//! is full (NATS down or slower than the service) the newest record is dropped and counted in
//! [`LayerStats::dropped`], so memory stays bounded and the service keeps its pace.

mod fields;
mod worker;

use crate::{Error, Publisher};
use fields::{take_error, text_of, FieldVisitor};
use jetscale_model::flat::{unix_nanos_to_rfc3339, FlatLog, FlatSpan};
use jetscale_model::subject::is_valid_token;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::span::{Attributes, Id, Record as SpanValues};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// What the layer hands to its background task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A closed span, and the run id its subject takes (its own or inherited).
    Span { span: FlatSpan, run_id: String },
    /// An event.
    Log(FlatLog),
    /// Publish everything queued before this, wait for the acks, then answer.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    dropped: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
}

/// Counts of what a [`JetscaleLayer`] did since it was built.
///
/// # Examples
///
/// ```no_run
/// # fn run(handle: jetscale_sdk::LayerHandle) {
/// let stats = handle.stats();
/// if stats.dropped > 0 {
///     eprintln!("{} telemetry records dropped: NATS is slower than this service", stats.dropped);
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerStats {
    /// Records put in the channel.
    pub queued: u64,
    /// Records dropped because the channel was full (or the background task had stopped).
    pub dropped: u64,
    /// Records the stream acknowledged (duplicates included).
    pub published: u64,
    /// Records that could not be published after every retry, or not built into a message.
    pub failed: u64,
}

/// A `tracing-subscriber` [`Layer`] that publishes the service's spans and events to the
/// TELEMETRY stream.
///
/// - A span becomes a [`FlatSpan`] when it closes, on `telemetry.spans.{service}.{run_id}`:
///   its name (or an `otel.name` field), start and end time, duration, its fields as
///   attributes, a 128-bit trace id (new for a root span, inherited by children) and a 64-bit
///   span id as lowercase hex, the parent's span id, kind `internal` (or an `otel.kind` /
///   `span.kind` field), status `error` with the field's text when an `error` field was
///   recorded (or `otel.status_code = "error"`), else `ok`, and the events recorded inside it
///   (at most [`LayerBuilder::max_span_events`]). The run id is the span's `run_id` field or
///   the nearest ancestor's, else the trace id.
/// - An event becomes a [`FlatLog`] on `telemetry.logs.{service}.{level}`: level (`trace`,
///   `debug`, `info`, `warn`, `error`), message, an `error` field in `error`, the other
///   fields, plus `trace_id`, `span_id` and the inherited `run_id` of the span it happened in.
///
/// Records go through a bounded channel to a background task that publishes them with
/// pipelined acks, so instrumented code never waits for NATS: when the channel is full the
/// newest record is dropped and counted ([`LayerStats::dropped`]). Events and spans whose
/// target is `async_nats` or `jetscale_sdk` (or a module of them) are ignored, so publishing
/// can not feed itself. To publish only some levels, give the layer a per-layer filter
/// (`layer.with_filter(LevelFilter::INFO)`); other layers keep their own.
///
/// # Panics
///
/// Building the layer spawns its background task, so it must happen inside a Tokio runtime.
///
/// # Examples
///
/// ```no_run
/// use jetscale_sdk::{JetscaleLayer, Publisher};
/// use tracing_subscriber::prelude::*;
///
/// # async fn run() -> Result<(), jetscale_sdk::Error> {
/// let publisher = Publisher::connect("nats://127.0.0.1:4222").await?;
/// let layer = JetscaleLayer::new(publisher, "worker");
/// let handle = layer.handle();
/// tracing_subscriber::registry().with(layer).init();
///
/// let span = tracing::info_span!("worker.executeTask", run_id = "abc123");
/// span.in_scope(|| tracing::info!(task_type = "build", "task started"));
/// drop(span);
///
/// handle.flush().await?;
/// # Ok(())
/// # }
/// ```
pub struct JetscaleLayer {
    service: Arc<str>,
    tx: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    ignored_targets: Vec<String>,
    max_span_events: usize,
}

impl fmt::Debug for JetscaleLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetscaleLayer")
            .field("service", &self.service)
            .field("capacity", &self.tx.max_capacity())
            .field("ignored_targets", &self.ignored_targets)
            .field("max_span_events", &self.max_span_events)
            .finish_non_exhaustive()
    }
}

/// Options of a [`JetscaleLayer`], ended by [`build`](LayerBuilder::build).
///
/// # Examples
///
/// ```no_run
/// use jetscale_sdk::{JetscaleLayer, Publisher};
///
/// # async fn run(publisher: Publisher) {
/// let layer = JetscaleLayer::builder(publisher, "worker")
///     .capacity(65_536)
///     .ignore_target("h2")
///     .max_span_events(0)
///     .build();
/// # }
/// ```
#[derive(Debug)]
pub struct LayerBuilder {
    publisher: Publisher,
    service: String,
    capacity: usize,
    ignored_targets: Vec<String>,
    max_span_events: usize,
}

impl LayerBuilder {
    /// How many records may wait for the background task (default 8192, at least 1); past
    /// that the newest are dropped and counted.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(publisher: jetscale_sdk::Publisher) {
    /// let builder = jetscale_sdk::JetscaleLayer::builder(publisher, "worker").capacity(1024);
    /// # }
    /// ```
    pub fn capacity(mut self, capacity: usize) -> LayerBuilder {
        self.capacity = capacity.max(1);
        self
    }

    /// Ignores spans and events of another target (and its modules), besides `async_nats`
    /// and `jetscale_sdk`. With `log` records bridged into `tracing` and a TLS connection,
    /// ignoring `rustls` keeps the TLS layer's own logging about publishing out too.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(publisher: jetscale_sdk::Publisher) {
    /// let builder = jetscale_sdk::JetscaleLayer::builder(publisher, "worker").ignore_target("hyper");
    /// # }
    /// ```
    pub fn ignore_target(mut self, target: impl Into<String>) -> LayerBuilder {
        self.ignored_targets.push(target.into());
        self
    }

    /// How many of the events recorded inside a span are kept in its `events` (default 32;
    /// 0 keeps none). Every event is published as a log record either way.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(publisher: jetscale_sdk::Publisher) {
    /// let builder = jetscale_sdk::JetscaleLayer::builder(publisher, "worker").max_span_events(0);
    /// # }
    /// ```
    pub fn max_span_events(mut self, max: usize) -> LayerBuilder {
        self.max_span_events = max;
        self
    }

    /// Builds the layer and spawns its background task.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(publisher: jetscale_sdk::Publisher) {
    /// let layer = jetscale_sdk::JetscaleLayer::builder(publisher, "worker").build();
    /// # }
    /// ```
    pub fn build(self) -> JetscaleLayer {
        let (layer, rx) = JetscaleLayer::detached(
            &self.service,
            self.capacity,
            self.ignored_targets,
            self.max_span_events,
        );
        tokio::spawn(worker::run(self.publisher, rx, layer.counters.clone()));
        layer
    }
}

impl JetscaleLayer {
    /// A layer for `service` with the defaults (8192 queued records, 32 events per span).
    /// The service name is used as a subject token: characters a token can not hold
    /// (`.`, `*`, `>`, whitespace) are replaced with `_`, in the records too.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(publisher: jetscale_sdk::Publisher) {
    /// let layer = jetscale_sdk::JetscaleLayer::new(publisher, "worker");
    /// assert_eq!(layer.service(), "worker");
    /// # }
    /// ```
    pub fn new(publisher: Publisher, service: impl Into<String>) -> JetscaleLayer {
        JetscaleLayer::builder(publisher, service).build()
    }

    /// Options for a layer for `service`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(publisher: jetscale_sdk::Publisher) {
    /// let layer = jetscale_sdk::JetscaleLayer::builder(publisher, "worker").capacity(100_000).build();
    /// # }
    /// ```
    pub fn builder(publisher: Publisher, service: impl Into<String>) -> LayerBuilder {
        LayerBuilder {
            publisher,
            service: service.into(),
            capacity: 8192,
            ignored_targets: Vec::new(),
            max_span_events: 32,
        }
    }

    /// A handle to flush the layer and read its counters; keep it before installing the
    /// layer in a subscriber.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(publisher: jetscale_sdk::Publisher) -> Result<(), jetscale_sdk::Error> {
    /// let layer = jetscale_sdk::JetscaleLayer::new(publisher, "worker");
    /// let handle = layer.handle();
    /// // ... install the layer, run the service ...
    /// handle.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn handle(&self) -> LayerHandle {
        LayerHandle {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }

    /// The service name the records carry (sanitised as described in [`JetscaleLayer::new`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(publisher: jetscale_sdk::Publisher) {
    /// let layer = jetscale_sdk::JetscaleLayer::new(publisher, "billing api");
    /// assert_eq!(layer.service(), "billing_api");
    /// # }
    /// ```
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The layer without a background task: records go to the returned receiver.
    pub(crate) fn detached(
        service: &str,
        capacity: usize,
        extra_ignored: Vec<String>,
        max_span_events: usize,
    ) -> (JetscaleLayer, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut ignored_targets = vec!["async_nats".to_owned(), "jetscale_sdk".to_owned()];
        ignored_targets.extend(extra_ignored);
        let layer = JetscaleLayer {
            service: sanitize_token(service).into(),
            tx,
            counters: Arc::default(),
            ignored_targets,
            max_span_events,
        };
        (layer, rx)
    }

    fn ignores(&self, target: &str) -> bool {
        self.ignored_targets.iter().any(|ignored| {
            target
                .strip_prefix(ignored.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
    }

    fn enqueue(&self, command: Command) {
        match self.tx.try_send(command) {
            Ok(()) => self.counters.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Flushes a [`JetscaleLayer`] and reads its counters. Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// # async fn run(handle: jetscale_sdk::LayerHandle) -> Result<(), jetscale_sdk::Error> {
/// handle.flush().await?;
/// println!("{:?}", handle.stats());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LayerHandle {
    tx: mpsc::Sender<Command>,
    counters: Arc<Counters>,
}

impl fmt::Debug for LayerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl LayerHandle {
    /// Waits until every record queued before the call is published (acknowledged, or failed
    /// after its retries). Spans still open are not records yet: close them first. Waits for
    /// room in the channel when it is full; wrap it in `tokio::time::timeout` to bound it.
    ///
    /// # Errors
    ///
    /// [`Error::LayerStopped`] when the background task is gone (its runtime shut down).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(handle: jetscale_sdk::LayerHandle) {
    /// use std::time::Duration;
    /// if tokio::time::timeout(Duration::from_secs(5), handle.flush()).await.is_err() {
    ///     eprintln!("telemetry not flushed within 5 s");
    /// }
    /// # }
    /// ```
    pub async fn flush(&self) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Flush(done))
            .await
            .map_err(|_| Error::LayerStopped)?;
        wait.await.map_err(|_| Error::LayerStopped)
    }

    /// The counters so far.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(handle: jetscale_sdk::LayerHandle) {
    /// let stats = handle.stats();
    /// assert!(stats.published + stats.failed <= stats.queued);
    /// # }
    /// ```
    pub fn stats(&self) -> LayerStats {
        let c = &self.counters;
        LayerStats {
            queued: c.queued.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }
}

/// What the layer keeps in a span's extensions while it is open.
struct SpanState {
    trace_id: String,
    span_id: String,
    parent_id: String,
    /// The span's own `run_id` field, else its nearest ancestor's.
    run_id: Option<String>,
    start_unix_nanos: i64,
    started: Instant,
    fields: BTreeMap<String, Value>,
    events: Vec<Value>,
}

impl SpanState {
    fn finish(mut self, name: &str, service: &str) -> (FlatSpan, String) {
        let elapsed = self.started.elapsed();
        let end = self
            .start_unix_nanos
            .saturating_add(i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX));
        let error = take_error(&mut self.fields);
        let status_error = self
            .fields
            .remove("otel.status_code")
            .is_some_and(|v| text_of(&v).eq_ignore_ascii_case("error"));
        let kind = self
            .fields
            .remove("otel.kind")
            .or_else(|| self.fields.remove("span.kind"))
            .map_or_else(
                || "internal".to_owned(),
                |v| text_of(&v).to_ascii_lowercase(),
            );
        let name = self
            .fields
            .remove("otel.name")
            .map_or_else(|| name.to_owned(), |v| text_of(&v));
        let status = if error.is_some() || status_error {
            "error"
        } else {
            "ok"
        };
        let run_id = self
            .run_id
            .filter(|id| is_valid_token(id))
            .unwrap_or_else(|| self.trace_id.clone());
        let span = FlatSpan {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            name,
            service: service.to_owned(),
            kind,
            start_time: unix_nanos_to_rfc3339(self.start_unix_nanos),
            end_time: unix_nanos_to_rfc3339(end),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            status: status.to_owned(),
            attributes: self.fields,
            events: self.events,
            error: error.unwrap_or_default(),
        };
        (span, run_id)
    }
}

impl<S> Layer<S> for JetscaleLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.ignores(attrs.metadata().target()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let parent = span.scope().skip(1).find_map(|ancestor| {
            ancestor
                .extensions()
                .get::<SpanState>()
                .map(|p| (p.trace_id.clone(), p.span_id.clone(), p.run_id.clone()))
        });
        let (trace_id, parent_id, inherited_run) = match parent {
            Some((trace_id, span_id, run_id)) => (trace_id, span_id, run_id),
            None => (crate::ids::trace_id(), String::new(), None),
        };
        let mut fields = BTreeMap::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        let run_id = fields.get("run_id").map(text_of).or(inherited_run);
        span.extensions_mut().insert(SpanState {
            trace_id,
            span_id: crate::ids::span_id(),
            parent_id,
            run_id,
            start_unix_nanos: now_unix_nanos(),
            started: Instant::now(),
            fields,
            events: Vec::new(),
        });
    }

    fn on_record(&self, id: &Id, values: &SpanValues<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(state) = extensions.get_mut::<SpanState>() {
            values.record(&mut FieldVisitor(&mut state.fields));
            if let Some(run_id) = state.fields.get("run_id") {
                state.run_id = Some(text_of(run_id));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if self.ignores(metadata.target()) {
            return;
        }
        let now = now_unix_nanos();
        let mut fields = BTreeMap::new();
        event.record(&mut FieldVisitor(&mut fields));
        fields.retain(|key, _| !key.starts_with("log."));
        let message = fields
            .remove("message")
            .map(|v| text_of(&v))
            .unwrap_or_default();
        let error = take_error(&mut fields);
        let level = level_name(*metadata.level());

        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                let mut extensions = span.extensions_mut();
                let Some(state) = extensions.get_mut::<SpanState>() else {
                    continue;
                };
                if state.events.len() < self.max_span_events {
                    let mut attributes = fields.clone();
                    attributes.insert("level".to_owned(), level.into());
                    if let Some(error) = &error {
                        attributes.insert("error".to_owned(), error.clone().into());
                    }
                    state.events.push(serde_json::json!({
                        "name": message,
                        "timestamp": unix_nanos_to_rfc3339(now),
                        "attributes": attributes,
                    }));
                }
                fields.insert("trace_id".to_owned(), state.trace_id.clone().into());
                fields.insert("span_id".to_owned(), state.span_id.clone().into());
                if let Some(run_id) = &state.run_id {
                    fields
                        .entry("run_id".to_owned())
                        .or_insert_with(|| run_id.clone().into());
                }
                break;
            }
        }

        self.enqueue(Command::Log(FlatLog {
            level: level.to_owned(),
            message,
            service: self.service.to_string(),
            timestamp: unix_nanos_to_rfc3339(now),
            fields,
            error: error.unwrap_or_default(),
        }));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(state) = span.extensions_mut().remove::<SpanState>() else {
            return;
        };
        let (record, run_id) = state.finish(span.metadata().name(), &self.service);
        self.enqueue(Command::Span {
            span: record,
            run_id,
        });
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Replaces what a subject token can not hold with `_`; an empty name becomes `unknown`.
fn sanitize_token(name: &str) -> String {
    if name.is_empty() {
        return "unknown".to_owned();
    }
    name.chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>' | '\0') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use jetscale_model::flat::rfc3339_to_unix_nanos;
    use tracing_subscriber::prelude::*;

    /// Runs `body` with a subscriber holding a detached layer, and returns what the layer
    /// queued, in order.
    fn capture(capacity: usize, body: impl FnOnce()) -> (Vec<Command>, LayerStats) {
        let (layer, mut rx) = JetscaleLayer::detached("worker", capacity, Vec::new(), 32);
        let handle = layer.handle();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, body);
        let mut commands = Vec::new();
        while let Ok(command) = rx.try_recv() {
            commands.push(command);
        }
        (commands, handle.stats())
    }

    fn is_hex(s: &str, len: usize) -> bool {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    fn spans(commands: &[Command]) -> Vec<(&FlatSpan, &str)> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Span { span, run_id } => Some((span, run_id.as_str())),
                _ => None,
            })
            .collect()
    }

    fn logs(commands: &[Command]) -> Vec<&FlatLog> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Log(log) => Some(log),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spans_become_records_with_inherited_ids_and_events_become_logs() {
        let (commands, stats) = capture(64, || {
            let outer = tracing::info_span!(target: "app", "worker.executeTask", run_id = "abc123", step_id = "build", otel.kind = "server");
            outer.in_scope(|| {
                let inner = tracing::debug_span!(target: "app", "inner", attempt = 3u64, cached = false, ratio = 0.5);
                inner.in_scope(|| {
                    tracing::info!(target: "app", task_type = "build", "working on {}", 42);
                });
            });
        });
        assert_eq!(stats.queued, 3);
        assert_eq!(stats.dropped, 0);
        // The event first, then the inner span closes, then the outer one.
        assert!(matches!(commands[0], Command::Log(_)));
        let spans = spans(&commands);
        let (inner, inner_run) = spans[0];
        let (outer, outer_run) = spans[1];
        assert_eq!(inner.name, "inner");
        assert_eq!(outer.name, "worker.executeTask");

        assert!(is_hex(&outer.trace_id, 32), "{}", outer.trace_id);
        assert!(is_hex(&outer.span_id, 16), "{}", outer.span_id);
        assert!(is_hex(&inner.span_id, 16));
        assert_eq!(inner.trace_id, outer.trace_id);
        assert_ne!(inner.span_id, outer.span_id);
        assert_eq!(inner.parent_id, outer.span_id);
        assert_eq!(outer.parent_id, "");
        assert_eq!((outer_run, inner_run), ("abc123", "abc123"));

        assert_eq!(outer.service, "worker");
        assert_eq!(outer.kind, "server");
        assert_eq!(inner.kind, "internal");
        assert_eq!((outer.status.as_str(), outer.error.as_str()), ("ok", ""));
        assert_eq!(outer.attributes["run_id"], "abc123");
        assert_eq!(outer.attributes["step_id"], "build");
        assert!(!outer.attributes.contains_key("otel.kind"));
        assert_eq!(inner.attributes["attempt"], 3);
        assert_eq!(inner.attributes["cached"], false);
        assert_eq!(inner.attributes["ratio"], 0.5);

        for span in [inner, outer] {
            let start = rfc3339_to_unix_nanos(&span.start_time).unwrap();
            let end = rfc3339_to_unix_nanos(&span.end_time).unwrap();
            assert!(end >= start);
            assert!(span.duration_ms >= 0.0);
            assert!(((end - start) as f64 / 1e6 - span.duration_ms).abs() < 0.001);
        }
        assert!(
            rfc3339_to_unix_nanos(&outer.start_time).unwrap()
                <= rfc3339_to_unix_nanos(&inner.start_time).unwrap()
        );

        let log = logs(&commands)[0];
        assert_eq!(log.level, "info");
        assert_eq!(log.message, "working on 42");
        assert_eq!(log.service, "worker");
        assert_eq!(log.fields["task_type"], "build");
        assert_eq!(log.fields["trace_id"], outer.trace_id.as_str());
        assert_eq!(log.fields["span_id"], inner.span_id.as_str());
        assert_eq!(log.fields["run_id"], "abc123");
        assert!(rfc3339_to_unix_nanos(&log.timestamp).is_some());

        // The event is also kept on the span it happened in.
        assert_eq!(inner.events.len(), 1);
        assert_eq!(inner.events[0]["name"], "working on 42");
        assert_eq!(inner.events[0]["attributes"]["task_type"], "build");
        assert!(outer.events.is_empty());
    }

    #[test]
    fn an_error_field_marks_the_span_and_fills_the_log_error() {
        let (commands, _) = capture(64, || {
            let span = tracing::error_span!(target: "app", "fetch", url = "http://x", error = tracing::field::Empty);
            let _guard = span.enter();
            span.record("error", "connection refused");
            let io = std::io::Error::other("disk full");
            tracing::error!(target: "app", error = &io as &(dyn std::error::Error + 'static), run_id = "r9", "task handler returned error, will retry");
            drop(_guard);
            drop(span);
            let ok = tracing::info_span!(target: "app", "fine", error = false);
            drop(ok);
            let named = tracing::info_span!(target: "app", "generic", otel.name = "GET /items", otel.status_code = "ERROR");
            drop(named);
        });
        let spans = spans(&commands);
        let (failed, run_id) = spans[0];
        assert_eq!(failed.status, "error");
        assert_eq!(failed.error, "connection refused");
        assert!(!failed.attributes.contains_key("error"));
        assert_eq!(failed.attributes["url"], "http://x");
        // No run id anywhere: the trace id stands in for it in the subject.
        assert_eq!(run_id, failed.trace_id);
        let (fine, _) = spans[1];
        assert_eq!((fine.status.as_str(), fine.error.as_str()), ("ok", ""));
        let (named, _) = spans[2];
        assert_eq!(named.name, "GET /items");
        assert_eq!(named.status, "error");

        let log = logs(&commands)[0];
        assert_eq!(log.level, "error");
        assert_eq!(log.error, "disk full");
        assert_eq!(log.message, "task handler returned error, will retry");
        assert_eq!(log.fields["run_id"], "r9", "an event's own run_id wins");
        assert_eq!(log.fields["span_id"], failed.span_id.as_str());
        assert_eq!(failed.events[0]["attributes"]["error"], "disk full");
        assert_eq!(failed.events[0]["attributes"]["level"], "error");
    }

    #[test]
    fn publisher_targets_are_ignored_and_do_not_break_the_trace() {
        let (commands, stats) = capture(64, || {
            tracing::info!(target: "async_nats", "connected");
            tracing::warn!(target: "async_nats::connector", "retrying");
            tracing::warn!(target: "jetscale_sdk", "could not publish");
            let app = tracing::info_span!(target: "app", "handle");
            let _app = app.enter();
            let nats = tracing::info_span!(target: "async_nats::jetstream", "publish");
            let _nats = nats.enter();
            tracing::info!(target: "async_natsx", "a different crate");
        });
        assert_eq!(stats.queued, 2, "{commands:?}");
        let log = logs(&commands)[0];
        assert_eq!(log.message, "a different crate");
        let spans = spans(&commands);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].0.name, "handle");
        assert_eq!(log.fields["span_id"], spans[0].0.span_id.as_str());
    }

    #[test]
    fn events_outside_spans_have_no_trace_context() {
        let (commands, _) = capture(64, || {
            tracing::warn!(target: "app", queue = "jobs", depth = 17i64, "queue is deep");
        });
        let log = logs(&commands)[0];
        assert_eq!(log.level, "warn");
        assert_eq!(log.fields["depth"], 17);
        assert!(!log.fields.contains_key("trace_id"));
        assert!(!log.fields.contains_key("span_id"));
    }

    #[test]
    fn a_full_channel_drops_the_newest_and_counts_it() {
        let (commands, stats) = capture(2, || {
            for i in 0..5 {
                tracing::info!(target: "app", i, "event");
            }
        });
        assert_eq!(commands.len(), 2);
        assert_eq!(stats.queued, 2);
        assert_eq!(stats.dropped, 3);
        // The oldest are kept.
        assert_eq!(logs(&commands)[1].fields["i"], 1);
    }

    #[test]
    fn records_become_messages_on_the_right_subjects() {
        let (commands, _) = capture(64, || {
            let span = tracing::info_span!(target: "app", "step", run_id = "abc123");
            span.in_scope(|| tracing::error!(target: "app", "failed"));
        });
        let subjects: Vec<String> = commands
            .iter()
            .map(|c| match c {
                Command::Span { span, run_id } => Message::span_with_run_id(span, run_id),
                Command::Log(log) => Message::log(log),
                Command::Flush(_) => unreachable!(),
            })
            .map(|m| m.unwrap().subject().to_owned())
            .collect();
        assert_eq!(
            subjects,
            [
                "telemetry.logs.worker.error",
                "telemetry.spans.worker.abc123"
            ]
        );
    }

    #[test]
    fn service_names_are_made_subject_tokens() {
        assert_eq!(sanitize_token("billing api"), "billing_api");
        assert_eq!(sanitize_token("a.b*c>d"), "a_b_c_d");
        assert_eq!(sanitize_token(""), "unknown");
        assert_eq!(sanitize_token("worker-1"), "worker-1");
    }

    #[test]
    fn ignored_targets_match_whole_path_segments() {
        let (layer, _rx) = JetscaleLayer::detached("w", 1, vec!["h2".into()], 0);
        assert!(layer.ignores("async_nats"));
        assert!(layer.ignores("async_nats::jetstream::context"));
        assert!(layer.ignores("jetscale_sdk::layer"));
        assert!(layer.ignores("h2::codec"));
        assert!(!layer.ignores("h2o"));
        assert!(!layer.ignores("jetscale"));
        assert!(!layer.ignores("app"));
    }
}
