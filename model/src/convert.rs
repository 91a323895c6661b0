//! The proto edge: wire messages become domain values here and nowhere else.
//! Every rejection names the object and the field, in manifest terms (`spec.…`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dpu_proto::v1 as pb;
use ipnet::{IpNet, Ipv4Net};

use crate::limits::{MAX_BACKENDS, MAX_LABELS, MAX_NAME_LEN, MAX_PORTS};
use crate::types::*;
use crate::ObjectError;

struct Ctx {
    key: ObjectKey,
}

impl Ctx {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ObjectError {
        ObjectError::new(self.key.clone(), field, message)
    }

    fn ip(&self, field: &str, s: &str) -> Result<IpAddr, ObjectError> {
        if s.is_empty() {
            return Err(self.err(field, "is required"));
        }
        s.parse()
            .map_err(|_| self.err(field, format!("{s:?} is not an IP address")))
    }

    fn ipv4(&self, field: &str, s: &str) -> Result<Ipv4Addr, ObjectError> {
        if s.is_empty() {
            return Err(self.err(field, "is required"));
        }
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Ok(a),
            Ok(IpAddr::V6(_)) => {
                Err(self.err(field, format!("{s}: an IPv4 address is needed here")))
            }
            Err(_) => Err(self.err(field, format!("{s:?} is not an IP address"))),
        }
    }

    fn ipv6(&self, field: &str, s: &str) -> Result<Ipv6Addr, ObjectError> {
        match self.ip(field, s)? {
            IpAddr::V6(a) if !a.is_unicast_link_local() && !a.is_multicast() => Ok(a),
            IpAddr::V6(a) => Err(self.err(
                field,
                format!(
                    "{a} is link-local or multicast; a global or unique-local address is needed"
                ),
            )),
            IpAddr::V4(a) => Err(self.err(field, format!("{a}: an IPv6 address is needed here"))),
        }
    }

    /// A subnet CIDR: IPv4 up to /30, IPv6 up to /126, no host bits.
    fn net(&self, field: &str, s: &str) -> Result<IpNet, ObjectError> {
        if s.is_empty() {
            return Err(self.err(field, "is required"));
        }
        let net: IpNet = s.parse().map_err(|_| {
            self.err(
                field,
                format!("{s:?} is not a CIDR (a.b.c.d/len or an IPv6 prefix/len)"),
            )
        })?;
        if net.trunc() != net {
            return Err(self.err(
                field,
                format!("{s} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        let most = if matches!(net, IpNet::V4(_)) { 30 } else { 126 };
        if net.prefix_len() > most {
            return Err(self.err(
                field,
                format!("{s} is too small: the prefix must be /{most} or shorter"),
            ));
        }
        Ok(net)
    }

    fn cidr(&self, field: &str, s: &str) -> Result<Ipv4Net, ObjectError> {
        match self.net(field, s)? {
            IpNet::V4(n) => Ok(n),
            IpNet::V6(_) => Err(self.err(field, format!("{s}: an IPv4 CIDR is needed here"))),
        }
    }

    fn port(&self, field: &str, p: u32) -> Result<u16, ObjectError> {
        match u16::try_from(p) {
            Ok(0) => Err(self.err(field, "port 0 is not allowed (1..=65535)")),
            Ok(p) => Ok(p),
            Err(_) => Err(self.err(field, format!("port {p} is out of range (1..=65535)"))),
        }
    }

    fn name_ref(&self, field: &str, s: &str) -> Result<String, ObjectError> {
        if s.is_empty() {
            return Err(self.err(field, "is required"));
        }
        check_name(s).map_err(|m| self.err(field, m))?;
        Ok(s.to_string())
    }
}

/// Object names follow Kubernetes' DNS-1123 label rules (lowercase alphanumerics and
/// '-', starting and ending alphanumeric), up to `MAX_NAME_LEN`. Dots are allowed so
/// that `namespace.name` style names work.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("name is empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long; at most {MAX_NAME_LEN}",
            s.len()
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !s.chars().all(ok_char)
        || !s.chars().next().is_some_and(alnum)
        || !s.chars().last().is_some_and(alnum)
    {
        return Err(format!(
            "{s:?} is not a valid name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn ctx(kind: Kind, name: &str) -> Result<Ctx, ObjectError> {
    let shown = if name.is_empty() { "<unnamed>" } else { name };
    let key = ObjectKey::new(kind, shown);
    check_name(name).map_err(|m| ObjectError::new(key.clone(), "metadata.name", m))?;
    Ok(Ctx { key })
}

pub fn vpc_from_proto(m: &pb::Vpc) -> Result<Vpc, ObjectError> {
    let c = ctx(Kind::Vpc, &m.name)?;
    if m.vni == 0 || m.vni > 0x00ff_ffff {
        return Err(c.err(
            "spec.vni",
            format!("VNI {} is out of range (1..=16777215)", m.vni),
        ));
    }
    Ok(Vpc {
        name: m.name.clone(),
        vni: m.vni,
    })
}

pub fn subnet_from_proto(m: &pb::Subnet) -> Result<Subnet, ObjectError> {
    let c = ctx(Kind::Subnet, &m.name)?;
    let vpc = c.name_ref("spec.vpc", &m.vpc)?;
    let cidr = c.net("spec.cidr", &m.cidr)?;
    let gateway = c.ip("spec.gateway", &m.gateway)?;
    if !cidr.contains(&gateway) || gateway == cidr.network() || gateway == cidr.broadcast() {
        return Err(c.err(
            "spec.gateway",
            format!("gateway {gateway} is not a host address in {cidr}"),
        ));
    }
    let mut node_blocks = Vec::with_capacity(m.node_blocks.len());
    if matches!(cidr, IpNet::V6(_)) && !m.node_blocks.is_empty() {
        return Err(c.err(
            "spec.nodeBlocks",
            "node blocks are IPv4 only (the shim hands out IPv4 addresses); an IPv6 Subnet has none",
        ));
    }
    for (i, b) in m.node_blocks.iter().enumerate() {
        let node = c.name_ref(&format!("spec.nodeBlocks[{i}].node"), &b.node)?;
        let block = c.cidr(&format!("spec.nodeBlocks[{i}].cidr"), &b.cidr)?;
        if !cidr.contains(&IpNet::V4(block)) {
            return Err(c.err(
                format!("spec.nodeBlocks[{i}].cidr"),
                format!("{block} is not inside the subnet {cidr}"),
            ));
        }
        node_blocks.push(NodeBlock { node, cidr: block });
    }
    Ok(Subnet {
        name: m.name.clone(),
        vpc,
        cidr,
        gateway,
        node_blocks,
    })
}

pub fn workload_from_proto(m: &pb::Workload) -> Result<Workload, ObjectError> {
    let c = ctx(Kind::Workload, &m.name)?;
    let kind = match pb::WorkloadKind::try_from(m.kind) {
        Ok(pb::WorkloadKind::Pod) => WorkloadKind::Pod,
        Ok(pb::WorkloadKind::Vm) => WorkloadKind::Vm,
        Ok(pb::WorkloadKind::BareMetal) => WorkloadKind::BareMetal,
        Ok(pb::WorkloadKind::VnicIp) => WorkloadKind::VnicIp,
        _ => {
            return Err(c.err(
                "spec.kind",
                format!("kind {} is not one of Pod, VM, BareMetal, VNicIP", m.kind),
            ))
        }
    };
    let vpc = c.name_ref("spec.vpc", &m.vpc)?;
    let ip = c.ipv4("spec.ip", &m.ip)?;
    let ipv6 = if m.ipv6.is_empty() {
        None
    } else {
        Some(c.ipv6("spec.ipv6", &m.ipv6)?)
    };
    let mac = if m.mac.is_empty() {
        None
    } else {
        Some(m.mac.parse::<Mac>().map_err(|e| c.err("spec.mac", e))?)
    };
    if m.labels.len() > MAX_LABELS {
        return Err(c.err(
            "metadata.labels",
            format!("{} labels; at most {MAX_LABELS}", m.labels.len()),
        ));
    }
    let node = c.name_ref("spec.node", &m.node)?;
    if m.port.is_empty() || m.port.len() > MAX_NAME_LEN {
        return Err(c.err("spec.port", "is required (1..=253 bytes)"));
    }
    Ok(Workload {
        name: m.name.clone(),
        kind,
        vpc,
        ip,
        ipv6,
        mac,
        labels: m
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        node,
        port: m.port.clone(),
    })
}

pub fn service_from_proto(m: &pb::Service) -> Result<Service, ObjectError> {
    let c = ctx(Kind::Service, &m.name)?;
    let vpc = c.name_ref("spec.vpc", &m.vpc)?;
    let scenario = match pb::AccessScenario::try_from(m.scenario) {
        Ok(pb::AccessScenario::Unspecified) | Ok(pb::AccessScenario::ClusterIp) => {
            AccessScenario::ClusterIp
        }
        Ok(pb::AccessScenario::NodeClusterIp) => AccessScenario::NodeClusterIp,
        Ok(pb::AccessScenario::EipLoadBalancer) => AccessScenario::EipLoadBalancer,
        Ok(pb::AccessScenario::EipServiceGateway) => AccessScenario::EipServiceGateway,
        Err(_) => return Err(c.err("spec.scenario", format!("unknown scenario {}", m.scenario))),
    };
    let gateway = scenario == AccessScenario::EipServiceGateway;
    if gateway && !m.cluster_ips.is_empty() {
        return Err(c.err(
            "spec.clusterIPs",
            "a service-gateway Service has no cluster IP (its backends are in several VPCs); clients reach it at spec.eip",
        ));
    }
    if m.cluster_ips.is_empty() && !gateway {
        return Err(c.err("spec.clusterIPs", "at least one cluster IP is required"));
    }
    let cluster_ips = m
        .cluster_ips
        .iter()
        .enumerate()
        .map(|(i, s)| c.ip(&format!("spec.clusterIPs[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    if m.ports.is_empty() {
        return Err(c.err("spec.ports", "at least one port is required"));
    }
    // Counts first: the duplicate checks below are quadratic, so an absurd list
    // is refused before they run.
    if m.ports.len() > MAX_PORTS {
        return Err(c.err(
            "spec.ports",
            format!("{} ports; at most {MAX_PORTS}", m.ports.len()),
        ));
    }
    if m.backends.len() > MAX_BACKENDS {
        return Err(c.err(
            "spec.backends",
            format!("{} backends; at most {MAX_BACKENDS}", m.backends.len()),
        ));
    }
    let mut ports: Vec<ServicePort> = Vec::with_capacity(m.ports.len());
    for (i, p) in m.ports.iter().enumerate() {
        let protocol = match pb::Protocol::try_from(p.protocol) {
            Ok(pb::Protocol::Tcp) => Protocol::Tcp,
            Ok(pb::Protocol::Udp) => Protocol::Udp,
            Ok(pb::Protocol::Sctp) => Protocol::Sctp,
            _ => {
                return Err(c.err(
                    format!("spec.ports[{i}].protocol"),
                    "protocol must be TCP, UDP or SCTP",
                ))
            }
        };
        let port = c.port(&format!("spec.ports[{i}].port"), p.port)?;
        let target_port = c.port(&format!("spec.ports[{i}].targetPort"), p.target_port)?;
        if ports
            .iter()
            .any(|q| q.protocol == protocol && q.port == port)
        {
            return Err(c.err(
                format!("spec.ports[{i}]"),
                format!("{}/{port} is listed twice", protocol.as_str()),
            ));
        }
        ports.push(ServicePort {
            name: p.name.clone(),
            protocol,
            port,
            target_port,
        });
    }
    let mut backends: Vec<Backend> = Vec::with_capacity(m.backends.len());
    for (i, b) in m.backends.iter().enumerate() {
        let ip = c.ip(&format!("spec.backends[{i}].ip"), &b.ip)?;
        let bvpc = if b.vpc.is_empty() {
            vpc.clone()
        } else {
            c.name_ref(&format!("spec.backends[{i}].vpc"), &b.vpc)?
        };
        if backends.iter().any(|x| x.ip == ip && x.vpc == bvpc) {
            return Err(c.err(
                format!("spec.backends[{i}].ip"),
                format!("backend {ip} in Vpc/{bvpc} is listed twice"),
            ));
        }
        backends.push(Backend {
            ip,
            weight: b.weight,
            workload: (!b.workload.is_empty()).then(|| b.workload.clone()),
            vpc: bvpc,
        });
    }
    let affinity_timeout = match &m.session_affinity {
        None => None,
        Some(a) if (1..=86_400).contains(&a.timeout_seconds) => Some(a.timeout_seconds),
        Some(a) => {
            return Err(c.err(
                "spec.sessionAffinity.timeoutSeconds",
                format!("{} is out of range (1..=86400)", a.timeout_seconds),
            ))
        }
    };
    let eip = if m.eip.is_empty() {
        None
    } else {
        Some(c.ipv4("spec.eip", &m.eip)?)
    };
    if matches!(
        scenario,
        AccessScenario::EipLoadBalancer | AccessScenario::EipServiceGateway
    ) && eip.is_none()
    {
        return Err(c.err("spec.eip", "an EIP scenario needs spec.eip"));
    }
    let eip_node = if m.eip_node.is_empty() {
        None
    } else {
        Some(c.name_ref("spec.eipNode", &m.eip_node)?)
    };
    if eip.is_some() != eip_node.is_some() {
        return Err(c.err(
            "spec.eipNode",
            "spec.eip and spec.eipNode go together: the EIP needs the DPU node that owns it",
        ));
    }
    Ok(Service {
        name: m.name.clone(),
        vpc,
        cluster_ips,
        ports,
        backends,
        affinity_timeout,
        eip,
        scenario,
        external_traffic_local: m.external_traffic_local,
        eip_node,
    })
}

pub fn probe_from_proto(m: &pb::NetworkProbe) -> Result<NetworkProbe, ObjectError> {
    let c = ctx(Kind::NetworkProbe, &m.name)?;
    let service = c.name_ref("spec.service", &m.service)?;
    let probe_type = match pb::ProbeType::try_from(m.r#type) {
        Ok(pb::ProbeType::Tcp) => ProbeType::Tcp,
        Ok(pb::ProbeType::Http) => ProbeType::Http,
        _ => return Err(c.err("spec.type", "type must be TCP or HTTP")),
    };
    let port = c.port("spec.port", m.port)?;
    if probe_type == ProbeType::Http && !m.http_path.starts_with('/') {
        return Err(c.err(
            "spec.httpPath",
            "an HTTP probe needs a path starting with '/'",
        ));
    }
    let status = |v: u32, default: u16, field: &str| match v {
        0 => Ok(default),
        100..=599 => Ok(v as u16),
        _ => Err(c.err(field, format!("{v} is not an HTTP status (100..=599)"))),
    };
    let lo = status(m.http_status_min, 200, "spec.httpStatusMin")?;
    let hi = status(m.http_status_max, 399, "spec.httpStatusMax")?;
    if lo > hi {
        return Err(c.err(
            "spec.httpStatusMax",
            format!("{hi} is below spec.httpStatusMin ({lo})"),
        ));
    }
    if !(100..=3_600_000).contains(&m.period_ms) {
        return Err(c.err("spec.periodMs", "period must be 100..=3600000 ms"));
    }
    if m.timeout_ms == 0 || m.timeout_ms > m.period_ms {
        return Err(c.err("spec.timeoutMs", "timeout must be 1..=period ms"));
    }
    for (field, v) in [
        ("spec.successThreshold", m.success_threshold),
        ("spec.failureThreshold", m.failure_threshold),
    ] {
        if !(1..=100).contains(&v) {
            return Err(c.err(field, format!("{v} is out of range (1..=100)")));
        }
    }
    Ok(NetworkProbe {
        name: m.name.clone(),
        service,
        probe_type,
        port,
        http_path: m.http_path.clone(),
        http_statuses: lo..=hi,
        period_ms: m.period_ms,
        timeout_ms: m.timeout_ms,
        success_threshold: m.success_threshold,
        failure_threshold: m.failure_threshold,
    })
}

pub fn node_from_proto(m: &pb::Node) -> Result<Node, ObjectError> {
    let c = ctx(Kind::Node, &m.name)?;
    let tunnel_ip = c.ipv4("spec.tunnelIP", &m.tunnel_ip)?;
    if tunnel_ip.is_unspecified()
        || tunnel_ip.is_loopback()
        || tunnel_ip.is_multicast()
        || tunnel_ip.is_broadcast()
    {
        return Err(c.err(
            "spec.tunnelIP",
            format!("{tunnel_ip} is not a unicast underlay address"),
        ));
    }
    let host = match (m.host_ip.is_empty(), m.host_mac.is_empty()) {
        (true, true) => None,
        (false, false) => Some((
            c.ipv4("spec.hostIP", &m.host_ip)?,
            m.host_mac
                .parse::<Mac>()
                .map_err(|e| c.err("spec.hostMAC", e))?,
        )),
        (true, false) => return Err(c.err("spec.hostIP", "is required with spec.hostMAC")),
        (false, true) => return Err(c.err("spec.hostMAC", "is required with spec.hostIP")),
    };
    Ok(Node {
        name: m.name.clone(),
        tunnel_ip,
        host,
    })
}

/// Converts one wire object. An empty oneof is an error of its own.
pub fn object_from_proto(m: &pb::Object) -> Result<Object, ObjectError> {
    use pb::object::Object as O;
    match &m.object {
        Some(O::Vpc(v)) => vpc_from_proto(v).map(Object::Vpc),
        Some(O::Subnet(v)) => subnet_from_proto(v).map(Object::Subnet),
        Some(O::Workload(v)) => workload_from_proto(v).map(Object::Workload),
        Some(O::Service(v)) => service_from_proto(v).map(Object::Service),
        Some(O::NetworkProbe(v)) => probe_from_proto(v).map(Object::NetworkProbe),
        Some(O::Node(v)) => node_from_proto(v).map(Object::Node),
        None => Err(ObjectError::new(
            ObjectKey::new(Kind::Vpc, "<unknown>"),
            "object",
            "empty object (no kind set)",
        )),
    }
}

pub fn kind_from_proto(k: i32) -> Option<Kind> {
    match pb::Kind::try_from(k).ok()? {
        pb::Kind::Vpc => Some(Kind::Vpc),
        pb::Kind::Subnet => Some(Kind::Subnet),
        pb::Kind::Workload => Some(Kind::Workload),
        pb::Kind::Service => Some(Kind::Service),
        pb::Kind::NetworkProbe => Some(Kind::NetworkProbe),
        pb::Kind::Node => Some(Kind::Node),
        pb::Kind::Unspecified => None,
    }
}

pub fn kind_to_proto(k: Kind) -> pb::Kind {
    match k {
        Kind::Vpc => pb::Kind::Vpc,
        Kind::Subnet => pb::Kind::Subnet,
        Kind::Workload => pb::Kind::Workload,
        Kind::Service => pb::Kind::Service,
        Kind::NetworkProbe => pb::Kind::NetworkProbe,
        Kind::Node => pb::Kind::Node,
    }
}

pub fn key_to_proto(k: &ObjectKey) -> pb::ObjectKey {
    pb::ObjectKey {
        kind: kind_to_proto(k.kind) as i32,
        name: k.name.clone(),
    }
}

pub fn error_to_proto(e: &ObjectError) -> pb::ObjectError {
    pb::ObjectError {
        key: Some(key_to_proto(&e.key)),
        field: e.field.clone(),
        message: e.message.clone(),
    }
}

pub fn error_from_proto(e: &pb::ObjectError) -> ObjectError {
    let key = e
        .key
        .as_ref()
        .and_then(|k| kind_from_proto(k.kind).map(|kind| ObjectKey::new(kind, &k.name)))
        .unwrap_or_else(|| ObjectKey::new(Kind::Vpc, "<unknown>"));
    ObjectError::new(key, &e.field, &e.message)
}

/// An error as an operator reads it: `Kind/name: field: message`, or, for an
/// error about no object in particular (the whole update, the switch),
/// `field: message`.
pub fn error_text(e: &pb::ObjectError) -> String {
    match e
        .key
        .as_ref()
        .and_then(|k| kind_from_proto(k.kind).map(|kind| (kind, k)))
    {
        Some((kind, k)) => {
            ObjectError::new(ObjectKey::new(kind, &k.name), &e.field, &e.message).to_string()
        }
        None => format!("{}: {}", e.field, e.message),
    }
}

/// Domain → wire, used by the controller.
pub fn object_to_proto(o: &Object) -> pb::Object {
    use pb::object::Object as O;
    let inner = match o {
        Object::Vpc(v) => O::Vpc(pb::Vpc {
            name: v.name.clone(),
            vni: v.vni,
        }),
        Object::Subnet(s) => O::Subnet(pb::Subnet {
            name: s.name.clone(),
            vpc: s.vpc.clone(),
            cidr: s.cidr.to_string(),
            gateway: s.gateway.to_string(),
            node_blocks: s
                .node_blocks
                .iter()
                .map(|b| pb::NodeBlock {
                    node: b.node.clone(),
                    cidr: b.cidr.to_string(),
                })
                .collect(),
        }),
        Object::Workload(w) => O::Workload(pb::Workload {
            name: w.name.clone(),
            kind: match w.kind {
                WorkloadKind::Pod => pb::WorkloadKind::Pod,
                WorkloadKind::Vm => pb::WorkloadKind::Vm,
                WorkloadKind::BareMetal => pb::WorkloadKind::BareMetal,
                WorkloadKind::VnicIp => pb::WorkloadKind::VnicIp,
            } as i32,
            vpc: w.vpc.clone(),
            ip: w.ip.to_string(),
            ipv6: w.ipv6.map(|a| a.to_string()).unwrap_or_default(),
            mac: w.mac.map(|m| m.to_string()).unwrap_or_default(),
            labels: w
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            node: w.node.clone(),
            port: w.port.clone(),
        }),
        Object::Service(s) => O::Service(pb::Service {
            name: s.name.clone(),
            vpc: s.vpc.clone(),
            cluster_ips: s.cluster_ips.iter().map(|i| i.to_string()).collect(),
            ports: s
                .ports
                .iter()
                .map(|p| pb::ServicePort {
                    name: p.name.clone(),
                    protocol: match p.protocol {
                        Protocol::Tcp => pb::Protocol::Tcp,
                        Protocol::Udp => pb::Protocol::Udp,
                        Protocol::Sctp => pb::Protocol::Sctp,
                    } as i32,
                    port: p.port.into(),
                    target_port: p.target_port.into(),
                })
                .collect(),
            backends: s
                .backends
                .iter()
                .map(|b| pb::Backend {
                    ip: b.ip.to_string(),
                    weight: b.weight,
                    workload: b.workload.clone().unwrap_or_default(),
                    vpc: if b.vpc == s.vpc {
                        String::new()
                    } else {
                        b.vpc.clone()
                    },
                })
                .collect(),
            session_affinity: s
                .affinity_timeout
                .map(|t| pb::SessionAffinity { timeout_seconds: t }),
            eip: s.eip.map(|e| e.to_string()).unwrap_or_default(),
            scenario: match s.scenario {
                AccessScenario::ClusterIp => pb::AccessScenario::ClusterIp,
                AccessScenario::NodeClusterIp => pb::AccessScenario::NodeClusterIp,
                AccessScenario::EipLoadBalancer => pb::AccessScenario::EipLoadBalancer,
                AccessScenario::EipServiceGateway => pb::AccessScenario::EipServiceGateway,
            } as i32,
            external_traffic_local: s.external_traffic_local,
            eip_node: s.eip_node.clone().unwrap_or_default(),
        }),
        Object::NetworkProbe(p) => O::NetworkProbe(pb::NetworkProbe {
            name: p.name.clone(),
            service: p.service.clone(),
            r#type: match p.probe_type {
                ProbeType::Tcp => pb::ProbeType::Tcp,
                ProbeType::Http => pb::ProbeType::Http,
            } as i32,
            port: p.port.into(),
            http_path: p.http_path.clone(),
            http_status_min: u32::from(*p.http_statuses.start()),
            http_status_max: u32::from(*p.http_statuses.end()),
            period_ms: p.period_ms,
            timeout_ms: p.timeout_ms,
            success_threshold: p.success_threshold,
            failure_threshold: p.failure_threshold,
        }),
        Object::Node(n) => O::Node(pb::Node {
            name: n.name.clone(),
            tunnel_ip: n.tunnel_ip.to_string(),
            host_ip: n.host.map(|h| h.0.to_string()).unwrap_or_default(),
            host_mac: n.host.map(|h| h.1.to_string()).unwrap_or_default(),
        }),
    };
    pb::Object {
        object: Some(inner),
    }
}

#[cfg(test)]
mod error_text_tests {
    use super::*;

    #[test]
    fn keyless_errors_name_no_object() {
        let e = pb::ObjectError {
            key: None,
            field: "switch".into(),
            message: "the switch rejected the bundle".into(),
        };
        assert_eq!(error_text(&e), "switch: the switch rejected the bundle");
        let keyed = pb::ObjectError {
            key: Some(key_to_proto(&ObjectKey::new(Kind::Service, "web"))),
            field: "spec.ports".into(),
            message: "bad".into(),
        };
        assert_eq!(error_text(&keyed), "YusurService/web: spec.ports: bad");
    }
}
