//! (4) Malformed messages among valid ones: each dead-lettered once, with a reason that says
//! what was wrong.

use super::publisher::{plan, Bad, ALL_BAD};
use super::rig::Rig;
use super::soak;
use crate::support;
use std::collections::{BTreeMap, BTreeSet};

/// (4) About 1 in 100 messages malformed in every way the suite knows, among valid ones: each
/// is dead-lettered once with a reason that says what was wrong, nothing valid is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered() {
    let messages = if soak() { 100_000 } else { 12_000 };
    let (_nats, mut rig) = Rig::on_one_server("malformed", "explicit").await;
    let mut running = vec![rig.collector("collector", None)];
    let publisher = rig.spawn_publisher(plan(messages, 50, 20_000.0, 4));
    let published = rig.finish(publisher, &mut running).await;
    assert!(
        published.malformed.len() as u64 >= messages / 200,
        "too few malformed messages"
    );

    // Each kind is there, and its reason names the problem.
    let db = support::db(&rig.db_url).await;
    let mut reasons: BTreeMap<Bad, BTreeSet<String>> = BTreeMap::new();
    let sql = "SELECT stream_seq, reason FROM jetscale_dead_letters";
    for row in support::query(&db, sql).await {
        let seq = row.get::<_, i64>(0) as u64;
        let reason: String = row.get(1);
        let short: String = reason.chars().take(100).collect();
        reasons
            .entry(published.malformed[&seq].0)
            .or_default()
            .insert(short);
    }
    for kind in ALL_BAD {
        let Some(seen) = reasons.get(kind) else {
            panic!("no {kind:?} message was published: raise the message count");
        };
        eprintln!(
            "[malformed] {kind:?}: {:?}",
            seen.iter().take(2).collect::<Vec<_>>()
        );
        // The reason starts with its class; the detail names the problem.
        let wanted: &[&str] = match kind {
            Bad::Huge => &["limit exceeded: max_message_bytes"],
            Bad::UnknownShape => &["unknown format"],
            // Cut before the `resourceMetrics` key is complete, it is no known format at all.
            Bad::Truncated => &["malformed", "unknown format"],
            // Without a content type, bytes that are not JSON may be tried as OTLP protobuf.
            Bad::ProtobufBlob => &["unknown format", "malformed"],
            _ => &["malformed"],
        };
        assert!(
            seen.iter().all(|r| wanted.iter().any(|w| r.starts_with(w))),
            "{kind:?} dead letters should start with one of {wanted:?}: {seen:?}"
        );
    }
}
