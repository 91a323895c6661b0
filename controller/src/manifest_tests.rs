//! Unit tests for manifest parsing: every kind, defaults left to `resolve`, and
//! errors that name the file, document, object and field.

use super::*;

pub(crate) const VPCS: &str = include_str!("../tests/data/good/10-vpcs.yaml");
pub(crate) const WORKLOADS: &str = include_str!("../tests/data/good/20-workloads.yaml");
pub(crate) const SERVICES: &str = include_str!("../tests/data/good/30-services.yaml");

fn one_error(file: &str, text: &str) -> IntentError {
    let errs = parse_file(file, text).expect_err("the manifest is invalid");
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn parses_every_kind() {
    let vpcs = parse_file("i/10-vpcs.yaml", VPCS).unwrap();
    assert_eq!(vpcs.len(), 4);
    assert_eq!(vpcs[0].kind, Kind::Vpc);
    assert_eq!(vpcs[0].name, "blue");
    assert_eq!(vpcs[0].spec, Spec::Vpc(VpcSpec { vni: 100 }));
    assert_eq!(vpcs[2].source.document, 3);
    match &vpcs[2].spec {
        Spec::Subnet(s) => {
            assert_eq!(s.vpc, "blue");
            assert_eq!(s.cidr, "10.1.0.0/16");
            assert_eq!(s.node_blocks.len(), 2);
            assert_eq!(s.node_blocks[1].node, "dpu-2");
        }
        other => panic!("not a subnet: {other:?}"),
    }

    let workloads = parse_file("i/20-workloads.yaml", WORKLOADS).unwrap();
    let kinds: Vec<_> = workloads
        .iter()
        .map(|d| match &d.spec {
            Spec::Workload(w) => w.kind,
            other => panic!("not a workload: {other:?}"),
        })
        .collect();
    use WorkloadKindSpec::*;
    assert_eq!(kinds, [Pod, Vm, BareMetal, VnicIp]);
    assert_eq!(
        workloads[1].labels.get("tier").map(String::as_str),
        Some("front")
    );

    let services = parse_file("i/30-services.yaml", SERVICES).unwrap();
    let Spec::Service(web) = &services[0].spec else {
        panic!("not a service")
    };
    assert_eq!(services[0].kind, Kind::Service);
    assert_eq!(web.cluster_ips, ["10.96.0.10"]);
    assert_eq!(web.ports[0].target_port, Some(8080));
    assert_eq!(web.ports[1].protocol, Some(ProtocolSpec::Udp));
    assert_eq!(
        web.ports[1].target_port, None,
        "defaults are applied by resolve"
    );
    assert_eq!(web.backends[0].workload.as_deref(), Some("web-2"));
    assert_eq!(web.backends[0].weight, Some(3));
    assert_eq!(
        web.session_affinity.as_ref().map(|a| a.affinity),
        Some(AffinityType::ClientIp)
    );
    let Spec::Probe(probe) = &services[1].spec else {
        panic!("not a probe")
    };
    assert_eq!(probe.probe_type, ProbeTypeSpec::Http);
    assert_eq!(probe.period_seconds, Some(5));
    assert_eq!(probe.timeout_seconds, None);
    let Spec::Service(red) = &services[2].spec else {
        panic!("not a service")
    };
    assert_eq!(red.scenario, Some(ScenarioSpec::EipLoadBalancer));
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let text = "---\n# nothing here\n---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n---\n";
    let docs = parse_file("x.yaml", text).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].source.document, 2);
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let text =
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n---\n\
apiVersion: dpu.yusur.io/v1alpha1
kind: YusurService
metadata:
  name: web
spec:
  vpc: blue
  clusterIPs: [10.96.0.10]
  ports:
    - nmae: http
      port: 80
";
    let e = one_error("i/svc.yaml", text);
    assert_eq!(e.file.as_deref(), Some("i/svc.yaml"));
    assert_eq!(e.document, Some(2));
    assert_eq!(e.object.as_deref(), Some("YusurService/web"));
    assert_eq!(e.field.as_deref(), Some("spec.ports[0].nmae"));
    assert!(e.message.starts_with("unknown field `nmae`"), "{e}");
    assert_eq!(e.line, Some(14));
    assert!(e.to_string().starts_with(
        "i/svc.yaml: document 2: YusurService/web: spec.ports[0].nmae: unknown field"
    ));
}

#[test]
fn unknown_top_level_and_metadata_fields_are_rejected() {
    let e = one_error(
        "a.yaml",
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\nstatus: {}\n",
    );
    assert_eq!(e.field.as_deref(), Some("status"));
    assert_eq!(e.object.as_deref(), Some("Vpc/a"));
    let e = one_error(
        "a.yaml",
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a, namespace: x}\nspec: {vni: 1}\n",
    );
    assert_eq!(e.field.as_deref(), Some("metadata.namespace"));
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    let e = one_error(
        "a.yaml",
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {}\n",
    );
    assert_eq!(e.field.as_deref(), Some("spec.vni"));
    assert!(e.message.starts_with("missing field `vni`"), "{e}");
    let e = one_error(
        "a.yaml",
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: -1}\n",
    );
    assert_eq!(e.field.as_deref(), Some("spec.vni"));
    let e = one_error(
        "a.yaml",
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {kind: Container, vpc: v, ip: 10.0.0.1, node: n, port: p}\n",
    );
    assert_eq!(e.field.as_deref(), Some("spec.kind"));
    assert!(e.message.contains("unknown variant `Container`"), "{e}");
}

#[test]
fn kind_and_api_version_are_checked() {
    let e = one_error(
        "a.yaml",
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
    );
    assert_eq!(e.field.as_deref(), Some("kind"));
    assert!(e.message.contains("unknown kind \"Service\""), "{e}");
    assert!(e.message.contains("YusurService"), "{e}");
    let e = one_error(
        "a.yaml",
        "apiVersion: v1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n",
    );
    assert_eq!(e.field.as_deref(), Some("apiVersion"));
    assert_eq!(e.object.as_deref(), Some("Vpc/a"));
}

#[test]
fn yaml_syntax_error_names_file_and_line() {
    let text = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n---\nkind: [Vpc\n";
    let e = one_error("i/broken.yaml", text);
    assert_eq!(e.file.as_deref(), Some("i/broken.yaml"));
    assert_eq!(e.document, None);
    assert!(e.line.is_some());
    assert!(e.to_string().starts_with("i/broken.yaml: line "), "{e}");
    let at = format!(" at line {} column", e.line.unwrap());
    assert!(!e.message.contains(&at), "the line is named once: {e}");
}

#[test]
fn every_bad_document_is_reported() {
    let text = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1, x: 1}\n---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: b}\nspec: {y: 1}\n";
    let errs = parse_file("a.yaml", text).unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.clone().unwrap()).collect();
    assert_eq!(fields, ["spec.x", "spec.y"]);
    assert_eq!(errs[1].document, Some(2));
}

#[test]
fn cluster_ips_may_be_left_out_and_only_a_gateway_may_have_none() {
    let svc = |name: &str, scenario: &str, eip: &str| {
        format!(
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: YusurService\nmetadata: {{name: {name}}}\nspec: {{vpc: blue, scenario: {scenario}, {eip}ports: [{{port: 80}}], selector: {{app: web}}}}\n"
        )
    };
    let gw = svc(
        "gw",
        "EIPServiceGateway",
        "eip: 192.0.2.10, eipNode: dpu-1, ",
    );
    let docs = parse_file("40.yaml", &gw).expect("no clusterIPs is no longer a missing field");
    let Spec::Service(s) = &docs[0].spec else {
        panic!("{docs:?}")
    };
    assert!(s.cluster_ips.is_empty());
    let mut all = good_sample_docs("");
    all.extend(docs);
    crate::resolve::resolve(&all).expect("a gateway needs no cluster IP");

    // Every other scenario still needs one, and is told so by field.
    let mut all = good_sample_docs("");
    all.extend(parse_file("40.yaml", &svc("web-2", "ClusterIP", "")).unwrap());
    let errors = crate::resolve::resolve(&all).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].field.as_deref(),
        Some("spec.clusterIPs"),
        "{errors:?}"
    );
    assert!(
        errors[0].message.contains("at least one cluster IP"),
        "{errors:?}"
    );
}
