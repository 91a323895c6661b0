//! An in-process fake controller: the real `AgentControl` gRPC service over mTLS,
//! handing each session the agent opens to the test (or the benchmark) to drive by
//! hand. The agent under test is the real binary; only the controller is fake.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use dpu_proto::v1 as pb;
use dpu_proto::v1::agent_control_server::{AgentControl, AgentControlServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::fixture::Lab;

/// One agent session: what the agent sends, and where to send it messages.
pub type Session = (
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

/// Serves the fake controller on `addr` with the server certificate and key
/// `identity`, requiring client certificates from `ca`, until `stop` resolves.
/// Agent messages are read with at most `max_decoding` bytes each (the real
/// controller's bound is `dpu_controller::server::MAX_DECODING_MESSAGE`).
pub fn serve(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    identity: (Vec<u8>, Vec<u8>),
    ca: Vec<u8>,
    max_decoding: usize,
    sessions: mpsc::Sender<Session>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(identity.0, identity.1))
            .client_ca_root(Certificate::from_pem(ca));
        let r = match Server::builder().tls_config(tls) {
            Ok(mut b) => {
                b.add_service(
                    AgentControlServer::new(Fake { sessions })
                        .max_decoding_message_size(max_decoding),
                )
                .serve_with_shutdown(addr, stop)
                .await
            }
            Err(e) => Err(e),
        };
        eprintln!("fake controller stopped: {r:?}");
    })
}

/// Issues the controller's server certificate (`dpu-controller issue --server`,
/// SAN 127.0.0.1) from the lab's CA. Returns (certificate, key, CA) as PEM.
pub fn issue_server_identity(lab: &Lab) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
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
    Ok((cert, key, ca))
}

/// Reads agent messages until an Ack or Nack arrives, for at most `timeout`.
pub async fn reply_within(
    inbound: &mut Streaming<pb::AgentMessage>,
    timeout: Duration,
) -> Result<pb::agent_message::Msg> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = tokio::time::timeout_at(deadline, inbound.message())
            .await
            .map_err(|_| anyhow!("no reply from the agent within {timeout:?}"))??
            .ok_or_else(|| anyhow!("agent closed the stream"))?;
        match m.msg {
            Some(r @ (pb::agent_message::Msg::Ack(_) | pb::agent_message::Msg::Nack(_))) => {
                return Ok(r)
            }
            _ => continue,
        }
    }
}

/// Reads agent messages until an Ack or Nack arrives (at most 20 s).
pub async fn reply(inbound: &mut Streaming<pb::AgentMessage>) -> Result<pb::agent_message::Msg> {
    reply_within(inbound, Duration::from_secs(20)).await
}

/// Takes the next session the agent opens (within `timeout`) and reads its Hello.
pub async fn accept_hello(
    sessions: &mut mpsc::Receiver<Session>,
    timeout: Duration,
) -> Result<(Session, pb::Hello)> {
    let (mut inbound, out) = tokio::time::timeout(timeout, sessions.recv())
        .await
        .map_err(|_| anyhow!("the agent did not connect within {timeout:?}"))?
        .ok_or_else(|| anyhow!("the fake controller stopped"))?;
    let hello = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| anyhow!("no Hello within 10 s"))??;
    match hello.and_then(|m| m.msg) {
        Some(pb::agent_message::Msg::Hello(h)) => Ok(((inbound, out), h)),
        other => bail!("first message was not Hello: {other:?}"),
    }
}
