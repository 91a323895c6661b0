//! What a process costs, read from `/proc`: CPU time (utime + stime of all its
//! threads) and resident memory (now and peak), plus the rusage of reaped children
//! for short-lived tools like `ovs-ofctl`.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when unknown).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time of `pid` so far (user + system, all threads).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime is field 14, stime field 15.
    let ticks: u64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no utime/stime"))?;
    Ok(Duration::from_millis(ticks * 1000 / clk_tck()))
}

/// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            v.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no {key}"))
}

/// Resets the peak resident size (`VmHWM`) of `pid` to its current size, so the
/// next read is the peak of what follows.
pub fn reset_peak(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

/// The pid in an OVS pid file.
pub fn pid_from_file(path: &Path) -> Result<u32> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    s.trim()
        .parse()
        .with_context(|| format!("{}: {s:?} is not a pid", path.display()))
}

/// CPU time of this process's reaped children so far, and the largest peak
/// RSS (KiB) any of them had.
pub fn children_usage() -> Result<(Duration, u64)> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok((tv(u.user_time()) + tv(u.system_time()), u.max_rss() as u64))
}

/// CPU of a set of processes between two points in time.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    cpu: Vec<Duration>,
}

impl CpuMark {
    pub fn now(pids: &[u32]) -> Result<CpuMark> {
        Ok(CpuMark {
            at: Instant::now(),
            cpu: pids.iter().map(|p| cpu_time(*p)).collect::<Result<_>>()?,
        })
    }

    /// CPU used by each pid since the mark, and the wall time.
    pub fn since(&self, pids: &[u32]) -> Result<(Vec<Duration>, Duration)> {
        let wall = self.at.elapsed();
        let now: Vec<Duration> = pids.iter().map(|p| cpu_time(*p)).collect::<Result<_>>()?;
        Ok((
            now.iter()
                .zip(&self.cpu)
                .map(|(n, b)| n.saturating_sub(*b))
                .collect(),
            wall,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_and_memory() {
        let me = std::process::id();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        cpu_time(me).unwrap();
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        assert!(status_kib(me, "VmHWM").unwrap() > 0);
    }
}
