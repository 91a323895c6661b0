//! Several DPUs: one controller, one agent and one OVS per DPU, a Geneve underlay
//! between them (`dpu_lab::fabric`), real TCP and UDP. Needs root; a missing
//! prerequisite fails the test.

use std::time::Duration;

use anyhow::Result;
use dpu_lab::multi::MultiLab;
use dpu_lab::observe::assert_offloadable;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{mac, placed_workload, service_yaml, vpc_yaml, GW, VIP};

/// A workload in vpc-a on DPU `dpu`, of `kind`.
fn placed(name: &str, ip: &str, mac: &str, app: &str, dpu: usize, kind: &str) -> String {
    placed_workload(name, "vpc-a", ip, mac, app, dpu, kind)
}

/// Two DPUs: `client` (10.0.1.2) and `web-1` (10.0.1.11, a Pod) on dpu-1,
/// `web-2` (10.0.1.12, a VM) and `client-2` (10.0.1.3) on dpu-2; Service `web` on
/// the VIP over both backends. Converged.
fn two_dpus(tag: &str) -> Result<MultiLab> {
    two_dpus_with(tag, "", false)
}

/// [`two_dpus`], with `extra` in the Service's spec and, with `hosts`, each
/// DPU's node host attached through its PF representor.
fn two_dpus_with(tag: &str, extra: &str, hosts: bool) -> Result<MultiLab> {
    let mut lab = MultiLab::new(tag, 2)?;
    if hosts {
        lab.add_node_host(0)?;
        lab.add_node_host(1)?;
    }
    let mut yaml = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    yaml += &placed("client", "10.0.1.2", &mac(2), "client", 0, "Pod");
    yaml += &placed("client-2", "10.0.1.3", &mac(3), "client", 1, "Pod");
    yaml += &placed("web-1", "10.0.1.11", &mac(11), "web", 0, "Pod");
    yaml += &placed("web-2", "10.0.1.12", &mac(12), "web", 1, "VM");
    lab.add_host(0, "client", "10.0.1.2/24", &mac(2), GW)?;
    lab.add_host(1, "client-2", "10.0.1.3/24", &mac(3), GW)?;
    lab.add_host(0, "web-1", "10.0.1.11/24", &mac(11), GW)?;
    lab.add_host(1, "web-2", "10.0.1.12/24", &mac(12), GW)?;
    lab.echo("web-1", &[8080], &[5353])?;
    lab.echo("web-2", &[8080], &[5353])?;
    lab.write_manifest("00-vpc.yaml", &yaml)?;
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    lab.write_manifest(
        "10-svc.yaml",
        &service_yaml("web", "vpc-a", VIP, "  selector: {app: web}", extra),
    )?;
    lab.start_controller()?;
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    lab.wait_converged()?;
    Ok(lab)
}

/// Waits (the userspace datapath folds counters in about every 0.5 s) until those
/// flows counted a packet.
fn counted(lab: &MultiLab, dpu: usize, parts: &[&str]) -> Result<()> {
    wait_until("the flows to count packets", Duration::from_secs(5), || {
        lab.flow_packets(dpu, parts).is_ok_and(|n| n > 0)
    })
    .map_err(|e| {
        let d = lab.fabric.dpu(dpu).ok();
        let dump = d
            .and_then(|d| d.ovs().ofctl(&["dump-flows", &d.mgmt()]).ok())
            .unwrap_or_default();
        anyhow::anyhow!("{e}: no flow with {parts:?} counted:\n{dump}")
    })
}

#[test]
fn a_cluster_ip_reaches_backends_on_both_dpus_with_the_client_address_kept() -> Result<()> {
    let lab = two_dpus("mdp")?;
    for client in ["client", "client-2"] {
        let tcp = lab.client(client, &format!("{VIP}:80"), "tcp", 60)?;
        let udp = lab.client(client, &format!("{VIP}:53"), "udp", 60)?;
        for (what, r) in [("tcp", &tcp), ("udp", &udp)] {
            // lab-client's sockets are connected to the VIP: an answer counts only
            // if it came back from the VIP, so every reply was un-NATed on the
            // client's own DPU, wherever the backend was.
            assert_eq!(r.failed, 0, "{client} {what}: {r:?}");
            assert!(r.count_for("web-1") > 0, "{client} {what}: {r:?}");
            assert!(r.count_for("web-2") > 0, "{client} {what}: {r:?}");
        }
    }
    // Both DPUs' megaflows of the Service, the tunnel's included, are ones a
    // BlueField could run.
    for dpu in [0, 1] {
        assert_offloadable(&lab.ops_socket(dpu), Some("web"))?;
    }
    // The backend behind the tunnel saw the clients' own addresses (no SNAT).
    let peers = lab.tcp_peers("web-2");
    assert!(!peers.is_empty());
    assert!(
        peers.iter().all(|p| p == "10.0.1.2" || p == "10.0.1.3"),
        "web-2 saw {peers:?}"
    );
    assert!(peers.iter().any(|p| p == "10.0.1.2"), "web-2 saw {peers:?}");

    // Independently of the agents: dpu-1 sent into the tunnel toward dpu-2's
    // underlay address, and dpu-2's classify took it in by the VNI.
    let to_dpu2 = lab.fabric.dpu(1)?.underlay_ip().to_string();
    counted(
        &lab,
        0,
        &["nw_dst=10.0.1.12", &format!("{to_dpu2}->tun_dst")],
    )?;
    counted(&lab, 1, &["tun_id=0x64", "in_port="])?;
    Ok(())
}

#[test]
fn a_removed_node_or_a_cut_tunnel_affects_only_its_own_backends() -> Result<()> {
    let lab = two_dpus("mcut")?;

    // The DpuNode goes: dpu-1 drops its tunnel route and its bucket for web-2,
    // without a restart, and everything goes to web-1.
    let v = lab.wait_converged()?;
    let others: String = lab
        .dpu_nodes_yaml()
        .split("---\n")
        .filter(|d| d.contains("name: dpu-1"))
        .map(|d| format!("---\n{d}"))
        .collect();
    lab.write_manifest("05-nodes.yaml", &others)?;
    let v = lab.wait_converged_after(v)?;
    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_eq!(tcp.failed, 0, "{tcp:?}");
    assert_eq!(tcp.count_for("web-1"), 40, "{tcp:?}");
    let d0 = lab.fabric.dpu(0)?;
    assert!(
        !d0.ovs()
            .dump_flows(d0.bridge())?
            .iter()
            .any(|f| f.contains("nw_dst=10.0.1.12") && f.contains("tun_dst")),
        "no tunnel route to a node that is gone"
    );
    let log = lab.agent_log(0);
    assert!(
        log.lines()
            .any(|l| l.contains("unreachable") && l.contains("web-2")),
        "dpu-1 logs web-2 as unreachable:\n{}",
        dpu_lab::fixture::tail(&log)
    );

    // It comes back: web-2 answers again.
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    lab.wait_converged_after(v)?;
    let mut back = None;
    wait_until("web-2 to answer again", Duration::from_secs(10), || {
        let r = lab.client("client", &format!("{VIP}:80"), "tcp", 20);
        let ok = r
            .as_ref()
            .is_ok_and(|r| r.failed == 0 && r.count_for("web-2") > 0);
        back = r.ok();
        ok
    })?;
    assert!(back.is_some());

    // A cut underlay link to dpu-2 breaks what must cross it and nothing else.
    lab.fabric.cut(1)?;
    let local = lab.client("client", "10.0.1.11:8080", "tcp", 10)?;
    assert_eq!(
        local.failed, 0,
        "dpu-1-local traffic during the cut: {local:?}"
    );
    let remote = lab.client("client", "10.0.1.12:8080", "tcp", 3)?;
    assert_eq!(remote.ok, 0, "nothing crosses a cut link: {remote:?}");
    lab.fabric.restore(1)?;
    wait_until(
        "the tunnel to carry traffic again",
        Duration::from_secs(10),
        || {
            lab.client("client", "10.0.1.12:8080", "tcp", 3)
                .is_ok_and(|r| r.failed == 0)
        },
    )?;
    Ok(())
}

#[test]
fn node_cluster_ip_serves_the_hosts_through_their_pf_and_nothing_else() -> Result<()> {
    // Scenario 2: each DPU's host (a namespace behind the PF representor, with
    // only a route to 10.96.0.0/16 and no NAT) reaches the NodeClusterIP Service;
    // backends sit on both DPUs.
    let lab = two_dpus_with("mnode", "  scenario: NodeClusterIP", true)?;
    let db = service_yaml("db", "vpc-a", "10.96.0.20", "  selector: {app: web}", "");
    let v = lab.wait_converged()?;
    lab.write_manifest("20-db.yaml", &db)?;
    lab.wait_converged_after(v)?;
    for host in ["host-1", "host-2"] {
        let tcp = lab.client(host, &format!("{VIP}:80"), "tcp", 40)?;
        let udp = lab.client(host, &format!("{VIP}:53"), "udp", 40)?;
        for (what, r) in [("tcp", &tcp), ("udp", &udp)] {
            assert_eq!(r.failed, 0, "{host} {what}: {r:?}");
            assert!(r.count_for("web-1") > 0, "{host} {what}: {r:?}");
            assert!(r.count_for("web-2") > 0, "{host} {what}: {r:?}");
        }
    }
    for dpu in [0, 1] {
        assert_offloadable(&lab.ops_socket(dpu), Some("web"))?;
    }
    // The backends saw the hosts' own addresses.
    let peers: Vec<String> = ["web-1", "web-2"]
        .iter()
        .flat_map(|h| lab.tcp_peers(h))
        .collect();
    assert!(peers.iter().any(|p| p == "172.16.0.1"), "{peers:?}");
    assert!(peers.iter().any(|p| p == "172.16.0.2"), "{peers:?}");
    // Pods keep using it as a ClusterIP.
    let pod = lab.client("client", &format!("{VIP}:80"), "tcp", 10)?;
    assert_eq!(pod.failed, 0, "{pod:?}");

    // The host reaches nothing else of the VPC: not a plain ClusterIP Service,
    // not a workload's address.
    let plain = lab.client("host-1", "10.96.0.20:80", "tcp", 3)?;
    assert_eq!(plain.ok, 0, "a ClusterIP-only Service: {plain:?}");
    let direct = lab.client("host-1", "10.0.1.11:8080", "tcp", 3)?;
    assert_eq!(direct.ok, 0, "a workload address: {direct:?}");
    Ok(())
}

#[test]
fn external_traffic_policy_local_keeps_host_traffic_on_its_own_dpu() -> Result<()> {
    let lab = two_dpus_with(
        "mlocal",
        "  scenario: NodeClusterIP\n  externalTrafficPolicy: Local",
        true,
    )?;
    // Each host is served only by the backend on its own DPU ...
    for (host, own, other) in [("host-1", "web-1", "web-2"), ("host-2", "web-2", "web-1")] {
        let tcp = lab.client(host, &format!("{VIP}:80"), "tcp", 30)?;
        let udp = lab.client(host, &format!("{VIP}:53"), "udp", 30)?;
        for (what, r) in [("tcp", &tcp), ("udp", &udp)] {
            assert_eq!(r.failed, 0, "{host} {what}: {r:?}");
            assert_eq!(r.count_for(own), 30, "{host} {what}: {r:?}");
            assert_eq!(r.count_for(other), 0, "{host} {what}: {r:?}");
        }
    }
    // ... while pods in the VPC still use every backend.
    let pod = lab.client("client", &format!("{VIP}:80"), "tcp", 60)?;
    assert_eq!(pod.failed, 0, "{pod:?}");
    assert!(
        pod.count_for("web-1") > 0 && pod.count_for("web-2") > 0,
        "{pod:?}"
    );
    Ok(())
}
