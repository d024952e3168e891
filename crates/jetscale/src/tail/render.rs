//! A record, or the reason a message was rejected, as one line of text: time, signal, source,
//! then what matters for that signal; plain or with ANSI colours. [`Style::Json`] is handed to
//! the `json` module.

use super::{json, level_of, Origin, Style};
use crate::decode::Rejection;
use jetscale_model::{DistributionPoint, LogRecord, MetricKind, MetricPoint, SpanRecord};
use std::fmt::Write as _;

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
        return json::metric(origin, p);
    }
    let mut line = Line::head(style, p.time_unix_nano, "metric", CYAN, p.source);
    line.word_in(CYAN, p.name);
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
        return json::distribution(origin, p);
    }
    let mut line = Line::head(style, p.time_unix_nano, "dist", BLUE, p.source);
    line.word_in(BLUE, p.name);
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
    if style == Style::Json {
        return json::span(origin, s);
    }
    let duration_ns = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
    let failed = s.status_code.eq_ignore_ascii_case("error") || !s.error.is_empty();
    let mut line = Line::head(style, s.start_time_unix_nano, "span", MAGENTA, s.service);
    line.word_in(MAGENTA, or_dash(s.name));
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
        return json::log(origin, l);
    }
    let mut line = Line::head(style, l.time_unix_nano, "log", level_color(l), l.service);
    line.word_in(level_color(l), &format!("{:<5}", level_of(l)));
    line.word(l.message);
    line.quoted(RED, "error", l.error);
    if !l.trace_id.is_empty() {
        line.word_in(DIM, &format!("trace_id={}", l.trace_id));
    }
    line.finish()
}

/// `time reject subject reason`: a message the collector would dead-letter.
pub fn render_rejection(style: Style, origin: &Origin<'_>, rejection: &Rejection) -> String {
    if style == Style::Json {
        return json::rejection(origin, rejection);
    }
    let mut line = Line::head(
        style,
        origin.published_ns,
        "reject",
        BOLD_RED,
        origin.subject,
    );
    line.word_in(RED, &rejection.to_string());
    line.finish()
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
}
