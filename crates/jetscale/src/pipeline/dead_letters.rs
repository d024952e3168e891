//! Dead letters republished to `receivers.nats.dead_letter_subject`, for whoever wants to
//! see rejected messages as they happen (an alert, a repair job).
//!
//! The dead-letter table is the durable record: a dead letter is published only after the
//! transaction storing it has committed (and the batch has been acknowledged), with a core
//! NATS publish, at most once. A publish that fails is logged and never holds back or undoes
//! an ack; a collector that stops between the commit and the publish leaves the row alone.

use crate::config::Settings;
use crate::exporters::postgres::writer::Rejected;
use async_nats::{Client, HeaderMap, HeaderValue, Subject};
use std::sync::Arc;
use std::time::Duration;

/// Header holding why the message was rejected (the table's `reason`).
pub const REASON_HEADER: &str = "Jetscale-Reject-Reason";
/// Header holding the subject the message was published on.
pub const SUBJECT_HEADER: &str = "Jetscale-Subject";
/// Header holding the stream the message was stored in.
pub const STREAM_HEADER: &str = "Jetscale-Stream";
/// Header holding the message's sequence in that stream.
pub const SEQUENCE_HEADER: &str = "Jetscale-Stream-Sequence";

/// Longest reason carried in a header; the table keeps it whole.
const REASON_HEADER_BYTES: usize = 1024;

/// How long a batch's dead letters may take to be handed to the client: with NATS away its
/// buffer fills, and the writer must go on regardless.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where committed dead letters are republished, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Republish {
    to: Option<Target>,
}

#[derive(Debug, Clone)]
struct Target {
    subject: Subject,
    stream: Arc<str>,
}

impl Republish {
    /// Republishing as the settings ask: to `dead_letter_subject`, or not at all.
    pub fn new(settings: &Settings) -> Self {
        Republish {
            to: settings.dead_letter_subject.as_ref().map(|subject| Target {
                subject: Subject::from(subject.as_str()),
                stream: Arc::from(settings.stream.name.as_str()),
            }),
        }
    }

    /// Publishes each committed dead letter: its original bytes, with the reason, subject,
    /// stream and sequence as headers. Failures are logged, never returned.
    pub async fn publish(&self, client: &Client, dead: &[Rejected]) {
        let Some(to) = &self.to else { return };
        if dead.is_empty() {
            return;
        }
        let publish_all = async {
            for rejected in dead {
                let headers = headers(&to.stream, rejected);
                let payload = rejected.payload.clone();
                if let Err(e) = client
                    .publish_with_headers(to.subject.clone(), headers, payload)
                    .await
                {
                    tracing::warn!(error = %e, seq = rejected.stream_seq, subject = %to.subject, "dead letter not republished; it is in the dead-letter table");
                }
            }
        };
        if tokio::time::timeout(PUBLISH_TIMEOUT, publish_all)
            .await
            .is_err()
        {
            tracing::warn!(subject = %to.subject, "NATS unreachable: dead letters not republished; they are in the dead-letter table");
        }
    }
}

/// The headers a republished dead letter carries.
fn headers(stream: &str, rejected: &Rejected) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(REASON_HEADER, header_text(&rejected.reason));
    headers.insert(SUBJECT_HEADER, rejected.subject.as_str());
    headers.insert(STREAM_HEADER, stream);
    headers.insert(SEQUENCE_HEADER, HeaderValue::from(rejected.stream_seq));
    headers
}

/// `text` as a header value: one line (a header holds no line breaks; the reasons quote
/// what the message held), at most [`REASON_HEADER_BYTES`].
fn header_text(text: &str) -> String {
    let mut end = text.len().min(REASON_HEADER_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_reason_subject_stream_and_sequence() {
        let rejected = Rejected {
            stream_seq: 42,
            subject: Subject::from("telemetry.metrics.dev-1"),
            reason: "malformed: line 1\r\nInjected: yes\u{0}".into(),
            payload: bytes::Bytes::from_static(b"{not json"),
        };
        let headers = headers("TELEMETRY", &rejected);
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            get(REASON_HEADER).as_deref(),
            Some("malformed: line 1  Injected: yes ")
        );
        assert_eq!(
            get(SUBJECT_HEADER).as_deref(),
            Some("telemetry.metrics.dev-1")
        );
        assert_eq!(get(STREAM_HEADER).as_deref(), Some("TELEMETRY"));
        assert_eq!(get(SEQUENCE_HEADER).as_deref(), Some("42"));
        assert!(headers.get("Injected").is_none());
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let reason = "é".repeat(REASON_HEADER_BYTES);
        let text = header_text(&reason);
        assert!(text.len() <= REASON_HEADER_BYTES);
        assert!(text.chars().all(|c| c == 'é'));
    }
}
