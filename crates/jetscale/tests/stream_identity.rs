//! The delivery ledger is keyed to the stream's identity: a recreated stream, or one whose
//! last sequence is below what was committed, stops the collector with an explanation
//! instead of silently skipping new messages as duplicates.

mod common;

use std::time::Duration;

async fn run(
    settings: &jetscale::config::Settings,
    accept_new_stream: bool,
) -> Result<jetscale::pipeline::RunReport, String> {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let options = jetscale::pipeline::RunOptions {
        exit_when_idle: Some(Duration::from_millis(1000)),
        accept_new_stream,
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        jetscale::pipeline::run(settings, &options, Default::default(), rx),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_stops_the_collector_until_accepted() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("recreated").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    common::simulate(&nats.server.url(), 10, 3).await;
    assert_eq!(run(&settings, false).await.unwrap().messages, 30);

    // Delete and recreate the stream: its sequences start at 1 again.
    let client = async_nats::connect(nats.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream("TELEMETRY").await.unwrap();
    common::provision_stream(&settings).await;
    common::simulate(&nats.server.url(), 10, 2).await;

    let err = run(&settings, false).await.unwrap_err();
    assert!(err.contains("was recreated"), "{err}");
    assert!(err.contains("--accept-new-stream"), "{err}");

    // Accepted: the new stream's messages are stored, none skipped as duplicates of the old.
    let report = run(&settings, true).await.unwrap();
    assert_eq!(report.messages, 20);
    assert_eq!(report.duplicates, 0);
    let db = common::db(&db_url).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM iot_metrics", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_went_backwards_stops_the_collector() {
    let nats = common::nats().await;
    let db_url = common::fresh_database("backwards").await;
    let settings = common::settings(&nats.server.url(), &db_url);
    common::provision_stream(&settings).await;
    common::simulate(&nats.server.url(), 5, 2).await;
    run(&settings, false).await.unwrap();
    // What a restored backup looks like from here: the ledger holds sequences the stream
    // never reached.
    let db = common::db(&db_url).await;
    db.batch_execute("INSERT INTO jetscale_ledger (stream_key, seqs) SELECT stream_key, int8range(100, 200) FROM jetscale_streams")
        .await
        .unwrap();
    let err = run(&settings, false).await.unwrap_err();
    assert!(err.contains("went backwards"), "{err}");
    assert!(err.contains("199"), "{err}");
}
