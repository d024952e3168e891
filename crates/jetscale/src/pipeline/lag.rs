//! The lag poller: asks JetStream every few seconds how far behind the consumer is, in
//! messages and in the age of its oldest unacknowledged message, for the self-metrics.
//! Off the hot path: one consumer-info request (and one message look-up while there is a
//! backlog) per interval, whatever the traffic.

use crate::exporters::postgres::series::SeriesCache;
use crate::self_metrics::Counters;
use async_nats::jetstream::stream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the backlog is polled: a scrape every 15 s sees a fresh figure.
const INTERVAL: Duration = Duration::from_secs(2);

pub(super) struct Lag {
    pub js_stream: stream::Stream,
    pub consumer: String,
    pub series: Option<Arc<SeriesCache>>,
    pub counters: Arc<Counters>,
}

impl Lag {
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(cache) = &self.series {
                let lag = &self.counters.lag;
                lag.series_cached
                    .store(cache.len() as u64, Ordering::Relaxed);
            }
            // A failed poll keeps the last figures: NATS being away shows in /health/ready.
            if let Err(e) = self.poll().await {
                tracing::debug!(error = %e, "consumer lag not polled");
            }
        }
    }

    async fn poll(&mut self) -> Result<(), String> {
        let info = self
            .js_stream
            .consumer_info(&self.consumer)
            .await
            .map_err(|e| e.to_string())?;
        let lag = &self.counters.lag;
        lag.pending.store(info.num_pending, Ordering::Relaxed);
        lag.ack_pending
            .store(info.num_ack_pending as u64, Ordering::Relaxed);
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            lag.oldest_unacked_ms.store(0, Ordering::Relaxed);
            return Ok(());
        }
        // The oldest message not acknowledged is the first after the ack floor (or the
        // stream's first, if retention removed those).
        let first = self
            .js_stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .first_sequence;
        let oldest = (info.ack_floor.stream_sequence + 1).max(first);
        let message = self
            .js_stream
            .get_raw_message(oldest)
            .await
            .map_err(|e| e.to_string())?;
        let age = time::OffsetDateTime::now_utc() - message.time;
        let age_ms = u64::try_from(age.whole_milliseconds()).unwrap_or(0);
        lag.oldest_unacked_ms.store(age_ms, Ordering::Relaxed);
        Ok(())
    }
}
