//! Where records go out. Each exporter has a folder: [`postgres`] gathers rows into a batch,
//! writes it with binary COPY in one transaction with the delivery ledger, and keeps the
//! schema, partitions, rollups and retention. A new output is a new folder here.

pub mod postgres;
