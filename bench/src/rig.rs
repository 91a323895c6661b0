//! One agent under test: a private OVS with the agent's bridge (the lab's `Lab`),
//! the real `dpu-agent` release binary configured for it, and this process as its
//! controller (the lab's fake controller, real mTLS). The benchmark sends updates
//! by hand and times each from send to the agent's Ack, which the agent sends only
//! after the switch's barrier reply.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpu_lab::fake_controller::{self, Session};
use dpu_lab::fixture::{agent_config_text, tail, AgentFiles, Lab};
use dpu_lab::process::spawn_logged;
use dpu_model::{object_to_proto, Object};
use dpu_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::guard;
use crate::procstat;

/// The agent's gRPC message limit is the agent's business; this is what the fake
/// controller accepts from the agent (NACKs of big updates can be large).
const MAX_AGENT_MESSAGE: usize = 64 << 20;

#[derive(Debug)]
pub struct Rig {
    // Field order is drop order: the session, then the runtime, then the lab.
    session: Option<Session>,
    sessions: mpsc::Receiver<Session>,
    rt: Option<tokio::runtime::Runtime>,
    pub lab: Lab,
    pub backend: String,
    /// The last version the agent ACKed.
    pub version: u64,
}

impl Rig {
    /// A private OVS with the bridge, a PKI and the fake controller listening.
    /// The agent is not started.
    pub fn new(tag: &str, backend: &str) -> Result<Rig> {
        let lab = Lab::new(tag)?;
        guard::track_lab(&lab);
        let (cert, key, ca) = fake_controller::issue_server_identity(&lab)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (stx, srx) = mpsc::channel(4);
        let addr: SocketAddr = lab.controller_addr.parse()?;
        fake_controller::serve(
            &rt,
            addr,
            (cert, key),
            ca,
            MAX_AGENT_MESSAGE,
            stx,
            std::future::pending(),
        );
        Ok(Rig {
            session: None,
            sessions: srx,
            rt: Some(rt),
            lab,
            backend: backend.to_string(),
            version: 0,
        })
    }

    /// Adds the local pods' ports to the bridge (internal ports with the pods'
    /// iface-ids, so the agent binds them as it would VF representors) and the
    /// agent's Geneve port as the agent makes it, so the first bundle already
    /// reaches the remote backends (the agent adds it itself otherwise, once its
    /// own DpuNode arrives, and reinstalls).
    pub fn plug_ports(&self, n: usize) -> Result<()> {
        let gnv = format!("{}-gnv", self.lab.bridge);
        self.lab.ovs.vsctl(&[
            "add-port",
            &self.lab.bridge,
            &gnv,
            "--",
            "set",
            "Interface",
            &gnv,
            "type=geneve",
            "options:remote_ip=flow",
            "options:key=flow",
            "external_ids:iface-id=\"dpu:tunnel\"",
        ])?;
        for i in 0..n {
            let name = format!("pl{i}");
            self.lab.ovs.vsctl(&[
                "add-port",
                &self.lab.bridge,
                &name,
                "--",
                "set",
                "Interface",
                &name,
                "type=internal",
                &format!("external_ids:iface-id={}", crate::intent::local_port(i)),
            ])?;
        }
        Ok(())
    }

    /// The agent's config: the lab's, with `ovs.openflow_backend` set to ours.
    fn write_config(&self) -> Result<std::path::PathBuf> {
        let (cert, key) = self.lab.agent_identity();
        if !cert.exists() {
            self.lab.issue(dpu_lab::fixture::NODE, &self.lab.pki())?;
        }
        let text = agent_config_text(&AgentFiles {
            node: dpu_lab::fixture::NODE,
            state: &self.lab.path("agent-state"),
            controller_addr: &self.lab.controller_addr,
            standby_addrs: &[],
            ca: &self.lab.pki().join("ca.pem"),
            cert: &cert,
            key: &key,
            ovs: &self.lab.ovs,
            bridge: &self.lab.bridge,
        });
        let mut out = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with("openflow_backend") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line.trim() == "[ovs]" {
                out.push_str(&format!("openflow_backend = \"{}\"\n", self.backend));
            }
        }
        let p = self.lab.path("agent.toml");
        std::fs::write(&p, out)?;
        Ok(p)
    }

    /// Starts the agent (logging at info) and waits for its session and Hello.
    /// An agent that exits first (a backend this build does not have) is an
    /// error whose message holds the end of its log.
    pub fn start_agent(&mut self) -> Result<pb::Hello> {
        let cfg = self.write_config()?;
        let mut c = Command::new(dpu_lab::traffic::lab_bin("dpu-agent")?);
        c.args(["run", "--config"]).arg(cfg).env("RUST_LOG", "info");
        // As the unit runs it; a variable already set here wins (A/B runs).
        for (k, v) in unit_environment() {
            if std::env::var_os(&k).is_none() {
                c.env(k, v);
            }
        }
        let child = spawn_logged(c, &self.lab.path("logs/agent.log"))?;
        guard::track_pid(child.pid());
        self.lab.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rt = self.rt.as_ref().expect("runtime");
            let got = rt.block_on(fake_controller::accept_hello(
                &mut self.sessions,
                Duration::from_millis(500),
            ));
            match got {
                Ok((s, hello)) => {
                    self.session = Some(s);
                    return Ok(hello);
                }
                Err(e) => {
                    let running = self.lab.agent.as_mut().is_some_and(|a| a.is_running());
                    if !running || Instant::now() > deadline {
                        bail!(
                            "the agent ({} backend) did not connect ({e:#}; running: {running}):\n{}",
                            self.backend,
                            tail(&self.lab.agent_log())
                        );
                    }
                }
            }
        }
    }

    /// SIGTERM to the agent; returns when it exited.
    pub fn stop_agent(&mut self) -> Result<()> {
        self.session = None;
        if let Some(mut a) = self.lab.agent.take() {
            let pid = a.pid();
            a.terminate()?;
            guard::forget_pid(pid);
        }
        Ok(())
    }

    pub fn agent_pid(&self) -> Result<u32> {
        Ok(self
            .lab
            .agent
            .as_ref()
            .ok_or_else(|| anyhow!("no agent running"))?
            .pid())
    }

    pub fn vswitchd_pid(&self) -> Result<u32> {
        procstat::pid_from_file(&self.lab.ovs.dir().join("ovs-vswitchd.pid"))
    }

    /// Sends `update` and waits (at most `timeout`) for its Ack. Returns the time
    /// from send to Ack; a Nack is an error.
    pub fn send(&mut self, update: pb::Update, timeout: Duration) -> Result<Duration> {
        let version = update.version;
        let (inbound, out) = self
            .session
            .as_mut()
            .ok_or_else(|| anyhow!("no agent session"))?;
        let msg = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Update(update)),
        };
        let rt = self.rt.as_ref().expect("runtime");
        let (r, took) = rt.block_on(async {
            let start = Instant::now();
            out.send(Ok(msg))
                .await
                .map_err(|_| anyhow!("the agent session is gone"))?;
            let r = fake_controller::reply_within(inbound, timeout).await?;
            anyhow::Ok((r, start.elapsed()))
        })?;
        match r {
            pb::agent_message::Msg::Ack(a) if a.version == version => {
                self.version = version;
                Ok(took)
            }
            pb::agent_message::Msg::Nack(n) => bail!(
                "the agent NACKed version {version}: {}",
                n.errors
                    .iter()
                    .take(5)
                    .map(dpu_model::error_text)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            other => bail!("unexpected reply to version {version}: {other:?}"),
        }
    }

    /// A snapshot of `objects` as the next version.
    pub fn snapshot(&self, objects: &[Object]) -> pb::Update {
        let version = self.version + 1;
        pb::Update {
            version,
            nonce: format!("b{version}"),
            snapshot: true,
            base_version: 0,
            upserts: objects.iter().map(object_to_proto).collect(),
            deletes: vec![],
            store_id: String::new(),
        }
    }

    /// An increment on the last ACKed version upserting `objects`.
    pub fn increment(&self, objects: &[Object]) -> pb::Update {
        let version = self.version + 1;
        pb::Update {
            version,
            nonce: format!("b{version}"),
            snapshot: false,
            base_version: self.version,
            upserts: objects.iter().map(object_to_proto).collect(),
            deletes: vec![],
            store_id: String::new(),
        }
    }

    /// Flows and groups on the bridge now.
    pub fn counts(&self) -> Result<(usize, usize)> {
        switch_counts(&self.lab.ovs, &self.lab.bridge)
    }

    /// iface-id → OpenFlow port of every interface on the bridge that has one,
    /// once every local pod's port and the tunnel port have their number (at
    /// most 5 s).
    pub fn ports(&self) -> Result<BTreeMap<String, u32>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.read_ports()?;
            let complete = m.contains_key("dpu:tunnel")
                && (0..crate::intent::LOCAL_PODS)
                    .all(|i| m.contains_key(&crate::intent::local_port(i)));
            if complete || Instant::now() > deadline {
                return Ok(m);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn read_ports(&self) -> Result<BTreeMap<String, u32>> {
        let out = self.lab.ovs.vsctl(&[
            "--format=csv",
            "--no-headings",
            "--columns=ofport,external_ids",
            "list",
            "Interface",
        ])?;
        let mut m = BTreeMap::new();
        for line in out.lines() {
            let Some((port, ids)) = line.split_once(',') else {
                continue;
            };
            let Some(rest) = ids.split("iface-id=").nth(1) else {
                continue;
            };
            let id: String = rest
                .trim_start_matches('\\')
                .trim_start_matches('"')
                .chars()
                .take_while(|c| !matches!(c, '"' | ',' | '}' | '\\'))
                .collect();
            if let Ok(p) = port.trim().parse::<i64>() {
                if p > 0 {
                    m.insert(id, p as u32);
                }
            }
        }
        Ok(m)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.session = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        guard::forget_lab(&self.lab);
    }
}

/// Flows (`dump-aggregate`'s flow_count) and groups (`dump-groups` lines) of `bridge`.
pub fn switch_counts(ovs: &dpu_lab::ovs::OvsInstance, bridge: &str) -> Result<(usize, usize)> {
    let agg = ovs.ofctl(&["dump-aggregate", &ovs.mgmt(bridge)])?;
    let flows = agg
        .split_whitespace()
        .find_map(|w| w.strip_prefix("flow_count="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no flow_count in {agg:?}"))?;
    let groups = ovs.dump_groups(bridge)?.len();
    Ok((flows, groups))
}

/// The environment `systemd/dpu-agent.service` gives the agent
/// (`Environment=` lines: space-separated `KEY=VALUE`, no quoting used there).
pub fn unit_environment() -> Vec<(String, String)> {
    parse_environment(include_str!("../../systemd/dpu-agent.service"))
}

fn parse_environment(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod unit_env_tests {
    use super::*;

    #[test]
    fn the_agent_runs_with_the_units_allocator_settings() {
        let env = unit_environment();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MIMALLOC_ARENA_EAGER_COMMIT"), Some("0"));
        assert_eq!(get("MIMALLOC_PURGE_DELAY"), Some("100"));
        assert_eq!(
            parse_environment("# Environment=X=1\n Environment=A=1 B=2\nEnvironmentFile=/x\n"),
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
    }
}
