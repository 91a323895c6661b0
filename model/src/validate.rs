//! Cross-object rules: references resolve, addresses stay inside their VPC, nothing
//! collides. Field-level rules live in `convert`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use crate::limits::*;
use crate::types::*;
use crate::ObjectError;

/// Checks the whole intent set and returns every problem found, in a stable order.
pub fn validate(intent: &Intent) -> Vec<ObjectError> {
    let mut errs = Vec::new();
    if intent.len() > MAX_OBJECTS {
        errs.push(ObjectError::new(
            ObjectKey::new(Kind::Vpc, "<all>"),
            "objects",
            format!("{} objects; at most {MAX_OBJECTS}", intent.len()),
        ));
    }

    let mut vnis: HashMap<u32, &str> = HashMap::new();
    for v in intent.vpcs.values() {
        if let Some(other) = vnis.insert(v.vni, &v.name) {
            errs.push(err(
                Kind::Vpc,
                &v.name,
                "spec.vni",
                format!("VNI {} is already used by Vpc/{other}", v.vni),
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
            errs.push(err(
                Kind::Subnet,
                &s.name,
                "spec.cidr",
                format!(
                    "{} overlaps Subnet/{} ({}) in Vpc/{}",
                    s.cidr, o.name, o.cidr, s.vpc
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

    // Addresses taken in each VPC: gateways, then workloads.
    let mut taken: HashMap<(&str, IpAddr), String> = HashMap::new();
    for s in subnets_by_vpc.values().flatten() {
        taken.insert(
            (&s.vpc, s.gateway),
            format!("the gateway of Subnet/{}", s.name),
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
                    if let Some(owner) = taken.get(&(w.vpc.as_str(), ip)) {
                        errs.push(err(
                            Kind::Workload,
                            &w.name,
                            field,
                            format!("{ip} in Vpc/{} is already {owner}", w.vpc),
                        ));
                    } else {
                        taken.insert((&w.vpc, ip), format!("Workload/{}", w.name));
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
            errs.push(err(
                Kind::Workload,
                &w.name,
                "spec.port",
                format!(
                    "port {} on node {} is already bound to Workload/{other}",
                    w.port, w.node
                ),
            ));
        }
    }
    let mut shared: HashMap<(&str, &str, Mac), &str> = HashMap::new();
    for w in intent.workloads.values() {
        if w.kind != WorkloadKind::BareMetal {
            continue;
        }
        let e = |field: &str, msg: String| err(Kind::Workload, &w.name, field, msg);
        if let Some(owner) = ports.get(&(w.node.as_str(), w.port.as_str())) {
            errs.push(e(
                "spec.port",
                format!(
                    "port {} on node {} is Workload/{owner}'s own; a bare-metal server is reached through a shared port such as the uplink",
                    w.port, w.node
                ),
            ));
        }
        // The MAC tells the server apart on the shared port (the agent of its
        // node requires one, as for any workload it binds).
        if let Some(mac) = w.mac {
            if let Some(other) = shared.insert((&w.node, &w.port, mac), &w.name) {
                errs.push(e(
                    "spec.mac",
                    format!(
                        "{mac} on port {} of node {} is already Workload/{other}",
                        w.port, w.node
                    ),
                ));
            }
        }
    }
    for w in intent.workloads.values() {
        if w.kind != WorkloadKind::VnicIp || !intent.vpcs.contains_key(&w.vpc) {
            continue;
        }
        let e = |field: &str, msg: String| err(Kind::Workload, &w.name, field, msg);
        // Without another workload on its port, a VNicIP binds the port itself.
        match vnic_owner(intent, w) {
            Some(o) if o.vpc != w.vpc => errs.push(e(
                "spec.vpc",
                format!(
                    "port {} belongs to Workload/{} in Vpc/{}; a VNicIP on it must be in the same VPC",
                    w.port, o.name, o.vpc
                ),
            )),
            Some(o) if w.mac.is_some() && o.mac.is_some() && w.mac != o.mac => errs.push(e(
                "spec.mac",
                format!(
                    "port {} has MAC {} (Workload/{}); a VNicIP on it uses that MAC (leave spec.mac out)",
                    w.port,
                    o.mac.map_or(String::new(), |m| m.to_string()),
                    o.name
                ),
            )),
            _ => {}
        }
    }

    let mut vips: HashMap<(&str, IpAddr, Protocol, u16), &str> = HashMap::new();
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
        for (i, ip) in s.cluster_ips.iter().enumerate() {
            if let Some(owner) = taken.get(&(s.vpc.as_str(), *ip)) {
                errs.push(e(
                    format!("spec.clusterIPs[{i}]"),
                    format!("{ip} in Vpc/{} is already {owner}", s.vpc),
                ));
            }
            for p in &s.ports {
                if let Some(other) = vips.insert((&s.vpc, *ip, p.protocol, p.port), &s.name) {
                    if other != s.name {
                        errs.push(e(
                            format!("spec.clusterIPs[{i}]"),
                            format!(
                                "{ip}:{}/{} in Vpc/{} is already served by YusurService/{other}",
                                p.port,
                                p.protocol.as_str(),
                                s.vpc
                            ),
                        ));
                    }
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
                errs.push(e(
                    "spec.eip".into(),
                    format!(
                        "{eip} is inside Subnet/{} ({}) of Vpc/{}; an EIP is an address outside every VPC",
                        sub.name, sub.cidr, sub.vpc
                    ),
                ));
            }
            if let Some(n) = intent
                .nodes
                .values()
                .find(|n| n.tunnel_ip == eip || n.host.is_some_and(|h| h.0 == eip))
            {
                errs.push(e(
                    "spec.eip".into(),
                    format!("{eip} is an address of DpuNode/{}", n.name),
                ));
            }
            if let Some(other) = eips.insert(eip, &s.name) {
                errs.push(e(
                    "spec.eip".into(),
                    format!("{eip} is already the EIP of YusurService/{other}"),
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
                errs.push(err(
                    Kind::Node,
                    &n.name,
                    "spec.hostIP",
                    format!("{ip} is also DpuNode/{other}'s host address"),
                ));
            }
            // Inside a VPC, the host's address must mean the host.
            if let Some(s) = intent
                .subnets
                .values()
                .find(|s| s.cidr.contains(&IpAddr::V4(ip)))
            {
                errs.push(err(
                    Kind::Node,
                    &n.name,
                    "spec.hostIP",
                    format!(
                        "{ip} is inside Subnet/{} ({}) of Vpc/{}",
                        s.name, s.cidr, s.vpc
                    ),
                ));
            }
        }
        if let Some(other) = tunnel_ips.insert(n.tunnel_ip, &n.name) {
            errs.push(err(
                Kind::Node,
                &n.name,
                "spec.tunnelIP",
                format!("{} is also DpuNode/{other}'s tunnel address", n.tunnel_ip),
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

/// The workload whose port a VNicIP is a secondary address on: the non-VNicIP
/// workload with the same node and port, else the VNicIP on that port whose name
/// sorts first (it binds the port). `None`: `w` binds its port itself.
pub fn vnic_owner<'a>(intent: &'a Intent, w: &Workload) -> Option<&'a Workload> {
    let same_port = |o: &&Workload| o.node == w.node && o.port == w.port && o.name != w.name;
    let mut on_port = intent.workloads.values().filter(same_port);
    on_port
        .clone()
        .find(|o| o.kind != WorkloadKind::VnicIp)
        .or_else(|| on_port.find(|o| o.name < w.name))
}

fn err(kind: Kind, name: &str, field: impl Into<String>, msg: impl Into<String>) -> ObjectError {
    ObjectError::new(ObjectKey::new(kind, name), field, msg)
}

/// What [`validate_changes`] looks up instead of scanning the intent: who claims
/// each Service VIP:port and EIP, which probes name each Service, and which
/// workloads hold each address. Kept in step with the intent by the caller
/// ([`Index::add`] / [`Index::remove`] per object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    vips: HashMap<(String, IpAddr, Protocol, u16), BTreeSet<String>>,
    eips: HashMap<Ipv4Addr, BTreeSet<String>>,
    probes: HashMap<String, BTreeSet<String>>,
    addrs: HashMap<(String, IpAddr), BTreeSet<String>>,
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
        fn touch<K: std::hash::Hash + Eq>(
            m: &mut HashMap<K, BTreeSet<String>>,
            k: K,
            name: &str,
            add: bool,
        ) {
            if add {
                m.entry(k).or_default().insert(name.to_string());
            } else if let Some(set) = m.get_mut(&k) {
                set.remove(name);
                if set.is_empty() {
                    m.remove(&k);
                }
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
