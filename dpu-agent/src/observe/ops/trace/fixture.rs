//! The golden case `basic` as the agent would hold it (intent, LbIndex,
//! ports, desired state), for the unit tests of `trace` and `explain`. The
//! trace captures under `testdata/` were taken from the same case installed
//! on a real OVS (`tests/ops_trace_real.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dpu_model::Intent;

use crate::compile::flows::DesiredState;
use crate::compile::{compile, compile_base, NodeFacts};
use crate::observe::lb_index::{Inputs, LbIndex};
use crate::state::alloc::Allocations;

pub struct Basic {
    pub intent: Intent,
    pub lb: LbIndex,
    pub ports: BTreeMap<String, u32>,
    pub desired: DesiredState,
}

pub fn intent() -> Intent {
    let text = include_str!("../../../../tests/golden/basic/intent.yaml");
    let docs = dpu_controller::manifest::parse_file("intent.yaml", text).unwrap();
    dpu_controller::resolve::resolve(&docs).unwrap()
}

/// `basic` with these ports on the bridge and these backends unhealthy.
pub fn basic_with(ports: &[(&str, u32)], unhealthy: &[(&str, &str)]) -> Basic {
    let intent = intent();
    let ports: BTreeMap<String, u32> = ports.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let unhealthy: BTreeSet<(String, IpAddr)> = unhealthy
        .iter()
        .map(|(vpc, ip)| (vpc.to_string(), ip.parse().unwrap()))
        .collect();
    let facts = NodeFacts {
        node: "dpu-1".into(),
        ports: ports.clone(),
        unhealthy: unhealthy.clone(),
        ..NodeFacts::default()
    };
    let alloc = Allocations::default().update(&intent).unwrap();
    let ready = compile_base(&intent, &alloc, &facts).ready;
    let desired = compile(&intent, &alloc, &facts).desired;
    let lb = LbIndex::build(&Inputs {
        version: 7,
        intent: &intent,
        alloc: &alloc,
        ready: &ready,
        unhealthy: &unhealthy,
        installed: Some(&desired),
    });
    Basic {
        intent,
        lb,
        ports,
        desired,
    }
}

/// Every port of `basic` on the bridge (as in its `ports.txt`), all healthy.
pub fn basic() -> Basic {
    basic_with(
        &[("client", 1), ("web-1", 2), ("web-2", 3), ("web-3", 4)],
        &[],
    )
}
