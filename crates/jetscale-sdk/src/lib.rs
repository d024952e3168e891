//! Publish metrics, spans and logs to a jetscale `TELEMETRY` stream from devices and services.
//!
//! A device or service links this crate, not the collector: it needs NATS and nothing else.
//! Everything goes through JetStream and waits for the stream's publish ack, so a record that
//! [`Publisher`] reports as published is stored in the stream.
//!
//! - [`Publisher`] connects (user/password, token, NKey seed file, credentials file, TLS; see
//!   [`ConnectOptions`]) and publishes the flat records of the NATS-native service design
//!   ([`FlatSpan`], [`FlatMetric`], [`FlatLog`]) and OTLP protobuf requests on the subjects of
//!   [`jetscale_model::subject`], with the headers of [`headers`]. Every message carries a
//!   `Nats-Msg-Id` (`{trace_id}.{span_id}` for spans, a random 128-bit id otherwise) that
//!   stays the same across retries, so the stream's duplicate window drops the copies a retry
//!   produces.
//! - Retries ride through a stream leader election or a short loss of the connection: each
//!   message is retried for up to [`RetryPolicy::max_elapsed`] (30 s by default, within the
//!   2-minute duplicate window `jetscale setup` creates), at most `max_in_flight` messages are
//!   held meanwhile, and an error says whether the message may be stored
//!   ([`Error::may_be_stored`]). `docs/publishing.md` has the failure-by-failure table.
//! - [`Publisher::publish_many`] pipelines acks for high-rate publishing, bounded by
//!   [`PublisherOptions::max_in_flight`].
//! - [`DeviceReading`] builds the three-gauge OTLP JSON payload of the IoT pipeline design's
//!   Python device.
//! - [`JetscaleLayer`] is a `tracing-subscriber` layer that turns a service's own spans and
//!   events into span and log records, published from a background task so instrumented code
//!   never waits for NATS.
//!
//! # Examples
//!
//! ```no_run
//! use jetscale_sdk::{FlatMetric, Publisher};
//!
//! # async fn run() -> Result<(), jetscale_sdk::Error> {
//! let publisher = Publisher::connect("nats://127.0.0.1:4222").await?;
//! let ack = publisher
//!     .publish_metric(&FlatMetric {
//!         name: "step.duration_ms".into(),
//!         kind: "histogram".into(),
//!         value: 1234.0,
//!         service: "worker".into(),
//!         timestamp: "2024-01-15T10:30:01Z".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("stored as message {} of {}", ack.sequence, ack.stream);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod backoff;
mod connect;
mod error;
pub mod headers;
pub mod ids;
mod layer;
mod message;
mod options;
mod otlp;
mod publisher;

pub use connect::{redact_url, ConnectOptions};
pub use error::{Error, Stored};
pub use layer::{JetscaleLayer, LayerBuilder, LayerHandle, LayerStats};
pub use message::{IntoMessage, Message, Record};
pub use options::{PublisherOptions, RetryPolicy, DEFAULT_RETRY_BUDGET};
pub use otlp::DeviceReading;
pub use publisher::{BatchError, Publisher};

/// The acknowledgement the stream sends for a stored (or deduplicated) message.
pub use async_nats::jetstream::publish::PublishAck;
/// The flat records of the NATS-native service design, re-exported from
/// [`jetscale_model::flat`].
pub use jetscale_model::flat::{FlatLog, FlatMetric, FlatSpan};
/// The `opentelemetry-proto` crate this SDK encodes with, for building requests.
pub use opentelemetry_proto;
/// The OTLP request types [`Publisher::publish_otlp_metrics`] and friends take, re-exported so
/// callers use the same version of `opentelemetry-proto` as this crate.
pub use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
