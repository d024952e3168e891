//! The checks every scenario ends with: nothing lost, nothing twice, every malformed message
//! dead-lettered once, the ledger whole, the consumer done.

use super::publisher::{Published, Row};
use super::rig::Rig;
use crate::support::{self, query};
use std::collections::BTreeSet;

impl Rig {
    /// The assertions every scenario ends with.
    pub async fn verify(&self, published: &Published) {
        let name = self.name;
        let fail = |what: String| -> ! {
            panic!("[{name}] {what}\n{}", self.log_tails(25));
        };

        // No collector run panicked (a killed one simply stops mid-line).
        for log in self.logs() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("panicked at") {
                fail(format!("{} shows a panic", log.display()));
            }
        }

        // Every acknowledged message is in the stream, and the consumer is done with all.
        let js = self.js().await;
        let mut stream = js
            .get_stream(&self.settings.stream.name)
            .await
            .expect("stream");
        let state = stream.info().await.expect("stream info").state.clone();
        let last_seq = state.last_sequence;
        if state.messages != published.total()
            || published.seqs.iter().next_back() != Some(&last_seq)
        {
            fail(format!(
                "the stream holds {} messages up to sequence {last_seq}, but {} were acknowledged (highest {:?})",
                state.messages,
                published.total(),
                published.seqs.iter().next_back()
            ));
        }
        let backlog = self.consumer_backlog(&js).await;
        if backlog != Some((0, 0)) {
            fail(format!(
                "the consumer still has (pending, unacked) = {backlog:?}"
            ));
        }

        let db = support::db(&self.db_url).await;

        // Metrics: the multiset of rows is exactly what was sent.
        let rows = query(
            &db,
            "SELECT device_id, location, metric_name, (extract(epoch FROM time) * 1000000)::int8, value, unit
             FROM iot_metrics",
        )
        .await;
        let mut stored: Vec<Row> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get::<_, f64>(4).to_bits(),
                    r.get(5),
                )
            })
            .collect();
        let mut expected = published.rows.clone();
        stored.sort_unstable();
        expected.sort_unstable();
        if stored != expected {
            let (missing, extra) = multiset_diff(&expected, &stored);
            fail(format!(
                "iot_metrics differs from what was published: {} rows stored, {} expected; {} missing (first: {:?}), {} extra or duplicated (first: {:?})",
                stored.len(),
                expected.len(),
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                extra.len(),
                extra.iter().take(5).collect::<Vec<_>>()
            ));
        }
        let count = support::count_rows(&db, "iot_metrics").await;
        if count as u64 != 3 * published.valid {
            fail(format!(
                "count(*) is {count}, expected 3 x {} valid messages",
                published.valid
            ));
        }

        // Dead letters: each malformed message once, under its own sequence, with a reason.
        let dead = query(
            &db,
            "SELECT stream_seq, reason, payload_size FROM jetscale_dead_letters ORDER BY stream_seq",
        )
        .await;
        let dead_seqs: Vec<u64> = dead.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        let malformed_seqs: Vec<u64> = published.malformed.keys().copied().collect();
        if dead_seqs != malformed_seqs {
            let dead_set: BTreeSet<u64> = dead_seqs.iter().copied().collect();
            let missing: Vec<_> = published
                .malformed
                .iter()
                .filter(|(s, _)| !dead_set.contains(s))
                .take(10)
                .collect();
            fail(format!(
                "dead letters hold sequences {} (first {:?}), the malformed messages were {} (first {:?}); malformed and missing: {missing:?}",
                dead_seqs.len(),
                dead_seqs.iter().take(10).collect::<Vec<_>>(),
                malformed_seqs.len(),
                malformed_seqs.iter().take(10).collect::<Vec<_>>()
            ));
        }
        for row in &dead {
            let seq = row.get::<_, i64>(0) as u64;
            let reason: String = row.get(1);
            let size: i32 = row.get(2);
            let (kind, sent_size) = published.malformed[&seq];
            if reason.trim().is_empty() {
                fail(format!(
                    "the dead letter of sequence {seq} ({kind:?}) has no reason"
                ));
            }
            if size as usize != sent_size {
                fail(format!(
                    "the dead letter of sequence {seq} ({kind:?}) says {size} bytes, {sent_size} were sent"
                ));
            }
        }

        // The ledger: every stream sequence committed once, no gap, no overlap.
        let sql = "SELECT lower(seqs), upper(seqs) FROM jetscale_ledger ORDER BY 1";
        let ranges = query(&db, sql).await;
        let mut next = 1i64;
        for r in &ranges {
            let (lower, upper): (i64, i64) = (r.get(0), r.get(1));
            if lower != next {
                fail(format!(
                    "the ledger jumps from {next} to range [{lower}, {upper}): sequences {} are {}",
                    if lower > next {
                        format!("{next}..{lower}")
                    } else {
                        format!("{lower}..{next}")
                    },
                    if lower > next {
                        "not committed"
                    } else {
                        "committed twice"
                    }
                ));
            }
            next = upper;
        }
        if next != last_seq as i64 + 1 {
            fail(format!(
                "the ledger ends at {next}, the stream at {}",
                last_seq + 1
            ));
        }
        eprintln!(
            "[{name}] verified: {} rows from {} valid messages exactly once, {} dead letters, ledger {} range(s) over 1..={last_seq}",
            stored.len(),
            published.valid,
            dead.len(),
            ranges.len()
        );
    }
}

/// Elements of `expected` not in `stored`, and of `stored` not in `expected` (both sorted),
/// counting multiplicity.
fn multiset_diff(expected: &[Row], stored: &[Row]) -> (Vec<Row>, Vec<Row>) {
    let (mut i, mut j) = (0, 0);
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    while i < expected.len() || j < stored.len() {
        match (expected.get(i), stored.get(j)) {
            (Some(e), Some(s)) if e == s => {
                i += 1;
                j += 1;
            }
            (Some(e), Some(s)) if e < s => {
                missing.push(e.clone());
                i += 1;
            }
            (Some(_), Some(s)) => {
                extra.push(s.clone());
                j += 1;
            }
            (Some(e), None) => {
                missing.push(e.clone());
                i += 1;
            }
            (None, Some(s)) => {
                extra.push(s.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (missing, extra)
}
