//! End to end: the real binary serves intent over mTLS; a tonic client stands in
//! for the agent. The server is killed by its pid when a test ends, pass or fail.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use dpu_proto::v1 as pb;
use pb::agent_message::Msg;
use tonic::{Code, Status};

const BLUE: [&str; 7] = [
    "Vpc/blue",
    "Subnet/blue-a",
    "Workload/db-1",
    "Workload/web-1",
    "Workload/web-2",
    "YusurService/web",
    "NetworkProbe/web-http",
];

const WEB_3: &str = "---
apiVersion: dpu.yusur.io/v1alpha1
kind: Workload
metadata:
  name: web-3
  labels: {app: web}
spec: {kind: Pod, vpc: blue, ip: 10.1.2.11, mac: \"02:00:00:00:02:0b\", node: dpu-2, port: web-3-eth0}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_snapshots_and_increments_over_mtls() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));

    // First contact: a snapshot of dpu-1's share only (no red VPC).
    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    assert!(snap.snapshot);
    assert_eq!(snap.base_version, 0);
    assert_eq!(keys(&snap), BLUE);
    let v1 = snap.version;
    assert!(v1 >= 1);
    // The numbering: the store's cluster id (versions are its revisions).
    let store_id = snap.store_id.clone();
    assert!(
        store_id.len() == 20 && store_id.ends_with("/rev"),
        "{store_id}"
    );

    // A reply with the wrong nonce is ignored; the right one is the applied version.
    agent.ack(v1, "not-the-nonce").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = lab.status_json();
    assert_eq!(node(&st, "dpu-1")["applied_version"], 0, "{st:#}");
    assert_eq!(node(&st, "dpu-1")["connected"], true);
    agent.ack(v1, &snap.nonce).await;
    lab.wait_status("dpu-1 applied v1", |st| {
        node(st, "dpu-1")["applied_version"] == v1
    });

    // A new workload selected by the service: just that and the service change.
    write_manifest(
        &lab.intent,
        "20-workloads.yaml",
        &(data("20-workloads.yaml") + WEB_3),
    );
    let u = agent.update().await;
    assert!(!u.snapshot);
    // Versions are store revisions: they grow, not one by one.
    assert!(u.version > v1 && u.base_version == v1, "{u:?}");
    assert_eq!(keys(&u), ["Workload/web-3", "YusurService/web"]);
    assert!(u.deletes.is_empty());
    agent.ack(u.version, &u.nonce).await;
    let v2 = u.version;

    // Removing the probe: a delete by key.
    let services = data("30-services.yaml");
    let without_probe: Vec<&str> = services
        .split("---\n")
        .filter(|d| !d.contains("NetworkProbe"))
        .collect();
    write_manifest(
        &lab.intent,
        "30-services.yaml",
        &without_probe.join("---\n"),
    );
    let u = agent.update().await;
    assert!(u.version > v2 && u.base_version == v2, "{u:?}");
    assert!(u.upserts.is_empty());
    assert_eq!(
        u.deletes,
        [pb::ObjectKey {
            kind: pb::Kind::NetworkProbe as i32,
            name: "web-http".into()
        }]
    );
    agent.ack(u.version, &u.nonce).await;
    let v3 = u.version;
    lab.wait_status("dpu-1 applied v3", |st| {
        node(st, "dpu-1")["applied_version"] == v3
    });

    // An invalid edit is refused whole: the version stays, the status names the
    // file, object and field, and the agent hears nothing.
    let bad = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: green}\nspec: {vni: 300}\n---\napiVersion: dpu.yusur.io/v1alpha1\nkind: YusurService\nmetadata: {name: bad}\nspec: {vpc: blue, clusterIPs: [10.96.0.99], ports: [{port: 0}]}\n";
    write_manifest(&lab.intent, "bad.yaml", bad);
    let st = lab.wait_status("intent errors", |st| st["last_reload_ok"] == false);
    assert_eq!(st["intent_version"], v3);
    let line = st["intent_error_lines"][0].as_str().unwrap();
    assert!(
        line.ends_with("bad.yaml: document 2: YusurService/bad: spec.ports[0].port: port 0 is not allowed (1..=65535)"),
        "{line}"
    );
    assert_eq!(st["intent_errors"][0]["field"], "spec.ports[0].port");
    agent.nothing_for(Duration::from_millis(1500)).await;
    let table = cli_ok(&["status", "--state-dir", s(&lab.state)]);
    assert!(table.contains("intent errors"), "{table}");
    assert!(
        table.contains("YusurService/bad: spec.ports[0].port"),
        "{table}"
    );
    assert!(table.contains("dpu-1"), "{table}");

    // Fixing it back to the same intent clears the errors, version unchanged.
    fs::remove_file(lab.intent.join("bad.yaml")).unwrap();
    let st = lab.wait_status("a good reload", |st| st["last_reload_ok"] == true);
    assert_eq!(st["intent_version"], v3);
    assert_eq!(st["intent_errors"].as_array().unwrap().len(), 0);

    // A second session for the node replaces the first; an agent already at the
    // current version of this numbering gets no snapshot.
    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut second = open_at(ch, "dpu-1", v3, &store_id).await.unwrap();
    let ended = agent.next().await;
    assert!(
        matches!(&ended, Err(s) if s.code() == Code::Aborted),
        "{ended:?}"
    );
    second.nothing_for(Duration::from_millis(1000)).await;

    // A NACK is recorded, and the next update to the node is a snapshot.
    let web_4 = WEB_3
        .replace("web-3", "web-4")
        .replace("10.1.2.11", "10.1.1.12")
        .replace("dpu-2", "dpu-1");
    write_manifest(&lab.intent, "extra.yaml", &web_4);
    let u = second.update().await;
    assert!(!u.snapshot);
    assert!(u.version > v3);
    let v4 = u.version;
    let nack = pb::Nack {
        version: u.version,
        nonce: u.nonce.clone(),
        errors: vec![pb::ObjectError {
            key: Some(pb::ObjectKey {
                kind: pb::Kind::Workload as i32,
                name: "web-4".into(),
            }),
            field: "spec.port".into(),
            message: "no such port".into(),
        }],
    };
    second
        .tx
        .send(pb::AgentMessage {
            msg: Some(Msg::Nack(nack)),
        })
        .await
        .unwrap();
    let st = lab.wait_status("a NACK", |st| node(st, "dpu-1")["nack_pending"] == true);
    assert_eq!(
        node(&st, "dpu-1")["last_nack"]["errors"][0],
        "Workload/web-4: spec.port: no such port"
    );
    assert_eq!(node(&st, "dpu-1")["applied_version"], v3);
    write_manifest(
        &lab.intent,
        "extra.yaml",
        &web_4.replace("web-4-eth0", "web-4-eth1"),
    );
    let u = second.update().await;
    assert!(u.snapshot, "the update after a NACK is a snapshot");
    assert!(u.version > v4 && u.base_version == 0, "{u:?}");
    assert!(keys(&u).contains(&"Workload/web-4".to_string()));
    second.ack(u.version, &u.nonce).await;
    let v5 = u.version;
    let st = lab.wait_status("applied after NACK", |st| {
        node(st, "dpu-1")["applied_version"] == v5
    });
    assert_eq!(node(&st, "dpu-1")["nack_pending"], false);

    // SIGTERM: a clean exit; the stream ends; status says the controller is gone.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut server = server;
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(c) = server.child.try_wait().unwrap() {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit {code}: {}", server.log());
    let ended = second.next().await;
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    let st = lab.status_json();
    assert_eq!(st["controller_running"], false);
    assert_eq!(node(&st, "dpu-1")["connected"], false);
    let table = cli_ok(&["status", "--state-dir", s(&lab.state)]);
    assert!(table.contains("controller not running"), "{table}");
}

/// A pod labelled app=web in VPC blue, as an agent reports it.
fn pod(name: &str, node: &str, ip: &str) -> pb::Workload {
    pb::Workload {
        name: name.into(),
        kind: pb::WorkloadKind::Pod as i32,
        vpc: "blue".into(),
        ip: ip.into(),
        mac: "02:00:00:00:01:1e".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        node: node.into(),
        port: format!("{name}-eth0"),
        ipv6: String::new(),
    }
}

async fn report(agent: &Agent, revision: u64, workloads: Vec<pb::Workload>) {
    let msg = Msg::LocalWorkloads(pb::LocalWorkloads {
        revision,
        workloads,
    });
    agent
        .tx
        .send(pb::AgentMessage { msg: Some(msg) })
        .await
        .unwrap();
}

fn workload<'a>(u: &'a pb::Update, name: &str) -> &'a pb::Workload {
    u.upserts
        .iter()
        .find_map(|o| match &o.object {
            Some(pb::object::Object::Workload(w)) if w.name == name => Some(w),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Workload/{name} in {:?}", keys(u)))
}

fn backend_ips(u: &pb::Update, service: &str) -> Vec<String> {
    u.upserts
        .iter()
        .find_map(|o| match &o.object {
            Some(pb::object::Object::Service(s)) if s.name == service => {
                Some(s.backends.iter().map(|b| b.ip.clone()).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no YusurService/{service} in {:?}", keys(u)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_pods_join_the_intent_and_survive_a_restart() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));

    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    assert!(snap.snapshot);
    let v1 = snap.version;
    let store_id = snap.store_id.clone();
    assert!(!backend_ips(&snap, "web").contains(&"10.1.1.30".to_string()));
    agent.ack(v1, &snap.nonce).await;
    lab.wait_status("dpu-1 applied v1", |st| {
        node(st, "dpu-1")["applied_version"] == v1
    });

    // The agent reports its pods: one good, one that claims another node.
    report(
        &agent,
        7,
        vec![
            pod("pod-a", "dpu-1", "10.1.1.30"),
            pod("pod-x", "dpu-2", "10.1.2.30"),
        ],
    )
    .await;
    let u = agent.update().await;
    assert!(!u.snapshot);
    assert!(u.version > v1 && u.base_version == v1, "{u:?}");
    let v2 = u.version;
    assert_eq!(keys(&u), ["Workload/pod-a", "YusurService/web"]);
    assert!(u.deletes.is_empty());
    let w = workload(&u, "pod-a");
    assert_eq!((w.node.as_str(), w.ip.as_str()), ("dpu-1", "10.1.1.30"));
    assert_eq!(w.kind, pb::WorkloadKind::Pod as i32);
    assert_eq!(
        backend_ips(&u, "web"),
        ["10.1.1.10", "10.1.1.30", "10.1.1.99", "10.1.2.10"]
    );
    agent.ack(u.version, &u.nonce).await;
    let st = lab.wait_status("the reported pod", |st| {
        node(st, "dpu-1")["reported_workloads"] == 1 && node(st, "dpu-1")["applied_version"] == v2
    });
    assert_eq!(st["intent_version"], v2);
    let errors = node(&st, "dpu-1")["reported_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{st:#}");
    assert_eq!(
        errors[0],
        "Workload/pod-x: spec.node: node dpu-2 is not the reporting node dpu-1"
    );
    let table = cli_ok(&["status", "--state-dir", s(&lab.state)]);
    assert!(table.contains("PODS"), "{table}");
    assert!(table.contains("1 (1 dropped)"), "{table}");
    assert!(
        table.contains("dpu-1: Workload/pod-x: spec.node"),
        "{table}"
    );

    // An older revision from the same agent process is ignored.
    report(&agent, 6, vec![]).await;
    agent.nothing_for(Duration::from_millis(1500)).await;
    let st = lab.status_json();
    assert_eq!(st["intent_version"], v2);
    assert_eq!(node(&st, "dpu-1")["reported_workloads"], 1);

    // Disconnecting keeps the pods (they still exist).
    drop(agent);
    let st = lab.wait_status("dpu-1 disconnected", |st| {
        node(st, "dpu-1")["connected"] == false
    });
    assert_eq!(node(&st, "dpu-1")["reported_workloads"], 1);
    assert_eq!(st["intent_version"], v2);

    // A restart (even a kill) keeps the pod and the version.
    drop(server);
    let server = Server::start(&lab);
    let pid = server.child.id();
    let st = lab.wait_status("the new controller", |st| st["controller_pid"] == pid);
    assert_eq!(st["intent_version"], v2, "{st:#}");
    assert_eq!(node(&st, "dpu-1")["reported_workloads"], 1);
    // The numbering survives the restart too: an agent at the version gets
    // nothing, one that says another numbering (or none) gets a snapshot.
    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut agent = open_at(ch, "dpu-1", v2, &store_id).await.unwrap();
    agent.nothing_for(Duration::from_millis(1000)).await;
    for other in ["0000000000000000/0000000000000000", ""] {
        let ch = channel(server.port, &ca, id.clone()).await.unwrap();
        let mut agent = open_at(ch, "dpu-1", v2, other).await.unwrap();
        let snap = agent.update().await;
        assert!(snap.snapshot && snap.version == v2 && snap.store_id == store_id);
    }
    let ch = channel(server.port, &ca, id).await.unwrap();
    let mut fresh = open(ch, "dpu-1", 0).await.unwrap();
    let snap = fresh.update().await;
    assert!(snap.snapshot);
    assert_eq!(snap.version, v2);
    assert_eq!(workload(&snap, "pod-a").node, "dpu-1");
    assert!(backend_ips(&snap, "web").contains(&"10.1.1.30".to_string()));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_clients_that_are_not_the_node_they_claim() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));

    // The certificate says dpu-1; Hello says dpu-2.
    let e = refused(server.port, &ca, id.clone(), "dpu-2").await;
    assert!(e.starts_with("PermissionDenied"), "{e}");
    assert!(e.contains("\"dpu-2\"") && e.contains("dpu-1"), "{e}");

    // No client certificate: the handshake succeeds (Enroll needs none), the
    // session does not.
    let e = refused(server.port, &ca, None, "dpu-1").await;
    assert_eq!(e, "Unauthenticated: a client certificate is required");

    // A certificate for dpu-1 from another CA.
    let other = lab.state.with_file_name("other-state");
    let other_certs = lab.state.with_file_name("other-certs");
    cli_ok(&["ca", "init", "--state-dir", s(&other)]);
    cli_ok(&[
        "issue",
        "--state-dir",
        s(&other),
        "--node",
        "dpu-1",
        "--out",
        s(&other_certs),
    ]);
    let foreign = Some((
        fs::read_to_string(other_certs.join("dpu-1.pem")).unwrap(),
        fs::read_to_string(other_certs.join("dpu-1.key")).unwrap(),
    ));
    let e = refused(server.port, &ca, foreign, "dpu-1").await;
    eprintln!("with a foreign certificate: {e}");
    assert!(
        !e.starts_with("PermissionDenied"),
        "fails in the handshake: {e}"
    );

    // None of these became a node; the real one still works. The status file
    // is written by a debounced writer: wait for it to exist.
    let st = lab.wait_status("the status file", |_| true);
    assert!(st["nodes"].as_object().unwrap().is_empty(), "{st:#}");
    let ch = channel(server.port, &ca, id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    assert!(agent.update().await.snapshot);
    drop(server);
}

/// Waits (at most 3 s) until the wall clock is past `not_after_unix`: rustls
/// compares whole seconds and a certificate is still valid in its last second.
fn wait_until_expired(not_after_unix: i64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if i64::try_from(now).unwrap() > not_after_unix {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a 1 s certificate did not expire within 3 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `serve` with the listener's debug log on, where a failed TLS handshake is
/// reported ("TLS handshake failed"); `Server` runs it at `info`. Killed by pid
/// when dropped.
struct TlsLoggingServer {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl TlsLoggingServer {
    fn start(lab: &Lab) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = lab.state.with_file_name("serve-tls.log");
        let child = Command::new(bin())
            .args(["serve", "--state-dir", s(&lab.state)])
            .args(["--intent-dir", s(&lab.intent)])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info,dpu_listen=debug")
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = TlsLoggingServer { child, port, log };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("serve exited with {status}: {}", server.log());
            }
            assert!(Instant::now() < deadline, "no listen: {}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing every one of `parts`.
    fn wait_log_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no line with {parts:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TlsLoggingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A session attempt whose TLS handshake the server aborts. In TLS 1.3 the
/// client is done once it has sent its certificate and Finished, before the
/// server's verdict arrives, so the connect succeeds and the call fails under it with a transport error,
/// never a status the service sent. Which one depends on timing: `Cancelled`
/// ("connection closed": the alert was read before the request was sent),
/// `Unknown` "transport error" carrying the server's alert (`received fatal
/// alert: CertificateExpired`), or a broken pipe. Returns what the client saw.
async fn refused_in_handshake(
    port: u16,
    ca: &str,
    identity: Option<(String, String)>,
    node: &str,
) -> String {
    let ch = match channel(port, ca, identity).await {
        Ok(ch) => ch,
        Err(e) => return e,
    };
    let status = match open(ch, node, 0).await {
        Ok(_) => panic!("a session opened"),
        Err(status) => status,
    };
    let transport = std::error::Error::source(&status)
        .and_then(|e| e.downcast_ref::<tonic::transport::Error>());
    assert!(
        transport.is_some() && matches!(status.code(), Code::Cancelled | Code::Unknown),
        "not a transport failure: {status:?}"
    );
    let mut seen = format!("{:?}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(&status);
    while let Some(c) = cause {
        seen.push_str(&format!(": {c}"));
        cause = c.source();
    }
    seen
}

/// A node certificate from the right CA, naming the right node, but expired, is
/// refused in the TLS handshake: the controller's verifier rejects it as expired
/// and aborts the connection, so no RPC reaches the service (not Unauthenticated
/// or PermissionDenied), and the node never shows up in the status. The same key
/// with a certificate issued the same way that has not expired opens a session,
/// so expiry is the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_expired_client_certificate_in_the_handshake() {
    let lab = Lab::new();
    let server = TlsLoggingServer::start(&lab);
    let ca_pem = lab.read("ca.pem");
    let ca = dpu_controller::pki::load_ca(&lab.state).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();

    // Issued as enrollment issues (sign_node_key) for 1 s: not_before is
    // backdated, so it was valid, and a moment later it is past its not_after.
    let short = ca
        .sign_node_key("dpu-1", &key, Duration::from_secs(1))
        .unwrap();
    wait_until_expired(short.info.not_after_unix);
    let expired = Some((short.cert_pem, key.serialize_pem()));
    let seen = refused_in_handshake(server.port, &ca_pem, expired, "dpu-1").await;
    eprintln!("the client with an expired certificate: {seen}");
    let line = server.wait_log_line(&["TLS handshake failed", "certificate expired"]);
    eprintln!("the controller: {line}");
    assert!(
        line.contains(&format!(
            "certificate is not valid after {}",
            short.info.not_after_unix
        )),
        "{line}"
    );

    // Nothing about dpu-1 reached the status (written 100 ms after a change).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = lab.status_json();
    assert!(st["nodes"].as_object().unwrap().is_empty(), "{st:#}");
    assert!(
        !server.log().contains("agent connected"),
        "{}",
        server.log()
    );

    // The same key, issued the same way, not expired: a session.
    let valid = ca
        .sign_node_key("dpu-1", &key, Duration::from_secs(600))
        .unwrap();
    let id = Some((valid.cert_pem, key.serialize_pem()));
    let ch = channel(server.port, &ca_pem, id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    assert!(agent.update().await.snapshot);
    lab.wait_status("dpu-1 connected", |st| {
        node(st, "dpu-1")["connected"] == true
    });
}

// ---------------------------------------------------------------------------
// Agent messages over the controller's size limit.

/// Bytes of `v` as a protobuf varint.
fn varint_len(mut v: u64) -> u64 {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A length-delimited field with a one-byte tag (every field number here is
/// below 16) holding `n` bytes.
fn len_field(n: u64) -> u64 {
    1 + varint_len(n) + n
}

/// A proto3 string field: absent when empty.
fn str_field(s: &str) -> u64 {
    if s.is_empty() {
        0
    } else {
        len_field(s.len() as u64)
    }
}

/// A proto3 varint field: absent when zero.
fn uint_field(v: u64) -> u64 {
    if v == 0 {
        0
    } else {
        1 + varint_len(v)
    }
}

/// The encoded size of `m`: what the controller's gRPC decoder reads in the
/// message's length prefix. Covers the two messages these tests send over the limit.
fn agent_message_len(m: &pb::AgentMessage) -> u64 {
    let workload = |w: &pb::Workload| {
        str_field(&w.name)
            + uint_field(w.kind as u64)
            + str_field(&w.vpc)
            + str_field(&w.ip)
            + str_field(&w.mac)
            + w.labels
                .iter()
                .map(|(k, v)| len_field(str_field(k) + str_field(v)))
                .sum::<u64>()
            + str_field(&w.node)
            + str_field(&w.port)
            + str_field(&w.ipv6)
    };
    let error = |e: &pb::ObjectError| {
        e.key.as_ref().map_or(0, |k| {
            len_field(uint_field(k.kind as u64) + str_field(&k.name))
        }) + str_field(&e.field)
            + str_field(&e.message)
    };
    len_field(match &m.msg {
        Some(Msg::LocalWorkloads(lw)) => {
            uint_field(lw.revision)
                + lw.workloads
                    .iter()
                    .map(|w| len_field(workload(w)))
                    .sum::<u64>()
        }
        Some(Msg::Nack(n)) => {
            uint_field(n.version)
                + str_field(&n.nonce)
                + n.errors.iter().map(|e| len_field(error(e))).sum::<u64>()
        }
        other => panic!("agent_message_len does not count {other:?}"),
    })
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the peak resident memory of `pid` (`VmHWM`, our own child) to what it
/// holds now (`clear_refs` 5, Linux ≥ 4.0) and returns that, in KiB.
fn reset_peak_rss(pid: u32) -> u64 {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    proc_kib(pid, "VmHWM")
}

/// Sends `msg` (over `limit`) and checks the session ends with the decoder's
/// `OutOfRange` naming its size and the limit, the controller's peak RSS
/// growing by less than 16 MiB. Returns that error text.
async fn refused_as_oversized(
    agent: &mut Agent,
    pid: u32,
    msg: pb::AgentMessage,
    limit: u64,
    what: &str,
) -> String {
    let size = agent_message_len(&msg);
    assert!(size > limit, "{size}");
    let (ended, grown) = send_oversized(agent, pid, msg).await;
    eprintln!("a {size}-byte {what}: {ended:?}; controller peak RSS +{grown} KiB");
    let expected = format!(
        "Error, decoded message length too large: found {size} bytes, the limit is: {limit} bytes"
    );
    assert_eq!(
        (ended.code(), ended.message()),
        (Code::OutOfRange, expected.as_str())
    );
    assert!(
        grown < 16 * 1024,
        "the controller's peak RSS grew by {grown} KiB"
    );
    expected
}

/// Sends `msg` (over the limit) on `agent`'s stream and returns how the
/// controller ended the session, and its peak memory growth meanwhile in KiB.
async fn send_oversized(agent: &mut Agent, pid: u32, msg: pb::AgentMessage) -> (Status, u64) {
    let before = reset_peak_rss(pid);
    agent.tx.send(msg).await.unwrap();
    let ended = match agent.next().await {
        Ok(Some(u)) => panic!("an update after an oversized message: {u:?}"),
        Ok(None) => panic!("the stream ended without a status"),
        Err(status) => status,
    };
    (ended, proc_kib(pid, "VmHWM") - before)
}

/// An agent message over the controller's 4 MiB limit (`MAX_DECODING_MESSAGE`) is
/// refused by its gRPC decoder from the message's length prefix, before the body
/// is read: the session ends with `OutOfRange` `Error, decoded message length too
/// large: found N bytes, the limit is: 4194304 bytes` (N exact), which is also the
/// node's `last_error`, and the controller's peak memory grows by less than 16 MiB.
/// Two such messages, each in its own session: a report of 50,000 pods (4.7 MB)
/// and a NACK of the snapshot with 100,000 errors (what the agent sends for
/// 100,000 refused Services, 6.8 MB). Nothing of either reaches the status or
/// the intent: no reported workload, no pod name, the version unchanged, no
/// `last_nack` and no `nack_pending`; so the next session of a node whose NACK
/// was too big is sent the same snapshot again. The controller stays up and
/// serves a well-behaved session: snapshot ACKed, a small pod report merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_agent_messages_over_its_size_limit_and_keeps_serving() {
    let limit = dpu_controller::server::MAX_DECODING_MESSAGE as u64;
    let lab = Lab::new();
    let mut server = Server::start(&lab);
    let pid = server.child.id();
    let ca = lab.read("ca.pem");
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));

    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    let v1 = snap.version;
    agent.ack(v1, &snap.nonce).await;
    lab.wait_status("dpu-1 applied v1", |st| {
        node(st, "dpu-1")["applied_version"] == v1
    });

    // A pod report over the limit.
    let flood = pb::AgentMessage {
        msg: Some(Msg::LocalWorkloads(pb::LocalWorkloads {
            revision: 1,
            workloads: (0..50_000u32)
                .map(|i| {
                    let ip = std::net::Ipv4Addr::from(0x0a01_0000 + i).to_string();
                    pod(&format!("flood-{i}"), "dpu-1", &ip)
                })
                .collect(),
        })),
    };
    let expected = refused_as_oversized(&mut agent, pid, flood, limit, "pod report").await;
    let st = lab.wait_status("dpu-1 disconnected", |st| {
        node(st, "dpu-1")["connected"] == false
    });
    assert_eq!(
        node(&st, "dpu-1")["last_error"],
        expected.as_str(),
        "{st:#}"
    );
    assert_eq!(node(&st, "dpu-1")["reported_workloads"], 0, "{st:#}");
    assert_eq!(st["intent_version"], v1, "{st:#}");
    assert!(!st.to_string().contains("flood-"), "{st:#}");
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("session ended") && l.contains(&expected)),
        "{}",
        server.log()
    );

    // A NACK over the limit: the snapshot refused with one error per object.
    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    assert_eq!((snap.snapshot, snap.version), (true, v1));
    let nack = pb::AgentMessage {
        msg: Some(Msg::Nack(pb::Nack {
            version: snap.version,
            nonce: snap.nonce.clone(),
            errors: (0..100_000)
                .map(|i| pb::ObjectError {
                    key: Some(pb::ObjectKey {
                        kind: pb::Kind::Service as i32,
                        name: format!("s{i}"),
                    }),
                    field: "spec.clusterIPs".into(),
                    message: "at least one cluster IP is required".into(),
                })
                .collect(),
        })),
    };
    let expected = refused_as_oversized(&mut agent, pid, nack, limit, "NACK").await;
    let st = lab.wait_status("dpu-1 disconnected", |st| {
        node(st, "dpu-1")["connected"] == false
            && node(st, "dpu-1")["last_error"] == expected.as_str()
    });
    let n = node(&st, "dpu-1");
    assert_eq!(
        (&n["nack_pending"], &n["last_nack"], &n["applied_version"]),
        (&false.into(), &serde_json::Value::Null, &v1.into()),
        "{st:#}"
    );
    assert!(!st.to_string().contains("cluster IP"), "{st:#}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the controller exited"
    );

    // A well-behaved session: the same snapshot again (no NACK was recorded),
    // ACKed; a small pod report is merged into the next version.
    let ch = channel(server.port, &ca, id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    assert_eq!((snap.snapshot, snap.version), (true, v1));
    agent.ack(v1, &snap.nonce).await;
    report(&agent, 2, vec![pod("pod-a", "dpu-1", "10.1.1.30")]).await;
    let u = agent.update().await;
    assert!(u.version > v1 && u.base_version == v1, "{u:?}");
    assert_eq!(keys(&u), ["Workload/pod-a", "YusurService/web"]);
    agent.ack(u.version, &u.nonce).await;
    let v2 = u.version;
    let st = lab.wait_status("the small report applied", |st| {
        node(st, "dpu-1")["applied_version"] == v2
    });
    let n = node(&st, "dpu-1");
    assert_eq!(
        (&n["reported_workloads"], &n["last_error"], &n["connected"]),
        (&1.into(), &serde_json::Value::Null, &true.into()),
        "{st:#}"
    );
}
