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
                // Permission violations arrive this way: the operator must see them.
                async_nats::Event::ServerError(e) => {
                    tracing::warn!(error = %e, "NATS server error")
                }
                other => tracing::debug!(%other, "NATS event"),
            }
        });
    if let Some(prefix) = super::authz::inbox_prefix_for(name) {
        // The collector's pull deliveries arrive on its inbox: keep it out of `_INBOX.>`,
        // which device users may subscribe to for their publish acks (see `authz`).
        options = options.custom_inbox_prefix(prefix);
    }
    let auth = &settings.auth;
    let urls: Vec<&str> = settings.url.split(',').map(str::trim).collect();
    if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        options = options.user_and_password(user.clone(), password.clone());
    } else if let Some(token) = &auth.token {
        options = options.token(token.clone());
    } else {
        // async-nats ignores credentials written into the URL (the seed's
        // `nats://collector:password@nats:4222`): take them from the first URL that has some.
        match urls.iter().find_map(|u| url_credentials(u)) {
            Some(UrlCredentials::UserPassword(user, password)) => {
                options = options.user_and_password(user, password);
            }
            Some(UrlCredentials::Token(token)) => options = options.token(token),
            None => {}
        }
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

/// Credentials written into a NATS URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlCredentials {
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// The percent-decoded userinfo of `scheme://userinfo@host…`, if any.
fn url_credentials(url: &str) -> Option<UrlCredentials> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    match userinfo.split_once(':') {
        Some((user, password)) => Some(UrlCredentials::UserPassword(
            percent_decode(user),
            percent_decode(password),
        )),
        None if !userinfo.is_empty() => Some(UrlCredentials::Token(percent_decode(userinfo))),
        None => None,
    }
}

/// `%XX` escapes decoded; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_urls() {
        assert_eq!(
            url_credentials("nats://collector:password@nats:4222"),
            Some(UrlCredentials::UserPassword(
                "collector".into(),
                "password".into()
            ))
        );
        assert_eq!(
            url_credentials("nats://dev%40ice:p%3Ass%2Fw@127.0.0.1:4222/x"),
            Some(UrlCredentials::UserPassword(
                "dev@ice".into(),
                "p:ss/w".into()
            ))
        );
        assert_eq!(
            url_credentials("tls://s3cr3t-token@nats:4222"),
            Some(UrlCredentials::Token("s3cr3t-token".into()))
        );
        assert_eq!(url_credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(url_credentials("127.0.0.1:4222"), None);
        assert_eq!(url_credentials("nats://h:1/a@b"), None);
    }
}
