//! The fleet simulator end to end in a quick size: 20 simulated agents (each
//! its own certificate and mTLS session, every update applied with the agent's
//! code) against the real `dpu-controller serve` (the workspace's build, so
//! `cargo build --workspace --bins` first), one change and a short churn.
//! The second test runs three replicas on a 3-member etcd cluster and kills
//! the leader (the reconnect storm).
//! What it checks is what the full run measures: only the nodes that need a
//! change get it at the time, and every churn change is in force everywhere
//! it is needed.

mod common;

use std::time::Duration;

/// `dpu-bench fleet ARGS` against the workspace's `dpu-controller`, bounded
/// to 5 minutes: its output directory and the rows of its fleet.json.
fn run_fleet(args: &[&str]) -> (tempfile::TempDir, serde_json::Value) {
    let controller = dpu_lab::traffic::bin_dir()
        .expect("the workspace binaries")
        .join("dpu-controller");
    assert!(
        controller.exists(),
        "{} is missing: cargo build --workspace --bins",
        controller.display()
    );
    let out = tempfile::tempdir().unwrap();
    let mut all: Vec<std::ffi::OsString> = vec!["fleet".into()];
    all.extend(args.iter().map(Into::into));
    all.extend([
        "--controller".into(),
        controller.into(),
        "--out".into(),
        out.path().into(),
    ]);
    let what = format!("dpu-bench fleet {}", args.join(" "));
    let status = common::run_bench(&all, Duration::from_secs(300), &what);
    assert!(status.success(), "{what} failed: {status}");
    let json = std::fs::read_to_string(out.path().join("fleet.json")).unwrap();
    let rows = serde_json::from_str(&json).expect("fleet.json parses");
    (out, rows)
}

#[test]
fn a_quick_fleet_converges_and_tells_only_the_nodes_that_need_a_change() {
    let (out, rows) = run_fleet(&[
        "--nodes",
        "20",
        "--services",
        "200",
        "--rates",
        "5",
        "--churn-seconds",
        "4",
    ]);
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

/// Three replicas on a 3-member etcd cluster: the fleet converges, one change
/// reaches only its VPC, churn written to etcd is in force, and when the
/// leading replica is killed its third of the agents is served again by the
/// others (the bound: 30 s) while the others keep their sessions.
#[test]
fn three_replicas_on_etcd_survive_the_leader_killed_under_a_third_of_the_fleet() {
    let (out, rows) = run_fleet(&[
        "--replicas",
        "3",
        "--nodes",
        "30",
        "--services",
        "200",
        "--rates",
        "5",
        "--churn-seconds",
        "3",
    ]);
    let row = &rows[0];
    eprintln!("fleet 3 replicas: {row}");
    assert_eq!(row["replicas"].as_u64(), Some(3), "{row}");
    assert_eq!(row["change_affected"].as_u64(), Some(10), "{row}");
    assert_eq!(row["change_empty_early"].as_u64(), Some(0), "{row}");
    let churn = &row["churn"][0];
    assert_eq!(churn["changes"].as_u64(), Some(15), "{churn}");
    assert_eq!(
        churn["lost"].as_u64(),
        Some(0),
        "every change in force: {churn}"
    );
    let storm = &row["storm"];
    // Replica 0 starts first and leads; agents 0, 3, 6, … list it first.
    assert_eq!(storm["killed_led"].as_bool(), Some(true), "{storm}");
    assert_eq!(storm["agents_held"].as_u64(), Some(10), "{storm}");
    assert_eq!(storm["others_reconnected"].as_u64(), Some(0), "{storm}");
    let all = storm["all_served_ms"].as_f64().unwrap();
    assert!(
        all > 0.0 && all < 30_000.0,
        "all served again after {all} ms"
    );
    let md = std::fs::read_to_string(out.path().join("fleet.md")).unwrap();
    assert!(md.contains("## Reconnect storm"), "{md}");
}
