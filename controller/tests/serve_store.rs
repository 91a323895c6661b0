//! `serve` on its store: the intent directory imported into it, objects that
//! `apply` writes (from another process) reaching a connected agent, on the
//! embedded store and on a real etcd; and etcd down: the last intent stays in
//! force, the status says `unavailable`, writes are refused, and when etcd is
//! back the watch resumes and changes flow again.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use dpu_proto::v1 as pb;
use test_support::etcd::TestEtcd;

fn workload(i: u32) -> String {
    format!(
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {{name: extra-{i}, labels: {{app: other}}}}\nspec: {{kind: VM, vpc: blue, ip: 10.1.1.{}, mac: \"02:00:00:00:09:{i:02x}\", node: dpu-1, port: extra-{i}}}\n",
        150 + i
    )
}

/// `dpu-controller apply -f -` with `store` args, `text` on stdin.
fn apply(store: &[String], text: &str) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(["apply", "-f", "-"])
        .args(store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The agent's snapshot holds the directory's objects; an object applied by
/// another process arrives as an increment, and its delete as one too.
async fn directory_and_apply_reach_the_agent(lab: &Lab, server: &Server, store: &[String]) {
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(server.port, &lab.read("ca.pem"), id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    assert!(snap.snapshot);
    assert!(
        keys(&snap).contains(&"YusurService/web".to_string()),
        "{:?}",
        keys(&snap)
    );
    agent.ack(snap.version, &snap.nonce).await;

    let out = apply(store, &workload(1));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Workload/extra-1 created\n"
    );
    let u = agent.update().await;
    assert!(!u.snapshot && u.base_version == snap.version, "{u:?}");
    assert!(
        keys(&u).contains(&"Workload/extra-1".to_string()),
        "{:?}",
        keys(&u)
    );
    agent.ack(u.version, &u.nonce).await;

    let mut del = Command::new(bin());
    del.args(["delete", "workload", "extra-1"]).args(store);
    let out = del.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = agent.update().await;
    assert!(d.deletes.iter().any(|k| k.name == "extra-1"), "{d:?}");
    agent.ack(d.version, &d.nonce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_takes_applies_from_another_process() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let store = vec!["--state-dir".to_string(), s(&lab.state).to_string()];
    directory_and_apply_reach_the_agent(&lab, &server, &store).await;
    let st = lab.wait_status("the store in the status", |s| s["store"]["state"] == "ok");
    assert!(
        st["store"]["backend"]
            .as_str()
            .unwrap()
            .starts_with("local:"),
        "{st:#}"
    );
    assert_eq!(st["store"]["state"], "ok");

    // A node record that cannot be read refuses new sessions of its node
    // (revocation fails closed); fixed, the node is admitted again.
    let kv = dpu_controller::kv::LocalStore::open(&lab.state.join("store")).unwrap();
    let put = |v: &str| {
        kv.txn(dpu_controller::kv::Txn::new().put("nodes/dpu-1", v))
            .unwrap()
    };
    let (_, good) = kv.get("nodes/dpu-1").unwrap();
    let good = good.map(|e| e.value).expect("issue --node recorded dpu-1");
    put("{not a record");
    let id = || Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ca = lab.read("ca.pem");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ch = channel(server.port, &ca, id()).await.unwrap();
        match open(ch, "dpu-1", 0).await {
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert_eq!(
                    e.message(),
                    "cannot check whether node dpu-1 is revoked; try again"
                );
                break;
            }
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "a corrupt record still admits"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(server
        .log()
        .contains("store key nodes/dpu-1: not a node record"));
    put(&good);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ch = channel(server.port, &ca, id()).await.unwrap();
        if let Ok(mut agent) = open(ch, "dpu-1", 0).await {
            agent.update().await;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never admitted again");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_etcd_imports_the_directory_and_follows_apply() {
    let lab = Lab::new();
    let etcd = TestEtcd::start(&lab.state.with_file_name("etcd"));
    let store = etcd_args(&etcd);
    let extra: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start_with(&lab, &extra);
    directory_and_apply_reach_the_agent(&lab, &server, &store).await;
    let st = lab.wait_status("the store in the status", |s| s["store"]["state"] == "ok");
    assert_eq!(st["store"]["backend"], format!("etcd:{}", etcd.url));
    assert_eq!(st["store"]["state"], "ok");
    // The directory's objects are in etcd with the directory as their source.
    let out = Command::new(bin())
        .args(["get", "service", "web", "-o", "json"])
        .args(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_last_intent_in_force_and_changes_flow_when_it_is_back() {
    let lab = Lab::new();
    let mut etcd = TestEtcd::start(&lab.state.with_file_name("etcd"));
    let store = etcd_args(&etcd);
    let extra: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start_with(&lab, &extra);
    let id = || Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(server.port, &lab.read("ca.pem"), id())
        .await
        .unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    agent.ack(snap.version, &snap.nonce).await;

    etcd.kill();
    lab.wait_status("the store unavailable", |s| {
        s["store"]["state"] == "unavailable"
    });
    let text = cli_ok(&["status", "--state-dir", s(&lab.state)]);
    assert!(
        text.contains(&format!("store: etcd:{} unavailable", etcd.url))
            && text.contains("the last intent read stays in force"),
        "{text}"
    );
    // Writes are refused, clearly.
    let out = apply(&store, &workload(2));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("store unavailable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Fail-static: the session stays, and a new one gets the same intent.
    drop(agent);
    let ch = channel(server.port, &lab.read("ca.pem"), id())
        .await
        .unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let again = agent.update().await;
    assert_eq!((again.version, keys(&again)), (snap.version, keys(&snap)));
    agent.ack(again.version, &again.nonce).await;

    // etcd back: the watch resumes and a change reaches the agent.
    etcd.restart();
    lab.wait_status("the store ok again", |s| s["store"]["state"] == "ok");
    let out = apply(&store, &workload(3));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let u = agent.update().await;
    assert!(
        keys(&u).contains(&"Workload/extra-3".to_string()),
        "{:?}",
        keys(&u)
    );
    assert!(server
        .log()
        .contains("the last intent read stays in force, retrying"));
}

/// `status --json` of a state directory, once `pred` holds.
fn wait_state(state: &std::path::Path, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = cli(&["status", "--state-dir", s(state), "--json"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if pred(&v) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Two replicas on one etcd: one leads and imports the directory, the other
/// serves what the store holds; a change of the directory reaches an agent
/// connected to the follower. The leader killed -9, the follower takes over
/// within the lease and imports the next change itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_the_follower_takes_over() {
    let lab = Lab::new();
    let etcd = TestEtcd::start(&lab.state.with_file_name("etcd"));
    let store = etcd_args(&etcd);
    let extra: Vec<&str> = store.iter().map(String::as_str).collect();
    let mut a = Server::start_with(&lab, &extra);
    wait_state(&lab.state, "A leading", |v| v["store"]["leader"] == true);
    // B: its own state directory with the same CA.
    let b_state = lab.state.with_file_name("state-b");
    std::fs::create_dir_all(&b_state).unwrap();
    let copy = Command::new("cp")
        .args(["-a", &format!("{}/pki", s(&lab.state)), s(&b_state)])
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::remove_file(b_state.join("pki/server.pem")).ok();
    std::fs::remove_file(b_state.join("pki/server.key")).ok();
    let b = Server::start_at(&lab, &b_state, &extra);
    wait_state(&b_state, "B serving as a follower", |v| {
        v["store"]["state"] == "ok" && v["store"]["leader"] == false
    });

    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(b.port, &lab.read("ca.pem"), id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    assert!(keys(&snap).contains(&"YusurService/web".to_string()));
    agent.ack(snap.version, &snap.nonce).await;

    // A change of the directory: A imports it, B's agent gets it.
    write_manifest(&lab.intent, "40-extra.yaml", &workload(4));
    let u = agent.update().await;
    assert!(
        keys(&u).contains(&"Workload/extra-4".to_string()),
        "{:?}",
        keys(&u)
    );
    agent.ack(u.version, &u.nonce).await;
    assert!(
        !b.log().contains("intent directory imported"),
        "the follower imported: {}",
        b.log()
    );

    // A pod that dpu-2 reports to A reaches dpu-1's agent on B: the set goes
    // through the store (reported/dpu-2).
    cli_ok(&[
        "issue",
        "--state-dir",
        s(&lab.state),
        "--node",
        "dpu-2",
        "--out",
        s(&lab.certs),
    ]);
    let id2 = Some((lab.read("dpu-2.pem"), lab.read("dpu-2.key")));
    let ch = channel(a.port, &lab.read("ca.pem"), id2).await.unwrap();
    let mut dpu2 = open(ch, "dpu-2", 0).await.unwrap();
    let snap2 = dpu2.update().await;
    dpu2.ack(snap2.version, &snap2.nonce).await;
    let pod = pb::Workload {
        name: "pod-b".into(),
        kind: pb::WorkloadKind::Pod as i32,
        vpc: "blue".into(),
        ip: "10.1.2.30".into(),
        ipv6: String::new(),
        mac: "02:00:00:00:02:1e".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        node: "dpu-2".into(),
        port: "pod-b-eth0".into(),
    };
    dpu2.send(pb::agent_message::Msg::LocalWorkloads(pb::LocalWorkloads {
        revision: 1,
        workloads: vec![pod],
    }))
    .await;
    let u = agent.update().await;
    let web = u
        .upserts
        .iter()
        .find_map(|o| match &o.object {
            Some(pb::object::Object::Service(s)) if s.name == "web" => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no web in {:?}", keys(&u)));
    assert!(
        web.backends.iter().any(|b| b.ip == "10.1.2.30"),
        "{:?}",
        web.backends
    );
    agent.ack(u.version, &u.nonce).await;

    // A verdict dpu-2 gives A (a backend it hosts) reaches dpu-1's agent on B:
    // the claim goes through the store (health/dpu-2).
    dpu2.send(pb::agent_message::Msg::Health(pb::Health {
        unhealthy: vec![pb::BackendRef {
            vpc: "blue".into(),
            ip: "10.1.2.10".into(),
        }],
    }))
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match agent.message_within(left).await {
            Some(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Health(h)),
            }) if h.unhealthy.iter().any(|b| b.ip == "10.1.2.10") => break,
            Some(_) => continue,
            None => panic!("dpu-1 on B never heard dpu-2's verdict given to A"),
        }
    }

    // Every replica's status is in the store: `status --etcd` shows both, the
    // leader marked, and each node as the replica it is connected to sees it.
    let mut args = vec!["status", "--json"];
    args.extend(extra.iter().copied());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let whole = loop {
        let out = cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let replicas = v["replicas"].as_array().map_or(0, |r| r.len());
        if replicas == 2
            && v["nodes"]["dpu-1"]["connected"] == true
            && v["nodes"]["dpu-2"]["connected"] == true
        {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "status --etcd: {v:#}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let leaders: Vec<_> = whole["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.as_str().unwrap().ends_with(" (leader)"))
        .collect();
    assert_eq!(leaders.len(), 1, "{whole:#}");
    let mut args = vec!["status"];
    args.extend(extra.iter().copied());
    let table = String::from_utf8(cli(&args).stdout).unwrap();
    assert!(
        table.starts_with("controller replicas (from the store): "),
        "{table}"
    );
    drop(dpu2);

    // Versions are the store's: A and B give this intent the same version,
    // so an agent at it that moves to A is sent nothing.
    let v = u.version;
    wait_state(&lab.state, "A at the same version", |st| {
        st["intent_version"] == v
    });
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(a.port, &lab.read("ca.pem"), id).await.unwrap();
    let mut moved = open_at(ch, "dpu-1", v, &u.store_id).await.unwrap();
    moved
        .nothing_for(std::time::Duration::from_millis(1000))
        .await;
    drop(moved);

    // A dies; B leads within the lease and imports the next change.
    let killed = std::time::Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_state(&b_state, "B leading", |v| v["store"]["leader"] == true);
    println!("B leads {:?} after A was killed", killed.elapsed());
    write_manifest(&lab.intent, "41-extra.yaml", &workload(5));
    let u = agent.update().await;
    assert!(
        keys(&u).contains(&"Workload/extra-5".to_string()),
        "{:?}",
        keys(&u)
    );
    assert!(b.log().contains("this replica leads"), "{}", b.log());
}

/// An agent that comes back at a version the controller still holds gets the
/// increment from there, not a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_a_little_behind_gets_an_increment_not_a_snapshot() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let id = || Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(server.port, &lab.read("ca.pem"), id())
        .await
        .unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    agent.ack(snap.version, &snap.nonce).await;
    drop(agent);
    write_manifest(&lab.intent, "40-extra.yaml", &workload(6));
    let st = lab.wait_status("a new version", |st| {
        st["intent_version"].as_u64().unwrap() > snap.version
    });
    let ch = channel(server.port, &lab.read("ca.pem"), id())
        .await
        .unwrap();
    let mut agent = open_at(ch, "dpu-1", snap.version, &snap.store_id)
        .await
        .unwrap();
    let u = agent.update().await;
    assert!(!u.snapshot, "{u:?}");
    assert_eq!(
        (u.base_version, u.version),
        (snap.version, st["intent_version"].as_u64().unwrap())
    );
    assert_eq!(keys(&u), ["Workload/extra-6"]);
}

/// Tokens and node records live in the store, so the CLI works against etcd
/// from anywhere and every replica acts on them:
/// - a replica without the CA key (B) refuses Enroll with `unavailable`,
///   and the same token then enrolls through A, which has it;
/// - a revocation made with `node revoke --etcd` ends the node's session held
///   on B within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_and_revocation_across_replicas() {
    use dpu_proto::v1::enrollment_client::EnrollmentClient;
    let lab = Lab::new();
    let etcd = TestEtcd::start(&lab.state.with_file_name("etcd"));
    let store = etcd_args(&etcd);
    let extra: Vec<&str> = store.iter().map(String::as_str).collect();
    let a = Server::start_with(&lab, &extra);
    wait_state(&lab.state, "A leading", |v| v["store"]["leader"] == true);
    // B: the CA certificate and a serving certificate, but no CA key.
    let b_state = lab.state.with_file_name("state-b");
    std::fs::create_dir_all(&b_state).unwrap();
    let copy = Command::new("cp")
        .args(["-a", &format!("{}/pki", s(&lab.state)), s(&b_state)])
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::remove_file(b_state.join("pki/ca.key")).unwrap();
    let b = Server::start_at(&lab, &b_state, &extra);
    wait_state(&b_state, "B serving", |v| v["store"]["state"] == "ok");
    assert!(
        b.log().contains("this replica holds no CA key"),
        "{}",
        b.log()
    );

    // A token made from the command line, against etcd only.
    let mut args = vec!["token", "create", "--node", "dpu-7"];
    args.extend(extra.iter().copied());
    let token = cli_ok(&args).trim().to_string();
    let ca = lab.read("ca.pem");
    let (key, csr) = test_support::pki::csr("dpu-7", &["dpu-7"]);
    let request = || pb::EnrollRequest {
        node: "dpu-7".into(),
        token: token.clone(),
        csr_pem: csr.clone(),
    };
    let ch = channel(b.port, &ca, None).await.unwrap();
    let refused = EnrollmentClient::new(ch)
        .enroll(request())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("holds no CA key"), "{refused:?}");
    let ch = channel(a.port, &ca, None).await.unwrap();
    let answer = EnrollmentClient::new(ch)
        .enroll(request())
        .await
        .unwrap()
        .into_inner();
    let mut args = vec!["token", "list", "--json"];
    args.extend(extra.iter().copied());
    let tokens: serde_json::Value = serde_json::from_str(&cli_ok(&args)).unwrap();
    assert_eq!(tokens[0]["state"], "used", "{tokens:#}");

    // The enrolled node's session on B (which verifies, though it cannot issue).
    let id = Some((answer.cert_pem.clone(), key.serialize_pem()));
    let ch = channel(b.port, &ca, id.clone()).await.unwrap();
    let mut agent = open(ch, "dpu-7", 0).await.unwrap();
    let snap = agent.update().await;
    agent.ack(snap.version, &snap.nonce).await;
    let mut args = vec!["node", "list", "--json"];
    args.extend(extra.iter().copied());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let nodes: serde_json::Value = serde_json::from_str(&cli_ok(&args)).unwrap();
        let n = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "dpu-7");
        let n = n.unwrap_or_else(|| panic!("no dpu-7 in {nodes:#}"));
        assert_eq!(n["state"], "enrolled");
        if n["connected"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{nodes:#}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Revoked from the command line, against etcd: B ends the session.
    let mut args = vec!["node", "revoke", "--node", "dpu-7"];
    args.extend(extra.iter().copied());
    let revoked_at = std::time::Instant::now();
    let out = cli_ok(&args);
    assert!(out.contains("revoked"), "{out}");
    let ended = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(2), agent.next()).await {
            Err(_) => panic!("the session on B outlived the revocation by 2 s"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
        }
    };
    let took = revoked_at.elapsed();
    println!("revocation through the store ended the session on B in {took:?}");
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
    assert!(
        ended.message().contains("node dpu-7 is revoked"),
        "{ended:?}"
    );
    assert!(took < std::time::Duration::from_secs(2));
    // And a new session is refused on either replica.
    for port in [a.port, b.port] {
        let ch = channel(port, &ca, id.clone()).await.unwrap();
        let e = open(ch, "dpu-7", 0).await.err().expect("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
}

/// An agent that comes from a replica further along (its version, in this
/// store's numbering, is ahead of this replica's) is never sent a version
/// that goes backwards: the replica waits for its store to catch up, and
/// refuses the session (`UNAVAILABLE`, so the agent tries another) if it does
/// not within `CATCH_UP`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_ahead_of_this_replica_is_never_sent_a_version_backwards() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let id = || Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ca = lab.read("ca.pem");
    let ch = channel(server.port, &ca, id()).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    drop(agent);

    // One version ahead, and the store gets there meanwhile: the update is
    // at or past the agent's version.
    let ch = channel(server.port, &ca, id()).await.unwrap();
    let ahead = snap.version + 1;
    let mut agent = open_at(ch, "dpu-1", ahead, &snap.store_id).await.unwrap();
    write_manifest(&lab.intent, "40-extra.yaml", &workload(7));
    let u = agent.update().await;
    assert!(u.version >= ahead, "{} < {ahead}", u.version);
    drop(agent);

    // Far ahead: refused after the wait, with nothing sent.
    let ch = channel(server.port, &ca, id()).await.unwrap();
    let started = std::time::Instant::now();
    let mut agent = open_at(ch, "dpu-1", u.version + 1000, &snap.store_id)
        .await
        .unwrap();
    let e = match agent.next().await {
        Err(e) => e,
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("behind the agent's"), "{e:?}");
    let waited = started.elapsed();
    assert!(
        waited >= dpu_controller::hub::CATCH_UP && waited < dpu_controller::hub::CATCH_UP * 3,
        "{waited:?}"
    );
    // Another numbering (a replaced store) is not "ahead": a snapshot at once.
    let ch = channel(server.port, &ca, id()).await.unwrap();
    let mut agent = open_at(ch, "dpu-1", u.version + 1000, "other/rev")
        .await
        .unwrap();
    assert!(agent.update().await.snapshot);
}

/// Compaction beyond a replica's watch revision, with a delete inside the
/// gap. The replica is paused (SIGSTOP) while 600 other writes (38 MB) fill
/// what its watch stream can buffer, so etcd puts its watcher aside; then an
/// object is deleted and the history compacted past the delete. When the
/// replica runs again etcd tells its watch the revision is gone: it re-lists,
/// marks and sweeps, and the agent connected to it gets the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_inside_a_compacted_gap_reaches_the_agent() {
    use dpu_controller::kv::{EtcdStore, Store, Txn};
    let lab = Lab::new();
    let etcd = TestEtcd::start(&lab.state.with_file_name("etcd"));
    let store = etcd_args(&etcd);
    let extra: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start_with(&lab, &extra);
    wait_state(&lab.state, "leading", |v| v["store"]["leader"] == true);
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(server.port, &lab.read("ca.pem"), id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    agent.ack(snap.version, &snap.nonce).await;
    let out = apply(&store, &workload(8));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let u = agent.update().await;
    assert!(keys(&u).contains(&"Workload/extra-8".to_string()));
    agent.ack(u.version, &u.nonce).await;

    let kv = Store::Etcd(
        EtcdStore::connect(common::etcd_options(&etcd, "/dpu/"))
            .await
            .unwrap(),
    );
    let pid = server.child.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    // More events than etcd queues for one watcher (128), and more bytes than
    // the sockets and HTTP/2 windows hold.
    let value = "x".repeat(64 << 10);
    for i in 0..600 {
        kv.txn(Txn::new().put(format!("fill/{i}"), value.clone()))
            .await
            .unwrap();
    }
    let mut args = vec!["delete", "Workload", "extra-8"];
    args.extend(extra.iter().copied());
    cli_ok(&args);
    let (rev, _) = kv.get("intent/.guard").await.unwrap();
    kv.compact(rev).await.unwrap();
    kv.txn(Txn::new().delete_prefix("fill/")).await.unwrap();
    signal("-CONT");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(u) = tokio::time::timeout(left, agent.update()).await else {
            panic!("the delete never reached the agent: {}", server.log());
        };
        agent.ack(u.version, &u.nonce).await;
        let gone = u.deletes.iter().any(|k| k.name == "extra-8")
            || (u.snapshot && !keys(&u).contains(&"Workload/extra-8".to_string()));
        if gone {
            break;
        }
    }
    let compacted = "the watch's revision was compacted; re-listing";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.log().contains(compacted) {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch was not compacted (etcd kept up with it): {}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
