//! The controller going away: the real controller and agent, a private OVS,
//! real TCP through a VIP for the whole fault. Needs root; a missing
//! prerequisite fails the test.

use std::time::Duration;

use anyhow::Result;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, spawn_fault_load, web_service};
use dpu_lab::traffic;

/// The `update applied` lines of the agent's log after byte `from`, without the
/// terminal colour codes tracing puts around field names.
fn applied_lines(log: &str, from: usize) -> Vec<String> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("update applied"))
        .map(plain)
        .collect()
}

/// `line` without ANSI escape sequences (`ESC [ ... m`).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn plain_strips_colour_codes() {
    assert_eq!(
        plain("\u{1b}[3mflows_added\u{1b}[0m\u{1b}[2m=\u{1b}[0m0"),
        "flows_added=0"
    );
}

#[test]
fn with_the_controller_down_forwarding_goes_on_a_restarted_agent_restores_and_reconnecting_changes_nothing(
) -> Result<()> {
    let mut lab = backends_lab("ctd", 2, &web_service(""))?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    let version = lab.intent_version()?;
    let flows_before = traffic::flows_without_cookies(lab.flows()?);
    // dump-groups lists groups in the order they were made: compare as sets.
    let sorted = |mut g: Vec<String>| {
        g.sort();
        g
    };
    let groups_before = sorted(lab.groups()?);

    let load = spawn_fault_load(&lab)?;
    std::thread::sleep(Duration::from_secs(1));

    // The controller dies.
    lab.controller.as_mut().expect("controller").kill9()?;
    std::thread::sleep(Duration::from_secs(2));

    // The agent is killed and started again while the controller is still down:
    // it puts the persisted intent back on its own.
    lab.agent.as_mut().expect("agent").kill9()?;
    let log_mark = lab.agent_log().len();
    lab.start_agent()?;
    wait_until(
        "the restarted agent to restore and reconcile the persisted intent",
        Duration::from_secs(20),
        || {
            let log = lab.agent_log();
            let new = log.get(log_mark..).unwrap_or_default();
            new.contains("restored the last applied intent") && new.contains("reconciled")
        },
    )?;
    assert_eq!(
        traffic::flows_without_cookies(lab.flows()?),
        flows_before,
        "flows after the restore"
    );
    assert_eq!(
        sorted(lab.groups()?),
        groups_before,
        "groups after the restore"
    );
    std::thread::sleep(Duration::from_secs(2));

    // The controller comes back with the same intent: the agent resumes from its
    // version. Nothing is reapplied.
    let reconnect_mark = lab.agent_log().len();
    lab.start_controller()?;
    wait_until("the agent to reconnect", Duration::from_secs(30), || {
        lab.agent_log()
            .get(reconnect_mark..)
            .is_some_and(|l| l.contains("controller session established"))
    })?;
    wait_until(
        "the controller to see the agent at its version",
        Duration::from_secs(30),
        || {
            lab.node_status().is_ok_and(|n| {
                n["connected"] == true && n["applied_version"].as_u64() == Some(version)
            })
        },
    )?;
    assert_eq!(
        lab.intent_version()?,
        version,
        "the controller kept its version"
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = lab.agent_log();
    let redundant: Vec<String> = applied_lines(&log, reconnect_mark)
        .into_iter()
        .filter(|l| {
            !(l.contains("flows_added=0")
                && l.contains("flows_deleted=0")
                && l.contains("groups_put=0")
                && l.contains("groups_deleted=0"))
        })
        .collect();
    assert!(
        redundant.is_empty(),
        "a bundle was sent on reconnect: {redundant:#?}"
    );
    assert!(
        !log[reconnect_mark..].contains("update refused"),
        "{}",
        &log[reconnect_mark..]
    );
    assert_eq!(
        traffic::flows_without_cookies(lab.flows()?),
        flows_before,
        "flows after the reconnect"
    );
    assert_eq!(sorted(lab.groups()?), groups_before);

    let r = load.join().expect("load thread")?;
    eprintln!(
        "controller down: {} ok, {} failed of 300 at 20/s (controller killed, agent restarted without it, controller back)",
        r.ok, r.failed
    );
    assert_eq!((r.ok, r.failed), (300, 0), "{r:?}");
    Ok(())
}
