//! Resolved settings: defaults applied, overrides on top, names validated. The rest of the
//! code is handed these and never sees the YAML.

use super::file::{ConfigFile, DurationOrOff, NatsReceiver};
use super::ConfigError;
use std::time::Duration;

/// Values that beat the config file: CLI flags, then `JETSCALE_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub nats_url: Option<String>,
    pub database_url: Option<String>,
    pub replicas: Option<usize>,
}

/// Everything the collector and the other subcommands need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nats: NatsSettings,
    pub stream: StreamSettings,
    pub consumer: ConsumerSettings,
    pub encoding: Encoding,
    pub store: StoreSettings,
    pub batch: BatchSettings,
    pub resource: Vec<AttributeAction>,
    pub limits: Limits,
    /// Subject dead letters are also published to once committed, if any; never one the
    /// stream's subjects capture.
    pub dead_letter_subject: Option<String>,
    /// `service.telemetry`: the metrics and health listener.
    pub telemetry: super::TelemetrySettings,
}

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URL(s), possibly with credentials: never log it unredacted.
    pub url: String,
    pub auth: NatsAuth,
    pub tls: Option<TlsFiles>,
}

/// NATS credentials besides those in the URL.
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_file: Option<String>,
    pub creds_file: Option<String>,
}

/// TLS files for NATS.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// How `jetscale setup` creates the stream (defaults: the IoT pipeline design's `nats stream add`).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub name: String,
    pub subjects: Vec<String>,
    /// `limits`, `interest` or `workqueue`.
    pub retention: String,
    pub max_age: Duration,
    pub max_bytes: i64,
    /// `file` or `memory`.
    pub storage: String,
    pub replicas: usize,
    /// `old` or `new`.
    pub discard: String,
    pub duplicate_window: Duration,
}

/// The durable pull consumer all collectors share.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSettings {
    pub name: String,
    pub durable: bool,
    pub filter_subject: String,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub max_deliver: i64,
    pub fetch_batch: usize,
    pub ack_policy: AckPolicy,
}

/// Messages per pull request. The client asks for the next pull when half of one is left, so
/// up to one and a half are buffered. Why 3,000: BENCHMARKS.md, the `fetch_batch` comparison.
pub const DEFAULT_FETCH_BATCH: usize = 3000;

/// How the collector acknowledges committed deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckPolicy {
    /// Every delivery by its own reply subject: safe with any number of collectors.
    #[default]
    Explicit,
    /// One `AckAll` per committed run of deliveries, sent only once the collector knows every
    /// delivery it covers is committed (see `ack::Cumulative`): half of NATS's work per
    /// message, for one collector per consumer.
    All,
}

/// The wire format assumed when a message's headers do not name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Look at the content: JSON objects by their keys, anything else as OTLP protobuf.
    Auto,
    OtlpJson,
    OtlpProto,
    FlatJson,
}

/// The database side.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Connection string (URL or key=value); may hold a password: never log it unredacted.
    pub url: String,
    pub password_file: Option<String>,
    pub schema: String,
    /// The metrics table jetscale writes.
    pub metrics_table: String,
    /// Histogram, exponential histogram and summary points.
    pub distributions_table: String,
    pub spans_table: String,
    pub logs_table: String,
    pub dead_letter_table: String,
    pub chunk_interval: Duration,
    pub retention: Duration,
    pub rollup_retention: Duration,
    pub writers: usize,
    pub layout: MetricsLayout,
    /// Series ids kept in memory (series layout); misses cost a database lookup.
    pub series_cache: usize,
    /// TimescaleDB 2.21+: `timescaledb.enable_direct_compress_copy` on the writers' sessions.
    pub direct_compress: bool,
    /// TimescaleDB: chunks of the points, spans and logs tables older than this are
    /// compressed by a columnstore policy; `None` when switched off. Resolved after the
    /// limits: by default one chunk interval past `limits.max_past`, so a chunk is compressed
    /// only once no row the collector accepts can still fall into it.
    pub compress_after: Option<Duration>,
    /// Plain PostgreSQL, series layout: keep the `(series_id, time)` index on the parent, so
    /// open partitions are indexed row by row. Off: each partition is indexed when it closes.
    pub index_open_partitions: bool,
    /// Which storage engine to use (`exporters.postgresql.backend`).
    pub backend: BackendChoice,
}

/// `exporters.postgresql.backend`: what the user asks for; `schema::Backend` is what was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// TimescaleDB when the server can load it (creating the extension if needed), native
    /// PostgreSQL partitioning otherwise, with the reason and how to enable TimescaleDB.
    #[default]
    Auto,
    /// TimescaleDB or an error explaining why it cannot be used.
    Timescaledb,
    /// Native PostgreSQL partitioning; the extension is never created.
    Postgresql,
}

impl BackendChoice {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        match value.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "timescaledb" => Ok(BackendChoice::Timescaledb),
            "postgresql" => Ok(BackendChoice::Postgresql),
            other => Err(ConfigError::Resolve(format!(
                "exporters.postgresql.backend: unknown backend `{other}` (use `auto`, `timescaledb` or `postgresql`)"
            ))),
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Timescaledb => "timescaledb",
            BackendChoice::Postgresql => "postgresql",
        })
    }
}

/// How metric points are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsLayout {
    /// `{table}_points (time, series_id, value)` with one `(series_id, time)` index, each
    /// distinct device/location/metric/unit/attributes once in `{table}_series`, and
    /// `{table}` a view joining them with the IoT design's columns.
    Series,
    /// The IoT design's `iot_metrics` table as written: every column on every row, both its indexes.
    Wide,
}

impl MetricsLayout {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        match value {
            "series" => Ok(MetricsLayout::Series),
            "wide" => Ok(MetricsLayout::Wide),
            other => Err(ConfigError::Resolve(format!(
                "exporters.postgresql.layout: unknown layout `{other}` (use `series` or `wide`)"
            ))),
        }
    }
}

/// Active series the collector keeps ids for by default: 2,097,152, about 700,000 devices
/// with three metrics each. Memory grows with the fleet, not with this bound: about 35
/// bytes per series with hash-table slack (50 MiB for 1.5 million series).
pub const DEFAULT_SERIES_CACHE: usize = 1 << 21;

/// `processors.batch`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSettings {
    /// Rows per transaction.
    pub max_rows: usize,
    /// How long a partial batch waits.
    pub timeout: Duration,
}

/// What a `processors.resource` entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeActionKind {
    /// Add when absent.
    Insert,
    /// Replace when present.
    Update,
    /// Add or replace.
    Upsert,
    /// Remove.
    Delete,
}

/// One `processors.resource.attributes` entry, value already `${VAR}`-expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeAction {
    pub key: String,
    pub kind: AttributeActionKind,
    /// The value as JSON text (a string becomes `"…"`).
    pub value_json: String,
    /// For string values, the plain text (device.id / device.location may be set this way).
    pub value_text: Option<String>,
}

/// Bounds enforced on every message before work is spent on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_points_per_message: usize,
    pub max_attributes: usize,
    pub max_attribute_key_bytes: usize,
    pub max_attribute_value_bytes: usize,
    pub max_value_depth: usize,
    /// Points older than this (or than the retention, whichever is shorter) are rejected.
    pub max_past: Duration,
    /// Points further ahead than this are rejected.
    pub max_future: Duration,
    /// Dead-letter an IoT-design device message whose `device.id` differs from its subject's token.
    pub verify_device_subject: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_points_per_message: 10_000,
            max_attributes: 128,
            max_attribute_key_bytes: 256,
            max_attribute_value_bytes: 4096,
            max_value_depth: 8,
            max_past: Duration::from_secs(7 * 86_400),
            max_future: Duration::from_secs(3600),
            verify_device_subject: false,
        }
    }
}

/// Default NATS URL when neither config, flag nor env names one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default database when neither config, flag nor env names one.
pub const DEFAULT_DATABASE_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

/// Checks that a configured SQL name is a plain identifier, so it can be quoted safely and
/// means the same thing on every path.
pub fn validate_identifier(what: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Resolve(format!(
            "{what} `{name}` must be 1 to 48 characters of a-z, 0-9 and _, starting with a letter or _"
        )))
    }
}

fn env_override(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Applies defaults and overrides to a parsed file.
pub fn resolve(file: &ConfigFile, overrides: &Overrides) -> Result<Settings, ConfigError> {
    check_pipelines(file)?;
    let default_receiver = NatsReceiver::default();
    let nats = file.receivers.nats.as_ref().unwrap_or(&default_receiver);
    let js = &nats.jetstream;
    let ss = &js.stream_settings;

    let stream = StreamSettings {
        name: js.stream.clone().unwrap_or_else(|| "TELEMETRY".into()),
        subjects: ss
            .subjects
            .clone()
            .unwrap_or_else(|| vec![jetscale_model::subject::ALL.to_owned()]),
        retention: one_of(
            "stream retention",
            ss.retention.as_deref(),
            "limits",
            &["limits", "interest", "workqueue"],
        )?,
        max_age: ss.max_age.map_or(Duration::from_secs(48 * 3600), |d| d.0),
        max_bytes: ss.max_bytes.map_or(50_000_000_000, |b| b.0),
        storage: one_of(
            "stream storage",
            ss.storage.as_deref(),
            "file",
            &["file", "memory"],
        )?,
        replicas: overrides.replicas.or(ss.replicas).unwrap_or(1),
        discard: one_of(
            "stream discard",
            ss.discard.as_deref(),
            "old",
            &["old", "new"],
        )?,
        duplicate_window: ss
            .duplicate_window
            .map_or(Duration::from_secs(120), |d| d.0),
    };
    if !(1..=5).contains(&stream.replicas) {
        return Err(ConfigError::Resolve(format!(
            "stream replicas must be 1 to 5, not {}",
            stream.replicas
        )));
    }
    let consumer_name = js.consumer.clone().unwrap_or_else(|| "jetscale".into());
    if !jetscale_model::subject::is_valid_token(&consumer_name)
        || !jetscale_model::subject::is_valid_token(&stream.name)
    {
        return Err(ConfigError::Resolve(format!(
            "stream `{}` and consumer `{consumer_name}` names must not be empty or hold dots, wildcards or spaces",
            stream.name
        )));
    }
    let batch = file.processors.batch.as_ref();
    let batch = BatchSettings {
        max_rows: batch.and_then(|b| b.send_batch_size).unwrap_or(5000).max(1),
        timeout: batch
            .and_then(|b| b.timeout)
            .map_or(Duration::from_secs(5), |d| d.0),
    };
    let consumer = ConsumerSettings {
        name: consumer_name,
        durable: js.durable.unwrap_or(true),
        filter_subject: nats
            .subject
            .clone()
            .unwrap_or_else(|| jetscale_model::subject::ALL.to_owned()),
        ack_wait: js.ack_wait.map_or(Duration::from_secs(60), |d| d.0),
        max_ack_pending: js.max_ack_pending.unwrap_or(50_000),
        max_deliver: js.max_deliver.unwrap_or(-1),
        fetch_batch: js.fetch_batch.unwrap_or(DEFAULT_FETCH_BATCH).clamp(1, 10_000),
        ack_policy: match js.ack_policy.as_deref().unwrap_or("explicit") {
            "explicit" => AckPolicy::Explicit,
            "all" => AckPolicy::All,
            other => {
                return Err(ConfigError::Resolve(format!(
                    "jetstream ack_policy `{other}` is not known: use `explicit` (the default) or `all`"
                )))
            }
        },
    };
    if consumer.ack_policy == AckPolicy::All && consumer.max_deliver != -1 {
        return Err(ConfigError::Resolve(format!(
            "jetstream ack_policy `all` needs max_deliver unlimited (-1), not {}: a message JetStream gives up on would leave the collector unable to prove what a cumulative ack covers",
            consumer.max_deliver
        )));
    }
    if consumer.ack_wait <= batch.timeout {
        return Err(ConfigError::Resolve(format!(
            "jetstream ack_wait ({:?}) must be longer than the batch timeout ({:?}), or every batch is redelivered before it is written",
            consumer.ack_wait, batch.timeout
        )));
    }
    let encoding = match nats.encoding.as_deref().unwrap_or("auto") {
        "auto" => Encoding::Auto,
        "otlp_json" | "otlp-json" => Encoding::OtlpJson,
        "otlp_proto" | "otlp" | "otlp_protobuf" => Encoding::OtlpProto,
        "flat_json" | "json" => Encoding::FlatJson,
        other => {
            return Err(ConfigError::Resolve(format!(
                "receivers.nats.encoding `{other}` is not one of auto, otlp_json, otlp_proto, flat_json"
            )))
        }
    };
    let tls = nats.tls.as_ref().map(|t| TlsFiles {
        ca_file: t.ca_file.clone(),
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
    });
    let nats_settings = NatsSettings {
        url: overrides
            .nats_url
            .clone()
            .or_else(|| env_override("JETSCALE_NATS_URL"))
            .or_else(|| nats.url.clone())
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_owned()),
        auth: NatsAuth {
            user: nats.user.clone(),
            password: match (&nats.password, &nats.password_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(file)) => Some(read_secret(file)?),
                (None, None) => None,
            },
            token: nats.token.clone(),
            nkey_file: nats.nkey_file.clone(),
            creds_file: nats.creds_file.clone(),
        },
        tls,
    };

    let pg = file.exporters.postgresql.as_ref();
    let store = StoreSettings {
        url: overrides
            .database_url
            .clone()
            .or_else(|| env_override("JETSCALE_DATABASE_URL"))
            .or_else(|| pg.and_then(|p| p.endpoint.clone()))
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
        password_file: pg.and_then(|p| p.password_file.clone()),
        schema: pg
            .and_then(|p| p.schema.clone())
            .unwrap_or_else(|| "public".into()),
        metrics_table: pg
            .and_then(|p| p.table_name.clone())
            .unwrap_or_else(|| "iot_metrics".into()),
        distributions_table: pg
            .and_then(|p| p.distributions_table.clone())
            .unwrap_or_else(|| "telemetry_distributions".into()),
        spans_table: pg
            .and_then(|p| p.spans_table.clone())
            .unwrap_or_else(|| "telemetry_spans".into()),
        logs_table: pg
            .and_then(|p| p.logs_table.clone())
            .unwrap_or_else(|| "telemetry_logs".into()),
        dead_letter_table: pg
            .and_then(|p| p.dead_letter_table.clone())
            .unwrap_or_else(|| "jetscale_dead_letters".into()),
        chunk_interval: pg
            .and_then(|p| p.chunk_interval)
            .map_or(Duration::from_secs(3600), |d| d.0),
        retention: pg
            .and_then(|p| p.retention)
            .map_or(Duration::from_secs(7 * 86_400), |d| d.0),
        rollup_retention: pg
            .and_then(|p| p.rollup_retention)
            .map_or(Duration::from_secs(365 * 86_400), |d| d.0),
        writers: pg.and_then(|p| p.writers).unwrap_or(2).clamp(1, 16),
        layout: match pg.and_then(|p| p.layout.as_deref()) {
            Some(value) => MetricsLayout::parse(value)?,
            None => MetricsLayout::Series,
        },
        series_cache: pg
            .and_then(|p| p.series_cache)
            .unwrap_or(DEFAULT_SERIES_CACHE)
            .max(1024),
        direct_compress: pg.and_then(|p| p.direct_compress).unwrap_or(false),
        compress_after: None,
        index_open_partitions: pg.and_then(|p| p.index_open_partitions).unwrap_or(false),
        backend: match pg.and_then(|p| p.backend.as_deref()) {
            Some(value) => BackendChoice::parse(value)?,
            None => BackendChoice::Auto,
        },
    };
    validate_identifier("exporters.postgresql.schema", &store.schema)?;
    validate_identifier("exporters.postgresql.table_name", &store.metrics_table)?;
    for (what, name) in [
        (
            "exporters.postgresql.dead_letter_table",
            &store.dead_letter_table,
        ),
        (
            "exporters.postgresql.distributions_table",
            &store.distributions_table,
        ),
        ("exporters.postgresql.spans_table", &store.spans_table),
        ("exporters.postgresql.logs_table", &store.logs_table),
    ] {
        validate_identifier(what, name)?;
    }
    if store.chunk_interval < Duration::from_secs(60)
        || !store.chunk_interval.as_secs().is_multiple_of(60)
    {
        return Err(ConfigError::Resolve(
            "exporters.postgresql.chunk_interval must be a whole number of minutes, at least 1m"
                .into(),
        ));
    }

    let mut resource = Vec::new();
    if let Some(r) = &file.processors.resource {
        for (i, a) in r.attributes.iter().enumerate() {
            resource.push(resolve_action(i, a)?);
        }
    }

    let l = &file.limits;
    let d = Limits::default();
    let limits = Limits {
        max_message_bytes: l
            .max_message_bytes
            .map_or(d.max_message_bytes, |b| b.0.max(0) as usize),
        max_points_per_message: l.max_points_per_message.unwrap_or(d.max_points_per_message),
        max_attributes: l.max_attributes.unwrap_or(d.max_attributes),
        max_attribute_key_bytes: l
            .max_attribute_key_bytes
            .unwrap_or(d.max_attribute_key_bytes),
        max_attribute_value_bytes: l
            .max_attribute_value_bytes
            .unwrap_or(d.max_attribute_value_bytes),
        max_value_depth: l.max_value_depth.unwrap_or(d.max_value_depth),
        // Data older than the raw retention would be dropped at once: refuse it up front.
        max_past: l
            .max_past
            .map_or(store.retention, |v| v.0.min(store.retention)),
        max_future: l.max_future.map_or(d.max_future, |v| v.0),
        verify_device_subject: l.verify_device_subject.unwrap_or(d.verify_device_subject),
    };
    let mut store = store;
    store.compress_after =
        resolve_compress_after(pg.and_then(|p| p.compress_after), limits.max_past, &store)?;

    if let Some(subject) = &nats.dead_letter_subject {
        check_dead_letter_subject(subject, &stream.subjects)?;
    }

    Ok(Settings {
        nats: nats_settings,
        stream,
        consumer,
        encoding,
        store,
        batch,
        resource,
        limits,
        dead_letter_subject: nats.dead_letter_subject.clone(),
        telemetry: super::telemetry::resolve(file.service.telemetry.as_ref())?,
    })
}

/// `exporters.postgresql.compress_after`: off, or an age past the late-arrival window. A
/// compressed chunk still takes late rows, but each one lands uncompressed beside the
/// columnstore until the chunk is recompressed, so compressing inside the window would pay
/// that on every late row.
fn resolve_compress_after(
    written: Option<DurationOrOff>,
    max_past: Duration,
    store: &StoreSettings,
) -> Result<Option<Duration>, ConfigError> {
    let Some(DurationOrOff(written)) = written else {
        return Ok(Some(max_past + store.chunk_interval));
    };
    let Some(after) = written else {
        return Ok(None);
    };
    if after <= max_past {
        return Err(ConfigError::Resolve(format!(
            "exporters.postgresql.compress_after ({}) must be later than limits.max_past ({}), the oldest a point the collector accepts may be: raise compress_after, lower limits.max_past, or write compress_after: off",
            humantime_secs(after),
            humantime_secs(max_past)
        )));
    }
    if after >= store.retention {
        return Err(ConfigError::Resolve(format!(
            "exporters.postgresql.compress_after ({}) must be shorter than exporters.postgresql.retention ({}), or rows are dropped before they are compressed: lower compress_after (and limits.max_past), or write compress_after: off",
            humantime_secs(after),
            humantime_secs(store.retention)
        )));
    }
    Ok(Some(after))
}

/// A whole number of seconds as the largest unit that divides it (`8d`, `90m`, `45s`).
fn humantime_secs(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Checks `receivers.nats.dead_letter_subject`: a subject one can publish on (no wildcards)
/// that none of the stream's subjects captures, or the collector would consume its own dead
/// letters again, and dead-letter them again, for ever.
pub fn check_dead_letter_subject(
    subject: &str,
    stream_subjects: &[String],
) -> Result<(), ConfigError> {
    let publishable = !subject.is_empty()
        && subject
            .split('.')
            .all(jetscale_model::subject::is_valid_token);
    if !publishable {
        return Err(ConfigError::Resolve(format!(
            "receivers.nats.dead_letter_subject `{subject}` is not a subject to publish on: dot-separated tokens, none empty, without wildcards or spaces"
        )));
    }
    if let Some(capturing) = stream_subjects
        .iter()
        .find(|pattern| subject_matches(pattern, subject))
    {
        return Err(ConfigError::Resolve(format!(
            "receivers.nats.dead_letter_subject `{subject}` is one of the stream's subjects (`{capturing}`): the collector would consume its own dead letters again. Use a subject outside the stream, e.g. `jetscale.dead_letters`"
        )));
    }
    Ok(())
}

/// Whether the subject `pattern` (`*` one token, a last `>` one or more) covers `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in pattern.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

fn one_of(
    what: &str,
    value: Option<&str>,
    default: &str,
    allowed: &[&str],
) -> Result<String, ConfigError> {
    let value = value.unwrap_or(default).to_ascii_lowercase();
    if allowed.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(ConfigError::Resolve(format!(
            "{what} `{value}` is not one of {}",
            allowed.join(", ")
        )))
    }
}

fn read_secret(path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| ConfigError::Resolve(format!("cannot read password file {path}: {e}")))
}

fn resolve_action(
    index: usize,
    a: &super::file::AttributeActionFile,
) -> Result<AttributeAction, ConfigError> {
    let at = format!("processors.resource.attributes[{index}]");
    let kind = match a.action.as_str() {
        "insert" => AttributeActionKind::Insert,
        "update" => AttributeActionKind::Update,
        "upsert" => AttributeActionKind::Upsert,
        "delete" => AttributeActionKind::Delete,
        other => {
            return Err(ConfigError::Resolve(format!(
                "{at}.action `{other}` is not one of insert, update, upsert, delete"
            )))
        }
    };
    if a.from_attribute.is_some() {
        return Err(ConfigError::Resolve(format!(
            "{at}.from_attribute is not supported; give a `value`"
        )));
    }
    if a.key.is_empty() {
        return Err(ConfigError::Resolve(format!("{at}.key must not be empty")));
    }
    let value = match (&a.value, kind) {
        (_, AttributeActionKind::Delete) => serde_json::Value::Null,
        (Some(v), _) => v.clone(),
        (None, _) => {
            return Err(ConfigError::Resolve(format!(
                "{at} (`{}`, {}) needs a `value`",
                a.key, a.action
            )))
        }
    };
    Ok(AttributeAction {
        key: a.key.clone(),
        kind,
        value_json: value.to_string(),
        value_text: value.as_str().map(str::to_owned),
    })
}

fn check_pipelines(file: &ConfigFile) -> Result<(), ConfigError> {
    for (name, pipeline) in &file.service.pipelines {
        let signal = name.split('/').next().unwrap_or(name);
        if !matches!(signal, "metrics" | "traces" | "logs") {
            return Err(ConfigError::Resolve(format!(
                "service.pipelines.{name}: a pipeline is named metrics, traces or logs (optionally `/suffix`)"
            )));
        }
        for r in &pipeline.receivers {
            if r != "nats" || file.receivers.nats.is_none() {
                return Err(ConfigError::Resolve(format!(
                    "service.pipelines.{name}.receivers: `{r}` is not a configured receiver (jetscale has `nats`)"
                )));
            }
        }
        for p in &pipeline.processors {
            let known = match p.as_str() {
                "batch" => file.processors.batch.is_some(),
                "resource" => file.processors.resource.is_some(),
                _ => false,
            };
            if !known {
                return Err(ConfigError::Resolve(format!(
                    "service.pipelines.{name}.processors: `{p}` is not a configured processor (jetscale has `batch` and `resource`)"
                )));
            }
        }
        for e in &pipeline.exporters {
            if e != "postgresql" || file.exporters.postgresql.is_none() {
                return Err(ConfigError::Resolve(format!(
                    "service.pipelines.{name}.exporters: `{e}` is not a configured exporter (jetscale has `postgresql`)"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The IoT design's collector-config.yaml, verbatim.
    pub const SEED_CONFIG: &str = include_str!("../../../../examples/collector-config.yaml");

    fn env(name: &str) -> Option<String> {
        (name == "HOSTNAME").then(|| "edge-7".to_owned())
    }

    #[test]
    fn seed_config_loads_as_it_is() {
        let file = ConfigFile::parse(SEED_CONFIG, Path::new("seed.yaml"), &env).unwrap();
        let s = resolve(&file, &Overrides::default()).unwrap();
        assert_eq!(s.stream.name, "TELEMETRY");
        assert_eq!(s.consumer.name, "otel-collector");
        assert_eq!(s.consumer.filter_subject, "telemetry.>");
        assert!(s.consumer.durable);
        assert_eq!(s.encoding, Encoding::OtlpJson);
        assert_eq!(s.batch.max_rows, 5000);
        assert_eq!(s.batch.timeout, Duration::from_secs(5));
        assert_eq!(s.store.metrics_table, "otel_metrics");
        assert_eq!(s.resource.len(), 1);
        assert_eq!(s.resource[0].key, "pipeline.processed_at");
        assert_eq!(s.resource[0].kind, AttributeActionKind::Upsert);
        assert_eq!(s.resource[0].value_json, "\"edge-7\"");
        assert!(s.nats.url.contains("@nats:4222") || std::env::var("JETSCALE_NATS_URL").is_ok());
    }

    #[test]
    fn overrides_beat_the_file() {
        let file = ConfigFile::parse(SEED_CONFIG, Path::new("seed.yaml"), &env).unwrap();
        let s = resolve(
            &file,
            &Overrides {
                nats_url: Some("nats://127.0.0.1:1".into()),
                database_url: Some("postgresql://127.0.0.1:2/x".into()),
                replicas: Some(3),
            },
        )
        .unwrap();
        assert_eq!(s.nats.url, "nats://127.0.0.1:1");
        assert_eq!(s.store.url, "postgresql://127.0.0.1:2/x");
        assert_eq!(s.stream.replicas, 3);
    }

    #[test]
    fn misspelled_key_names_its_path() {
        let text = SEED_CONFIG.replace("send_batch_size", "send_batch_sise");
        let err = ConfigFile::parse(&text, Path::new("c.yaml"), &env).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("processors.batch"), "{message}");
        assert!(message.contains("send_batch_sise"), "{message}");
    }

    #[test]
    fn bad_values_are_named() {
        let text = SEED_CONFIG.replace("timeout: 5s", "timeout: 5 parsecs");
        let err = ConfigFile::parse(&text, Path::new("c.yaml"), &env).unwrap_err();
        assert!(
            err.to_string().contains("processors.batch.timeout"),
            "{err}"
        );
        let text = SEED_CONFIG.replace(
            "table_name: otel_metrics",
            "table_name: \"x; drop table y\"",
        );
        let file = ConfigFile::parse(&text, Path::new("c.yaml"), &env).unwrap();
        let err = resolve(&file, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("table_name"), "{err}");
        let text = SEED_CONFIG.replace(
            "processors: [resource, batch]",
            "processors: [resource, batch, memory_limiter]",
        );
        let file = ConfigFile::parse(&text, Path::new("c.yaml"), &env).unwrap();
        let err = resolve(&file, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("memory_limiter"), "{err}");
    }

    #[test]
    fn ack_policy_is_explicit_unless_asked_and_all_needs_unlimited_deliveries() {
        let load = |jetstream: &str| {
            let text = format!("receivers:\n  nats:\n    jetstream:\n{jetstream}");
            let file = ConfigFile::parse(&text, Path::new("c.yaml"), &env).unwrap();
            resolve(&file, &Overrides::default())
        };
        let explicit = load("      ack_wait: 60s\n").unwrap();
        assert_eq!(explicit.consumer.ack_policy, AckPolicy::Explicit);
        let all = load("      ack_policy: all\n").unwrap();
        assert_eq!(all.consumer.ack_policy, AckPolicy::All);
        let err = load("      ack_policy: none\n").unwrap_err().to_string();
        assert!(err.contains("`explicit`") && err.contains("`all`"), "{err}");
        let err = load("      ack_policy: all\n      max_deliver: 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_deliver"), "{err}");
    }

    #[test]
    fn a_dead_letter_subject_the_stream_would_capture_is_refused() {
        let load = |dead_letter_subject: &str| {
            let text = format!(
                "receivers:\n  nats:\n    dead_letter_subject: {dead_letter_subject}\n    jetstream:\n      stream_settings:\n        subjects: [\"telemetry.>\", \"devices.*.raw\"]\n"
            );
            let file = ConfigFile::parse(&text, Path::new("c.yaml"), &env).unwrap();
            resolve(&file, &Overrides::default())
        };
        for captured in [
            "telemetry.dead_letters",
            "telemetry.a.b.c",
            "devices.d1.raw",
        ] {
            let err = load(captured).unwrap_err().to_string();
            assert!(
                err.contains("dead_letter_subject") && err.contains("consume its own"),
                "{captured}: {err}"
            );
        }
        for outside in [
            "jetscale.dead_letters",
            "telemetry",
            "devices.d1.raw.x",
            "devices.raw",
        ] {
            let s = load(outside).unwrap();
            assert_eq!(s.dead_letter_subject.as_deref(), Some(outside));
        }
        for unpublishable in ["dead.>", "dead.*.x", "dead..x", "\"dead x\""] {
            let err = load(unpublishable).unwrap_err().to_string();
            assert!(err.contains("not a subject to publish on"), "{err}");
        }
        assert!(resolve(&ConfigFile::default(), &Overrides::default())
            .unwrap()
            .dead_letter_subject
            .is_none());
    }

    #[test]
    fn subject_patterns_match_as_nats_does() {
        assert!(subject_matches("telemetry.>", "telemetry.metrics.d1"));
        assert!(!subject_matches("telemetry.>", "telemetry"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.c.d"));
        assert!(!subject_matches("a.*", "a"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.bc"));
        assert!(subject_matches(">", "anything.at.all"));
    }

    #[test]
    fn seed_001_stream_settings() {
        let text = "receivers:\n  nats:\n    jetstream:\n      stream_settings:\n        max_age: 7d\n        max_bytes: 1GB\n        duplicate_window: 5s\n";
        let file = ConfigFile::parse(text, Path::new("c.yaml"), &env).unwrap();
        let s = resolve(&file, &Overrides::default()).unwrap();
        assert_eq!(s.stream.max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(s.stream.max_bytes, 1_000_000_000);
        assert_eq!(s.stream.duplicate_window, Duration::from_secs(5));
        assert_eq!(s.stream.subjects, vec!["telemetry.>".to_owned()]);
    }

    #[test]
    fn defaults_are_seed_000() {
        let s = resolve(&ConfigFile::default(), &Overrides::default()).unwrap();
        assert_eq!(s.stream.max_age, Duration::from_secs(48 * 3600));
        assert_eq!(s.stream.max_bytes, 50_000_000_000);
        assert_eq!(s.stream.storage, "file");
        assert_eq!(s.stream.discard, "old");
        assert_eq!(s.store.metrics_table, "iot_metrics");
        assert_eq!(s.store.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(s.store.backend, BackendChoice::Auto);
    }

    #[test]
    fn backend_is_one_of_three() {
        for (written, choice) in [
            ("auto", BackendChoice::Auto),
            ("timescaledb", BackendChoice::Timescaledb),
            ("PostgreSQL", BackendChoice::Postgresql),
        ] {
            let text = format!("exporters:\n  postgresql:\n    backend: {written}\n");
            let file = ConfigFile::parse(&text, Path::new("c.yaml"), &env).unwrap();
            let s = resolve(&file, &Overrides::default()).unwrap();
            assert_eq!(s.store.backend, choice);
        }
        let text = "exporters:\n  postgresql:\n    backend: timescale\n";
        let file = ConfigFile::parse(text, Path::new("c.yaml"), &env).unwrap();
        let err = resolve(&file, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("exporters.postgresql.backend"), "{err}");
        assert!(err.contains("`timescale`"), "{err}");
    }

    fn compress_after(yaml: &str) -> Result<Option<Duration>, String> {
        let env = |_: &str| None;
        let file = ConfigFile::parse(yaml, Path::new("c.yaml"), &env).map_err(|e| e.to_string())?;
        resolve(&file, &Overrides::default())
            .map(|s| s.store.compress_after)
            .map_err(|e| e.to_string())
    }

    /// Off, a duration past the late-arrival window and before the retention, or an error
    /// naming both settings; by default one chunk interval past `max_past`.
    #[test]
    fn compress_after_is_past_the_late_window() {
        let day = Duration::from_secs(86_400);
        let base = "limits:\n  max_past: 1d\nexporters:\n  postgresql:\n";
        assert_eq!(
            compress_after(base),
            Ok(Some(day + Duration::from_secs(3600)))
        );
        assert_eq!(
            compress_after(&format!("{base}    compress_after: 2d\n")),
            Ok(Some(2 * day))
        );
        for off in ["off", "0", "\"0s\"", "false"] {
            let yaml = format!("{base}    compress_after: {off}\n");
            assert_eq!(compress_after(&yaml), Ok(None), "{off}");
        }
        let err = compress_after(&format!("{base}    compress_after: 1d\n")).unwrap_err();
        assert!(err.contains("limits.max_past (1d)"), "{err}");
        let err = compress_after(&format!("{base}    compress_after: 7d\n")).unwrap_err();
        assert!(err.contains("retention (7d)"), "{err}");
        let err = compress_after(&format!("{base}    compress_after: soon\n")).unwrap_err();
        assert!(err.contains("compress_after"), "{err}");
    }
}
