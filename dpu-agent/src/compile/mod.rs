//! The compiler: `(intent, allocations, node facts) → desired flows and groups`.
//! Pure: no I/O, no clock, no tokio. The same input always gives the same output,
//! which the golden files under `tests/golden/` pin down.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use dpu_model::{AccessScenario, Intent, Kind, Mac, ObjectKey, Protocol, Service, WorkloadKind};

use crate::compile::flows::{Actions, Bucket, DesiredState, Group, Match};
use crate::compile::pipeline::cookie::{Category, Cookie};
use crate::compile::pipeline::{label, mark, reg, *};
use crate::state::alloc::Allocations;
use ::openflow::ir::{
    ct, Action, Ct, CtZone, Field, HashField, Learn, LearnSpec, Nat, Proto, Subfield, Value,
};

mod buckets;
pub mod fasthash;
pub mod flows;
pub mod incremental;
pub mod pipeline;

pub use buckets::{assign_bucket_ids, bucket_id, BUCKET_ID_MAX};

/// What the agent knows about its own switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub node: String,
    /// `external_ids:iface-id` → OpenFlow port number, for ports on our bridge.
    pub ports: BTreeMap<String, u32>,
    /// The iface-id of the host's PF representor (`[host] port`), if configured.
    pub host_port: Option<String>,
    /// The uplink's iface-id and the MAC this DPU uses there (`[uplink]`).
    pub uplink: Option<(String, Mac)>,
    /// Backends this DPU's health probes found unhealthy, by (VPC, address): they
    /// get no bucket.
    pub unhealthy: BTreeSet<(String, IpAddr)>,
}

/// The compiler's result: the desired state and what could not be bound yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub desired: DesiredState,
    /// Local workloads whose port is not on the bridge yet (by workload name).
    pub pending_ports: Vec<String>,
    /// Remote workloads that cannot be reached: their node has no `DpuNode`, or
    /// the tunnel port is not on the bridge yet (by workload name).
    pub unreachable: Vec<String>,
}

/// Compiles validated intent. Callers run `dpu_model::validate_for_node` and
/// `Allocations::update` first; objects without an allocation are skipped.
///
/// The output is the merge of independent parts ([`Part`]) in part order: the
/// first part to emit a flow owns it, as if one compiler ran them in that order.
/// [`incremental::IncrementalCompiler`] keeps the same parts between updates and
/// recompiles only those whose inputs changed.
pub fn compile(intent: &Intent, alloc: &Allocations, facts: &NodeFacts) -> Compiled {
    let base = compile_base(intent, alloc, facts);
    let env = PartEnv::new(intent, alloc, facts);
    let mut parts: Vec<(Part, DesiredState)> = Vec::new();
    for s in intent.services.values() {
        parts.extend(service_parts(s, &env, &base.ready));
    }
    let node_vpcs: BTreeSet<&str> = intent
        .services
        .values()
        .filter(|s| s.scenario == AccessScenario::NodeClusterIp)
        .map(|s| s.vpc.as_str())
        .collect();
    let gateways: Vec<&Service> = intent
        .services
        .values()
        .map(|s| &**s)
        .filter(|s| s.scenario == AccessScenario::EipServiceGateway)
        .collect();
    let gateway_vpcs: BTreeSet<&str> = gateways
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.vpc.as_str()))
        .collect();
    parts.extend(global_parts(
        &env,
        &node_vpcs,
        (!gateways.is_empty()).then_some(&gateway_vpcs),
    ));
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Compiled {
        desired: base.desired,
        pending_ports: base.pending_ports,
        unreachable: base.unreachable,
    };
    for (_, part) in parts {
        for (k, b) in part.flows {
            out.desired.flows.entry(k).or_insert(b);
        }
        out.desired.groups.extend(part.groups);
    }
    out
}

/// One independently compiled piece of the desired state. The derived order is
/// the order in which [`compile`] merges them (the first to emit a flow owns
/// it): the base, every Service's own flows and groups by name, the local host's
/// entry, the Services' host entries, the routes to the hosts, the uplink's
/// entry, the Services' EIP entries on the uplink, the service gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// Pipeline misses, VPCs, Subnets, workloads, probe links.
    Base,
    Service(Arc<str>),
    HostsLocal,
    HostsService(Arc<str>),
    HostsRoutes,
    UplinkLocal,
    UplinkService(Arc<str>),
    Gateway,
}

/// Which backends take no new connections (local port missing, remote
/// unreachable, unhealthy) and which are on this DPU, by (VPC, address): what
/// the Service parts read from the base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    pub unready: BTreeSet<(String, IpAddr)>,
    pub local: BTreeSet<(String, IpAddr)>,
}

/// The base part and what it found out.
#[derive(Debug, Clone, Default)]
pub struct Base {
    pub desired: DesiredState,
    pub pending_ports: Vec<String>,
    pub unreachable: Vec<String>,
    pub ready: Readiness,
}

/// What the non-base parts read besides their own object.
pub(crate) struct PartEnv<'a> {
    pub intent: &'a Intent,
    pub alloc: &'a Allocations,
    pub facts: &'a NodeFacts,
    tunnel: Option<u32>,
    uplink: Option<Uplink<'a>>,
    /// The local host's port and address (node ClusterIP).
    host: Option<(u32, Ipv4Addr)>,
}

impl<'a> PartEnv<'a> {
    pub fn new(intent: &'a Intent, alloc: &'a Allocations, facts: &'a NodeFacts) -> Self {
        PartEnv {
            intent,
            alloc,
            facts,
            tunnel: facts.ports.get(TUNNEL_IFACE_ID).copied(),
            uplink: uplink_of(facts),
            host: facts
                .host_port
                .as_ref()
                .and_then(|p| facts.ports.get(p))
                .zip(intent.nodes.get(&facts.node).and_then(|n| n.host))
                .map(|(&port, (ip, _))| (port, ip)),
        }
    }
}

impl PartEnv<'_> {
    /// What of the node facts the parts other than the base read.
    pub(crate) fn shape(&self) -> EnvShape {
        EnvShape {
            node: self.facts.node.clone(),
            tunnel: self.tunnel,
            uplink: self.uplink.map(|u| (u.iface.to_string(), u.ofport, u.mac)),
            host: self.host,
        }
    }
}

/// See [`PartEnv::shape`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EnvShape {
    node: String,
    tunnel: Option<u32>,
    uplink: Option<(String, u32, Mac)>,
    host: Option<(u32, Ipv4Addr)>,
}

fn uplink_of(facts: &NodeFacts) -> Option<Uplink<'_>> {
    facts.uplink.as_ref().and_then(|(iface, mac)| {
        facts.ports.get(iface).map(|&ofport| Uplink {
            iface,
            ofport,
            mac: *mac,
        })
    })
}

/// The parts one Service makes: its own, its host entry (node ClusterIP) and
/// its EIP entry on the uplink (when this DPU owns the EIP). Parts that would be
/// empty are left out.
pub(crate) fn service_parts(
    s: &Service,
    env: &PartEnv<'_>,
    ready: &Readiness,
) -> Vec<(Part, DesiredState)> {
    let name: Arc<str> = Arc::from(s.name.as_str());
    let mut out = Vec::with_capacity(1);
    let mut d = DesiredState::default();
    compile_service(&mut d, s, env.alloc, &ready.unready, &ready.local);
    out.push((Part::Service(name.clone()), d));
    if let Some((hport, hip)) = env.host {
        if s.scenario == AccessScenario::NodeClusterIp {
            let mut d = DesiredState::default();
            compile_host_service(&mut d, s, env.alloc, hport, hip);
            out.push((Part::HostsService(name.clone()), d));
        }
    }
    if let Some(u) = env.uplink {
        if s.eip_node.as_deref() == Some(env.facts.node.as_str()) {
            let mut d = DesiredState::default();
            compile_uplink_service(&mut d, s, env.alloc, u);
            out.push((Part::UplinkService(name), d));
        }
    }
    out.retain(|(_, d)| !d.flows.is_empty() || !d.groups.is_empty());
    out
}

/// The parts that aggregate over Services: `node_vpcs`, the VPCs with a
/// NodeClusterIP Service; `gateway_vpcs`, the backend VPCs of the service-gateway
/// Services when there is one.
pub(crate) fn global_parts(
    env: &PartEnv<'_>,
    node_vpcs: &BTreeSet<&str>,
    gateway_vpcs: Option<&BTreeSet<&str>>,
) -> Vec<(Part, DesiredState)> {
    let mut out = Vec::new();
    let mut d = DesiredState::default();
    if let Some((hport, _)) = env.host {
        compile_hosts_local(&mut d, env.facts, hport);
    }
    out.push((Part::HostsLocal, d));
    let mut d = DesiredState::default();
    compile_hosts_routes(&mut d, env, node_vpcs);
    out.push((Part::HostsRoutes, d));
    let mut d = DesiredState::default();
    if let Some(u) = env.uplink {
        compile_uplink_local(&mut d, env.facts, u);
    }
    out.push((Part::UplinkLocal, d));
    let mut d = DesiredState::default();
    if let Some(vpcs) = gateway_vpcs {
        compile_gateway(&mut d, env.intent, env.alloc, vpcs);
    }
    out.push((Part::Gateway, d));
    out
}

/// The base part: pipeline misses, VPCs, Subnets, workloads and probe links.
pub fn compile_base(intent: &Intent, alloc: &Allocations, facts: &NodeFacts) -> Base {
    let mut out = Compiled::default();
    let d = &mut out.desired;
    pipeline_misses(d);
    nd_advertise(d);
    let tunnel = facts.ports.get(TUNNEL_IFACE_ID).copied();
    let uplink = uplink_of(facts);

    for vpc in intent.vpcs.values() {
        let Some(zone) = alloc.zone(&vpc.name) else {
            continue;
        };
        let z = u32::from(zone);
        let c = Cookie::new(Category::Vpc, &vpc.name);
        tracked_zone(d, z, &FAMILIES, Actions::new().goto(RETURN_PATH.id), c);
        for fam in FAMILIES {
            let Some(t) = tunnel else { break };
            // From another DPU: the VNI names the VPC. Only IP crosses (ARP and ND
            // are answered locally on every DPU); the sender already enforced the
            // spoof guard and chose the backend, so this goes to conntrack.
            d.add(
                CLASSIFY,
                100,
                Match::new()
                    .in_port(t)
                    .exact(Field::TunId, vpc.vni)
                    .proto(fam),
                Actions::new()
                    .set_reg(reg::VPC, z)
                    .set_reg(reg::ORIGIN, reg::ORIGIN_TUNNEL)
                    .then(label::stage_tunnel_src())
                    .goto(CONNTRACK.id),
                c,
            );
            // A reply to a connection that came through a tunnel goes back to the
            // DPU that sent it, which holds its NAT state.
            d.add(
                RETURN_PATH,
                100,
                Match::new()
                    .reg(reg::VPC, z)
                    .proto(fam)
                    .ct_state(ct::RPL | ct::TRK, 0)
                    .push(mark::origin_is(reg::ORIGIN_TUNNEL)),
                Actions::new()
                    .move_(label::TUNNEL_SRC, Subfield::whole(Field::TunDst))
                    .set_field(Field::TunId, vpc.vni)
                    .output(t),
                c,
            );
        }
        // Other new connections are committed too, so their replies are +est and not
        // +inv (a SYN-ACK without a tracked SYN is invalid to conntrack), with the
        // way they came in, for ReturnPath.
        for fam in FAMILIES {
            d.add(
                SERVICE_LB,
                10,
                Match::new()
                    .reg(reg::VPC, z)
                    .ct_state(ct::NEW | ct::TRK, 0)
                    .proto(fam),
                Actions::new().then(ct_commit(L3_FORWARD, None, label::record())),
                c,
            );
        }
    }

    for s in intent.subnets.values() {
        let Some(zone) = alloc.zone(&s.vpc) else {
            continue;
        };
        let c = Cookie::new(Category::Subnet, &s.name);
        answer_for(d, zone, s.gateway, c);
    }

    // A local workload whose port is not plugged yet cannot serve: it gets no
    // bucket until its port shows up (the port change recompiles). Nor can a
    // remote one that no tunnel reaches.
    let mut unready: BTreeSet<(&str, IpAddr)> = BTreeSet::new();
    // Backends on this DPU, for `externalTrafficPolicy: Local`.
    let mut local: BTreeSet<(&str, IpAddr)> = BTreeSet::new();
    for w in intent.workloads.values() {
        let Some(zone) = alloc.zone(&w.vpc) else {
            continue;
        };
        let z = u32::from(zone);
        let c = Cookie::new(Category::Workload, &w.name);
        let addrs: Vec<IpAddr> = std::iter::once(IpAddr::V4(w.ip))
            .chain(w.ipv6.map(IpAddr::V6))
            .collect();
        for a in &addrs {
            answer_for(d, zone, *a, c);
        }
        if w.node != facts.node {
            let route = tunnel
                .zip(intent.nodes.get(&w.node))
                .zip(intent.vpcs.get(&w.vpc));
            let Some(((t, node), vpc)) = route else {
                out.unreachable.push(w.name.clone());
                unready.extend(addrs.iter().map(|a| (w.vpc.as_str(), *a)));
                continue;
            };
            // Into the tunnel to the DPU that hosts it; that DPU delivers it.
            for a in &addrs {
                d.add(
                    L3_FORWARD,
                    100,
                    to_address(z, *a),
                    routed_to(w.mac.map_or(ROUTER_MAC, ir_mac))
                        .set_field(Field::TunId, vpc.vni)
                        .set_field(Field::TunDst, node.tunnel_ip)
                        .output(t),
                    c,
                );
            }
            continue;
        }
        let owner_mac = || dpu_model::vnic_owner(intent, w).and_then(|o| o.mac);
        let Some(mac) = w.mac.or_else(owner_mac) else {
            continue;
        };
        let Some(&ofport) = facts.ports.get(&w.port) else {
            out.pending_ports.push(w.name.clone());
            unready.extend(addrs.iter().map(|a| (w.vpc.as_str(), *a)));
            continue;
        };
        local.extend(addrs.iter().map(|a| (w.vpc.as_str(), *a)));
        // A bare-metal server has no port of its own: it shares one (the uplink,
        // usually) with others, and its MAC tells it apart.
        let on_uplink = uplink.filter(|u| u.iface == w.port);
        let from_port = if w.kind == WorkloadKind::BareMetal {
            Match::new()
                .in_port(ofport)
                .exact(Field::EthSrc, ir_mac(mac))
        } else {
            Match::new().in_port(ofport)
        };
        d.add(
            CLASSIFY,
            if w.kind == WorkloadKind::BareMetal {
                105
            } else {
                100
            },
            from_port,
            Actions::new().set_reg(reg::VPC, z).goto(SPOOF_GUARD.id),
            c,
        );
        if let Some(u) = on_uplink.filter(|_| w.kind == WorkloadKind::BareMetal) {
            // On the uplink this DPU answers with its uplink MAC, as the host's
            // router would: every ARP the server sends, except for itself.
            d.add(
                CLASSIFY,
                106,
                Match::new()
                    .in_port(ofport)
                    .exact(Field::EthSrc, ir_mac(mac))
                    .proto(Proto::Arp)
                    .exact(Field::ArpSpa, w.ip)
                    .exact(Field::ArpSha, ir_mac(mac)),
                Actions::new()
                    .set_reg(reg::VPC, reg::UPLINK_CONTEXT)
                    .goto(ARP_RESPONDER.id),
                c,
            );
            let asks = || {
                Match::new()
                    .reg(reg::VPC, reg::UPLINK_CONTEXT)
                    .proto(Proto::Arp)
                    .exact(Field::ArpOp, 1u16)
                    .exact(Field::ArpSpa, w.ip)
            };
            d.add(
                ARP_RESPONDER,
                96,
                asks().exact(Field::ArpTpa, w.ip),
                Actions::drop(),
                c,
            );
            d.add(ARP_RESPONDER, 95, asks(), proxy_arp(ir_mac(u.mac)), c);
        }
        let port = || {
            Match::new()
                .reg(reg::VPC, z)
                .in_port(ofport)
                .exact(Field::EthSrc, ir_mac(mac))
        };
        d.add(
            SPOOF_GUARD,
            100,
            port()
                .proto(Proto::Arp)
                .exact(Field::ArpSpa, w.ip)
                .exact(Field::ArpSha, ir_mac(mac)),
            Actions::new().goto(ARP_RESPONDER.id),
            c,
        );
        d.add(
            SPOOF_GUARD,
            100,
            port().proto(Proto::Ip).exact(Field::IpSrc, w.ip),
            Actions::new().goto(CONNTRACK.id),
            c,
        );
        // Never answer a workload's ARP for its own address (it would look taken).
        d.add(
            ARP_RESPONDER,
            110,
            Match::new()
                .reg(reg::VPC, z)
                .in_port(ofport)
                .proto(Proto::Arp)
                .exact(Field::ArpTpa, w.ip),
            Actions::drop(),
            c,
        );
        if let Some(v6) = w.ipv6 {
            d.add(
                SPOOF_GUARD,
                100,
                port().proto(Proto::Ipv6).exact(Field::Ipv6Src, v6),
                Actions::new().goto(CONNTRACK.id),
                c,
            );
            // Neighbour solicitations, from its address or its link-local one
            // (the kernel's usual source), go to the responder (as ARP does).
            let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0);
            for (src, len) in [(v6, 128), (link_local, 10)] {
                d.add(
                    SPOOF_GUARD,
                    100,
                    port()
                        .proto(Proto::Icmp6)
                        .prefix(Field::Ipv6Src, src, len)
                        .exact(Field::Icmpv6Type, 135u8)
                        .exact(Field::Icmpv6Code, 0u8),
                    Actions::new().goto(ARP_RESPONDER.id),
                    c,
                );
            }
            // Nor its duplicate address detection (or any solicitation) for its
            // own address.
            d.add(
                ARP_RESPONDER,
                110,
                nd_solicitation(z, v6).in_port(ofport),
                Actions::drop(),
                c,
            );
        }
        let rewrite = match on_uplink {
            Some(u) => routed_from_to(ir_mac(u.mac), ir_mac(mac)),
            None => routed_to(ir_mac(mac)),
        };
        // A shared port is often also where the packet came from (an EIP client
        // or another server on the uplink): OpenFlow drops an output to the
        // in_port unless the in_port is cleared first.
        let rewrite = if w.kind == WorkloadKind::BareMetal {
            rewrite.then(CLEAR_IN_PORT)
        } else {
            rewrite
        };
        for a in &addrs {
            d.add(
                L3_FORWARD,
                100,
                to_address(z, *a),
                rewrite.clone().output(ofport),
                c,
            );
        }
    }

    // An unhealthy backend takes no new connections, as an unready one.
    unready.extend(facts.unhealthy.iter().map(|(v, ip)| (v.as_str(), *ip)));
    compile_probe_links(d, alloc, facts);
    let owned = |set: BTreeSet<(&str, IpAddr)>| {
        set.into_iter()
            .map(|(v, ip)| (v.to_string(), ip))
            .collect::<BTreeSet<_>>()
    };
    let ready = Readiness {
        unready: owned(unready),
        local: owned(local),
    };
    Base {
        desired: out.desired,
        pending_ports: out.pending_ports,
        unreachable: out.unreachable,
        ready,
    }
}

/// The health-probe links (`crate::probe::link`): each is an internal port in
/// one VPC that may send only as the probe source with its own MAC, and receive
/// only replies of the connections it opened (`ct_state=+est+rpl`), so nothing in
/// the VPC can open a connection to the DPU's own stack through it.
fn compile_probe_links(d: &mut DesiredState, alloc: &Allocations, facts: &NodeFacts) {
    use crate::probe::link::{mac, PROBE_IFACE_PREFIX, PROBE_SOURCE};
    for (iface, &ofport) in &facts.ports {
        let Some(vpc) = iface.strip_prefix(PROBE_IFACE_PREFIX) else {
            continue;
        };
        let Some(zone) = alloc.zone(vpc) else {
            continue;
        };
        let z = u32::from(zone);
        let m = mac(zone);
        let c = Cookie::new(Category::Probe, vpc);
        d.add(
            CLASSIFY,
            100,
            Match::new().in_port(ofport),
            Actions::new().set_reg(reg::VPC, z).goto(SPOOF_GUARD.id),
            c,
        );
        let port = || {
            Match::new()
                .reg(reg::VPC, z)
                .in_port(ofport)
                .exact(Field::EthSrc, ir_mac(m))
        };
        d.add(
            SPOOF_GUARD,
            100,
            port()
                .proto(Proto::Arp)
                .exact(Field::ArpSpa, PROBE_SOURCE)
                .exact(Field::ArpSha, ir_mac(m)),
            Actions::new().goto(ARP_RESPONDER.id),
            c,
        );
        d.add(
            SPOOF_GUARD,
            100,
            port().proto(Proto::Ip).exact(Field::IpSrc, PROBE_SOURCE),
            Actions::new().goto(CONNTRACK.id),
            c,
        );
        d.add(
            L3_FORWARD,
            110,
            to_address(z, IpAddr::V4(PROBE_SOURCE)).ct_state(ct::EST | ct::RPL | ct::TRK, 0),
            routed_to(ir_mac(m)).output(ofport),
            c,
        );
    }
}

/// Lets a following `output` send back out of the port the packet came in on.
const CLEAR_IN_PORT: Action = Action::Load {
    value: 0,
    dst: Subfield::whole(Field::InPort),
};

/// The uplink port on the bridge, and this DPU's MAC there.
#[derive(Debug, Clone, Copy)]
struct Uplink<'a> {
    iface: &'a str,
    ofport: u32,
    mac: Mac,
}

/// The uplink: ARP from it is answered in its own context (for the EIPs this DPU
/// owns, and for bare-metal servers); traffic to an owned EIP's ports enters the
/// Service's VPC zone (scenario 3) or the gateway zone (scenario 4), flagged as
/// external and as from the uplink; replies to connections that came from the
/// uplink go back out of it, to the MAC the connection came from.
fn compile_uplink_local(d: &mut DesiredState, facts: &NodeFacts, u: Uplink<'_>) {
    let c = Cookie::new(Category::Uplink, &facts.node);
    d.add(
        CLASSIFY,
        100,
        Match::new().in_port(u.ofport).proto(Proto::Arp),
        Actions::new()
            .set_reg(reg::VPC, reg::UPLINK_CONTEXT)
            .goto(ARP_RESPONDER.id),
        c,
    );
    d.add(
        RETURN_PATH,
        100,
        Match::new()
            .proto(Proto::Ip)
            .ct_state(ct::RPL | ct::TRK, 0)
            .push(mark::origin_is(reg::ORIGIN_UPLINK)),
        Actions::new()
            .move_(label::MAC, Subfield::whole(Field::EthDst))
            .set_field(Field::EthSrc, ir_mac(u.mac))
            .dec_ttl()
            .then(CLEAR_IN_PORT)
            .output(u.ofport),
        c,
    );
}

/// The uplink entry of a Service whose EIP this DPU owns.
fn compile_uplink_service(d: &mut DesiredState, s: &Service, alloc: &Allocations, u: Uplink<'_>) {
    let (Some(eip), Some(zone)) = (s.eip, lb_zone(s, alloc)) else {
        return;
    };
    let sc = service_cookie(s);
    arp_answer_with(d, reg::UPLINK_CONTEXT, eip, ir_mac(u.mac), sc);
    for p in &s.ports {
        d.add(
            CLASSIFY,
            110,
            Match::new()
                .in_port(u.ofport)
                .proto(proto_of(p.protocol, false))
                .exact(Field::IpDst, eip)
                .exact(l4_dst(p.protocol), p.port),
            Actions::new()
                .set_reg(reg::VPC, zone)
                .set_reg(reg::FLAGS, reg::FLAG_EXTERNAL)
                .set_reg(reg::ORIGIN, reg::ORIGIN_UPLINK)
                .then(label::stage_mac())
                .goto(CONNTRACK.id),
            sc,
        );
    }
}

/// The service gateway (scenario 4). An EIP connection is load-balanced and
/// DNATed in the gateway zone, whose entry keeps the backend's VPC zone in
/// `ct_mark`; GatewaySnat then moves the packet into that VPC's zone and SNATs it
/// to the gateway's address there (the gateway of the VPC's first Subnet by name),
/// so the backend answers the gateway. In that zone the connection is labelled
/// `ORIGIN_GATEWAY`: ReturnPath takes its replies back through the gateway zone,
/// whose entry sends them out of the uplink.
///
/// `vpcs`: the VPCs of the gateway Services' backends (there is at least one
/// such Service).
fn compile_gateway(
    d: &mut DesiredState,
    intent: &Intent,
    alloc: &Allocations,
    vpcs: &BTreeSet<&str>,
) {
    let g = u32::from(GATEWAY_ZONE);
    let c = Cookie::new(Category::Gateway, "gateway");
    let gm = || Match::new().reg(reg::VPC, g);
    tracked_zone(
        d,
        g,
        &[Proto::Ip],
        Actions::new()
            .move_(mark::TARGET_ZONE, Subfield::bits(reg::TARGET_ZONE, 0, 15))
            .goto(GATEWAY_SNAT.id),
        c,
    );
    for &vpc in vpcs {
        let Some(zone) = alloc.zone(vpc) else {
            continue;
        };
        let Some(snat) = intent
            .subnets
            .values()
            .find(|s| s.vpc == vpc)
            .map(|s| s.gateway)
        else {
            continue;
        };
        let z = u32::from(zone);
        let c = Cookie::new(Category::Gateway, vpc);
        d.add(
            GATEWAY_SNAT,
            100,
            gm().reg(reg::TARGET_ZONE, z).proto(Proto::Ip),
            Actions::new()
                .set_reg(reg::VPC, z)
                .then(ct_nat(GATEWAY_SNAT)),
            c,
        );
        let vm = || {
            Match::new()
                .reg(reg::VPC, z)
                .reg(reg::TARGET_ZONE, z)
                .proto(Proto::Ip)
        };
        d.add(
            GATEWAY_SNAT,
            100,
            vm().ct_state(ct::NEW | ct::TRK, 0),
            Actions::new().then(ct_commit(
                L3_FORWARD,
                Some(Nat::src(snat)),
                [mark::set_origin(reg::ORIGIN_GATEWAY)],
            )),
            c,
        );
        d.add(
            GATEWAY_SNAT,
            95,
            vm().ct_state(ct::INV | ct::TRK, 0),
            Actions::drop(),
            c,
        );
        d.add(
            GATEWAY_SNAT,
            90,
            vm().ct_state(ct::TRK, ct::NEW),
            Actions::new().goto(L3_FORWARD.id),
            c,
        );
        d.add(
            RETURN_PATH,
            110,
            Match::new()
                .reg(reg::VPC, z)
                .proto(Proto::Ip)
                .ct_state(ct::RPL | ct::TRK, 0)
                .push(mark::origin_is(reg::ORIGIN_GATEWAY)),
            Actions::new()
                .set_reg(reg::VPC, g)
                .then(ct_nat(RETURN_PATH)),
            c,
        );
    }
}

/// A conntrack zone's entry: Conntrack runs `ct(zone, nat)` for each IP family
/// (`ip`, `ipv6`) with `reg0 = zone`; then ServiceLb drops `+inv` and sends what is not new to `established`.
fn tracked_zone(
    d: &mut DesiredState,
    zone: u32,
    families: &[Proto],
    established: Actions,
    c: Cookie,
) {
    let zm = || Match::new().reg(reg::VPC, zone);
    for &fam in families {
        d.add(
            CONNTRACK,
            100,
            zm().proto(fam),
            Actions::new().then(ct_nat(SERVICE_LB)),
            c,
        );
    }
    d.add(
        SERVICE_LB,
        200,
        zm().ct_state(ct::INV | ct::TRK, 0),
        Actions::drop(),
        c,
    );
    d.add(
        SERVICE_LB,
        190,
        zm().ct_state(ct::TRK, ct::NEW),
        established,
        c,
    );
}

/// The zone a Service load-balances in: its VPC's, or the gateway's.
fn lb_zone(s: &Service, alloc: &Allocations) -> Option<u32> {
    if s.scenario == AccessScenario::EipServiceGateway {
        Some(u32::from(GATEWAY_ZONE))
    } else {
        alloc.zone(&s.vpc).map(u32::from)
    }
}

/// The key an endpoint's EndpointDnat flow is owned by (hashed into its
/// cookie): `<service vpc>/<proto>/<ip>:<target port>`, or behind a service
/// gateway `gateway/<backend vpc>/…`; `proto` gets a `6` for an IPv6 endpoint
/// (`tcp6`). Services that share an endpoint share the flow. Observers hash
/// the same key to name the flow's owner.
pub fn endpoint_key(
    gateway: bool,
    service_vpc: &str,
    backend_vpc: &str,
    protocol: &str,
    ip: IpAddr,
    target_port: u16,
) -> String {
    EndpointKey {
        gateway,
        service_vpc,
        backend_vpc,
        protocol,
        ip,
        target_port,
    }
    .to_string()
}

/// [`endpoint_key`] as a value that writes it: the compiler hashes it into
/// the cookie as it is written ([`Cookie::of_key`]), without a `String` per
/// endpoint flow.
struct EndpointKey<'a> {
    gateway: bool,
    service_vpc: &'a str,
    backend_vpc: &'a str,
    protocol: &'a str,
    ip: IpAddr,
    target_port: u16,
}

impl fmt::Display for EndpointKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = if self.ip.is_ipv6() { "6" } else { "" };
        let (protocol, ip, port) = (self.protocol, self.ip, self.target_port);
        if self.gateway {
            write!(f, "gateway/{}/{protocol}{v6}/{ip}:{port}", self.backend_vpc)
        } else {
            write!(f, "{}/{protocol}{v6}/{ip}:{port}", self.service_vpc)
        }
    }
}

/// The cookie of the SessionAffinity entries that one AffinityLearn flow learns:
/// those of Service `service` (its name) for clients of `vip`, `protocol`/`port`,
/// pinned to the backend `backend_vpc`/`ip`:`target_port`. Each AffinityLearn
/// flow has its own, so the reconciler deletes exactly the entries of a flow it
/// removes (a backend that left or lost its bucket) and keeps every other one.
/// Observers hash the same key to name an entry's Service and backend.
pub fn affinity_cookie(
    service: &str,
    vip: IpAddr,
    protocol: &str,
    port: u16,
    backend_vpc: &str,
    ip: IpAddr,
    target_port: u16,
) -> Cookie {
    Cookie::new(
        Category::AffinityLearned,
        &format!(
            "{}|{vip}|{protocol}/{port}|{backend_vpc}/{ip}:{target_port}",
            ObjectKey::new(Kind::Service, service)
        ),
    )
}

/// The cookie (without round) of every flow and group a Service owns.
pub fn service_cookie(s: &Service) -> Cookie {
    Cookie::new(
        Category::Service,
        &ObjectKey::new(Kind::Service, &s.name).to_string(),
    )
}

/// Node ClusterIP: the host (not a pod) reaches the cluster IPs of `NodeClusterIP`
/// Services through its PF representor. The host needs only a route: every ARP
/// from it is answered with the router MAC. Its packets to such a VIP:port enter
/// that Service's VPC (and conntrack zone) and are load-balanced like a pod's;
/// anything else from the host is dropped. In each VPC with such a Service, the
/// hosts' addresses are routed: to this host's port, or through the tunnel to the
/// DPU of the host they belong to, where its conntrack un-DNATs the reply.
fn compile_hosts_local(d: &mut DesiredState, facts: &NodeFacts, hport: u32) {
    let c = Cookie::new(Category::Node, &facts.node);
    d.add(
        CLASSIFY,
        100,
        Match::new().in_port(hport).proto(Proto::Arp),
        Actions::new()
            .set_reg(reg::VPC, reg::HOST_CONTEXT)
            .goto(ARP_RESPONDER.id),
        c,
    );
    d.add(
        ARP_RESPONDER,
        90,
        Match::new()
            .reg(reg::VPC, reg::HOST_CONTEXT)
            .proto(Proto::Arp)
            .exact(Field::ArpOp, 1u16),
        proxy_arp(ROUTER_MAC),
        c,
    );
}

/// The local host's way into one NodeClusterIP Service.
fn compile_host_service(
    d: &mut DesiredState,
    s: &Service,
    alloc: &Allocations,
    hport: u32,
    hip: Ipv4Addr,
) {
    let Some(zone) = alloc.zone(&s.vpc) else {
        return;
    };
    let sc = service_cookie(s);
    // The host network is IPv4.
    let v4 = s.cluster_ips.iter().filter_map(|ip| match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    for vip in v4 {
        for p in &s.ports {
            d.add(
                CLASSIFY,
                110,
                Match::new()
                    .in_port(hport)
                    .proto(proto_of(p.protocol, false))
                    .exact(Field::IpSrc, hip)
                    .exact(Field::IpDst, *vip)
                    .exact(l4_dst(p.protocol), p.port),
                Actions::new()
                    .set_reg(reg::VPC, u32::from(zone))
                    .set_reg(reg::FLAGS, reg::FLAG_EXTERNAL)
                    .goto(CONNTRACK.id),
                sc,
            );
        }
    }
}

/// In each VPC with a NodeClusterIP Service (`vpcs`), the routes to every
/// node's host address.
fn compile_hosts_routes(d: &mut DesiredState, env: &PartEnv<'_>, vpcs: &BTreeSet<&str>) {
    let (intent, alloc, facts) = (env.intent, env.alloc, env.facts);
    for &vpc in vpcs {
        let (Some(zone), Some(v)) = (alloc.zone(vpc), intent.vpcs.get(vpc)) else {
            continue;
        };
        for n in intent.nodes.values() {
            let Some((hip, hmac)) = n.host else { continue };
            let c = Cookie::new(Category::Node, &n.name);
            let to_host = to_address(u32::from(zone), IpAddr::V4(hip));
            let rewrite = routed_to(ir_mac(hmac));
            if n.name == facts.node {
                if let Some((hport, _)) = env.host {
                    d.add(L3_FORWARD, 100, to_host, rewrite.output(hport), c);
                }
            } else if let Some(t) = env.tunnel {
                d.add(
                    L3_FORWARD,
                    100,
                    to_host,
                    rewrite
                        .set_field(Field::TunId, v.vni)
                        .set_field(Field::TunDst, n.tunnel_ip)
                        .output(t),
                    c,
                );
            }
        }
    }
}

/// A MAC of the model as a value of the flow IR.
fn ir_mac(m: Mac) -> ::openflow::ir::Mac {
    ::openflow::ir::Mac(m.0)
}

/// Answers an ARP request for whatever address it asks about with `mac`.
fn proxy_arp(mac: impl Value + Copy) -> Actions {
    Actions::new()
        .then(mv(Field::EthSrc, Field::EthDst))
        .set_field(Field::EthSrc, mac)
        .set_field(Field::ArpOp, 2u16)
        .then(mv(Field::ArpSha, Field::ArpTha))
        .set_field(Field::ArpSha, mac)
        .then(Action::Push(Subfield::whole(Field::ArpTpa)))
        .then(mv(Field::ArpSpa, Field::ArpTpa))
        .then(Action::Pop(Subfield::whole(Field::ArpSpa)))
        .in_port()
}

/// L3Forward's match for one destination address in a VPC.
fn to_address(vpc: u32, ip: IpAddr) -> Match {
    let m = Match::new().reg(reg::VPC, vpc);
    match ip {
        IpAddr::V4(a) => m.proto(Proto::Ip).exact(Field::IpDst, a),
        IpAddr::V6(a) => m.proto(Proto::Ipv6).exact(Field::Ipv6Dst, a),
    }
}

/// The IP families a VPC carries, as match keywords.
const FAMILIES: [Proto; 2] = [Proto::Ip, Proto::Ipv6];

/// A neighbour solicitation for `target` in the VPC.
fn nd_solicitation(zone: u32, target: Ipv6Addr) -> Match {
    Match::new()
        .reg(reg::VPC, zone)
        .proto(Proto::Icmp6)
        .exact(Field::Icmpv6Type, 135u8)
        .exact(Field::Icmpv6Code, 0u8)
        .exact(Field::NdTarget, target)
}

/// Answers ARP (IPv4) or neighbour solicitations (IPv6) for `ip` in the VPC with
/// the router MAC.
fn answer_for(d: &mut DesiredState, zone: u16, ip: IpAddr, c: Cookie) {
    match ip {
        IpAddr::V4(a) => arp_answer(d, zone, a, c),
        IpAddr::V6(a) => nd_answer(d, zone, a, c),
    }
}

/// The neighbour advertisement for `target`, from the router MAC, made from the
/// solicitation in place: solicited, override and router flags, the target
/// link-layer option. The option's MAC is written both as `nd_sll` here (its
/// prerequisite is a solicitation) and as `nd_tll` in NdAdvertise (whose is an
/// advertisement), so it is the router MAC whichever way the datapath applies
/// the retyping of the option from source to target link-layer address.
fn nd_answer(d: &mut DesiredState, zone: u16, target: Ipv6Addr, c: Cookie) {
    d.add(
        ARP_RESPONDER,
        100,
        nd_solicitation(u32::from(zone), target),
        Actions::new()
            .then(mv(Field::EthSrc, Field::EthDst))
            .set_field(Field::EthSrc, ROUTER_MAC)
            .then(mv(Field::Ipv6Src, Field::Ipv6Dst))
            .set_field(Field::Ipv6Src, target)
            .set_field(Field::NdSll, ROUTER_MAC)
            .set_field(Field::Icmpv6Type, 136u8)
            .set_field(Field::NdOptionsType, 2u8)
            .set_field(Field::NdReserved, 0xe000_0000u32)
            .goto(ND_ADVERTISE.id),
        c,
    );
}

/// NdAdvertise: the advertisement ArpResponder made gets its target link-layer
/// address (a field OVS lets a flow set only when its match is an
/// advertisement), and leaves by the port it came in on.
fn nd_advertise(d: &mut DesiredState) {
    d.add(
        ND_ADVERTISE,
        100,
        Match::new()
            .proto(Proto::Icmp6)
            .exact(Field::Icmpv6Type, 136u8)
            .exact(Field::Icmpv6Code, 0u8),
        Actions::new().set_field(Field::NdTll, ROUTER_MAC).in_port(),
        Cookie::new(Category::Pipeline, "pipeline"),
    );
}

/// The distributed router's rewrite toward `mac`: the router MAC as source,
/// `dec_ttl`. The caller adds where it goes.
fn routed_to(mac: impl Value) -> Actions {
    routed_from_to(ROUTER_MAC, mac)
}

/// [`routed_to`] with another router MAC (the uplink's).
fn routed_from_to(router: impl Value, mac: impl Value) -> Actions {
    Actions::new()
        .set_field(Field::EthSrc, router)
        .set_field(Field::EthDst, mac)
        .dec_ttl()
}

fn pipeline_misses(d: &mut DesiredState) {
    let c = Cookie::new(Category::Pipeline, "pipeline");
    for t in TABLES {
        match t.miss {
            Miss::Drop => d.add(t, 0, Match::new(), Actions::drop(), c),
            Miss::Goto(next) => {
                let next = table_by_id(next).expect("a miss goes to a registered table");
                d.add(t, 0, Match::new(), Actions::new().goto(next.id), c);
            }
            Miss::Return => {}
        }
    }
}

/// Answers ARP requests for `ip` in the VPC with the router MAC: every address in a
/// VPC is reached through the distributed router, so there is no flooding.
fn arp_answer(d: &mut DesiredState, zone: u16, ip: Ipv4Addr, c: Cookie) {
    arp_answer_with(d, u32::from(zone), ip, ROUTER_MAC, c);
}

/// Answers ARP requests for `ip` in the `reg0` context `ctx` with `mac`.
fn arp_answer_with(
    d: &mut DesiredState,
    ctx: u32,
    ip: Ipv4Addr,
    mac: impl Value + Copy,
    c: Cookie,
) {
    d.add(
        ARP_RESPONDER,
        100,
        Match::new()
            .reg(reg::VPC, ctx)
            .proto(Proto::Arp)
            .exact(Field::ArpOp, 1u16)
            .exact(Field::ArpTpa, ip),
        Actions::new()
            .then(mv(Field::EthSrc, Field::EthDst))
            .set_field(Field::EthSrc, mac)
            .set_field(Field::ArpOp, 2u16)
            .then(mv(Field::ArpSha, Field::ArpTha))
            .set_field(Field::ArpSha, mac)
            .then(mv(Field::ArpSpa, Field::ArpTpa))
            .set_field(Field::ArpSpa, ip)
            .in_port(),
        c,
    );
}

/// A protocol's masked source-port hash field (see [`SRC_PORT_HASH_MASK`]) and
/// its destination-port field.
fn l4_fields(p: Protocol) -> (HashField, Field) {
    let (src, dst) = match p {
        Protocol::Tcp => (Field::TcpSrc, Field::TcpDst),
        Protocol::Udp => (Field::UdpSrc, Field::UdpDst),
        Protocol::Sctp => (Field::SctpSrc, Field::SctpDst),
    };
    (HashField::masked(src, u64::from(SRC_PORT_HASH_MASK)), dst)
}

/// A protocol's destination-port field (`tp_dst` in a match).
fn l4_dst(p: Protocol) -> Field {
    l4_fields(p).1
}

/// A protocol's match keyword, IPv4 or IPv6.
fn proto_of(p: Protocol, v6: bool) -> Proto {
    match (p, v6) {
        (Protocol::Tcp, false) => Proto::Tcp,
        (Protocol::Udp, false) => Proto::Udp,
        (Protocol::Sctp, false) => Proto::Sctp,
        (Protocol::Tcp, true) => Proto::Tcp6,
        (Protocol::Udp, true) => Proto::Udp6,
        (Protocol::Sctp, true) => Proto::Sctp6,
    }
}

/// The bits of the L4 source port a select group hashes on (besides both
/// addresses and the destination port). OVS un-wildcards only the hashed bits
/// in the datapath flow of a connection's first packet, so one megaflow serves
/// every new connection whose source port agrees in these bits: a client warms
/// at most 64 per VIP (32 for Linux clients, whose `connect()` picks even
/// ports), and later connections need no upcall. Measured
/// (`bench/run --scenarios newconn`, docs/offload.md "Connection setup"): 0.12
/// upcalls per connection warm, against 1.00 with the whole port, 0.34 with
/// `126` and 0.57 with `255`; the price is coarser balance per client address.
pub const SRC_PORT_HASH_MASK: u16 = 0x3f;

fn ip_proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// An address family's words for one Service port: the match keyword of the
/// protocol, the destination field, and the fields the group hashes on.
struct Family {
    v6: bool,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        Family { v6: ip.is_ipv6() }
    }
    fn proto(&self, p: Protocol) -> Proto {
        proto_of(p, self.v6)
    }
    fn dst(&self) -> Field {
        if self.v6 {
            Field::Ipv6Dst
        } else {
            Field::IpDst
        }
    }
    fn src_dst(&self) -> [HashField; 2] {
        if self.v6 {
            [
                HashField::whole(Field::Ipv6Src),
                HashField::whole(Field::Ipv6Dst),
            ]
        } else {
            [
                HashField::whole(Field::IpSrc),
                HashField::whole(Field::IpDst),
            ]
        }
    }
    /// Group ids: the port's id, with [`V6_GROUP_BIT`] for the IPv6 one.
    fn group(&self, gid: u32) -> u32 {
        if self.v6 {
            gid | V6_GROUP_BIT
        } else {
            gid
        }
    }
}

/// How a bucket names the endpoint address: `reg3` for IPv4, `xxreg2` for IPv6.
fn endpoint_reg(ip: IpAddr) -> (Field, IpAddr) {
    match ip {
        IpAddr::V4(_) => (reg::EP_IP, ip),
        IpAddr::V6(_) => (reg::EP_IP6, ip),
    }
}

/// `ct(table=T,zone=reg0[0..15],nat)`: track in the packet's zone, apply the
/// connection's NAT, go on to `table`.
fn ct_nat(table: Table) -> Action {
    Action::Ct(Box::new(Ct {
        commit: false,
        force: false,
        table: Some(table.id),
        zone: CtZone::Field(reg::VPC_ZONE),
        nat: Some(Nat::EXISTING),
        exec: Vec::new(),
    }))
}

/// `ct(commit,table=T,zone=reg0[0..15],nat(…),exec(…))`.
fn ct_commit(table: Table, nat: Option<Nat>, exec: impl IntoIterator<Item = Action>) -> Action {
    Action::Ct(Box::new(Ct {
        commit: true,
        force: false,
        table: Some(table.id),
        zone: CtZone::Field(reg::VPC_ZONE),
        nat,
        exec: exec.into_iter().collect(),
    }))
}

/// `move:SRC[]->DST[]` of whole fields.
fn mv(src: Field, dst: Field) -> Action {
    Action::Move {
        src: Subfield::whole(src),
        dst: Subfield::whole(dst),
    }
}

/// The learn of an AffinityLearn flow: a SessionAffinity entry for this
/// client, VIP and port that loads the chosen endpoint (and, behind a service
/// gateway, its VPC zone) and flags the hit.
fn affinity_learn(idle_timeout: u16, cookie: u64, p: Protocol, zone: Option<LearnSpec>) -> Learn {
    let ep = Subfield::whole(reg::EP_IP);
    let epp = Subfield::whole(reg::EP_PORT);
    let mut specs = vec![
        LearnSpec::Match(Subfield::whole(reg::VPC)),
        LearnSpec::MatchValue {
            field: Field::EthType,
            value: 0x800,
        },
        LearnSpec::MatchValue {
            field: Field::IpProto,
            value: u64::from(ip_proto_number(p)),
        },
        LearnSpec::Match(Subfield::whole(Field::IpSrc)),
        LearnSpec::Match(Subfield::whole(Field::IpDst)),
        LearnSpec::Match(Subfield::whole(l4_dst(p))),
        LearnSpec::Load { src: ep, dst: ep },
        LearnSpec::Load { src: epp, dst: epp },
    ];
    specs.extend(zone);
    specs.push(LearnSpec::LoadValue {
        value: u64::from(reg::FLAG_AFFINITY_HIT),
        dst: Subfield::bits(reg::FLAGS, 0, 0),
    });
    Learn {
        table: SESSION_AFFINITY.id,
        idle_timeout,
        priority: 100,
        cookie,
        specs,
        hard_timeout: 0,
        fin_idle_timeout: 0,
        fin_hard_timeout: 0,
        flags: 0,
    }
}

fn compile_service(
    d: &mut DesiredState,
    s: &Service,
    alloc: &Allocations,
    unready: &BTreeSet<(String, IpAddr)>,
    local: &BTreeSet<(String, IpAddr)>,
) {
    let gateway = s.scenario == AccessScenario::EipServiceGateway;
    // Where the VIPs are load-balanced: the VPC's zone, or the gateway's.
    let Some(z) = lb_zone(s, alloc) else {
        return;
    };
    let c = service_cookie(s);

    if !gateway {
        if let Some(zone) = alloc.zone(&s.vpc) {
            for vip in &s.cluster_ips {
                answer_for(d, zone, *vip, c);
            }
        }
    }
    // The addresses clients use: the cluster IPs, and the EIP (reached from the
    // uplink of the DPU that owns it; pods in the VPC may use it too).
    let mut vips = s.cluster_ips.clone();
    if matches!(
        s.scenario,
        AccessScenario::EipLoadBalancer | AccessScenario::EipServiceGateway
    ) {
        vips.extend(s.eip.map(IpAddr::V4));
    }
    if s.affinity_timeout.is_some() {
        d.add(
            SERVICE_SELECT,
            200,
            Match::new().reg(reg::VPC, z).reg_masked(
                reg::FLAGS,
                reg::FLAG_AFFINITY_HIT,
                reg::FLAG_AFFINITY_HIT,
            ),
            Actions::new().goto(ENDPOINT_DNAT.id),
            if gateway {
                Cookie::new(Category::Gateway, "gateway")
            } else {
                Cookie::new(Category::Vpc, &s.vpc)
            },
        );
    }

    // Each port has a group per address family its VIPs use; a family's VIPs
    // go to that family's backends.
    let families: Vec<Family> = [false, true]
        .into_iter()
        .filter(|v6| vips.iter().any(|ip| ip.is_ipv6() == *v6))
        .map(|v6| Family { v6 })
        .collect();
    for port in &s.ports {
        let Some(port_gid) = alloc.group(s, port) else {
            continue;
        };
        for fam in &families {
            let fam_vips: Vec<IpAddr> = vips
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == fam.v6)
                .collect();
            let backends: Vec<&dpu_model::Backend> = s
                .backends
                .iter()
                .filter(|b| Family::of(&b.ip).v6 == fam.v6)
                .collect();
            compile_service_port(
                d,
                s,
                port,
                fam,
                fam.group(port_gid),
                &fam_vips,
                &backends,
                ServiceCtx {
                    alloc,
                    unready,
                    local,
                    zone: z,
                    cookie: c,
                },
            );
        }
    }
}

/// Whether `set` holds (`vpc`, `ip`), looked up without a `String` made of
/// `vpc` (two per backend and port of a compile, before).
fn holds(set: &BTreeSet<(String, IpAddr)>, vpc: &str, ip: IpAddr) -> bool {
    !set.is_empty() && set.contains(&(vpc, ip) as &dyn VpcAddr)
}

/// A (VPC, address) pair, owned or borrowed, as a `BTreeSet<(String,
/// IpAddr)>` can look it up: both order as the tuple does.
trait VpcAddr {
    fn key(&self) -> (&str, IpAddr);
}

impl VpcAddr for (String, IpAddr) {
    fn key(&self) -> (&str, IpAddr) {
        (&self.0, self.1)
    }
}

impl VpcAddr for (&str, IpAddr) {
    fn key(&self) -> (&str, IpAddr) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn VpcAddr + 'a> for (String, IpAddr) {
    fn borrow(&self) -> &(dyn VpcAddr + 'a) {
        self
    }
}

impl PartialEq for dyn VpcAddr + '_ {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}

impl Eq for dyn VpcAddr + '_ {}

impl PartialOrd for dyn VpcAddr + '_ {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for dyn VpcAddr + '_ {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

/// What every port of a Service shares.
struct ServiceCtx<'a> {
    alloc: &'a Allocations,
    unready: &'a BTreeSet<(String, IpAddr)>,
    local: &'a BTreeSet<(String, IpAddr)>,
    /// The zone it load-balances in.
    zone: u32,
    cookie: Cookie,
}

/// One port of a Service in one address family: its group(s), endpoint DNAT
/// flows and VIP flows.
#[allow(clippy::too_many_arguments)]
fn compile_service_port(
    d: &mut DesiredState,
    s: &Service,
    port: &dpu_model::ServicePort,
    fam: &Family,
    gid: u32,
    vips: &[IpAddr],
    backends: &[&dpu_model::Backend],
    x: ServiceCtx<'_>,
) {
    let gateway = s.scenario == AccessScenario::EipServiceGateway;
    let (z, c) = (x.zone, x.cookie);
    let proto = fam.proto(port.protocol);
    let (src_hash, dst_field) = l4_fields(port.protocol);
    // (backend, its bucket actions, local) of every backend that gets buckets.
    let mut members = Vec::new();
    // (backend, the registers its buckets load) for AffinityLearn.
    let mut learn_for: Vec<(&dpu_model::Backend, Match)> = Vec::new();
    let ready = |b: &&&dpu_model::Backend| !holds(x.unready, &b.vpc, b.ip);
    for b in backends.iter().filter(|b| b.weight > 0).filter(ready) {
        let Some(bzone) = x.alloc.zone(&b.vpc) else {
            continue;
        };
        let (ep_reg, ep_val) = endpoint_reg(b.ip);
        // Buckets only choose the endpoint. With affinity, AffinityLearn (a plain
        // flow: OVS does not run `learn` inside a group bucket) records the choice.
        let next = if s.affinity_timeout.is_some() {
            AFFINITY_LEARN
        } else {
            ENDPOINT_DNAT
        };
        let mut a = Actions::new()
            .set_field(ep_reg, ep_val)
            .set_reg(reg::EP_PORT, u32::from(port.target_port));
        if gateway {
            a = a.set_reg(reg::TARGET_ZONE, u32::from(bzone));
        }
        let a = Arc::new(a.resubmit(next.id).shrink());
        members.push((*b, a, holds(x.local, &b.vpc, b.ip)));
        // What a bucket of this backend loaded: AffinityLearn matches it, so
        // each backend's entries carry a cookie of their own.
        let mut chosen = Match::new()
            .exact(ep_reg, ep_val)
            .reg(reg::EP_PORT, u32::from(port.target_port));
        if gateway {
            chosen = chosen.reg(reg::TARGET_ZONE, u32::from(bzone));
        }
        learn_for.push((*b, chosen));
        let endpoint = Match::new()
            .reg(reg::VPC, z)
            .proto(proto)
            .exact(ep_reg, ep_val)
            .reg(reg::EP_PORT, u32::from(port.target_port));
        if gateway {
            // DNAT in the gateway zone, remembering the backend's VPC zone
            // for the connection's later packets; GatewaySnat goes on.
            d.add(
                ENDPOINT_DNAT,
                100,
                endpoint.reg(reg::TARGET_ZONE, u32::from(bzone)),
                Actions::new().then(ct_commit(
                    GATEWAY_SNAT,
                    Some(Nat::dst(b.ip, port.target_port)),
                    label::record().into_iter().chain([Action::Move {
                        src: Subfield::bits(reg::TARGET_ZONE, 0, 15),
                        dst: mark::TARGET_ZONE,
                    }]),
                )),
                Cookie::of_key(
                    Category::Endpoint,
                    EndpointKey {
                        gateway: true,
                        service_vpc: &s.vpc,
                        backend_vpc: &b.vpc,
                        protocol: port.protocol.as_str(),
                        ip: b.ip,
                        target_port: port.target_port,
                    },
                ),
            );
        } else {
            d.add(
                ENDPOINT_DNAT,
                100,
                endpoint,
                Actions::new().then(ct_commit(
                    L3_FORWARD,
                    Some(Nat::dst(b.ip, port.target_port)),
                    label::record(),
                )),
                Cookie::of_key(
                    Category::Endpoint,
                    EndpointKey {
                        gateway: false,
                        service_vpc: &s.vpc,
                        backend_vpc: &b.vpc,
                        protocol: port.protocol.as_str(),
                        ip: b.ip,
                        target_port: port.target_port,
                    },
                ),
            );
        }
    }
    // One bucket per unit of weight: OVS's hash selection scores buckets with
    // highest-random-weight, so equal buckets give a proportional split. The
    // ids are the backend's own (see `buckets`), and the local-only group uses
    // the same ones.
    let ids = assign_bucket_ids(
        port.target_port,
        &members
            .iter()
            .map(|(b, _, _)| (b.vpc.as_str(), b.ip, b.weight))
            .collect::<Vec<_>>(),
    );
    let mut buckets = Vec::new();
    let mut local_buckets = Vec::new();
    for ((_, a, is_local), ids) in members.iter().zip(ids) {
        for id in ids {
            buckets.push(Bucket::new(id, a.clone()));
            if *is_local {
                local_buckets.push(Bucket::new(id, a.clone()));
            }
        }
    }
    buckets.sort();
    local_buckets.sort();
    let [ip_src, ip_dst] = fam.src_dst();
    let hash_fields = if s.affinity_timeout.is_some() {
        vec![ip_src]
    } else {
        vec![ip_src, ip_dst, src_hash, HashField::whole(dst_field)]
    };
    let has_buckets = !buckets.is_empty();
    let external_local = s.external_traffic_local && s.scenario != AccessScenario::ClusterIp;
    let local_gid = gid | LOCAL_GROUP_BIT;
    let has_local = external_local && !local_buckets.is_empty();
    if has_local {
        d.groups.insert(
            local_gid,
            Arc::new(Group {
                id: local_gid,
                hash_fields: hash_fields.clone(),
                buckets: local_buckets,
                owner: c,
                learns: s.affinity_timeout.is_some(),
            }),
        );
    }
    if has_buckets {
        d.groups.insert(
            gid,
            Arc::new(Group {
                id: gid,
                hash_fields,
                buckets,
                owner: c,
                learns: s.affinity_timeout.is_some(),
            }),
        );
    }
    // A service gateway's affinity entry also keeps the backend's VPC: the
    // same address may be a backend in two VPCs.
    let learn_zone = gateway.then(|| {
        let zone = Subfield::whole(reg::TARGET_ZONE);
        LearnSpec::Load {
            src: zone,
            dst: zone,
        }
    });
    // OpenFlow's idle timeout is 16 bits: a longer affinity timeout (the model
    // allows up to 86,400 s, as Kubernetes does) is capped, as OVN caps it.
    let idle_timeout = s
        .affinity_timeout
        .map(|t| u16::try_from(t).unwrap_or(u16::MAX));
    for vip in vips {
        let vip_match = || {
            Match::new()
                .reg(reg::VPC, z)
                .proto(proto)
                .exact(fam.dst(), *vip)
                .exact(dst_field, port.port)
        };
        let lb = Match::new()
            .reg(reg::VPC, z)
            .ct_state(ct::NEW | ct::TRK, 0)
            .proto(proto)
            .exact(fam.dst(), *vip)
            .exact(dst_field, port.port);
        let actions = match (has_buckets, s.affinity_timeout) {
            // No backend takes new connections: drop rather than fall through.
            (false, _) => Actions::drop(),
            (true, None) => Actions::new().group(gid),
            (true, Some(_)) => {
                let timeout = idle_timeout.unwrap_or(u16::MAX);
                // IPv4 only (the model's validation refuses affinity with IPv6). One
                // flow per backend: the entries it learns carry that backend's
                // cookie, and go when it does (see `affinity_cookie`).
                for (b, chosen) in &learn_for {
                    let learned = affinity_cookie(
                        &s.name,
                        *vip,
                        port.protocol.as_str(),
                        port.port,
                        &b.vpc,
                        b.ip,
                        port.target_port,
                    );
                    d.add(
                        AFFINITY_LEARN,
                        100,
                        vip_match().and(chosen),
                        Actions::new()
                            .learn(affinity_learn(
                                timeout,
                                learned.value(0),
                                port.protocol,
                                learn_zone,
                            ))
                            .resubmit(ENDPOINT_DNAT.id),
                        c,
                    );
                }
                d.add(
                    SERVICE_SELECT,
                    100,
                    vip_match().reg_masked(reg::FLAGS, 0, reg::FLAG_AFFINITY_HIT),
                    Actions::new().group(gid),
                    c,
                );
                Actions::new()
                    .resubmit(SESSION_AFFINITY.id)
                    .resubmit(SERVICE_SELECT.id)
            }
        };
        d.add(SERVICE_LB, 100, lb, actions, c);
        if external_local {
            // From outside the VPC (flagged by Classify): local backends only.
            let ext = Match::new()
                .reg(reg::VPC, z)
                .reg_masked(reg::FLAGS, reg::FLAG_EXTERNAL, reg::FLAG_EXTERNAL)
                .ct_state(ct::NEW | ct::TRK, 0)
                .proto(proto)
                .exact(fam.dst(), *vip)
                .exact(dst_field, port.port);
            let act = if has_local {
                Actions::new().group(local_gid)
            } else {
                Actions::drop()
            };
            d.add(SERVICE_LB, 105, ext, act, c);
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn an_endpoint_cookie_hashed_as_written_is_the_cookie_of_its_key() {
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        for (gateway, ip, protocol) in [(false, v4, "tcp"), (true, v4, "udp"), (false, v6, "tcp")] {
            let key = endpoint_key(gateway, "svc-vpc", "be-vpc", protocol, ip, 8080);
            let written = EndpointKey {
                gateway,
                service_vpc: "svc-vpc",
                backend_vpc: "be-vpc",
                protocol,
                ip,
                target_port: 8080,
            };
            assert_eq!(written.to_string(), key);
            assert_eq!(
                Cookie::of_key(Category::Endpoint, &written),
                Cookie::new(Category::Endpoint, &key)
            );
        }
        assert_eq!(
            endpoint_key(false, "a", "b", "tcp", v6, 53),
            "a/tcp6/fd00::7:53"
        );
        assert_eq!(
            endpoint_key(true, "a", "b", "udp", v4, 53),
            "gateway/b/udp/10.0.0.7:53"
        );
    }

    #[test]
    fn a_vpc_and_address_are_found_without_an_owned_key() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let set: BTreeSet<(String, IpAddr)> = [
            ("a".to_string(), ip("10.0.0.1")),
            ("b".to_string(), ip("10.0.0.1")),
            ("b".to_string(), ip("10.0.0.3")),
        ]
        .into();
        for vpc in ["a", "b", "c", ""] {
            for addr in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
                assert_eq!(
                    holds(&set, vpc, ip(addr)),
                    set.contains(&(vpc.to_string(), ip(addr))),
                    "{vpc} {addr}"
                );
            }
        }
        assert!(!holds(&BTreeSet::new(), "a", ip("10.0.0.1")));
    }
}
