//! End-to-end: the real controller and agent, a real OVS (userspace datapath) and
//! real TCP/UDP traffic between network namespaces. Needs root; a missing
//! prerequisite fails the test. Each test builds its own lab (own OVS, namespaces
//! and bridge), so they can run in parallel.

use std::time::Duration;

use anyhow::{Context, Result};
use dpu_lab::fixture::{tail, Lab};
use dpu_lab::observe::assert_offloadable;
use dpu_lab::process::wait_until;
use dpu_lab::traffic;

use dpu_lab::scenario::{
    backends_lab, mac, service_yaml, vpc_yaml, web_service, workload_yaml, GW, VIP,
};

/// [`backends_lab`] with the controller and the agent running and converged.
fn lab_with_backends(tag: &str, n: u8, service: &str) -> Result<Lab> {
    let mut lab = backends_lab(tag, n, service)?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    Ok(lab)
}

fn assert_all_ok(r: &traffic::TrafficResult, what: &str) {
    assert_eq!(r.failed, 0, "{what}: {r:?}");
}

#[test]
fn tcp_and_udp_reach_every_backend() -> Result<()> {
    let lab = lab_with_backends("all", 3, &web_service(""))?;
    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", 60)?;
    let udp = lab.client("client", &format!("{VIP}:53"), "udp", 60)?;
    assert_all_ok(&tcp, "tcp");
    assert_all_ok(&udp, "udp");
    for b in ["web-1", "web-2", "web-3"] {
        assert!(tcp.count_for(b) > 0, "tcp never reached {b}: {tcp:?}");
        assert!(udp.count_for(b) > 0, "udp never reached {b}: {udp:?}");
    }
    // Independent check of what the agent installed: hash select groups, no dp_hash.
    let groups = lab.groups()?.join("\n");
    assert!(groups.contains("selection_method=hash"), "{groups}");
    assert!(!groups.contains("dp_hash"), "{groups}");
    let flows = lab.flows()?.join("\n");
    assert!(flows.contains("nw_dst=10.96.0.10,tp_dst=80"), "{flows}");
    // Scenario 1 (in-VPC ClusterIP): every megaflow that carried its
    // established traffic is one a BlueField could run.
    let report = assert_offloadable(&lab.ops_socket(), Some("web"))?;
    assert!(report.contains("Service web"), "{report}");
    Ok(())
}

#[test]
fn removed_backend_keeps_its_established_connection_but_gets_no_new_ones() -> Result<()> {
    let explicit = |ips: &[&str]| {
        let list: Vec<String> = ips
            .iter()
            .map(|ip| format!("    - {{ip: \"{ip}\"}}"))
            .collect();
        service_yaml(
            "web",
            "vpc-a",
            VIP,
            &format!("  backends:\n{}", list.join("\n")),
            "",
        )
    };
    let all = ["10.0.1.11", "10.0.1.12", "10.0.1.13"];
    let lab = lab_with_backends("rm", 3, &explicit(&all))?;
    let out = lab.path("hold.json");
    let mut hold = traffic::start_hold(
        &lab.host("client")?.ns,
        &format!("{VIP}:80"),
        40,
        Duration::from_millis(100),
        &out,
    )?;
    let pinned = hold.wait_first(Duration::from_secs(10))?;
    let pinned_ip = lab.host(&pinned)?.ip.clone();
    let rest: Vec<&str> = all.iter().copied().filter(|ip| *ip != pinned_ip).collect();
    let v1 = lab.intent_version()?;
    lab.write_manifest("10-svc.yaml", &explicit(&rest))?;
    lab.wait_converged_after(v1)?;
    let fresh = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_all_ok(&fresh, "new connections after removal");
    assert_eq!(
        fresh.count_for(&pinned),
        0,
        "removed {pinned} still got new connections: {fresh:?}"
    );
    let held = hold.finish(Duration::from_secs(20))?;
    assert_eq!(
        (held.ok, held.failed),
        (40, 0),
        "established connection to {pinned} broke: {held:?}"
    );
    Ok(())
}

#[test]
fn weights_zero_and_one_to_three_shape_the_split() -> Result<()> {
    let sel = "  backends:\n    - {workload: web-1, weight: 1}\n    - {workload: web-2, weight: 3}\n    - {workload: web-3, weight: 0}";
    let lab = lab_with_backends("wt", 3, &service_yaml("web", "vpc-a", VIP, sel, ""))?;
    let n = 200;
    let r = lab.client("client", &format!("{VIP}:80"), "tcp", n)?;
    assert_all_ok(&r, "weighted");
    assert_eq!(r.count_for("web-3"), 0, "weight 0 got traffic: {r:?}");
    let share = r.count_for("web-2") as f64 / n as f64;
    // Expected 0.75; with 200 draws one standard deviation is about 0.03.
    assert!(
        (0.63..=0.87).contains(&share),
        "web-2 share {share:.2}, want 0.75±0.12: {r:?}"
    );
    // One bucket per unit of weight: 1 + 3 buckets per group.
    let groups = lab.groups()?;
    let tcp_group = groups
        .iter()
        .find(|g| g.contains("tcp_src"))
        .expect("a tcp group");
    assert_eq!(tcp_group.matches("bucket=").count(), 4, "{tcp_group}");
    Ok(())
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() -> Result<()> {
    let svc = web_service("  sessionAffinity: {type: ClientIP, timeoutSeconds: 60}");
    let lab = lab_with_backends("aff", 3, &svc)?;
    let r = lab.client("client", &format!("{VIP}:80"), "tcp", 30)?;
    assert_all_ok(&r, "affinity");
    assert_eq!(
        r.by_backend.len(),
        1,
        "client moved between backends: {r:?}"
    );
    assert_offloadable(&lab.ops_socket(), Some("web"))?;
    let flows = lab.ovs.ofctl(&[
        "--no-stats",
        "dump-flows",
        &lab.ovs.mgmt(&lab.bridge),
        "table=41",
    ])?;
    assert!(
        flows.contains("nw_src=10.0.1.2"),
        "no learned affinity entry: {flows}"
    );
    Ok(())
}

#[test]
fn deleting_a_service_removes_every_flow_and_group_it_had() -> Result<()> {
    let svc = web_service("  sessionAffinity: {type: ClientIP, timeoutSeconds: 60}");
    let lab = lab_with_backends("del", 2, &svc)?;
    assert_all_ok(
        &lab.client("client", &format!("{VIP}:80"), "tcp", 5)?,
        "before delete",
    );
    let before = lab.flows()?.join("\n");
    assert!(
        before.contains(VIP) && before.contains("table=41"),
        "{before}"
    );
    let v1 = lab.intent_version()?;
    lab.remove_manifest("10-svc.yaml")?;
    lab.wait_converged_after(v1)?;
    let flows = lab.flows()?;
    let left: Vec<&String> = flows
        .iter()
        // Table misses (priority 0) belong to the pipeline, not the Service.
        .filter(|f| !f.contains("priority=0 "))
        .filter(|f| {
            f.contains(VIP)
                || f.contains("group:")
                || ["table=41", "table=42", "table=43", "table=45"]
                    .iter()
                    .any(|t| f.contains(t))
        })
        .collect();
    assert!(left.is_empty(), "flows left behind: {left:#?}");
    assert!(
        lab.groups()?.is_empty(),
        "groups left behind: {:?}",
        lab.groups()?
    );
    // Workload forwarding is untouched.
    assert!(flows.iter().any(|f| f.contains("nw_dst=10.0.1.11")));
    Ok(())
}

#[test]
fn overlapping_vpcs_stay_isolated_even_on_the_same_vip() -> Result<()> {
    let mut lab = Lab::new("iso")?;
    let mut yaml = String::new();
    for (vpc, vni, tag) in [("vpc-a", 100, 0xa0u8), ("vpc-b", 200, 0xb0u8)] {
        yaml += &vpc_yaml(vpc, vni, "10.0.1.0/24", GW);
        yaml += "---\n";
        let client = format!("{vpc}-client");
        let web = format!("{vpc}-web");
        yaml += &workload_yaml(&client, vpc, "10.0.1.2", &mac(tag + 2), "client");
        yaml += &workload_yaml(&web, vpc, "10.0.1.11", &mac(tag + 11), "web");
        lab.add_host(&client, "10.0.1.2/24", &mac(tag + 2), GW)?;
        lab.add_host(&web, "10.0.1.11/24", &mac(tag + 11), GW)?;
        lab.echo(&web, &[8080], &[5353])?;
    }
    lab.write_manifest("00-vpcs.yaml", &yaml)?;
    let mut svcs = service_yaml("web-a", "vpc-a", VIP, "  selector: {app: web}", "");
    svcs += "---\n";
    svcs += &service_yaml("web-b", "vpc-b", VIP, "  selector: {app: web}", "");
    lab.write_manifest("10-svc.yaml", &svcs)?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    for (client, want) in [("vpc-a-client", "vpc-a-web"), ("vpc-b-client", "vpc-b-web")] {
        for (target, proto) in [(format!("{VIP}:80"), "tcp"), (format!("{VIP}:53"), "udp")] {
            let r = lab.client(client, &target, proto, 20)?;
            assert_all_ok(&r, client);
            assert_eq!(
                r.by_backend.keys().collect::<Vec<_>>(),
                [want],
                "{client} {proto}: {r:?}"
            );
        }
        let direct = lab.client(client, "10.0.1.11:8080", "tcp", 5)?;
        assert_eq!(
            direct.by_backend.keys().collect::<Vec<_>>(),
            [want],
            "{client} direct: {direct:?}"
        );
    }
    // Each VPC got its own conntrack zone (reg0) in the switch.
    let flows = lab.flows()?.join("\n");
    assert!(
        flows.contains("reg0=0x1") && flows.contains("reg0=0x2"),
        "{flows}"
    );
    Ok(())
}

#[test]
fn invalid_manifests_are_refused_and_the_data_plane_stays_as_it_was() -> Result<()> {
    let lab = lab_with_backends("bad", 2, &web_service(""))?;
    let version = lab.intent_version()?;
    let flows_before = lab.flows()?;
    let groups_before = lab.groups()?;
    let cases = [
        (
            "backend outside its VPC",
            service_yaml("web2", "vpc-a", "10.96.0.20", "  backends:\n    - {ip: \"192.168.9.9\"}", ""),
            "spec.backends[0].ip",
        ),
        (
            "duplicate VIP:port in one VPC",
            service_yaml("web-dup", "vpc-a", VIP, "  selector: {app: web}", ""),
            "spec.clusterIPs[0]",
        ),
        (
            "bad CIDR",
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: broken}\nspec: {vpc: vpc-a, cidr: \"10.0.300.0/24\", gateway: \"10.0.3.1\"}\n".to_string(),
            "spec.cidr",
        ),
        (
            "port 0",
            service_yaml("web0", "vpc-a", "10.96.0.30", "  selector: {app: web}", "").replace("port: 80,", "port: 0,"),
            "spec.ports[0].port",
        ),
    ];
    for (what, yaml, field) in cases {
        lab.write_manifest("20-bad.yaml", &yaml)?;
        let mut seen = String::new();
        wait_until(
            &format!("the controller to refuse: {what}"),
            Duration::from_secs(15),
            || {
                seen = lab
                    .status()
                    .map(|s| s["intent_errors"].to_string())
                    .unwrap_or_default();
                seen.contains(field) && seen.contains("20-bad.yaml")
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}: status intent_errors = {seen}"))?;
        assert_eq!(lab.intent_version()?, version, "{what}: version moved");
        assert_eq!(lab.flows()?, flows_before, "{what}: flows changed");
        assert_eq!(lab.groups()?, groups_before, "{what}: groups changed");
        assert_all_ok(
            &lab.client("client", &format!("{VIP}:80"), "tcp", 10)?,
            what,
        );
        lab.remove_manifest("20-bad.yaml")?;
    }
    Ok(())
}

#[test]
fn agent_refuses_a_controller_whose_certificate_fails_verification() -> Result<()> {
    let mut lab = Lab::new("tls")?;
    lab.write_manifest("00-vpc.yaml", &vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW))?;
    lab.start_controller()?;
    // A CA the controller's certificate does not chain to.
    let other = lab.path("other-ca");
    lab.controller_cmd(&["ca", "init", "--state-dir", &other.display().to_string()])?;
    lab.start_agent_with_ca(&other.join("pki/ca.pem"))?;
    wait_until(
        "the agent to log a failed TLS connect",
        Duration::from_secs(20),
        || {
            let log = lab.agent_log();
            log.contains("controller session failed") && log.to_lowercase().contains("certificate")
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&lab.agent_log())))?;
    let applied = lab
        .node_status()
        .ok()
        .and_then(|n| n["applied_version"].as_u64())
        .unwrap_or(0);
    assert_eq!(applied, 0, "an untrusted controller's intent was applied");
    Ok(())
}

#[test]
fn agent_restart_under_traffic_loses_no_request_and_flushes_nothing() -> Result<()> {
    let mut lab = lab_with_backends("rst", 2, &web_service(""))?;
    // Every flow of ours carries a cookie; compare without it (the round changes).
    let before = traffic::flows_without_cookies(lab.flows()?);
    let out = lab.path("hold.json");
    let hold = traffic::start_hold(
        &lab.host("client")?.ns,
        &format!("{VIP}:80"),
        60,
        Duration::from_millis(100),
        &out,
    )?;
    // 150 new connections, one every 30 ms (about 5 s), each bounded by 2 s.
    let looper = traffic::spawn_tcp_load(
        &lab.host("client")?.ns,
        &format!("{VIP}:80"),
        150,
        Duration::from_millis(30),
        Duration::from_secs(2),
    )?;
    std::thread::sleep(Duration::from_millis(800));
    lab.agent.as_mut().expect("agent").kill9()?;
    std::thread::sleep(Duration::from_millis(500));
    // The log file is appended to: only what the restarted agent writes counts.
    let mark = lab.agent_log().len();
    lab.start_agent()?;
    let since_restart = || lab.agent_log().get(mark..).unwrap_or_default().to_string();
    wait_until(
        "the restarted agent to reconcile",
        Duration::from_secs(30),
        || {
            // It restores its last applied intent, reconciles the switch to
            // it, and resumes its session at that version.
            let log = since_restart();
            log.contains("reconciled") && log.contains("controller session established")
        },
    )
    .with_context(|| format!("the restarted agent's log:\n{}", since_restart()))?;
    let r = looper.join().expect("client thread")?;
    assert_eq!(
        (r.ok, r.failed),
        (150, 0),
        "requests lost across the restart: {r:?}"
    );
    let held = hold.finish(Duration::from_secs(30))?;
    assert_eq!(held.failed, 0, "held connection broke: {held:?}");
    lab.wait_converged()?;
    assert_eq!(
        traffic::flows_without_cookies(lab.flows()?),
        before,
        "flows differ after restart (beyond cookies)"
    );
    assert!(
        since_restart().contains("nothing flushed"),
        "{}",
        since_restart()
    );
    Ok(())
}

#[test]
fn a_vnic_ip_is_reached_through_its_ports_workload_and_may_answer_from_it() -> Result<()> {
    // web-1 (a Pod) owns the port; `web-1-vnic` is a secondary address on it. The
    // Service `vnic` selects only the VNicIP, so every answer must come through
    // web-1's port, with replies sourced from the secondary address passing the
    // spoof guard.
    let mut lab = backends_lab("vnic", 2, &web_service(""))?;
    let vnic = "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: web-1-vnic, labels: {app: vnic}}\nspec: {kind: VNicIP, vpc: vpc-a, ip: \"10.0.1.21\", node: dpu-1, port: web-1}\n";
    lab.write_manifest("20-vnic.yaml", vnic)?;
    let svc = service_yaml("vnic", "vpc-a", "10.96.0.11", "  selector: {app: vnic}", "");
    lab.write_manifest("30-vnic-svc.yaml", &svc)?;
    lab.host("web-1")?.ns.add_addr("eth0", "10.0.1.21/24")?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;

    // TCP only: lab-echo's UDP socket is bound to 0.0.0.0, so the kernel sources
    // its replies from web-1's primary address, which conntrack rightly does not
    // match to the VNicIP's connection (any UDP server that is not
    // multihoming-aware behaves so).
    let tcp = lab.client("client", "10.96.0.11:80", "tcp", 30)?;
    assert_all_ok(&tcp, "tcp");
    assert_eq!(tcp.count_for("web-1"), 30, "{tcp:?}");
    // Directly, too: the secondary address is routed to web-1's port.
    let direct = lab.client("client", "10.0.1.21:8080", "tcp", 10)?;
    assert_all_ok(&direct, "direct");
    // And one Service can mix kinds: Pods, a VM-style port and the VNicIP.
    let flows = lab.flows()?;
    assert!(
        flows.iter().any(|f| f.contains("nw_src=10.0.1.21")),
        "spoof guard admits the secondary address on web-1's port"
    );

    // A VNicIP claiming another MAC than its port's is refused whole, naming the
    // field.
    let v = lab.intent_version()?;
    lab.write_manifest(
        "21-bad.yaml",
        "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {name: stray}\nspec: {kind: VNicIP, vpc: vpc-a, ip: \"10.0.1.22\", mac: \"0a:00:00:00:09:09\", node: dpu-1, port: web-1}\n",
    )?;
    wait_until(
        "the controller to refuse it",
        Duration::from_secs(10),
        || {
            lab.status()
                .is_ok_and(|s| s["intent_errors"].to_string().contains("Workload/stray"))
        },
    )?;
    let errors = lab.status()?["intent_errors"].to_string();
    assert!(errors.contains("spec.mac"), "{errors}");
    assert_eq!(lab.intent_version()?, v, "nothing applied");
    Ok(())
}

/// The lab's controller port is bound by something else before the controller
/// starts (a port found free stays free only until someone binds it, and
/// tests run in parallel): the controller is not taken to be up because
/// something answers there; it is started on another port, which the agent
/// is then given, and they converge.
#[test]
fn a_controller_port_taken_before_the_controller_starts_is_replaced() -> Result<()> {
    let mut lab = backends_lab("port", 1, &web_service(""))?;
    let taken = lab.controller_addr.clone();
    let _squatter = std::net::TcpListener::bind(&taken)?;
    lab.start_controller()?;
    assert_ne!(lab.controller_addr, taken, "started on the taken port?");
    lab.start_agent()?;
    lab.wait_converged()?;
    Ok(())
}
