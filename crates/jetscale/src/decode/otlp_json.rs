//! OTLP/JSON `ExportMetricsServiceRequest` to metric rows, to the letter of the OTLP/JSON
//! encoding: lowerCamelCase keys (the proto field names are accepted too, as proto3 JSON
//! requires), 64-bit integers as strings or numbers, enums as integers or names, unknown
//! fields ignored. Decoded with borrowed strings: nothing is copied that is not escaped.

use super::attributes::{check_text, write_json_string, write_key, write_value, KeyValue};
use super::numbers::{LenientF64, LenientI64, LenientU64};
use super::{DecodeContext, Incoming, RecordSink, Rejection, RejectionKind};
use crate::config::{AttributeActionKind, Limits};
use jetscale_model::{MetricKind, MetricPoint};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct ExportMetrics<'a> {
    #[serde(
        borrow,
        default,
        rename = "resourceMetrics",
        alias = "resource_metrics"
    )]
    resource_metrics: Vec<ResourceMetrics<'a>>,
}

#[derive(Deserialize)]
struct ResourceMetrics<'a> {
    #[serde(borrow, default)]
    resource: Resource<'a>,
    #[serde(borrow, default, rename = "scopeMetrics", alias = "scope_metrics")]
    scope_metrics: Vec<ScopeMetrics<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Resource<'a> {
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
struct ScopeMetrics<'a> {
    #[serde(borrow, default)]
    scope: Scope<'a>,
    #[serde(borrow, default)]
    metrics: Vec<Metric<'a>>,
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

#[derive(Deserialize)]
struct Metric<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    unit: Cow<'a, str>,
    #[serde(borrow, default)]
    gauge: Option<Gauge<'a>>,
    #[serde(borrow, default)]
    sum: Option<Sum<'a>>,
    #[serde(default)]
    histogram: Option<IgnoredAny>,
    #[serde(
        default,
        rename = "exponentialHistogram",
        alias = "exponential_histogram"
    )]
    exponential_histogram: Option<IgnoredAny>,
    #[serde(default)]
    summary: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Gauge<'a> {
    #[serde(borrow, default, rename = "dataPoints", alias = "data_points")]
    data_points: Vec<NumberDataPoint<'a>>,
}

#[derive(Deserialize)]
struct Sum<'a> {
    #[serde(borrow, default, rename = "dataPoints", alias = "data_points")]
    data_points: Vec<NumberDataPoint<'a>>,
    #[serde(
        default,
        rename = "aggregationTemporality",
        alias = "aggregation_temporality"
    )]
    aggregation_temporality: Temporality,
    #[serde(default, rename = "isMonotonic", alias = "is_monotonic")]
    is_monotonic: bool,
}

/// `AggregationTemporality`, as its number or its name.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Temporality {
    #[default]
    Unspecified,
    Delta,
    Cumulative,
}

impl<'de> Deserialize<'de> for Temporality {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<'a> {
            Number(i64),
            #[serde(borrow)]
            Name(Cow<'a, str>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Number(1) => Temporality::Delta,
            Raw::Number(2) => Temporality::Cumulative,
            Raw::Number(_) => Temporality::Unspecified,
            Raw::Name(n) => match n.as_ref() {
                "AGGREGATION_TEMPORALITY_DELTA" => Temporality::Delta,
                "AGGREGATION_TEMPORALITY_CUMULATIVE" => Temporality::Cumulative,
                _ => Temporality::Unspecified,
            },
        })
    }
}

#[derive(Deserialize)]
struct NumberDataPoint<'a> {
    #[serde(borrow, default)]
    attributes: Vec<KeyValue<'a>>,
    #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
    time_unix_nano: LenientU64,
    #[serde(default, rename = "asDouble", alias = "as_double")]
    as_double: Option<LenientF64>,
    #[serde(default, rename = "asInt", alias = "as_int")]
    as_int: Option<LenientI64>,
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

/// Applies the resource processors and renders the resource's attributes.
pub(crate) fn resolve_resource<'a>(
    attributes: &'a [KeyValue<'a>],
    ctx: &DecodeContext<'_>,
) -> Result<ResolvedResource<'a>, Rejection> {
    let limits = ctx.limits;
    let mut rendered: Vec<(Cow<'a, str>, String)> =
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
                let mut text = String::new();
                write_value(&mut text, value, limits, 0)?;
                // A repeated key keeps its last value, as jsonb would.
                rendered.retain(|(k, _)| k != &kv.key);
                rendered.push((Cow::Borrowed(kv.key.as_ref()), text));
            }
        }
    }
    for action in ctx.resource_actions {
        let key = action.key.as_str();
        let present = match key {
            "device.id" => device_id.is_some(),
            "device.location" => location.is_some(),
            _ => rendered.iter().any(|(k, _)| k == key),
        };
        let apply = match action.kind {
            AttributeActionKind::Insert => !present,
            AttributeActionKind::Update => present,
            AttributeActionKind::Upsert => true,
            AttributeActionKind::Delete => {
                match key {
                    "device.id" => device_id = None,
                    "device.location" => location = None,
                    _ => rendered.retain(|(k, _)| k != key),
                }
                false
            }
        };
        if apply {
            match key {
                "device.id" => device_id = action.value_text.clone().map(Cow::Owned),
                "device.location" => location = action.value_text.clone().map(Cow::Owned),
                _ => {
                    rendered.retain(|(k, _)| k != key);
                    rendered.push((Cow::Owned(key.to_owned()), action.value_json.clone()));
                }
            }
        }
    }
    if rendered.len() > limits.max_attributes {
        return Err(too_many(rendered.len(), limits));
    }
    let mut fragment = String::new();
    for (k, v) in &rendered {
        if !fragment.is_empty() {
            fragment.push(',');
        }
        write_key(&mut fragment, k, limits)?;
        fragment.push_str(v);
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

/// Decodes an `ExportMetricsServiceRequest` in OTLP/JSON into metric rows.
pub fn decode_metrics(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request: ExportMetrics = serde_json::from_slice(msg.payload)
        .map_err(|e| Rejection::malformed(format!("OTLP/JSON metrics: {e}")))?;
    let limits = ctx.limits;
    let total: usize = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| {
            m.gauge.as_ref().map_or(0, |g| g.data_points.len())
                + m.sum.as_ref().map_or(0, |s| s.data_points.len())
        })
        .sum();
    if total > limits.max_points_per_message {
        return Err(Rejection::limit(format!(
            "max_points_per_message: {total} data points, the limit is {}",
            limits.max_points_per_message
        )));
    }
    if total == 0 {
        return Err(Rejection::malformed(
            "OTLP/JSON metrics request holds no gauge or sum data point",
        ));
    }
    let mut attributes = String::new();
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
            if let Some(token) = jetscale_model::subject::device_of(msg.subject) {
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
            for metric in &sm.metrics {
                check_text("metric name", &metric.name)?;
                check_text("unit", &metric.unit)?;
                if metric.name.is_empty() {
                    return Err(Rejection::malformed("a metric has no name"));
                }
                if metric.histogram.is_some()
                    || metric.exponential_histogram.is_some()
                    || metric.summary.is_some()
                {
                    return Err(Rejection::new(
                        RejectionKind::UnknownFormat,
                        format!("metric `{}`: histogram and summary points are not stored by this collector", metric.name),
                    ));
                }
                let (points, kind) = match (&metric.gauge, &metric.sum) {
                    (Some(g), _) => (&g.data_points, MetricKind::Gauge),
                    (None, Some(s)) => (
                        &s.data_points,
                        match (s.aggregation_temporality, s.is_monotonic) {
                            (Temporality::Delta, _) => MetricKind::DeltaSum,
                            (_, true) => MetricKind::CumulativeSum,
                            (_, false) => MetricKind::NonMonotonicSum,
                        },
                    ),
                    (None, None) => continue,
                };
                for point in points {
                    let time = i64::try_from(point.time_unix_nano.0)
                        .map_err(|_| Rejection::malformed("timeUnixNano beyond the year 2262"))?;
                    ctx.check_time(time)?;
                    let value = match (point.as_double, point.as_int) {
                        (Some(d), _) => d.0,
                        (None, Some(i)) => i.0 as f64,
                        (None, None) => {
                            return Err(Rejection::malformed(format!(
                                "metric `{}`: a data point has neither asDouble nor asInt",
                                metric.name
                            )))
                        }
                    };
                    if resource.count + sm.scope.attributes.len() + point.attributes.len()
                        > limits.max_attributes
                    {
                        return Err(too_many(
                            resource.count + sm.scope.attributes.len() + point.attributes.len(),
                            limits,
                        ));
                    }
                    attributes.clear();
                    attributes.push('{');
                    let mut body = String::new();
                    body.push_str(&resource.fragment);
                    for part in [scope.as_str()] {
                        if !part.is_empty() {
                            if !body.is_empty() {
                                body.push(',');
                            }
                            body.push_str(part);
                        }
                    }
                    if kind != MetricKind::Gauge {
                        if !body.is_empty() {
                            body.push(',');
                        }
                        body.push_str("\"metric.kind\":\"");
                        body.push_str(kind.as_str());
                        body.push('"');
                    }
                    write_fragment(&mut body, &point.attributes, limits)?;
                    attributes.push_str(&body);
                    attributes.push('}');
                    sink.metric(&MetricPoint {
                        time_unix_nano: time,
                        source,
                        location,
                        name: &metric.name,
                        unit: &metric.unit,
                        value,
                        kind,
                        attributes: &attributes,
                    })?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{AttributeAction, Encoding};

    #[derive(Debug, Default)]
    pub(crate) struct Collect(
        pub Vec<(i64, String, String, String, String, f64, serde_json::Value)>,
    );

    impl RecordSink for Collect {
        fn metric(&mut self, p: &MetricPoint<'_>) -> Result<(), Rejection> {
            self.0.push((
                p.time_unix_nano,
                p.source.to_owned(),
                p.location.to_owned(),
                p.name.to_owned(),
                p.unit.to_owned(),
                p.value,
                serde_json::from_str(p.attributes).expect("attributes are JSON"),
            ));
            Ok(())
        }
        fn distribution(
            &mut self,
            _: &jetscale_model::DistributionPoint<'_>,
        ) -> Result<(), Rejection> {
            Err(Rejection::malformed("unexpected distribution"))
        }
        fn span(&mut self, _: &jetscale_model::SpanRecord<'_>) -> Result<(), Rejection> {
            Err(Rejection::malformed("unexpected span"))
        }
        fn log(&mut self, _: &jetscale_model::LogRecord<'_>) -> Result<(), Rejection> {
            Err(Rejection::malformed("unexpected log"))
        }
    }

    fn run(
        payload: &str,
        actions: &[AttributeAction],
        limits: &Limits,
    ) -> Result<Collect, Rejection> {
        let ctx = DecodeContext {
            limits,
            resource_actions: actions,
            encoding: Encoding::Auto,
            min_time_ns: 1,
            max_time_ns: i64::MAX,
        };
        let msg = Incoming {
            subject: "telemetry.metrics.sensor-001",
            content_type: None,
            format_header: None,
            payload: payload.as_bytes(),
        };
        let mut sink = Collect::default();
        decode_metrics(&msg, &ctx, &mut sink)?;
        Ok(sink)
    }

    /// The seed's payload, as its Python device writes it (json.dumps).
    pub(crate) const SEED_PAYLOAD: &str = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "iot-sensor"}}, {"key": "device.id", "value": {"stringValue": "sensor-001"}}, {"key": "device.location", "value": {"stringValue": "warehouse-a"}}]}, "scopeMetrics": [{"metrics": [{"name": "device.temperature", "unit": "Cel", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567890", "asDouble": 36.6}]}}, {"name": "device.humidity", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567891", "asDouble": 41.25}]}}, {"name": "device.battery", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601234567892", "asDouble": 87.0}]}}]}]}]}"#;

    #[test]
    fn seed_payload_maps_to_seed_columns() {
        let rows = run(SEED_PAYLOAD, &[], &Limits::default()).unwrap().0;
        assert_eq!(rows.len(), 3);
        let (time, device, location, name, unit, value, attrs) = &rows[0];
        assert_eq!(*time, 1_705_314_601_234_567_890);
        assert_eq!(device, "sensor-001");
        assert_eq!(location, "warehouse-a");
        assert_eq!(name, "device.temperature");
        assert_eq!(unit, "Cel");
        assert_eq!(*value, 36.6);
        assert_eq!(attrs, &serde_json::json!({"service.name": "iot-sensor"}));
        assert_eq!(rows[2].4, "%");
    }

    #[test]
    fn resource_upsert_adds_processed_at() {
        let actions = [AttributeAction {
            key: "pipeline.processed_at".into(),
            kind: AttributeActionKind::Upsert,
            value_json: "\"edge-7\"".into(),
            value_text: Some("edge-7".into()),
        }];
        let rows = run(SEED_PAYLOAD, &actions, &Limits::default()).unwrap().0;
        assert_eq!(rows[0].6["pipeline.processed_at"], "edge-7");
    }

    #[test]
    fn ints_as_strings_or_numbers_sums_and_snake_case() {
        let payload = r#"{"resource_metrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
          "scope_metrics": [{"scope": {"name": "meter", "version": "1.2"}, "metrics": [
            {"name": "requests", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
              "dataPoints": [{"timeUnixNano": 1705314601000000000, "asInt": "9007199254740993", "attributes": [{"key": "route", "value": {"stringValue": "/a"}}]},
                             {"time_unix_nano": "1705314602000000000", "as_int": 7, "unknownField": {"x": 1}}]}},
            {"name": "queue", "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA", "dataPoints": [{"timeUnixNano": "1705314601000000000", "asDouble": "NaN"}]}}
          ]}]}], "somethingNew": true}"#;
        let rows = run(payload, &[], &Limits::default()).unwrap().0;
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].1, "svc");
        assert_eq!(rows[0].2, "");
        assert_eq!(rows[0].5, 9_007_199_254_740_993_i64 as f64);
        assert_eq!(rows[0].6["route"], "/a");
        assert_eq!(rows[0].6["metric.kind"], "cumulative_sum");
        assert_eq!(rows[0].6["otel.scope.name"], "meter");
        assert_eq!(rows[1].5, 7.0);
        assert!(rows[2].5.is_nan());
        assert_eq!(rows[2].6["metric.kind"], "delta_sum");
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
}
