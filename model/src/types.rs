//! The domain types. Every value here has passed field validation (see `convert`);
//! cross-object rules are checked by `Intent::validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

/// The kinds of intent object, named as in the manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Vpc,
    Subnet,
    Workload,
    Service,
    NetworkProbe,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Vpc,
        Kind::Subnet,
        Kind::Workload,
        Kind::Service,
        Kind::NetworkProbe,
        Kind::Node,
    ];

    /// The manifest `kind:` for this object kind.
    pub fn manifest_kind(self) -> &'static str {
        match self {
            Kind::Vpc => "Vpc",
            Kind::Subnet => "Subnet",
            Kind::Workload => "Workload",
            Kind::Service => "YusurService",
            Kind::NetworkProbe => "NetworkProbe",
            Kind::Node => "DpuNode",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.manifest_kind())
    }
}

/// Identifies one object: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub name: String,
    /// Geneve VNI, 1..=0xffffff.
    pub vni: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBlock {
    pub node: String,
    /// IPv4 only: the shim hands out IPv4 addresses.
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub name: String,
    pub vpc: String,
    /// IPv4 or IPv6; the gateway is of the same family.
    pub cidr: IpNet,
    pub gateway: IpAddr,
    pub node_blocks: Vec<NodeBlock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Pod,
    Vm,
    BareMetal,
    VnicIp,
}

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (want xx:xx:xx:xx:xx:xx)"
            ));
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!(
                    "{s:?} is not a MAC address (want xx:xx:xx:xx:xx:xx)"
                ));
            }
            out[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (bad hex {p:?})"))?;
        }
        if out[0] & 1 == 1 {
            return Err(format!(
                "{s} is a multicast MAC address; a unicast one is needed"
            ));
        }
        if out == [0; 6] {
            return Err("00:00:00:00:00:00 is not a usable MAC address".into());
        }
        Ok(Mac(out))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub kind: WorkloadKind,
    pub vpc: String,
    pub ip: Ipv4Addr,
    /// A second address, IPv6, for dual-stack workloads.
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<Mac>,
    pub labels: BTreeMap<String, String>,
    pub node: String,
    /// The `external_ids:iface-id` of the OVS interface this workload sits behind.
    pub port: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 or IPv6: a dual-stack workload is two backends, one per family.
    pub ip: IpAddr,
    pub weight: u32,
    pub workload: Option<String>,
    /// The backend's VPC: the Service's own, except behind a service gateway
    /// (`EipServiceGateway`), whose backends may sit in any VPC.
    pub vpc: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessScenario {
    ClusterIp,
    NodeClusterIp,
    EipLoadBalancer,
    EipServiceGateway,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vpc: String,
    /// IPv4 and/or IPv6 (dual-stack).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub backends: Vec<Backend>,
    /// ClientIP affinity timeout in seconds; `None` means no affinity.
    pub affinity_timeout: Option<u32>,
    pub eip: Option<Ipv4Addr>,
    pub scenario: AccessScenario,
    /// `externalTrafficPolicy: Local`: traffic from outside the VPC goes only to
    /// backends on the DPU it arrived at.
    pub external_traffic_local: bool,
    /// The DPU node that owns the EIP (answers ARP for it on its uplink).
    pub eip_node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeType {
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkProbe {
    pub name: String,
    pub service: String,
    pub probe_type: ProbeType,
    pub port: u16,
    pub http_path: String,
    /// HTTP statuses that mean healthy (default 200..=399).
    pub http_statuses: std::ops::RangeInclusive<u16>,
    pub period_ms: u32,
    pub timeout_ms: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A DPU and the underlay address its tunnels end on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub tunnel_ip: Ipv4Addr,
    /// The host's address and MAC on its PF (node ClusterIP).
    pub host: Option<(Ipv4Addr, Mac)>,
}

/// One intent object of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Vpc(Vpc),
    Subnet(Subnet),
    Workload(Workload),
    Service(Service),
    NetworkProbe(NetworkProbe),
    Node(Node),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Vpc(o) => ObjectKey::new(Kind::Vpc, &o.name),
            Object::Subnet(o) => ObjectKey::new(Kind::Subnet, &o.name),
            Object::Workload(o) => ObjectKey::new(Kind::Workload, &o.name),
            Object::Service(o) => ObjectKey::new(Kind::Service, &o.name),
            Object::NetworkProbe(o) => ObjectKey::new(Kind::NetworkProbe, &o.name),
            Object::Node(o) => ObjectKey::new(Kind::Node, &o.name),
        }
    }

    /// The VPC an object belongs to (a Vpc belongs to itself; a probe or a node
    /// to none).
    pub fn vpc(&self) -> Option<&str> {
        match self {
            Object::Vpc(o) => Some(&o.name),
            Object::Subnet(o) => Some(&o.vpc),
            Object::Workload(o) => Some(&o.vpc),
            Object::Service(o) => Some(&o.vpc),
            Object::NetworkProbe(_) | Object::Node(_) => None,
        }
    }
}

/// A full set of intent, keyed by name per kind. Ordered maps keep compile output
/// deterministic.
///
/// Services and workloads, the kinds there are thousands of, are held as
/// `Arc`s: a copy of the intent (what the agent makes when it changes an
/// intent an observer still reads, and what `with_pods` makes) copies the
/// maps, not every backend; change one with `Arc::make_mut`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    pub vpcs: BTreeMap<String, Vpc>,
    pub subnets: BTreeMap<String, Subnet>,
    pub workloads: BTreeMap<String, Arc<Workload>>,
    pub services: BTreeMap<String, Arc<Service>>,
    pub probes: BTreeMap<String, NetworkProbe>,
    pub nodes: BTreeMap<String, Node>,
}

impl Intent {
    pub fn upsert(&mut self, object: Object) {
        match object {
            Object::Vpc(o) => drop(self.vpcs.insert(o.name.clone(), o)),
            Object::Subnet(o) => drop(self.subnets.insert(o.name.clone(), o)),
            Object::Workload(o) => drop(self.workloads.insert(o.name.clone(), Arc::new(o))),
            Object::Service(o) => drop(self.services.insert(o.name.clone(), Arc::new(o))),
            Object::NetworkProbe(o) => drop(self.probes.insert(o.name.clone(), o)),
            Object::Node(o) => drop(self.nodes.insert(o.name.clone(), o)),
        }
    }

    /// Puts `object` in, returning the one it replaced.
    pub fn replace(&mut self, object: Object) -> Option<Object> {
        match object {
            Object::Vpc(o) => self.vpcs.insert(o.name.clone(), o).map(Object::Vpc),
            Object::Subnet(o) => self.subnets.insert(o.name.clone(), o).map(Object::Subnet),
            Object::Workload(o) => self
                .workloads
                .insert(o.name.clone(), Arc::new(o))
                .map(|o| Object::Workload(Arc::unwrap_or_clone(o))),
            Object::Service(o) => self
                .services
                .insert(o.name.clone(), Arc::new(o))
                .map(|o| Object::Service(Arc::unwrap_or_clone(o))),
            Object::NetworkProbe(o) => self
                .probes
                .insert(o.name.clone(), o)
                .map(Object::NetworkProbe),
            Object::Node(o) => self.nodes.insert(o.name.clone(), o).map(Object::Node),
        }
    }

    /// A copy of the object with this key.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        match key.kind {
            Kind::Vpc => self.vpcs.get(&key.name).cloned().map(Object::Vpc),
            Kind::Subnet => self.subnets.get(&key.name).cloned().map(Object::Subnet),
            Kind::Workload => self
                .workloads
                .get(&key.name)
                .map(|o| Object::Workload(Workload::clone(o))),
            Kind::Service => self
                .services
                .get(&key.name)
                .map(|o| Object::Service(Service::clone(o))),
            Kind::NetworkProbe => self
                .probes
                .get(&key.name)
                .cloned()
                .map(Object::NetworkProbe),
            Kind::Node => self.nodes.get(&key.name).cloned().map(Object::Node),
        }
    }

    /// Removes an object and returns it.
    pub fn take(&mut self, key: &ObjectKey) -> Option<Object> {
        match key.kind {
            Kind::Vpc => self.vpcs.remove(&key.name).map(Object::Vpc),
            Kind::Subnet => self.subnets.remove(&key.name).map(Object::Subnet),
            Kind::Workload => self
                .workloads
                .remove(&key.name)
                .map(|o| Object::Workload(Arc::unwrap_or_clone(o))),
            Kind::Service => self
                .services
                .remove(&key.name)
                .map(|o| Object::Service(Arc::unwrap_or_clone(o))),
            Kind::NetworkProbe => self.probes.remove(&key.name).map(Object::NetworkProbe),
            Kind::Node => self.nodes.remove(&key.name).map(Object::Node),
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        match key.kind {
            Kind::Vpc => self.vpcs.remove(&key.name).is_some(),
            Kind::Subnet => self.subnets.remove(&key.name).is_some(),
            Kind::Workload => self.workloads.remove(&key.name).is_some(),
            Kind::Service => self.services.remove(&key.name).is_some(),
            Kind::NetworkProbe => self.probes.remove(&key.name).is_some(),
            Kind::Node => self.nodes.remove(&key.name).is_some(),
        }
    }

    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        self.vpcs
            .values()
            .cloned()
            .map(Object::Vpc)
            .chain(self.subnets.values().cloned().map(Object::Subnet))
            .chain(
                self.workloads
                    .values()
                    .map(|o| Object::Workload(Workload::clone(o))),
            )
            .chain(
                self.services
                    .values()
                    .map(|o| Object::Service(Service::clone(o))),
            )
            .chain(self.probes.values().cloned().map(Object::NetworkProbe))
            .chain(self.nodes.values().cloned().map(Object::Node))
    }

    /// Every object's key, without copying the objects.
    pub fn keys(&self) -> BTreeSet<ObjectKey> {
        fn of<'a, V>(
            kind: Kind,
            m: &'a BTreeMap<String, V>,
        ) -> impl Iterator<Item = ObjectKey> + 'a {
            m.keys().map(move |name| ObjectKey {
                kind,
                name: name.clone(),
            })
        }
        of(Kind::Vpc, &self.vpcs)
            .chain(of(Kind::Subnet, &self.subnets))
            .chain(of(Kind::Workload, &self.workloads))
            .chain(of(Kind::Service, &self.services))
            .chain(of(Kind::NetworkProbe, &self.probes))
            .chain(of(Kind::Node, &self.nodes))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.vpcs.len()
            + self.subnets.len()
            + self.workloads.len()
            + self.services.len()
            + self.probes.len()
            + self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
