//! The `/metrics` endpoint: HTTP/1.1 over TCP, or over TLS with optional
//! client certificates. It owns the listening socket, TLS setup and the limits
//! that keep a hostile peer from pinning connections; what a scrape returns is
//! the caller's closure, so this module knows nothing about the agent.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::MetricsConfig;

/// The content type of the text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listening socket could not be opened.
    #[error("metrics.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A TLS file could not be read.
    #[error("metrics.{field} {path}: {source}")]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A TLS file was read but holds nothing usable.
    #[error("metrics.{field} {path}: {reason}")]
    File {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The certificate and key were each fine, but rustls refused them together
    /// (for instance the key is not the certificate's).
    #[error("metrics.tls_cert_file {cert} with metrics.tls_key_file {key}: {reason}")]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    /// The TLS settings do not make sense together (config validation refuses
    /// these too; this is the endpoint's own check).
    #[error("metrics: {0}")]
    Config(&'static str),
}

/// How long a peer may take at each step, and how many peers at once. A
/// hostile peer can hold a slot for at most `handshake + lifetime + grace`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// For a request's headers, counted from when the server waits for them:
    /// so it also closes idle keep-alive connections.
    header_read: Duration,
    handshake: Duration,
    /// After this a connection is asked to close (after the response in
    /// flight), which also bounds a peer that reads the response slowly.
    lifetime: Duration,
    /// For a connection asked to close before it is dropped.
    grace: Duration,
    /// Connections served at once; more are closed as soon as accepted.
    connections: usize,
}

const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(10),
    handshake: Duration::from_secs(10),
    lifetime: Duration::from_secs(60),
    grace: Duration::from_secs(5),
    connections: 16,
};

/// A bound endpoint, not yet serving.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Limits,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Binds `cfg.listen`, then serves until `shutdown` turns true (or its sender
/// is dropped). `cfg.enabled` is the caller's to check.
pub async fn serve<F, Fut>(
    cfg: MetricsConfig,
    scrape: F,
    shutdown: watch::Receiver<bool>,
) -> Result<(), HttpError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    bind(&cfg).await?.run(scrape, shutdown).await;
    Ok(())
}

/// Loads the TLS files and binds the socket, so that a bad file or a taken
/// port shows up before anything else starts.
pub async fn bind(cfg: &MetricsConfig) -> Result<Server, HttpError> {
    let tls = tls_acceptor(cfg).await?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| HttpError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: cfg.listen,
        source,
    })?;
    Ok(Server {
        listener,
        addr,
        tls,
        limits: LIMITS,
    })
}

impl Server {
    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    #[cfg(test)]
    fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// Serves until `shutdown` turns true or its sender is dropped; then asks
    /// open connections to close and waits for them at most the grace period.
    pub async fn run<F, Fut>(self, scrape: F, mut shutdown: watch::Receiver<bool>)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        let Server {
            listener,
            addr,
            tls,
            limits,
        } = self;
        info!(%addr, tls = tls.is_some(), "serving metrics");
        let scrape = Arc::new(scrape);
        let slots = Arc::new(Semaphore::new(limits.connections));
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            debug!(%peer, "metrics: too many connections; closing this one");
                            continue;
                        };
                        conns.spawn(connection(
                            stream,
                            peer,
                            tls.clone(),
                            scrape.clone(),
                            shutdown.clone(),
                            limits,
                            permit,
                        ));
                    }
                    // Out of file descriptors, or a peer gone before accept:
                    // worth a pause, not the end of the endpoint.
                    Err(e) => {
                        warn!(%addr, error = %e, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        // Connections saw the same signal and are closing; the rest are
        // aborted when the set is dropped.
        let _ = timeout(limits.grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        info!(%addr, "metrics endpoint stopped");
    }
}

/// Resolves once shutdown is asked for, or once nobody can ask any more.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn connection<F, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    scrape: Arc<F>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let deadline = Instant::now() + limits.lifetime;
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return http(
            TokioIo::new(stream),
            peer,
            scrape,
            shutdown,
            limits,
            deadline,
        )
        .await;
    };
    let accepted = tokio::select! {
        r = timeout(limits.handshake, acceptor.accept(stream)) => r,
        _ = stopped(&mut shutdown) => return,
    };
    match accepted {
        Ok(Ok(stream)) => {
            http(
                TokioIo::new(stream),
                peer,
                scrape,
                shutdown,
                limits,
                deadline,
            )
            .await
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "metrics: TLS handshake failed"),
        Err(_) => debug!(%peer, "metrics: TLS handshake timed out"),
    }
}

async fn http<I, F, Fut>(
    io: I,
    peer: SocketAddr,
    scrape: Arc<F>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    deadline: Instant,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let scrape = scrape.clone();
        async move { Ok::<_, Infallible>(respond(&req, &*scrape).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "metrics: connection ended with an error");
            }
            return;
        }
        _ = sleep_until(deadline) => {}
        _ = stopped(&mut shutdown) => {}
    }
    conn.as_mut().graceful_shutdown();
    if timeout(limits.grace, conn).await.is_err() {
        debug!(%peer, "metrics: connection did not close in time; dropped");
    }
}

async fn respond<F, Fut>(req: &Request<Incoming>, scrape: &F) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    // HEAD is GET without the body, which hyper leaves out itself.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(scrape().await)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    r
}

/// The TLS acceptor `cfg` asks for, or None for plain TCP.
async fn tls_acceptor(cfg: &MetricsConfig) -> Result<Option<TlsAcceptor>, HttpError> {
    let (cert_file, key_file) = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if cfg.client_ca_file.is_some() => {
            return Err(HttpError::Config(
                "client_ca_file needs tls_cert_file and tls_key_file",
            ))
        }
        (None, None) => return Ok(None),
        _ => {
            return Err(HttpError::Config(
                "set both tls_cert_file and tls_key_file, or neither",
            ))
        }
    };
    let certs = certificates("tls_cert_file", cert_file).await?;
    let key_pem = read("tls_key_file", key_file).await?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| HttpError::File {
        field: "tls_key_file",
        path: key_file.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key in file".into(),
            e => e.to_string(),
        },
    })?;
    // The provider tonic's `tls-ring` uses, named here rather than taken from
    // a process-wide default that may not be installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::File {
            field: "tls_cert_file",
            path: cert_file.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let bad = |reason: String| HttpError::File {
                field: "client_ca_file",
                path: ca_file.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for c in certificates("client_ca_file", ca_file).await? {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| HttpError::KeyPair {
            cert: cert_file.clone(),
            key: key_file.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

async fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, HttpError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| HttpError::Read {
            field,
            path: path.to_path_buf(),
            source,
        })
}

/// Every certificate in a PEM file; at least one.
async fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let pem = read(field, path).await?;
    let bad = |reason: String| HttpError::File {
        field,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
