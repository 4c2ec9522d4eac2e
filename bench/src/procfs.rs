//! What the benchmark reads about a process from `/proc`: resident memory and CPU time.

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`), 100 on every Linux
/// architecture this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// `VmRSS` of `/proc/PID/status`, KiB (read by the broker's own memory guard's parser).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let bytes = meridian_broker::memory::resident_bytes_of(pid)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(bytes as u64 / 1024)
}

/// User + system CPU time of a process (all its threads), seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / TICKS_PER_SECOND).context("bad stat")
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after the last ')' start at 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after field 3.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tmosquitto\nVmPeak:\t  10 kB\nVmRSS:\t    5432 kB\nThreads:\t1\n";
        assert_eq!(meridian_broker::memory::parse_vm_rss(status), Some(5432 * 1024));
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
