//! Keeping secrets out of logs, errors and `--help`: URLs are shown without their password.

/// `scheme://user:secret@host/…` becomes `scheme://user:***@host/…` (see
/// [`jetscale_sdk::redact_url`], which every NATS client of jetscale shares); `password=…` in
/// a key=value PostgreSQL connection string becomes `password=***`. Several comma-separated
/// URLs are each redacted.
pub fn redact_url(url: &str) -> String {
    if !is_key_value(url) {
        return jetscale_sdk::redact_url(url);
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `text` is a `host=db user=x` connection string rather than a URL: no scheme, and
/// its first word is a `key=value` pair whose key is a plain word (a URL's password may hold
/// an `=` too, but then a `:` or `@` comes before it).
fn is_key_value(text: &str) -> bool {
    !text.contains("://")
        && text
            .split_whitespace()
            .next()
            .and_then(|word| word.split_once('='))
            .is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive() {
        assert_eq!(
            redact_url("nats://collector:s3cret@nats:4222"),
            "nats://collector:***@nats:4222"
        );
        assert_eq!(redact_url("nats://tok3n@nats:4222"), "nats://***@nats:4222");
        assert_eq!(
            redact_url("postgresql://otel:pw@db:5432/telemetry?sslmode=require&password=x"),
            "postgresql://otel:***@db:5432/telemetry?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("host=db password=pw user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact_url("nats://a:1@h1:4222,nats://b:2@h2:4222"),
            "nats://a:***@h1:4222,nats://b:***@h2:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("collector:s=cret@nats:4222"),
            "collector:***@nats:4222"
        );
        assert_eq!(redact_url("tls://tok3n@nats:4222"), "tls://***@nats:4222");
    }
}
