//! The agent against an in-process fake controller (real mTLS, real agent binary,
//! real OVS and traffic): updates the agent must refuse are NACKed with reasons that
//! name the object and field, and the data plane stays exactly as it was.

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use dpu_lab::fixture::{Lab, NODE};
use dpu_model::*;
use dpu_proto::v1 as pb;
use dpu_proto::v1::agent_control_server::{AgentControl, AgentControlServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

type Session = (
    Streaming<pb::AgentMessage>,
    mpsc::Sender<Result<pb::ControllerMessage, Status>>,
);

struct Fake {
    sessions: mpsc::Sender<Session>,
}

#[tonic::async_trait]
impl AgentControl for Fake {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        self.sessions
            .send((req.into_inner(), tx))
            .await
            .map_err(|_| Status::unavailable("test gone"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn workload(name: &str, last: u8) -> Object {
    Object::Workload(Workload {
        name: name.into(),
        kind: WorkloadKind::Pod,
        vpc: "vpc-a".into(),
        ip: Ipv4Addr::new(10, 0, 1, last),
        ipv6: None,
        mac: Some(Mac([0x0a, 0, 0, 0, 1, last])),
        labels: Default::default(),
        node: NODE.into(),
        port: name.into(),
    })
}

fn service(name: &str, vip: u8, backends: &[Ipv4Addr]) -> Object {
    Object::Service(Service {
        name: name.into(),
        vpc: "vpc-a".into(),
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, vip).into()],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        }],
        backends: backends
            .iter()
            .map(|ip| Backend {
                ip: (*ip).into(),
                weight: 1,
                workload: None,
                vpc: "vpc-a".into(),
            })
            .collect(),
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    })
}

fn update(version: u64, base: u64, snapshot: bool, objs: Vec<Object>) -> pb::ControllerMessage {
    pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Update(pb::Update {
            version,
            nonce: format!("n{version}"),
            snapshot,
            base_version: base,
            upserts: objs.iter().map(object_to_proto).collect(),
            deletes: vec![],
        })),
    }
}

/// Reads agent messages until an Ack or Nack arrives.
async fn reply(inbound: &mut Streaming<pb::AgentMessage>) -> Result<pb::agent_message::Msg> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), inbound.message())
            .await
            .map_err(|_| anyhow!("no reply from the agent within 20 s"))??
            .ok_or_else(|| anyhow!("agent closed the stream"))?;
        match m.msg {
            Some(r @ (pb::agent_message::Msg::Ack(_) | pb::agent_message::Msg::Nack(_))) => {
                return Ok(r)
            }
            _ => continue,
        }
    }
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
    let srv_dir = lab.path("fake-controller");
    lab.controller_cmd(&[
        "issue",
        "--state-dir",
        &lab.ctl_state().display().to_string(),
        "--server",
        "--name",
        "dpu-controller",
        "--san",
        "127.0.0.1",
        "--out",
        &srv_dir.display().to_string(),
    ])?;
    let cert = std::fs::read(srv_dir.join("dpu-controller.pem"))?;
    let key = std::fs::read(srv_dir.join("dpu-controller.key"))?;
    let ca = std::fs::read(lab.pki().join("ca.pem"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stx, mut srx) = mpsc::channel(4);
    let addr: std::net::SocketAddr = lab.controller_addr.parse()?;
    rt.spawn(async move {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca));
        let r = Server::builder()
            .tls_config(tls)
            .expect("tls")
            .add_service(AgentControlServer::new(Fake { sessions: stx }))
            .serve(addr)
            .await;
        eprintln!("fake controller stopped: {r:?}");
    });
    lab.start_agent()?;

    let base = vec![
        Object::Vpc(Vpc {
            name: "vpc-a".into(),
            vni: 100,
        }),
        Object::Subnet(Subnet {
            name: "net".into(),
            vpc: "vpc-a".into(),
            cidr: "10.0.1.0/24".parse()?,
            gateway: Ipv4Addr::new(10, 0, 1, 1).into(),
            node_blocks: vec![],
        }),
        workload("client", 2),
        workload("web-1", 11),
        service("web", 10, &[Ipv4Addr::new(10, 0, 1, 11)]),
    ];
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

        // What the model allows but this agent cannot apply: a workload on its
        // own node without a MAC to bind its port with.
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
