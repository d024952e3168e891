//! The publisher: every message through JetStream, acknowledged, retried with the same
//! `Nats-Msg-Id`, with a bounded number of acks in flight.

use crate::error::{attempt_may_be_stored, is_transient, Stored};
use crate::options::{PublisherOptions, RetryPolicy};
use crate::otlp::DeviceReading;
use crate::{Error, IntoMessage, Message, PublishAck};
use async_nats::jetstream::context::{Context, ContextBuilder, PublishAckFuture, PublishError};
use jetscale_model::flat::{FlatLog, FlatMetric, FlatSpan};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Publishes telemetry to the TELEMETRY stream. Cheap to clone; clones share the connection
/// and the in-flight limit.
///
/// Every publish goes through JetStream and returns once the stream acknowledged the message
/// (or reported it a duplicate). A message that gets no ack in time, or finds no stream (a
/// leader election), is sent again with the same `Nats-Msg-Id` per the [`RetryPolicy`] for up
/// to its time budget (30 s by default), so retries ride through a node's crash or a short
/// loss of the connection and never store a second copy within the stream's duplicate window.
///
/// Memory is bounded: at most [`PublisherOptions::max_in_flight`] messages are held (waiting
/// for an ack or a retry); a publish beyond it waits for a slot, and fails with
/// [`Error::Backpressure`] if none frees within the budget. A publish that fails says whether
/// the stream may hold the message ([`Error::may_be_stored`]).
///
/// # Examples
///
/// ```no_run
/// use jetscale_sdk::{FlatLog, Publisher};
///
/// # async fn run() -> Result<(), jetscale_sdk::Error> {
/// let publisher = Publisher::connect("nats://127.0.0.1:4222").await?;
/// publisher
///     .publish_log(&FlatLog {
///         level: "error".into(),
///         message: "task handler returned error, will retry".into(),
///         service: "engine".into(),
///         error: "connection refused".into(),
///         ..Default::default()
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: Context,
    in_flight: Arc<Semaphore>,
    /// Set once the first ack started the check of that stream's duplicate window.
    window_checked: AtomicBool,
    max_in_flight: usize,
    retry: RetryPolicy,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("max_in_flight", &self.inner.max_in_flight)
            .field("in_flight", &self.in_flight())
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects to `url` with the default [`PublisherOptions`] (no credentials; a URL such as
    /// `nats://user:password@host:4222` carries its own).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), jetscale_sdk::Error> {
    /// let publisher = jetscale_sdk::Publisher::connect("nats://device:s3cret@nats:4222").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Publisher, Error> {
        PublisherOptions::new().connect(url).await
    }

    /// A publisher over an existing client, with the default publishing options.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let publisher = jetscale_sdk::Publisher::new(client);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(client: async_nats::Client) -> Publisher {
        PublisherOptions::new().build(client)
    }

    pub(crate) fn from_parts(client: async_nats::Client, options: PublisherOptions) -> Publisher {
        let js = ContextBuilder::new()
            .timeout(options.ack_timeout)
            .max_ack_inflight(options.max_in_flight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Publisher {
            inner: Arc::new(Inner {
                client,
                js,
                in_flight: Arc::new(Semaphore::new(options.max_in_flight)),
                max_in_flight: options.max_in_flight,
                retry: options.retry,
                window_checked: AtomicBool::new(false),
            }),
        }
    }

    /// The underlying NATS client.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(publisher: jetscale_sdk::Publisher) {
    /// println!("{:?}", publisher.client().connection_state());
    /// # }
    /// ```
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// How many messages are waiting for their ack right now.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(publisher: jetscale_sdk::Publisher) {
    /// assert!(publisher.in_flight() <= 256);
    /// # }
    /// ```
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight - self.inner.in_flight.available_permits()
    }

    /// Publishes one message (or anything that becomes one) and waits for its ack.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{headers::Format, Message, Publisher};
    ///
    /// # async fn run(publisher: Publisher) -> Result<(), jetscale_sdk::Error> {
    /// let message = Message::new(
    ///     "telemetry.logs.engine.info",
    ///     Some(Format::FlatLog),
    ///     "application/json",
    ///     r#"{"level":"info","message":"started","service":"engine"}"#,
    /// );
    /// let ack = publisher.publish(message).await?;
    /// assert!(!ack.duplicate);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, message: impl IntoMessage) -> Result<PublishAck, Error> {
        let message = message.into_message()?;
        self.start(message).await?.await
    }

    /// Publishes a span record on `telemetry.spans.{service}.{run_id}` with `Nats-Msg-Id`
    /// `{trace_id}.{span_id}` (see [`Message::span`]). Publishing the same span again within
    /// the stream's duplicate window returns an ack with `duplicate: true` and stores nothing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{ids, FlatSpan, Publisher};
    ///
    /// # async fn run(publisher: Publisher) -> Result<(), jetscale_sdk::Error> {
    /// let span = FlatSpan {
    ///     trace_id: ids::trace_id(),
    ///     span_id: ids::span_id(),
    ///     name: "worker.executeTask".into(),
    ///     service: "worker".into(),
    ///     kind: "server".into(),
    ///     status: "ok".into(),
    ///     ..Default::default()
    /// };
    /// publisher.publish_span(&span).await?;
    /// assert!(publisher.publish_span(&span).await?.duplicate);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_span(&self, span: &FlatSpan) -> Result<PublishAck, Error> {
        self.publish(Message::span(span)?).await
    }

    /// Publishes a metric point on `telemetry.metrics.{service}.{name}`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{FlatMetric, Publisher};
    ///
    /// # async fn run(publisher: Publisher) -> Result<(), jetscale_sdk::Error> {
    /// publisher
    ///     .publish_metric(&FlatMetric {
    ///         name: "queue.depth".into(),
    ///         kind: "gauge".into(),
    ///         value: 17.0,
    ///         service: "worker".into(),
    ///         timestamp: "2024-01-15T10:30:01Z".into(),
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_metric(&self, metric: &FlatMetric) -> Result<PublishAck, Error> {
        self.publish(Message::metric(metric)?).await
    }

    /// Publishes a log record on `telemetry.logs.{service}.{level}`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{FlatLog, Publisher};
    ///
    /// # async fn run(publisher: Publisher) -> Result<(), jetscale_sdk::Error> {
    /// publisher
    ///     .publish_log(&FlatLog {
    ///         level: "info".into(),
    ///         message: "worker started".into(),
    ///         service: "worker".into(),
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_log(&self, log: &FlatLog) -> Result<PublishAck, Error> {
        self.publish(Message::log(log)?).await
    }

    /// Publishes an OTLP metrics request as protobuf on `telemetry.metrics.{device_id}`
    /// (see [`Message::otlp_metrics`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{ExportMetricsServiceRequest, Publisher};
    ///
    /// # async fn run(publisher: Publisher, request: ExportMetricsServiceRequest) -> Result<(), jetscale_sdk::Error> {
    /// publisher.publish_otlp_metrics("sensor-001", &request).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_otlp_metrics(
        &self,
        device_id: &str,
        request: &ExportMetricsServiceRequest,
    ) -> Result<PublishAck, Error> {
        self.publish(Message::otlp_metrics(device_id, request)?)
            .await
    }

    /// Publishes an OTLP traces request as protobuf on `telemetry.spans.{service}.{run_id}`
    /// (see [`Message::otlp_traces`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{ExportTraceServiceRequest, Publisher};
    ///
    /// # async fn run(publisher: Publisher, request: ExportTraceServiceRequest) -> Result<(), jetscale_sdk::Error> {
    /// publisher.publish_otlp_traces("worker", "abc123", &request).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_otlp_traces(
        &self,
        service: &str,
        run_id: &str,
        request: &ExportTraceServiceRequest,
    ) -> Result<PublishAck, Error> {
        self.publish(Message::otlp_traces(service, run_id, request)?)
            .await
    }

    /// Publishes an OTLP logs request as protobuf on `telemetry.logs.{service}.{level}`
    /// (see [`Message::otlp_logs`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{ExportLogsServiceRequest, Publisher};
    ///
    /// # async fn run(publisher: Publisher, request: ExportLogsServiceRequest) -> Result<(), jetscale_sdk::Error> {
    /// publisher.publish_otlp_logs("engine", "error", &request).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_otlp_logs(
        &self,
        service: &str,
        level: &str,
        request: &ExportLogsServiceRequest,
    ) -> Result<PublishAck, Error> {
        self.publish(Message::otlp_logs(service, level, request)?)
            .await
    }

    /// Publishes the IoT design's device payload (three gauges as OTLP JSON) on
    /// `telemetry.metrics.{device_id}` with `Content-Type: application/json`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{DeviceReading, Publisher};
    ///
    /// # async fn run(publisher: Publisher) -> Result<(), jetscale_sdk::Error> {
    /// let reading = DeviceReading::new("sensor-001", 21.5, 40.0, 87.0);
    /// publisher.publish_device_reading(&reading).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_device_reading(
        &self,
        reading: &DeviceReading,
    ) -> Result<PublishAck, Error> {
        self.publish(Message::device_reading(reading)?).await
    }

    /// Publishes many messages with their acks pipelined: each message is sent as soon as an
    /// in-flight slot is free ([`PublisherOptions::max_in_flight`]), in order, and acks are
    /// awaited concurrently, each message retried on its own. Returns the acks in input order
    /// once every message is acknowledged, or a [`BatchError`] holding the outcome of each
    /// when any failed (including records that could not be built into a message).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use jetscale_sdk::{FlatMetric, Publisher};
    ///
    /// # async fn run(publisher: Publisher) -> Result<(), jetscale_sdk::BatchError> {
    /// let points: Vec<FlatMetric> = (0..10_000)
    ///     .map(|i| FlatMetric {
    ///         name: "sensor.reading".into(),
    ///         kind: "gauge".into(),
    ///         value: f64::from(i),
    ///         service: "bench".into(),
    ///         ..Default::default()
    ///     })
    ///     .collect();
    /// let acks = publisher.publish_many(&points).await?;
    /// assert_eq!(acks.len(), 10_000);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_many<I>(&self, records: I) -> Result<Vec<PublishAck>, BatchError>
    where
        I: IntoIterator,
        I::Item: IntoMessage,
    {
        let mut results: Vec<Option<Result<PublishAck, Error>>> = Vec::new();
        let mut tasks = JoinSet::new();
        for (index, record) in records.into_iter().enumerate() {
            results.push(None);
            match record.into_message() {
                Ok(message) => match self.start(message).await {
                    Ok(confirm) => {
                        tasks.spawn(async move { (index, confirm.await) });
                    }
                    Err(err) => results[index] = Some(Err(err)),
                },
                Err(err) => results[index] = Some(Err(err)),
            }
            while let Some(joined) = tasks.try_join_next() {
                let (i, outcome) = unwrap_joined(joined);
                results[i] = Some(outcome);
            }
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, outcome) = unwrap_joined(joined);
            results[i] = Some(outcome);
        }
        let results: Vec<Result<PublishAck, Error>> = results
            .into_iter()
            .map(|r| r.expect("every index gets an outcome"))
            .collect();
        if results.iter().all(Result::is_ok) {
            Ok(results.into_iter().map(Result::unwrap).collect())
        } else {
            Err(BatchError { results })
        }
    }

    /// Checks that the duplicate window of `stream` is at least this publisher's retry budget
    /// (see [`RetryPolicy::check_duplicate_window`]); the publisher also does so by itself
    /// after its first ack, and logs a warning when it is not.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(publisher: jetscale_sdk::Publisher) -> Result<(), jetscale_sdk::Error> {
    /// publisher.check_duplicate_window("TELEMETRY").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check_duplicate_window(&self, stream: &str) -> Result<(), Error> {
        let info_error = |detail: String| Error::StreamInfo {
            stream: stream.to_owned(),
            detail,
        };
        let mut handle = self
            .inner
            .js
            .get_stream(stream)
            .await
            .map_err(|e| info_error(e.to_string()))?;
        let window = handle
            .info()
            .await
            .map_err(|e| info_error(e.to_string()))?
            .config
            .duplicate_window;
        self.inner.retry.check_duplicate_window(window)
    }

    /// After the first ack: warns, once, when the stream's duplicate window is shorter than
    /// the retry budget. A warning, not a refusal: the message was stored, and a user without
    /// permission to read stream info must still be able to publish.
    fn check_window_once(&self, stream: &str) {
        if self.inner.window_checked.swap(true, Ordering::Relaxed) {
            return;
        }
        let publisher = self.clone();
        let stream = stream.to_owned();
        tokio::spawn(async move {
            match publisher.check_duplicate_window(&stream).await {
                Ok(()) => {}
                Err(err @ Error::DuplicateWindowTooShort { .. }) => {
                    tracing::warn!(target: "jetscale_sdk", stream, "{err}");
                }
                Err(err) => {
                    tracing::debug!(target: "jetscale_sdk", error = %err, "duplicate window not checked");
                }
            }
        });
    }

    /// Takes an in-flight slot and sends the message; the returned future waits for the ack,
    /// retrying per the policy, and frees the slot when done. Spawnable: it owns what it uses.
    /// Waiting for a slot is bounded by the retry budget: a stream that acknowledges nothing
    /// for that long gets [`Error::Backpressure`] rather than an ever longer queue of callers.
    pub(crate) async fn start(
        &self,
        message: Message,
    ) -> Result<impl Future<Output = Result<PublishAck, Error>> + Send + 'static, Error> {
        let retry = self.inner.retry.clone();
        let waiting = Instant::now();
        let slot = self.inner.in_flight.clone().acquire_owned();
        let permit = match tokio::time::timeout(retry.max_elapsed, slot).await {
            Ok(permit) => permit.expect("the in-flight semaphore is never closed"),
            Err(_) => {
                return Err(Error::Backpressure {
                    subject: message.subject().to_owned(),
                    max_in_flight: self.inner.max_in_flight,
                    waited: waiting.elapsed(),
                })
            }
        };
        let started = Instant::now();
        let first = send(&self.inner.js, &message).await;
        let publisher = self.clone();
        Ok(async move {
            let outcome =
                confirm(&publisher.inner.js, retry, message, started, first, permit).await;
            if let Ok(ack) = &outcome {
                publisher.check_window_once(&ack.stream);
            }
            outcome
        })
    }
}

async fn send(js: &Context, message: &Message) -> Result<PublishAckFuture, PublishError> {
    js.publish_with_headers(
        message.subject().to_owned(),
        message.headers().clone(),
        message.payload().clone(),
    )
    .await
}

/// Awaits the ack of a message sent at `started`, sending it again (same `Nats-Msg-Id`) after
/// each transient failure until the policy's time budget or attempt count runs out.
async fn confirm(
    js: &Context,
    retry: RetryPolicy,
    message: Message,
    started: Instant,
    first: Result<PublishAckFuture, PublishError>,
    permit: OwnedSemaphorePermit,
) -> Result<PublishAck, Error> {
    let mut attempt = 1;
    let mut stored = Stored::No;
    let mut pending = first;
    let outcome = loop {
        let result = match pending {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        let err = match result {
            Ok(ack) => break Ok(ack),
            Err(err) => err,
        };
        if attempt_may_be_stored(err.kind()) {
            stored = Stored::Maybe;
        }
        let elapsed = started.elapsed();
        if !is_transient(err.kind())
            || attempt >= retry.attempts.max(1)
            || elapsed >= retry.max_elapsed
        {
            break Err(Error::Publish {
                subject: message.subject().to_owned(),
                msg_id: message.msg_id().to_owned(),
                attempts: attempt,
                elapsed,
                stored,
                source: err,
            });
        }
        tracing::debug!(
            target: "jetscale_sdk",
            subject = message.subject(),
            msg_id = message.msg_id(),
            attempt,
            error = %err,
            "publish not acknowledged; sending again with the same Nats-Msg-Id"
        );
        // The last retry starts at the budget's end at the latest, so it stays inside a
        // duplicate window at least as long as the budget.
        let wait = retry.backoff(attempt).min(retry.max_elapsed - elapsed);
        tokio::time::sleep(wait).await;
        attempt += 1;
        pending = send(js, &message).await;
    };
    drop(permit);
    outcome
}

fn unwrap_joined<T>(joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(value) => value,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => panic!("a publish task was cancelled: {err}"),
    }
}

/// Some messages of a [`Publisher::publish_many`] call were not published. Holds the outcome
/// of every message, in input order, so the caller can retry only the failures.
///
/// # Examples
///
/// ```no_run
/// use jetscale_sdk::{FlatLog, Publisher};
///
/// # async fn run(publisher: Publisher, logs: Vec<FlatLog>) {
/// if let Err(batch) = publisher.publish_many(&logs).await {
///     for (index, err) in batch.failures() {
///         eprintln!("log {index} not published: {err}");
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct BatchError {
    results: Vec<Result<PublishAck, Error>>,
}

impl BatchError {
    /// The outcome of every message, in input order.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(batch: jetscale_sdk::BatchError) {
    /// let stored = batch.results().iter().filter(|r| r.is_ok()).count();
    /// # }
    /// ```
    pub fn results(&self) -> &[Result<PublishAck, Error>] {
        &self.results
    }

    /// Takes the outcomes out.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(batch: jetscale_sdk::BatchError) {
    /// let outcomes: Vec<Result<jetscale_sdk::PublishAck, jetscale_sdk::Error>> = batch.into_results();
    /// # }
    /// ```
    pub fn into_results(self) -> Vec<Result<PublishAck, Error>> {
        self.results
    }

    /// The failed messages: their index in the input and why.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(batch: jetscale_sdk::BatchError) {
    /// let retriable = batch.failures().all(|(_, err)| err.is_retriable());
    /// # }
    /// ```
    pub fn failures(&self) -> impl Iterator<Item = (usize, &Error)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    }

    /// How many messages were published (acknowledged, duplicates included).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run(batch: jetscale_sdk::BatchError) {
    /// println!("{} published before the failure", batch.published());
    /// # }
    /// ```
    pub fn published(&self) -> usize {
        self.results.iter().filter(|r| r.is_ok()).count()
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.results.len() - self.published();
        write!(
            f,
            "{failed} of {} messages not published",
            self.results.len()
        )?;
        if let Some((index, err)) = self.failures().next() {
            write!(f, "; the first (#{index}): {err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures()
            .next()
            .map(|(_, e)| e as &(dyn std::error::Error + 'static))
    }
}
