//! The agent's own work survives a flood of its attachment port: a real agent
//! under a descriptor limit (`prlimit`), its shim listener held by hundreds of
//! idle and half-finished TLS connections, and meanwhile its probes, its log,
//! its operator socket, /metrics, its controller session and the shim's calls
//! all keep working. Real controller, agent and OVS; needs root.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use dpu_lab::fixture::agent_endpoints;
use dpu_lab::observe::{agent_ok, scrape, value};
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, mac, web_service, workload_yaml, VIP};
use dpu_listen::flood::{client_hello, flood, open_count};

const PROBE: &str = "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: NetworkProbe\nmetadata: {name: web-tcp}\nspec: {service: web, type: TCP, port: 8080, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2, successThreshold: 1}\n";
/// What the flood opens: the figures of issue 15.
const IDLE: usize = 300;
const HALF_OPEN: usize = 300;
/// The agent's descriptor limit: its reserve (1,024) and a little room.
const NOFILE: u64 = 1_200;

fn healthy(text: &str, ip: &str) -> Option<f64> {
    value(text, "dpu_probe_healthy", &[("ip", ip)])
}

#[test]
fn a_flooded_attachment_port_starves_none_of_the_agents_own_work() -> Result<()> {
    let mut lab = backends_lab("bnd", 2, &format!("{}{PROBE}", web_service("")))?;
    lab.agent_nofile = Some(NOFILE);
    lab.enable_shim(1)?;
    lab.start_controller()?;
    lab.start_agent()?;
    let v = lab.wait_converged()?;
    let (metrics, ops) = agent_endpoints(&lab.path("agent.toml"))?;
    wait_until("both probes healthy", Duration::from_secs(20), || {
        scrape(metrics).is_ok_and(|t| {
            healthy(&t, "10.0.1.11") == Some(1.0) && healthy(&t, "10.0.1.12") == Some(1.0)
        })
    })?;
    let agent_addr = lab.shim.as_ref().expect("shim").agent_addr.clone();

    // The flood: idle TCP connections, and ClientHellos never followed up.
    let made = Instant::now();
    let conns = flood(agent_addr.parse()?, IDLE, HALF_OPEN, &client_hello("dpu-1"));
    std::thread::sleep(Duration::from_millis(500));
    let held = open_count(&conns);

    // Meanwhile: the operator socket, /metrics with both probes still healthy,
    // a new intent version through the controller session, its log line, the
    // shim's own call, and traffic.
    let started = Instant::now();
    let intent = agent_ok(&ops, &["show", "intent"])?;
    assert!(intent.contains("web"), "{intent}");
    let text = scrape(metrics)?;
    assert_eq!(healthy(&text, "10.0.1.11"), Some(1.0), "{text}");
    assert_eq!(healthy(&text, "10.0.1.12"), Some(1.0), "{text}");
    let lines_before = lab.agent_log().lines().count();
    lab.write_manifest(
        "20-extra.yaml",
        &workload_yaml("extra", "vpc-a", "10.0.1.40", &mac(40), "other"),
    )?;
    let v2 = lab.wait_converged_after(v)?;
    let cfg = lab.cni_config("vpc-a-net", &[])?;
    let netns = lab.pod_netns("status-probe")?;
    let (code, out) = lab.cni("STATUS", "status-probe", &netns, "eth0", &cfg)?;
    assert_eq!(code, 0, "the shim's STATUS under the flood: {out}");
    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", 20)?;
    assert_eq!(tcp.failed, 0, "{tcp:?}");
    let served_in = started.elapsed();
    let log = lab.agent_log();
    assert!(
        log.lines().count() > lines_before,
        "the agent logged nothing under the flood"
    );
    assert!(
        log.contains(&format!("version={v2}")),
        "no log line of v{v2}"
    );
    let text = scrape(metrics)?;
    assert_eq!(healthy(&text, "10.0.1.11"), Some(1.0), "{text}");
    assert_eq!(healthy(&text, "10.0.1.12"), Some(1.0), "{text}");

    // Every flood connection goes within the handshake timeout (10 s), with
    // slack for a loaded machine.
    let mut open = conns.len();
    wait_until("the flood to be closed", Duration::from_secs(25), || {
        open = open_count(&conns);
        open == 0
    })
    .map_err(|e| anyhow!("{e}: {open} still open"))?;
    eprintln!(
        "agent under NOFILE {NOFILE}: {} flood connections made, {held} held by the agent 0.5 s later; \
         ops socket, /metrics, a new version (v{v2}), the shim's STATUS and 20 requests served in {served_in:?}; \
         all closed {:?} after they were made",
        conns.len(),
        made.elapsed()
    );
    assert!(
        held <= 64 + 8,
        "the agent held {held}: more than its handshake budget"
    );
    assert!(
        !log.contains("Too many open files"),
        "the agent ran out of descriptors"
    );
    Ok(())
}
