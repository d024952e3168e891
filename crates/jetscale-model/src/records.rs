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

/// One numeric reading: a row of the metrics table (`iot_metrics` in the seed's schema).
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
