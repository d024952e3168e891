//! A message ready to publish: subject, headers, payload and the `Nats-Msg-Id` that stays
//! the same across retries.

use crate::headers::{self, Format};
use crate::{ids, Error};
use async_nats::HeaderMap;
use bytes::Bytes;
use jetscale_model::flat::{FlatLog, FlatMetric, FlatSpan};
use jetscale_model::subject;

/// A message built from a record, ready for [`Publisher::publish`](crate::Publisher::publish).
///
/// Building checks that every value that becomes a subject token is one, serialises the
/// record and fixes the `Nats-Msg-Id`, so publishing a `Message` twice (a retry, or a second
/// call) is deduplicated by the stream within its duplicate window.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::{FlatSpan, Message};
///
/// let span = FlatSpan {
///     trace_id: "a1b2c3d4e5f6".into(),
///     span_id: "f6e5d4c3b2a1".into(),
///     name: "worker.executeTask".into(),
///     service: "worker".into(),
///     attributes: [("run_id".to_owned(), "abc123".into())].into(),
///     ..Default::default()
/// };
/// let message = Message::span(&span)?;
/// assert_eq!(message.subject(), "telemetry.spans.worker.abc123");
/// assert_eq!(message.msg_id(), "a1b2c3d4e5f6.f6e5d4c3b2a1");
/// assert_eq!(message.header("Jetscale-Format"), Some("flat-span"));
/// assert_eq!(message.header("Content-Type"), Some("application/json"));
/// # Ok::<(), jetscale_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Message {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    msg_id: String,
}

impl Message {
    /// Builds a message from its parts, with `Content-Type` (and `Jetscale-Format` when given)
    /// and a new random `Nats-Msg-Id`. The subject is published as is (it must lie under
    /// `telemetry.>` to be stored by the TELEMETRY stream).
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{headers::Format, Message};
    ///
    /// let message = Message::new(
    ///     "telemetry.logs.engine.info",
    ///     Some(Format::FlatLog),
    ///     "application/json",
    ///     r#"{"level":"info","message":"hello"}"#,
    /// );
    /// assert_eq!(message.msg_id().len(), 32);
    /// ```
    pub fn new(
        subject: impl Into<String>,
        format: Option<Format>,
        content_type: &str,
        payload: impl Into<Bytes>,
    ) -> Message {
        let msg_id = ids::msg_id();
        let mut headers = HeaderMap::new();
        headers.insert(headers::CONTENT_TYPE, content_type);
        if let Some(format) = format {
            headers.insert(headers::FORMAT, format.header_value());
        }
        headers.insert(headers::MSG_ID, msg_id.as_str());
        Message {
            subject: subject.into(),
            headers,
            payload: payload.into(),
            msg_id,
        }
    }

    /// A span record on `telemetry.spans.{service}.{run_id}` with `Nats-Msg-Id`
    /// `{trace_id}.{span_id}` (the NATS-native service design).
    ///
    /// The run id is the span's `run_id` attribute (a string or a number) when it is a valid
    /// subject token, else the span's trace id, so every span of a trace without a run lands
    /// under one subject.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{FlatSpan, Message};
    ///
    /// let span = FlatSpan {
    ///     trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    ///     span_id: "00f067aa0ba902b7".into(),
    ///     service: "worker".into(),
    ///     ..Default::default()
    /// };
    /// let message = Message::span(&span)?;
    /// assert_eq!(message.subject(), "telemetry.spans.worker.4bf92f3577b34da6a3ce929d0e0e4736");
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn span(span: &FlatSpan) -> Result<Message, Error> {
        let run_id = run_id_of(span);
        Message::span_with_run_id(span, &run_id)
    }

    /// A span record on `telemetry.spans.{service}.{run_id}` with a run id chosen by the
    /// caller (the tracing layer passes the run id a span inherits from its parents).
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{FlatSpan, Message};
    ///
    /// let span = FlatSpan {
    ///     trace_id: "a1".into(),
    ///     span_id: "b2".into(),
    ///     service: "worker".into(),
    ///     ..Default::default()
    /// };
    /// let message = Message::span_with_run_id(&span, "abc123")?;
    /// assert_eq!(message.subject(), "telemetry.spans.worker.abc123");
    /// assert!(Message::span_with_run_id(&span, "run 7").is_err());
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn span_with_run_id(span: &FlatSpan, run_id: &str) -> Result<Message, Error> {
        for (what, id) in [("trace_id", &span.trace_id), ("span_id", &span.span_id)] {
            if id.is_empty() {
                return Err(Error::InvalidRecord(format!("a span needs a {what}")));
            }
            token(what, id)?;
        }
        let subject = subject::spans(token("service", &span.service)?, token("run id", run_id)?);
        let payload = serde_json::to_vec(span)?;
        Ok(
            Message::new(subject, Some(Format::FlatSpan), headers::JSON, payload)
                .with_msg_id(span.msg_id()),
        )
    }

    /// A metric point on `telemetry.metrics.{service}.{name}` (the NATS-native service design); the dots of the
    /// name become subject tokens.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{FlatMetric, Message};
    ///
    /// let metric = FlatMetric {
    ///     name: "step.duration_ms".into(),
    ///     kind: "histogram".into(),
    ///     value: 1234.0,
    ///     service: "worker".into(),
    ///     ..Default::default()
    /// };
    /// let message = Message::metric(&metric)?;
    /// assert_eq!(message.subject(), "telemetry.metrics.worker.step.duration_ms");
    /// assert_eq!(message.header("Jetscale-Format"), Some("flat-metric"));
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn metric(metric: &FlatMetric) -> Result<Message, Error> {
        let service = token("service", &metric.service)?;
        for part in metric.name.split('.') {
            if !subject::is_valid_token(part) {
                return Err(Error::InvalidToken {
                    what: "metric name",
                    value: metric.name.clone(),
                });
            }
        }
        let subject = subject::service_metric(service, &metric.name);
        let payload = serde_json::to_vec(metric)?;
        Ok(Message::new(
            subject,
            Some(Format::FlatMetric),
            headers::JSON,
            payload,
        ))
    }

    /// A log record on `telemetry.logs.{service}.{level}` (the NATS-native service design). The level is
    /// lower-cased in the subject (`ERROR` is published on `….error`); the record keeps it as
    /// written.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{FlatLog, Message};
    ///
    /// let log = FlatLog {
    ///     level: "error".into(),
    ///     message: "task handler returned error, will retry".into(),
    ///     service: "engine".into(),
    ///     error: "connection refused".into(),
    ///     ..Default::default()
    /// };
    /// assert_eq!(Message::log(&log)?.subject(), "telemetry.logs.engine.error");
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn log(log: &FlatLog) -> Result<Message, Error> {
        let level = log.level.to_ascii_lowercase();
        let subject = subject::logs(token("service", &log.service)?, token("level", &level)?);
        let payload = serde_json::to_vec(log)?;
        Ok(Message::new(
            subject,
            Some(Format::FlatLog),
            headers::JSON,
            payload,
        ))
    }

    /// Replaces the `Nats-Msg-Id`, for a caller that retries across restarts and wants the
    /// stream to drop the second copy.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::Message;
    ///
    /// let message = Message::new("telemetry.logs.engine.info", None, "application/json", "{}")
    ///     .with_msg_id("engine-boot-42");
    /// assert_eq!(message.header("Nats-Msg-Id"), Some("engine-boot-42"));
    /// ```
    pub fn with_msg_id(mut self, msg_id: impl Into<String>) -> Message {
        self.msg_id = msg_id.into();
        self.headers.insert(headers::MSG_ID, self.msg_id.as_str());
        self
    }

    /// The subject the message is published on.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::Message;
    /// let message = Message::new("telemetry.metrics.sensor-001", None, "application/json", "{}");
    /// assert_eq!(message.subject(), "telemetry.metrics.sensor-001");
    /// ```
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The `Nats-Msg-Id` the message is published with.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::Message;
    /// let message = Message::new("telemetry.metrics.sensor-001", None, "application/json", "{}");
    /// assert_eq!(message.header("Nats-Msg-Id"), Some(message.msg_id()));
    /// ```
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// Every header of the message.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::Message;
    /// let message = Message::new("telemetry.metrics.sensor-001", None, "application/json", "{}");
    /// assert!(message.headers().get("Content-Type").is_some());
    /// ```
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The value of one header, if set.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::Message;
    /// let message = Message::new("telemetry.metrics.sensor-001", None, "application/json", "{}");
    /// assert_eq!(message.header("Jetscale-Format"), None);
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// The payload bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::Message;
    /// let message = Message::new("telemetry.metrics.sensor-001", None, "application/json", "{}");
    /// assert_eq!(&message.payload()[..], b"{}");
    /// ```
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// The run id a span is published under: its `run_id` attribute if that is a valid subject
/// token, else its trace id.
pub(crate) fn run_id_of(span: &FlatSpan) -> String {
    let attribute = match span.attributes.get("run_id") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    attribute
        .filter(|id| subject::is_valid_token(id))
        .unwrap_or_else(|| span.trace_id.clone())
}

/// Checks that a value can be one subject token.
pub(crate) fn token<'a>(what: &'static str, value: &'a str) -> Result<&'a str, Error> {
    if subject::is_valid_token(value) {
        Ok(value)
    } else {
        Err(Error::InvalidToken {
            what,
            value: value.to_owned(),
        })
    }
}

/// One flat record of any signal, for [`Publisher::publish_many`](crate::Publisher::publish_many)
/// calls that mix them.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::{FlatLog, FlatMetric, Record};
///
/// let batch: Vec<Record> = vec![
///     FlatMetric { name: "queue.depth".into(), service: "worker".into(), ..Default::default() }.into(),
///     FlatLog { level: "info".into(), service: "worker".into(), ..Default::default() }.into(),
/// ];
/// assert!(matches!(batch[1], Record::Log(_)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A span record.
    Span(FlatSpan),
    /// A metric point.
    Metric(FlatMetric),
    /// A log record.
    Log(FlatLog),
}

impl From<FlatSpan> for Record {
    fn from(span: FlatSpan) -> Record {
        Record::Span(span)
    }
}

impl From<FlatMetric> for Record {
    fn from(metric: FlatMetric) -> Record {
        Record::Metric(metric)
    }
}

impl From<FlatLog> for Record {
    fn from(log: FlatLog) -> Record {
        Record::Log(log)
    }
}

/// Anything that can become a [`Message`]: a message itself, a flat record (owned or
/// borrowed) or a [`Record`]. What [`Publisher::publish`](crate::Publisher::publish) and
/// [`Publisher::publish_many`](crate::Publisher::publish_many) take.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::{FlatLog, IntoMessage};
///
/// let log = FlatLog { level: "warn".into(), service: "engine".into(), ..Default::default() };
/// let message = (&log).into_message()?;
/// assert_eq!(message.subject(), "telemetry.logs.engine.warn");
/// # Ok::<(), jetscale_sdk::Error>(())
/// ```
pub trait IntoMessage {
    /// Builds the message.
    fn into_message(self) -> Result<Message, Error>;
}

impl IntoMessage for Message {
    fn into_message(self) -> Result<Message, Error> {
        Ok(self)
    }
}

impl IntoMessage for &FlatSpan {
    fn into_message(self) -> Result<Message, Error> {
        Message::span(self)
    }
}

impl IntoMessage for FlatSpan {
    fn into_message(self) -> Result<Message, Error> {
        Message::span(&self)
    }
}

impl IntoMessage for &FlatMetric {
    fn into_message(self) -> Result<Message, Error> {
        Message::metric(self)
    }
}

impl IntoMessage for FlatMetric {
    fn into_message(self) -> Result<Message, Error> {
        Message::metric(&self)
    }
}

impl IntoMessage for &FlatLog {
    fn into_message(self) -> Result<Message, Error> {
        Message::log(self)
    }
}

impl IntoMessage for FlatLog {
    fn into_message(self) -> Result<Message, Error> {
        Message::log(&self)
    }
}

impl IntoMessage for &Record {
    fn into_message(self) -> Result<Message, Error> {
        match self {
            Record::Span(span) => Message::span(span),
            Record::Metric(metric) => Message::metric(metric),
            Record::Log(log) => Message::log(log),
        }
    }
}

impl IntoMessage for Record {
    fn into_message(self) -> Result<Message, Error> {
        (&self).into_message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_span() -> FlatSpan {
        serde_json::from_value(json!({
            "trace_id": "a1b2c3d4e5f6", "span_id": "f6e5d4c3b2a1", "parent_id": "1a2b3c4d5e6f",
            "name": "worker.executeTask", "service": "worker", "kind": "server",
            "start_time": "2024-01-15T10:30:00Z", "end_time": "2024-01-15T10:30:01.234Z",
            "duration_ms": 1234, "status": "ok",
            "attributes": {"run_id": "abc123", "step_id": "build"}, "events": [], "error": ""
        }))
        .unwrap()
    }

    #[test]
    fn seed_001_span_subject_msg_id_headers_and_payload() {
        let span = seed_span();
        let message = Message::span(&span).unwrap();
        assert_eq!(message.subject(), "telemetry.spans.worker.abc123");
        assert_eq!(
            message.header("Nats-Msg-Id"),
            Some("a1b2c3d4e5f6.f6e5d4c3b2a1")
        );
        assert_eq!(message.msg_id(), "a1b2c3d4e5f6.f6e5d4c3b2a1");
        assert_eq!(message.header("Jetscale-Format"), Some("flat-span"));
        assert_eq!(message.header("Content-Type"), Some("application/json"));
        let back: FlatSpan = serde_json::from_slice(message.payload()).unwrap();
        assert_eq!(back, span);
        // The same span always gets the same id, so a second publish is a duplicate.
        assert_eq!(Message::span(&span).unwrap().msg_id(), message.msg_id());
    }

    #[test]
    fn span_run_id_falls_back_to_trace_id() {
        let mut span = seed_span();
        span.attributes.insert("run_id".into(), json!(42));
        assert_eq!(
            Message::span(&span).unwrap().subject(),
            "telemetry.spans.worker.42"
        );
        span.attributes.insert("run_id".into(), json!("run 7"));
        assert_eq!(
            Message::span(&span).unwrap().subject(),
            "telemetry.spans.worker.a1b2c3d4e5f6"
        );
        span.attributes.remove("run_id");
        assert_eq!(
            Message::span(&span).unwrap().subject(),
            "telemetry.spans.worker.a1b2c3d4e5f6"
        );
    }

    #[test]
    fn spans_without_ids_or_service_are_refused() {
        let mut span = seed_span();
        span.trace_id.clear();
        assert!(matches!(Message::span(&span), Err(Error::InvalidRecord(_))));
        let mut span = seed_span();
        span.service = "my service".into();
        assert!(matches!(
            Message::span(&span),
            Err(Error::InvalidToken {
                what: "service",
                ..
            })
        ));
    }

    #[test]
    fn metric_and_log_subjects_follow_seed_001() {
        let metric = FlatMetric {
            name: "step.duration_ms".into(),
            kind: "histogram".into(),
            value: 1234.0,
            tags: [("task_type".to_owned(), json!("build"))].into(),
            service: "worker".into(),
            timestamp: "2024-01-15T10:30:01Z".into(),
        };
        let message = Message::metric(&metric).unwrap();
        assert_eq!(
            message.subject(),
            "telemetry.metrics.worker.step.duration_ms"
        );
        assert_eq!(message.header("Jetscale-Format"), Some("flat-metric"));
        let value: serde_json::Value = serde_json::from_slice(message.payload()).unwrap();
        assert_eq!(
            value,
            json!({"name": "step.duration_ms", "type": "histogram", "value": 1234.0,
                   "tags": {"task_type": "build"}, "service": "worker",
                   "timestamp": "2024-01-15T10:30:01Z"})
        );
        for bad in ["", "a..b", "a.*", "a b", ".a"] {
            let metric = FlatMetric {
                name: bad.into(),
                ..metric.clone()
            };
            assert!(Message::metric(&metric).is_err(), "{bad:?}");
        }

        let log = FlatLog {
            level: "ERROR".into(),
            message: "task handler returned error, will retry".into(),
            service: "engine".into(),
            ..Default::default()
        };
        let message = Message::log(&log).unwrap();
        assert_eq!(message.subject(), "telemetry.logs.engine.error");
        assert_eq!(message.header("Jetscale-Format"), Some("flat-log"));
        let back: FlatLog = serde_json::from_slice(message.payload()).unwrap();
        assert_eq!(back.level, "ERROR");
    }

    #[test]
    fn metrics_and_logs_get_a_fresh_128_bit_msg_id_per_message() {
        let log = FlatLog {
            level: "info".into(),
            service: "engine".into(),
            ..Default::default()
        };
        let a = Message::log(&log).unwrap();
        let b = Message::log(&log).unwrap();
        assert_eq!(a.msg_id().len(), 32);
        assert_ne!(a.msg_id(), b.msg_id());
        assert_eq!(a.header("Nats-Msg-Id"), Some(a.msg_id()));
        // Clones (what a retry sends) keep it.
        assert_eq!(a.clone().msg_id(), a.msg_id());
    }

    #[test]
    fn records_convert_by_value_and_by_reference() {
        let record = Record::from(seed_span());
        assert_eq!(
            (&record).into_message().unwrap().subject(),
            "telemetry.spans.worker.abc123"
        );
        assert_eq!(
            record.into_message().unwrap().header("Jetscale-Format"),
            Some("flat-span")
        );
    }
}
