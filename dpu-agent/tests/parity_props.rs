//! Validation parity between the controller and the agents (issue 15, §6): for
//! random intents, what the controller accepts every agent accepts.
//!
//! The controller's verdict is what `resolve` runs once the manifests are
//! objects: the field rules of the wire form (`object_from_proto`) and
//! `dpu_model::validate_for_every_node`. Each agent's verdict is what it runs on
//! an update, without OVS: `update::next_intent` (field rules, then
//! `dpu_model::validate_for_node`) on its view (`dpu_controller::view::node_view`)
//! as a snapshot, then the same view as a snapshot without Services and probes
//! followed by an increment with them (the fast path,
//! `dpu_model::validate_changes`), and the allocation of its zones and group ids
//! (`Allocations::update`).
//!
//! The generator is biased towards what agents refuse (workloads without a MAC
//! on their node, VNicIPs alone on a port, ClientIP affinity with IPv6, shared
//! VIP:ports, addresses and ports), and the test checks that each of those is
//! hit, so a generator that drifts into always-valid intents fails.
//!
//! `PROPTEST_CASES=N` sets the number of intents (default 600).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dpu_agent::state::alloc::Allocations;
use dpu_agent::state::update::next_intent;
use dpu_controller::view::node_view;
use dpu_model::*;
use dpu_proto::v1 as pb;
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const NODES: [&str; 3] = ["dpu-0", "dpu-1", "dpu-2"];
const PORTS: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "uplink"];

#[derive(Debug, Clone)]
struct GenWorkload {
    kind: usize,
    vpc: usize,
    host: u8,
    mac: Option<u8>,
    node: usize,
    port: usize,
    app: bool,
}

#[derive(Debug, Clone)]
struct GenService {
    vpc: usize,
    vip: u8,
    v6: bool,
    udp: bool,
    selector: bool,
    backends: Vec<(u8, u32)>,
    affinity: bool,
    eip: Option<(u8, usize)>,
}

#[derive(Debug, Clone)]
struct Gen {
    /// (VNI, second octet of the Subnet, give dpu-0 a block).
    vpcs: Vec<(u32, u8, bool)>,
    workloads: Vec<GenWorkload>,
    services: Vec<GenService>,
    probes: Vec<usize>,
    /// Tunnel address (last octet) per DpuNode.
    nodes: Vec<u8>,
}

fn gen() -> impl Strategy<Value = Gen> {
    let vpc = (1..=4u32, 0..3u8, any::<bool>());
    let workload = (
        (0..4usize, 0..3usize, 2..16u8),
        prop::option::weighted(0.75, 1..6u8),
        (0..3usize, 0..6usize, any::<bool>()),
    )
        .prop_map(|((kind, vpc, host), mac, (node, port, app))| GenWorkload {
            kind,
            vpc,
            host,
            mac,
            node,
            port,
            app,
        });
    let service = (
        (0..3usize, 1..4u8, prop::bool::weighted(0.2), any::<bool>()),
        (
            any::<bool>(),
            prop::collection::vec((2..10u8, 1..4u32), 0..3),
        ),
        (
            prop::bool::weighted(0.3),
            prop::option::weighted(0.2, (1..3u8, 0..3usize)),
        ),
    )
        .prop_map(
            |((vpc, vip, v6, udp), (selector, backends), (affinity, eip))| GenService {
                vpc,
                vip,
                v6,
                udp,
                selector,
                backends,
                affinity,
                eip,
            },
        );
    (
        prop::collection::vec(vpc, 1..=3),
        prop::collection::vec(workload, 0..7),
        prop::collection::vec(service, 0..4),
        prop::collection::vec(0..4usize, 0..3),
        prop::collection::vec(1..4u8, 0..3),
    )
        .prop_map(|(vpcs, workloads, services, probes, nodes)| Gen {
            vpcs,
            workloads,
            services,
            probes,
            nodes,
        })
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The intent a generated plan stands for. Names and field values are always
/// well-formed; what collides or is missing is up to the plan.
fn build(g: &Gen) -> Intent {
    let mut i = Intent::default();
    for (n, (vni, octet, block)) in g.vpcs.iter().enumerate() {
        let vpc = format!("vpc-{n}");
        i.upsert(Object::Vpc(Vpc {
            name: vpc.clone(),
            vni: *vni,
        }));
        let cidr = net(&format!("10.{octet}.0.0/24"));
        let node_blocks = if *block {
            vec![NodeBlock {
                node: "dpu-0".into(),
                cidr: format!("10.{octet}.0.128/26").parse().unwrap(),
            }]
        } else {
            Vec::new()
        };
        i.upsert(Object::Subnet(Subnet {
            name: format!("net-{n}"),
            vpc,
            cidr,
            gateway: IpAddr::V4(Ipv4Addr::new(10, *octet, 0, 1)),
            node_blocks,
        }));
    }
    let kinds = [
        WorkloadKind::Pod,
        WorkloadKind::Vm,
        WorkloadKind::BareMetal,
        WorkloadKind::VnicIp,
    ];
    let octet = |v: usize| g.vpcs[v % g.vpcs.len()].1;
    for (n, w) in g.workloads.iter().enumerate() {
        let vpc = w.vpc % g.vpcs.len();
        let labels: BTreeMap<String, String> = if w.app {
            [("app".to_string(), "web".to_string())].into()
        } else {
            BTreeMap::new()
        };
        i.upsert(Object::Workload(Workload {
            name: format!("w-{n}"),
            kind: kinds[w.kind],
            vpc: format!("vpc-{vpc}"),
            ip: Ipv4Addr::new(10, octet(vpc), 0, w.host),
            ipv6: None,
            mac: w.mac.map(|m| Mac([2, 0, 0, 0, 0, m])),
            labels,
            node: NODES[w.node].into(),
            port: PORTS[w.port].into(),
        }));
    }
    for (n, s) in g.services.iter().enumerate() {
        let vpc = s.vpc % g.vpcs.len();
        let vpc_name = format!("vpc-{vpc}");
        let mut cluster_ips = vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, s.vip))];
        if s.v6 {
            cluster_ips.push(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1)));
        }
        let mut backends: BTreeMap<IpAddr, Backend> = BTreeMap::new();
        if s.selector {
            for w in i.workloads.values() {
                if w.vpc == vpc_name && w.labels.contains_key("app") {
                    backends.insert(
                        IpAddr::V4(w.ip),
                        Backend {
                            ip: IpAddr::V4(w.ip),
                            weight: 1,
                            workload: Some(w.name.clone()),
                            vpc: vpc_name.clone(),
                        },
                    );
                }
            }
        }
        for (host, weight) in &s.backends {
            let ip = IpAddr::V4(Ipv4Addr::new(10, octet(vpc), 0, *host));
            backends.entry(ip).or_insert(Backend {
                ip,
                weight: *weight,
                workload: None,
                vpc: vpc_name.clone(),
            });
        }
        let (protocol, port) = if s.udp {
            (Protocol::Udp, 53)
        } else {
            (Protocol::Tcp, 80)
        };
        let (eip, scenario) = match s.eip {
            Some(_) => (
                s.eip.map(|(e, _)| Ipv4Addr::new(203, 0, 113, e)),
                AccessScenario::EipLoadBalancer,
            ),
            None => (None, AccessScenario::ClusterIp),
        };
        i.upsert(Object::Service(Service {
            name: format!("svc-{n}"),
            vpc: vpc_name,
            cluster_ips,
            ports: vec![ServicePort {
                name: String::new(),
                protocol,
                port,
                target_port: port,
            }],
            backends: backends.into_values().collect(),
            affinity_timeout: s.affinity.then_some(10_800),
            eip,
            scenario,
            external_traffic_local: false,
            eip_node: s.eip.map(|(_, node)| NODES[node].to_string()),
        }));
    }
    for (n, s) in g.probes.iter().enumerate() {
        i.upsert(Object::NetworkProbe(NetworkProbe {
            name: format!("probe-{n}"),
            service: format!("svc-{s}"),
            probe_type: ProbeType::Tcp,
            port: 8080,
            http_statuses: 200..=399,
            http_path: String::new(),
            period_ms: 10_000,
            timeout_ms: 1_000,
            success_threshold: 1,
            failure_threshold: 3,
        }));
    }
    for (n, t) in g.nodes.iter().enumerate() {
        i.upsert(Object::Node(Node {
            name: NODES[n].into(),
            tunnel_ip: Ipv4Addr::new(192, 0, 2, *t),
            host: None,
        }));
    }
    i
}

/// The controller's verdict: the field rules of each object as sent, then the
/// cross-object and per-node rules.
fn controller_errors(intent: &Intent) -> Vec<String> {
    let mut errs: Vec<String> = intent
        .objects()
        .filter_map(|o| object_from_proto(&object_to_proto(&o)).err())
        .map(|e| e.to_string())
        .collect();
    if errs.is_empty() {
        errs = validate_for_every_node(intent)
            .iter()
            .map(ToString::to_string)
            .collect();
    }
    errs
}

fn update(version: u64, base: u64, snapshot: bool, objects: Vec<&Object>) -> pb::Update {
    pb::Update {
        version,
        nonce: format!("n{version}"),
        snapshot,
        base_version: base,
        upserts: objects.into_iter().map(object_to_proto).collect(),
        deletes: Vec::new(),
        store_id: String::new(),
    }
}

/// Every node the intent names: in workloads, node blocks, EIP owners, DpuNodes.
fn nodes_of(intent: &Intent) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = intent.workloads.values().map(|w| w.node.clone()).collect();
    out.extend(
        intent
            .subnets
            .values()
            .flat_map(|s| s.node_blocks.iter().map(|b| b.node.clone())),
    );
    out.extend(intent.services.values().filter_map(|s| s.eip_node.clone()));
    out.extend(intent.nodes.keys().cloned());
    out
}

/// The agent's verdict on its view: the errors of the first step that
/// refused, naming the node.
fn agent_errors(intent: &Intent, node: &str) -> Option<String> {
    let view = node_view(intent, node);
    let all: Vec<&Object> = view.values().collect();
    let refused = |what: &str, e: String| Some(format!("{node}: {what}: {e}"));
    let whole = match next_intent(&Intent::default(), 0, &update(1, 0, true, all), node) {
        Ok(i) => i,
        Err(r) => return refused("snapshot", r.to_string()),
    };
    if let Err(e) = Allocations::default().update(&whole) {
        return refused("allocations", e.to_string());
    }
    // The same view in two steps: the rest, then Services and probes as an
    // increment (what the fast path judges).
    let (later, first): (Vec<&Object>, Vec<&Object>) = view
        .values()
        .partition(|o| matches!(o, Object::Service(_) | Object::NetworkProbe(_)));
    let base = match next_intent(&Intent::default(), 0, &update(1, 0, true, first), node) {
        Ok(i) => i,
        Err(r) => return refused("snapshot without Services", r.to_string()),
    };
    match next_intent(&base, 1, &update(2, 1, false, later), node) {
        Ok(i) if i == whole => None,
        Ok(_) => refused("increment", "a different intent than the snapshot".into()),
        Err(r) => refused("increment of Services", r.to_string()),
    }
}

#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    accepted: usize,
    /// Intents that some agent refuses (all of them refused by the controller).
    agent_refused: usize,
    /// Controller refusals by reason.
    reasons: BTreeMap<&'static str, usize>,
}

const REASONS: [(&str, &str); 5] = [
    (
        "a workload without a MAC on its node",
        "needs a MAC address",
    ),
    (
        "a VNicIP alone on its port without a MAC",
        "none there has one",
    ),
    ("ClientIP affinity with IPv6", "IPv4 only"),
    ("a shared VIP:port", "is also served by"),
    ("a shared address or port", "is also"),
];

#[test]
fn what_the_controller_accepts_every_agent_accepts() {
    let cases: usize = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = gen();
    let mut tally = Tally::default();
    for _ in 0..cases {
        let g = strategy.new_tree(&mut runner).unwrap().current();
        let intent = build(&g);
        tally.cases += 1;
        let controller = controller_errors(&intent);
        let agents: Vec<String> = nodes_of(&intent)
            .iter()
            .filter_map(|n| agent_errors(&intent, n))
            .collect();
        if !agents.is_empty() {
            tally.agent_refused += 1;
        }
        if controller.is_empty() {
            tally.accepted += 1;
            assert!(
                agents.is_empty(),
                "the controller accepts what an agent refuses: {agents:#?}\nintent: {intent:#?}"
            );
            continue;
        }
        for (reason, text) in REASONS {
            if controller.iter().any(|e| e.contains(text)) {
                *tally.reasons.entry(reason).or_default() += 1;
            }
        }
    }
    eprintln!("{tally:#?}");
    // The generator must reach both verdicts and every reason, or the
    // implication above proves little.
    let share = |n: usize| n * 100 / tally.cases.max(1);
    assert!(share(tally.accepted) >= 5, "too few accepted: {tally:#?}");
    assert!(
        share(tally.agent_refused) >= 10,
        "agents refuse too few: {tally:#?}"
    );
    for (reason, _) in REASONS {
        let n = tally.reasons.get(reason).copied().unwrap_or(0);
        assert!(
            n * 100 >= tally.cases,
            "{reason}: hit {n} times: {tally:#?}"
        );
    }
}

/// The case issue 15 reported: a Workload without `mac` on a node with an
/// agent. The controller accepted it, and that agent NACKed the whole version.
#[test]
fn a_workload_without_a_mac_is_refused_by_the_controller_not_nacked_by_its_agent() {
    let g = Gen {
        vpcs: vec![(1, 0, false)],
        workloads: vec![GenWorkload {
            kind: 1,
            vpc: 0,
            host: 5,
            mac: None,
            node: 1,
            port: 0,
            app: false,
        }],
        services: vec![],
        probes: vec![],
        nodes: vec![1, 2],
    };
    let intent = build(&g);
    assert!(agent_errors(&intent, "dpu-1").is_some_and(|e| e.contains("spec.mac")));
    assert_eq!(
        agent_errors(&intent, "dpu-0"),
        None,
        "other nodes may bind nothing"
    );
    let errs = controller_errors(&intent);
    assert_eq!(
        errs,
        ["Workload/w-0: spec.mac: a workload needs a MAC address: the agent of node dpu-1 binds its port by it"]
    );
}
