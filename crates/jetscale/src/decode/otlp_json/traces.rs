//! OTLP/JSON `ExportTraceServiceRequest` to span rows. Every span field is kept: ids (hex,
//! case-insensitive, stored lowercase), parent, trace state, flags, name, kind (number or
//! name), times, attributes, events, links and status. The structs are also what the
//! protobuf decoder converts into, so both encodings share `emit_traces`.

use super::{
    check_count, enum_number, flags32, hex_id, nanos, parse, resolve_resource, EnumNames, Resource,
    Scope,
};
use crate::config::Limits;
use crate::decode::attributes::{
    append_attributes, check_text, nullable, separate, too_many, write_json_string, write_key,
    KeyValue,
};
use crate::decode::numbers::LenientU64;
use crate::decode::{DecodeContext, Incoming, RecordSink, Rejection};
use jetscale_model::SpanRecord;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize, Default)]
pub(crate) struct ExportTraces<'a> {
    #[serde(borrow, default, rename = "resourceSpans", alias = "resource_spans")]
    pub resource_spans: Vec<ResourceSpans<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ResourceSpans<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub resource: Resource<'a>,
    #[serde(borrow, default, rename = "scopeSpans", alias = "scope_spans")]
    pub scope_spans: Vec<ScopeSpans<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ScopeSpans<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub scope: Scope<'a>,
    #[serde(borrow, default)]
    pub spans: Vec<Span<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Span<'a> {
    #[serde(borrow, default, rename = "traceId", alias = "trace_id")]
    pub trace_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "spanId", alias = "span_id")]
    pub span_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "traceState", alias = "trace_state")]
    pub trace_state: Cow<'a, str>,
    #[serde(borrow, default, rename = "parentSpanId", alias = "parent_span_id")]
    pub parent_span_id: Cow<'a, str>,
    #[serde(default)]
    pub flags: LenientU64,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(default)]
    pub kind: SpanKind,
    #[serde(default, rename = "startTimeUnixNano", alias = "start_time_unix_nano")]
    pub start_time_unix_nano: LenientU64,
    #[serde(default, rename = "endTimeUnixNano", alias = "end_time_unix_nano")]
    pub end_time_unix_nano: LenientU64,
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
    #[serde(borrow, default)]
    pub events: Vec<Event<'a>>,
    #[serde(borrow, default)]
    pub links: Vec<Link<'a>>,
    #[serde(borrow, default)]
    pub status: Option<Status<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Event<'a> {
    #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
    pub time_unix_nano: LenientU64,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Link<'a> {
    #[serde(borrow, default, rename = "traceId", alias = "trace_id")]
    pub trace_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "spanId", alias = "span_id")]
    pub span_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "traceState", alias = "trace_state")]
    pub trace_state: Cow<'a, str>,
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
    #[serde(default)]
    pub flags: LenientU64,
}

#[derive(Deserialize, Default)]
pub(crate) struct Status<'a> {
    #[serde(borrow, default)]
    pub message: Cow<'a, str>,
    #[serde(default)]
    pub code: StatusCode,
}

/// `Span.SpanKind` by number; written as its number or its name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanKind(pub i32);

const SPAN_KIND_NAMES: EnumNames = EnumNames {
    prefix: "SPAN_KIND_",
    names: &[
        "UNSPECIFIED",
        "INTERNAL",
        "SERVER",
        "CLIENT",
        "PRODUCER",
        "CONSUMER",
    ],
};

impl SpanKind {
    /// The `kind` column; numbers this version does not know are `unspecified`.
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            1 => "internal",
            2 => "server",
            3 => "client",
            4 => "producer",
            5 => "consumer",
            _ => "unspecified",
        }
    }
}

impl<'de> Deserialize<'de> for SpanKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum_number(d, "span kind", SPAN_KIND_NAMES).map(SpanKind)
    }
}

/// `Status.StatusCode` by number; written as its number or its name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusCode(pub i32);

const STATUS_CODE_NAMES: EnumNames = EnumNames {
    prefix: "STATUS_CODE_",
    names: &["UNSET", "OK", "ERROR"],
};

impl StatusCode {
    /// The `status_code` column; numbers this version does not know are `unset`.
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            1 => "ok",
            2 => "error",
            _ => "unset",
        }
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum_number(d, "status code", STATUS_CODE_NAMES).map(StatusCode)
    }
}

/// Decodes an `ExportTraceServiceRequest` in OTLP/JSON into span rows.
pub fn decode_traces(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request: ExportTraces = parse(msg.payload, "traces")?;
    emit_traces(&request, ctx, sink)
}

/// Every span of the request.
pub(crate) fn count_spans(request: &ExportTraces<'_>) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// Stores the spans of a decoded traces request (from JSON or protobuf).
pub(crate) fn emit_traces(
    request: &ExportTraces<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let limits = ctx.limits;
    check_count(count_spans(request), "spans", limits)?;
    let mut attributes = String::new();
    let mut events = String::new();
    let mut links = String::new();
    for rs in &request.resource_spans {
        let resource = resolve_resource(&rs.resource.attributes, ctx)?;
        let service = resource.service()?;
        for ss in &rs.scope_spans {
            let inherited = resource.with_scope(&ss.scope, limits)?;
            for span in &ss.spans {
                let trace_id = hex_id("traceId", &span.trace_id, 16, true)?;
                let span_id = hex_id("spanId", &span.span_id, 8, true)?;
                let parent = hex_id("parentSpanId", &span.parent_span_id, 8, false)?;
                let start = nanos("startTimeUnixNano", span.start_time_unix_nano)?;
                ctx.check_time(start)?;
                let end = nanos("endTimeUnixNano", span.end_time_unix_nano)?;
                if end < start {
                    return Err(Rejection::malformed(format!(
                        "span {span_id}: endTimeUnixNano {end} is before startTimeUnixNano {start}"
                    )));
                }
                check_text("span name", &span.name)?;
                check_text("traceState", &span.trace_state)?;
                let flags = flags32("span flags", span.flags)?;
                inherited.item_attributes(&mut attributes, &span.attributes, 0, limits, |out| {
                    if flags != 0 {
                        // The span table has no flags column: W3C trace flags and the OTLP
                        // is-remote bits are kept with the attributes.
                        separate(out);
                        out.push_str("\"otel.span.flags\":");
                        out.push_str(itoa::Buffer::new().format(flags));
                    }
                    Ok(())
                })?;
                write_events(&mut events, &span.events, limits)?;
                write_links(&mut links, &span.links, limits)?;
                let (status_code, status_message) = match &span.status {
                    Some(s) => {
                        check_text("status message", &s.message)?;
                        (s.code.as_str(), s.message.as_ref())
                    }
                    None => ("unset", ""),
                };
                sink.span(&SpanRecord {
                    trace_id: &trace_id,
                    span_id: &span_id,
                    parent_span_id: &parent,
                    name: &span.name,
                    service,
                    kind: span.kind.as_str(),
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    status_code,
                    status_message,
                    trace_state: &span.trace_state,
                    attributes: &attributes,
                    resource: &inherited.resource_json,
                    events: &events,
                    links: &links,
                    error: "",
                })?;
            }
        }
    }
    Ok(())
}

/// `[{"time_unix_nano": .., "name": .., "attributes": {..}}, ..]`
fn write_events(out: &mut String, events: &[Event<'_>], limits: &Limits) -> Result<(), Rejection> {
    out.clear();
    out.push('[');
    for event in events {
        if event.attributes.len() > limits.max_attributes {
            return Err(too_many(event.attributes.len(), limits));
        }
        separate(out);
        out.push_str("{\"time_unix_nano\":");
        out.push_str(
            itoa::Buffer::new().format(nanos("event timeUnixNano", event.time_unix_nano)?),
        );
        out.push_str(",\"name\":");
        write_json_string(out, &event.name)?;
        out.push_str(",\"attributes\":{");
        append_attributes(out, &event.attributes, limits)?;
        out.push_str("}}");
    }
    out.push(']');
    Ok(())
}

/// `[{"trace_id": .., "span_id": .., "trace_state": .., "attributes": {..}, "flags": ..}, ..]`
/// (`flags` only when set).
fn write_links(out: &mut String, links: &[Link<'_>], limits: &Limits) -> Result<(), Rejection> {
    out.clear();
    out.push('[');
    for link in links {
        if link.attributes.len() > limits.max_attributes {
            return Err(too_many(link.attributes.len(), limits));
        }
        let trace_id = hex_id("link traceId", &link.trace_id, 16, true)?;
        let span_id = hex_id("link spanId", &link.span_id, 8, true)?;
        let flags = flags32("link flags", link.flags)?;
        separate(out);
        out.push('{');
        write_key(out, "trace_id", limits)?;
        write_json_string(out, &trace_id)?;
        out.push_str(",\"span_id\":");
        write_json_string(out, &span_id)?;
        out.push_str(",\"trace_state\":");
        write_json_string(out, &link.trace_state)?;
        out.push_str(",\"attributes\":{");
        append_attributes(out, &link.attributes, limits)?;
        out.push('}');
        if flags != 0 {
            out.push_str(",\"flags\":");
            out.push_str(itoa::Buffer::new().format(flags));
        }
        out.push('}');
    }
    out.push(']');
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::decode::testing::{self, rejection, Collected};
    use crate::decode::RejectionKind;
    use serde_json::json;

    fn run(payload: &str, limits: &Limits) -> Result<Collected, Rejection> {
        testing::run(
            decode_traces,
            "telemetry.spans.checkout.run1",
            payload.as_bytes(),
            limits,
        )
    }

    const FULL: &str = r#"{"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "checkout"}},
        {"key": "host.name", "value": {"stringValue": "h1"}},
        {"key": "device.id", "value": {"stringValue": "edge-9"}}]},
      "scopeSpans": [{"scope": {"name": "lib", "version": "0.1", "attributes": [{"key": "sa", "value": {"intValue": 1}}]},
        "spans": [{
          "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
          "parentSpanId": "eee19b7ec3c1b173", "traceState": "rojo=00f067aa0ba902b7",
          "flags": 257, "name": "POST /pay", "kind": "SPAN_KIND_SERVER",
          "startTimeUnixNano": "1705314600000000000", "endTimeUnixNano": 1705314601234000000,
          "attributes": [{"key": "http.status", "value": {"intValue": "500"}}, {"key": "ok", "value": {"boolValue": false}}],
          "droppedAttributesCount": 2,
          "events": [{"timeUnixNano": "1705314600500000000", "name": "exception",
                      "attributes": [{"key": "exception.message", "value": {"stringValue": "boom"}}]},
                     {"time_unix_nano": 1705314600600000000, "name": "retry"}],
          "links": [{"traceId": "0AF7651916CD43DD8448EB211C80319C", "spanId": "00F067AA0BA902B7",
                     "traceState": "congo=t61rcWkgMzE", "flags": 1,
                     "attributes": [{"key": "link.kind", "value": {"stringValue": "follows"}}]}],
          "status": {"code": "STATUS_CODE_ERROR", "message": "card declined"}
        }, {
          "trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b175",
          "name": "db", "kind": 3, "start_time_unix_nano": 1705314600100000000,
          "end_time_unix_nano": "1705314600200000000", "status": {"code": 1}
        }]}]}]}"#;

    #[test]
    fn every_span_field_is_mapped() {
        let spans = run(FULL, &Limits::default()).unwrap().spans;
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!(s.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(s.span_id, "eee19b7ec3c1b174");
        assert_eq!(s.parent_span_id, "eee19b7ec3c1b173");
        assert_eq!(s.trace_state, "rojo=00f067aa0ba902b7");
        assert_eq!(s.name, "POST /pay");
        assert_eq!(s.service, "checkout");
        assert_eq!(s.kind, "server");
        assert_eq!(s.start, 1_705_314_600_000_000_000);
        assert_eq!(s.end, 1_705_314_601_234_000_000);
        assert_eq!(s.status_code, "error");
        assert_eq!(s.status_message, "card declined");
        assert_eq!(
            s.attributes,
            json!({"http.status": 500, "ok": false, "otel.span.flags": 257})
        );
        assert_eq!(
            s.resource,
            json!({"service.name": "checkout", "host.name": "h1", "device.id": "edge-9",
                   "otel.scope.name": "lib", "otel.scope.version": "0.1", "sa": 1})
        );
        assert_eq!(
            s.events,
            json!([{"time_unix_nano": 1_705_314_600_500_000_000_i64, "name": "exception",
                    "attributes": {"exception.message": "boom"}},
                   {"time_unix_nano": 1_705_314_600_600_000_000_i64, "name": "retry", "attributes": {}}])
        );
        assert_eq!(
            s.links,
            json!([{"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "00f067aa0ba902b7",
                    "trace_state": "congo=t61rcWkgMzE", "attributes": {"link.kind": "follows"}, "flags": 1}])
        );
        assert_eq!(s.error, "");
        let db = &spans[1];
        assert_eq!((&*db.kind, &*db.status_code), ("client", "ok"));
        assert_eq!(db.parent_span_id, "");
        assert_eq!(db.attributes, json!({}));
        assert_eq!(db.events, json!([]));
        assert_eq!(db.links, json!([]));
        assert_eq!(db.status_message, "");
    }

    #[test]
    fn enums_by_number_and_by_name() {
        for (kind, expected) in [
            ("0", "unspecified"),
            ("1", "internal"),
            ("\"SPAN_KIND_PRODUCER\"", "producer"),
            ("\"consumer\"", "consumer"),
            ("\"CLIENT\"", "client"),
            ("42", "unspecified"),
        ] {
            let payload = FULL.replace("\"SPAN_KIND_SERVER\"", kind);
            assert_eq!(
                run(&payload, &Limits::default()).unwrap().spans[0].kind,
                expected
            );
        }
        for (code, expected) in [("0", "unset"), ("\"STATUS_CODE_OK\"", "ok"), ("2", "error")] {
            let payload = FULL.replace("\"STATUS_CODE_ERROR\"", code);
            assert_eq!(
                run(&payload, &Limits::default()).unwrap().spans[0].status_code,
                expected
            );
        }
        let bad = FULL.replace("\"SPAN_KIND_SERVER\"", "\"SPAN_KIND_SIDEWAYS\"");
        rejection(run(&bad, &Limits::default()), "SPAN_KIND_SIDEWAYS");
        let no_status = FULL.replace(
            r#""status": {"code": "STATUS_CODE_ERROR", "message": "card declined"}"#,
            r#""status": {}"#,
        );
        let s = &run(&no_status, &Limits::default()).unwrap().spans[0];
        assert_eq!((&*s.status_code, &*s.status_message), ("unset", ""));
    }

    #[test]
    fn bad_ids_are_rejected() {
        for (from, to) in [
            (
                "5B8EFFF798038103D269B633813FC60C",
                "5B8EFFF798038103D269B633813FC6",
            ),
            (
                "5B8EFFF798038103D269B633813FC60C",
                "5B8EFFF798038103D269B633813FC60G",
            ),
            (
                "5B8EFFF798038103D269B633813FC60C",
                "W4796/eYA4ED0mm2M4E/xgw=",
            ),
            (
                "5B8EFFF798038103D269B633813FC60C",
                "00000000000000000000000000000000",
            ),
            ("5B8EFFF798038103D269B633813FC60C", ""),
            ("EEE19B7EC3C1B174", "EEE19B7EC3C1B1"),
            ("eee19b7ec3c1b173", "eee19b7ec3c1b17"),
            ("00F067AA0BA902B7", "zz"),
        ] {
            let payload = FULL.replace(from, to);
            let err = run(&payload, &Limits::default()).unwrap_err();
            assert_eq!(err.kind, RejectionKind::Malformed, "{to}: {err}");
            assert!(err.detail.contains("Id"), "{err}");
        }
        // An all-zero parent is a root span.
        let root = FULL.replace("eee19b7ec3c1b173", "0000000000000000");
        assert_eq!(
            run(&root, &Limits::default()).unwrap().spans[0].parent_span_id,
            ""
        );
    }

    #[test]
    fn times_and_limits_are_checked() {
        let backwards = FULL.replace("1705314601234000000", "1705314599000000000");
        rejection(run(&backwards, &Limits::default()), "before");
        let no_start = FULL.replace(r#""startTimeUnixNano": "1705314600000000000", "#, "");
        rejection(run(&no_start, &Limits::default()), "timeUnixNano 0");
        for (limits, needle) in [
            (
                testing::limits(|l| l.max_points_per_message = 1),
                "max_points_per_message: 2 spans",
            ),
            // 2 resource attributes (device.id is a column, not counted), 1 scope, 2 span.
            (testing::limits(|l| l.max_attributes = 4), "max_attributes"),
            (
                testing::limits(|l| l.max_attribute_value_bytes = 3),
                "max_attribute_value_bytes",
            ),
        ] {
            rejection(run(FULL, &limits), needle);
        }
        let subject = "telemetry.spans.x.y";
        let old = testing::run_from(
            decode_traces,
            subject,
            FULL.as_bytes(),
            1_705_314_600_050_000_000,
        );
        rejection(old, "max_past");
        assert!(run(r#"{"resourceSpans": []}"#, &Limits::default()).is_err());
    }

    #[test]
    fn service_defaults_to_unknown_service() {
        let payload = FULL.replace(
            r#"{"key": "service.name", "value": {"stringValue": "checkout"}},"#,
            "",
        );
        let spans = run(&payload, &Limits::default()).unwrap().spans;
        assert_eq!(spans[0].service, "unknown_service");
    }

    #[test]
    fn specification_example_decodes() {
        let got = testing::run(
            decode_traces,
            "telemetry.spans.x.y",
            &testing::spec_example("traces"),
            &Limits::default(),
        )
        .unwrap();
        let s = &got.spans[0];
        assert_eq!(s.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(s.span_id, "eee19b7ec3c1b174");
        assert_eq!(s.parent_span_id, "eee19b7ec3c1b173");
        assert_eq!(
            (&*s.name, &*s.kind, &*s.service),
            ("I'm a server span", "server", "my.service")
        );
        assert_eq!(
            (s.start, s.end),
            (1_544_712_660_000_000_000, 1_544_712_661_000_000_000)
        );
        assert_eq!(s.attributes, json!({"my.span.attr": "some value"}));
        assert_eq!(s.resource["my.scope.attribute"], "some scope attribute");
    }

    #[test]
    fn python_sdk_fixture_decodes() {
        let got = testing::run(
            decode_traces,
            "telemetry.spans.checkout.run",
            &testing::fixture("otel_python_traces.json"),
            &Limits::default(),
        )
        .unwrap();
        testing::check_python_traces(&got);
    }
}
