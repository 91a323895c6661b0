//! One emulated DPU with its controller: a private OVS, a PKI made by the real
//! `dpu-controller ca init`/`issue`, an intent directory, the real controller and
//! agent binaries, and workloads as namespaces whose veth representor sits on the
//! bridge. Tests and the demo build on this; everything is torn down by `Drop`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::netns::{self, Netns};
use crate::ovs::OvsInstance;
use crate::process::{run_checked, spawn_logged, wait_until, Child};
use crate::traffic::{self, TrafficResult};

pub const NODE: &str = "dpu-1";

/// A workload host: its namespace and the echo server running in it.
#[derive(Debug)]
pub struct Host {
    // Drop order: the echo server before its namespace.
    pub echo: Option<Child>,
    pub ns: Netns,
    pub ip: String,
}

#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub bridge: String,
    pub work: TempDir,
    pub controller_addr: String,
    /// More controller addresses the agent lists after `controller_addr`
    /// (`add_standby_controller`); nothing listens there until a test starts one.
    pub standby_controller_addrs: Vec<String>,
    /// More arguments for `dpu-controller serve`.
    pub serve_args: Vec<String>,
    /// When set, the agent has no issued certificate: it enrolls with the token
    /// in this file and keeps its identity under `agent-identity/`.
    pub enroll_token_file: Option<PathBuf>,
    /// When set, the agent runs under `prlimit --nofile=N:N` (the descriptor
    /// tests).
    pub agent_nofile: Option<u64>,
    // Field order is drop order: processes first, then hosts, then OVS.
    pub agent: Option<Child>,
    pub controller: Option<Child>,
    pub hosts: BTreeMap<String, Host>,
    /// The emulated host of the shim tests (see `enable_shim`).
    pub shim: Option<ShimHost>,
    pub ovs: OvsInstance,
}

/// The host side of a DPU for the shim tests: a "host" namespace holding the VF ends
/// of veth pairs (their representors sit in the switch's namespace, for the agent to
/// plug), joined to the root namespace (where the agent runs) by a host<->DPU link.
#[derive(Debug)]
pub struct ShimHost {
    pub ns: Netns,
    /// Where the agent's attachment service listens (root side of the link).
    pub agent_addr: String,
    pub vfs: Vec<(String, String)>,
    /// Pod namespaces made by `pod_netns`, removed on drop.
    pub pods: Vec<Netns>,
}

/// The certificate name of the host shim.
pub const SHIM_NAME: &str = "host-dpu-1";

fn bin(name: &str) -> Result<PathBuf> {
    traffic::lab_bin(name)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Lab {
    /// Starts OVS, creates the bridge and a PKI. Neither controller nor agent runs yet.
    /// Without root or Open vSwitch it fails with [`crate::prereq::root_and_ovs`]'s
    /// message before it makes anything.
    pub fn new(tag: &str) -> Result<Lab> {
        crate::prereq::root_and_ovs()?;
        let prefix = netns::unique_prefix(tag);
        let bridge = format!("br{prefix}");
        let ovs = OvsInstance::start()?;
        ovs.add_bridge(&bridge)?;
        let work = tempfile::Builder::new().prefix("dpulab-").tempdir()?;
        for d in ["intent", "pki", "logs"] {
            fs::create_dir_all(work.path().join(d))?;
        }
        let lab = Lab {
            prefix,
            bridge,
            controller_addr: format!("127.0.0.1:{}", free_port()?),
            standby_controller_addrs: Vec::new(),
            serve_args: Vec::new(),
            enroll_token_file: None,
            agent_nofile: None,
            work,
            agent: None,
            controller: None,
            hosts: BTreeMap::new(),
            shim: None,
            ovs,
        };
        lab.controller_cmd(&[
            "ca",
            "init",
            "--state-dir",
            &lab.ctl_state().display().to_string(),
        ])?;
        // The node certificate is issued when the agent starts without
        // enrollment (see `agent_config`); the CA is what everyone trusts.
        fs::copy(lab.ctl_state().join("pki/ca.pem"), lab.pki().join("ca.pem"))?;
        Ok(lab)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }
    pub fn ctl_state(&self) -> PathBuf {
        self.path("controller-state")
    }
    pub fn intent_dir(&self) -> PathBuf {
        self.path("intent")
    }
    pub fn pki(&self) -> PathBuf {
        self.path("pki")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.path(&format!("logs/{name}.log"))
    }

    /// Runs `dpu-controller ARGS` to completion.
    pub fn controller_cmd(&self, args: &[&str]) -> Result<String> {
        controller_cmd(args)
    }

    /// Issues a node certificate into `out` (NAME.pem, NAME.key, ca.pem).
    pub fn issue(&self, node: &str, out: &Path) -> Result<()> {
        self.issue_as("--node", node, out)
    }

    /// Issues the host shim's certificate (role host-shim) into `out`.
    pub fn issue_host_shim(&self, name: &str, out: &Path) -> Result<()> {
        self.issue_as("--host-shim", name, out)
    }

    fn issue_as(&self, role: &str, name: &str, out: &Path) -> Result<()> {
        self.controller_cmd(&[
            "issue",
            "--state-dir",
            &self.ctl_state().display().to_string(),
            role,
            name,
            "--out",
            &out.display().to_string(),
        ])?;
        Ok(())
    }

    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        write_manifest_into(&self.intent_dir(), file, yaml)
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        fs::remove_file(self.intent_dir().join(file)).with_context(|| format!("removing {file}"))
    }

    pub fn start_controller(&mut self) -> Result<()> {
        // The port was free when the lab was made; something else (another
        // test's listener) may have bound it since. Before the agent knows
        // the address, take another one then.
        for attempt in 1.. {
            let addr = self.controller_addr.clone();
            match self.start_controller_at(&addr, "controller") {
                Ok(c) => {
                    self.controller = Some(c);
                    return Ok(());
                }
                Err(e)
                    if attempt < 3
                        && self.agent.is_none()
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    self.controller_addr = format!("127.0.0.1:{}", free_port()?);
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    /// A free loopback address the agent lists as its next controller endpoint
    /// (from the next `start_agent`). Nothing listens there yet.
    pub fn add_standby_controller(&mut self) -> Result<String> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        self.standby_controller_addrs.push(addr.clone());
        Ok(addr)
    }

    /// Starts one more `dpu-controller serve` on `addr` with this lab's state
    /// and intent directories (a second replica of the same store), logging to
    /// `logs/<log>.log`. The caller owns it.
    pub fn start_controller_at(&self, addr: &str, log: &str) -> Result<Child> {
        start_controller_process(
            &self.ctl_state(),
            &self.intent_dir(),
            addr,
            &self.serve_args,
            &self.log(log),
        )
    }

    /// Creates a bootstrap token for `node` (`dpu-controller token create`).
    pub fn token_create(&self, node: &str, ttl: &str) -> Result<String> {
        let out = self.controller_cmd(&[
            "token",
            "create",
            "--state-dir",
            &self.ctl_state().display().to_string(),
            "--node",
            node,
            "--ttl",
            ttl,
        ])?;
        Ok(out.trim().to_string())
    }

    /// Makes the agent enroll with `token` (written to a file, as `bf.cfg`
    /// provisioning does) instead of using an issued certificate.
    pub fn enroll_with(&mut self, token: &str) -> Result<PathBuf> {
        let p = self.path("bootstrap-token");
        fs::write(&p, format!("{token}\n"))?;
        self.enroll_token_file = Some(p.clone());
        Ok(p)
    }

    /// The agent's certificate and key files.
    pub fn agent_identity(&self) -> (PathBuf, PathBuf) {
        match self.enroll_token_file {
            Some(_) => (
                self.path("agent-identity/node.pem"),
                self.path("agent-identity/node.key"),
            ),
            None => (
                self.pki().join(format!("{NODE}.pem")),
                self.pki().join(format!("{NODE}.key")),
            ),
        }
    }

    /// Writes the agent's config; `ca` lets tests point it at another CA.
    pub fn agent_config(&self, ca: &Path) -> Result<PathBuf> {
        let (cert, key) = self.agent_identity();
        if self.enroll_token_file.is_none() && !cert.exists() {
            self.issue(NODE, &self.pki())?;
        }
        let cfg = agent_config_text(&AgentFiles {
            node: NODE,
            state: &self.path("agent-state"),
            controller_addr: &self.controller_addr,
            standby_addrs: &self.standby_controller_addrs,
            ca,
            cert: &cert,
            key: &key,
            ovs: &self.ovs,
            bridge: &self.bridge,
        });
        let mut cfg = cfg;
        if let Some(t) = &self.enroll_token_file {
            cfg.push_str(&format!("\n[enroll]\ntoken_file = \"{}\"\n", t.display()));
        }
        if let Some(sh) = &self.shim {
            cfg.push_str(&format!(
                "\n[shim]\nlisten = \"{}\"\nclient_name = \"{SHIM_NAME}\"\nmtu = 1500\n",
                sh.agent_addr
            ));
            for (vf, rep) in &sh.vfs {
                cfg.push_str(&format!(
                    "[[shim.vfs]]\nvf = \"{vf}\"\nrepresentor = \"{rep}\"\n"
                ));
            }
        }
        let p = self.path("agent.toml");
        fs::write(&p, cfg)?;
        Ok(p)
    }

    /// The agent's operator socket (`dpu-agent show|explain --socket`).
    pub fn ops_socket(&self) -> PathBuf {
        ops_socket_of(&self.path("agent-state"), NODE)
    }

    pub fn start_agent(&mut self) -> Result<()> {
        let ca = self.pki().join("ca.pem");
        self.start_agent_with_ca(&ca)
    }

    pub fn start_agent_with_ca(&mut self, ca: &Path) -> Result<()> {
        let cfg = self.agent_config(ca)?;
        let mut c = match self.agent_nofile {
            // prlimit execs the agent: the child's pid is the agent's.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("dpu-agent")?);
                c
            }
            None => Command::new(bin("dpu-agent")?),
        };
        c.args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info,dpu_agent=debug");
        self.agent = Some(spawn_logged(c, &self.log("agent"))?);
        Ok(())
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.log("agent")).unwrap_or_default()
    }
    pub fn controller_log(&self) -> String {
        fs::read_to_string(self.log("controller")).unwrap_or_default()
    }

    /// `dpu-controller status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        controller_status(&self.ctl_state())
    }

    /// The node's entry in the status.
    pub fn node_status(&self) -> Result<serde_json::Value> {
        node_status_of(&self.status()?, NODE)
    }

    pub fn intent_version(&self) -> Result<u64> {
        self.status()?["intent_version"]
            .as_u64()
            .ok_or_else(|| anyhow!("status has no intent_version"))
    }

    /// Waits until the agent ACKed the controller's current intent version.
    pub fn wait_converged(&self) -> Result<u64> {
        self.wait_converged_after(0)
    }

    /// Waits until the controller's intent version is above `previous` (a manifest
    /// change was picked up) and the agent ACKed it.
    pub fn wait_converged_after(&self, previous: u64) -> Result<u64> {
        let mut last = String::new();
        let r = wait_until(
            "the agent to ACK the current intent",
            Duration::from_secs(30),
            || {
                let (Ok(v), Ok(n)) = (self.intent_version(), self.node_status()) else {
                    return false;
                };
                last = n.to_string();
                v > previous && n["applied_version"].as_u64() == Some(v)
            },
        );
        r.map_err(|e| {
            anyhow!(
                "{e}; last node status: {last}\nagent log:\n{}\ncontroller log:\n{}",
                tail(&self.agent_log()),
                tail(&self.controller_log())
            )
        })?;
        self.intent_version()
    }

    /// Adds a workload host: namespace, veth, representor on the bridge with
    /// `external_ids:iface-id=<name>`.
    pub fn add_host(&mut self, name: &str, ip_cidr: &str, mac: &str, gw: &str) -> Result<()> {
        let suffix = format!("{}", self.hosts.len());
        let (ns, rep) = netns::attach_host(&self.prefix, &suffix, ip_cidr, mac, Some(gw))?;
        self.ovs.plug(&self.bridge, &rep, name)?;
        let ip = ip_cidr.split('/').next().unwrap_or_default().to_string();
        self.hosts
            .insert(name.to_string(), Host { echo: None, ns, ip });
        Ok(())
    }

    /// Gives host `name`'s `eth0` the IPv6 address `cidr` too, and a default route
    /// via `gw` if given ([`netns::add_ipv6`]: no DAD). `lab-echo` serves IPv6 as well.
    pub fn add_ipv6(&self, name: &str, cidr: &str, gw: Option<&str>) -> Result<()> {
        let host = self
            .hosts
            .get(name)
            .ok_or_else(|| anyhow!("add IPv6 {cidr} to host {name}: there is no host {name}"))?;
        netns::add_ipv6(&host.ns, "eth0", cidr, gw)
            .with_context(|| format!("add IPv6 {cidr} to host {name}"))
    }

    /// Starts `lab-echo --name <host>` on the given ports inside the host.
    pub fn echo(&mut self, name: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
        let log = self.log(&format!("echo-{name}"));
        self.hosts
            .get_mut(name)
            .ok_or_else(|| anyhow!("no host {name}"))?
            .start_echo(name, tcp, udp, &log)
    }

    /// The peer addresses host `name`'s `lab-echo` logged TCP connections from.
    pub fn tcp_peers_of(&self, name: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.log(&format!("echo-{name}"))).unwrap_or_default();
        traffic::peers_in_log(&log)
    }

    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .get(name)
            .ok_or_else(|| anyhow!("no host {name}"))
    }

    /// Runs `lab-client` in host `from`.
    pub fn client(
        &self,
        from: &str,
        target: &str,
        proto: &str,
        count: u32,
    ) -> Result<TrafficResult> {
        traffic::run_client(
            &self.host(from)?.ns,
            target,
            proto,
            count,
            &["--timeout-ms", "1500"],
        )
    }

    /// Builds the host side for the shim: the host namespace with `vfs` VF ends,
    /// their representors in the switch's namespace, the host<->DPU link, and the
    /// shim's certificate. Call before `start_agent`.
    pub fn enable_shim(&mut self, vfs: usize) -> Result<()> {
        let ns = Netns::new(&format!("{}-host", self.prefix))?;
        // A /30 on 169.254.0.0/16 per lab, from the prefix, for the link.
        let h = self
            .prefix
            .bytes()
            .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 16_000;
        let (a, b) = (h / 64, (h % 64) * 4);
        let (root_ip, host_ip) = (
            format!("169.254.{a}.{}", b + 1),
            format!("169.254.{a}.{}", b + 2),
        );
        let link = format!("{}l", self.prefix);
        let peer = format!("{}L", self.prefix);
        let mut veth = netns::Veth::create(&link, &peer)?;
        veth.move_b_to(&ns)?;
        netns::ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &link])?;
        netns::link_up(&link)?;
        ns.add_addr(&peer, &format!("{host_ip}/30"))?;
        ns.set_up(&peer)?;
        ns.set_lo_up()?;
        veth.keep();
        let mut pairs = Vec::new();
        for i in 0..vfs {
            let (vf, rep) = (
                format!("{}v{i}", self.prefix),
                format!("{}r{i}", self.prefix),
            );
            let mut v = netns::Veth::create(&vf, &rep)?;
            v.move_a_to(&ns)?;
            ns.set_up(&vf)?;
            netns::tx_off(&vf, Some(&ns))?;
            self.ovs.adopt(&rep)?;
            v.keep();
            pairs.push((vf, rep));
        }
        self.issue_host_shim(SHIM_NAME, &self.pki())?;
        self.shim = Some(ShimHost {
            ns,
            agent_addr: format!("{root_ip}:{}", free_port()?),
            vfs: pairs,
            pods: Vec::new(),
        });
        Ok(())
    }

    /// Makes a pod network namespace; returns its path for CNI_NETNS.
    pub fn pod_netns(&mut self, name: &str) -> Result<String> {
        let sh = self
            .shim
            .as_mut()
            .ok_or_else(|| anyhow!("enable_shim first"))?;
        let ns = Netns::new(&format!("{}-{name}", self.prefix))?;
        ns.set_lo_up()?;
        let path = ns.path();
        sh.pods.push(ns);
        Ok(path)
    }

    /// The pod namespace made by `pod_netns(name)`.
    pub fn pod(&self, name: &str) -> Result<&Netns> {
        let want = format!("{}-{name}", self.prefix);
        self.shim
            .as_ref()
            .and_then(|sh| sh.pods.iter().find(|p| p.name() == want))
            .ok_or_else(|| anyhow!("no pod namespace {name}"))
    }

    /// The CNI network config the tests hand the shim. The lab's VFs are veths, not
    /// SR-IOV VFs of a PF, so the config lists them (`vfAllowList`): the shim moves
    /// no other host netdev into a pod.
    pub fn cni_config(&self, subnet: &str, labels: &[(&str, &str)]) -> Result<serde_json::Value> {
        let sh = self
            .shim
            .as_ref()
            .ok_or_else(|| anyhow!("enable_shim first"))?;
        let pki = self.pki();
        let labels: Vec<serde_json::Value> = labels
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        Ok(serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "dpu",
            "type": "host-shim",
            "agent": format!("https://{}", sh.agent_addr),
            "agentName": NODE,
            "tls": {
                "ca": pki.join("ca.pem"),
                "cert": pki.join(format!("{SHIM_NAME}.pem")),
                "key": pki.join(format!("{SHIM_NAME}.key")),
            },
            "subnet": subnet,
            "vfAllowList": sh.vfs.iter().map(|(vf, _)| vf).collect::<Vec<_>>(),
            "timeoutMs": 20000,
            "args": {"cni": {"labels": labels}},
        }))
    }

    /// Runs the real plugin in the host namespace exactly as a runtime does:
    /// environment, config on stdin, result on stdout. Returns (exit code, stdout).
    pub fn cni(
        &self,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        config: &serde_json::Value,
    ) -> Result<(i32, serde_json::Value)> {
        let sh = self
            .shim
            .as_ref()
            .ok_or_else(|| anyhow!("enable_shim first"))?;
        let mut c = sh.ns.command([bin("host-shim")?.into_os_string()]);
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}"),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().context("running host-shim")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(config.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = if stdout.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&stdout)
                .with_context(|| format!("host-shim stdout is not JSON: {stdout}"))?
        };
        Ok((out.status.code().unwrap_or(-1), json))
    }

    pub fn flows(&self) -> Result<Vec<String>> {
        self.ovs.dump_flows(&self.bridge)
    }
    pub fn groups(&self) -> Result<Vec<String>> {
        self.ovs.dump_groups(&self.bridge)
    }
}

/// The last 60 lines of a log, for error messages.
impl Host {
    /// Starts `lab-echo --name <name>` on the given ports inside the host.
    pub fn start_echo(&mut self, name: &str, tcp: &[u16], udp: &[u16], log: &Path) -> Result<()> {
        self.echo = Some(traffic::start_echo(&self.ns, name, tcp, udp, log)?);
        Ok(())
    }
}

/// What an agent's config file names.
#[derive(Debug)]
pub struct AgentFiles<'a> {
    pub node: &'a str,
    pub state: &'a Path,
    pub controller_addr: &'a str,
    /// Listed after `controller_addr` in `controller.endpoints`.
    pub standby_addrs: &'a [String],
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ovs: &'a OvsInstance,
    pub bridge: &'a str,
}

/// The agent's config for the lab: userspace datapath, fast reconnects.
pub fn agent_config_text(f: &AgentFiles) -> String {
    format!(
        r#"node_name = "{node}"
state_dir = "{state}"

[controller]
{endpoints}
server_name = "dpu-controller"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
backoff_min_ms = 100
backoff_max_ms = 1000

[ovs]
db_socket = "{db}"
run_dir = "{run}"
bridge = "{br}"
datapath_type = "netdev"
{backend}{netns}"#,
        node = f.node,
        state = f.state.display(),
        endpoints = endpoints_line(f),
        ca = f.ca.display(),
        cert = f.cert.display(),
        key = f.key.display(),
        db = f.ovs.db_sock().display(),
        run = f.ovs.dir().display(),
        br = f.bridge,
        // The suite runs once with the default OpenFlow backend and once more
        // with the one this variable names (lab/run-tests).
        backend = std::env::var("DPU_LAB_OPENFLOW_BACKEND")
            .ok()
            .filter(|b| !b.is_empty())
            .map(|b| format!("openflow_backend = \"{b}\"\n"))
            .unwrap_or_default(),
        // ovs-vswitchd runs in a namespace of its own: the probe links are there.
        netns = f
            .ovs
            .netns()
            .map(|ns| format!("netns = \"/run/netns/{ns}\"\n"))
            .unwrap_or_default(),
    ) + &observer_sections(f)
}

/// `endpoint = "https://A"`, or `endpoints = [...]` with the standby addresses.
fn endpoints_line(f: &AgentFiles) -> String {
    if f.standby_addrs.is_empty() {
        return format!("endpoint = \"https://{}\"", f.controller_addr);
    }
    let all: Vec<String> = std::iter::once(f.controller_addr)
        .chain(f.standby_addrs.iter().map(String::as_str))
        .map(|a| format!("\"https://{a}\""))
        .collect();
    format!("endpoints = [{}]", all.join(", "))
}

/// `[metrics]` on a free loopback port and `[ops]` beside the state directory:
/// agents of one test, and tests running in parallel, never share either.
fn observer_sections(f: &AgentFiles) -> String {
    let port = free_port().expect("a free loopback port");
    format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[ops]\nsocket = \"{}\"\n",
        ops_socket_of(f.state, f.node).display()
    )
}

pub(crate) fn ops_socket_of(state: &Path, node: &str) -> PathBuf {
    state
        .parent()
        .unwrap_or(state)
        .join(format!("{node}-ops.sock"))
}

/// Where an agent started from a config the lab wrote serves metrics and its
/// operator socket: `[metrics] listen` and `[ops] socket` of that file.
pub fn agent_endpoints(config: &Path) -> Result<(std::net::SocketAddr, PathBuf)> {
    let text =
        fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", config.display()))?;
    let get = |table: &str, key: &str| {
        doc.get(table)
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("{}: no {table}.{key}", config.display()))
    };
    let listen = get("metrics", "listen")?
        .parse()
        .context("metrics.listen")?;
    Ok((listen, PathBuf::from(get("ops", "socket")?)))
}

/// Starts `dpu-controller serve` and waits until it listens on `addr`.
pub fn start_controller_process(
    state: &Path,
    intent: &Path,
    addr: &str,
    extra: &[String],
    log: &Path,
) -> Result<Child> {
    let mut args = vec!["--intent-dir".to_string(), intent.display().to_string()];
    args.extend_from_slice(extra);
    start_serve(state, addr, &args, log)
}

/// Starts `dpu-controller serve --state-dir STATE --listen ADDR ARGS` (no
/// intent directory unless `args` names one) and waits until it listens.
pub fn start_serve(state: &Path, addr: &str, args: &[String], log: &Path) -> Result<Child> {
    let mut c = Command::new(bin("dpu-controller")?);
    c.args(["serve", "--state-dir"])
        .arg(state)
        .args(["--listen", addr])
        .args(args);
    // The log is appended to: only what this process writes counts.
    let mark = fs::metadata(log).map_or(0, |m| m.len()) as usize;
    let mut child = spawn_logged(c, log)?;
    let mut exited = false;
    // Its own line, written once it has bound `addr`: a connection alone could
    // reach another process that took the port first (a port found free is
    // free only until someone binds it), and this one would then have exited.
    let ready = format!("serving agents over mTLS listen={addr} ");
    let r = wait_until("the controller to listen", Duration::from_secs(20), || {
        exited = !child.is_running();
        let bound = fs::read(log)
            .ok()
            .and_then(|b| {
                String::from_utf8_lossy(b.get(mark..)?)
                    .contains(&ready)
                    .then_some(())
            })
            .is_some();
        exited || (bound && std::net::TcpStream::connect(addr).is_ok())
    });
    if exited || r.is_err() {
        bail!(
            "the controller did not come up on {addr} (exited: {exited}):\n{}",
            tail(&fs::read_to_string(log).unwrap_or_default())
        );
    }
    Ok(child)
}

/// Runs `dpu-controller ARGS` to completion.
pub fn controller_cmd(args: &[&str]) -> Result<String> {
    let mut c = Command::new(bin("dpu-controller")?);
    c.args(args);
    run_checked(c, Duration::from_secs(30))
}

/// `dpu-controller status --state-dir STATE --json`.
pub fn controller_status(state: &Path) -> Result<serde_json::Value> {
    let out = controller_cmd(&[
        "status",
        "--state-dir",
        &state.display().to_string(),
        "--json",
    ])?;
    serde_json::from_str(&out).with_context(|| format!("status is not JSON: {out}"))
}

/// Writes a manifest into the intent directory: a temporary file (ignored by
/// the controller, which reads `*.yaml`) renamed into place, so the controller
/// never reads half a file.
pub fn write_manifest_into(intent: &Path, file: &str, yaml: &str) -> Result<()> {
    let tmp = intent.join(format!(".{file}.tmp"));
    fs::write(&tmp, yaml)?;
    fs::rename(&tmp, intent.join(file))?;
    Ok(())
}

/// The entry of `node` in `dpu-controller status --json`.
pub fn node_status_of(status: &serde_json::Value, node: &str) -> Result<serde_json::Value> {
    let n = match &status["nodes"] {
        serde_json::Value::Array(a) => a.iter().find(|n| n["node"] == node).cloned(),
        serde_json::Value::Object(m) => m.get(node).cloned(),
        _ => None,
    };
    n.ok_or_else(|| anyhow!("no status for {node} yet: {status}"))
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
