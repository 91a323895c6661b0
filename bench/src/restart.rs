//! Scenario 3, restart under traffic: the agent holds N services plus one more
//! whose backend is a real lab host (`lab-echo` in a namespace on the bridge); a
//! client host probes that Service's VIP every 100 ms (each probe a new TCP
//! connection with a short timeout) while the agent is stopped with SIGTERM and
//! started again, and this fake controller resends the snapshot. The switch keeps
//! forwarding without the agent, so no probe should be lost.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use dpu_model::{Mac, Object};

use crate::guard;
use crate::intent::{self, Generated};
use crate::results::RestartRow;
use crate::rig::Rig;
use crate::secs;

const CLIENT_MAC: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 2];
const ECHO_MAC: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 3];
const PROBE_TIMEOUT_MS: u64 = 500;
const PROBE_INTERVAL_MS: u64 = 100;

fn mac_text(m: [u8; 6]) -> String {
    Mac(m).to_string()
}

/// `g` with the probe's client, its backend and its Service.
fn with_probe(g: &Generated) -> Vec<Object> {
    let mut v = g.objects();
    v.push(intent::workload(
        "client",
        intent::PROBE_CLIENT_IP,
        Mac(CLIENT_MAC),
        intent::NODE,
    ));
    v.push(intent::workload(
        "echo",
        intent::PROBE_ECHO_IP,
        Mac(ECHO_MAC),
        intent::NODE,
    ));
    v.push(Object::Service(intent::service(
        intent::PROBE_SERVICE,
        intent::PROBE_VIP,
        false,
        &[intent::PROBE_ECHO_IP],
    )));
    v
}

/// Runs the scenario with `probes` probes (100 ms apart), restarting the agent
/// `restart_after` into them.
pub fn run(
    backend: &str,
    g: &Generated,
    probes: u32,
    restart_after: Duration,
) -> Result<RestartRow> {
    let mut rig = Rig::new("restart", backend)?;
    rig.plug_ports(intent::LOCAL_PODS)?;
    let gw = intent::GATEWAY.to_string();
    rig.lab.add_host(
        "client",
        &format!("{}/12", intent::PROBE_CLIENT_IP),
        &mac_text(CLIENT_MAC),
        &gw,
    )?;
    rig.lab.add_host(
        "echo",
        &format!("{}/12", intent::PROBE_ECHO_IP),
        &mac_text(ECHO_MAC),
        &gw,
    )?;
    rig.lab.echo("echo", &[8080], &[])?;
    guard::track_lab(&rig.lab);
    rig.start_agent()?;
    let objects = with_probe(g);
    let first = rig.snapshot(&objects);
    rig.send(first, crate::cold::SNAPSHOT_TIMEOUT)?;
    let target = format!("{}:80", intent::PROBE_VIP);
    let check = rig.lab.client("client", &target, "tcp", 5)?;
    if check.count_for("echo") != 5 {
        bail!("the probe Service does not answer before the restart: {check:?}");
    }

    let log = rig.lab.path("logs/probe.log");
    let client_bin = dpu_lab::traffic::lab_bin("lab-client")?;
    let args: Vec<String> = vec![
        client_bin.display().to_string(),
        "--target".into(),
        target.clone(),
        "--proto".into(),
        "tcp".into(),
        "--count".into(),
        probes.to_string(),
        "--interval-ms".into(),
        PROBE_INTERVAL_MS.to_string(),
        "--timeout-ms".into(),
        PROBE_TIMEOUT_MS.to_string(),
        "--json".into(),
    ];
    let mut probe = rig.lab.host("client")?.ns.spawn_logged(&args, &log)?;
    guard::track_pid(probe.pid());
    std::thread::sleep(restart_after);

    let t0 = Instant::now();
    rig.stop_agent()?;
    let stop = t0.elapsed();
    let hello = rig.start_agent()?;
    let reconnect = t0.elapsed();
    if hello.last_applied_version != rig.version {
        eprintln!(
            "restart: the new agent said it has version {}, expected {}",
            hello.last_applied_version, rig.version
        );
    }
    let again = rig.snapshot(&objects);
    let ack = rig.send(again, crate::cold::SNAPSHOT_TIMEOUT)?;
    let converge = t0.elapsed();

    let bound = Duration::from_millis((PROBE_TIMEOUT_MS + PROBE_INTERVAL_MS) * u64::from(probes))
        + Duration::from_secs(10);
    let done = probe.wait_timeout(bound)?;
    guard::forget_pid(probe.pid());
    if done.is_none() {
        bail!("the probe client did not finish within {bound:?}");
    }
    let text = std::fs::read_to_string(&log)?;
    let result = dpu_lab::traffic::last_result(&text)
        .ok_or_else(|| anyhow!("the probe client printed no result: {text}"))?;
    let row = RestartRow {
        backend: backend.into(),
        services: g.services.len(),
        probes: result.ok + result.failed,
        probes_ok: result.count_for("echo"),
        probes_lost: result.failed + (result.ok - result.count_for("echo")),
        stop_ms: secs(stop) * 1000.0,
        reconnect_ms: secs(reconnect) * 1000.0,
        converge_ms: secs(converge) * 1000.0,
        snapshot_ack_ms: secs(ack) * 1000.0,
        first_errors: result.errors.iter().take(3).cloned().collect(),
        error: if converge
            > restart_after + Duration::from_millis(PROBE_INTERVAL_MS * u64::from(probes))
        {
            Some("the agent converged after the probes ended: the probes did not cover the whole restart".into())
        } else {
            None
        },
    };
    drop(probe);
    Ok(row)
}
