//! `jetscale tail`: follows the stream and prints one line per decoded record.
//!
//! Messages go through the collector's own [`decode`], so the tail shows exactly what the
//! collector would store (or why it would dead-letter a message), for every format `decode`
//! knows. Rendering is a [`RecordSink`] that only ever appends lines: it never fails a message.
//!
//! - `render`: a record (or a rejection) as one line of text, plain or coloured;
//! - `json`: the same as one JSON object per line, with every field;
//! - `follow`: the consumer (or subscription) the tail reads through, and the printing of
//!   what it delivers.

mod follow;
mod json;
mod render;

pub use follow::{run, Start, TailError, TailOptions, TailReport};
pub use render::{
    render_distribution, render_log, render_metric, render_rejection, render_span, time_ms,
};

use crate::config::Settings;
use crate::decode::{decode, DecodeContext, Incoming, RecordSink, Rejection};
use jetscale_model::{DistributionPoint, LogRecord, MetricPoint, SpanRecord};
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;
    use jetscale_model::now_unix_nanos;

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
