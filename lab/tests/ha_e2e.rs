//! The control plane highly available, end to end (issue 18, "Tests"): a real
//! 3-member etcd cluster, three real controller replicas on it, two emulated
//! DPUs (OVS, a Geneve underlay) whose real agents list all three replicas,
//! and real TCP through a Service VIP whose backends sit on both DPUs.
//!
//! 1. `apply -f` reaches both agents at the version etcd gave the intent (the
//!    mod revision of `/dpu/meta/version`); `get` returns what was applied.
//! 2. Under 20 requests/s and 5 changes/s, the replica dpu-1's agent is
//!    connected to is killed -9: the agent fails over (timed), no request
//!    fails, the versions it applies only grow, and its flows and groups equal
//!    those of the same agent restarted with its state wiped.
//! 3. The etcd leader member killed -9: writes pause for the election (timed)
//!    and traffic never stops.
//! 4. All of etcd down for 30 s: traffic never stops and `apply` is refused
//!    with `store unavailable`; etcd back, an apply works and every replica and
//!    agent converges (timed).
//!
//! Each phase prints its figures. Needs root, Open vSwitch and etcd; a missing
//! one fails the test with one message.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, ensure, Context, Result};
use dpu_lab::fixture::{controller_status, node_status_of, start_serve};
use dpu_lab::multi::{node_name, MultiLab};
use dpu_lab::process::{run_bounded, wait_until, Child};
use dpu_lab::scenario::{mac, placed_workload, service_yaml, vpc_yaml, GW, VIP};
use dpu_lab::traffic::{self, TrafficResult};
use test_support::etcd::TestEtcdCluster;

/// The Service whose backends' weights change all the time.
const CHURN_VIP: &str = "10.96.0.20";
/// The key whose mod revision is the intent version (controller/README.md).
const VERSION_KEY: &str = "/dpu/meta/version";
/// Written with every change of intent: its mod revision is the last change's.
const GUARD_KEY: &str = "/dpu/intent/.guard";
/// 20 requests/s.
const LOAD_INTERVAL: Duration = Duration::from_millis(50);
/// 5 changes/s.
const CHURN_INTERVAL: Duration = Duration::from_millis(200);
const CHURN_CHANGES: u32 = 40;
const ETCD_DOWN: Duration = Duration::from_secs(30);
const REPLICAS: usize = 3;

/// Root, Open vSwitch and etcd, or one message naming what is missing.
fn prerequisites() {
    let r = dpu_lab::prereq::root_and_ovs().and_then(|()| {
        for p in ["etcd", "etcdctl"] {
            dpu_lab::prereq::find_program(p).context(
                "this needs etcd: Debian's etcd-server and etcd-client (lab/install-deps installs them)",
            )?;
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

/// One `dpu-controller serve` on the store, with its own state directory.
#[derive(Debug)]
struct Replica {
    state: PathBuf,
    addr: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn start(&mut self, store: &[String]) -> Result<()> {
        self.child = Some(start_serve(&self.state, &self.addr, store, &self.log)?);
        Ok(())
    }

    fn status(&self) -> Result<serde_json::Value> {
        controller_status(&self.state)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Field order is drop order: the replicas, then the agents and the fabric,
/// then etcd, then etcd's directory.
struct Ha {
    replicas: Vec<Replica>,
    lab: MultiLab,
    etcd: TestEtcdCluster,
    _etcd_dir: tempfile::TempDir,
    /// `--etcd URLS --etcd-ca … --etcd-cert … --etcd-key …`.
    store: Vec<String>,
}

impl Ha {
    /// `dpu-controller ARGS --etcd …`, bounded.
    fn ctl(&self, args: &[&str]) -> Result<Output> {
        let mut c = Command::new(traffic::lab_bin("dpu-controller")?);
        c.args(args).args(&self.store);
        run_bounded(c, Duration::from_secs(30))
    }

    /// `dpu-controller apply -f FILE` of `yaml`, written to `apply/<name>`.
    fn apply(&self, name: &str, yaml: &str) -> Result<Output> {
        let dir = self.lab.path("apply");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(name);
        std::fs::write(&file, yaml)?;
        self.ctl(&["apply", "-f", &file.display().to_string()])
    }

    fn apply_ok(&self, name: &str, yaml: &str) -> Result<String> {
        let out = self.apply(name, yaml)?;
        ensure!(
            out.status.success(),
            "apply -f {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn mod_revision(&self, key: &str) -> Option<u64> {
        self.etcd
            .mod_revision(key)
            .and_then(|r| u64::try_from(r).ok())
    }

    /// The intent version once the leader has published the last change:
    /// `meta/version` written after `intent/.guard`.
    fn published(&self) -> Option<u64> {
        let (v, g) = (
            self.mod_revision(VERSION_KEY)?,
            self.mod_revision(GUARD_KEY)?,
        );
        (v > g).then_some(v)
    }

    /// Waits until the last change has a version above `after` and both agents
    /// applied it; returns it.
    fn wait_agents_converged(&self, after: u64, timeout: Duration) -> Result<u64> {
        let mut version = 0;
        wait_until("both agents at the published version", timeout, || {
            let Some(v) = self.published().filter(|v| *v > after) else {
                return false;
            };
            version = v;
            (0..2).all(|i| last_applied(&self.lab.agent_log(i)) == Some(v))
        })
        .map_err(|e| {
            anyhow!(
                "{e}: meta/version {:?}, .guard {:?}, agents at {:?}",
                self.mod_revision(VERSION_KEY),
                self.mod_revision(GUARD_KEY),
                (0..2)
                    .map(|i| last_applied(&self.lab.agent_log(i)))
                    .collect::<Vec<_>>()
            )
        })?;
        Ok(version)
    }

    /// The replica agent `i` is connected to (its log's last session).
    fn connected_replica(&self, i: usize) -> Result<usize> {
        let endpoint = sessions(&self.lab.agent_log(i))
            .last()
            .map(|(e, _)| e.clone())
            .ok_or_else(|| anyhow!("agent {i} never established a session"))?;
        self.replicas
            .iter()
            .position(|r| r.url() == endpoint)
            .ok_or_else(|| anyhow!("agent {i} is connected to {endpoint}, no replica"))
    }

    /// Which running replica says it leads (its status.json).
    fn leading_replica(&self) -> Option<usize> {
        self.replicas.iter().position(|r| {
            r.child.is_some() && r.status().is_ok_and(|s| s["store"]["leader"] == true)
        })
    }

    /// What went wrong, with the logs that say why.
    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.replicas.iter().enumerate() {
            s += &format!("\n--- replica {i} ({}):\n{}", r.addr, last(&r.log(), 30));
        }
        for i in 0..2 {
            let log = plain(&self.lab.agent_log(i));
            s += &format!("\n--- agent {}:\n{}", node_name(i), last(&log, 30));
        }
        s
    }

    /// The normalized flows and groups of DPU `i`: flows without cookies,
    /// both sorted.
    fn switch(&self, i: usize) -> Result<(Vec<String>, Vec<String>)> {
        let d = self.lab.fabric.dpu(i)?;
        let flows = traffic::flows_without_cookies(d.ovs().dump_flows(d.bridge())?);
        let mut groups = d.ovs().dump_groups(d.bridge())?;
        groups.sort();
        Ok((flows, groups))
    }
}

/// The last `n` lines of a log.
fn last(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The churned Service: weights of web-1 and web-2 (both 1..=8) that differ
/// from one step to the next and repeat only after 64 steps, so every step is
/// a change and no intent comes back (a change undone before it got its
/// version gets none).
fn churn_yaml(step: u32) -> String {
    let (a, b) = churn_weights(step);
    service_yaml(
        "churn",
        "vpc-a",
        CHURN_VIP,
        &format!(
            "  backends:\n    - {{workload: web-1, weight: {a}}}\n    - {{workload: web-2, weight: {b}}}"
        ),
        "",
    )
}

fn churn_weights(step: u32) -> (u32, u32) {
    (1 + step % 8, 1 + (step / 8) % 8)
}

/// Agent log lines without colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=` in a plain log line, without quotes.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    Some(line[at..].split_whitespace().next()?.trim_matches('"'))
}

/// The versions of every `update applied` line, in order.
fn applied_versions(log: &str) -> Vec<u64> {
    plain(log)
        .lines()
        .filter(|l| l.contains("update applied"))
        .filter_map(|l| field(l, "version")?.parse().ok())
        .collect()
}

fn last_applied(log: &str) -> Option<u64> {
    applied_versions(log).last().copied()
}

/// When a log line was written: its leading RFC 3339 UTC time
/// (`2026-12-07T14:09:10.158409Z`).
fn log_time(line: &str) -> Option<SystemTime> {
    let (date, time) = line.split_whitespace().next()?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.strip_suffix('Z')?.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let whole = u64::try_from(days).ok()? * 86_400 + h * 3_600 + min * 60;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(whole) + Duration::from_secs_f64(sec))
}

/// (endpoint, version) of every `controller session established` line.
fn sessions(log: &str) -> Vec<(String, u64)> {
    plain(log)
        .lines()
        .filter(|l| l.contains("controller session established"))
        .filter_map(|l| {
            Some((
                field(l, "endpoint")?.to_string(),
                field(l, "version")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Fails unless `versions` only grow: none goes back, none comes twice.
fn strictly_increasing(what: &str, versions: &[u64]) -> Result<()> {
    if let Some(w) = versions.windows(2).find(|w| w[1] <= w[0]) {
        bail!(
            "{what}: version {} applied after {} ({versions:?})",
            w[1],
            w[0]
        );
    }
    Ok(())
}

/// `count` TCP connections from `client` to the VIP, 20 per second.
fn load(lab: &MultiLab, count: u32) -> Result<JoinHandle<Result<TrafficResult>>> {
    traffic::spawn_tcp_load(
        lab.host_ns("client")?,
        &format!("{VIP}:80"),
        count,
        LOAD_INTERVAL,
        Duration::from_secs(2),
    )
}

fn joined(what: &str, h: JoinHandle<Result<TrafficResult>>, count: u32) -> Result<TrafficResult> {
    let r = h
        .join()
        .map_err(|_| anyhow!("the load thread panicked"))??;
    println!(
        "  traffic during {what}: {} ok, {} failed of {count} at 20/s (web-1 {}, web-2 {})",
        r.ok,
        r.failed,
        r.count_for("web-1"),
        r.count_for("web-2")
    );
    ensure!(
        (r.ok, r.failed) == (u64::from(count), 0),
        "traffic during {what}: {r:?}"
    );
    Ok(r)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The lab: 3 etcd members, 2 DPUs with a client and web-1 on dpu-1 and web-2
/// on dpu-2, the base intent applied (no Services yet), 3 replicas (replica
/// 0 leads), both agents started. dpu-1's agent lists the replicas 0, 1,
/// 2; dpu-2's 1, 2, 0.
fn ha_lab() -> Result<Ha> {
    let etcd_dir = tempfile::Builder::new().prefix("dpuha-etcd-").tempdir()?;
    let etcd = TestEtcdCluster::start(etcd_dir.path(), 3);
    let mut lab = MultiLab::new("ha", 2)?;
    let store = vec![
        "--etcd".to_string(),
        etcd.endpoints(),
        "--etcd-ca".to_string(),
        etcd.ca.display().to_string(),
        "--etcd-cert".to_string(),
        etcd.cert.display().to_string(),
        "--etcd-key".to_string(),
        etcd.key.display().to_string(),
    ];
    lab.add_host(0, "client", "10.0.1.2/24", &mac(2), GW)?;
    lab.add_host(0, "web-1", "10.0.1.11/24", &mac(11), GW)?;
    lab.add_host(1, "web-2", "10.0.1.12/24", &mac(12), GW)?;
    lab.echo("web-1", &[8080], &[5353])?;
    lab.echo("web-2", &[8080], &[5353])?;
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        let state = lab.path(&format!("replica-{i}"));
        std::fs::create_dir_all(state.join("pki"))?;
        // The same CA (and key) on every replica, as serve_store.rs does.
        for f in std::fs::read_dir(lab.path("controller-state/pki"))? {
            let f = f?;
            std::fs::copy(f.path(), state.join("pki").join(f.file_name()))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        replicas.push(Replica {
            log: lab.path(&format!("logs/replica-{i}.log")),
            state,
            addr: format!("127.0.0.1:{port}"),
            child: None,
        });
    }
    let mut ha = Ha {
        replicas,
        lab,
        etcd,
        _etcd_dir: etcd_dir,
        store,
    };
    let mut base = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    for (name, ip, m, app, dpu) in [
        ("client", "10.0.1.2", mac(2), "client", 0),
        ("web-1", "10.0.1.11", mac(11), "web", 0),
        ("web-2", "10.0.1.12", mac(12), "web", 1),
    ] {
        base += &placed_workload(name, "vpc-a", ip, &m, app, dpu, "Pod");
    }
    base += &ha.lab.dpu_nodes_yaml();
    ha.apply_ok("00-base.yaml", &base)?;
    let store = ha.store.clone();
    ha.replicas[0].start(&store)?;
    wait_until("replica 0 to lead", Duration::from_secs(30), || {
        ha.leading_replica() == Some(0)
    })?;
    for i in 1..REPLICAS {
        ha.replicas[i].start(&store)?;
    }
    let addrs: Vec<String> = ha.replicas.iter().map(|r| r.addr.clone()).collect();
    ha.lab.start_agent_with(0, &addrs)?;
    let rotated: Vec<String> = addrs[1..].iter().chain(&addrs[..1]).cloned().collect();
    ha.lab.start_agent_with(1, &rotated)?;
    Ok(ha)
}

#[test]
fn three_replicas_on_three_etcd_members_survive_a_replica_an_etcd_leader_and_etcd_itself() {
    prerequisites();
    let started = Instant::now();
    let mut ha = ha_lab().expect("the HA lab");
    let r = ha
        .wait_agents_converged(0, Duration::from_secs(30))
        .and_then(|_| {
            println!(
                "setup: 3 etcd members, 3 replicas (replica 0 leads), 2 agents converged in {} ms",
                ms(started.elapsed())
            );
            phases(&mut ha)
        });
    if let Err(e) = r {
        panic!("{e:#}\n{}", ha.logs());
    }
    println!("the whole test: {} s", started.elapsed().as_secs());
}

fn phases(ha: &mut Ha) -> Result<()> {
    let v = phase_apply(ha)?;
    let v = phase_replica_killed(ha, v)?;
    let v = phase_etcd_leader_killed(ha, v)?;
    phase_etcd_down(ha, v)?;
    Ok(())
}

/// 1. `apply -f` of two Services reaches both agents at the version etcd
///    gave it; the controllers record the agents' ACKs of it; `get` returns
///    what was applied.
fn phase_apply(ha: &Ha) -> Result<u64> {
    println!("phase 1: apply -f with both agents connected");
    let before = ha.wait_agents_converged(0, Duration::from_secs(5))?;
    let t = Instant::now();
    let services =
        service_yaml("web", "vpc-a", VIP, "  selector: {app: web}", "") + "---\n" + &churn_yaml(0);
    let out = ha.apply_ok("10-services.yaml", &services)?;
    ensure!(
        out == "YusurService/web created\nYusurService/churn created\n",
        "apply said: {out}"
    );
    let v = ha.wait_agents_converged(before, Duration::from_secs(30))?;
    let took = t.elapsed();
    let rev = ha
        .mod_revision(VERSION_KEY)
        .ok_or_else(|| anyhow!("no {VERSION_KEY}"))?;
    ensure!(v == rev, "the agents applied {v}, meta/version is at {rev}");
    println!(
        "  both agents applied v{v} {} ms after apply; etcd: {VERSION_KEY} mod_revision {rev}",
        ms(took)
    );
    // What the controllers recorded as ACKed (the store's status, written at
    // most every second by each replica).
    let mut acked = Vec::new();
    wait_until("the ACKs in status --etcd", Duration::from_secs(15), || {
        let Ok(out) = ha.ctl(&["status", "--json"]) else {
            return false;
        };
        let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        acked = (0..2)
            .map(|i| {
                node_status_of(&s, &node_name(i))
                    .ok()
                    .and_then(|n| n["applied_version"].as_u64())
            })
            .collect();
        acked.iter().all(|a| *a == Some(v))
    })
    .map_err(|e| anyhow!("{e}: ACKed {acked:?}, want v{v}"))?;
    println!("  status --etcd: dpu-1 and dpu-2 ACKed v{v}");
    // get: what was applied.
    let out = ha.ctl(&["get", "service", "churn", "-o", "json"])?;
    ensure!(
        out.status.success(),
        "get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let weights: Vec<u64> = got["spec"]["backends"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["weight"].as_u64()).collect())
        .unwrap_or_default();
    let (a, b) = churn_weights(0);
    ensure!(
        got["spec"]["clusterIPs"][0] == CHURN_VIP && weights == [u64::from(a), u64::from(b)],
        "get service churn: {got:#}"
    );
    let out = ha.ctl(&["get", "service", "web", "-o", "json"])?;
    let web: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        web["spec"]["clusterIPs"][0] == VIP && web["spec"]["selector"]["app"] == "web",
        "get service web: {web:#}"
    );
    println!("  get returns both Services as applied");
    ha.lab.fabric.resolve_underlay()?;
    let r = ha.lab.client("client", &format!("{VIP}:80"), "tcp", 20)?;
    ensure!(
        r.failed == 0 && r.count_for("web-1") > 0 && r.count_for("web-2") > 0,
        "{r:?}"
    );
    Ok(v)
}

/// 2. Under load and churn, the replica dpu-1's agent is connected to dies.
fn phase_replica_killed(ha: &mut Ha, before: u64) -> Result<u64> {
    println!("phase 2: kill -9 the replica dpu-1's agent is connected to, under 20 requests/s and 5 changes/s");
    let victim = ha.connected_replica(0)?;
    let led = ha.leading_replica() == Some(victim);
    let count = 400;
    let traffic = load(&ha.lab, count)?;
    // The churn: CHURN_CHANGES applies, one every 200 ms, on a schedule.
    let bin = traffic::lab_bin("dpu-controller")?;
    let store = ha.store.clone();
    let dir = ha.lab.path("apply");
    std::fs::create_dir_all(&dir)?;
    let churn = std::thread::spawn(move || -> Result<Vec<Duration>> {
        let start = Instant::now();
        let mut took = Vec::new();
        for step in 1..=CHURN_CHANGES {
            let due = start + CHURN_INTERVAL * (step - 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let file = dir.join(format!("churn-{step}.yaml"));
            std::fs::write(&file, churn_yaml(step))?;
            let mut c = Command::new(&bin);
            c.args(["apply", "-f", &file.display().to_string()])
                .args(&store);
            let t = Instant::now();
            let out = run_bounded(c, Duration::from_secs(30))?;
            ensure!(
                out.status.success(),
                "churn step {step}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            took.push(t.elapsed());
        }
        Ok(took)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let mark = ha.lab.agent_log(0).len();
    let applied_before = last_applied(&ha.lab.agent_log(0)).unwrap_or(0);
    let victim_url = ha.replicas[victim].url();
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    ha.replicas[victim]
        .child
        .take()
        .ok_or_else(|| anyhow!("replica {victim} is not running"))?
        .kill9()?;
    let mut moved = None;
    wait_until(
        "dpu-1's agent to establish a session on another replica",
        Duration::from_secs(20),
        || {
            let log = plain(&ha.lab.agent_log(0));
            moved = log.get(mark..).unwrap_or_default().lines().find_map(|l| {
                let e = field(l, "endpoint")?;
                (l.contains("controller session established") && e != victim_url)
                    .then(|| (e.to_string(), log_time(l)))
            });
            moved.is_some()
        },
    )?;
    let (moved_to, established) = moved.unwrap_or_default();
    // From the kill to the log line's own time (the poll above is 50 ms coarse).
    let failover = established
        .and_then(|t| t.duration_since(killed_at).ok())
        .unwrap_or_else(|| killed.elapsed());
    println!(
        "  replica {victim} ({}) killed; dpu-1's agent established a session on {moved_to} {} ms later (the time in its log)",
        if led { "the leader" } else { "a follower" },
        ms(failover)
    );
    // When the killed replica led, new versions wait for another to lead.
    let mut leader_after = None;
    if led {
        wait_until("another replica to lead", Duration::from_secs(30), || {
            ha.leading_replica().is_some()
        })?;
        leader_after = Some(killed.elapsed());
    }
    wait_until(
        "dpu-1's agent to apply a version after the kill",
        Duration::from_secs(30),
        || last_applied(&ha.lab.agent_log(0)).is_some_and(|v| v > applied_before),
    )
    .map_err(|e| {
        anyhow!(
            "{e}: meta/version {:?}, .guard {:?}, the churn {}",
            ha.mod_revision(VERSION_KEY),
            ha.mod_revision(GUARD_KEY),
            if churn.is_finished() {
                "finished"
            } else {
                "still running"
            }
        )
    })?;
    let next_version = killed.elapsed();
    let churn_took = churn
        .join()
        .map_err(|_| anyhow!("the churn thread panicked"))??;
    let slowest = churn_took.iter().max().copied().unwrap_or_default();
    let v = ha.wait_agents_converged(before, Duration::from_secs(30))?;
    let log = ha.lab.agent_log(0);
    let versions = applied_versions(&log);
    strictly_increasing("dpu-1's agent", &versions)?;
    strictly_increasing("dpu-2's agent", &applied_versions(&ha.lab.agent_log(1)))?;
    let resumed_at: Vec<u64> = sessions(&log[mark..]).iter().map(|(_, v)| *v).collect();
    let after_kill = applied_versions(&log[mark..]).len();
    println!(
        "  {CHURN_CHANGES} changes applied (slowest apply {} ms); {}new version on dpu-1 {} ms after the kill; both agents at v{v}",
        ms(slowest),
        leader_after
            .map(|d| format!("a new leader {} ms after the kill; ", ms(d)))
            .unwrap_or_default(),
        ms(next_version),
    );
    println!(
        "  dpu-1 applied {} versions, strictly increasing, {}..={}; its session after the kill resumed at {resumed_at:?}; {after_kill} version(s) after the kill (the changes made while no replica led came as one)",
        versions.len(),
        versions.first().copied().unwrap_or(0),
        versions.last().copied().unwrap_or(0)
    );
    joined("the replica's death", traffic, count)?;
    // The final intent, as the controllers hold it.
    let out = ha.ctl(&["get", "service", "churn", "-o", "json"])?;
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let (a, b) = churn_weights(CHURN_CHANGES);
    ensure!(
        got["spec"]["backends"][0]["weight"] == a && got["spec"]["backends"][1]["weight"] == b,
        "get service churn after the churn: {got:#}"
    );

    // The killed replica back, then dpu-1's agent restarted with nothing:
    // what it installs from the final intent is what the churn left.
    let store = ha.store.clone();
    ha.replicas[victim].start(&store)?;
    let churned = ha.switch(0)?;
    let mut agent = ha.lab.agents[0]
        .take()
        .ok_or_else(|| anyhow!("dpu-1's agent is not running"))?;
    agent.terminate()?;
    drop(agent);
    std::fs::remove_dir_all(ha.lab.agent_state(0)).context("wiping dpu-1's agent state")?;
    let mark = ha.lab.agent_log(0).len();
    let addrs: Vec<String> = ha.replicas.iter().map(|r| r.addr.clone()).collect();
    ha.lab.start_agent_with(0, &addrs)?;
    wait_until(
        "the restarted agent to apply the final version",
        Duration::from_secs(30),
        || {
            let log = ha.lab.agent_log(0);
            last_applied(log.get(mark..).unwrap_or_default()) == Some(v)
        },
    )?;
    let mut fresh = (Vec::new(), Vec::new());
    let same = wait_until(
        "the restarted agent's switch to equal the churned one",
        Duration::from_secs(10),
        || {
            fresh = ha.switch(0).unwrap_or_default();
            fresh == churned
        },
    );
    if same.is_err() {
        bail!(
            "after the churn, dpu-1's switch differs from the same agent's restarted with its state wiped:\n{}",
            difference(&churned, &fresh)
        );
    }
    let restarted = applied_versions(&ha.lab.agent_log(0)[mark..]);
    strictly_increasing("dpu-1's restarted agent", &restarted)?;
    println!(
        "  dpu-1's switch after the churn equals the same agent's restarted with its state wiped at v{v}: {} flows, {} groups",
        churned.0.len(),
        churned.1.len()
    );
    Ok(v)
}

/// The lines only one side has, for a failure message.
fn difference(a: &(Vec<String>, Vec<String>), b: &(Vec<String>, Vec<String>)) -> String {
    let mut s = String::new();
    for (what, x, y) in [("flow", &a.0, &b.0), ("group", &a.1, &b.1)] {
        for l in x.iter().filter(|l| !y.contains(l)) {
            s += &format!("- {what} (churned only): {l}\n");
        }
        for l in y.iter().filter(|l| !x.contains(l)) {
            s += &format!("+ {what} (restarted only): {l}\n");
        }
    }
    s
}

/// 3. The etcd leader member killed -9.
fn phase_etcd_leader_killed(ha: &mut Ha, before: u64) -> Result<u64> {
    println!("phase 3: kill -9 the etcd leader member, under 20 requests/s");
    let count = 200;
    let traffic = load(&ha.lab, count)?;
    std::thread::sleep(Duration::from_millis(500));
    let leader = ha.etcd.wait_leader(Duration::from_secs(10));
    let killed = Instant::now();
    ha.etcd.kill(leader);
    // Writes from the moment of the kill, while another thread watches the
    // election as etcdctl sees it.
    let ha_ref = &*ha;
    let (election, writes) = std::thread::scope(|s| {
        let election = s.spawn(|| {
            let next = ha_ref.etcd.wait_leader(Duration::from_secs(20));
            (next, killed.elapsed())
        });
        let writes = (|| -> Result<(u32, String, Duration)> {
            let mut attempts = 0;
            let mut first_error = String::new();
            let step = CHURN_CHANGES + 1;
            loop {
                attempts += 1;
                let out =
                    ha_ref.apply(&format!("churn-{step}-{attempts}.yaml"), &churn_yaml(step))?;
                if out.status.success() {
                    return Ok((attempts, first_error, killed.elapsed()));
                }
                if first_error.is_empty() {
                    first_error = String::from_utf8_lossy(&out.stderr).trim().to_string();
                }
                ensure!(
                    killed.elapsed() < Duration::from_secs(30) && attempts < 100,
                    "no write landed within 30 s of the etcd leader's death: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })();
        (election.join(), writes)
    });
    let (next, elected) = election.map_err(|_| anyhow!("no etcd leader after the kill"))?;
    let (attempts, first_error, paused) = writes?;
    let v = ha.wait_agents_converged(before, Duration::from_secs(30))?;
    let converged = killed.elapsed();
    println!(
        "  member {leader} (the leader) killed; member {next} leads {} ms later (etcdctl); the first apply landed {} ms after the kill ({attempts} attempt(s){}); both agents at v{v} {} ms after the kill",
        ms(elected),
        ms(paused),
        if first_error.is_empty() {
            String::new()
        } else {
            format!(", the first refused: {first_error}")
        },
        ms(converged)
    );
    ha.etcd.restart(leader);
    joined("the etcd leader's death", traffic, count)?;
    Ok(v)
}

/// 4. Every etcd member down for 30 s, then back.
fn phase_etcd_down(ha: &mut Ha, before: u64) -> Result<()> {
    println!(
        "phase 4: all of etcd down for {} s, under 20 requests/s",
        ETCD_DOWN.as_secs()
    );
    let count = u32::try_from(
        (ETCD_DOWN + Duration::from_secs(15)).as_millis() / LOAD_INTERVAL.as_millis(),
    )?;
    let traffic = load(&ha.lab, count)?;
    std::thread::sleep(Duration::from_millis(500));
    let down = Instant::now();
    ha.etcd.stop_all();
    // Every replica says so, and serves on.
    wait_until(
        "every replica to say the store is unavailable",
        Duration::from_secs(20),
        || {
            ha.replicas.iter().all(|r| {
                r.status()
                    .is_ok_and(|s| s["store"]["state"] == "unavailable")
            })
        },
    )?;
    println!(
        "  every replica's status says store unavailable {} ms after etcd stopped",
        ms(down.elapsed())
    );
    // A write is refused, clearly.
    let step = CHURN_CHANGES + 2;
    let t = Instant::now();
    let out = ha.apply(&format!("churn-{step}-refused.yaml"), &churn_yaml(step))?;
    let refused_in = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    ensure!(
        !out.status.success() && stderr.contains("store unavailable"),
        "apply with etcd down: exit {:?}, stderr: {stderr}",
        out.status.code()
    );
    println!(
        "  apply refused in {} ms, exit {:?}: {}",
        ms(refused_in),
        out.status.code(),
        stderr.lines().next().unwrap_or_default()
    );
    std::thread::sleep(ETCD_DOWN.saturating_sub(down.elapsed()));
    let back_at = Instant::now();
    ha.etcd.start_all();
    let restarted = back_at.elapsed();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let out = ha.apply(&format!("churn-{step}-{attempts}.yaml"), &churn_yaml(step))?;
        if out.status.success() {
            break;
        }
        ensure!(
            back_at.elapsed() < Duration::from_secs(20),
            "no apply landed within 20 s of etcd's return: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let applied = back_at.elapsed();
    let v = ha.wait_agents_converged(before, Duration::from_secs(60))?;
    let agents = back_at.elapsed();
    let mut statuses = Vec::new();
    wait_until(
        "every replica at the new version",
        Duration::from_secs(60),
        || {
            statuses = ha
                .replicas
                .iter()
                .map(|r| {
                    r.status().map_or((None, String::new()), |s| {
                        (
                            s["intent_version"].as_u64(),
                            s["store"]["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                })
                .collect();
            statuses.iter().all(|(iv, st)| *iv == Some(v) && st == "ok")
        },
    )
    .map_err(|e| anyhow!("{e}: replicas (version, store): {statuses:?}, want v{v}"))?;
    let replicas = back_at.elapsed();
    println!(
        "  etcd back ({} ms to a leader); the first apply landed {} ms after ({attempts} attempt(s)); both agents at v{v} after {} ms; every replica's status at v{v}, store ok, after {} ms",
        ms(restarted),
        ms(applied),
        ms(agents),
        ms(replicas)
    );
    joined("etcd's absence", traffic, count)?;
    for i in 0..2 {
        let log = ha.lab.agent_log(i);
        ensure!(
            !plain(&log).contains("update refused"),
            "{} refused an update",
            node_name(i)
        );
    }
    strictly_increasing("dpu-2's agent", &applied_versions(&ha.lab.agent_log(1)))?;
    Ok(())
}

#[test]
fn log_times_are_read_as_utc() {
    let since = |line: &str| {
        log_time(line)
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
    };
    let t = since("2026-12-07T14:09:10.158409Z  INFO x: y");
    assert_eq!((t.as_secs(), t.subsec_micros()), (1_796_652_550, 158_409));
    assert_eq!(since("2000-03-01T00:00:00Z x").as_secs(), 951_868_800);
    assert_eq!(log_time("not a time"), None);
}
