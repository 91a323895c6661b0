//! Load-balancing quality of the select groups the agent installs, measured with
//! Open vSwitch's own selection logic.
//!
//! # Method
//!
//! A private OVS ([`dpu_lab::ovs::OvsInstance`]) gets one bridge, one flow that sends
//! TCP to the VIP into group 1, and group 1 rendered by the agent's own
//! [`dpu_agent::compile::flows::Group::spec`]: `type=select,selection_method=hash,
//! fields(ip_src,ip_dst,tcp_src,tcp_dst)`, one bucket per unit of backend weight, each
//! bucket `set_field:<backend ip>->reg3,set_field:<port>->reg4,resubmit(,45)` exactly
//! as the compiler writes it. The group goes in the way the reconciler sends it: an
//! `ovs-ofctl bundle` with `group add_or_mod`.
//!
//! For each of `flows` distinct TCP 5-tuples (random client address in 10.128.0.0/9
//! and port ≥ 1024, to the VIP:80) the switch is asked `ofproto/trace`, and the
//! backend is read from `reg3` in the trace's `Final flow:`. That is vswitchd's own
//! translation (the same code that picks a bucket for a real upcall), so the hash,
//! the bucket scoring and the tie-breaking are OVS's, not a model of them. The
//! traces go over the vswitchd unixctl socket directly (JSON-RPC 1.0, pipelined; see
//! `unixctl`), because one `ovs-appctl` process per flow is far too slow at 1000
//! backends.
//!
//! Then one backend is removed (index `N/2` for [`lb_quality`]) and the group is
//! re-sent without it, rendered the same way, and the same 5-tuples are traced again.
//!
//! # Definitions
//!
//! - share of backend *i* = flows that chose it ÷ flows; for weighted backends the
//!   share per unit of weight is used below.
//! - `skew_pct` = (max share − min share) ÷ mean share × 100, over the backends.
//! - `max_over_mean` = max share ÷ mean share.
//! - `moved_fraction` = flows whose backend changed after the removal ÷ all flows,
//!   including the flows that were on the removed backend (they must move).
//! - `ideal_moved` = 1/N: a minimal-disruption hash moves only the removed backend's
//!   flows.
//!
//! # Churn and bucket ids
//!
//! OVS's `hash` method scores every bucket with a hash of the flow and the *bucket
//! id* and takes the best (highest random weight), which moves only the removed
//! bucket's flows — if the ids of the other buckets stay put. The agent gives each
//! bucket an id hashed from its backend (VPC, address, target port) and replica
//! ([`dpu_agent::compile::assign_bucket_ids`]), so a removal moves only the removed
//! backend's flows, ≈ 1/N. [`BucketIds::Positional`] measures the same group
//! numbered by position, as the agent did before: removing backend k gives every
//! later backend a new id and their flows move too, about (N−k)/N of all flows,
//! ≈ 1/2 for the middle backend that [`lb_quality`] removes.
//!
//! With F flows over N backends even a perfect hash shows multinomial noise: about
//! ±1/√(F/N) per share, so 50 flows per backend gives a `skew_pct` around 60–80 from
//! sampling alone. [`LbReport::ideal_skew_pct`] is that noise floor (the median skew of
//! an ideal uniform choice with the same N and F), to read `skew_pct` against.

mod unixctl;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpu_agent::compile::assign_bucket_ids;
use dpu_agent::compile::flows::{Actions, Bucket, Group};
use dpu_agent::compile::pipeline::cookie::{Category, Cookie};
use dpu_agent::compile::pipeline::{reg, ENDPOINT_DNAT};
use dpu_agent::reconcile::backend::ir::{Field, HashField};
use dpu_lab::ovs::OvsInstance;

const BRIDGE: &str = "br-lb";
const GROUP_ID: u32 = 1;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// The backends' VPC, which their bucket ids hash.
const VPC: &str = "bench";
/// The agent's hash fields for a TCP service without affinity.
const HASH_FIELDS: [Field; 4] = [Field::IpSrc, Field::IpDst, Field::TcpSrc, Field::TcpDst];
/// Fixed so that runs are comparable.
const SEED: u64 = 0x5eed_1b00_0000_0001;
/// Draws of an ideal uniform choice for [`LbReport::ideal_skew_pct`].
const IDEAL_DRAWS: usize = 21;

#[derive(Debug, Clone)]
pub struct LbResult {
    pub backends: usize,
    pub flows: usize,
    pub skew_pct: f64,
    pub max_over_mean: f64,
    pub moved_fraction: f64,
    pub ideal_moved: f64,
}

/// How bucket ids are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketIds {
    /// As the agent gives them ([`dpu_agent::compile::assign_bucket_ids`]): a hash
    /// of the backend and the replica, so a backend keeps its ids when another
    /// goes.
    Agent,
    /// The bucket's position, as the agent did before: removing a backend
    /// renumbers every bucket after it. Kept to show that the measurement sees
    /// the difference.
    Positional,
}

/// One measurement's inputs.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// One entry per backend: its weight (buckets it gets). Weight 0 gets no bucket,
    /// as in the compiler.
    pub weights: Vec<u32>,
    pub flows: usize,
    /// The backend removed for the churn measurement.
    pub remove: usize,
    pub bucket_ids: BucketIds,
}

/// A measurement in full.
#[derive(Debug, Clone)]
pub struct LbReport {
    /// Skew and max/mean use the share per unit of weight.
    pub result: LbResult,
    /// Flows per backend before the removal (sums to `flows`).
    pub counts: Vec<usize>,
    /// Flows per backend after the removal (the removed one has 0).
    pub counts_after: Vec<usize>,
    /// Flows that were on the removed backend ÷ flows.
    pub removed_share: f64,
    /// The median `skew_pct` of an ideal uniform choice with the same sizes.
    pub ideal_skew_pct: f64,
    /// Wall time of the tracing (both passes).
    pub trace_time: Duration,
}

/// `backends` equal backends, `flows` distinct 5-tuples, the middle backend removed,
/// bucket ids as the agent gives them. See the module doc for the definitions.
pub fn lb_quality(backends: usize, flows: usize) -> Result<LbResult> {
    let cfg = LbConfig {
        weights: vec![1; backends],
        flows,
        remove: backends / 2,
        bucket_ids: BucketIds::Agent,
    };
    Ok(lb_measure(&cfg)?.result)
}

/// The measurement behind [`lb_quality`], with every knob and the raw counts.
pub fn lb_measure(cfg: &LbConfig) -> Result<LbReport> {
    let n = cfg.weights.len();
    if n < 2 {
        bail!("need at least 2 backends, got {n}");
    }
    if cfg.remove >= n || cfg.weights[cfg.remove] == 0 {
        bail!("backend {} cannot be removed: it has no bucket", cfg.remove);
    }
    if cfg.flows == 0 {
        bail!("need at least one flow");
    }
    let ips: Vec<Ipv4Addr> = (0..n).map(backend_ip).collect();
    let index: HashMap<u32, usize> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| (u32::from(*ip), i))
        .collect();
    let tuples = client_tuples(cfg.flows);

    let ovs = OvsInstance::start().context("starting a private OVS")?;
    let _tracked = crate::guard::track_ovs_scoped(&ovs);
    ovs.add_bridge(BRIDGE)?;
    install(&ovs, &group_spec(&cfg.weights, &ips, None, cfg.bucket_ids))?;
    ovs.ofctl(&[
        "add-flow",
        &ovs.mgmt(BRIDGE),
        &format!("priority=100,tcp,nw_dst={VIP},tp_dst={VIP_PORT},actions=group:{GROUP_ID}"),
    ])?;
    let mut ctl = unixctl::Unixctl::connect(&ovs.dir().join("ovs-vswitchd.ctl"))?;

    let started = Instant::now();
    let before = trace_all(&mut ctl, &tuples, &index)?;
    install(
        &ovs,
        &group_spec(&cfg.weights, &ips, Some(cfg.remove), cfg.bucket_ids),
    )?;
    let after = trace_all(&mut ctl, &tuples, &index)?;
    let trace_time = started.elapsed();

    if let Some(i) = after.iter().position(|&b| b == cfg.remove) {
        bail!(
            "flow {:?} still reached the removed backend {}",
            tuples[i],
            cfg.remove
        );
    }
    let counts = tally(&before, n);
    let counts_after = tally(&after, n);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let (skew_pct, max_over_mean) = skew(&counts, &cfg.weights);
    let live = cfg.weights.iter().filter(|&&w| w > 0).count();
    let result = LbResult {
        backends: n,
        flows: cfg.flows,
        skew_pct,
        max_over_mean,
        moved_fraction: moved as f64 / cfg.flows as f64,
        ideal_moved: 1.0 / live as f64,
    };
    Ok(LbReport {
        removed_share: counts[cfg.remove] as f64 / cfg.flows as f64,
        ideal_skew_pct: ideal_skew(&cfg.weights, cfg.flows),
        result,
        counts,
        counts_after,
        trace_time,
    })
}

/// Backend `i`'s address: 10.1.0.1, 10.1.0.2, … (never 0, so reg3 shows in traces).
fn backend_ip(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 1, 0, 1));
    Ipv4Addr::from(base + u32::try_from(i).expect("backend count fits in u32"))
}

/// The group as the agent renders it, with `skip` left out (a backend gone).
/// The backends are in one VPC.
fn group_spec(weights: &[u32], ips: &[Ipv4Addr], skip: Option<usize>, ids: BucketIds) -> String {
    let bucket = |ip: Ipv4Addr| {
        Arc::new(
            Actions::new()
                .set_field(reg::EP_IP, ip)
                .set_reg(reg::EP_PORT, u32::from(TARGET_PORT))
                .resubmit(ENDPOINT_DNAT.id),
        )
    };
    let live = || {
        (0..weights.len())
            .filter(move |&i| Some(i) != skip)
            .flat_map(move |i| (0..weights[i]).map(move |r| (i, r)))
    };
    let buckets = match ids {
        BucketIds::Agent => {
            // As `compile_service_port` does: ids for the backends that get
            // buckets, sorted by id.
            let members: Vec<usize> = (0..weights.len())
                .filter(|&i| Some(i) != skip && weights[i] > 0)
                .collect();
            let keys: Vec<(&str, IpAddr, u32)> = members
                .iter()
                .map(|&i| (VPC, IpAddr::V4(ips[i]), weights[i]))
                .collect();
            let mut b: Vec<Bucket> = members
                .iter()
                .zip(assign_bucket_ids(TARGET_PORT, &keys))
                .flat_map(|(&i, ids)| {
                    ids.into_iter()
                        .map(move |id| Bucket::new(id, bucket(ips[i])))
                })
                .collect();
            b.sort();
            b
        }
        BucketIds::Positional => live()
            .enumerate()
            .map(|(pos, (i, _))| Bucket::new(pos as u32, bucket(ips[i])))
            .collect(),
    };
    Group {
        id: GROUP_ID,
        hash_fields: HASH_FIELDS.iter().map(|f| HashField::whole(*f)).collect(),
        buckets,
        owner: Cookie::new(Category::Service, "bench/lb"),
        learns: false,
    }
    .spec()
}

/// Sends the group the way the reconciler does: a bundle with `group add_or_mod`.
fn install(ovs: &OvsInstance, spec: &str) -> Result<()> {
    let mut file = tempfile::NamedTempFile::new().context("creating the bundle file")?;
    std::io::Write::write_all(&mut file, format!("group add_or_mod {spec}\n").as_bytes())?;
    ovs.ofctl(&["bundle", &ovs.mgmt(BRIDGE), &file.path().to_string_lossy()])
        .context("installing the select group")?;
    Ok(())
}

/// Traces every tuple and returns the backend index each one reached.
fn trace_all(
    ctl: &mut unixctl::Unixctl,
    tuples: &[(Ipv4Addr, u16)],
    index: &HashMap<u32, usize>,
) -> Result<Vec<usize>> {
    let params: Vec<Vec<String>> = tuples
        .iter()
        .map(|(src, sport)| {
            vec![
                BRIDGE.to_string(),
                format!("in_port=LOCAL,tcp,nw_src={src},nw_dst={VIP},tcp_src={sport},tcp_dst={VIP_PORT}"),
            ]
        })
        .collect();
    let traces = ctl.call_many("ofproto/trace", &params)?;
    traces
        .iter()
        .zip(tuples)
        .map(|(text, t)| {
            let ep = chosen_reg3(text).with_context(|| format!("trace of {t:?}:\n{text}"))?;
            index.get(&ep).copied().ok_or_else(|| {
                anyhow!("trace of {t:?} chose {}, not a backend", Ipv4Addr::from(ep))
            })
        })
        .collect()
}

/// The endpoint the chosen bucket writes to `reg3`: the first
/// `set_field:<v>->reg3` after the trace's `-> using bucket N` line. (`Final flow:`
/// says "unchanged" when the packet is dropped afterwards, so it cannot be used.)
fn chosen_reg3(trace: &str) -> Result<u32> {
    let mut lines = trace.lines().map(str::trim);
    lines
        .find(|l| l.starts_with("-> using bucket"))
        .ok_or_else(|| anyhow!("no `-> using bucket` line: the group chose nothing"))?;
    let value = lines
        .find_map(|l| l.strip_prefix("set_field:")?.strip_suffix("->reg3"))
        .ok_or_else(|| anyhow!("the chosen bucket sets no reg3"))?;
    let hex = value.strip_prefix("0x").unwrap_or(value);
    u32::from_str_radix(hex, 16).with_context(|| format!("reg3 value {value}"))
}

fn tally(choices: &[usize], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for &c in choices {
        counts[c] += 1;
    }
    counts
}

/// (skew %, max/mean) of the shares per unit of weight, over weighted backends.
fn skew(counts: &[usize], weights: &[u32]) -> (f64, f64) {
    let per_weight: Vec<f64> = counts
        .iter()
        .zip(weights)
        .filter(|(_, &w)| w > 0)
        .map(|(&c, &w)| c as f64 / f64::from(w))
        .collect();
    let mean = per_weight.iter().sum::<f64>() / per_weight.len() as f64;
    let max = per_weight.iter().copied().fold(f64::MIN, f64::max);
    let min = per_weight.iter().copied().fold(f64::MAX, f64::min);
    ((max - min) / mean * 100.0, max / mean)
}

/// The median skew of an ideal weighted-uniform choice of `flows` draws.
fn ideal_skew(weights: &[u32], flows: usize) -> f64 {
    let slots: Vec<usize> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, &w)| std::iter::repeat_n(i, w as usize))
        .collect();
    let mut rng = SplitMix64(SEED ^ 0x1dea1);
    let mut skews: Vec<f64> = (0..IDEAL_DRAWS)
        .map(|_| {
            let mut counts = vec![0; weights.len()];
            for _ in 0..flows {
                counts[slots[rng.below(slots.len() as u64) as usize]] += 1;
            }
            skew(&counts, weights).0
        })
        .collect();
    skews.sort_by(f64::total_cmp);
    skews[skews.len() / 2]
}

/// `flows` distinct (client address, client port) pairs, the same on every run.
fn client_tuples(flows: usize) -> Vec<(Ipv4Addr, u16)> {
    let mut rng = SplitMix64(SEED);
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    let mut seen = HashSet::with_capacity(flows);
    let mut out = Vec::with_capacity(flows);
    while out.len() < flows {
        let addr = Ipv4Addr::from(base + rng.below(1 << 23) as u32);
        let port = 1024 + rng.below(65536 - 1024) as u16;
        if seen.insert((addr, port)) {
            out.push((addr, port));
        }
    }
    out
}

/// A small fixed-seed generator (SplitMix64); statistical quality is ample here.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for n far below 2^64.
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_reg3_is_read_from_the_trace() {
        // Trimmed `ofproto/trace` output of OVS 3.1.0.
        let t = "    group:1\n     -> bucket 0: score 24973\n     -> bucket 1: score 62225\n     -> using bucket 1\n    bucket 1\n            set_field:0xa010002->reg3\n            set_field:0x1f90->reg4\n            resubmit(,45)\n\nFinal flow: unchanged\n";
        assert_eq!(chosen_reg3(t).unwrap(), 0x0a01_0002);
        assert!(chosen_reg3("    group:1\nFinal flow: unchanged\n").is_err());
    }

    #[test]
    fn skew_is_range_over_mean_per_unit_weight() {
        let (s, m) = skew(&[10, 20, 30], &[1, 1, 1]);
        assert!((s - 100.0).abs() < 1e-9 && (m - 1.5).abs() < 1e-9);
        let (s, _) = skew(&[40, 20, 20, 0], &[2, 1, 1, 0]);
        assert!(s.abs() < 1e-9);
    }

    #[test]
    fn agent_ids_stay_with_the_backend_and_positional_ids_renumber() {
        let ips: Vec<_> = (0..3).map(backend_ip).collect();
        let w = [1, 1, 1];
        let id = assign_bucket_ids(TARGET_PORT, &[(VPC, IpAddr::V4(ips[1]), 1)])[0][0];
        let want = format!("bucket_id:{id},actions=set_field:0xa010002->reg3");
        for skip in [None, Some(0), Some(2)] {
            let agent = group_spec(&w, &ips, skip, BucketIds::Agent);
            assert!(agent.contains(&want), "{agent}");
        }
        let positional = group_spec(&w, &ips, Some(0), BucketIds::Positional);
        assert!(
            positional.contains("bucket_id:0,actions=set_field:0xa010002->reg3"),
            "{positional}"
        );
    }

    #[test]
    fn client_tuples_are_distinct_and_repeatable() {
        let a = client_tuples(5000);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 5000);
        assert_eq!(a, client_tuples(5000));
    }
}
