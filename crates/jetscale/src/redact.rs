//! Keeping secrets out of logs, errors and `--help`: URLs are shown without their password.

/// `scheme://user:secret@host/…` becomes `scheme://user:***@host/…`; `password=…` in a
/// key=value connection string becomes `password=***`. Several comma-separated URLs are
/// each redacted.
pub fn redact_url(url: &str) -> String {
    if url.contains("://") {
        return url.split(',').map(redact_one).collect::<Vec<_>>().join(",");
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if scheme.starts_with("nats") => "***".to_owned(), // a lone userinfo is a token
        None => userinfo.to_owned(),
    };
    // Query parameters may carry a password too.
    let tail = tail
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
    format!("{scheme}://{user}@{host}{tail}")
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
    }
}
