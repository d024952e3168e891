//! OTLP/JSON `ExportMetricsServiceRequest` to rows. Gauges and sums become metric rows;
//! histograms, exponential histograms and summaries become distribution rows.

use super::{
    check_count, enum_number, nanos, parse, resolve_resource, scope_fragment, EnumNames, Resource,
    Scope,
};
use crate::config::Limits;
use crate::decode::attributes::{
    append_attributes, append_part, check_text, nullable, separate, too_many, write_f64,
    write_json_string, write_key, KeyValue,
};
use crate::decode::numbers::{LenientF64, LenientI64, LenientU64};
use crate::decode::{DecodeContext, Incoming, RecordSink, Rejection, RejectionKind};
use jetscale_model::{DistributionPoint, MetricKind, MetricPoint};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize, Default)]
pub(crate) struct ExportMetrics<'a> {
    #[serde(
        borrow,
        default,
        rename = "resourceMetrics",
        alias = "resource_metrics"
    )]
    pub resource_metrics: Vec<ResourceMetrics<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ResourceMetrics<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub resource: Resource<'a>,
    #[serde(borrow, default, rename = "scopeMetrics", alias = "scope_metrics")]
    pub scope_metrics: Vec<ScopeMetrics<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ScopeMetrics<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub scope: Scope<'a>,
    #[serde(borrow, default)]
    pub metrics: Vec<Metric<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Metric<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub unit: Cow<'a, str>,
    #[serde(borrow, default)]
    pub gauge: Option<Gauge<'a>>,
    #[serde(borrow, default)]
    pub sum: Option<Sum<'a>>,
    // The rarer kinds are boxed: a smaller Metric is cheaper to move while deserializing.
    #[serde(borrow, default)]
    pub histogram: Option<Box<Histogram<'a>>>,
    #[serde(
        borrow,
        default,
        rename = "exponentialHistogram",
        alias = "exponential_histogram"
    )]
    pub exponential_histogram: Option<Box<ExponentialHistogram<'a>>>,
    #[serde(borrow, default)]
    pub summary: Option<Box<Summary<'a>>>,
}

impl Metric<'_> {
    /// Data points of whichever data field is set.
    fn point_count(&self) -> usize {
        self.gauge.as_ref().map_or(0, |g| g.data_points.len())
            + self.sum.as_ref().map_or(0, |s| s.data_points.len())
            + self.histogram.as_ref().map_or(0, |h| h.data_points.len())
            + self
                .exponential_histogram
                .as_ref()
                .map_or(0, |h| h.data_points.len())
            + self.summary.as_ref().map_or(0, |s| s.data_points.len())
    }
}

/// A gauge or a summary: its points.
#[derive(Deserialize, Default)]
pub(crate) struct Points<P> {
    #[serde(default, rename = "dataPoints", alias = "data_points")]
    pub data_points: Vec<P>,
}

pub(crate) type Gauge<'a> = Points<NumberDataPoint<'a>>;
pub(crate) type Summary<'a> = Points<SummaryDataPoint<'a>>;

#[derive(Deserialize, Default)]
pub(crate) struct Sum<'a> {
    #[serde(borrow, default, rename = "dataPoints", alias = "data_points")]
    pub data_points: Vec<NumberDataPoint<'a>>,
    #[serde(
        default,
        rename = "aggregationTemporality",
        alias = "aggregation_temporality"
    )]
    pub aggregation_temporality: Temporality,
    #[serde(default, rename = "isMonotonic", alias = "is_monotonic")]
    pub is_monotonic: bool,
}

/// A histogram or an exponential histogram: its points and their aggregation temporality.
#[derive(Deserialize, Default)]
pub(crate) struct Aggregated<P> {
    #[serde(default, rename = "dataPoints", alias = "data_points")]
    pub data_points: Vec<P>,
    #[serde(
        default,
        rename = "aggregationTemporality",
        alias = "aggregation_temporality"
    )]
    pub aggregation_temporality: Temporality,
}

pub(crate) type Histogram<'a> = Aggregated<HistogramDataPoint<'a>>;
pub(crate) type ExponentialHistogram<'a> = Aggregated<ExponentialHistogramDataPoint<'a>>;

/// `AggregationTemporality`, as its number or its name.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Temporality {
    #[default]
    Unspecified,
    Delta,
    Cumulative,
}

impl Temporality {
    /// The proto enum number.
    pub fn from_number(n: i64) -> Self {
        match n {
            1 => Temporality::Delta,
            2 => Temporality::Cumulative,
            _ => Temporality::Unspecified,
        }
    }

    /// The `temporality` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Temporality::Unspecified => "unspecified",
            Temporality::Delta => "delta",
            Temporality::Cumulative => "cumulative",
        }
    }
}

impl<'de> Deserialize<'de> for Temporality {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = enum_number(d, "aggregationTemporality", TEMPORALITY_NAMES)?;
        Ok(Temporality::from_number(i64::from(n)))
    }
}

const TEMPORALITY_NAMES: EnumNames = EnumNames {
    prefix: "AGGREGATION_TEMPORALITY_",
    names: &["UNSPECIFIED", "DELTA", "CUMULATIVE"],
};

#[derive(Deserialize, Default)]
pub(crate) struct NumberDataPoint<'a> {
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
    #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
    pub time_unix_nano: LenientU64,
    #[serde(default, rename = "asDouble", alias = "as_double")]
    pub as_double: Option<LenientF64>,
    #[serde(default, rename = "asInt", alias = "as_int")]
    pub as_int: Option<LenientI64>,
}

#[derive(Deserialize, Default)]
pub(crate) struct HistogramDataPoint<'a> {
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
    #[serde(default, rename = "startTimeUnixNano", alias = "start_time_unix_nano")]
    pub start_time_unix_nano: LenientU64,
    #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
    pub time_unix_nano: LenientU64,
    #[serde(default)]
    pub count: LenientU64,
    #[serde(default)]
    pub sum: Option<LenientF64>,
    #[serde(default, rename = "bucketCounts", alias = "bucket_counts")]
    pub bucket_counts: Vec<LenientU64>,
    #[serde(default, rename = "explicitBounds", alias = "explicit_bounds")]
    pub explicit_bounds: Vec<LenientF64>,
    #[serde(default)]
    pub min: Option<LenientF64>,
    #[serde(default)]
    pub max: Option<LenientF64>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ExponentialHistogramDataPoint<'a> {
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
    #[serde(default, rename = "startTimeUnixNano", alias = "start_time_unix_nano")]
    pub start_time_unix_nano: LenientU64,
    #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
    pub time_unix_nano: LenientU64,
    #[serde(default)]
    pub count: LenientU64,
    #[serde(default)]
    pub sum: Option<LenientF64>,
    #[serde(default)]
    pub scale: LenientI64,
    #[serde(default, rename = "zeroCount", alias = "zero_count")]
    pub zero_count: LenientU64,
    #[serde(default)]
    pub positive: Option<Buckets>,
    #[serde(default)]
    pub negative: Option<Buckets>,
    #[serde(default)]
    pub min: Option<LenientF64>,
    #[serde(default)]
    pub max: Option<LenientF64>,
    #[serde(default, rename = "zeroThreshold", alias = "zero_threshold")]
    pub zero_threshold: LenientF64,
}

#[derive(Deserialize, Default)]
pub(crate) struct Buckets {
    #[serde(default)]
    pub offset: LenientI64,
    #[serde(default, rename = "bucketCounts", alias = "bucket_counts")]
    pub bucket_counts: Vec<LenientU64>,
}

#[derive(Deserialize, Default)]
pub(crate) struct SummaryDataPoint<'a> {
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
    #[serde(default, rename = "startTimeUnixNano", alias = "start_time_unix_nano")]
    pub start_time_unix_nano: LenientU64,
    #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
    pub time_unix_nano: LenientU64,
    #[serde(default)]
    pub count: LenientU64,
    #[serde(default)]
    pub sum: LenientF64,
    #[serde(default, rename = "quantileValues", alias = "quantile_values")]
    pub quantile_values: Vec<ValueAtQuantile>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ValueAtQuantile {
    #[serde(default)]
    pub quantile: LenientF64,
    #[serde(default)]
    pub value: LenientF64,
}

/// Decodes an `ExportMetricsServiceRequest` in OTLP/JSON into metric and distribution rows.
pub fn decode_metrics(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request: ExportMetrics = parse(msg.payload, "metrics")?;
    emit_metrics(&request, msg.subject, ctx, sink)
}

/// Every data point of the request, of every kind.
pub(crate) fn count_points(request: &ExportMetrics<'_>) -> usize {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(Metric::point_count)
        .sum()
}

/// The buffers the JSON columns of every point are written in, reused from point to point.
#[derive(Default)]
struct Buffers {
    attributes: String,
    buckets: String,
}

/// Stores the points of a decoded metrics request (from JSON or protobuf).
pub(crate) fn emit_metrics(
    request: &ExportMetrics<'_>,
    subject: &str,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let limits = ctx.limits;
    check_count(count_points(request), "data points", limits)?;
    let mut buffers = Buffers::default();
    for rm in &request.resource_metrics {
        let resource = resolve_resource(&rm.resource.attributes, ctx)?;
        let source = resource
            .device_id
            .as_deref()
            .or(resource.service_name.as_deref())
            .ok_or_else(|| {
                Rejection::malformed(
                    "resource has neither a device.id nor a service.name attribute",
                )
            })?;
        check_text("device.id", source)?;
        let location = resource.location.as_deref().unwrap_or("");
        check_text("device.location", location)?;
        if limits.verify_device_subject {
            if let Some(token) = jetscale_model::subject::device_of(subject) {
                if resource.device_id.as_deref() != Some(token) {
                    return Err(Rejection::new(
                        RejectionKind::Identity,
                        format!(
                            "payload device.id {:?} does not match the subject's device `{token}`",
                            resource.device_id.as_deref().unwrap_or("")
                        ),
                    ));
                }
            }
        }
        for sm in &rm.scope_metrics {
            let scope = scope_fragment(&sm.scope, limits)?;
            // Without scope attributes (the common case) the resource's fragment is the prefix.
            let prefix = match (resource.fragment.is_empty(), scope.is_empty()) {
                (_, true) => Cow::Borrowed(resource.fragment.as_str()),
                (true, false) => Cow::Borrowed(scope.as_str()),
                (false, false) => Cow::Owned(format!("{},{scope}", resource.fragment)),
            };
            for metric in &sm.metrics {
                check_text("metric name", &metric.name)?;
                check_text("unit", &metric.unit)?;
                if metric.name.is_empty() {
                    return Err(Rejection::malformed("a metric has no name"));
                }
                let pc = PointContext {
                    source,
                    location,
                    name: &metric.name,
                    unit: &metric.unit,
                    prefix: &prefix,
                    prefix_count: resource.count + sm.scope.attributes.len(),
                };
                if let Some(g) = &metric.gauge {
                    pc.numbers(&g.data_points, MetricKind::Gauge, ctx, &mut buffers, sink)?;
                } else if let Some(s) = &metric.sum {
                    let kind = match (s.aggregation_temporality, s.is_monotonic) {
                        (Temporality::Delta, _) => MetricKind::DeltaSum,
                        (_, true) => MetricKind::CumulativeSum,
                        (_, false) => MetricKind::NonMonotonicSum,
                    };
                    pc.numbers(&s.data_points, kind, ctx, &mut buffers, sink)?;
                } else if let Some(h) = &metric.histogram {
                    let temporality = h.aggregation_temporality;
                    pc.distributions(&h.data_points, temporality, ctx, &mut buffers, sink)?;
                } else if let Some(h) = &metric.exponential_histogram {
                    let temporality = h.aggregation_temporality;
                    pc.distributions(&h.data_points, temporality, ctx, &mut buffers, sink)?;
                } else if let Some(s) = &metric.summary {
                    let temporality = Temporality::Cumulative;
                    pc.distributions(&s.data_points, temporality, ctx, &mut buffers, sink)?;
                }
            }
        }
    }
    Ok(())
}

/// What every point of one metric shares.
struct PointContext<'r> {
    source: &'r str,
    location: &'r str,
    name: &'r str,
    unit: &'r str,
    /// Resource and scope attributes, as a fragment.
    prefix: &'r str,
    /// How many attributes `prefix` holds.
    prefix_count: usize,
}

impl PointContext<'_> {
    /// Writes the point's attributes (resource, scope, `extra`, the point's own) as one
    /// JSON object into `out`.
    fn attributes(
        &self,
        out: &mut String,
        extra: Option<(&str, &str)>,
        point: &[KeyValue<'_>],
        limits: &Limits,
    ) -> Result<(), Rejection> {
        let n = self.prefix_count + point.len();
        if n > limits.max_attributes {
            return Err(too_many(n, limits));
        }
        out.clear();
        // Room for what every point of the message shares, at once rather than by doublings.
        out.reserve(self.prefix.len() + 2);
        out.push('{');
        append_part(out, self.prefix);
        if let Some((key, value)) = extra {
            separate(out);
            write_key(out, key, limits)?;
            write_json_string(out, value)?;
        }
        append_attributes(out, point, limits)?;
        out.push('}');
        Ok(())
    }

    /// Stores gauge or sum points as metric rows.
    fn numbers(
        &self,
        points: &[NumberDataPoint<'_>],
        kind: MetricKind,
        ctx: &DecodeContext<'_>,
        buffers: &mut Buffers,
        sink: &mut dyn RecordSink,
    ) -> Result<(), Rejection> {
        for point in points {
            let time = nanos("timeUnixNano", point.time_unix_nano)?;
            ctx.check_time(time)?;
            let value = match (point.as_double, point.as_int) {
                (Some(d), _) => d.0,
                (None, Some(i)) => i.0 as f64,
                (None, None) => {
                    return Err(Rejection::malformed(format!(
                        "metric `{}`: a data point has neither asDouble nor asInt",
                        self.name
                    )))
                }
            };
            let extra = (kind != MetricKind::Gauge).then(|| ("metric.kind", kind.as_str()));
            self.attributes(
                &mut buffers.attributes,
                extra,
                &point.attributes,
                ctx.limits,
            )?;
            sink.metric(&MetricPoint {
                time_unix_nano: time,
                source: self.source,
                location: self.location,
                name: self.name,
                unit: self.unit,
                value,
                kind,
                attributes: &buffers.attributes,
            })?;
        }
        Ok(())
    }

    /// Stores histogram, exponential histogram or summary points as distribution rows.
    fn distributions<P: DistributionData>(
        &self,
        points: &[P],
        temporality: Temporality,
        ctx: &DecodeContext<'_>,
        buffers: &mut Buffers,
        sink: &mut dyn RecordSink,
    ) -> Result<(), Rejection> {
        for point in points {
            let d = point.fields();
            let time = nanos("timeUnixNano", d.time_unix_nano)?;
            ctx.check_time(time)?;
            // Start time: 0 (unknown) is allowed; anything else must not be after the point.
            let start = nanos("startTimeUnixNano", d.start_time_unix_nano)?;
            if start > time {
                return Err(Rejection::malformed(format!(
                    "metric `{}`: startTimeUnixNano is after timeUnixNano",
                    self.name
                )));
            }
            buffers.buckets.clear();
            point.write_buckets(self.name, &mut buffers.buckets)?;
            self.attributes(&mut buffers.attributes, None, d.attributes, ctx.limits)?;
            sink.distribution(&DistributionPoint {
                time_unix_nano: time,
                start_time_unix_nano: start,
                source: self.source,
                location: self.location,
                name: self.name,
                unit: self.unit,
                kind: P::KIND,
                temporality: temporality.as_str(),
                count: d.count.0,
                sum: d.sum.map(|v| v.0),
                min: d.min.map(|v| v.0),
                max: d.max.map(|v| v.0),
                buckets: &buffers.buckets,
                attributes: &buffers.attributes,
            })?;
        }
        Ok(())
    }
}

/// What a distribution point holds besides its buckets.
struct DistributionFields<'p> {
    attributes: &'p [KeyValue<'p>],
    start_time_unix_nano: LenientU64,
    time_unix_nano: LenientU64,
    count: LenientU64,
    sum: Option<LenientF64>,
    min: Option<LenientF64>,
    max: Option<LenientF64>,
}

/// A histogram, exponential histogram or summary point: one distribution row each, told
/// apart by its `kind` and the JSON of its `buckets`.
trait DistributionData {
    /// The `kind` column.
    const KIND: &'static str;
    fn fields(&self) -> DistributionFields<'_>;
    /// Writes the `buckets` column into `out` (empty), checking the point's shape; `metric`
    /// names it in a rejection.
    fn write_buckets(&self, metric: &str, out: &mut String) -> Result<(), Rejection>;
}

impl DistributionData for HistogramDataPoint<'_> {
    const KIND: &'static str = "histogram";

    fn fields(&self) -> DistributionFields<'_> {
        DistributionFields {
            attributes: &self.attributes,
            start_time_unix_nano: self.start_time_unix_nano,
            time_unix_nano: self.time_unix_nano,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
        }
    }

    fn write_buckets(&self, metric: &str, out: &mut String) -> Result<(), Rejection> {
        let (counts, bounds) = (&self.bucket_counts, &self.explicit_bounds);
        if !counts.is_empty() && counts.len() != bounds.len() + 1 {
            return Err(Rejection::malformed(format!(
                "histogram `{metric}`: {} bucketCounts for {} explicitBounds (expected one more count than bounds)",
                counts.len(),
                bounds.len()
            )));
        }
        out.push_str("{\"bounds\":[");
        for (i, b) in bounds.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_f64(out, b.0);
        }
        out.push_str("],\"counts\":");
        write_counts(out, counts);
        out.push('}');
        Ok(())
    }
}

impl DistributionData for ExponentialHistogramDataPoint<'_> {
    const KIND: &'static str = "exponential_histogram";

    fn fields(&self) -> DistributionFields<'_> {
        DistributionFields {
            attributes: &self.attributes,
            start_time_unix_nano: self.start_time_unix_nano,
            time_unix_nano: self.time_unix_nano,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
        }
    }

    fn write_buckets(&self, _metric: &str, out: &mut String) -> Result<(), Rejection> {
        let scale = small_int("scale", self.scale)?;
        out.push_str("{\"scale\":");
        out.push_str(itoa::Buffer::new().format(scale));
        out.push_str(",\"zero_count\":");
        out.push_str(itoa::Buffer::new().format(self.zero_count.0));
        out.push_str(",\"zero_threshold\":");
        write_f64(out, self.zero_threshold.0);
        for (key, side) in [("positive", &self.positive), ("negative", &self.negative)] {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":{\"offset\":");
            let (offset, counts) = match side {
                Some(b) => (
                    small_int("bucket offset", b.offset)?,
                    b.bucket_counts.as_slice(),
                ),
                None => (0, &[][..]),
            };
            out.push_str(itoa::Buffer::new().format(offset));
            out.push_str(",\"counts\":");
            write_counts(out, counts);
            out.push('}');
        }
        out.push('}');
        Ok(())
    }
}

impl DistributionData for SummaryDataPoint<'_> {
    const KIND: &'static str = "summary";

    fn fields(&self) -> DistributionFields<'_> {
        DistributionFields {
            attributes: &self.attributes,
            start_time_unix_nano: self.start_time_unix_nano,
            time_unix_nano: self.time_unix_nano,
            count: self.count,
            sum: Some(self.sum),
            min: None,
            max: None,
        }
    }

    fn write_buckets(&self, _metric: &str, out: &mut String) -> Result<(), Rejection> {
        out.push_str("{\"quantiles\":[");
        for (i, q) in self.quantile_values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"quantile\":");
            write_f64(out, q.quantile.0);
            out.push_str(",\"value\":");
            write_f64(out, q.value.0);
            out.push('}');
        }
        out.push_str("]}");
        Ok(())
    }
}

fn write_counts(out: &mut String, counts: &[LenientU64]) {
    out.push('[');
    for (i, c) in counts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(itoa::Buffer::new().format(c.0));
    }
    out.push(']');
}

fn small_int(what: &str, v: LenientI64) -> Result<i64, Rejection> {
    i32::try_from(v.0)
        .map(i64::from)
        .map_err(|_| Rejection::malformed(format!("{what} {} does not fit 32 bits", v.0)))
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::AttributeAction;
    use crate::decode::testing::{self, rejection, Collected};
    use serde_json::json;

    pub(crate) fn run(
        payload: &str,
        actions: &[AttributeAction],
        limits: &Limits,
    ) -> Result<Collected, Rejection> {
        let ctx = DecodeContext {
            resource_actions: actions,
            ..testing::ctx(limits)
        };
        let subject = "telemetry.metrics.sensor-001";
        testing::run_in(decode_metrics, subject, payload.as_bytes(), &ctx)
    }

    /// The IoT pipeline design's device payload, as its Python device writes it (json.dumps).
    pub(crate) const DEVICE_PAYLOAD: &str = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "iot-sensor"}}, {"key": "device.id", "value": {"stringValue": "sensor-001"}}, {"key": "device.location", "value": {"stringValue": "warehouse-a"}}]}, "scopeMetrics": [{"metrics": [{"name": "device.temperature", "unit": "Cel", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567890", "asDouble": 36.6}]}}, {"name": "device.humidity", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567891", "asDouble": 41.25}]}}, {"name": "device.battery", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567892", "asDouble": 87.0}]}}]}]}]}"#;

    #[test]
    fn device_payload_maps_to_the_designed_columns() {
        let rows = run(DEVICE_PAYLOAD, &[], &Limits::default())
            .unwrap()
            .metrics;
        assert_eq!(rows.len(), 3);
        let m = &rows[0];
        assert_eq!(m.time, 1_705_314_601_234_567_890);
        assert_eq!(m.source, "sensor-001");
        assert_eq!(m.location, "warehouse-a");
        assert_eq!(m.name, "device.temperature");
        assert_eq!(m.unit, "Cel");
        assert_eq!(m.value, 36.6);
        assert_eq!(m.kind, MetricKind::Gauge);
        assert_eq!(m.attributes, json!({"service.name": "iot-sensor"}));
        assert_eq!(rows[2].unit, "%");
    }

    #[test]
    fn ints_as_strings_or_numbers_sums_and_snake_case() {
        let payload = r#"{"resource_metrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
          "scope_metrics": [{"scope": {"name": "meter", "version": "1.2"}, "metrics": [
            {"name": "requests", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
              "dataPoints": [{"timeUnixNano": 1705314601000000000, "asInt": "9007199254740993", "attributes": [{"key": "route", "value": {"stringValue": "/a"}}]},
                             {"time_unix_nano": "1705314602000000000", "as_int": 7, "unknownField": {"x": 1}}]}},
            {"name": "queue", "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA", "dataPoints": [{"timeUnixNano": "1705314601000000000", "asDouble": "NaN"}]}},
            {"name": "level", "sum": {"aggregation_temporality": "cumulative", "is_monotonic": false, "data_points": [{"timeUnixNano": "1705314601000000000", "asDouble": -1.5}]}}
          ]}]}], "somethingNew": true}"#;
        let rows = run(payload, &[], &Limits::default()).unwrap().metrics;
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].source, "svc");
        assert_eq!(rows[0].location, "");
        assert_eq!(rows[0].value, 9_007_199_254_740_993_i64 as f64);
        assert_eq!(rows[0].attributes["route"], "/a");
        assert_eq!(rows[0].attributes["metric.kind"], "cumulative_sum");
        assert_eq!(rows[0].kind, MetricKind::CumulativeSum);
        assert_eq!(rows[0].attributes["otel.scope.name"], "meter");
        assert_eq!(rows[0].attributes["otel.scope.version"], "1.2");
        assert_eq!(rows[1].value, 7.0);
        assert_eq!(rows[1].time, 1_705_314_602_000_000_000);
        assert!(rows[2].value.is_nan());
        assert_eq!(rows[2].attributes["metric.kind"], "delta_sum");
        assert_eq!(rows[3].kind, MetricKind::NonMonotonicSum);
        assert_eq!(rows[3].attributes["metric.kind"], "non_monotonic_sum");
    }

    #[test]
    fn broken_payloads_are_rejected_with_a_reason() {
        let defaults = Limits::default();
        let no_source = DEVICE_PAYLOAD
            .replace(r#"{"key": "service.name", "value": {"stringValue": "iot-sensor"}}, {"key": "device.id", "value": {"stringValue": "sensor-001"}}, "#, "");
        let bad_enum = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]}, "scopeMetrics": [{"metrics": [
            {"name": "x", "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_SIDEWAYS", "dataPoints": [{"timeUnixNano": "1", "asInt": "1"}]}}]}]}]}"#;
        for (payload, needle) in [
            (
                DEVICE_PAYLOAD.replace("\"1705314601234567890\"", "\"0\""),
                "timeUnixNano",
            ),
            (
                DEVICE_PAYLOAD.replace(", \"asDouble\": 36.6", ""),
                "neither asDouble nor asInt",
            ),
            (no_source, "device.id"),
            (bad_enum.to_owned(), "AGGREGATION_TEMPORALITY_SIDEWAYS"),
        ] {
            rejection(run(&payload, &[], &defaults), needle);
        }
        let truncated = &DEVICE_PAYLOAD[..DEVICE_PAYLOAD.len() / 2];
        let empty = r#"{"resourceMetrics": []}"#;
        for payload in [truncated, empty] {
            assert_eq!(
                run(payload, &[], &defaults).unwrap_err().kind,
                RejectionKind::Malformed
            );
        }
        let wrong_type = DEVICE_PAYLOAD.replace("36.6", "\"hot\"");
        assert!(run(&wrong_type, &[], &defaults).is_err());
        let limits = Limits {
            max_points_per_message: 2,
            ..Limits::default()
        };
        rejection(run(DEVICE_PAYLOAD, &[], &limits), "max_points_per_message");
    }

    #[test]
    fn device_identity_is_checked_against_the_subject() {
        let limits = Limits {
            verify_device_subject: true,
            ..Limits::default()
        };
        assert!(run(DEVICE_PAYLOAD, &[], &limits).is_ok());
        let other = DEVICE_PAYLOAD.replace("sensor-001", "sensor-999");
        assert_eq!(
            run(&other, &[], &limits).unwrap_err().kind,
            RejectionKind::Identity
        );
    }

    const HISTOGRAMS: &str = r#"{"resourceMetrics": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "api"}},
        {"key": "device.id", "value": {"stringValue": "edge-1"}},
        {"key": "device.location", "value": {"stringValue": "rack-2"}}]},
      "scopeMetrics": [{"scope": {"name": "m"}, "metrics": [
        {"name": "latency", "unit": "ms", "histogram": {"aggregationTemporality": 1, "dataPoints": [
          {"startTimeUnixNano": "1705314600000000000", "timeUnixNano": "1705314601000000000",
           "count": "6", "sum": 102.5, "min": 0.5, "max": 80,
           "bucketCounts": ["1", 2, "0", 3], "explicitBounds": [1, 10.5, 50],
           "attributes": [{"key": "route", "value": {"stringValue": "/a"}}]},
          {"timeUnixNano": 1705314602000000000, "count": 0}]}},
        {"name": "size", "unit": "By", "exponential_histogram": {"aggregation_temporality": "AGGREGATION_TEMPORALITY_CUMULATIVE", "data_points": [
          {"time_unix_nano": "1705314601000000000", "start_time_unix_nano": "1705314500000000000",
           "count": "7", "sum": 1104, "scale": -2, "zero_count": "1", "zero_threshold": 0.001,
           "positive": {"offset": 3, "bucket_counts": ["2", "3"]},
           "negative": {"offset": "-1", "bucketCounts": [1]}, "min": -3, "max": 1000}]}},
        {"name": "rpc", "unit": "s", "summary": {"dataPoints": [
          {"timeUnixNano": "1705314601000000000", "count": "10", "sum": 4.75,
           "quantileValues": [{"value": 0.05}, {"quantile": 0.5, "value": 0.4}, {"quantile": 1, "value": "Infinity"}]}]}}
      ]}]}]}"#;

    #[test]
    fn histograms_exponential_histograms_and_summaries_are_distributions() {
        let got = run(HISTOGRAMS, &[], &Limits::default()).unwrap();
        assert!(got.metrics.is_empty());
        let d = &got.distributions;
        assert_eq!(d.len(), 4);
        let h = &d[0];
        assert_eq!(
            (h.time, h.start),
            (1_705_314_601_000_000_000, 1_705_314_600_000_000_000)
        );
        assert_eq!(
            (&*h.source, &*h.location, &*h.name, &*h.unit),
            ("edge-1", "rack-2", "latency", "ms")
        );
        assert_eq!((&*h.kind, &*h.temporality), ("histogram", "delta"));
        assert_eq!(h.count, 6);
        assert_eq!((h.sum, h.min, h.max), (Some(102.5), Some(0.5), Some(80.0)));
        assert_eq!(
            h.buckets,
            json!({"bounds": [1.0, 10.5, 50.0], "counts": [1, 2, 0, 3]})
        );
        assert_eq!(
            h.attributes,
            json!({"service.name": "api", "otel.scope.name": "m", "route": "/a"})
        );
        // Optional fields absent: no sum, min or max; no start time.
        let empty = &d[1];
        assert_eq!(
            (empty.count, empty.sum, empty.min, empty.max, empty.start),
            (0, None, None, None, 0)
        );
        assert_eq!(empty.buckets, json!({"bounds": [], "counts": []}));
        let e = &d[2];
        assert_eq!(
            (&*e.kind, &*e.temporality, e.count),
            ("exponential_histogram", "cumulative", 7)
        );
        assert_eq!(
            (e.sum, e.min, e.max),
            (Some(1104.0), Some(-3.0), Some(1000.0))
        );
        assert_eq!(
            e.buckets,
            json!({"scale": -2, "zero_count": 1, "zero_threshold": 0.001,
                   "positive": {"offset": 3, "counts": [2, 3]},
                   "negative": {"offset": -1, "counts": [1]}})
        );
        let s = &d[3];
        assert_eq!(
            (&*s.kind, &*s.temporality, s.count, s.sum, s.min, s.max),
            ("summary", "cumulative", 10, Some(4.75), None, None)
        );
        assert_eq!(
            s.buckets,
            json!({"quantiles": [{"quantile": 0.0, "value": 0.05}, {"quantile": 0.5, "value": 0.4},
                                 {"quantile": 1.0, "value": "Infinity"}]})
        );
    }

    #[test]
    fn histogram_limits_and_shape_are_checked() {
        let defaults = Limits::default();
        let limits = Limits {
            max_points_per_message: 3,
            ..Limits::default()
        };
        rejection(
            run(HISTOGRAMS, &[], &limits),
            "max_points_per_message: 4 data points",
        );
        for (from, to, needle) in [
            (
                r#""bucketCounts": ["1", 2, "0", 3]"#,
                r#""bucketCounts": ["1", 2]"#,
                "2 bucketCounts for 3 explicitBounds",
            ),
            (r#""scale": -2"#, r#""scale": 99999999999"#, "scale"),
            (
                r#""startTimeUnixNano": "1705314600000000000""#,
                r#""startTimeUnixNano": "1705314609000000000""#,
                "startTimeUnixNano",
            ),
        ] {
            rejection(run(&HISTOGRAMS.replace(from, to), &[], &defaults), needle);
        }
        let bad = HISTOGRAMS.replace(r#""count": "6""#, r#""count": "-6""#);
        assert!(run(&bad, &[], &defaults).is_err());
        let limits = Limits {
            max_attributes: 2,
            ..Limits::default()
        };
        rejection(run(HISTOGRAMS, &[], &limits), "max_attributes");
        let subject = "telemetry.metrics.x";
        let old = testing::run_from(
            decode_metrics,
            subject,
            HISTOGRAMS.as_bytes(),
            1_705_314_601_500_000_000,
        );
        rejection(old, "max_past");
    }

    #[test]
    fn specification_example_decodes() {
        let got = testing::run(
            decode_metrics,
            "telemetry.metrics.x",
            &testing::spec_example("metrics"),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(got.metrics.len(), 2);
        assert_eq!(got.metrics[0].name, "my.counter");
        assert_eq!(got.metrics[0].kind, MetricKind::DeltaSum);
        assert_eq!(got.metrics[0].value, 5.0);
        assert_eq!(got.metrics[0].source, "my.service");
        assert_eq!(
            got.metrics[0].attributes,
            json!({"service.name": "my.service", "otel.scope.name": "my.library",
                   "otel.scope.version": "1.0.0", "my.scope.attribute": "some scope attribute",
                   "metric.kind": "delta_sum", "my.counter.attr": "some value"})
        );
        assert_eq!(got.metrics[1].kind, MetricKind::Gauge);
        assert_eq!(got.distributions.len(), 2);
        let h = &got.distributions[0];
        assert_eq!((&*h.name, h.count, h.sum), ("my.histogram", 2, Some(2.0)));
        assert_eq!(h.buckets, json!({"bounds": [1.0], "counts": [1, 1]}));
        assert_eq!((h.min, h.max), (Some(0.0), Some(2.0)));
        let e = &got.distributions[1];
        assert_eq!(
            e.buckets,
            json!({"scale": 0, "zero_count": 1, "zero_threshold": 0.0,
                   "positive": {"offset": 1, "counts": [0, 2]},
                   "negative": {"offset": 0, "counts": []}})
        );
    }

    #[test]
    fn python_sdk_fixture_decodes() {
        let got = testing::run(
            decode_metrics,
            "telemetry.metrics.checkout.all",
            &testing::fixture("otel_python_metrics.json"),
            &Limits::default(),
        )
        .unwrap();
        testing::check_python_metrics(&got);
    }
}
