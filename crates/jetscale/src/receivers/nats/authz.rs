//! Least-privilege nats-server authorization for the TELEMETRY pipeline (`jetscale
//! nats-config`).
//!
//! The IoT design's `authorization` block restricts one direction per user, which fails both ways
//! on a real server: its `device` user (publish `telemetry.>` only) may still *subscribe* to
//! `telemetry.>` and read every device's data, and its `collector` user (subscribe
//! `telemetry.>` only) cannot use a JetStream consumer at all, since pulling is a publish to
//! the JetStream API and acking is a publish to the ack subject. Its passwords are also
//! quoted, and nats-server only expands an *unquoted* `$VAR`: `"$DEVICE_PASSWORD"` is the
//! literal password `$DEVICE_PASSWORD`.
//!
//! The block generated here spells out both directions for three roles:
//!
//! | role | publish | subscribe |
//! | --- | --- | --- |
//! | device (shared) | the stream's subjects (`telemetry.>`) | `_INBOX.>` (its publish acks) |
//! | device (`--per-device`) | `telemetry.metrics.{its id}` | `_INBOX.>` |
//! | collector | `$JS.API.STREAM.INFO.{stream}`, `$JS.API.CONSUMER.INFO.{stream}.{consumer}`, `$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}`, `$JS.ACK.{stream}.{consumer}.>` (+ the dead-letter subject, if configured) | [`COLLECTOR_INBOX_PREFIX`]`.>` |
//! | admin | `$JS.API.>` | `_INBOX.>` |
//!
//! A pull consumer delivers messages to the *puller's* inbox, so the collector must not use
//! the `_INBOX.` prefix that devices may subscribe to (to receive their publish acks), or
//! any device could read the whole stream off the collector's inbox. The collector's
//! connection therefore uses the private prefix [`COLLECTOR_INBOX_PREFIX`] (see
//! [`inbox_prefix_for`], applied by [`super::connect`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The connection name the collector uses (`pipeline::run`).
pub const COLLECTOR_CONNECTION_NAME: &str = "jetscale-collector";
/// The collector's private inbox prefix: outside `_INBOX.>`, which devices may subscribe to.
pub const COLLECTOR_INBOX_PREFIX: &str = "_INBOX_jetscale_collector";
/// The inbox devices and admins use (every NATS client's default).
pub const DEFAULT_INBOX: &str = "_INBOX.>";

/// The inbox prefix a jetscale connection with this name uses, when not NATS's default.
pub fn inbox_prefix_for(connection_name: &str) -> Option<&'static str> {
    (connection_name == COLLECTOR_CONNECTION_NAME).then_some(COLLECTOR_INBOX_PREFIX)
}

/// A generation request that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("{what} {value:?} cannot be used: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "device ids {first:?} and {second:?} map to the same password variable {var}; rename one"
    )]
    VariableClash {
        first: String,
        second: String,
        var: String,
    },
    #[error("device id {0:?} is listed twice")]
    DuplicateDevice(String),
    #[error("--per-device needs at least one device id (--device or --devices-file)")]
    NoDevices,
    #[error("these environment variables must hold the passwords to {mode}: {}", .missing.join(", "))]
    MissingPasswords {
        mode: &'static str,
        missing: Vec<String>,
    },
    #[error("bcrypt failed: {0}")]
    Bcrypt(String),
}

/// How passwords appear in the generated block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordMode {
    /// `password: $DEVICE_PASSWORD`: nats-server reads the variable from its environment at
    /// start (unquoted, or it would be taken literally). No secret in the file.
    EnvRefs,
    /// bcrypt hashes (`$2a$…`) of the passwords read from the same variables now.
    Bcrypt { cost: u32 },
    /// The passwords read from the variables, in clear: only when asked for.
    Plain,
}

/// One role's permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct AuthzSpec {
    pub stream: String,
    pub consumer: String,
    /// The stream's subjects: what shared device users may publish.
    pub subjects: Vec<String>,
    /// The collector republishes dead letters here, if set.
    pub dead_letter_subject: Option<String>,
    pub device_user: String,
    pub collector_user: String,
    pub admin_user: String,
    /// One user per device id, each allowed only `telemetry.metrics.{id}`.
    pub per_device: Option<Vec<String>>,
    pub passwords: PasswordMode,
    /// The nats-server version the block is for, `(major, minor, patch)`, if known.
    pub server_version: Option<(u32, u32, u32)>,
}

/// One user of the generated block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The environment variable holding (or that held) its password.
    pub password_var: String,
    pub permissions: Permissions,
}

/// The generated block and what the operator has to provide.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The nats-server configuration text (an `authorization { … }` block with comments).
    pub config: String,
    pub users: Vec<User>,
}

/// Device users' permissions: publish on `subjects`, receive their publish acks.
pub fn device_permissions(subjects: &[String]) -> Permissions {
    Permissions {
        publish: subjects.to_vec(),
        subscribe: vec![DEFAULT_INBOX.to_owned()],
    }
}

/// The collector's permissions: consume and ack on its own durable consumer, nothing else.
pub fn collector_permissions(
    stream: &str,
    consumer: &str,
    dead_letter_subject: Option<&str>,
) -> Permissions {
    let mut publish = vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        format!("$JS.ACK.{stream}.{consumer}.>"),
    ];
    if let Some(subject) = dead_letter_subject {
        publish.push(subject.to_owned());
    }
    Permissions {
        publish,
        subscribe: vec![format!("{COLLECTOR_INBOX_PREFIX}.>")],
    }
}

/// The admin's permissions: the whole JetStream API (create, update, delete streams and
/// consumers: `jetscale setup`).
pub fn admin_permissions() -> Permissions {
    Permissions {
        publish: vec!["$JS.API.>".to_owned()],
        subscribe: vec![DEFAULT_INBOX.to_owned()],
    }
}

/// The password variable of a per-device user: `DEVICE_PASSWORD_` and the id in upper
/// case with anything but letters and digits as `_`.
pub fn device_password_var(device_id: &str) -> String {
    let mut var = String::from("DEVICE_PASSWORD_");
    for c in device_id.chars() {
        if c.is_ascii_alphanumeric() {
            var.push(c.to_ascii_uppercase());
        } else {
            var.push('_');
        }
    }
    var
}

/// Whether a name can go into the block and, for device ids, into a subject: printable
/// ASCII without quotes, backslashes, `$`, dots, wildcards or spaces.
fn check_name(what: &'static str, value: &str, subject_token: bool) -> Result<(), AuthzError> {
    let invalid = |why| AuthzError::Invalid {
        what,
        value: value.to_owned(),
        why,
    };
    if value.is_empty() || value.len() > 128 {
        return Err(invalid("it must be 1 to 128 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\' | b'$'))
    {
        return Err(invalid(
            "use printable ASCII without quotes, backslashes, `$` or spaces",
        ));
    }
    if subject_token && !jetscale_model::subject::is_valid_token(value) {
        return Err(invalid(
            "a device id is a subject token: no dots or wildcards",
        ));
    }
    Ok(())
}

fn check_subject(what: &'static str, value: &str) -> Result<(), AuthzError> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'))
        || value.split('.').any(str::is_empty)
    {
        return Err(AuthzError::Invalid {
            what,
            value: value.to_owned(),
            why: "not a NATS subject",
        });
    }
    Ok(())
}

/// The users of the block, validated.
pub fn users(spec: &AuthzSpec) -> Result<Vec<User>, AuthzError> {
    check_name("stream name", &spec.stream, true)?;
    check_name("consumer name", &spec.consumer, true)?;
    for subject in &spec.subjects {
        check_subject("stream subject", subject)?;
    }
    if let Some(subject) = &spec.dead_letter_subject {
        check_subject("dead-letter subject", subject)?;
    }
    check_name("collector user", &spec.collector_user, false)?;
    check_name("admin user", &spec.admin_user, false)?;
    let mut users = Vec::new();
    match &spec.per_device {
        None => {
            check_name("device user", &spec.device_user, false)?;
            users.push(User {
                name: spec.device_user.clone(),
                password_var: "DEVICE_PASSWORD".into(),
                permissions: device_permissions(&spec.subjects),
            });
        }
        Some(ids) => {
            if ids.is_empty() {
                return Err(AuthzError::NoDevices);
            }
            let mut vars: BTreeMap<String, &str> = BTreeMap::new();
            for id in ids {
                check_name("device id", id, true)?;
                let var = device_password_var(id);
                if let Some(first) = vars.insert(var.clone(), id) {
                    return Err(if first == id {
                        AuthzError::DuplicateDevice(id.clone())
                    } else {
                        AuthzError::VariableClash {
                            first: first.to_owned(),
                            second: id.clone(),
                            var,
                        }
                    });
                }
                users.push(User {
                    name: id.clone(),
                    password_var: var,
                    permissions: device_permissions(&[jetscale_model::subject::device_metrics(id)]),
                });
            }
        }
    }
    users.push(User {
        name: spec.collector_user.clone(),
        password_var: "COLLECTOR_PASSWORD".into(),
        permissions: collector_permissions(
            &spec.stream,
            &spec.consumer,
            spec.dead_letter_subject.as_deref(),
        ),
    });
    users.push(User {
        name: spec.admin_user.clone(),
        password_var: "ADMIN_PASSWORD".into(),
        permissions: admin_permissions(),
    });
    let mut names = BTreeMap::new();
    for user in &users {
        if names.insert(user.name.clone(), ()).is_some() {
            return Err(AuthzError::Invalid {
                what: "user name",
                value: user.name.clone(),
                why: "two users of the block have this name",
            });
        }
    }
    Ok(users)
}

/// Renders the block. Passwords are read through `env` for [`PasswordMode::Bcrypt`] and
/// [`PasswordMode::Plain`]; [`PasswordMode::EnvRefs`] reads nothing.
pub fn generate(
    spec: &AuthzSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Generated, AuthzError> {
    let users = users(spec)?;
    let passwords: Vec<String> = match spec.passwords {
        PasswordMode::EnvRefs => users
            .iter()
            .map(|u| format!("${}", u.password_var))
            .collect(),
        PasswordMode::Bcrypt { .. } | PasswordMode::Plain => {
            let mode = if spec.passwords == PasswordMode::Plain {
                "write them in clear"
            } else {
                "hash them"
            };
            let mut missing = Vec::new();
            let mut clear = Vec::new();
            for u in &users {
                match env(&u.password_var) {
                    Some(p) if !p.is_empty() => clear.push(p),
                    _ => missing.push(u.password_var.clone()),
                }
            }
            if !missing.is_empty() {
                return Err(AuthzError::MissingPasswords { mode, missing });
            }
            match spec.passwords {
                PasswordMode::Bcrypt { cost } => clear
                    .iter()
                    .map(|p| {
                        bcrypt::hash_with_result(p, cost)
                            .map(|h| quote(&h.format_for_version(bcrypt::Version::TwoA)))
                            .map_err(|e| AuthzError::Bcrypt(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?,
                _ => clear.iter().map(|p| quote_secret(p)).collect(),
            }
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Least-privilege authorization for jetscale, generated by `jetscale nats-config`."
    );
    let _ = writeln!(
        out,
        "# Stream {}, durable consumer {}. Include it in nats-server.conf in place of the",
        spec.stream, spec.consumer
    );
    let _ = writeln!(
        out,
        "# IoT design's block (which lets devices read all telemetry and stops the collector)."
    );
    match spec.passwords {
        PasswordMode::EnvRefs => {
            let _ = writeln!(
                out,
                "# Passwords are read by nats-server from its environment at start (unquoted $VAR;"
            );
            let _ = writeln!(
                out,
                "# a quoted \"$VAR\" would be the literal password): set {}.",
                users
                    .iter()
                    .map(|u| u.password_var.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        PasswordMode::Bcrypt { cost } => {
            let _ = writeln!(
                out,
                "# Passwords are bcrypt hashes (cost {cost}); clients send the clear password."
            );
        }
        PasswordMode::Plain => {
            let _ = writeln!(
                out,
                "# WARNING: passwords are in clear text (--passwords plain); keep this file 0600."
            );
        }
    }
    let _ = writeln!(
        out,
        "# The collector connects with the inbox prefix {COLLECTOR_INBOX_PREFIX} (jetscale does this"
    );
    let _ = writeln!(
        out,
        "# itself), so devices, which may subscribe to _INBOX.> for their publish acks, cannot"
    );
    let _ = writeln!(out, "# read the messages delivered to it.");
    for line in durability_note(spec.server_version).lines() {
        let _ = writeln!(out, "# {line}");
    }
    out.push_str("authorization {\n  users = [\n");
    for (user, password) in users.iter().zip(&passwords) {
        let _ = writeln!(
            out,
            "    {{ user: {}, password: {password},\n      permissions: {{\n        publish: {{ allow: {} }}\n        subscribe: {{ allow: {} }}\n      }} }}",
            quote(&user.name),
            list(&user.permissions.publish),
            list(&user.permissions.subscribe),
        );
    }
    out.push_str("  ]\n}\n");
    Ok(Generated { config: out, users })
}

/// What to say about `sync_interval: always` for this server version.
pub fn durability_note(version: Option<(u32, u32, u32)>) -> String {
    match version {
        Some((major, minor, patch)) if (major, minor) >= (2, 10) => format!(
            "Durability: nats-server {major}.{minor}.{patch} supports `sync_interval: always`; add it to the\njetstream {{}} block so a publish ack means the message was fsynced."
        ),
        Some((major, minor, patch)) => format!(
            "Durability: nats-server {major}.{minor}.{patch} acknowledges publishes before fsync and does not know\n`sync_interval` (2.10+): upgrade for fsync-before-ack, or run the stream with 3 replicas\nso an ack means a quorum holds the message."
        ),
        None => "Durability: with nats-server 2.10+ add `sync_interval: always` to the jetstream {} block\n(2.9 acknowledges publishes before fsync and rejects the option).".to_owned(),
    }
}

/// Asks a nats-server binary for its version (`nats-server: v2.9.10`).
pub fn server_version(binary: &Path) -> Option<(u32, u32, u32)> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
        .or_else(|| parse_version(&String::from_utf8_lossy(&output.stderr)))
}

/// `nats-server: v2.9.10` -> `(2, 9, 10)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split_whitespace().find_map(|word| {
        let word = word.trim_start_matches('v');
        let mut parts = word.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some((major, minor, patch))
    })
}

/// A double-quoted config string (the names were checked to need no escapes).
fn quote(s: &str) -> String {
    format!("\"{s}\"")
}

/// A clear-text password as a config string: quoted (so a leading `$` is not a variable),
/// with `\` and `"` escaped.
fn quote_secret(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AuthzSpec {
        AuthzSpec {
            stream: "TELEMETRY".into(),
            consumer: "otel-collector".into(),
            subjects: vec!["telemetry.>".into()],
            dead_letter_subject: None,
            device_user: "device".into(),
            collector_user: "collector".into(),
            admin_user: "admin".into(),
            per_device: None,
            passwords: PasswordMode::EnvRefs,
            server_version: Some((2, 9, 10)),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn env_refs_are_unquoted_and_no_secret_is_read() {
        let g = generate(&spec(), &no_env).unwrap();
        assert!(
            g.config.contains("password: $DEVICE_PASSWORD,"),
            "{}",
            g.config
        );
        assert!(g.config.contains("password: $COLLECTOR_PASSWORD,"));
        assert!(g.config.contains("password: $ADMIN_PASSWORD,"));
        assert!(!g.config.contains("\"$DEVICE_PASSWORD\""));
        assert!(g
            .config
            .contains("\"$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.otel-collector\""));
        assert!(g.config.contains("\"$JS.ACK.TELEMETRY.otel-collector.>\""));
        assert!(g.config.contains("\"_INBOX_jetscale_collector.>\""));
        assert!(g.config.contains("does not know\n# `sync_interval`"));
        assert_eq!(g.users.len(), 3);
    }

    #[test]
    fn collector_may_not_publish_telemetry_nor_use_the_shared_inbox() {
        let p = collector_permissions("TELEMETRY", "c", None);
        assert!(p.publish.iter().all(|s| s.starts_with("$JS.")));
        assert!(!p
            .publish
            .iter()
            .any(|s| s.contains("DELETE") || s.contains("PURGE")));
        assert!(!p.subscribe.iter().any(|s| s.starts_with("_INBOX.")));
        assert_eq!(
            inbox_prefix_for(COLLECTOR_CONNECTION_NAME),
            Some(COLLECTOR_INBOX_PREFIX)
        );
        assert_eq!(inbox_prefix_for("jetscale-setup"), None);
    }

    #[test]
    fn bcrypt_hashes_verify_and_plain_needs_the_variables() {
        let mut s = spec();
        s.passwords = PasswordMode::Bcrypt { cost: 4 };
        let env = |name: &str| Some(format!("pw-{name}"));
        let g = generate(&s, &env).unwrap();
        let hash = g
            .config
            .lines()
            .find(|l| l.contains("user: \"collector\""))
            .and_then(|l| l.split('"').nth(3))
            .unwrap()
            .to_owned();
        assert!(hash.starts_with("$2a$04$"), "{hash}");
        assert!(bcrypt::verify("pw-COLLECTOR_PASSWORD", &hash).unwrap());
        assert!(!g.config.contains("pw-COLLECTOR_PASSWORD"));
        s.passwords = PasswordMode::Plain;
        let err = generate(&s, &no_env).unwrap_err().to_string();
        assert!(
            err.contains("DEVICE_PASSWORD") && err.contains("ADMIN_PASSWORD"),
            "{err}"
        );
        let env = |_: &str| Some("a\"b\\c$d".to_owned());
        let g = generate(&s, &env).unwrap();
        assert!(
            g.config.contains("password: \"a\\\"b\\\\c$d\""),
            "{}",
            g.config
        );
    }

    #[test]
    fn per_device_users_get_their_own_subject() {
        let mut s = spec();
        s.per_device = Some(vec!["sensor-001".into(), "sensor-002".into()]);
        let g = generate(&s, &no_env).unwrap();
        assert_eq!(g.users[0].name, "sensor-001");
        assert_eq!(g.users[0].password_var, "DEVICE_PASSWORD_SENSOR_001");
        assert_eq!(
            g.users[1].permissions.publish,
            vec!["telemetry.metrics.sensor-002".to_owned()]
        );
        assert!(!g.config.contains("\"telemetry.>\""));
        s.per_device = Some(vec!["a-b".into(), "a_b".into()]);
        assert!(matches!(
            generate(&s, &no_env),
            Err(AuthzError::VariableClash { .. })
        ));
        for bad in ["a.b", "x>", "q\"", "", "with space", "$x"] {
            s.per_device = Some(vec![bad.into()]);
            assert!(generate(&s, &no_env).is_err(), "{bad:?} accepted");
        }
        s.per_device = Some(vec![]);
        assert!(matches!(generate(&s, &no_env), Err(AuthzError::NoDevices)));
    }

    #[test]
    fn versions_and_durability_notes() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(
            parse_version("nats-server: v2.11.0-beta.1"),
            Some((2, 11, 0))
        );
        assert_eq!(parse_version("garbage"), None);
        assert!(durability_note(Some((2, 10, 3))).contains("supports `sync_interval: always`"));
        assert!(durability_note(Some((2, 9, 10))).contains("before fsync"));
    }
}
