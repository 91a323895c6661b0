//! End to end: the real binary serves intent over mTLS; a tonic client stands in
//! for the agent. The server is killed by its pid when a test ends, pass or fail.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use dpu_proto::v1 as pb;
use pb::agent_message::Msg;
use tonic::Code;

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
spec: {kind: Pod, vpc: blue, ip: 10.1.2.11, node: dpu-2, port: web-3-eth0}
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
    assert_eq!((u.version, u.base_version), (v1 + 1, v1));
    assert_eq!(keys(&u), ["Workload/web-3", "YusurService/web"]);
    assert!(u.deletes.is_empty());
    agent.ack(u.version, &u.nonce).await;

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
    assert_eq!((u.version, u.base_version), (v1 + 2, v1 + 1));
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
    // current version gets no snapshot.
    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut second = open(ch, "dpu-1", v3).await.unwrap();
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
    assert_eq!(u.version, v3 + 1);
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
    assert_eq!((u.version, u.base_version), (v3 + 2, 0));
    assert!(keys(&u).contains(&"Workload/web-4".to_string()));
    second.ack(u.version, &u.nonce).await;
    let st = lab.wait_status("applied after NACK", |st| {
        node(st, "dpu-1")["applied_version"] == v3 + 2
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
    assert_eq!((u.version, u.base_version), (v1 + 1, v1));
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
        node(st, "dpu-1")["reported_workloads"] == 1
            && node(st, "dpu-1")["applied_version"] == v1 + 1
    });
    assert_eq!(st["intent_version"], v1 + 1);
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
    assert_eq!(st["intent_version"], v1 + 1);
    assert_eq!(node(&st, "dpu-1")["reported_workloads"], 1);

    // Disconnecting keeps the pods (they still exist).
    drop(agent);
    let st = lab.wait_status("dpu-1 disconnected", |st| {
        node(st, "dpu-1")["connected"] == false
    });
    assert_eq!(node(&st, "dpu-1")["reported_workloads"], 1);
    assert_eq!(st["intent_version"], v1 + 1);

    // A restart (even a kill) keeps the pod and the version.
    drop(server);
    let server = Server::start(&lab);
    let pid = server.child.id();
    let st = lab.wait_status("the new controller", |st| st["controller_pid"] == pid);
    assert_eq!(st["intent_version"], v1 + 1, "{st:#}");
    assert_eq!(node(&st, "dpu-1")["reported_workloads"], 1);
    let ch = channel(server.port, &ca, id.clone()).await.unwrap();
    let mut agent = open(ch, "dpu-1", v1 + 1).await.unwrap();
    agent.nothing_for(Duration::from_millis(1000)).await;
    let ch = channel(server.port, &ca, id).await.unwrap();
    let mut fresh = open(ch, "dpu-1", 0).await.unwrap();
    let snap = fresh.update().await;
    assert!(snap.snapshot);
    assert_eq!(snap.version, v1 + 1);
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

    // None of these became a node; the real one still works.
    let st = lab.status_json();
    assert!(st["nodes"].as_object().unwrap().is_empty(), "{st:#}");
    let ch = channel(server.port, &ca, id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    assert!(agent.update().await.snapshot);
    drop(server);
}
