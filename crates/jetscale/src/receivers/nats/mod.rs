//! The NATS side: connecting (every auth method NATS offers, TLS), provisioning the stream
//! and the durable consumer, and the conventions of the TELEMETRY stream.

pub mod authz;
pub mod connect;
pub mod provision;

pub use connect::connect;
pub use provision::{ensure_consumer, ensure_stream, Drift};

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
