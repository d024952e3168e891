//! Hostile input: SQL, quotes, control and invisible characters stored as data; NUL bytes
//! and invalid UTF-8 dead-lettered with a reason.

use super::{payload, point, publish_all, temperature};
use crate::support::{self, count, now_ns};
use serde_json::json;

const HOSTILE: &[&str] = &[
    "'; DROP TABLE iot_metrics; --",
    "\"; DROP TABLE iot_metrics; --",
    "Robert'); DELETE FROM iot_metrics WHERE ('1'='1",
    "semi;colon;;'\"",
    "back\\slash \\' \\\" \\\\",
    "$$ dollar $fn$ $1 %s %n {} {{}}",
    "\u{202E}evil.exe\u{202C} rtl override",
    "zero\u{200B}width\u{200C}non\u{200D}joiner\u{2060}\u{FEFF}bom",
    "\u{05E9}\u{05DC}\u{05D5}\u{05DD} \u{0645}\u{0631}\u{062D}\u{0628}\u{0627} mixed",
    "tab\tnew\nline\rcr\u{1}\u{1f}",
    "emoji \u{1F680}\u{1F600} surrogate-pair",
    "COPY iot_metrics TO PROGRAM 'id'; \\copy",
    "E'\\\\x00' \\N \\.",
];

/// Quotes, semicolons, SQL, backslashes, RTL and zero-width characters in device ids,
/// locations, metric names, units, attribute keys and values are stored byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_stored_as_data() {
    let stack = support::stack("hostile").await;
    let now = now_ns();
    let messages: Vec<(String, Vec<u8>)> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let attrs = json!([
                {"key": text, "value": {"stringValue": text}},
                {"key": "nested", "value": {"kvlistValue": {"values": [
                    {"key": text, "value": {"arrayValue": {"values": [{"stringValue": text}]}}}
                ]}}}
            ]);
            (
                format!("telemetry.metrics.hostile-{i}"),
                payload(
                    text,
                    text,
                    &[point(text, text, i as f64, now + i as i64, attrs)],
                ),
            )
        })
        .collect();
    publish_all(&stack, &messages).await;
    let report = stack.collect().await;
    assert_eq!(report.dead_letters, 0);
    assert_eq!(report.rows, HOSTILE.len() as u64);
    let client = stack.db().await;
    for (i, text) in HOSTILE.iter().enumerate() {
        let row = client
            .query_one(
                "SELECT device_id, location, metric_name, unit, attributes ->> $2, attributes -> 'nested' -> $2 -> 0 ->> 0 FROM iot_metrics WHERE value = $1",
                &[&(i as f64), text],
            )
            .await
            .unwrap_or_else(|e| panic!("row {i}: {e}"));
        for col in 0..6 {
            let got: String = row.get(col);
            assert_eq!(got.as_bytes(), text.as_bytes(), "column {col} of {text:?}");
        }
    }
    let tables = count(
        &client,
        "SELECT count(*) FROM pg_class WHERE relname IN ('iot_metrics', 'jetscale_dead_letters', 'jetscale_ledger') AND relnamespace = 'public'::regnamespace",
    )
    .await;
    assert_eq!(tables, 3, "tables intact");
}

/// NUL bytes (which PostgreSQL text cannot hold), invalid UTF-8 and lone surrogates are
/// dead-lettered with a reason, payload kept byte for byte; the valid rest is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_invalid_utf8_are_dead_lettered_with_a_reason() {
    let stack = support::stack("nul_utf8").await;
    let now = now_ns();
    let nul = "nul\u{0}byte";
    // A NUL in each field in turn.
    let with_nul = |field: &str, device, location, name, unit, value, attributes| {
        let point = point(name, unit, value, now, attributes);
        (
            format!("telemetry.metrics.nul-{field}"),
            payload(device, location, &[point]),
        )
    };
    let nul_key = json!([{"key": nul, "value": {"stringValue": "v"}}]);
    let nul_value = json!([{"key": "k", "value": {"stringValue": nul}}]);
    let mut messages = vec![
        with_nul("device", nul, "x", "m", "u", 1.0, json!([])),
        with_nul("location", "d", nul, "m", "u", 2.0, json!([])),
        with_nul("name", "d", "x", nul, "u", 3.0, json!([])),
        with_nul("unit", "d", "x", "m", nul, 4.0, json!([])),
        with_nul("key", "d", "x", "m", "u", 5.0, nul_key),
        with_nul("value", "d", "x", "m", "u", 6.0, nul_value),
    ];
    // Invalid UTF-8 inside a JSON string, a lone surrogate escape, and raw garbage.
    let mut bad_utf8 = temperature("utf8-device", now);
    let at = bad_utf8
        .windows(11)
        .position(|w| w == b"utf8-device")
        .expect("device id in payload");
    bad_utf8[at] = 0xFF;
    messages.push(("telemetry.metrics.bad-utf8".into(), bad_utf8.clone()));
    let surrogate = String::from_utf8(temperature("SURROGATE", now))
        .expect("utf-8")
        .replace("SURROGATE", "\\ud800");
    messages.push((
        "telemetry.metrics.surrogate".into(),
        surrogate.clone().into_bytes(),
    ));
    let garbage: Vec<u8> = vec![0xFF, 0xFE, 0x00, b'{', 0xC3, 0x28, b'\'', b';'];
    messages.push(("telemetry.metrics.garbage".into(), garbage.clone()));
    messages.push((
        "telemetry.metrics.good".into(),
        temperature("good-device", now),
    ));
    publish_all(&stack, &messages).await;
    let report = stack.collect().await;
    assert_eq!(report.rows, 1, "only the good message is stored");
    assert_eq!(report.dead_letters, messages.len() as u64 - 1);
    let client = stack.db().await;
    for (subject, sent) in &messages[..messages.len() - 1] {
        let row = client
            .query_one(
                "SELECT reason, payload FROM jetscale_dead_letters WHERE subject = $1",
                &[subject],
            )
            .await
            .unwrap_or_else(|e| panic!("dead letter for {subject}: {e}"));
        let reason: String = row.get(0);
        let stored: Vec<u8> = row.get(1);
        assert_eq!(&stored, sent, "{subject}: payload kept byte for byte");
        if subject.contains("nul-") {
            assert!(reason.contains("NUL"), "{subject}: {reason}");
        } else {
            assert!(
                reason.starts_with("malformed") || reason.starts_with("unknown format"),
                "{subject}: {reason}"
            );
        }
    }
    let good: String = client
        .query_one("SELECT device_id FROM iot_metrics", &[])
        .await
        .expect("the good row")
        .get(0);
    assert_eq!(good, "good-device");
}
