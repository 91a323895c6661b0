//! Active health probes (`NetworkProbe`): each DPU probes the Service backends
//! local to it, from inside each backend's VPC, and feeds the results to the
//! compiler, which gives an unhealthy backend no bucket.
//!
//! | file | owns |
//! |---|---|
//! | `check.rs` | one TCP or HTTP check, bound to a device |
//! | `engine.rs` | the per-backend state machine (thresholds) and the probe tasks |
//! | `link.rs` | the per-VPC probe links (OVS internal port, address, table, rule) |
//! | `mod.rs` | the probe thread, and what to probe from the intent |
//!
//! Probes and their links live on a thread of their own with its own tokio
//! runtime. When `ovs-vswitchd` runs in another network namespace than the agent
//! (`[ovs] netns`, the lab), that thread enters it first: the probe devices are
//! there, and sockets and netlink requests made on the thread act there.

pub mod check;
pub mod engine;
pub mod link;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use dpu_model::Intent;
use tokio::sync::{mpsc, watch};

use crate::state::alloc::Allocations;
use engine::{ProbeSpec, Prober, Target, Transition};

/// What the probe thread should be doing: the links (VPC → zone) and the targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub links: BTreeMap<String, u16>,
    pub targets: Vec<Target>,
}

/// The agent's handle on the probe thread.
#[derive(Debug)]
pub struct ProbeService {
    plan: watch::Sender<Plan>,
    /// Health transitions, as the probes see them.
    pub transitions: mpsc::Receiver<Transition>,
}

impl ProbeService {
    /// Starts the probe thread, in `netns` when given (a path such as
    /// `/run/netns/<name>`).
    pub fn spawn(netns: Option<PathBuf>) -> std::io::Result<ProbeService> {
        let (plan_tx, plan_rx) = watch::channel(Plan::default());
        let (tr_tx, tr_rx) = mpsc::channel(256);
        std::thread::Builder::new()
            .name("probes".into())
            .spawn(move || {
                if let Err(e) = run_thread(netns, plan_rx, tr_tx) {
                    tracing::error!(error = %e, "the probe thread stopped; backends are no longer probed");
                }
            })?;
        Ok(ProbeService {
            plan: plan_tx,
            transitions: tr_rx,
        })
    }

    /// Replaces the plan (a no-op when it did not change).
    pub fn set_plan(&self, plan: Plan) {
        self.plan.send_if_modified(|p| {
            let changed = *p != plan;
            *p = plan;
            changed
        });
    }
}

fn run_thread(
    netns: Option<PathBuf>,
    mut plan_rx: watch::Receiver<Plan>,
    tx: mpsc::Sender<Transition>,
) -> std::io::Result<()> {
    if let Some(path) = &netns {
        let ns = std::fs::File::open(path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::other(format!("entering {}: {e}", path.display())))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let mut prober = Prober::new(tx);
        let mut configured: BTreeSet<u16> = BTreeSet::new();
        let mut retry = tokio::time::interval(Duration::from_secs(2));
        loop {
            let plan = plan_rx.borrow_and_update().clone();
            let want: BTreeSet<u16> = plan.links.values().copied().collect();
            for zone in want.difference(&configured.clone()) {
                match link::configure(&handle, *zone).await {
                    Ok(()) => {
                        tracing::info!(device = %link::port_name(*zone), "probe link ready");
                        configured.insert(*zone);
                    }
                    Err(e) => tracing::warn!(error = %e, "probe link not ready; retrying"),
                }
            }
            for zone in configured.clone().difference(&want) {
                if let Err(e) = link::remove_rule(&handle, *zone).await {
                    tracing::warn!(error = %e, "could not remove a probe rule");
                }
                configured.remove(zone);
            }
            // Probe only through links that are ready.
            let ready: Vec<Target> = plan
                .targets
                .iter()
                .filter(|t| {
                    plan.links
                        .get(&t.vpc)
                        .is_some_and(|z| configured.contains(z))
                })
                .cloned()
                .collect();
            prober.set_targets(ready);
            let complete = want.is_subset(&configured);
            tokio::select! {
                r = plan_rx.changed() => if r.is_err() { break },
                _ = retry.tick(), if !complete => {}
            }
        }
        Ok::<(), std::io::Error>(())
    })
}

/// What this DPU probes: for every `NetworkProbe`, the IPv4 backends of its
/// Service that are workloads on `node`, one target per (VPC, address) (the
/// first probe by name wins when two probes name the same backend), each through
/// its VPC's probe link. IPv6 backends are not probed yet (the probe links carry
/// IPv4).
pub fn plan(intent: &Intent, alloc: &Allocations, node: &str) -> Plan {
    let mut out = Plan::default();
    let mut seen: BTreeSet<(String, IpAddr)> = BTreeSet::new();
    for p in intent.probes.values() {
        let Some(s) = intent.services.get(&p.service) else {
            continue;
        };
        let spec = ProbeSpec::from_model(p);
        for b in &s.backends {
            let IpAddr::V4(v4) = b.ip else { continue };
            let local = intent
                .workloads
                .values()
                .any(|w| w.node == node && w.vpc == b.vpc && w.ip == v4);
            let Some(zone) = alloc.zone(&b.vpc) else {
                continue;
            };
            if !local || !seen.insert((b.vpc.clone(), b.ip)) {
                continue;
            }
            out.links.insert(b.vpc.clone(), zone);
            out.targets.push(Target {
                vpc: b.vpc.clone(),
                ip: b.ip,
                device: Some(link::port_name(zone)),
                source: Some(IpAddr::V4(link::PROBE_SOURCE)),
                spec: spec.clone(),
            });
        }
    }
    out
}
