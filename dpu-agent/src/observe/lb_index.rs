//! Services as the operator sees them: VIPs, ports, the groups the agent gave
//! them, which bucket ids stand for which backend, and why a backend has no
//! bucket. Built from the applied intent, the allocations, the compiler's
//! readiness and the installed groups; joined with the switch's counters by
//! [`LbIndex::counters`]. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use dpu_model::{AccessScenario, Intent, Service};

use crate::compile::flows::DesiredState;
use crate::compile::pipeline::cookie;
use crate::compile::pipeline::{LOCAL_GROUP_BIT, V6_GROUP_BIT};
use crate::compile::{assign_bucket_ids, service_cookie, Readiness};
use crate::state::alloc::Allocations;

use super::switch_stats::SwitchCounters;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LbIndex {
    pub version: u64,
    /// Names and VPC names are shared (`Arc<str>`): a Service's name is one
    /// allocation for its key, its view, its groups and its cookie, and a
    /// VPC's name one for every backend in it.
    pub services: BTreeMap<Arc<str>, ServiceView>,
    /// Group id → (Service, index into its `ports`).
    pub groups: BTreeMap<u32, (Arc<str>, usize)>,
    /// Service cookie (category and object, no round) → Service.
    pub cookies: BTreeMap<u64, Arc<str>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    pub name: Arc<str>,
    pub vpc: Arc<str>,
    pub scenario: &'static str,
    /// Cluster IPs, then the EIP for the EIP scenarios.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortView>,
    pub backends: Vec<BackendView>,
    /// The cookie of its flows and groups, without the round.
    pub cookie: u64,
    pub affinity_timeout: Option<u32>,
    pub external_traffic_local: bool,
}

impl ServiceView {
    /// The cookies (round 0) of its backends' EndpointDnat flows, keyed as the
    /// compiler keys them ([`crate::compile::endpoint_key`]): shared with the
    /// Services of the same VPC that have the endpoint, never with another
    /// VPC's flow for the same address.
    pub fn endpoint_cookies(&self) -> Vec<u64> {
        let gateway = self.scenario == scenario_name(AccessScenario::EipServiceGateway);
        let mut out = Vec::new();
        for p in &self.ports {
            for b in &self.backends {
                let key = crate::compile::endpoint_key(
                    gateway,
                    &self.vpc,
                    &b.vpc,
                    p.protocol,
                    b.ip,
                    p.target_port,
                );
                out.push(cookie::Cookie::new(cookie::Category::Endpoint, &key).value(0));
            }
        }
        out
    }

    /// With ClientIP affinity: the cookie (round 0) of the entries each of its
    /// AffinityLearn flows learns, with the backend (index into `backends`)
    /// they pin clients to, as [`crate::compile::affinity_cookie`] makes them.
    pub fn affinity_cookies(&self) -> Vec<(u64, usize)> {
        if self.affinity_timeout.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for vip in &self.vips {
            for p in &self.ports {
                for (i, b) in self.backends.iter().enumerate() {
                    let c = crate::compile::affinity_cookie(
                        &self.name,
                        *vip,
                        p.protocol,
                        p.port,
                        &b.vpc,
                        b.ip,
                        p.target_port,
                    );
                    out.push((c.value(0), i));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortView {
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    pub port: u16,
    pub target_port: u16,
    pub groups: Vec<GroupView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    pub id: u32,
    pub v6: bool,
    /// The `externalTrafficPolicy: Local` group (local backends only).
    pub local: bool,
    /// The agent installed it (a group with no bucket is not installed).
    pub installed: bool,
    /// Bucket id → index into the Service's `backends`, as the compiler gave
    /// them out.
    pub buckets: BTreeMap<u32, usize>,
    /// The installed group's bucket ids differ from the ones computed here;
    /// per-backend counters of this group are not attributed.
    pub mismatch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    pub vpc: Arc<str>,
    pub ip: IpAddr,
    pub workload: Option<String>,
    pub weight: u32,
    pub state: BackendState,
    /// On this DPU.
    pub local: bool,
}

/// Whether a backend takes new connections, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendState {
    Serving,
    /// Weight 0: configured to take nothing.
    WeightZero,
    /// A probe (this node's or another node's, via the controller) failed it.
    Unhealthy,
    /// Its workload's port is not on the bridge, or no tunnel reaches its node.
    NotReady,
    /// Its VPC has no zone here (not in the intent).
    NoVpc,
}

impl BackendState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendState::Serving => "serving",
            BackendState::WeightZero => "weight 0",
            BackendState::Unhealthy => "unhealthy",
            BackendState::NotReady => "not ready",
            BackendState::NoVpc => "no VPC",
        }
    }
}

/// Counters of one Service, summed over its ports, groups and flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Packets and bytes of its flows: in ServiceLb a connection's packets
    /// until it is established, so these count new-connection traffic.
    pub packets: u64,
    pub bytes: u64,
    /// Packets that went through its groups: one per load-balancing decision
    /// (a new connection, or a retransmit before it is established).
    pub new_connections: u64,
    /// Per backend (index into `backends`): packets and bytes through its
    /// buckets.
    pub backends: BTreeMap<usize, (u64, u64)>,
}

/// What the index is built from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub version: u64,
    pub intent: &'a Intent,
    pub alloc: &'a Allocations,
    pub ready: &'a Readiness,
    pub unhealthy: &'a BTreeSet<(String, IpAddr)>,
    pub installed: Option<&'a DesiredState>,
}

/// [`Inputs`] owned: the agent loop's shared state at one generation. Taking
/// it costs the loop reference counts and the (small) unhealthy set; the
/// loop's next change copies what a snapshot still holds (`Arc::make_mut`).
#[derive(Debug, Clone, Default)]
pub struct LbInputs {
    pub intent: super::IntentSnapshot,
    pub alloc: Arc<Allocations>,
    pub ready: Arc<Readiness>,
    pub unhealthy: BTreeSet<(String, IpAddr)>,
    pub installed: Option<Arc<DesiredState>>,
}

impl LbInputs {
    /// Trades the installed view for a copy of its map of groups (an id and
    /// a pointer each), the only part of it the index reads. While a build
    /// holds the reconciler's own view, the loop's next update copies all of
    /// it, flows included, to change it (`Arc::make_mut`): at 10k Services
    /// that was 5-9 ms in that update's bundle time, once per build.
    pub fn keep_installed_groups_only(&mut self) {
        if let Some(view) = self.installed.take() {
            self.installed = Some(Arc::new(DesiredState {
                flows: BTreeMap::new(),
                groups: view.groups.clone(),
            }));
        }
    }

    pub fn build(&self) -> LbIndex {
        let intent = self.intent.with_pods();
        LbIndex::build(&Inputs {
            version: self.intent.version,
            intent: &intent,
            alloc: &self.alloc,
            ready: &self.ready,
            unhealthy: &self.unhealthy,
            installed: self.installed.as_deref(),
        })
    }
}

fn scenario_name(s: AccessScenario) -> &'static str {
    match s {
        AccessScenario::ClusterIp => "ClusterIP",
        AccessScenario::NodeClusterIp => "NodeClusterIP",
        AccessScenario::EipLoadBalancer => "EIP LoadBalancer",
        AccessScenario::EipServiceGateway => "EIP service gateway",
    }
}

impl LbIndex {
    pub fn build(x: &Inputs<'_>) -> LbIndex {
        let mut out = LbIndex {
            version: x.version,
            ..LbIndex::default()
        };
        let mut vpcs = Vpcs::default();
        for s in x.intent.services.values() {
            let view = service_view(s, x, &mut vpcs);
            for (pi, p) in view.ports.iter().enumerate() {
                for g in &p.groups {
                    out.groups.insert(g.id, (view.name.clone(), pi));
                }
            }
            out.cookies.insert(view.cookie, view.name.clone());
            out.services.insert(view.name.clone(), view);
        }
        out
    }

    /// The Service a flow cookie (any round) belongs to.
    pub fn service_of_cookie(&self, c: u64) -> Option<&str> {
        self.cookies
            .get(&(c & cookie::Cookie::SELECT_MASK))
            .map(|s| &**s)
    }

    /// Per-Service counters from the switch's flow and group counters.
    pub fn counters(&self, sw: &SwitchCounters) -> BTreeMap<String, ServiceCounters> {
        let mut out: BTreeMap<String, ServiceCounters> = BTreeMap::new();
        for f in &sw.flows {
            if let Some(name) = self.service_of_cookie(f.cookie) {
                let c = out.entry(name.to_string()).or_default();
                c.packets += f.packets;
                c.bytes += f.bytes;
            }
        }
        for g in &sw.groups {
            let Some((name, pi)) = self.groups.get(&g.id) else {
                continue;
            };
            let c = out.entry(name.to_string()).or_default();
            c.new_connections += g.packets;
            let Some(view) = self.services[name].ports[*pi]
                .groups
                .iter()
                .find(|v| v.id == g.id)
            else {
                continue;
            };
            if view.mismatch {
                continue;
            }
            for (bid, (p, b)) in g.bucket_ids.iter().zip(&g.buckets) {
                if let Some(&bi) = view.buckets.get(bid) {
                    let e = c.backends.entry(bi).or_default();
                    e.0 += p;
                    e.1 += b;
                }
            }
        }
        out
    }
}

/// VPC names, one allocation each per build.
#[derive(Default)]
struct Vpcs(BTreeSet<Arc<str>>);

impl Vpcs {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.0.get(name) {
            return a.clone();
        }
        let a: Arc<str> = name.into();
        self.0.insert(a.clone());
        a
    }
}

fn service_view(s: &Service, x: &Inputs<'_>, vpcs: &mut Vpcs) -> ServiceView {
    let mut vips = s.cluster_ips.clone();
    if matches!(
        s.scenario,
        AccessScenario::EipLoadBalancer | AccessScenario::EipServiceGateway
    ) {
        vips.extend(s.eip.map(IpAddr::V4));
    }
    let backends: Vec<BackendView> = s
        .backends
        .iter()
        .map(|b| {
            let key = (b.vpc.clone(), b.ip);
            let state = if b.weight == 0 {
                BackendState::WeightZero
            } else if x.alloc.zone(&b.vpc).is_none() {
                BackendState::NoVpc
            } else if x.unhealthy.contains(&key) {
                BackendState::Unhealthy
            } else if x.ready.unready.contains(&key) {
                BackendState::NotReady
            } else {
                BackendState::Serving
            };
            BackendView {
                vpc: vpcs.get(&b.vpc),
                ip: b.ip,
                workload: b.workload.clone(),
                weight: b.weight,
                local: x.ready.local.contains(&key),
                state,
            }
        })
        .collect();
    let families: Vec<bool> = [false, true]
        .into_iter()
        .filter(|v6| vips.iter().any(|ip| ip.is_ipv6() == *v6))
        .collect();
    let external_local = s.external_traffic_local && s.scenario != AccessScenario::ClusterIp;
    let ports = s
        .ports
        .iter()
        .map(|p| {
            let mut groups = Vec::new();
            if let Some(gid) = x.alloc.group(s, p) {
                for &v6 in &families {
                    // The members, as `compile_service_port` picks them.
                    let members: Vec<usize> = backends
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| b.ip.is_ipv6() == v6 && b.state == BackendState::Serving)
                        .map(|(i, _)| i)
                        .collect();
                    let ids = assign_bucket_ids(
                        p.target_port,
                        &members
                            .iter()
                            .map(|&i| (&*backends[i].vpc, backends[i].ip, backends[i].weight))
                            .collect::<Vec<_>>(),
                    );
                    let all: BTreeMap<u32, usize> = members
                        .iter()
                        .zip(&ids)
                        .flat_map(|(&i, ids)| ids.iter().map(move |&id| (id, i)))
                        .collect();
                    let fam_gid = if v6 { gid | V6_GROUP_BIT } else { gid };
                    let local: BTreeMap<u32, usize> = all
                        .iter()
                        .filter(|(_, &i)| backends[i].local)
                        .map(|(&id, &i)| (id, i))
                        .collect();
                    let mut push = |id: u32, buckets: BTreeMap<u32, usize>, is_local: bool| {
                        let installed = x.installed.and_then(|d| d.groups.get(&id));
                        let mismatch = installed.is_some_and(|g| {
                            !g.buckets.iter().map(|b| b.id).eq(buckets.keys().copied())
                        });
                        groups.push(GroupView {
                            id,
                            v6,
                            local: is_local,
                            installed: installed.is_some(),
                            buckets,
                            mismatch,
                        });
                    };
                    if external_local {
                        push(fam_gid | LOCAL_GROUP_BIT, local, true);
                    }
                    push(fam_gid, all, false);
                }
            }
            PortView {
                name: p.name.clone(),
                protocol: p.protocol.as_str(),
                port: p.port,
                target_port: p.target_port,
                groups,
            }
        })
        .collect();
    ServiceView {
        name: s.name.as_str().into(),
        vpc: vpcs.get(&s.vpc),
        scenario: scenario_name(s.scenario),
        vips,
        ports,
        backends,
        cookie: service_cookie(s).value(0),
        affinity_timeout: s.affinity_timeout,
        external_traffic_local: s.external_traffic_local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::flows::{Actions, Group, Match};
    use crate::compile::pipeline::cookie::{Category, Cookie};
    use crate::compile::pipeline::SERVICE_LB;

    #[test]
    fn an_index_build_lets_the_reconcilers_view_go_and_keeps_its_groups() {
        let owner = Cookie::new(Category::Service, "web");
        let mut view = DesiredState::default();
        view.add(SERVICE_LB, 100, Match::new(), Actions::drop(), owner);
        view.groups.insert(
            5,
            Arc::new(Group {
                id: 5,
                hash_fields: Vec::new(),
                buckets: Vec::new(),
                owner,
                learns: false,
            }),
        );
        let view = Arc::new(view);
        let mut inputs = LbInputs {
            installed: Some(view.clone()),
            ..LbInputs::default()
        };
        inputs.keep_installed_groups_only();
        assert_eq!(
            Arc::strong_count(&view),
            1,
            "the loop's view is its own again"
        );
        let kept = inputs.installed.as_deref().unwrap();
        assert!(kept.flows.is_empty());
        assert_eq!(kept.groups, view.groups);
        assert!(
            Arc::ptr_eq(&kept.groups[&5], &view.groups[&5]),
            "shared, not copied"
        );
    }
}
