//! Per-device identity: credentials that allow a device only its own subject, and a payload
//! that claims another device dead-lettered.

use super::peer::{password, peer, provisioned, stream_messages, url_as};
use super::temperature;
use crate::support::{self, now_ns, query, settings, texts};

const DEVICES: &[&str] = &["sensor-001", "sensor-002"];

/// `--per-device`: each device may publish only on `telemetry.metrics.{its id}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_device_credentials_allow_only_the_own_subject() {
    let nats = provisioned(Some(DEVICES)).await;
    let one = peer(&nats, "sensor-001", "DEVICE_PASSWORD_SENSOR_001").await;
    let own = "telemetry.metrics.sensor-001";
    one.publish(own, temperature("sensor-001", now_ns())).await;
    for subject in [
        "telemetry.metrics.sensor-002",
        "telemetry.metrics.sensor-001.extra",
        "telemetry.spans.sensor-001",
    ] {
        one.publish_refused(subject, temperature("sensor-001", now_ns()))
            .await;
    }
    let two = peer(&nats, "sensor-002", "DEVICE_PASSWORD_SENSOR_002").await;
    two.subscription_refused(own, &one, own).await;
    // The shared `device` user does not exist in this mode.
    assert!(async_nats::ConnectOptions::with_user_and_password(
        "device".into(),
        password("DEVICE_PASSWORD")
    )
    .connect(format!("nats://127.0.0.1:{}", nats.server.port()))
    .await
    .is_err());
    let admin = peer(&nats, "admin", "ADMIN_PASSWORD").await;
    // Its own message, and the one published while sensor-002's subscription was refused.
    assert_eq!(stream_messages(&admin).await, 2);
}

/// End to end: a device authenticated for its own subject that claims another device.id in
/// its payload is dead-lettered with "identity mismatch" (with `verify_device_subject`),
/// never stored under the claimed identity; honest messages are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_mismatch_is_dead_lettered_end_to_end() {
    let nats = provisioned(Some(DEVICES)).await;
    let database = support::fresh_database("identity").await;
    let one = peer(&nats, "sensor-001", "DEVICE_PASSWORD_SENSOR_001").await;
    let now = now_ns();
    for (claimed, t) in [
        ("sensor-001", now),
        ("sensor-002", now + 1),
        ("sensor-001", now + 2),
    ] {
        one.publish("telemetry.metrics.sensor-001", temperature(claimed, t))
            .await;
    }
    let mut s = settings(&url_as(&nats, "collector", "COLLECTOR_PASSWORD"), &database);
    s.limits.verify_device_subject = true;
    let report = support::collect_until_idle(&s).await;
    assert_eq!(report.dead_letters, 1);
    let client = support::db(&database).await;
    let devices = texts(
        &client,
        "SELECT device_id FROM iot_metrics ORDER BY time",
        &[],
    )
    .await;
    assert_eq!(devices, vec!["sensor-001", "sensor-001"]);
    let sql = "SELECT reason, subject, stream_seq FROM jetscale_dead_letters";
    let dead = query(&client, sql).await;
    assert_eq!(dead.len(), 1);
    let reason: String = dead[0].get(0);
    assert!(reason.starts_with("identity mismatch"), "{reason}");
    assert!(reason.contains("sensor-002"), "{reason}");
    assert_eq!(dead[0].get::<_, String>(1), "telemetry.metrics.sensor-001");
    assert_eq!(dead[0].get::<_, i64>(2), 2);
}
