//! The select groups hash on a masked source port (`tcp_src=63`, issue 16),
//! measured on a real `ovs-vswitchd` with its own oracle: `ovs-appctl
//! ofproto/trace-packet-out … group:G` says which bucket vswitchd picks for a
//! packet. What the mask must keep:
//! - only the low 6 bits of the source port count: ports 64 apart pick the
//!   same bucket, and 64 ports of one client still reach many backends;
//! - highest-random-weight hashing: removing one of 100 backends moves only
//!   the flows that were on it, about 1 in 100;
//! - an even spread over 3 backends (Pearson's χ², p > 0.001).
//!
//! Needs root and Open vSwitch; a missing OVS fails, it does not skip.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dpu_agent::compile::flows::{Action, DesiredState, Group};
use dpu_agent::compile::pipeline::reg;
use dpu_agent::compile::{compile, NodeFacts, SRC_PORT_HASH_MASK};
use dpu_agent::reconcile::backend::OfctlBackend;
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::alloc::Allocations;
use dpu_lab::objects::tcp_service;
use dpu_lab::ovs::OvsInstance;
use dpu_model::{Intent, Object, Subnet, Vpc};

const VPC: &str = "vpc-a";
const BRIDGE: &str = "brh";
const WIDE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const THREE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// Clients, and source ports per client (every value of the low 6 bits).
const CLIENTS: u32 = 10;
const PORTS: u16 = 64;
const FIRST_PORT: u16 = 33000;

fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 2, 0, 2)) + i as u32)
}

fn client_ip(c: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + c)
}

/// `wide` over `wide` backends (explicit backend addresses, off this node),
/// `three` over three of them.
fn intent(wide: &[Ipv4Addr]) -> Intent {
    let mut intent = Intent::default();
    intent.upsert(Object::Vpc(Vpc {
        name: VPC.into(),
        vni: 100,
    }));
    intent.upsert(Object::Subnet(Subnet {
        name: "pods".into(),
        vpc: VPC.into(),
        cidr: "10.0.0.0/12".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 0, 1).into(),
        node_blocks: vec![],
    }));
    intent.upsert(Object::Service(tcp_service("wide", VPC, WIDE_VIP, wide, 1)));
    let three: Vec<Ipv4Addr> = (0..3).map(backend_ip).collect();
    intent.upsert(Object::Service(tcp_service(
        "three", VPC, THREE_VIP, &three, 1,
    )));
    intent
}

fn compiled(intent: &Intent, alloc: &Allocations) -> DesiredState {
    let facts = NodeFacts {
        node: "dpu-1".into(),
        ports: Default::default(),
        host_port: None,
        uplink: None,
        unhealthy: Default::default(),
    };
    compile(intent, alloc, &facts).desired
}

/// The group whose buckets go to `n` backends.
fn group_of(d: &DesiredState, n: usize) -> &Group {
    d.groups
        .values()
        .find(|g| g.buckets.len() == n)
        .unwrap_or_else(|| panic!("no group of {n} buckets"))
}

/// Bucket id → the backend address its actions load into reg3.
fn backends_by_bucket(g: &Group) -> BTreeMap<u32, Ipv4Addr> {
    g.buckets
        .iter()
        .map(|b| {
            let ip = b
                .actions
                .list()
                .iter()
                .find_map(|a| match a {
                    Action::SetField { field, value } if *field == reg::EP_IP => {
                        Some(Ipv4Addr::from(*value as u32))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no reg3 in bucket {}: {}", b.id, b.actions));
            (b.id, ip)
        })
        .collect()
}

/// The backend vswitchd picks in `g` for a new connection from `client`:`port`
/// to `vip`:80, by its own trace.
fn picked(ovs: &OvsInstance, g: &Group, vip: Ipv4Addr, client: Ipv4Addr, port: u16) -> Ipv4Addr {
    let flow = format!("in_port=LOCAL,tcp,nw_src={client},nw_dst={vip},tcp_src={port},tcp_dst=80");
    let trace = ovs
        .vswitchd_appctl(&[
            "ofproto/trace-packet-out",
            BRIDGE,
            &flow,
            &format!("group:{}", g.id),
        ])
        .unwrap();
    let id: u32 = trace
        .lines()
        .find_map(|l| l.trim().strip_prefix("-> using bucket "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the group chose no bucket:\n{trace:.2000}"));
    backends_by_bucket(g)[&id]
}

/// Every (client, port) of the test, and the backend picked for it.
fn picks(ovs: &OvsInstance, g: &Group, vip: Ipv4Addr) -> BTreeMap<(Ipv4Addr, u16), Ipv4Addr> {
    let mut out = BTreeMap::new();
    for c in 0..CLIENTS {
        for p in FIRST_PORT..FIRST_PORT + PORTS {
            out.insert((client_ip(c), p), picked(ovs, g, vip, client_ip(c), p));
        }
    }
    out
}

/// Pearson's χ² of `counts` against an even split.
fn chi2(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let e = total as f64 / counts.len() as f64;
    counts.iter().map(|&o| (o as f64 - e).powi(2) / e).sum()
}

#[tokio::test(flavor = "current_thread")]
async fn masked_source_port_hashing_keeps_hrw_and_an_even_spread() {
    assert_eq!(
        SRC_PORT_HASH_MASK, 0x3f,
        "the test covers every value of 6 bits"
    );
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().expect("Open vSwitch is installed and this runs as root");
    ovs.add_bridge(BRIDGE).unwrap();
    let wide: Vec<Ipv4Addr> = (0..100).map(backend_ip).collect();
    let before = intent(&wide);
    let alloc = Allocations::default().update(&before).unwrap();
    let desired = compiled(&before, &alloc);
    let mut r = Reconciler::start(OfctlBackend::new(ovs.mgmt(BRIDGE), "ovs-ofctl"))
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    r.apply(&desired).await.unwrap();
    let g100 = group_of(&desired, 100).clone();
    assert!(
        g100.spec()
            .contains("fields(ip_src,ip_dst,tcp_src=63,tcp_dst)"),
        "{:.200}",
        g100.spec()
    );
    // The switch holds the mask as written (its own dump).
    let dump = ovs
        .ofctl(&["dump-groups", &ovs.mgmt(BRIDGE), &g100.id.to_string()])
        .unwrap();
    assert!(dump.contains("tcp_src=63"), "{dump:.300}");

    // Only the low 6 bits count, and 64 ports of one client reach many backends.
    let first = picks(&ovs, &g100, WIDE_VIP);
    for c in 0..3 {
        for p in FIRST_PORT..FIRST_PORT + 8 {
            let a = picked(&ovs, &g100, WIDE_VIP, client_ip(c), p + 64);
            assert_eq!(
                a,
                first[&(client_ip(c), p)],
                "ports {p} and {} of client {c}",
                p + 64
            );
        }
    }
    let per_client: Vec<usize> = (0..CLIENTS)
        .map(|c| {
            let mut seen: Vec<Ipv4Addr> = first
                .iter()
                .filter(|((ip, _), _)| *ip == client_ip(c))
                .map(|(_, b)| *b)
                .collect();
            seen.sort();
            seen.dedup();
            seen.len()
        })
        .collect();
    // 64 hash values over 100 backends: about 47 distinct ones expected.
    assert!(
        per_client.iter().all(|n| *n >= 30),
        "backends per client: {per_client:?}"
    );

    // Remove one backend: only its flows move, and they are about 1 in 100.
    let gone = backend_ip(37);
    let fewer: Vec<Ipv4Addr> = wide.iter().copied().filter(|ip| *ip != gone).collect();
    let after_intent = intent(&fewer);
    let alloc = alloc.update(&after_intent).unwrap();
    let after_desired = compiled(&after_intent, &alloc);
    r.apply(&after_desired).await.unwrap();
    let g99 = group_of(&after_desired, 99).clone();
    assert_eq!(g99.id, g100.id, "the Service keeps its group");
    let second = picks(&ovs, &g99, WIDE_VIP);
    let moved: Vec<_> = first.iter().filter(|(k, b)| second[*k] != **b).collect();
    let on_gone = first.values().filter(|b| **b == gone).count();
    let strays: Vec<_> = moved.iter().filter(|(_, b)| **b != gone).collect();
    println!(
        "removing 1 of 100 backends moved {} of {} flows ({:.2}%; {} were on it)",
        moved.len(),
        first.len(),
        100.0 * moved.len() as f64 / first.len() as f64,
        on_gone
    );
    assert!(
        strays.is_empty(),
        "flows moved off backends that stayed: {strays:?}"
    );
    assert_eq!(moved.len(), on_gone);
    assert!(
        on_gone > 0 && (on_gone as f64) < 0.03 * first.len() as f64,
        "{on_gone} of {} flows were on one of 100 backends",
        first.len()
    );

    // An even spread over three backends.
    let g3 = group_of(&after_desired, 3).clone();
    let three = picks(&ovs, &g3, THREE_VIP);
    let mut counts: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    for b in three.values() {
        *counts.entry(*b).or_default() += 1;
    }
    let counts: Vec<u64> = counts.values().copied().collect();
    let x2 = chi2(&counts);
    // df = 2: p = exp(-χ²/2).
    let p = (-x2 / 2.0).exp();
    println!(
        "3 backends over {} flows: {counts:?}, χ² = {x2:.2}, p = {p:.3}",
        three.len()
    );
    assert_eq!(counts.len(), 3, "every backend is picked: {counts:?}");
    assert!(
        p > 0.001,
        "uneven spread: {counts:?}, χ² = {x2:.2}, p = {p:.5}"
    );
}
