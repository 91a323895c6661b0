//! The benchmark's intent: one VPC, one Subnet, three DPU nodes, pods on this node
//! and on the two others, and N ClusterIP Services of M backends each. Pure data;
//! the same Services become the kube-proxy rulesets (`to_svc_specs`), so every
//! system is given exactly the same work.

use std::net::Ipv4Addr;

use dpu_model::{
    AccessScenario, Backend, Mac, Node, Object, Protocol, Service, ServicePort, Subnet, Vpc,
    Workload, WorkloadKind,
};

use crate::kube::SvcSpec;

/// The node the agent under test is (the lab's node name).
pub const NODE: &str = dpu_lab::fixture::NODE;
pub const VPC: &str = "vpc-a";
/// Pods on this node, each on a port of the bridge (`pl<i>`, iface-id `pod-l<i>`).
pub const LOCAL_PODS: usize = 10;
/// Pods on each of the two other nodes (reached through the Geneve tunnel).
pub const REMOTE_PODS_PER_NODE: usize = 1000;
/// Of each Service's backends, this many are local pods; the rest are remote.
pub const LOCAL_BACKENDS: usize = 3;
/// Every `UDP_EVERY`th Service is UDP 53→5353; the others TCP 80→8080.
pub const UDP_EVERY: usize = 10;

/// The Service the restart probe goes through: 10.95.0.1:80 → the lab host `echo`.
pub const PROBE_SERVICE: &str = "probe";
pub const PROBE_VIP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
pub const PROBE_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const PROBE_ECHO_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// The generated intent for N services of `endpoints` backends.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Everything but the Services: VPC, Subnet, nodes, workloads.
    pub base: Vec<Object>,
    pub services: Vec<Service>,
    /// All pod addresses, locals first, so churn can pick replacements.
    pub pods: Vec<Ipv4Addr>,
}

impl Generated {
    /// The full snapshot, in the order the controller would send it.
    pub fn objects(&self) -> Vec<Object> {
        let mut v = self.base.clone();
        v.extend(self.services.iter().cloned().map(Object::Service));
        v
    }
}

/// The iface-id of local pod `i` (also its workload name).
pub fn local_port(i: usize) -> String {
    format!("pod-l{i}")
}

fn local_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + i as u8)
}

fn remote_ip(node: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2 + node as u8, (i / 250) as u8, (i % 250 + 2) as u8)
}

fn mac(a: u8, b: u8, c: u8) -> Mac {
    Mac([0x0a, 0x58, 0, a, b, c])
}

/// The VIP of Service `i`: 10.96.0.1 upwards.
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0001u32 + i as u32)
}

/// A workload (pod) object.
pub fn workload(name: &str, ip: Ipv4Addr, m: Mac, node: &str) -> Object {
    Object::Workload(Workload {
        name: name.into(),
        kind: WorkloadKind::Pod,
        vpc: VPC.into(),
        ip,
        ipv6: None,
        mac: Some(m),
        labels: Default::default(),
        node: node.into(),
        port: name.into(),
    })
}

/// A ClusterIP Service on one port with equal-weight backends.
pub fn service(name: &str, vip: Ipv4Addr, udp: bool, backends: &[Ipv4Addr]) -> Service {
    let (protocol, port, target_port) = if udp {
        (Protocol::Udp, 53, 5353)
    } else {
        (Protocol::Tcp, 80, 8080)
    };
    Service {
        name: name.into(),
        vpc: VPC.into(),
        cluster_ips: vec![vip.into()],
        ports: vec![ServicePort {
            name: if udp { "dns".into() } else { "http".into() },
            protocol,
            port,
            target_port,
        }],
        backends: backends
            .iter()
            .map(|ip| Backend {
                ip: (*ip).into(),
                weight: 1,
                workload: None,
                vpc: VPC.into(),
            })
            .collect(),
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    }
}

/// N Services × `endpoints` backends (at most `LOCAL_PODS` + 2 × remote pods).
pub fn generate(n: usize, endpoints: usize) -> Generated {
    let mut base = vec![
        Object::Vpc(Vpc {
            name: VPC.into(),
            vni: 100,
        }),
        Object::Subnet(Subnet {
            name: "pods".into(),
            vpc: VPC.into(),
            cidr: "10.0.0.0/12".parse().expect("a CIDR"),
            gateway: GATEWAY.into(),
            node_blocks: vec![],
        }),
    ];
    for (i, node) in [NODE, "dpu-2", "dpu-3"].iter().enumerate() {
        base.push(Object::Node(Node {
            name: (*node).into(),
            tunnel_ip: Ipv4Addr::new(192, 168, 50, 1 + i as u8),
            host: None,
        }));
    }
    let mut pods = Vec::new();
    for i in 0..LOCAL_PODS {
        base.push(workload(
            &local_port(i),
            local_ip(i),
            mac(1, 0, i as u8),
            NODE,
        ));
        pods.push(local_ip(i));
    }
    for node in 0..2 {
        for i in 0..REMOTE_PODS_PER_NODE {
            let ip = remote_ip(node, i);
            base.push(workload(
                &format!("pod-r{node}-{i}"),
                ip,
                mac(2 + node as u8, (i >> 8) as u8, i as u8),
                if node == 0 { "dpu-2" } else { "dpu-3" },
            ));
            pods.push(ip);
        }
    }
    let remote = 2 * REMOTE_PODS_PER_NODE;
    let local = LOCAL_BACKENDS.min(endpoints);
    let services = (0..n)
        .map(|i| {
            let mut b: Vec<Ipv4Addr> = (0..local).map(|j| pods[(i + j) % LOCAL_PODS]).collect();
            b.extend((0..endpoints - local).map(|j| pods[LOCAL_PODS + (i * 7 + j) % remote]));
            service(
                &format!("svc-{i}"),
                vip(i),
                i % UDP_EVERY == UDP_EVERY - 1,
                &b,
            )
        })
        .collect();
    Generated {
        base,
        services,
        pods,
    }
}

/// Service `s` with backend slot `slot` replaced by a pod it does not use yet;
/// `salt` varies the choice from one change to the next.
pub fn replace_one_backend(s: &Service, pods: &[Ipv4Addr], slot: usize, salt: usize) -> Service {
    let mut s = s.clone();
    let used: Vec<std::net::IpAddr> = s.backends.iter().map(|b| b.ip).collect();
    let slot = slot % s.backends.len().max(1);
    let mut k = salt.wrapping_mul(7919);
    let new = loop {
        let cand = pods[LOCAL_PODS + k % (pods.len() - LOCAL_PODS)];
        if !used.contains(&cand.into()) {
            break cand;
        }
        k += 1;
    };
    if let Some(b) = s.backends.get_mut(slot) {
        b.ip = new.into();
    }
    s
}

/// The kube-proxy view of the same Services: VIP:port → endpoint IP:targetPort.
pub fn to_svc_specs(services: &[Service]) -> Vec<SvcSpec> {
    services
        .iter()
        .flat_map(|s| {
            s.ports.iter().filter_map(move |p| {
                let vip = s.cluster_ips.iter().find_map(|ip| match ip {
                    std::net::IpAddr::V4(v) => Some(*v),
                    std::net::IpAddr::V6(_) => None,
                })?;
                Some(SvcSpec {
                    vip,
                    port: p.port,
                    proto: match p.protocol {
                        Protocol::Udp => "udp",
                        _ => "tcp",
                    },
                    endpoints: s
                        .backends
                        .iter()
                        .filter_map(|b| match b.ip {
                            std::net::IpAddr::V4(v) => Some((v, p.target_port)),
                            std::net::IpAddr::V6(_) => None,
                        })
                        .collect(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_intent_is_valid_and_sized() {
        let g = generate(100, 10);
        let mut intent = dpu_model::Intent::default();
        for o in g.objects() {
            intent.upsert(o);
        }
        assert_eq!(dpu_model::validate(&intent), vec![]);
        assert_eq!(g.services.len(), 100);
        assert!(g.services.iter().all(|s| s.backends.len() == 10));
        let specs = to_svc_specs(&g.services);
        assert_eq!(specs.len(), 100);
        assert_eq!(specs.iter().filter(|s| s.proto == "udp").count(), 10);
    }

    #[test]
    fn a_replaced_backend_is_new_and_the_rest_stay() {
        let g = generate(10, 10);
        let s = &g.services[3];
        let r = replace_one_backend(s, &g.pods, 4, 17);
        let diff: Vec<_> = s
            .backends
            .iter()
            .zip(&r.backends)
            .filter(|(a, b)| a.ip != b.ip)
            .collect();
        assert_eq!(diff.len(), 1);
        assert!(!s.backends.iter().any(|b| b.ip == r.backends[4].ip));
    }
}
