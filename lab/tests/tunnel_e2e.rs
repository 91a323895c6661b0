//! A DPU checks its own tunnel endpoint: `DpuNode.tunnelIP` must be an address
//! the switch's host has (where Geneve tunnels to it end). A wrong one is said
//! in the agent's Status (and so in `dpu-controller status`) and its log,
//! instead of failing silently. Real controller, agent and OVS; needs root.

use std::time::Duration;

use anyhow::{anyhow, Result};
use dpu_lab::multi::MultiLab;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{vpc_yaml, GW};

fn agent_error(lab: &MultiLab) -> Option<String> {
    let st = lab.status().ok()?;
    st["nodes"]["dpu-1"]["agent_status"]["last_error"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn a_tunnel_ip_that_is_not_local_is_reported() -> Result<()> {
    let mut lab = MultiLab::new("tun", 1)?;
    lab.write_manifest("00-vpc.yaml", &vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW))?;
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    lab.start_controller()?;
    lab.start_agent(0)?;
    let v = lab.wait_converged()?;
    // The fabric put the underlay address on an OVS bridge of its own: local.
    wait_until("a Status from the agent", Duration::from_secs(20), || {
        lab.status()
            .is_ok_and(|st| st["nodes"]["dpu-1"]["agent_status"].is_object())
    })?;
    assert_eq!(agent_error(&lab), None, "{:#}", lab.status()?);

    // An address nobody has.
    let wrong = "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: DpuNode\nmetadata: {name: dpu-1}\nspec: {tunnelIP: 10.255.77.9}\n";
    lab.write_manifest("05-nodes.yaml", wrong)?;
    lab.wait_converged_after(v)?;
    let mut seen = None;
    // The check runs with the full Status, every 10 s.
    wait_until(
        "the agent to report its tunnel IP",
        Duration::from_secs(25),
        || {
            seen = agent_error(&lab);
            seen.as_deref()
                .is_some_and(|e| e.contains("10.255.77.9 is not a local address"))
        },
    )
    .map_err(|e| anyhow!("{e}: last error {seen:?}"))?;
    let e = seen.unwrap();
    assert!(e.starts_with("DpuNode/dpu-1: spec.tunnelIP: "), "{e}");
    assert!(lab.agent_log(0).contains("is not a local address"));
    let table = lab.controller_cmd(&[
        "status",
        "--state-dir",
        &lab.path("controller-state").display().to_string(),
    ])?;
    assert!(
        table.contains("agent: DpuNode/dpu-1: spec.tunnelIP"),
        "{table}"
    );
    Ok(())
}
