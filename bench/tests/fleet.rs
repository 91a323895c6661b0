//! The fleet simulator end to end in a quick size: 20 simulated agents (each
//! its own certificate and mTLS session, every update applied with the agent's
//! code) against the real `dpu-controller serve` (the workspace's build, so
//! `cargo build --workspace --bins` first), one change and a short churn.
//! What it checks is what the full run measures: only the nodes that need a
//! change get it at the time, and every churn change is in force everywhere
//! it is needed.

mod common;

use std::time::Duration;

#[test]
fn a_quick_fleet_converges_and_tells_only_the_nodes_that_need_a_change() {
    let controller = dpu_lab::traffic::bin_dir()
        .expect("the workspace binaries")
        .join("dpu-controller");
    assert!(
        controller.exists(),
        "{} is missing: cargo build --workspace --bins",
        controller.display()
    );
    let out = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = [
        "fleet",
        "--nodes",
        "20",
        "--services",
        "200",
        "--rates",
        "5",
        "--churn-seconds",
        "4",
        "--controller",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.extend([controller.into(), "--out".into(), out.path().into()]);
    let status = common::run_bench(&args, Duration::from_secs(300), "dpu-bench fleet");
    assert!(status.success(), "dpu-bench fleet failed: {status}");

    let json = std::fs::read_to_string(out.path().join("fleet.json")).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).expect("fleet.json parses");
    let row = &rows[0];
    eprintln!("fleet quick: {row}");
    assert_eq!(
        (row["nodes"].as_u64(), row["services"].as_u64()),
        (Some(20), Some(200))
    );
    // The changed Workload's VPC has 10 nodes; they and only they get an
    // update with something in it, and the other 10 get nothing before the
    // last of them ACKed.
    assert_eq!(row["change_affected"].as_u64(), Some(10), "{row}");
    assert_eq!(row["change_empty_early"].as_u64(), Some(0), "{row}");
    let p99 = row["change_p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 10_000.0, "one change p99 {p99} ms");
    let churn = &row["churn"][0];
    assert_eq!(churn["changes"].as_u64(), Some(20), "{churn}");
    assert_eq!(
        churn["lost"].as_u64(),
        Some(0),
        "every change in force: {churn}"
    );
    assert!(out.path().join("fleet.md").exists());
}
