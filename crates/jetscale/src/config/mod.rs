//! The collector's configuration: the IoT design's Collector-shaped YAML (receivers / processors /
//! exporters / service.pipelines), parsed strictly, `${VAR}`-expanded, then resolved into the
//! typed [`Settings`] the rest of the code is handed.
//!
//! Parsing and resolving are two steps, as in ripgrep: [`file`] mirrors the YAML exactly
//! (unknown keys are errors naming their path), [`settings`] turns it into values with
//! defaults applied and flag/env overrides on top.

pub mod expand;
pub mod file;
pub mod settings;
pub mod telemetry;
pub mod units;

pub use file::ConfigFile;
pub use settings::{
    AckPolicy, AttributeAction, AttributeActionKind, BackendChoice, BatchSettings,
    ConsumerSettings, Encoding, Limits, MetricsLayout, NatsAuth, NatsSettings, Overrides, Settings,
    StoreSettings, StreamSettings, TlsFiles,
};
pub use telemetry::TelemetrySettings;

use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded. Each variant names the file and the place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: at `{key_path}`: {message}")]
    Invalid {
        path: PathBuf,
        key_path: String,
        message: String,
    },
    #[error("{path}: at `{key_path}`: environment variable `{var}` is not set (set it, or write `${{{var}:-default}}`)")]
    MissingVar {
        path: PathBuf,
        key_path: String,
        var: String,
    },
    #[error("configuration: {0}")]
    Resolve(String),
}

/// Reads, expands and parses a config file, then resolves it into settings.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file = ConfigFile::parse(&text, path, &expand::process_env)?;
    settings::resolve(&file, overrides)
}

/// The settings used when no config file is given: the IoT design's defaults.
pub fn defaults(overrides: &Overrides) -> Result<Settings, ConfigError> {
    settings::resolve(&ConfigFile::default(), overrides)
}
