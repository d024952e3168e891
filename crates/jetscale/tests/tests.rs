//! The integration tests, one binary (a new topic is a module here, not a new binary). Each
//! test starts its own nats-server and uses a fresh database of one private PostgreSQL
//! cluster; `support` holds everything the topics share.

mod support;

mod backends;
mod compression;
mod cumulative_acks;
mod dead_letter_subject;
mod failover;
mod faults;
mod layout;
mod observability;
mod pipeline;
mod properties;
mod rollup;
mod security;
mod setup;
mod shutdown;
mod signals;
mod status;
mod stream_identity;
mod tail;
