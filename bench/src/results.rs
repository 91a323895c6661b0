//! What one run measured, as data: written to `results.json`, read back by the
//! report. Every number carries its unit in its name.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub quick: bool,
    /// Service counts measured (each with `endpoints` backends).
    pub sizes: Vec<usize>,
    pub endpoints: usize,
    /// The agent's OpenFlow backends asked for, and which of them this build has.
    pub backends_requested: Vec<String>,
    pub backends_available: Vec<String>,
    /// The agent binary measured (copied at the start of the run).
    #[serde(default)]
    pub agent_binary: String,
    pub cold: Vec<ColdRow>,
    pub churn: Vec<ChurnRow>,
    pub restart: Vec<RestartRow>,
    pub footprint: Vec<FootprintRow>,
    pub lb: Vec<LbRow>,
    /// The cost of a new connection against the select group's size.
    #[serde(default)]
    pub newconn: Vec<NewConnRow>,
    /// Scenarios or systems that failed, with why.
    pub errors: Vec<String>,
    pub total_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub ovs_version: String,
    pub date_utc: String,
    pub git_rev: String,
    pub arch: String,
}

/// One system loading N services from nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ColdRow {
    /// `agent-native`, `agent-ovs-ofctl`, `raw-ovs-ofctl`, `iptables-legacy`, ...
    pub system: String,
    pub services: usize,
    pub error: Option<String>,
    pub wall_s: f64,
    /// CPU of everything that did the work (loader + ovs-vswitchd where used).
    pub cpu_s: f64,
    /// The loader's own CPU (the agent, ovs-ofctl, the restore tool).
    pub loader_cpu_s: f64,
    pub vswitchd_cpu_s: Option<f64>,
    /// The loader's peak resident memory.
    pub peak_rss_kib: u64,
    /// ovs-vswitchd's resident memory after the load.
    pub vswitchd_rss_kib: Option<u64>,
    pub flows: Option<usize>,
    pub groups: Option<usize>,
    /// iptables/nftables rules.
    pub rules: Option<usize>,
    /// Anything to know when reading the row.
    #[serde(default)]
    pub note: Option<String>,
}

/// One endpoint change at a time, at a pace, on N services.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnRow {
    pub backend: String,
    pub services: usize,
    /// `10/s`, `50/s`, `max` (back to back).
    pub rate: String,
    pub changes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub wall_s: f64,
    pub agent_cpu_pct: f64,
    pub vswitchd_cpu_pct: f64,
    pub agent_peak_rss_kib: u64,
    pub error: Option<String>,
}

/// An agent restart under traffic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestartRow {
    pub backend: String,
    pub services: usize,
    pub probes: u64,
    pub probes_ok: u64,
    pub probes_lost: u64,
    /// SIGTERM to exit.
    pub stop_ms: f64,
    /// SIGTERM to the new agent's Hello.
    pub reconnect_ms: f64,
    /// SIGTERM to the Ack of the resent snapshot.
    pub converge_ms: f64,
    /// Send of the resent snapshot to its Ack.
    pub snapshot_ack_ms: f64,
    pub first_errors: Vec<String>,
    pub error: Option<String>,
}

/// The agent's resident memory and CPU in one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FootprintRow {
    pub backend: String,
    pub services: usize,
    pub phase: String,
    pub seconds: f64,
    pub agent_cpu_pct: f64,
    pub agent_rss_kib: u64,
    pub agent_peak_rss_kib: u64,
    pub vswitchd_cpu_pct: f64,
    pub vswitchd_rss_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LbRow {
    pub backends: usize,
    pub flows: usize,
    pub skew_pct: f64,
    pub max_over_mean: f64,
    pub moved_fraction: f64,
    pub ideal_moved: f64,
    /// The skew an ideal uniform choice shows with the same sizes (sampling noise).
    pub ideal_skew_pct: f64,
    pub error: Option<String>,
}

/// New TCP connections through one select group of `buckets` buckets, summed
/// over the rounds (`newconn`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewConnRow {
    pub buckets: usize,
    /// Connections answered, and failed.
    pub connections: u64,
    pub failed: u64,
    pub rounds: usize,
    /// Answered connections ÷ the batches' wall time (one connection at a time).
    pub conns_per_s: f64,
    /// ovs-vswitchd's CPU time ÷ answered connections.
    pub vswitchd_cpu_us_per_conn: f64,
    /// The lowest and highest of the per-batch values (the spread across rounds).
    pub vswitchd_cpu_us_per_conn_min: f64,
    pub vswitchd_cpu_us_per_conn_max: f64,
    /// Datapath upcalls (flow-cache misses) per connection.
    pub upcalls_per_conn: f64,
    /// ovs-vswitchd's CPU time ÷ upcalls.
    pub vswitchd_cpu_us_per_upcall: f64,
    pub error: Option<String>,
}

/// The p-th percentile (0..=100) of sorted `v`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
