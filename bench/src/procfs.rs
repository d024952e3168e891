//! What `/proc` says about the processes a benchmark runs: CPU time, peak memory, the
//! machine's memory.

/// The fields of `/proc/<pid>/stat` after the command name (from the state on), which is in
/// parentheses and may hold spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// Parent pid and CPU time (user + system, in seconds) from a process's stat fields.
fn parent_and_cpu(fields: &[String]) -> Option<(u32, f64)> {
    let parent = fields.get(1)?.parse().ok()?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((parent, (user + system) as f64 / ticks))
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    parent_and_cpu(&stat_fields(pid)?).map(|(_, cpu)| cpu)
}

/// CPU seconds of a process and its live children (a PostgreSQL postmaster's backends).
pub(crate) fn tree_cpu_secs(root: u32) -> f64 {
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| parent_and_cpu(&stat_fields(pid)?))
        .filter(|&(parent, _)| parent == root)
        .map(|(_, cpu)| cpu)
        .sum();
    cpu_secs(root).unwrap_or(0.0) + children
}

/// Peak resident memory of a process, from /proc (VmHWM), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub(crate) fn mem_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

/// The servers whose CPU the drain's figures charge to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerPids {
    pub(crate) nats_server: Option<u32>,
    pub(crate) postmaster: Option<u32>,
}

impl ServerPids {
    /// CPU seconds so far of nats-server and of PostgreSQL (the postmaster and its backends).
    pub(crate) fn cpu(&self) -> (f64, f64) {
        (
            self.nats_server.and_then(cpu_secs).unwrap_or(0.0),
            self.postmaster.map_or(0.0, tree_cpu_secs),
        )
    }
}
