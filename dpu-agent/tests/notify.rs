//! The real agent binary speaking systemd's notify protocol to a datagram socket
//! this test owns, against a private OVS and with the controller down: READY=1 must
//! not wait for the controller, watchdog pings keep coming while it is unreachable
//! (fail-static), STATUS= says so, and SIGTERM gives STOPPING=1 and exit 0.
//! Needs root (the private OVS runs its switch in a netns); missing prerequisites
//! fail. A stuck loop withholding pings is unit-tested with paused time in
//! `src/agent/notify.rs`: the binary has no switch to stall itself.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use dpu_agent::state::alloc::Allocations;
use dpu_agent::state::store::{Persisted, Store};
use dpu_lab::ovs::OvsInstance;
use dpu_lab::process::{spawn_logged, Child};
use dpu_proto::v1 as pb;

/// `WATCHDOG_USEC` given to the agent: pings are due every 500 ms.
const WATCHDOG: Duration = Duration::from_secs(1);
/// Bound on READY=1 (OVSDB, bridge creation, first read of the switch).
const READY_WITHIN: Duration = Duration::from_secs(30);

struct Notifications {
    sock: UnixDatagram,
    /// Everything received so far, with its arrival time.
    seen: Vec<(Instant, String)>,
}

impl Notifications {
    /// Receives until a message satisfies `want` or `within` passes.
    fn wait_for(&mut self, within: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push((Instant::now(), msg.clone()));
                    if want(&msg) {
                        return Some(msg);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// Collects everything that arrives during `window`.
    fn collect(&mut self, window: Duration) -> Vec<String> {
        let from = self.seen.len();
        let _ = self.wait_for(window, |_| false);
        self.seen[from..].iter().map(|(_, m)| m.clone()).collect()
    }
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A private OVS, a config pointing at a closed controller port, and the agent
/// started with `NOTIFY_SOCKET` and `WATCHDOG_USEC`. Field order is drop order.
struct Run {
    agent: Child,
    notes: Notifications,
    log: std::path::PathBuf,
    bridge: String,
    _work: tempfile::TempDir,
    ovs: OvsInstance,
}

impl Run {
    /// `restore`: a persisted snapshot of this version is put in the state dir first.
    fn start(restore: Option<u64>) -> Run {
        dpu_lab::prereq::assert_root_and_ovs();
        let ovs = OvsInstance::start().expect("a private OVS (root and openvswitch-switch)");
        let work = tempfile::Builder::new()
            .prefix("dpu-notify-")
            .tempdir()
            .unwrap();
        let bridge = format!(
            "brn{}{}",
            std::process::id() % 100_000,
            u8::from(restore.is_some())
        );
        let state = work.path().join("state");
        if let Some(version) = restore {
            let store = Store::open(&state).unwrap();
            store
                .save(&Persisted {
                    snapshot: pb::Update {
                        version,
                        snapshot: true,
                        ..Default::default()
                    },
                    alloc: Allocations::default(),
                })
                .unwrap();
        }
        // TLS files are read at each connect: missing ones only fail the session.
        let config = format!(
            r#"node_name = "dpu-1"
state_dir = "{state}"

[controller]
endpoint = "https://127.0.0.1:{port}"
ca_file = "{pki}/ca.pem"
cert_file = "{pki}/dpu-1.pem"
key_file = "{pki}/dpu-1.key"
backoff_min_ms = 100
backoff_max_ms = 500

[ovs]
db_socket = "{db}"
run_dir = "{run}"
bridge = "{bridge}"
datapath_type = "netdev"

[metrics]
listen = "127.0.0.1:0"

[ops]
socket = "{ops}"
"#,
            ops = work.path().join("ops.sock").display(),
            state = state.display(),
            port = closed_port(),
            pki = work.path().join("pki").display(),
            db = ovs.db_sock().display(),
            run = ovs.dir().display(),
        );
        let config_path = work.path().join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        let notify_path = work.path().join("notify.sock");
        let notes = Notifications {
            sock: UnixDatagram::bind(&notify_path).unwrap(),
            seen: Vec::new(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpu-agent"));
        cmd.args(["run", "--config"])
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info,dpu_agent=debug");
        let log = work.path().join("agent.log");
        let agent = spawn_logged(cmd, &log).unwrap();
        Run {
            agent,
            notes,
            log,
            bridge,
            _work: work,
            ovs,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> String {
        match self
            .notes
            .wait_for(READY_WITHIN, |m| m.lines().any(|l| l == "READY=1"))
        {
            Some(m) => m,
            None => panic!("no READY=1 within {READY_WITHIN:?}\n{}", self.log()),
        }
    }

    /// SIGTERM: STOPPING=1, then exit 0.
    fn stop(&mut self) {
        dpu_lab::process::signal(self.agent.pid(), "TERM").unwrap();
        let stopping = self.notes.wait_for(Duration::from_secs(10), |m| {
            m.lines().any(|l| l == "STOPPING=1")
        });
        assert!(
            stopping.is_some(),
            "no STOPPING=1: {:?}\n{}",
            self.notes.seen,
            self.log()
        );
        let status = self
            .agent
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("the agent exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", self.log());
    }
}

#[test]
fn ready_status_watchdog_and_stopping_with_the_controller_down() {
    let mut run = Run::start(None);
    let ready = run.wait_ready();
    assert!(
        ready.contains("STATUS=controller disconnected; no intent yet; 0 pods"),
        "{ready}"
    );

    // Pings every WATCHDOG/2 = 500 ms: 6 in 3 s, give or take scheduling.
    let window = Duration::from_secs(3);
    let got = run.notes.collect(window);
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        (4..=8).contains(&pings),
        "{pings} WATCHDOG=1 in {window:?}, wanted about 6: {got:?}\n{}",
        run.log()
    );
    assert!(
        run.notes
            .seen
            .iter()
            .all(|(_, m)| !m.contains("STATUS=controller connected")),
        "the controller is down: {:?}",
        run.notes.seen
    );
    run.stop();
    eprintln!(
        "notifications: {:?}",
        run.notes.seen.iter().map(|(_, m)| m).collect::<Vec<_>>()
    );
}

#[test]
fn ready_after_the_persisted_intent_is_back_on_the_switch() {
    let mut run = Run::start(Some(7));
    let ready = run.wait_ready();
    assert!(
        ready.contains("STATUS=controller disconnected; applied version 7; 0 pods"),
        "{ready}"
    );
    // READY=1 came after the restore reconcile: the pipeline is installed already.
    let flows = run.ovs.dump_flows(&run.bridge).unwrap();
    assert!(!flows.is_empty(), "no flows at READY=1\n{}", run.log());
    run.stop();
}
