//! The IoT pipeline design's OTLP JSON device payload, written by hand into a reused buffer.
//!
//! serde_json per message would allocate a tree of maps for every message and dominate the
//! simulator's CPU time; the shape never changes, only three timestamps and three doubles do.
//! Doubles go through `ryu` (shortest representation that parses back to the same bits), so the
//! collector can store exactly what the simulator generated.

/// The IoT pipeline design's three gauges, in its order: OTLP metric name and UCUM unit.
pub const METRICS: [(&str, &str); 3] = [
    ("device.temperature", "Cel"),
    ("device.humidity", "%"),
    ("device.battery", "%"),
];

/// The `service.name` resource attribute of the IoT pipeline design's devices.
pub const SERVICE_NAME: &str = "iot-sensor";

/// Writes one device message in the IoT pipeline design's shape into `out` (cleared first).
///
/// The three points get `time_unix_nano`, `+1` and `+2` ns: the design's Python device calls
/// `time.time_ns()` once per point, so its points differ slightly too, and distinct times keep
/// every (device, metric, time) unique downstream. `values` are temperature, humidity and
/// battery, in the order of [`METRICS`]. Non-finite values (never produced by the simulator)
/// are written as `null` so the output is always valid JSON.
pub fn write_payload(
    out: &mut Vec<u8>,
    device_id: &str,
    location: &str,
    time_unix_nano: i64,
    values: [f64; 3],
) {
    out.clear();
    out.extend_from_slice(
        br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"#,
    );
    write_str(out, SERVICE_NAME);
    out.extend_from_slice(br#"}},{"key":"device.id","value":{"stringValue":"#);
    write_str(out, device_id);
    out.extend_from_slice(br#"}},{"key":"device.location","value":{"stringValue":"#);
    write_str(out, location);
    out.extend_from_slice(br#"}}]},"scopeMetrics":[{"metrics":["#);
    let mut itoa_buf = itoa::Buffer::new();
    let mut ryu_buf = ryu::Buffer::new();
    for (i, ((name, unit), value)) in METRICS.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"name":"#);
        write_str(out, name);
        out.extend_from_slice(br#","unit":"#);
        write_str(out, unit);
        out.extend_from_slice(br#","gauge":{"dataPoints":[{"timeUnixNano":""#);
        out.extend_from_slice(
            itoa_buf
                .format(time_unix_nano.saturating_add(i as i64))
                .as_bytes(),
        );
        out.extend_from_slice(br#"","asDouble":"#);
        if value.is_finite() {
            out.extend_from_slice(ryu_buf.format_finite(value).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
        out.extend_from_slice(b"}]}}");
    }
    out.extend_from_slice(b"]}]}]}");
}

/// Writes `s` as a JSON string literal (quotes included), escaping what RFC 8259 requires.
///
/// Device ids and locations are plain ASCII in practice, so the common case is one scan and one
/// copy; the escaping exists because prefixes are user input.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(buf: &[u8]) -> Value {
        serde_json::from_slice(buf).expect("payload is valid JSON")
    }

    #[test]
    fn payload_has_the_iot_design_shape_and_doubles_round_trip() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut buf = Vec::new();
        for n in 0..20_000u32 {
            // Random bit patterns stress the shortest-repr path; keep them finite.
            let values = if n % 2 == 0 {
                [rng.f64() * 40.0, rng.f64() * 100.0, rng.f64() * 100.0]
            } else {
                let mut v = [0.0; 3];
                for x in &mut v {
                    *x = loop {
                        let f = f64::from_bits(rng.u64(..));
                        if f.is_finite() {
                            break f;
                        }
                    };
                }
                v
            };
            let time = 1_700_000_000_000_000_000 + i64::from(n) * 1000;
            write_payload(&mut buf, "sensor-000042", "warehouse-c", time, values);
            let doc = parse(&buf);

            let rm = &doc["resourceMetrics"];
            assert_eq!(rm.as_array().map(Vec::len), Some(1));
            let attrs = rm[0]["resource"]["attributes"]
                .as_array()
                .expect("attributes array");
            let attr: Vec<(&str, &str)> = attrs
                .iter()
                .map(|a| {
                    (
                        a["key"].as_str().expect("key"),
                        a["value"]["stringValue"].as_str().expect("stringValue"),
                    )
                })
                .collect();
            assert_eq!(
                attr,
                [
                    ("service.name", "iot-sensor"),
                    ("device.id", "sensor-000042"),
                    ("device.location", "warehouse-c"),
                ]
            );
            let metrics = rm[0]["scopeMetrics"][0]["metrics"]
                .as_array()
                .expect("metrics array");
            assert_eq!(metrics.len(), 3);
            for (i, m) in metrics.iter().enumerate() {
                assert_eq!(m["name"], METRICS[i].0);
                assert_eq!(m["unit"], METRICS[i].1);
                let points = m["gauge"]["dataPoints"].as_array().expect("dataPoints");
                assert_eq!(points.len(), 1);
                let p = &points[0];
                assert_eq!(
                    p["timeUnixNano"].as_str(),
                    Some((time + i as i64).to_string().as_str()),
                    "timeUnixNano is a decimal string"
                );
                let got = p["asDouble"].as_f64().expect("asDouble is a number");
                assert_eq!(
                    got.to_bits(),
                    values[i].to_bits(),
                    "{} did not round-trip: {}",
                    values[i],
                    String::from_utf8_lossy(&buf)
                );
            }
        }
    }

    #[test]
    fn strings_are_escaped() {
        let nasty = "a\"b\\c\nd\u{1}e\u{7f}é\t";
        let mut buf = Vec::new();
        write_str(&mut buf, nasty);
        let back: String = serde_json::from_slice(&buf).expect("valid JSON string");
        assert_eq!(back, nasty);

        write_payload(&mut buf, nasty, "loc\"x", 1, [1.0, 2.0, 3.0]);
        let doc = parse(&buf);
        let attrs = &doc["resourceMetrics"][0]["resource"]["attributes"];
        assert_eq!(attrs[1]["value"]["stringValue"], nasty);
        assert_eq!(attrs[2]["value"]["stringValue"], "loc\"x");
    }

    #[test]
    fn non_finite_values_stay_valid_json() {
        let mut buf = Vec::new();
        write_payload(&mut buf, "d", "l", 1, [f64::NAN, f64::INFINITY, -0.0]);
        let doc = parse(&buf);
        let metrics = &doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        assert!(metrics[0]["gauge"]["dataPoints"][0]["asDouble"].is_null());
        let neg_zero = metrics[2]["gauge"]["dataPoints"][0]["asDouble"]
            .as_f64()
            .expect("number");
        assert_eq!(neg_zero.to_bits(), (-0.0f64).to_bits());
    }
}
