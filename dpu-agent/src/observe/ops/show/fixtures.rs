//! Hand-built inputs for the `show` renderers' tests: a small intent, the
//! load-balancer index and installed state it would give.

use std::collections::BTreeMap;
use std::sync::Arc;

use dpu_model::{
    AccessScenario, Backend, Intent, Mac, NetworkProbe, Node, NodeBlock, ProbeType, Protocol,
    Service, ServicePort, Subnet, Vpc, Workload, WorkloadKind,
};

use crate::compile::flows::{Bucket, DesiredState, FlowBody, FlowKey, Group, HashField};
use crate::compile::pipeline::cookie::{Category, Cookie};
use crate::observe::lb_index::{BackendState, BackendStatus, GroupView, ServiceView};
use crate::observe::{Installed, LbIndex};
use ::openflow::ir::Field;

pub fn sample_intent() -> Intent {
    let mut i = Intent::default();
    i.vpcs.insert(
        "blue".into(),
        Vpc {
            name: "blue".into(),
            vni: 100,
        },
    );
    i.subnets.insert(
        "blue-a".into(),
        Subnet {
            name: "blue-a".into(),
            vpc: "blue".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            node_blocks: vec![NodeBlock {
                node: "dpu-1".into(),
                cidr: "10.0.0.0/26".parse().unwrap(),
            }],
        },
    );
    i.workloads.insert(
        "web-1".into(),
        std::sync::Arc::new(Workload {
            name: "web-1".into(),
            kind: WorkloadKind::Pod,
            vpc: "blue".into(),
            ip: "10.0.0.5".parse().unwrap(),
            ipv6: None,
            mac: Some(Mac([2, 0, 0, 0, 0, 5])),
            labels: Default::default(),
            node: "dpu-1".into(),
            port: "web-1-eth0".into(),
        }),
    );
    i.services.insert(
        "web".into(),
        std::sync::Arc::new(Service {
            name: "web".into(),
            vpc: "blue".into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
            }],
            backends: vec![Backend {
                ip: "10.0.0.5".parse().unwrap(),
                weight: 2,
                workload: Some("web-1".into()),
                vpc: "blue".into(),
            }],
            affinity_timeout: Some(10800),
            eip: None,
            scenario: AccessScenario::ClusterIp,
            external_traffic_local: false,
            eip_node: None,
        }),
    );
    i.probes.insert(
        "web-http".into(),
        NetworkProbe {
            name: "web-http".into(),
            service: "web".into(),
            probe_type: ProbeType::Http,
            port: 8080,
            http_path: "/healthz".into(),
            http_statuses: 200..=399,
            period_ms: 1000,
            timeout_ms: 500,
            success_threshold: 1,
            failure_threshold: 3,
        },
    );
    i.nodes.insert(
        "dpu-1".into(),
        Node {
            name: "dpu-1".into(),
            tunnel_ip: "192.168.1.1".parse().unwrap(),
            host: None,
        },
    );
    i
}

/// The cookie the compiler gives Service `name`'s flows and groups.
pub fn service_cookie(name: &str) -> Cookie {
    let s = Service {
        name: name.into(),
        vpc: String::new(),
        cluster_ips: vec![],
        ports: vec![],
        backends: vec![],
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    };
    crate::compile::service_cookie(&s)
}

fn backend(
    ip: &str,
    workload: Option<&str>,
    weight: u32,
    state: BackendState,
    local: bool,
) -> (Backend, BackendStatus) {
    (
        Backend {
            vpc: "blue".into(),
            ip: ip.parse().unwrap(),
            workload: workload.map(Into::into),
            weight,
        },
        BackendStatus { state, local },
    )
}

/// A ClusterIP Service of VPC `blue` on `vip`, as the LB index holds it.
fn view(
    name: &str,
    vip: &str,
    ports: Vec<ServicePort>,
    backends: Vec<(Backend, BackendStatus)>,
    affinity_timeout: Option<u32>,
    groups: Vec<GroupView>,
) -> ServiceView {
    let (backends, status): (Vec<Backend>, Vec<BackendStatus>) = backends.into_iter().unzip();
    ServiceView {
        service: Arc::new(Service {
            name: name.into(),
            vpc: "blue".into(),
            cluster_ips: vec![vip.parse().unwrap()],
            ports,
            backends,
            affinity_timeout,
            eip: None,
            scenario: AccessScenario::ClusterIp,
            external_traffic_local: false,
            eip_node: None,
        }),
        cookie: service_cookie(name).value(0),
        status: status.into(),
        groups: groups.into(),
    }
}

/// Service `web` (10.96.0.10, http tcp/80 -> 8080, group 5 with buckets 11
/// and 12 for web-1 and 21 for web-2; a third backend unhealthy) and Service
/// `db` (no ports).
pub fn lb() -> LbIndex {
    let web = view(
        "web",
        "10.96.0.10",
        vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        }],
        vec![
            backend("10.0.0.5", Some("web-1"), 2, BackendState::Serving, true),
            backend("10.0.0.6", Some("web-2"), 1, BackendState::Serving, false),
            backend("10.0.0.7", None, 1, BackendState::Unhealthy, false),
        ],
        Some(10800),
        vec![GroupView {
            id: 5,
            port: 0,
            v6: false,
            local: false,
            installed: true,
            buckets: [(11, 0), (12, 0), (21, 1)].into_iter().collect(),
            mismatch: false,
        }],
    );
    let db = view("db", "10.96.0.20", vec![], vec![], None, vec![]);
    LbIndex {
        version: 7,
        groups: BTreeMap::from([(5, ("web".into(), 0))]),
        cookies: BTreeMap::from([(web.cookie, "web".into()), (db.cookie, "db".into())]),
        services: BTreeMap::from([("web".into(), web), ("db".into(), db)]),
    }
}

fn flow(
    d: &mut DesiredState,
    table: u8,
    priority: u16,
    matches: &str,
    actions: &str,
    cookie: Cookie,
) {
    d.flows.insert(
        FlowKey::new(table, priority, matches.parse().expect("a fixture match")),
        FlowBody::new(actions.parse().expect("fixture actions"), cookie),
    );
}

/// A few flows of every kind `show pipeline` labels, and `web`'s group.
pub fn installed() -> Installed {
    let web = service_cookie("web");
    let mut d = DesiredState::default();
    flow(
        &mut d,
        0,
        0,
        "",
        "drop",
        Cookie::new(Category::Pipeline, "pipeline"),
    );
    flow(
        &mut d,
        0,
        100,
        "in_port=3",
        "set_field:0x1->reg0,goto_table:10",
        Cookie::new(Category::Workload, "web-1"),
    );
    flow(
        &mut d,
        40,
        100,
        "reg0=0x1,tcp,nw_dst=10.96.0.10,tp_dst=80",
        "group:5",
        web,
    );
    flow(
        &mut d,
        40,
        100,
        "reg0=0x1,tcp,nw_dst=10.96.0.20,tp_dst=5432",
        "drop",
        service_cookie("db"),
    );
    flow(
        &mut d,
        45,
        100,
        "reg0=0x1,reg3=0xa000005,tcp,reg4=0x1f90",
        "ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=10.0.0.5:8080))",
        Cookie::new(Category::Endpoint, "blue/tcp/10.0.0.5:8080"),
    );
    // The same address and port in another VPC (they may overlap): not web's.
    flow(
        &mut d,
        45,
        100,
        "reg0=0x2,reg3=0xa000005,tcp,reg4=0x1f90",
        "ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=10.0.0.5:8080))",
        Cookie::new(Category::Endpoint, "green/tcp/10.0.0.5:8080"),
    );
    flow(
        &mut d,
        50,
        200,
        "reg0=0x1,ip,nw_dst=10.0.0.0/24",
        "goto_table:48",
        Cookie::new(Category::Vpc, "blue"),
    );
    flow(
        &mut d,
        77,
        1,
        "",
        "drop",
        Cookie::new(Category::Node, "dpu-9"),
    );
    d.groups.insert(
        5,
        Arc::new(Group {
            id: 5,
            hash_fields: vec![
                HashField::whole(Field::IpSrc),
                HashField::whole(Field::IpDst),
            ],
            buckets: vec![
                bucket(11, "set_field:0xa000005->reg3,set_field:0x1f90->reg4"),
                bucket(12, "set_field:0xa000005->reg3,set_field:0x1f90->reg4"),
                bucket(21, "set_field:0xa000006->reg3,set_field:0x1f90->reg4"),
            ],
            owner: web,
            learns: false,
        }),
    );
    d.groups.insert(
        9,
        Arc::new(Group {
            id: 9,
            hash_fields: vec![HashField::whole(Field::IpSrc)],
            buckets: vec![bucket(0, "drop")],
            owner: Cookie::new(Category::Service, "gone"),
            learns: false,
        }),
    );
    Installed {
        version: 7,
        round: 3,
        state: Arc::new(d),
    }
}

/// A bucket from its actions' text.
fn bucket(id: u32, actions: &str) -> Bucket {
    Bucket::new(
        id,
        Arc::new(actions.parse().expect("fixture bucket actions")),
    )
}
