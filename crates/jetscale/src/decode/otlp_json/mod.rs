//! OTLP/JSON `ExportMetricsServiceRequest` to metric rows, to the letter of the OTLP/JSON
//! encoding: lowerCamelCase keys (the proto field names are accepted too, as proto3 JSON
//! requires), 64-bit integers as strings or numbers, enums as integers or names, unknown
//! fields ignored. Decoded with borrowed strings: nothing is copied that is not escaped.
//!
//! Gauges and sums become metric rows; histograms, exponential histograms and summaries
//! become distribution rows. The structs here are also what the protobuf decoder converts
//! into (`otlp_proto`), so both encodings share one mapping.

pub mod logs;
pub mod traces;

use super::attributes::{
    check_text, nullable, write_json_string, write_key, write_value, KeyValue,
};
use super::numbers::{LenientF64, LenientI64, LenientU64};
use super::{DecodeContext, Incoming, RecordSink, Rejection, RejectionKind};
use crate::config::{AttributeActionKind, Limits};
use jetscale_model::{DistributionPoint, MetricKind, MetricPoint};
use serde::Deserialize;
use std::borrow::Cow;
use std::ops::Range;

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
pub(crate) struct Resource<'a> {
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ScopeMetrics<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub scope: Scope<'a>,
    #[serde(borrow, default)]
    pub metrics: Vec<Metric<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Scope<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
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

#[derive(Deserialize, Default)]
pub(crate) struct Gauge<'a> {
    #[serde(borrow, default, rename = "dataPoints", alias = "data_points")]
    pub data_points: Vec<NumberDataPoint<'a>>,
}

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

#[derive(Deserialize, Default)]
pub(crate) struct Histogram<'a> {
    #[serde(borrow, default, rename = "dataPoints", alias = "data_points")]
    pub data_points: Vec<HistogramDataPoint<'a>>,
    #[serde(
        default,
        rename = "aggregationTemporality",
        alias = "aggregation_temporality"
    )]
    pub aggregation_temporality: Temporality,
}

#[derive(Deserialize, Default)]
pub(crate) struct ExponentialHistogram<'a> {
    #[serde(borrow, default, rename = "dataPoints", alias = "data_points")]
    pub data_points: Vec<ExponentialHistogramDataPoint<'a>>,
    #[serde(
        default,
        rename = "aggregationTemporality",
        alias = "aggregation_temporality"
    )]
    pub aggregation_temporality: Temporality,
}

#[derive(Deserialize, Default)]
pub(crate) struct Summary<'a> {
    #[serde(borrow, default, rename = "dataPoints", alias = "data_points")]
    pub data_points: Vec<SummaryDataPoint<'a>>,
}

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

/// The names of an OTLP enum, by number, without their common prefix.
#[derive(Clone, Copy)]
pub(crate) struct EnumNames {
    pub prefix: &'static str,
    pub names: &'static [&'static str],
}

impl EnumNames {
    /// The number of a name: the proto name (`SPAN_KIND_SERVER`), or, case-insensitively,
    /// the name without its prefix (`server`) or a decimal number.
    pub fn number(&self, name: &str) -> Option<i32> {
        let name = name.trim();
        if let Ok(n) = name.parse::<i32>() {
            return Some(n);
        }
        let short = if name.len() > self.prefix.len()
            && name.is_char_boundary(self.prefix.len())
            && name[..self.prefix.len()].eq_ignore_ascii_case(self.prefix)
        {
            &name[self.prefix.len()..]
        } else {
            name
        };
        self.names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(short))
            .and_then(|i| i32::try_from(i).ok())
    }
}

/// Reads an OTLP enum written as its number or as its name. Numbers are kept as they are
/// (proto3 enums are open: the caller maps unknown numbers); an unknown name is an error.
pub(crate) fn enum_number<'de, D: serde::Deserializer<'de>>(
    d: D,
    what: &'static str,
    names: EnumNames,
) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<'a> {
        Number(i64),
        #[serde(borrow)]
        Name(Cow<'a, str>),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => i32::try_from(n)
            .map_err(|_| serde::de::Error::custom(format!("{what} {n} is out of range"))),
        Raw::Name(name) => names.number(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown {what} `{}`",
                super::attributes::preview(&name)
            ))
        }),
    }
}

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

/// The resource after processors: who sent it and the JSON fragment of its other attributes.
pub(crate) struct ResolvedResource<'a> {
    pub device_id: Option<Cow<'a, str>>,
    pub service_name: Option<Cow<'a, str>>,
    pub location: Option<Cow<'a, str>>,
    /// `"k":v,"k":v` without braces; empty when there is nothing.
    pub fragment: String,
    pub count: usize,
}

impl ResolvedResource<'_> {
    /// `service.name`, or OTLP's `unknown_service` when the resource names none.
    pub fn service(&self) -> &str {
        self.service_name.as_deref().unwrap_or("unknown_service")
    }

    /// The whole resource and scope as the text of one JSON object (spans and logs keep it
    /// in their `resource` column; `device.id` and `device.location` are included).
    pub fn object_with_scope(&self, scope: &str, limits: &Limits) -> Result<String, Rejection> {
        let mut out = String::with_capacity(self.fragment.len() + scope.len() + 2);
        out.push('{');
        append_part(&mut out, &self.fragment);
        for (key, value) in [
            ("device.id", &self.device_id),
            ("device.location", &self.location),
        ] {
            if let Some(v) = value {
                separate(&mut out);
                write_key(&mut out, key, limits)?;
                write_json_string(&mut out, v)?;
            }
        }
        append_part(&mut out, scope);
        out.push('}');
        Ok(out)
    }
}

/// Pushes the comma before a member of a JSON object or array being written in `out`,
/// unless the member is the first one.
pub(crate) fn separate(out: &mut String) {
    if !(out.ends_with('{') || out.ends_with('[')) {
        out.push(',');
    }
}

/// Appends a `"k":v,…` fragment to a JSON object being written in `out`.
pub(crate) fn append_part(out: &mut String, part: &str) {
    if !part.is_empty() {
        separate(out);
        out.push_str(part);
    }
}

/// Appends attributes as members of a JSON object being written in `out`.
pub(crate) fn append_attributes(
    out: &mut String,
    attributes: &[KeyValue<'_>],
    limits: &Limits,
) -> Result<(), Rejection> {
    for kv in attributes {
        separate(out);
        write_key(out, &kv.key, limits)?;
        write_value(out, &kv.value, limits, 0)?;
    }
    Ok(())
}

/// Appends a double as JSON: finite values as numbers (shortest round-trip form), the
/// others as proto3 JSON strings (`"NaN"`, `"Infinity"`, `"-Infinity"`), which jsonb holds.
pub(crate) fn write_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(v));
    } else if v.is_nan() {
        out.push_str("\"NaN\"");
    } else if v > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

/// A timestamp field as nanoseconds, rejecting values past `i64` (the year 2262).
pub(crate) fn nanos(what: &str, v: LenientU64) -> Result<i64, Rejection> {
    i64::try_from(v.0).map_err(|_| Rejection::malformed(format!("{what} beyond the year 2262")))
}

/// Applies the resource processors and renders the resource's attributes.
pub(crate) fn resolve_resource<'a>(
    attributes: &'a [KeyValue<'a>],
    ctx: &DecodeContext<'_>,
) -> Result<ResolvedResource<'a>, Rejection> {
    let limits = ctx.limits;
    if attributes.len() > limits.max_attributes {
        return Err(too_many(attributes.len(), limits));
    }
    // Each key with the range of `values` its rendered value takes: one buffer for all the
    // values instead of a String apiece. A replaced value's text is left unused in `values`.
    let mut values = String::new();
    let mut rendered: Vec<(&str, Range<usize>)> =
        Vec::with_capacity(attributes.len() + ctx.resource_actions.len());
    let mut device_id = None;
    let mut service_name = None;
    let mut location = None;
    for kv in attributes {
        let value = &kv.value;
        match kv.key.as_ref() {
            "device.id" => device_id = value.as_str().map(Cow::Borrowed),
            "device.location" => location = value.as_str().map(Cow::Borrowed),
            _ => {
                if kv.key == "service.name" {
                    service_name = value.as_str().map(Cow::Borrowed);
                }
                let start = values.len();
                write_value(&mut values, value, limits, 0)?;
                // A repeated key keeps its last value, as jsonb would.
                rendered.retain(|(k, _)| *k != kv.key.as_ref());
                rendered.push((&kv.key, start..values.len()));
            }
        }
    }
    for action in ctx.resource_actions {
        let key = action.key.as_str();
        let present = match key {
            "device.id" => device_id.is_some(),
            "device.location" => location.is_some(),
            _ => rendered.iter().any(|(k, _)| *k == key),
        };
        let apply = match action.kind {
            AttributeActionKind::Insert => !present,
            AttributeActionKind::Update => present,
            AttributeActionKind::Upsert => true,
            AttributeActionKind::Delete => {
                match key {
                    "device.id" => device_id = None,
                    "device.location" => location = None,
                    "service.name" => {
                        service_name = None;
                        rendered.retain(|(k, _)| *k != key);
                    }
                    _ => rendered.retain(|(k, _)| *k != key),
                }
                false
            }
        };
        if apply {
            match key {
                "device.id" => device_id = action.value_text.clone().map(Cow::Owned),
                "device.location" => location = action.value_text.clone().map(Cow::Owned),
                _ => {
                    if key == "service.name" {
                        service_name = action.value_text.clone().map(Cow::Owned);
                    }
                    rendered.retain(|(k, _)| *k != key);
                    let start = values.len();
                    values.push_str(&action.value_json);
                    rendered.push((key, start..values.len()));
                }
            }
        }
    }
    if rendered.len() > limits.max_attributes {
        return Err(too_many(rendered.len(), limits));
    }
    // Each member adds its key's quotes, a colon and a comma to the key and the value.
    let keys_len: usize = rendered.iter().map(|(k, _)| k.len() + 4).sum();
    let mut fragment = String::with_capacity(keys_len + values.len());
    for (k, range) in &rendered {
        if !fragment.is_empty() {
            fragment.push(',');
        }
        write_key(&mut fragment, k, limits)?;
        fragment.push_str(&values[range.clone()]);
    }
    Ok(ResolvedResource {
        device_id,
        service_name,
        location,
        fragment,
        count: rendered.len(),
    })
}

pub(crate) fn too_many(n: usize, limits: &Limits) -> Rejection {
    Rejection::limit(format!(
        "max_attributes: {n} attributes on one item, the limit is {}",
        limits.max_attributes
    ))
}

/// Renders a list of attributes as a `"k":v,…` fragment, appending to `out`.
pub(crate) fn write_fragment(
    out: &mut String,
    attributes: &[KeyValue<'_>],
    limits: &Limits,
) -> Result<(), Rejection> {
    for kv in attributes {
        if !out.is_empty() {
            out.push(',');
        }
        write_key(out, &kv.key, limits)?;
        write_value(out, &kv.value, limits, 0)?;
    }
    Ok(())
}

/// Renders the scope's name, version and attributes as a fragment.
pub(crate) fn scope_fragment(scope: &Scope<'_>, limits: &Limits) -> Result<String, Rejection> {
    if scope.attributes.len() > limits.max_attributes {
        return Err(too_many(scope.attributes.len(), limits));
    }
    let mut out = String::new();
    if !scope.name.is_empty() {
        write_key(&mut out, "otel.scope.name", limits)?;
        write_json_string(&mut out, &scope.name)?;
    }
    if !scope.version.is_empty() {
        if !out.is_empty() {
            out.push(',');
        }
        write_key(&mut out, "otel.scope.version", limits)?;
        write_json_string(&mut out, &scope.version)?;
    }
    write_fragment(&mut out, &scope.attributes, limits)?;
    Ok(out)
}

/// Rejects a message with more items than `max_points_per_message`, or with none.
pub(crate) fn check_count(total: usize, what: &str, limits: &Limits) -> Result<(), Rejection> {
    if total > limits.max_points_per_message {
        return Err(Rejection::limit(format!(
            "max_points_per_message: {total} {what}, the limit is {}",
            limits.max_points_per_message
        )));
    }
    if total == 0 {
        return Err(Rejection::malformed(format!("the request holds no {what}")));
    }
    Ok(())
}

/// Decodes an `ExportMetricsServiceRequest` in OTLP/JSON into metric and distribution rows.
pub fn decode_metrics(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request: ExportMetrics = super::from_json_slice(msg.payload)
        .map_err(|e| Rejection::malformed(format!("OTLP/JSON metrics: {e}")))?;
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
    let mut attributes = String::new();
    let mut buckets = String::new();
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
                    emit_numbers(
                        &pc,
                        &g.data_points,
                        MetricKind::Gauge,
                        ctx,
                        &mut attributes,
                        sink,
                    )?;
                } else if let Some(s) = &metric.sum {
                    let kind = match (s.aggregation_temporality, s.is_monotonic) {
                        (Temporality::Delta, _) => MetricKind::DeltaSum,
                        (_, true) => MetricKind::CumulativeSum,
                        (_, false) => MetricKind::NonMonotonicSum,
                    };
                    emit_numbers(&pc, &s.data_points, kind, ctx, &mut attributes, sink)?;
                } else if let Some(h) = &metric.histogram {
                    for p in &h.data_points {
                        emit_histogram(
                            &pc,
                            p,
                            h.aggregation_temporality,
                            ctx,
                            &mut attributes,
                            &mut buckets,
                            sink,
                        )?;
                    }
                } else if let Some(h) = &metric.exponential_histogram {
                    for p in &h.data_points {
                        emit_exponential(
                            &pc,
                            p,
                            h.aggregation_temporality,
                            ctx,
                            &mut attributes,
                            &mut buckets,
                            sink,
                        )?;
                    }
                } else if let Some(s) = &metric.summary {
                    for p in &s.data_points {
                        emit_summary(&pc, p, ctx, &mut attributes, &mut buckets, sink)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn emit_numbers(
    pc: &PointContext<'_>,
    points: &[NumberDataPoint<'_>],
    kind: MetricKind,
    ctx: &DecodeContext<'_>,
    attributes: &mut String,
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
                    pc.name
                )))
            }
        };
        let extra = (kind != MetricKind::Gauge).then(|| ("metric.kind", kind.as_str()));
        pc.attributes(attributes, extra, &point.attributes, ctx.limits)?;
        sink.metric(&MetricPoint {
            time_unix_nano: time,
            source: pc.source,
            location: pc.location,
            name: pc.name,
            unit: pc.unit,
            value,
            kind,
            attributes,
        })?;
    }
    Ok(())
}

/// Start time: 0 (unknown) is allowed; anything else must be a time, not after the point.
fn start_time(pc: &PointContext<'_>, start: LenientU64, time: i64) -> Result<i64, Rejection> {
    let start = nanos("startTimeUnixNano", start)?;
    if start > time {
        return Err(Rejection::malformed(format!(
            "metric `{}`: startTimeUnixNano is after timeUnixNano",
            pc.name
        )));
    }
    Ok(start)
}

fn opt(v: Option<LenientF64>) -> Option<f64> {
    v.map(|v| v.0)
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

#[allow(clippy::too_many_arguments)]
fn emit_histogram(
    pc: &PointContext<'_>,
    p: &HistogramDataPoint<'_>,
    temporality: Temporality,
    ctx: &DecodeContext<'_>,
    attributes: &mut String,
    buckets: &mut String,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let time = nanos("timeUnixNano", p.time_unix_nano)?;
    ctx.check_time(time)?;
    let start = start_time(pc, p.start_time_unix_nano, time)?;
    if !p.bucket_counts.is_empty() && p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
        return Err(Rejection::malformed(format!(
            "histogram `{}`: {} bucketCounts for {} explicitBounds (expected one more count than bounds)",
            pc.name,
            p.bucket_counts.len(),
            p.explicit_bounds.len()
        )));
    }
    buckets.clear();
    buckets.push_str("{\"bounds\":[");
    for (i, b) in p.explicit_bounds.iter().enumerate() {
        if i > 0 {
            buckets.push(',');
        }
        write_f64(buckets, b.0);
    }
    buckets.push_str("],\"counts\":");
    write_counts(buckets, &p.bucket_counts);
    buckets.push('}');
    pc.attributes(attributes, None, &p.attributes, ctx.limits)?;
    sink.distribution(&DistributionPoint {
        time_unix_nano: time,
        start_time_unix_nano: start,
        source: pc.source,
        location: pc.location,
        name: pc.name,
        unit: pc.unit,
        kind: "histogram",
        temporality: temporality.as_str(),
        count: p.count.0,
        sum: opt(p.sum),
        min: opt(p.min),
        max: opt(p.max),
        buckets,
        attributes,
    })
}

fn small_int(what: &str, v: LenientI64) -> Result<i64, Rejection> {
    i32::try_from(v.0)
        .map(i64::from)
        .map_err(|_| Rejection::malformed(format!("{what} {} does not fit 32 bits", v.0)))
}

#[allow(clippy::too_many_arguments)]
fn emit_exponential(
    pc: &PointContext<'_>,
    p: &ExponentialHistogramDataPoint<'_>,
    temporality: Temporality,
    ctx: &DecodeContext<'_>,
    attributes: &mut String,
    buckets: &mut String,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let time = nanos("timeUnixNano", p.time_unix_nano)?;
    ctx.check_time(time)?;
    let start = start_time(pc, p.start_time_unix_nano, time)?;
    let scale = small_int("scale", p.scale)?;
    buckets.clear();
    buckets.push_str("{\"scale\":");
    buckets.push_str(itoa::Buffer::new().format(scale));
    buckets.push_str(",\"zero_count\":");
    buckets.push_str(itoa::Buffer::new().format(p.zero_count.0));
    buckets.push_str(",\"zero_threshold\":");
    write_f64(buckets, p.zero_threshold.0);
    for (key, side) in [("positive", &p.positive), ("negative", &p.negative)] {
        buckets.push_str(",\"");
        buckets.push_str(key);
        buckets.push_str("\":{\"offset\":");
        let (offset, counts) = match side {
            Some(b) => (
                small_int("bucket offset", b.offset)?,
                b.bucket_counts.as_slice(),
            ),
            None => (0, &[][..]),
        };
        buckets.push_str(itoa::Buffer::new().format(offset));
        buckets.push_str(",\"counts\":");
        write_counts(buckets, counts);
        buckets.push('}');
    }
    buckets.push('}');
    pc.attributes(attributes, None, &p.attributes, ctx.limits)?;
    sink.distribution(&DistributionPoint {
        time_unix_nano: time,
        start_time_unix_nano: start,
        source: pc.source,
        location: pc.location,
        name: pc.name,
        unit: pc.unit,
        kind: "exponential_histogram",
        temporality: temporality.as_str(),
        count: p.count.0,
        sum: opt(p.sum),
        min: opt(p.min),
        max: opt(p.max),
        buckets,
        attributes,
    })
}

fn emit_summary(
    pc: &PointContext<'_>,
    p: &SummaryDataPoint<'_>,
    ctx: &DecodeContext<'_>,
    attributes: &mut String,
    buckets: &mut String,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let time = nanos("timeUnixNano", p.time_unix_nano)?;
    ctx.check_time(time)?;
    let start = start_time(pc, p.start_time_unix_nano, time)?;
    buckets.clear();
    buckets.push_str("{\"quantiles\":[");
    for (i, q) in p.quantile_values.iter().enumerate() {
        if i > 0 {
            buckets.push(',');
        }
        buckets.push_str("{\"quantile\":");
        write_f64(buckets, q.quantile.0);
        buckets.push_str(",\"value\":");
        write_f64(buckets, q.value.0);
        buckets.push('}');
    }
    buckets.push_str("]}");
    pc.attributes(attributes, None, &p.attributes, ctx.limits)?;
    sink.distribution(&DistributionPoint {
        time_unix_nano: time,
        start_time_unix_nano: start,
        source: pc.source,
        location: pc.location,
        name: pc.name,
        unit: pc.unit,
        kind: "summary",
        temporality: "cumulative",
        count: p.count.0,
        sum: Some(p.sum.0),
        min: None,
        max: None,
        buckets,
        attributes,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{AttributeAction, Encoding};
    use crate::decode::testing::{self, Collected};
    use serde_json::json;

    fn run(
        payload: &str,
        actions: &[AttributeAction],
        limits: &Limits,
    ) -> Result<Collected, Rejection> {
        let ctx = DecodeContext {
            limits,
            resource_actions: actions,
            encoding: Encoding::Auto,
            min_time_ns: 1,
            max_time_ns: i64::MAX,
        };
        let msg = testing::incoming("telemetry.metrics.sensor-001", payload.as_bytes());
        let mut sink = Collected::default();
        decode_metrics(&msg, &ctx, &mut sink)?;
        Ok(sink)
    }

    /// The seed's payload, as its Python device writes it (json.dumps).
    pub(crate) const SEED_PAYLOAD: &str = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "iot-sensor"}}, {"key": "device.id", "value": {"stringValue": "sensor-001"}}, {"key": "device.location", "value": {"stringValue": "warehouse-a"}}]}, "scopeMetrics": [{"metrics": [{"name": "device.temperature", "unit": "Cel", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567890", "asDouble": 36.6}]}}, {"name": "device.humidity", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567891", "asDouble": 41.25}]}}, {"name": "device.battery", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567892", "asDouble": 87.0}]}}]}]}]}"#;

    #[test]
    fn seed_payload_maps_to_seed_columns() {
        let rows = run(SEED_PAYLOAD, &[], &Limits::default()).unwrap().metrics;
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
    fn resource_upsert_adds_processed_at() {
        let actions = [AttributeAction {
            key: "pipeline.processed_at".into(),
            kind: AttributeActionKind::Upsert,
            value_json: "\"edge-7\"".into(),
            value_text: Some("edge-7".into()),
        }];
        let rows = run(SEED_PAYLOAD, &actions, &Limits::default())
            .unwrap()
            .metrics;
        assert_eq!(rows[0].attributes["pipeline.processed_at"], "edge-7");
    }

    #[test]
    fn resource_attributes_repeat_and_processors_resolve_to_one_object() {
        let payload = r#"{"resourceMetrics": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "s"}},
            {"key": "dup", "value": {"intValue": "1"}},
            {"key": "keep", "value": {"stringValue": "k"}},
            {"key": "dup", "value": {"intValue": "2"}},
            {"key": "gone", "value": {"boolValue": true}}]},
          "scopeMetrics": [{"scope": {"name": "m", "attributes": [{"key": "sa", "value": {"intValue": 5}}]},
            "metrics": [{"name": "x", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asInt": 1}]}}]}]},
          {"resource": {"attributes": [{"key": "device.id", "value": {"stringValue": "d"}}]},
           "scopeMetrics": [{"scope": {"name": "n"}, "metrics": [
             {"name": "y", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asInt": 2}]}}]}]}]}"#;
        let action = |key: &str, kind, value_json: &str| AttributeAction {
            key: key.into(),
            kind,
            value_json: value_json.into(),
            value_text: None,
        };
        let actions = [
            action("keep", AttributeActionKind::Insert, "\"replaced\""),
            action("added", AttributeActionKind::Insert, "\"a\""),
            action("dup", AttributeActionKind::Update, "3"),
            action("absent", AttributeActionKind::Update, "4"),
            action("gone", AttributeActionKind::Delete, ""),
        ];
        let rows = run(payload, &actions, &Limits::default()).unwrap().metrics;
        assert_eq!(
            rows[0].attributes,
            json!({"service.name": "s", "dup": 3, "keep": "k", "added": "a",
                   "otel.scope.name": "m", "sa": 5})
        );
        assert_eq!(rows[1].source, "d");
        assert_eq!(
            rows[1].attributes,
            json!({"added": "a", "keep": "replaced", "otel.scope.name": "n"})
        );
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
        let zero = SEED_PAYLOAD.replace("\"1705314601234567890\"", "\"0\"");
        assert!(run(&zero, &[], &Limits::default())
            .unwrap_err()
            .detail
            .contains("timeUnixNano"));
        let truncated = &SEED_PAYLOAD[..SEED_PAYLOAD.len() / 2];
        assert_eq!(
            run(truncated, &[], &Limits::default()).unwrap_err().kind,
            RejectionKind::Malformed
        );
        let wrong_type = SEED_PAYLOAD.replace("36.6", "\"hot\"");
        assert!(run(&wrong_type, &[], &Limits::default()).is_err());
        let no_value = SEED_PAYLOAD.replace(", \"asDouble\": 36.6", "");
        assert!(run(&no_value, &[], &Limits::default())
            .unwrap_err()
            .detail
            .contains("neither asDouble nor asInt"));
        let no_source = SEED_PAYLOAD
            .replace(r#"{"key": "service.name", "value": {"stringValue": "iot-sensor"}}, {"key": "device.id", "value": {"stringValue": "sensor-001"}}, "#, "");
        assert!(run(&no_source, &[], &Limits::default())
            .unwrap_err()
            .detail
            .contains("device.id"));
        let limits = Limits {
            max_points_per_message: 2,
            ..Limits::default()
        };
        assert!(run(SEED_PAYLOAD, &[], &limits)
            .unwrap_err()
            .detail
            .contains("max_points_per_message"));
        let empty = r#"{"resourceMetrics": []}"#;
        assert_eq!(
            run(empty, &[], &Limits::default()).unwrap_err().kind,
            RejectionKind::Malformed
        );
        let bad_enum = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]}, "scopeMetrics": [{"metrics": [
            {"name": "x", "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_SIDEWAYS", "dataPoints": [{"timeUnixNano": "1", "asInt": "1"}]}}]}]}]}"#;
        assert!(run(bad_enum, &[], &Limits::default())
            .unwrap_err()
            .detail
            .contains("AGGREGATION_TEMPORALITY_SIDEWAYS"));
    }

    #[test]
    fn device_identity_is_checked_against_the_subject() {
        let limits = Limits {
            verify_device_subject: true,
            ..Limits::default()
        };
        assert!(run(SEED_PAYLOAD, &[], &limits).is_ok());
        let other = SEED_PAYLOAD.replace("sensor-001", "sensor-999");
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
        let limits = Limits {
            max_points_per_message: 3,
            ..Limits::default()
        };
        assert!(run(HISTOGRAMS, &[], &limits)
            .unwrap_err()
            .detail
            .contains("max_points_per_message: 4 data points"));
        let bad = HISTOGRAMS.replace(
            r#""bucketCounts": ["1", 2, "0", 3]"#,
            r#""bucketCounts": ["1", 2]"#,
        );
        assert!(run(&bad, &[], &Limits::default())
            .unwrap_err()
            .detail
            .contains("2 bucketCounts for 3 explicitBounds"));
        let bad = HISTOGRAMS.replace(r#""count": "6""#, r#""count": "-6""#);
        assert!(run(&bad, &[], &Limits::default()).is_err());
        let bad = HISTOGRAMS.replace(r#""scale": -2"#, r#""scale": 99999999999"#);
        assert!(run(&bad, &[], &Limits::default())
            .unwrap_err()
            .detail
            .contains("scale"));
        let bad = HISTOGRAMS.replace(
            r#""startTimeUnixNano": "1705314600000000000""#,
            r#""startTimeUnixNano": "1705314609000000000""#,
        );
        assert!(run(&bad, &[], &Limits::default())
            .unwrap_err()
            .detail
            .contains("startTimeUnixNano"));
        let limits = Limits {
            max_attributes: 2,
            ..Limits::default()
        };
        assert!(run(HISTOGRAMS, &[], &limits)
            .unwrap_err()
            .detail
            .contains("max_attributes"));
        let default_limits = Limits::default();
        let old = DecodeContext {
            min_time_ns: 1_705_314_601_500_000_000,
            ..testing::ctx(&default_limits)
        };
        let err = decode_metrics(
            &testing::incoming("telemetry.metrics.x", HISTOGRAMS.as_bytes()),
            &old,
            &mut Collected::default(),
        )
        .unwrap_err();
        assert!(err.detail.contains("max_past"), "{err}");
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

    /// The OpenTelemetry Python SDK's metrics, through protobuf's json_format.
    pub(crate) fn check_python_metrics(got: &Collected) {
        const T: i64 = 1_700_000_000_000_000_000;
        const START: i64 = T - 60_000_000_000;
        let m = &got.metrics;
        assert_eq!(m.len(), 3, "{m:?}");
        let requests = m.iter().find(|p| p.name == "http.requests").unwrap();
        assert_eq!(
            (
                requests.time,
                &*requests.source,
                &*requests.unit,
                requests.value
            ),
            (T, "checkout", "1", 7.0)
        );
        assert_eq!(requests.kind, MetricKind::CumulativeSum);
        assert_eq!(requests.attributes["route"], "/checkout");
        assert_eq!(requests.attributes["host.cpu_count"], 8);
        assert_eq!(requests.attributes["otel.scope.name"], "checkout.metrics");
        let inflight = m.iter().find(|p| p.name == "http.inflight").unwrap();
        assert_eq!(
            (inflight.value, inflight.kind),
            (3.0, MetricKind::NonMonotonicSum)
        );
        let cpu = m.iter().find(|p| p.name == "cpu.temperature").unwrap();
        assert_eq!(
            (cpu.value, cpu.kind, &*cpu.unit),
            (61.5, MetricKind::Gauge, "Cel")
        );
        assert_eq!(cpu.attributes["core"], 0);
        let d = &got.distributions;
        assert_eq!(d.len(), 3);
        let h = d.iter().find(|p| p.name == "http.duration").unwrap();
        assert_eq!(
            (&*h.kind, &*h.temporality, h.count),
            ("histogram", "cumulative", 4)
        );
        assert_eq!((h.time, h.start), (T, START));
        assert_eq!(
            (h.sum, h.min, h.max),
            (Some(2695.75), Some(3.5), Some(2600.0))
        );
        assert_eq!(
            h.buckets["bounds"],
            json!([
                0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0,
                5000.0, 7500.0, 10000.0
            ])
        );
        assert_eq!(
            h.buckets["counts"],
            json!([0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
        );
        let e = d.iter().find(|p| p.name == "payload.size").unwrap();
        assert_eq!(
            (&*e.kind, e.count, e.sum),
            ("exponential_histogram", 5, Some(1104.0))
        );
        assert_eq!((e.min, e.max), (Some(0.0), Some(1000.0)));
        assert_eq!(e.buckets["scale"], 3);
        assert_eq!(e.buckets["zero_count"], 1);
        assert_eq!(e.buckets["zero_threshold"], 0.0);
        assert_eq!(e.buckets["positive"]["offset"], -1);
        let positive = e.buckets["positive"]["counts"].as_array().unwrap();
        assert_eq!(positive.len(), 128);
        let ones: Vec<usize> = (0..positive.len()).filter(|&i| positive[i] == 1).collect();
        assert_eq!(ones, vec![0, 13, 54, 80]);
        assert_eq!(e.buckets["negative"], json!({"offset": 0, "counts": [0]}));
        let s = d.iter().find(|p| p.name == "rpc.latency").unwrap();
        assert_eq!((&*s.kind, s.count, s.sum), ("summary", 10, Some(4.75)));
        assert_eq!(
            s.buckets,
            json!({"quantiles": [{"quantile": 0.0, "value": 0.05}, {"quantile": 0.5, "value": 0.4}, {"quantile": 1.0, "value": 1.5}]})
        );
        assert_eq!(s.attributes["method"], "Get");
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
        check_python_metrics(&got);
    }
}
