//! A real etcd (Debian's `etcd-server`) for one test: mutual TLS on loopback
//! ports of its own, its data in the test's directory, killed by pid when the
//! fixture drops.
//!
//! A missing `etcd` binary is a failure that says what to install, never a
//! skip (`lab/install-deps` installs it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;

use crate::pki::TestCa;

/// How long etcd may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd and the files a client needs to reach it.
#[derive(Debug)]
pub struct TestEtcd {
    child: Child,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA that signed etcd's certificate and the client's.
    pub ca: PathBuf,
    /// A client certificate and key etcd accepts.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// etcd's log (stderr).
    pub log: PathBuf,
    dir: PathBuf,
    /// What it was started with, to start it again.
    args: Vec<String>,
    client_port: u16,
}

impl TestEtcd {
    /// Starts etcd with its data, certificates and log under `dir`.
    pub fn start(dir: &Path) -> TestEtcd {
        let ca = TestCa::new("test etcd CA");
        let server = ca.issue_for(
            &["127.0.0.1", "localhost"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let client = ca.client(&["dpu-controller"]);
        std::fs::create_dir_all(dir).expect("the etcd test directory");
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("an etcd test file");
            p
        };
        let ca_path = write("ca.pem", ca.pem());
        let server_cert = write("server.pem", server.cert_pem());
        let server_key = write("server-key.pem", server.key_pem());
        let cert = write("client.pem", client.cert_pem());
        let key = write("client-key.pem", client.key_pem());
        let (client_port, peer_port) = (free_port(), free_port());
        let url = format!("https://127.0.0.1:{client_port}");
        let log = dir.join("etcd.log");
        let args = vec![
            "--name=test".to_string(),
            format!("--data-dir={}", dir.join("data").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=test=http://127.0.0.1:{peer_port}"),
            "--client-cert-auth".to_string(),
            format!("--trusted-ca-file={}", ca_path.display()),
            format!("--cert-file={}", server_cert.display()),
            format!("--key-file={}", server_key.display()),
            "--log-outputs=stderr".to_string(),
        ];
        let child = spawn(&args, &log);
        let mut etcd = TestEtcd {
            child,
            url,
            ca: ca_path,
            cert,
            key,
            log,
            dir: dir.to_path_buf(),
            args,
            client_port,
        };
        etcd.wait_listening();
        etcd
    }

    /// Starts etcd again on the same ports and data, after [`TestEtcd::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.args, &self.log);
        self.wait_listening();
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// etcd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "etcd exited at start ({status}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if start.elapsed() > START_TIMEOUT {
                panic!("etcd did not listen on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills etcd now (SIGKILL), as a crash or a partition would look.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the etcd log");
    Command::new("etcd")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start etcd ({e}): install Debian's etcd-server (lab/install-deps)")
        })
}

/// A loopback port nothing listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
