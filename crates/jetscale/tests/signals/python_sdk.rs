//! The OpenTelemetry Python SDK's own output (committed fixtures), shifted to the present,
//! published as protobuf and as OTLP/JSON, and checked field by field.

use super::{base_ns, norm, rows, us, DISTRIBUTIONS, LOGS, METRICS, MS, SPANS};
use crate::support::{self, publish};
use jetscale_model::subject;
use serde_json::json;

/// Files written by the OpenTelemetry Python SDK (tests/fixtures/generate_otel_python.py),
/// all times relative to this instant.
const PYTHON_BASE_NS: i64 = 1_700_000_000_000_000_000;

fn in_fixture_range(v: i64) -> bool {
    (PYTHON_BASE_NS - 120_000 * MS..=PYTHON_BASE_NS + 60_000 * MS).contains(&v)
}

/// Moves every timestamp of a protobuf fixture by `delta`, in place: OTLP times are
/// fixed64, so every other byte stays as the Python encoder wrote it.
fn shift_protobuf(mut bytes: Vec<u8>, delta: i64) -> Vec<u8> {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let v = i64::from_le_bytes(word);
        if in_fixture_range(v) {
            bytes[i..i + 8].copy_from_slice(&(v + delta).to_le_bytes());
            i += 8;
        } else {
            i += 1;
        }
    }
    bytes
}

/// Moves every `"1700…"` timestamp string of a JSON fixture by `delta`, leaving the rest
/// of the text as protobuf's json_format wrote it.
fn shift_json(text: &str, delta: i64) -> Vec<u8> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('"') {
        out.push_str(&rest[..=pos]);
        rest = &rest[pos + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 19 && rest.as_bytes().get(19) == Some(&b'"') {
            if let Ok(v) = rest[..19].parse::<i64>() {
                if in_fixture_range(v) {
                    out.push_str(&(v + delta).to_string());
                    rest = &rest[19..];
                }
            }
        }
    }
    out.push_str(rest);
    out.into_bytes()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_python_sdk_output_lands_field_by_field() {
    let stack = support::stack("python_sdk").await;
    let js = stack.js().await;
    let pb_delta = base_ns() - PYTHON_BASE_NS;
    // The JSON copies land one second later, so their spans are distinct rows.
    let json_delta = pb_delta + 1000 * MS;
    for signal in ["traces", "metrics", "logs"] {
        let subject = match signal {
            "traces" => subject::spans("checkout", "py"),
            "metrics" => subject::service_metric("checkout", "all"),
            _ => subject::logs("checkout", "mixed"),
        };
        let pb = shift_protobuf(fixture(&format!("otel_python_{signal}.pb")), pb_delta);
        let ct = ("Content-Type", "application/x-protobuf");
        publish(&js, &subject, &[ct], pb).await;
        let text = String::from_utf8(fixture(&format!("otel_python_{signal}.json")))
            .expect("the JSON fixture is UTF-8");
        publish(&js, &subject, &[], shift_json(&text, json_delta)).await;
    }
    let report = stack.collect().await;
    assert_eq!((report.messages, report.dead_letters), (6, 0));
    let db = stack.db().await;

    for delta in [pb_delta, json_delta] {
        let t = PYTHON_BASE_NS + delta;
        // Every record of one copy is at or up to 250 ms after t; the copies are 1 s apart.
        let window = format!(
            "(extract(epoch FROM time) * 1000000)::int8 BETWEEN {} AND {}",
            us(t),
            us(t + 900 * MS)
        );
        let spans = rows(&db, &format!("{SPANS} WHERE {window} ORDER BY time")).await;
        assert_eq!(spans.len(), 3, "{spans:?}");
        let server = &spans[0];
        assert_eq!(server["start_us"], us(t));
        assert_eq!(server["end_us"], us(t + 250 * MS));
        assert_eq!(server["trace_id"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(server["span_id"], "eee19b7ec3c1b171");
        assert_eq!(server["parent_span_id"], "eee19b7ec3c1b16f");
        assert_eq!(server["trace_state"], "vendor=opaque,rojo=00f067aa0ba902b7");
        assert_eq!(server["name"], "POST /checkout");
        assert_eq!(server["service"], "checkout");
        assert_eq!(server["kind"], "server");
        assert_eq!(server["status_code"], "error");
        assert_eq!(server["status_message"], "card declined");
        assert_eq!(server["duration_ms"], 250.0);
        assert_eq!(
            server["attributes"],
            json!({"http.request.method": "POST", "http.response.status_code": 500,
                   "retry": true, "ratio": 0.25, "tags": ["a", "b"], "otel.span.flags": 768})
        );
        assert_eq!(
            server["events"],
            json!([{"time_unix_nano": t + 120 * MS, "name": "exception",
                    "attributes": {"exception.type": "ValueError",
                                   "exception.message": "card declined"}}])
        );
        assert_eq!(
            server["links"][0]["trace_id"],
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            server["links"][0]["attributes"],
            json!({"link.kind": "follows"})
        );
        assert_eq!(server["resource"]["service.instance.id"], "checkout-1");
        assert_eq!(server["resource"]["telemetry.sdk.language"], "python");
        let client = &spans[1];
        assert_eq!(
            (&client["name"], &client["kind"], &client["status_code"]),
            (&json!("SELECT orders"), &json!("client"), &json!("ok"))
        );
        assert_eq!(client["parent_span_id"], "eee19b7ec3c1b171");
        assert_eq!(spans[2]["name"], "render");
        assert_eq!(spans[2]["kind"], "internal");
        assert_eq!(spans[2]["status_code"], "unset");

        let logs = rows(&db, &format!("{LOGS} WHERE {window} ORDER BY time")).await;
        assert_eq!(logs.len(), 3);
        assert_eq!(logs[0]["time_us"], us(t + MS));
        assert_eq!(logs[0]["observed_us"], us(t + 2 * MS));
        assert_eq!(logs[0]["severity_number"], 17);
        assert_eq!(logs[0]["severity_text"], "ERROR");
        assert_eq!(logs[0]["message"], "payment failed: card declined");
        assert_eq!(
            logs[0]["attributes"],
            json!({"order.id": "o-17", "attempt": 2})
        );
        assert_eq!(logs[0]["trace_id"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(logs[0]["span_id"], "eee19b7ec3c1b171");
        assert_eq!(logs[0]["flags"], 1);
        assert_eq!(logs[0]["service"], "checkout");
        assert_eq!(
            logs[1]["body"],
            json!({"event": "checkout", "items": [1, 2.5, "x"], "ok": true})
        );
        assert_eq!(
            logs[1]["attributes"],
            json!({"event.name": "checkout.completed"})
        );
        assert_eq!(logs[2]["time_us"], us(t + 4 * MS));
        assert_eq!(logs[2]["severity_number"], 14);
        assert_eq!(logs[2]["body"], "AAFiaW5hcnk=");

        let numbers = rows(
            &db,
            &format!("{METRICS} WHERE {window} ORDER BY metric_name"),
        )
        .await;
        let names: Vec<&str> = numbers
            .iter()
            .map(|m| m["metric_name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, ["cpu.temperature", "http.inflight", "http.requests"]);
        assert_eq!(numbers[0]["value"], 61.5);
        assert_eq!(numbers[0]["unit"], "Cel");
        assert_eq!(numbers[0]["device_id"], "checkout");
        assert_eq!(numbers[1]["value"], 3.0);
        assert_eq!(numbers[1]["attributes"]["metric.kind"], "non_monotonic_sum");
        assert_eq!(numbers[2]["value"], 7.0);
        assert_eq!(numbers[2]["attributes"]["metric.kind"], "cumulative_sum");
        assert_eq!(numbers[2]["attributes"]["route"], "/checkout");
        assert_eq!(numbers.iter().filter(|m| m["time_us"] == us(t)).count(), 3);

        let dist = rows(
            &db,
            &format!("{DISTRIBUTIONS} WHERE {window} ORDER BY metric_name"),
        )
        .await;
        assert_eq!(dist.len(), 3);
        let h = &dist[0];
        assert_eq!(h["metric_name"], "http.duration");
        assert_eq!(
            (&h["kind"], &h["temporality"]),
            (&json!("histogram"), &json!("cumulative"))
        );
        assert_eq!(
            (h["count"].as_i64(), h["sum"].as_f64()),
            (Some(4), Some(2695.75))
        );
        assert_eq!(
            (h["min"].as_f64(), h["max"].as_f64()),
            (Some(3.5), Some(2600.0))
        );
        assert_eq!(h["start_us"], us(t - 60_000 * MS));
        assert_eq!(
            h["buckets"]["counts"],
            json!([0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
        );
        let e = &dist[1];
        assert_eq!(e["metric_name"], "payload.size");
        assert_eq!(e["kind"], "exponential_histogram");
        assert_eq!(
            (e["count"].as_i64(), e["sum"].as_f64()),
            (Some(5), Some(1104.0))
        );
        assert_eq!(e["buckets"]["scale"], 3);
        assert_eq!(e["buckets"]["positive"]["offset"], -1);
        assert_eq!(
            e["buckets"]["positive"]["counts"].as_array().map(Vec::len),
            Some(128)
        );
        let q = &dist[2];
        assert_eq!(q["metric_name"], "rpc.latency");
        assert_eq!(
            q["buckets"],
            norm(json!({"quantiles": [{"quantile": 0.0, "value": 0.05},
                                      {"quantile": 0.5, "value": 0.4},
                                      {"quantile": 1.0, "value": 1.5}]}))
        );
    }
}
