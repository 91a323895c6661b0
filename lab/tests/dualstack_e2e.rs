//! IPv6 and dual stack across two DPUs: the real controller and agents, one OVS
//! per DPU, a Geneve underlay, real TCP and UDP over both families. Needs root; a
//! missing prerequisite fails the test.

use std::time::Duration;

use anyhow::Result;
use dpu_lab::multi::MultiLab;
use dpu_lab::observe::assert_offloadable;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{mac, placed_workload, service_yaml, vpc_yaml, GW, VIP};

const GW6: &str = "fd00:1::1";
const VIP6: &str = "fd00:96::10";
const VIP6_ONLY: &str = "fd00:96::20";
const ROUTER_MAC: &str = "02:d9:00:00:00:01";

/// A workload of vpc-a with `ip` and its IPv6 twin `fd00:1::<last>`.
fn dual(name: &str, last: u8, app: &str, dpu: usize, kind: &str) -> String {
    placed_workload(
        name,
        "vpc-a",
        &format!("10.0.1.{last}"),
        &mac(last),
        app,
        dpu,
        kind,
    )
    .replace(
        &format!("ip: \"10.0.1.{last}\""),
        &format!("ip: \"10.0.1.{last}\", ipv6: \"fd00:1::{last:x}\""),
    )
}

#[test]
fn a_dual_stack_service_and_an_ipv6_one_balance_over_both_dpus() -> Result<()> {
    let mut lab = MultiLab::new("ds6", 2)?;
    let mut yaml = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    yaml += &format!(
        "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {{name: vpc-a-v6}}\nspec: {{vpc: vpc-a, cidr: \"fd00:1::/64\", gateway: \"{GW6}\"}}\n"
    );
    yaml += &dual("client", 2, "client", 0, "Pod");
    yaml += &dual("web-1", 0x11, "web", 0, "Pod");
    yaml += &dual("web-2", 0x12, "web", 1, "VM");
    for (name, last, dpu) in [("client", 2u8, 0), ("web-1", 0x11, 0), ("web-2", 0x12, 1)] {
        lab.add_host(dpu, name, &format!("10.0.1.{last}/24"), &mac(last), GW)?;
        lab.add_ipv6(name, &format!("fd00:1::{last:x}/64"), Some(GW6))?;
    }
    lab.echo("web-1", &[8080], &[5353])?;
    lab.echo("web-2", &[8080], &[5353])?;
    lab.write_manifest("00-vpc.yaml", &yaml)?;
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    let dual_svc = service_yaml("web", "vpc-a", VIP, "  selector: {app: web}", "")
        .replace(&format!("[\"{VIP}\"]"), &format!("[\"{VIP}\", \"{VIP6}\"]"));
    let v6_svc = service_yaml("web6", "vpc-a", VIP6_ONLY, "  selector: {app: web}", "");
    lab.write_manifest("10-svc.yaml", &format!("{dual_svc}---\n{v6_svc}"))?;
    lab.start_controller()?;
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    lab.wait_converged()?;

    // Both families of the dual-stack Service, and the IPv6-only one, over TCP and
    // UDP: every request answered, by backends on both DPUs. The client's sockets
    // are connected to the VIP, so each answer was un-DNATed on its own DPU.
    for target in [
        VIP.to_string(),
        format!("[{VIP6}]"),
        format!("[{VIP6_ONLY}]"),
    ] {
        let tcp = lab.client("client", &format!("{target}:80"), "tcp", 60)?;
        let udp = lab.client("client", &format!("{target}:53"), "udp", 60)?;
        for (what, r) in [("tcp", &tcp), ("udp", &udp)] {
            assert_eq!(r.failed, 0, "{target} {what}: {r:?}");
            assert!(r.count_for("web-1") > 0, "{target} {what}: {r:?}");
            assert!(r.count_for("web-2") > 0, "{target} {what}: {r:?}");
        }
    }
    // IPv6 and IPv4 through both DPUs.
    for (dpu, service) in [(0, "web"), (0, "web6"), (1, "web"), (1, "web6")] {
        assert_offloadable(&lab.ops_socket(dpu), Some(service))?;
    }
    // The backend behind the tunnel saw the client's own IPv6 address.
    let peers = lab.tcp_peers("web-2");
    assert!(
        peers.iter().any(|p| p == "fd00:1::2"),
        "web-2 saw {peers:?}"
    );
    assert!(peers.iter().any(|p| p == "10.0.1.2"), "web-2 saw {peers:?}");

    // The ND responder, seen from the client: its gateway resolves to the
    // router MAC, and OVS counted the solicitations it answered.
    assert_eq!(
        lab.neighbor_mac("client", GW6)?.as_deref(),
        Some(ROUTER_MAC),
        "the client's neighbour entry for its IPv6 gateway"
    );
    wait_until("the ND responder to count", Duration::from_secs(5), || {
        lab.flow_packets(0, &["table=20", &format!("nd_target={GW6}")])
            .is_ok_and(|n| n > 0)
    })?;
    // Independently of the agent: one IPv6 group per port of each Service, with
    // IPv6 hash fields, next to the IPv4 ones of the dual-stack Service.
    let d = lab.fabric.dpu(0)?;
    let groups = d.ovs().dump_groups(d.bridge())?;
    let v6_groups = groups
        .iter()
        .filter(|g| g.contains("fields(ipv6_src,ipv6_dst"))
        .count();
    let v4_groups = groups
        .iter()
        .filter(|g| g.contains("fields(ip_src,ip_dst"))
        .count();
    assert_eq!((v4_groups, v6_groups), (2, 4), "{groups:#?}");
    Ok(())
}
