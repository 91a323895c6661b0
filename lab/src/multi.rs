//! Several emulated DPUs and one controller: a [`Fabric`] (one OVS per DPU, an
//! underlay between them), the real `dpu-controller` with a PKI, and one real
//! `dpu-agent` per DPU, named `dpu-1`, `dpu-2`, ... Workload hosts are namespaces
//! on a DPU's bridge; external hosts are namespaces on the fabric's external segment,
//! which DPUs join through their uplink port ([`MultiLab::add_uplink`]). Everything is
//! torn down by `Drop`, processes first.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::fabric::{self, Fabric};
use crate::fixture::{
    agent_config_text, controller_cmd, controller_status, node_status_of, start_controller_process,
    tail, write_manifest_into, AgentFiles, Host,
};
use crate::netns::{self, Netns};
use crate::process::{spawn_logged, wait_until, Child};
use crate::traffic::{self, TrafficResult};

/// A host and the DPU it is attached to; `None` for a host on the external segment
/// ([`MultiLab::add_external`]).
#[derive(Debug)]
pub struct SiteHost {
    pub dpu: Option<usize>,
    pub host: Host,
}

#[derive(Debug)]
pub struct MultiLab {
    // Field order is drop order: processes, then hosts, then the fabric.
    pub agents: Vec<Option<Child>>,
    pub controller: Option<Child>,
    pub hosts: BTreeMap<String, SiteHost>,
    pub work: TempDir,
    pub controller_addr: String,
    /// DPUs whose host (the node itself) is attached through a PF representor.
    pub node_hosts: BTreeSet<usize>,
    /// DPUs whose uplink port ([`UPLINK_PORT`]) is on the external segment.
    pub uplinks: BTreeSet<usize>,
    pub fabric: Fabric,
}

/// The iface-id of a DPU's PF representor in the lab (`[host] port`).
pub const HOST_PORT: &str = "pf0hpf";

/// The iface-id of a DPU's uplink port in the lab (`[uplink] port`).
pub const UPLINK_PORT: &str = "uplink";

/// The MAC DPU `index` uses on the external segment (`[uplink] mac`).
pub fn uplink_mac(index: usize) -> String {
    format!("02:d9:00:00:01:{:02x}", index + 1)
}

/// The host of DPU `index`: its name among the hosts, address and MAC.
pub fn node_host(index: usize) -> (String, String, String) {
    (
        format!("host-{}", index + 1),
        format!("172.16.0.{}", index + 1),
        format!("0a:00:00:00:ff:{:02x}", index + 1),
    )
}

/// The node name of DPU `index`.
pub fn node_name(index: usize) -> String {
    format!("dpu-{}", index + 1)
}

impl MultiLab {
    /// `count` DPUs on one underlay, a CA and a node certificate per DPU. Neither
    /// the controller nor any agent runs yet.
    pub fn new(tag: &str, count: usize) -> Result<MultiLab> {
        let fabric = Fabric::with_dpus(tag, count)?;
        let work = tempfile::Builder::new().prefix("dpumulti-").tempdir()?;
        for d in ["intent", "pki", "logs"] {
            fs::create_dir_all(work.path().join(d))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let lab = MultiLab {
            agents: (0..count).map(|_| None).collect(),
            controller: None,
            hosts: BTreeMap::new(),
            work,
            controller_addr: format!("127.0.0.1:{port}"),
            node_hosts: Default::default(),
            uplinks: Default::default(),
            fabric,
        };
        let state = lab.path("controller-state");
        lab.controller_cmd(&["ca", "init", "--state-dir", &state.display().to_string()])?;
        for i in 0..count {
            lab.controller_cmd(&[
                "issue",
                "--state-dir",
                &state.display().to_string(),
                "--node",
                &node_name(i),
                "--out",
                &lab.path("pki").display().to_string(),
            ])?;
        }
        Ok(lab)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.path(&format!("logs/{name}.log"))
    }

    pub fn controller_cmd(&self, args: &[&str]) -> Result<String> {
        controller_cmd(args)
    }

    /// The `DpuNode` manifests of every DPU in the fabric: its underlay address,
    /// and its host's address and MAC where [`MultiLab::add_node_host`] made one.
    pub fn dpu_nodes_yaml(&self) -> String {
        self.fabric
            .dpus()
            .map(|d| {
                let host = if self.node_hosts.contains(&d.index()) {
                    let (_, ip, mac) = node_host(d.index());
                    format!(", hostIP: {ip}, hostMAC: \"{mac}\"")
                } else {
                    String::new()
                };
                format!(
                    "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: DpuNode\nmetadata: {{name: {}}}\nspec: {{tunnelIP: {}{host}}}\n",
                    node_name(d.index()),
                    d.underlay_ip()
                )
            })
            .collect()
    }

    /// The node itself on DPU `dpu`: a namespace behind the PF representor
    /// (iface-id [`HOST_PORT`]) with only a route to the cluster IPs, on-link (the
    /// DPU answers its ARP). Call before `start_agent`.
    pub fn add_node_host(&mut self, dpu: usize) -> Result<()> {
        let (name, ip, mac) = node_host(dpu);
        let (ns, _) = self
            .fabric
            .attach_host(dpu, HOST_PORT, &format!("{ip}/24"), &mac)?;
        ns.ip(&["route", "add", "10.96.0.0/16", "dev", "eth0"])?;
        self.hosts.insert(
            name,
            SiteHost {
                dpu: Some(dpu),
                host: Host { echo: None, ns, ip },
            },
        );
        self.node_hosts.insert(dpu);
        Ok(())
    }

    /// Joins DPU `dpu` to the external segment through its uplink port (iface-id
    /// [`UPLINK_PORT`]); its agent's config then gets an `[uplink]` section. Call
    /// before `start_agent`.
    pub fn add_uplink(&mut self, dpu: usize) -> Result<()> {
        self.fabric
            .attach_uplink(dpu, UPLINK_PORT)
            .with_context(|| format!("add the uplink of {}", node_name(dpu)))?;
        self.uplinks.insert(dpu);
        Ok(())
    }

    /// An external host `name` on the external segment (no DPU): a namespace whose
    /// `eth0` has `ip_cidr` and `mac`, and no route beyond the connected one; add
    /// routes with [`MultiLab::host_ns`]. [`MultiLab::client`] and
    /// [`MultiLab::echo`] work on it like on a workload host.
    pub fn add_external(&mut self, name: &str, ip_cidr: &str, mac: &str) -> Result<()> {
        if self.hosts.contains_key(name) {
            bail!("there is a host {name} already");
        }
        let ns = self.fabric.attach_external(name, ip_cidr, mac)?;
        let ip = ip_cidr.split('/').next().unwrap_or_default().to_string();
        self.hosts.insert(
            name.to_string(),
            SiteHost {
                dpu: None,
                host: Host { echo: None, ns, ip },
            },
        );
        Ok(())
    }

    /// The namespace of host `name` (a workload, node or external host).
    pub fn host_ns(&self, name: &str) -> Result<&Netns> {
        self.hosts
            .get(name)
            .map(|h| &h.host.ns)
            .ok_or_else(|| anyhow!("no host {name}"))
    }

    /// The MAC host `name` has resolved `ip` to (`ip neigh show`); `None` if it has
    /// no entry or only a failed or incomplete one.
    pub fn neighbor_mac(&self, host: &str, ip: &str) -> Result<Option<String>> {
        fabric::neighbor_mac(self.host_ns(host)?, ip)
    }

    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        write_manifest_into(&self.path("intent"), file, yaml)
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        fs::remove_file(self.path("intent").join(file)).with_context(|| format!("removing {file}"))
    }

    pub fn start_controller(&mut self) -> Result<()> {
        let c = start_controller_process(
            &self.path("controller-state"),
            &self.path("intent"),
            &self.controller_addr,
            &[],
            &self.log("controller"),
        )?;
        self.controller = Some(c);
        Ok(())
    }

    /// Starts the agent of DPU `index` on its bridge.
    pub fn start_agent(&mut self, index: usize) -> Result<()> {
        let controller = self.controller_addr.clone();
        self.start_agent_with(index, &[controller])
    }

    /// Starts the agent of DPU `index` with `controllers` (at least one) as its
    /// `controller.endpoints`, in that order: replicas of one store.
    pub fn start_agent_with(&mut self, index: usize, controllers: &[String]) -> Result<()> {
        let (first, standby) = controllers
            .split_first()
            .ok_or_else(|| anyhow!("an agent needs a controller"))?;
        let node = node_name(index);
        let pki = self.path("pki");
        let dpu = self.fabric.dpu(index)?;
        let cfg = agent_config_text(&AgentFiles {
            node: &node,
            state: &self.agent_state(index),
            controller_addr: first,
            standby_addrs: standby,
            ca: &pki.join("ca.pem"),
            cert: &pki.join(format!("{node}.pem")),
            key: &pki.join(format!("{node}.key")),
            ovs: dpu.ovs(),
            bridge: dpu.bridge(),
        });
        let mut cfg = cfg;
        if self.node_hosts.contains(&index) {
            cfg.push_str(&format!("\n[host]\nport = \"{HOST_PORT}\"\n"));
        }
        if self.uplinks.contains(&index) {
            cfg.push_str(&format!(
                "\n[uplink]\nport = \"{UPLINK_PORT}\"\nmac = \"{}\"\n",
                uplink_mac(index)
            ));
        }
        let path = self.path(&format!("agent-{node}.toml"));
        fs::write(&path, cfg)?;
        let mut c = Command::new(traffic::lab_bin("dpu-agent")?);
        c.args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,dpu_agent=debug");
        let child = spawn_logged(c, &self.log(&format!("agent-{node}")))?;
        *self
            .agents
            .get_mut(index)
            .ok_or_else(|| anyhow!("no DPU {index}"))? = Some(child);
        Ok(())
    }

    /// DPU `index`'s agent's state directory.
    pub fn agent_state(&self, index: usize) -> PathBuf {
        self.path(&format!("agent-state-{}", node_name(index)))
    }

    pub fn agent_log(&self, index: usize) -> String {
        fs::read_to_string(self.log(&format!("agent-{}", node_name(index)))).unwrap_or_default()
    }

    pub fn status(&self) -> Result<serde_json::Value> {
        controller_status(&self.path("controller-state"))
    }

    /// Waits until every running agent ACKed an intent version above `previous`.
    pub fn wait_converged_after(&self, previous: u64) -> Result<u64> {
        let mut last = String::new();
        let running: Vec<usize> = (0..self.agents.len())
            .filter(|i| self.agents[*i].is_some())
            .collect();
        let r = wait_until(
            "every agent to ACK the current intent",
            Duration::from_secs(30),
            || {
                let Ok(s) = self.status() else { return false };
                let Some(v) = s["intent_version"].as_u64() else {
                    return false;
                };
                last = s["nodes"].to_string();
                v > previous
                    && running.iter().all(|i| {
                        node_status_of(&s, &node_name(*i))
                            .is_ok_and(|n| n["applied_version"].as_u64() == Some(v))
                    })
            },
        );
        r.map_err(|e| {
            let logs: String = running
                .iter()
                .map(|i| format!("\n{}:\n{}", node_name(*i), tail(&self.agent_log(*i))))
                .collect();
            anyhow!("{e}; node status: {last}{logs}")
        })?;
        self.fabric.resolve_underlay()?;
        self.status()?["intent_version"]
            .as_u64()
            .ok_or_else(|| anyhow!("status has no intent_version"))
    }

    pub fn wait_converged(&self) -> Result<u64> {
        self.wait_converged_after(0)
    }

    /// A workload host on DPU `dpu`: namespace, veth, representor on its bridge with
    /// `external_ids:iface-id=<name>`, default route via `gw`.
    pub fn add_host(
        &mut self,
        dpu: usize,
        name: &str,
        ip_cidr: &str,
        mac: &str,
        gw: &str,
    ) -> Result<()> {
        let (ns, _) = self.fabric.attach_host(dpu, name, ip_cidr, mac)?;
        ns.add_default_route(gw, "eth0")?;
        let ip = ip_cidr.split('/').next().unwrap_or_default().to_string();
        self.hosts.insert(
            name.to_string(),
            SiteHost {
                dpu: Some(dpu),
                host: Host { echo: None, ns, ip },
            },
        );
        Ok(())
    }

    /// Gives host `name`'s `eth0` (a workload, node or external host) the IPv6
    /// address `cidr` too, and a default route via `gw` if given
    /// ([`netns::add_ipv6`]: no DAD). `lab-echo` serves IPv6 as well.
    pub fn add_ipv6(&self, name: &str, cidr: &str, gw: Option<&str>) -> Result<()> {
        let host = self
            .hosts
            .get(name)
            .ok_or_else(|| anyhow!("add IPv6 {cidr} to host {name}: there is no host {name}"))?;
        netns::add_ipv6(&host.host.ns, "eth0", cidr, gw)
            .with_context(|| format!("add IPv6 {cidr} to host {name}"))
    }

    pub fn echo(&mut self, name: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
        let log = self.log(&format!("echo-{name}"));
        self.hosts
            .get_mut(name)
            .ok_or_else(|| anyhow!("no host {name}"))?
            .host
            .start_echo(name, tcp, udp, &log)
    }

    /// DPU `index`'s agent's operator socket.
    pub fn ops_socket(&self, index: usize) -> PathBuf {
        crate::fixture::ops_socket_of(&self.agent_state(index), &node_name(index))
    }

    /// Packets counted by DPU `dpu`'s flows whose text contains every one of
    /// `parts` (`ovs-ofctl dump-flows` with statistics, which the userspace
    /// datapath folds in about every 0.5 s).
    pub fn flow_packets(&self, dpu: usize, parts: &[&str]) -> Result<u64> {
        let d = self.fabric.dpu(dpu)?;
        let flows = d.ovs().ofctl(&["dump-flows", &d.mgmt()])?;
        Ok(flows
            .lines()
            .filter(|f| parts.iter().all(|p| f.contains(p)))
            .filter_map(|f| {
                f.split("n_packets=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }

    /// The peer addresses (IPv4 or IPv6, without port) `lab-echo` of `host` logged
    /// TCP connections from, in order ([`traffic::peers_in_log`]).
    pub fn tcp_peers(&self, host: &str) -> Vec<String> {
        let log = fs::read_to_string(self.log(&format!("echo-{host}"))).unwrap_or_default();
        traffic::peers_in_log(&log)
    }

    /// Runs `lab-client` in host `from`: `count` requests, 1.5 s timeout each.
    pub fn client(
        &self,
        from: &str,
        target: &str,
        proto: &str,
        count: u32,
    ) -> Result<TrafficResult> {
        let h = self
            .hosts
            .get(from)
            .ok_or_else(|| anyhow!("no host {from}"))?;
        traffic::run_client(&h.host.ns, target, proto, count, &["--timeout-ms", "1500"])
    }
}
