//! The intent both examples measure: N Services × 10 backends in one VPC
//! (one /8 Subnet), N workloads (at least 100) spread over this node and two
//! other DPUs, ports TCP/80 and for every other Service UDP/53. The switch that
//! accepts every bundle at once is `dpu_agent::reconcile::backend::testkit`'s.

use std::net::{IpAddr, Ipv4Addr};

use dpu_agent::compile::NodeFacts;
use dpu_model::*;

pub const NODES: [&str; 3] = ["dpu-1", "dpu-2", "dpu-3"];

pub fn wl_ip(i: usize) -> Ipv4Addr {
    let n = i as u32 + 2;
    Ipv4Addr::new(10, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

pub fn build(n: usize) -> (Intent, NodeFacts) {
    let mut i = Intent::default();
    i.vpcs.insert(
        "vpc-a".into(),
        Vpc {
            name: "vpc-a".into(),
            vni: 100,
        },
    );
    i.subnets.insert(
        "pods".into(),
        Subnet {
            name: "pods".into(),
            vpc: "vpc-a".into(),
            cidr: "10.0.0.0/8".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            node_blocks: vec![],
        },
    );
    for (k, node) in NODES.iter().enumerate() {
        i.nodes.insert(
            node.to_string(),
            Node {
                name: node.to_string(),
                tunnel_ip: Ipv4Addr::new(192, 168, 50, k as u8 + 1),
                host: None,
            },
        );
    }
    let workloads = n.max(100);
    let mut facts = NodeFacts {
        node: "dpu-1".into(),
        ..Default::default()
    };
    facts
        .ports
        .insert(dpu_agent::compile::pipeline::TUNNEL_IFACE_ID.into(), 1);
    for w in 0..workloads {
        let node = NODES[w % 3];
        let name = format!("w{w}");
        if node == "dpu-1" {
            facts.ports.insert(name.clone(), 10 + w as u32);
        }
        i.workloads.insert(
            name.clone(),
            std::sync::Arc::new(Workload {
                name: name.clone(),
                kind: WorkloadKind::Pod,
                vpc: "vpc-a".into(),
                ip: wl_ip(w),
                ipv6: None,
                mac: Some(Mac([0x0a, 0, (w >> 16) as u8, (w >> 8) as u8, w as u8, 1])),
                labels: Default::default(),
                node: node.into(),
                port: name,
            }),
        );
    }
    for s in 0..n {
        i.services.insert(
            format!("svc{s:05}"),
            std::sync::Arc::new(service(s, workloads, 0)),
        );
    }
    (i, facts)
}

pub fn service(s: usize, workloads: usize, shift: usize) -> Service {
    let mut ports = vec![ServicePort {
        name: "p".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
    }];
    if s.is_multiple_of(2) {
        ports.push(ServicePort {
            name: "u".into(),
            protocol: Protocol::Udp,
            port: 53,
            target_port: 5353,
        });
    }
    let vip = 0x0a60_0000u32 + s as u32 + 1; // 10.96.x.x
    Service {
        name: format!("svc{s:05}"),
        vpc: "vpc-a".into(),
        cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(vip))],
        ports,
        backends: (0..10)
            .map(|k| {
                let w = if k == 0 {
                    s * 7 + 10 + shift % (workloads - 20)
                } else {
                    s * 7 + k
                } % workloads;
                Backend {
                    ip: IpAddr::V4(wl_ip(w)),
                    weight: 1,
                    workload: Some(format!("w{w}")),
                    vpc: "vpc-a".into(),
                }
            })
            .collect(),
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    }
}
