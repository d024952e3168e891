//! OTLP protobuf (binary) `Export*ServiceRequest`s, decoded with prost into the
//! `opentelemetry-proto` types, then converted (borrowing every string) into the same
//! structs the OTLP/JSON decoders read, so both encodings share one mapping and one set of
//! checks. Ids become hex, bytes values base64, exactly as OTLP/JSON writes them.
//!
//! Protobuf does not say which request it holds. The signal comes from the headers or the
//! subject (see `detect`); when nothing says, [`decode_any`] tries metrics, traces, then
//! logs, and accepts a decode only when it yields a record whose required fields are set:
//! a message of one signal decoded as another fails on wire types or yields no such record,
//! so it is never filed as the wrong signal.

use super::attributes::{AnyValue, KeyValue};
use super::numbers::{LenientF64, LenientI64, LenientU64};
use super::otlp_json::logs::{ExportLogs, SeverityNumber};
use super::otlp_json::metrics::{ExportMetrics, Temporality};
use super::otlp_json::traces::{ExportTraces, SpanKind, StatusCode};
use super::otlp_json::{self, Resource, Scope};
use super::{DecodeContext, Incoming, RecordSink, Rejection, RejectionKind};
use base64::Engine as _;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pb_common;
use opentelemetry_proto::tonic::logs::v1 as pb_logs;
use opentelemetry_proto::tonic::metrics::v1 as pb_metrics;
use opentelemetry_proto::tonic::resource::v1 as pb_resource;
use opentelemetry_proto::tonic::trace::v1 as pb_trace;
use prost::Message;
use std::borrow::Cow;

/// Decodes an `ExportMetricsServiceRequest` in protobuf into metric and distribution rows.
pub fn decode_metrics(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request = ExportMetricsServiceRequest::decode(msg.payload)
        .map_err(|e| Rejection::malformed(format!("OTLP protobuf metrics: {e}")))?;
    let request = metrics(&request);
    if otlp_json::metrics::count_points(&request) == 0 {
        return Err(empty("metrics", "data points"));
    }
    otlp_json::metrics::emit_metrics(&request, msg.subject, ctx, sink)
}

/// Decodes an `ExportTraceServiceRequest` in protobuf into span rows.
pub fn decode_traces(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request = ExportTraceServiceRequest::decode(msg.payload)
        .map_err(|e| Rejection::malformed(format!("OTLP protobuf traces: {e}")))?;
    let request = traces(&request);
    if otlp_json::traces::count_spans(&request) == 0 {
        return Err(empty("traces", "spans"));
    }
    otlp_json::traces::emit_traces(&request, ctx, sink)
}

/// Decodes an `ExportLogsServiceRequest` in protobuf into log rows.
pub fn decode_logs(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request = ExportLogsServiceRequest::decode(msg.payload)
        .map_err(|e| Rejection::malformed(format!("OTLP protobuf logs: {e}")))?;
    let request = logs(&request);
    if otlp_json::logs::count_logs(&request) == 0 {
        return Err(empty("logs", "log records"));
    }
    otlp_json::logs::emit_logs(&request, ctx, sink)
}

/// Bytes that decode as a request holding nothing: protobuf skips unknown fields, so most
/// short texts decode that way. Never stored, and (when protobuf was only a guess) reported
/// as an unknown format.
fn empty(signal: &str, what: &str) -> Rejection {
    Rejection::malformed(format!(
        "OTLP protobuf {signal}: the request holds no {what}"
    ))
}

/// A protobuf message whose signal nothing declared: the first of metrics, traces and logs
/// that decodes and holds a record with its required fields set.
pub fn decode_any(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    if let Ok(request) = ExportMetricsServiceRequest::decode(msg.payload) {
        if plausible_metrics(&request) {
            return otlp_json::metrics::emit_metrics(&metrics(&request), msg.subject, ctx, sink);
        }
    }
    if let Ok(request) = ExportTraceServiceRequest::decode(msg.payload) {
        if plausible_traces(&request) {
            return otlp_json::traces::emit_traces(&traces(&request), ctx, sink);
        }
    }
    if let Ok(request) = ExportLogsServiceRequest::decode(msg.payload) {
        if plausible_logs(&request) {
            return otlp_json::logs::emit_logs(&logs(&request), ctx, sink);
        }
    }
    Err(Rejection::new(
        RejectionKind::UnknownFormat,
        "not JSON, and not an OTLP protobuf metrics, traces or logs request holding a record \
         (no Jetscale-Format or Content-Type header and no telemetry.{metrics,spans,logs} \
         subject said which)",
    ))
}

/// A metric with a name, data and a timed point.
fn plausible_metrics(request: &ExportMetricsServiceRequest) -> bool {
    use pb_metrics::metric::Data;
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .any(|m| {
            !m.name.is_empty()
                && match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.iter().any(|p| p.time_unix_nano != 0),
                    Some(Data::Sum(s)) => s.data_points.iter().any(|p| p.time_unix_nano != 0),
                    Some(Data::Histogram(h)) => h.data_points.iter().any(|p| p.time_unix_nano != 0),
                    Some(Data::ExponentialHistogram(h)) => {
                        h.data_points.iter().any(|p| p.time_unix_nano != 0)
                    }
                    Some(Data::Summary(s)) => s.data_points.iter().any(|p| p.time_unix_nano != 0),
                    None => false,
                }
        })
}

/// A span with ids of the right sizes and a start time.
fn plausible_traces(request: &ExportTraceServiceRequest) -> bool {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .any(|s| s.trace_id.len() == 16 && s.span_id.len() == 8 && s.start_time_unix_nano != 0)
}

/// A log record with a time.
fn plausible_logs(request: &ExportLogsServiceRequest) -> bool {
    request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .any(|l| l.time_unix_nano != 0 || l.observed_time_unix_nano != 0)
}

fn any_value(v: &pb_common::AnyValue) -> AnyValue<'_> {
    use pb_common::any_value::Value;
    match &v.value {
        Some(Value::StringValue(s)) => AnyValue::String(Cow::Borrowed(s)),
        Some(Value::BoolValue(b)) => AnyValue::Bool(*b),
        Some(Value::IntValue(i)) => AnyValue::Int(*i),
        Some(Value::DoubleValue(d)) => AnyValue::Double(*d),
        Some(Value::ArrayValue(a)) => AnyValue::Array(a.values.iter().map(any_value).collect()),
        Some(Value::KvlistValue(kv)) => AnyValue::KvList(attributes(&kv.values)),
        Some(Value::BytesValue(b)) => AnyValue::Bytes(Cow::Owned(
            base64::engine::general_purpose::STANDARD.encode(b),
        )),
        // A string table index only means something inside a profiles request.
        Some(Value::StringValueStrindex(_)) | None => AnyValue::Empty,
    }
}

fn attributes(kvs: &[pb_common::KeyValue]) -> Vec<KeyValue<'_>> {
    kvs.iter()
        .map(|kv| KeyValue {
            key: Cow::Borrowed(&kv.key),
            value: kv.value.as_ref().map(any_value).unwrap_or_default(),
        })
        .collect()
}

fn resource(r: Option<&pb_resource::Resource>) -> Resource<'_> {
    Resource {
        attributes: r.map(|r| attributes(&r.attributes)).unwrap_or_default(),
    }
}

fn scope(s: Option<&pb_common::InstrumentationScope>) -> Scope<'_> {
    match s {
        Some(s) => Scope {
            name: Cow::Borrowed(&s.name),
            version: Cow::Borrowed(&s.version),
            attributes: attributes(&s.attributes),
        },
        None => Scope::default(),
    }
}

fn hex(bytes: &[u8]) -> Cow<'static, str> {
    Cow::Owned(hex::encode(bytes))
}

fn f64s(v: &[f64]) -> Vec<LenientF64> {
    v.iter().copied().map(LenientF64).collect()
}

fn u64s(v: &[u64]) -> Vec<LenientU64> {
    v.iter().copied().map(LenientU64).collect()
}

fn numbers(points: &[pb_metrics::NumberDataPoint]) -> Vec<otlp_json::metrics::NumberDataPoint<'_>> {
    use pb_metrics::number_data_point::Value;
    points
        .iter()
        .map(|p| otlp_json::metrics::NumberDataPoint {
            attributes: attributes(&p.attributes),
            time_unix_nano: LenientU64(p.time_unix_nano),
            as_double: match p.value {
                Some(Value::AsDouble(d)) => Some(LenientF64(d)),
                _ => None,
            },
            as_int: match p.value {
                Some(Value::AsInt(i)) => Some(LenientI64(i)),
                _ => None,
            },
        })
        .collect()
}

fn metrics(request: &ExportMetricsServiceRequest) -> ExportMetrics<'_> {
    use otlp_json::metrics::{
        Buckets, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
        HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
        ValueAtQuantile,
    };
    use pb_metrics::metric::Data;
    let buckets = |b: &Option<pb_metrics::exponential_histogram_data_point::Buckets>| {
        b.as_ref().map(|b| Buckets {
            offset: LenientI64(i64::from(b.offset)),
            bucket_counts: u64s(&b.bucket_counts),
        })
    };
    let temporality = |t: i32| Temporality::from_number(i64::from(t));
    ExportMetrics {
        resource_metrics: request
            .resource_metrics
            .iter()
            .map(|rm| ResourceMetrics {
                resource: resource(rm.resource.as_ref()),
                scope_metrics: rm
                    .scope_metrics
                    .iter()
                    .map(|sm| ScopeMetrics {
                        scope: scope(sm.scope.as_ref()),
                        metrics: sm
                            .metrics
                            .iter()
                            .map(|m| {
                                let mut out = Metric {
                                    name: Cow::Borrowed(&m.name),
                                    unit: Cow::Borrowed(&m.unit),
                                    ..Metric::default()
                                };
                                match &m.data {
                                    Some(Data::Gauge(g)) => {
                                        out.gauge = Some(Gauge {
                                            data_points: numbers(&g.data_points),
                                        })
                                    }
                                    Some(Data::Sum(s)) => {
                                        out.sum = Some(Sum {
                                            data_points: numbers(&s.data_points),
                                            aggregation_temporality: temporality(
                                                s.aggregation_temporality,
                                            ),
                                            is_monotonic: s.is_monotonic,
                                        })
                                    }
                                    Some(Data::Histogram(h)) => {
                                        out.histogram = Some(Box::new(Histogram {
                                            aggregation_temporality: temporality(
                                                h.aggregation_temporality,
                                            ),
                                            data_points: h
                                                .data_points
                                                .iter()
                                                .map(|p| HistogramDataPoint {
                                                    attributes: attributes(&p.attributes),
                                                    start_time_unix_nano: LenientU64(
                                                        p.start_time_unix_nano,
                                                    ),
                                                    time_unix_nano: LenientU64(p.time_unix_nano),
                                                    count: LenientU64(p.count),
                                                    sum: p.sum.map(LenientF64),
                                                    bucket_counts: u64s(&p.bucket_counts),
                                                    explicit_bounds: f64s(&p.explicit_bounds),
                                                    min: p.min.map(LenientF64),
                                                    max: p.max.map(LenientF64),
                                                })
                                                .collect(),
                                        }))
                                    }
                                    Some(Data::ExponentialHistogram(h)) => {
                                        out.exponential_histogram =
                                            Some(Box::new(ExponentialHistogram {
                                                aggregation_temporality: temporality(
                                                    h.aggregation_temporality,
                                                ),
                                                data_points: h
                                                    .data_points
                                                    .iter()
                                                    .map(|p| ExponentialHistogramDataPoint {
                                                        attributes: attributes(&p.attributes),
                                                        start_time_unix_nano: LenientU64(
                                                            p.start_time_unix_nano,
                                                        ),
                                                        time_unix_nano: LenientU64(
                                                            p.time_unix_nano,
                                                        ),
                                                        count: LenientU64(p.count),
                                                        sum: p.sum.map(LenientF64),
                                                        scale: LenientI64(i64::from(p.scale)),
                                                        zero_count: LenientU64(p.zero_count),
                                                        positive: buckets(&p.positive),
                                                        negative: buckets(&p.negative),
                                                        min: p.min.map(LenientF64),
                                                        max: p.max.map(LenientF64),
                                                        zero_threshold: LenientF64(
                                                            p.zero_threshold,
                                                        ),
                                                    })
                                                    .collect(),
                                            }))
                                    }
                                    Some(Data::Summary(s)) => {
                                        out.summary = Some(Box::new(Summary {
                                            data_points: s
                                                .data_points
                                                .iter()
                                                .map(|p| SummaryDataPoint {
                                                    attributes: attributes(&p.attributes),
                                                    start_time_unix_nano: LenientU64(
                                                        p.start_time_unix_nano,
                                                    ),
                                                    time_unix_nano: LenientU64(p.time_unix_nano),
                                                    count: LenientU64(p.count),
                                                    sum: LenientF64(p.sum),
                                                    quantile_values: p
                                                        .quantile_values
                                                        .iter()
                                                        .map(|q| ValueAtQuantile {
                                                            quantile: LenientF64(q.quantile),
                                                            value: LenientF64(q.value),
                                                        })
                                                        .collect(),
                                                })
                                                .collect(),
                                        }))
                                    }
                                    None => {}
                                }
                                out
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn span(s: &pb_trace::Span) -> otlp_json::traces::Span<'_> {
    use otlp_json::traces::{Event, Link, Span, Status};
    Span {
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        trace_state: Cow::Borrowed(&s.trace_state),
        parent_span_id: hex(&s.parent_span_id),
        flags: LenientU64(u64::from(s.flags)),
        name: Cow::Borrowed(&s.name),
        kind: SpanKind(s.kind),
        start_time_unix_nano: LenientU64(s.start_time_unix_nano),
        end_time_unix_nano: LenientU64(s.end_time_unix_nano),
        attributes: attributes(&s.attributes),
        events: s
            .events
            .iter()
            .map(|e| Event {
                time_unix_nano: LenientU64(e.time_unix_nano),
                name: Cow::Borrowed(&e.name),
                attributes: attributes(&e.attributes),
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| Link {
                trace_id: hex(&l.trace_id),
                span_id: hex(&l.span_id),
                trace_state: Cow::Borrowed(&l.trace_state),
                attributes: attributes(&l.attributes),
                flags: LenientU64(u64::from(l.flags)),
            })
            .collect(),
        status: s.status.as_ref().map(|st| Status {
            message: Cow::Borrowed(&st.message),
            code: StatusCode(st.code),
        }),
    }
}

fn traces(request: &ExportTraceServiceRequest) -> ExportTraces<'_> {
    use otlp_json::traces::{ResourceSpans, ScopeSpans};
    ExportTraces {
        resource_spans: request
            .resource_spans
            .iter()
            .map(|rs| ResourceSpans {
                resource: resource(rs.resource.as_ref()),
                scope_spans: rs
                    .scope_spans
                    .iter()
                    .map(|ss| ScopeSpans {
                        scope: scope(ss.scope.as_ref()),
                        spans: ss.spans.iter().map(span).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn record(l: &pb_logs::LogRecord) -> otlp_json::logs::Log<'_> {
    otlp_json::logs::Log {
        time_unix_nano: LenientU64(l.time_unix_nano),
        observed_time_unix_nano: LenientU64(l.observed_time_unix_nano),
        severity_number: SeverityNumber(l.severity_number),
        severity_text: Cow::Borrowed(&l.severity_text),
        body: l.body.as_ref().map(any_value),
        attributes: attributes(&l.attributes),
        flags: LenientU64(u64::from(l.flags)),
        trace_id: hex(&l.trace_id),
        span_id: hex(&l.span_id),
        event_name: Cow::Borrowed(&l.event_name),
    }
}

fn logs(request: &ExportLogsServiceRequest) -> ExportLogs<'_> {
    use otlp_json::logs::{ResourceLogs, ScopeLogs};
    ExportLogs {
        resource_logs: request
            .resource_logs
            .iter()
            .map(|rl| ResourceLogs {
                resource: resource(rl.resource.as_ref()),
                scope_logs: rl
                    .scope_logs
                    .iter()
                    .map(|sl| ScopeLogs {
                        scope: scope(sl.scope.as_ref()),
                        log_records: sl.log_records.iter().map(record).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::decode::testing::{self, Collected};
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue as PbAny, KeyValue as PbKv};
    use serde_json::json;

    fn kv(key: &str, value: Value) -> PbKv {
        PbKv {
            key: key.into(),
            value: Some(PbAny { value: Some(value) }),
            ..Default::default()
        }
    }

    fn service(name: &str) -> Option<pb_resource::Resource> {
        Some(pb_resource::Resource {
            attributes: vec![kv("service.name", Value::StringValue(name.into()))],
            ..Default::default()
        })
    }

    const T: u64 = 1_705_314_601_000_000_000;

    fn trace_request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![pb_trace::ResourceSpans {
                resource: service("worker"),
                scope_spans: vec![pb_trace::ScopeSpans {
                    scope: Some(pb_common::InstrumentationScope {
                        name: "lib".into(),
                        ..Default::default()
                    }),
                    spans: vec![pb_trace::Span {
                        trace_id: vec![0xAB; 16],
                        span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
                        parent_span_id: vec![0x0F; 8],
                        trace_state: "k=v".into(),
                        flags: 0x301,
                        name: "step".into(),
                        kind: pb_trace::span::SpanKind::Producer as i32,
                        start_time_unix_nano: T,
                        end_time_unix_nano: T + 5_000_000,
                        attributes: vec![
                            kv("bytes", Value::BytesValue(vec![0, 1, 2])),
                            kv("n", Value::IntValue(-7)),
                            kv(
                                "nested",
                                Value::KvlistValue(pb_common::KeyValueList {
                                    values: vec![kv(
                                        "list",
                                        Value::ArrayValue(pb_common::ArrayValue {
                                            values: vec![PbAny {
                                                value: Some(Value::DoubleValue(0.1)),
                                            }],
                                        }),
                                    )],
                                }),
                            ),
                        ],
                        events: vec![pb_trace::span::Event {
                            time_unix_nano: T + 1,
                            name: "e".into(),
                            attributes: vec![kv("x", Value::BoolValue(true))],
                            ..Default::default()
                        }],
                        links: vec![pb_trace::span::Link {
                            trace_id: vec![0xCD; 16],
                            span_id: vec![0xEF; 8],
                            trace_state: "a=b".into(),
                            flags: 1,
                            ..Default::default()
                        }],
                        status: Some(pb_trace::Status {
                            message: "bad".into(),
                            code: pb_trace::status::StatusCode::Error as i32,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn log_request() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![pb_logs::ResourceLogs {
                resource: service("engine"),
                scope_logs: vec![pb_logs::ScopeLogs {
                    log_records: vec![pb_logs::LogRecord {
                        time_unix_nano: 0,
                        observed_time_unix_nano: T,
                        severity_number: pb_logs::SeverityNumber::Fatal as i32,
                        severity_text: "FATAL".into(),
                        body: Some(PbAny {
                            value: Some(Value::StringValue("down".into())),
                        }),
                        attributes: vec![kv("k", Value::StringValue("v".into()))],
                        flags: 1,
                        trace_id: vec![0xAB; 16],
                        span_id: vec![0x01; 8],
                        event_name: "crash".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn metric_request() -> ExportMetricsServiceRequest {
        use pb_metrics::metric::Data;
        ExportMetricsServiceRequest {
            resource_metrics: vec![pb_metrics::ResourceMetrics {
                resource: Some(pb_resource::Resource {
                    attributes: vec![
                        kv("device.id", Value::StringValue("sensor-7".into())),
                        kv("device.location", Value::StringValue("dock".into())),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![pb_metrics::ScopeMetrics {
                    metrics: vec![
                        pb_metrics::Metric {
                            name: "temp".into(),
                            unit: "Cel".into(),
                            data: Some(Data::Gauge(pb_metrics::Gauge {
                                data_points: vec![pb_metrics::NumberDataPoint {
                                    time_unix_nano: T,
                                    value: Some(pb_metrics::number_data_point::Value::AsDouble(
                                        21.125,
                                    )),
                                    ..Default::default()
                                }],
                            })),
                            ..Default::default()
                        },
                        pb_metrics::Metric {
                            name: "count".into(),
                            data: Some(Data::Sum(pb_metrics::Sum {
                                data_points: vec![pb_metrics::NumberDataPoint {
                                    time_unix_nano: T,
                                    value: Some(pb_metrics::number_data_point::Value::AsInt(-3)),
                                    ..Default::default()
                                }],
                                aggregation_temporality: pb_metrics::AggregationTemporality::Delta
                                    as i32,
                                is_monotonic: false,
                            })),
                            ..Default::default()
                        },
                        pb_metrics::Metric {
                            name: "lat".into(),
                            data: Some(Data::Histogram(pb_metrics::Histogram {
                                data_points: vec![pb_metrics::HistogramDataPoint {
                                    time_unix_nano: T,
                                    start_time_unix_nano: T - 10,
                                    count: 3,
                                    sum: Some(6.0),
                                    bucket_counts: vec![1, 2],
                                    explicit_bounds: vec![2.5],
                                    min: None,
                                    max: Some(4.0),
                                    ..Default::default()
                                }],
                                aggregation_temporality:
                                    pb_metrics::AggregationTemporality::Cumulative as i32,
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn any(payload: &[u8]) -> Result<Collected, Rejection> {
        testing::run(decode_any, "other.subject", payload, &Limits::default())
    }

    #[test]
    fn spans_map_every_field() {
        let bytes = trace_request().encode_to_vec();
        let got = testing::run(
            decode_traces,
            "telemetry.spans.w.r",
            &bytes,
            &Limits::default(),
        )
        .unwrap();
        let s = &got.spans[0];
        assert_eq!(s.trace_id, "ab".repeat(16));
        assert_eq!(s.span_id, "0102030405060708");
        assert_eq!(s.parent_span_id, "0f".repeat(8));
        assert_eq!(
            (&*s.trace_state, &*s.name, &*s.service),
            ("k=v", "step", "worker")
        );
        assert_eq!(
            (&*s.kind, &*s.status_code, &*s.status_message),
            ("producer", "error", "bad")
        );
        assert_eq!((s.start, s.end), (T as i64, T as i64 + 5_000_000));
        assert_eq!(
            s.attributes,
            json!({"bytes": "AAEC", "n": -7, "nested": {"list": [0.1]}, "otel.span.flags": 0x301})
        );
        assert_eq!(
            s.resource,
            json!({"service.name": "worker", "otel.scope.name": "lib"})
        );
        assert_eq!(
            s.events,
            json!([{"time_unix_nano": T + 1, "name": "e", "attributes": {"x": true}}])
        );
        assert_eq!(
            s.links,
            json!([{"trace_id": "cd".repeat(16), "span_id": "ef".repeat(8), "trace_state": "a=b",
                    "attributes": {}, "flags": 1}])
        );
        // Nothing declared: found by trial.
        assert_eq!(any(&bytes).unwrap().spans.len(), 1);
    }

    #[test]
    fn logs_map_every_field() {
        let bytes = log_request().encode_to_vec();
        let got = testing::run(
            decode_logs,
            "telemetry.logs.e.x",
            &bytes,
            &Limits::default(),
        )
        .unwrap();
        let l = &got.logs[0];
        assert_eq!((l.time, l.observed), (T as i64, T as i64));
        assert_eq!((l.severity_number, &*l.severity_text), (21, "FATAL"));
        assert_eq!((&*l.message, l.body_json.clone()), ("down", None));
        assert_eq!(l.attributes, json!({"k": "v", "event.name": "crash"}));
        assert_eq!(
            (&*l.trace_id, &*l.span_id, l.flags),
            (&*"ab".repeat(16), &*"01".repeat(8), 1)
        );
        assert_eq!(l.service, "engine");
        assert_eq!(any(&bytes).unwrap().logs.len(), 1);
        // Absent trace context stays empty.
        let mut request = log_request();
        request.resource_logs[0].scope_logs[0].log_records[0]
            .trace_id
            .clear();
        request.resource_logs[0].scope_logs[0].log_records[0]
            .span_id
            .clear();
        let got = testing::run(
            decode_logs,
            "telemetry.logs.e.x",
            &request.encode_to_vec(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((&*got.logs[0].trace_id, &*got.logs[0].span_id), ("", ""));
    }

    #[test]
    fn metrics_map_every_kind() {
        let bytes = metric_request().encode_to_vec();
        let got = testing::run(
            decode_metrics,
            "telemetry.metrics.sensor-7",
            &bytes,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(got.metrics.len(), 2);
        assert_eq!(
            (
                &*got.metrics[0].source,
                &*got.metrics[0].location,
                got.metrics[0].value
            ),
            ("sensor-7", "dock", 21.125)
        );
        assert_eq!(got.metrics[1].value, -3.0);
        assert_eq!(got.metrics[1].attributes["metric.kind"], "delta_sum");
        let h = &got.distributions[0];
        assert_eq!(
            (&*h.kind, &*h.temporality, h.count),
            ("histogram", "cumulative", 3)
        );
        assert_eq!((h.sum, h.min, h.max), (Some(6.0), None, Some(4.0)));
        assert_eq!(h.buckets, json!({"bounds": [2.5], "counts": [1, 2]}));
        assert_eq!(h.start, T as i64 - 10);
        let trial = any(&bytes).unwrap();
        assert_eq!((trial.metrics.len(), trial.distributions.len()), (2, 1));
    }

    #[test]
    fn wrong_ids_and_garbage_are_rejected() {
        let mut request = trace_request();
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1; 15];
        let err = testing::run(
            decode_traces,
            "telemetry.spans.w.r",
            &request.encode_to_vec(),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err.detail.contains("traceId"), "{err}");
        // Not protobuf at all.
        let err = any(b"\xff\xff\xff\xff garbage").unwrap_err();
        assert_eq!(err.kind, RejectionKind::UnknownFormat);
        // Valid protobuf of nothing: no signal can be told, nothing is filed.
        assert_eq!(any(b"").unwrap_err().kind, RejectionKind::UnknownFormat);
        // A declared signal that does not fit is malformed, never re-filed.
        let err = testing::run(
            decode_metrics,
            "telemetry.metrics.x",
            &trace_request().encode_to_vec(),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind, RejectionKind::Malformed, "{err}");
    }

    #[test]
    fn each_signal_fails_as_the_others() {
        // The trial order must never file one signal as another: every request, decoded as
        // each other signal, fails or holds nothing plausible.
        let t = trace_request().encode_to_vec();
        let l = log_request().encode_to_vec();
        let m = metric_request().encode_to_vec();
        assert!(ExportMetricsServiceRequest::decode(&t[..])
            .map(|r| !plausible_metrics(&r))
            .unwrap_or(true));
        assert!(ExportMetricsServiceRequest::decode(&l[..])
            .map(|r| !plausible_metrics(&r))
            .unwrap_or(true));
        assert!(ExportTraceServiceRequest::decode(&l[..])
            .map(|r| !plausible_traces(&r))
            .unwrap_or(true));
        assert!(ExportTraceServiceRequest::decode(&m[..])
            .map(|r| !plausible_traces(&r))
            .unwrap_or(true));
        assert!(ExportLogsServiceRequest::decode(&m[..])
            .map(|r| !plausible_logs(&r))
            .unwrap_or(true));
        assert!(ExportLogsServiceRequest::decode(&t[..])
            .map(|r| !plausible_logs(&r))
            .unwrap_or(true));
        for (name, bytes) in [
            ("traces", testing::fixture("otel_python_traces.pb")),
            ("metrics", testing::fixture("otel_python_metrics.pb")),
            ("logs", testing::fixture("otel_python_logs.pb")),
        ] {
            let got = any(&bytes).unwrap();
            let found = [
                ("metrics", got.metrics.len() + got.distributions.len()),
                ("traces", got.spans.len()),
                ("logs", got.logs.len()),
            ];
            for (signal, n) in found {
                assert_eq!(n > 0, signal == name, "{name} fixture filed as {signal}");
            }
        }
    }

    #[test]
    fn limits_apply() {
        let limits = Limits {
            max_attribute_value_bytes: 2,
            ..Limits::default()
        };
        let err = testing::run(
            decode_traces,
            "telemetry.spans.w.r",
            &trace_request().encode_to_vec(),
            &limits,
        )
        .unwrap_err();
        assert!(err.detail.contains("max_attribute_value_bytes"), "{err}");
        let limits = Limits {
            max_points_per_message: 2,
            ..Limits::default()
        };
        let err = testing::run(
            decode_metrics,
            "telemetry.metrics.x",
            &metric_request().encode_to_vec(),
            &limits,
        )
        .unwrap_err();
        assert!(err.detail.contains("max_points_per_message"), "{err}");
    }

    /// opentelemetry-proto's own serde (its `with-serde` feature) writes OTLP/JSON: ids as
    /// hex, 64-bit integers as strings, bytes as base64, absent messages as `null`. The JSON
    /// decoders read it to the same records as the protobuf bytes.
    #[test]
    fn the_same_requests_through_serde_json_decode_the_same() {
        let limits = Limits::default();
        let mut request = trace_request();
        request.resource_spans[0].scope_spans[0].scope = None;
        let json = serde_json::to_vec(&request).unwrap();
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains(&"ab".repeat(16)), "hex ids: {text}");
        assert!(text.contains("\"scope\":null"), "{text}");
        let from_json = testing::run(
            otlp_json::traces::decode_traces,
            "telemetry.spans.w.r",
            &json,
            &limits,
        )
        .unwrap();
        let from_proto = testing::run(
            decode_traces,
            "telemetry.spans.w.r",
            &request.encode_to_vec(),
            &limits,
        )
        .unwrap();
        assert_eq!(from_json.spans, from_proto.spans);
        assert_eq!(from_json.spans[0].attributes["bytes"], "AAEC");

        let mut request = log_request();
        request.resource_logs[0].resource = None;
        let json = serde_json::to_vec(&request).unwrap();
        let from_json = testing::run(
            otlp_json::logs::decode_logs,
            "telemetry.logs.e.x",
            &json,
            &limits,
        )
        .unwrap();
        let from_proto = testing::run(
            decode_logs,
            "telemetry.logs.e.x",
            &request.encode_to_vec(),
            &limits,
        )
        .unwrap();
        assert_eq!(from_json.logs, from_proto.logs);
        assert_eq!(from_json.logs[0].service, "unknown_service");

        let request = metric_request();
        let json = serde_json::to_vec(&request).unwrap();
        let from_json = testing::run(
            otlp_json::metrics::decode_metrics,
            "telemetry.metrics.sensor-7",
            &json,
            &limits,
        )
        .unwrap();
        let from_proto = testing::run(
            decode_metrics,
            "telemetry.metrics.sensor-7",
            &request.encode_to_vec(),
            &limits,
        )
        .unwrap();
        assert_eq!(from_json.metrics, from_proto.metrics);
        assert_eq!(from_json.distributions, from_proto.distributions);
        assert_eq!(from_json.distributions[0].min, None);
    }

    #[test]
    fn python_sdk_fixtures_decode() {
        let limits = Limits::default();
        let got = testing::run(
            decode_traces,
            "telemetry.spans.checkout.r",
            &testing::fixture("otel_python_traces.pb"),
            &limits,
        )
        .unwrap();
        testing::check_python_traces(&got);
        let got = testing::run(
            decode_metrics,
            "telemetry.metrics.checkout.all",
            &testing::fixture("otel_python_metrics.pb"),
            &limits,
        )
        .unwrap();
        testing::check_python_metrics(&got);
        let got = testing::run(
            decode_logs,
            "telemetry.logs.checkout.error",
            &testing::fixture("otel_python_logs.pb"),
            &limits,
        )
        .unwrap();
        testing::check_python_logs(&got);
    }
}
