//! The database side: connecting, schema migrations, the binary COPY writer with its delivery
//! ledger, background maintenance (partitions, rollups, retention) and the queries users run.

pub mod batch;
pub mod copy;
pub mod ledger;
pub mod maintenance;
pub mod query;
pub mod schema;
pub mod series;
pub mod tls;
pub mod writer;

use crate::config::StoreSettings;
use crate::redact::redact_url;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

pub use batch::{Batch, DeadLetter, MessageEntry, Table};
pub use tls::{SslMode, TlsParams};

/// A database failure, classified by what the collector should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database connection string ({0}): write postgresql://user@host:5432/db or host=… dbname=…")]
    Config(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}. Is it running, and does JETSCALE_DATABASE_URL / exporters.postgresql.endpoint point at it?")]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("stream check failed: {0}")]
    StreamIdentity(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Whether the same statement may succeed later (lost connection, server restarting,
    /// deadlock, lock timeout, resources): retry with back-off and keep the messages.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Db(e) => is_transient_db(e),
            _ => false,
        }
    }

    /// Whether the rows themselves were refused (bad value, constraint, size): isolate the
    /// message responsible and dead-letter it.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Db(e) => e.code().is_some_and(|code| {
                let c = code.code();
                (c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
                    && *code != SqlState::EXCLUSION_VIOLATION
            }),
            _ => false,
        }
    }

    /// Whether a concurrent writer committed some of the same messages first.
    pub fn is_ledger_conflict(&self) -> bool {
        matches!(self, StoreError::Db(e) if e.code() == Some(&SqlState::EXCLUSION_VIOLATION))
    }
}

/// [`StoreError::is_transient`] for a database error.
pub(crate) fn is_transient_db(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // IO or a closed connection.
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c.starts_with("58")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::QUERY_CANCELED
        }
    }
}

/// Opens a connection and drives it on a background task.
///
/// TLS follows libpq: `sslmode` (default `prefer`), `sslrootcert`, `sslcert` and `sslkey` in
/// the connection string or the `PGSSL*` environment variables; see [`tls`].
pub async fn connect(settings: &StoreSettings) -> Result<Client, StoreError> {
    let (conn, tls_params) = tls::split_tls_params(&settings.url)?;
    let mut config: tokio_postgres::Config = conn
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
    if let Some(file) = &settings.password_file {
        let password = std::fs::read_to_string(file)
            .map_err(|e| StoreError::Config(format!("cannot read password file {file}: {e}")))?;
        config.password(password.trim_end_matches(['\n', '\r']));
    }
    if config.get_application_name().is_none() {
        config.application_name("jetscale");
    }
    let connector = tls::configure(&mut config, &tls_params)?;
    let failed = |source| StoreError::Connect {
        target: redact_url(&settings.url),
        source,
    };
    let client = match connector {
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
            drive(connection);
            client
        }
        Some(connector) => {
            let (client, connection) = config.connect(connector).await.map_err(failed)?;
            drive(connection);
            client
        }
    };
    Ok(client)
}

/// Runs a connection on a task of its own until it closes; the client sees the end as errors.
fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
}
