//! Scenario 2, churn: on an agent holding N services, one endpoint of one Service
//! changes at a time (an increment on the last version upserting that Service with
//! one backend replaced), paced at a rate, each timed from send to Ack. The pace is
//! closed-loop: the next change goes at its slot or, when the Ack came later, at
//! once; so a latency never includes waiting behind the previous change. Also
//! scenario 4's footprint: the agent's CPU and memory while idle and under churn.

use std::time::{Duration, Instant};

use anyhow::Result;
use dpu_model::Object;

use crate::intent::{self, Generated};
use crate::procstat::{self, CpuMark};
use crate::results::{percentile, ChurnRow, FootprintRow};
use crate::rig::Rig;
use crate::secs;

/// One pace of changes: `None` is back to back.
#[derive(Debug, Clone)]
pub struct Rate {
    pub label: String,
    pub interval: Option<Duration>,
}

impl Rate {
    /// `10` → 10 per second; `0` → back to back.
    pub fn per_second(n: u32) -> Rate {
        if n == 0 {
            Rate {
                label: "max".into(),
                interval: None,
            }
        } else {
            Rate {
                label: format!("{n}/s"),
                interval: Some(Duration::from_secs(1) / n),
            }
        }
    }
}

/// What one change may take before the run calls it failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `changes` changes at `rate` (stopping early after `budget`), counting
/// changes in `seq` across calls so each picks a new Service and backend.
pub fn run(
    rig: &mut Rig,
    g: &mut Generated,
    rate: &Rate,
    changes: usize,
    budget: Duration,
    seq: &mut usize,
) -> Result<ChurnRow> {
    let agent = rig.agent_pid()?;
    let vswitchd = rig.vswitchd_pid()?;
    procstat::reset_peak(agent)?;
    let mark = CpuMark::now(&[agent, vswitchd])?;
    let start = Instant::now();
    let mut lat_ms = Vec::with_capacity(changes);
    let mut error = None;
    for i in 0..changes {
        if start.elapsed() > budget {
            break;
        }
        if let Some(iv) = rate.interval {
            let slot = start + iv * i as u32;
            let now = Instant::now();
            if slot > now {
                std::thread::sleep(slot - now);
            }
        }
        *seq += 1;
        let n = g.services.len();
        let idx = (*seq).wrapping_mul(7919) % n;
        let changed = intent::replace_one_backend(&g.services[idx], &g.pods, *seq, *seq);
        let update = rig.increment(&[Object::Service(changed.clone())]);
        match rig.send(update, CHANGE_TIMEOUT) {
            Ok(took) => {
                g.services[idx] = changed;
                lat_ms.push(secs(took) * 1000.0);
            }
            Err(e) => {
                error = Some(format!("change {i}: {e:#}"));
                break;
            }
        }
    }
    let (cpu, wall) = mark.since(&[agent, vswitchd])?;
    let peak = procstat::status_kib(agent, "VmHWM")?;
    let mut sorted = lat_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mean = if sorted.is_empty() {
        f64::NAN
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    Ok(ChurnRow {
        backend: rig.backend.clone(),
        services: n_services(g),
        rate: rate.label.clone(),
        changes: sorted.len(),
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        mean_ms: mean,
        wall_s: secs(wall),
        agent_cpu_pct: 100.0 * secs(cpu[0]) / secs(wall),
        vswitchd_cpu_pct: 100.0 * secs(cpu[1]) / secs(wall),
        agent_peak_rss_kib: peak,
        error,
    })
}

fn n_services(g: &Generated) -> usize {
    g.services.len()
}

/// The agent's footprint with nothing to do, sampled over `span`.
pub fn idle(rig: &Rig, span: Duration) -> Result<FootprintRow> {
    let agent = rig.agent_pid()?;
    let vswitchd = rig.vswitchd_pid()?;
    let mark = CpuMark::now(&[agent, vswitchd])?;
    std::thread::sleep(span);
    let (cpu, wall) = mark.since(&[agent, vswitchd])?;
    Ok(FootprintRow {
        backend: rig.backend.clone(),
        services: 0,
        phase: format!("idle {:.0} s", secs(span)),
        seconds: secs(wall),
        agent_cpu_pct: 100.0 * secs(cpu[0]) / secs(wall),
        agent_rss_kib: procstat::status_kib(agent, "VmRSS")?,
        agent_peak_rss_kib: procstat::status_kib(agent, "VmHWM")?,
        vswitchd_cpu_pct: 100.0 * secs(cpu[1]) / secs(wall),
        vswitchd_rss_kib: procstat::status_kib(vswitchd, "VmRSS")?,
    })
}

/// A churn phase as a footprint row.
pub fn footprint_of(rig: &Rig, row: &ChurnRow) -> Result<FootprintRow> {
    Ok(FootprintRow {
        backend: row.backend.clone(),
        services: row.services,
        phase: format!("churn {}", row.rate),
        seconds: row.wall_s,
        agent_cpu_pct: row.agent_cpu_pct,
        agent_rss_kib: procstat::status_kib(rig.agent_pid()?, "VmRSS")?,
        agent_peak_rss_kib: row.agent_peak_rss_kib,
        vswitchd_cpu_pct: row.vswitchd_cpu_pct,
        vswitchd_rss_kib: procstat::status_kib(rig.vswitchd_pid()?, "VmRSS")?,
    })
}
