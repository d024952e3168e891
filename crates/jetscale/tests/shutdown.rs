//! SIGTERM stops the collector promptly even when NATS is gone: nothing at shutdown may wait
//! for a reconnection that never comes.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_collector_when_nats_is_gone() {
    let mut nats = common::nats().await;
    let db_url = common::fresh_database("shutdown").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    common::simulate(&nats.server.url(), 20, 5).await;
    let mut collector = tokio::process::Command::new(common::binary())
        .args([
            "collect",
            "--nats-url",
            &nats.server.url(),
            "--database-url",
            &db_url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until it has stored the backlog, so it is past start-up.
    let db = common::db(&db_url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
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
    nats.server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = collector.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), collector.wait())
        .await
        .expect("the collector exits within 30 s of SIGTERM with NATS down")
        .unwrap();
    assert!(status.success(), "{status}");
}
