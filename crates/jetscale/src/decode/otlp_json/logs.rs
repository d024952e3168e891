//! OTLP/JSON `ExportLogsServiceRequest` to log rows: severity number (number or name) and
//! text, a body of any `AnyValue` kind, trace context, flags, attributes. The structs are
//! also what the protobuf decoder converts into, so both encodings share `emit_logs`.

use super::{
    check_count, enum_number, flags32, hex_id, nanos, parse, resolve_resource, EnumNames, Resource,
    Scope,
};
use crate::config::Limits;
use crate::decode::attributes::{
    check_text, nullable, separate, write_json_string, write_value, AnyValue, KeyValue,
};
use crate::decode::numbers::LenientU64;
use crate::decode::{DecodeContext, Incoming, RecordSink, Rejection};
use jetscale_model::LogRecord;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize, Default)]
pub(crate) struct ExportLogs<'a> {
    #[serde(borrow, default, rename = "resourceLogs", alias = "resource_logs")]
    pub resource_logs: Vec<ResourceLogs<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ResourceLogs<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub resource: Resource<'a>,
    #[serde(borrow, default, rename = "scopeLogs", alias = "scope_logs")]
    pub scope_logs: Vec<ScopeLogs<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ScopeLogs<'a> {
    #[serde(borrow, default, deserialize_with = "nullable")]
    pub scope: Scope<'a>,
    #[serde(borrow, default, rename = "logRecords", alias = "log_records")]
    pub log_records: Vec<Log<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Log<'a> {
    #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
    pub time_unix_nano: LenientU64,
    #[serde(
        default,
        rename = "observedTimeUnixNano",
        alias = "observed_time_unix_nano"
    )]
    pub observed_time_unix_nano: LenientU64,
    #[serde(default, rename = "severityNumber", alias = "severity_number")]
    pub severity_number: SeverityNumber,
    #[serde(borrow, default, rename = "severityText", alias = "severity_text")]
    pub severity_text: Cow<'a, str>,
    #[serde(borrow, default)]
    pub body: Option<AnyValue<'a>>,
    #[serde(borrow, default)]
    pub attributes: Vec<KeyValue<'a>>,
    #[serde(default)]
    pub flags: LenientU64,
    #[serde(borrow, default, rename = "traceId", alias = "trace_id")]
    pub trace_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "spanId", alias = "span_id")]
    pub span_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "eventName", alias = "event_name")]
    pub event_name: Cow<'a, str>,
}

/// `SeverityNumber`, written as its number or its name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeverityNumber(pub i32);

const SEVERITY_NAMES: EnumNames = EnumNames {
    prefix: "SEVERITY_NUMBER_",
    names: &[
        "UNSPECIFIED",
        "TRACE",
        "TRACE2",
        "TRACE3",
        "TRACE4",
        "DEBUG",
        "DEBUG2",
        "DEBUG3",
        "DEBUG4",
        "INFO",
        "INFO2",
        "INFO3",
        "INFO4",
        "WARN",
        "WARN2",
        "WARN3",
        "WARN4",
        "ERROR",
        "ERROR2",
        "ERROR3",
        "ERROR4",
        "FATAL",
        "FATAL2",
        "FATAL3",
        "FATAL4",
    ],
};

impl SeverityNumber {
    /// The `severity_number` column: 1–24, or 0 for unspecified and for numbers outside
    /// the OTLP range (which would otherwise pass for errors in severity queries).
    pub fn column(self) -> i32 {
        if (0..=24).contains(&self.0) {
            self.0
        } else {
            0
        }
    }
}

impl<'de> Deserialize<'de> for SeverityNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum_number(d, "severity number", SEVERITY_NAMES).map(SeverityNumber)
    }
}

/// Decodes an `ExportLogsServiceRequest` in OTLP/JSON into log rows.
pub fn decode_logs(
    msg: &Incoming<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let request: ExportLogs = parse(msg.payload, "logs")?;
    emit_logs(&request, ctx, sink)
}

/// Every log record of the request.
pub(crate) fn count_logs(request: &ExportLogs<'_>) -> usize {
    request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum()
}

/// Stores the records of a decoded logs request (from JSON or protobuf).
pub(crate) fn emit_logs(
    request: &ExportLogs<'_>,
    ctx: &DecodeContext<'_>,
    sink: &mut dyn RecordSink,
) -> Result<(), Rejection> {
    let limits = ctx.limits;
    check_count(count_logs(request), "log records", limits)?;
    // A body is the record itself, not an attribute: its strings may be as long as the
    // message allows. Nesting is still bounded.
    let body_limits = Limits {
        max_attribute_value_bytes: limits.max_message_bytes,
        ..*limits
    };
    let mut attributes = String::new();
    let mut body = String::new();
    for rl in &request.resource_logs {
        let resource = resolve_resource(&rl.resource.attributes, ctx)?;
        let service = resource.service()?;
        for sl in &rl.scope_logs {
            let inherited = resource.with_scope(&sl.scope, limits)?;
            for log in &sl.log_records {
                let event_time = nanos("timeUnixNano", log.time_unix_nano)?;
                let observed = nanos("observedTimeUnixNano", log.observed_time_unix_nano)?;
                let time = if event_time > 0 { event_time } else { observed };
                if time == 0 {
                    return Err(Rejection::malformed(
                        "a log record has neither timeUnixNano nor observedTimeUnixNano",
                    ));
                }
                ctx.check_time(time)?;
                let trace_id = hex_id("traceId", &log.trace_id, 16, false)?;
                let span_id = hex_id("spanId", &log.span_id, 8, false)?;
                check_text("severityText", &log.severity_text)?;
                check_text("eventName", &log.event_name)?;
                let flags = flags32("log flags", log.flags)?;
                let event_name = usize::from(!log.event_name.is_empty());
                inherited.item_attributes(
                    &mut attributes,
                    &log.attributes,
                    event_name,
                    limits,
                    |out| {
                        if !log.event_name.is_empty() {
                            // The log table has no event name column: it is kept as the
                            // attribute the semantic conventions used for it.
                            separate(out);
                            out.push_str("\"event.name\":");
                            write_json_string(out, &log.event_name)?;
                        }
                        Ok(())
                    },
                )?;
                body.clear();
                let (message, body_json): (&str, &str) = match &log.body {
                    Some(value) if value.is_empty() => ("", ""),
                    None => ("", ""),
                    Some(value) => match value.as_str() {
                        Some(text) => {
                            check_text("log body", text)?;
                            (text, "")
                        }
                        None => {
                            write_value(&mut body, value, &body_limits, 0)?;
                            (&body, &body)
                        }
                    },
                };
                sink.log(&LogRecord {
                    time_unix_nano: time,
                    observed_time_unix_nano: observed,
                    service,
                    severity_number: log.severity_number.column(),
                    severity_text: &log.severity_text,
                    message,
                    body_json,
                    attributes: &attributes,
                    resource: &inherited.resource_json,
                    trace_id: &trace_id,
                    span_id: &span_id,
                    flags: i32::from_ne_bytes(flags.to_ne_bytes()),
                    error: "",
                })?;
            }
        }
    }
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
            decode_logs,
            "telemetry.logs.engine.error",
            payload.as_bytes(),
            limits,
        )
    }

    const FULL: &str = r#"{"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "engine"}},
        {"key": "k8s.pod.name", "value": {"stringValue": "engine-0"}}]},
      "scopeLogs": [{"scope": {"name": "engine.log"}, "logRecords": [
        {"timeUnixNano": "1705314601000000000", "observedTimeUnixNano": 1705314601500000000,
         "severityNumber": 17, "severityText": "ERROR", "body": {"stringValue": "task failed"},
         "attributes": [{"key": "run_id", "value": {"stringValue": "abc123"}}],
         "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174", "flags": 1},
        {"observed_time_unix_nano": "1705314602000000000", "severity_number": "SEVERITY_NUMBER_WARN2",
         "body": {"kvlistValue": {"values": [{"key": "a", "value": {"intValue": "1"}},
                                             {"key": "b", "value": {"arrayValue": {"values": [{"boolValue": true}, {"doubleValue": 2.5}]}}}]}},
         "eventName": "checkout.done"},
        {"timeUnixNano": "1705314603000000000", "severityNumber": "info", "body": {"intValue": 42}},
        {"timeUnixNano": "1705314604000000000", "severityNumber": 99, "body": {"bytesValue": "AAFi"}},
        {"timeUnixNano": "1705314605000000000", "body": {}},
        {"timeUnixNano": "1705314606000000000", "body": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
        {"timeUnixNano": "1705314607000000000", "body": {"doubleValue": "NaN"}},
        {"timeUnixNano": "1705314608000000000", "body": {"boolValue": false}, "traceId": "", "spanId": ""}
      ]}]}]}"#;

    #[test]
    fn every_log_field_is_mapped() {
        let logs = run(FULL, &Limits::default()).unwrap().logs;
        assert_eq!(logs.len(), 8);
        let l = &logs[0];
        assert_eq!(
            (l.time, l.observed),
            (1_705_314_601_000_000_000, 1_705_314_601_500_000_000)
        );
        assert_eq!(l.service, "engine");
        assert_eq!((l.severity_number, &*l.severity_text), (17, "ERROR"));
        assert_eq!(l.message, "task failed");
        assert_eq!(l.body_json, None);
        assert_eq!(l.attributes, json!({"run_id": "abc123"}));
        assert_eq!(
            l.resource,
            json!({"service.name": "engine", "k8s.pod.name": "engine-0", "otel.scope.name": "engine.log"})
        );
        assert_eq!(l.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(l.span_id, "eee19b7ec3c1b174");
        assert_eq!(l.flags, 1);
        assert_eq!(l.error, "");
        // No event time: the observed time is the time.
        let l = &logs[1];
        assert_eq!(
            (l.time, l.observed),
            (1_705_314_602_000_000_000, 1_705_314_602_000_000_000)
        );
        assert_eq!((l.severity_number, &*l.severity_text), (14, ""));
        let body = json!({"a": 1, "b": [true, 2.5]});
        assert_eq!(l.body_json.as_ref(), Some(&body));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&l.message).unwrap(),
            body
        );
        assert_eq!(l.attributes, json!({"event.name": "checkout.done"}));
        assert_eq!((&*l.trace_id, &*l.span_id, l.flags), ("", "", 0));
        assert_eq!(logs[2].severity_number, 9);
        assert_eq!(
            (&*logs[2].message, logs[2].body_json.clone()),
            ("42", Some(json!(42)))
        );
        assert_eq!(logs[3].severity_number, 0);
        assert_eq!(logs[3].message, "\"AAFi\"");
        assert_eq!(logs[3].body_json, Some(json!("AAFi")));
        assert_eq!(logs[3].observed, 0);
        assert_eq!((&*logs[4].message, logs[4].body_json.clone()), ("", None));
        assert_eq!(logs[5].body_json, Some(json!(["x"])));
        assert_eq!(logs[6].body_json, Some(json!("NaN")));
        assert_eq!(
            (&*logs[7].message, logs[7].body_json.clone()),
            ("false", Some(json!(false)))
        );
    }

    #[test]
    fn bad_records_are_rejected() {
        let defaults = Limits::default();
        let no_time = FULL.replace(r#""observed_time_unix_nano": "1705314602000000000", "#, "");
        for (payload, needle) in [
            (no_time, "neither timeUnixNano nor observedTimeUnixNano"),
            (FULL.replace("\"info\"", "\"LOUD\""), "LOUD"),
            (FULL.replace("task failed", "task\\u0000failed"), "NUL"),
        ] {
            rejection(run(&payload, &defaults), needle);
        }
        for (from, to) in [
            (
                "5B8EFFF798038103D269B633813FC60C",
                "5B8EFFF798038103D269B633813FC60",
            ),
            (
                "5B8EFFF798038103D269B633813FC60C",
                "W4796/eYA4ED0mm2M4E/xgw=",
            ),
            ("EEE19B7EC3C1B174", "EEE19B7EC3C1B17X"),
        ] {
            let err = run(&FULL.replace(from, to), &defaults).unwrap_err();
            assert_eq!(err.kind, RejectionKind::Malformed, "{err}");
        }
        for (limits, needle) in [
            (
                testing::limits(|l| l.max_points_per_message = 7),
                "max_points_per_message: 8 log records",
            ),
            (
                testing::limits(|l| l.max_value_depth = 0),
                "max_value_depth",
            ),
            (testing::limits(|l| l.max_attributes = 2), "max_attributes"),
        ] {
            rejection(run(FULL, &limits), needle);
        }
        // A long string body is not an attribute value: allowed up to the message size.
        let limits = Limits {
            max_attribute_value_bytes: 4,
            ..Limits::default()
        };
        let long_body = FULL
            .replace("\"engine\"", "\"e\"")
            .replace("engine-0", "e0")
            .replace("abc123", "a1");
        assert!(run(&long_body, &limits).is_ok());
    }

    #[test]
    fn specification_examples_decode() {
        let got = testing::run(
            decode_logs,
            "telemetry.logs.x.y",
            &testing::spec_example("logs"),
            &Limits::default(),
        )
        .unwrap();
        let l = &got.logs[0];
        assert_eq!((l.severity_number, &*l.severity_text), (10, "Information"));
        assert_eq!(l.message, "Example log record");
        assert_eq!(l.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(l.span_id, "eee19b7ec3c1b174");
        assert_eq!(l.service, "my.service");
        assert_eq!(
            l.attributes,
            json!({"string.attribute": "some string", "boolean.attribute": true, "int.attribute": 10,
                   "double.attribute": 637.704, "array.attribute": ["many", "values"],
                   "map.attribute": {"some.map.key": "some value"}})
        );
        let events = testing::run(
            decode_logs,
            "telemetry.logs.x.y",
            &testing::spec_example("events"),
            &Limits::default(),
        )
        .unwrap();
        let e = &events.logs[0];
        assert_eq!(e.attributes["event.name"], "browser.page_view");
        assert_eq!(e.body_json.as_ref().unwrap()["type"], 0);
        assert_eq!(
            e.body_json.as_ref().unwrap()["title"],
            "Free Online GUID Generator"
        );
    }

    #[test]
    fn python_sdk_fixture_decodes() {
        let got = testing::run(
            decode_logs,
            "telemetry.logs.checkout.error",
            &testing::fixture("otel_python_logs.json"),
            &Limits::default(),
        )
        .unwrap();
        testing::check_python_logs(&got);
    }
}
