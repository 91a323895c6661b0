//! A Service at the model's limits (`MAX_BACKENDS` backends; and weights
//! adding up to `MAX_BUCKETS`) compiled and installed through each OpenFlow
//! backend into a real `ovs-vswitchd`, beside a small Service. The oracles are
//! OVS's own: `ovs-appctl ofproto/trace-packet-out … group:G` lists every
//! bucket of the group with its id as vswitchd scores it (`ovs-ofctl
//! dump-groups` cannot print a group of more than 64 KiB: its reply's 16-bit
//! length wraps), and `ovs-ofctl dump-groups` for the small group. Then each
//! backend starts again on the same switch (`installed()` reads a group too
//! large for one OpenFlow message next to others, which a plain `ovs-ofctl
//! dump-groups` of all groups turns into an assertion failure that kills OVS
//! 3.1) and converges without a change. Needs root and Open vSwitch; a missing
//! OVS fails, it does not skip.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dpu_agent::compile::flows::{DesiredState, Group};
use dpu_agent::compile::{compile, NodeFacts};
use dpu_agent::observe::switch_stats;
use dpu_agent::reconcile::backend::{NativeBackend, OfctlBackend, OpenFlowBackend};
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::alloc::Allocations;
use dpu_lab::objects::tcp_service;
use dpu_lab::ovs::OvsInstance;
use dpu_model::limits::{MAX_BACKENDS, MAX_BUCKETS};
use dpu_model::{Intent, Mac, Node, Object, Subnet, Vpc, Workload, WorkloadKind};

const VPC: &str = "vpc-a";
const WIDE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Backend `i` of the wide Service: a pod on dpu-2 (reached through the tunnel).
fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 2, 0, 2)) + i as u32)
}

/// One VPC, dpu-1 (this node) and dpu-2, `MAX_BACKENDS` pods on dpu-2, the
/// Service `wide` over all of them with `weight` each, and `small` over 10.
fn intent(weight: u32) -> Intent {
    let mut objects = vec![
        Object::Vpc(Vpc {
            name: VPC.into(),
            vni: 100,
        }),
        Object::Subnet(Subnet {
            name: "pods".into(),
            vpc: VPC.into(),
            cidr: "10.0.0.0/12".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1).into(),
            node_blocks: vec![],
        }),
    ];
    for (i, node) in ["dpu-1", "dpu-2"].iter().enumerate() {
        objects.push(Object::Node(Node {
            name: (*node).into(),
            tunnel_ip: Ipv4Addr::new(192, 168, 50, 1 + i as u8),
            host: None,
        }));
    }
    let ips: Vec<Ipv4Addr> = (0..MAX_BACKENDS).map(pod_ip).collect();
    for (i, ip) in ips.iter().enumerate() {
        let n = i as u32;
        objects.push(Object::Workload(Workload {
            name: format!("pod-{i}"),
            kind: WorkloadKind::Pod,
            vpc: VPC.into(),
            ip: *ip,
            ipv6: None,
            mac: Some(Mac([0x0a, 0x58, 0, 2, (n >> 8) as u8, n as u8])),
            labels: Default::default(),
            node: "dpu-2".into(),
            port: format!("pod-{i}"),
        }));
    }
    objects.push(Object::Service(tcp_service(
        "wide", VPC, WIDE_VIP, &ips, weight,
    )));
    objects.push(Object::Service(tcp_service(
        "small",
        VPC,
        Ipv4Addr::new(10, 96, 0, 11),
        &ips[..10],
        1,
    )));
    let mut intent = Intent::default();
    for o in objects {
        intent.upsert(o);
    }
    intent
}

fn compiled(intent: &Intent) -> DesiredState {
    assert_eq!(dpu_model::validate_for_node(intent, "dpu-1"), vec![]);
    let facts = NodeFacts {
        node: "dpu-1".into(),
        ports: [("dpu:tunnel".to_string(), 9)].into(),
        host_port: None,
        uplink: None,
        unhealthy: Default::default(),
    };
    let alloc = Allocations::default().update(intent).unwrap();
    let c = compile(intent, &alloc, &facts);
    assert!(c.unreachable.is_empty(), "{:?}", &c.unreachable[..3]);
    c.desired
}

/// The bucket ids of group `g` as vswitchd scores them for one packet, from
/// its own trace (one `-> bucket N: score S` line per bucket).
fn traced_bucket_ids(ovs: &OvsInstance, bridge: &str, g: u32) -> Vec<u32> {
    let flow =
        format!("in_port=LOCAL,tcp,nw_src=10.0.0.2,nw_dst={WIDE_VIP},tcp_src=40000,tcp_dst=80");
    let trace = ovs
        .vswitchd_appctl(&[
            "ofproto/trace-packet-out",
            bridge,
            &flow,
            &format!("group:{g}"),
        ])
        .unwrap();
    let ids: Vec<u32> = trace
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-> bucket ")?.split_once(": score"))
        .map(|(id, _)| id.parse().unwrap())
        .collect();
    assert!(
        trace.contains("-> using bucket"),
        "the group chose no bucket:\n{trace:.2000}"
    );
    ids
}

/// The groups of `d`: the wide one and the small one.
fn wide_and_small(d: &DesiredState) -> (Group, Group) {
    let mut gs: Vec<&Group> = d.groups.values().map(|g| &**g).collect();
    gs.sort_by_key(|g| g.buckets.len());
    assert_eq!(gs.len(), 2, "one group per Service");
    (gs[1].clone(), gs[0].clone())
}

/// What the switch holds of `wide` and `small` is what the compiler wrote,
/// by OVS's own accounts.
async fn check_switch(ovs: &OvsInstance, bridge: &str, wide: &Group, small: &Group, what: &str) {
    ovs.vswitchd_appctl(&["version"])
        .unwrap_or_else(|e| panic!("{what}: ovs-vswitchd is gone: {e}"));
    // Every bucket, as vswitchd scores them.
    let want: BTreeSet<u32> = wide.buckets.iter().map(|b| b.id).collect();
    let traced = traced_bucket_ids(ovs, bridge, wide.id);
    assert_eq!(traced.len(), wide.buckets.len(), "{what}: buckets traced");
    assert_eq!(
        traced.iter().copied().collect::<BTreeSet<_>>(),
        want,
        "{what}: bucket ids"
    );
    // The small group, through `ovs-ofctl dump-groups` (it is under 64 KiB).
    let dump = ovs
        // The bare id: `group_id=N` is not understood there, and means every
        // group, which kills OVS 3.1 with a group this large in the dump.
        .ofctl(&["dump-groups", &ovs.mgmt(bridge), &small.id.to_string()])
        .unwrap();
    let line = dump
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("group_id="))
        .unwrap_or_else(|| panic!("{what}: no small group in {dump}"));
    assert_eq!(line, small.spec(), "{what}: the small group");
    // And the buckets in order, with their counters, read natively.
    let c = switch_stats::read(&ovs.mgmt(bridge), &[], READ_TIMEOUT)
        .await
        .unwrap();
    let got = c.groups.iter().find(|g| g.id == wide.id).unwrap();
    let ids: Vec<u32> = wide.buckets.iter().map(|b| b.id).collect();
    assert_eq!(got.bucket_ids, ids, "{what}: bucket order");
}

/// Installs `desired` through `backend`, checks it, then starts a new
/// reconciler on the same switch with `again` and applies it once more.
async fn install<B: OpenFlowBackend>(
    ovs: &OvsInstance,
    bridge: &str,
    desired: &DesiredState,
    backend: B,
    again: B,
    what: &str,
) {
    let (wide, small) = wide_and_small(desired);
    let mut r = Reconciler::start(backend)
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    let t = Instant::now();
    r.apply(desired)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    println!(
        "{what}: {} buckets (+{} flows) installed in {:?}",
        wide.buckets.len(),
        desired.flows.len(),
        t.elapsed()
    );
    check_switch(ovs, bridge, &wide, &small, what).await;
    drop(r);

    // A restart: the new reconciler reads the switch, which holds a group of
    // more than 64 KiB between others.
    let t = Instant::now();
    let mut r = Reconciler::start(again)
        .await
        .map_err(|(_, e)| e)
        .unwrap_or_else(|e| panic!("{what}, restarted: {e}"));
    r.apply(desired)
        .await
        .unwrap_or_else(|e| panic!("{what}, restarted: {e}"));
    println!("{what}: read back and applied again in {:?}", t.elapsed());
    check_switch(ovs, bridge, &wide, &small, &format!("{what}, restarted")).await;
    // Converged: nothing left to send.
    assert!(r.plan(desired).is_empty(), "{what}: a plan after the apply");
}

async fn both_backends_install(weight: u32) {
    let desired = compiled(&intent(weight));
    let (wide, _) = wide_and_small(&desired);
    assert_eq!(wide.buckets.len(), MAX_BACKENDS * weight as usize);
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().expect("Open vSwitch is installed and this runs as root");
    for b in ["brn", "bro"] {
        ovs.add_bridge(b).unwrap();
    }
    let native = || NativeBackend::new(ovs.mgmt("brn")).unwrap();
    let ofctl = || OfctlBackend::new(ovs.mgmt("bro"), "ovs-ofctl");
    install(&ovs, "brn", &desired, native(), native(), "native").await;
    install(&ovs, "bro", &desired, ofctl(), ofctl(), "ovs-ofctl").await;
}

/// `MAX_BACKENDS` backends of weight 1: 4,096 buckets.
#[tokio::test]
async fn a_service_of_max_backends_installs_through_both_backends() {
    both_backends_install(1).await;
}

/// `MAX_BACKENDS` backends whose weights add up to `MAX_BUCKETS`: 8,192 buckets.
#[tokio::test]
async fn a_service_of_max_buckets_installs_through_both_backends() {
    const { assert!((MAX_BUCKETS as usize).is_multiple_of(MAX_BACKENDS)) };
    both_backends_install(MAX_BUCKETS / MAX_BACKENDS as u32).await;
}
