//! The least-privilege NATS authorization `jetscale nats-config` generates, proven allow by
//! allow and deny by deny against a real nats-server.

use super::peer::{
    authz_server, peer, provision_as_admin, provisioned, spec, stream_messages, url_as,
};
use super::temperature;
use crate::support::{self, count_rows, jetscale, now_ns, settings, succeeds};
use async_nats::jetstream;
use jetscale::receivers::nats::authz;

/// sensor-001's own subject.
const SENSOR_001: &str = "telemetry.metrics.sensor-001";

/// Allow: a device publishes telemetry through JetStream and receives its PubAck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_device_publishes_telemetry_and_gets_its_puback() {
    let nats = provisioned(None).await;
    let device = peer(&nats, "device", "DEVICE_PASSWORD").await;
    let ack = device
        .publish(SENSOR_001, temperature("sensor-001", now_ns()))
        .await;
    assert_eq!(ack.stream, "TELEMETRY");
    assert_eq!(ack.sequence, 1);
    // The NATS-native service design's subjects are telemetry too.
    device.publish("telemetry.spans.api.checkout", "{}").await;
    assert!(device.errors().is_empty());
}

/// Deny: a device cannot subscribe to telemetry (all of it, another device's subject, or
/// the collector's inbox where the pull consumer delivers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_device_cannot_subscribe_to_telemetry() {
    let nats = provisioned(None).await;
    let device = peer(&nats, "device", "DEVICE_PASSWORD").await;
    let other = peer(&nats, "device", "DEVICE_PASSWORD").await;
    let collector_inbox = format!("{}.>", authz::COLLECTOR_INBOX_PREFIX);
    for subject in [
        "telemetry.>",
        ">",
        "telemetry.metrics.sensor-002",
        collector_inbox.as_str(),
    ] {
        device
            .subscription_refused(subject, &other, "telemetry.metrics.sensor-002")
            .await;
    }
}

/// Deny: a device cannot publish outside `telemetry.>` (other subjects, the JetStream API,
/// the consumer's ack subjects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_device_cannot_publish_outside_telemetry() {
    let nats = provisioned(None).await;
    let device = peer(&nats, "device", "DEVICE_PASSWORD").await;
    for subject in [
        "other.metrics.sensor-001",
        "telemetry",
        "$JS.API.INFO",
        "$JS.ACK.TELEMETRY.jetscale.1.1.1.0.0",
        "_INBOX.someone",
    ] {
        device.publish_refused(subject, "x").await;
    }
    let admin = peer(&nats, "admin", "ADMIN_PASSWORD").await;
    assert_eq!(stream_messages(&admin).await, 0);
}

/// Deny: a device cannot read another device's data through JetStream (get message,
/// direct get, an ephemeral consumer) nor through core subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_device_cannot_read_another_devices_data() {
    let nats = provisioned(None).await;
    let victim = peer(&nats, "device", "DEVICE_PASSWORD").await;
    let subject = "telemetry.metrics.sensor-002";
    victim
        .publish(subject, temperature("sensor-002", now_ns()))
        .await;
    let thief = peer(&nats, "device", "DEVICE_PASSWORD").await;
    let js = thief.js();
    // get_stream itself is a JetStream API request: refused.
    let info = js.get_stream("TELEMETRY").await;
    thief
        .api_refused(info, "$JS.API.STREAM.INFO.TELEMETRY")
        .await;
    let stream = js.get_stream_no_info("TELEMETRY").await.expect("handle");
    let get = stream.get_raw_message(1).await;
    thief
        .api_refused(get, "$JS.API.STREAM.MSG.GET.TELEMETRY")
        .await;
    let direct = stream.direct_get(1).await;
    thief
        .api_refused(direct, "$JS.API.DIRECT.GET.TELEMETRY")
        .await;
    let ephemeral = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: subject.into(),
            ..Default::default()
        })
        .await;
    thief
        .api_refused(ephemeral, "$JS.API.CONSUMER.CREATE.TELEMETRY")
        .await;
    // Pulling from the collector's durable consumer is refused too.
    thief
        .publish_refused("$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.jetscale", "1")
        .await;
    let other = peer(&nats, "device", "DEVICE_PASSWORD").await;
    thief.subscription_refused(subject, &other, subject).await;
}

/// Deny: a device cannot create, purge or delete the stream, nor create or delete the
/// consumer; the stream keeps its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_device_cannot_create_purge_or_delete_stream_or_consumer() {
    let nats = provisioned(None).await;
    let device = peer(&nats, "device", "DEVICE_PASSWORD").await;
    device
        .publish(SENSOR_001, temperature("sensor-001", now_ns()))
        .await;
    let js = device.js();
    let created = js
        .create_stream(jetstream::stream::Config {
            name: "STOLEN".into(),
            subjects: vec!["stolen.>".into()],
            ..Default::default()
        })
        .await;
    device
        .api_refused(created, "$JS.API.STREAM.CREATE.STOLEN")
        .await;
    let stream = js.get_stream_no_info("TELEMETRY").await.expect("handle");
    let purged = stream.purge().await;
    device
        .api_refused(purged, "$JS.API.STREAM.PURGE.TELEMETRY")
        .await;
    let deleted = js.delete_stream("TELEMETRY").await;
    device
        .api_refused(deleted, "$JS.API.STREAM.DELETE.TELEMETRY")
        .await;
    let deleted = stream.delete_consumer("jetscale").await;
    device
        .api_refused(deleted, "$JS.API.CONSUMER.DELETE.TELEMETRY.jetscale")
        .await;
    let created = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("mine".into()),
            ..Default::default()
        })
        .await;
    device
        .api_refused(created, "$JS.API.CONSUMER.CREATE.TELEMETRY")
        .await;
    let admin = peer(&nats, "admin", "ADMIN_PASSWORD").await;
    assert_eq!(
        stream_messages(&admin).await,
        1,
        "the stream kept its message"
    );
    let kept = admin.js().get_stream("TELEMETRY").await.expect("stream");
    kept.consumer_info("jetscale")
        .await
        .expect("the consumer is still there");
    assert!(admin.js().get_stream("STOLEN").await.is_err());
}

/// Allow: the admin provisions with `jetscale setup`; devices publish; the collector runs
/// the real pipeline as its least-privileged user, stores every row and acknowledges every
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_admin_sets_up_and_collector_consumes_and_acks() {
    let nats = authz_server(&spec(None, "otel-collector")).await;
    let database = support::fresh_database("authz_collect").await;
    // The admin runs the real `jetscale setup` (NATS side).
    let mut setup = jetscale(&["setup", "--nats-only", "--replicas", "1"]);
    setup
        .env(
            "JETSCALE_NATS_URL",
            url_as(&nats, "admin", "ADMIN_PASSWORD"),
        )
        .env("JETSCALE_DATABASE_URL", &database);
    succeeds(&mut setup).await;
    // The default consumer is `jetscale`; this block is for `otel-collector` (the name the
    // IoT pipeline design's config gives it): set it up the way the collector will look for it.
    provision_as_admin(&nats, "otel-collector").await;

    let device = peer(&nats, "device", "DEVICE_PASSWORD").await;
    let start = now_ns();
    for i in 0..20 {
        let id = format!("sensor-{:03}", i % 4);
        device
            .publish(
                &format!("telemetry.metrics.{id}"),
                temperature(&id, start + i),
            )
            .await;
    }

    let mut collector = settings(&url_as(&nats, "collector", "COLLECTOR_PASSWORD"), &database);
    collector.consumer.name = "otel-collector".into();
    let report = support::collect_until_idle(&collector).await;
    assert_eq!(report.messages, 20);
    assert_eq!(report.rows, 20);
    let stored = count_rows(&support::db(&database).await, "iot_metrics").await;
    assert_eq!(stored, 20);
    let admin = peer(&nats, "admin", "ADMIN_PASSWORD").await;
    let stream = admin.js().get_stream("TELEMETRY").await.expect("stream");
    let info = stream
        .consumer_info("otel-collector")
        .await
        .expect("consumer info");
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.num_ack_pending, 0, "every message acknowledged");
    assert_eq!(info.ack_floor.stream_sequence, 20);
    // The setup binary's own consumer (the default name) is untouched by the collector.
    stream
        .consumer_info("jetscale")
        .await
        .expect("setup created it");
}

/// Deny: the collector cannot publish telemetry, delete or purge the stream, create or
/// delete consumers, or pull from a consumer that is not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_collector_cannot_publish_telemetry_or_delete_the_stream() {
    let nats = provisioned(None).await;
    let admin = peer(&nats, "admin", "ADMIN_PASSWORD").await;
    admin
        .js()
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some("someone-else".into()),
                ..Default::default()
            },
            "TELEMETRY",
        )
        .await
        .expect("admin creates a second consumer");
    let collector = peer(&nats, "collector", "COLLECTOR_PASSWORD").await;
    collector
        .publish_refused(SENSOR_001, temperature("sensor-001", now_ns()))
        .await;
    for subject in [
        "$JS.API.STREAM.DELETE.TELEMETRY",
        "$JS.API.STREAM.PURGE.TELEMETRY",
        "$JS.API.CONSUMER.DELETE.TELEMETRY.jetscale",
        "$JS.API.CONSUMER.CREATE.TELEMETRY",
        "$JS.API.CONSUMER.DURABLE.CREATE.TELEMETRY.jetscale",
        "$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.someone-else",
        "$JS.ACK.TELEMETRY.someone-else.1.1.1.0.0",
        "$JS.API.STREAM.MSG.DELETE.TELEMETRY",
    ] {
        collector.publish_refused(subject, "{}").await;
    }
    // Through the JetStream API as a client would do it, too.
    let js = jetstream::new(collector.nc.clone());
    assert!(js.delete_stream("TELEMETRY").await.is_err());
    // The collector does not subscribe to the shared inbox either.
    let mut sub = collector
        .nc
        .subscribe("_INBOX.>")
        .await
        .expect("subscribe call");
    collector.expect_violation("subscription", "_INBOX.>").await;
    drop(sub.unsubscribe().await);
    assert_eq!(stream_messages(&admin).await, 0, "nothing was published");
    let stream = admin
        .js()
        .get_stream("TELEMETRY")
        .await
        .expect("stream survived");
    stream
        .consumer_info("jetscale")
        .await
        .expect("consumer survived");
}
