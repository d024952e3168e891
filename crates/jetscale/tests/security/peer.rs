//! NATS clients of the roles `jetscale nats-config` generates, against a nats-server
//! running the generated block, and what the server tells them.

use super::temperature;
use crate::support::{self, nats_with, now_ns, provision_stream, settings, Nats};
use async_nats::jetstream::{self, publish::PublishAck};
use jetscale::receivers::nats::authz::{self, AuthzSpec, PasswordMode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The clear password of each role in these tests (the generated block holds bcrypt hashes).
pub fn password(var: &str) -> String {
    format!("pw-{}", var.to_ascii_lowercase().replace('_', "-"))
}

pub fn spec(per_device: Option<&[&str]>, consumer: &str) -> AuthzSpec {
    AuthzSpec {
        stream: "TELEMETRY".into(),
        consumer: consumer.into(),
        subjects: vec!["telemetry.>".into()],
        dead_letter_subject: None,
        device_user: "device".into(),
        collector_user: "collector".into(),
        admin_user: "admin".into(),
        per_device: per_device.map(|ids| ids.iter().map(|s| s.to_string()).collect()),
        passwords: PasswordMode::Bcrypt { cost: 4 },
        server_version: None,
    }
}

/// A private nats-server running the generated block.
pub async fn authz_server(spec: &AuthzSpec) -> Nats {
    let generated = authz::generate(spec, &|var| Some(password(var))).expect("generate");
    nats_with(&generated.config).await
}

/// A server running the generated block for the `jetscale` consumer (one `device` user, or
/// a user per device of `per_device`), provisioned by the admin.
pub async fn provisioned(per_device: Option<&[&str]>) -> Nats {
    let nats = authz_server(&spec(per_device, "jetscale")).await;
    provision_as_admin(&nats, "jetscale").await;
    nats
}

/// The URL that logs `user` in with the password of `var`.
pub fn url_as(nats: &Nats, user: &str, var: &str) -> String {
    format!(
        "nats://{user}:{}@127.0.0.1:{}",
        password(var),
        nats.server.port()
    )
}

/// A client that records the server's `-ERR`s (permission violations).
pub struct Peer {
    pub nc: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

/// `user` logged in with the password of `var`.
pub async fn peer(nats: &Nats, user: &str, var: &str) -> Peer {
    Peer::connect(nats, user, &password(var)).await
}

impl Peer {
    /// `user` logged in with `password`.
    pub async fn connect(nats: &Nats, user: &str, password: &str) -> Peer {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let nc = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        sink.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(e.to_string());
                    }
                }
            })
            .connect(format!("nats://127.0.0.1:{}", nats.server.port()))
            .await
            .unwrap_or_else(|e| panic!("{user} must be able to log in: {e}"));
        Peer { nc, errors }
    }

    /// The server's errors so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A JetStream context with a short timeout: denied API requests never get an answer.
    pub fn js(&self) -> jetstream::Context {
        let mut js = jetstream::new(self.nc.clone());
        js.set_timeout(Duration::from_millis(1500));
        js
    }

    /// Waits for the server to report a permissions violation for `op` (`publish` or
    /// `subscription`) on `subject`.
    pub async fn expect_violation(&self, op: &str, subject: &str) {
        let needle = format!("permissions violation for {op} to \"{subject}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self.errors();
            if seen
                .iter()
                .any(|e| e.to_lowercase().contains(&needle.to_lowercase()))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}` from the server; errors seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Subscribes and asserts the server refuses it and nothing arrives.
    pub async fn subscription_refused(&self, subject: &str, publisher: &Peer, publish_on: &str) {
        let mut sub = self
            .nc
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe call");
        self.expect_violation("subscription", subject).await;
        publisher
            .publish(publish_on, temperature("sensor-002", now_ns()))
            .await;
        let got = tokio::time::timeout(
            Duration::from_millis(500),
            futures::StreamExt::next(&mut sub),
        )
        .await;
        assert!(
            !matches!(got, Ok(Some(_))),
            "a refused subscription to {subject} received a message"
        );
    }

    /// Publishes through JetStream and waits for the stream's acknowledgement.
    pub async fn publish(&self, subject: &str, payload: impl Into<bytes::Bytes>) -> PublishAck {
        support::publish(&self.js(), subject, &[], payload).await
    }

    /// Asserts that a JetStream API call failed, and that the server refused its request on
    /// `api` (denied requests are never answered).
    pub async fn api_refused<T, E>(&self, outcome: Result<T, E>, api: &str) {
        assert!(outcome.is_err(), "{api} was answered");
        self.expect_violation("publish", api).await;
    }

    /// Publishes on `subject` outside JetStream and waits for the server to refuse it.
    pub async fn publish_refused(&self, subject: &str, payload: impl Into<bytes::Bytes>) {
        self.nc
            .publish(subject.to_owned(), payload.into())
            .await
            .expect("publish call");
        self.expect_violation("publish", subject).await;
    }
}

/// Creates stream and consumer as the admin (the role that may), with default settings.
pub async fn provision_as_admin(nats: &Nats, consumer: &str) {
    let mut s = settings(
        &url_as(nats, "admin", "ADMIN_PASSWORD"),
        "postgres://unused@127.0.0.1:1/x",
    );
    s.consumer.name = consumer.to_owned();
    provision_stream(&s).await;
}

/// How many messages the stream holds, asked by the admin.
pub async fn stream_messages(admin: &Peer) -> u64 {
    let mut stream = admin
        .js()
        .get_stream("TELEMETRY")
        .await
        .expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}
