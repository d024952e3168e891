//! The NATS side: connecting (every auth method NATS offers, TLS), provisioning the stream
//! and the durable consumer, and the conventions of the TELEMETRY stream.

pub mod authz;
pub mod connect;
pub mod provision;

pub use connect::connect;
pub use provision::{ensure_consumer, ensure_stream, Drift};

use std::time::Duration;

/// How long a JetStream API request (stream and consumer management, info) may take. The
/// client's default, 5 s, is too short for nats-server to create a filtered consumer on a
/// stream with a deep backlog: with 10 million messages stored, 2.9 counts the consumer's
/// pending messages for longer than that, and the collector failed to start.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A JetStream context for managing streams and consumers.
pub fn admin_context(client: async_nats::Client) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(ADMIN_TIMEOUT);
    js
}

/// A NATS failure, with what the user should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to NATS at {target}: {detail}. Is nats-server running with JetStream (-js), and does JETSCALE_NATS_URL / receivers.nats.url point at it?")]
    Connect { target: String, detail: String },
    #[error("cannot read {what} {path}: {detail}")]
    Credentials {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("JetStream {step} failed: {detail}")]
    JetStream { step: &'static str, detail: String },
    #[error("stream {stream}: {detail}")]
    Incompatible { stream: String, detail: String },
}
