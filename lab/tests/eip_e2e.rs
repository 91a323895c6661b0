//! EIPs from outside (scenarios 3 and 4) and bare-metal backends, across two DPUs:
//! the real controller and agents, one OVS per DPU, a Geneve underlay, and an
//! external L2 segment that both DPUs' uplinks join, with a client namespace on
//! it. Real TCP and UDP. Needs root; a missing prerequisite fails the test.

use std::time::Duration;

use anyhow::{Context, Result};
use dpu_lab::multi::{node_name, uplink_mac, MultiLab};
use dpu_lab::observe::assert_offloadable;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{mac, placed_workload, service_yaml, vpc_yaml, GW, VIP};

/// The external client's address and MAC; the EIPs are on its segment.
const EXT: &str = "198.51.100.10";
const EXT_MAC: &str = "0a:00:00:00:ee:0a";
const EIP: &str = "198.51.100.100";

/// The service-gateway extra spec lines for an EIP owned by dpu-1.
fn eip_spec(scenario: &str, eip: &str) -> String {
    format!(
        "  scenario: {scenario}\n  eip: \"{eip}\"\n  eipNode: {}\n",
        node_name(0)
    )
}

/// The external client, and a bare-metal server on the same segment whose
/// default route is the VPC gateway (answered by dpu-1's uplink).
fn add_outside(lab: &mut MultiLab) -> Result<()> {
    lab.add_external("ext", &format!("{EXT}/24"), EXT_MAC)?;
    lab.add_external("db-1", "10.0.1.50/24", &mac(50))?;
    lab.host_ns("db-1")?.add_default_route(GW, "eth0")?;
    Ok(())
}

/// Scenario 3 over two DPUs: web-1 (Pod) on dpu-1, web-2 (VM) on dpu-2, db-1
/// (BareMetal) behind dpu-1's uplink; Service `web` on the VIP and on the EIP,
/// owned by dpu-1. Both DPUs have an uplink on the external segment.
fn eip_lab(tag: &str, extra: &str) -> Result<MultiLab> {
    let mut lab = MultiLab::new(tag, 2)?;
    lab.add_uplink(0)?;
    lab.add_uplink(1)?;
    add_outside(&mut lab)?;
    let mut yaml = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    yaml += &placed_workload("client-2", "vpc-a", "10.0.1.3", &mac(3), "client", 1, "Pod");
    yaml += &placed_workload("web-1", "vpc-a", "10.0.1.11", &mac(11), "web", 0, "Pod");
    yaml += &placed_workload("web-2", "vpc-a", "10.0.1.12", &mac(12), "web", 1, "VM");
    yaml += &placed_workload(
        "db-1",
        "vpc-a",
        "10.0.1.50",
        &mac(50),
        "web",
        0,
        "BareMetal",
    )
    .replace("port: db-1", "port: uplink");
    lab.add_host(1, "client-2", "10.0.1.3/24", &mac(3), GW)?;
    lab.add_host(0, "web-1", "10.0.1.11/24", &mac(11), GW)?;
    lab.add_host(1, "web-2", "10.0.1.12/24", &mac(12), GW)?;
    for h in ["web-1", "web-2", "db-1"] {
        lab.echo(h, &[8080], &[5353])?;
    }
    lab.write_manifest("00-vpc.yaml", &yaml)?;
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    let extra = format!("{}{extra}", eip_spec("EIPLoadBalancer", EIP));
    lab.write_manifest(
        "10-svc.yaml",
        &service_yaml("web", "vpc-a", VIP, "  selector: {app: web}", &extra),
    )?;
    lab.start_controller()?;
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    lab.wait_converged()?;
    Ok(lab)
}

fn flows(lab: &MultiLab, dpu: usize) -> Result<Vec<String>> {
    let d = lab.fabric.dpu(dpu)?;
    d.ovs().dump_flows(d.bridge())
}

#[test]
fn an_eip_reaches_backends_on_both_dpus_keeps_the_client_address_and_replies_symmetrically(
) -> Result<()> {
    let lab = eip_lab("eip3", "")?;

    // 60 TCP and 60 UDP requests from outside to the EIP. lab-client's sockets
    // are connected to the EIP, so an answer counts only if it came back from the
    // EIP: un-DNATed on dpu-1 even when web-2 (on dpu-2) answered.
    let tcp = lab.client("ext", &format!("{EIP}:80"), "tcp", 60)?;
    let udp = lab.client("ext", &format!("{EIP}:53"), "udp", 60)?;
    for (what, r) in [("tcp", &tcp), ("udp", &udp)] {
        assert_eq!(r.failed, 0, "{what}: {r:?}");
        for b in ["web-1", "web-2", "db-1"] {
            assert!(r.count_for(b) > 0, "{what}: {b} never answered: {r:?}");
        }
    }
    // Scenario 3: the EIP's DPU (uplink in, labelled replies out) and the one
    // behind the tunnel keep the Service's traffic NIC-matchable.
    for dpu in [0, 1] {
        assert_offloadable(&lab.ops_socket(dpu), Some("web"))?;
    }
    // Every backend saw the client's own address.
    for b in ["web-1", "web-2", "db-1"] {
        let peers = lab.tcp_peers(b);
        assert!(!peers.is_empty(), "{b} logged no connection");
        assert!(peers.iter().all(|p| p == EXT), "{b} saw {peers:?}");
    }

    // Only the owner answered ARP for the EIP: the client's neighbour entry is
    // dpu-1's uplink MAC, and dpu-2 has no ARP flow for the EIP at all.
    let neigh = lab.neighbor_mac("ext", EIP)?;
    assert_eq!(neigh.as_deref(), Some(uplink_mac(0).as_str()));
    assert!(
        !flows(&lab, 1)?
            .iter()
            .any(|f| f.contains(&format!("arp_tpa={EIP}"))),
        "dpu-2 must not answer for an EIP it does not own"
    );
    // Symmetric return, seen by OVS itself: dpu-2 sent web-2's replies back into
    // the tunnel by the conntrack label (ReturnPath, table 48), and dpu-1 sent
    // replies out of its uplink by the label. The userspace datapath folds its
    // counters in about every 0.5 s.
    for (dpu, needle, what) in [
        (
            1,
            "NXM_NX_TUN_IPV4_DST",
            "dpu-2's return path into the tunnel",
        ),
        (0, "NXM_OF_ETH_DST", "dpu-1's return path out of the uplink"),
    ] {
        wait_until(what, Duration::from_secs(5), || {
            lab.flow_packets(dpu, &["table=48", needle])
                .is_ok_and(|n| n > 0)
        })?;
    }

    // Only the Service's ports are open on the EIP.
    let closed = lab.client("ext", &format!("{EIP}:8080"), "tcp", 3)?;
    assert_eq!(closed.ok, 0, "{closed:?}");

    // A pod on dpu-2 reaches the bare-metal backend through the ClusterIP (and
    // the tunnel), and the bare-metal server reaches a pod directly.
    let pod = lab.client("client-2", &format!("{VIP}:80"), "tcp", 60)?;
    assert_eq!(pod.failed, 0, "{pod:?}");
    assert!(pod.count_for("db-1") > 0, "{pod:?}");
    let bm = lab.client("db-1", "10.0.1.12:8080", "tcp", 10)?;
    assert_eq!(bm.count_for("web-2"), 10, "{bm:?}");
    let peers = lab.tcp_peers("web-2");
    assert!(
        peers.iter().any(|p| p == "10.0.1.50"),
        "web-2 saw {peers:?}"
    );
    Ok(())
}

#[test]
fn external_traffic_policy_local_keeps_eip_traffic_on_the_owner_dpu() -> Result<()> {
    let lab = eip_lab("eipl", "  externalTrafficPolicy: Local\n")?;
    let tcp = lab.client("ext", &format!("{EIP}:80"), "tcp", 60)?;
    let udp = lab.client("ext", &format!("{EIP}:53"), "udp", 60)?;
    for (what, r) in [("tcp", &tcp), ("udp", &udp)] {
        assert_eq!(r.failed, 0, "{what}: {r:?}");
        assert_eq!(r.count_for("web-2"), 0, "{what}: web-2 is on dpu-2: {r:?}");
        assert!(
            r.count_for("web-1") > 0 && r.count_for("db-1") > 0,
            "{what}: {r:?}"
        );
    }
    // Pods still use every backend.
    let pod = lab.client("client-2", &format!("{VIP}:80"), "tcp", 60)?;
    assert_eq!(pod.failed, 0, "{pod:?}");
    assert!(pod.count_for("web-2") > 0, "{pod:?}");
    Ok(())
}

/// Scenario 4: one EIP on dpu-1, backends in vpc-a and vpc-b whose CIDRs are the
/// same: web-a1 and web-b1 are both 10.0.1.11 (on dpu-1), web-b2 is 10.0.1.12
/// on dpu-2. A client pod in vpc-a on dpu-1.
#[test]
fn a_service_gateway_reaches_backends_in_overlapping_vpcs_and_keeps_them_apart() -> Result<()> {
    let mut lab = MultiLab::new("eip4", 2)?;
    lab.add_uplink(0)?;
    lab.add_external("ext", &format!("{EXT}/24"), EXT_MAC)?;
    let mut yaml = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    yaml += &vpc_yaml("vpc-b", 200, "10.0.1.0/24", GW);
    yaml += &placed_workload("client-a", "vpc-a", "10.0.1.2", &mac(2), "client", 0, "Pod");
    yaml += &placed_workload("web-a1", "vpc-a", "10.0.1.11", &mac(11), "shop", 0, "Pod");
    yaml += &placed_workload(
        "web-b1",
        "vpc-b",
        "10.0.1.11",
        "0a:00:00:00:02:0b",
        "shop",
        0,
        "Pod",
    );
    yaml += &placed_workload(
        "web-b2",
        "vpc-b",
        "10.0.1.12",
        "0a:00:00:00:02:0c",
        "shop",
        1,
        "VM",
    );
    lab.add_host(0, "client-a", "10.0.1.2/24", &mac(2), GW)?;
    lab.add_host(0, "web-a1", "10.0.1.11/24", &mac(11), GW)?;
    lab.add_host(0, "web-b1", "10.0.1.11/24", "0a:00:00:00:02:0b", GW)?;
    lab.add_host(1, "web-b2", "10.0.1.12/24", "0a:00:00:00:02:0c", GW)?;
    for h in ["web-a1", "web-b1", "web-b2"] {
        lab.echo(h, &[8080], &[5353])?;
    }
    lab.write_manifest("00-vpc.yaml", &yaml)?;
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    let svc = service_yaml(
        "shop",
        "vpc-a",
        VIP,
        "  selector: {app: shop}",
        &eip_spec("EIPServiceGateway", EIP),
    )
    .replace(&format!("clusterIPs: [\"{VIP}\"]"), "clusterIPs: []");
    lab.write_manifest("10-svc.yaml", &svc)?;
    lab.start_controller()?;
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    lab.wait_converged()
        .context("converge on the service gateway")?;

    let tcp = lab.client("ext", &format!("{EIP}:80"), "tcp", 90)?;
    let udp = lab.client("ext", &format!("{EIP}:53"), "udp", 90)?;
    for (what, r) in [("tcp", &tcp), ("udp", &udp)] {
        assert_eq!(r.failed, 0, "{what}: {r:?}");
        for b in ["web-a1", "web-b1", "web-b2"] {
            assert!(r.count_for(b) > 0, "{what}: {b} never answered: {r:?}");
        }
    }
    // Scenario 4: through the gateway zone and both backend VPCs' zones. The
    // Service's load balancer is on its EIP's DPU only; on the other, its
    // traffic is all that crossed it, so the whole datapath is audited.
    assert_offloadable(&lab.ops_socket(0), Some("shop"))?;
    assert_offloadable(&lab.ops_socket(1), None)?;
    // DNAT+SNAT: each backend saw the gateway's address in its own VPC.
    for b in ["web-a1", "web-b1", "web-b2"] {
        let peers = lab.tcp_peers(b);
        assert!(!peers.is_empty(), "{b} logged no connection");
        assert!(peers.iter().all(|p| p == GW), "{b} saw {peers:?}");
    }

    // Isolation: vpc-a's client reaches vpc-a's 10.0.1.11 only, never vpc-b's
    // (same address), and nothing at vpc-b's 10.0.1.12.
    let own = lab.client("client-a", "10.0.1.11:8080", "tcp", 20)?;
    assert_eq!(own.count_for("web-a1"), 20, "{own:?}");
    let other = lab.client("client-a", "10.0.1.12:8080", "tcp", 3)?;
    assert_eq!(other.ok, 0, "vpc-b is out of vpc-a's reach: {other:?}");
    // And the gateway zone is entered only from the uplink: a pod sending to the
    // EIP is not load-balanced into other VPCs.
    let from_pod = lab.client("client-a", &format!("{EIP}:80"), "tcp", 3)?;
    assert_eq!(from_pod.ok, 0, "{from_pod:?}");
    Ok(())
}
