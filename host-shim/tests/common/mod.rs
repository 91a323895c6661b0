//! Test harness: preconditions (root, `ip`), bounded commands, netns and veth Drop
//! guards, a throwaway PKI, the real `host-shim` binary run as a runtime runs it, and an
//! in-process fake agent serving `Attachments` over real mTLS.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpu_lab::netns;
pub use dpu_lab::netns::Netns;
use dpu_proto::v1 as pb;
use dpu_proto::v1::attachments_server::{Attachments, AttachmentsServer};
use serde_json::Value;
use test_support::pki::TestCa;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

pub const SHIM: &str = env!("CARGO_BIN_EXE_host-shim");
pub const AGENT_NAME: &str = "dpu-1";
/// GNU time (Debian's `time` package), for CPU time and peak RSS.
pub const TIME: &str = "/usr/bin/time";
/// The bound of one `ip` command.
pub const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound of one plugin run (its own agent timeout is shorter).
pub const SHIM_TIMEOUT: Duration = Duration::from_secs(30);

/// Fails (never skips) the test unless it runs as root with `ip` installed, with the
/// lab's one message for that (`dpu_lab::prereq::root`).
pub fn require_root_and_ip() {
    dpu_lab::prereq::assert_root();
}

/// A name prefix unique to this process and call (`dpu_lab::netns::unique_prefix`,
/// six characters starting with "h"), leaving nine for an interface name's suffix.
pub fn unique_prefix() -> String {
    netns::unique_prefix("host-shim")
}

/// Exit status, stdout and stderr of a finished command.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with `stdin`, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, stdin: &[u8], limit: Duration) -> Ran {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut pipe_in = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe_in.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// `ip ARGS`, which must succeed; returns stdout.
pub fn ip(args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let ran = run_bounded(cmd, b"", IP_TIMEOUT);
    assert_eq!(ran.code, 0, "ip {args:?} failed: {}", ran.stderr);
    ran.stdout
}

/// `ip -j ARGS` parsed; `[]` when `ip` prints nothing or the device does not exist.
pub fn ip_json(args: &[&str]) -> Value {
    let mut cmd = Command::new("ip");
    cmd.arg("-j").args(args);
    let ran = run_bounded(cmd, b"", IP_TIMEOUT);
    if ran.code != 0 || ran.stdout.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}"))
}

/// A named network namespace with its loopback up: the lab's guard
/// (`dpu_lab::netns::Netns`), which records the name for `lab/run-tests`' clean-up
/// before making it, refuses one that already exists, and deletes it on drop.
pub fn new_netns(name: &str) -> Netns {
    let ns = Netns::new(name).unwrap_or_else(|e| panic!("{e:#}"));
    ns.set_lo_up()
        .unwrap_or_else(|e| panic!("lo up in netns {name}: {e:#}"));
    ns
}

/// A veth pair playing a VF (in the host netns) and its representor (in the root
/// netns, up). Deleting the representor on drop removes both ends.
#[derive(Debug)]
pub struct Vf {
    pub vf: String,
    pub representor: String,
}

impl Vf {
    pub fn new(prefix: &str, host: &Netns) -> Self {
        let vf = format!("{prefix}vf");
        let representor = format!("{prefix}rp");
        ip(&[
            "link",
            "add",
            &vf,
            "type",
            "veth",
            "peer",
            "name",
            &representor,
        ]);
        let pair = Self { vf, representor };
        ip(&["link", "set", &pair.vf, "netns", host.name()]);
        ip(&["link", "set", &pair.representor, "up"]);
        pair
    }
}

impl Drop for Vf {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["link", "del", &self.representor]);
        let _ = run_bounded(cmd, b"", IP_TIMEOUT);
    }
}

/// A CA, the agent's server certificate (SAN "dpu-1" and 127.0.0.1) and the shim's
/// client certificate, written to a temporary directory.
#[derive(Debug)]
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_cert: String,
    pub server_key: String,
}

impl Pki {
    pub fn new() -> Self {
        let ca = TestCa::new("host-shim test CA");
        let server = ca.server(&[AGENT_NAME, "127.0.0.1"]);
        let client = ca.client(&["host-shim"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("shim.pem"), client.cert_pem()).unwrap();
        std::fs::write(dir.path().join("shim.key"), client.key_pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
            server_cert: server.cert_pem(),
            server_key: server.key_pem(),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// A network config for `agent` (`https://...`).
pub fn config(pki: &Pki, agent: &str) -> Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "dpu-net",
        "type": "host-shim",
        "agent": agent,
        "agentName": AGENT_NAME,
        "tls": {"ca": pki.path("ca.pem"), "cert": pki.path("shim.pem"), "key": pki.path("shim.key")},
        "subnet": "blue-a",
        "timeoutMs": 2000,
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}
    })
}

/// One plugin invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<&'a str>,
    /// Run the plugin inside this netns (`ip netns exec`), as on a host.
    pub run_in: Option<&'a str>,
    /// Run it under `/usr/bin/time -v` (its report goes to stderr).
    pub timed: bool,
}

/// What the plugin printed, parsed.
#[derive(Debug)]
pub struct ShimRun {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

impl ShimRun {
    /// The CNI error code; panics if stdout is not an error.
    pub fn error_code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or_else(|| {
            panic!(
                "expected a CNI error, got exit {} and {}",
                self.code, self.json
            )
        })
    }

    pub fn msg(&self) -> String {
        format!("{} {}", self.json["msg"], self.json["details"])
    }
}

/// Runs the real binary with the CNI environment and `config` on stdin.
pub fn shim(inv: &Invocation<'_>, config: &Value) -> ShimRun {
    shim_raw(inv, config.to_string().as_bytes(), &[])
}

/// Like [`shim`], with raw stdin and extra/overridden environment variables.
pub fn shim_raw(inv: &Invocation<'_>, stdin: &[u8], extra_env: &[(&str, &str)]) -> ShimRun {
    let mut argv: Vec<&str> = Vec::new();
    if let Some(ns) = inv.run_in {
        argv.extend(["ip", "netns", "exec", ns]);
    }
    if inv.timed {
        argv.extend([TIME, "-v"]);
    }
    argv.push(SHIM);
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DPU_SHIM_DEBUG", "1")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        );
    for (k, v) in [
        ("CNI_COMMAND", inv.command),
        ("CNI_CONTAINERID", inv.container_id),
        ("CNI_IFNAME", inv.ifname),
        ("CNI_NETNS", inv.netns.unwrap_or("")),
    ] {
        if !v.is_empty() {
            cmd.env(k, v);
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let ran = run_bounded(cmd, stdin, SHIM_TIMEOUT);
    let json = if ran.stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}): {:?}\nstderr: {}",
                ran.stdout, ran.stderr
            )
        })
    };
    ShimRun {
        code: ran.code,
        json,
        stderr: ran.stderr,
    }
}

/// A TCP port nothing listens on (bound, then released) in the calling thread's netns.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The fake agent's memory, shared with the test.
#[derive(Debug, Default)]
pub struct FakeState {
    pub attachments: BTreeMap<(String, String), pb::Attachment>,
    /// What Attach hands out (key and pod fields are filled from the request).
    pub template: pb::Attachment,
    pub ready: bool,
    pub not_ready_reason: String,
    pub attach_requests: Vec<pb::AttachRequest>,
    pub detached: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct FakeService {
    state: Arc<Mutex<FakeState>>,
}

fn key_of(k: Option<pb::AttachmentKey>) -> (String, String) {
    let k = k.unwrap_or_default();
    (k.container_id, k.ifname)
}

#[tonic::async_trait]
impl Attachments for FakeService {
    async fn attach(
        &self,
        req: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::Attachment>, Status> {
        let req = req.into_inner();
        let mut s = self.state.lock().unwrap();
        s.attach_requests.push(req.clone());
        let key = key_of(req.key.clone());
        if let Some(existing) = s.attachments.get(&key) {
            return Ok(Response::new(existing.clone()));
        }
        let mut a = s.template.clone();
        a.key = req.key;
        a.pod_namespace = req.pod_namespace;
        a.pod_name = req.pod_name;
        a.subnet = req.subnet;
        s.attachments.insert(key, a.clone());
        Ok(Response::new(a))
    }

    async fn detach(
        &self,
        req: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        let key = key_of(req.into_inner().key);
        let mut s = self.state.lock().unwrap();
        s.detached.push(key.clone());
        let removed = s.attachments.remove(&key);
        Ok(Response::new(pb::DetachResponse {
            existed: removed.is_some(),
            vf: removed.map(|a| a.vf).unwrap_or_default(),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::AttachmentKey>,
    ) -> Result<Response<pb::Attachment>, Status> {
        let key = key_of(Some(req.into_inner()));
        let s = self.state.lock().unwrap();
        s.attachments
            .get(&key)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no attachment {key:?}")))
    }

    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let s = self.state.lock().unwrap();
        Ok(Response::new(pb::ListResponse {
            attachments: s.attachments.values().cloned().collect(),
        }))
    }

    async fn ready(
        &self,
        _: Request<pb::ReadyRequest>,
    ) -> Result<Response<pb::ReadyResponse>, Status> {
        let s = self.state.lock().unwrap();
        Ok(Response::new(pb::ReadyResponse {
            ready: s.ready,
            reason: s.not_ready_reason.clone(),
        }))
    }
}

/// The fake agent: a tonic server with mTLS, listening on 127.0.0.1 inside a netns
/// (the socket is bound on a thread that entered it), served from its own thread.
#[derive(Debug)]
pub struct FakeAgent {
    pub state: Arc<Mutex<FakeState>>,
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds 127.0.0.1:0 inside `netns` (None: the calling thread's netns).
pub fn bind_in(netns: Option<&str>) -> std::net::TcpListener {
    let Some(name) = netns else {
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    };
    let path = PathBuf::from(format!("/run/netns/{name}"));
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    })
    .join()
    .expect("binding in the netns")
}

impl FakeAgent {
    pub fn start(pki: &Pki, netns: Option<&str>, state: FakeState) -> Self {
        let listener = bind_in(netns);
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(state));
        let service = FakeService {
            state: state.clone(),
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&pki.server_cert, &pki.server_key))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // Like a real server: no Nagle, or each reply waits on a delayed ACK.
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |conn| {
                        if let Ok(c) = &conn {
                            let _ = c.set_nodelay(true);
                        }
                        conn
                    },
                );
                Server::builder()
                    .tls_config(tls)
                    .unwrap()
                    .add_service(AttachmentsServer::new(service))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            state,
            url: format!("https://127.0.0.1:{port}"),
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The attachment the fake agent hands out in the VF tests.
pub fn template(vf: &str) -> pb::Attachment {
    pb::Attachment {
        vf: vf.to_string(),
        representor: "pf0vf0".into(),
        mac: "02:00:0a:00:01:46".into(),
        ip_cidr: "10.0.1.70/24".into(),
        gateway: "10.0.1.1".into(),
        routes: vec![
            pb::Route {
                dst: "0.0.0.0/0".into(),
                gw: String::new(),
            },
            pb::Route {
                dst: "10.96.0.0/12".into(),
                gw: "10.0.1.1".into(),
            },
        ],
        mtu: 1400,
        workload: "pod.default.web-0".into(),
        ..Default::default()
    }
}

/// `ip -n NS -j link show dev DEV`'s first entry, or Null when there is no such link.
pub fn link(ns: &str, dev: &str) -> Value {
    ip_json(&["-n", ns, "link", "show", "dev", dev])
        .get(0)
        .cloned()
        .unwrap_or(Value::Null)
}
