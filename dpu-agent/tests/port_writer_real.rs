//! OVSDB port writes do not hold up the agent loop (`src/vswitch/portwriter.rs`): with
//! `ovsdb-server` stopped (SIGSTOP) while the agent has a probe port to add, an
//! update is still ACKed; the port lands once the server runs again. The real
//! agent binary, a private OVS, an in-process fake controller (`dpu_lab`). Needs
//! root and Open vSwitch; a missing prerequisite fails the test.
//!
//! Before the port writer the loop awaited the probe port's transaction right
//! after ACKing the update that asked for it, so the next update's ACK waited for
//! `ovsdb-server`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpu_lab::fake_controller::{accept_hello, issue_server_identity, reply, reply_within};
use dpu_lab::fixture::{tail, Lab, NODE};
use dpu_lab::objects::{service, update, vpc_a, workload};
use dpu_lab::process::wait_until;
use dpu_model::*;
use dpu_proto::v1 as pb;
use tokio::sync::mpsc;

fn probe(service: &str) -> Object {
    Object::NetworkProbe(NetworkProbe {
        name: format!("{service}-tcp"),
        service: service.into(),
        probe_type: ProbeType::Tcp,
        port: 8080,
        http_path: String::new(),
        http_statuses: 200..=399,
        period_ms: 1000,
        timeout_ms: 1000,
        success_threshold: 1,
        failure_threshold: 2,
    })
}

fn acked(r: pb::agent_message::Msg, version: u64) -> Result<()> {
    match r {
        pb::agent_message::Msg::Ack(a) if a.version == version => Ok(()),
        other => bail!("v{version} not acked: {other:?}"),
    }
}

/// `ovsdb-server` stopped with SIGSTOP until dropped (SIGCONT), so a failing
/// test does not leave it frozen for the lab's clean-up.
struct Frozen(String);

impl Frozen {
    fn stop(pid: String) -> Result<Frozen> {
        signal("-STOP", &pid)?;
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal("-CONT", &self.0);
    }
}

fn signal(sig: &str, pid: &str) -> Result<()> {
    let st = Command::new("kill").args([sig, pid]).status()?;
    if !st.success() {
        bail!("kill {sig} {pid}: {st}");
    }
    Ok(())
}

fn probe_ports(lab: &Lab) -> Result<Vec<String>> {
    Ok(lab
        .ovs
        .vsctl(&["list-ports", &lab.bridge])?
        .lines()
        .filter(|p| p.starts_with("dpr"))
        .map(str::to_string)
        .collect())
}

/// While `ovsdb-server` is stopped, the update that adds a NetworkProbe (whose
/// probe port the agent then has to add) is ACKed, and so is the next one, well
/// before the server runs again; the probe port is not on the bridge then, and
/// is there once the server runs.
#[test]
fn an_update_is_acked_while_ovsdb_server_is_stopped_with_a_port_write_pending() -> Result<()> {
    const FROZEN_FOR: Duration = Duration::from_secs(4);
    let mut lab = Lab::new("pwr")?;
    let (cert, key, ca) = issue_server_identity(&lab)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stx, mut srx) = mpsc::channel(4);
    let addr: SocketAddr = lab.controller_addr.parse()?;
    dpu_lab::fake_controller::serve(
        &rt,
        addr,
        (cert, key),
        ca,
        dpu_controller::server::MAX_DECODING_MESSAGE,
        stx,
        std::future::pending(),
    );
    lab.start_agent()?;
    let mut base = vpc_a();
    base.extend([
        workload("web-1", 11),
        service("web", 10, &[Ipv4Addr::new(10, 0, 1, 11)]),
    ]);
    let pidfile = lab.ovs.dir().join("ovsdb-server.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?
        .trim()
        .to_string();

    let ack_while_frozen = rt.block_on(async {
        let ((mut inbound, out), hello) = accept_hello(&mut srx, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow!("{e}\n{}", tail(&lab.agent_log())))?;
        assert_eq!((hello.node.as_str(), hello.last_applied_version), (NODE, 0));
        out.send(Ok(update(1, 0, true, base))).await?;
        acked(reply(&mut inbound).await?, 1)?;
        // The agent's own ports (the Geneve port) are in; no probe port yet.
        assert!(probe_ports(&lab)?.is_empty());

        let frozen = Frozen::stop(pid.clone())?;
        let stopped = Instant::now();
        // v2 asks for a probe port: right after its ACK the loop has a port
        // write for it, which cannot finish while the server is stopped.
        out.send(Ok(update(2, 1, false, vec![probe("web")])))
            .await?;
        acked(reply_within(&mut inbound, Duration::from_secs(2)).await?, 2)?;
        out.send(Ok(update(
            3,
            2,
            false,
            vec![service("web2", 11, &[Ipv4Addr::new(10, 0, 1, 11)])],
        )))
        .await?;
        let r = reply_within(&mut inbound, Duration::from_secs(2)).await;
        let acked_after = stopped.elapsed();
        // Still frozen: the write cannot have landed.
        let still_frozen = stopped.elapsed() < FROZEN_FOR;
        tokio::time::sleep(FROZEN_FOR.saturating_sub(stopped.elapsed())).await;
        drop(frozen);
        let r = r.map_err(|e| {
            anyhow!(
                "no ACK of v3 while ovsdb-server was stopped: {e}\n{}",
                tail(&lab.agent_log())
            )
        })?;
        acked(r, 3)?;
        assert!(still_frozen, "ACK took {acked_after:?}");
        anyhow::Ok(acked_after)
    })?;
    eprintln!("v3 ACKed {ack_while_frozen:?} after ovsdb-server was stopped");
    assert!(ack_while_frozen < FROZEN_FOR, "{ack_while_frozen:?}");
    wait_until(
        "the probe port to be added once ovsdb-server runs",
        Duration::from_secs(15),
        || probe_ports(&lab).is_ok_and(|p| p.len() == 1),
    )
    .map_err(|e| anyhow!("{e}\n{}", tail(&lab.agent_log())))?;
    drop(lab);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
