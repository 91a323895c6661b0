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
    /// Names are shared (`Arc<str>`): a Service's name is one allocation for
    /// its key, its groups and its cookie.
    pub services: BTreeMap<Arc<str>, ServiceView>,
    /// Group id → (Service, index into its ports).
    pub groups: BTreeMap<u32, (Arc<str>, usize)>,
    /// Service cookie (category and object, no round) → Service.
    pub cookies: BTreeMap<u64, Arc<str>>,
}

/// One Service as the index sees it: the intent's own `Service` (shared, not
/// copied) and what the index adds to it, its backends' states and its
/// groups. Read through [`ServiceView::ports`] and [`ServiceView::backends`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// The intent's Service: name, VPC, addresses, ports and backends.
    pub service: Arc<Service>,
    /// The cookie of its flows and groups, without the round.
    pub cookie: u64,
    /// Per backend of `service` (same index): whether it takes new
    /// connections, and whether it is on this DPU.
    pub status: Box<[BackendStatus]>,
    /// The groups of every port, in port order ([`GroupView::port`]).
    pub groups: Box<[GroupView]>,
}

impl ServiceView {
    pub fn name(&self) -> &str {
        &self.service.name
    }

    pub fn vpc(&self) -> &str {
        &self.service.vpc
    }

    pub fn scenario(&self) -> &'static str {
        scenario_name(self.service.scenario)
    }

    /// Cluster IPs, then the EIP for the EIP scenarios.
    pub fn vips(&self) -> Vec<IpAddr> {
        let s = &self.service;
        let mut vips = s.cluster_ips.clone();
        if matches!(
            s.scenario,
            AccessScenario::EipLoadBalancer | AccessScenario::EipServiceGateway
        ) {
            vips.extend(s.eip.map(IpAddr::V4));
        }
        vips
    }

    pub fn affinity_timeout(&self) -> Option<u32> {
        self.service.affinity_timeout
    }

    pub fn external_traffic_local(&self) -> bool {
        self.service.external_traffic_local
    }

    /// Its ports, each with its groups.
    pub fn ports(&self) -> impl ExactSizeIterator<Item = PortView<'_>> + '_ {
        (0..self.service.ports.len()).map(|i| self.port_view(i))
    }

    /// Port `i` (index into the Service's ports).
    pub fn port(&self, i: usize) -> Option<PortView<'_>> {
        (i < self.service.ports.len()).then(|| self.port_view(i))
    }

    fn port_view(&self, i: usize) -> PortView<'_> {
        let p = &self.service.ports[i];
        let from = self.groups.partition_point(|g| (g.port as usize) < i);
        let to = self.groups.partition_point(|g| (g.port as usize) <= i);
        PortView {
            name: &p.name,
            protocol: p.protocol.as_str(),
            port: p.port,
            target_port: p.target_port,
            groups: &self.groups[from..to],
        }
    }

    /// Its backends, in the Service's order (the index bucket maps point at).
    pub fn backends(&self) -> impl ExactSizeIterator<Item = BackendView<'_>> + Clone + '_ {
        self.service
            .backends
            .iter()
            .zip(self.status.iter())
            .map(|(b, st)| BackendView::of(b, *st))
    }

    /// Backend `i` (index into the Service's backends).
    pub fn backend(&self, i: usize) -> Option<BackendView<'_>> {
        let b = self.service.backends.get(i)?;
        Some(BackendView::of(b, *self.status.get(i)?))
    }

    /// The cookies (round 0) of its backends' EndpointDnat flows, keyed as the
    /// compiler keys them ([`crate::compile::endpoint_key`]): shared with the
    /// Services of the same VPC that have the endpoint, never with another
    /// VPC's flow for the same address.
    pub fn endpoint_cookies(&self) -> Vec<u64> {
        let gateway = self.service.scenario == AccessScenario::EipServiceGateway;
        let mut out = Vec::new();
        for p in self.ports() {
            for b in self.backends() {
                let key = crate::compile::endpoint_key(
                    gateway,
                    self.vpc(),
                    b.vpc,
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
        if self.affinity_timeout().is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for vip in self.vips() {
            for p in self.ports() {
                for (i, b) in self.backends().enumerate() {
                    let c = crate::compile::affinity_cookie(
                        self.name(),
                        vip,
                        p.protocol,
                        p.port,
                        b.vpc,
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

/// One port of a [`ServiceView`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PortView<'a> {
    pub name: &'a str,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    pub port: u16,
    pub target_port: u16,
    pub groups: &'a [GroupView],
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    pub id: u32,
    /// The port it balances (index into the Service's ports).
    pub port: u32,
    pub v6: bool,
    /// The `externalTrafficPolicy: Local` group (local backends only).
    pub local: bool,
    /// The agent installed it (a group with no bucket is not installed).
    pub installed: bool,
    /// The installed group's bucket ids differ from the ones computed here;
    /// per-backend counters of this group are not attributed.
    pub mismatch: bool,
    /// Bucket id → index into the Service's `backends`, as the compiler gave
    /// them out.
    pub buckets: Buckets,
}

/// Bucket id → backend (index into the Service's backends), as a slice
/// sorted by bucket id: 8 bytes a bucket, not a map node's share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets(Box<[(u32, u32)]>);

impl Buckets {
    /// The backend bucket `id` stands for.
    pub fn get(&self, id: u32) -> Option<usize> {
        let at = self.0.binary_search_by_key(&id, |&(b, _)| b).ok()?;
        Some(self.0[at].1 as usize)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0 = Box::new([]);
    }

    /// (bucket id, backend), by bucket id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u32, usize)> + '_ {
        self.0.iter().map(|&(id, b)| (id, b as usize))
    }

    /// The bucket ids, in order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.0.iter().map(|&(id, _)| id)
    }

    /// The backends, in bucket id order.
    pub fn backends(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.0.iter().map(|&(_, b)| b as usize)
    }
}

impl FromIterator<(u32, usize)> for Buckets {
    fn from_iter<I: IntoIterator<Item = (u32, usize)>>(iter: I) -> Self {
        let mut v: Vec<(u32, u32)> = iter
            .into_iter()
            .map(|(id, b)| (id, u32::try_from(b).expect("a backend index fits u32")))
            .collect();
        // The last of equal ids wins, as in a map.
        v.reverse();
        v.sort_by_key(|&(id, _)| id);
        v.dedup_by_key(|&mut (id, _)| id);
        Buckets(v.into_boxed_slice())
    }
}

/// What the index adds to one backend of the Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendStatus {
    pub state: BackendState,
    /// On this DPU.
    pub local: bool,
}

/// One backend of a [`ServiceView`]: the Service's own, borrowed, with its
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendView<'a> {
    pub vpc: &'a str,
    pub ip: IpAddr,
    pub workload: Option<&'a str>,
    pub weight: u32,
    pub state: BackendState,
    /// On this DPU.
    pub local: bool,
}

impl<'a> BackendView<'a> {
    fn of(b: &'a dpu_model::Backend, st: BackendStatus) -> Self {
        BackendView {
            vpc: &b.vpc,
            ip: b.ip,
            workload: b.workload.as_deref(),
            weight: b.weight,
            state: st.state,
            local: st.local,
        }
    }
}

/// Whether a backend takes new connections, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Lets go of the loop's shared state before a build: copies the intent
    /// (with this node's pods in, the copy the build needs anyway) and the
    /// allocations out of the loop's `Arc`s, the two the loop changes in
    /// place (`Arc::make_mut`), and keeps only the installed view's groups
    /// ([`Self::keep_installed_groups_only`]). While a build held them, the
    /// loop's next update copied them itself, in that update's time (at 30k
    /// Services 5-10 ms, once per build, every
    /// [`LB_REFRESH`](super::collect::LB_REFRESH) under churn). Called first
    /// on the build's thread, so the loop copies only if it changes state
    /// during this copy, not during the whole build.
    pub fn unshare(&mut self) {
        let intent = self.intent.with_pods().into_owned();
        self.intent.intent = Arc::new(intent);
        // In the intent now: `build` must not add them again.
        self.intent.pods.clear();
        self.alloc = Arc::new(Allocations::clone(&self.alloc));
        self.keep_installed_groups_only();
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
        // Collected from sorted lists, so the maps' nodes are full.
        let mut services = Vec::with_capacity(x.intent.services.len());
        let mut groups = Vec::new();
        let mut cookies = Vec::with_capacity(x.intent.services.len());
        for s in x.intent.services.values() {
            let name: Arc<str> = s.name.as_str().into();
            let view = service_view(s, x);
            groups.extend(
                view.groups
                    .iter()
                    .map(|g| (g.id, (name.clone(), g.port as usize))),
            );
            cookies.push((view.cookie, name.clone()));
            services.push((name, view));
        }
        LbIndex {
            version: x.version,
            services: services.into_iter().collect(),
            groups: groups.into_iter().collect(),
            cookies: cookies.into_iter().collect(),
        }
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
            let Some((name, _)) = self.groups.get(&g.id) else {
                continue;
            };
            let c = out.entry(name.to_string()).or_default();
            c.new_connections += g.packets;
            let Some(view) = self.services[name].groups.iter().find(|v| v.id == g.id) else {
                continue;
            };
            if view.mismatch {
                continue;
            }
            for (bid, (p, b)) in g.bucket_ids.iter().zip(&g.buckets) {
                if let Some(bi) = view.buckets.get(*bid) {
                    let e = c.backends.entry(bi).or_default();
                    e.0 += p;
                    e.1 += b;
                }
            }
        }
        out
    }
}

fn service_view(s: &Arc<Service>, x: &Inputs<'_>) -> ServiceView {
    let status: Box<[BackendStatus]> = s
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
            BackendStatus {
                local: x.ready.local.contains(&key),
                state,
            }
        })
        .collect();
    let mut view = ServiceView {
        service: s.clone(),
        cookie: service_cookie(s).value(0),
        status,
        groups: Box::new([]),
    };
    let vips = view.vips();
    let families: Vec<bool> = [false, true]
        .into_iter()
        .filter(|v6| vips.iter().any(|ip| ip.is_ipv6() == *v6))
        .collect();
    let external_local = s.external_traffic_local && s.scenario != AccessScenario::ClusterIp;
    let backends: Vec<BackendView<'_>> = view.backends().collect();
    let mut groups = Vec::new();
    for (pi, p) in s.ports.iter().enumerate() {
        let Some(gid) = x.alloc.group(s, p) else {
            continue;
        };
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
                    .map(|&i| (backends[i].vpc, backends[i].ip, backends[i].weight))
                    .collect::<Vec<_>>(),
            );
            let all: Buckets = members
                .iter()
                .zip(&ids)
                .flat_map(|(&i, ids)| ids.iter().map(move |&id| (id, i)))
                .collect();
            let fam_gid = if v6 { gid | V6_GROUP_BIT } else { gid };
            let local: Buckets = all.iter().filter(|&(_, i)| backends[i].local).collect();
            let mut push = |id: u32, buckets: Buckets, is_local: bool| {
                let installed = x.installed.and_then(|d| d.groups.get(&id));
                let mismatch =
                    installed.is_some_and(|g| !g.buckets.iter().map(|b| b.id).eq(buckets.ids()));
                groups.push(GroupView {
                    id,
                    port: pi as u32,
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
    drop(backends);
    view.groups = groups.into_boxed_slice();
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::flows::{Actions, Group, Match};
    use crate::compile::pipeline::cookie::{Category, Cookie};
    use crate::compile::pipeline::SERVICE_LB;

    #[test]
    fn a_view_shares_the_intents_service() {
        let mut intent = Intent::default();
        for name in ["db", "web"] {
            let backends = ["10.0.0.5", "10.0.0.6"].map(|ip| dpu_model::Backend {
                ip: ip.parse().unwrap(),
                weight: 1,
                workload: None,
                vpc: "blue".into(),
            });
            intent.upsert(dpu_model::Object::Service(Service {
                name: name.into(),
                vpc: "blue".into(),
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                ports: vec![],
                backends: backends.to_vec(),
                affinity_timeout: None,
                eip: None,
                scenario: AccessScenario::ClusterIp,
                external_traffic_local: false,
                eip_node: None,
            }));
        }
        let lb = LbIndex::build(&Inputs {
            version: 1,
            intent: &intent,
            alloc: &Allocations::default(),
            ready: &Readiness::default(),
            unhealthy: &BTreeSet::new(),
            installed: None,
        });
        assert!(!intent.services.is_empty());
        for (name, s) in &intent.services {
            let view = &lb.services[name.as_str()];
            assert!(Arc::ptr_eq(&view.service, s), "{name} is copied");
            assert_eq!(view.backends().len(), s.backends.len());
            assert!(view.backends().zip(&s.backends).all(|(v, b)| v.ip == b.ip));
        }
    }

    #[test]
    fn buckets_are_sorted_by_id_and_the_last_of_an_id_wins() {
        let b: Buckets = [(21, 1), (11, 0), (12, 0), (11, 2)].into_iter().collect();
        assert_eq!(b.iter().collect::<Vec<_>>(), [(11, 2), (12, 0), (21, 1)]);
        assert_eq!((b.get(12), b.get(13), b.len()), (Some(0), None, 3));
    }

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

    #[test]
    fn an_index_build_lets_the_loops_intent_and_allocations_go_and_reads_the_same() {
        let intent = crate::observe::ops::show::fixtures::sample_intent();
        let web = intent.services.keys().next().expect("a Service").clone();
        let intent = Arc::new(intent);
        let mut alloc = Allocations::default();
        alloc.groups.insert("web/0".into(), 7);
        let alloc = Arc::new(alloc);
        let mut inputs = LbInputs {
            intent: super::super::IntentSnapshot {
                version: 3,
                intent: intent.clone(),
                pods: Vec::new(),
            },
            alloc: alloc.clone(),
            ..LbInputs::default()
        };
        inputs.unshare();
        assert_eq!(
            Arc::strong_count(&intent),
            1,
            "the loop's intent is its own"
        );
        assert_eq!(Arc::strong_count(&alloc), 1, "the loop's allocations too");
        assert_eq!(*inputs.intent.intent, *intent);
        assert_eq!(*inputs.alloc, *alloc);
        assert!(
            Arc::ptr_eq(&inputs.intent.intent.services[&web], &intent.services[&web]),
            "the Services themselves are shared, not copied"
        );
    }
}
