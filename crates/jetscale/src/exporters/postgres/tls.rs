//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls.
//!
//! The connection string (URL or `key=value`) may carry `sslmode` (`disable`, `allow`,
//! `prefer`, `require`, `verify-ca`, `verify-full`), `sslrootcert`, `sslcert` and `sslkey`,
//! as libpq reads them; `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` apply when
//! the string does not say. tokio-postgres itself only knows `disable`/`prefer`/`require`
//! and no certificate files, so these parameters are taken off the string here and turned
//! into a rustls configuration.
//!
//! Why rustls (`tokio-postgres-rustls`) rather than `postgres-native-tls`: the latter is
//! released together with tokio-postgres, but it links the system's OpenSSL and cannot load
//! every key format libpq accepts; tokio-postgres-rustls is a thin, maintained adapter over
//! rustls 0.23, the TLS stack async-nats already brings in, so the collector has one TLS
//! implementation (pure Rust, no system library at build or run time) for NATS and
//! PostgreSQL, and full control over verification (`verify-ca` checks the chain but not
//! the host name, which native-tls can only approximate).

use super::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// libpq tries plain first; here it is treated as `prefer` (TLS if the server offers it,
    /// unverified), which is never less safe.
    Allow,
    /// TLS if the server supports it, without verifying the certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is verified against `sslrootcert` only when one is
    /// given (as libpq does when the root file exists).
    Require,
    /// TLS, certificate chain verified against `sslrootcert`; the host name is not checked.
    VerifyCa,
    /// TLS, chain verified and the server's name (or IP) must match the certificate.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, StoreError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(StoreError::Config(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }

    /// What tokio-postgres is told: whether TLS is optional.
    fn negotiation(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// CA certificates (PEM) the server's certificate must chain to; `system` for the
    /// operating system's store.
    pub root_cert: Option<String>,
    /// Client certificate chain (PEM).
    pub cert: Option<String>,
    /// Client private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<String>,
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits `sslmode`, `sslrootcert`, `sslcert` and `sslkey` off a connection string and
/// returns the rest (for tokio-postgres) and the TLS parameters, with the `PGSSL*`
/// environment variables filling what the string leaves out.
pub fn split_tls_params(conn: &str) -> Result<(String, TlsParams), StoreError> {
    split_tls_params_with(conn, &|name| {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    })
}

/// [`split_tls_params`] with the environment given (for tests).
pub fn split_tls_params_with(
    conn: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, TlsParams), StoreError> {
    let (rest, found) = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        split_url(conn)?
    } else {
        split_key_values(conn)?
    };
    let get = |key: &str, var: &str| {
        found
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| env(var))
    };
    let mode = match get("sslmode", "PGSSLMODE") {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::default(),
    };
    let params = TlsParams {
        mode,
        root_cert: get("sslrootcert", "PGSSLROOTCERT"),
        cert: get("sslcert", "PGSSLCERT"),
        key: get("sslkey", "PGSSLKEY"),
    };
    if params.cert.is_some() != params.key.is_some() {
        return Err(StoreError::Config(
            "sslcert and sslkey go together: give both files or neither".into(),
        ));
    }
    Ok((rest, params))
}

/// `postgresql://…?a=b&sslmode=…`: the query without the TLS keys, values percent-decoded.
fn split_url(url: &str) -> Result<(String, Vec<(String, String)>), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut found = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_KEYS.contains(&key) {
            found.push((key.to_owned(), percent_decode(value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, found))
}

fn percent_decode(value: &str) -> Result<String, StoreError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        StoreError::Config("invalid percent-encoding in a TLS parameter".into())
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| StoreError::Config("a TLS parameter is not valid UTF-8".into()))
}

/// `host=… sslmode=… sslrootcert='/a b/ca.pem'`: the pairs other than the TLS keys are
/// kept as written; values may be single-quoted with `\'` and `\\` escapes.
fn split_key_values(conn: &str) -> Result<(String, Vec<(String, String)>), StoreError> {
    let bytes = conn.as_bytes();
    let mut i = 0;
    let mut kept: Vec<&str> = Vec::new();
    let mut found = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conn[start..i];
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b'=') {
            // Not a key=value pair: leave it to tokio-postgres to report.
            kept.push(&conn[start..i]);
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(StoreError::Config(
                            "unterminated quoted value in the connection string".into(),
                        ))
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        if TLS_KEYS.contains(&key) {
            let value = String::from_utf8(value)
                .map_err(|_| StoreError::Config("a TLS parameter is not valid UTF-8".into()))?;
            found.push((key.to_owned(), value));
        } else {
            kept.push(&conn[start..i]);
        }
    }
    Ok((kept.join(" "), found))
}

/// Sets the negotiation mode on the tokio-postgres config and builds the connector, or
/// `None` for `sslmode=disable`.
pub fn configure(
    config: &mut tokio_postgres::Config,
    params: &TlsParams,
) -> Result<Option<Connector>, StoreError> {
    config.ssl_mode(params.mode.negotiation());
    if params.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("TLS setup: {e}")))?;
    let verify = match params.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require => params.root_cert.is_some(),
        _ => false,
    };
    let chain = if verify {
        let roots = load_roots(params.root_cert.as_deref())?;
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| StoreError::Config(format!("TLS root certificates: {e}")))?,
        )
    } else {
        None
    };
    let verifier = Arc::new(Verifier {
        chain,
        check_name: params.mode == SslMode::VerifyFull,
        provider,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let client_config = match (&params.cert, &params.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert, "sslcert")?;
            let key = load_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| StoreError::Config(format!("sslcert/sslkey: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Connector(MakeRustlsConnect::new(client_config))))
}

/// Where the CA certificates come from: the file named, the OS store for `system`, or
/// libpq's default `~/.postgresql/root.crt`.
fn load_roots(root_cert: Option<&str>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
        Some(path) => {
            for cert in load_certs(path, "sslrootcert")? {
                roots.add(cert).map_err(|e| {
                    StoreError::Config(format!("sslrootcert {path}: unusable certificate: {e}"))
                })?;
            }
        }
        None => {
            let default = std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
                .filter(|p| p.exists());
            let Some(path) = default else {
                return Err(StoreError::Config(
                    "sslmode verify-ca/verify-full needs the CA certificate: add sslrootcert=/path/to/ca.pem (or sslrootcert=system) to the connection string".into(),
                ));
            };
            let path = path.to_string_lossy().into_owned();
            for cert in load_certs(&path, "sslrootcert")? {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(StoreError::Config(format!(
            "sslrootcert {}: no CA certificate found",
            root_cert.unwrap_or("~/.postgresql/root.crt")
        )));
    }
    Ok(roots)
}

fn load_certs(path: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StoreError::Config(format!("{what} {path}: {e}")))?;
    if certs.is_empty() {
        return Err(StoreError::Config(format!(
            "{what} {path}: no PEM certificate in the file"
        )));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, StoreError> {
    check_key_permissions(Path::new(path))?;
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| StoreError::Config(format!("sslkey {path}: {e}")))
}

/// libpq refuses a private key that others may read; so do we.
fn check_key_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| StoreError::Config(format!("sslkey {}: {e}", path.display())))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o777;
    let too_open = if meta.uid() == euid {
        mode & 0o077 != 0
    } else {
        // Owned by root (or another user) and shared through a group, as libpq allows.
        mode & 0o037 != 0
    };
    if too_open {
        return Err(StoreError::Config(format!(
            "sslkey {}: the private key is readable by other users (mode {mode:o}); chmod 600 it",
            path.display()
        )));
    }
    Ok(())
}

/// The connector handed to tokio-postgres. Unix-socket hosts get a placeholder name
/// (PostgreSQL never offers TLS on them, so `prefer` falls back to plain).
#[derive(Clone)]
pub struct Connector(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let domain = if domain.is_empty() {
            "localhost"
        } else {
            domain
        };
        <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(&mut self.0, domain)
    }
}

/// How the server's certificate is checked. Without a chain verifier (`prefer`, or `require`
/// without a root certificate): not at all, which is encryption without authentication of the
/// server, as libpq does. With one: the chain must lead to a trusted root, and with
/// `check_name` (`verify-full`) the certificate must also name the server. The handshake
/// signatures are checked in every mode, with the provider's algorithms (what the chain
/// verifier itself uses).
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn url_params_are_split_off() {
        let (rest, p) = split_tls_params_with(
            "postgresql://otel:pw@db:5432/telemetry?application_name=x&sslmode=verify-full&sslrootcert=/etc/ca%20dir/ca.pem&sslcert=/c.pem&sslkey=/k.pem",
            &no_env,
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgresql://otel:pw@db:5432/telemetry?application_name=x"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(p.cert.as_deref(), Some("/c.pem"));
        assert_eq!(p.key.as_deref(), Some("/k.pem"));
        let (rest, p) =
            split_tls_params_with("postgres://u@h/db?sslmode=require", &no_env).unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(p.mode, SslMode::Require);
        let (rest, p) = split_tls_params_with("postgres://u@h/db", &no_env).unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(p, TlsParams::default());
    }

    #[test]
    fn key_value_params_are_split_off() {
        let (rest, p) = split_tls_params_with(
            "host=db user=otel sslmode = verify-ca sslrootcert='/a b/c\\'s.pem' dbname=t",
            &no_env,
        )
        .unwrap();
        assert_eq!(rest, "host=db user=otel dbname=t");
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.root_cert.as_deref(), Some("/a b/c's.pem"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_dbname(), Some("t"));
    }

    #[test]
    fn environment_fills_gaps_and_bad_values_are_named() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("verify-full".to_owned()),
            "PGSSLROOTCERT" => Some("/env/ca.pem".to_owned()),
            _ => None,
        };
        let (_, p) = split_tls_params_with("postgres://u@h/db", &env).unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some("/env/ca.pem"));
        let (_, p) = split_tls_params_with("postgres://u@h/db?sslmode=disable", &env).unwrap();
        assert_eq!(p.mode, SslMode::Disable);
        let err = split_tls_params_with("postgres://u@h/db?sslmode=verify_full", &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("verify_full"), "{err}");
        let err = split_tls_params_with("postgres://u@h/db?sslcert=/c.pem", &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslkey"), "{err}");
    }

    #[test]
    fn verify_without_root_is_explained() {
        let mut config = tokio_postgres::Config::new();
        let params = TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = configure(&mut config, &params).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
