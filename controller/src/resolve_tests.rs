//! Unit tests for resolution: selectors and explicit backends, defaults, and
//! field and cross-object errors mapped back to file, object and manifest field.

use std::net::Ipv4Addr;

use dpu_model::{AccessScenario, Backend};

use super::*;
use crate::manifest::parse_file;

const VPCS: &str = include_str!("../tests/data/good/10-vpcs.yaml");
const WORKLOADS: &str = include_str!("../tests/data/good/20-workloads.yaml");
const SERVICES: &str = include_str!("../tests/data/good/30-services.yaml");

fn load(files: &[(&str, &str)]) -> Result<Intent, Vec<IntentError>> {
    let mut docs = Vec::new();
    for (name, text) in files {
        docs.extend(parse_file(name, text)?);
    }
    resolve(&docs)
}

fn good_plus(extra: &str) -> Result<Intent, Vec<IntentError>> {
    load(&[
        ("i/10-vpcs.yaml", VPCS),
        ("i/20-workloads.yaml", WORKLOADS),
        ("i/bad.yaml", extra),
    ])
}

fn one_error(r: Result<Intent, Vec<IntentError>>) -> IntentError {
    let errs = r.expect_err("the intent is invalid");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().unwrap()
}

fn backend(ip: [u8; 4], weight: u32, workload: Option<&str>) -> Backend {
    Backend {
        ip: Ipv4Addr::from(ip).into(),
        weight,
        workload: workload.map(str::to_string),
        vpc: "blue".into(),
    }
}

const SVC_HEAD: &str = "apiVersion: dpu.yusur.io/v1alpha1\nkind: YusurService\n";

#[test]
fn good_set_resolves_with_defaults() {
    let intent = load(&[
        ("i/10-vpcs.yaml", VPCS),
        ("i/20-workloads.yaml", WORKLOADS),
        ("i/30-services.yaml", SERVICES),
    ])
    .unwrap();
    assert_eq!(intent.vpcs.len(), 2);
    assert_eq!(intent.subnets.len(), 2);
    assert_eq!(intent.workloads.len(), 4);
    let web = &intent.services["web"];
    // Selector app=web in blue finds web-1 and web-2 (not red-1 in red); the
    // explicit entry sets web-2's weight; the explicit IP adds one. Sorted by IP.
    assert_eq!(
        web.backends,
        [
            backend([10, 1, 1, 10], 1, Some("web-1")),
            backend([10, 1, 1, 99], 1, None),
            backend([10, 1, 2, 10], 3, Some("web-2")),
        ]
    );
    assert_eq!(web.ports[0].target_port, 8080);
    assert_eq!(web.ports[1].target_port, 53, "targetPort defaults to port");
    assert_eq!(web.affinity_timeout, Some(10_800));
    let red = &intent.services["red-web"];
    let red_1 = Backend {
        vpc: "red".into(),
        ..backend([10, 1, 3, 10], 1, Some("red-1"))
    };
    assert_eq!(red.backends, [red_1]);
    assert_eq!(red.scenario, AccessScenario::EipLoadBalancer);
    assert_eq!(red.eip_node.as_deref(), Some("node-a"));
    let probe = &intent.probes["web-http"];
    assert_eq!((probe.period_ms, probe.timeout_ms), (5_000, 1_000));
    assert_eq!((probe.success_threshold, probe.failure_threshold), (1, 3));
}

#[test]
fn selector_resolution() {
    let svc = |selector: &str, backends: &str| {
        format!(
            "{SVC_HEAD}metadata: {{name: s}}\nspec:\n  vpc: blue\n  clusterIPs: [10.96.0.20]\n  ports: [{{port: 80}}]\n{selector}{backends}"
        )
    };
    let backends_of = |text: String| good_plus(&text).unwrap().services["s"].backends.clone();
    // No selector, or an empty one, selects nothing.
    assert!(backends_of(svc("", "")).is_empty());
    assert!(backends_of(svc("  selector: {}\n", "")).is_empty());
    // Every pair must match.
    assert_eq!(
        backends_of(svc("  selector: {app: web, tier: front}\n", "")),
        [backend([10, 1, 2, 10], 1, Some("web-2"))]
    );
    // An explicit workload the selector missed is added with its weight; an
    // explicit IP equal to a selected workload's sets that backend's weight.
    assert_eq!(
        backends_of(svc(
            "  selector: {app: web}\n",
            "  backends:\n    - {workload: db-1, weight: 2}\n    - {ip: 10.1.1.10, weight: 0}\n"
        )),
        [
            backend([10, 1, 1, 10], 0, Some("web-1")),
            backend([10, 1, 1, 20], 2, Some("db-1")),
            backend([10, 1, 2, 10], 1, Some("web-2")),
        ]
    );
}

#[test]
fn port_zero_names_file_document_object_field() {
    let text = format!(
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {{name: green}}\nspec: {{vni: 300}}\n---\n{SVC_HEAD}metadata: {{name: web}}\nspec:\n  vpc: blue\n  clusterIPs: [10.96.0.10]\n  ports: [{{port: 0}}]\n"
    );
    let e = one_error(good_plus(&text));
    assert_eq!(
        e.to_string(),
        "i/bad.yaml: document 2: YusurService/web: spec.ports[0].port: port 0 is not allowed (1..=65535)"
    );
}

#[test]
fn empty_name_is_named() {
    let text =
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: \"\"}\nspec: {vni: 5}\n";
    let e = one_error(good_plus(text));
    assert_eq!(e.object.as_deref(), Some("Vpc/<unnamed>"));
    assert_eq!(e.field.as_deref(), Some("metadata.name"));
}

#[test]
fn bad_cidr_is_named() {
    let text = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: blue-b}\nspec: {vpc: blue, cidr: 10.2.0.0/33, gateway: 10.2.0.1}\n";
    let e = one_error(good_plus(text));
    assert_eq!(e.file.as_deref(), Some("i/bad.yaml"));
    assert_eq!(e.object.as_deref(), Some("Subnet/blue-b"));
    assert_eq!(e.field.as_deref(), Some("spec.cidr"));
    assert!(e.message.contains("is not a CIDR"), "{e}");
}

#[test]
fn backend_outside_its_vpc_is_named_by_manifest_index() {
    let text = format!(
        "{SVC_HEAD}metadata: {{name: s}}\nspec:\n  vpc: blue\n  clusterIPs: [10.96.0.20]\n  ports: [{{port: 80}}]\n  selector: {{app: web}}\n  backends:\n    - ip: 10.1.1.99\n    - ip: 192.168.7.7\n"
    );
    let e = one_error(good_plus(&text));
    assert_eq!(e.object.as_deref(), Some("YusurService/s"));
    assert_eq!(e.field.as_deref(), Some("spec.backends[1].ip"));
    assert!(e.message.contains("outside Vpc/blue"), "{e}");
}

#[test]
fn duplicate_vip_port_in_one_vpc() {
    let text = format!(
        "{SVC_HEAD}metadata: {{name: a}}\nspec: {{vpc: blue, clusterIPs: [10.96.0.20], ports: [{{port: 80}}]}}\n---\n{SVC_HEAD}metadata: {{name: b}}\nspec: {{vpc: blue, clusterIPs: [10.96.0.20], ports: [{{port: 80}}]}}\n"
    );
    let e = one_error(good_plus(&text));
    assert_eq!(e.document, Some(2));
    assert_eq!(e.object.as_deref(), Some("YusurService/b"));
    assert_eq!(e.field.as_deref(), Some("spec.clusterIPs[0]"));
    assert_eq!(
        e.message,
        "10.96.0.20:80/tcp in Vpc/blue is also served by YusurService/a (i/bad.yaml, document 1, spec.clusterIPs[0])"
    );
}

const GOOD: [(&str, &str); 3] = [
    ("i/10-vpcs.yaml", VPCS),
    ("i/20-workloads.yaml", WORKLOADS),
    ("i/30-services.yaml", SERVICES),
];

fn docs_of(files: &[(&str, &str)]) -> Vec<Doc> {
    let mut docs = Vec::new();
    for (name, text) in files {
        docs.extend(parse_file(name, text).unwrap());
    }
    docs
}

/// A second Service on web's VIP:port (10.96.0.10:80/TCP), named `name`, in
/// `i/99-dup.yaml`.
fn dup_of_web(name: &str) -> String {
    format!(
        "{SVC_HEAD}metadata: {{name: {name}}}\nspec: {{vpc: blue, clusterIPs: [10.96.0.10], ports: [{{port: 80}}]}}\n"
    )
}

/// Two Services on one VIP:port: whichever name sorts first, the one error
/// names both Services, each with its file, document and field.
#[test]
fn a_vip_port_conflict_names_both_services_and_both_files_in_either_order() {
    let web = "YusurService/web (i/30-services.yaml, document 1, spec.clusterIPs[0])";
    let dup = |n: &str| format!("YusurService/{n} (i/99-dup.yaml, document 1, spec.clusterIPs[0])");
    for name in ["a-dup", "z-dup"] {
        let text = dup_of_web(name);
        let mut files = GOOD.to_vec();
        files.push(("i/99-dup.yaml", &text));
        let e = one_error(resolve(&docs_of(&files)));
        // Without history, the model's choice: the name that sorts later.
        let (at, file, other) = if name < "web" {
            ("YusurService/web", "i/30-services.yaml", dup(name))
        } else {
            (
                &*format!("YusurService/{name}"),
                "i/99-dup.yaml",
                web.to_string(),
            )
        };
        assert_eq!(e.object.as_deref(), Some(at), "{e}");
        assert_eq!(e.file.as_deref(), Some(file), "{e}");
        assert_eq!(e.field.as_deref(), Some("spec.clusterIPs[0]"), "{e}");
        assert_eq!(
            e.message,
            format!("10.96.0.10:80/tcp in Vpc/blue is also served by {other}"),
            "{e}"
        );
    }
}

/// Across a reload the newcomer is blamed: the error is at the Service that
/// is new since the last good manifests, at its file, naming the untouched
/// one and its file, whichever name sorts first.
#[test]
fn across_a_reload_a_conflict_is_reported_at_the_newcomer() {
    let before = resolve(&docs_of(&GOOD)).unwrap();
    for name in ["a-dup", "z-dup"] {
        let text = dup_of_web(name);
        let mut files = GOOD.to_vec();
        files.push(("i/99-dup.yaml", &text));
        let e = one_error(resolve_since(&docs_of(&files), Some(&before)));
        assert_eq!(
            e.to_string(),
            format!(
                "i/99-dup.yaml: document 1: YusurService/{name}: spec.clusterIPs[0]: 10.96.0.10:80/tcp in Vpc/blue is also served by YusurService/web (i/30-services.yaml, document 1, spec.clusterIPs[0])"
            )
        );
    }
    // A changed Service counts as the newcomer too: web moves onto the VIP of
    // an untouched Service.
    let mut files = GOOD.to_vec();
    let other = format!(
        "{SVC_HEAD}metadata: {{name: a-other}}\nspec: {{vpc: blue, clusterIPs: [10.96.0.77], ports: [{{port: 80}}]}}\n"
    );
    files.push(("i/05-other.yaml", &other));
    let before = resolve(&docs_of(&files)).unwrap();
    let moved = SERVICES.replacen("clusterIPs: [10.96.0.10]", "clusterIPs: [10.96.0.77]", 1);
    files[2] = ("i/30-services.yaml", &moved);
    let e = one_error(resolve_since(&docs_of(&files), Some(&before)));
    assert_eq!(e.object.as_deref(), Some("YusurService/web"), "{e}");
    assert_eq!(e.file.as_deref(), Some("i/30-services.yaml"), "{e}");
    assert!(
        e.message
            .ends_with("YusurService/a-other (i/05-other.yaml, document 1, spec.clusterIPs[0])"),
        "{e}"
    );
    // Both new: the model's choice, still naming both.
    let e = one_error(resolve_since(&docs_of(&files), None));
    assert_eq!(e.object.as_deref(), Some("YusurService/web"), "{e}");
}

/// Other pairwise conflicts name both objects and both files too.
#[test]
fn address_port_and_vni_conflicts_name_both_objects_and_files() {
    const W: &str = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\n";
    let cases = [
        (
            format!("{W}metadata: {{name: a-pod}}\nspec: {{kind: Pod, vpc: blue, ip: 10.1.1.10, mac: \"02:00:00:00:09:01\", node: dpu-9, port: p}}\n"),
            "Workload/web-1",
            "spec.ip",
            "10.1.1.10 in Vpc/blue is also the address of Workload/a-pod (i/99.yaml, document 1, spec.ip)",
        ),
        (
            format!("{W}metadata: {{name: z-pod}}\nspec: {{kind: Pod, vpc: blue, ip: 10.1.1.11, mac: \"02:00:00:00:09:01\", node: dpu-1, port: web-1-eth0}}\n"),
            "Workload/z-pod",
            "spec.port",
            "port web-1-eth0 on node dpu-1 is also bound to Workload/web-1 (i/20-workloads.yaml, document 1, spec.port)",
        ),
        (
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a-vpc}\nspec: {vni: 100}\n".to_string(),
            "Vpc/blue",
            "spec.vni",
            "VNI 100 is also the VNI of Vpc/a-vpc (i/99.yaml, document 1, spec.vni)",
        ),
    ];
    for (text, object, field, message) in cases {
        let mut files = GOOD.to_vec();
        files.push(("i/99.yaml", &text));
        let e = one_error(resolve(&docs_of(&files)));
        assert_eq!(e.object.as_deref(), Some(object), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert_eq!(e.message, message, "{e}");
    }
}

/// What an agent would refuse of its share, the controller refuses: a
/// workload without a MAC (its node's agent binds its port by it), a VNicIP
/// alone on its port without one, ClientIP affinity with IPv6 addresses.
#[test]
fn what_an_agent_would_refuse_is_refused_with_file_object_and_field() {
    const W: &str = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: nomac}\n";
    let e = one_error(good_plus(&format!(
        "{W}spec: {{kind: VM, vpc: blue, ip: 10.1.1.77, node: dpu-7, port: nomac-eth0}}\n"
    )));
    assert_eq!(
        e.to_string(),
        "i/bad.yaml: document 1: Workload/nomac: spec.mac: a workload needs a MAC address: the agent of node dpu-7 binds its port by it"
    );
    let e = one_error(good_plus(&format!(
        "{SVC_HEAD}metadata: {{name: v6}}\nspec:\n  vpc: blue\n  clusterIPs: [\"fd00:96::1\"]\n  ports: [{{port: 80}}]\n  sessionAffinity: {{type: ClientIP}}\n"
    )));
    assert_eq!(e.object.as_deref(), Some("YusurService/v6"), "{e}");
    assert_eq!(e.field.as_deref(), Some("spec.sessionAffinity"), "{e}");
    assert!(e.message.contains("IPv4 only"), "{e}");
    // A reported pod without a MAC is named without a file.
    let docs = docs_of(&GOOD);
    let pod = dpu_model::Workload {
        name: "pod-x".into(),
        kind: dpu_model::WorkloadKind::Pod,
        vpc: "blue".into(),
        ip: Ipv4Addr::new(10, 1, 1, 66),
        ipv6: None,
        mac: None,
        labels: Default::default(),
        node: "dpu-1".into(),
        port: "pod-x-eth0".into(),
    };
    let e = one_error(resolve_with(&docs, &[pod]));
    assert_eq!(e.file, None);
    assert_eq!(e.object.as_deref(), Some("Workload/pod-x"));
    assert_eq!(e.field.as_deref(), Some("spec.mac"));
}

#[test]
fn unknown_or_foreign_workload_in_backends() {
    let svc = |backends: &str| {
        format!(
            "{SVC_HEAD}metadata: {{name: s}}\nspec:\n  vpc: blue\n  clusterIPs: [10.96.0.20]\n  ports: [{{port: 80}}]\n  backends:\n{backends}"
        )
    };
    let e = one_error(good_plus(&svc(
        "    - ip: 10.1.1.99\n    - workload: ghost\n",
    )));
    assert_eq!(e.file.as_deref(), Some("i/bad.yaml"));
    assert_eq!(e.object.as_deref(), Some("YusurService/s"));
    assert_eq!(e.field.as_deref(), Some("spec.backends[1].workload"));
    assert_eq!(e.message, "Workload/ghost does not exist");
    let e = one_error(good_plus(&svc("    - workload: red-1\n")));
    assert_eq!(e.field.as_deref(), Some("spec.backends[0].workload"));
    assert!(e.message.contains("is in Vpc/red"), "{e}");
    let e = one_error(good_plus(&svc("    - weight: 2\n")));
    assert_eq!(e.field.as_deref(), Some("spec.backends[0]"));
    let e = one_error(good_plus(&svc(
        "    - ip: 10.1.1.99\n    - ip: 10.1.1.99\n",
    )));
    assert_eq!(e.field.as_deref(), Some("spec.backends[1]"));
}

#[test]
fn duplicate_names_across_files_name_both() {
    let dup =
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: blue}\nspec: {vni: 999}\n";
    let e = one_error(good_plus(dup));
    assert_eq!(e.file.as_deref(), Some("i/bad.yaml"));
    assert_eq!(e.object.as_deref(), Some("Vpc/blue"));
    assert!(e.message.contains("i/10-vpcs.yaml (document 1)"), "{e}");
}

#[test]
fn probe_fields_are_named_in_seconds() {
    let text = format!(
        "{SVC_HEAD}metadata: {{name: s}}\nspec: {{vpc: blue, clusterIPs: [10.96.0.20], ports: [{{port: 80}}]}}\n---\napiVersion: dpu.yusur.io/v1alpha1\nkind: NetworkProbe\nmetadata: {{name: p}}\nspec: {{service: s, type: TCP, port: 80, periodSeconds: 0}}\n"
    );
    let e = one_error(good_plus(&text));
    assert_eq!(e.object.as_deref(), Some("NetworkProbe/p"));
    assert_eq!(e.field.as_deref(), Some("spec.periodSeconds"));
}

#[test]
fn cross_object_errors_map_to_their_file() {
    let text = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: lost}\nspec: {kind: Pod, vpc: nowhere, ip: 10.9.9.9, mac: \"02:00:00:00:09:09\", node: dpu-1, port: p}\n";
    let e = one_error(good_plus(text));
    assert_eq!(e.file.as_deref(), Some("i/bad.yaml"));
    assert_eq!(e.object.as_deref(), Some("Workload/lost"));
    assert_eq!(e.field.as_deref(), Some("spec.vpc"));
}

#[test]
fn dpu_nodes_resolve_and_bad_tunnel_addresses_name_the_field() {
    const NODE: &str = "apiVersion: dpu.yusur.io/v1alpha1\nkind: DpuNode\n";
    let two = format!(
        "{NODE}metadata: {{name: dpu-1}}\nspec: {{tunnelIP: 192.168.50.1}}\n---\n{NODE}metadata: {{name: dpu-2}}\nspec: {{tunnelIP: 192.168.50.2}}\n"
    );
    let intent = good_plus(&two).unwrap();
    assert_eq!(
        intent.nodes["dpu-2"].tunnel_ip,
        "192.168.50.2".parse::<std::net::Ipv4Addr>().unwrap()
    );

    for (spec, want) in [
        ("{tunnelIP: 127.0.0.1}", "not a unicast underlay address"),
        ("{tunnelIP: nope}", "is not an IP address"),
        ("{tunnelIP: \"fd00::1\"}", "an IPv4 address is needed"),
        ("{tunnelIP: 224.0.0.9}", "not a unicast underlay address"),
    ] {
        let e = one_error(good_plus(&format!(
            "{NODE}metadata: {{name: dpu-3}}\nspec: {spec}\n"
        )));
        assert_eq!(e.object.as_deref(), Some("DpuNode/dpu-3"), "{e}");
        assert_eq!(e.field.as_deref(), Some("spec.tunnelIP"), "{e}");
        assert!(e.message.contains(want), "{spec}: {e}");
    }
    for (spec, field, want) in [
        (
            "{tunnelIP: 192.168.50.9, hostIP: 172.16.0.1}",
            "spec.hostMAC",
            "required with spec.hostIP",
        ),
        (
            "{tunnelIP: 192.168.50.9, hostIP: 10.1.1.200, hostMAC: \"0a:00:00:00:ff:01\"}",
            "spec.hostIP",
            "10.1.1.200 is inside Subnet/blue-a (i/10-vpcs.yaml, document 3, spec.cidr), 10.1.0.0/16 in Vpc/blue",
        ),
    ] {
        let e = one_error(good_plus(&format!(
            "{NODE}metadata: {{name: dpu-3}}\nspec: {spec}\n"
        )));
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(e.message.contains(want), "{spec}: {e}");
    }
    let e = one_error(good_plus(&format!(
        "{two}---\n{NODE}metadata: {{name: dpu-3}}\nspec: {{tunnelIP: 192.168.50.2}}\n"
    )));
    assert_eq!(e.field.as_deref(), Some("spec.tunnelIP"), "{e}");
    assert!(
        e.message.contains(
            "is also the tunnel address of DpuNode/dpu-2 (i/bad.yaml, document 2, spec.tunnelIP)"
        ),
        "{e}"
    );
    let e = one_error(good_plus(&format!(
        "{NODE}metadata: {{name: dpu-3}}\nspec: {{tunnelIP: 10.0.0.1, vni: 3}}\n"
    )));
    assert!(e.message.contains("vni"), "unknown fields are refused: {e}");
}

#[test]
fn a_vnic_ip_must_sit_on_an_owned_port_of_its_vpc_with_its_mac() {
    const W: &str = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: v}\n";
    let ok = good_plus(&format!(
        "{W}spec: {{kind: VNicIP, vpc: blue, ip: 10.1.1.99, node: dpu-1, port: web-1-eth0}}\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
    // On a port no other workload has, a VNicIP binds it itself, by its own
    // MAC: without one, its node's agent could not bind it, so the controller
    // refuses it.
    let own = good_plus(&format!(
        "{W}spec: {{kind: VNicIP, vpc: blue, ip: 10.1.1.99, mac: \"02:00:00:00:09:09\", node: dpu-1, port: v-eth0}}\n"
    ));
    assert!(own.is_ok(), "{own:?}");
    let e = one_error(good_plus(&format!(
        "{W}spec: {{kind: VNicIP, vpc: blue, ip: 10.1.1.99, node: dpu-1, port: v-eth0}}\n"
    )));
    assert_eq!(e.field.as_deref(), Some("spec.mac"), "{e}");
    assert!(e.message.contains("none there has one"), "{e}");
    for (spec, field, want) in [
        ("{kind: VNicIP, vpc: red, ip: 10.1.1.99, node: dpu-1, port: web-1-eth0}", "spec.vpc", "same VPC"),
        ("{kind: VNicIP, vpc: blue, ip: 10.1.1.99, mac: \"02:00:00:00:09:09\", node: dpu-1, port: web-1-eth0}", "spec.mac", "02:00:00:00:01:0a"),
    ] {
        let e = one_error(good_plus(&format!("{W}spec: {spec}\n")));
        assert_eq!(e.object.as_deref(), Some("Workload/v"), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(e.message.contains(want), "{spec}: {e}");
    }
}

/// EIPs, service gateways, IPv6 and bare metal: each bad case is refused with its
/// object and field named.
#[test]
fn eip_gateway_ipv6_and_bare_metal_rules_name_the_field() {
    let svc = |name: &str, spec: &str| {
        format!("---\n{SVC_HEAD}metadata: {{name: {name}}}\nspec:\n  vpc: blue\n  ports: [{{port: 80}}]\n{spec}")
    };
    let cases = [
        (
            svc("s", "  clusterIPs: [10.96.0.30]\n  scenario: EIPLoadBalancer\n  eip: 10.1.5.5\n  eipNode: dpu-1\n"),
            "YusurService/s",
            "spec.eip",
            "inside Subnet/",
        ),
        (
            svc("s", "  clusterIPs: [10.96.0.30]\n  scenario: EIPLoadBalancer\n  eip: 203.0.113.7\n  eipNode: dpu-1\n"),
            "YusurService/s",
            "spec.eip",
            "is also the EIP of YusurService/red-web (i/30-services.yaml, document 3, spec.eip)",
        ),
        (
            svc("s", "  clusterIPs: [10.96.0.30]\n  scenario: EIPLoadBalancer\n  eip: 203.0.113.8\n"),
            "YusurService/s",
            "spec.eipNode",
            "go together",
        ),
        (
            svc("s", "  clusterIPs: [10.96.0.30]\n  backends: [{ip: 10.1.3.10, vpc: red}]\n"),
            "YusurService/s",
            "spec.backends[0].vpc",
            "only a service-gateway Service",
        ),
        (
            svc("s", "  clusterIPs: [10.96.0.30]\n  scenario: EIPServiceGateway\n  eip: 203.0.113.8\n  eipNode: dpu-1\n"),
            "YusurService/s",
            "spec.clusterIPs",
            "no cluster IP",
        ),
        (
            svc("s", "  clusterIPs: []\n  scenario: EIPServiceGateway\n  eip: 203.0.113.8\n  eipNode: dpu-1\n  backends: [{ip: \"fd00:1::5\"}]\n"),
            "YusurService/s",
            "spec.backends[0].ip",
            "IPv6",
        ),
        (
            "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: v6}\nspec: {kind: Pod, vpc: blue, ip: 10.1.1.77, ipv6: \"fd00:9::7\", mac: \"02:00:00:00:01:4d\", node: dpu-1, port: v6-eth0}\n".to_string(),
            "Workload/v6",
            "spec.ipv6",
            "not inside any Subnet",
        ),
        (
            "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: bm}\nspec: {kind: BareMetal, vpc: blue, ip: 10.1.1.78, mac: \"02:00:00:00:01:4e\", node: dpu-1, port: web-1-eth0}\n".to_string(),
            "Workload/bm",
            "spec.port",
            "shared port",
        ),
        (
            "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: v6-blocks}\nspec: {vpc: blue, cidr: \"fd00:1::/64\", gateway: \"fd00:1::1\", nodeBlocks: [{node: dpu-1, cidr: 10.9.0.0/24}]}\n".to_string(),
            "Subnet/v6-blocks",
            "spec.nodeBlocks",
            "IPv4 only",
        ),
    ];
    for (text, object, field, want) in cases {
        let e = one_error(load(&[
            ("i/10-vpcs.yaml", VPCS),
            ("i/20-workloads.yaml", WORKLOADS),
            ("i/30-services.yaml", SERVICES),
            ("i/bad.yaml", &text),
        ]));
        assert_eq!(e.object.as_deref(), Some(object), "{text}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{text}: {e}");
        assert!(e.message.contains(want), "{text}: {e}");
    }
}

/// A dual-stack workload behind a Service with an IPv6 cluster IP is two
/// backends, one per family; a v4-only Service keeps one.
#[test]
fn an_ipv6_cluster_ip_brings_the_ipv6_address_of_each_workload() {
    let v6 = "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: blue-6}\nspec: {vpc: blue, cidr: \"fd00:1::/64\", gateway: \"fd00:1::1\"}\n---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: ds, labels: {app: ds}}\nspec: {kind: Pod, vpc: blue, ip: 10.1.1.90, ipv6: \"fd00:1::90\", mac: \"02:00:00:00:01:5a\", node: dpu-1, port: ds-eth0}\n";
    let both = format!("{v6}---\n{SVC_HEAD}metadata: {{name: ds}}\nspec:\n  vpc: blue\n  clusterIPs: [10.96.0.90, \"fd00:96::90\"]\n  ports: [{{port: 80}}]\n  selector: {{app: ds}}\n---\n{SVC_HEAD}metadata: {{name: ds4}}\nspec:\n  vpc: blue\n  clusterIPs: [10.96.0.91]\n  ports: [{{port: 80}}]\n  selector: {{app: ds}}\n");
    let i = good_plus(&both).unwrap();
    let ips = |s: &str| -> Vec<String> {
        i.services[s]
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect()
    };
    assert_eq!(ips("ds"), ["10.1.1.90", "fd00:1::90"]);
    assert_eq!(ips("ds4"), ["10.1.1.90"]);
}

/// `resolve_after` reuses what did not change, and gives exactly what
/// resolving everything gives: the same intent, or the same errors. Each edit
/// is made after the good set; what a Service selects or names changes in most.
#[test]
fn resolving_after_a_change_equals_resolving_everything() {
    let edits: [(&str, &str, &str); 9] = [
        // A selected Workload relabelled out of its Service.
        (
            "i/20-workloads.yaml",
            "  name: web-1\n  labels:\n    app: web",
            "  name: web-1\n  labels:\n    app: other",
        ),
        // A Workload relabelled into a Service.
        (
            "i/20-workloads.yaml",
            "  name: db-1\n  labels:\n    app: db",
            "  name: db-1\n  labels:\n    app: web",
        ),
        // The Workload an explicit backend names moves its address.
        ("i/20-workloads.yaml", "ip: 10.1.2.10", "ip: 10.1.2.11"),
        // A Workload in another VPC with the selected label changes: nothing
        // of blue's Service depends on it.
        ("i/20-workloads.yaml", "ip: 10.1.3.10", "ip: 10.1.3.11"),
        // A selected Workload gets an IPv6 address.
        (
            "i/20-workloads.yaml",
            "  ip: 10.1.1.10\n",
            "  ip: 10.1.1.10\n  ipv6: fd00::10\n",
        ),
        // A Service's own spec changes.
        ("i/30-services.yaml", "weight: 3", "weight: 5"),
        // A Workload disappears from under an explicit backend: an error.
        ("i/20-workloads.yaml", "  name: web-2\n", "  name: web-9\n"),
        // Two Workloads on one address: a cross-object error.
        ("i/20-workloads.yaml", "ip: 10.1.1.20", "ip: 10.1.1.10"),
        // Nothing changes.
        ("i/20-workloads.yaml", "", ""),
    ];
    let before_docs = docs_of(&GOOD);
    let before = resolve(&before_docs).unwrap();
    for (file, from, to) in edits {
        let mut texts: Vec<(&str, String)> =
            GOOD.iter().map(|(f, t)| (*f, t.to_string())).collect();
        let text = &mut texts.iter_mut().find(|(f, _)| *f == file).unwrap().1;
        assert!(text.contains(from), "{from:?} is in {file}");
        *text = text.replacen(from, to, 1);
        let files: Vec<(&str, &str)> = texts.iter().map(|(f, t)| (*f, t.as_str())).collect();
        let docs = docs_of(&files);
        let after = resolve_after(&docs, &before_docs, &before);
        let everything = resolve_since(&docs, Some(&before));
        assert_eq!(after, everything, "after {from:?} -> {to:?} in {file}");
        if let Ok(intent) = after {
            // What did not change is shared with the previous intent.
            let shared = intent
                .services
                .iter()
                .filter(|(n, s)| {
                    before
                        .services
                        .get(*n)
                        .is_some_and(|b| std::sync::Arc::ptr_eq(b, s))
                })
                .count();
            let equal = intent
                .services
                .iter()
                .filter(|(n, s)| before.services.get(*n) == Some(*s))
                .count();
            assert_eq!(
                shared, equal,
                "every unchanged Service is reused ({from:?})"
            );
        }
    }
}
