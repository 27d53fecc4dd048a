//! CPU time and resident memory of server processes, from `/proc`.

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One sample of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// utime + stime of all of them, in seconds.
    pub cpu_seconds: f64,
    /// Sum of their VmRSS, in KiB.
    pub rss_kib: u64,
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples every PID of `pids` (missing ones count as zero).
pub fn sample(pids: &[u32]) -> Sample {
    pids.iter().fold(Sample::default(), |total, pid| Sample {
        cpu_seconds: total.cpu_seconds + cpu_seconds(*pid).unwrap_or(0.0),
        rss_kib: total.rss_kib + rss_kib(*pid).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let own = sample(&[std::process::id()]);
        assert!(own.rss_kib > 0);
        assert!(own.cpu_seconds >= 0.0);
        assert_eq!(sample(&[u32::MAX]), Sample::default());
    }
}
