//! `jetscale status`: one read-only snapshot of the whole pipeline for an operator: the
//! stream and its limits, every consumer's backlog and lag, and the database's side (last
//! commit, dead letters, partitions, series, rollup and retention runs, size).
//!
//! Everything here only reads: JetStream info requests and direct message gets (which never
//! touch a consumer), and `SELECT`s a role with nothing but `SELECT` rights may run. Whatever
//! a section cannot read (a NATS user without the right, a table not created yet) is left
//! out with the reason in [`Status::notes`], so a partial answer is still an answer.

mod database;
mod render;
mod stream;

pub use database::{DatabaseStatus, DeadLetterCount, JobRun, RelationSize, RetentionStatus};
pub use render::render;
pub use stream::{ConsumerStatus, StreamLimits, StreamStatus};

use crate::config::Settings;
use serde::Serialize;

/// The snapshot `jetscale status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// When it was taken (RFC 3339, UTC).
    pub taken_at: String,
    /// `None` when NATS could not be read (the reason is in `notes`).
    pub stream: Option<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
    /// `None` when the database could not be read (the reason is in `notes`).
    pub database: Option<DatabaseStatus>,
    /// What could not be read, and why.
    pub notes: Vec<String>,
}

/// How the snapshot reads NATS.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusOptions {
    /// The NATS user is the collector's least-privilege one (`jetscale nats-config`): read
    /// through its inbox, and ask only what it may (stream and configured consumer info);
    /// the admin's (or an unrestricted) user also lists every consumer and reads the lag.
    pub collector_user: bool,
}

/// Takes one snapshot. Never fails as a whole: an unreachable server is a note.
pub async fn gather(settings: &Settings, options: StatusOptions) -> Status {
    let mut notes = Vec::new();
    let (stream, consumers) = match stream::gather(settings, options, &mut notes).await {
        Ok((stream, consumers)) => (Some(stream), consumers),
        Err(e) => {
            notes.push(format!("NATS: {e}"));
            (None, Vec::new())
        }
    };
    let database = match database::gather(settings, &mut notes).await {
        Ok(db) => Some(db),
        Err(e) => {
            notes.push(format!("database: {e}"));
            None
        }
    };
    Status {
        taken_at: rfc3339(time::OffsetDateTime::now_utc()),
        stream,
        consumers,
        database,
        notes,
    }
}

/// A time as RFC 3339, for the JSON output.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Seconds from `t` to now (negative if `t` is in the future), to a millisecond.
pub(crate) fn age_seconds(t: time::OffsetDateTime) -> f64 {
    let ms = (time::OffsetDateTime::now_utc() - t).whole_milliseconds();
    ms as f64 / 1000.0
}
