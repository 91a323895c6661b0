//! The benchmark end to end in its quick mode: `dpu-bench all --quick` against the
//! real agent, OVS, iptables and nftables, and the files it writes exist and parse.
//! Needs root, Open vSwitch, iptables, nftables and the workspace binaries
//! (`cargo build --workspace --bins`); a missing one fails the test, never skips it.

mod common;

use std::time::{Duration, Instant};

use dpu_bench::results::Results;

#[test]
fn quick_run_writes_results_that_parse() {
    dpu_lab::prereq::assert_root_and_ovs();
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Bounded: the quick mode takes under 2 minutes on a quiet machine.
    let mut args: Vec<std::ffi::OsString> = vec!["all".into(), "--quick".into(), "--out".into()];
    args.push(out.path().into());
    let status = common::run_bench(&args, Duration::from_secs(600), "dpu-bench --quick");
    assert!(status.success(), "dpu-bench all --quick failed: {status}");
    eprintln!("quick run took {:.0} s", started.elapsed().as_secs_f64());

    let json = std::fs::read_to_string(out.path().join("results.json")).unwrap();
    let r: Results = serde_json::from_str(&json).expect("results.json parses");
    assert!(r.quick);
    assert!(
        !r.backends_available.is_empty(),
        "no agent backend ran: {:?}",
        r.errors
    );
    for row in &r.cold {
        assert!(
            row.error.is_none(),
            "cold {} failed: {:?}",
            row.system,
            row.error
        );
    }
    let systems: Vec<&str> = r.cold.iter().map(|c| c.system.as_str()).collect();
    for want in [
        "raw-ovs-ofctl",
        "iptables-legacy",
        "iptables-nft",
        "nftables",
    ] {
        assert!(systems.contains(&want), "no {want} in {systems:?}");
    }
    let agent = r
        .cold
        .iter()
        .find(|c| c.system.starts_with("agent-"))
        .expect("an agent row");
    let raw = r.cold.iter().find(|c| c.system == "raw-ovs-ofctl").unwrap();
    assert!(agent.flows.unwrap_or(0) > 200, "{agent:?}");
    assert_eq!(
        (agent.flows, agent.groups),
        (raw.flows, raw.groups),
        "the raw bundle is not the agent's flows and groups"
    );
    assert!(!r.churn.is_empty() && r.churn.iter().all(|c| c.changes > 0 && c.error.is_none()));
    assert_eq!(
        r.restart.len(),
        r.backends_available.len(),
        "{:?}",
        r.errors
    );
    assert!(r.restart.iter().all(|x| x.probes > 0 && x.error.is_none()));
    assert!(!r.footprint.is_empty());
    assert!(!r.lb.is_empty() && r.lb.iter().all(|l| l.error.is_none()));

    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    for heading in [
        "## 1. Cold programming",
        "## 2. Churn",
        "## 3. Agent restart",
        "## 5. Load-balancing",
    ] {
        assert!(md.contains(heading), "results.md has no {heading:?}");
    }
    for svg in ["cold_wall.svg", "cold_cpu.svg", "churn.svg"] {
        let text = std::fs::read_to_string(out.path().join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg} is not an SVG"
        );
    }
}
