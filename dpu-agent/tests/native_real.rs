//! The native OpenFlow 1.5 backend against a real `ovs-vswitchd`, with
//! `ovs-ofctl` as the independent oracle: whatever the native backend installs
//! must dump exactly as the same bundle installed by `ovs-ofctl` does, and
//! `installed()` must read it as `ovs-ofctl`'s dumps do. Needs root and Open
//! vSwitch; a missing OVS fails, it does not skip.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpu_agent::compile::assign_bucket_ids;
use dpu_agent::compile::flows::{
    Actions, Bucket, DesiredState, FlowBody, FlowKey, Group, HashField, Match,
};
use dpu_agent::compile::pipeline::cookie::{Category, Cookie};
use dpu_agent::reconcile::backend::{
    BundleOp, InstalledSummary, NativeBackend, OfctlBackend, OpenFlowBackend, OpenFlowError,
};
use dpu_agent::reconcile::Reconciler;
use dpu_lab::ovs::OvsInstance;

#[path = "common/golden_case.rs"]
mod golden_case;

/// A golden case compiled as `tests/golden.rs` does.
fn compile_case(dir: &Path) -> DesiredState {
    golden_case::compile_for(dir, &golden_case::intent_of(dir)).desired
}

/// The bundle that installs `d` on an empty switch: groups, then flows.
fn install_ops(d: &DesiredState, round: u16) -> Vec<BundleOp> {
    let mut ops: Vec<BundleOp> = d.groups.values().cloned().map(BundleOp::PutGroup).collect();
    ops.extend(d.flows.iter().map(|(k, b)| BundleOp::AddFlow {
        key: k.clone(),
        body: b.clone(),
        cookie: b.cookie.value(round),
    }));
    ops
}

fn native(ovs: &OvsInstance, bridge: &str) -> NativeBackend {
    NativeBackend::new(ovs.mgmt(bridge)).unwrap()
}

fn ofctl(ovs: &OvsInstance, bridge: &str) -> OfctlBackend {
    OfctlBackend::new(ovs.mgmt(bridge), "ovs-ofctl")
}

/// `installed()` of the native backend against `ovs-ofctl`'s dumps read by the
/// `ovs-ofctl` backend: the same flows, cookies and group users, the same group
/// ids, and each group the same as `groups` wanted. (The native backend keeps a
/// group's buckets in wire form, so groups compare through [`InstalledGroup::is`].)
fn assert_same_summary(
    native: &InstalledSummary,
    by_ofctl: &InstalledSummary,
    groups: &[&Arc<Group>],
    what: &str,
) {
    assert_eq!(native.flows, by_ofctl.flows, "{what}: flows");
    assert_eq!(native.cookies, by_ofctl.cookies, "{what}: cookies");
    assert_eq!(
        native.group_users, by_ofctl.group_users,
        "{what}: group users"
    );
    assert_eq!(
        native.groups.keys().collect::<Vec<_>>(),
        by_ofctl.groups.keys().collect::<Vec<_>>(),
        "{what}: group ids"
    );
    for g in groups {
        assert!(
            native.groups[&g.id].is(g),
            "{what}: group {} natively",
            g.id
        );
        assert!(
            by_ofctl.groups[&g.id].is(g),
            "{what}: group {} by ovs-ofctl",
            g.id
        );
    }
}

/// Both dumps of a bridge, sorted, so two bridges can be compared.
fn dumps(ovs: &OvsInstance, bridge: &str) -> (Vec<String>, Vec<String>) {
    let mut flows = ovs.dump_flows(bridge).unwrap();
    let mut groups = ovs.dump_groups(bridge).unwrap();
    flows.sort();
    groups.sort();
    (flows, groups)
}

fn start_ovs(bridges: &[&str]) -> OvsInstance {
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().expect("Open vSwitch is installed and this runs as root");
    for b in bridges {
        ovs.add_bridge(b).unwrap();
    }
    ovs
}

fn flow(table: u8, priority: u16, matches: &str, actions: &str, cookie: u64) -> BundleOp {
    BundleOp::AddFlow {
        key: FlowKey::new(table, priority, matches.parse::<Match>().unwrap()),
        body: FlowBody::new(
            actions.parse::<Actions>().unwrap(),
            Cookie::new(Category::Service, "t"),
        ),
        cookie,
    }
}

fn group(id: u32, buckets: usize) -> Arc<Group> {
    Arc::new(Group {
        id,
        hash_fields: ["ip_src", "ip_dst", "tcp_src", "tcp_dst"]
            .iter()
            .map(|f| HashField::parse(f).unwrap())
            .collect(),
        buckets: {
            // Ids as the compiler gives them: hashes of the backends.
            let ips: Vec<Ipv4Addr> = (0..buckets)
                .map(|i| Ipv4Addr::from(0x0a00_0000 + i as u32))
                .collect();
            let members: Vec<_> = ips.iter().map(|ip| ("t", (*ip).into(), 1)).collect();
            let mut b: Vec<Bucket> = ips
                .iter()
                .zip(assign_bucket_ids(8080, &members))
                .map(|(ip, ids)| {
                    Bucket::new(
                        ids[0],
                        Arc::new(
                            format!(
                                "set_field:{:#x}->reg3,set_field:0x1f90->reg4,resubmit(,43)",
                                u32::from(*ip)
                            )
                            .parse::<Actions>()
                            .unwrap(),
                        ),
                    )
                })
                .collect();
            b.sort();
            b
        },
        owner: Cookie::new(Category::Service, "t"),
        learns: false,
    })
}

/// Every golden case (all scenarios, both families, affinity, tunnels) installed
/// natively dumps exactly as installed through `ovs-ofctl`, and `installed()`
/// reads both bridges as `ovs-ofctl`'s dumps do.
#[tokio::test]
async fn every_golden_case_installs_as_through_ovs_ofctl() {
    for case in golden_case::cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let ovs = start_ovs(&["brn", "bro"]);
        let desired = compile_case(&case);
        let ops = install_ops(&desired, 3);
        let mut n = native(&ovs, "brn");
        n.apply(&ops)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        ofctl(&ovs, "bro").apply(&ops).await.unwrap();
        let (nf, ng) = dumps(&ovs, "brn");
        let (of, og) = dumps(&ovs, "bro");
        assert_eq!(nf, of, "{name}: flows");
        assert_eq!(ng, og, "{name}: groups");
        let flows = ops
            .iter()
            .filter(|o| matches!(o, BundleOp::AddFlow { .. }))
            .count();
        assert_eq!(nf.len(), flows, "{name}");
        let groups: Vec<&Arc<Group>> = desired.groups.values().collect();
        let by_ofctl = ofctl(&ovs, "brn").installed().await.unwrap();
        assert_same_summary(&n.installed().await.unwrap(), &by_ofctl, &groups, &name);
        assert_same_summary(
            &native(&ovs, "bro").installed().await.unwrap(),
            &ofctl(&ovs, "bro").installed().await.unwrap(),
            &groups,
            &format!("{name} through ovs-ofctl"),
        );
        assert_eq!(by_ofctl.flows, flows, "{name}");
    }
}

/// The reconciler over the native backend: install, then a new round (every
/// flow re-added under new cookies, the old ones deleted by cookie), then a
/// smaller intent (flows and groups deleted). Each step dumps as the same steps
/// taken through `ovs-ofctl`.
#[tokio::test]
async fn the_reconciler_converges_the_same_over_both_backends() {
    let ovs = start_ovs(&["brn", "bro"]);
    let mut rn = Reconciler::start(native(&ovs, "brn"))
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    let mut ro = Reconciler::start(ofctl(&ovs, "bro"))
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    let cases = golden_case::cases();
    let basic = compile_case(cases.iter().find(|c| c.ends_with("basic")).unwrap());
    let affinity = compile_case(cases.iter().find(|c| c.ends_with("affinity")).unwrap());
    for (step, desired) in [&affinity, &affinity, &basic].into_iter().enumerate() {
        if step == 1 {
            rn.forget_installed().await.unwrap();
            ro.forget_installed().await.unwrap();
        }
        rn.apply(desired)
            .await
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        ro.apply(desired).await.unwrap();
        assert_eq!(dumps(&ovs, "brn"), dumps(&ovs, "bro"), "step {step}");
    }
}

/// A flow sending to a group that does not exist is refused at commit; a
/// `goto_table` backwards is refused as it is added. Either way the error names
/// the flow, and nothing of the bundle is installed.
#[tokio::test]
async fn a_bundle_with_one_bad_flow_installs_nothing_and_names_it() {
    let ovs = start_ovs(&["br0"]);
    let mut b = native(&ovs, "br0");
    let mut good = install_ops(&compile_case(&golden_case::cases()[0]), 1);
    good.truncate(good.len().min(40));
    for (bad, text, why) in [
        (
            flow(40, 100, "reg0=0x1,ip,nw_dst=10.96.0.99", "group:4242", 0x77),
            "flow add table=40,priority=100,cookie=0x77,reg0=0x1,ip,nw_dst=10.96.0.99 actions=group:4242",
            "OFPBAC_BAD_OUT_GROUP",
        ),
        (
            flow(40, 100, "reg0=0x1", "goto_table:10", 0x78),
            "flow add table=40,priority=100,cookie=0x78,reg0=0x1 actions=goto_table:10",
            "",
        ),
    ] {
        let mut ops = good.clone();
        ops.insert(ops.len() / 2, bad);
        let e = b.apply(&ops).await.unwrap_err();
        let msg = e.to_string();
        println!("refused: {msg}");
        assert!(matches!(e, OpenFlowError::Rejected(_)), "{msg}");
        assert!(msg.contains(text), "{msg}");
        assert!(msg.contains(why), "{msg}");
        assert_eq!(dumps(&ovs, "br0"), (vec![], vec![]), "{msg}");
    }
    // The connection is still good for the good part.
    b.apply(&good).await.unwrap();
    let groups: Vec<&Arc<Group>> = good
        .iter()
        .filter_map(|o| match o {
            BundleOp::PutGroup(g) => Some(g),
            _ => None,
        })
        .collect();
    assert_same_summary(
        &b.installed().await.unwrap(),
        &ofctl(&ovs, "br0").installed().await.unwrap(),
        &groups,
        "the good part",
    );
}

/// An `ovs-vswitchd` restart: the call while it is away fails as unreachable,
/// and once it is back the same backend connects again and installs.
#[tokio::test]
async fn a_restarted_vswitchd_is_connected_again() {
    let mut ovs = start_ovs(&["br0"]);
    let mut b = native(&ovs, "br0");
    let ops: Vec<BundleOp> = (0..100)
        .map(|i| flow(0, 100, &format!("reg1={i:#x}"), "drop", i))
        .collect();
    b.apply(&ops).await.unwrap();
    ovs.stop_vswitchd().unwrap();
    let e = b.apply(&ops).await.unwrap_err();
    assert!(matches!(e, OpenFlowError::Unreachable { .. }), "{e}");
    ovs.start_vswitchd().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let sum = loop {
        match b.installed().await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                println!("waiting for the bridge: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(sum.flows, 0, "a restarted switch starts empty");
    b.apply(&ops).await.unwrap();
    assert_eq!(ovs.dump_flows("br0").unwrap().len(), 100);
}

/// 1000 and 1500 buckets do not fit in one group_mod; both are installed
/// whole. OVS 3.1 describes a group back in one message only up to 64 KiB (about
/// 1000 of these buckets), and a dump of all groups with a larger one not last
/// kills `ovs-vswitchd` (an assertion in `ofpmp_postappend`). The read keeps
/// the switch alive, the 1000-bucket group reads back exactly, the 1500-bucket
/// one is counted by its stats and reported unreadable (so the reconciler would
/// write it again), and the groups around it still read.
#[tokio::test]
async fn groups_of_1000_and_1500_buckets_round_trip() {
    let ovs = start_ovs(&["br0"]);
    let mut b = native(&ovs, "br0");
    let (small, big, huge, after) = (group(8, 3), group(9, 1000), group(10, 1500), group(11, 2));
    let ops = vec![
        BundleOp::PutGroup(small.clone()),
        BundleOp::PutGroup(big.clone()),
        BundleOp::PutGroup(huge.clone()),
        BundleOp::PutGroup(after.clone()),
        flow(
            40,
            100,
            "reg0=0x1,tcp,nw_dst=10.96.0.10,tp_dst=80",
            "group:10",
            0x99,
        ),
    ];
    b.apply(&ops).await.unwrap();
    let stats = ovs
        .ofctl(&["dump-group-stats", &ovs.mgmt("br0"), "group_id=10"])
        .unwrap();
    assert_eq!(
        stats.matches(":packet_count=").count(),
        1500,
        "{stats:.300}"
    );
    let sum = b.installed().await.unwrap();
    ovs.vswitchd_appctl(&["version"])
        .expect("ovs-vswitchd survived the read");
    for g in [&small, &big, &after] {
        assert!(sum.groups[&g.id].is(g), "group {}", g.id);
    }
    assert!(!sum.groups[&10].is(&huge));
    assert!(
        sum.groups[&10].properties[0].starts_with("unreadable"),
        "{:?}",
        sum.groups[&10]
    );
    assert_eq!(sum.group_users[&10], [0x99].into());
    assert_eq!(sum.flows, 1);
    // Replacing the big ones with small ones leaves no bucket behind.
    let (big2, huge2) = (group(9, 1), group(10, 3));
    b.apply(&[
        BundleOp::PutGroup(big2.clone()),
        BundleOp::PutGroup(huge2.clone()),
    ])
    .await
    .unwrap();
    let sum = b.installed().await.unwrap();
    assert!(sum.groups[&9].is(&big2) && sum.groups[&10].is(&huge2));
    let by_ofctl = ofctl(&ovs, "br0").installed().await.unwrap();
    assert_same_summary(
        &sum,
        &by_ofctl,
        &[&small, &big2, &huge2, &after],
        "after shrinking",
    );
}

/// 20k flows and 2k groups on an empty bridge, natively and through
/// `ovs-ofctl bundle`; prints both times (no assertion on time).
/// `NATIVE_BENCH_FLOWS=200000` scales it (one group per ten flows).
#[tokio::test]
async fn cold_install_time_native_vs_ovs_ofctl() {
    let flows: u32 = std::env::var("NATIVE_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let groups = (flows / 10).max(1);
    // One switch each, so neither run warms the other's.
    let (ovs_n, ovs_o) = (start_ovs(&["br0"]), start_ovs(&["br0"]));
    let mut ops: Vec<BundleOp> = (1..=groups)
        .map(|id| BundleOp::PutGroup(group(id, 4)))
        .collect();
    for i in 0..flows {
        let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i);
        ops.push(flow(
            40,
            100,
            &format!("reg0=0x1,tcp,nw_dst={ip},tp_dst=80"),
            &format!("group:{}", i % groups + 1),
            0x1_0000_0000 + u64::from(i),
        ));
    }
    let mut n = native(&ovs_n, "br0");
    let mut o = ofctl(&ovs_o, "br0");
    let t = Instant::now();
    o.apply(&ops).await.unwrap();
    let ofctl_time = t.elapsed();
    let t = Instant::now();
    n.apply(&ops).await.unwrap();
    let native_time = t.elapsed();
    let t = Instant::now();
    let by_ofctl = o.installed().await.unwrap();
    let ofctl_read = t.elapsed();
    let t = Instant::now();
    let natively = n.installed().await.unwrap();
    let native_read = t.elapsed();
    println!(
        "cold install of {flows} flows + {groups} groups: native {native_time:?}, \
         ovs-ofctl bundle {ofctl_time:?}; reading it back: native {native_read:?}, \
         ovs-ofctl dumps {ofctl_read:?}"
    );
    assert_eq!(natively.flows, flows as usize);
    assert_eq!(by_ofctl.flows, flows as usize);
    assert!(
        dumps(&ovs_n, "br0") == dumps(&ovs_o, "br0"),
        "the two switches differ"
    );
}
