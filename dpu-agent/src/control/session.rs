//! The controller session: one mTLS gRPC stream, re-established forever. With
//! several controller endpoints it fails over round robin, with exponential
//! backoff and jitter per failed pass over the list (`rotation`). It only
//! carries messages: updates go to the agent loop, which answers each with an
//! Ack or a Nack; it never touches OVS.
//!
//! States: `Backoff → Connecting → Streaming → Backoff`. The agent's applied
//! version is read at every connect, so a reconnect (to any endpoint) resumes
//! from it.

use std::time::Duration;

use dpu_proto::v1 as pb;
use dpu_proto::v1::agent_control_client::AgentControlClient;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use std::time::SystemTime;

use crate::config::ControllerConfig;
use crate::control::enroll::{CertInfo, NodeIdentity};
use crate::control::rotation::{jittered, Rotation};

/// What the session hands to the agent loop.
#[derive(Debug)]
pub enum SessionEvent {
    /// An update to apply; the loop sends the Ack or Nack back on `reply`.
    Update(pb::Update, oneshot::Sender<pb::agent_message::Msg>),
    /// The session is up on this endpoint (`Some`), or down (`None`).
    Connected(Option<String>),
    /// The controller's view of unhealthy backends, over all nodes.
    Health(pb::Health),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection or TLS handshake failed (includes certificate checks).
    #[error("connecting to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    /// The controller ended the stream with an error.
    #[error("controller: {0}")]
    Status(#[from] tonic::Status),
    /// The agent loop is gone.
    #[error("agent loop stopped")]
    AgentGone,
}

/// Incoming messages are bounded; a larger one ends the session. The controller
/// never sends more than 64 MiB (its encoding limit), and decoding needs a
/// multiple of the message in memory, so the agent accepts no more than that.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How a stream ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The controller closed it.
    Closed,
    /// The certificate was renewed; reconnect with it now.
    Renewed,
}

/// The last applied version and the numbering it belongs to (`store_id`):
/// a controller whose numbering differs sends a snapshot whatever the
/// versions say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedAt {
    pub version: u64,
    pub store_id: String,
}

/// What the agent loop publishes for the controller; each is sent after Hello
/// and again whenever it changes.
#[derive(Debug)]
pub struct Feeds {
    /// The last applied version (said in Hello).
    pub applied: watch::Receiver<AppliedAt>,
    pub status: watch::Receiver<pb::Status>,
    /// The pods attached on this node.
    pub local: watch::Receiver<pb::LocalWorkloads>,
    /// This node's probe verdicts.
    pub health: watch::Receiver<pb::Health>,
}

pub async fn run(
    cfg: ControllerConfig,
    node: String,
    identity: Option<NodeIdentity>,
    mut feeds: Feeds,
    events: mpsc::Sender<SessionEvent>,
) {
    let endpoints = cfg.endpoints().to_vec();
    let mut rotation = Rotation::new(
        endpoints.len(),
        Duration::from_millis(cfg.backoff_min_ms),
        Duration::from_millis(cfg.backoff_max_ms),
    );
    loop {
        let endpoint = endpoints[rotation.current()].as_str();
        let started = tokio::time::Instant::now();
        let renewal = match &identity {
            None => Ok(None),
            // Enrollment and renewal go to the endpoint the session tries now.
            Some(id) => match id.ensure(endpoint).await {
                // Due while no stream is up (refused, unreachable): renew before
                // connecting; on failure the still-valid certificate is used.
                Ok(info) if SystemTime::now() >= info.renew_at() => {
                    match id.renew(endpoint).await {
                        Ok(renewed) => Ok(Some((id, renewed))),
                        Err(e) => {
                            tracing::warn!(node = %node, endpoint, error = %e, "certificate renewal failed");
                            Ok(Some((id, info)))
                        }
                    }
                }
                other => other.map(|info| Some((id, info))),
            },
        };
        let result = match renewal {
            Ok(renewal) => stream_once(&cfg, endpoint, &node, renewal, &mut feeds, &events).await,
            Err(e) => {
                tracing::warn!(node = %node, endpoint, error = %e, "no usable node certificate");
                Ok(Ended::Closed)
            }
        };
        match result {
            Ok(Ended::Renewed) => {
                tracing::info!(endpoint, "reconnecting with the renewed certificate");
                rotation.renewed();
                continue;
            }
            Ok(Ended::Closed) => {
                tracing::warn!(endpoint, "controller session ended")
            }
            Err(SessionError::AgentGone) => return,
            Err(e) => {
                tracing::warn!(endpoint, error = %e, "controller session failed")
            }
        }
        if events.send(SessionEvent::Connected(None)).await.is_err() {
            return;
        }
        let wait = rotation.failed(started.elapsed());
        if endpoints.len() > 1 {
            tracing::info!(
                next = %endpoints[rotation.current()],
                wait_ms = wait.as_millis() as u64,
                "trying the next controller endpoint"
            );
        }
        tokio::time::sleep(jittered(wait, rand::random::<f64>())).await;
    }
}

/// The monotonic instant of a wall-clock time (now, if it has passed).
fn instant_of(t: SystemTime) -> tokio::time::Instant {
    tokio::time::Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// After a failed renewal: a tenth of the remaining life, within 1 s..60 s.
fn renew_retry(info: &CertInfo) -> Duration {
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, SessionError> {
    std::fs::read(path).map_err(|source| SessionError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}

/// Builds the mTLS channel to `endpoint`. Files are read at every connect, so
/// renewed certificates are picked up without a restart.
pub async fn connect(
    cfg: &ControllerConfig,
    endpoint: &str,
) -> Result<tonic::transport::Channel, SessionError> {
    connect_with(cfg, endpoint, true).await
}

/// Builds the channel; without `client_identity` only the controller is
/// authenticated (enrollment, before the node has a certificate).
pub async fn connect_with(
    cfg: &ControllerConfig,
    endpoint: &str,
    client_identity: bool,
) -> Result<tonic::transport::Channel, SessionError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cfg.ca_file)?))
        .domain_name(cfg.server_name.clone());
    if client_identity {
        tls = tls.identity(Identity::from_pem(
            read(&cfg.cert_file)?,
            read(&cfg.key_file)?,
        ));
    }
    let err = |detail: String| SessionError::Connect {
        endpoint: endpoint.to_string(),
        detail,
    };
    Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| err(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| err(error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn stream_once(
    cfg: &ControllerConfig,
    endpoint: &str,
    node: &str,
    renewal: Option<(&NodeIdentity, CertInfo)>,
    feeds: &mut Feeds,
    events: &mpsc::Sender<SessionEvent>,
) -> Result<Ended, SessionError> {
    use pb::agent_message::Msg;
    let Feeds {
        applied,
        status,
        local,
        health,
    } = feeds;
    let mut renew_at = renewal
        .as_ref()
        .map(|(_, info)| instant_of(info.renew_at()));
    let channel = connect(cfg, endpoint).await?;
    let mut client = AgentControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(16);
    let send = |m: Msg| {
        let tx = tx.clone();
        async move { tx.send(pb::AgentMessage { msg: Some(m) }).await.is_ok() }
    };
    let at = applied.borrow().clone();
    send(Msg::Hello(pb::Hello {
        node: node.to_string(),
        last_applied_version: at.version,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        store_id: at.store_id.clone(),
    }))
    .await;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| SessionError::Connect {
            endpoint: endpoint.to_string(),
            detail: format!("{}: {}", s.code(), s.message()),
        })?
        .into_inner();
    tracing::info!(
        endpoint,
        version = at.version,
        "controller session established"
    );
    events
        .send(SessionEvent::Connected(Some(endpoint.to_string())))
        .await
        .map_err(|_| SessionError::AgentGone)?;
    let initial = status.borrow_and_update().clone();
    send(Msg::Status(initial)).await;
    // The full set of local pods after every Hello; the controller merges it.
    let pods = local.borrow_and_update().clone();
    send(Msg::LocalWorkloads(pods)).await;
    // And this node's probe verdicts.
    let verdicts = health.borrow_and_update().clone();
    send(Msg::Health(verdicts)).await;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(Ended::Closed) };
                let update = match msg.msg {
                    Some(pb::controller_message::Msg::Update(u)) => u,
                    Some(pb::controller_message::Msg::Health(h)) => {
                        events
                            .send(SessionEvent::Health(h))
                            .await
                            .map_err(|_| SessionError::AgentGone)?;
                        continue;
                    }
                    None => continue,
                };
                let (reply_tx, reply_rx) = oneshot::channel();
                events
                    .send(SessionEvent::Update(update, reply_tx))
                    .await
                    .map_err(|_| SessionError::AgentGone)?;
                let reply = reply_rx.await.map_err(|_| SessionError::AgentGone)?;
                if !send(reply).await {
                    return Ok(Ended::Closed);
                }
            }
            changed = local.changed() => {
                if changed.is_err() {
                    return Err(SessionError::AgentGone);
                }
                let pods = local.borrow_and_update().clone();
                if !send(Msg::LocalWorkloads(pods)).await {
                    return Ok(Ended::Closed);
                }
            }
            changed = health.changed() => {
                if changed.is_err() {
                    return Err(SessionError::AgentGone);
                }
                let h = health.borrow_and_update().clone();
                if !send(Msg::Health(h)).await {
                    return Ok(Ended::Closed);
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Err(SessionError::AgentGone);
                }
                let s = status.borrow_and_update().clone();
                if !send(Msg::Status(s)).await {
                    return Ok(Ended::Closed);
                }
            }
            // Renewal runs beside the stream: updates wait for it (milliseconds),
            // and a failed attempt leaves the stream up on the still-valid
            // certificate.
            _ = tokio::time::sleep_until(renew_at.unwrap_or_else(tokio::time::Instant::now)),
                if renew_at.is_some() =>
            {
                let Some((id, info)) = &renewal else { continue };
                match id.renew(endpoint).await {
                    Ok(_) => return Ok(Ended::Renewed),
                    Err(e) => {
                        let retry = renew_retry(info);
                        tracing::warn!(node = %node, error = %e, retry_s = retry.as_secs(),
                            "certificate renewal failed");
                        renew_at = Some(tokio::time::Instant::now() + retry);
                    }
                }
            }
        }
    }
}
