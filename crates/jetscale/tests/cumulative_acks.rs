//! Cumulative acks (`ack_policy: all`) against real nats-server and PostgreSQL processes:
//! one ack per committed run, and never one that covers a delivery not yet stored.

use crate::support::{self, assert_stored_as_sent, Stack};
use async_nats::jetstream::{self, consumer::AckPolicy};
use futures::StreamExt;
use jetscale::config::Settings;
use std::time::{Duration, Instant};

async fn acking_all(label: &str) -> Stack {
    support::stack_with(label, |settings| {
        settings.consumer.ack_policy = jetscale::config::AckPolicy::All;
        // Deliveries held elsewhere come back within seconds.
        settings.consumer.ack_wait = Duration::from_secs(3);
    })
    .await
}

/// The collector's durable pull consumer.
type Durable = jetstream::consumer::Consumer<jetstream::consumer::pull::Config>;

async fn consumer(settings: &Settings) -> Durable {
    support::jetstream(&settings.nats.url)
        .await
        .get_stream(&settings.stream.name)
        .await
        .expect("stream")
        .get_consumer(&settings.consumer.name)
        .await
        .expect("durable consumer")
}

/// Takes `count` deliveries from the consumer and never acks them, as a second collector
/// that died would.
async fn take_and_drop(consumer: &Durable, count: usize) -> Vec<u64> {
    // `batch`, not `fetch`: a fetch returns at once with whatever is available; this waits
    // until `count` deliveries have come.
    let mut batch = consumer
        .batch()
        .max_messages(count)
        .expires(Duration::from_secs(60))
        .messages()
        .await
        .expect("pull");
    let mut taken = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.expect("delivery");
        taken.push(message.info().expect("delivery info").stream_sequence);
    }
    taken
}

/// Runs a collector in the background until `stopped` turns true.
fn spawn_collector(
    settings: &Settings,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<jetscale::pipeline::RunReport, jetscale::pipeline::PipelineError>>
{
    let settings = settings.clone();
    tokio::spawn(async move {
        jetscale::pipeline::run(&settings, &Default::default(), Default::default(), stopped).await
    })
}

/// Waits until the consumer has delivered and had acked everything up to `last`.
async fn wait_all_acked(consumer: &mut Durable, last: u64) {
    let since = Instant::now();
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "not all acked up to {last}: floor {}, {} unacked, {} undelivered",
            info.ack_floor.stream_sequence,
            info.num_ack_pending,
            info.num_pending
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_collector_acking_cumulatively_stores_everything_once() {
    let stack = acking_all("ack_all").await;
    let mut consumer = consumer(&stack.settings).await;
    assert_eq!(
        consumer
            .info()
            .await
            .expect("consumer info")
            .config
            .ack_policy,
        AckPolicy::All
    );

    let sent = stack.simulate(300, 5).await;
    let report = stack.collect().await;
    assert_eq!(report.messages, 1500);

    let stored = assert_stored_as_sent(&stack.db().await, &[&sent]).await;
    assert_eq!(stored, 3 * 1500);

    let info = consumer.info().await.expect("consumer info");
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.ack_floor.stream_sequence, 1500);
    assert_eq!(stack.collect().await.messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_elsewhere_are_stored_before_a_cumulative_ack_covers_them() {
    let stack = acking_all("ack_all_gaps").await;
    let consumer = consumer(&stack.settings).await;

    // Before the collector starts: 5 of the first 500 deliveries are held by a client that
    // will never ack them (a collector that died).
    let sent = stack.simulate(100, 5).await;
    let before = take_and_drop(&consumer, 5).await;
    assert_eq!(before, [1, 2, 3, 4, 5]);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let collector = spawn_collector(&stack.settings, stopped);
    let mut consumer = consumer;
    wait_all_acked(&mut consumer, 500).await;

    // While it runs, acking cumulatively: 7 deliveries taken from the middle of the flow.
    // The pull request queues behind the collector's, so it is served while later messages
    // are still coming, and the collector sees later deliveries than the ones it missed.
    let thief = {
        let consumer = consumer.clone();
        tokio::spawn(async move { take_and_drop(&consumer, 7).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let more = stack.simulate(600, 5).await;
    let during = thief.await.expect("the thief's task");
    assert_eq!(during.len(), 7);
    assert!(
        during.iter().all(|seq| *seq > 500 && *seq < 3500),
        "taken mid-flow: {during:?}"
    );

    // Everything ends up acked: the held deliveries came back after ack_wait and were
    // stored; a cumulative ack sent before that would have acked them unstored.
    wait_all_acked(&mut consumer, 3500).await;
    stop.send(true).expect("stop the collector");
    collector
        .await
        .expect("the collector's task")
        .expect("collector ran without error");

    let stored = assert_stored_as_sent(&stack.db().await, &[&sent, &more]).await;
    assert_eq!(stored, 3 * 3500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_collector_on_a_cumulative_consumer_is_refused() {
    let stack = acking_all("ack_all_two").await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let first = spawn_collector(&stack.settings, stopped.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = jetscale::pipeline::run(
        &stack.settings,
        &Default::default(),
        Default::default(),
        stopped,
    )
    .await;
    let error = second
        .expect_err("a second collector must not start")
        .to_string();
    assert!(
        error.contains("one collector per consumer"),
        "the error says why: {error}"
    );
    stop.send(true).expect("stop the collector");
    first
        .await
        .expect("the first collector's task")
        .expect("the first collector ran on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_the_other_ack_policy_is_refused_with_the_way_out() {
    let stack = acking_all("ack_all_mismatch").await;

    let mut explicit = stack.settings.clone();
    explicit.consumer.ack_policy = jetscale::config::AckPolicy::Explicit;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let error =
        jetscale::pipeline::run(&explicit, &Default::default(), Default::default(), stopped)
            .await
            .expect_err("explicit acks on an ack-all consumer would ack undelivered work")
            .to_string();
    assert!(error.contains("ack policy"), "{error}");
    assert!(error.contains("name a new consumer"), "{error}");
}
