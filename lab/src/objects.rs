//! Small intent objects for tests that talk to an agent directly (through
//! [`crate::fake_controller`]): one VPC `vpc-a` with the Subnet `net`
//! (10.0.1.0/24), pods on [`crate::fixture::NODE`], ClusterIP Services on
//! TCP/80 → 8080, and the Update that carries them.

use std::net::Ipv4Addr;

use dpu_model::*;
use dpu_proto::v1 as pb;

use crate::fixture::NODE;

/// `vpc-a` (VNI 100) and its Subnet `net`, 10.0.1.0/24 with gateway .1.
pub fn vpc_a() -> Vec<Object> {
    vec![
        Object::Vpc(Vpc {
            name: "vpc-a".into(),
            vni: 100,
        }),
        Object::Subnet(Subnet {
            name: "net".into(),
            vpc: "vpc-a".into(),
            cidr: "10.0.1.0/24".parse().expect("a literal CIDR"),
            gateway: Ipv4Addr::new(10, 0, 1, 1).into(),
            node_blocks: vec![],
        }),
    ]
}

/// A pod in `vpc-a` at 10.0.1.`last` on this node, its port named after it.
pub fn workload(name: &str, last: u8) -> Object {
    Object::Workload(Workload {
        name: name.into(),
        kind: WorkloadKind::Pod,
        vpc: "vpc-a".into(),
        ip: Ipv4Addr::new(10, 0, 1, last),
        ipv6: None,
        mac: Some(Mac([0x0a, 0, 0, 0, 1, last])),
        labels: Default::default(),
        node: NODE.into(),
        port: name.into(),
    })
}

/// A ClusterIP Service at 10.96.0.`vip`, TCP/80 → 8080, over `backends` in
/// `vpc-a` (weight 1 each).
pub fn service(name: &str, vip: u8, backends: &[Ipv4Addr]) -> Object {
    Object::Service(tcp_service(
        name,
        "vpc-a",
        Ipv4Addr::new(10, 96, 0, vip),
        backends,
        1,
    ))
}

/// A ClusterIP Service at `vip`, TCP 80 → 8080, over explicit `backends` in
/// `vpc`, each of weight `weight`.
pub fn tcp_service(
    name: &str,
    vpc: &str,
    vip: Ipv4Addr,
    backends: &[Ipv4Addr],
    weight: u32,
) -> Service {
    Service {
        name: name.into(),
        vpc: vpc.into(),
        cluster_ips: vec![vip.into()],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        }],
        backends: backends
            .iter()
            .map(|ip| Backend {
                ip: (*ip).into(),
                weight,
                workload: None,
                vpc: vpc.into(),
            })
            .collect(),
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    }
}

/// An Update (nonce `n<version>`) that upserts `objs`.
pub fn update(version: u64, base: u64, snapshot: bool, objs: Vec<Object>) -> pb::ControllerMessage {
    pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Update(pb::Update {
            version,
            nonce: format!("n{version}"),
            snapshot,
            base_version: base,
            upserts: objs.iter().map(object_to_proto).collect(),
            deletes: vec![],
            store_id: String::new(),
        })),
    }
}
