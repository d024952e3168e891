//! The layer's background task: publishes queued records with pipelined acks.

use super::{Command, Counters};
use crate::{Error, Message, PublishAck, Publisher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

/// Runs until every sender (the layer and its handles) is gone, then waits for the acks
/// still pending.
pub(super) async fn run(
    publisher: Publisher,
    mut rx: mpsc::Receiver<Command>,
    counters: Arc<Counters>,
) {
    let mut pending: JoinSet<Result<PublishAck, Error>> = JoinSet::new();
    while let Some(command) = rx.recv().await {
        let message = match command {
            Command::Flush(done) => {
                while let Some(joined) = pending.join_next().await {
                    account(&counters, joined);
                }
                let _ = done.send(());
                continue;
            }
            Command::Span { span, run_id } => Message::span_with_run_id(&span, &run_id),
            Command::Log(log) => Message::log(&log),
        };
        match message {
            // Waits for an in-flight slot, so a slow stream slows this task, fills the
            // channel, and the layer drops instead of the service waiting.
            Ok(message) => match publisher.start(message).await {
                Ok(confirm) => {
                    pending.spawn(confirm);
                }
                Err(err) => account(&counters, Ok(Err(err))),
            },
            Err(err) => account(&counters, Ok(Err(err))),
        }
        while let Some(joined) = pending.try_join_next() {
            account(&counters, joined);
        }
    }
    while let Some(joined) = pending.join_next().await {
        account(&counters, joined);
    }
}

fn account(counters: &Counters, joined: Result<Result<PublishAck, Error>, JoinError>) {
    let err = match joined {
        Ok(Ok(_)) => {
            counters.published.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(Err(err)) => err.to_string(),
        Err(err) => err.to_string(),
    };
    let failed = counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
    // Logged on the 1st, 2nd, 4th, 8th, … failure: visible without flooding when NATS is
    // down. The target is ignored by the layer itself, so this never loops back.
    if failed.is_power_of_two() {
        tracing::warn!(
            target: "jetscale_sdk",
            failed,
            error = %err,
            "jetscale layer could not publish a telemetry record"
        );
    }
}
