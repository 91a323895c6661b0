//! Authorization after authentication, replayed as an attacker would: real
//! `dpu-controller serve`, real mTLS sessions with certificates from its CA. A
//! node speaks only for itself (pods inside its block, verdicts for backends
//! it hosts), the host's certificate is not a node's, a revoked node's reports
//! go at once, and peer text is escaped before it reaches a terminal or a log.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use dpu_proto::v1 as pb;
use dpu_proto::v1::enrollment_client::EnrollmentClient;
use pb::agent_message::Msg;
use prost::Message;
use tonic::Code;

type Identity = Option<(String, String)>;

/// Issues a certificate (`--node` or `--host-shim`) and returns it with its key.
fn issue(lab: &Lab, flag: &str, name: &str) -> Identity {
    cli_ok(&[
        "issue",
        "--state-dir",
        s(&lab.state),
        flag,
        name,
        "--out",
        s(&lab.certs),
    ]);
    Some((
        lab.read(&format!("{name}.pem")),
        lab.read(&format!("{name}.key")),
    ))
}

/// A session for `node` that has taken and ACKed its snapshot.
async fn connected(server: &Server, lab: &Lab, id: Identity, node: &str) -> (Agent, u64) {
    let ch = channel(server.port, &lab.read("ca.pem"), id).await.unwrap();
    let mut agent = open(ch, node, 0).await.unwrap();
    let snap = agent.update().await;
    assert!(snap.snapshot);
    agent.ack(snap.version, &snap.nonce).await;
    lab.wait_status("the snapshot applied", |st| {
        node_of(st, node)["applied_version"] == snap.version
    });
    (agent, snap.version)
}

fn node_of<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &st["nodes"][name]
}

fn pod(name: &str, node: &str, ip: &str) -> pb::Workload {
    pb::Workload {
        name: name.into(),
        kind: pb::WorkloadKind::Pod as i32,
        vpc: "blue".into(),
        ip: ip.into(),
        ipv6: String::new(),
        mac: "02:00:00:00:01:42".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        node: node.into(),
        port: format!("{name}-eth0"),
    }
}

fn report(revision: u64, workloads: Vec<pb::Workload>) -> Msg {
    Msg::LocalWorkloads(pb::LocalWorkloads {
        revision,
        workloads,
    })
}

fn health(backends: &[(&str, &str)]) -> Msg {
    Msg::Health(pb::Health {
        unhealthy: backends
            .iter()
            .map(|(vpc, ip)| pb::BackendRef {
                vpc: vpc.to_string(),
                ip: ip.to_string(),
            })
            .collect(),
    })
}

/// The next Health within `wait`, as `vpc/ip` (Updates are skipped).
async fn next_health(agent: &mut Agent, wait: Duration) -> Option<BTreeSet<String>> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match agent.message_within(left).await?.msg {
            Some(pb::controller_message::Msg::Health(h)) => {
                return Some(
                    h.unhealthy
                        .iter()
                        .map(|b| format!("{}/{}", b.vpc, b.ip))
                        .collect(),
                )
            }
            _ => continue,
        }
    }
    None
}

/// Health messages until one equals `want`.
async fn health_becomes(agent: &mut Agent, want: &[&str]) -> Duration {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    loop {
        let got = next_health(agent, WAIT)
            .await
            .unwrap_or_else(|| panic!("no Health of {want:?}"));
        if got == want {
            return started.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_shims_certificate_and_the_controllers_names_are_not_nodes() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");

    // The host's certificate, made as docs/host-shim.md says: refused for a
    // session under its own name and under a node's.
    let shim = issue(&lab, "--host-shim", "host-dpu-1");
    for hello in ["host-dpu-1", "dpu-1"] {
        let e = refused(server.port, &ca, shim.clone(), hello).await;
        assert!(e.starts_with("PermissionDenied"), "{hello}: {e}");
        assert!(e.contains("is a host shim's certificate"), "{hello}: {e}");
    }
    // And for renewal: it could otherwise swap itself a node certificate.
    let ch = channel(server.port, &ca, shim.clone()).await.unwrap();
    let e = EnrollmentClient::new(ch)
        .renew(pb::RenewRequest {
            csr_pem: "irrelevant".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}\n{}", server.log());
    assert!(e.message().contains("host shim's certificate"), "{e:?}");

    // No node may take one of the controller's names: its certificate would
    // let it pose as the controller to every agent.
    for name in ["dpu-controller", "localhost"] {
        for args in [
            vec!["issue", "--node", name, "--out", s(&lab.certs)],
            vec!["token", "create", "--node", name],
        ] {
            let mut argv = args.clone();
            argv.extend(["--state-dir", s(&lab.state)]);
            let out = cli(&argv);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{argv:?} succeeded");
            assert!(err.contains("a name of the controller itself"), "{err}");
        }
    }
    assert!(server.log().contains("is a host shim's certificate"));
    let st = lab.wait_status("the status file", |_| true);
    assert!(st["nodes"].as_object().unwrap().is_empty(), "{st:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_pods_only_inside_its_own_block() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let dpu1 = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let (mut victim, v1) = connected(&server, &lab, dpu1, "dpu-1").await;

    // dpu-3 holds a block in red only. It reports `evil` into blue with
    // app=web (Service web on dpu-1 would balance to it), and a pod in blue
    // at an address inside dpu-1's block.
    let dpu3 = issue(&lab, "--node", "dpu-3");
    let (attacker, _) = connected(&server, &lab, dpu3, "dpu-3").await;
    attacker
        .send(report(
            1,
            vec![
                pod("evil", "dpu-3", "10.1.1.66"),
                pod("evil-2", "dpu-3", "10.1.3.66"),
            ],
        ))
        .await;
    let st = lab.wait_status("dpu-3's dropped reports", |st| {
        node_of(st, "dpu-3")["reported_errors"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    });
    let errors = node_of(&st, "dpu-3")["reported_errors"].to_string();
    assert!(
        errors
            .contains("Workload/evil: spec.vpc: node dpu-3 has no block in any Subnet of Vpc/blue"),
        "{errors}"
    );
    assert!(errors.contains("Workload/evil-2: spec.vpc"), "{errors}");
    assert_eq!(node_of(&st, "dpu-3")["reported_workloads"], 0);
    assert_eq!(st["intent_version"], v1, "no new version");
    // The other DPU is told nothing.
    victim.nothing_for(Duration::from_millis(1500)).await;
    let table = cli_ok(&["status", "--state-dir", s(&lab.state)]);
    assert!(
        table.contains("dpu-3: Workload/evil: spec.vpc: node dpu-3 has no block"),
        "{table}"
    );
    assert!(server.log().contains("Workload/evil: spec.vpc"));

    // dpu-1 itself, inside its block, is served as before.
    victim
        .send(report(1, vec![pod("pod-a", "dpu-1", "10.1.1.30")]))
        .await;
    let u = victim.update().await;
    assert_eq!(keys(&u), ["Workload/pod-a", "YusurService/web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_verdicts_count_only_for_backends_the_node_hosts() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let dpu1 = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let (mut victim, _) = connected(&server, &lab, dpu1, "dpu-1").await;
    let dpu2 = issue(&lab, "--node", "dpu-2");
    let (attacker, _) = connected(&server, &lab, dpu2, "dpu-2").await;
    health_becomes(&mut victim, &[]).await;

    // dpu-2 calls web-1 (on dpu-1) and web-2 (its own) unhealthy: only its
    // own verdict reaches dpu-1.
    attacker
        .send(health(&[("blue", "10.1.1.10"), ("blue", "10.1.2.10")]))
        .await;
    health_becomes(&mut victim, &["blue/10.1.2.10"]).await;
    let st = lab.wait_status("the refused verdict", |st| {
        node_of(st, "dpu-2")["refused_health"] == 1
    });
    assert_eq!(
        node_of(&st, "dpu-2")["refused_health_examples"],
        serde_json::json!(["blue/10.1.1.10"])
    );
    let table = cli_ok(&["status", "--state-dir", s(&lab.state)]);
    assert!(
        table.contains("health verdicts that do not count")
            && table.contains("dpu-2: 1 (e.g. blue/10.1.1.10)"),
        "{table}"
    );
    assert!(server.log().contains("do not count"));

    // Only web-1's verdict, over and over: nothing counts, nothing is sent.
    attacker.send(health(&[("blue", "10.1.1.10")])).await;
    health_becomes(&mut victim, &[]).await;
    attacker.send(health(&[("blue", "10.1.1.10")])).await;
    assert_eq!(
        next_health(&mut victim, Duration::from_millis(800)).await,
        None
    );

    // When web-2 moves to dpu-1, dpu-2's verdict for it stops counting.
    attacker.send(health(&[("blue", "10.1.2.10")])).await;
    health_becomes(&mut victim, &["blue/10.1.2.10"]).await;
    let moved = data("20-workloads.yaml").replace(
        "node: dpu-2\n  port: web-2-eth0",
        "node: dpu-1\n  port: web-2-eth0",
    );
    assert_ne!(moved, data("20-workloads.yaml"), "the fixture changed");
    write_manifest(&lab.intent, "20-workloads.yaml", &moved);
    health_becomes(&mut victim, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_node_drops_its_pods_and_verdicts_at_once() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let dpu1 = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let (mut watcher, _) = connected(&server, &lab, dpu1.clone(), "dpu-1").await;
    let dpu2 = issue(&lab, "--node", "dpu-2");
    let (node2, _) = connected(&server, &lab, dpu2.clone(), "dpu-2").await;

    node2
        .send(report(1, vec![pod("pod-b", "dpu-2", "10.1.2.30")]))
        .await;
    let u = watcher.update().await;
    assert!(keys(&u).contains(&"Workload/pod-b".to_string()), "{u:?}");
    watcher.ack(u.version, &u.nonce).await;
    // (`update` skips Health messages: the verdict goes after it.)
    node2.send(health(&[("blue", "10.1.2.10")])).await;
    health_becomes(&mut watcher, &["blue/10.1.2.10"]).await;

    // Its reports outlive its session (fail-static) ...
    drop(node2);
    lab.wait_status("dpu-2 gone", |st| {
        node_of(st, "dpu-2")["connected"] == false
    });

    // ... until it is revoked: then they go, on every agent.
    let revoked_at = Instant::now();
    cli_ok(&[
        "node",
        "revoke",
        "--state-dir",
        s(&lab.state),
        "--node",
        "dpu-2",
    ]);
    // Both arrive, in either order: the verdicts at once, the pods with the
    // next version.
    let (mut verdicts_gone, mut pods_gone) = (None, None);
    while verdicts_gone.is_none() || pods_gone.is_none() {
        let m = watcher
            .message_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("verdicts gone {verdicts_gone:?}, pods gone {pods_gone:?}"));
        match m.msg {
            Some(pb::controller_message::Msg::Health(h)) if h.unhealthy.is_empty() => {
                verdicts_gone = Some(revoked_at.elapsed())
            }
            Some(pb::controller_message::Msg::Update(u))
                if u.deletes
                    .iter()
                    .any(|k| k.name == "pod-b" && k.kind == pb::Kind::Workload as i32) =>
            {
                pods_gone = Some(revoked_at.elapsed())
            }
            _ => {}
        }
    }
    let (took, gone) = (verdicts_gone.unwrap(), pods_gone.unwrap());
    eprintln!("after `node revoke`: verdicts gone in {took:?}, pods in {gone:?}");
    assert!(gone < Duration::from_secs(5), "{gone:?}");
    let st = lab.wait_status("dpu-2's pods dropped", |st| {
        node_of(st, "dpu-2")["reported_workloads"] == 0
    });
    assert!(
        node_of(&st, "dpu-2")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked")),
        "{st:#}"
    );

    // A restart does not bring them back.
    drop(server);
    let server = Server::start(&lab);
    let ch = channel(server.port, &lab.read("ca.pem"), dpu1)
        .await
        .unwrap();
    let mut fresh = open(ch, "dpu-1", 0).await.unwrap();
    let snap = fresh.update().await;
    assert!(snap.snapshot);
    assert!(!keys(&snap).contains(&"Workload/pod-b".to_string()));
    // And the revoked node cannot come back to say it again.
    let e = refused(server.port, &lab.read("ca.pem"), dpu2, "dpu-2").await;
    assert!(e.starts_with("PermissionDenied"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_text_reaches_the_terminal_and_the_log_escaped_and_bounded() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let dpu1 = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));

    // An agent version of 100,000 bytes is refused, naming the field.
    let ch = channel(server.port, &ca, dpu1.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            node: "dpu-1".into(),
            last_applied_version: 0,
            agent_version: "v".repeat(100_000),
            store_id: String::new(),
        })),
    })
    .await
    .unwrap();
    let mut client = pb::agent_control_client::AgentControlClient::new(ch);
    let mut stream = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("Hello.agent_version: 100000 bytes"),
        "{e:?}"
    );

    // So is a store id of 100,000 bytes.
    let ch = channel(server.port, &ca, dpu1.clone()).await.unwrap();
    let mut agent = open_at(ch, "dpu-1", 1, &"s".repeat(100_000)).await.unwrap();
    let e = agent.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("Hello.store_id: 100000 bytes, at most 128"),
        "{e:?}"
    );

    // A NACK whose text clears the screen and forges a table row.
    let (agent, _) = connected(&server, &lab, dpu1, "dpu-1").await;
    let hostile = "boom\x1b[2J\x1b[H\ndpu-9  yes  1  1  0  -  -  0  forged";
    // An update to NACK: a reported pod makes a new version.
    agent
        .send(report(1, vec![pod("pod-a", "dpu-1", "10.1.1.30")]))
        .await;
    let mut agent = agent;
    let u = agent.update().await;
    agent
        .send(Msg::Nack(pb::Nack {
            version: u.version,
            nonce: u.nonce.clone(),
            errors: vec![pb::ObjectError {
                key: None,
                field: "switch".into(),
                message: hostile.into(),
            }],
        }))
        .await;
    // And an Ack with a nonce that forges a log line.
    agent
        .send(Msg::Ack(pb::Ack {
            version: 999,
            nonce: "x\nINFO forged line".into(),
        }))
        .await;
    lab.wait_status("the NACK", |st| {
        node_of(st, "dpu-1")["nack_pending"] == true
    });
    for args in [
        vec!["status", "--state-dir", s(&lab.state)],
        vec!["status", "--state-dir", s(&lab.state), "--node", "dpu-1"],
    ] {
        let out = cli_ok(&args);
        assert!(!out.contains('\x1b'), "raw escape in {args:?}:\n{out}");
        assert!(out.contains("boom\\x1b[2J\\x1b[H\\ndpu-9"), "{out}");
        assert!(
            !out.lines().any(|l| l.starts_with("dpu-9")),
            "a forged row:\n{out}"
        );
    }
    let log = server.log();
    assert!(!log.contains('\x1b'), "raw escape in the log");
    assert!(!log.lines().any(|l| l.starts_with("INFO forged")), "{log}");
    assert!(log.contains("x\\nINFO forged line"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flipping_its_verdicts_cannot_flood_the_other_agents() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let dpu1 = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let (mut victim, _) = connected(&server, &lab, dpu1, "dpu-1").await;
    let dpu2 = issue(&lab, "--node", "dpu-2");
    let (attacker, _) = connected(&server, &lab, dpu2, "dpu-2").await;
    health_becomes(&mut victim, &[]).await;

    // 100 reports in about 2 s, alternating: 10,000 backends dpu-2 does not
    // host, with and without its own web-2. Before authorization each one went
    // to every agent whole.
    const FLIPS: usize = 100;
    const JUNK: usize = 10_000;
    let junk: Vec<(String, String)> = (0..JUNK)
        .map(|i| {
            (
                "blue".to_string(),
                format!("10.1.{}.{}", 100 + i / 250, 1 + i % 250),
            )
        })
        .collect();
    let mut sent_bytes = 0usize;
    let sender = async {
        for i in 0..FLIPS {
            let mut set: Vec<(&str, &str)> = junk
                .iter()
                .map(|(v, ip)| (v.as_str(), ip.as_str()))
                .collect();
            if i % 2 == 0 {
                set.push(("blue", "10.1.2.10"));
            }
            let msg = health(&set);
            sent_bytes += pb::AgentMessage {
                msg: Some(msg.clone()),
            }
            .encoded_len();
            attacker.send(msg).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let started = Instant::now();
    let mut received = (0usize, 0usize); // Health messages, bytes
    let receiver = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Until the flips are over and the last one has had time to arrive.
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(m) = victim
                .message_within(left.min(Duration::from_millis(1500)))
                .await
            else {
                break;
            };
            if let Some(pb::controller_message::Msg::Health(_)) = &m.msg {
                received.0 += 1;
                received.1 += m.encoded_len();
            }
        }
    };
    tokio::join!(sender, receiver);
    let elapsed = started.elapsed();
    let per_message_before = pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Health(pb::Health {
            unhealthy: junk
                .iter()
                .map(|(vpc, ip)| pb::BackendRef {
                    vpc: vpc.clone(),
                    ip: ip.clone(),
                })
                .collect(),
        })),
    }
    .encoded_len();
    eprintln!(
        "fan-out: dpu-2 sent {FLIPS} Health reports ({sent_bytes} bytes) in {elapsed:?}; dpu-1 received {} Health messages, {} bytes (without authorization and coalescing: up to {FLIPS} × {per_message_before} = {} bytes)",
        received.0,
        received.1,
        FLIPS * per_message_before
    );
    // At most one per 250 ms, each naming at most web-2.
    let bound = (elapsed.as_millis() / 250) as usize + 2;
    assert!(received.0 <= bound, "{} > {bound}", received.0);
    assert!(received.1 <= received.0 * 64, "{} bytes", received.1);
    let st = lab.wait_status("the refusals", |st| {
        node_of(st, "dpu-2")["refused_health"] == JUNK
    });
    assert_eq!(
        node_of(&st, "dpu-2")["refused_health_examples"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // The log says so at a bounded rate, not once per report.
    let lines = server
        .log()
        .lines()
        .filter(|l| l.contains("do not count"))
        .count();
    assert!(lines <= 2, "{lines} log lines");
}
