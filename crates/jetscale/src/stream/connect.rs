//! One place that knows how to open a NATS connection, for the collector, the simulator,
//! tail and setup alike.

use super::StreamError;
use crate::config::NatsSettings;
use crate::redact::redact_url;
use std::time::Duration;

/// Connects with the configured credentials and TLS. Reconnection after a server restart is
/// automatic and unbounded; only the first connection must succeed.
pub async fn connect(
    settings: &NatsSettings,
    name: &str,
) -> Result<async_nats::Client, StreamError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::debug!(%other, "NATS event"),
            }
        });
    let auth = &settings.auth;
    if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &auth.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|e| StreamError::Credentials {
            what: "NKey seed file",
            path: path.clone(),
            detail: e.to_string(),
        })?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &auth.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| StreamError::Credentials {
                what: "credentials file",
                path: path.clone(),
                detail: e.to_string(),
            })?;
    }
    if let Some(tls) = &settings.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.into());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            options = options.add_client_certificate(cert.into(), key.into());
        }
    }
    let urls: Vec<&str> = settings.url.split(',').map(str::trim).collect();
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| StreamError::Connect {
            target: redact_url(&settings.url),
            detail: format!("invalid URL: {e}"),
        })?;
    options
        .connect(addrs)
        .await
        .map_err(|e| StreamError::Connect {
            target: redact_url(&settings.url),
            detail: e.to_string(),
        })
}
