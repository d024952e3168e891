//! (3) nats-server restarted cleanly, killed, and stopped while the collector commits, with
//! explicit and with cumulative acks.

use super::publisher::plan;
use super::rig::Rig;
use super::soak;
use std::time::Duration;

/// (3) nats-server (file store) restarted while the collector consumes and the publisher
/// publishes: once cleanly (SIGTERM), once killed (SIGKILL), both survived by the same
/// collector process; then stopped while the collector commits what it had fetched, the
/// collector killed before NATS comes back (its acks are lost: committed but unacknowledged),
/// and a new collector must skip those redeliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted() {
    let messages = if soak() { 60_000 } else { 15_000 };
    restarted_nats_server("nats", "explicit", messages).await;
}

/// (3b) The same with cumulative acks (`ack_policy: all`): deliveries lost on a reconnect
/// leave gaps in the consumer sequence, and acks must wait until those are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_acking_cumulatively() {
    let messages = if soak() { 60_000 } else { 12_000 };
    restarted_nats_server("nats_all", "all", messages).await;
}

async fn restarted_nats_server(name: &'static str, ack_policy: &str, messages: u64) {
    let (mut nats, mut rig) = Rig::on_one_server(name, ack_policy).await;
    let mut running = vec![rig.collector("collector", None)];
    let publisher = rig.spawn_publisher(plan(messages, 40, 2_500.0, 3));
    let total_rows = 3 * messages as i64;

    let before = rig.wait_rows(total_rows * 15 / 100, &mut running).await;
    nats.server.restart().await.expect("nats-server restarts");
    eprintln!("[{name}] restarted (SIGTERM) at {before} rows");

    let before = rig.wait_rows(total_rows * 35 / 100, &mut running).await;
    nats.server.kill();
    nats.server
        .start_again()
        .await
        .expect("nats-server starts again");
    eprintln!("[{name}] killed (SIGKILL) and started at {before} rows");

    let before = rig.wait_rows(total_rows * 55 / 100, &mut running).await;
    nats.server.stop().await;
    // The collector writes the batch it holds; its acks have nowhere to go.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = rig.stored_count().await;
    running[0].sigkill().await;
    nats.server
        .start_again()
        .await
        .expect("nats-server starts again");
    eprintln!(
        "[{name}] stopped at {before} rows, collector killed at {during} rows while NATS was down, NATS started"
    );
    let mut second = vec![rig.collector("collector-after", None)];
    rig.finish(publisher, &mut second).await;
}
