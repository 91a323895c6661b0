//! CPU and memory of the DPU's OS and of the agent, from `sysinfo`.
//!
//! CPU use is a rate: `sysinfo` computes it from the difference between two
//! refreshes, so [`SysSampler`] keeps its `System` between samples and each
//! sample reports the use since the one before. The first sample has nothing
//! to compare with and may report 0 CPU; memory is exact from the first.

use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, RefreshKind,
    System,
};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SysFacts {
    /// Busy share of all CPUs of the DPU OS, 0..=100.
    pub cpu_percent: f64,
    pub cpus: usize,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    /// The agent's CPU use, in percent of one CPU.
    pub agent_cpu_percent: f64,
    pub agent_rss_bytes: u64,
}

/// Samples [`SysFacts`]; keep one and call [`SysSampler::sample`] per scrape.
#[derive(Debug)]
pub struct SysSampler {
    system: System,
    /// `None` where the platform cannot name this process (not on Linux).
    agent: Option<Pid>,
    /// When the CPU counters were last read: a share over a shorter span than
    /// `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` is noise, so such a call keeps
    /// the previous figures.
    cpu_read: std::time::Instant,
}

impl Default for SysSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl SysSampler {
    pub fn new() -> Self {
        let mut system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let agent = sysinfo::get_current_pid().ok();
        if let Some(pid) = agent {
            // The baseline the first `sample` measures the agent's CPU from.
            refresh_agent(&mut system, pid);
        }
        SysSampler {
            system,
            agent,
            cpu_read: std::time::Instant::now(),
        }
    }

    /// The facts now; CPU figures are averages since the last call (or since
    /// `new`).
    pub fn sample(&mut self) -> SysFacts {
        let cpu_due = self.cpu_read.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;
        let s = &mut self.system;
        if cpu_due {
            s.refresh_cpu_usage();
            self.cpu_read = std::time::Instant::now();
        }
        s.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let (agent_cpu_percent, agent_rss_bytes) = match self.agent {
            Some(pid) => {
                if cpu_due {
                    refresh_agent(s, pid);
                }
                s.process(pid)
                    .map_or((0.0, 0), |p| (f64::from(p.cpu_usage()), p.memory()))
            }
            None => (0.0, 0),
        };
        SysFacts {
            cpu_percent: f64::from(s.global_cpu_usage()).clamp(0.0, 100.0),
            cpus: s.cpus().len(),
            mem_total_bytes: s.total_memory(),
            mem_used_bytes: s.used_memory(),
            agent_cpu_percent,
            agent_rss_bytes,
        }
    }
}

fn refresh_agent(system: &mut System, pid: Pid) {
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn memory_and_cpus_are_real_and_a_busy_agent_shows_cpu() {
        let mut sampler = SysSampler::new();
        let first = sampler.sample();
        assert!(first.cpus >= 1, "{first:?}");
        assert!(first.mem_total_bytes > 0, "{first:?}");
        assert!(first.mem_used_bytes > 0, "{first:?}");
        assert!(first.mem_used_bytes <= first.mem_total_bytes, "{first:?}");
        assert!(first.agent_rss_bytes > 0, "{first:?}");
        // sysinfo wants its refreshes at least this far apart for CPU use.
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        sampler.sample();
        let start = Instant::now();
        let mut spins = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        let busy = sampler.sample();
        assert!(spins > 0);
        assert!(busy.agent_cpu_percent > 0.0, "{busy:?}");
        assert!(
            busy.cpu_percent > 0.0 && busy.cpu_percent <= 100.0,
            "{busy:?}"
        );
        assert!(busy.agent_rss_bytes > 0, "{busy:?}");
    }
}
