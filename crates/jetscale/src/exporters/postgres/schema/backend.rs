//! Which storage engine is behind the tables, and why (`exporters.postgresql.backend`).
//!
//! A TimescaleDB package makes the extension *available* to every cluster, but only a server
//! started with `shared_preload_libraries = 'timescaledb'` can create it; otherwise PostgreSQL
//! answers `CREATE EXTENSION timescaledb` with a FATAL error and closes that connection. So
//! the attempt runs on a connection of its own, and whatever happens next (TimescaleDB, the
//! native fallback, or the error `backend: timescaledb` asks for) uses the caller's
//! connection, which never saw it.

use super::{recorded_schema, RelationNames};
use crate::config::{BackendChoice, StoreSettings};
use crate::exporters::postgres::{connect, is_transient_db, StoreError};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Which storage engine is behind the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Plain PostgreSQL: declarative partitioning and jetscale's own rollup and retention.
    Native,
    /// TimescaleDB `major.minor`; `apache_only` when built without the TSL features
    /// (no continuous aggregate policies, no retention jobs).
    Timescale {
        major: u32,
        minor: u32,
        apache_only: bool,
        /// `direct_compress` configured: COPY writes compressed batches (2.21+).
        direct_compress: bool,
    },
}

impl Backend {
    /// Whether the hourly rollup is a TimescaleDB continuous aggregate with a policy.
    pub fn continuous_aggregate(&self) -> bool {
        match self {
            Backend::Native => false,
            Backend::Timescale {
                major,
                minor,
                apache_only,
                direct_compress,
            } => {
                // Continuous aggregates see directly compressed COPYs from 2.24 on; before
                // that jetscale keeps the rollup itself.
                !apache_only && (!direct_compress || (*major, *minor) >= (2, 24))
            }
        }
    }
    /// Whether writers switch on `timescaledb.enable_direct_compress_copy`.
    pub fn direct_compress(&self) -> bool {
        matches!(
            self,
            Backend::Timescale {
                direct_compress: true,
                ..
            }
        )
    }
    /// Whether jetscale creates and drops partitions itself.
    pub fn native_partitions(&self) -> bool {
        matches!(self, Backend::Native)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Native => f.write_str("PostgreSQL (native partitions)"),
            Backend::Timescale {
                major,
                minor,
                apache_only,
                direct_compress,
            } => write!(
                f,
                "TimescaleDB {major}.{minor}{}{}",
                if *apache_only {
                    " (Apache license: jetscale runs rollups and retention)"
                } else {
                    ""
                },
                if *direct_compress {
                    " with direct compress"
                } else {
                    ""
                }
            ),
        }
    }
}

/// The backend found, and why, for `jetscale setup`'s report and the collector's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub backend: Backend,
    /// Why this backend; after a fallback, also how to enable TimescaleDB.
    pub reason: String,
}

/// What the server says about TimescaleDB before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Extension {
    /// Created in this database, at this version.
    Created(String),
    /// Installed on the server (`pg_available_extensions`), at this default version, but not
    /// created in this database.
    Available(String),
    /// Not installed on the server.
    Absent,
}

/// What to do, decided from the choice, the server and what an earlier migration recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Use the extension already created, at this version.
    Timescale {
        version: String,
        reason: String,
    },
    /// Try `CREATE EXTENSION timescaledb` (on a connection of its own).
    Create {
        version: String,
    },
    Native {
        reason: String,
    },
    Refuse(String),
}

/// How to make the server able to create the extension; `config_file` when it could be read.
fn how_to_preload(config_file: Option<&str>) -> String {
    format!(
        "add timescaledb to shared_preload_libraries in {} (shared_preload_libraries = 'timescaledb') and restart PostgreSQL",
        config_file.unwrap_or("postgresql.conf")
    )
}

/// What `auto` says when it falls back, after the cause: tables made now are native, and stay
/// so, so the remedy is for a new database or schema.
fn fallback(cause: &str, remedy: &str) -> String {
    format!(
        "{cause}; using native PostgreSQL partitioning. To use TimescaleDB, {remedy}, then run `jetscale setup` on a new database or schema (tables made natively stay native); to say native partitioning is intended, set exporters.postgresql.backend: postgresql"
    )
}

/// What `timescaledb` says when it cannot be had, after the cause.
fn refusal(cause: &str, remedy: &str) -> String {
    format!(
        "exporters.postgresql.backend is timescaledb, and {cause}: {remedy}, then run `jetscale setup` again; or set backend: auto (or postgresql) to use native partitioning"
    )
}

fn plan(choice: BackendChoice, extension: &Extension, recorded: Option<&str>) -> Plan {
    let recorded_native = recorded.is_some_and(|b| !b.starts_with("TimescaleDB"));
    let recorded_timescale = recorded.is_some_and(|b| b.starts_with("TimescaleDB"));
    match choice {
        BackendChoice::Postgresql if recorded_timescale => Plan::Refuse(format!(
            "exporters.postgresql.backend is postgresql, but this schema was created on {} (jetscale_schema): its tables are hypertables, which jetscale does not convert; set backend: auto (or timescaledb), or use another schema or database",
            recorded.unwrap_or_default()
        )),
        BackendChoice::Postgresql => Plan::Native {
            reason: "exporters.postgresql.backend is postgresql, so the TimescaleDB extension is not used".into(),
        },
        BackendChoice::Timescaledb if recorded_native => Plan::Refuse(
            "exporters.postgresql.backend is timescaledb, but this schema was created with native PostgreSQL partitioning (jetscale_schema), which jetscale does not convert to hypertables; set backend: auto (or postgresql), or use another schema or database".into(),
        ),
        BackendChoice::Auto if recorded_native => Plan::Native {
            reason: "this schema was created with native PostgreSQL partitioning (jetscale_schema records it), and jetscale does not convert tables to hypertables; a new database or schema gets TimescaleDB where the server preloads it".into(),
        },
        BackendChoice::Auto | BackendChoice::Timescaledb => match extension {
            Extension::Created(version) => Plan::Timescale {
                version: version.clone(),
                reason: format!("the timescaledb extension {version} is created in this database"),
            },
            Extension::Available(version) => Plan::Create {
                version: version.clone(),
            },
            Extension::Absent => {
                let cause = "TimescaleDB is not installed on this PostgreSQL server (pg_available_extensions has no timescaledb)";
                let remedy = format!(
                    "install it (a TimescaleDB package, or scripts/timescaledb.sh from source), {}",
                    how_to_preload(None)
                );
                if choice == BackendChoice::Timescaledb {
                    Plan::Refuse(refusal(cause, &remedy))
                } else {
                    Plan::Native {
                        reason: fallback(cause, &remedy),
                    }
                }
            }
        },
    }
}

/// Why `CREATE EXTENSION timescaledb` failed, and what would make it work.
fn explain_create_failure(
    version: &str,
    error: &tokio_postgres::Error,
    config_file: Option<&str>,
) -> (String, String) {
    let detail = error
        .as_db_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned());
    if is_preload_refusal(error) {
        (
            format!("TimescaleDB {version} is installed but not preloaded (PostgreSQL answered CREATE EXTENSION timescaledb with: {detail})"),
            how_to_preload(config_file),
        )
    } else if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        (
            format!("TimescaleDB {version} is installed but this role may not create the extension ({detail})"),
            "have a superuser run CREATE EXTENSION timescaledb in this database".into(),
        )
    } else {
        (
            format!("TimescaleDB {version} is installed but CREATE EXTENSION timescaledb failed ({detail})"),
            format!("if the server does not preload it, {}", how_to_preload(config_file)),
        )
    }
}

/// Finds out which backend to use, creating the TimescaleDB extension when the choice and the
/// server allow it.
pub async fn detect(client: &Client, settings: &StoreSettings) -> Result<Detection, StoreError> {
    let recorded = recorded_schema(client, &RelationNames::new(settings)).await;
    detect_with(client, settings, recorded.as_ref()).await
}

/// [`detect`] with what an earlier migration recorded already read.
pub(super) async fn detect_with(
    client: &Client,
    settings: &StoreSettings,
    recorded: Option<&(i32, String)>,
) -> Result<Detection, StoreError> {
    let recorded = recorded.map(|(_, backend)| backend.as_str());
    let extension = match extension_version(client, CREATED_VERSION).await? {
        Some(version) => Extension::Created(version),
        None => match extension_version(client, AVAILABLE_VERSION).await? {
            Some(version) => Extension::Available(version),
            None => Extension::Absent,
        },
    };
    let (version, reason) = match plan(settings.backend, &extension, recorded) {
        Plan::Native { reason } => {
            return Ok(Detection {
                backend: Backend::Native,
                reason,
            })
        }
        Plan::Refuse(message) => return Err(StoreError::Other(message)),
        Plan::Timescale { version, reason } => (version, reason),
        Plan::Create { version } => match create_extension(settings).await? {
            Ok(()) => {
                let created = extension_version(client, CREATED_VERSION)
                    .await?
                    .unwrap_or(version);
                let reason =
                    format!("created the timescaledb extension {created} (the server preloads it)");
                (created, reason)
            }
            Err(error) => {
                let config_file = client
                    .query_one("SELECT current_setting('config_file')", &[])
                    .await
                    .ok()
                    .map(|row| row.get::<_, String>(0));
                let (cause, remedy) =
                    explain_create_failure(&version, &error, config_file.as_deref());
                if settings.backend == BackendChoice::Timescaledb {
                    return Err(StoreError::Other(refusal(&cause, &remedy)));
                }
                let reason = fallback(&cause, &remedy);
                tracing::warn!("{reason}");
                return Ok(Detection {
                    backend: Backend::Native,
                    reason,
                });
            }
        },
    };
    let backend = timescale(client, settings, &version).await?;
    Ok(Detection { backend, reason })
}

/// [`detect`] without the reason.
pub async fn detect_backend(
    client: &Client,
    settings: &StoreSettings,
) -> Result<Backend, StoreError> {
    Ok(detect(client, settings).await?.backend)
}

const CREATED_VERSION: &str = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'";
const AVAILABLE_VERSION: &str =
    "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'";

async fn extension_version(client: &Client, query: &str) -> Result<Option<String>, StoreError> {
    Ok(client.query_opt(query, &[]).await?.map(|row| row.get(0)))
}

/// `CREATE EXTENSION timescaledb` on a connection of its own. The outer error is about
/// reaching the server (the caller's to handle); the inner one is the server's answer, which
/// decides between falling back and failing. A transient answer (server restarting, out of
/// connections) is returned as the outer error: falling back on it would make native tables
/// on a server that can run TimescaleDB.
async fn create_extension(
    settings: &StoreSettings,
) -> Result<Result<(), tokio_postgres::Error>, StoreError> {
    let probe = connect(settings).await?;
    match probe
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
    {
        Ok(()) => Ok(Ok(())),
        Err(e) if !is_preload_refusal(&e) && is_transient_db(&e) => Err(StoreError::Db(e)),
        Err(e) => Ok(Err(e)),
    }
}

/// TimescaleDB's FATAL "extension "timescaledb" must be preloaded".
fn is_preload_refusal(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.message().contains("must be preloaded"))
}

/// The TimescaleDB backend at `version`, with what its license and version allow.
async fn timescale(
    client: &Client,
    settings: &StoreSettings,
    version: &str,
) -> Result<Backend, StoreError> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let license: Option<String> = client
        .query_opt("SELECT current_setting('timescaledb.license', true)", &[])
        .await?
        .and_then(|r| r.get(0));
    if settings.direct_compress && (major, minor) < (2, 21) {
        return Err(StoreError::Other(format!(
            "exporters.postgresql.direct_compress needs TimescaleDB 2.21 or later, this database has {major}.{minor}: upgrade the extension or remove the setting"
        )));
    }
    Ok(Backend::Timescale {
        major,
        minor,
        apache_only: license.as_deref() == Some("apache"),
        direct_compress: settings.direct_compress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHOICES: [BackendChoice; 3] = [
        BackendChoice::Auto,
        BackendChoice::Timescaledb,
        BackendChoice::Postgresql,
    ];

    fn native_reason(p: Plan) -> String {
        match p {
            Plan::Native { reason } => reason,
            other => panic!("expected native, got {other:?}"),
        }
    }

    fn refusal(p: Plan) -> String {
        match p {
            Plan::Refuse(message) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The server without TimescaleDB (no row in pg_available_extensions): `auto` goes native
    /// and says how to get TimescaleDB, `timescaledb` refuses, `postgresql` never asks.
    #[test]
    fn absent_extension() {
        let reason = native_reason(plan(BackendChoice::Auto, &Extension::Absent, None));
        assert!(reason.contains("not installed"), "{reason}");
        assert!(reason.contains("shared_preload_libraries"), "{reason}");
        let message = refusal(plan(BackendChoice::Timescaledb, &Extension::Absent, None));
        assert!(message.contains("backend is timescaledb"), "{message}");
        assert!(message.contains("not installed"), "{message}");
        let reason = native_reason(plan(BackendChoice::Postgresql, &Extension::Absent, None));
        assert!(reason.contains("postgresql"), "{reason}");
    }

    /// Installed on the server: `auto` and `timescaledb` try to create it, `postgresql` does not.
    #[test]
    fn available_extension() {
        let available = Extension::Available("2.28.3".into());
        for choice in [BackendChoice::Auto, BackendChoice::Timescaledb] {
            assert_eq!(
                plan(choice, &available, None),
                Plan::Create {
                    version: "2.28.3".into()
                }
            );
        }
        native_reason(plan(BackendChoice::Postgresql, &available, None));
    }

    /// Created in the database: used unless the user said `postgresql`.
    #[test]
    fn created_extension() {
        let created = Extension::Created("2.28.3".into());
        for choice in [BackendChoice::Auto, BackendChoice::Timescaledb] {
            match plan(choice, &created, Some("TimescaleDB 2.28")) {
                Plan::Timescale { version, reason } => {
                    assert_eq!(version, "2.28.3");
                    assert!(reason.contains("2.28.3"), "{reason}");
                }
                other => panic!("expected TimescaleDB, got {other:?}"),
            }
        }
        native_reason(plan(BackendChoice::Postgresql, &created, None));
    }

    /// A schema made on one backend is not rewritten on the other: `auto` keeps native tables
    /// native, and an explicit choice against what exists is refused with what to do.
    #[test]
    fn recorded_backend_wins_over_a_changed_server() {
        let native = Some("PostgreSQL (native partitions)");
        let timescale = Some("TimescaleDB 2.28");
        for extension in [
            Extension::Absent,
            Extension::Available("2.28.3".into()),
            Extension::Created("2.28.3".into()),
        ] {
            let reason = native_reason(plan(BackendChoice::Auto, &extension, native));
            assert!(reason.contains("jetscale_schema"), "{reason}");
            let message = refusal(plan(BackendChoice::Timescaledb, &extension, native));
            assert!(message.contains("native"), "{message}");
            let message = refusal(plan(BackendChoice::Postgresql, &extension, timescale));
            assert!(message.contains("hypertables"), "{message}");
        }
        for choice in CHOICES {
            assert!(!matches!(
                plan(choice, &Extension::Absent, native),
                Plan::Create { .. } | Plan::Timescale { .. }
            ));
        }
    }
}
