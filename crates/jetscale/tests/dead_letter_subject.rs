//! `receivers.nats.dead_letter_subject`: a dead letter committed to the table is also
//! published there, whole, with its reason, subject and stream sequence as headers.

use crate::support;
use futures::StreamExt;
use jetscale::pipeline::dead_letters::{
    REASON_HEADER, SEQUENCE_HEADER, STREAM_HEADER, SUBJECT_HEADER,
};
use std::time::Duration;

const DEAD_LETTERS: &str = "jetscale.dead_letters";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_published_after_they_are_stored() {
    let nats = support::nats().await;
    let db_url = support::fresh_database("dl_subject").await;
    let mut settings = support::settings(&nats.server.url(), &db_url);
    settings.dead_letter_subject = Some(DEAD_LETTERS.into());
    support::provision_stream(&settings).await;

    let watcher = async_nats::connect(nats.server.url()).await.unwrap();
    let mut dead_letters = watcher.subscribe(DEAD_LETTERS).await.unwrap();
    watcher.flush().await.unwrap();

    support::simulate(&nats.server.url(), 3, 4).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.server.url()).await.unwrap());
    // Larger than the table keeps (64 KiB): the subject gets the original bytes whole.
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("telemetry.metrics.sensor-bad", b"{not json".to_vec()),
        (
            "telemetry.logs.sensor-big",
            [&b"{\"resourceLogs\": ["[..], &[b'x'; 70_000]].concat(),
        ),
    ];
    for (subject, payload) in &poison {
        js.publish(*subject, payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let report = support::collect_until_idle(&settings).await;
    assert_eq!(report.dead_letters, 2);
    assert_eq!(report.messages, 12 + 2);
    assert_eq!(report.rows, 12 * 3);

    let db = support::db(&db_url).await;
    let rows = db
        .query(
            "SELECT stream_seq, subject, reason, payload, payload_size FROM jetscale_dead_letters ORDER BY stream_seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), poison.len());
    for (row, (subject, payload)) in rows.iter().zip(&poison) {
        let seq: i64 = row.get(0);
        let reason: String = row.get(2);
        let stored: Vec<u8> = row.get(3);
        assert_eq!(row.get::<_, String>(1), *subject);
        assert_eq!(row.get::<_, i32>(4) as usize, payload.len());
        assert_eq!(stored[..], payload[..stored.len()]);

        let published = tokio::time::timeout(Duration::from_secs(10), dead_letters.next())
            .await
            .expect("the dead letter is published within seconds of its commit")
            .expect("subscription open");
        assert_eq!(published.payload[..], payload[..], "{subject}");
        let headers = published.headers.expect("a dead letter carries headers");
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert!(!reason.is_empty());
        assert_eq!(header(REASON_HEADER), Some(reason), "{subject}");
        assert_eq!(header(SUBJECT_HEADER).as_deref(), Some(*subject));
        assert_eq!(header(STREAM_HEADER), Some(settings.stream.name.clone()));
        assert_eq!(header(SEQUENCE_HEADER), Some(seq.to_string()));
    }
    // Good messages are not published there, nor is anything twice.
    let more = tokio::time::timeout(Duration::from_millis(500), dead_letters.next()).await;
    assert!(more.is_err(), "only the dead letters: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_subject_the_stream_captures_stops_the_collector_at_start() {
    let nats = support::nats().await;
    // The stream's subjects are checked before the database is touched.
    let mut settings = support::settings(&nats.server.url(), "postgresql://127.0.0.1:1/none");
    settings.dead_letter_subject = Some("telemetry.dead_letters".into());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let options = jetscale::pipeline::RunOptions::default();
    let run = jetscale::pipeline::run(&settings, &options, Default::default(), stopped);
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("refused at once")
        .expect_err("a dead-letter subject inside the stream is refused");
    let message = err.to_string();
    assert!(
        message.contains("dead_letter_subject") && message.contains("telemetry.>"),
        "{message}"
    );
}
