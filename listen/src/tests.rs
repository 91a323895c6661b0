//! In-process tests on loopback with throwaway certificates. Every wait is
//! bounded.

use super::*;
use crate::flood::closed;
use test_support::pki::{Leaf, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(5);

struct Pki {
    ca: CertificateDer<'static>,
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

fn pki() -> Pki {
    let ca = TestCa::new("listen test CA");
    let der = |leaf: Leaf| {
        (
            vec![leaf.cert.der().clone()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem().as_bytes()).unwrap(),
        )
    };
    Pki {
        server: der(ca.server(&["localhost"])),
        client: der(ca.client(&["client"])),
        ca: ca.cert().der().clone(),
    }
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(pki.ca.clone()).unwrap();
    Arc::new(r)
}

fn server_config(pki: &Pki) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.0.clone(), pki.server.1.clone_key())
        .unwrap();
    c.alpn_protocols.push(b"h2".to_vec());
    Arc::new(c)
}

async fn tls_client(
    pki: &Pki,
    addr: SocketAddr,
    with_cert: bool,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(pki));
    let config = if with_cert {
        b.with_client_auth_cert(pki.client.0.clone(), pki.client.1.clone_key())
            .unwrap()
    } else {
        b.with_no_client_auth()
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    // TLS 1.3: the server's side completes when it reads the client's Finished.
    s.flush().await.unwrap();
    s
}

const LIMITS: Limits = Limits {
    handshake_timeout: Duration::from_millis(600),
    handshaking: 4,
    authenticated: 2,
    anonymous: 1,
    idle_timeout: Duration::from_millis(400),
    anonymous_idle_timeout: Duration::from_millis(400),
    anonymous_max_age: Duration::from_secs(30),
};

async fn listen(
    pki: &Pki,
    limits: Limits,
) -> (
    SocketAddr,
    ReceiverStream<io::Result<Conn>>,
    Arc<Stats>,
    watch::Sender<Option<Arc<ServerConfig>>>,
) {
    let (tx, rx) = watch::channel(Some(server_config(pki)));
    let l = BoundedListener::new(
        "test",
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        rx,
        limits,
    );
    let addr = l.local_addr().unwrap();
    let stats = l.stats();
    (addr, l.incoming(), stats, tx)
}

async fn next_conn(incoming: &mut ReceiverStream<io::Result<Conn>>) -> Conn {
    tokio::time::timeout(WAIT, incoming.next())
        .await
        .expect("a connection")
        .unwrap()
        .unwrap()
}

/// Reads until the server side fails, returning how long that took.
async fn time_until_closed(mut conn: Conn) -> Duration {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, conn.read(&mut buf)).await {
            Err(_) => panic!("not closed within {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn accept_backoff_grows_to_a_second_and_resets() {
    let mut b = Backoff::default();
    let pauses: Vec<u128> = (0..9).map(|_| b.failed().as_millis()).collect();
    assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    b.succeeded();
    assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_bounded_in_count_and_time_and_a_real_client_gets_through() {
    let pki = pki();
    let (addr, mut incoming, stats, _tls) = listen(&pki, LIMITS).await;
    let idle: Vec<std::net::TcpStream> = (0..12)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The budget is 4: the 8 oldest are closed as the newer ones arrive.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let n = idle.iter().filter(|s| closed(s)).count();
        if n >= 8 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A real client still completes its handshake, with a certificate.
    let _client = tls_client(&pki, addr, true).await;
    let _conn = next_conn(&mut incoming).await;
    // Everything still in the handshake is closed by the timeout.
    tokio::time::sleep(LIMITS.handshake_timeout + Duration::from_millis(300)).await;
    assert_eq!(idle.iter().filter(|s| closed(s)).count(), 12);
    assert!(stats.handshakes_evicted.load(Ordering::Relaxed) >= 8);
    assert!(stats.handshake_timeouts.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_but_not_while_a_request_is_in_flight() {
    let pki = pki();
    let (addr, mut incoming, _stats, _tls) = listen(&pki, LIMITS).await;
    let _c1 = tls_client(&pki, addr, true).await;
    let conn = next_conn(&mut incoming).await;
    let took = time_until_closed(conn).await;
    assert!(
        took >= LIMITS.idle_timeout - Duration::from_millis(50) && took < Duration::from_secs(2),
        "{took:?}"
    );

    let _c2 = tls_client(&pki, addr, true).await;
    let conn = next_conn(&mut incoming).await;
    let busy = InFlight::new(conn.activity.clone());
    let reader = tokio::spawn(time_until_closed(conn));
    tokio::time::sleep(LIMITS.idle_timeout * 3).await;
    assert!(!reader.is_finished(), "closed with a request in flight");
    drop(busy);
    let after = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert!(after >= LIMITS.idle_timeout * 3, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_connections_have_their_own_budget() {
    let pki = pki();
    let limits = Limits {
        idle_timeout: Duration::from_secs(30),
        ..LIMITS
    };
    let (addr, mut incoming, stats, _tls) = listen(&pki, limits).await;
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        clients.push(tls_client(&pki, addr, true).await);
        conns.push(next_conn(&mut incoming).await);
    }
    // The third is refused after its handshake; the first two stay.
    let mut third = tls_client(&pki, addr, true).await;
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(stats.authenticated_refused.load(Ordering::Relaxed), 1);
    // A flood of anonymous connections does not touch them either.
    let _anon: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(tls_client(&pki, addr, false).await);
        }
        v
    };
    assert!(stats.anonymous_evicted.load(Ordering::Relaxed) >= 1);
    drop(conns.pop());
    clients.pop();
    let _again = tls_client(&pki, addr, true).await;
    // The anonymous ones came first in the queue; skip them.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let c = next_conn(&mut incoming).await;
        if matches!(c.hold, Hold::Authenticated(_)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_make_room_by_closing_the_oldest() {
    let pki = pki();
    let limits = Limits {
        anonymous_idle_timeout: Duration::from_secs(30),
        ..LIMITS
    };
    let (addr, mut incoming, _stats, _tls) = listen(&pki, limits).await;
    let _a = tls_client(&pki, addr, false).await;
    let first = next_conn(&mut incoming).await;
    let reader = tokio::spawn(time_until_closed(first));
    let _b = tls_client(&pki, addr, false).await;
    let _second = next_conn(&mut incoming).await;
    let took = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waits_for_the_first_certificate_within_the_handshake_timeout() {
    let pki = pki();
    let (addr, mut incoming, _stats, tls) = listen(&pki, LIMITS).await;
    tls.send_replace(None);
    let config = server_config(&pki);
    let client = tokio::spawn({
        let pki = Pki {
            ca: pki.ca.clone(),
            server: (pki.server.0.clone(), pki.server.1.clone_key()),
            client: (pki.client.0.clone(), pki.client.1.clone_key()),
        };
        async move { tls_client(&pki, addr, true).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls.send_replace(Some(config));
    let _conn = next_conn(&mut incoming).await;
    let _client = client.await.unwrap();
}
