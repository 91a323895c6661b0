//! Helpers for the end-to-end tests: a temporary lab (state, intent and cert
//! dirs), the controller process (killed by pid on drop), and a tonic client that
//! stands in for an agent. Every wait is bounded.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dpu_proto::v1 as pb;
use dpu_proto::v1::agent_control_client::AgentControlClient;
use pb::agent_message::Msg;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Status, Streaming};

pub const WAIT: Duration = Duration::from_secs(15);
pub const GOOD: &[&str] = &["10-vpcs.yaml", "20-workloads.yaml", "30-services.yaml"];

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dpu-controller")
}

pub fn data(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/good")
        .join(name);
    fs::read_to_string(p).unwrap()
}

/// Runs the binary to completion, killing it if it takes longer than `WAIT`.
pub fn cli(args: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dpu-controller {args:?} did not finish in {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "dpu-controller {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Atomic from the poller's point of view: write aside, then rename.
pub fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(tmp, dir.join(name)).unwrap();
}

pub struct Lab {
    _tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub intent: PathBuf,
    pub certs: PathBuf,
}

impl Lab {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let lab = Lab {
            state: root.join("state"),
            intent: root.join("intent"),
            certs: root.join("certs"),
            _tmp: tmp,
        };
        fs::create_dir(&lab.intent).unwrap();
        for f in GOOD {
            write_manifest(&lab.intent, f, &data(f));
        }
        cli_ok(&["ca", "init", "--state-dir", s(&lab.state)]);
        cli_ok(&[
            "issue",
            "--state-dir",
            s(&lab.state),
            "--node",
            "dpu-1",
            "--out",
            s(&lab.certs),
        ]);
        lab
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.certs.join(name)).unwrap()
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&cli_ok(&[
            "status",
            "--state-dir",
            s(&self.state),
            "--json",
        ]))
        .unwrap()
    }

    /// Polls `status --json` until `pred` holds.
    pub fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(out) = std::panic::catch_unwind(|| self.status_json()) {
                if pred(&out) {
                    return out;
                }
                if Instant::now() > deadline {
                    panic!("status never showed {what}: {out:#}");
                }
            } else if Instant::now() > deadline {
                panic!("no status file");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The controller process; killed by pid when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Server {
    pub fn start(lab: &Lab) -> Self {
        Self::start_with(lab, &[])
    }

    /// Starts `serve` with more arguments.
    pub fn start_with(lab: &Lab, extra: &[&str]) -> Self {
        Self::start_at(lab, &lab.state, extra)
    }

    /// Starts `serve` on the state directory `state` (another replica's),
    /// with the lab's intent directory.
    pub fn start_at(lab: &Lab, state: &Path, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = state.with_file_name(format!(
            "{}.serve.log",
            state.file_name().unwrap().to_string_lossy()
        ));
        let child = Command::new(bin())
            .args([
                "serve",
                "--state-dir",
                s(state),
                "--intent-dir",
                s(&lab.intent),
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server { child, port, log };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("serve exited with {status}: {}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not listen: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn channel(
    port: u16,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("dpu-controller");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(WAIT, endpoint.connect())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("{e:?}"))
}

pub struct Agent {
    pub tx: mpsc::Sender<pb::AgentMessage>,
    rx: Streaming<pb::ControllerMessage>,
}

pub fn hello(node: &str, last_applied_version: u64, store_id: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            node: node.into(),
            last_applied_version,
            agent_version: "test".into(),
            store_id: store_id.into(),
        })),
    }
}

/// A session whose Hello says `last_applied` and no numbering (as an agent
/// with nothing applied, or one older than `store_id`).
pub async fn open(channel: Channel, node: &str, last_applied: u64) -> Result<Agent, Status> {
    open_at(channel, node, last_applied, "").await
}

/// A session whose Hello says `last_applied` in the numbering `store_id`
/// (what the agent's last update carried).
pub async fn open_at(
    channel: Channel,
    node: &str,
    last_applied: u64,
    store_id: &str,
) -> Result<Agent, Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(hello(node, last_applied, store_id)).await.unwrap();
    let mut client = AgentControlClient::new(channel);
    let call = client.session(ReceiverStream::new(rx));
    let resp = tokio::time::timeout(WAIT, call)
        .await
        .map_err(|_| Status::deadline_exceeded("test: no response"))??;
    Ok(Agent {
        tx,
        rx: resp.into_inner(),
    })
}

impl Agent {
    /// The next Update; Health messages (sent after Hello and on every change of
    /// backend health) are skipped.
    pub async fn next(&mut self) -> Result<Option<pb::Update>, Status> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.rx.message())
                .await
                .map_err(|_| Status::deadline_exceeded("test: no message"))??;
            match msg.map(|m| m.msg) {
                None => return Ok(None),
                Some(Some(pb::controller_message::Msg::Update(u))) => return Ok(Some(u)),
                Some(Some(pb::controller_message::Msg::Health(_))) => continue,
                Some(None) => panic!("empty ControllerMessage"),
            }
        }
    }

    pub async fn update(&mut self) -> pb::Update {
        self.next()
            .await
            .expect("an update")
            .expect("the stream is open")
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn nothing_for(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(m) = tokio::time::timeout_at(deadline, self.rx.message()).await {
            if let Ok(Some(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Health(_)),
            })) = m
            {
                continue;
            }
            panic!("expected no update, got {m:?}");
        }
    }

    pub async fn ack(&self, version: u64, nonce: &str) {
        let msg = Msg::Ack(pb::Ack {
            version,
            nonce: nonce.into(),
        });
        self.tx
            .send(pb::AgentMessage { msg: Some(msg) })
            .await
            .unwrap();
    }
}

pub fn keys(u: &pb::Update) -> Vec<String> {
    u.upserts
        .iter()
        .map(|o| {
            use pb::object::Object as O;
            match o.object.as_ref().unwrap() {
                O::Vpc(x) => format!("Vpc/{}", x.name),
                O::Subnet(x) => format!("Subnet/{}", x.name),
                O::Workload(x) => format!("Workload/{}", x.name),
                O::Service(x) => format!("YusurService/{}", x.name),
                O::NetworkProbe(x) => format!("NetworkProbe/{}", x.name),
                O::Node(x) => format!("DpuNode/{}", x.name),
            }
        })
        .collect()
}

pub fn node<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &status["nodes"][name]
}

/// Expects the attempt to fail before any update arrives.
pub async fn refused(
    port: u16,
    ca: &str,
    identity: Option<(String, String)>,
    node: &str,
) -> String {
    let ch = match channel(port, ca, identity).await {
        Ok(ch) => ch,
        Err(e) => return e,
    };
    match open(ch, node, 0).await {
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
        Ok(mut agent) => match agent.next().await {
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
            other => panic!("expected a refusal, got {other:?}"),
        },
    }
}

impl Agent {
    /// The next message of any kind, within `wait`; `None` if none came (or
    /// the stream ended).
    pub async fn message_within(&mut self, wait: Duration) -> Option<pb::ControllerMessage> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) | Err(_) => None,
        }
    }

    pub async fn send(&self, msg: Msg) {
        self.tx
            .send(pb::AgentMessage { msg: Some(msg) })
            .await
            .unwrap();
    }
}

/// The command-line options that name a test etcd as the store.
pub fn etcd_args(etcd: &test_support::etcd::TestEtcd) -> Vec<String> {
    store_args(&etcd.url, &etcd.ca, &etcd.cert, &etcd.key)
}

/// [`etcd_args`] for every member of a cluster.
pub fn cluster_args(etcd: &test_support::etcd::TestEtcdCluster) -> Vec<String> {
    store_args(&etcd.endpoints(), &etcd.ca, &etcd.cert, &etcd.key)
}

fn store_args(endpoints: &str, ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--etcd".into(),
        endpoints.into(),
        "--etcd-ca".into(),
        path(ca),
        "--etcd-cert".into(),
        path(cert),
        "--etcd-key".into(),
        path(key),
    ]
}

/// The controller's etcd client options for `etcd`, under `prefix`.
pub fn etcd_options(
    etcd: &test_support::etcd::TestEtcd,
    prefix: &str,
) -> dpu_controller::kv::EtcdOptions {
    dpu_controller::kv::EtcdOptions {
        endpoints: vec![etcd.url.clone()],
        ca: etcd.ca.clone(),
        cert: etcd.cert.clone(),
        key: etcd.key.clone(),
        prefix: prefix.into(),
    }
}
