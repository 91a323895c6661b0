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

fn one_client() -> u32 {
    1
}

/// New TCP connections through one VIP, summed over the rounds (`newconn`):
/// an OVS select group of `buckets` buckets hashing on `hash`'s fields, or
/// kube-proxy's iptables rules for a Service of `buckets` endpoints. Figures
/// that do not apply to a datapath are NaN (`null` in JSON); fields added
/// after the first version default, so older results.json files still parse.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewConnRow {
    pub buckets: usize,
    /// Client addresses the connections came from, in turn (1 in results
    /// from before it was recorded).
    #[serde(default = "one_client")]
    pub clients: u32,
    /// `ovs` or `iptables` (empty in results from before it was recorded: ovs).
    #[serde(default)]
    pub datapath: String,
    /// The OVS hash variant: `port` (the whole L4 source port), `masked` (the
    /// agent's `SRC_PORT_HASH_MASK`) or a mask (`255`); empty for iptables.
    #[serde(default)]
    pub hash: String,
    /// How the backend is chosen: the group's `fields(…)`, or iptables'
    /// `statistic --mode random` and the iptables version.
    #[serde(default)]
    pub selection: String,
    /// Connections answered, and failed.
    pub connections: u64,
    pub failed: u64,
    pub rounds: usize,
    /// Answered connections ÷ the batches' wall time (one connection at a time).
    pub conns_per_s: f64,
    /// The whole machine's busy CPU time (`/proc/stat`) ÷ answered connections:
    /// the one CPU figure both datapaths have (iptables works in the kernel).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub machine_cpu_us_per_conn: f64,
    /// ovs-vswitchd's CPU time ÷ answered connections (OVS).
    #[serde(deserialize_with = "f64_or_nan")]
    pub vswitchd_cpu_us_per_conn: f64,
    /// The lowest and highest of the per-batch values (the spread across rounds).
    #[serde(deserialize_with = "f64_or_nan")]
    pub vswitchd_cpu_us_per_conn_min: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub vswitchd_cpu_us_per_conn_max: f64,
    /// Datapath upcalls (flow-cache misses) per connection (OVS).
    #[serde(deserialize_with = "f64_or_nan")]
    pub upcalls_per_conn: f64,
    /// The lowest and highest per-batch value (the first batches after an idle
    /// spell include the warm-up of the megaflows, which idle out after 10 s).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub upcalls_per_conn_min: f64,
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub upcalls_per_conn_max: f64,
    /// Upcalls per connection over the rounds after the first: the steady
    /// state, the datapath's flows warmed by the first round (NaN with one
    /// round).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub upcalls_per_conn_warm: f64,
    /// ovs-vswitchd's CPU time ÷ upcalls (OVS).
    #[serde(deserialize_with = "f64_or_nan")]
    pub vswitchd_cpu_us_per_upcall: f64,
    /// The most datapath flows after any batch of this VIP: every flow of the
    /// datapath (all VIPs share it), and those matching packets to this VIP
    /// (the per-connection-hash flows its group makes). OVS only.
    #[serde(default)]
    pub datapath_flows_max: Option<usize>,
    #[serde(default)]
    pub datapath_flows_vip_max: Option<usize>,
    /// Pearson's χ² of the connections per backend in the rounds against a
    /// uniform split (df = buckets - 1), and its p-value.
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub chi2: f64,
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub chi2_p: f64,
    /// The busiest and the idlest backend's connections ÷ the mean.
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub share_max: f64,
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub share_min: f64,
    pub error: Option<String>,
}

fn nan() -> f64 {
    f64::NAN
}

/// A number, or `null` (how serde_json writes NaN) read back as NaN.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
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

    #[test]
    fn newconn_rows_round_trip_nan_and_read_old_results() {
        let row = NewConnRow {
            buckets: 3,
            datapath: "iptables".into(),
            connections: 10,
            conns_per_s: 100.0,
            machine_cpu_us_per_conn: 250.0,
            vswitchd_cpu_us_per_conn: f64::NAN,
            upcalls_per_conn_min: f64::NAN,
            chi2: 1.5,
            chi2_p: f64::NAN,
            ..Default::default()
        };
        let text = serde_json::to_string(&row).unwrap();
        assert!(text.contains("\"vswitchd_cpu_us_per_conn\":null"), "{text}");
        let back: NewConnRow = serde_json::from_str(&text).unwrap();
        assert!(back.vswitchd_cpu_us_per_conn.is_nan() && back.chi2_p.is_nan());
        assert_eq!((back.chi2, back.machine_cpu_us_per_conn), (1.5, 250.0));
        assert_eq!(back.datapath, "iptables");

        // A row as results.json had it before the hash variants.
        let old = r#"{"buckets":10,"connections":10000,"failed":0,"rounds":10,
            "conns_per_s":1214.0,"vswitchd_cpu_us_per_conn":427.0,
            "vswitchd_cpu_us_per_conn_min":330.0,"vswitchd_cpu_us_per_conn_max":670.0,
            "upcalls_per_conn":1.0,"vswitchd_cpu_us_per_upcall":427.0,"error":null}"#;
        let r: NewConnRow = serde_json::from_str(old).unwrap();
        assert_eq!((r.buckets, r.connections), (10, 10000));
        assert_eq!((r.datapath.as_str(), r.hash.as_str()), ("", ""));
        assert!(r.chi2.is_nan() && r.machine_cpu_us_per_conn.is_nan());
        assert_eq!(r.datapath_flows_max, None);
        let whole = format!(
            r#"{{"machine":{{"cpu_model":"","cpus":2,"kernel":"","ovs_version":"","date_utc":"","git_rev":"","arch":""}},
            "quick":false,"sizes":[],"endpoints":10,"backends_requested":[],"backends_available":[],
            "cold":[],"churn":[],"restart":[],"footprint":[],"lb":[],"newconn":[{old}],"errors":[],"total_seconds":1.0}}"#
        );
        let all: Results = serde_json::from_str(&whole).unwrap();
        assert_eq!(all.newconn.len(), 1);
    }
}
