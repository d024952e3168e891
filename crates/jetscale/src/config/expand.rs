//! `${VAR}` expansion in config values, as the OpenTelemetry Collector does it.
//!
//! Expansion happens on parsed string values, never on the raw text, so a variable's value
//! can not inject YAML structure. `${VAR:-default}` supplies a default, `$$` is a literal `$`.
//! An unset variable without a default is an error: a silently empty password or endpoint
//! is worse than a refusal to start.

/// Looks a variable up in the process environment. `HOSTNAME` falls back to the kernel's
/// host name, since shells set it without exporting it and the IoT design's config relies on it.
pub fn process_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) => Some(value),
        Err(_) if name == "HOSTNAME" => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned()),
        Err(_) => None,
    }
}

/// Why a value could not be expanded.
#[derive(Debug, PartialEq, Eq)]
pub enum ExpandError {
    /// `${NAME}` with NAME unset and no default.
    Missing(String),
    /// `${` without a closing `}` or with an empty name.
    Malformed(String),
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in one string.
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    if !value.contains('$') {
        return Ok(value.to_owned());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| ExpandError::Malformed(value.to_owned()))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let name = name.strip_prefix("env:").unwrap_or(name);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ExpandError::Malformed(value.to_owned()));
            }
            match (lookup(name), default) {
                (Some(found), _) => out.push_str(&found),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(ExpandError::Missing(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            // A lone `$` (for example in a password) stays as it is.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOSTNAME" => Some("edge-7".into()),
            "PW" => Some("s3cr$t".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_escapes() {
        assert_eq!(expand("${HOSTNAME}", &env).unwrap(), "edge-7");
        assert_eq!(expand("a-${env:HOSTNAME}-b", &env).unwrap(), "a-edge-7-b");
        assert_eq!(expand("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand("$$HOME", &env).unwrap(), "$HOME");
        assert_eq!(expand("pa$word", &env).unwrap(), "pa$word");
        // The value of a variable is not expanded again.
        assert_eq!(expand("${PW}", &env).unwrap(), "s3cr$t");
    }

    #[test]
    fn unset_and_malformed_are_errors() {
        assert_eq!(
            expand("${NOPE}", &env),
            Err(ExpandError::Missing("NOPE".into()))
        );
        assert!(matches!(
            expand("${OPEN", &env),
            Err(ExpandError::Malformed(_))
        ));
        assert!(matches!(
            expand("${a b}", &env),
            Err(ExpandError::Malformed(_))
        ));
    }

    #[test]
    fn hostname_falls_back_to_the_kernel() {
        if std::env::var("HOSTNAME").is_err() {
            assert!(process_env("HOSTNAME").is_some_and(|h| !h.is_empty()));
        }
    }
}
