//! The health probes as the loop keeps them: the probe thread, the plan it
//! was given, and the OVS ports of the probe links (written by the port
//! writer; a port counts as on the bridge only once its write completed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use dpu_model::{Intent, Kind, ObjectKey};
use dpu_proto::v1 as pb;

use super::vswitch::PortJob;
use crate::compile::NodeFacts;
use crate::config::Config;
use crate::state::alloc::Allocations;
use crate::vswitch::ovsdb::{OvsdbError, OvsdbSession};
use crate::vswitch::portwriter::{PortWrite, PortWriter};

/// A probe port write: the port of `zone` added for `vpc`, or removed.
#[derive(Debug)]
pub(super) enum ProbeJob {
    Add { zone: u16, vpc: String },
    Remove { zone: u16 },
}

/// How long a probe port whose write failed is left alone. The loop used to retry
/// on its next iteration; a completion is an iteration of its own, so a failure
/// would otherwise be retried at once, again and again.
pub(super) const PROBE_PORT_RETRY: Duration = Duration::from_secs(1);

/// The health probes: the probe thread, and the OVS ports of the probe links it
/// needs. Without a probe thread (it could not start) nothing is probed and every
/// backend counts as healthy.
pub(super) struct Probes {
    pub(super) service: Option<crate::probe::ProbeService>,
    /// The last plan handed to the thread.
    pub(super) plan: crate::probe::Plan,
    /// Zones whose probe port is on the bridge.
    pub(super) ports: BTreeMap<u16, String>,
    /// Zones with a port write in flight (at most one each).
    pub(super) writing: BTreeSet<u16>,
    /// Zones whose last write failed, and when they may be tried again.
    pub(super) failed: BTreeMap<u16, tokio::time::Instant>,
    /// What this node's probes find unhealthy.
    pub(super) local_unhealthy: BTreeSet<(String, IpAddr)>,
    /// What the controller says is unhealthy, over all nodes.
    pub(super) remote_unhealthy: BTreeSet<(String, IpAddr)>,
    /// The (applied version, pods revision) the plan was computed for.
    pub(super) planned_for: Option<(u64, u64)>,
    /// The plan's targets, by (VPC, address).
    pub(super) targets: BTreeSet<(String, IpAddr)>,
    /// The Services some NetworkProbe names, when the plan was computed.
    pub(super) probed: BTreeSet<String>,
}

impl Probes {
    pub(super) fn start(cfg: &Config) -> Probes {
        let service = match crate::probe::ProbeService::spawn(cfg.ovs.netns.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the probe thread; backends are not probed");
                None
            }
        };
        Probes::with(service)
    }

    pub(super) fn with(service: Option<crate::probe::ProbeService>) -> Probes {
        Probes {
            service,
            plan: crate::probe::Plan::default(),
            ports: BTreeMap::new(),
            writing: BTreeSet::new(),
            failed: BTreeMap::new(),
            local_unhealthy: BTreeSet::new(),
            remote_unhealthy: BTreeSet::new(),
            planned_for: None,
            targets: BTreeSet::new(),
            probed: BTreeSet::new(),
        }
    }

    /// Drops this node's verdicts on backends it no longer probes. True if
    /// any went.
    pub(super) fn forget_untargeted(&mut self) -> bool {
        let before = self.local_unhealthy.len();
        let targets = &self.targets;
        self.local_unhealthy.retain(|k| targets.contains(k));
        self.local_unhealthy.len() != before
    }

    /// This node's verdicts, for the controller.
    pub(super) fn report(&self) -> pb::Health {
        pb::Health {
            unhealthy: self
                .local_unhealthy
                .iter()
                .map(|(vpc, ip)| pb::BackendRef {
                    vpc: vpc.clone(),
                    ip: ip.to_string(),
                })
                .collect(),
        }
    }

    /// `facts.unhealthy` = this node's verdicts, plus the controller's for the
    /// backends this node does not probe itself (its own verdicts are newer).
    /// True if it changed.
    pub(super) fn merge_into(&self, facts: &mut NodeFacts) -> bool {
        let probed_here = |k: &(String, IpAddr)| self.targets.contains(k);
        let merged: BTreeSet<(String, IpAddr)> = self
            .local_unhealthy
            .iter()
            .cloned()
            .chain(
                self.remote_unhealthy
                    .iter()
                    .filter(|k| !probed_here(k))
                    .cloned(),
            )
            .collect();
        let changed = merged != facts.unhealthy;
        facts.unhealthy = merged;
        changed
    }

    pub(super) async fn next_transition(&mut self) -> Option<crate::probe::engine::Transition> {
        match &mut self.service {
            Some(s) => s.transitions.recv().await,
            None => std::future::pending().await,
        }
    }

    /// After an update took the applied state from `before` to `after`
    /// ((version, pods revision)): if the plan was current and nothing it reads
    /// changed (probes, the Services they name, workloads, VPCs), it stays
    /// current without being recomputed.
    pub(super) fn carry_plan(
        &mut self,
        before: (u64, u64),
        after: (u64, u64),
        changed: &BTreeSet<ObjectKey>,
    ) {
        if self.planned_for != Some(before) {
            return;
        }
        let reads = |k: &ObjectKey| match k.kind {
            Kind::Service => self.probed.contains(&k.name),
            Kind::NetworkProbe | Kind::Workload | Kind::Vpc => true,
            Kind::Subnet | Kind::Node => false,
        };
        if !changed.iter().any(reads) {
            self.planned_for = Some(after);
        }
    }

    /// Recomputes what to probe when the intent or the pods changed (`key`: the
    /// applied version and the pods' revision); queues the adds and removes of
    /// probe ports that match it on `writer`, retrying what failed (not sooner
    /// than [`PROBE_PORT_RETRY`] after the failure). `ports` changes when a write
    /// completes ([`Probes::completed`]). True if the plan changed.
    pub(super) fn update<'a>(
        &mut self,
        key: (u64, u64),
        intent: impl FnOnce() -> std::borrow::Cow<'a, Intent>,
        alloc: &Allocations,
        cfg: &Config,
        ovsdb: &OvsdbSession,
        writer: &PortWriter<PortJob>,
    ) -> bool {
        let Some(service) = &self.service else {
            return false;
        };
        let plan = if self.planned_for == Some(key) {
            let settled = self
                .plan
                .links
                .iter()
                .all(|(v, z)| self.ports.get(z) == Some(v))
                && self.ports.len() == self.plan.links.len();
            if settled {
                return false;
            }
            self.plan.clone()
        } else {
            let intent = intent();
            self.probed = intent.probes.values().map(|p| p.service.clone()).collect();
            crate::probe::plan(&intent, alloc, &cfg.node_name)
        };
        let want: BTreeMap<u16, String> = plan.links.iter().map(|(v, z)| (*z, v.clone())).collect();
        if want != self.ports {
            let Some(client) = ovsdb.client() else {
                return false;
            };
            let now = tokio::time::Instant::now();
            self.failed.retain(|_, at| *at > now);
            for (zone, vpc) in &want {
                if self.ports.get(zone) == Some(vpc) || !self.may_write(*zone) {
                    continue;
                }
                self.writing.insert(*zone);
                writer.send(
                    client.clone(),
                    PortWrite::Internal {
                        port: crate::probe::link::port_name(*zone),
                        iface_id: crate::probe::link::iface_id(vpc),
                        mac: crate::probe::link::mac(*zone).to_string(),
                    },
                    ProbeJob::Add {
                        zone: *zone,
                        vpc: vpc.clone(),
                    },
                );
            }
            let gone: Vec<u16> = self
                .ports
                .keys()
                .filter(|z| !want.contains_key(z))
                .copied()
                .collect();
            for zone in gone {
                if !self.may_write(zone) {
                    continue;
                }
                self.writing.insert(zone);
                writer.send(
                    client.clone(),
                    PortWrite::Unplug {
                        port: crate::probe::link::port_name(zone),
                    },
                    ProbeJob::Remove { zone },
                );
            }
        }
        let changed = plan != self.plan;
        if changed {
            self.targets = plan.targets.iter().map(|t| (t.vpc.clone(), t.ip)).collect();
            let targets: Vec<String> = plan
                .targets
                .iter()
                .map(|t| format!("{}/{}:{}", t.vpc, t.ip, t.spec.port))
                .collect();
            tracing::info!(
                targets = %targets.join(" "),
                links = plan.links.len(),
                "probe plan"
            );
            service.set_plan(plan.clone());
            self.plan = plan;
        }
        self.planned_for = Some(key);
        changed
    }

    /// Whether a write for `zone` may be queued now: none in flight, and no
    /// failure too recent.
    pub(super) fn may_write(&self, zone: u16) -> bool {
        !self.writing.contains(&zone) && !self.failed.contains_key(&zone)
    }

    /// A probe port write completed: `ports` follows what is on the bridge.
    pub(super) fn completed(&mut self, job: ProbeJob, result: Result<(), OvsdbError>) {
        let zone = match &job {
            ProbeJob::Add { zone, .. } | ProbeJob::Remove { zone } => *zone,
        };
        self.writing.remove(&zone);
        let port = crate::probe::link::port_name(zone);
        match (job, result) {
            (ProbeJob::Add { vpc, .. }, Ok(())) => {
                self.ports.insert(zone, vpc);
            }
            (ProbeJob::Remove { .. }, Ok(())) => {
                self.ports.remove(&zone);
            }
            (job, Err(e)) => {
                match job {
                    ProbeJob::Add { .. } => {
                        tracing::warn!(%port, error = %e, "cannot add the probe port")
                    }
                    ProbeJob::Remove { .. } => {
                        tracing::warn!(%port, error = %e, "cannot remove the probe port")
                    }
                }
                self.failed
                    .insert(zone, tokio::time::Instant::now() + PROBE_PORT_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe port counts as on the bridge only when its write completed; while
    /// one is in flight, or shortly after one failed, none is queued for its zone.
    #[test]
    pub(super) fn probe_ports_follow_completions_one_write_per_zone() {
        let mut p = Probes::with(None);
        p.writing.insert(3);
        assert!(!p.may_write(3) && p.may_write(4));
        assert!(p.ports.is_empty());
        p.completed(
            ProbeJob::Add {
                zone: 3,
                vpc: "vpc-a".into(),
            },
            Err(OvsdbError::State("slow".into())),
        );
        assert!(p.ports.is_empty());
        assert!(!p.may_write(3), "retried at once after a failure");
        p.failed.clear();
        assert!(p.may_write(3));
        p.writing.insert(3);
        p.completed(
            ProbeJob::Add {
                zone: 3,
                vpc: "vpc-a".into(),
            },
            Ok(()),
        );
        assert_eq!(p.ports.get(&3).map(String::as_str), Some("vpc-a"));
        assert!(p.may_write(3));
        p.writing.insert(3);
        p.completed(ProbeJob::Remove { zone: 3 }, Ok(()));
        assert!(p.ports.is_empty() && p.writing.is_empty());
    }
}
