//! Replay (`--last`, `--since`), live mode, Ctrl-C, and the collector's durable consumer,
//! which no tail may change.

use super::{env, env_with, ms_time, parse_json, rfc3339, Tail};
use crate::support::{self, now_ns};
use async_nats::jetstream::{self, consumer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_replays_the_newest_messages_as_json_lines() {
    let env = env().await;
    let sent = support::simulate(&env.url(), 10, 2).await;
    assert_eq!(sent.acked, 20);

    // The brief's command: the last 10 messages hold 30 records; --count stops at 10.
    let objects = env.tail_json(&["--last", "10", "--count", "10"]).await;
    assert_eq!(objects.len(), 10);
    for o in &objects {
        assert_eq!(o["signal"], "metric", "{o}");
        assert!(
            o["seq"].as_u64().is_some_and(|s| (11..=20).contains(&s)),
            "{o}"
        );
    }

    // All of the last 10 messages: exactly sequences 11..=20, each point as the simulator sent it.
    let objects = env.tail_json(&["--last", "10", "--count", "30"]).await;
    assert_eq!(objects.len(), 30);
    let mut seqs: Vec<u64> = objects.iter().filter_map(|o| o["seq"].as_u64()).collect();
    seqs.dedup();
    assert_eq!(seqs, (11..=20).collect::<Vec<u64>>());
    for o in &objects {
        let time = o["time_unix_nano"].as_i64().expect("time_unix_nano");
        let point = sent
            .sent
            .iter()
            .find(|p| {
                p.device_id == o["source"] && p.metric == o["name"] && p.time_unix_nano == time
            })
            .unwrap_or_else(|| panic!("printed a point the simulator did not send: {o}"));
        assert_eq!(
            o["value"].as_f64().map(f64::to_bits),
            Some(point.value.to_bits()),
            "{o}"
        );
        assert_eq!(o["location"], point.location.as_str());
        assert_eq!(
            o["attributes"]["service.name"], "iot-sensor",
            "attributes are an object: {o}"
        );
        assert!(o["unit"] == "Cel" || o["unit"] == "%", "{o}");
        assert_eq!(o["kind"], "gauge");
    }

    // Text lines: time, signal, device, name=value unit, location.
    let lines = env
        .run_tail(&["--last", "1", "--count", "3", "--color", "never"])
        .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let last: Vec<_> = objects[27..].iter().collect();
    for (line, o) in lines.iter().zip(last) {
        let expected = format!(
            "{} metric {} {}={} {} location={}",
            ms_time(o["time_unix_nano"].as_i64().unwrap_or_default()),
            o["source"].as_str().unwrap_or_default(),
            o["name"].as_str().unwrap_or_default(),
            o["value"].as_f64().unwrap_or_default(),
            o["unit"].as_str().unwrap_or_default(),
            o["location"].as_str().unwrap_or_default()
        );
        assert_eq!(line, &expected);
        assert!(!line.contains('\x1b'), "no colour into a pipe");
    }
    assert_eq!(
        env.consumer_count().await,
        1,
        "the tail removed its consumer on exit"
    );
}

/// Up to `n` deliveries of the durable consumer, fetched as the collector does.
async fn fetch(
    durable: &consumer::Consumer<consumer::pull::Config>,
    n: usize,
) -> Vec<jetstream::Message> {
    let mut batch = durable
        .fetch()
        .max_messages(n)
        .messages()
        .await
        .expect("fetch");
    let mut delivered = Vec::new();
    while let Some(m) = futures::StreamExt::next(&mut batch).await {
        delivered.push(m.expect("message"));
    }
    delivered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_leaves_the_durable_consumer_untouched() {
    // A long ack wait: nothing may be redelivered while the test looks.
    let env = env_with(|s| s.consumer.ack_wait = Duration::from_secs(600)).await;
    support::simulate(&env.url(), 5, 4).await;

    // The collector is mid-way: 5 delivered, 3 of them acknowledged.
    let mut durable = env.durable().await;
    let delivered = fetch(&durable, 5).await;
    assert_eq!(delivered.len(), 5);
    for m in &delivered[..3] {
        m.double_ack().await.expect("ack");
    }
    let snapshot = |i: &consumer::Info| {
        (
            i.num_pending,
            i.num_ack_pending,
            i.num_redelivered,
            i.delivered.stream_sequence,
            i.delivered.consumer_sequence,
            i.ack_floor.stream_sequence,
            i.ack_floor.consumer_sequence,
            i.config.clone(),
        )
    };
    let before = snapshot(durable.info().await.expect("info"));
    assert_eq!(before.0, 15);
    assert_eq!(before.1, 2);

    // Replay everything, then follow live for a moment and stop with Ctrl-C.
    let lines = env
        .run_tail(&["--last", "20", "--count", "60", "--json"])
        .await;
    assert_eq!(lines.len(), 60);
    let lines = env.run_tail(&["--since", "1h", "--count", "60"]).await;
    assert_eq!(lines.len(), 60);
    let mut live = Tail::spawn(&env.url(), &["--subject", "telemetry.metrics.>"]);
    env.wait_for_tail_consumer().await;
    assert!(live.take(1, Duration::from_millis(500)).await.is_empty());
    assert!(live.interrupt().await.success());

    let after = snapshot(env.durable().await.info().await.expect("info"));
    assert_eq!(before, after, "the durable consumer's state changed");
    assert_eq!(
        env.consumer_count().await,
        1,
        "only the durable consumer is left"
    );

    // The collector carries on where it was: the next delivery is message 6.
    let next = fetch(&durable, 1).await;
    let next = next.first().expect("a message");
    assert_eq!(next.info().expect("info").stream_sequence, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mode_prints_only_what_arrives_after_it_started() {
    let env = env().await;
    let now = now_ns();
    env.publish_reading("sensor-old", "warehouse-a", now, [1.0, 2.0, 3.0])
        .await;

    let mut tail = Tail::spawn(&env.url(), &["--json", "--count", "3"]);
    env.wait_for_tail_consumer().await;
    let now = now_ns();
    let seq = env
        .publish_reading("sensor-new", "warehouse-b", now, [21.5, 40.25, 88.0])
        .await;
    let objects = parse_json(&tail.take(3, Duration::from_secs(10)).await);
    assert!(tail.wait().await.success(), "--count 3 ends the tail");
    assert_eq!(objects.len(), 3);
    let names: Vec<_> = objects.iter().map(|o| o["name"].clone()).collect();
    assert_eq!(
        names,
        vec!["device.temperature", "device.humidity", "device.battery"]
    );
    let values: Vec<_> = objects.iter().map(|o| o["value"].clone()).collect();
    assert_eq!(values, vec![21.5, 40.25, 88.0]);
    for o in &objects {
        assert_eq!(
            o["source"], "sensor-new",
            "history is not replayed live: {o}"
        );
        assert_eq!(o["seq"], seq);
    }
    assert_eq!(env.consumer_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_exits_cleanly_and_removes_the_consumer() {
    let env = env().await;
    let tail = Tail::spawn(&env.url(), &[]);
    env.wait_for_tail_consumer().await;
    let status = tail.interrupt().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(env.consumer_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_from_a_time() {
    let env = env().await;
    env.publish_reading("sensor-a", "warehouse-a", now_ns(), [1.0, 2.0, 3.0])
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let cut = rfc3339(now_ns());
    tokio::time::sleep(Duration::from_millis(600)).await;
    env.publish_reading("sensor-b", "warehouse-b", now_ns(), [4.0, 5.0, 6.0])
        .await;

    let objects = env.tail_json(&["--since", &cut, "--count", "3"]).await;
    assert!(
        objects.iter().all(|o| o["source"] == "sensor-b"),
        "only what was stored after {cut}: {objects:?}"
    );
    let objects = env.tail_json(&["--since", "10m", "--count", "6"]).await;
    let sources: Vec<_> = objects
        .iter()
        .map(|o| o["source"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        sources,
        ["sensor-a", "sensor-a", "sensor-a", "sensor-b", "sensor-b", "sensor-b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_does_not_decode_is_one_line_with_subject_and_reason() {
    let env = env().await;
    let seq = env
        .publish(
            "telemetry.metrics.broken",
            &[],
            b"hello, not telemetry".to_vec(),
        )
        .await;
    let now = now_ns();
    env.publish_reading("sensor-1", "warehouse-a", now, [1.5, 2.5, 3.5])
        .await;
    let lines = env
        .run_tail(&["--last", "2", "--count", "4", "--color", "never"])
        .await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    let reject = &lines[0];
    let mut words = reject.split(' ');
    assert!(words.next().is_some_and(|t| t.ends_with('Z')), "{reject}");
    assert_eq!(words.next(), Some("reject"), "{reject}");
    assert_eq!(words.next(), Some("telemetry.metrics.broken"), "{reject}");
    assert!(reject.contains("unknown format"), "{reject}");
    assert!(
        lines[1].contains(" metric sensor-1 device.temperature=1.5 Cel"),
        "{lines:?}"
    );

    let objects = env.tail_json(&["--last", "2", "--count", "1"]).await;
    assert_eq!(objects[0]["signal"], "rejected");
    assert_eq!(objects[0]["subject"], "telemetry.metrics.broken");
    assert_eq!(objects[0]["seq"], seq);
    assert!(
        objects[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("unknown format")),
        "{}",
        objects[0]
    );
}
