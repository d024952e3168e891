//! SIGTERM stops the collector promptly even when NATS is gone: nothing at shutdown may wait
//! for a reconnection that never comes.

use crate::support::{self, jetscale};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_collector_when_nats_is_gone() {
    let mut stack = support::stack("shutdown").await;
    stack.simulate(20, 5).await;
    let mut collector = jetscale(&[
        "collect",
        "--nats-url",
        &stack.nats_url(),
        "--database-url",
        &stack.db_url,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start the collector");
    // Wait until it has stored the backlog, so it is past start-up.
    let db = stack.db().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The table appears only once the collector has migrated the schema.
        let n: i64 = db
            .query_one("SELECT count(*) FROM iot_metrics", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "collector did not store the backlog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.nats.server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = collector.id().expect("the collector runs") as i32;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), collector.wait())
        .await
        .expect("the collector exits within 30 s of SIGTERM with NATS down")
        .expect("wait for the collector");
    assert!(status.success(), "{status}");
}
