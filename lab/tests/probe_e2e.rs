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

/// A held connection through the VIP that landed on web-1 (a few tries: the
/// backend is the hash's choice).
fn hold_on_web1(lab: &Lab) -> Result<traffic::Hold> {
    for i in 0..8 {
        let mut h = traffic::start_hold(
            &lab.host("client")?.ns,
            &format!("{VIP}:80"),
            80,
            Duration::from_millis(100),
            &lab.path(&format!("hold-{i}.json")),
        )?;
        if h.wait_first(Duration::from_secs(5))?.contains("web-1") {
            return Ok(h);
        }
    }
    bail!("no held connection landed on web-1 in 8 tries")
}

#[test]
fn an_unhealthy_backend_leaves_the_group_others_keep_their_connections_and_it_comes_back(
) -> Result<()> {
    let mut lab = backends_lab("prb", 2, &format!("{}{PROBE}", web_service("")))?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    wait_until(
        "the probe link to be ready",
        Duration::from_secs(15),
        || lab.agent_log().contains("probe link ready"),
    )?;
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
