//! The one place that acknowledges JetStream deliveries, and only from a committed write's
//! outcome (or, while a write is being retried, to say the work is still in progress).
//!
//! Each delivery is acked by its own reply subject, never with `AckAll`, which would
//! acknowledge other collectors' deliveries on a shared consumer.

use async_nats::{Client, Subject};
use std::time::Duration;

/// How long to wait for acks to reach the server. A flush waits for a reconnection when NATS
/// is down; an ack that does not get through only means a redelivery the ledger skips.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

const ACK: &[u8] = b"+ACK";
const IN_PROGRESS: &[u8] = b"+WPI";

/// Acknowledges every delivery of a committed batch. A lost ack is harmless: the message
/// is redelivered and the ledger skips it.
pub async fn committed(client: &Client, replies: &[Subject]) {
    for reply in replies {
        if let Err(e) = client
            .publish(reply.clone(), bytes::Bytes::from_static(ACK))
            .await
        {
            tracing::debug!(error = %e, "ack not sent; the message will be redelivered and skipped");
        }
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "acks not flushed; they will be redelivered and skipped")
        }
        Err(_) => tracing::warn!(
            "NATS unreachable: acks not confirmed; the messages will be redelivered and skipped"
        ),
    }
}

/// Tells JetStream the deliveries are still being worked on (the database is slow or
/// down), so they are not redelivered or counted towards MaxDeliver meanwhile.
pub async fn in_progress(client: &Client, replies: &[Subject]) {
    for reply in replies {
        let _ = client
            .publish(reply.clone(), bytes::Bytes::from_static(IN_PROGRESS))
            .await;
    }
    let _ = client.flush().await;
}
