//! The NATS side of the snapshot: stream info, consumer info, and the oldest unacknowledged
//! message's time by a stream get (no consumer is created, fetched from or changed).

use super::{age_seconds, rfc3339, StatusOptions};
use crate::config::Settings;
use crate::receivers::nats::authz::COLLECTOR_CONNECTION_NAME;
use crate::receivers::nats::{self, StreamError};
use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

/// How many consumers are listed at most: a stream with more is not an operator's screen.
const MAX_CONSUMERS: usize = 64;

/// The stream's state and how close it is to its limits.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Time of the first and last message stored (absent while the stream is empty).
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// Age of the oldest message held, in seconds.
    pub oldest_age_seconds: Option<f64>,
    pub consumer_count: usize,
    pub replicas: usize,
    pub limits: StreamLimits,
}

/// The stream's limits (absent when unlimited) and the fraction of each in use (0..1).
#[derive(Debug, Clone, Serialize)]
pub struct StreamLimits {
    pub max_messages: Option<i64>,
    pub max_bytes: Option<i64>,
    pub max_age_seconds: Option<f64>,
    pub discard: String,
    pub messages_used: Option<f64>,
    pub bytes_used: Option<f64>,
    pub age_used: Option<f64>,
}

/// One consumer's backlog.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    /// Whether this is the consumer the configuration names (the collectors').
    pub configured: bool,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: usize,
    pub redelivered: usize,
    /// Pull requests waiting for messages (one or more per running collector).
    pub waiting_pulls: usize,
    pub ack_floor: u64,
    pub delivered: u64,
    /// Last delivery to this consumer (RFC 3339), if any.
    pub last_active: Option<String>,
    /// Age in seconds of the oldest message not yet acknowledged; 0 when caught up, absent
    /// when it could not be read.
    pub lag_seconds: Option<f64>,
}

pub(super) async fn gather(
    settings: &Settings,
    options: StatusOptions,
    notes: &mut Vec<String>,
) -> Result<(StreamStatus, Vec<ConsumerStatus>), StreamError> {
    // The collector's user may subscribe only to the collector's inbox, which connections of
    // that name use; a request it may not make would only time out, so none is made.
    let name = if options.collector_user {
        COLLECTOR_CONNECTION_NAME
    } else {
        "jetscale-status"
    };
    let client = nats::connect(&settings.nats, name).await?;
    let js = jetstream::new(client);
    let name = &settings.stream.name;
    let js_stream = js
        .get_stream_no_info(name)
        .await
        .map_err(|e| failed("stream lookup", e))?;
    let info = js_stream
        .get_info()
        .await
        .map_err(|e| failed("stream info", e))?;
    let stream = stream_status(&info);
    let mut consumers = Vec::new();
    // Listing needs `$JS.API.CONSUMER.LIST`, which the collector's user does not have.
    if !options.collector_user {
        match js_stream
            .consumers()
            .take(MAX_CONSUMERS)
            .try_collect::<Vec<consumer::Info>>()
            .await
        {
            Ok(list) => consumers.extend(list),
            Err(e) => notes.push(format!(
                "consumers not listed ({e}); showing the configured one only"
            )),
        }
    }
    let configured = &settings.consumer.name;
    if !consumers.iter().any(|c| &c.name == configured) {
        match js_stream.consumer_info(configured).await {
            Ok(c) => consumers.push(c),
            Err(e) => notes.push(format!("consumer {configured}: {e}")),
        }
    }
    consumers.sort_by(|a, b| {
        (&b.name == configured)
            .cmp(&(&a.name == configured))
            .then(a.name.cmp(&b.name))
    });
    let mut out = Vec::with_capacity(consumers.len());
    if options.collector_user {
        notes.push(format!(
            "lag not read: it needs $JS.API.STREAM.MSG.GET.{stream_name}, which the collector's \
             user does not have; run status as the admin user for it",
            stream_name = settings.stream.name
        ));
    }
    for c in &consumers {
        let lag = if options.collector_user {
            Err(None)
        } else {
            lag_seconds(&js_stream, c, info.state.first_sequence)
                .await
                .map_err(Some)
        };
        let lag = match lag {
            Ok(lag) => Some(lag),
            Err(Some(e)) => {
                notes.push(format!("lag of consumer {}: {e}", c.name));
                None
            }
            Err(None) => None,
        };
        out.push(consumer_status(c, configured, lag));
    }
    Ok((stream, out))
}

fn stream_status(info: &stream::Info) -> StreamStatus {
    let s = &info.state;
    let c = &info.config;
    let positive = |v: i64| (v > 0).then_some(v);
    let fraction = |used: f64, limit: Option<f64>| limit.map(|l| used / l);
    let oldest = (s.messages > 0).then(|| age_seconds(s.first_timestamp));
    let max_age = (!c.max_age.is_zero()).then_some(c.max_age.as_secs_f64());
    StreamStatus {
        name: c.name.clone(),
        messages: s.messages,
        bytes: s.bytes,
        first_sequence: s.first_sequence,
        last_sequence: s.last_sequence,
        first_time: (s.messages > 0).then(|| rfc3339(s.first_timestamp)),
        last_time: (s.messages > 0).then(|| rfc3339(s.last_timestamp)),
        oldest_age_seconds: oldest,
        consumer_count: s.consumer_count,
        replicas: c.num_replicas,
        limits: StreamLimits {
            max_messages: positive(c.max_messages),
            max_bytes: positive(c.max_bytes),
            max_age_seconds: max_age,
            discard: format!("{:?}", c.discard).to_lowercase(),
            messages_used: fraction(
                s.messages as f64,
                positive(c.max_messages).map(|v| v as f64),
            ),
            bytes_used: fraction(s.bytes as f64, positive(c.max_bytes).map(|v| v as f64)),
            age_used: oldest.and_then(|age| fraction(age, max_age)),
        },
    }
}

fn consumer_status(c: &consumer::Info, configured: &str, lag: Option<f64>) -> ConsumerStatus {
    ConsumerStatus {
        name: c.name.clone(),
        configured: c.name == configured,
        pending: c.num_pending,
        ack_pending: c.num_ack_pending,
        redelivered: c.num_redelivered,
        waiting_pulls: c.num_waiting,
        ack_floor: c.ack_floor.stream_sequence,
        delivered: c.delivered.stream_sequence,
        last_active: c.delivered.last_active.map(rfc3339),
        lag_seconds: lag,
    }
}

/// The age of the oldest message the consumer has not acknowledged: the one after its ack
/// floor (or the stream's first, if retention removed those), read by sequence, which
/// touches no consumer.
async fn lag_seconds(
    js_stream: &stream::Stream<()>,
    c: &consumer::Info,
    first_sequence: u64,
) -> Result<f64, String> {
    if c.num_pending == 0 && c.num_ack_pending == 0 {
        return Ok(0.0);
    }
    let oldest = (c.ack_floor.stream_sequence + 1).max(first_sequence);
    let message = js_stream
        .get_raw_message(oldest)
        .await
        .map_err(|e| e.to_string())?;
    Ok(age_seconds(message.time).max(0.0))
}

fn failed(step: &'static str, e: impl std::fmt::Display) -> StreamError {
    StreamError::JetStream {
        step,
        detail: e.to_string(),
    }
}
