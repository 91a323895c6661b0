//! The attachment service for the host shim (CNI plugin): gRPC over mTLS on the
//! host<->DPU link. It only carries requests: the agent loop owns the pool, plugs
//! representors and reconciles, so the reconciler stays the only writer to the
//! switch. See docs/host-shim.md.

pub mod pool;
pub mod sysfs;

use std::time::Duration;

use dpu_proto::v1 as pb;
use dpu_proto::v1::attachments_server::{Attachments, AttachmentsServer};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::config::Config;
use pool::{AttachInput, Record};

/// A request from the service to the agent loop.
#[derive(Debug)]
pub enum AttachCmd {
    Attach(AttachInput, oneshot::Sender<Result<Record, Status>>),
    Detach {
        container_id: String,
        ifname: String,
        reply: oneshot::Sender<Result<Option<Record>, Status>>,
    },
    Get {
        container_id: String,
        ifname: String,
        reply: oneshot::Sender<Option<Record>>,
    },
    List(oneshot::Sender<Vec<Record>>),
    Ready(oneshot::Sender<(bool, String)>),
}

/// How long one request may wait for the agent loop (an Attach waits for its
/// representor to show up on the bridge and its flows to be installed).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct AttachService {
    tx: mpsc::Sender<AttachCmd>,
    client_name: String,
    mtu: u32,
}

/// The attachment as the shim sees it.
pub fn to_proto(r: &Record, mtu: u32) -> pb::Attachment {
    pb::Attachment {
        key: Some(pb::AttachmentKey {
            container_id: r.container_id.clone(),
            ifname: r.ifname.clone(),
        }),
        pod_namespace: r.pod_namespace.clone(),
        pod_name: r.pod_name.clone(),
        vf: r.vf.clone(),
        representor: r.representor.clone(),
        mac: r.mac.clone(),
        ip_cidr: format!("{}/{}", r.ip, r.prefix_len),
        gateway: r.gateway.to_string(),
        routes: vec![pb::Route {
            dst: "0.0.0.0/0".into(),
            gw: r.gateway.to_string(),
        }],
        mtu,
        workload: r.workload.clone(),
        subnet: r.subnet.clone(),
        vf_index: r.vf_index,
    }
}

impl AttachService {
    /// Only the host shim's certificate (DNS SAN = `shim.client_name`, role
    /// host-shim) may call.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let der = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        authorize_shim(der.as_ref(), &self.client_name)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> AttachCmd,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| Status::unavailable("the agent is shutting down"))?;
        tokio::time::timeout(REQUEST_TIMEOUT, rx)
            .await
            .map_err(|_| Status::deadline_exceeded("the agent did not answer in time"))?
            .map_err(|_| Status::unavailable("the agent dropped the request"))
    }
}

/// Whether the client certificate `der` is the host shim's: it names
/// `client_name` and carries the host-shim role and no other. A node's
/// certificate (role node) is refused even if it names `client_name`: the host
/// is not a DPU, and a DPU is not its host.
pub fn authorize_shim(der: &[u8], client_name: &str) -> Result<(), Status> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    let names = crate::control::enroll::dns_names(&cert);
    if !names.iter().any(|n| n == client_name) {
        return Err(Status::permission_denied(format!(
            "client certificate names {names:?}; only {client_name} may attach pods"
        )));
    }
    let roles = crate::control::enroll::role_uris(&cert);
    if roles != [dpu_proto::roles::HOST_SHIM] {
        return Err(Status::permission_denied(format!(
            "client certificate for {client_name} has the roles {roles:?}; only a host shim's certificate (role {}, `dpu-controller issue --host-shim {client_name}`) may attach pods",
            dpu_proto::roles::HOST_SHIM
        )));
    }
    Ok(())
}

fn key_of(k: Option<pb::AttachmentKey>) -> Result<(String, String), Status> {
    let k = k.ok_or_else(|| Status::invalid_argument("key: is required"))?;
    if k.container_id.is_empty() || k.ifname.is_empty() {
        return Err(Status::invalid_argument(
            "key: container_id and ifname are required",
        ));
    }
    Ok((k.container_id, k.ifname))
}

#[tonic::async_trait]
impl Attachments for AttachService {
    async fn attach(
        &self,
        req: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::Attachment>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let (container_id, ifname) = key_of(r.key)?;
        let input = AttachInput {
            container_id,
            ifname,
            pod_namespace: r.pod_namespace,
            pod_name: r.pod_name,
            network: r.network,
            subnet: r.subnet,
            labels: r.labels.into_iter().map(|l| (l.key, l.value)).collect(),
        };
        let rec = self.ask(|tx| AttachCmd::Attach(input, tx)).await??;
        Ok(Response::new(to_proto(&rec, self.mtu)))
    }

    async fn detach(
        &self,
        req: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        self.authorize(&req)?;
        let (container_id, ifname) = key_of(req.into_inner().key)?;
        let rec = self
            .ask(|reply| AttachCmd::Detach {
                container_id,
                ifname,
                reply,
            })
            .await??;
        Ok(Response::new(pb::DetachResponse {
            existed: rec.is_some(),
            vf: rec.map(|r| r.vf).unwrap_or_default(),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::AttachmentKey>,
    ) -> Result<Response<pb::Attachment>, Status> {
        self.authorize(&req)?;
        let (container_id, ifname) = key_of(Some(req.into_inner()))?;
        let what = format!("{container_id}/{ifname}");
        match self
            .ask(|reply| AttachCmd::Get {
                container_id,
                ifname,
                reply,
            })
            .await?
        {
            Some(r) => Ok(Response::new(to_proto(&r, self.mtu))),
            None => Err(Status::not_found(format!("no attachment {what}"))),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.authorize(&req)?;
        let all = self.ask(AttachCmd::List).await?;
        Ok(Response::new(pb::ListResponse {
            attachments: all.iter().map(|r| to_proto(r, self.mtu)).collect(),
        }))
    }

    async fn ready(
        &self,
        req: Request<pb::ReadyRequest>,
    ) -> Result<Response<pb::ReadyResponse>, Status> {
        self.authorize(&req)?;
        let (ready, reason) = self.ask(AttachCmd::Ready).await?;
        Ok(Response::new(pb::ReadyResponse { ready, reason }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be opened.
    #[error("shim service on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("shim service on {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// How often the node certificate is checked for a change; more often while
/// there is none yet.
const IDENTITY_POLL: Duration = Duration::from_secs(2);
const FIRST_IDENTITY_POLL: Duration = Duration::from_millis(200);

/// The agent's descriptors (docs/limits.md, "Connections and descriptors").
/// 1,024 stay with the agent's own work, whatever peers do: stdio and the
/// journal, the runtime, OVSDB, the two OpenFlow connections, an `ovs-ofctl`
/// child's pipes, netlink sockets, the state directory's files, the
/// controller session, the operator socket (at most 8 clients) and /metrics
/// (at most 16), and one socket per health probe in flight (one per probed
/// local backend). The attachment listener gets at most 64 connections in the
/// TLS handshake and 64 with the shim's certificate (the only peer, one host);
/// it takes none without a certificate.
pub const FD_PLAN: dpu_listen::fds::Plan = dpu_listen::fds::Plan {
    reserved: 1024,
    max_handshaking: 64,
    max_anonymous: 0,
    max_authenticated: 64,
};
/// The soft RLIMIT_NOFILE is raised to the hard limit, at most this.
const NOFILE_CAP: u64 = 1 << 16;

/// The limits of the attachment listener, from RLIMIT_NOFILE and `FD_PLAN`.
pub fn listener_limits() -> dpu_listen::Limits {
    let budget = dpu_listen::fds::budget_from_rlimit(
        "shim service",
        &FD_PLAN,
        NOFILE_CAP,
        "the file limit is below the agent's reserve plus its shim listener (LimitNOFILE=4096 in the unit); the shim listener gets the minimum",
    );
    dpu_listen::Limits::with_budget(&budget)
}

/// The node certificate, key and CA as last read, to notice a renewal.
#[derive(Debug, PartialEq, Eq)]
struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl TlsFiles {
    fn read(cfg: &Config) -> std::io::Result<TlsFiles> {
        let c = &cfg.controller;
        Ok(TlsFiles {
            cert: std::fs::read(&c.cert_file)?,
            key: std::fs::read(&c.key_file)?,
            ca: std::fs::read(&c.ca_file)?,
        })
    }

    /// What tonic's `ServerTlsConfig` with `identity` and `client_ca_root`
    /// built: a client certificate is required and must chain to the CA.
    fn server_config(&self) -> Result<std::sync::Arc<dpu_listen::ServerConfig>, String> {
        dpu_listen::server_config(&self.cert, &self.key, &self.ca, false)
    }
}

/// Serves the attachment API until `shutdown` fires, with the node certificate.
///
/// The socket is bound once, and every connection is bounded (`dpu_listen`):
/// its TLS handshake must finish within 10 s, at most 64 are in the handshake
/// and 64 authenticated at once, an authenticated one with no request for 60 s
/// is closed, and accept errors back off. The certificate files are polled;
/// when they change (renewal), handshakes from then on use the new
/// certificate, and connections made before keep theirs until they close.
/// Until the node has a certificate (first boot, enrolling) a connection waits
/// for it within its handshake timeout (10 s).
pub async fn serve(
    cfg: &Config,
    tx: mpsc::Sender<AttachCmd>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    serve_with(cfg, tx, shutdown, listener_limits()).await
}

/// [`serve`] with the given limits.
pub async fn serve_with(
    cfg: &Config,
    tx: mpsc::Sender<AttachCmd>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    limits: dpu_listen::Limits,
) -> Result<(), ServeError> {
    let Some(shim) = cfg.shim.clone() else {
        return Ok(());
    };
    let addr = shim.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let svc = AttachService {
        tx,
        client_name: shim.client_name.clone(),
        mtu: shim.mtu,
    };
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(None);
    let bounded = dpu_listen::BoundedListener::new("shim", listener, tls_rx, limits);
    let router = Server::builder()
        .timeout(REQUEST_TIMEOUT + Duration::from_secs(5))
        .add_service(bounded.track(AttachmentsServer::new(svc).max_decoding_message_size(1 << 20)));
    let watcher = tokio::spawn(watch_identity(cfg.clone(), tls_tx, shim.vfs.len()));
    let mut stop = shutdown.clone();
    let result = router
        .serve_with_incoming_shutdown(bounded.incoming(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| ServeError::Serve { addr, source });
    watcher.abort();
    result
}

/// Polls the node certificate files and publishes each new version to the
/// listener.
async fn watch_identity(
    cfg: Config,
    tls: tokio::sync::watch::Sender<Option<std::sync::Arc<dpu_listen::ServerConfig>>>,
    vfs: usize,
) {
    let Some(shim) = cfg.shim.as_ref() else {
        return;
    };
    let mut loaded: Option<TlsFiles> = None;
    let mut first = true;
    loop {
        if !first {
            let period = if loaded.is_some() {
                IDENTITY_POLL
            } else {
                FIRST_IDENTITY_POLL
            };
            tokio::time::sleep(period).await;
        }
        first = false;
        let files = match TlsFiles::read(&cfg) {
            Ok(f) => f,
            Err(e) => {
                if loaded.is_none() {
                    tracing::debug!(error = %e, "shim service waits for the node certificate");
                }
                continue;
            }
        };
        if loaded.as_ref() == Some(&files) {
            continue;
        }
        match files.server_config() {
            Ok(config) => {
                let renewed = tls.send_replace(Some(config)).is_some();
                if renewed {
                    tracing::info!(listen = %shim.listen, "shim service now uses the renewed node certificate");
                } else {
                    tracing::info!(listen = %shim.listen, client = %shim.client_name, vfs, "shim service listening");
                }
            }
            // A half-written pair during a renewal; the next poll retries.
            Err(e) => tracing::warn!(error = %e, "shim service cannot use the node certificate"),
        }
        loaded = Some(files);
    }
}

#[cfg(test)]
#[path = "shim_authz_tests.rs"]
mod shim_authz_tests;

#[cfg(test)]
#[path = "bounded_tests.rs"]
mod bounded_tests;
