//! The one error type of the SDK: a variant per step that can fail.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use std::path::PathBuf;

/// Why connecting, building a message or publishing failed.
///
/// [`Error::is_retriable`] tells whether trying the same thing again later can succeed.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::{FlatMetric, Message};
///
/// // A metric name may hold dots (they become subject tokens) but no spaces or wildcards.
/// let err = Message::metric(&FlatMetric {
///     name: "requests total".into(),
///     service: "worker".into(),
///     ..Default::default()
/// })
/// .unwrap_err();
/// assert!(matches!(err, jetscale_sdk::Error::InvalidToken { what: "metric name", .. }));
/// assert!(!err.is_retriable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server address could not be parsed.
    #[error("invalid NATS server address {url:?}: {detail}")]
    InvalidUrl {
        /// The address, with any password replaced by `***`.
        url: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A credentials, NKey seed or certificate file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Credentials {
        /// Which file it was (`NKey seed file`, `credentials file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The first connection to the server failed.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The address, with any password replaced by `***`.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// A value that becomes a subject token is empty or holds a dot, a wildcard or whitespace.
    #[error("the {what} {value:?} can not be used in a NATS subject (empty, or holds '.', '*', '>' or whitespace)")]
    InvalidToken {
        /// Which value it was (`service`, `metric name`, `device id`, `level`, …).
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A record lacks something it needs to be published (a span without ids).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// A record could not be serialised as JSON.
    #[error("cannot encode the record as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// The stream did not acknowledge the message, after every attempt the retry policy allows.
    #[error("publishing to {subject} failed after {attempts} attempt(s): {source}")]
    Publish {
        /// The subject of the message.
        subject: String,
        /// How many times it was sent.
        attempts: u32,
        /// The last error.
        source: PublishError,
    },
    /// The background task of a [`JetscaleLayer`](crate::JetscaleLayer) has stopped.
    #[error("the jetscale tracing layer's background task has stopped")]
    LayerStopped,
}

impl Error {
    /// Whether the same operation can succeed if tried again later: the server was
    /// unreachable, slow or had no stream for the subject yet. Invalid input, encoding errors
    /// and a message the server refuses for good are not retriable.
    ///
    /// # Examples
    ///
    /// ```
    /// let err = jetscale_sdk::Error::InvalidRecord("span without trace_id".into());
    /// assert!(!err.is_retriable());
    /// ```
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Publish { source, .. } => is_transient(source.kind()),
            Error::InvalidUrl { .. }
            | Error::Credentials { .. }
            | Error::InvalidToken { .. }
            | Error::InvalidRecord(_)
            | Error::Encode(_)
            | Error::LayerStopped => false,
        }
    }
}

/// Publish failures worth sending the same message again for: no ack in time, no stream
/// answering (a stream not created yet, or a leader election), a connection lost while the
/// ack was pending, too many acks pending.
pub(crate) fn is_transient(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_publish_failures_are_retried() {
        assert!(is_transient(PublishErrorKind::TimedOut));
        assert!(is_transient(PublishErrorKind::StreamNotFound));
        assert!(!is_transient(PublishErrorKind::MaxPayloadExceeded));
        assert!(!is_transient(PublishErrorKind::WrongLastMessageId));
        let err = Error::Publish {
            subject: "telemetry.logs.engine.info".into(),
            attempts: 4,
            source: PublishError::new(PublishErrorKind::TimedOut),
        };
        assert!(err.is_retriable());
        assert!(err.to_string().contains("after 4 attempt(s)"));
    }
}
