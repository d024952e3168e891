//! How a [`Publisher`] connects and publishes: credentials and TLS (the options of
//! `async_nats::ConnectOptions` a device needs), the in-flight limit, the ack timeout and the
//! retry policy.

use crate::backoff::Backoff;
use crate::{ConnectOptions, Error, Publisher};
use std::path::PathBuf;
use std::time::Duration;

/// How long a [`RetryPolicy`] keeps retrying by default: longer than a JetStream stream leader
/// election after a node crash (seconds) or a short loss of the connection, and well inside
/// the default 2-minute duplicate window of a stream, so that a retry never stores a second copy.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// How long and how often an unacknowledged message is sent again.
///
/// Only transient failures are retried (no ack within the ack timeout, no stream answering
/// during a leader election, the connection lost while waiting); each retry sends the same
/// `Nats-Msg-Id`, so a message the stream did store the first time is not stored twice, as
/// long as the last retry starts within the stream's duplicate window: see
/// [`check_duplicate_window`](RetryPolicy::check_duplicate_window).
///
/// Retries are bounded by time first ([`max_elapsed`](RetryPolicy::max_elapsed)): a count
/// alone gives up in under a second when failures come back at once ("no responders" while a
/// new stream leader is elected), long before the election is over.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy {
///     max_elapsed: Duration::from_secs(10),
///     initial_backoff: Duration::from_millis(50),
///     ..RetryPolicy::default()
/// };
/// assert!(policy.backoff(1) <= Duration::from_millis(50));
/// assert!(policy.backoff(30) <= policy.max_backoff);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Sends per message, the first included; 1 disables retries. Default: no limit
    /// (`u32::MAX`), the time budget decides.
    pub attempts: u32,
    /// Wait before the first retry; doubled for each next one. Default 100 ms.
    pub initial_backoff: Duration,
    /// Upper bound of the wait. Default 2 s.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first send (the last attempt may then wait
    /// up to the ack timeout for its ack). Default [`DEFAULT_RETRY_BUDGET`] (30 s). Keep it
    /// within the stream's duplicate window.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: u32::MAX,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_elapsed: DEFAULT_RETRY_BUDGET,
        }
    }
}

impl RetryPolicy {
    /// A policy that sends every message once.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(jetscale_sdk::RetryPolicy::none().attempts, 1);
    /// ```
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (1 for the first): exponential, capped at
    /// `max_backoff`, with jitter between half and all of it so publishers that failed
    /// together do not retry together.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let policy = RetryPolicy::default();
    /// let wait = policy.backoff(2);
    /// assert!(wait >= Duration::from_millis(100) && wait <= Duration::from_millis(200));
    /// ```
    pub fn backoff(&self, retry: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff).delay(retry)
    }

    /// Refuses a retry budget longer than the stream's duplicate window: a retry sent after
    /// the window has passed is not recognised as one, so a message whose first attempt was
    /// stored (its ack lost) would be stored twice. Raise the stream's `duplicate_window`
    /// (`jetscale setup` makes it 2 minutes by default) or shorten
    /// [`max_elapsed`](RetryPolicy::max_elapsed).
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let policy = RetryPolicy::default();
    /// assert!(policy.check_duplicate_window(Duration::from_secs(120)).is_ok());
    /// // The NATS-native service design's 5 s window is too short for the default budget.
    /// let err = policy.check_duplicate_window(Duration::from_secs(5)).unwrap_err();
    /// assert!(err.to_string().contains("duplicate window"));
    /// ```
    pub fn check_duplicate_window(&self, window: Duration) -> Result<(), Error> {
        // A policy that never retries cannot store a copy, whatever the window.
        if self.attempts <= 1 || self.max_elapsed <= window {
            Ok(())
        } else {
            Err(Error::DuplicateWindowTooShort {
                window,
                budget: self.max_elapsed,
            })
        }
    }
}

/// Connection and publishing options, filled with setters that take `mut self`, ended by
/// [`connect`](PublisherOptions::connect) or [`build`](PublisherOptions::build).
///
/// # Examples
///
/// ```no_run
/// use jetscale_sdk::PublisherOptions;
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), jetscale_sdk::Error> {
/// let publisher = PublisherOptions::new()
///     .user_and_password("device", "s3cret")
///     .ca_file("/etc/nats/ca.pem")
///     .max_in_flight(1024)
///     .ack_timeout(Duration::from_secs(2))
///     .connect("tls://nats.example.com:4222")
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    connection: ConnectOptions,
    pub(crate) max_in_flight: usize,
    pub(crate) ack_timeout: Duration,
    pub(crate) retry: RetryPolicy,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            connection: ConnectOptions::default(),
            max_in_flight: 256,
            ack_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }
}

impl PublisherOptions {
    /// The defaults: no credentials, 256 messages in flight, 5 s ack timeout, retries for up
    /// to 30 s.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new();
    /// # let _ = options;
    /// ```
    pub fn new() -> PublisherOptions {
        PublisherOptions::default()
    }

    /// The connection name the server shows in its monitoring (default `jetscale-sdk`).
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().name("sensor-001");
    /// # let _ = options;
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> PublisherOptions {
        self.connection.name = name.into();
        self
    }

    /// Authenticates with a user and password (the IoT pipeline design's `device` user).
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().user_and_password("device", "s3cret");
    /// # let _ = options;
    /// ```
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> PublisherOptions {
        self.connection.user_password = Some((user.into(), password.into()));
        self
    }

    /// Authenticates with a token.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().token("t0ken");
    /// # let _ = options;
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> PublisherOptions {
        self.connection.token = Some(token.into());
        self
    }

    /// Authenticates with the NKey seed read from a file when connecting.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().nkey_file("/etc/nats/device.nk");
    /// # let _ = options;
    /// ```
    pub fn nkey_file(mut self, path: impl Into<PathBuf>) -> PublisherOptions {
        self.connection.nkey_file = Some(path.into());
        self
    }

    /// Authenticates with a `.creds` file (JWT and NKey seed) read when connecting.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().credentials_file("/etc/nats/device.creds");
    /// # let _ = options;
    /// ```
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> PublisherOptions {
        self.connection.creds_file = Some(path.into());
        self
    }

    /// Refuses to connect without TLS (implied by [`ca_file`](Self::ca_file) and
    /// [`client_certificate`](Self::client_certificate), and by a `tls://` URL).
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().require_tls(true);
    /// # let _ = options;
    /// ```
    pub fn require_tls(mut self, required: bool) -> PublisherOptions {
        self.connection.require_tls = required;
        self
    }

    /// Trusts the CA certificates of a PEM file (besides the system's).
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().ca_file("/etc/nats/ca.pem");
    /// # let _ = options;
    /// ```
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> PublisherOptions {
        self.connection.ca_file = Some(path.into());
        self.connection.require_tls = true;
        self
    }

    /// Presents a client certificate and its key (PEM files) for mutual TLS.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new()
    ///     .client_certificate("/etc/nats/device.pem", "/etc/nats/device-key.pem");
    /// # let _ = options;
    /// ```
    pub fn client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> PublisherOptions {
        self.connection.client_cert = Some((cert.into(), key.into()));
        self.connection.require_tls = true;
        self
    }

    /// How long the first connection may take (default 5 s).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = jetscale_sdk::PublisherOptions::new().connection_timeout(Duration::from_secs(2));
    /// # let _ = options;
    /// ```
    pub fn connection_timeout(mut self, timeout: Duration) -> PublisherOptions {
        self.connection.connection_timeout = timeout;
        self
    }

    /// Returns from [`connect`](Self::connect) at once even when the server is not reachable
    /// yet, and keeps trying in the background (for a device that boots before the network).
    /// Publishes fail until then, and are retried by the [`RetryPolicy`].
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().retry_on_initial_connect(true);
    /// # let _ = options;
    /// ```
    pub fn retry_on_initial_connect(mut self, retry: bool) -> PublisherOptions {
        self.connection.retry_on_initial_connect = retry;
        self
    }

    /// How many messages may wait for their ack (or their next retry) at once (default 256, at
    /// least 1): the publisher's whole buffer, so its memory is bounded by this many messages.
    /// A publish beyond it waits for a slot, which is what paces a high-rate publisher to what
    /// the stream absorbs; if no slot frees within the retry budget (the stream stays
    /// unavailable), the publish fails with [`Error::Backpressure`] and was not sent.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().max_in_flight(4096);
    /// # let _ = options;
    /// ```
    pub fn max_in_flight(mut self, max: usize) -> PublisherOptions {
        self.max_in_flight = max.max(1);
        self
    }

    /// How long to wait for the stream's ack before the attempt counts as timed out
    /// (default 5 s).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = jetscale_sdk::PublisherOptions::new().ack_timeout(Duration::from_secs(1));
    /// # let _ = options;
    /// ```
    pub fn ack_timeout(mut self, timeout: Duration) -> PublisherOptions {
        self.ack_timeout = timeout;
        self
    }

    /// The retry policy for unacknowledged messages.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = jetscale_sdk::PublisherOptions::new().retry(jetscale_sdk::RetryPolicy::none());
    /// # let _ = options;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> PublisherOptions {
        self.retry = policy;
        self
    }

    /// Connects to the server(s) at `url` (comma-separated for a cluster) and returns a
    /// publisher. After the first connection, reconnection is automatic and unbounded.
    ///
    /// Credentials in the URL (`nats://user:password@host`, or `nats://token@host`) are used
    /// when none were set with [`user_and_password`](Self::user_and_password) or
    /// [`token`](Self::token); errors show the URL with the password replaced by `***`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), jetscale_sdk::Error> {
    /// let publisher = jetscale_sdk::PublisherOptions::new()
    ///     .credentials_file("/etc/nats/device.creds")
    ///     .connect("nats://nats-1:4222,nats://nats-2:4222")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self, url: &str) -> Result<Publisher, Error> {
        let client = self.connection.connect(url).await?;
        Ok(self.build(client))
    }

    /// A publisher over a client the caller already connected (its own options, its own
    /// callbacks), with this publishing configuration; the connection options set here are
    /// not used.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let publisher = jetscale_sdk::PublisherOptions::new().max_in_flight(2048).build(client);
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self, client: async_nats::Client) -> Publisher {
        Publisher::from_parts(client, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = RetryPolicy::default();
        for retry in 1..40 {
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (retry - 1).min(20))
                .min(Duration::from_secs(2));
            let wait = policy.backoff(retry);
            assert!(wait >= full / 2 && wait <= full, "{retry}: {wait:?}");
        }
    }

    #[test]
    fn the_default_budget_outlasts_an_election_and_fits_the_default_window() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_elapsed, DEFAULT_RETRY_BUDGET);
        assert!(policy.attempts > 1_000, "bounded by time, not by count");
        assert!(policy
            .check_duplicate_window(Duration::from_secs(120))
            .is_ok());
        let err = policy
            .check_duplicate_window(Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(err, Error::DuplicateWindowTooShort { .. }),
            "{err}"
        );
        assert!(RetryPolicy::none()
            .check_duplicate_window(Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn in_flight_is_at_least_one() {
        assert_eq!(PublisherOptions::new().max_in_flight(0).max_in_flight, 1);
    }

    #[tokio::test]
    async fn unreadable_credentials_and_bad_urls_are_reported() {
        let err = PublisherOptions::new()
            .nkey_file("/nonexistent/seed.nk")
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Credentials {
                what: "NKey seed file",
                ..
            }
        ));
        let err = PublisherOptions::new()
            .connect("nats://user:pw@[::1")
            .await
            .unwrap_err();
        match err {
            Error::InvalidUrl { url, .. } => assert!(!url.contains("pw"), "{url}"),
            other => panic!("{other}"),
        }
    }
}
