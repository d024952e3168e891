//! jetscale: a NATS JetStream to TimescaleDB/PostgreSQL telemetry collector.
//!
//! The folders name the OpenTelemetry Collector's parts, as the config file does, and data
//! flows one way through them: [`receivers`] fetch deliveries, [`decode`] turns bytes into
//! records (applying [`processors`] on the way), [`exporters`] gather rows into a batch and
//! commit it in one transaction, and [`ack`] acknowledges from the committed outcome.
//! [`pipeline`] joins them; [`self_metrics`] is the collector's own measurements.

pub mod ack;
pub mod config;
pub mod decode;
pub mod dev;
pub mod exporters;
pub mod pipeline;
pub mod processors;
pub mod receivers;
pub mod redact;
pub mod self_metrics;
pub mod simulate;
pub mod status;
pub mod tail;
