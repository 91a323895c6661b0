//! Reading a golden case (`tests/golden/<case>/`): the manifests in
//! `intent.yaml`, through the controller's own parser and resolver, and the node
//! facts from `ports.txt` (iface-id → ofport on node dpu-1). Shared by the test
//! binaries that compile the golden cases (`golden.rs`, `native_real.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use dpu_agent::compile::{compile, Compiled, NodeFacts};
use dpu_agent::state::alloc::Allocations;
use dpu_model::Intent;

/// Every golden case directory, in name order.
pub fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    cases
}

/// The case's intent, as the controller resolves its manifests.
pub fn intent_of(dir: &Path) -> Intent {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let text = fs::read_to_string(dir.join("intent.yaml")).unwrap();
    let docs = dpu_controller::manifest::parse_file("intent.yaml", &text)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    dpu_controller::resolve::resolve(&docs).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

/// `intent` compiled for node dpu-1 with the case's ports.
pub fn compile_for(dir: &Path, intent: &Intent) -> Compiled {
    let ports = fs::read_to_string(dir.join("ports.txt")).unwrap();
    let facts = NodeFacts {
        node: "dpu-1".into(),
        // The golden cases name the host's PF representor `pf0hpf` in ports.txt
        // when they have one.
        host_port: Some("pf0hpf".into()),
        // and the uplink `p0`.
        uplink: Some(("p0".into(), "02:d9:00:00:01:01".parse().unwrap())),
        unhealthy: Default::default(),
        ports: ports
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
            .collect(),
    };
    let alloc = Allocations::default().update(intent).unwrap();
    compile(intent, &alloc, &facts)
}
