//! OTLP payloads: `Export*ServiceRequest`s as protobuf, and the IoT design's device payload as
//! the OTLP JSON text its Python script writes.

use crate::headers::{self, Format};
use crate::message::token;
use crate::{Error, Message};
use jetscale_model::subject::{self, Signal};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use prost::Message as _;
use std::fmt::Write as _;

impl Message {
    /// An OTLP metrics request as protobuf on `telemetry.metrics.{device_id}` (the subject of
    /// the IoT pipeline design), with `Content-Type: application/x-protobuf` and
    /// `Jetscale-Format: otlp-proto;signal=metrics`.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{ExportMetricsServiceRequest, Message};
    ///
    /// let message = Message::otlp_metrics("sensor-001", &ExportMetricsServiceRequest::default())?;
    /// assert_eq!(message.subject(), "telemetry.metrics.sensor-001");
    /// assert_eq!(message.header("Content-Type"), Some("application/x-protobuf"));
    /// assert_eq!(message.header("Jetscale-Format"), Some("otlp-proto;signal=metrics"));
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn otlp_metrics(
        device_id: &str,
        request: &ExportMetricsServiceRequest,
    ) -> Result<Message, Error> {
        let subject = subject::device_metrics(token("device id", device_id)?);
        Ok(Message::new(
            subject,
            Some(Format::OtlpProto(Signal::Metrics)),
            headers::PROTOBUF,
            request.encode_to_vec(),
        ))
    }

    /// An OTLP traces request as protobuf on `telemetry.spans.{service}.{run_id}`, with
    /// `Jetscale-Format: otlp-proto;signal=traces`. A request may hold many spans, so its
    /// `Nats-Msg-Id` is random (use [`Message::with_msg_id`] for one of your own).
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{ExportTraceServiceRequest, Message};
    ///
    /// let message = Message::otlp_traces("worker", "abc123", &ExportTraceServiceRequest::default())?;
    /// assert_eq!(message.subject(), "telemetry.spans.worker.abc123");
    /// assert_eq!(message.header("Jetscale-Format"), Some("otlp-proto;signal=traces"));
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn otlp_traces(
        service: &str,
        run_id: &str,
        request: &ExportTraceServiceRequest,
    ) -> Result<Message, Error> {
        let subject = subject::spans(token("service", service)?, token("run id", run_id)?);
        Ok(Message::new(
            subject,
            Some(Format::OtlpProto(Signal::Spans)),
            headers::PROTOBUF,
            request.encode_to_vec(),
        ))
    }

    /// An OTLP logs request as protobuf on `telemetry.logs.{service}.{level}` (the level
    /// lower-cased), with `Jetscale-Format: otlp-proto;signal=logs`.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{ExportLogsServiceRequest, Message};
    ///
    /// let message = Message::otlp_logs("engine", "ERROR", &ExportLogsServiceRequest::default())?;
    /// assert_eq!(message.subject(), "telemetry.logs.engine.error");
    /// assert_eq!(message.header("Jetscale-Format"), Some("otlp-proto;signal=logs"));
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn otlp_logs(
        service: &str,
        level: &str,
        request: &ExportLogsServiceRequest,
    ) -> Result<Message, Error> {
        let level = level.to_ascii_lowercase();
        let subject = subject::logs(token("service", service)?, token("level", &level)?);
        Ok(Message::new(
            subject,
            Some(Format::OtlpProto(Signal::Logs)),
            headers::PROTOBUF,
            request.encode_to_vec(),
        ))
    }

    /// The IoT design's device payload ([`DeviceReading::to_otlp_json`]) on
    /// `telemetry.metrics.{device_id}` with `Content-Type: application/json` and no
    /// `Jetscale-Format` (the IoT design's device sends none; the collector knows OTLP JSON by its
    /// content). Refuses non-finite readings, which Python would write as `NaN`, not JSON.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::{DeviceReading, Message};
    ///
    /// let message = Message::device_reading(&DeviceReading::new("sensor-001", 21.5, 40.0, 87.0))?;
    /// assert_eq!(message.subject(), "telemetry.metrics.sensor-001");
    /// assert_eq!(message.header("Content-Type"), Some("application/json"));
    /// assert_eq!(message.header("Jetscale-Format"), None);
    /// assert!(Message::device_reading(&DeviceReading::new("sensor-001", f64::NAN, 40.0, 87.0)).is_err());
    /// # Ok::<(), jetscale_sdk::Error>(())
    /// ```
    pub fn device_reading(reading: &DeviceReading) -> Result<Message, Error> {
        let subject = subject::device_metrics(token("device id", &reading.device_id)?);
        for (name, value) in reading.gauges() {
            if !value.is_finite() {
                return Err(Error::InvalidRecord(format!(
                    "{name} is {value}, which JSON can not carry"
                )));
            }
        }
        Ok(Message::new(
            subject,
            None,
            headers::JSON,
            reading.to_otlp_json(),
        ))
    }
}

/// One reading of the IoT pipeline design's IoT device: temperature, humidity and battery level, sent as
/// three OTLP gauges.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::DeviceReading;
///
/// let reading = DeviceReading {
///     location: "warehouse-b".into(),
///     time_unix_nano: 1_705_314_601_000_000_000,
///     ..DeviceReading::new("sensor-001", 21.5, 40.0, 87.0)
/// };
/// assert!(reading.to_otlp_json().contains(r#""device.location", "value": {"stringValue": "warehouse-b"}"#));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReading {
    /// `device.id` resource attribute and the subject token (`DEVICE_ID`, default `sensor-001`
    /// in the IoT design).
    pub device_id: String,
    /// `service.name` resource attribute; `iot-sensor` in the IoT design.
    pub service_name: String,
    /// `device.location` resource attribute; `warehouse-a` in the IoT design.
    pub location: String,
    /// `device.temperature`, unit `Cel`.
    pub temperature: f64,
    /// `device.humidity`, unit `%`.
    pub humidity: f64,
    /// `device.battery`, unit `%`.
    pub battery: f64,
    /// The time of all three points, nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
}

impl DeviceReading {
    /// A reading taken now, with the IoT design's `service.name` (`iot-sensor`) and
    /// `device.location` (`warehouse-a`).
    ///
    /// # Examples
    ///
    /// ```
    /// let reading = jetscale_sdk::DeviceReading::new("sensor-001", 21.5, 40.0, 87.0);
    /// assert_eq!(reading.service_name, "iot-sensor");
    /// assert!(reading.time_unix_nano > 0);
    /// ```
    pub fn new(
        device_id: impl Into<String>,
        temperature: f64,
        humidity: f64,
        battery: f64,
    ) -> DeviceReading {
        DeviceReading {
            device_id: device_id.into(),
            service_name: "iot-sensor".to_owned(),
            location: "warehouse-a".to_owned(),
            temperature,
            humidity,
            battery,
            time_unix_nano: now_unix_nanos(),
        }
    }

    fn gauges(&self) -> [(&'static str, f64); 3] {
        [
            ("device.temperature", self.temperature),
            ("device.humidity", self.humidity),
            ("device.battery", self.battery),
        ]
    }

    /// The payload exactly as the IoT pipeline design's Python device writes it with `json.dumps`: the same
    /// keys in the same order, `", "` and `": "` separators, non-ASCII escaped, floats as
    /// Python's `repr`, the time as a decimal string.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::DeviceReading;
    ///
    /// let reading = DeviceReading {
    ///     time_unix_nano: 1_705_314_601_000_000_000,
    ///     ..DeviceReading::new("sensor-001", 21.5, 40.0, 87.0)
    /// };
    /// let json = reading.to_otlp_json();
    /// assert!(json.starts_with(r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name""#));
    /// assert!(json.contains(r#"{"name": "device.temperature", "unit": "Cel", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asDouble": 21.5}]}}"#));
    /// ```
    pub fn to_otlp_json(&self) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str(r#"{"resourceMetrics": [{"resource": {"attributes": ["#);
        let attributes = [
            ("service.name", &self.service_name),
            ("device.id", &self.device_id),
            ("device.location", &self.location),
        ];
        for (i, (key, value)) in attributes.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(r#"{"key": "#);
            push_py_str(&mut out, key);
            out.push_str(r#", "value": {"stringValue": "#);
            push_py_str(&mut out, value);
            out.push_str("}}");
        }
        out.push_str(r#"]}, "scopeMetrics": [{"metrics": ["#);
        let units = ["Cel", "%", "%"];
        for (i, ((name, value), unit)) in self.gauges().into_iter().zip(units).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(
                out,
                r#"{{"name": "{name}", "unit": "{unit}", "gauge": {{"dataPoints": [{{"timeUnixNano": "{}", "asDouble": {}}}]}}}}"#,
                self.time_unix_nano,
                py_float(value)
            );
        }
        out.push_str("]}]}]}");
        out
    }
}

fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A string as Python's `json.dumps` writes it (`ensure_ascii=True`).
fn push_py_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A float as Python's `repr` (and so `json.dumps`) writes it: the shortest digits that read
/// back to the same value, fixed notation for exponents from -4 to 15 (always with a
/// fraction), scientific notation with a signed two-digit exponent otherwise.
fn py_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let sign = if value.is_sign_negative() { "-" } else { "" };
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e3", "5e-7", "0e0".
    let sci = format!("{:e}", value.abs());
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let (int_part, frac_part) = if point <= 0 {
            let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
            ("0".to_owned(), format!("{zeros}{digits}"))
        } else {
            let point = usize::try_from(point).unwrap_or(0);
            if digits.len() <= point {
                let zeros = "0".repeat(point - digits.len());
                (format!("{digits}{zeros}"), "0".to_owned())
            } else {
                (digits[..point].to_owned(), digits[point..].to_owned())
            }
        };
        format!("{sign}{int_part}.{frac_part}")
    } else {
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    #[test]
    fn floats_match_python_repr() {
        // Expected values are Python 3's repr() of the same floats.
        let cases = [
            (21.5, "21.5"),
            (40.0, "40.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (87.25, "87.25"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789.125, "123456789.125"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e22, "1.2345e+22"),
            (-3.75, "-3.75"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (value, python) in cases {
            assert_eq!(py_float(value), python, "{value:e}");
        }
    }

    #[test]
    fn strings_match_python_json_dumps() {
        let mut out = String::new();
        push_py_str(&mut out, "caf\u{e9} \"q\" \\ \n\u{1}\u{7f}\u{1F600}");
        assert_eq!(out, r#""caf\u00e9 \"q\" \\ \n\u0001\u007f\ud83d\ude00""#);
    }

    /// What `json.dumps(payload)` prints for the IoT design's payload with
    /// DEVICE_ID="sensor-001", temperature=21.5, humidity=40.0, battery=87.0 and
    /// time.time_ns() == 1705314601000000000 (checked against Python 3.11).
    const PYTHON_OUTPUT: &str = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "iot-sensor"}}, {"key": "device.id", "value": {"stringValue": "sensor-001"}}, {"key": "device.location", "value": {"stringValue": "warehouse-a"}}]}, "scopeMetrics": [{"metrics": [{"name": "device.temperature", "unit": "Cel", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asDouble": 21.5}]}}, {"name": "device.humidity", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asDouble": 40.0}]}}, {"name": "device.battery", "unit": "%", "gauge": {"dataPoints": [{"timeUnixNano": "1705314601000000000", "asDouble": 87.0}]}}]}]}]}"#;

    #[test]
    fn device_payload_is_byte_for_byte_the_seed_scripts() {
        let reading = DeviceReading {
            time_unix_nano: 1_705_314_601_000_000_000,
            ..DeviceReading::new("sensor-001", 21.5, 40.0, 87.0)
        };
        assert_eq!(reading.to_otlp_json(), PYTHON_OUTPUT);
        // And it is OTLP/JSON the official types read back.
        let request: ExportMetricsServiceRequest =
            serde_json::from_str(&reading.to_otlp_json()).unwrap();
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 3);
        assert_eq!(metrics[0].name, "device.temperature");
        assert_eq!(metrics[0].unit, "Cel");
    }

    #[test]
    fn otlp_protobuf_round_trips_with_headers_and_subjects() {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "device.id".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("sensor-001".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "device.temperature".into(),
                        unit: "Cel".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: 1_705_314_601_000_000_000,
                                value: Some(number_data_point::Value::AsDouble(21.5)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let message = Message::otlp_metrics("sensor-001", &request).unwrap();
        assert_eq!(message.subject(), "telemetry.metrics.sensor-001");
        assert_eq!(
            message.header("Content-Type"),
            Some("application/x-protobuf")
        );
        assert_eq!(
            message.header("Jetscale-Format"),
            Some("otlp-proto;signal=metrics")
        );
        assert_eq!(message.msg_id().len(), 32);
        let back = ExportMetricsServiceRequest::decode(message.payload().clone()).unwrap();
        assert_eq!(back, request);

        assert!(Message::otlp_metrics("sensor.001", &request).is_err());
        assert!(Message::otlp_traces("worker", "", &Default::default()).is_err());
        assert_eq!(
            Message::otlp_logs("engine", "Warn", &Default::default())
                .unwrap()
                .subject(),
            "telemetry.logs.engine.warn"
        );
    }
}
