//! `trace` and `explain` against a real `ovs-vswitchd`: the golden case
//! `basic` compiled and installed on a private OVS (internal ports stand in
//! for the workloads' representors), a real `ofproto/trace` read by the
//! parser, and `explain` reading the real switch before and after the switch
//! is damaged behind the agent's back. The agent loop is replaced by a task
//! that answers its queries. Needs root and Open vSwitch: a missing OVS fails,
//! it does not skip.
//!
//! With `DPU_TRACE_CAPTURE=<dir>` set, the raw traces are written there (the
//! parser's unit-test inputs under `src/observe/ops/trace/testdata/` came from here).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use dpu_agent::compile::flows::DesiredState;
use dpu_agent::compile::{compile_base, NodeFacts};
use dpu_agent::observe::lb_index::{LbIndex, LbInputs};
use dpu_agent::observe::ops::explain::{self, hops, switch};
use dpu_agent::observe::ops::trace::{self, parse, Names};
use dpu_agent::observe::ops::{Ctx, TraceRequest};
use dpu_agent::observe::{Agent, Installed, IntentSnapshot, LbReply, Query, Summary};
use dpu_agent::reconcile::backend::{BundleOp, NativeBackend, OpenFlowBackend};
use dpu_agent::state::alloc::Allocations;
use dpu_lab::ovs::OvsInstance;
use dpu_model::Intent;

#[path = "common/golden_case.rs"]
mod golden_case;

const BRIDGE: &str = "br0";

/// The golden case `basic` on a private OVS: intent, the agent's views, and
/// the switch with everything installed.
struct Lab {
    ovs: OvsInstance,
    intent: Intent,
    lb: LbIndex,
    /// What `lb` was built from, as the agent loop hands it out.
    lb_inputs: LbInputs,
    desired: DesiredState,
    ports: BTreeMap<String, u32>,
}

async fn lab() -> Lab {
    lab_of("basic").await
}

async fn lab_of(name: &str) -> Lab {
    let case = golden_case::cases()
        .into_iter()
        .find(|c| c.ends_with(name))
        .unwrap_or_else(|| panic!("the golden case {name}"));
    let intent = golden_case::intent_of(&case);
    let ports: BTreeMap<String, u32> = std::fs::read_to_string(case.join("ports.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
        .collect();
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().expect("Open vSwitch is installed and this runs as root");
    ovs.add_bridge(BRIDGE).unwrap();
    for (i, (iface, ofport)) in ports.iter().enumerate() {
        // Internal ports: the trace needs the ports to exist, not traffic.
        let name = format!("p{i}");
        ovs.vsctl(&[
            "add-port",
            BRIDGE,
            &name,
            "--",
            "set",
            "Interface",
            &name,
            "type=internal",
            &format!("ofport_request={ofport}"),
            &format!("external_ids:iface-id={iface}"),
        ])
        .unwrap();
        let got = ovs.vsctl(&["get", "Interface", &name, "ofport"]).unwrap();
        assert_eq!(got.trim(), ofport.to_string(), "ofport of {iface}");
    }
    let desired = golden_case::compile_for(&case, &intent).desired;
    let facts = NodeFacts {
        node: "dpu-1".into(),
        ports: ports.clone(),
        ..NodeFacts::default()
    };
    let alloc = Allocations::default().update(&intent).unwrap();
    let ready = compile_base(&intent, &alloc, &facts).ready;
    let lb_inputs = LbInputs {
        intent: IntentSnapshot {
            version: 7,
            intent: Arc::new(intent.clone()),
            pods: Vec::new(),
        },
        alloc: Arc::new(alloc),
        ready: Arc::new(ready),
        unhealthy: BTreeSet::new(),
        installed: Some(Arc::new(desired.clone())),
    };
    let lb = lb_inputs.build();
    let mut ops: Vec<BundleOp> = desired
        .groups
        .values()
        .cloned()
        .map(BundleOp::PutGroup)
        .collect();
    ops.extend(desired.flows.iter().map(|(k, b)| BundleOp::AddFlow {
        key: k.clone(),
        body: b.clone(),
        cookie: b.cookie.value(3),
    }));
    NativeBackend::new(ovs.mgmt(BRIDGE))
        .unwrap()
        .apply(&ops)
        .await
        .unwrap();
    Lab {
        ovs,
        intent,
        lb,
        lb_inputs,
        desired,
        ports,
    }
}

impl Lab {
    fn summary(&self) -> Summary {
        Summary {
            node: "dpu-1".into(),
            applied_version: 7,
            have_intent: true,
            ports: self.ports.clone(),
            ..Summary::default()
        }
    }

    /// Runs `ofproto/trace` for `req` as `trace::run` does, through the
    /// instance's own `ovs-appctl` target.
    fn trace(&self, req: &TraceRequest, capture: &str) -> (String, parse::Trace, String) {
        let (ofport, mac) = trace::entry(req, "dpu-1", &self.intent, &self.ports).unwrap();
        let flow = trace::bridge_flow(req, ofport, mac.as_deref()).unwrap();
        let args = trace::appctl_args(BRIDGE, &flow);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let raw = self.ovs.vswitchd_appctl(&args).unwrap();
        if let Some(dir) = std::env::var_os("DPU_TRACE_CAPTURE") {
            std::fs::write(Path::new(&dir).join(format!("{capture}.txt")), &raw).unwrap();
        }
        let parsed = parse::parse(&raw).unwrap_or_else(|e| panic!("{e}\n{raw}"));
        let names = Names {
            lb: &self.lb,
            intent: &self.intent,
            ports: &self.ports,
        };
        let text = trace::render(&parsed, &names);
        println!("--- {capture}: {flow}\n{text}");
        (raw, parsed, text)
    }

    /// An agent handle whose loop is a task answering from this lab.
    fn agent(&self) -> Agent {
        let (agent, mut rx) = Agent::channel();
        let summary = self.summary();
        let intent = Arc::new(self.intent.clone());
        let lb_inputs = self.lb_inputs.clone();
        let installed = Installed {
            version: 7,
            round: 3,
            state: Arc::new(self.desired.clone()),
        };
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                match q {
                    Query::Summary(tx) => drop(tx.send(summary.clone())),
                    Query::Intent(tx) => drop(tx.send(Some(IntentSnapshot {
                        version: 7,
                        intent: intent.clone(),
                        pods: Vec::new(),
                    }))),
                    Query::Installed(tx) => drop(tx.send(Some(installed.clone()))),
                    Query::Lb { have: Some(1), tx } => drop(tx.send(LbReply::Unchanged)),
                    Query::Lb { tx, .. } => {
                        drop(tx.send(LbReply::Build(1, Box::new(lb_inputs.clone()))))
                    }
                }
            }
        });
        agent
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            agent: self.agent(),
            node: "dpu-1".into(),
            bridge: BRIDGE.into(),
            ofctl_target: self.ovs.mgmt(BRIDGE),
            run_dir: self.ovs.dir().to_path_buf(),
            appctl_path: "ovs-appctl".into(),
            ofctl_path: "ovs-ofctl".into(),
            datapath_type: "netdev".into(),
        }
    }
}

/// IPv6 through a dual-stack Service: the IPv6 group (bit 30), an IPv6
/// backend, and for the backend on the other DPU the Geneve port.
#[tokio::test]
async fn an_ipv6_connection_is_traced_through_the_v6_group() {
    let lab = lab_of("dualstack").await;
    let web = &lab.lb.services["web"];
    let mut seen = BTreeSet::new();
    for sport in 40000u16..40012 {
        let mut r = req("fd00:1::11", "fd00:96::10", "tcp", Some(80));
        r.src_port = Some(sport);
        let (_, t, text) = lab.trace(&r, &format!("v6_tcp_{sport}"));
        let (gid, bucket) = t
            .steps()
            .find_map(|s| match s {
                parse::Step::Group { id, bucket } => Some((*id, bucket.expect("a bucket"))),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no group step in\n{text}"));
        assert_eq!(
            gid & dpu_agent::compile::pipeline::V6_GROUP_BIT,
            dpu_agent::compile::pipeline::V6_GROUP_BIT
        );
        let group = web.groups.iter().find(|g| g.id == gid).unwrap();
        assert_eq!(group.port, 0);
        let b = web.backend(group.buckets.get(bucket).unwrap()).unwrap();
        assert!(b.ip.is_ipv6(), "{text}");
        assert_eq!(tables(&t)[..4], [0, 10, 30, 40], "{text}");
        assert!(text.contains("cookie Service web"), "{text}");
        if b.workload == Some("web-2") {
            assert!(
                text.contains(&format!(
                    "verdict: Service web → backend [{}]:8080, delivered to port dpu:tunnel",
                    b.ip
                )),
                "{text}"
            );
        } else {
            // web-1 is the client: a hairpin, which OVS will not send back
            // out of the port it came in on (a known limit).
            assert!(
                text.contains(&format!(
                    "verdict: Service web → backend [{}]:8080, dropped in L3Forward \
                     (skipping output to input port)",
                    b.ip
                )),
                "{text}"
            );
        }
        assert!(
            text.contains(&format!("cookie Endpoint [{}]:8080", b.ip)),
            "{text}"
        );
        seen.insert(b.ip);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Both families' answers (ARP and ND) and groups are on the switch.
    let text = explain::run(&lab.ctx(), "web").await.unwrap();
    println!("--- explain, dual stack\n{text}");
    assert!(
        text.contains("ArpResponder answers 10.96.0.10, fd00:96::10 on the switch"),
        "{text}"
    );
    assert!(
        text.ends_with("OK: web answers on 10.96.0.10:80/tcp, [fd00:96::10]:80/tcp\n"),
        "{text}"
    );
}

fn req(src: &str, dst: &str, proto: &str, dst_port: Option<u16>) -> TraceRequest {
    TraceRequest {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: proto.into(),
        dst_port,
        src_port: None,
        in_port: None,
        vpc: Some("vpc-a".into()),
        raw: false,
    }
}

/// The tables the trace went through, in order, without repeats in a row.
fn tables(t: &parse::Trace) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for s in t.steps() {
        if let parse::Step::Flow(h) = s {
            if out.last() != Some(&h.table) {
                out.push(h.table);
            }
        }
    }
    out
}

/// A client's connection to the ClusterIP goes Classify → SpoofGuard →
/// Conntrack → ServiceLb → the Service's group, whose chosen bucket is one of
/// the Service's backends → EndpointDnat → L3Forward, out of that backend's
/// port; and different source ports reach more than one backend.
#[tokio::test]
async fn a_connection_to_a_cluster_ip_is_traced_to_a_backend() {
    let lab = lab().await;
    let web = &lab.lb.services["web"];
    let mut chosen = BTreeSet::new();
    for sport in [40000u16, 40001, 40002, 40003, 40004, 40005] {
        let mut r = req("10.0.1.2", "10.96.0.10", "tcp", Some(80));
        r.src_port = Some(sport);
        let (_, t, text) = lab.trace(&r, &format!("service_tcp_{sport}"));
        assert_eq!(tables(&t), vec![0, 10, 30, 40, 45, 50], "{text}");
        let (gid, bucket) = t
            .steps()
            .find_map(|s| match s {
                parse::Step::Group { id, bucket } => Some((*id, bucket.expect("a bucket"))),
                _ => None,
            })
            .expect("a group step");
        let http = web.ports().find(|p| p.name == "http").unwrap();
        let group = http
            .groups
            .iter()
            .find(|g| g.id == gid)
            .expect("web's group");
        let backend = web.backend(group.buckets.get(bucket).unwrap()).unwrap();
        chosen.insert(backend.ip);
        let workload = backend.workload.unwrap();
        let expect = [
            " 0 Classify: in_port=1, priority 100, cookie Workload client".to_string(),
            "10 SpoofGuard: ".to_string(),
            "30 Conntrack: ip,reg0=0x1, priority 100, cookie Vpc vpc-a".to_string(),
            "40 ServiceLb: ct_state=+new+trk,tcp,reg0=0x1,nw_dst=10.96.0.10,tp_dst=80, priority 100, cookie Service web".to_string(),
            format!(
                "group {gid} = Service web port http → bucket {bucket} = backend vpc-a/{} (workload {workload})",
                backend.ip
            ),
            "45 EndpointDnat: tcp,reg0=0x1,reg3=".to_string(),
            format!("cookie Endpoint {}:8080", backend.ip),
            format!("50 L3Forward: ip,reg0=0x1,nw_dst={}, priority 100, cookie Workload {workload}", backend.ip),
            "recirculation: resume conntrack with ct_state=new|trk".to_string(),
            format!(
                "verdict: Service web → backend {}:8080, delivered to port {workload}",
                backend.ip
            ),
        ];
        for line in &expect {
            assert!(text.contains(line.as_str()), "missing {line:?} in\n{text}");
        }
        assert!(t.final_actions().contains("set(ipv4(ttl=63))"), "{text}");
    }
    assert!(chosen.len() > 1, "six connections all went to {chosen:?}");
}

/// A packet whose source the spoof guard does not know is dropped there, and
/// plain routed ICMP is delivered to the workload's port.
#[tokio::test]
async fn spoofed_packets_are_dropped_and_routed_ones_delivered() {
    let lab = lab().await;
    let mut spoof = req("10.0.1.99", "10.96.0.10", "tcp", Some(80));
    spoof.vpc = None;
    spoof.in_port = Some("client".into());
    let (_, t, text) = lab.trace(&spoof, "spoof_drop");
    assert_eq!(tables(&t), vec![0, 10], "{text}");
    assert!(text.contains("verdict: dropped in SpoofGuard"), "{text}");
    assert!(
        text.contains("10 SpoofGuard: *, priority 0, cookie Pipeline (table miss)"),
        "{text}"
    );

    let (_, t, text) = lab.trace(&req("10.0.1.2", "10.0.1.11", "icmp", None), "icmp_routed");
    assert_eq!(tables(&t), vec![0, 10, 30, 40, 50], "{text}");
    assert!(text.contains("verdict: delivered to port web-1"), "{text}");
    assert!(
        !t.steps().any(|s| matches!(s, parse::Step::Group { .. })),
        "{text}"
    );
}

/// Entry errors name what is wrong: an unknown port lists the known ones, a
/// source no workload of the VPC owns names the VPC and the address.
#[tokio::test]
async fn entry_errors_name_ports_and_the_vpc() {
    let lab = lab().await;
    let mut r = req("10.0.1.2", "10.96.0.10", "tcp", Some(80));
    r.vpc = None;
    r.in_port = Some("nope".into());
    let e = trace::entry(&r, "dpu-1", &lab.intent, &lab.ports).unwrap_err();
    assert!(
        e.0.contains("\"nope\"") && e.0.contains("client, web-1, web-2, web-3"),
        "{e}"
    );
    let r = req("10.0.1.77", "10.96.0.10", "tcp", Some(80));
    let e = trace::entry(&r, "dpu-1", &lab.intent, &lab.ports).unwrap_err();
    assert!(
        e.0.contains("VPC vpc-a") && e.0.contains("10.0.1.77"),
        "{e}"
    );
}

fn explain_now(lab: &Lab, view: &switch::SwitchView) -> hops::Report {
    let summary = lab.summary();
    hops::check(&hops::Gathered {
        name: "web",
        node: "dpu-1",
        intent: Some((7, &lab.intent)),
        lb: &lab.lb,
        summary: &summary,
        installed: Some(&lab.desired),
        switch: Ok(view),
    })
}

/// `explain` over the real switch: all fine as installed; a bucket removed
/// behind the agent's back is named by its backend; the cluster IP's ARP
/// answer deleted breaks the ARP hop although the agent believes it is there.
#[tokio::test]
async fn explain_reads_the_real_switch_and_finds_what_was_broken() {
    let lab = lab().await;
    let mgmt = lab.ovs.mgmt(BRIDGE);
    let text = explain::run(&lab.ctx(), "web").await.unwrap();
    println!("--- explain, as installed\n{text}");
    assert!(
        text.ends_with("OK: web answers on 10.96.0.10:80/tcp, 10.96.0.10:53/udp\n"),
        "{text}"
    );
    for hop in [
        "intent",
        "allocation",
        "arp",
        "servicelb",
        "groups",
        "backends",
    ] {
        assert!(
            text.lines().any(|l| l.contains(hop) && l.contains(" ok ")),
            "{hop} not ok in\n{text}"
        );
    }

    // Remove web-1's bucket from group 1 on the switch only.
    let web = &lab.lb.services["web"];
    let http = web.ports().find(|p| p.name == "http").unwrap();
    let g1 = &http.groups[0];
    let (bucket, _) = g1
        .buckets
        .iter()
        .find(|&(_, bi)| web.backend(bi).unwrap().ip == "10.0.1.11".parse::<IpAddr>().unwrap())
        .unwrap();
    lab.ovs
        .ofctl(&[
            "remove-buckets",
            &mgmt,
            &format!("group_id={},command_bucket_id={bucket}", g1.id),
        ])
        .unwrap();
    let view = switch::read("ovs-ofctl", &mgmt).await.unwrap();
    let report = explain_now(&lab, &view);
    println!("--- explain, a bucket removed\n{}", report.render());
    assert_eq!(
        report.verdict,
        format!(
            "BROKEN at groups: backend 10.0.1.11 (web-1): bucket {bucket} missing on the switch (group {}, port http)",
            g1.id
        )
    );

    lab.ovs
        .ofctl(&[
            "del-flows",
            "--strict",
            &mgmt,
            "table=20,priority=100,reg0=0x1,arp,arp_op=1,arp_tpa=10.96.0.10",
        ])
        .unwrap();
    let view = switch::read("ovs-ofctl", &mgmt).await.unwrap();
    let report = explain_now(&lab, &view);
    println!("--- explain, ARP answer deleted\n{}", report.render());
    assert_eq!(
        report.verdict,
        "BROKEN at arp: no flow in ArpResponder (table 20) on the switch answers 10.96.0.10 \
         (the agent believes it installed it: the switch lost it)"
    );
}

/// `trace::run` end to end: the agent's answers, `ovs-appctl` through
/// `observe::datapath`, the rendering, and the raw text behind `raw`.
#[tokio::test]
async fn trace_run_answers_through_the_agent_and_appctl() {
    let lab = lab().await;
    let mut r = req("10.0.1.2", "10.96.0.10", "tcp", Some(80));
    r.raw = true;
    let text = trace::run(&lab.ctx(), &r)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("--- trace::run\n{text}");
    assert!(
        text.starts_with("packet: tcp 10.0.1.2:40000 → 10.96.0.10:80, in on client (ofport 1)\n"),
        "{text}"
    );
    assert!(
        text.contains("verdict: Service web → backend 10.0.1.1"),
        "{text}"
    );
    assert!(text.contains("--- ovs-appctl ofproto/trace"), "{text}");
    assert!(text.contains("bridge(\"br0\")"), "{text}");
}
