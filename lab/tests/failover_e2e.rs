//! An agent that knows two controllers: the real controller and agent, a private
//! OVS, real TCP through a VIP for the whole fault. Controller A dies; B comes up
//! on its own port with the same state and intent directories (a second replica
//! of one store) and the agent's session moves to it. Needs root; a missing
//! prerequisite fails the test.

use std::time::Duration;

use anyhow::Result;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, service_yaml, spawn_fault_load, web_service};

/// A second Service, on its own VIP, over the same backends: the intent change
/// made after the failover.
const OTHER_VIP: &str = "10.96.0.11";

/// Whether the agent's log after byte `from` has a line with `message` that
/// names `endpoint`. Field names carry colour codes; values do not.
fn logged(log: &str, from: usize, message: &str, endpoint: &str) -> bool {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(message) && l.contains(endpoint))
}

#[test]
fn with_controller_a_killed_the_agent_moves_to_b_and_applies_its_changes_while_traffic_flows(
) -> Result<()> {
    let mut lab = backends_lab("fov", 2, &web_service(""))?;
    let b_addr = lab.add_standby_controller()?;
    let a = format!("https://{}", lab.controller_addr);
    let b = format!("https://{b_addr}");
    lab.start_controller()?;
    lab.start_agent()?;
    let version = lab.wait_converged()?;
    assert!(
        logged(&lab.agent_log(), 0, "controller session established", &a),
        "the first session is on A ({a})"
    );

    let load = spawn_fault_load(&lab)?;
    std::thread::sleep(Duration::from_secs(1));

    // A dies. With nothing on B yet, the agent goes round the list: B fails at
    // once, then A again after the backoff.
    let mark = lab.agent_log().len();
    lab.controller.as_mut().expect("controller A").kill9()?;
    wait_until(
        "the agent to try B while it is down",
        Duration::from_secs(20),
        || logged(&lab.agent_log(), mark, "controller session failed", &b),
    )?;
    std::thread::sleep(Duration::from_secs(2));

    // B comes up with A's state and intent: the agent's session lands on it and
    // resumes from its version.
    let b_mark = lab.agent_log().len();
    let _controller_b = lab.start_controller_at(&b_addr, "controller-b")?;
    wait_until(
        "the agent's session to come up on B",
        Duration::from_secs(30),
        || {
            logged(
                &lab.agent_log(),
                b_mark,
                "controller session established",
                &b,
            )
        },
    )?;
    let log = lab.agent_log();
    assert!(
        !logged(&log, b_mark, "controller session established", &a),
        "A is dead, yet a session came up on it:\n{}",
        &log[b_mark..]
    );
    assert_eq!(lab.intent_version()?, version, "B kept A's version");

    // An intent change made now reaches the agent through B and is ACKed.
    lab.write_manifest(
        "20-other.yaml",
        &service_yaml(
            "web-other",
            "vpc-a",
            OTHER_VIP,
            "  selector: {app: web}",
            "",
        ),
    )?;
    let changed = lab.wait_converged_after(version)?;
    let other = lab.client("client", &format!("{OTHER_VIP}:80"), "tcp", 20)?;
    assert_eq!((other.ok, other.failed), (20, 0), "{other:?}");
    let log = lab.agent_log();
    assert!(
        !log[b_mark..].contains("update refused"),
        "{}",
        &log[b_mark..]
    );

    let r = load.join().expect("load thread")?;
    eprintln!(
        "failover: {} ok, {} failed of 300 at 20/s (A killed, B up on the same store, v{version} -> v{changed} applied through B)",
        r.ok, r.failed
    );
    assert_eq!((r.ok, r.failed), (300, 0), "{r:?}");
    Ok(())
}
