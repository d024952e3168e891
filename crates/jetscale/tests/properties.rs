//! Property tests (proptest) of the codecs, in the normal suite: records written by one side
//! and decoded by jetscale come back identical, values bit for bit, for OTLP/JSON (the
//! simulator's payload writer), OTLP protobuf and the NATS-native service design's flat JSON;
//! attribute values render to JSON that parses back to what was sent; and no input makes a
//! decoder panic.
//! The fuzz targets (fuzz/, see docs/security.md) explore the same entry point further.

use crate::support::now_ns;
use jetscale::config::{Encoding, Limits};
use jetscale::decode::{self, DecodeContext, Incoming, RecordSink, Rejection};
use jetscale_model::{DistributionPoint, LogRecord, MetricPoint, SpanRecord};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A decoded metric point, owned.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    time: i64,
    source: String,
    location: String,
    name: String,
    unit: String,
    value_bits: u64,
    attributes: String,
}

/// Keeps metric points; counts the rest.
#[derive(Default)]
struct Collect {
    points: Vec<Point>,
    others: usize,
}

impl RecordSink for Collect {
    fn metric(&mut self, p: &MetricPoint<'_>) -> Result<(), Rejection> {
        self.points.push(Point {
            time: p.time_unix_nano,
            source: p.source.to_owned(),
            location: p.location.to_owned(),
            name: p.name.to_owned(),
            unit: p.unit.to_owned(),
            value_bits: p.value.to_bits(),
            attributes: p.attributes.to_owned(),
        });
        Ok(())
    }
    fn distribution(&mut self, _: &DistributionPoint<'_>) -> Result<(), Rejection> {
        self.others += 1;
        Ok(())
    }
    fn span(&mut self, _: &SpanRecord<'_>) -> Result<(), Rejection> {
        self.others += 1;
        Ok(())
    }
    fn log(&mut self, _: &LogRecord<'_>) -> Result<(), Rejection> {
        self.others += 1;
        Ok(())
    }
}

fn run(
    subject: &str,
    content_type: Option<&str>,
    format: Option<&str>,
    payload: &[u8],
) -> Result<Collect, Rejection> {
    let limits = Limits::default();
    let ctx = DecodeContext::now(&limits, &[], Encoding::Auto);
    let mut sink = Collect::default();
    decode::decode(
        &Incoming {
            subject,
            content_type,
            format_header: format,
            payload,
        },
        &ctx,
        &mut sink,
    )?;
    Ok(sink)
}

/// Text a device may send: anything but NUL (which PostgreSQL cannot store), quotes,
/// backslashes, control, RTL and zero-width characters included.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => proptest::char::range('\u{1}', '\u{7f}'),
            1 => proptest::sample::select(vec!['\'', '"', '\\', ';', '\u{202E}', '\u{200B}', '\u{FEFF}', '\u{1F680}', '\u{10FFFF}', 'é']),
            1 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
        ],
        1..max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Any finite double, from its bits (subnormals, -0.0, extremes included).
fn finite() -> impl Strategy<Value = f64> {
    any::<u64>()
        .prop_map(f64::from_bits)
        .prop_filter("finite", |v| v.is_finite())
}

/// A time inside the accepted window (default limits: 7 days back, 1 hour ahead).
fn time() -> impl Strategy<Value = i64> {
    let now = now_ns();
    (now - 6 * 86_400 * 1_000_000_000)..(now + 30 * 60 * 1_000_000_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// OTLP/JSON as the simulator writes it: every point comes back bit for bit.
    #[test]
    fn otlp_json_metrics_round_trip(
        device in text(24),
        location in text(24),
        t in time(),
        values in [finite(), finite(), finite()],
    ) {
        let mut payload = Vec::new();
        jetscale::simulate::payload::write_payload(&mut payload, &device, &location, t, values);
        let got = run("telemetry.metrics.x", None, None, &payload).expect("decodes");
        prop_assert_eq!(got.points.len(), 3);
        for (i, p) in got.points.iter().enumerate() {
            let (name, unit) = jetscale::simulate::payload::METRICS[i];
            prop_assert_eq!(&p.source, &device);
            prop_assert_eq!(&p.location, &location);
            prop_assert_eq!(&p.name, name);
            prop_assert_eq!(&p.unit, unit);
            prop_assert_eq!(p.time, t + i as i64);
            prop_assert_eq!(p.value_bits, values[i].to_bits(), "value {} of {:?}", i, values);
        }
    }

    /// OTLP protobuf: gauge points (doubles and ints) come back exactly.
    #[test]
    fn otlp_proto_metrics_round_trip(
        device in text(24),
        name in text(24),
        unit in text(8),
        t in time(),
        double in finite(),
        int in any::<i64>(),
    ) {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::metrics::v1::{
            metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use prost::Message;
        let kv = |k: &str, v: &str| KeyValue {
            key: k.to_owned(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.to_owned())) }),
            ..Default::default()
        };
        let dp = |t: i64, v: number_data_point::Value| NumberDataPoint {
            time_unix_nano: t as u64,
            value: Some(v),
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "svc"), kv("device.id", &device)],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: name.clone(),
                        unit: unit.clone(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![
                                dp(t, number_data_point::Value::AsDouble(double)),
                                dp(t + 1, number_data_point::Value::AsInt(int)),
                            ],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = request.encode_to_vec();
        let got = run("telemetry.metrics.x", Some("application/x-protobuf"), None, &bytes)
            .expect("decodes");
        prop_assert_eq!(got.points.len(), 2);
        prop_assert_eq!(got.points[0].value_bits, double.to_bits());
        prop_assert_eq!(got.points[1].value_bits, (int as f64).to_bits());
        for (i, p) in got.points.iter().enumerate() {
            prop_assert_eq!(&p.source, &device);
            prop_assert_eq!(&p.name, &name);
            prop_assert_eq!(&p.unit, &unit);
            prop_assert_eq!(p.time, t + i as i64);
        }
    }

    /// The NATS-native service design's flat metric point: value bit for bit, names and tags as sent.
    #[test]
    fn flat_metric_round_trip(
        service in text(24),
        name in text(24),
        value in finite(),
        t in time(),
        tag in text(16),
    ) {
        let record = jetscale_model::flat::FlatMetric {
            name: name.clone(),
            kind: "gauge".into(),
            value,
            tags: [("tag".to_owned(), Value::String(tag.clone()))].into_iter().collect(),
            service: service.clone(),
            timestamp: jetscale_model::flat::unix_nanos_to_rfc3339(t),
        };
        let bytes = serde_json::to_vec(&record).expect("json");
        let got = run("telemetry.metrics.svc.name", None, Some("flat-metric"), &bytes).expect("decodes");
        prop_assert_eq!(got.points.len(), 1);
        let p = &got.points[0];
        prop_assert_eq!(p.value_bits, value.to_bits());
        prop_assert_eq!(&p.name, &name);
        prop_assert_eq!(&p.source, &service);
        prop_assert_eq!(p.time, t);
        let attributes: Value = serde_json::from_str(&p.attributes).expect("attributes are JSON");
        prop_assert_eq!(&attributes["tag"], &Value::String(tag));
    }

    /// Attribute values of every kind render to JSON that parses back to what was sent.
    #[test]
    fn attribute_values_render_to_equal_json((otlp, expected) in any_value(3), key in text(32)) {
        let now = now_ns();
        let payload = serde_json::to_vec(&json!({"resourceMetrics": [{
            "resource": {"attributes": [{"key": "device.id", "value": {"stringValue": "d"}}]},
            "scopeMetrics": [{"metrics": [{"name": "m", "gauge": {"dataPoints": [
                {"timeUnixNano": now.to_string(), "asDouble": 1.0,
                 "attributes": [{"key": key, "value": otlp}]}
            ]}}]}]
        }]})).expect("json");
        let got = run("telemetry.metrics.d", None, None, &payload).expect("decodes");
        prop_assert_eq!(got.points.len(), 1);
        let attributes: Value = serde_json::from_str(&got.points[0].attributes).expect("valid JSON");
        prop_assert_eq!(&attributes[key.as_str()], &expected);
    }

    /// Arbitrary bytes under every format hint: a decoder answers, it never panics.
    #[test]
    fn arbitrary_input_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        hint in 0usize..8,
    ) {
        let (content_type, format) = HINTS[hint];
        let _ = run("telemetry.metrics.x", content_type, format, &payload);
    }

    /// JSON-shaped noise (the decoders' likeliest hostile input) never panics either.
    #[test]
    fn json_shaped_input_never_panics(value in json_value(4), hint in 0usize..8) {
        let (content_type, format) = HINTS[hint];
        let wrapped = json!({"resourceMetrics": [value.clone()], "resourceSpans": value.clone(),
                             "name": value.clone(), "trace_id": value});
        let _ = run("telemetry.spans.x.y", content_type, format, &serde_json::to_vec(&wrapped).expect("json"));
    }
}

/// The format hints a message can carry (Content-Type, Jetscale-Format).
const HINTS: [(Option<&str>, Option<&str>); 8] = [
    (None, None),
    (Some("application/json"), None),
    (Some("application/x-protobuf"), None),
    (None, Some("otlp-json")),
    (None, Some("otlp-proto;signal=traces")),
    (None, Some("flat-span")),
    (None, Some("flat-metric")),
    (None, Some("flat-log")),
];

/// An OTLP AnyValue (as OTLP/JSON) and the JSON jetscale must render it as.
fn any_value(depth: u32) -> impl Strategy<Value = (Value, Value)> {
    let leaf = prop_oneof![
        text(40).prop_map(|s| (json!({"stringValue": s}), Value::String(s))),
        any::<bool>().prop_map(|b| (json!({"boolValue": b}), Value::Bool(b))),
        any::<i64>().prop_map(|i| (json!({"intValue": i.to_string()}), json!(i))),
        any::<i64>().prop_map(|i| (json!({"intValue": i}), json!(i))),
        finite().prop_map(|d| (json!({"doubleValue": d}), json!(d))),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| {
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD.encode(b);
            (json!({"bytesValue": text}), Value::String(text))
        }),
        Just((json!({}), Value::Null)),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                let (otlp, expected): (Vec<_>, Vec<_>) = items.into_iter().unzip();
                (
                    json!({"arrayValue": {"values": otlp}}),
                    Value::Array(expected),
                )
            }),
            proptest::collection::btree_map(text(12), inner, 0..4).prop_map(|entries| {
                let otlp: Vec<Value> = entries
                    .iter()
                    .map(|(k, (v, _))| json!({"key": k, "value": v}))
                    .collect();
                let expected: serde_json::Map<String, Value> =
                    entries.into_iter().map(|(k, (_, e))| (k, e)).collect();
                (
                    json!({"kvlistValue": {"values": otlp}}),
                    Value::Object(expected),
                )
            }),
        ]
    })
}

/// Arbitrary JSON.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        finite().prop_map(|d| json!(d)),
        text(16).prop_map(Value::String),
        Just(json!("0")),
        Just(json!("")),
    ];
    leaf.prop_recursive(depth, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    text(10),
                    proptest::sample::select(vec![
                        "timeUnixNano".to_owned(),
                        "asDouble".to_owned(),
                        "asInt".to_owned(),
                        "dataPoints".to_owned(),
                        "gauge".to_owned(),
                        "sum".to_owned(),
                        "metrics".to_owned(),
                        "scopeMetrics".to_owned(),
                        "resource".to_owned(),
                        "attributes".to_owned(),
                        "key".to_owned(),
                        "value".to_owned(),
                        "spans".to_owned(),
                        "scopeSpans".to_owned(),
                        "traceId".to_owned(),
                        "spanId".to_owned(),
                        "startTimeUnixNano".to_owned(),
                        "histogram".to_owned(),
                        "bucketCounts".to_owned(),
                        "explicitBounds".to_owned(),
                        "count".to_owned(),
                        "timestamp".to_owned(),
                        "value".to_owned(),
                        "service".to_owned(),
                    ]),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Regression (found by the `config_load` fuzz target): a numeric duration beyond u64::MAX
/// seconds made `Duration::from_secs_f64` panic; it is now an error naming the key.
#[test]
fn huge_numeric_durations_are_errors_not_panics() {
    let lookup = |_: &str| None;
    for value in ["1e20", "1e300", "18446744073709551616", "-1", ".inf"] {
        let text = format!("receivers:\n  nats:\n    jetstream:\n      ack_wait: {value}\n");
        let err =
            jetscale::config::ConfigFile::parse(&text, std::path::Path::new("c.yaml"), &lookup)
                .err()
                .unwrap_or_else(|| panic!("ack_wait: {value} accepted"));
        assert!(err.to_string().contains("ack_wait"), "{value}: {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The config loader (parse, `${VAR}` expansion, resolve) answers every YAML document
    /// made of its own keys and odd values with settings or an error, never a panic.
    #[test]
    fn config_loader_never_panics(doc in config_doc()) {
        let lookup = |name: &str| (name == "HOSTNAME").then(|| "edge-7".to_owned());
        if let Ok(file) = jetscale::config::ConfigFile::parse(&doc, std::path::Path::new("c.yaml"), &lookup) {
            let _ = jetscale::config::settings::resolve(&file, &jetscale::config::Overrides::default());
        }
    }
}

/// YAML documents over the config's keys with values of every odd kind.
fn config_doc() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("1e20".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("99999999999d".to_owned()),
        Just("5s".to_owned()),
        Just("1.5GiB".to_owned()),
        Just("\"${HOSTNAME}\"".to_owned()),
        Just("\"${MISSING:-x}\"".to_owned()),
        Just("\"${UNSET}\"".to_owned()),
        Just("\"x; drop table y\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("~".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        text(12).prop_map(|s| serde_json::to_string(&s).expect("json string")),
    ];
    let key = proptest::sample::select(vec![
        "receivers.nats.url",
        "receivers.nats.subject",
        "receivers.nats.encoding",
        "receivers.nats.jetstream.stream",
        "receivers.nats.jetstream.consumer",
        "receivers.nats.jetstream.ack_wait",
        "receivers.nats.jetstream.max_ack_pending",
        "receivers.nats.jetstream.fetch_batch",
        "receivers.nats.jetstream.stream_settings.max_age",
        "receivers.nats.jetstream.stream_settings.max_bytes",
        "receivers.nats.jetstream.stream_settings.replicas",
        "receivers.nats.jetstream.stream_settings.duplicate_window",
        "processors.batch.send_batch_size",
        "processors.batch.timeout",
        "exporters.postgresql.endpoint",
        "exporters.postgresql.table_name",
        "exporters.postgresql.schema",
        "exporters.postgresql.chunk_interval",
        "exporters.postgresql.retention",
        "exporters.postgresql.writers",
        "limits.max_message_bytes",
        "limits.max_points_per_message",
        "limits.max_past",
        "limits.max_future",
        "limits.max_value_depth",
        "limits.verify_device_subject",
    ]);
    proptest::collection::btree_map(key, value, 0..8).prop_map(|entries| {
        // Nest the dotted keys into YAML.
        let mut tree = serde_yaml_ng::Mapping::new();
        for (path, value) in entries {
            let parsed: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&value).unwrap_or(serde_yaml_ng::Value::String(value));
            let mut node = &mut tree;
            let parts: Vec<&str> = path.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                let entry = node
                    .entry(serde_yaml_ng::Value::String((*part).to_owned()))
                    .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
                if !entry.is_mapping() {
                    *entry = serde_yaml_ng::Value::Mapping(Default::default());
                }
                let serde_yaml_ng::Value::Mapping(next) = entry else {
                    unreachable!()
                };
                node = next;
            }
            node.insert(
                serde_yaml_ng::Value::String(parts[parts.len() - 1].to_owned()),
                parsed,
            );
        }
        serde_yaml_ng::to_string(&tree).unwrap_or_default()
    })
}
