//! A real etcd (Debian's `etcd-server`) for one test: mutual TLS on loopback
//! ports of its own, its data in the test's directory, killed by pid when the
//! fixture drops. [`TestEtcd`] is one member; [`TestEtcdCluster`] several,
//! with one CA, whose members a test kills and starts again.
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
        let files = TlsFiles::write(dir);
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
        ];
        let args = [args, files.server_args()].concat();
        let child = spawn(&args, &log);
        let mut etcd = TestEtcd {
            child,
            url,
            ca: files.ca,
            cert: files.cert,
            key: files.key,
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
        wait_listening(&mut self.child, self.client_port, &self.log);
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

/// A real etcd cluster of several members on loopback (`members/<i>/`), with
/// one CA and mutual TLS on every client URL as [`TestEtcd`] has (peers speak
/// plain HTTP on loopback). Members are killed and started again by index;
/// each keeps its ports and data directory, so a restarted member rejoins.
/// Every running member is killed by pid when the fixture drops.
#[derive(Debug)]
pub struct TestEtcdCluster {
    members: Vec<Member>,
    /// Every member's client URL, `https://127.0.0.1:<port>`, by index.
    pub urls: Vec<String>,
    /// The CA that signed every member's certificate and the client's.
    pub ca: PathBuf,
    /// A client certificate and key every member accepts.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
struct Member {
    child: Option<Child>,
    args: Vec<String>,
    client_port: u16,
    log: PathBuf,
    /// Holds the pid while the member runs, so a test runner that lost the
    /// test (killed -9) can stop it (`lab/run-tests` stops every `*.pid`
    /// under its directory).
    pid_file: PathBuf,
}

impl Member {
    fn start(&mut self) {
        assert!(self.child.is_none(), "the member runs already");
        let child = spawn(&self.args, &self.log);
        std::fs::write(&self.pid_file, format!("{}\n", child.id())).expect("the pid file");
        self.child = Some(child);
    }

    fn wait_listening(&mut self) {
        let child = self.child.as_mut().expect("a started member");
        wait_listening(child, self.client_port, &self.log);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

impl TestEtcdCluster {
    /// Starts `size` members (data, certificates and logs under `dir`) and
    /// waits until every one listens and one of them leads.
    pub fn start(dir: &Path, size: usize) -> TestEtcdCluster {
        Self::start_with(dir, size, &[])
    }

    /// [`Self::start`], each member with `extra` arguments too (limits such
    /// as `--max-txn-ops`).
    pub fn start_with(dir: &Path, size: usize, extra: &[&str]) -> TestEtcdCluster {
        assert!(size > 0, "a cluster has members");
        let files = TlsFiles::write(dir);
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let name = |i: usize| format!("m{i}");
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("{}=http://127.0.0.1:{peer}", name(i)))
            .collect();
        // A token of its own, so members of two tests' clusters never talk.
        let token = format!(
            "test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let mut urls = Vec::new();
        let mut members = Vec::new();
        for (i, (client_port, peer_port)) in ports.iter().copied().enumerate() {
            let mdir = dir.join("members").join(i.to_string());
            std::fs::create_dir_all(&mdir).expect("a member's directory");
            let url = format!("https://127.0.0.1:{client_port}");
            let args = vec![
                format!("--name={}", name(i)),
                format!("--data-dir={}", mdir.join("data").display()),
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster={}", initial.join(",")),
                format!("--initial-cluster-token={token}"),
                "--initial-cluster-state=new".to_string(),
            ];
            urls.push(url);
            members.push(Member {
                child: None,
                args: [
                    args,
                    files.server_args(),
                    extra.iter().map(|a| a.to_string()).collect(),
                ]
                .concat(),
                client_port,
                log: mdir.join("etcd.log"),
                pid_file: mdir.join("etcd.pid"),
            });
        }
        let mut cluster = TestEtcdCluster {
            members,
            urls,
            ca: files.ca,
            cert: files.cert,
            key: files.key,
        };
        cluster.start_all();
        cluster
    }

    /// How many members the cluster has.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Every member's client URL, comma-separated (`--etcd`, `--endpoints`).
    pub fn endpoints(&self) -> String {
        self.urls.join(",")
    }

    /// Member `i`'s pid while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s log (stderr).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    /// Kills member `i` now (SIGKILL), as a crash would look.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again (same ports, same data) after [`Self::kill`],
    /// and waits until it listens.
    pub fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].start();
        self.members[i].wait_listening();
    }

    /// Kills every member (SIGKILL): the whole store gone.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts every member that is not running (all of them at first, or
    /// after [`Self::stop_all`]) and waits until each listens and one leads.
    /// A member serves clients only once the cluster has a quorum, so all are
    /// started before any is waited for.
    pub fn start_all(&mut self) {
        for m in &mut self.members {
            if m.child.is_none() {
                m.start();
            }
        }
        for m in &mut self.members {
            m.wait_listening();
        }
        self.wait_leader(START_TIMEOUT);
    }

    /// `etcdctl ARGS` against the running members, with the client's TLS files.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let running: Vec<&str> = self
            .urls
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| m.child.is_some())
            .map(|(u, _)| u.as_str())
            .collect();
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", running.join(",")))
            .arg(format!("--cacert={}", self.ca.display()))
            .arg(format!("--cert={}", self.cert.display()))
            .arg(format!("--key={}", self.key.display()))
            .args(["--dial-timeout=1s", "--command-timeout=3s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run etcdctl ({e}): install Debian's etcd-client (lab/install-deps)")
            })
    }

    /// The index of the member that leads now, as the running members say
    /// (`etcdctl endpoint status`): the one whose own id is the leader's id.
    /// `None` while there is no leader or no member answers.
    pub fn leader(&self) -> Option<usize> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let statuses: Vec<serde_json::Value> = serde_json::from_str(text.trim()).ok()?;
        statuses.iter().find_map(|st| {
            let me = st["Status"]["header"]["member_id"].as_u64()?;
            let leader = st["Status"]["leader"].as_u64()?;
            if me != leader {
                return None;
            }
            let endpoint = st["Endpoint"].as_str()?;
            self.urls.iter().position(|u| u == endpoint)
        })
    }

    /// Waits up to `timeout` for a leader; panics with the members' logs if
    /// none is elected.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            if start.elapsed() > timeout {
                let logs: String = (0..self.size())
                    .map(|i| format!("\nmember {i}:\n{}", tail(&self.log(i))))
                    .collect();
                panic!("no etcd member led within {timeout:?}{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The mod revision of `key` (`etcdctl get -w json`), if it exists.
    pub fn mod_revision(&self, key: &str) -> Option<i64> {
        let out = self.etcdctl(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["kvs"][0]["mod_revision"].as_i64()
    }
}

impl Drop for TestEtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The last 30 lines of a log.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Waits until `child` listens on loopback `port`; panics with its log if it
/// exits first or does not listen within [`START_TIMEOUT`].
fn wait_listening(child: &mut Child, port: u16, log: &Path) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "etcd exited at start ({status}); its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
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

/// The CA, etcd's serving certificate and a client certificate, written under
/// a directory: one set for a member or for every member of a cluster.
#[derive(Debug)]
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    fn write(dir: &Path) -> TlsFiles {
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
        TlsFiles {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.cert_pem()),
            server_key: write("server-key.pem", server.key_pem()),
            cert: write("client.pem", client.cert_pem()),
            key: write("client-key.pem", client.key_pem()),
        }
    }

    /// etcd's flags for mutual TLS on its client URLs, and its log to stderr.
    fn server_args(&self) -> Vec<String> {
        vec![
            "--client-cert-auth".to_string(),
            format!("--trusted-ca-file={}", self.ca.display()),
            format!("--cert-file={}", self.server_cert.display()),
            format!("--key-file={}", self.server_key.display()),
            "--log-outputs=stderr".to_string(),
        ]
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
