//! The delivery ledger: which stream sequences have been committed, written in the same
//! transaction as their rows. JetStream delivers at least once; the ledger turns that into
//! exactly-once effect. Sequences are kept as ranges under an exclusion constraint, so two
//! collectors holding the same redelivered message can not both commit it (the database
//! decides, not a check-then-insert race), and old ranges collapse into one once every
//! consumer has acknowledged past them.

use super::schema::RelationNames;
use super::StoreError;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::{Client, GenericClient};

/// A stream's identity in the ledger: its name and creation time, so a recreated stream is
/// never mistaken for the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamKey(pub i32);

/// What the collector knows about the stream when it (re)connects.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub name: String,
    pub created: SystemTime,
    pub last_seq: u64,
}

fn micros(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64)
}

/// Registers the stream and consumer, and refuses to go on when the stream went backwards:
/// recreated under the same name, or its last sequence below what was already committed
/// (new messages would then be skipped as duplicates).
pub async fn register(
    client: &Client,
    names: &RelationNames,
    stream: &StreamState,
    consumer: &str,
    accept_new_stream: bool,
) -> Result<StreamKey, StoreError> {
    let streams = names.own("jetscale_streams");
    let created = micros(stream.created);
    let existing = client
        .query(
            &format!("SELECT stream_key, stream_created FROM {streams} WHERE stream_name = $1 ORDER BY stream_created"),
            &[&stream.name],
        )
        .await?;
    let mine = existing
        .iter()
        .find(|r| r.get::<_, SystemTime>(1) == created)
        .map(|r| StreamKey(r.get(0)));
    if mine.is_none() && !existing.is_empty() && !accept_new_stream {
        let previous: SystemTime = existing[existing.len() - 1].get(1);
        return Err(StoreError::StreamIdentity(format!(
            "stream {} was recreated (now created {}, jetscale committed messages of the stream created {}). \
             Its sequences start again, so nothing can be deduplicated against the old ones. \
             If this is intended, start the collector once with --accept-new-stream",
            stream.name,
            fmt_time(stream.created),
            fmt_time(previous)
        )));
    }
    let key = match mine {
        Some(key) => key,
        None => {
            let row = client
                .query_one(
                    &format!(
                        "INSERT INTO {streams} (stream_name, stream_created) VALUES ($1, $2)
                         ON CONFLICT (stream_name, stream_created) DO UPDATE SET stream_name = EXCLUDED.stream_name
                         RETURNING stream_key"
                    ),
                    &[&stream.name, &created],
                )
                .await?;
            StreamKey(row.get(0))
        }
    };
    let high = committed_high(client, names, key).await?;
    if high > stream.last_seq {
        return Err(StoreError::StreamIdentity(format!(
            "stream {} went backwards: its last sequence is {}, but jetscale already committed up to {}. \
             The stream lost data (restored from a backup, or a server lost unsynced writes); new messages \
             would be skipped as duplicates. Investigate before restarting; to start over, recreate the stream \
             and run with --accept-new-stream",
            stream.name, stream.last_seq, high
        )));
    }
    client
        .execute(
            &format!(
                "INSERT INTO {} (stream_key, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                names.own("jetscale_consumers")
            ),
            &[&key.0, &consumer],
        )
        .await?;
    Ok(key)
}

/// Takes the session-level advisory lock that makes this the only collector of `consumer`
/// (cumulative acks allow one per consumer); false if another session holds it.
/// Safety does not rest on it (cumulative acks are proven, see `ack::Cumulative`); it turns
/// a second collector, which would only stall both, into a clear error at start.
pub async fn claim_consumer(
    client: &Client,
    stream: &str,
    consumer: &str,
) -> Result<bool, StoreError> {
    let key = format!("jetscale ack_policy=all {stream}/{consumer}");
    // A collector restarted right after being killed may find its predecessor's database
    // session not yet ended: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1)::bigint)", &[&key])
            .await?;
        if row.get(0) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn fmt_time(t: SystemTime) -> String {
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    jetscale_model::flat::unix_nanos_to_rfc3339(ns)
}

/// The highest stream sequence committed for the stream (0 when none).
pub async fn committed_high(
    client: &impl GenericClient,
    names: &RelationNames,
    key: StreamKey,
) -> Result<u64, StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max(upper(seqs)) - 1, 0) FROM {} WHERE stream_key = $1",
                names.own("jetscale_ledger")
            ),
            &[&key.0],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Turns sorted, distinct sequences into half-open ranges `[lower, upper)`.
pub fn ranges(sorted: &[u64]) -> (Vec<i64>, Vec<i64>) {
    let mut lower = Vec::new();
    let mut upper = Vec::new();
    for &seq in sorted {
        let seq = seq as i64;
        match upper.last_mut() {
            Some(u) if *u == seq => *u = seq + 1,
            _ => {
                lower.push(seq);
                upper.push(seq + 1);
            }
        }
    }
    (lower, upper)
}

/// The committed ranges that overlap `[min, max]`.
pub async fn committed_within(
    client: &impl GenericClient,
    names: &RelationNames,
    key: StreamKey,
    min: u64,
    max: u64,
) -> Result<Vec<(u64, u64)>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT lower(seqs), upper(seqs) FROM {} WHERE stream_key = $1 AND seqs && int8range($2, $3)",
                names.own("jetscale_ledger")
            ),
            &[&key.0, &(min as i64), &(max as i64 + 1)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0).max(0) as u64,
                r.get::<_, i64>(1).max(0) as u64,
            )
        })
        .collect())
}

/// Records sequences as committed. Fails with an exclusion violation when another
/// transaction committed any of them first.
pub async fn record(
    client: &impl GenericClient,
    names: &RelationNames,
    key: StreamKey,
    sorted: &[u64],
) -> Result<(), StoreError> {
    let (lower, upper) = ranges(sorted);
    client
        .execute(
            &format!(
                "INSERT INTO {} (stream_key, seqs) SELECT $1, int8range(l, u) FROM unnest($2::int8[], $3::int8[]) AS t(l, u)",
                names.own("jetscale_ledger")
            ),
            &[&key.0, &lower, &upper],
        )
        .await?;
    Ok(())
}

/// Records this consumer's acknowledgement floor and collapses every range below the lowest
/// floor of all consumers of the stream into one: those messages can not be redelivered, and
/// the collapsed range still deduplicates a replay. Returns the ranges left.
pub async fn prune(
    client: &mut Client,
    names: &RelationNames,
    key: StreamKey,
    consumer: &str,
    ack_floor: u64,
) -> Result<i64, StoreError> {
    let ledger = names.own("jetscale_ledger");
    let consumers = names.own("jetscale_consumers");
    let tx = client.transaction().await?;
    tx.execute(
        &format!("UPDATE {consumers} SET ack_floor = greatest(ack_floor, $3), updated_at = now() WHERE stream_key = $1 AND consumer = $2"),
        &[&key.0, &consumer, &(ack_floor as i64)],
    )
    .await?;
    // One pruner at a time per stream; others skip this round.
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtext('jetscale.ledger'), $1)",
            &[&key.0],
        )
        .await?
        .get(0);
    if locked {
        let floor: Option<i64> = tx
            .query_one(
                &format!("SELECT min(ack_floor) + 1 FROM {consumers} WHERE stream_key = $1"),
                &[&key.0],
            )
            .await?
            .get(0);
        let straddling: Option<i64> = match floor {
            Some(f) => tx
                .query_one(
                    &format!("SELECT min(lower(seqs)) FROM {ledger} WHERE stream_key = $1 AND upper(seqs) > $2"),
                    &[&key.0, &f],
                )
                .await?
                .get(0),
            None => None,
        };
        let cut = match (floor, straddling) {
            (Some(f), Some(s)) => f.min(s),
            (Some(f), None) => f,
            (None, _) => 0,
        };
        if cut > 1 {
            tx.execute(
                &format!("DELETE FROM {ledger} WHERE stream_key = $1 AND upper(seqs) <= $2"),
                &[&key.0, &cut],
            )
            .await?;
            tx.execute(
                &format!("INSERT INTO {ledger} (stream_key, seqs) VALUES ($1, int8range(1, $2))"),
                &[&key.0, &cut],
            )
            .await?;
        }
    }
    let left: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {ledger} WHERE stream_key = $1"),
            &[&key.0],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_compact() {
        assert_eq!(
            ranges(&[1, 2, 3, 7, 8, 10]),
            (vec![1, 7, 10], vec![4, 9, 11])
        );
        assert_eq!(ranges(&[]), (vec![], vec![]));
    }
}
