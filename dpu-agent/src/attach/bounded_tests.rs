//! The attachment listener bounds what unauthenticated peers hold
//! (docs/limits.md, "Connections and descriptors"): 250 idle TCP connections
//! and 250 half-finished TLS handshakes are closed (the oldest at once when the
//! 64-handshake budget is full, the rest by the 10 s handshake timeout) while
//! the real shim's calls are answered. The real `serve` on loopback, with
//! certificates from the controller's CA code; every wait is bounded. Prints
//! its figures (`cargo test -p dpu-agent --lib attach::bounded_tests -- --nocapture`).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dpu_controller::pki::{init_ca, load_ca};
use dpu_listen::flood::{client_hello, flood, open_count};
use dpu_proto::v1 as pb;
use dpu_proto::v1::attachments_client::AttachmentsClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{serve, AttachCmd, FD_PLAN};
use crate::config::Config;

const HANDSHAKE_TIMEOUT: Duration = dpu_listen::HANDSHAKE_TIMEOUT;
const IDLE: usize = 250;
const HALF_OPEN: usize = 250;
const SHIM: &str = "host-dpu-1";
const NODE: &str = "dpu-1";

struct Setup {
    _dir: tempfile::TempDir,
    cfg: Config,
    ca: String,
    shim: (String, String),
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("controller");
    init_ca(&pki, false).unwrap();
    let ca = load_ca(&pki).unwrap();
    let ca_pem = std::fs::read_to_string(pki.join("pki/ca.pem")).unwrap();
    let node = ca.issue_node(NODE, 1).unwrap();
    let shim = ca.issue_host_shim(SHIM, 1).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), &ca_pem).unwrap();
    std::fs::write(p("node.pem"), &node.cert_pem).unwrap();
    std::fs::write(p("node.key"), &node.key_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "node_name = \"{NODE}\"\nstate_dir = \"{}\"\n[controller]\nendpoint = \"https://127.0.0.1:1\"\n\
         ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [ovs]\ndb_socket = \"/nonexistent/db.sock\"\nrun_dir = \"/nonexistent\"\nbridge = \"br-x\"\n\
         [shim]\nlisten = \"127.0.0.1:{port}\"\nclient_name = \"{SHIM}\"\n",
        p("state").display(),
        p("ca.pem").display(),
        p("node.pem").display(),
        p("node.key").display(),
    );
    std::fs::write(p("agent.toml"), toml).unwrap();
    let cfg = Config::load_layers(&p("agent.toml"), std::iter::empty::<(String, String)>())
        .unwrap()
        .config;
    Setup {
        _dir: dir,
        cfg,
        ca: ca_pem,
        shim: (shim.cert_pem, shim.key_pem),
    }
}

/// Answers `Ready` as the agent loop would.
fn agent_loop(mut rx: mpsc::Receiver<AttachCmd>) {
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            if let AttachCmd::Ready(reply) = cmd {
                let _ = reply.send((true, "ready".into()));
            }
        }
    });
}

/// A `Ready` call with the shim's certificate, on a new connection; its latency.
async fn shim_ready(s: &Setup, addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&s.ca))
        .domain_name(NODE)
        .identity(Identity::from_pem(&s.shim.0, &s.shim.1));
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("the shim connects");
    let r = AttachmentsClient::new(ch)
        .ready(pb::ReadyRequest {})
        .await
        .expect("Ready is answered")
        .into_inner();
    assert!(r.ready, "{r:?}");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_closed_in_time_and_the_shim_is_served_meanwhile() {
    let s = setup();
    let addr = s.cfg.shim.as_ref().unwrap().listen;
    let (tx, rx) = mpsc::channel(16);
    agent_loop(rx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let cfg = s.cfg.clone();
    let server = tokio::spawn(async move { serve(&cfg, tx, stop_rx).await });
    // Listening, and the certificate is loaded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if TcpStream::connect(addr).is_ok() {
            break shim_ready(&s, addr).await;
        }
        assert!(Instant::now() < deadline, "the shim service did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let made = Instant::now();
    let conns = flood(addr, IDLE, HALF_OPEN, &client_hello(NODE));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = open_count(&conns);
    let budget = FD_PLAN.budget(dpu_listen::fds::raise_nofile(1 << 16).unwrap());
    // Served while the handshake budget is full of the flood.
    let mut latencies = Vec::new();
    for _ in 0..5 {
        latencies.push(shim_ready(&s, addr).await);
    }
    let gone = loop {
        let open = open_count(&conns);
        if open == 0 {
            break made.elapsed();
        }
        assert!(
            // Slack for accepts made late on a loaded machine (see
            // controller/tests/bounded.rs); before, they stayed 70 s and more.
            made.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_secs(10),
            "{open} still open after {:?}",
            made.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "agent shim listener: {held} of {} flood connections held 0.5 s after they were made \
         (handshake budget {}); shim Ready took {latencies:?} under that load ({first:?} before it); \
         all closed {gone:?} after they were made (handshake timeout {HANDSHAKE_TIMEOUT:?})",
        conns.len(),
        budget.handshaking
    );
    assert!(
        held <= budget.handshaking,
        "{held} held, budget {}",
        budget.handshaking
    );
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(2)));
    // And the shim is still served after.
    shim_ready(&s, addr).await;
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
}
