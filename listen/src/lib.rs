//! Bounded mTLS listeners for the gRPC servers (the controller's, the agent's
//! attachment service): what a peer can hold before and after it has
//! authenticated is bounded in count and in time. See docs/limits.md,
//! "Connections and descriptors".
//!
//! The listener accepts TCP itself and does the TLS handshake itself (rustls,
//! under a timeout), then hands tonic the finished TLS streams through
//! `serve_with_incoming`. Tonic sees the same connect info as with its own TLS
//! (`TlsConnectInfo<TcpConnectInfo>`), so `Request::peer_certs()` and
//! `remote_addr()` work unchanged.
//!
//! - **Handshake phase.** At most `handshaking` connections, each for at most
//!   `handshake_timeout` from accept. When full, a new connection closes the
//!   *oldest* one in the handshake: a flood of half-open connections churns
//!   itself, while a real client, whose handshake takes milliseconds, gets
//!   through unless the flood opens `handshaking` connections within those
//!   milliseconds.
//! - **Authenticated** (the peer presented a client certificate that the
//!   verifier accepted): their own budget (`authenticated`), so a flood in the
//!   handshake phase cannot take their slots. When full, a new one is closed
//!   after its handshake. One with no request in flight for `idle_timeout` is
//!   closed; a long-lived stream (the agent's Session) is a request in flight
//!   and is never cut.
//! - **Anonymous** (handshake without a client certificate; the controller's
//!   `Enroll` callers): their own share (`anonymous`), the oldest closed when
//!   full, closed when idle for `anonymous_idle_timeout` and in any case
//!   `anonymous_max_age` after the handshake.
//! - **Accept errors** (out of descriptors: EMFILE, ENFILE, ENOBUFS, ENOMEM,
//!   or anything else) pause the accept loop, 10 ms doubling to 1 s, reset by
//!   the next successful accept; they never spin.
//! - **Logs**: nothing per connection above debug; a summary of what was
//!   refused, closed or failed at most once per 10 s per listener.

pub mod fds;
#[cfg(any(test, feature = "testkit"))]
pub mod flood;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
pub use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// How long a peer may hold what, and how many peers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From accept to the end of the TLS handshake, including a wait for the
    /// server's first certificate.
    pub handshake_timeout: Duration,
    /// Connections in the handshake phase at once; a new one closes the oldest.
    pub handshaking: usize,
    /// Connections with a client certificate; more are closed after their
    /// handshake.
    pub authenticated: usize,
    /// Connections without a client certificate; a new one closes the oldest.
    /// 0 closes every one (a listener that requires client certificates never
    /// finishes such a handshake anyway).
    pub anonymous: usize,
    /// An authenticated connection with no request in flight for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// The same for anonymous connections.
    pub anonymous_idle_timeout: Duration,
    /// An anonymous connection is closed this long after its handshake.
    pub anonymous_max_age: Duration,
}

impl Limits {
    /// The timeouts this product uses, with the counts of `budget`.
    pub fn with_budget(budget: &fds::Budget) -> Limits {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            handshaking: budget.handshaking,
            authenticated: budget.authenticated,
            anonymous: budget.anonymous,
            idle_timeout: IDLE_TIMEOUT,
            anonymous_idle_timeout: ANONYMOUS_IDLE_TIMEOUT,
            anonymous_max_age: ANONYMOUS_MAX_AGE,
        }
    }
}

/// A TLS handshake must be done this long after accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An authenticated connection without a request in flight is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An anonymous connection (an `Enroll` caller) without a request in flight.
pub const ANONYMOUS_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// An anonymous connection lives at most this long (an `Enroll` takes one call).
pub const ANONYMOUS_MAX_AGE: Duration = Duration::from_secs(60);

/// The first pause after a failed accept; it doubles up to `ACCEPT_BACKOFF_MAX`.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one summary line per listener this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The server's TLS configuration: `None` until there is a certificate (the
/// agent before enrollment); a connection waits for one within its handshake
/// timeout. A new value applies to handshakes that start after it.
pub type TlsSource = watch::Receiver<Option<Arc<ServerConfig>>>;

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub accept_errors: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Handshakes closed to make room for a newer connection.
    pub handshakes_evicted: AtomicU64,
    pub authenticated_refused: AtomicU64,
    pub anonymous_evicted: AtomicU64,
    /// Connections closed for being idle or too old.
    pub idle_closed: AtomicU64,
}

/// The server side of mTLS exactly as tonic's `ServerTlsConfig` builds it
/// (`identity`, `client_ca_root`, `client_auth_optional`): ring, TLS 1.2 and
/// 1.3, a client certificate verified against the CA (required unless
/// `client_auth_optional`), ALPN `h2`.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    client_auth_optional: bool,
) -> Result<Arc<ServerConfig>, String> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{server::WebPkiClientVerifier, RootCertStore};
    let certs = |pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "Error parsing TLS certificate.".to_string())
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs(client_ca_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
    let verifier = if client_auth_optional {
        verifier.allow_unauthenticated()
    } else {
        verifier
    }
    .build()
    .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        "Error parsing TLS private key - no RSA or PKCS8-encoded keys found.".to_string()
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(Arc::new(config))
}

/// A bound listener, not yet serving.
pub struct BoundedListener {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BoundedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedListener")
            .field("name", &self.shared.name)
            .field("limits", &self.shared.limits)
            .finish()
    }
}

struct Shared {
    name: &'static str,
    limits: Limits,
    tls: TlsSource,
    handshaking: Arc<Slots>,
    anonymous: Arc<Slots>,
    authenticated: Arc<Semaphore>,
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    summary: Mutex<Summary>,
}

impl BoundedListener {
    /// `name` names the listener in logs.
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        tls: TlsSource,
        limits: Limits,
    ) -> BoundedListener {
        let shared = Arc::new(Shared {
            name,
            limits,
            tls,
            handshaking: Slots::new(limits.handshaking),
            anonymous: Slots::new(limits.anonymous),
            authenticated: Arc::new(Semaphore::new(limits.authenticated)),
            registry: Arc::default(),
            stats: Arc::default(),
            summary: Mutex::new(Summary::default()),
        });
        BoundedListener { listener, shared }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Wraps a gRPC service so that its requests count as activity on their
    /// connection (for the idle timeouts). Every service served on
    /// [`BoundedListener::incoming`] must be wrapped, or its connections are
    /// closed as idle while its requests run.
    pub fn track<S>(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            registry: self.shared.registry.clone(),
        }
    }

    /// Starts accepting; the stream of finished TLS connections is for
    /// tonic's `serve_with_incoming`. Accepting stops when the stream is
    /// dropped.
    pub fn incoming(self) -> ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(self.listener, self.shared, tx));
        ReceiverStream::new(rx)
    }
}

/// The pause after consecutive accept failures: 10 ms doubling to 1 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl Backoff {
    pub fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }

    pub fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.succeeded();
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                tokio::spawn(handshake(tcp, peer, shared.clone(), tx.clone()));
            }
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE), of buffers (ENOBUFS,
                // ENOMEM), or a peer gone before accept: the listener stays
                // readable, so retrying at once would spin.
                let pause = backoff.failed();
                shared.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                shared.note(Event::AcceptError(e.to_string(), pause));
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let (slot, evicted, made_room) = shared.handshaking.enter();
    if made_room {
        shared
            .stats
            .handshakes_evicted
            .fetch_add(1, Ordering::Relaxed);
        shared.note(Event::HandshakeEvicted);
    }
    let done = tokio::select! {
        r = tokio::time::timeout(shared.limits.handshake_timeout, tls_accept(shared.tls.clone(), tcp)) => r,
        _ = evicted => {
            tracing::debug!(listener = shared.name, %peer, "handshake closed to make room for a newer one");
            return;
        }
    };
    drop(slot);
    let stream = match done {
        Err(_) => {
            shared
                .stats
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            shared.note(Event::HandshakeTimeout);
            tracing::debug!(listener = shared.name, %peer, "TLS handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            shared
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            shared.note(Event::HandshakeFailed);
            tracing::debug!(listener = shared.name, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Ok(Ok(s)) => s,
    };
    let authenticated = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let limits = shared.limits;
    let (hold, idle, max_age) = if authenticated {
        match shared.authenticated.clone().try_acquire_owned() {
            Ok(permit) => (Hold::Authenticated(permit), limits.idle_timeout, None),
            Err(_) => {
                shared
                    .stats
                    .authenticated_refused
                    .fetch_add(1, Ordering::Relaxed);
                shared.note(Event::AuthenticatedRefused);
                return;
            }
        }
    } else if limits.anonymous == 0 {
        tracing::debug!(listener = shared.name, %peer, "no client certificate; this listener takes none without");
        return;
    } else {
        let (guard, evicted, made_room) = shared.anonymous.enter();
        if made_room {
            shared
                .stats
                .anonymous_evicted
                .fetch_add(1, Ordering::Relaxed);
            shared.note(Event::AnonymousEvicted);
        }
        (
            Hold::Anonymous(guard, evicted),
            limits.anonymous_idle_timeout,
            Some(limits.anonymous_max_age),
        )
    };
    let conn = Conn::new(stream, peer, hold, idle, max_age, &shared);
    let _ = tx.send(Ok(conn)).await;
}

async fn tls_accept(mut tls: TlsSource, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    let config = loop {
        if let Some(c) = tls.borrow_and_update().clone() {
            break c;
        }
        if tls.changed().await.is_err() {
            return Err(io::Error::other("the listener has no certificate"));
        }
    };
    tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
}

/// A bounded set of connections where a newcomer closes the oldest.
struct Slots {
    cap: usize,
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next: u64,
    /// Dropping a sender closes that connection.
    live: BTreeMap<u64, oneshot::Sender<()>>,
}

struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.slots.inner).live.remove(&self.id);
    }
}

impl Slots {
    fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            cap,
            inner: Mutex::default(),
        })
    }

    /// Takes a slot, closing the oldest holder if full. The receiver resolves
    /// when this holder is closed to make room; `true` if someone was.
    fn enter(self: &Arc<Self>) -> (SlotGuard, oneshot::Receiver<()>, bool) {
        let (tx, rx) = oneshot::channel();
        let mut inner = lock(&self.inner);
        let mut made_room = false;
        while inner.live.len() >= self.cap.max(1) {
            inner.live.pop_first();
            made_room = true;
        }
        let id = inner.next;
        inner.next += 1;
        if self.cap == 0 {
            // Closed at once: the sender is dropped.
            drop(tx);
        } else {
            inner.live.insert(id, tx);
        }
        drop(inner);
        (
            SlotGuard {
                slots: self.clone(),
                id,
            },
            rx,
            made_room,
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a connection holds of its listener's budget.
enum Hold {
    Authenticated(#[allow(dead_code)] OwnedSemaphorePermit),
    Anonymous(#[allow(dead_code)] SlotGuard, oneshot::Receiver<()>),
}

/// Requests in flight on one connection, and since when there were none.
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    in_flight: usize,
    idle_since: Instant,
    waker: Option<Waker>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                waker: None,
            }),
        })
    }
}

/// Counts one request (and its response body) as in flight.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> InFlight {
        lock(&a.state).in_flight += 1;
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.0.state);
            s.in_flight -= 1;
            if s.in_flight > 0 {
                return;
            }
            s.idle_since = Instant::now();
            s.waker.take()
        };
        // The connection re-arms its idle timer on its next read poll.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Live connections by peer address, for [`Tracked`] to find a request's.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<SocketAddr, Weak<Activity>>>,
}

impl Registry {
    fn in_flight<B>(&self, req: &http::Request<B>) -> Option<InFlight> {
        let peer = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())?;
        let activity = lock(&self.conns).get(&peer)?.upgrade()?;
        Some(InFlight::new(activity))
    }
}

/// A finished TLS connection, as tonic serves it.
pub struct Conn {
    io: TlsStream<TcpStream>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    registry: Arc<Registry>,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    max_age: Option<Pin<Box<Sleep>>>,
    hold: Hold,
    closed: Option<&'static str>,
    stats: Arc<Stats>,
    name: &'static str,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Conn {
    fn new(
        io: TlsStream<TcpStream>,
        peer: SocketAddr,
        hold: Hold,
        idle: Duration,
        max_age: Option<Duration>,
        shared: &Shared,
    ) -> Conn {
        let activity = Activity::new();
        lock(&shared.registry.conns).insert(peer, Arc::downgrade(&activity));
        let now = Instant::now();
        Conn {
            io,
            peer,
            activity,
            registry: shared.registry.clone(),
            idle,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle)),
            max_age: max_age.map(|d| Box::pin(tokio::time::sleep_until(now + d))),
            hold,
            closed: None,
            stats: shared.stats.clone(),
            name: shared.name,
        }
    }

    /// Why this connection must close now, if it must.
    fn must_close(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if let Hold::Anonymous(_, evicted) = &mut self.hold {
            if Pin::new(evicted).poll(cx).is_ready() {
                return Some("closed to make room for a newer connection");
            }
        }
        if let Some(age) = &mut self.max_age {
            if age.as_mut().poll(cx).is_ready() {
                return Some("reached its maximum age");
            }
        }
        let idle_since = {
            let mut s = lock(&self.activity.state);
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
            (s.in_flight == 0).then_some(s.idle_since)
        };
        if let Some(since) = idle_since {
            let deadline = since + self.idle;
            if self.idle_timer.deadline() != deadline {
                self.idle_timer.as_mut().reset(deadline);
            }
            if self.idle_timer.as_mut().poll(cx).is_ready() {
                return Some("idle");
            }
        }
        None
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut conns = lock(&self.registry.conns);
        if conns
            .get(&self.peer)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.activity)))
        {
            conns.remove(&self.peer);
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed.is_none() {
            if let Some(why) = this.must_close(cx) {
                this.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = this.name, peer = %this.peer, "connection {why}; closing it");
                this.closed = Some(why);
            }
        }
        if let Some(why) = this.closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A gRPC service whose requests count as activity on their connection.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    registry: Arc<Registry>,
}

impl<S> std::fmt::Debug for Tracked<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

impl<S: NamedService> NamedService for Tracked<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tonic::codegen::Service<http::Request<Body>> for Tracked<S>
where
    S: tonic::codegen::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let in_flight = self.registry.in_flight(&req);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(match in_flight {
                // Until the response body (a stream's, too) is done.
                Some(held) => resp.map(move |body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &held;
                        frame
                    }))
                }),
                None => resp,
            })
        })
    }
}

enum Event {
    AcceptError(String, Duration),
    HandshakeTimeout,
    HandshakeFailed,
    HandshakeEvicted,
    AuthenticatedRefused,
    AnonymousEvicted,
}

/// What happened since the last summary line.
#[derive(Default)]
struct Summary {
    last: Option<Instant>,
    accept_errors: u64,
    last_accept_error: String,
    longest_pause: Duration,
    timeouts: u64,
    failures: u64,
    evicted: u64,
    refused: u64,
    anonymous_evicted: u64,
}

impl Shared {
    /// Counts the event, and logs a summary if none was logged for 10 s.
    /// Handshake failures alone (a wrong certificate) are logged at debug:
    /// they are the peer's problem and say nothing about the budget.
    fn note(&self, event: Event) {
        let mut s = lock(&self.summary);
        match event {
            Event::AcceptError(e, pause) => {
                s.accept_errors += 1;
                s.last_accept_error = e;
                s.longest_pause = s.longest_pause.max(pause);
            }
            Event::HandshakeTimeout => s.timeouts += 1,
            Event::HandshakeFailed => {
                s.failures += 1;
                return;
            }
            Event::HandshakeEvicted => s.evicted += 1,
            Event::AuthenticatedRefused => s.refused += 1,
            Event::AnonymousEvicted => s.anonymous_evicted += 1,
        }
        let now = Instant::now();
        if s.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        s.last = Some(now);
        let l = &self.limits;
        if s.accept_errors > 0 {
            tracing::warn!(
                listener = self.name,
                errors = s.accept_errors,
                pause_ms = s.longest_pause.as_millis() as u64,
                "accept failed ({}); pausing the accept loop, at most 1 s at a time",
                s.last_accept_error
            );
        }
        if s.timeouts + s.evicted + s.refused + s.anonymous_evicted > 0 {
            tracing::warn!(
                listener = self.name,
                handshake_timeouts = s.timeouts,
                handshakes_closed_for_room = s.evicted,
                handshake_budget = l.handshaking,
                authenticated_refused = s.refused,
                authenticated_budget = l.authenticated,
                anonymous_closed_for_room = s.anonymous_evicted,
                anonymous_budget = l.anonymous,
                handshake_failures = s.failures,
                "peers are pressing on the connection budget (counts since the last such line)"
            );
        }
        let last = s.last;
        *s = Summary {
            last,
            ..Summary::default()
        };
    }
}

#[cfg(test)]
mod tests;
