//! The operator's screen: one block per part, the figures that need attention first.

use super::{ConsumerStatus, DatabaseStatus, Status, StreamStatus};
use std::fmt::Write;

/// Partitions shown per table besides the oldest (the newest); the JSON has all of them.
const PARTITIONS_SHOWN: usize = 3;

/// The snapshot as text for a terminal.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "jetscale status at {}", status.taken_at);
    match &status.stream {
        Some(s) => stream(&mut out, s),
        None => out.push_str("\nstream: not read (see the notes below)\n"),
    }
    for c in &status.consumers {
        consumer(&mut out, c);
    }
    match &status.database {
        Some(db) => database(&mut out, db),
        None => out.push_str("\ndatabase: not read (see the notes below)\n"),
    }
    if !status.notes.is_empty() {
        out.push_str("\nnotes\n");
        for note in &status.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

fn stream(out: &mut String, s: &StreamStatus) {
    let l = &s.limits;
    let _ = writeln!(out, "\nstream {} (R{})", s.name, s.replicas);
    let _ = writeln!(
        out,
        "  messages     {}{}",
        s.messages,
        limit(l.max_messages.map(|m| m.to_string()), l.messages_used)
    );
    let _ = writeln!(
        out,
        "  bytes        {}{}",
        bytes(s.bytes as i64),
        limit(l.max_bytes.map(bytes), l.bytes_used)
    );
    let _ = writeln!(
        out,
        "  oldest       {}{}",
        s.oldest_age_seconds.map_or("-".to_owned(), duration),
        limit(l.max_age_seconds.map(duration), l.age_used)
    );
    let _ = writeln!(
        out,
        "  sequences    {}..{}  (discard {}, consumers: {})",
        s.first_sequence, s.last_sequence, l.discard, s.consumer_count
    );
}

fn consumer(out: &mut String, c: &ConsumerStatus) {
    let role = if c.configured {
        " (the collectors')"
    } else {
        ""
    };
    let _ = writeln!(out, "\nconsumer {}{role}", c.name);
    let _ = writeln!(
        out,
        "  pending      {}  ack pending {}  redelivered {}  waiting pulls {}",
        c.pending, c.ack_pending, c.redelivered, c.waiting_pulls
    );
    let _ = writeln!(
        out,
        "  lag          {}  (ack floor {}, last active {})",
        c.lag_seconds.map_or("unknown".to_owned(), duration),
        c.ack_floor,
        c.last_active.as_deref().unwrap_or("never")
    );
}

fn database(out: &mut String, db: &DatabaseStatus) {
    let _ = writeln!(
        out,
        "\ndatabase {} ({})",
        db.size_bytes.map_or("-".to_owned(), bytes),
        db.backend
            .as_deref()
            .unwrap_or("no jetscale schema recorded")
    );
    let _ = writeln!(
        out,
        "  last commit  {}",
        match (&db.last_commit, db.last_commit_age_seconds) {
            (Some(at), Some(age)) => format!("{at} ({} ago)", duration(age)),
            _ => "never".to_owned(),
        }
    );
    if let Some(n) = db.series {
        let _ = writeln!(out, "  series       {n}");
    }
    let hour: i64 = db.dead_letters_last_hour.iter().map(|d| d.count).sum();
    let _ = writeln!(
        out,
        "  dead letters {hour} in the last hour, {} in all",
        db.dead_letters_total
            .map_or("-".to_owned(), |n| n.to_string())
    );
    for d in &db.dead_letters_last_hour {
        let _ = writeln!(out, "    {:>6}  {}", d.count, d.reason);
    }
    let run = |r: &super::JobRun| {
        format!(
            "{}{}{}{}",
            match (&r.last_run, r.last_run_age_seconds) {
                (Some(at), Some(age)) => format!("last run {at} ({} ago)", duration(age)),
                _ => "never run".to_owned(),
            },
            r.last_status
                .as_ref()
                .map_or(String::new(), |s| format!(", last status {s}")),
            r.failures
                .filter(|f| *f > 0)
                .map_or(String::new(), |f| format!(", {f} failures")),
            r.last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})")),
        )
    };
    let _ = writeln!(
        out,
        "  rollup       {}{}",
        db.rollup.as_ref().map_or("no run recorded".to_owned(), run),
        db.rollup_queued_hours
            .filter(|n| *n > 0)
            .map_or(String::new(), |n| format!(", {n} late hours queued"))
    );
    if db.retention.jobs.is_empty() {
        let _ = writeln!(
            out,
            "  retention    {}, dropped by the collectors' upkeep (oldest partitions below)",
            duration(db.retention.configured_seconds as f64)
        );
    }
    for job in &db.retention.jobs {
        let _ = writeln!(
            out,
            "  retention    {}, drop after {}: {}",
            job.job,
            job.drop_after.as_deref().unwrap_or("?"),
            run(job)
        );
    }
    out.push_str("  partitions\n");
    for t in &db.tables {
        let _ = writeln!(
            out,
            "    {:<36} {:>4} partitions {:>10}",
            t.table,
            t.partitions.len(),
            bytes(t.total_bytes)
        );
        // The oldest shows what retention has left; the newest, that partitions are made
        // ahead of the data.
        let n = t.partitions.len();
        for (i, p) in t.partitions.iter().enumerate() {
            if i == 1 && n > PARTITIONS_SHOWN + 1 {
                let _ = writeln!(out, "      ... {} more", n - PARTITIONS_SHOWN - 1);
            }
            if i != 0 && i + PARTITIONS_SHOWN < n {
                continue;
            }
            let _ = writeln!(
                out,
                "      {:<40} {:>10}  {}",
                p.name,
                bytes(p.bytes),
                p.range.as_deref().unwrap_or("")
            );
        }
    }
}

/// `  (limit L, P% used)` when there is a limit.
fn limit(max: Option<String>, used: Option<f64>) -> String {
    match (max, used) {
        (Some(max), Some(used)) => format!("  (limit {max}, {:.1}% used)", used * 100.0),
        (Some(max), None) => format!("  (limit {max})"),
        _ => "  (no limit)".to_owned(),
    }
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{:.0}m{:02.0}s", (s / 60.0).floor(), s % 60.0)
    } else if s < 86_400.0 {
        format!("{:.0}h{:02.0}m", (s / 3600.0).floor(), (s % 3600.0) / 60.0)
    } else {
        format!(
            "{:.0}d{:02.0}h",
            (s / 86_400.0).floor(),
            (s % 86_400.0) / 3600.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(50 * 1024 * 1024 * 1024), "50.0 GiB");
        assert_eq!(duration(2.25), "2.2s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(48.0 * 3600.0), "2d00h");
        assert_eq!(
            limit(Some("10".into()), Some(0.5)),
            "  (limit 10, 50.0% used)"
        );
        assert_eq!(limit(None, None), "  (no limit)");
    }
}
