//! Session affinity across backend changes, with the real controller and agent,
//! a real OVS and real TCP traffic from 20 clients (one namespace and address
//! each). Kubernetes keeps a ClientIP affinity until its timeout; so does the
//! agent, except for the clients of a backend that leaves:
//!
//! * a backend added: the group changes, every learned entry stays, 0 of 20
//!   clients move;
//! * a backend removed: only its entries go (checked in `dump-flows table=41`:
//!   every other entry is still there, unchanged), only its clients move, and
//!   they move to a backend that still serves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{anyhow, Result};
use dpu_lab::fixture::Lab;
use dpu_lab::scenario::{backends_lab, mac, service_yaml, workload_yaml, GW, VIP};

const CLIENTS: u8 = 20;

/// The Service on the backends at these addresses, ClientIP affinity with a
/// timeout far longer than the test.
fn sticky(ips: &[String]) -> String {
    let list: Vec<String> = ips
        .iter()
        .map(|ip| format!("    - {{ip: \"{ip}\"}}"))
        .collect();
    service_yaml(
        "web",
        "vpc-a",
        VIP,
        &format!("  backends:\n{}", list.join("\n")),
        "  sessionAffinity: {type: ClientIP, timeoutSeconds: 3600}",
    )
}

fn backend_ip(i: u8) -> String {
    format!("10.0.1.{}", 10 + i)
}

fn client_name(i: u8) -> String {
    format!("c{i}")
}

/// Each client's backend: every client opens 3 new connections (a new source
/// port each), all of which must answer from one backend.
fn who_serves_whom(lab: &Lab) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for i in 0..CLIENTS {
        let c = client_name(i);
        let r = lab.client(&c, &format!("{VIP}:80"), "tcp", 3)?;
        if r.failed != 0 || r.by_backend.len() != 1 {
            return Err(anyhow!(
                "client {c}: not answered by exactly one backend: {r:?}"
            ));
        }
        let backend = r.by_backend.keys().next().cloned().unwrap_or_default();
        out.insert(c, backend);
    }
    Ok(out)
}

/// The learned TCP entries in SessionAffinity: client address → (the backend
/// address the entry loads into reg3, the whole line without statistics).
fn learned(lab: &Lab) -> Result<BTreeMap<String, (String, String)>> {
    let dump = lab.ovs.ofctl(&[
        "--no-stats",
        "dump-flows",
        &lab.ovs.mgmt(&lab.bridge),
        "table=41,tcp",
    ])?;
    let mut out = BTreeMap::new();
    for line in dump.lines().filter(|l| l.contains("nw_src=")) {
        let field = |start: &str, end: char| -> Option<String> {
            let (_, rest) = line.split_once(start)?;
            Some(rest.split(end).next()?.to_string())
        };
        let src = field("nw_src=", ',').ok_or_else(|| anyhow!("no nw_src: {line}"))?;
        // `load:0xa00010b->NXM_NX_REG3[]` or `set_field:0xa00010b->reg3`.
        let actions = field("actions=", ' ').unwrap_or_default();
        let reg3 = actions
            .split(',')
            .find(|a| a.ends_with("->NXM_NX_REG3[]") || a.ends_with("->reg3"))
            .and_then(|a| a.split_once(':'))
            .and_then(|(_, v)| v.split_once("->"))
            .map(|(v, _)| v.to_string())
            .ok_or_else(|| anyhow!("no endpoint in {line}"))?;
        let ip = u32::from_str_radix(reg3.trim_start_matches("0x"), 16)
            .map(Ipv4Addr::from)
            .map_err(|e| anyhow!("reg3 {reg3} in {line}: {e}"))?;
        out.insert(src, (ip.to_string(), line.trim().to_string()));
    }
    Ok(out)
}

/// Pushes every datapath flow's statistics and drops the flows, so no
/// `learn` left in the datapath cache runs again after a change (it would
/// re-add an entry the change deleted, and hide a wrong flush).
fn quiesce(lab: &Lab) -> Result<()> {
    lab.ovs.vswitchd_appctl(&["revalidator/purge"])?;
    Ok(())
}

#[test]
fn adding_a_backend_moves_no_client_and_removing_one_moves_only_its_clients() -> Result<()> {
    // web-1..web-6 run echo servers; the Service starts with web-1..web-5.
    let first: Vec<String> = (1..=5).map(backend_ip).collect();
    let mut lab = backends_lab("stk", 6, &sticky(&first))?;
    let mut yaml = String::new();
    for i in 0..CLIENTS {
        let (name, ip) = (client_name(i), format!("10.0.1.{}", 100 + i));
        yaml += &workload_yaml(&name, "vpc-a", &ip, &mac(100 + i), "client");
        lab.add_host(&name, &format!("{ip}/24"), &mac(100 + i), GW)?;
    }
    lab.write_manifest("05-clients.yaml", &yaml)?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;

    let before = who_serves_whom(&lab)?;
    let entries = learned(&lab)?;
    assert_eq!(entries.len(), usize::from(CLIENTS), "{entries:#?}");
    for i in 0..CLIENTS {
        let src = format!("10.0.1.{}", 100 + i);
        let served = lab.host(&before[&client_name(i)])?.ip.clone();
        assert_eq!(
            entries[&src].0, served,
            "{src}'s entry and its traffic disagree"
        );
    }
    eprintln!("before: {before:?}");

    // A sixth backend joins.
    quiesce(&lab)?;
    let entries = learned(&lab)?;
    let v = lab.intent_version()?;
    let six: Vec<String> = (1..=6).map(backend_ip).collect();
    lab.write_manifest("10-svc.yaml", &sticky(&six))?;
    lab.wait_converged_after(v)?;
    let groups = lab.groups()?.join("\n");
    assert!(
        groups.contains("0xa000110->reg3"),
        "web-6 has no bucket: {groups}"
    );
    assert_eq!(
        learned(&lab)?,
        entries,
        "learned entries changed when a backend was added"
    );
    let added = who_serves_whom(&lab)?;
    let moved: Vec<&String> = added.keys().filter(|c| added[*c] != before[*c]).collect();
    eprintln!("backend added: {} of {CLIENTS} clients moved", moved.len());
    assert!(
        moved.is_empty(),
        "clients moved: {moved:?}; {before:?} → {added:?}"
    );

    // The backend with the most clients leaves.
    let mut load: BTreeMap<&String, usize> = BTreeMap::new();
    for b in added.values() {
        *load.entry(b).or_default() += 1;
    }
    let (victim, victims) = load
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(b, n)| ((*b).clone(), *n))
        .ok_or_else(|| anyhow!("no client was served"))?;
    let victim_ip = lab.host(&victim)?.ip.clone();
    quiesce(&lab)?;
    let entries = learned(&lab)?;
    let v = lab.intent_version()?;
    let rest: Vec<String> = six.iter().filter(|ip| **ip != victim_ip).cloned().collect();
    lab.write_manifest("10-svc.yaml", &sticky(&rest))?;
    lab.wait_converged_after(v)?;
    let left = learned(&lab)?;
    let want: BTreeMap<String, (String, String)> = entries
        .into_iter()
        .filter(|(_, (b, _))| *b != victim_ip)
        .collect();
    assert_eq!(
        left, want,
        "not exactly the entries of {victim} ({victim_ip}) were deleted"
    );
    eprintln!(
        "{} learned entries survived the removal of {victim}, which had {victims}",
        left.len()
    );
    let after = who_serves_whom(&lab)?;
    let live: BTreeSet<String> = rest
        .iter()
        .map(|ip| {
            format!(
                "web-{}",
                ip.trim_start_matches("10.0.1.").parse::<u8>().unwrap() - 10
            )
        })
        .collect();
    let mut moved = 0;
    for (c, was) in &added {
        let now = &after[c];
        if *was == victim {
            assert!(
                live.contains(now),
                "{c} moved from {victim} to {now}, not a live backend"
            );
            moved += 1;
        } else {
            assert_eq!(
                now, was,
                "{c} moved from {was} to {now}, but {was} still serves"
            );
        }
    }
    eprintln!(
        "backend {victim} removed: {moved} of {CLIENTS} clients moved, all of them its own ({victims})"
    );
    assert_eq!(moved, victims);
    Ok(())
}
