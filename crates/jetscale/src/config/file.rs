//! The config file exactly as written: the IoT design's `collector-config.yaml` shape plus
//! jetscale's own optional keys. Every struct denies unknown keys, so a misspelled key is an
//! error naming its path instead of a setting silently ignored.

use super::expand::{expand, ExpandError};
use super::units;
use super::ConfigError;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A duration written as `5s`, `48h`, `7d` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => units::parse_duration(&text)
                .map(DurationValue)
                .map_err(serde::de::Error::custom),
            // The same bound as the text form: `Duration::from_secs_f64` panics past
            // u64::MAX seconds (`ack_wait: 1e20`; see docs/security.md, Fuzzing).
            Raw::Seconds(s) if s.is_finite() && (0.0..=1.0e12).contains(&s) => {
                Ok(DurationValue(Duration::from_secs_f64(s)))
            }
            Raw::Seconds(s) => Err(serde::de::Error::custom(format!("{s} is not a duration"))),
        }
    }
}

/// A duration that can also be switched off: `off` (or `0`) is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationOrOff(pub Option<Duration>);

impl<'de> Deserialize<'de> for DurationOrOff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Off(bool),
            Word(String),
            Value(DurationValue),
        }
        let raw = Raw::deserialize(d)?;
        let duration = match raw {
            Raw::Off(false) => return Ok(DurationOrOff(None)),
            Raw::Off(true) => {
                return Err(serde::de::Error::custom(
                    "`true` is not a duration (write e.g. 8d, or off)",
                ))
            }
            Raw::Word(word) if word.eq_ignore_ascii_case("off") => return Ok(DurationOrOff(None)),
            Raw::Word(text) => units::parse_duration(&text).map_err(serde::de::Error::custom)?,
            Raw::Value(DurationValue(d)) => d,
        };
        Ok(DurationOrOff((!duration.is_zero()).then_some(duration)))
    }
}

/// A size written as `50GB`, `1GiB` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytesValue(pub i64);

impl<'de> Deserialize<'de> for BytesValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Bytes(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => units::parse_bytes(&text)
                .map(BytesValue)
                .map_err(serde::de::Error::custom),
            Raw::Bytes(b) if b >= -1 => Ok(BytesValue(b)),
            Raw::Bytes(b) => Err(serde::de::Error::custom(format!("{b} is not a size"))),
        }
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub receivers: Receivers,
    #[serde(default)]
    pub processors: Processors,
    #[serde(default)]
    pub exporters: Exporters,
    #[serde(default)]
    pub service: Service,
    /// jetscale: limits enforced on every message before work is spent on it.
    #[serde(default)]
    pub limits: LimitsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receivers {
    pub nats: Option<NatsReceiver>,
}

/// `receivers.nats`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsReceiver {
    /// `nats://user:password@host:4222`; comma-separated for several servers.
    pub url: Option<String>,
    /// The consumer's filter subject (seed: `telemetry.>`).
    pub subject: Option<String>,
    /// Accepted for compatibility with the IoT design; JetStream collectors share work through
    /// the durable consumer instead of a core queue group.
    pub queue_group: Option<String>,
    #[serde(default)]
    pub jetstream: JetStreamFile,
    /// `auto` (default), `otlp_json`, `otlp_proto` or `flat_json`: the format assumed when a
    /// message's headers do not say.
    pub encoding: Option<String>,
    /// jetscale: user name, when not in the URL.
    pub user: Option<String>,
    /// jetscale: password, when not in the URL.
    pub password: Option<String>,
    /// jetscale: read the password from this file.
    pub password_file: Option<String>,
    /// jetscale: token authentication.
    pub token: Option<String>,
    /// jetscale: a file holding an NKey seed (`SU…`).
    pub nkey_file: Option<String>,
    /// jetscale: a `.creds` file (JWT and NKey seed).
    pub creds_file: Option<String>,
    /// jetscale: TLS.
    pub tls: Option<TlsFile>,
    /// jetscale: publish dead letters to this subject too, once stored (the table stays the
    /// durable record); a subject outside the stream's.
    pub dead_letter_subject: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `receivers.nats.jetstream`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamFile {
    pub stream: Option<String>,
    pub consumer: Option<String>,
    pub durable: Option<bool>,
    /// jetscale: how long a delivery may stay unacknowledged before redelivery.
    pub ack_wait: Option<DurationValue>,
    /// jetscale: deliveries in flight per consumer (all collectors together).
    pub max_ack_pending: Option<i64>,
    /// jetscale: deliveries of one message before JetStream gives up on it.
    pub max_deliver: Option<i64>,
    /// jetscale: `explicit` (each delivery acked by itself) or `all` (one cumulative ack per
    /// committed run of deliveries; one collector per consumer).
    pub ack_policy: Option<String>,
    /// jetscale: messages asked for per pull request.
    pub fetch_batch: Option<usize>,
    /// jetscale: how `jetscale setup` creates the stream.
    #[serde(default)]
    pub stream_settings: StreamSettingsFile,
}

/// `receivers.nats.jetstream.stream_settings`: the IoT pipeline design's `nats stream add` flags and seed
/// 001's limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettingsFile {
    pub subjects: Option<Vec<String>>,
    pub retention: Option<String>,
    pub max_age: Option<DurationValue>,
    pub max_bytes: Option<BytesValue>,
    pub storage: Option<String>,
    pub replicas: Option<usize>,
    pub discard: Option<String>,
    pub duplicate_window: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Processors {
    pub batch: Option<BatchFile>,
    pub resource: Option<ResourceFile>,
}

/// `processors.batch`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    /// Data points (rows) per database transaction.
    pub send_batch_size: Option<usize>,
    /// Upper bound on a batch, accepted for compatibility (batches never exceed
    /// `send_batch_size` by more than one message).
    pub send_batch_max_size: Option<usize>,
    /// How long a partial batch may wait before it is written.
    pub timeout: Option<DurationValue>,
}

/// `processors.resource`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFile {
    #[serde(default)]
    pub attributes: Vec<AttributeActionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeActionFile {
    pub key: String,
    pub action: String,
    pub value: Option<serde_json::Value>,
    pub from_attribute: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exporters {
    pub postgresql: Option<PostgresExporter>,
}

/// `exporters.postgresql`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresExporter {
    /// `postgresql://user:password@host:5432/db?sslmode=…`.
    pub endpoint: Option<String>,
    /// The metrics table (seed config: `otel_metrics`; seed schema: `iot_metrics`).
    pub table_name: Option<String>,
    /// jetscale: the schema the tables live in.
    pub schema: Option<String>,
    /// jetscale: read the password from this file.
    pub password_file: Option<String>,
    /// jetscale: partition / chunk width.
    pub chunk_interval: Option<DurationValue>,
    /// jetscale: raw rows older than this are dropped (seed: 7 days).
    pub retention: Option<DurationValue>,
    /// jetscale: hourly rollups older than this are dropped (seed: 365 days).
    pub rollup_retention: Option<DurationValue>,
    /// jetscale: histogram, exponential histogram and summary points.
    pub distributions_table: Option<String>,
    /// jetscale: spans.
    pub spans_table: Option<String>,
    /// jetscale: log records.
    pub logs_table: Option<String>,
    /// jetscale: the table that keeps undecodable or rejected messages.
    pub dead_letter_table: Option<String>,
    /// jetscale: database connections writing batches in parallel.
    pub writers: Option<usize>,
    /// jetscale: how metric points are stored: `series` (narrow points table plus a series
    /// table, behind a `table_name` view; the default) or `wide` (the IoT design's table as written).
    pub layout: Option<String>,
    /// jetscale: series ids the collector keeps in memory (series layout).
    pub series_cache: Option<usize>,
    /// jetscale: TimescaleDB 2.21+ only: COPY straight into compressed chunks.
    pub direct_compress: Option<bool>,
    /// jetscale: TimescaleDB: compress (columnstore) points, spans and logs chunks older than
    /// this; later than `limits.max_past`; `off` or `0` disables.
    pub compress_after: Option<DurationOrOff>,
    /// jetscale: plain PostgreSQL, series layout: index the open (current) partition of the
    /// points table on every insert. Off by default: a partition is indexed once it closes.
    pub index_open_partitions: Option<bool>,
    /// jetscale: `auto` (the default: TimescaleDB when the server can load it, native
    /// PostgreSQL partitioning otherwise, saying why), `timescaledb` (fail when it cannot be
    /// used) or `postgresql` (never try the extension).
    pub backend: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineFile>,
    /// The Collector's section: jetscale reads `metrics.address` and `health.unready_after`
    /// (see `config::telemetry`) and accepts the rest for compatibility.
    pub telemetry: Option<serde_yaml_ng::Value>,
    pub extensions: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    #[serde(default)]
    pub receivers: Vec<String>,
    #[serde(default)]
    pub processors: Vec<String>,
    #[serde(default)]
    pub exporters: Vec<String>,
}

/// `limits`: each bound is enforced per message; a violation dead-letters that message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_message_bytes: Option<BytesValue>,
    pub max_points_per_message: Option<usize>,
    pub max_attributes: Option<usize>,
    pub max_attribute_key_bytes: Option<usize>,
    pub max_attribute_value_bytes: Option<usize>,
    pub max_value_depth: Option<usize>,
    pub max_past: Option<DurationValue>,
    pub max_future: Option<DurationValue>,
    pub verify_device_subject: Option<bool>,
}

impl ConfigFile {
    /// Parses YAML text, expanding `${VAR}` in every string value first.
    pub fn parse(
        text: &str,
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConfigFile, ConfigError> {
        let mut value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if value.is_null() {
            return Ok(ConfigFile::default());
        }
        expand_values(&mut value, &mut Vec::new(), path, lookup)?;
        serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            key_path: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }
}

fn expand_values(
    value: &mut serde_yaml_ng::Value,
    key_path: &mut Vec<String>,
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    match value {
        Value::String(text) => {
            *text = expand(text, lookup).map_err(|e| match e {
                ExpandError::Missing(var) => ConfigError::MissingVar {
                    path: path.to_owned(),
                    key_path: key_path.join("."),
                    var,
                },
                ExpandError::Malformed(_) => ConfigError::Invalid {
                    path: path.to_owned(),
                    key_path: key_path.join("."),
                    message: "malformed `${…}` reference".into(),
                },
            })?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                key_path.push(format!("[{i}]"));
                expand_values(item, key_path, path, lookup)?;
                key_path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                key_path.push(key.as_str().unwrap_or("?").to_owned());
                expand_values(item, key_path, path, lookup)?;
                key_path.pop();
            }
        }
        Value::Tagged(tagged) => expand_values(&mut tagged.value, key_path, path, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}
