//! The fleet scenario: N simulated agents against a real `dpu-controller`,
//! or several replicas of it on a 3-member etcd cluster (issue 19). Each simulated agent has its own node certificate (signed by
//! the controller's CA), its own mutual-TLS gRPC session, says Hello, Status,
//! LocalWorkloads and Health as the agent does, decodes and validates every
//! update with the agent's own code (`dpu_agent::state::update::apply_update`,
//! the model's rules for its node), waits a configurable "apply" time and
//! ACKs. Nothing on the wire is skipped.
//!
//! The intent: `nodes / 10` VPCs (all 10.0.0.0/24: they overlap, as VPCs
//! may), ten nodes in each with ten Workloads each, and the Services spread
//! evenly over the VPCs, each selecting ten Workloads of its VPC. So a node
//! needs its own VPC only, plus every DpuNode.
//!
//! Measured, per (nodes, services):
//! - **cold**: every agent connects at once to a freshly started controller;
//!   the time until all ACKed, and the bytes of updates they got;
//! - **one change**: one Workload's label changes (it leaves its Services),
//!   written with `dpu-controller apply`; from `apply`'s return to each
//!   agent's ACK of the next version: p50, p99 and max over the agents whose
//!   update had something in it, and how many got an empty one;
//! - the controller's CPU seconds for the change, its peak RSS;
//! - **churn** at each rate, written to the store;
//! - with several replicas, the **reconnect storm**: the leader killed, and
//!   how long until each of its agents is served by another replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dpu_agent::state::update::apply_update;
use dpu_model::{Index, Intent};
use dpu_proto::v1 as pb;
use dpu_proto::v1::agent_control_client::AgentControlClient;
use dpu_proto::v1::agent_message::Msg;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Nodes per VPC, Workloads per node, Workloads each Service selects.
const NODES_PER_VPC: usize = 10;
const WORKLOADS_PER_NODE: usize = 10;
const GROUPS: usize = 10;
/// How long an agent waits for everything, at most.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(600);
/// A churn change no needing agent ACKed within this long counts as not in
/// force.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(10);
/// A simulated agent sends its Status this often, as the agent does.
const STATUS_PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub nodes: Vec<usize>,
    pub services: Vec<usize>,
    /// How long a simulated agent takes to "apply" an update before it ACKs.
    pub apply: Duration,
    /// `dpu-controller`, release build.
    pub controller: PathBuf,
    pub out: PathBuf,
    /// Churn rates (changes per second), each for `churn_for`.
    pub rates: Vec<u32>,
    pub churn_for: Duration,
    /// 1: one replica on the embedded store; more: that many replicas on a
    /// 3-member etcd cluster, and the reconnect storm.
    pub replicas: usize,
}

/// One churn rate: a Workload relabelled in each VPC in turn (each change
/// needed by the 10 nodes of its VPC), written to the store directly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnRow {
    pub rate: u32,
    pub changes: usize,
    /// From the write to each needing agent's ACK of an update with it.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The p99 of the first and the second half of the changes: growth.
    pub p99_first_half_ms: f64,
    pub p99_second_half_ms: f64,
    /// Changes no needing agent ACKed within 10 s.
    pub lost: usize,
    /// With several replicas: the p99 of the agents the leader serves, and
    /// of those the followers serve.
    #[serde(default)]
    pub p99_on_leader_ms: Option<f64>,
    #[serde(default)]
    pub p99_on_followers_ms: Option<f64>,
}

/// One agent's record of one update.
#[derive(Debug, Clone)]
struct Got {
    version: u64,
    acked: Instant,
    bytes: usize,
    empty: bool,
}

#[derive(Debug, Default)]
struct Log {
    /// node → its updates in order.
    updates: BTreeMap<String, Vec<Got>>,
    /// Refusals (a NACK), which a valid intent never gets.
    nacks: Vec<String>,
    /// node → (when the replica first spoke on a session, its port), for
    /// each session.
    served: BTreeMap<String, Vec<(Instant, u16)>>,
    /// Sessions that ended in an error (a killed replica's agents, say).
    ended: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetRow {
    pub nodes: usize,
    pub services: usize,
    /// 1: the embedded store; more: that many replicas on 3-member etcd.
    #[serde(default = "one")]
    pub replicas: usize,
    /// How long each simulated agent took to apply an update.
    #[serde(default = "five")]
    pub apply_ms: u64,
    pub cold_s: f64,
    pub cold_bytes: u64,
    pub change_affected: usize,
    pub change_p50_ms: f64,
    pub change_p99_ms: f64,
    pub change_max_ms: f64,
    /// Agents sent an update with nothing in it for the change (the
    /// controller tells such versions at most every second, in one).
    pub change_empty: usize,
    /// Of those, how many came before the last agent that needed the change
    /// had ACKed it.
    pub change_empty_early: usize,
    pub change_bytes: u64,
    pub controller_cpu_change_s: f64,
    pub controller_peak_rss_mib: f64,
    pub churn: Vec<ChurnRow>,
    /// With several replicas: the reconnect storm.
    #[serde(default)]
    pub storm: Option<StormRow>,
}

/// Rows written before these fields existed.
fn one() -> usize {
    1
}
fn five() -> u64 {
    5
}

/// The reconnect storm (several replicas): the leading replica killed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormRow {
    pub killed_replica: usize,
    /// Whether it led (another replica leads afterwards).
    pub killed_led: bool,
    /// The agents it served, of all.
    pub agents_held: usize,
    pub agents_total: usize,
    /// From the kill until the last of its agents was served by another
    /// replica, and the p50 and p99 over them.
    pub all_served_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Agents of the other replicas that started a session after the kill
    /// (none should).
    pub others_reconnected: usize,
}

/// The manifests of `nodes` nodes and `services` Services, as one YAML stream,
/// with Workload `changed` (if any) moved to another label group.
pub fn manifests(nodes: usize, services: usize, changed: Option<(usize, usize)>) -> String {
    let vpcs = nodes.div_ceil(NODES_PER_VPC).max(1);
    let mut out = String::new();
    let doc = |out: &mut String, kind: &str, meta: String, spec: String| {
        out.push_str(&format!(
            "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: {kind}\nmetadata: {meta}\nspec: {spec}\n"
        ));
    };
    for n in 0..nodes {
        doc(
            &mut out,
            "DpuNode",
            format!("{{name: {}}}", node_name(n)),
            format!("{{tunnelIP: 172.16.{}.{}}}", n / 250, n % 250 + 1),
        );
    }
    for v in 0..vpcs {
        doc(
            &mut out,
            "Vpc",
            format!("{{name: vpc-{v}}}"),
            format!("{{vni: {}}}", 1000 + v),
        );
        doc(
            &mut out,
            "Subnet",
            format!("{{name: vpc-{v}-net}}"),
            format!("{{vpc: vpc-{v}, cidr: 10.0.0.0/24, gateway: 10.0.0.1}}"),
        );
        for k in 0..NODES_PER_VPC * WORKLOADS_PER_NODE {
            let node = v * NODES_PER_VPC + k % NODES_PER_VPC;
            if node >= nodes {
                continue;
            }
            let group = if changed == Some((v, k)) {
                GROUPS
            } else {
                k % GROUPS
            };
            out.push_str("---\n");
            out.push_str(&workload_doc(v, k, group));
        }
    }
    for s in 0..services {
        let v = s % vpcs;
        doc(
            &mut out,
            "YusurService",
            format!("{{name: s-{s}}}"),
            format!(
                "{{vpc: vpc-{v}, clusterIPs: [10.{}.{}.{}], ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}], selector: {{app: g{}}}, scenario: ClusterIP}}",
                96 + s / 65536,
                (s / 256) % 256,
                s % 256,
                (s / vpcs) % GROUPS
            ),
        );
    }
    out
}

/// Workload `k` of VPC `v` (on its node), labelled for group `group`: one
/// YAML document.
pub fn workload_doc(v: usize, k: usize, group: usize) -> String {
    let node = v * NODES_PER_VPC + k % NODES_PER_VPC;
    format!(
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {{name: w-{v}-{k}, labels: {{app: g{group}}}}}\nspec: {{kind: VM, vpc: vpc-{v}, ip: 10.0.0.{}, mac: \"02:00:00:00:{:02x}:{:02x}\", node: {}, port: w-{v}-{k}}}\n",
        10 + k,
        k / 256,
        k % 256,
        node_name(node)
    )
}

pub fn node_name(n: usize) -> String {
    format!("dpu-{n}")
}

fn controller_cmd(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running controller, killed by pid when dropped.
struct Controller {
    child: Child,
    port: u16,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::guard::forget_pid(self.child.id());
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_controller(bin: &Path, state: &Path, store: &[String], log: &Path) -> Result<Controller> {
    let port = free_port()?;
    let child = Command::new(bin)
        .args(["serve", "--state-dir"])
        .arg(state)
        .args(store)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting dpu-controller serve")?;
    // Stopped by pid also after a panic or a signal (the release profile
    // aborts, and runs no Drop).
    crate::guard::track_pid(child.id());
    let c = Controller { child, port };
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the controller did not listen; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(c)
}

/// The control plane under test: one replica on the embedded store, or
/// several replicas on a 3-member etcd cluster (Debian's `etcd-server`, mutual
/// TLS on loopback, killed by pid). Field order is drop order: the replicas,
/// then etcd.
struct Plane {
    replicas: Vec<Option<Controller>>,
    states: Vec<PathBuf>,
    ports: Vec<u16>,
    etcd: Option<test_support::etcd::TestEtcdCluster>,
    /// How `apply` reaches the store.
    store: Vec<String>,
    bin: PathBuf,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Plane {
    /// The CA, `intent` applied, and every replica serving; with several,
    /// replica 0 leads (it starts first).
    fn start(bin: &Path, dir: &Path, replicas: usize, intent: &Path) -> Result<Plane> {
        let s = |p: &Path| p.display().to_string();
        let states: Vec<PathBuf> = (0..replicas.max(1))
            .map(|i| dir.join(format!("state-{i}")))
            .collect();
        controller_cmd(bin, &["ca", "init", "--state-dir", &s(&states[0])])?;
        // The same CA (and key) on every replica.
        for state in &states[1..] {
            std::fs::create_dir_all(state.join("pki"))?;
            for f in std::fs::read_dir(states[0].join("pki"))? {
                let f = f?;
                std::fs::copy(f.path(), state.join("pki").join(f.file_name()))?;
            }
        }
        let (etcd, store) = if replicas > 1 {
            let etcd_dir = dir.join("etcd");
            std::fs::create_dir_all(&etcd_dir)?;
            // One apply writes the whole intent in one transaction: etcd's
            // limits raised as controller/README.md ("The store") says.
            let etcd = test_support::etcd::TestEtcdCluster::start_with(
                &etcd_dir,
                3,
                &["--max-txn-ops=50000", "--max-request-bytes=67108864"],
            );
            for i in 0..etcd.size() {
                if let Some(pid) = etcd.pid(i) {
                    crate::guard::track_pid(pid);
                }
            }
            let store = vec![
                "--etcd".into(),
                etcd.endpoints(),
                "--etcd-ca".into(),
                s(&etcd.ca),
                "--etcd-cert".into(),
                s(&etcd.cert),
                "--etcd-key".into(),
                s(&etcd.key),
            ];
            (Some(etcd), store)
        } else {
            (None, vec!["--state-dir".into(), s(&states[0])])
        };
        let mut plane = Plane {
            replicas: Vec::new(),
            states,
            ports: Vec::new(),
            etcd,
            store,
            bin: bin.to_path_buf(),
        };
        plane.apply(intent)?;
        let serve_store: Vec<String> = if plane.etcd.is_some() {
            plane.store.clone()
        } else {
            Vec::new()
        };
        for i in 0..plane.states.len() {
            let log = dir.join(format!("serve-{i}.log"));
            let c = start_controller(bin, &plane.states[i], &serve_store, &log)?;
            plane.ports.push(c.port);
            plane.replicas.push(Some(c));
            if i == 0 && replicas > 1 {
                let deadline = Instant::now() + Duration::from_secs(30);
                while plane.leader() != Some(0) {
                    if Instant::now() > deadline {
                        bail!("replica 0 did not lead within 30 s; see {}", log.display());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Ok(plane)
    }

    /// Stops the replicas, then etcd, by pid.
    fn stop(&mut self) {
        self.replicas.clear();
        if let Some(mut etcd) = self.etcd.take() {
            let pids: Vec<u32> = (0..etcd.size()).filter_map(|i| etcd.pid(i)).collect();
            etcd.stop_all();
            for pid in pids {
                crate::guard::forget_pid(pid);
            }
        }
    }

    /// `dpu-controller apply -f FILE` on this plane's store.
    fn apply(&self, file: &Path) -> Result<()> {
        let mut args = vec!["apply".to_string()];
        args.extend(self.store.iter().cloned());
        args.extend(["-f".into(), file.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        controller_cmd(&self.bin, &args).map(drop)
    }

    /// The running replica that says it leads (its status).
    fn leader(&self) -> Option<usize> {
        (0..self.states.len()).find(|&i| {
            self.replicas.get(i).is_some_and(Option::is_some)
                && controller_cmd(
                    &self.bin,
                    &[
                        "status",
                        "--state-dir",
                        &self.states[i].display().to_string(),
                        "--json",
                    ],
                )
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["store"]["leader"] == true)
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.replicas
            .iter()
            .flatten()
            .map(|c| c.child.id())
            .collect()
    }

    /// The replicas' CPU seconds, summed.
    fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().map(cpu_seconds).sum()
    }

    /// The largest peak RSS of the replicas.
    fn peak_rss_mib(&self) -> f64 {
        self.pids()
            .into_iter()
            .map(peak_rss_mib)
            .fold(0.0, f64::max)
    }

    /// A store client for churn, which writes as `apply` does.
    fn writer(&self, runtime: &tokio::runtime::Runtime) -> Result<dpu_controller::kv::Store> {
        use dpu_controller::kv::{EtcdOptions, EtcdStore, LocalStore, Store};
        Ok(match &self.etcd {
            None => Store::Local(LocalStore::open(&self.states[0].join("store"))?),
            Some(etcd) => Store::Etcd(runtime.block_on(EtcdStore::connect(EtcdOptions {
                endpoints: etcd.urls.clone(),
                ca: etcd.ca.clone(),
                cert: etcd.cert.clone(),
                key: etcd.key.clone(),
                prefix: dpu_controller::kv::etcd::DEFAULT_PREFIX.into(),
            }))?),
        })
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; after the ')' they are the 12th and 13th.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What a simulated agent keeps across its sessions, as the agent does.
#[derive(Default)]
struct AgentState {
    intent: Intent,
    index: Index,
    version: u64,
    /// The `store_id` of the update `version` came with (Hello says it).
    store_id: String,
}

/// One simulated agent, until `stop`: a session on `ports[0]`, and when a
/// session ends, the next port in turn, with the agent's own rotation and
/// backoff (`dpu_agent::control::rotation`, the agent's default 200 ms to
/// 10 s, jittered).
async fn agent(
    node: String,
    ports: Vec<u16>,
    ca: String,
    identity: (String, String),
    apply: Duration,
    log: Arc<Mutex<Log>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use dpu_agent::control::rotation::{jittered, Rotation};
    let mut rotation = Rotation::new(
        ports.len(),
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    let mut state = AgentState::default();
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0u64.. {
        let port = ports[rotation.current()];
        let started = Instant::now();
        let ended = session(
            &node, port, &ca, &identity, apply, &log, &mut state, &mut stop,
        )
        .await;
        match ended {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ended
                .push(format!("{node} on port {port}: {e:#}")),
        }
        let r = (seed.hash_one((&node, attempt)) % 1000) as f64 / 1000.0;
        let wait = jittered(rotation.failed(started.elapsed()), r);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One session on `port`: Ok(true) when told to stop, Ok(false) when the
/// controller ended it.
#[allow(clippy::too_many_arguments)]
async fn session(
    node: &str,
    port: u16,
    ca: &str,
    identity: &(String, String),
    apply: Duration,
    log: &Mutex<Log>,
    state: &mut AgentState,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<bool> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(&identity.0, &identity.1))
        .domain_name("dpu-controller");
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .context("connecting")?;
    let (tx, rx) = mpsc::channel(16);
    let send = |m: Msg| {
        let tx = tx.clone();
        async move { tx.send(pb::AgentMessage { msg: Some(m) }).await.is_ok() }
    };
    send(Msg::Hello(pb::Hello {
        node: node.to_string(),
        last_applied_version: state.version,
        agent_version: "dpu-bench fleet".into(),
        store_id: state.store_id.clone(),
    }))
    .await;
    let mut inbound = AgentControlClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("session")?
        .into_inner();
    let status = |version: u64, services: usize| pb::Status {
        applied_version: version,
        desired_version: version,
        services: services as u32,
        ..Default::default()
    };
    send(Msg::Status(status(
        state.version,
        state.intent.services.len(),
    )))
    .await;
    send(Msg::LocalWorkloads(pb::LocalWorkloads {
        revision: 1,
        workloads: Vec::new(),
    }))
    .await;
    send(Msg::Health(pb::Health::default())).await;
    let mut ticker = tokio::time::interval(STATUS_PERIOD);
    ticker.tick().await;
    let mut served = false;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m.context("stream")?,
            _ = ticker.tick() => {
                send(Msg::Status(status(state.version, state.intent.services.len()))).await;
                continue;
            }
            _ = stop.changed() => return Ok(true),
        };
        let Some(msg) = msg else { return Ok(false) };
        if !served {
            // The replica's first word on this session (an update, or the
            // health it sends right after deciding the agent is up to date).
            served = true;
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .served
                .entry(node.to_string())
                .or_default()
                .push((Instant::now(), port));
        }
        let Some(pb::controller_message::Msg::Update(u)) = msg.msg else {
            continue;
        };
        let bytes = u.encoded_len();
        let empty = u.upserts.is_empty() && u.deletes.is_empty() && !u.snapshot;
        match apply_update(&mut state.intent, &mut state.index, state.version, &u, node) {
            Ok(_) => {
                tokio::time::sleep(apply).await;
                state.version = u.version;
                state.store_id = u.store_id.clone();
                send(Msg::Ack(pb::Ack {
                    version: state.version,
                    nonce: u.nonce.clone(),
                }))
                .await;
                send(Msg::Status(status(
                    state.version,
                    state.intent.services.len(),
                )))
                .await;
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.updates.entry(node.to_string()).or_default().push(Got {
                    version: state.version,
                    acked: Instant::now(),
                    bytes,
                    empty,
                });
            }
            Err(refusal) => {
                let text = format!("{node}: version {} refused: {refusal:?}", u.version);
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .nacks
                    .push(text);
                send(Msg::Nack(pb::Nack {
                    version: u.version,
                    nonce: u.nonce.clone(),
                    errors: Vec::new(),
                }))
                .await;
            }
        }
    }
}

/// Waits until every node has ACKed a version >= `at_least` (0: any), or the
/// timeout; returns when the last one did.
fn wait_all(log: &Mutex<Log>, nodes: usize, at_least: u64) -> Result<Instant> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            if !l.nacks.is_empty() {
                bail!("an agent refused an update: {}", l.nacks[0]);
            }
            let done: Vec<Instant> = l
                .updates
                .values()
                .filter_map(|u| u.iter().find(|g| g.version >= at_least.max(1)))
                .map(|g| g.acked)
                .collect();
            if done.len() == nodes {
                return Ok(done.into_iter().max().expect("nodes > 0"));
            }
        }
        if Instant::now() > deadline {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            bail!(
                "not every agent ACKed within {CONVERGE_TIMEOUT:?}; the last sessions that ended: {:?}",
                &l.ended[l.ended.len().saturating_sub(5)..]
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One (nodes, services) point.
pub fn run_one(opts: &FleetOptions, nodes: usize, services: usize) -> Result<FleetRow> {
    let dir = tempfile::tempdir()?;
    let bin = &opts.controller;
    let intent = dir.path().join("intent.yaml");
    std::fs::write(&intent, manifests(nodes, services, None))?;
    let mut plane = Plane::start(bin, dir.path(), opts.replicas, &intent)?;
    // Certificates, signed in-process with the controller's CA.
    let ca = dpu_controller::pki::load_ca(&plane.states[0])?;
    let ids: Vec<(String, String)> = (0..nodes)
        .map(|n| {
            ca.issue_node(&node_name(n), 2)
                .map(|i| (i.cert_pem, i.key_pem))
        })
        .collect::<Result<_, _>>()?;
    let ca_pem = ca.cert_pem.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let log = Arc::new(Mutex::new(Log::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Cold: every agent at once. Agent n lists the replicas starting with
    // replica n % replicas, so that each holds its share of them.
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(n, id)| {
            let mut ports = plane.ports.clone();
            ports.rotate_left(n % plane.ports.len());
            runtime.spawn(agent(
                node_name(n),
                ports,
                ca_pem.clone(),
                id,
                opts.apply,
                log.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let last = wait_all(&log, nodes, 0)?;
    let cold_s = last.duration_since(started).as_secs_f64();
    let (cold_bytes, before) = {
        let l = log.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = l.updates.values().flatten().map(|g| g.bytes).sum();
        let max = l
            .updates
            .values()
            .filter_map(|u| u.last().map(|g| g.version))
            .max()
            .unwrap_or(0);
        (bytes as u64, max)
    };
    // Settle: every agent at the same version.
    wait_all(&log, nodes, before)?;
    std::thread::sleep(Duration::from_secs(1));
    let counts: BTreeMap<String, usize> = {
        let l = log.lock().unwrap_or_else(|e| e.into_inner());
        l.updates
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    };

    // One change: a Workload of VPC 0 leaves its Services.
    let change = dir.path().join("change.yaml");
    std::fs::write(&change, manifests(nodes, services, Some((0, 0))))?;
    let cpu0 = plane.cpu_seconds();
    plane.apply(&change)?;
    let t0 = Instant::now();
    // Wait until the nodes of VPC 0 ACKed something newer, then a little
    // longer for any others that are sent something.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let l = log.lock().unwrap_or_else(|e| e.into_inner());
        let got = (0..NODES_PER_VPC.min(nodes))
            .filter(|n| {
                l.updates
                    .get(&node_name(*n))
                    .is_some_and(|u| u.len() > counts[&node_name(*n)])
            })
            .count();
        drop(l);
        if got == NODES_PER_VPC.min(nodes) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the change did not reach VPC 0's nodes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let cpu1 = plane.cpu_seconds();
    let mut lat = Vec::new();
    let mut empties = Vec::new();
    let mut change_bytes = 0u64;
    {
        let l = log.lock().unwrap_or_else(|e| e.into_inner());
        for (node, u) in &l.updates {
            for g in u.iter().skip(counts[node]) {
                change_bytes += g.bytes as u64;
                let ms = g.acked.saturating_duration_since(t0).as_secs_f64() * 1000.0;
                if g.empty {
                    empties.push(ms);
                } else {
                    lat.push(ms);
                }
            }
        }
    }
    let last = lat.iter().copied().fold(0.0, f64::max);
    let empty = empties.len();
    let empty_early = empties.iter().filter(|ms| **ms <= last).count();
    lat.sort_by(f64::total_cmp);
    let mut churn = Vec::new();
    // The changes go on from where the last rate stopped: starting over would
    // write values the store already holds (no new intent, nothing to ACK).
    let mut made = 0;
    let writer = plane.writer(&runtime)?;
    for &rate in &opts.rates {
        let leader = (plane.replicas.len() > 1)
            .then(|| plane.leader().map(|i| plane.ports[i]))
            .flatten();
        let row = run_churn(
            &writer,
            &runtime,
            (nodes, leader),
            rate,
            opts.churn_for,
            made,
            &log,
        )?;
        made += row.changes;
        churn.push(row);
    }
    let peak_rss = plane.peak_rss_mib();
    let storm = if plane.replicas.len() > 1 {
        Some(run_storm(&mut plane, nodes, &log)?)
    } else {
        None
    };
    let _ = stop_tx.send(true);
    runtime.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    drop(writer);
    drop(plane);
    let row = FleetRow {
        nodes,
        services,
        replicas: opts.replicas.max(1),
        apply_ms: opts.apply.as_millis() as u64,
        cold_s,
        cold_bytes,
        change_affected: lat.len(),
        change_p50_ms: percentile(&lat, 0.50),
        change_p99_ms: percentile(&lat, 0.99),
        change_max_ms: lat.last().copied().unwrap_or(0.0),
        change_empty: empty,
        change_empty_early: empty_early,
        change_bytes,
        controller_cpu_change_s: cpu1 - cpu0,
        controller_peak_rss_mib: peak_rss,
        churn,
        storm,
    };
    Ok(row)
}

/// The reconnect storm: the leading replica, holding its share of the
/// agents, is killed (SIGKILL); how long until each of its agents has a
/// session on another replica that has spoken to it (sent the update it
/// lacked, or the health message it sends once it finds the agent up to date).
fn run_storm(plane: &mut Plane, nodes: usize, log: &Mutex<Log>) -> Result<StormRow> {
    let victim = plane.leader().unwrap_or(0);
    let port = plane.ports[victim];
    let held: Vec<String> = {
        let l = log.lock().unwrap_or_else(|e| e.into_inner());
        l.served
            .iter()
            .filter(|(_, s)| s.last().is_some_and(|(_, p)| *p == port))
            .map(|(n, _)| n.clone())
            .collect()
    };
    let led = plane.leader() == Some(victim);
    let killed = Instant::now();
    drop(plane.replicas[victim].take());
    let deadline = killed + Duration::from_secs(120);
    let mut served: Vec<f64> = loop {
        {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            let again: Vec<f64> = held
                .iter()
                .filter_map(|n| {
                    l.served
                        .get(n)?
                        .iter()
                        .find(|(at, p)| *at > killed && *p != port)
                })
                .map(|(at, _)| at.duration_since(killed).as_secs_f64() * 1000.0)
                .collect();
            if again.len() == held.len() {
                break again;
            }
        }
        if Instant::now() > deadline {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            bail!(
                "not every agent of the killed replica was served again within 120 s; the last sessions that ended: {:?}",
                &l.ended[l.ended.len().saturating_sub(5)..]
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    served.sort_by(f64::total_cmp);
    // The agents of the other replicas keep their sessions.
    let others_reconnected = {
        let l = log.lock().unwrap_or_else(|e| e.into_inner());
        l.served
            .iter()
            .filter(|(n, _)| !held.contains(n))
            .filter(|(_, s)| s.iter().any(|(at, _)| *at > killed))
            .count()
    };
    let row = StormRow {
        killed_replica: victim,
        killed_led: led,
        agents_held: held.len(),
        agents_total: nodes,
        all_served_ms: served.last().copied().unwrap_or(0.0),
        p50_ms: percentile(&served, 0.5),
        p99_ms: percentile(&served, 0.99),
        others_reconnected,
    };
    eprintln!("  storm {row:?}");
    Ok(row)
}

/// Changes at `rate` per second for `time`, each a Workload of the next VPC
/// changing its label group, written to the store as `apply` writes (the
/// object and the guard, in one transaction), going on after the `before`
/// changes this run made already. `leader`: the leading replica's port,
/// with several.
fn run_churn(
    store: &dpu_controller::kv::Store,
    runtime: &tokio::runtime::Runtime,
    (nodes, leader): (usize, Option<u16>),
    rate: u32,
    time: Duration,
    before: usize,
    log: &Mutex<Log>,
) -> Result<ChurnRow> {
    use dpu_controller::kv::Txn;
    // Whole VPCs only: every node of a changed Workload exists.
    let vpcs = (nodes / NODES_PER_VPC).max(1);
    let count = (u64::from(rate) * time.as_secs()).max(1) as usize;
    let gap = Duration::from_secs(1) / rate.max(1);
    let start = Instant::now();
    // (when, the VPC it changed)
    let mut made: Vec<(Instant, usize)> = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Each change moves one Workload out of its label group (its
        // Services lose it), or back on the next pass: change `before + i`
        // of the run, so that every change changes something.
        let n = before + i;
        let v = n % vpcs;
        let j = n / vpcs;
        let span = NODES_PER_VPC * WORKLOADS_PER_NODE - NODES_PER_VPC;
        let k = NODES_PER_VPC + j % span;
        let group = if (j / span).is_multiple_of(2) {
            GROUPS
        } else {
            k % GROUPS
        };
        let value = serde_json::json!({
            "source": "apply:fleet-churn",
            "manifest": workload_doc(v, k, group),
        });
        runtime.block_on(
            store.txn(
                Txn::new()
                    .put(format!("intent/Workload/w-{v}-{k}"), value.to_string())
                    .put("intent/.guard", "fleet-churn"),
            ),
        )?;
        made.push((Instant::now(), v));
    }
    // Long enough for the last change to count as in force or not.
    std::thread::sleep(IN_FORCE_WITHIN);
    let l = log.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = Vec::new();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut lost = 0;
    let (mut on_leader, mut on_followers) = (Vec::new(), Vec::new());
    for (i, (at, v)) in made.iter().enumerate() {
        let mut lags = Vec::new();
        for n in (v * NODES_PER_VPC..(v + 1) * NODES_PER_VPC).filter(|n| *n < nodes) {
            let node = node_name(n);
            let got = l
                .updates
                .get(&node)
                .and_then(|u| u.iter().find(|g| !g.empty && g.acked >= *at));
            match got {
                Some(g) if g.acked.duration_since(*at) < IN_FORCE_WITHIN => {
                    let ms = g.acked.duration_since(*at).as_secs_f64() * 1000.0;
                    lags.push(ms);
                    if let Some(port) = leader {
                        let served_by = l.served.get(&node).and_then(|s| s.last()).map(|s| s.1);
                        if served_by == Some(port) {
                            on_leader.push(ms);
                        } else {
                            on_followers.push(ms);
                        }
                    }
                }
                _ => {}
            }
        }
        if lags.is_empty() {
            lost += 1;
        }
        if i < made.len() / 2 {
            first.extend(lags.iter().copied());
        } else {
            second.extend(lags.iter().copied());
        }
        all.extend(lags);
    }
    for v in [
        &mut all,
        &mut first,
        &mut second,
        &mut on_leader,
        &mut on_followers,
    ] {
        v.sort_by(f64::total_cmp);
    }
    let row = ChurnRow {
        rate,
        changes: made.len(),
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(0.0),
        p99_first_half_ms: percentile(&first, 0.99),
        p99_second_half_ms: percentile(&second, 0.99),
        lost,
        p99_on_leader_ms: leader.map(|_| percentile(&on_leader, 0.99)),
        p99_on_followers_ms: leader.map(|_| percentile(&on_followers, 0.99)),
    };
    eprintln!("  churn {row:?}");
    Ok(row)
}

/// Every point, written to `out/fleet.json` and `out/fleet.md` as they come.
pub fn run(opts: &FleetOptions) -> Result<Vec<FleetRow>> {
    std::fs::create_dir_all(&opts.out)?;
    let mut rows = Vec::new();
    for &services in &opts.services {
        for &nodes in &opts.nodes {
            eprintln!("fleet: {nodes} agents, {services} Services");
            let row = run_one(opts, nodes, services)?;
            eprintln!("  {row:?}");
            rows.push(row);
            write(&opts.out, &rows)?;
        }
    }
    Ok(rows)
}

/// `out/fleet.md` and the charts again from `out/fleet.json`.
pub fn redraw(out: &Path) -> Result<()> {
    let path = out.join("fleet.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rows: Vec<FleetRow> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    write(out, &rows)
}

/// The charts against N (one replica; a line per Service count), when the
/// rows hold at least two N: (file name, SVG).
pub fn charts(rows: &[FleetRow]) -> Vec<(String, String)> {
    let one: Vec<&FleetRow> = rows.iter().filter(|r| r.replicas == 1).collect();
    let mut ns: Vec<usize> = one.iter().map(|r| r.nodes).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut services: Vec<usize> = one.iter().map(|r| r.services).collect();
    services.sort_unstable();
    services.dedup();
    if ns.len() < 2 {
        return Vec::new();
    }
    let cats: Vec<String> = ns.iter().map(|n| format!("{n}")).collect();
    let series = |what: &str, f: &dyn Fn(&FleetRow) -> f64| -> Vec<crate::svg::Series> {
        services
            .iter()
            .map(|&sv| crate::svg::Series {
                name: format!("{what}, {sv} Services"),
                values: ns
                    .iter()
                    .map(|&n| {
                        one.iter()
                            .find(|r| r.nodes == n && r.services == sv)
                            .map(|r| f(r))
                    })
                    .collect(),
                dashed: false,
                color: None,
                missing: Vec::new(),
            })
            .collect()
    };
    type Metric = fn(&FleetRow) -> f64;
    type Target = Option<(f64, &'static str)>;
    // (file, title, y axis, series, value, target)
    let charts: [(&str, &str, &str, &str, Metric, Target); 4] = [
        (
            "fleet-change.svg",
            "One endpoint change: store to every needing agent's ACK",
            "p99, milliseconds",
            "p99",
            |r| r.change_p99_ms,
            Some((500.0, "target p99 500 ms (1k agents, 10k)")),
        ),
        (
            "fleet-cpu.svg",
            "Controller CPU for one change",
            "CPU seconds",
            "CPU",
            |r| r.controller_cpu_change_s,
            None,
        ),
        (
            "fleet-rss.svg",
            "Controller peak RSS",
            "MiB",
            "peak RSS",
            |r| r.controller_peak_rss_mib,
            Some((2048.0, "target 2 GiB")),
        ),
        (
            "fleet-cold.svg",
            "Cold fleet: all agents at once, until all ACKed",
            "seconds",
            "cold",
            |r| r.cold_s,
            None,
        ),
    ];
    charts
        .into_iter()
        .map(|(file, title, y, what, f, target)| {
            let svg = crate::svg::lines(
                title,
                y,
                "simulated agents (N)",
                &cats,
                &series(what, &f),
                target,
            );
            (file.to_string(), svg)
        })
        .collect()
}

fn write(out: &Path, rows: &[FleetRow]) -> Result<()> {
    std::fs::write(out.join("fleet.json"), serde_json::to_string_pretty(rows)?)?;
    let charts = charts(rows);
    for (name, svg) in &charts {
        std::fs::write(out.join(name), svg)?;
    }
    let apply = rows.first().map_or(5, |r| r.apply_ms);
    let mut md = format!(
        "# Fleet: simulated agents against the controller\n\n\
         Each agent: its own certificate and mTLS session, every update validated with the agent's code, ACK after {} ms. \
         One change: one Workload leaves its Services (10 nodes need it). \
         Replicas 1: one controller on the embedded store; 3: three replicas on a 3-member etcd cluster, each agent listing all three (a third of them first on each), CPU summed over the replicas and RSS the largest one's.\n\n\
         | agents | Services | replicas | cold: all ACKed (s) | cold bytes | change: agents updated | p50 (ms) | p99 (ms) | max (ms) | empty updates (before the last ACK) | change bytes | controller CPU for the change (s) | controller peak RSS (MiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        apply
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} | {:.1} | {:.1} | {:.1} | {} ({}) | {} | {:.2} | {:.0} |\n",
            r.nodes,
            r.services,
            r.replicas,
            r.cold_s,
            r.cold_bytes,
            r.change_affected,
            r.change_p50_ms,
            r.change_p99_ms,
            r.change_max_ms,
            r.change_empty,
            r.change_empty_early,
            r.change_bytes,
            r.controller_cpu_change_s,
            r.controller_peak_rss_mib
        ));
    }
    md.push_str(
        "\n## Churn\n\nA Workload of the next VPC relabelled at each step, written to the store directly; the lag is from the write to each agent of that VPC ACKing an update with something in it.\n\n\
         | agents | Services | replicas | changes/s | changes | p50 (ms) | p99 (ms) | max (ms) | p99 first half / second half (ms) | not in force within 10 s | p99 of the leader's / the followers' agents (ms) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        for c in &r.churn {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {} | {} |\n",
                r.nodes,
                r.services,
                r.replicas,
                c.rate,
                c.changes,
                c.p50_ms,
                c.p99_ms,
                c.max_ms,
                c.p99_first_half_ms,
                c.p99_second_half_ms,
                c.lost,
                match (c.p99_on_leader_ms, c.p99_on_followers_ms) {
                    (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
                    _ => "–".into(),
                }
            ));
        }
    }
    if rows.iter().any(|r| r.storm.is_some()) {
        md.push_str(
            "\n## Reconnect storm\n\nThe leading replica killed (SIGKILL) with its share of the agents; from the kill until each of them had a session on another replica that had spoken to it (the update it lacked, or the health message that follows finding it up to date). The agents use the agent's own rotation and backoff.\n\n\
             | agents | Services | replicas | killed replica led | its agents | all served again (ms) | p50 (ms) | p99 (ms) | other agents that reconnected |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for r in rows {
            if let Some(st) = &r.storm {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} of {} | {:.0} | {:.0} | {:.0} | {} |\n",
                    r.nodes,
                    r.services,
                    r.replicas,
                    if st.killed_led { "yes" } else { "no" },
                    st.agents_held,
                    st.agents_total,
                    st.all_served_ms,
                    st.p50_ms,
                    st.p99_ms,
                    st.others_reconnected
                ));
            }
        }
    }
    if !charts.is_empty() {
        md.push_str("\n## Against N (one replica)\n\n");
        for (name, _) in &charts {
            md.push_str(&format!("![{name}]({name})\n"));
        }
    }
    std::fs::write(out.join("fleet.md"), md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_intent_is_valid_and_each_node_needs_its_vpc_only() {
        let text = manifests(20, 40, Some((0, 0)));
        assert_eq!(text.matches("kind: DpuNode").count(), 20);
        assert_eq!(text.matches("kind: Vpc").count(), 2);
        assert_eq!(text.matches("kind: Workload").count(), 200);
        assert_eq!(text.matches("kind: YusurService").count(), 40);
        assert!(text.contains("{name: w-0-0, labels: {app: g10}}"));
    }
}
