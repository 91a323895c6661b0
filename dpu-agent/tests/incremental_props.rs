//! Properties of the incremental update path (docs/agent.md, "Incremental
//! updates"): for random sequences of updates and node-fact changes on small
//! intents,
//!
//! * `apply_update` (in place, fast validation first) gives the same verdict and
//!   the same errors as `next_intent` (copy, whole validation), and a refused
//!   update leaves the intent and its index as they were;
//! * `validate_changes` never passes what `validate` refuses, and for changes of
//!   Services and probes it agrees with it;
//! * `Allocations::update_changed` gives what `Allocations::update` gives;
//! * the incremental compiler's state equals `compile` of the same inputs;
//! * the reconciler's bundle from the touched keys equals its whole diff.
//!
//! `PROPTEST_CASES=N` raises the number of cases (see docs/testing.md).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use dpu_agent::compile::incremental::{IncrementalCompiler, Step};
use dpu_agent::compile::{compile, NodeFacts};
use dpu_agent::reconcile::backend::testkit::NullSwitch;
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::alloc::Allocations;
use dpu_agent::state::update::{apply_update, next_intent};
use dpu_model::*;
use dpu_proto::v1 as pb;
use proptest::prelude::*;
use test_support::props::config;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

const NODE: &str = "dpu-1";

fn vpc(v: usize) -> Object {
    Object::Vpc(Vpc {
        name: format!("vpc-{v}"),
        vni: 100 + v as u32,
    })
}

fn subnet(v: usize) -> Object {
    Object::Subnet(Subnet {
        name: format!("net-{v}"),
        vpc: format!("vpc-{v}"),
        cidr: format!("10.{v}.0.0/24").parse().unwrap(),
        gateway: Ipv4Addr::new(10, v as u8, 0, 1).into(),
        node_blocks: Vec::new(),
    })
}

fn node(n: usize) -> Object {
    Object::Node(Node {
        name: format!("dpu-{n}"),
        tunnel_ip: Ipv4Addr::new(192, 168, 50, n as u8),
        host: Some((
            Ipv4Addr::new(172, 16, 0, n as u8),
            Mac([0x0a, 0, 0, 0, 0xff, n as u8]),
        )),
    })
}

/// `Some` of `s` one time in ten: a value that may collide with another object's.
fn rare<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![9 => Just(None), 1 => s.prop_map(Some)]
}

fn workload() -> impl Strategy<Value = Object> {
    (0..6usize, 0..2usize, rare(0..12u8), any::<bool>()).prop_map(|(i, v, host, local)| {
        Object::Workload(Workload {
            name: format!("w-{i}"),
            kind: WorkloadKind::Pod,
            vpc: format!("vpc-{v}"),
            // Mostly its own address; now and then one that may be taken.
            ip: Ipv4Addr::new(10, v as u8, 0, 10 + host.unwrap_or(i as u8)),
            ipv6: None,
            mac: Some(Mac([2, 0, 0, 0, v as u8, i as u8])),
            labels: BTreeMap::new(),
            node: if local { NODE } else { "dpu-2" }.into(),
            port: format!("port-{i}"),
        })
    })
}

fn service() -> impl Strategy<Value = Object> {
    (
        (0..6usize, 0..2usize, 0..4usize, rare(1..4u8)),
        proptest::collection::btree_set((0..2usize, prop::sample::select(vec![53u16, 80])), 1..3),
        proptest::collection::vec((0..8u8, 0..3u32, 0..2usize), 0..5),
        (any::<bool>(), rare(0..2u8), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((i, v, scenario, vip), ports, backends, (affinity, eip, eip_here, local))| {
                let scenario = [
                    AccessScenario::ClusterIp,
                    AccessScenario::NodeClusterIp,
                    AccessScenario::EipLoadBalancer,
                    AccessScenario::EipServiceGateway,
                ][scenario];
                let gateway = scenario == AccessScenario::EipServiceGateway;
                let has_eip = matches!(
                    scenario,
                    AccessScenario::EipLoadBalancer | AccessScenario::EipServiceGateway
                ) || eip.is_some();
                let mut seen = BTreeSet::new();
                let backends = backends
                    .into_iter()
                    .map(|(host, weight, bv)| (host, weight, if gateway { bv } else { v }))
                    .filter(|(host, _, bv)| seen.insert((*host, *bv)))
                    .map(|(host, weight, bv)| Backend {
                        ip: Ipv4Addr::new(10, bv as u8, 0, 10 + host).into(),
                        weight,
                        workload: None,
                        vpc: format!("vpc-{bv}"),
                    })
                    .collect();
                let protocols = [Protocol::Tcp, Protocol::Udp];
                Object::Service(Service {
                    name: format!("svc-{i}"),
                    vpc: format!("vpc-{v}"),
                    // Two NodeClusterIP Services in different VPCs with one VIP
                    // emit the same host flow: the first by name owns it.
                    cluster_ips: if gateway {
                        Vec::new()
                    } else {
                        vec![Ipv4Addr::new(10, 96, 0, vip.unwrap_or(10 + i as u8)).into()]
                    },
                    ports: ports
                        .into_iter()
                        .map(|(p, port)| ServicePort {
                            name: String::new(),
                            protocol: protocols[p],
                            port,
                            target_port: port + 8000,
                        })
                        .collect(),
                    backends,
                    affinity_timeout: affinity.then_some(60),
                    eip: has_eip.then(|| Ipv4Addr::new(203, 0, 113, eip.unwrap_or(10 + i as u8))),
                    scenario,
                    external_traffic_local: local,
                    eip_node: has_eip.then(|| if eip_here { NODE } else { "dpu-2" }.to_string()),
                })
            },
        )
}

/// Services svc-0..2, so that probes have something to name.
fn service_set() -> impl Strategy<Value = Vec<Object>> {
    (service(), service(), service()).prop_map(|(a, b, c)| {
        [a, b, c]
            .into_iter()
            .enumerate()
            .map(|(i, o)| match o {
                Object::Service(s) => Object::Service(Service {
                    name: format!("svc-{i}"),
                    cluster_ips: s
                        .cluster_ips
                        .iter()
                        .map(|_| Ipv4Addr::new(10, 96, 0, 10 + i as u8).into())
                        .collect(),
                    eip: s.eip.map(|_| Ipv4Addr::new(203, 0, 113, 10 + i as u8)),
                    ..s
                }),
                o => o,
            })
            .collect()
    })
}

fn probe() -> impl Strategy<Value = Object> {
    (0..3usize, 0..3usize).prop_map(|(i, s)| {
        Object::NetworkProbe(NetworkProbe {
            name: format!("probe-{i}"),
            service: format!("svc-{s}"),
            probe_type: ProbeType::Tcp,
            port: 80,
            http_path: String::new(),
            http_statuses: 200..=399,
            period_ms: 1000,
            timeout_ms: 500,
            success_threshold: 1,
            failure_threshold: 3,
        })
    })
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(Object),
    Delete(Kind, String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => service().prop_map(Op::Upsert),
        3 => (0..6usize).prop_map(|i| Op::Delete(Kind::Service, format!("svc-{i}"))),
        2 => workload().prop_map(Op::Upsert),
        1 => (0..6usize).prop_map(|i| Op::Delete(Kind::Workload, format!("w-{i}"))),
        2 => probe().prop_map(Op::Upsert),
        1 => (0..3usize).prop_map(|i| Op::Delete(Kind::NetworkProbe, format!("probe-{i}"))),
        1 => (0..2usize).prop_map(|v| Op::Upsert(vpc(v))),
        1 => (1..3usize).prop_map(|n| Op::Upsert(node(n))),
    ]
}

#[derive(Debug, Clone)]
enum Event {
    Update(Vec<Op>),
    /// Plug or unplug a local port (by workload index), mark an address
    /// unhealthy or healthy again.
    Port(usize),
    Unhealthy(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => proptest::collection::vec(op(), 1..4).prop_map(Event::Update),
        1 => (0..6usize).prop_map(Event::Port),
        1 => (0..8u8).prop_map(Event::Unhealthy),
    ]
}

fn initial() -> impl Strategy<Value = Vec<Object>> {
    (
        proptest::collection::vec(workload(), 0..6),
        proptest::collection::vec(service(), 0..6),
        proptest::collection::vec(probe(), 0..2),
        service_set(),
    )
        .prop_map(|(w, s, p, base)| {
            let mut out = vec![vpc(0), vpc(1), subnet(0), subnet(1), node(1), node(2)];
            out.extend(w);
            out.extend(base);
            out.extend(s);
            out.extend(p);
            out
        })
}

fn update(version: u64, snapshot: bool, ops: &[Op]) -> pb::Update {
    let mut u = pb::Update {
        version,
        base_version: if snapshot { 0 } else { version - 1 },
        snapshot,
        nonce: String::new(),
        upserts: Vec::new(),
        deletes: Vec::new(),
        store_id: String::new(),
    };
    for op in ops {
        match op {
            Op::Upsert(o) => u.upserts.push(object_to_proto(o)),
            Op::Delete(kind, name) => u.deletes.push(pb::ObjectKey {
                kind: kind_to_proto(*kind) as i32,
                name: name.clone(),
            }),
        }
    }
    u
}

fn facts() -> NodeFacts {
    let mut ports: BTreeMap<String, u32> = (0..6).map(|i| (format!("port-{i}"), i + 10)).collect();
    ports.insert(dpu_agent::compile::pipeline::TUNNEL_IFACE_ID.into(), 1);
    ports.insert("pf0hpf".into(), 2);
    ports.insert("p0".into(), 3);
    NodeFacts {
        node: NODE.into(),
        ports,
        host_port: Some("pf0hpf".into()),
        uplink: Some(("p0".into(), "02:d9:00:00:01:01".parse().unwrap())),
        unhealthy: BTreeSet::new(),
    }
}

fn run(initial: Vec<Object>, events: Vec<Event>) -> Result<(), TestCaseError> {
    let snap = update(
        1,
        true,
        &initial.into_iter().map(Op::Upsert).collect::<Vec<_>>(),
    );
    // The reference: copies, whole validation, whole compile.
    let mut reference = Intent::default();
    let mut ref_alloc = Allocations::default();
    // The agent's way.
    let mut intent = Intent::default();
    let mut index = Index::default();
    let mut alloc = Allocations::default();
    let mut compiler = IncrementalCompiler::new();
    let mut reconciler = block_on(Reconciler::start(NullSwitch)).ok().unwrap();
    let mut facts = facts();
    let mut facts_revision = 0u64;
    let mut version = 0;
    let mut events = events;
    events.insert(0, Event::Update(Vec::new()));
    for (step, ev) in events.into_iter().enumerate() {
        let mut changed = Some(BTreeSet::new());
        match ev {
            Event::Update(ops) => {
                let u = if step == 0 {
                    snap.clone()
                } else {
                    update(version + 1, false, &ops)
                };
                let want = next_intent(&reference, version, &u, NODE);
                let before = (intent.clone(), index.clone());
                let got = apply_update(&mut intent, &mut index, version, &u, NODE);
                match (want, got) {
                    (Err(w), Err(g)) => {
                        prop_assert_eq!(w, g);
                        prop_assert_eq!(&(intent.clone(), index.clone()), &before);
                        continue;
                    }
                    (Ok(next), Ok(done)) => {
                        prop_assert_eq!(&next, &intent);
                        prop_assert_eq!(&index, &Index::build(&intent));
                        if !done.snapshot {
                            // The fast path never passes what the whole check refuses
                            // (here everything passed), and judges Service/probe changes.
                            let judged = done
                                .changed
                                .iter()
                                .all(|k| matches!(k.kind, Kind::Service | Kind::NetworkProbe));
                            if judged {
                                prop_assert!(validate_changes(&intent, &index, &done.changed));
                            }
                        }
                        reference = next;
                        ref_alloc = ref_alloc.update(&reference).unwrap();
                        let c = (!done.snapshot).then_some(&done.changed);
                        alloc.update_changed(&intent, c).unwrap();
                        prop_assert_eq!(&alloc, &ref_alloc);
                        changed = c.cloned();
                        version = u.version;
                    }
                    (w, g) => {
                        return Err(TestCaseError::fail(format!(
                            "verdicts differ: whole {w:?}, in place {g:?}"
                        )))
                    }
                }
            }
            Event::Port(i) => {
                facts_revision += 1;
                let p = format!("port-{i}");
                if facts.ports.remove(&p).is_none() {
                    facts.ports.insert(p, i as u32 + 10);
                }
            }
            Event::Unhealthy(h) => {
                facts_revision += 1;
                let k = (
                    "vpc-0".to_string(),
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + h)),
                );
                if !facts.unhealthy.remove(&k) {
                    facts.unhealthy.insert(k);
                }
            }
        }
        // The agent's way (facts with a revision), and now and then without.
        let step = if step % 3 == 2 {
            compiler.update(&intent, &[], &alloc, &facts, changed.as_ref())
        } else {
            compiler.update_at(
                &intent,
                &[],
                &alloc,
                (&facts, facts_revision),
                changed.as_ref(),
            )
        };

        let full = compile(&reference, &ref_alloc, &facts);
        prop_assert_eq!(compiler.compiled(), &full);
        let desired = compiler.desired();
        match step {
            Step::Rebuilt => {
                block_on(reconciler.apply(desired)).unwrap();
            }
            Step::Incremental { .. } => {
                let whole = reconciler.plan(desired);
                let part = reconciler.plan_changes(desired, compiler.changes());
                prop_assert_eq!(whole, part);
                block_on(reconciler.apply_changes(desired, compiler.changes())).unwrap();
            }
        }
        prop_assert_eq!(reconciler.installed(), Some(desired));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn incremental_path_equals_the_whole_intent_path(
        initial in initial(),
        events in proptest::collection::vec(event(), 1..12),
    ) {
        run(initial, events)?;
    }

    /// For any change of Services and probes on a valid intent, the fast
    /// validation agrees with the whole one (and never passes what it refuses
    /// for any other change).
    #[test]
    fn fast_validation_agrees_with_validate(
        initial in initial(),
        ops in proptest::collection::vec(op(), 1..4),
    ) {
        let snap = update(1, true, &initial.into_iter().map(Op::Upsert).collect::<Vec<_>>());
        let Ok(mut intent) = next_intent(&Intent::default(), 0, &snap, NODE) else {
            return Ok(());
        };
        let mut changed = BTreeSet::new();
        for op in ops {
            match op {
                Op::Upsert(o) => {
                    changed.insert(o.key());
                    intent.upsert(o);
                }
                Op::Delete(kind, name) => {
                    let k = ObjectKey::new(kind, name);
                    intent.remove(&k);
                    changed.insert(k);
                }
            }
        }
        let index = Index::build(&intent);
        let fast = validate_changes(&intent, &index, &changed);
        let whole = validate(&intent).is_empty();
        if fast {
            prop_assert!(whole, "the fast path passed what validate refuses: {:?}", validate(&intent));
        }
        if changed.iter().all(|k| matches!(k.kind, Kind::Service | Kind::NetworkProbe)) {
            prop_assert_eq!(fast, whole);
        }
    }
}
