//! Between decoding and writing: processors are applied by the decoders (they see the
//! resource once, not every row), and [`batch`] gathers encoded rows and the deliveries they
//! came from into one unit of work for one database transaction.

pub mod batch;

pub use batch::{Batch, DeadLetter, MessageEntry, Table};
