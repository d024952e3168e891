//! Bytes to records. The format of each message is decided by its headers first
//! (`Content-Type`, `Jetscale-Format`), then by its content; the subject never decides it.
//! Every failure is a [`Rejection`] that names what was wrong, so the message can be
//! dead-lettered with that reason instead of retried forever.

pub mod attributes;
pub mod detect;
pub mod numbers;
pub mod otlp_json;

pub use detect::{detect, Format};

use crate::config::{AttributeAction, Encoding, Limits};
use jetscale_model::{DistributionPoint, LogRecord, MetricPoint, SpanRecord};

/// Why a message can not be stored. Always dead-lettered, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub detail: String,
}

/// The class of a rejection, stored in the dead-letter table's `reason` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// Not any format jetscale reads.
    UnknownFormat,
    /// The format was recognised but the content does not follow it.
    Malformed,
    /// A configured limit was exceeded; the detail names the limit.
    Limit,
    /// Payload and subject disagree about who sent it.
    Identity,
    /// The database refused the message's rows.
    Database,
}

impl std::fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectionKind::UnknownFormat => "unknown format",
            RejectionKind::Malformed => "malformed",
            RejectionKind::Limit => "limit exceeded",
            RejectionKind::Identity => "identity mismatch",
            RejectionKind::Database => "rejected by the database",
        })
    }
}

impl Rejection {
    pub fn new(kind: RejectionKind, detail: impl Into<String>) -> Self {
        Rejection {
            kind,
            detail: detail.into(),
        }
    }
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RejectionKind::Malformed, detail)
    }
    pub fn limit(detail: impl Into<String>) -> Self {
        Self::new(RejectionKind::Limit, detail)
    }
}

/// Where decoded records go. The batch implements it and encodes rows as they arrive, so
/// records never have to be collected in between.
pub trait RecordSink {
    /// One numeric point (gauge, sum, or a flat metric point).
    fn metric(&mut self, point: &MetricPoint<'_>) -> Result<(), Rejection>;
    /// One histogram, exponential histogram or summary point.
    fn distribution(&mut self, point: &DistributionPoint<'_>) -> Result<(), Rejection>;
    /// One span.
    fn span(&mut self, span: &SpanRecord<'_>) -> Result<(), Rejection>;
    /// One log record.
    fn log(&mut self, log: &LogRecord<'_>) -> Result<(), Rejection>;
}

/// What every decoder needs besides the bytes: limits, processors and the clock.
#[derive(Debug, Clone)]
pub struct DecodeContext<'a> {
    pub limits: &'a Limits,
    pub resource_actions: &'a [AttributeAction],
    pub encoding: Encoding,
    /// Points before this are rejected (nanoseconds since the epoch).
    pub min_time_ns: i64,
    /// Points after this are rejected.
    pub max_time_ns: i64,
}

impl<'a> DecodeContext<'a> {
    /// A context whose time window is taken from the limits and the current time.
    pub fn now(
        limits: &'a Limits,
        resource_actions: &'a [AttributeAction],
        encoding: Encoding,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        DecodeContext {
            limits,
            resource_actions,
            encoding,
            min_time_ns: now.saturating_sub(limits.max_past.as_nanos() as i64),
            max_time_ns: now.saturating_add(limits.max_future.as_nanos() as i64),
        }
    }

    /// Checks a point's time against the window.
    pub fn check_time(&self, time_ns: i64) -> Result<(), Rejection> {
        if time_ns <= 0 {
            return Err(Rejection::malformed(
                "data point has timeUnixNano 0 or missing",
            ));
        }
        if time_ns < self.min_time_ns {
            return Err(Rejection::limit(format!(
                "max_past: point at {} is older than the retention window (earliest accepted {})",
                jetscale_model::flat::unix_nanos_to_rfc3339(time_ns),
                jetscale_model::flat::unix_nanos_to_rfc3339(self.min_time_ns)
            )));
        }
        if time_ns > self.max_time_ns {
            return Err(Rejection::limit(format!(
                "max_future: point at {} is too far in the future (latest accepted {})",
                jetscale_model::flat::unix_nanos_to_rfc3339(time_ns),
                jetscale_model::flat::unix_nanos_to_rfc3339(self.max_time_ns)
            )));
        }
        Ok(())
    }
}

/// A message as the decoders see it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub subject: &'a str,
    pub content_type: Option<&'a str>,
    pub format_header: Option<&'a str>,
    pub payload: &'a [u8],
}

/// Decodes one message into the sink. On error the sink may hold part of the message:
/// the caller rolls it back.
pub fn decode(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    if msg.payload.len() > ctx.limits.max_message_bytes {
        return Err(Rejection::limit(format!(
            "max_message_bytes: message is {} bytes, the limit is {}",
            msg.payload.len(),
            ctx.limits.max_message_bytes
        )));
    }
    match detect(msg, ctx.encoding)? {
        Format::OtlpJsonMetrics => otlp_json::decode_metrics(msg, ctx, sink),
        other => Err(Rejection::new(
            RejectionKind::UnknownFormat,
            format!("{other:?} is not stored by this collector"),
        )),
    }
}
