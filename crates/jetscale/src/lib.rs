//! jetscale: a NATS JetStream to TimescaleDB/PostgreSQL telemetry collector.
//!
//! Data flows one way: [`stream`] fetches deliveries, [`decode`] turns bytes into records,
//! [`process`] applies processors and builds batches, [`store`] writes a batch in one
//! transaction, and [`ack`] acknowledges from the committed outcome. [`pipeline`] joins them.

pub mod ack;
pub mod config;
pub mod decode;
pub mod dev;
pub mod pipeline;
pub mod process;
pub mod redact;
pub mod simulate;
pub mod store;
pub mod stream;
pub mod tail;
pub mod telemetry;
