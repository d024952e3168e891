//! The delivery ledger is keyed to the stream's identity: a recreated stream, or one whose
//! last sequence is below what was committed, stops the collector with an explanation
//! instead of silently skipping new messages as duplicates.

use crate::support::{self, count_rows, provision_stream, run_collector};
use jetscale::config::Settings;
use jetscale::pipeline::{RunOptions, RunReport};
use std::time::Duration;

async fn run(settings: &Settings, accept_new_stream: bool) -> Result<RunReport, String> {
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_millis(1000)),
        accept_new_stream,
        ..Default::default()
    };
    run_collector(settings, &options, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_stops_the_collector_until_accepted() {
    let stack = support::stack("recreated").await;
    stack.simulate(10, 3).await;
    let first = run(&stack.settings, false).await.expect("first run");
    assert_eq!(first.messages, 30);

    // Delete and recreate the stream: its sequences start at 1 again.
    let js = stack.js().await;
    js.delete_stream("TELEMETRY").await.expect("delete stream");
    provision_stream(&stack.settings).await;
    stack.simulate(10, 2).await;

    let err = run(&stack.settings, false)
        .await
        .expect_err("a recreated stream stops the collector");
    assert!(err.contains("was recreated"), "{err}");
    assert!(err.contains("--accept-new-stream"), "{err}");

    // Accepted: the new stream's messages are stored, none skipped as duplicates of the old.
    let report = run(&stack.settings, true).await.expect("accepted run");
    assert_eq!(report.messages, 20);
    assert_eq!(report.duplicates, 0);
    assert_eq!(count_rows(&stack.db().await, "iot_metrics").await, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_went_backwards_stops_the_collector() {
    let stack = support::stack("backwards").await;
    stack.simulate(5, 2).await;
    run(&stack.settings, false).await.expect("first run");
    // What a restored backup looks like from here: the ledger holds sequences the stream
    // never reached.
    stack
        .db()
        .await
        .batch_execute("INSERT INTO jetscale_ledger (stream_key, seqs) SELECT stream_key, int8range(100, 200) FROM jetscale_streams")
        .await
        .expect("ledger beyond the stream");
    let err = run(&stack.settings, false)
        .await
        .expect_err("a stream behind the ledger stops the collector");
    assert!(err.contains("went backwards"), "{err}");
    assert!(err.contains("199"), "{err}");
}
