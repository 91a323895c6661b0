use super::*;

use rcgen::ExtendedKeyUsagePurpose;
use test_support::pki::TestCa;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

const BODY: &str = "# HELP dpu_test A test.\n# TYPE dpu_test gauge\ndpu_test 1\n";
const GET: &str = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
/// Generous: only a broken server takes this long.
const PATIENCE: Duration = Duration::from_secs(5);

fn plain() -> MetricsConfig {
    MetricsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..MetricsConfig::default()
    }
}

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start(cfg: &MetricsConfig, limits: Limits) -> Running {
    let server = bind(cfg).await.unwrap().with_limits(limits);
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(server.run(|| async { BODY.to_string() }, rx));
    Running { addr, stop, task }
}

/// Writes `request` and reads until the peer closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> io::Result<String> {
    s.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no end of response"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn raw(addr: SocketAddr, request: &str) -> io::Result<String> {
    exchange(TcpStream::connect(addr).await?, request).await
}

/// Reads until the peer closes; true when it closed without a response.
async fn closed_silently(s: &mut TcpStream) -> bool {
    let mut out = Vec::new();
    matches!(
        timeout(PATIENCE, s.read_to_end(&mut out)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Every CA of these tests has this name: a certificate from another of them
/// fails the client CA's signature check, not its issuer lookup.
const CA_NAME: &str = "metrics test CA";

struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: TestCa::new(CA_NAME),
        }
    }

    /// A certificate for localhost and 127.0.0.1 signed by `issuer`, written
    /// out; returns its PEM files' paths and the PEM texts.
    fn leaf(
        &self,
        name: &str,
        issuer: &TestCa,
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf, String, String) {
        let leaf = issuer.issue(&["localhost", "127.0.0.1"], usage);
        let (cert, key) = (leaf.cert_pem(), leaf.key_pem());
        let (c, k) = (
            self.file(&format!("{name}.crt"), &cert),
            self.file(&format!("{name}.key"), &key),
        );
        (c, k, cert, key)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn server(&self, client_ca: bool) -> MetricsConfig {
        let (cert, key, _, _) = self.leaf("server", &self.ca, ExtendedKeyUsagePurpose::ServerAuth);
        MetricsConfig {
            tls_cert_file: Some(cert),
            tls_key_file: Some(key),
            client_ca_file: client_ca.then(|| self.file("ca.crt", &self.ca.pem())),
            ..plain()
        }
    }
}

/// A scrape over TLS trusting `ca_pem`, showing `client` (cert, key PEM)
/// if given.
async fn tls_get(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> io::Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    exchange(tls, GET).await
}

fn ok_with_body(response: &str) {
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains(&format!("content-type: {METRICS_CONTENT_TYPE}\r\n")),
        "{response}"
    );
    assert!(response.ends_with(&format!("\r\n\r\n{BODY}")), "{response}");
}

#[tokio::test]
async fn a_plain_scrape_returns_the_text() {
    let s = start(&plain(), LIMITS).await;
    ok_with_body(&raw(s.addr, GET).await.unwrap());
    ok_with_body(
        &raw(
            s.addr,
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap(),
    );
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405() {
    let s = start(&plain(), LIMITS).await;
    let r = raw(
        s.addr,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.unwrap().starts_with("HTTP/1.1 404 "));
    let r = raw(
        s.addr,
        "GET /metricsx HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.unwrap().starts_with("HTTP/1.1 404 "));
    let r = raw(
        s.addr,
        "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("allow: get, head\r\n"),
        "{r}"
    );
    let r = raw(
        s.addr,
        "HEAD /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");
}

#[tokio::test]
async fn tls_serves_and_refuses_plain_http() {
    let pki = Pki::new();
    let s = start(&pki.server(false), LIMITS).await;
    ok_with_body(&tls_get(s.addr, &pki.ca.pem(), None).await.unwrap());
    let plain = raw(s.addr, GET).await.unwrap_or_default();
    assert!(!plain.starts_with("HTTP/"), "{plain}");
    // The server is still there after the failed handshake.
    ok_with_body(&tls_get(s.addr, &pki.ca.pem(), None).await.unwrap());
}

#[tokio::test]
async fn a_client_ca_requires_a_certificate_it_signed() {
    let pki = Pki::new();
    let s = start(&pki.server(true), LIMITS).await;
    let ca = pki.ca.pem();
    let refused = |r: io::Result<String>| match r {
        Err(_) => {}
        Ok(text) => assert!(!text.starts_with("HTTP/"), "{text}"),
    };
    refused(tls_get(s.addr, &ca, None).await);
    let other_ca = TestCa::new(CA_NAME);
    let (_, _, cert, key) = pki.leaf("rogue", &other_ca, ExtendedKeyUsagePurpose::ClientAuth);
    refused(tls_get(s.addr, &ca, Some((&cert, &key))).await);
    let (_, _, cert, key) = pki.leaf("scraper", &pki.ca, ExtendedKeyUsagePurpose::ClientAuth);
    ok_with_body(&tls_get(s.addr, &ca, Some((&cert, &key))).await.unwrap());
}

#[tokio::test]
async fn shutdown_stops_the_server_and_closes_idle_connections() {
    let s = start(&plain(), LIMITS).await;
    // A keep-alive connection, idle after one scrape.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(BODY.as_bytes()) {
        let mut buf = [0; 4096];
        let n = timeout(PATIENCE, idle.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    s.stop.send(true).unwrap();
    timeout(PATIENCE, s.task)
        .await
        .expect("server stopped")
        .unwrap();
    assert!(closed_silently(&mut idle).await);
    assert!(TcpStream::connect(s.addr).await.is_err());
}

#[tokio::test]
async fn dropping_the_shutdown_sender_stops_the_server() {
    let s = start(&plain(), LIMITS).await;
    drop(s.stop);
    timeout(PATIENCE, s.task)
        .await
        .expect("server stopped")
        .unwrap();
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_header_timeout() {
    let limits = Limits {
        header_read: Duration::from_millis(200),
        ..LIMITS
    };
    let s = start(&plain(), limits).await;
    let t0 = std::time::Instant::now();
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_silently(&mut silent).await);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn a_connection_is_closed_after_its_lifetime() {
    let limits = Limits {
        lifetime: Duration::from_millis(300),
        ..LIMITS
    };
    let s = start(&plain(), limits).await;
    let t0 = std::time::Instant::now();
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_silently(&mut idle).await);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let limits = Limits {
        connections: 1,
        ..LIMITS
    };
    let s = start(&plain(), limits).await;
    let holder = TcpStream::connect(s.addr).await.unwrap();
    // Let the server accept the holder before the second arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_silently(&mut extra).await);
    drop(holder);
    // The slot comes back once the server sees the holder go.
    let mut served = false;
    for _ in 0..50 {
        if let Ok(r) = raw(s.addr, GET).await {
            if r.starts_with("HTTP/1.1 200") {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served);
}

#[tokio::test]
async fn bad_tls_files_are_named() {
    let pki = Pki::new();
    let good = pki.server(false);
    let junk = pki.file("junk.pem", "not a certificate\n");
    let err = |cfg: MetricsConfig| async move { bind(&cfg).await.unwrap_err().to_string() };

    let e = err(MetricsConfig {
        tls_cert_file: Some(junk.clone()),
        ..good.clone()
    })
    .await;
    assert_eq!(
        e,
        format!(
            "metrics.tls_cert_file {}: no certificate in file",
            junk.display()
        )
    );

    let e = err(MetricsConfig {
        tls_key_file: Some(junk.clone()),
        ..good.clone()
    })
    .await;
    assert_eq!(
        e,
        format!(
            "metrics.tls_key_file {}: no private key in file",
            junk.display()
        )
    );

    let missing = pki.dir.path().join("missing.pem");
    let e = err(MetricsConfig {
        client_ca_file: Some(missing.clone()),
        ..good.clone()
    })
    .await;
    assert!(
        e.starts_with(&format!("metrics.client_ca_file {}: ", missing.display())),
        "{e}"
    );

    // Another certificate's key.
    let (_, other_key, _, _) = pki.leaf("other", &pki.ca, ExtendedKeyUsagePurpose::ServerAuth);
    let e = err(MetricsConfig {
        tls_key_file: Some(other_key),
        ..good.clone()
    })
    .await;
    assert!(e.starts_with("metrics.tls_cert_file "), "{e}");

    let e = err(MetricsConfig {
        tls_key_file: None,
        ..good.clone()
    })
    .await;
    assert!(e.contains("tls_key_file"), "{e}");
}

#[tokio::test]
async fn a_taken_port_is_named() {
    let s = start(&plain(), LIMITS).await;
    let e = bind(&MetricsConfig {
        listen: s.addr,
        ..plain()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!("metrics.listen {}: ", s.addr)),
        "{e}"
    );
}
