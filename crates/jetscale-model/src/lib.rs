//! The records jetscale speaks, shared by every decoder, store and publisher.
//!
//! Nothing here does IO, so a device that links the SDK does not pull in a database driver.
//! Records borrow from the message they were decoded from: the collector's hot path turns
//! bytes into rows without copying strings it does not have to.

mod clock;
pub mod flat;
pub mod records;
pub mod subject;

pub use clock::now_unix_nanos;
pub use records::{
    severity_number, DistributionPoint, LogRecord, MetricKind, MetricPoint, SpanRecord,
};
