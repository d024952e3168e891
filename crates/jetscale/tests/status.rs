//! `jetscale status`: after a collector drained part of the stream, the snapshot (JSON and
//! screen) reports the stream, the backlog left, dead letters by reason and the series, as
//! a role with nothing but SELECT, and leaves the collectors' consumer as it was.

use crate::security::peer::{authz_server, peer, provision_as_admin, spec, url_as};
use crate::support::{self, jetscale, now_ns, publish, reading, succeeds};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_backlog_read_only() {
    let stack = support::stack("status").await;
    let js = stack.js().await;
    let now = now_ns();
    for i in 0..6 {
        let device = format!("sensor-{}", i % 3);
        let body = reading(&device, now + i, 20.0 + i as f64);
        publish(&js, &format!("telemetry.metrics.{device}"), &[], body).await;
    }
    publish(&js, "telemetry.metrics.bad", &[], "not json").await;
    publish(&js, "telemetry.metrics.bad", &[], "still not json").await;
    let report = stack.collect().await;
    assert_eq!(report.dead_letters, 2);
    // Left for the next collector: the backlog status must show.
    for i in 0..4 {
        let body = reading("sensor-0", now + 100 + i, 1.0);
        publish(&js, "telemetry.metrics.sensor-0", &[], body).await;
    }

    let stream = js
        .get_stream(&stack.settings.stream.name)
        .await
        .expect("stream");
    let consumer = &stack.settings.consumer.name;
    let before = stream.consumer_info(consumer).await.expect("consumer info");

    // A role that may only read: any write status attempted would fail loudly.
    let owner = stack.db().await;
    let role = format!("jetscale_status_{}", std::process::id());
    owner
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA public TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
        ))
        .await
        .expect("read-only role");
    let role_url = stack
        .db_url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(role_url, stack.db_url, "the role's URL names the role");

    let run = |args: &[&str]| {
        let mut cmd = jetscale(args);
        cmd.env("JETSCALE_NATS_URL", stack.nats_url())
            .env("JETSCALE_DATABASE_URL", &role_url);
        cmd
    };
    let json: Value = serde_json::from_str(&succeeds(&mut run(&["status", "--json"])).await)
        .expect("status --json prints one JSON object");
    assert_eq!(
        json["notes"],
        Value::Array(vec![]),
        "everything readable: {json:#}"
    );
    let s = &json["stream"];
    assert_eq!(s["name"], stack.settings.stream.name.as_str());
    assert_eq!(s["messages"], 12);
    assert_eq!(s["first_sequence"], 1);
    assert_eq!(s["last_sequence"], 12);
    assert!(s["limits"]["max_bytes"].as_i64().is_some_and(|b| b > 0));
    assert!(s["limits"]["bytes_used"]
        .as_f64()
        .is_some_and(|u| u > 0.0 && u < 1.0));

    let c = json["consumers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == consumer.as_str()))
        .expect("the collectors' consumer is listed");
    assert_eq!(c["configured"], true);
    assert_eq!(c["pending"], 4, "what the collector left");
    assert_eq!(c["ack_pending"], 0);
    assert_eq!(c["ack_floor"], 8);
    assert!(
        c["lag_seconds"].as_f64().is_some_and(|l| l > 0.0),
        "the oldest unacknowledged message has an age: {c}"
    );

    let db = &json["database"];
    assert_eq!(db["series"], 3);
    assert_eq!(db["dead_letters_total"], 2);
    let reasons = db["dead_letters_last_hour"].as_array().expect("reasons");
    let hour: i64 = reasons.iter().filter_map(|r| r["count"].as_i64()).sum();
    assert_eq!(hour, 2, "{reasons:?}");
    assert!(reasons
        .iter()
        .all(|r| r["reason"].as_str().is_some_and(|t| !t.is_empty())));
    assert!(db["last_commit"].is_string());
    assert!(db["size_bytes"].as_i64().is_some_and(|b| b > 0));
    assert_eq!(db["timescaledb"], support::timescaledb());
    let points = db["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == "iot_metrics_points"))
        .expect("the points table's partitions");
    assert!(!points["partitions"]
        .as_array()
        .expect("partitions")
        .is_empty());

    let screen = succeeds(&mut run(&["status"])).await;
    for expected in [
        format!("stream {}", stack.settings.stream.name),
        format!("consumer {consumer} (the collectors')"),
        "pending      4".to_owned(),
        "messages     12".to_owned(),
        "series       3".to_owned(),
        "dead letters 2 in the last hour".to_owned(),
        "iot_metrics_points".to_owned(),
    ] {
        assert!(screen.contains(&expected), "{expected:?} in:\n{screen}");
    }

    let after = stream.consumer_info(consumer).await.expect("consumer info");
    assert_eq!(
        serde_json::to_value(&after.config).expect("config"),
        serde_json::to_value(&before.config).expect("config"),
        "status changed the collectors' consumer"
    );
    assert_eq!(after.num_pending, before.num_pending);
    assert_eq!(
        after.delivered.stream_sequence,
        before.delivered.stream_sequence
    );
    assert_eq!(
        after.ack_floor.stream_sequence,
        before.ack_floor.stream_sequence
    );
}

/// Under the least-privilege block of `jetscale nats-config`: the collector's user reads the
/// stream and its own consumer (no list, no lag, each said in a note); the admin's reads
/// everything, lag included. Neither changes the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_runs_as_the_collector_or_the_admin_user() {
    let nats = authz_server(&spec(None, "jetscale")).await;
    provision_as_admin(&nats, "jetscale").await;
    let device = peer(&nats, "device", "DEVICE_PASSWORD").await;
    let now = now_ns();
    for i in 0..3 {
        let body = reading("sensor-1", now + i, 1.0);
        device.publish("telemetry.metrics.sensor-1", body).await;
    }
    let database = support::fresh_database("status_authz").await;
    let admin = peer(&nats, "admin", "ADMIN_PASSWORD").await;
    let stream = admin.js().get_stream("TELEMETRY").await.expect("stream");
    let before = stream.consumer_info("jetscale").await.expect("consumer");

    let status = |user: &str, var: &str, extra: &[&str]| {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        let mut cmd = jetscale(&args);
        cmd.env("JETSCALE_NATS_URL", url_as(&nats, user, var))
            .env("JETSCALE_DATABASE_URL", &database);
        cmd
    };
    for (user, var, extra) in [
        ("collector", "COLLECTOR_PASSWORD", &["--collector-user"][..]),
        ("admin", "ADMIN_PASSWORD", &[][..]),
    ] {
        let out = succeeds(&mut status(user, var, extra)).await;
        let json: Value = serde_json::from_str(&out).expect("one JSON object");
        assert_eq!(json["stream"]["messages"], 3, "{user}: {json:#}");
        let consumers = json["consumers"].as_array().expect("consumers");
        assert_eq!(consumers.len(), 1, "{user}: {json:#}");
        assert_eq!(consumers[0]["name"], "jetscale");
        assert_eq!(consumers[0]["pending"], 3);
        let notes = json["notes"].to_string();
        if user == "collector" {
            assert!(consumers[0]["lag_seconds"].is_null());
            assert!(notes.contains("STREAM.MSG.GET"), "{notes}");
        } else {
            assert!(consumers[0]["lag_seconds"]
                .as_f64()
                .is_some_and(|l| l > 0.0));
            assert!(!notes.contains("lag"), "{notes}");
        }
    }
    let after = stream.consumer_info("jetscale").await.expect("consumer");
    assert_eq!(
        serde_json::to_value(&after.config).expect("config"),
        serde_json::to_value(&before.config).expect("config"),
    );
    assert_eq!(after.num_pending, 3);
    assert_eq!(after.delivered.stream_sequence, 0);
}

/// A database that cannot be reached: the NATS half is still printed, the reason is a note,
/// and the exit code tells a script the answer is partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_database_says_so_and_fails() {
    let stack = support::stack("status_nodb").await;
    let out = jetscale(&["status", "--json"])
        .env("JETSCALE_NATS_URL", stack.nats_url())
        .env(
            "JETSCALE_DATABASE_URL",
            "postgresql://nobody@127.0.0.1:1/none",
        )
        .output()
        .await
        .expect("run jetscale");
    assert!(!out.status.success(), "a partial status must not exit 0");
    let json: Value = serde_json::from_slice(&out.stdout).expect("the JSON is still printed");
    assert_eq!(json["stream"]["messages"], 0);
    assert!(json["database"].is_null());
    assert!(
        json["notes"]
            .to_string()
            .contains("cannot connect to PostgreSQL"),
        "{json:#}"
    );
}
