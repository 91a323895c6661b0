//! The agent against an in-process fake controller (real mTLS, real agent binary,
//! real OVS and traffic): updates the agent must refuse are NACKed with reasons that
//! name the object and field, and the data plane stays exactly as it was; a
//! controller whose server certificate has expired is not talked to at all.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use dpu_lab::fake_controller::{issue_server_identity, reply, Session};
use dpu_lab::fixture::{tail, Lab, NODE};
use dpu_lab::objects::{service, update, vpc_a, workload};
use dpu_lab::process::wait_until;
use dpu_model::*;
use dpu_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

/// Serves the fake controller (`dpu_lab::fake_controller`) with the real
/// controller's bound on agent messages.
fn serve_fake(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    identity: (Vec<u8>, Vec<u8>),
    ca: Vec<u8>,
    sessions: mpsc::Sender<Session>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    dpu_lab::fake_controller::serve(
        rt,
        addr,
        identity,
        ca,
        dpu_controller::server::MAX_DECODING_MESSAGE,
        sessions,
        stop,
    )
}

fn nack_text(r: &pb::agent_message::Msg) -> Result<String> {
    match r {
        pb::agent_message::Msg::Nack(n) => Ok(n
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{:?}|{}|{}",
                    e.key.as_ref().map(|k| k.name.clone()),
                    e.field,
                    e.message
                )
            })
            .collect::<Vec<_>>()
            .join("\n")),
        other => bail!("expected a NACK, got {other:?}"),
    }
}

#[test]
fn agent_nacks_what_it_cannot_apply_and_keeps_the_data_plane() -> Result<()> {
    let mut lab = Lab::new("nack")?;
    lab.add_host("client", "10.0.1.2/24", "0a:00:00:00:01:02", "10.0.1.1")?;
    lab.add_host("web-1", "10.0.1.11/24", "0a:00:00:00:01:0b", "10.0.1.1")?;
    lab.echo("web-1", &[8080], &[])?;
    let (cert, key, ca) = issue_server_identity(&lab)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stx, mut srx) = mpsc::channel(4);
    let addr: std::net::SocketAddr = lab.controller_addr.parse()?;
    serve_fake(&rt, addr, (cert, key), ca, stx, std::future::pending());
    lab.start_agent()?;

    let mut base = vpc_a();
    base.extend([
        workload("client", 2),
        workload("web-1", 11),
        service("web", 10, &[Ipv4Addr::new(10, 0, 1, 11)]),
    ]);
    let flows_after_v1 = rt.block_on(async {
        let (mut inbound, out) = tokio::time::timeout(Duration::from_secs(30), srx.recv())
            .await
            .map_err(|_| anyhow!("the agent never connected:\n{}", lab.agent_log()))?
            .ok_or_else(|| anyhow!("server gone"))?;
        let hello = inbound
            .message()
            .await?
            .ok_or_else(|| anyhow!("no hello"))?;
        match hello.msg {
            Some(pb::agent_message::Msg::Hello(h)) => {
                assert_eq!((h.node.as_str(), h.last_applied_version), (NODE, 0));
            }
            other => bail!("first message was not Hello: {other:?}"),
        }
        out.send(Ok(update(1, 0, true, base.clone()))).await?;
        match reply(&mut inbound).await? {
            pb::agent_message::Msg::Ack(a) => assert_eq!((a.version, a.nonce.as_str()), (1, "n1")),
            other => bail!("v1 not acked: {other:?}"),
        }
        let flows = lab.flows()?;
        let groups = lab.groups()?;
        let ok = lab.client("client", "10.96.0.10:80", "tcp", 10)?;
        assert_eq!(ok.count_for("web-1"), 10, "{ok:?}");

        // A backend outside the VPC.
        out.send(Ok(update(
            2,
            1,
            false,
            vec![service("bad", 20, &[Ipv4Addr::new(192, 168, 9, 9)])],
        )))
        .await?;
        let r = reply(&mut inbound).await?;
        let text = nack_text(&r)?;
        assert!(
            text.contains("Some(\"bad\")|spec.backends[0].ip|")
                && text.contains("outside Vpc/vpc-a"),
            "{text}"
        );

        // An increment on a base the agent does not have.
        out.send(Ok(update(3, 2, false, vec![]))).await?;
        let text = nack_text(&reply(&mut inbound).await?)?;
        assert!(text.contains("update.base_version"), "{text}");

        // A workload on its own node without a MAC to bind its port with. The
        // controller refuses such a manifest first (the same model rule,
        // `dpu_model::node_rules`); the agent still refuses it from any sender.
        let mut no_mac = workload("vm-9", 29);
        if let Object::Workload(w) = &mut no_mac {
            w.kind = WorkloadKind::Vm;
            w.mac = None;
        }
        out.send(Ok(update(4, 1, false, vec![no_mac]))).await?;
        let text = nack_text(&reply(&mut inbound).await?)?;
        assert!(
            text.contains("\"vm-9\"") && text.contains("spec.mac"),
            "{text}"
        );

        // A malformed object: reported, nothing applied.

        let mut broken = update(5, 1, false, vec![]);
        if let Some(pb::controller_message::Msg::Update(u)) = &mut broken.msg {
            u.upserts.push(pb::Object {
                object: Some(pb::object::Object::Vpc(pb::Vpc {
                    name: "Not A Name".into(),
                    vni: 0,
                })),
            });
        }
        out.send(Ok(broken)).await?;
        let text = nack_text(&reply(&mut inbound).await?)?;
        assert!(text.contains("metadata.name"), "{text}");

        assert_eq!(lab.flows()?, flows, "a refused update changed flows");
        assert_eq!(lab.groups()?, groups, "a refused update changed groups");
        let ok = lab.client("client", "10.96.0.10:80", "tcp", 10)?;
        assert_eq!(ok.count_for("web-1"), 10, "{ok:?}");

        // The agent is still at version 1: a good increment on it applies.
        out.send(Ok(update(
            6,
            1,
            false,
            vec![service("web2", 11, &[Ipv4Addr::new(10, 0, 1, 11)])],
        )))
        .await?;
        match reply(&mut inbound).await? {
            pb::agent_message::Msg::Ack(a) => assert_eq!(a.version, 6),
            other => bail!("v6 not acked: {other:?}"),
        }
        anyhow::Ok(flows)
    })?;
    let now = lab.flows()?;
    assert!(now.len() > flows_after_v1.len(), "web2 added no flows");
    assert!(now.iter().any(|f| f.contains("nw_dst=10.96.0.11")));
    drop(lab);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Waits (at most 3 s) until the wall clock is past `not_after_unix`: rustls
/// compares whole seconds and a certificate is still valid in its last second.
fn wait_until_expired(not_after_unix: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())? <= not_after_unix
    {
        if Instant::now() > deadline {
            bail!("a 1 s certificate did not expire within 3 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The agent refuses a controller whose server certificate has expired, though it
/// is from the right CA and names the right server: every connect fails in the
/// TLS handshake with a certificate-expired verification error, no session opens
/// (no Hello reaches the controller) and the switch is left as it was. A valid
/// certificate on the same address is then accepted and its intent applied, so
/// expiry was the reason.
#[test]
fn agent_refuses_a_controller_whose_certificate_has_expired() -> Result<()> {
    let mut lab = Lab::new("expired")?;
    lab.add_host("client", "10.0.1.2/24", "0a:00:00:00:01:02", "10.0.1.1")?;
    let ca = dpu_controller::pki::load_ca(&lab.ctl_state())?;
    let sans = ["127.0.0.1".to_string()];
    // Right CA, right name, 1 s of life; not_before is backdated, so it was
    // valid until a moment ago.
    let short = ca.issue_server_for("dpu-controller", &sans, Duration::from_secs(1))?;
    wait_until_expired(short.info.not_after_unix)?;
    let ca_pem = std::fs::read(lab.pki().join("ca.pem"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stx, mut srx) = mpsc::channel(4);
    let addr: SocketAddr = lab.controller_addr.parse()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let expired = serve_fake(
        &rt,
        addr,
        (short.cert_pem.into_bytes(), short.key_pem.into_bytes()),
        ca_pem.clone(),
        stx.clone(),
        async {
            let _ = stop_rx.await;
        },
    );
    let flows_before = lab.flows()?;
    let groups_before = lab.groups()?;
    lab.start_agent()?;

    // Two failed connects (the backoff is 100 ms..1 s): it keeps refusing.
    let failure = "controller session failed";
    let reason = "certificate expired";
    wait_until(
        "the agent to refuse the expired certificate twice",
        Duration::from_secs(20),
        || {
            lab.agent_log()
                .lines()
                .filter(|l| l.contains(failure) && l.contains(reason))
                .count()
                >= 2
        },
    )
    .map_err(|e| anyhow!("{e}\n{}", tail(&lab.agent_log())))?;
    // Logged as the stream is dropped; give the line a moment.
    let _ = wait_until(
        "the agent to log the failure",
        Duration::from_secs(10),
        || lab.agent_log().contains(failure),
    );
    let log = lab.agent_log();
    let line = log
        .lines()
        .find(|l| l.contains(failure))
        .unwrap_or_default();
    eprintln!("the agent: {line}");
    assert!(
        line.contains("invalid peer certificate: certificate expired")
            && line.contains(&format!(
                "certificate is not valid after {}",
                short.info.not_after_unix
            )),
        "{line}"
    );
    assert!(
        srx.try_recv().is_err(),
        "a session (Hello) reached the controller"
    );
    assert!(!log.contains("update applied"), "{}", tail(&log));
    assert_eq!(lab.flows()?, flows_before, "the switch's flows changed");
    assert_eq!(lab.groups()?, groups_before, "the switch's groups changed");

    // The same address with a valid certificate: the agent connects and applies.
    let _ = stop_tx.send(());
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), expired).await })
        .map_err(|_| anyhow!("the expired fake controller did not stop"))??;
    let valid = ca.issue_server_for("dpu-controller", &sans, Duration::from_secs(600))?;
    serve_fake(
        &rt,
        addr,
        (valid.cert_pem.into_bytes(), valid.key_pem.into_bytes()),
        ca_pem,
        stx,
        std::future::pending(),
    );
    rt.block_on(async {
        let (mut inbound, out) = tokio::time::timeout(Duration::from_secs(30), srx.recv())
            .await
            .map_err(|_| anyhow!("the agent never connected:\n{}", tail(&lab.agent_log())))?
            .ok_or_else(|| anyhow!("server gone"))?;
        match inbound.message().await?.and_then(|m| m.msg) {
            Some(pb::agent_message::Msg::Hello(h)) => {
                assert_eq!((h.node.as_str(), h.last_applied_version), (NODE, 0));
            }
            other => bail!("first message was not Hello: {other:?}"),
        }
        let mut intent = vpc_a();
        intent.push(workload("client", 2));
        out.send(Ok(update(1, 0, true, intent))).await?;
        match reply(&mut inbound).await? {
            pb::agent_message::Msg::Ack(a) => assert_eq!((a.version, a.nonce.as_str()), (1, "n1")),
            other => bail!("v1 not acked: {other:?}"),
        }
        anyhow::Ok(())
    })?;
    let flows = lab.flows()?;
    assert_ne!(
        flows, flows_before,
        "the valid controller's intent added no flows"
    );
    assert!(
        flows.iter().any(|f| f.contains("10.0.1.2")),
        "no flow for the client: {flows:#?}"
    );
    drop(lab);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

// ---------------------------------------------------------------------------
// Overload and hostile input: an update over the agent's message size limit,
// and updates within it that carry absurd counts.

/// The agent's bound on one incoming message: `MAX_MESSAGE_BYTES` in
/// dpu-agent/src/control/session.rs (this crate does not link the agent).
const AGENT_MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

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

/// The encoded size of a `pb::Service` that sets only name, vpc, cluster IPs,
/// ports, backends and scenario (what [`wide_service`] and [`bare_service`] set).
fn service_len(s: &pb::Service) -> u64 {
    assert!(s.session_affinity.is_none() && s.eip.is_empty() && s.eip_node.is_empty());
    let port = |p: &pb::ServicePort| {
        str_field(&p.name)
            + uint_field(p.protocol as u64)
            + uint_field(p.port.into())
            + uint_field(p.target_port.into())
    };
    let backend = |b: &pb::Backend| {
        str_field(&b.ip) + uint_field(b.weight.into()) + str_field(&b.workload) + str_field(&b.vpc)
    };
    str_field(&s.name)
        + str_field(&s.vpc)
        + s.cluster_ips
            .iter()
            .map(|c| len_field(c.len() as u64))
            .sum::<u64>()
        + s.ports.iter().map(|p| len_field(port(p))).sum::<u64>()
        + s.backends
            .iter()
            .map(|b| len_field(backend(b)))
            .sum::<u64>()
        + uint_field(s.scenario as u64)
}

/// The encoded size of the `ControllerMessage` [`raw_update`] makes: what the
/// agent's gRPC decoder reads in the message's length prefix.
fn update_len(m: &pb::ControllerMessage) -> u64 {
    let Some(pb::controller_message::Msg::Update(u)) = &m.msg else {
        unreachable!()
    };
    assert!(!u.snapshot && u.deletes.is_empty());
    let objects: u64 = u
        .upserts
        .iter()
        .map(|o| match &o.object {
            Some(pb::object::Object::Service(s)) => len_field(len_field(service_len(s))),
            other => panic!("update_len counts Services only, not {other:?}"),
        })
        .sum();
    len_field(uint_field(u.version) + str_field(&u.nonce) + uint_field(u.base_version) + objects)
}

/// An increment of proto objects as they are, unconverted (hostile input need not
/// be valid domain objects).
fn raw_update(version: u64, base: u64, upserts: Vec<pb::Object>) -> pb::ControllerMessage {
    pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Update(pb::Update {
            version,
            nonce: format!("n{version}"),
            snapshot: false,
            base_version: base,
            upserts,
            deletes: vec![],
            store_id: String::new(),
        })),
    }
}

/// Service `name` in vpc-a with one cluster IP and port and `n` distinct backends
/// (10.0.0.0 + i), each naming a workload of `workload_len` bytes (none if 0).
fn wide_service(name: &str, n: u32, workload_len: usize) -> pb::Object {
    let backends = (0..n)
        .map(|i| pb::Backend {
            ip: Ipv4Addr::from(0x0a00_0000 + i).to_string(),
            weight: 1,
            workload: if workload_len == 0 {
                String::new()
            } else {
                format!("w{i:0>width$}", width = workload_len - 1)
            },
            vpc: String::new(),
        })
        .collect();
    pb::Object {
        object: Some(pb::object::Object::Service(pb::Service {
            name: name.into(),
            vpc: "vpc-a".into(),
            cluster_ips: vec!["10.96.0.50".into()],
            ports: vec![pb::ServicePort {
                name: "http".into(),
                protocol: pb::Protocol::Tcp as i32,
                port: 80,
                target_port: 8080,
            }],
            backends,
            scenario: pb::AccessScenario::ClusterIp as i32,
            ..Default::default()
        })),
    }
}

/// The smallest Service message: a name and a VPC, nothing else (so no cluster
/// IP: not a valid Service).
fn bare_service(i: usize) -> pb::Object {
    pb::Object {
        object: Some(pb::object::Object::Service(pb::Service {
            name: format!("s{i}"),
            vpc: "vpc-a".into(),
            ..Default::default()
        })),
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Resets the peak resident memory of `pid` (`VmHWM`) to what it holds now
/// (`clear_refs` 5, Linux ≥ 4.0; needs root, which the lab has) and returns that, in KiB.
fn reset_peak_rss(pid: u32) -> Result<u64> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    proc_kib(pid, "VmHWM")
}

/// What the agent's resident memory peaked at during `step`, above what it held
/// before: (before, peak) in KiB.
fn peak_during<T>(pid: u32, step: impl FnOnce() -> Result<T>) -> Result<(T, u64, u64)> {
    let before = reset_peak_rss(pid)?;
    let t = step()?;
    // The kernel's RSS counters are approximate (per-CPU batches): a peak read
    // later can come out a few pages under the reset value when nothing grew.
    let peak = proc_kib(pid, "VmHWM")?.max(before);
    Ok((t, before, peak))
}

/// The intent every overload test starts from: a VPC, a subnet, a client and a
/// backend (both on this node) and Service `web` (10.96.0.10:80) on it.
fn base_intent() -> Result<Vec<Object>> {
    let mut base = vpc_a();
    base.extend([
        workload("client", 2),
        workload("web-1", 11),
        service("web", 10, &[Ipv4Addr::new(10, 0, 1, 11)]),
    ]);
    Ok(base)
}

/// Takes the next session the agent opens (within 30 s) and checks its Hello.
async fn accept(
    lab: &Lab,
    sessions: &mut mpsc::Receiver<Session>,
    last_applied: u64,
) -> Result<Session> {
    let (mut inbound, out) = tokio::time::timeout(Duration::from_secs(30), sessions.recv())
        .await
        .map_err(|_| anyhow!("the agent did not connect:\n{}", tail(&lab.agent_log())))?
        .ok_or_else(|| anyhow!("server gone"))?;
    let hello = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| anyhow!("no Hello within 10 s"))??;
    match hello.and_then(|m| m.msg) {
        Some(pb::agent_message::Msg::Hello(h)) => {
            assert_eq!(
                (h.node.as_str(), h.last_applied_version),
                (NODE, last_applied)
            );
        }
        other => bail!("first message was not Hello: {other:?}"),
    }
    Ok((inbound, out))
}

/// A lab with a client and a web-1 echo server, the fake controller, and the real
/// agent connected to it with [`base_intent`] applied as version 1 (traffic to
/// `web` checked).
fn agent_at_v1(
    tag: &str,
) -> Result<(
    Lab,
    tokio::runtime::Runtime,
    mpsc::Receiver<Session>,
    Session,
)> {
    let mut lab = Lab::new(tag)?;
    lab.add_host("client", "10.0.1.2/24", "0a:00:00:00:01:02", "10.0.1.1")?;
    lab.add_host("web-1", "10.0.1.11/24", "0a:00:00:00:01:0b", "10.0.1.1")?;
    lab.echo("web-1", &[8080], &[])?;
    let (cert, key, ca) = issue_server_identity(&lab)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stx, mut srx) = mpsc::channel(4);
    let addr: SocketAddr = lab.controller_addr.parse()?;
    serve_fake(&rt, addr, (cert, key), ca, stx, std::future::pending());
    lab.start_agent()?;
    let session = rt.block_on(async {
        let (mut inbound, out) = accept(&lab, &mut srx, 0).await?;
        out.send(Ok(update(1, 0, true, base_intent()?))).await?;
        match reply(&mut inbound).await? {
            pb::agent_message::Msg::Ack(a) => assert_eq!(a.version, 1),
            other => bail!("v1 not acked: {other:?}"),
        }
        anyhow::Ok((inbound, out))
    })?;
    let ok = lab.client("client", "10.96.0.10:80", "tcp", 10)?;
    assert_eq!(ok.count_for("web-1"), 10, "{ok:?}");
    Ok((lab, rt, srx, session))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// An update larger than the agent's 64 MiB message limit (one Service with
/// 300,000 backends, each naming a 253-byte workload: about 82 MB) is refused by
/// the agent's gRPC decoder from the message's length prefix, before the body is
/// read: the stream fails, the agent logs `controller session failed` with the
/// decoder's `decoded message length too large: found N bytes, the limit is:
/// 67108864 bytes` (N exact), reconnects after its backoff and says Hello with
/// version 1 again. Nothing is applied (flows and groups byte-identical, traffic
/// unchanged), the agent's peak resident memory grows by less than 32 MiB, and a
/// valid update on the new stream is applied and ACKed.
#[test]
fn agent_refuses_an_update_over_its_message_size_limit_and_resumes() -> Result<()> {
    let (lab, rt, mut srx, (mut inbound, out)) = agent_at_v1("oversize")?;
    let pid = lab.agent.as_ref().ok_or_else(|| anyhow!("no agent"))?.pid();
    let flows = lab.flows()?;
    let groups = lab.groups()?;

    let huge = raw_update(2, 1, vec![wide_service("huge", 300_000, 253)]);
    let size = update_len(&huge);
    assert!(size > AGENT_MAX_MESSAGE_BYTES, "{size}");
    let failure = "controller session failed";
    let (ended, before, peak) = peak_during(pid, || {
        rt.block_on(async {
            out.send(Ok(huge)).await?;
            // The agent ends its side of the stream (after what it had queued).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(deadline, inbound.message()).await {
                    Err(_) => bail!("the agent kept the stream open for 30 s"),
                    Ok(Ok(Some(m))) => match m.msg {
                        Some(
                            r @ (pb::agent_message::Msg::Ack(_) | pb::agent_message::Msg::Nack(_)),
                        ) => bail!("the agent answered the oversized update: {r:?}"),
                        _ => continue,
                    },
                    Ok(end) => return anyhow::Ok(format!("{end:?}")),
                }
            }
        })
    })?;
    eprintln!("the fake controller's end of the first stream: {ended}");
    eprintln!(
        "agent memory: {:.1} MiB before, peak {:.1} MiB (+{:.1} MiB) for a {size}-byte update",
        mib(before),
        mib(peak),
        mib(peak - before)
    );
    // Logged as the stream is dropped; give the line a moment.
    let _ = wait_until(
        "the agent to log the failure",
        Duration::from_secs(10),
        || lab.agent_log().contains(failure),
    );
    let log = lab.agent_log();
    let line = log
        .lines()
        .find(|l| l.contains(failure))
        .ok_or_else(|| anyhow!("no {failure:?} in the agent's log:\n{}", tail(&log)))?;
    eprintln!("the agent: {line}");
    assert!(
        line.contains(&format!(
            "decoded message length too large: found {size} bytes, the limit is: {AGENT_MAX_MESSAGE_BYTES} bytes"
        )),
        "{line}"
    );
    assert!(
        peak - before < 32 * 1024,
        "peak RSS grew by {} KiB",
        peak - before
    );

    rt.block_on(async {
        let (mut inbound, out) = accept(&lab, &mut srx, 1).await?;
        assert_eq!(lab.flows()?, flows, "the oversized update changed flows");
        assert_eq!(lab.groups()?, groups, "the oversized update changed groups");
        let ok = lab.client("client", "10.96.0.10:80", "tcp", 10)?;
        assert_eq!(ok.count_for("web-1"), 10, "{ok:?}");
        out.send(Ok(update(
            2,
            1,
            false,
            vec![service("web2", 11, &[Ipv4Addr::new(10, 0, 1, 11)])],
        )))
        .await?;
        match reply(&mut inbound).await? {
            pb::agent_message::Msg::Ack(a) => assert_eq!((a.version, a.nonce.as_str()), (2, "n2")),
            other => bail!("v2 not acked: {other:?}"),
        }
        anyhow::Ok(())
    })?;
    assert!(lab.flows()?.iter().any(|f| f.contains("nw_dst=10.96.0.11")));
    let ok = lab.client("client", "10.96.0.11:80", "tcp", 10)?;
    assert_eq!(ok.count_for("web-1"), 10, "{ok:?}");
    drop(lab);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// The agent's peak memory for an update may grow with what it decodes: at most
/// `factor` times the message's size, plus 32 MiB.
fn assert_peak_within(what: &str, size: u64, before: u64, peak: u64, factor: u64) {
    let grown = (peak - before) * 1024;
    assert!(
        grown <= factor * size + (32 << 20),
        "{what}: the agent's peak RSS grew by {grown} bytes for a {size}-byte update"
    );
}

/// Updates within the size limit carrying absurd counts are NACKed whole, each with
/// an error naming the limit, and nothing is applied:
/// - one Service with 4,097 backends (`MAX_BACKENDS` + 1): `spec.backends`,
///   `4097 backends; at most 4096`;
/// - one Service with 1,000,000 backends (17 MB, well within the 64 MiB message
///   limit, so a million backends is a count case, not a size one): the same error,
///   `1000000 backends; at most 4096`;
/// - the same count of empty `Backend` messages (2 bytes each on the wire, 2 MB):
///   the same error;
/// - 200,001 Services in one update (3.9 MB): `update`,
///   `200001 objects in one update; at most 200000` (`MAX_OBJECTS_PER_UPDATE`).
///   100,000 Services are within that limit (see
///   `agent_nack_of_100k_bad_services_reaches_the_controller`).
///
/// The switch keeps its flows and groups byte for byte, and a valid update after
/// them is ACKed. Counts are checked only after the whole message is decoded, so
/// the agent's peak memory grows with the decoded message, and this is what is
/// bounded: at most 16 times the message's size plus 32 MiB (measured: 7.4x for
/// the million backends, +124 MiB; 11-14x for the 200,001 Services, +43-54 MiB),
/// and 64 times for empty backends, the shape that grows most (each 2-byte message
/// becomes an 80-byte struct: measured 40x, +76 MiB).
#[test]
fn agent_nacks_absurd_counts_within_the_size_limit() -> Result<()> {
    let (lab, rt, _srx, (mut inbound, out)) = agent_at_v1("counts")?;
    let pid = lab.agent.as_ref().ok_or_else(|| anyhow!("no agent"))?.pid();
    let flows = lab.flows()?;
    let groups = lab.groups()?;
    let mut nack = |what: &str, factor: u64, m: pb::ControllerMessage| -> Result<String> {
        let size = update_len(&m);
        let started = Instant::now();
        let (text, before, peak) = peak_during(pid, || {
            rt.block_on(async {
                out.send(Ok(m)).await?;
                nack_text(&reply(&mut inbound).await?)
            })
        })?;
        eprintln!(
            "{what}: {size} bytes, NACKed in {:.1} s; agent RSS {:.1} MiB before, peak {:.1} MiB \
             (+{:.1} MiB, {:.1}x the message); NACK: {text}",
            started.elapsed().as_secs_f64(),
            mib(before),
            mib(peak),
            mib(peak - before),
            (peak - before) as f64 * 1024.0 / size as f64,
        );
        assert_peak_within(what, size, before, peak, factor);
        Ok(text)
    };

    let text = nack(
        "4,097 backends",
        16,
        raw_update(2, 1, vec![wide_service("wide", 4_097, 0)]),
    )?;
    assert_eq!(
        text,
        "Some(\"wide\")|spec.backends|4097 backends; at most 4096"
    );

    let text = nack(
        "1,000,000 backends",
        16,
        raw_update(3, 1, vec![wide_service("wide", 1_000_000, 0)]),
    )?;
    assert_eq!(
        text,
        "Some(\"wide\")|spec.backends|1000000 backends; at most 4096"
    );

    let mut empty = wide_service("wide", 0, 0);
    if let Some(pb::object::Object::Service(s)) = &mut empty.object {
        s.backends = vec![pb::Backend::default(); 1_000_000];
    }
    let text = nack(
        "1,000,000 empty backends",
        64,
        raw_update(4, 1, vec![empty]),
    )?;
    assert_eq!(
        text,
        "Some(\"wide\")|spec.backends|1000000 backends; at most 4096"
    );

    let text = nack(
        "200,001 Services",
        16,
        raw_update(5, 1, (0..200_001).map(bare_service).collect()),
    )?;
    assert_eq!(
        text,
        "None|update|200001 objects in one update; at most 200000"
    );

    assert_eq!(lab.flows()?, flows, "a refused update changed flows");
    assert_eq!(lab.groups()?, groups, "a refused update changed groups");
    rt.block_on(async {
        out.send(Ok(update(
            6,
            1,
            false,
            vec![service("web2", 11, &[Ipv4Addr::new(10, 0, 1, 11)])],
        )))
        .await?;
        match reply(&mut inbound).await? {
            pb::agent_message::Msg::Ack(a) => assert_eq!(a.version, 6),
            other => bail!("v6 not acked: {other:?}"),
        }
        anyhow::Ok(())
    })?;
    assert!(lab.flows()?.iter().any(|f| f.contains("nw_dst=10.96.0.11")));
    let ok = lab.client("client", "10.96.0.11:80", "tcp", 10)?;
    assert_eq!(ok.count_for("web-1"), 10, "{ok:?}");
    drop(lab);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// 100,000 Services in one update are within the agent's limits (200,000 objects,
/// 64 MiB), so it converts every one; none has a cluster IP, and it NACKs them.
/// The NACK reaches the controller (which reads at most 4 MiB from an agent,
/// `MAX_DECODING_MESSAGE`, as this fake does): it lists the first 1,000 errors,
/// the first naming `spec.clusterIPs`, and one more counting the other 99,000.
/// The switch stays as it was. (Before the cap, this NACK was 6.8 MB and never
/// arrived.)
#[test]
fn agent_nack_of_100k_bad_services_reaches_the_controller() -> Result<()> {
    let (lab, rt, _srx, (mut inbound, out)) = agent_at_v1("nack100k")?;
    let pid = lab.agent.as_ref().ok_or_else(|| anyhow!("no agent"))?.pid();
    let flows = lab.flows()?;
    let groups = lab.groups()?;
    let m = raw_update(2, 1, (0..100_000).map(bare_service).collect());
    let size = update_len(&m);
    let (r, before, peak) = peak_during(pid, || {
        rt.block_on(async {
            out.send(Ok(m)).await?;
            anyhow::Ok(reply(&mut inbound).await)
        })
    })?;
    eprintln!(
        "100,000 Services: {size} bytes; agent RSS {:.1} MiB before, peak {:.1} MiB (+{:.1} MiB)",
        mib(before),
        mib(peak),
        mib(peak - before)
    );
    assert_peak_within("100,000 Services", size, before, peak, 64);
    assert_eq!(lab.flows()?, flows, "a refused update changed flows");
    assert_eq!(lab.groups()?, groups, "a refused update changed groups");
    let r = r.map_err(|e| anyhow!("the agent's NACK did not reach the controller: {e}"))?;
    let text = nack_text(&r)?;
    assert!(
        text.starts_with("Some(\"s0\")|spec.clusterIPs|at least one cluster IP is required"),
        "{}",
        text.chars().take(500).collect::<String>()
    );
    assert!(
        text.contains("and 99000 more errors"),
        "{}",
        text.chars().rev().take(300).collect::<String>()
    );
    drop(lab);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
