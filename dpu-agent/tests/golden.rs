//! Golden files for the compiler: `tests/golden/<case>/intent.yaml` (manifests, read
//! by the controller's own parser and resolver) and `ports.txt` (iface-id → ofport on
//! node dpu-1) go in; `expected.txt`, a readable dump of flows and groups, comes
//! out. A pipeline change shows up as a diff in these files.
//! `UPDATE_GOLDEN=1 cargo test -p dpu-agent --test golden` rewrites them.

use std::fs;
use std::path::Path;

#[path = "common/golden_case.rs"]
mod golden_case;
use golden_case::cases;

fn run_case(dir: &Path) -> String {
    let c = compile_case(dir);
    let mut out = c.desired.dump();
    out.push_str(&format!("# pending ports: {:?}\n", c.pending_ports));
    out.push_str(&format!("# unreachable: {:?}\n", c.unreachable));
    out
}

fn compile_case(dir: &Path) -> dpu_agent::compile::Compiled {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let intent = golden_case::intent_of(dir);
    assert_eq!(
        dpu_model::validate_for_node(&intent, "dpu-1"),
        vec![],
        "{name}"
    );
    golden_case::compile_for(dir, &intent)
}

/// OVS itself is the oracle for what the compiler writes: every flow and every
/// group of every golden case (all scenarios, both families) must be accepted by
/// `ovs-ofctl -O OpenFlow15 parse-flows` / `parse-group`, the parser of the very
/// tool that installs them, and come out as one OpenFlow 1.5 message each. (The
/// native binary encoder of the performance issue gets `ofp-print` as its oracle.)
#[test]
fn every_compiled_flow_and_group_is_openflow_1_5_to_ovs() {
    let dir = tempfile::tempdir().unwrap();
    for case in cases() {
        let c = compile_case(&case);
        let lines: Vec<String> = c
            .desired
            .flows
            .iter()
            .map(|(k, b)| {
                let m = if k.matches.is_empty() {
                    String::new()
                } else {
                    format!("{},", k.matches)
                };
                format!(
                    "table={},priority={},cookie={:#x},{m}actions={}",
                    k.table,
                    k.priority,
                    b.cookie.value(1),
                    b.actions
                )
            })
            .collect();
        let file = dir.path().join("flows.txt");
        fs::write(&file, lines.join("\n")).unwrap();
        let out = std::process::Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15", "parse-flows"])
            .arg(&file)
            .output()
            .expect("ovs-ofctl (openvswitch-common) is installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: ovs-ofctl refused the flows: {}",
            case.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.matches("OFPT_FLOW_MOD (OF1.5)").count(),
            lines.len(),
            "{}: one OpenFlow 1.5 flow_mod per flow",
            case.display()
        );
        for g in c.desired.groups.values() {
            let out = std::process::Command::new("ovs-ofctl")
                .args(["-O", "OpenFlow15", "parse-group", &g.spec()])
                .output()
                .unwrap();
            assert!(
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout).contains("OFPT_GROUP_MOD (OF1.5)"),
                "{}: ovs-ofctl refused group {}: {}",
                case.display(),
                g.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn golden_files_match() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(
        cases.len() >= 4,
        "golden cases missing in {}",
        root.display()
    );
    let mut failed = Vec::new();
    for dir in cases {
        let got = run_case(&dir);
        let want_path = dir.join("expected.txt");
        if update {
            fs::write(&want_path, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&want_path).unwrap_or_default();
        if got != want {
            failed.push(format!(
                "{}:\n--- expected\n{want}\n--- got\n{got}",
                dir.display()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to accept):\n{}",
        failed.join("\n")
    );
}

#[test]
fn compile_is_deterministic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/basic");
    assert_eq!(run_case(&root), run_case(&root));
}

/// OpenFlow's `learn` idle timeout is 16 bits, and the model accepts affinity
/// timeouts up to 86,400 s (as Kubernetes does): the compiler caps the learn
/// at 65,535 s, so such a Service is programmed rather than refused by the
/// switch, and the codec encodes it.
#[test]
fn an_affinity_timeout_over_16_bits_is_capped_in_the_learn() {
    use dpu_agent::reconcile::backend::ir::Action;
    use dpu_agent::reconcile::backend::native::encode_op;
    use dpu_agent::reconcile::backend::BundleOp;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/affinity");
    let mut intent = golden_case::intent_of(&dir);
    let mut capped = 0;
    for s in intent.services.values_mut() {
        if s.affinity_timeout.is_some() {
            std::sync::Arc::make_mut(s).affinity_timeout = Some(86_400);
            capped += 1;
        }
    }
    assert!(capped > 0, "the affinity case has a Service with affinity");
    assert_eq!(dpu_model::validate_for_node(&intent, "dpu-1"), vec![]);
    let c = golden_case::compile_for(&dir, &intent);
    let mut learns = 0;
    for (k, b) in &c.desired.flows {
        for a in b.actions.list() {
            if let Action::Learn(l) = a {
                assert_eq!(l.idle_timeout, u16::MAX, "{}", b.actions);
                learns += 1;
                let op = BundleOp::AddFlow {
                    key: k.clone(),
                    body: b.clone(),
                    cookie: 1,
                };
                encode_op(&op, 1).unwrap();
            }
        }
    }
    assert!(learns > 0, "no learn compiled");
}
