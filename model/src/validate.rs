//! Cross-object rules: references resolve, addresses stay inside their VPC, nothing
//! collides. Field-level rules live in `convert`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use crate::limits::*;
use crate::types::*;
use crate::ObjectError;

/// Checks the whole intent set and returns every problem found, in a stable order.
///
/// These are the rules that hold on every node. An agent also applies
/// [`node_rules`] for its own node ([`validate_for_node`]); the controller
/// applies them for every node at once ([`validate_for_every_node`]), so that
/// what any agent would refuse is refused before it is sent.
///
/// A conflict between two objects is reported once, at the object whose name
/// sorts later (of a kind, the later kind), naming the other and its field; the
/// error carries the other side too ([`ObjectError::other`]).
pub fn validate(intent: &Intent) -> Vec<ObjectError> {
    let mut errs = Vec::new();
    if intent.len() > MAX_OBJECTS {
        errs.push(ObjectError::new(
            ObjectKey::new(Kind::Vpc, "<all>"),
            "objects",
            format!("{} objects; at most {MAX_OBJECTS}", intent.len()),
        ));
    }
    if intent.vpcs.len() > MAX_VPCS {
        errs.push(ObjectError::new(
            ObjectKey::new(Kind::Vpc, "<all>"),
            "objects",
            format!(
                "{} VPCs; at most {MAX_VPCS} (one conntrack zone each on a DPU)",
                intent.vpcs.len()
            ),
        ));
    }

    let mut vnis: HashMap<u32, &str> = HashMap::new();
    for v in intent.vpcs.values() {
        if let Some(other) = vnis.insert(v.vni, &v.name) {
            let says = format!("VNI {} is also the VNI of", v.vni);
            errs.push(conflict(
                (Kind::Vpc, &v.name, "spec.vni"),
                (&says, ""),
                (Kind::Vpc, other, "spec.vni"),
                (&says, ""),
            ));
        }
    }

    let mut subnets_by_vpc: BTreeMap<&str, Vec<&Subnet>> = BTreeMap::new();
    for s in intent.subnets.values() {
        if !intent.vpcs.contains_key(&s.vpc) {
            errs.push(err(
                Kind::Subnet,
                &s.name,
                "spec.vpc",
                format!("Vpc/{} does not exist", s.vpc),
            ));
            continue;
        }
        let peers = subnets_by_vpc.entry(&s.vpc).or_default();
        if let Some(o) = peers
            .iter()
            .find(|o| o.cidr.contains(&s.cidr.network()) || s.cidr.contains(&o.cidr.network()))
        {
            errs.push(conflict(
                (Kind::Subnet, &s.name, "spec.cidr"),
                (
                    &format!("{} overlaps {}, the CIDR of", s.cidr, o.cidr),
                    &format!(" in Vpc/{}", s.vpc),
                ),
                (Kind::Subnet, &o.name, "spec.cidr"),
                (
                    &format!("{} overlaps {}, the CIDR of", o.cidr, s.cidr),
                    &format!(" in Vpc/{}", s.vpc),
                ),
            ));
            continue;
        }
        for (i, a) in s.node_blocks.iter().enumerate() {
            if let Some(b) = s.node_blocks[..i]
                .iter()
                .find(|b| b.cidr.contains(&a.cidr.network()) || a.cidr.contains(&b.cidr.network()))
            {
                errs.push(err(
                    Kind::Subnet,
                    &s.name,
                    format!("spec.nodeBlocks[{i}].cidr"),
                    format!("{} overlaps the block of node {}", a.cidr, b.node),
                ));
            }
        }
        peers.push(s);
    }
    let in_vpc = |vpc: &str, ip: IpAddr| -> Option<&Subnet> {
        subnets_by_vpc
            .get(vpc)
            .and_then(|ss| ss.iter().find(|s| s.cidr.contains(&ip)).copied())
    };

    // Addresses taken in each VPC: gateways, then workloads. The owner, its
    // field, and what the address is to it.
    let mut taken: HashMap<(&str, IpAddr), (Kind, &str, &str, &str)> = HashMap::new();
    for s in subnets_by_vpc.values().flatten() {
        taken.insert(
            (&s.vpc, s.gateway),
            (Kind::Subnet, &s.name, "spec.gateway", "the gateway of"),
        );
    }
    let mut ports: HashMap<(&str, &str), &str> = HashMap::new();
    for w in intent.workloads.values() {
        if !intent.vpcs.contains_key(&w.vpc) {
            errs.push(err(
                Kind::Workload,
                &w.name,
                "spec.vpc",
                format!("Vpc/{} does not exist", w.vpc),
            ));
            continue;
        }
        let addrs = std::iter::once(("spec.ip", IpAddr::V4(w.ip)))
            .chain(w.ipv6.map(|a| ("spec.ipv6", IpAddr::V6(a))));
        for (field, ip) in addrs {
            match in_vpc(&w.vpc, ip) {
                None => errs.push(err(
                    Kind::Workload,
                    &w.name,
                    field,
                    format!("{ip} is not inside any Subnet of Vpc/{}", w.vpc),
                )),
                Some(s) if ip == s.cidr.network() || ip == s.cidr.broadcast() => errs.push(err(
                    Kind::Workload,
                    &w.name,
                    field,
                    format!(
                        "{ip} is not a host address of Subnet/{} ({})",
                        s.name, s.cidr
                    ),
                )),
                Some(_) => {
                    if let Some(&(kind, name, ofield, what)) = taken.get(&(w.vpc.as_str(), ip)) {
                        errs.push(conflict(
                            (Kind::Workload, &w.name, field),
                            (&format!("{ip} in Vpc/{} is also {what}", w.vpc), ""),
                            (kind, name, ofield),
                            (&format!("{ip} in Vpc/{} is also the address of", w.vpc), ""),
                        ));
                    } else {
                        taken.insert(
                            (&w.vpc, ip),
                            (Kind::Workload, &w.name, field, "the address of"),
                        );
                    }
                }
            }
        }
        // A VNicIP is a secondary address on another workload's port; it binds
        // no port of its own (checked below, once every port owner is known).
        if w.kind == WorkloadKind::VnicIp {
            continue;
        }
        // Bare-metal servers share the port they are reached through (the
        // uplink, usually), each by its own MAC; checked below.
        if w.kind == WorkloadKind::BareMetal {
            continue;
        }
        if let Some(other) = ports.insert((&w.node, &w.port), &w.name) {
            let says = format!("port {} on node {} is also bound to", w.port, w.node);
            errs.push(conflict(
                (Kind::Workload, &w.name, "spec.port"),
                (&says, ""),
                (Kind::Workload, other, "spec.port"),
                (&says, ""),
            ));
        }
    }
    let mut shared: HashMap<(&str, &str, Mac), &str> = HashMap::new();
    for w in intent.workloads.values() {
        if w.kind != WorkloadKind::BareMetal {
            continue;
        }
        if let Some(owner) = ports.get(&(w.node.as_str(), w.port.as_str())) {
            let then = "; a bare-metal server is reached through a shared port such as the uplink";
            errs.push(conflict(
                (Kind::Workload, &w.name, "spec.port"),
                (
                    &format!("port {} on node {} is the own port of", w.port, w.node),
                    then,
                ),
                (Kind::Workload, owner, "spec.port"),
                (
                    &format!(
                        "port {} on node {}, this workload's own, is also the shared port of the bare-metal server",
                        w.port, w.node
                    ),
                    then,
                ),
            ));
        }
        // The MAC tells the server apart on the shared port (the agent of its
        // node requires one, as for any workload it binds).
        if let Some(mac) = w.mac {
            if let Some(other) = shared.insert((&w.node, &w.port, mac), &w.name) {
                let says = format!(
                    "{mac} on port {} of node {} is also the MAC of",
                    w.port, w.node
                );
                errs.push(conflict(
                    (Kind::Workload, &w.name, "spec.mac"),
                    (&says, ""),
                    (Kind::Workload, other, "spec.mac"),
                    (&says, ""),
                ));
            }
        }
    }
    for w in intent.workloads.values() {
        if w.kind != WorkloadKind::VnicIp || !intent.vpcs.contains_key(&w.vpc) {
            continue;
        }
        // Without another workload on its port, a VNicIP binds the port itself.
        match vnic_owner(intent, w) {
            Some(o) if o.vpc != w.vpc => errs.push(conflict(
                (Kind::Workload, &w.name, "spec.vpc"),
                (
                    &format!("port {} on node {} belongs to", w.port, w.node),
                    &format!(
                        " in Vpc/{}; a VNicIP on it must be in the same VPC",
                        o.vpc
                    ),
                ),
                (Kind::Workload, &o.name, "spec.vpc"),
                (
                    &format!("port {} on node {} also has the VNicIP", w.port, w.node),
                    &format!(
                        " in Vpc/{}; a VNicIP must be in the same VPC as the workload whose port it is on",
                        w.vpc
                    ),
                ),
            )),
            Some(o) if w.mac.is_some() && o.mac.is_some() && w.mac != o.mac => {
                let (wm, om) = (w.mac.unwrap_or(Mac([0; 6])), o.mac.unwrap_or(Mac([0; 6])));
                errs.push(conflict(
                    (Kind::Workload, &w.name, "spec.mac"),
                    (
                        &format!("port {} on node {} has MAC {om} from", w.port, w.node),
                        "; a VNicIP on it uses that MAC (leave spec.mac out)",
                    ),
                    (Kind::Workload, &o.name, "spec.mac"),
                    (
                        &format!(
                            "{om} is the MAC of port {} on node {}, and the VNicIP",
                            w.port, w.node
                        ),
                        &format!(" gives {wm}; a VNicIP uses the MAC of the workload whose port it is on"),
                    ),
                ));
            }
            _ => {}
        }
    }

    // VIP:port claims: the Service and the index of the cluster IP.
    let mut vips: HashMap<(&str, IpAddr, Protocol, u16), (&str, usize)> = HashMap::new();
    let mut eips: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for s in intent.services.values() {
        let e = |field: String, msg: String| err(Kind::Service, &s.name, field, msg);
        if !intent.vpcs.contains_key(&s.vpc) {
            errs.push(e(
                "spec.vpc".into(),
                format!("Vpc/{} does not exist", s.vpc),
            ));
            continue;
        }
        if s.cluster_ips.len() > MAX_CLUSTER_IPS {
            errs.push(e(
                "spec.clusterIPs".into(),
                format!(
                    "{} cluster IPs; at most {MAX_CLUSTER_IPS}",
                    s.cluster_ips.len()
                ),
            ));
        }
        if s.ports.len() > MAX_PORTS {
            errs.push(e(
                "spec.ports".into(),
                format!("{} ports; at most {MAX_PORTS}", s.ports.len()),
            ));
        }
        if let Some(msg) = affinity_problem(s) {
            errs.push(e("spec.sessionAffinity".into(), msg.into()));
        }
        for (i, ip) in s.cluster_ips.iter().enumerate() {
            let field = format!("spec.clusterIPs[{i}]");
            if let Some(&(kind, name, ofield, what)) = taken.get(&(s.vpc.as_str(), *ip)) {
                errs.push(conflict(
                    (Kind::Service, &s.name, &field),
                    (&format!("{ip} in Vpc/{} is also {what}", s.vpc), ""),
                    (kind, name, ofield),
                    (
                        &format!("{ip} in Vpc/{} is also a cluster IP of", s.vpc),
                        "",
                    ),
                ));
            }
            for p in &s.ports {
                let k = (s.vpc.as_str(), *ip, p.protocol, p.port);
                match vips.get(&k) {
                    Some(&(other, j)) if other != s.name => {
                        let says = format!(
                            "{ip}:{}/{} in Vpc/{} is also served by",
                            p.port,
                            p.protocol.as_str(),
                            s.vpc
                        );
                        errs.push(conflict(
                            (Kind::Service, &s.name, &field),
                            (&says, ""),
                            (Kind::Service, other, &format!("spec.clusterIPs[{j}]")),
                            (&says, ""),
                        ));
                    }
                    Some(_) => {}
                    None => drop(vips.insert(k, (&s.name, i))),
                }
            }
        }
        if s.backends.len() > MAX_BACKENDS {
            errs.push(e(
                "spec.backends".into(),
                format!("{} backends; at most {MAX_BACKENDS}", s.backends.len()),
            ));
        }
        let mut total = 0u32;
        for (i, b) in s.backends.iter().enumerate() {
            if b.weight > MAX_WEIGHT {
                errs.push(e(
                    format!("spec.backends[{i}].weight"),
                    format!("weight {} is above {MAX_WEIGHT}", b.weight),
                ));
            }
            total = total.saturating_add(b.weight);
            if b.vpc != s.vpc && s.scenario != AccessScenario::EipServiceGateway {
                errs.push(e(
                    format!("spec.backends[{i}].vpc"),
                    format!(
                        "backend {} is in Vpc/{}; only a service-gateway Service (EIPServiceGateway) reaches backends outside its Vpc/{}",
                        b.ip, b.vpc, s.vpc
                    ),
                ));
            } else if !intent.vpcs.contains_key(&b.vpc) {
                errs.push(e(
                    format!("spec.backends[{i}].vpc"),
                    format!("Vpc/{} does not exist", b.vpc),
                ));
            } else if s.scenario == AccessScenario::EipServiceGateway && b.ip.is_ipv6() {
                errs.push(e(
                    format!("spec.backends[{i}].ip"),
                    format!(
                        "backend {} is IPv6; a service gateway's EIP is IPv4, and so are its backends",
                        b.ip
                    ),
                ));
            } else if in_vpc(&b.vpc, b.ip).is_none() {
                errs.push(e(
                    format!("spec.backends[{i}].ip"),
                    format!(
                        "backend {} is outside Vpc/{} (in none of its Subnets)",
                        b.ip, b.vpc
                    ),
                ));
            }
        }
        if let Some(eip) = s.eip {
            // An EIP is an outside address: it must not mean anything inside a VPC
            // or on the node network, and it belongs to one Service.
            if let Some(sub) = intent
                .subnets
                .values()
                .find(|x| x.cidr.contains(&IpAddr::V4(eip)))
            {
                errs.push(conflict(
                    (Kind::Service, &s.name, "spec.eip"),
                    (
                        &format!("{eip} is inside"),
                        &format!(
                            ", {} in Vpc/{}; an EIP is an address outside every VPC",
                            sub.cidr, sub.vpc
                        ),
                    ),
                    (Kind::Subnet, &sub.name, "spec.cidr"),
                    (
                        &format!("{} in Vpc/{} holds {eip}, the EIP of", sub.cidr, sub.vpc),
                        "; an EIP is an address outside every VPC",
                    ),
                ));
            }
            if let Some(n) = intent
                .nodes
                .values()
                .find(|n| n.tunnel_ip == eip || n.host.is_some_and(|h| h.0 == eip))
            {
                let field = if n.tunnel_ip == eip {
                    "spec.tunnelIP"
                } else {
                    "spec.hostIP"
                };
                errs.push(conflict(
                    (Kind::Service, &s.name, "spec.eip"),
                    (&format!("{eip} is also an address of"), ""),
                    (Kind::Node, &n.name, field),
                    (&format!("{eip} is also the EIP of"), ""),
                ));
            }
            if let Some(other) = eips.insert(eip, &s.name) {
                let says = format!("{eip} is also the EIP of");
                errs.push(conflict(
                    (Kind::Service, &s.name, "spec.eip"),
                    (&says, ""),
                    (Kind::Service, other, "spec.eip"),
                    (&says, ""),
                ));
            }
        }
        if total > MAX_BUCKETS {
            errs.push(e("spec.backends".into(), format!(
                "the weights add up to {total}; at most {MAX_BUCKETS} (one group bucket per unit of weight)"
            )));
        }
    }

    let mut tunnel_ips: BTreeMap<std::net::Ipv4Addr, &str> = BTreeMap::new();
    let mut host_ips: BTreeMap<std::net::Ipv4Addr, &str> = BTreeMap::new();
    for n in intent.nodes.values() {
        if let Some((ip, _)) = n.host {
            if let Some(other) = host_ips.insert(ip, &n.name) {
                let says = format!("{ip} is also the host address of");
                errs.push(conflict(
                    (Kind::Node, &n.name, "spec.hostIP"),
                    (&says, ""),
                    (Kind::Node, other, "spec.hostIP"),
                    (&says, ""),
                ));
            }
            // Inside a VPC, the host's address must mean the host.
            if let Some(s) = intent
                .subnets
                .values()
                .find(|s| s.cidr.contains(&IpAddr::V4(ip)))
            {
                errs.push(conflict(
                    (Kind::Node, &n.name, "spec.hostIP"),
                    (
                        &format!("{ip} is inside"),
                        &format!(", {} in Vpc/{}", s.cidr, s.vpc),
                    ),
                    (Kind::Subnet, &s.name, "spec.cidr"),
                    (
                        &format!(
                            "{} in Vpc/{} holds {ip}, the host address of",
                            s.cidr, s.vpc
                        ),
                        "",
                    ),
                ));
            }
        }
        if let Some(other) = tunnel_ips.insert(n.tunnel_ip, &n.name) {
            let says = format!("{} is also the tunnel address of", n.tunnel_ip);
            errs.push(conflict(
                (Kind::Node, &n.name, "spec.tunnelIP"),
                (&says, ""),
                (Kind::Node, other, "spec.tunnelIP"),
                (&says, ""),
            ));
        }
    }

    for p in intent.probes.values() {
        if !intent.services.contains_key(&p.service) {
            errs.push(err(
                Kind::NetworkProbe,
                &p.name,
                "spec.service",
                format!("YusurService/{} does not exist", p.service),
            ));
        }
    }
    errs
}

/// Why a Service's session affinity cannot be applied, if it cannot: the
/// agents' affinity tables (`learn`) key on IPv4 addresses.
fn affinity_problem(s: &Service) -> Option<&'static str> {
    let v6 = s.cluster_ips.iter().any(IpAddr::is_ipv6) || s.backends.iter().any(|b| b.ip.is_ipv6());
    (v6 && s.affinity_timeout.is_some()).then_some(
        "ClientIP affinity is IPv4 only in this release, and this Service has IPv6 addresses",
    )
}

/// The rules an agent applies to the workloads of its own node on top of
/// [`validate`]: what it must bind to a port of its switch, it must be able
/// to. Today that is a MAC for every workload on the node (a VNicIP may take
/// the MAC of the workload whose port it shares).
pub fn node_rules(intent: &Intent, node: &str) -> Vec<ObjectError> {
    let mut errs = Vec::new();
    for w in intent.workloads.values().filter(|w| w.node == node) {
        if let Some(e) = missing_mac(intent, w) {
            errs.push(e);
        }
    }
    errs
}

fn missing_mac(intent: &Intent, w: &Workload) -> Option<ObjectError> {
    let owner_mac = || vnic_owner(intent, w).and_then(|o| o.mac);
    let vnic_mac = w.kind == WorkloadKind::VnicIp && owner_mac().is_some();
    (w.mac.is_none() && !vnic_mac).then(|| {
        err(
            Kind::Workload,
            &w.name,
            "spec.mac",
            format!(
                "a workload needs a MAC address: the agent of node {} binds its port by it{}",
                w.node,
                if w.kind == WorkloadKind::VnicIp {
                    " (a VNicIP takes it from the workload whose port it shares; none there has one)"
                } else {
                    ""
                }
            ),
        )
    })
}

/// What the agent of `node` checks of its view: [`validate`], then, if that
/// passes, [`node_rules`] for `node`.
pub fn validate_for_node(intent: &Intent, node: &str) -> Vec<ObjectError> {
    let errs = validate(intent);
    if !errs.is_empty() {
        return errs;
    }
    node_rules(intent, node)
}

/// What the controller checks of the whole intent: [`validate`] and the
/// [`node_rules`] of every node (every node a Workload names), so that no
/// agent refuses its view of an intent the controller accepted.
pub fn validate_for_every_node(intent: &Intent) -> Vec<ObjectError> {
    let mut errs = validate(intent);
    errs.extend(
        intent
            .workloads
            .values()
            .filter_map(|w| missing_mac(intent, w)),
    );
    errs
}

/// The workload whose port a VNicIP is a secondary address on: the non-VNicIP
/// workload with the same node and port, else the VNicIP on that port whose name
/// sorts first (it binds the port). `None`: `w` binds its port itself.
pub fn vnic_owner<'a>(intent: &'a Intent, w: &Workload) -> Option<&'a Workload> {
    let same_port = |o: &&Workload| o.node == w.node && o.port == w.port && o.name != w.name;
    let mut on_port = intent.workloads.values().map(|o| &**o).filter(same_port);
    on_port
        .clone()
        .find(|o| o.kind != WorkloadKind::VnicIp)
        .or_else(|| on_port.find(|o| o.name < w.name))
}

fn err(kind: Kind, name: &str, field: impl Into<String>, msg: impl Into<String>) -> ObjectError {
    ObjectError::new(ObjectKey::new(kind, name), field, msg)
}

/// A conflict of `a` with `b`, reported at `a` (see [`ObjectError::conflict`]):
/// each side says `says.0`, names the other, then says `says.1`.
fn conflict(
    a: (Kind, &str, &str),
    a_says: (&str, &str),
    b: (Kind, &str, &str),
    b_says: (&str, &str),
) -> ObjectError {
    ObjectError::conflict(
        (ObjectKey::new(a.0, a.1), a.2.to_string()),
        a_says,
        (ObjectKey::new(b.0, b.1), b.2.to_string()),
        b_says,
    )
}

/// What [`validate_changes`] looks up instead of scanning the intent: who claims
/// each Service VIP:port and EIP, which probes name each Service, and which
/// workloads hold each address. Kept in step with the intent by the caller
/// ([`Index::add`] / [`Index::remove`] per object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    vips: HashMap<(String, IpAddr, Protocol, u16), Owners>,
    eips: HashMap<Ipv4Addr, Owners>,
    probes: HashMap<String, Owners>,
    addrs: HashMap<(String, IpAddr), Owners>,
}

/// The names that claim one key of the [`Index`]. Almost every key has one
/// owner (two are a conflict), so one is kept inline: a set node per key
/// (about 280 bytes) was most of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owners {
    One(String),
    /// Two or more, never fewer (the one left becomes `One` again).
    Many(BTreeSet<String>),
}

impl Owners {
    fn len(&self) -> usize {
        match self {
            Owners::One(_) => 1,
            Owners::Many(set) => set.len(),
        }
    }

    fn insert(&mut self, name: &str) {
        match self {
            Owners::One(one) if one == name => {}
            Owners::One(one) => {
                let set = BTreeSet::from([std::mem::take(one), name.to_string()]);
                *self = Owners::Many(set);
            }
            Owners::Many(set) => {
                set.insert(name.to_string());
            }
        }
    }

    /// Removes `name`; true when no owner is left.
    fn remove(&mut self, name: &str) -> bool {
        match self {
            Owners::One(one) => one == name,
            Owners::Many(set) => {
                set.remove(name);
                if set.len() == 1 {
                    let last = set.pop_first().unwrap_or_default();
                    *self = Owners::One(last);
                }
                false
            }
        }
    }
}

impl Index {
    pub fn build(intent: &Intent) -> Index {
        let mut i = Index::default();
        for o in intent.objects() {
            i.add(&o);
        }
        i
    }

    pub fn add(&mut self, o: &Object) {
        self.each(o, true);
    }

    pub fn remove(&mut self, o: &Object) {
        self.each(o, false);
    }

    fn each(&mut self, o: &Object, add: bool) {
        fn touch<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Owners>, k: K, name: &str, add: bool) {
            use std::collections::hash_map::Entry;
            match (m.entry(k), add) {
                (Entry::Vacant(v), true) => {
                    v.insert(Owners::One(name.to_string()));
                }
                (Entry::Occupied(mut o), true) => o.get_mut().insert(name),
                (Entry::Occupied(mut o), false) => {
                    if o.get_mut().remove(name) {
                        o.remove();
                    }
                }
                (Entry::Vacant(_), false) => {}
            }
        }
        match o {
            Object::Service(s) => {
                for ip in &s.cluster_ips {
                    for p in &s.ports {
                        let k = (s.vpc.clone(), *ip, p.protocol, p.port);
                        touch(&mut self.vips, k, &s.name, add);
                    }
                }
                if let Some(eip) = s.eip {
                    touch(&mut self.eips, eip, &s.name, add);
                }
            }
            Object::NetworkProbe(p) => touch(&mut self.probes, p.service.clone(), &p.name, add),
            Object::Workload(w) => {
                let addrs = std::iter::once(IpAddr::V4(w.ip)).chain(w.ipv6.map(IpAddr::V6));
                for ip in addrs {
                    touch(&mut self.addrs, (w.vpc.clone(), ip), &w.name, add);
                }
            }
            Object::Vpc(_) | Object::Subnet(_) | Object::Node(_) => {}
        }
    }
}

/// The fast path of [`validate`] for an update on top of a valid intent:
/// `intent` is the intent after the update, `index` is in step with it, and
/// `changed` names every object the update added, replaced or removed. True
/// means [`validate`] finds nothing; false means it may find something (or the
/// change is not one this path judges: anything but Services and probes), and
/// the caller runs [`validate`] for the verdict and the exact errors.
///
/// Only Services and probes read Services, so a change of those can break only
/// the changed Services' own rules, a VIP or EIP another Service also claims,
/// or a probe of a removed Service.
pub fn validate_changes(intent: &Intent, index: &Index, changed: &BTreeSet<ObjectKey>) -> bool {
    if intent.len() > MAX_OBJECTS {
        return false;
    }
    changed.iter().all(|k| match k.kind {
        Kind::Service => match intent.services.get(&k.name) {
            None => !index.probes.contains_key(&k.name),
            Some(s) => service_ok(intent, index, s),
        },
        Kind::NetworkProbe => intent
            .probes
            .get(&k.name)
            .is_none_or(|p| intent.services.contains_key(&p.service)),
        _ => false,
    })
}

/// The Service rules of [`validate`] for one Service, in a valid rest.
fn service_ok(intent: &Intent, index: &Index, s: &Service) -> bool {
    if !intent.vpcs.contains_key(&s.vpc)
        || affinity_problem(s).is_some()
        || s.cluster_ips.len() > MAX_CLUSTER_IPS
        || s.ports.len() > MAX_PORTS
        || s.backends.len() > MAX_BACKENDS
    {
        return false;
    }
    fn subnets<'a>(intent: &'a Intent, vpc: &'a str) -> impl Iterator<Item = &'a Subnet> {
        intent.subnets.values().filter(move |x| x.vpc == vpc)
    }
    for ip in &s.cluster_ips {
        let gateway = subnets(intent, &s.vpc).any(|x| x.gateway == *ip);
        if gateway || index.addrs.contains_key(&(s.vpc.clone(), *ip)) {
            return false;
        }
        for p in &s.ports {
            let k = (s.vpc.clone(), *ip, p.protocol, p.port);
            if index.vips.get(&k).is_some_and(|owners| owners.len() > 1) {
                return false;
            }
        }
    }
    let mut total = 0u32;
    for b in &s.backends {
        total = total.saturating_add(b.weight);
        let ok = b.weight <= MAX_WEIGHT
            && (b.vpc == s.vpc || s.scenario == AccessScenario::EipServiceGateway)
            && intent.vpcs.contains_key(&b.vpc)
            && !(s.scenario == AccessScenario::EipServiceGateway && b.ip.is_ipv6())
            && subnets(intent, &b.vpc).any(|x| x.cidr.contains(&b.ip));
        if !ok {
            return false;
        }
    }
    if total > MAX_BUCKETS {
        return false;
    }
    if let Some(eip) = s.eip {
        let ip = IpAddr::V4(eip);
        if intent.subnets.values().any(|x| x.cidr.contains(&ip))
            || intent
                .nodes
                .values()
                .any(|n| n.tunnel_ip == eip || n.host.is_some_and(|h| h.0 == eip))
            || index.eips.get(&eip).is_some_and(|owners| owners.len() > 1)
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One owner is kept inline, two or more in a set, and the form is
    /// canonical: the same owners give equal `Owners` whatever the order of
    /// inserts and removes (the agent compares its index with a rebuilt one).
    #[test]
    fn owners_go_from_one_to_many_and_back() {
        let mut o = Owners::One("a".into());
        o.insert("a");
        assert_eq!((o.len(), &o), (1, &Owners::One("a".into())));
        o.insert("b");
        o.insert("c");
        assert_eq!(o.len(), 3);
        assert!(!o.remove("a"));
        assert!(!o.remove("c"));
        assert_eq!(o, Owners::One("b".into()));
        assert!(!o.remove("x"), "not an owner: nothing changes");
        assert!(o.remove("b"), "the last owner gone");
    }

    fn intent() -> Intent {
        let mut i = Intent::default();
        i.upsert(Object::Vpc(Vpc {
            name: "blue".into(),
            vni: 1,
        }));
        i.upsert(Object::Subnet(Subnet {
            name: "blue-a".into(),
            vpc: "blue".into(),
            cidr: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            node_blocks: Vec::new(),
        }));
        i
    }

    fn service(name: &str, vip: &str) -> Object {
        Object::Service(Service {
            name: name.into(),
            vpc: "blue".into(),
            cluster_ips: vec![vip.parse().unwrap()],
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 80,
            }],
            backends: Vec::new(),
            affinity_timeout: None,
            eip: None,
            scenario: AccessScenario::ClusterIp,
            external_traffic_local: false,
            eip_node: None,
        })
    }

    fn workload(name: &str, kind: WorkloadKind, ip: u8, mac: Option<u8>, port: &str) -> Object {
        Object::Workload(Workload {
            name: name.into(),
            kind,
            vpc: "blue".into(),
            ip: Ipv4Addr::new(10, 1, 0, ip),
            ipv6: None,
            mac: mac.map(|m| Mac([2, 0, 0, 0, 0, m])),
            labels: BTreeMap::new(),
            node: "dpu-1".into(),
            port: port.into(),
        })
    }

    /// Whichever name sorts first, a VIP:port conflict is one error naming
    /// both Services and both fields, with the other side in `other`.
    #[test]
    fn a_vip_port_conflict_names_both_services_in_either_order() {
        for (new, at, named) in [("a-dup", "web", "a-dup"), ("z-dup", "z-dup", "web")] {
            let mut i = intent();
            i.upsert(service("web", "10.96.0.10"));
            i.upsert(service(new, "10.96.0.10"));
            let errs = validate(&i);
            assert_eq!(errs.len(), 1, "{errs:?}");
            let e = &errs[0];
            assert_eq!(e.key, ObjectKey::new(Kind::Service, at));
            assert_eq!(e.field, "spec.clusterIPs[0]");
            assert_eq!(
                e.message,
                format!("10.96.0.10:80/tcp in Vpc/blue is also served by YusurService/{named} (spec.clusterIPs[0])")
            );
            let f = e.flipped().unwrap();
            assert_eq!(f.key, ObjectKey::new(Kind::Service, named));
            assert_eq!(
                f.message,
                format!("10.96.0.10:80/tcp in Vpc/blue is also served by YusurService/{at} (spec.clusterIPs[0])")
            );
            assert_eq!(f.flipped().as_ref(), Some(e), "flipping twice is the error");
        }
    }

    #[test]
    fn address_and_port_conflicts_name_both_workloads() {
        let mut i = intent();
        i.upsert(workload("a", WorkloadKind::Pod, 5, Some(1), "p"));
        i.upsert(workload("b", WorkloadKind::Pod, 5, Some(2), "p"));
        let errs: Vec<String> = validate(&i).iter().map(ToString::to_string).collect();
        assert_eq!(
            errs,
            [
                "Workload/b: spec.ip: 10.1.0.5 in Vpc/blue is also the address of Workload/a (spec.ip)",
                "Workload/b: spec.port: port p on node dpu-1 is also bound to Workload/a (spec.port)",
            ]
        );
        let mut i = intent();
        i.upsert(workload("a", WorkloadKind::Pod, 1, Some(1), "p"));
        let e = &validate(&i)[0];
        assert_eq!(
            e.to_string(),
            "Workload/a: spec.ip: 10.1.0.1 in Vpc/blue is also the gateway of Subnet/blue-a (spec.gateway)"
        );
        assert_eq!(
            e.flipped().unwrap().to_string(),
            "Subnet/blue-a: spec.gateway: 10.1.0.1 in Vpc/blue is also the address of Workload/a (spec.ip)"
        );
    }

    /// A node's agent refuses its own workloads without a MAC; the controller's
    /// check covers every node.
    #[test]
    fn a_workload_without_a_mac_is_refused_for_its_node() {
        let mut i = intent();
        i.upsert(workload("vm", WorkloadKind::Vm, 5, None, "p"));
        // A VNicIP on the port of a workload with a MAC takes that one.
        i.upsert(workload("owned", WorkloadKind::Pod, 6, Some(1), "q"));
        i.upsert(workload("extra", WorkloadKind::VnicIp, 7, None, "q"));
        assert_eq!(validate(&i), vec![]);
        let on_node = validate_for_node(&i, "dpu-1");
        assert_eq!(on_node.len(), 1, "{on_node:?}");
        assert_eq!(on_node[0].key, ObjectKey::new(Kind::Workload, "vm"));
        assert_eq!(on_node[0].field, "spec.mac");
        assert_eq!(validate_for_node(&i, "dpu-2"), vec![]);
        assert_eq!(validate_for_every_node(&i), on_node);
        // A VNicIP alone on its port binds it, so it needs its own.
        let mut i = intent();
        i.upsert(workload("alone", WorkloadKind::VnicIp, 7, None, "r"));
        let e = &validate_for_every_node(&i)[0];
        assert!(e.message.contains("none there has one"), "{e}");
    }

    #[test]
    fn client_ip_affinity_with_ipv6_is_refused_and_not_passed_by_the_fast_path() {
        let mut i = intent();
        let Object::Service(mut s) = service("v6", "fd00:96::1") else {
            unreachable!()
        };
        s.affinity_timeout = Some(10_800);
        i.upsert(Object::Service(s));
        let errs = validate(&i);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.sessionAffinity");
        let changed = [ObjectKey::new(Kind::Service, "v6")].into();
        assert!(!validate_changes(&i, &Index::build(&i), &changed));
    }
}
