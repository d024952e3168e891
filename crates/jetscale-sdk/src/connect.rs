//! Opening a NATS connection the way every jetscale client does (devices, services, the
//! collector and its subcommands): credentials from the options or from the URL, TLS,
//! unbounded reconnection, and errors and logs that show URLs without their secrets.

use crate::Error;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach NATS: the connection name, the credentials (user and password, token, NKey
/// seed file, credentials file, or those written into the URL), TLS and the first
/// connection's patience. Filled as a struct, `..ConnectOptions::default()` for the rest.
///
/// [`PublisherOptions`](crate::PublisherOptions) holds one; the collector builds one from its
/// configuration.
///
/// Its `Debug` output hides the password and the token.
///
/// # Examples
///
/// ```no_run
/// use jetscale_sdk::ConnectOptions;
///
/// # async fn run() -> Result<(), jetscale_sdk::Error> {
/// let options = ConnectOptions {
///     name: "sensor-gateway".into(),
///     creds_file: Some("/etc/nats/gateway.creds".into()),
///     ca_file: Some("/etc/nats/ca.pem".into()),
///     require_tls: true,
///     ..ConnectOptions::default()
/// };
/// let client = options.connect("tls://nats.example.com:4222").await?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    /// The connection name the server shows in its monitoring (default `jetscale-sdk`).
    pub name: String,
    /// A user and its password.
    pub user_password: Option<(String, String)>,
    /// A token.
    pub token: Option<String>,
    /// A file holding an NKey seed, read when connecting.
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT and NKey seed), read when connecting.
    pub creds_file: Option<PathBuf>,
    /// Refuse to connect without TLS (a `tls://` URL implies it too).
    pub require_tls: bool,
    /// A PEM file of CA certificates trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM files) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// How long the first connection may take (default 5 s).
    pub connection_timeout: Duration,
    /// Return at once when the server is not reachable yet and keep trying in the background.
    pub retry_on_initial_connect: bool,
    /// The prefix of this connection's reply subjects, when not NATS's `_INBOX`.
    pub inbox_prefix: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            name: "jetscale-sdk".to_owned(),
            user_password: None,
            token: None,
            nkey_file: None,
            creds_file: None,
            require_tls: false,
            ca_file: None,
            client_cert: None,
            connection_timeout: Duration::from_secs(5),
            retry_on_initial_connect: false,
            inbox_prefix: None,
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Options end up in logs and panics: the secrets must not.
        let hidden = |set: bool| if set { "***" } else { "none" };
        f.debug_struct("ConnectOptions")
            .field("name", &self.name)
            .field("user", &self.user_password.as_ref().map(|(user, _)| user))
            .field("password", &hidden(self.user_password.is_some()))
            .field("token", &hidden(self.token.is_some()))
            .field("nkey_file", &self.nkey_file)
            .field("creds_file", &self.creds_file)
            .field("require_tls", &self.require_tls)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("connection_timeout", &self.connection_timeout)
            .field("retry_on_initial_connect", &self.retry_on_initial_connect)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

impl ConnectOptions {
    /// Connects to the server(s) at `url` (comma-separated for a cluster). After the first
    /// connection, reconnection is automatic and unbounded; losing the connection and the
    /// errors the server reports (a permission violation) are logged as warnings.
    ///
    /// Credentials in the URL (`nats://user:password@host`, or `nats://token@host`,
    /// percent-encoded) are used when neither `user_password` nor `token` is set: async-nats
    /// itself ignores them. Errors show the URL with the password replaced by `***`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), jetscale_sdk::Error> {
    /// let client = jetscale_sdk::ConnectOptions::default()
    ///     .connect("nats://device:s3cret@nats-1:4222,nats://nats-2:4222")
    ///     .await?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(&self, url: &str) -> Result<async_nats::Client, Error> {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let addrs = urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidUrl {
                url: redact_url(url),
                detail: e.to_string(),
            })?;
        if addrs.is_empty() {
            return Err(Error::InvalidUrl {
                url: String::new(),
                detail: "no server address".to_owned(),
            });
        }
        let in_url = match (&self.user_password, &self.token) {
            (None, None) => urls.iter().find_map(|u| url_credentials(u)),
            _ => None,
        };
        self.async_nats_options(in_url)
            .await?
            .connect(addrs)
            .await
            .map_err(|source| Error::Connect {
                url: redact_url(url),
                source,
            })
    }

    async fn async_nats_options(
        &self,
        in_url: Option<UrlCredentials>,
    ) -> Result<async_nats::ConnectOptions, Error> {
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(self.connection_timeout)
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!(target: "jetscale_sdk", "NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Connected => {
                        tracing::info!(target: "jetscale_sdk", "NATS connected")
                    }
                    // Permission violations arrive this way: the operator must see them.
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(target: "jetscale_sdk", error = %e, "NATS server error")
                    }
                    other => tracing::debug!(target: "jetscale_sdk", %other, "NATS event"),
                }
            });
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        match in_url {
            Some(UrlCredentials::UserPassword(user, password)) => {
                options = options.user_and_password(user, password);
            }
            Some(UrlCredentials::Token(token)) => options = options.token(token),
            None => {}
        }
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.nkey_file {
            let seed =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| Error::Credentials {
                        what: "NKey seed file",
                        path: path.clone(),
                        source,
                    })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.creds_file {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| Error::Credentials {
                        what: "credentials file",
                        path: path.clone(),
                        source,
                    })?;
        }
        if self.require_tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.retry_on_initial_connect {
            options = options.retry_on_initial_connect();
        }
        Ok(options)
    }
}

/// Credentials written into a NATS URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlCredentials {
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// The percent-decoded userinfo of `scheme://userinfo@host…` (or of `userinfo@host…`, which
/// async-nats reads as a `nats://` URL), if any.
fn url_credentials(url: &str) -> Option<UrlCredentials> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
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

/// Decodes the `%XX` escapes of a URL's user or password; anything malformed is kept as
/// written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits are at most 0xff: the cast cannot truncate.
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL (or several, comma-separated) fit to show in errors and logs: the password of
/// `scheme://user:password@host` and a `password=` query parameter become `***`, and so does
/// a lone `token@` (a NATS token; in a `postgres://` or `postgresql://` URL a lone name is the
/// user and stays). An address without a scheme is read as a NATS one.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::redact_url;
///
/// assert_eq!(redact_url("nats://device:s3cret@nats:4222"), "nats://device:***@nats:4222");
/// assert_eq!(redact_url("tls://t0ken@nats:4222"), "tls://***@nats:4222");
/// ```
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| redact_one(one.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (before_query, query) = rest.split_at(rest.find(['?', '#']).unwrap_or(rest.len()));
    // The last `@` before the query ends the userinfo even when a password holds an
    // unencoded `/` or `@`: better too much hidden than a secret shown.
    let authority = match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None if scheme.is_some_and(|s| s.starts_with("postgres")) => userinfo.to_owned(),
                None => "***".to_owned(),
            };
            format!("{user}@{host}")
        }
        None => before_query.to_owned(),
    };
    // Query parameters may carry a password too.
    let query = query
        .split('&')
        .map(|p| {
            if p.trim_start_matches('?')
                .to_ascii_lowercase()
                .starts_with("password=")
            {
                let prefix = if p.starts_with('?') { "?" } else { "" };
                format!("{prefix}password=***")
            } else {
                p.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{query}"),
        None => format!("{authority}{query}"),
    }
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
        assert_eq!(
            url_credentials("device:pw@nats:4222"),
            Some(UrlCredentials::UserPassword("device".into(), "pw".into()))
        );
        assert_eq!(url_credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(url_credentials("127.0.0.1:4222"), None);
        assert_eq!(url_credentials("nats://h:1/a@b"), None);
        assert_eq!(url_credentials("nats://@h:1"), None);
    }

    #[test]
    fn url_credentials_are_percent_decoded() {
        assert_eq!(percent_decode("p%40ss%3Aw0rd"), "p@ss:w0rd");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%+1"), "%+1");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn passwords_and_tokens_are_redacted() {
        assert_eq!(
            redact_url("nats://device:s3cret@nats:4222"),
            "nats://device:***@nats:4222"
        );
        assert_eq!(redact_url("nats://tok@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact_url("tls://tok@nats:4222"), "tls://***@nats:4222");
        assert_eq!(redact_url("user:pw@nats:4222"), "user:***@nats:4222");
        assert_eq!(
            redact_url("nats://a:b@n1:4222, nats://n2:4222"),
            "nats://a:***@n1:4222,nats://n2:4222"
        );
        assert_eq!(
            redact_url("nats://a:1@h1:4222,nats://b:2@h2:4222"),
            "nats://a:***@h1:4222,nats://b:***@h2:4222"
        );
        assert_eq!(redact_url("127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://u:p/w@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("nats://u:p@ss@h:4222"), "nats://u:***@h:4222");
        assert_eq!(
            redact_url("postgresql://db/telemetry?password=x"),
            "postgresql://db/telemetry?password=***"
        );
        assert_eq!(
            redact_url("postgresql://otel:pw@db:5432/telemetry?sslmode=require&password=x"),
            "postgresql://otel:***@db:5432/telemetry?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://otel@db/telemetry"),
            "postgres://otel@db/telemetry"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let options = ConnectOptions {
            user_password: Some(("device".into(), "s3cret".into())),
            token: Some("t0ken".into()),
            ..ConnectOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(shown.contains("device"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn an_address_list_without_addresses_is_refused() {
        let err = ConnectOptions::default().connect(" , ").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    }
}
