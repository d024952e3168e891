//! (6) A three-node NATS cluster whose stream leader is SIGKILLed and brought back.

use super::publisher::{plan, Plan, SMALL_BAD};
use super::rig::Rig;
use super::soak;
use crate::support;
use std::time::Duration;

/// (6) A three-node cluster, stream with 3 replicas: the stream leader is SIGKILLed while
/// messages are published and collected, and brought back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_and_restarted() {
    let messages = if soak() { 40_000 } else { 8_000 };
    let dir = support::temp_dir();
    let mut nodes = jetscale::dev::start_cluster(dir.path(), 3)
        .await
        .expect("a three-node nats cluster");
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let db = support::fresh_database("faults_cluster").await;
    let mut rig = Rig::new("cluster", urls.join(","), db, 3).await;
    let mut running = vec![rig.collector("collector", None)];
    // The cluster's servers keep the default 1 MiB max_payload: no 2 MiB message.
    let publisher = rig.spawn_publisher(Plan {
        bad: SMALL_BAD,
        ..plan(messages, 40, 1_500.0, 7)
    });
    rig.wait_rows(3 * messages as i64 / 20, &mut running).await;
    let js = rig.js().await;
    let mut stream = js
        .get_stream(&rig.settings.stream.name)
        .await
        .expect("stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(
        info.config.num_replicas, 3,
        "the stream must have 3 replicas"
    );
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let index: usize = leader
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("node name n1..n3")
        - 1;
    let before = rig.stored_count().await;
    nodes[index].kill();
    eprintln!("[cluster] killed the stream leader {leader} at {before} rows");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    running[0].assert_running("while a node was down");
    nodes[index].start_again().await.expect("node starts again");
    nodes[index]
        .wait_for_meta_leader(Duration::from_secs(30))
        .await
        .expect("the node rejoins");
    eprintln!("[cluster] {leader} is back");
    rig.finish(publisher, &mut running).await;
    drop(nodes);
}
