//! Decoded records, borrowed from the message they came from.

/// How a numeric metric point was reported, kept so sums are not mistaken for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// An instantaneous reading (OTLP gauge, flat `gauge`).
    Gauge,
    /// A cumulative monotonic sum (a counter).
    CumulativeSum,
    /// A delta sum: the change since the previous report.
    DeltaSum,
    /// A non-monotonic sum (an up-down counter).
    NonMonotonicSum,
}

impl MetricKind {
    /// The name stored in the `attributes` of a row when the kind is not a plain gauge.
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::CumulativeSum => "cumulative_sum",
            MetricKind::DeltaSum => "delta_sum",
            MetricKind::NonMonotonicSum => "non_monotonic_sum",
        }
    }
}

/// One numeric reading: a row of the metrics table (`iot_metrics` in the IoT pipeline
/// design's schema).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint<'a> {
    /// Nanoseconds since the Unix epoch; never 0 (OTLP forbids it for data points).
    pub time_unix_nano: i64,
    /// `device_id` column: the resource's `device.id`, else its `service.name`.
    pub source: &'a str,
    /// `location` column: the resource's `device.location`, empty when absent.
    pub location: &'a str,
    /// `metric_name` column.
    pub name: &'a str,
    /// `unit` column, empty when absent (stored as NULL).
    pub unit: &'a str,
    /// `value` column, bit for bit as sent.
    pub value: f64,
    /// How the point was reported.
    pub kind: MetricKind,
    /// Every other resource, scope and point attribute, as the text of one JSON object.
    pub attributes: &'a str,
}

/// A distribution point: OTLP histogram, exponential histogram or summary. Bucket layouts
/// are carried as JSON text so every kind fits one table and stays queryable with jsonb.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributionPoint<'a> {
    pub time_unix_nano: i64,
    /// 0 when unknown.
    pub start_time_unix_nano: i64,
    /// `device_id` / source column: the resource's `device.id`, else its `service.name`.
    pub source: &'a str,
    pub location: &'a str,
    pub name: &'a str,
    pub unit: &'a str,
    /// `histogram`, `exponential_histogram` or `summary`.
    pub kind: &'a str,
    /// `delta`, `cumulative` or `unspecified` (summaries: `cumulative`).
    pub temporality: &'a str,
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Histogram: `{"bounds": [..], "counts": [..]}`; exponential histogram:
    /// `{"scale": s, "zero_count": z, "zero_threshold": t, "positive": {"offset": o, "counts": [..]},
    /// "negative": {..}}`; summary: `{"quantiles": [{"quantile": q, "value": v}, ..]}`.
    pub buckets: &'a str,
    /// Every other attribute, as the text of one JSON object.
    pub attributes: &'a str,
}

/// A span, from OTLP traces or the NATS-native service design's flat span record.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord<'a> {
    /// Lowercase hex for OTLP (32 digits); as sent for flat records.
    pub trace_id: &'a str,
    pub span_id: &'a str,
    /// Empty for a root span.
    pub parent_span_id: &'a str,
    pub name: &'a str,
    /// The resource's `service.name` (flat: `service`).
    pub service: &'a str,
    /// `internal`, `server`, `client`, `producer`, `consumer` or `unspecified`.
    pub kind: &'a str,
    pub start_time_unix_nano: i64,
    pub end_time_unix_nano: i64,
    /// `unset`, `ok` or `error` (flat records: as sent).
    pub status_code: &'a str,
    pub status_message: &'a str,
    pub trace_state: &'a str,
    /// Span attributes (flat: `attributes`), JSON object text.
    pub attributes: &'a str,
    /// Resource and scope attributes, JSON object text.
    pub resource: &'a str,
    /// JSON array text: `[{"time_unix_nano": .., "name": .., "attributes": {..}}, ..]`.
    pub events: &'a str,
    /// JSON array text: `[{"trace_id": .., "span_id": .., "trace_state": .., "attributes": {..}}, ..]`.
    pub links: &'a str,
    /// Flat records' `error`; empty otherwise.
    pub error: &'a str,
}

/// A log record, from OTLP logs or the NATS-native service design's flat log record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord<'a> {
    /// The event time; the observed time when the event time is 0.
    pub time_unix_nano: i64,
    /// 0 when not given.
    pub observed_time_unix_nano: i64,
    pub service: &'a str,
    /// OTLP severity number (1–24), 0 when unspecified; flat levels map to their OTLP number.
    pub severity_number: i32,
    /// Severity text (flat: `level`).
    pub severity_text: &'a str,
    /// The body when it is a string (flat: `message`); otherwise its JSON rendering.
    pub message: &'a str,
    /// The body as JSON text when it is not a plain string; empty otherwise.
    pub body_json: &'a str,
    /// Log attributes (flat: `fields`), JSON object text.
    pub attributes: &'a str,
    /// Resource and scope attributes, JSON object text.
    pub resource: &'a str,
    /// Lowercase hex, empty when absent.
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub flags: i32,
    /// Flat records' `error`; empty otherwise.
    pub error: &'a str,
}

/// OTLP severity number for a level name (`trace`, `debug`, `info`, `warn`/`warning`, `error`,
/// `fatal`/`critical`), 0 when unknown.
pub fn severity_number(level: &str) -> i32 {
    match level.to_ascii_lowercase().as_str() {
        "trace" => 1,
        "debug" => 5,
        "info" | "information" | "notice" => 9,
        "warn" | "warning" => 13,
        "error" | "err" => 17,
        "fatal" | "critical" | "crit" | "panic" | "emergency" | "alert" => 21,
        _ => 0,
    }
}
