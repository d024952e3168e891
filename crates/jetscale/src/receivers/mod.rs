//! Where records come in. Each receiver has a folder: [`nats`] connects to NATS, provisions
//! the stream and the durable consumer and says who may do what. A new input (the OTLP
//! gateway, say) is a new folder here that ends by publishing into the stream.

pub mod nats;
