//! `ovs-vswitchd` restarting under traffic: the real controller and agent, a
//! private OVS (userspace datapath, so a restart loses every flow), real TCP.
//! Needs root; a missing prerequisite fails the test.

use std::time::{Duration, Instant};

use anyhow::Result;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, web_service, VIP};
use dpu_lab::traffic;

#[test]
fn an_ovs_vswitchd_restart_is_detected_everything_is_reinstalled_and_flow_restore_wait_cleared(
) -> Result<()> {
    let mut lab = backends_lab("vsr", 2, &web_service(""))?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    let flows_before = traffic::flows_without_cookies(lab.flows()?);
    // dump-groups lists groups in the order they were made: compare as sets.
    let sorted = |mut g: Vec<String>| {
        g.sort();
        g
    };
    let groups_before = sorted(lab.groups()?);
    let version = lab.intent_version()?;

    // Background load through the VIP for the whole fault: 240 new connections,
    // one every 50 ms (about 12 s), each bounded by 1 s.
    let load = traffic::spawn_tcp_load(
        &lab.host("client")?.ns,
        &format!("{VIP}:80"),
        240,
        Duration::from_millis(50),
        Duration::from_secs(1),
    )?;
    std::thread::sleep(Duration::from_secs(2));

    // The fault: ovs-vswitchd stops (by its pid) and comes back 1 s later.
    lab.ovs.stop_vswitchd()?;
    let stopped = Instant::now();
    // The agent notices on its own OpenFlow connection and sets the key while the
    // switch is away (ovsdb-server is still up).
    let other_config = |lab: &dpu_lab::fixture::Lab| {
        lab.ovs
            .vsctl(&["get", "Open_vSwitch", ".", "other_config"])
            .unwrap_or_default()
    };
    wait_until(
        "the agent to set flow-restore-wait",
        Duration::from_secs(5),
        || other_config(&lab).contains("flow-restore-wait=\"true\""),
    )?;
    let noticed = stopped.elapsed();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(noticed));
    lab.ovs.start_vswitchd()?;
    let started = Instant::now();

    // Forwarding is back when a fresh connection through the VIP succeeds.
    let mut probe = None;
    wait_until(
        "a request through the VIP to succeed again",
        Duration::from_secs(20),
        || {
            let r = lab.client("client", &format!("{VIP}:80"), "tcp", 1);
            let ok = r.as_ref().is_ok_and(|r| r.ok == 1);
            probe = r.ok();
            ok
        },
    )?;
    let gap = stopped.elapsed();
    let after_start = started.elapsed();
    wait_until(
        "the agent to clear flow-restore-wait and verify it",
        Duration::from_secs(10),
        || {
            lab.agent_log()
                .contains("flow-restore-wait cleared and verified")
        },
    )?;
    assert!(
        !other_config(&lab).contains("flow-restore-wait"),
        "the key is gone from OVSDB: {}",
        other_config(&lab)
    );

    // Independently of the agent: the switch holds exactly what it held before,
    // and no new intent version was needed for it.
    assert_eq!(
        traffic::flows_without_cookies(lab.flows()?),
        flows_before,
        "flows after the restart"
    );
    assert_eq!(
        sorted(lab.groups()?),
        groups_before,
        "groups after the restart"
    );
    assert_eq!(lab.intent_version()?, version);

    let r = load.join().expect("load thread")?;
    eprintln!(
        "ovs-vswitchd restart: noticed after {noticed:?}; forwarding gap {gap:?} \
         (1 s down, back {after_start:?} after the start); background load: \
         {} ok, {} failed of 240 at 20/s",
        r.ok, r.failed
    );
    assert_eq!(r.ok + r.failed, 240, "{r:?}");
    // Only requests started during the gap may fail: at 20/s, with each bounded
    // by 1 s, that is at most the gap's worth plus the one in flight.
    let allowed = (gap.as_millis() / 50) as u64 + 21;
    assert!(
        r.failed <= allowed,
        "{} failed, more than the gap allows ({allowed}): {r:?}",
        r.failed
    );
    assert!(r.ok >= 240 - allowed, "{r:?}");
    Ok(())
}
