//! NetworkProbe health checks with real traffic: the real controller and agent, a
//! private OVS, echo servers that answer HTTP. Needs root; a missing prerequisite
//! fails the test.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dpu_lab::fixture::Lab;
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, web_service, VIP};
use dpu_lab::traffic;

/// HTTP GET /healthz on 8080 every second, 1 s timeout; 2 failures make a backend
/// unhealthy, 1 success healthy again.
const PROBE: &str = "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: NetworkProbe\nmetadata: {name: web-http}\nspec: {service: web, type: HTTP, port: 8080, httpPath: /healthz, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2, successThreshold: 1}\n";

/// web-2's endpoint as its bucket loads it (10.0.1.12).
const WEB2_BUCKET: &str = "set_field:0xa00010c->reg3";

fn has_web2_bucket(lab: &Lab) -> bool {
    lab.groups()
        .is_ok_and(|g| g.iter().any(|l| l.contains(WEB2_BUCKET)))
}

/// A held connection through the VIP that landed on web-1 (the backend is the
/// hash's choice: with two backends, 16 tries all miss with a chance of 2^-16).
fn hold_on_web1(lab: &Lab) -> Result<traffic::Hold> {
    let mut missed = Vec::new();
    for i in 0..16 {
        let mut h = traffic::start_hold(
            &lab.host("client")?.ns,
            &format!("{VIP}:80"),
            80,
            Duration::from_millis(100),
            &lab.path(&format!("hold-{i}.json")),
        )?;
        let first = h.wait_first(Duration::from_secs(5))?;
        if first.contains("web-1") {
            return Ok(h);
        }
        missed.push(first);
    }
    bail!("no held connection landed on web-1 in 16 tries: {missed:?}")
}

/// One DPU, with the controller down for the whole fault: probes keep running
/// and their verdicts apply locally.
#[test]
fn with_the_controller_down_an_unhealthy_backend_leaves_the_group_and_comes_back() -> Result<()> {
    let mut lab = backends_lab("prb", 2, &format!("{}{PROBE}", web_service("")))?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    wait_until(
        "the probe link to be ready",
        Duration::from_secs(15),
        || lab.agent_log().contains("probe link ready"),
    )?;
    lab.controller.as_mut().expect("controller").kill9()?;
    let both = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_eq!(both.failed, 0, "{both:?}");
    assert!(both.count_for("web-2") > 0, "{both:?}");
    // The probes come from inside the VPC, through the probe link.
    wait_until("web-2 to see a probe", Duration::from_secs(5), || {
        lab.tcp_peers_of("web-2")
            .iter()
            .any(|p| p == "169.254.100.1")
    })?;

    let hold = hold_on_web1(&lab)?;
    // web-2 dies: its echo server is killed.
    lab.hosts
        .get_mut("web-2")
        .and_then(|h| h.echo.as_mut())
        .expect("web-2 runs an echo server")
        .kill9()?;
    let died = Instant::now();
    wait_until(
        "web-2's bucket to leave the group",
        Duration::from_secs(10),
        || !has_web2_bucket(&lab),
    )?;
    let failover = died.elapsed();
    // Two failed probes a period (1 s ± 10%) apart, the first at most a period
    // after the death, then one bundle.
    assert!(
        failover < Duration::from_millis(3_500),
        "failover took {failover:?}"
    );
    let after = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_eq!(
        (after.failed, after.count_for("web-1")),
        (0, 40),
        "{after:?}"
    );
    assert!(lab
        .agent_log()
        .lines()
        .any(|l| l.contains("backend health changed") && l.contains("10.0.1.12")));

    // web-2 recovers: its bucket comes back after one good probe.
    lab.echo("web-2", &[8080], &[5353])?;
    let revived = Instant::now();
    wait_until(
        "web-2's bucket to come back",
        Duration::from_secs(10),
        || has_web2_bucket(&lab),
    )?;
    let recovery = revived.elapsed();
    let back = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_eq!(back.failed, 0, "{back:?}");
    assert!(back.count_for("web-2") > 0, "{back:?}");

    // The connection held to web-1 the whole time lost nothing.
    let held = hold.finish(Duration::from_secs(30))?;
    assert_eq!(held.failed, 0, "held connection to web-1: {held:?}");
    eprintln!(
        "probe: failover {failover:?} (death to bucket removal), recovery {recovery:?} (restart to bucket back)"
    );
    Ok(())
}

/// Two DPUs: web-1 on dpu-1, web-2 on dpu-2, the client on dpu-1. Each DPU probes
/// only its own backend (N probes, not N×M); dpu-2 finds web-2 dead, tells the
/// controller, and the controller tells dpu-1, whose group drops web-2.
#[test]
fn a_backend_found_dead_by_its_own_dpu_leaves_the_groups_of_every_dpu() -> Result<()> {
    use dpu_lab::multi::MultiLab;
    use dpu_lab::scenario::{mac, placed_workload, service_yaml, vpc_yaml, GW};
    let mut lab = MultiLab::new("prbm", 2)?;
    let mut yaml = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    yaml += &placed_workload("client", "vpc-a", "10.0.1.2", &mac(2), "client", 0, "Pod");
    yaml += &placed_workload("web-1", "vpc-a", "10.0.1.11", &mac(11), "web", 0, "Pod");
    yaml += &placed_workload("web-2", "vpc-a", "10.0.1.12", &mac(12), "web", 1, "VM");
    lab.add_host(0, "client", "10.0.1.2/24", &mac(2), GW)?;
    lab.add_host(0, "web-1", "10.0.1.11/24", &mac(11), GW)?;
    lab.add_host(1, "web-2", "10.0.1.12/24", &mac(12), GW)?;
    lab.echo("web-1", &[8080], &[5353])?;
    lab.echo("web-2", &[8080], &[5353])?;
    lab.write_manifest("00-vpc.yaml", &yaml)?;
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    let svc = service_yaml("web", "vpc-a", VIP, "  selector: {app: web}", "");
    lab.write_manifest("10-svc.yaml", &format!("{svc}{PROBE}"))?;
    lab.start_controller()?;
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    lab.wait_converged()?;
    for (dpu, own) in [(0, "vpc-a/10.0.1.11:8080"), (1, "vpc-a/10.0.1.12:8080")] {
        wait_until(
            "each DPU to plan its own probe",
            Duration::from_secs(15),
            || {
                lab.agent_log(dpu)
                    .lines()
                    .any(|l| l.contains("probe plan") && l.contains(&format!("targets={own} ")))
                    && lab.agent_log(dpu).contains("probe link ready")
            },
        )?;
    }
    let web2_bucket = |lab: &MultiLab| {
        let d = lab.fabric.dpu(0).expect("dpu-1");
        d.ovs()
            .dump_groups(d.bridge())
            .is_ok_and(|g| g.iter().any(|l| l.contains(WEB2_BUCKET)))
    };
    // The ACK can come before dpu-1's Geneve tunnel port has its ofport; until
    // then web-2 (remote) is unreachable there and has no bucket.
    wait_until(
        "dpu-1 to balance to web-2 at first",
        Duration::from_secs(15),
        || web2_bucket(&lab),
    )
    .map_err(|e| {
        let log = lab.agent_log(0);
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        e.context(format!("dpu-1's log, newest first:\n{}", tail.join("\n")))
    })?;
    let both = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert!(both.failed == 0 && both.count_for("web-2") > 0, "{both:?}");

    lab.hosts
        .get_mut("web-2")
        .and_then(|h| h.host.echo.as_mut())
        .expect("web-2 runs an echo server")
        .kill9()?;
    let died = Instant::now();
    wait_until(
        "dpu-1 to drop web-2's bucket on dpu-2's word",
        Duration::from_secs(10),
        || !web2_bucket(&lab),
    )?;
    let failover = died.elapsed();
    let after = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_eq!(
        (after.failed, after.count_for("web-1")),
        (0, 40),
        "{after:?}"
    );
    // dpu-1 never probed web-2 itself.
    assert!(!lab
        .agent_log(0)
        .lines()
        .any(|l| l.contains("backend health changed") && l.contains("10.0.1.12")));

    lab.echo("web-2", &[8080], &[5353])?;
    let revived = Instant::now();
    wait_until("dpu-1 to take web-2 back", Duration::from_secs(10), || {
        web2_bucket(&lab)
    })?;
    let recovery = revived.elapsed();
    eprintln!("probe across DPUs: failover {failover:?} on the other DPU, recovery {recovery:?}");
    assert!(
        failover < Duration::from_secs(4),
        "failover took {failover:?}"
    );
    Ok(())
}
