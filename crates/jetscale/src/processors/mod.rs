//! Processors: what the config's `processors` section asks to be done to telemetry between
//! receiving and exporting it, named as the OpenTelemetry Collector names them.
//!
//! - [`resource`] (`processors.resource`) inserts, updates, upserts or deletes attributes of
//!   every resource. The decoders call it where they read a resource, so it runs once per
//!   resource rather than once per row of it, and every row that resource yields carries the
//!   result. It knows the config and nothing of the decoders.
//! - `processors.batch` sizes the exporter's batch: rows per transaction and how long a
//!   partial batch waits ([`crate::config::BatchSettings`]); the pipeline's write loop applies
//!   it to the [`crate::exporters::postgres::batch::Batch`] it fills.

pub mod resource;
