//! Faults end to end: the real controller and agent, a private OVS (userspace
//! datapath) and real TCP/UDP through a VIP, with the fault made for real in the
//! switch. Needs root; a missing prerequisite fails the test.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use dpu_lab::fixture::{tail, Lab};
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, service_yaml, VIP};
use dpu_lab::traffic::TrafficResult;

/// EndpointDnat (docs/pipeline.md): one flow per backend endpoint and target port,
/// plus the table miss.
const ENDPOINT_DNAT: u8 = 45;

/// The Service `web` (VIP:80/tcp→8080, VIP:53/udp→5353) with these backends
/// (`ip` or `ip, weight: w`).
fn web_with(backends: &[&str]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| match b.split_once(", ") {
            Some((ip, rest)) => format!("    - {{ip: \"{ip}\", {rest}}}"),
            None => format!("    - {{ip: \"{b}\"}}"),
        })
        .collect();
    service_yaml(
        "web",
        "vpc-a",
        VIP,
        &format!("  backends:\n{}", list.join("\n")),
        "",
    )
}

/// The flows of one table, without statistics.
fn table_flows(lab: &Lab, table: u8) -> Result<Vec<String>> {
    let out = lab.ovs.ofctl(&[
        "--no-stats",
        "dump-flows",
        &lab.ovs.mgmt(&lab.bridge),
        &format!("table={table}"),
    ])?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("OFPST_") && !l.starts_with("NXST_"))
        .map(str::to_string)
        .collect())
}

/// TCP to VIP:80 and UDP to VIP:53, `n` requests each, back to back; every one
/// must be answered.
fn traffic_ok(lab: &Lab, n: u32, what: &str) -> Result<(TrafficResult, TrafficResult)> {
    let t = Instant::now();
    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", n)?;
    let udp = lab.client("client", &format!("{VIP}:53"), "udp", n)?;
    eprintln!("{what}: {n} tcp + {n} udp in {:?}", t.elapsed());
    assert_eq!(
        (tcp.ok, tcp.failed),
        (u64::from(n), 0),
        "{what}, tcp: {tcp:?}"
    );
    assert_eq!(
        (udp.ok, udp.failed),
        (u64::from(n), 0),
        "{what}, udp: {udp:?}"
    );
    Ok((tcp, udp))
}

/// Removes terminal colour sequences (the agent logs with them).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A converged lab (web-1 and web-2 behind `web`, web-3 idle) whose EndpointDnat
/// the switch caps at what it holds, and a third backend written: returns once the
/// controller shows the agent's NACK, having checked the reason, the versions, the
/// flows and groups, and traffic. Returns the lab, the applied version and the
/// refused one.
fn nack_from_a_capped_table(tag: &str) -> Result<(Lab, u64, u64)> {
    let mut lab = backends_lab(tag, 3, &web_with(&["10.0.1.11", "10.0.1.12"]))?;
    lab.start_controller()?;
    lab.start_agent()?;
    let v1 = lab.wait_converged()?;

    let (tcp, udp) = traffic_ok(&lab, 40, "before the fault")?;
    for b in ["web-1", "web-2"] {
        assert!(
            tcp.count_for(b) > 0 && udp.count_for(b) > 0,
            "{b} unused: {tcp:?} {udp:?}"
        );
    }
    let flows_before = lab.flows()?;
    let groups_before = lab.groups()?;
    let dnat = table_flows(&lab, ENDPOINT_DNAT)?;
    // 2 backends × 2 target ports, and the table miss.
    assert_eq!(dnat.len(), 5, "EndpointDnat holds {dnat:#?}");

    // Cap EndpointDnat at exactly what it holds now.
    lab.ovs.vsctl(&[
        "--",
        "--id=@ft",
        "create",
        "Flow_Table",
        &format!("flow_limit={}", dnat.len()),
        "overflow_policy=refuse",
        "name=capped-by-test",
        "--",
        "set",
        "Bridge",
        &lab.bridge,
        &format!("flow_tables:{ENDPOINT_DNAT}=@ft"),
    ])?;
    // The cap is in force before the agent meets it: one flow more is refused.
    let probe = lab.ovs.ofctl(&[
        "add-flow",
        &lab.ovs.mgmt(&lab.bridge),
        &format!("table={ENDPOINT_DNAT},priority=1,reg3=0x1,actions=drop"),
    ]);
    let probe = format!("{probe:?}");
    assert!(
        probe.contains("OFPFMFC_TABLE_FULL"),
        "a flow past the cap was not refused: {probe}"
    );
    assert_eq!(lab.flows()?, flows_before, "the probe changed flows");

    // The change the switch cannot take: a third backend needs two more
    // EndpointDnat flows (8080/tcp and 5353/udp on 10.0.1.13).
    let t0 = Instant::now();
    lab.write_manifest(
        "10-svc.yaml",
        &web_with(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]),
    )?;
    let mut node = serde_json::Value::Null;
    let mut v2 = 0;
    wait_until(
        "the controller to show the agent's NACK",
        Duration::from_secs(30),
        || {
            let (Ok(v), Ok(n)) = (lab.intent_version(), lab.node_status()) else {
                return false;
            };
            (v2, node) = (v, n);
            v > v1 && node["last_nack"]["version"].as_u64() == Some(v)
        },
    )
    .map_err(|e| {
        anyhow!(
            "{e}; intent version {v2}, node status {node}\nagent log:\n{}",
            tail(&lab.agent_log())
        )
    })?;
    eprintln!("NACK of v{v2} shown {:?} after the write", t0.elapsed());
    let reasons = node["last_nack"]["errors"].to_string();
    assert!(
        reasons.contains("switch: the switch rejected the bundle")
            && reasons.contains("OFPFMFC_TABLE_FULL")
            // ovs-ofctl prints the refused flow as OVS decodes it (`table:45`),
            // the native backend as the agent sent it (`table=45`).
            && (reasons.contains("table:45") || reasons.contains("table=45"))
            && reasons.contains("nat(dst=10.0.1.13:"),
        "the NACK does not give the switch's reason: {reasons}"
    );
    assert_eq!(node["nack_pending"], true, "{node}");
    assert!(
        node["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("NACK of version {v2}: "))),
        "{node}"
    );
    assert_eq!(
        node["applied_version"].as_u64(),
        Some(v1),
        "the applied version moved: {node}"
    );
    let log = plain(&lab.agent_log());
    assert!(
        log.contains(&format!("update refused version={v2}")),
        "{}",
        tail(&log)
    );

    // The last good state, exactly: the bundle's group modifications (a third
    // bucket in each Service group) were rolled back with its flows.
    assert_eq!(lab.flows()?, flows_before, "a refused bundle changed flows");
    assert_eq!(
        lab.groups()?,
        groups_before,
        "a refused bundle changed groups"
    );
    // 60 TCP then 60 UDP requests back to back (0.07-0.3 s for all 120 in the
    // lab, some hundreds a second): every one answered, by the two backends in
    // force only.
    let (tcp, udp) = traffic_ok(&lab, 60, "after the NACK")?;
    assert_eq!(
        tcp.count_for("web-3") + udp.count_for("web-3"),
        0,
        "the refused backend got traffic: {tcp:?} {udp:?}"
    );
    Ok((lab, v1, v2))
}

/// The switch itself refuses an update: EndpointDnat is capped in OVSDB
/// (`Flow_Table` with `flow_limit` and `overflow_policy=refuse`) at exactly what the
/// applied intent needs, and a third backend needs two flows more. OVS fails the
/// agent's bundle with `OFPFMFC_TABLE_FULL`; the agent NACKs with the switch's
/// reason, the controller shows the NACK and keeps the applied version, and flows,
/// groups and forwarding stay exactly as they were, also while the cap stays. Once
/// it is lifted, the next version arrives as a snapshot (as after any NACK) and is
/// applied whole.
#[test]
fn a_bundle_the_switch_refuses_is_nacked_with_its_reason_and_the_last_good_state_stays(
) -> Result<()> {
    let (lab, v1, v2) = nack_from_a_capped_table("full")?;
    let flows = lab.flows()?;
    let groups = lab.groups()?;

    // Nothing changes while the cap stays (the agent's retry tick is 1 s).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.flows()?, flows, "flows changed while capped");
    assert_eq!(lab.groups()?, groups, "groups changed while capped");
    assert_eq!(lab.node_status()?["applied_version"].as_u64(), Some(v1));

    // Lift the cap; the next version is a snapshot and lands. (The controller
    // also retries a refused version on its own:
    // `a_version_the_switch_refused_is_applied_once_the_switch_can_take_it`.)
    lab.ovs
        .vsctl(&["clear", "Bridge", &lab.bridge, "flow_tables"])?;
    let t = Instant::now();
    lab.write_manifest(
        "10-svc.yaml",
        &web_with(&["10.0.1.11", "10.0.1.12", "10.0.1.13, weight: 2"]),
    )?;
    let v3 = lab.wait_converged_after(v2)?;
    eprintln!("v{v3} applied {:?} after the write", t.elapsed());
    let sent = lab
        .controller_log()
        .lines()
        .filter(|l| l.contains("sent update") && l.contains(&format!("version={v3} ")))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(
        sent.len() == 1 && sent[0].contains("snapshot=true"),
        "v{v3} after the NACK was not sent as one snapshot: {sent:#?}"
    );
    assert_eq!(table_flows(&lab, ENDPOINT_DNAT)?.len(), 7);
    let (tcp, udp) = traffic_ok(&lab, 60, "after the cap was lifted")?;
    assert!(
        tcp.count_for("web-3") > 0 && udp.count_for("web-3") > 0,
        "web-3 unused: {tcp:?} {udp:?}"
    );
    Ok(())
}

/// A version only the switch refused is sent again by the controller (2 s,
/// doubling to 60 s, until an Ack), so once the switch can take it the node gets
/// there without an intent change or a reconnect.
#[test]
fn a_version_the_switch_refused_is_applied_once_the_switch_can_take_it() -> Result<()> {
    let (lab, _v1, v2) = nack_from_a_capped_table("fullr")?;
    lab.ovs
        .vsctl(&["clear", "Bridge", &lab.bridge, "flow_tables"])?;
    let mut last = String::new();
    wait_until(
        "the refused version to be applied once the cap is lifted",
        Duration::from_secs(15),
        || {
            let n = lab.node_status();
            last = n.as_ref().map(|n| n.to_string()).unwrap_or_default();
            n.is_ok_and(|n| n["applied_version"].as_u64() == Some(v2))
        },
    )
    .map_err(|e| anyhow!("{e}; node status {last}"))?;
    assert_eq!(table_flows(&lab, ENDPOINT_DNAT)?.len(), 7);
    Ok(())
}
