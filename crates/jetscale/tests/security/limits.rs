//! Every input limit, one test each: the violating message is dead-lettered with the limit's
//! name, the rest of the batch is stored.

use super::{payload, point, publish_all, temperature};
use crate::support::{self, now_ns, texts};
use jetscale::config::Limits;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

/// Publishes an accepted message, the violating one and another accepted one, runs the
/// collector, and checks: exactly one dead letter whose reason names the limit, both
/// accepted messages stored.
async fn limit_case(
    label: &str,
    adjust: impl FnOnce(&mut Limits),
    bad: Vec<u8>,
    limit_name: &str,
) -> tokio_postgres::Client {
    let stack = support::stack_with(label, |s| adjust(&mut s.limits)).await;
    let now = now_ns();
    let messages = [
        ("telemetry.metrics.ok-1".into(), temperature("ok-1", now)),
        ("telemetry.metrics.violator".into(), bad),
        (
            "telemetry.metrics.ok-2".into(),
            temperature("ok-2", now + 1),
        ),
    ];
    publish_all(&stack, &messages).await;
    let report = stack.collect().await;
    assert_eq!(report.dead_letters, 1, "{limit_name}");
    let client = stack.db().await;
    let reasons = texts(
        &client,
        "SELECT reason FROM jetscale_dead_letters WHERE subject = 'telemetry.metrics.violator'",
        &[],
    )
    .await;
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].starts_with("limit exceeded") && reasons[0].contains(limit_name),
        "reason {:?} must name {limit_name}",
        reasons[0]
    );
    let devices = texts(
        &client,
        "SELECT device_id FROM iot_metrics ORDER BY device_id",
        &[],
    )
    .await;
    assert_eq!(
        devices,
        vec!["ok-1", "ok-2"],
        "the rest of the batch is stored"
    );
    client
}

/// `device`'s payload with one point carrying `attributes`.
fn with_attributes(device: &str, attributes: Value) -> Vec<u8> {
    payload(device, "x", &[point("m", "u", 1.0, now_ns(), attributes)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_message_bytes() {
    let padding = "p".repeat(3000);
    let bad = with_attributes(
        "big",
        json!([{"key": "pad", "value": {"stringValue": padding}}]),
    );
    let limit = |l: &mut Limits| l.max_message_bytes = 2048;
    limit_case("lim_size", limit, bad, "max_message_bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_points_per_message() {
    let now = now_ns();
    let points: Vec<_> = (0..5)
        .map(|i| point(&format!("m{i}"), "u", i as f64, now + i, json!([])))
        .collect();
    let bad = payload("many", "x", &points);
    let limit = |l: &mut Limits| l.max_points_per_message = 3;
    limit_case("lim_points", limit, bad, "max_points_per_message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_attributes() {
    let attrs: Vec<_> = (0..12)
        .map(|i| json!({"key": format!("k{i}"), "value": {"intValue": i}}))
        .collect();
    let bad = with_attributes("attrs", json!(attrs));
    limit_case("lim_attrs", |l| l.max_attributes = 8, bad, "max_attributes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_attribute_key_bytes() {
    let bad = with_attributes(
        "keys",
        json!([{"key": "k".repeat(40), "value": {"boolValue": true}}]),
    );
    let limit = |l: &mut Limits| l.max_attribute_key_bytes = 16;
    limit_case("lim_key", limit, bad, "max_attribute_key_bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_attribute_value_bytes() {
    let bad = with_attributes(
        "values",
        json!([{"key": "k", "value": {"stringValue": "v".repeat(100)}}]),
    );
    let limit = |l: &mut Limits| l.max_attribute_value_bytes = 32;
    limit_case("lim_value", limit, bad, "max_attribute_value_bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_value_depth() {
    let mut value = json!({"stringValue": "deep"});
    for _ in 0..6 {
        value = json!({"arrayValue": {"values": [value]}});
    }
    let bad = with_attributes("deep", json!([{"key": "k", "value": value}]));
    let limit = |l: &mut Limits| l.max_value_depth = 3;
    limit_case("lim_depth", limit, bad, "max_value_depth").await;
}

/// Partitions (TimescaleDB: chunks) of any jetscale table whose range holds `time_ns`.
async fn partitions_covering(client: &tokio_postgres::Client, time_ns: i64) -> Vec<String> {
    let at = UNIX_EPOCH + Duration::from_nanos(time_ns as u64);
    let sql = if crate::support::timescaledb() {
        "SELECT chunk_name::text FROM timescaledb_information.chunks
         WHERE range_start <= $1 AND range_end > $1"
    } else {
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \\(''([^'']+)''\\)')::timestamptz <= $1
           AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz > $1"
    };
    texts(client, sql, &[&at]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_past() {
    let old = now_ns() - 30 * 86_400 * 1_000_000_000;
    let bad = temperature("ancient", old);
    let client = limit_case("lim_past", |_| {}, bad, "max_past").await;
    assert!(
        partitions_covering(&client, old).await.is_empty(),
        "no partition for a rejected time"
    );
    // Sanity: the accepted rows do have one.
    assert!(!partitions_covering(&client, now_ns()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_max_future() {
    let future = now_ns() + 30 * 86_400 * 1_000_000_000;
    let bad = temperature("time-traveller", future);
    let client = limit_case("lim_future", |_| {}, bad, "max_future").await;
    assert!(
        partitions_covering(&client, future).await.is_empty(),
        "no partition for a rejected time"
    );
}
