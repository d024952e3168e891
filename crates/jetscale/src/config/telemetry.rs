//! `service.telemetry`: where the collector serves its own metrics and health. The rest of
//! the OpenTelemetry Collector's `telemetry` section (logs, resource, traces, `metrics.level`
//! or `readers`) is accepted and ignored, so a Collector config loads as it is.

use super::units::parse_duration;
use super::ConfigError;
use serde_yaml_ng::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// Resolved `service.telemetry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// `service.telemetry.metrics.address`: where `/metrics`, `/health/live` and
    /// `/health/ready` are served. Off by default: the collector opens no port it was not
    /// asked to (several collectors on one host would otherwise fight over one port).
    pub metrics_address: Option<SocketAddr>,
    /// `service.telemetry.health.unready_after`: how long commits may fail before
    /// `/health/ready` says not ready (default 30s: longer than a database restart's blip,
    /// shorter than an orchestrator's patience).
    pub unready_after: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            metrics_address: None,
            unready_after: Duration::from_secs(30),
        }
    }
}

fn resolve_error(message: String) -> ConfigError {
    ConfigError::Resolve(message)
}

/// Reads the keys jetscale uses out of the `telemetry` value.
pub fn resolve(telemetry: Option<&Value>) -> Result<TelemetrySettings, ConfigError> {
    let mut settings = TelemetrySettings::default();
    let Some(telemetry) = telemetry else {
        return Ok(settings);
    };
    let text = |section: &str, key: &str| -> Result<Option<String>, ConfigError> {
        match telemetry.get(section).and_then(|s| s.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(resolve_error(format!(
                "service.telemetry.{section}.{key} must be a string, not `{}`",
                serde_yaml_ng::to_string(other).unwrap_or_default().trim()
            ))),
        }
    };
    if let Some(address) = text("metrics", "address")? {
        // The Collector's configs (Go) also write `:8888` (every interface) and `localhost:8888`.
        let spelled = if let Some(port) = address.strip_prefix("localhost:") {
            format!("127.0.0.1:{port}")
        } else if address.starts_with(':') {
            format!("0.0.0.0{address}")
        } else {
            address.clone()
        };
        let parsed = spelled.parse::<SocketAddr>().map_err(|e| {
            resolve_error(format!(
                "service.telemetry.metrics.address `{address}`: {e}; write an IP address and port, e.g. `127.0.0.1:8888` (or `0.0.0.0:8888` to be scraped from other hosts)"
            ))
        })?;
        settings.metrics_address = Some(parsed);
    }
    if let Some(after) = text("health", "unready_after")? {
        settings.unready_after = parse_duration(&after).map_err(|e| {
            resolve_error(format!(
                "service.telemetry.health.unready_after `{after}`: {e}"
            ))
        })?;
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<TelemetrySettings, ConfigError> {
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
        resolve(Some(&value))
    }

    #[test]
    fn off_by_default_and_read_where_the_collector_puts_it() {
        assert_eq!(resolve(None).unwrap(), TelemetrySettings::default());
        let settings = parse(
            "metrics: {address: '127.0.0.1:8888', level: detailed}\nlogs: {level: info}\nhealth: {unready_after: 5s}",
        )
        .unwrap();
        assert_eq!(
            settings.metrics_address,
            Some("127.0.0.1:8888".parse().unwrap())
        );
        assert_eq!(settings.unready_after, Duration::from_secs(5));
        let address = |text: &str| {
            parse(&format!("metrics: {{address: '{text}'}}"))
                .unwrap()
                .metrics_address
                .unwrap()
                .to_string()
        };
        assert_eq!(address("localhost:8888"), "127.0.0.1:8888");
        assert_eq!(address(":8888"), "0.0.0.0:8888");
        assert_eq!(address("[::1]:9000"), "[::1]:9000");
    }

    #[test]
    fn a_bad_address_says_what_to_write() {
        let err = parse("metrics: {address: 'localhost'}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("127.0.0.1:8888"), "{err}");
        let err = parse("metrics: {address: 8888}").unwrap_err().to_string();
        assert!(err.contains("must be a string"), "{err}");
    }
}
