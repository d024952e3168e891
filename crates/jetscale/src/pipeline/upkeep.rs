//! The upkeep loop: every 30 s, the database work that is no batch's: partitions ahead and
//! retention, the native rollup, and pruning the delivery ledger below the consumer's ack
//! floor. Failures are logged and retried on the next round.

use crate::config::{AckPolicy, Settings};
use crate::exporters::postgres;
use crate::exporters::postgres::ledger::{self, StreamKey};
use crate::exporters::postgres::maintenance;
use crate::exporters::postgres::schema::{Backend, RelationNames};
use async_nats::jetstream;
use std::time::Duration;
use tokio::sync::watch;

/// How often a TimescaleDB collector looks for late hours to refresh: one indexed read of a
/// table that is empty unless rows arrived for closed hours.
pub(super) const LATE_HOURS_EVERY: Duration = Duration::from_secs(2);

/// What the upkeep loop works on: its own database connection (which also holds the
/// consumer's claim under cumulative acks) and the stream whose ack floor prunes the ledger.
pub(super) struct Upkeep {
    pub admin: tokio_postgres::Client,
    pub names: RelationNames,
    pub settings: Settings,
    pub backend: Backend,
    pub key: StreamKey,
    pub js_stream: jetstream::stream::Stream,
    pub shutdown: watch::Receiver<bool>,
}

impl Upkeep {
    /// Runs a round every 30 s until shutdown (or until aborted). On a TimescaleDB
    /// continuous aggregate it also refreshes the hours late rows made stale every
    /// [`LATE_HOURS_EVERY`]: real-time aggregation does not cover them, and a dashboard
    /// should not wait for the next round, let alone the policy's 30 minutes.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        let mut late = tokio::time::interval(LATE_HOURS_EVERY);
        late.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let late_hours = self.backend.continuous_aggregate();
        loop {
            let round = tokio::select! {
                _ = tick.tick() => true,
                _ = late.tick(), if late_hours => false,
            };
            if *self.shutdown.borrow() {
                return;
            }
            if self.admin.is_closed() && !self.reconnect().await {
                continue;
            }
            if round {
                self.maintain().await;
                self.prune_ledger().await;
            } else {
                self.refresh_late_hours().await;
            }
        }
    }

    async fn refresh_late_hours(&self) {
        match maintenance::refresh_late_hours(&self.admin, &self.names).await {
            Ok(0) => {}
            Ok(hours) => tracing::info!(hours, "continuous aggregate refreshed over late hours"),
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the continuous aggregate over late hours failed; will retry")
            }
        }
    }

    /// A new connection in place of a lost one, claiming the consumer again if the lost
    /// one held it; false while the database is unreachable.
    async fn reconnect(&mut self) -> bool {
        match postgres::connect(&self.settings.store).await {
            Ok(c) => self.admin = c,
            Err(_) => return false,
        }
        let settings = &self.settings;
        if settings.consumer.ack_policy == AckPolicy::All
            && !matches!(
                ledger::claim_consumer(&self.admin, &settings.stream.name, &settings.consumer.name)
                    .await,
                Ok(true)
            )
        {
            tracing::warn!(consumer = %settings.consumer.name, "could not reclaim the consumer after reconnecting to the database: another collector may have started; acks stay safe but may be held");
        }
        true
    }

    async fn maintain(&self) {
        let outcome = maintenance::run_once(
            &self.admin,
            &self.names,
            &self.settings.store,
            &self.backend,
            self.settings.limits.max_future,
        )
        .await;
        match outcome {
            Ok(u)
                if u.partitions_created
                    + u.partitions_dropped
                    + u.partitions_indexed
                    + u.rollup_buckets
                    > 0 =>
            {
                tracing::info!(
                    created = u.partitions_created,
                    dropped = u.partitions_dropped,
                    indexed = u.partitions_indexed,
                    rollup_buckets = u.rollup_buckets,
                    "maintenance"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "maintenance failed; will retry"),
        }
    }

    async fn prune_ledger(&mut self) {
        let consumer = &self.settings.consumer.name;
        let floor = match self.js_stream.consumer_info(consumer).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(_) => return,
        };
        if let Err(e) = ledger::prune(&mut self.admin, &self.names, self.key, consumer, floor).await
        {
            tracing::warn!(error = %e, "ledger pruning failed; will retry");
        }
    }
}
