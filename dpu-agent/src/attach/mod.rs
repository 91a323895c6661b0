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
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
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
    /// Only the host shim's certificate (DNS SAN = `shim.client_name`) may call.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let der = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
        let names = crate::enroll::dns_names(&cert);
        if names.iter().any(|n| n == &self.client_name) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "client certificate names {names:?}; only {} may attach pods",
                self.client_name
            )))
        }
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
    /// A server generation failed.
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
/// How long a connection made before the first certificate waits for it.
const FIRST_IDENTITY_WAIT: Duration = Duration::from_secs(10);

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

    fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }
}

type Incoming = mpsc::Sender<std::io::Result<tokio::net::TcpStream>>;

/// Serves the attachment API until `shutdown` fires, with the node certificate.
///
/// The socket is bound once. Each version of the certificate gets its own
/// server generation: when the certificate changes (renewal), new connections
/// go to a new generation and the old one finishes its in-flight requests and
/// stops, so a renewal needs no restart and refuses no connection. Until the
/// node has a certificate (first boot, enrolling) a connection waits for it (up to 10 s).
pub async fn serve(
    cfg: &Config,
    tx: mpsc::Sender<AttachCmd>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
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
    let current: std::sync::Arc<std::sync::Mutex<Option<Incoming>>> = Default::default();
    let acceptor = {
        let current = current.clone();
        tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((s, _)) => Ok(s),
                    Err(e) => {
                        // Out of descriptors and the like: not this connection's
                        // fault, and retrying at once would spin.
                        tracing::warn!(error = %e, "shim service: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Before the first certificate (enrolling) a connection waits
                // for it, up to the shim's own patience; then it is closed.
                let deadline = tokio::time::Instant::now() + FIRST_IDENTITY_WAIT;
                let target = loop {
                    let t = current.lock().map(|c| c.clone()).ok().flatten();
                    if t.is_some() || tokio::time::Instant::now() >= deadline {
                        break t;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                if let Some(t) = target {
                    let _ = t.send(conn).await;
                }
            }
        })
    };
    let mut loaded: Option<TlsFiles> = None;
    let mut generation: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)> = None;
    let mut first = true;
    let result = loop {
        let period = if loaded.is_some() {
            IDENTITY_POLL
        } else {
            FIRST_IDENTITY_POLL
        };
        if !first {
            tokio::select! {
                _ = shutdown.changed() => break Ok(()),
                _ = tokio::time::sleep(period) => {}
            }
        }
        first = false;
        let files = match TlsFiles::read(cfg) {
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
        let server = match Server::builder().tls_config(files.server_config()) {
            Ok(b) => b,
            Err(source) => break Err(ServeError::Serve { addr, source }),
        };
        let (conn_tx, conn_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let router = server
            .timeout(REQUEST_TIMEOUT + Duration::from_secs(5))
            .add_service(AttachmentsServer::new(svc.clone()).max_decoding_message_size(1 << 20));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.await;
                })
                .await
            {
                tracing::error!(error = %e, "shim service generation failed");
            }
        });
        if let Ok(mut c) = current.lock() {
            *c = Some(conn_tx);
        }
        if let Some((stop, _old)) = generation.replace((stop_tx, task)) {
            // In-flight requests of the old generation finish; it then ends.
            let _ = stop.send(());
            tracing::info!(listen = %addr, "shim service now uses the renewed node certificate");
        } else {
            tracing::info!(listen = %addr, client = %shim.client_name, vfs = shim.vfs.len(), "shim service listening");
        }
        loaded = Some(files);
    };
    acceptor.abort();
    if let Some((stop, task)) = generation {
        let _ = stop.send(());
        let _ = task.await;
    }
    result
}
