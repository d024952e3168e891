//! One place that knows how to open a NATS connection, for the collector, the simulator,
//! tail and setup alike: the configured credentials and TLS handed to the SDK's
//! [`ConnectOptions`], which every jetscale client connects with.

use super::StreamError;
use crate::config::NatsSettings;
use crate::redact::redact_url;
use jetscale_sdk::ConnectOptions;

/// Connects with the configured credentials and TLS. Reconnection after a server restart is
/// automatic and unbounded; only the first connection must succeed.
pub async fn connect(
    settings: &NatsSettings,
    name: &str,
) -> Result<async_nats::Client, StreamError> {
    connect_options(settings, name)
        .connect(&settings.url)
        .await
        .map_err(|e| stream_error(e, settings))
}

/// The SDK's options for these settings. A user without a password does not count as
/// credentials (a token or those in the URL are used instead).
fn connect_options(settings: &NatsSettings, name: &str) -> ConnectOptions {
    let auth = &settings.auth;
    let user_password = auth.user.clone().zip(auth.password.clone());
    let tls = settings.tls.clone().unwrap_or_default();
    ConnectOptions {
        name: name.to_owned(),
        token: auth.token.clone().filter(|_| user_password.is_none()),
        user_password,
        nkey_file: auth.nkey_file.as_ref().map(Into::into),
        creds_file: auth.creds_file.as_ref().map(Into::into),
        require_tls: settings.tls.is_some(),
        ca_file: tls.ca_file.map(Into::into),
        client_cert: tls
            .cert_file
            .zip(tls.key_file)
            .map(|(cert, key)| (cert.into(), key.into())),
        // The collector's pull deliveries arrive on its inbox: keep it out of `_INBOX.>`,
        // which device users may subscribe to for their publish acks (see `authz`).
        inbox_prefix: super::authz::inbox_prefix_for(name).map(str::to_owned),
        ..ConnectOptions::default()
    }
}

/// The SDK's error as the collector reports it: with what the user should do about it.
fn stream_error(error: jetscale_sdk::Error, settings: &NatsSettings) -> StreamError {
    let target = redact_url(&settings.url);
    match error {
        jetscale_sdk::Error::InvalidUrl { detail, .. } => StreamError::Connect {
            target,
            detail: format!("invalid URL: {detail}"),
        },
        jetscale_sdk::Error::Credentials { what, path, source } => StreamError::Credentials {
            what,
            path: path.display().to_string(),
            detail: source.to_string(),
        },
        jetscale_sdk::Error::Connect { source, .. } => StreamError::Connect {
            target,
            detail: source.to_string(),
        },
        other => StreamError::Connect {
            target,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NatsAuth, TlsFiles};

    fn settings(auth: NatsAuth, tls: Option<TlsFiles>) -> NatsSettings {
        NatsSettings {
            url: "nats://collector:s3cret@127.0.0.1:1".into(),
            auth,
            tls,
        }
    }

    #[test]
    fn a_configured_user_and_password_beat_a_token() {
        let both = NatsAuth {
            user: Some("collector".into()),
            password: Some("pw".into()),
            token: Some("t0ken".into()),
            ..NatsAuth::default()
        };
        let options = connect_options(&settings(both, None), "jetscale-tail");
        assert_eq!(
            options.user_password,
            Some(("collector".into(), "pw".into()))
        );
        assert_eq!(options.token, None);
        assert_eq!(options.inbox_prefix, None);
        assert!(!options.require_tls);
        let user_only = NatsAuth {
            user: Some("collector".into()),
            token: Some("t0ken".into()),
            ..NatsAuth::default()
        };
        let options = connect_options(&settings(user_only, None), "jetscale-collector");
        assert_eq!(options.user_password, None);
        assert_eq!(options.token.as_deref(), Some("t0ken"));
        assert!(options.inbox_prefix.is_some());
    }

    #[test]
    fn tls_needs_both_halves_of_a_client_certificate() {
        let tls = TlsFiles {
            ca_file: Some("/ca.pem".into()),
            cert_file: Some("/cert.pem".into()),
            key_file: None,
        };
        let options = connect_options(&settings(NatsAuth::default(), Some(tls)), "x");
        assert!(options.require_tls);
        assert_eq!(options.ca_file, Some("/ca.pem".into()));
        assert_eq!(options.client_cert, None);
    }

    #[tokio::test]
    async fn errors_say_what_failed_without_the_password() {
        let nkey = NatsAuth {
            nkey_file: Some("/nonexistent/seed.nk".into()),
            ..NatsAuth::default()
        };
        let err = connect(&settings(nkey, None), "x").await.unwrap_err();
        match &err {
            StreamError::Credentials { what, path, .. } => {
                assert_eq!(
                    (*what, path.as_str()),
                    ("NKey seed file", "/nonexistent/seed.nk")
                );
            }
            other => panic!("{other}"),
        }
        let err = connect(&settings(NatsAuth::default(), None), "x")
            .await
            .unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, StreamError::Connect { .. }), "{shown}");
        assert!(
            shown.contains("collector:***@") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
