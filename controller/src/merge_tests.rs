//! Unit tests for merging reported workloads: selectors pick them up, the
//! manifests win every collision, and each drop names its reason.

use std::net::Ipv4Addr;

use dpu_model::{validate, Backend, Kind, ObjectKey};
use dpu_proto::v1 as pb;

use super::*;
use crate::reported::check_report;
use crate::resolve::resolve;
use crate::view::node_view;

fn docs() -> Vec<Doc> {
    crate::manifest::good_sample_docs("i/")
}

fn pod(name: &str, node: &str, ip: &str, app: &str) -> pb::Workload {
    pb::Workload {
        name: name.into(),
        kind: pb::WorkloadKind::Pod as i32,
        vpc: "blue".into(),
        ip: ip.into(),
        ipv6: String::new(),
        mac: "02:00:00:00:09:01".into(),
        labels: [("app".to_string(), app.to_string())].into(),
        node: node.into(),
        port: format!("{name}-eth0"),
    }
}

fn run(reports: &[(&str, Vec<pb::Workload>)]) -> Merged {
    run_with(docs(), reports)
}

fn run_with(docs: Vec<Doc>, reports: &[(&str, Vec<pb::Workload>)]) -> Merged {
    let base = resolve(&docs).unwrap();
    let sets: BTreeMap<String, ReportedSet> = reports
        .iter()
        .map(|(node, ws)| {
            let set = check_report(node, ws);
            assert!(set.errors.is_empty(), "{:?}", set.errors);
            (node.to_string(), set)
        })
        .collect();
    let m = merge(&docs, &Arc::new(base.clone()), &sets, None);
    assert!(validate(&m.intent).is_empty(), "the merge is valid");
    // The manifests are all there, untouched.
    for (name, w) in &base.workloads {
        assert_eq!(m.intent.workloads.get(name), Some(w));
    }
    assert_eq!(m.intent.vpcs, base.vpcs);
    assert_eq!(m.intent.subnets, base.subnets);
    m
}

fn backend(ip: [u8; 4], weight: u32, workload: Option<&str>) -> Backend {
    Backend {
        ip: Ipv4Addr::from(ip).into(),
        weight,
        workload: workload.map(str::to_string),
        vpc: "blue".into(),
    }
}

#[test]
fn no_reports_is_the_manifest_intent() {
    let m = run(&[]);
    assert_eq!(*m.intent, resolve(&docs()).unwrap());
    assert!(m.nodes.is_empty());
}

#[test]
fn a_selector_picks_up_a_reported_pod() {
    let m = run(&[
        ("dpu-1", vec![pod("pod-a", "dpu-1", "10.1.1.30", "web")]),
        ("dpu-2", vec![pod("pod-b", "dpu-2", "10.1.2.30", "db")]),
    ]);
    assert_eq!(
        m.nodes["dpu-1"],
        NodeMerge {
            accepted: 1,
            dropped: vec![]
        }
    );
    assert_eq!(m.nodes["dpu-2"].accepted, 1);
    let w = &m.intent.workloads["pod-a"];
    assert_eq!(
        (w.node.as_str(), w.kind),
        ("dpu-1", dpu_model::WorkloadKind::Pod)
    );
    // app=web in blue: the pod joins web-1 and web-2 (sorted by IP); the explicit
    // entries keep their weights. red-web (app=web in red) does not get it, and
    // pod-b (app=db) is nobody's backend.
    assert_eq!(
        m.intent.services["web"].backends,
        [
            backend([10, 1, 1, 10], 1, Some("web-1")),
            backend([10, 1, 1, 30], 1, Some("pod-a")),
            backend([10, 1, 1, 99], 1, None),
            backend([10, 1, 2, 10], 3, Some("web-2")),
        ]
    );
    assert_eq!(m.intent.services["red-web"].backends.len(), 1);
    // Its node and the other nodes of the VPC see it.
    let key = ObjectKey::new(Kind::Workload, "pod-a");
    assert!(node_view(&m.intent, "dpu-1").contains_key(&key));
    assert!(node_view(&m.intent, "dpu-2").contains_key(&key));
    assert!(!node_view(&m.intent, "dpu-3").contains_key(&key));
}

#[test]
fn collisions_are_dropped_with_reasons_and_the_manifest_wins() {
    let mut foreign = pod("pod-red", "dpu-1", "10.1.1.31", "web");
    foreign.vpc = "nowhere".into();
    let mut same_port = pod("pod-port", "dpu-1", "10.1.1.32", "web");
    same_port.port = "web-1-eth0".into();
    let m = run(&[
        (
            "dpu-1",
            vec![
                pod("web-1", "dpu-1", "10.1.1.40", "web"),
                pod("pod-ip", "dpu-1", "10.1.1.10", "web"),
                pod("pod-gw", "dpu-1", "10.1.0.1", "web"),
                same_port,
                pod("pod-out", "dpu-1", "10.2.0.5", "web"),
                foreign,
                pod("pod-ok", "dpu-1", "10.1.1.33", "web"),
                pod("shared", "dpu-1", "10.1.1.34", "web"),
            ],
        ),
        (
            "dpu-2",
            vec![
                pod("shared", "dpu-2", "10.1.2.34", "web"),
                pod("pod-dup-ip", "dpu-2", "10.1.1.33", "web"),
            ],
        ),
    ]);
    let d1 = &m.nodes["dpu-1"];
    assert_eq!(d1.accepted, 2, "pod-ok and shared: {d1:#?}");
    let reason = |name: &str| {
        let prefix = format!("Workload/{name}: ");
        d1.dropped
            .iter()
            .chain(&m.nodes["dpu-2"].dropped)
            .find(|r| r.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no reason for {name}: {:#?}", m.nodes))
            .clone()
    };
    assert_eq!(
        reason("web-1"),
        "Workload/web-1: metadata.name: a manifest Workload has this name (the manifest wins)"
    );
    assert_eq!(
        reason("pod-ip"),
        "Workload/pod-ip: spec.ip: 10.1.1.10 in Vpc/blue is already Workload/web-1"
    );
    // The gateway is outside dpu-1's block (10.1.1.0/24): refused before the
    // collision is even looked at.
    assert_eq!(
        reason("pod-gw"),
        "Workload/pod-gw: spec.ip: 10.1.0.1 is outside the blocks of node dpu-1 in Vpc/blue (10.1.1.0/24 of Subnet/blue-a)"
    );
    assert_eq!(
        reason("pod-port"),
        "Workload/pod-port: spec.port: port web-1-eth0 on node dpu-1 is already bound to Workload/web-1"
    );
    // A node reports pods only inside its blocks.
    assert_eq!(
        reason("pod-out"),
        "Workload/pod-out: spec.ip: 10.2.0.5 is outside the blocks of node dpu-1 in Vpc/blue (10.1.1.0/24 of Subnet/blue-a)"
    );
    assert_eq!(
        reason("pod-red"),
        "Workload/pod-red: spec.vpc: node dpu-1 has no block in any Subnet of Vpc/nowhere (spec.nodeBlocks); a node reports pods only where it holds a block"
    );
    // Between nodes: the first node in name order keeps the name and the IP.
    let d2 = &m.nodes["dpu-2"];
    assert_eq!(d2.accepted, 0);
    assert_eq!(
        d2.dropped,
        [
            // dpu-1's address is outside dpu-2's block: blocks do not overlap,
            // so reported pods of two nodes can never share an address.
            "Workload/pod-dup-ip: spec.ip: 10.1.1.33 is outside the blocks of node dpu-2 in Vpc/blue (10.1.2.0/24 of Subnet/blue-a)",
            "Workload/shared: metadata.name: node dpu-1 already reports a Workload with this name",
        ]
    );
    assert_eq!(m.intent.workloads["shared"].node, "dpu-1");
    assert_eq!(m.intent.workloads["web-1"].ip.to_string(), "10.1.1.10");
    let web: Vec<_> = m.intent.services["web"]
        .backends
        .iter()
        .filter_map(|b| b.workload.clone())
        .collect();
    assert_eq!(web, ["web-1", "pod-ok", "shared", "web-2"]);
}

#[test]
fn a_service_over_its_limits_loses_the_reported_pods_it_selects() {
    // MAX_BACKENDS + 1 selected pods push YusurService/web past MAX_BACKENDS.
    // They are reported by two nodes (a node may report at most 4,096), each
    // with a block in a second Subnet of blue.
    let over = dpu_model::limits::MAX_BACKENDS + 1;
    let half = over / 2;
    let mut docs = docs();
    docs.extend(
        crate::manifest::parse_file(
            "i/40.yaml",
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: blue-b}\nspec: {vpc: blue, cidr: 10.9.0.0/16, gateway: 10.9.0.1, nodeBlocks: [{node: dpu-1, cidr: 10.9.32.0/19}, {node: dpu-2, cidr: 10.9.64.0/19}]}\n",
        )
        .unwrap(),
    );
    let on = |node: &str, third: usize, range: std::ops::Range<usize>| -> Vec<pb::Workload> {
        range
            .enumerate()
            .map(|(j, i)| {
                let ip = format!("10.9.{}.{}", third + j / 200, 1 + j % 200);
                pod(&format!("p-{i}"), node, &ip, "web")
            })
            .collect()
    };
    let mut pods = on("dpu-1", 32, 0..half);
    pods.push(pod("db-pod", "dpu-1", "10.1.1.99", "db"));
    let m = run_with(
        docs,
        &[("dpu-1", pods), ("dpu-2", on("dpu-2", 64, half..over))],
    );
    let n = &m.nodes["dpu-1"];
    assert_eq!(n.accepted, 1, "only the pod web does not select");
    assert_eq!(n.dropped.len() + m.nodes["dpu-2"].dropped.len(), over);
    assert!(
        n.dropped[0].contains("YusurService/web selects it")
            && n.dropped[0].contains("spec.backends"),
        "{}",
        n.dropped[0]
    );
    assert!(m.intent.workloads.contains_key("db-pod"));
    assert_eq!(m.intent.services["web"].backends.len(), 3);
}

#[test]
fn a_node_cannot_report_pods_into_a_vpc_where_it_holds_no_block() {
    // The attack: dpu-3 (red only) reports `evil` into blue with app=web, so
    // that Service web on dpu-1 would balance to it, and labels that would pull
    // blue's intent to dpu-3.
    let docs = docs();
    let base = resolve(&docs).unwrap();
    let evil = pod("evil", "dpu-3", "10.1.1.66", "web");
    let sets: BTreeMap<String, ReportedSet> =
        [("dpu-3".to_string(), check_report("dpu-3", &[evil]))].into();
    let m = merge(&docs, &Arc::new(base.clone()), &sets, None);
    assert_eq!(*m.intent, base, "nothing of the report is in the intent");
    assert_eq!(
        m.nodes["dpu-3"].dropped,
        ["Workload/evil: spec.vpc: node dpu-3 has no block in any Subnet of Vpc/blue (spec.nodeBlocks); a node reports pods only where it holds a block"]
    );
    assert_eq!(node_view(&m.intent, "dpu-3"), node_view(&base, "dpu-3"));
    assert_eq!(node_view(&m.intent, "dpu-1"), node_view(&base, "dpu-1"));
}

#[test]
fn labels_of_an_allowed_pod_select_it_only_within_what_its_node_already_has() {
    // dpu-3 reports a pod in red (where it holds a block) whose labels match
    // blue's Service web: web does not select across VPCs, and dpu-3's view
    // gains the pod and nothing of blue.
    let mut p = pod("red-pod", "dpu-3", "10.1.3.50", "web");
    p.vpc = "red".into();
    let m = run(&[("dpu-3", vec![p])]);
    assert_eq!(m.nodes["dpu-3"].accepted, 1, "{:?}", m.nodes["dpu-3"]);
    let base = resolve(&docs()).unwrap();
    assert_eq!(m.intent.services["web"], base.services["web"]);
    let before: Vec<_> = node_view(&base, "dpu-3").into_keys().collect();
    let after: Vec<_> = node_view(&m.intent, "dpu-3").into_keys().collect();
    let added: Vec<String> = after
        .iter()
        .filter(|k| !before.contains(k))
        .map(|k| k.to_string())
        .collect();
    assert_eq!(added, ["Workload/red-pod"]);
}

/// A merge that reuses the last one's result gives what a merge from scratch
/// gives, whatever changed in between: reported pods added, relabelled,
/// removed or colliding, and the manifests themselves.
#[test]
fn a_merge_after_the_last_one_equals_a_merge_from_scratch() {
    let sets = |ws: &[pb::Workload]| -> BTreeMap<String, ReportedSet> {
        let mut by_node: BTreeMap<String, Vec<pb::Workload>> = BTreeMap::new();
        for w in ws {
            by_node.entry(w.node.clone()).or_default().push(w.clone());
        }
        by_node
            .into_iter()
            .map(|(n, ws)| {
                let set = check_report(&n, &ws);
                (n, set)
            })
            .collect()
    };
    let a = pod("pod-a", "dpu-1", "10.1.1.30", "web");
    let b = pod("pod-b", "dpu-1", "10.1.1.31", "db");
    let mut a_relabelled = a.clone();
    a_relabelled.labels = [("app".to_string(), "db".to_string())].into();
    // On web-1's address: dropped.
    let clash = pod("pod-c", "dpu-1", "10.1.1.10", "web");
    let mut moved_docs = docs();
    let web1 = moved_docs
        .iter_mut()
        .find(|d| d.name == "web-1")
        .expect("the sample has web-1");
    web1.labels.insert("app".into(), "db".into());
    let steps: Vec<(Vec<Doc>, Vec<pb::Workload>)> = vec![
        (docs(), vec![a.clone()]),
        (docs(), vec![a.clone(), b.clone()]),
        (docs(), vec![a_relabelled.clone(), b.clone()]),
        (docs(), vec![b.clone(), clash]),
        (moved_docs.clone(), vec![a.clone(), b.clone()]),
        (moved_docs, vec![]),
        (docs(), vec![a]),
    ];
    let mut last: Option<(Vec<Doc>, Arc<Intent>)> = None;
    for (i, (docs, ws)) in steps.into_iter().enumerate() {
        let base = Arc::new(resolve(&docs).unwrap());
        let reported = sets(&ws);
        let fresh = merge(&docs, &base, &reported, None);
        let previous = last.as_ref().map(|(d, m)| (d.as_slice(), &**m));
        let again = merge(&docs, &base, &reported, previous);
        assert_eq!(again.intent, fresh.intent, "step {i}");
        assert_eq!(again.nodes, fresh.nodes, "step {i}");
        last = Some((docs, again.intent));
    }
}
