//! A ClusterIP Service of the tests on a real switch: TCP 80 → 8080 over
//! explicit backends in one VPC, each of the same weight.

use std::net::Ipv4Addr;

use dpu_model::{AccessScenario, Backend, Protocol, Service, ServicePort};

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
