//! The one error type of the SDK: a variant per step that can fail.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use std::path::PathBuf;
use std::time::Duration;

/// Whether a message the publisher gave up on may be in the stream: what the caller should
/// do with it next.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::Stored;
///
/// assert_eq!(Stored::No.to_string(), "the stream did not store it");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Every attempt was refused before the stream could store it ("no responders", the
    /// in-flight buffer full, a message too large): sending it again cannot make a copy.
    No,
    /// At least one attempt reached the server and got no answer (ack timeout, connection
    /// lost while waiting): the stream may hold it. Send it again with the same
    /// `Nats-Msg-Id`, within the stream's duplicate window, to keep it without a copy.
    Maybe,
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stored::No => "the stream did not store it",
            Stored::Maybe => {
                "the stream may have stored it: send it again with the same Nats-Msg-Id \
                 within the stream's duplicate window"
            }
        })
    }
}

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
    /// The stream did not acknowledge the message, after every attempt the retry policy allows
    /// (or at once, for a failure retrying cannot cure).
    #[error(
        "publishing to {subject} (Nats-Msg-Id {msg_id}) failed after {attempts} attempt(s) \
         over {elapsed:.1?}: {source}; {stored}"
    )]
    Publish {
        /// The subject of the message.
        subject: String,
        /// Its `Nats-Msg-Id`, to send it again without making a copy.
        msg_id: String,
        /// How many times it was sent.
        attempts: u32,
        /// Time from the first send to giving up.
        elapsed: Duration,
        /// Whether the stream may hold it.
        stored: Stored,
        /// The last error.
        source: PublishError,
    },
    /// Every in-flight slot stayed taken for the whole retry budget (the stream did not
    /// acknowledge anything meanwhile), so the message was not sent: the publisher's buffer
    /// is bounded, and this is its backpressure reaching the caller.
    #[error(
        "not publishing to {subject}: all {max_in_flight} in-flight messages stayed \
         unacknowledged for {waited:.1?}; the stream did not store it (check that the \
         NATS servers and the stream are up, then send it again)"
    )]
    Backpressure {
        /// The subject of the message.
        subject: String,
        /// The in-flight limit ([`PublisherOptions::max_in_flight`](crate::PublisherOptions::max_in_flight)).
        max_in_flight: usize,
        /// How long it waited for a slot.
        waited: Duration,
    },
    /// The stream's settings could not be read (to check its duplicate window).
    #[error("cannot read the settings of stream {stream}: {detail}")]
    StreamInfo {
        /// The stream.
        stream: String,
        /// The server's or the client's error.
        detail: String,
    },
    /// The retry budget is longer than the stream's duplicate window, so a late retry of a
    /// message already stored would store it again.
    #[error(
        "the retry budget ({budget:?}) is longer than the stream's duplicate window \
         ({window:?}): a retry after the window would store a reading twice; raise the \
         stream's duplicate_window to at least {budget:?} (`jetscale setup`) or shorten the \
         retry budget"
    )]
    DuplicateWindowTooShort {
        /// The stream's duplicate window.
        window: Duration,
        /// The retry budget ([`RetryPolicy::max_elapsed`](crate::RetryPolicy::max_elapsed)).
        budget: Duration,
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
            Error::Backpressure { .. } | Error::StreamInfo { .. } => true,
            Error::DuplicateWindowTooShort { .. }
            | Error::InvalidUrl { .. }
            | Error::Credentials { .. }
            | Error::InvalidToken { .. }
            | Error::InvalidRecord(_)
            | Error::Encode(_)
            | Error::LayerStopped => false,
        }
    }

    /// Whether the stream may hold the message this error is about: only a publish that
    /// reached the server without an answer may have been stored. Every other error means
    /// the message is not in the stream.
    ///
    /// # Examples
    ///
    /// ```
    /// let err = jetscale_sdk::Error::InvalidRecord("span without trace_id".into());
    /// assert!(!err.may_be_stored());
    /// ```
    pub fn may_be_stored(&self) -> bool {
        matches!(
            self,
            Error::Publish {
                stored: Stored::Maybe,
                ..
            }
        )
    }
}

/// Whether a failed attempt may have been stored: the server got the message but no answer
/// came back. "No responders" (no stream leader), a full ack window and limits the server
/// checks before storing say it was not.
pub(crate) fn attempt_may_be_stored(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::Other
    )
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
            msg_id: "abc".into(),
            attempts: 4,
            elapsed: Duration::from_millis(31_200),
            stored: Stored::Maybe,
            source: PublishError::new(PublishErrorKind::TimedOut),
        };
        assert!(err.is_retriable());
        assert!(err.may_be_stored());
        let text = err.to_string();
        assert!(text.contains("after 4 attempt(s) over 31.2s"), "{text}");
        assert!(text.contains("same Nats-Msg-Id"), "{text}");
    }

    #[test]
    fn only_an_unanswered_attempt_may_have_been_stored() {
        assert!(attempt_may_be_stored(PublishErrorKind::TimedOut));
        assert!(attempt_may_be_stored(PublishErrorKind::BrokenPipe));
        assert!(!attempt_may_be_stored(PublishErrorKind::StreamNotFound));
        assert!(!attempt_may_be_stored(PublishErrorKind::MaxPayloadExceeded));
        let err = Error::Backpressure {
            subject: "telemetry.metrics.sensor-1".into(),
            max_in_flight: 256,
            waited: Duration::from_secs(30),
        };
        assert!(!err.may_be_stored());
        assert!(err.is_retriable());
        assert!(err.to_string().contains("did not store it"), "{err}");
    }
}
