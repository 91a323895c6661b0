//! `dpu-bench`: runs the scenarios of bench/README.md side by side and writes
//! `results.json`, `results.md` and the SVG charts. `bench/run` is the one command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dpu_bench::churn::{self, Rate};
use dpu_bench::results::{LbRow, Results};
use dpu_bench::{cold, guard, intent, lb, machine, newconn, report, restart};

#[derive(Debug, Parser)]
#[command(
    name = "dpu-bench",
    about = "The DPU benchmark harness (see bench/README.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Cold,
    Churn,
    Restart,
    Footprint,
    Lb,
    Newconn,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the scenarios and write the results (needs root and Open vSwitch).
    All(Box<AllArgs>),
    /// N simulated agents against one real controller (bench/README.md, "Fleet").
    Fleet(FleetArgs),
    /// Redraw results.md and the charts from OUT/results.json.
    Report {
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct FleetArgs {
    /// Where fleet.json and fleet.md go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Simulated agents, one run each.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    nodes: Vec<usize>,
    /// Services (10 endpoints each), one run each with every --nodes.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Milliseconds a simulated agent takes to apply an update before it ACKs.
    #[arg(long, default_value_t = 5)]
    apply_ms: u64,
    /// The controller binary (release).
    #[arg(long, default_value = "target/release/dpu-controller")]
    controller: PathBuf,
    /// Churn rates, changes per second (none: no churn).
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    rates: Vec<u32>,
    /// Seconds of churn per rate.
    #[arg(long, default_value_t = 60)]
    churn_seconds: u64,
    /// 1: one replica on the embedded store. More: that many replicas on a
    /// 3-member etcd cluster (Debian's etcd-server), and the reconnect storm
    /// (the leading replica killed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    replicas: u64,
    /// Run nothing: write fleet.md and the charts again from OUT/fleet.json.
    #[arg(long)]
    redraw: bool,
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    /// Where results.json, results.md and the SVGs go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// A smoke run: N = 200, few changes, short samples (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Service counts (each with --endpoints backends).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// The agent's OpenFlow backends (`ovs.openflow_backend`) to compare; one this
    /// agent build does not have is reported as unavailable.
    #[arg(long, value_delimiter = ',', default_value = "native,ovs-ofctl")]
    backends: Vec<String>,
    /// Which scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "cold,churn,restart,footprint,lb,newconn"
    )]
    scenarios: Vec<Scenario>,
    /// Group sizes (buckets) of the newconn scenario, and endpoints of its
    /// iptables Services (1 to 8192).
    #[arg(long, value_delimiter = ',', default_value = "3,100,4096")]
    newconn_buckets: Vec<usize>,
    /// What the newconn scenario's OVS groups hash the TCP source port on, one
    /// VIP per size and variant: `port` (the whole port, before issue 16),
    /// `masked` (the agent's SRC_PORT_HASH_MASK), or a mask (`255`, `0xf`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "port,masked",
        value_parser = newconn::HashVariant::parse
    )]
    newconn_hash: Vec<newconn::HashVariant>,
    /// Rounds of the newconn scenario (each one batch per VIP; default 6, 2
    /// with --quick).
    #[arg(long)]
    newconn_rounds: Option<usize>,
    /// New connections per batch of the newconn scenario (default 500, 100 with
    /// --quick).
    #[arg(long)]
    newconn_conns: Option<u32>,
    /// Client addresses the newconn scenario's connections come from, in
    /// turn (1 to 200).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=200))]
    newconn_clients: u32,
    /// Churn rates in changes per second; 0 is back to back.
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// Changes per churn rate.
    #[arg(long)]
    changes: Option<usize>,
    /// N for the restart scenario and the footprint (default 10k; the largest size
    /// with --quick).
    #[arg(long)]
    restart_size: Option<usize>,
    /// Seconds each churn rate may take at most (default 60, 10 with --quick).
    #[arg(long)]
    churn_seconds: Option<u64>,
    /// Seconds a kube-proxy loader may take before it is killed (default 180, 60
    /// with --quick); one that timed out is skipped at larger N.
    #[arg(long)]
    kube_timeout: Option<u64>,
}

/// The settings of one run after --quick and the defaults.
#[derive(Debug)]
struct Plan {
    sizes: Vec<usize>,
    rates: Vec<Rate>,
    changes: usize,
    churn_budget: Duration,
    idle: Duration,
    restart_size: usize,
    probes: u32,
    restart_after: Duration,
    lb: Vec<usize>,
    lb_flows: fn(usize) -> usize,
}

fn plan(a: &AllArgs) -> Plan {
    let sizes = a.sizes.clone().unwrap_or_else(|| {
        if a.quick {
            vec![200]
        } else {
            vec![1_000, 10_000, 30_000]
        }
    });
    let rates = a
        .rates
        .clone()
        .unwrap_or_else(|| {
            if a.quick {
                vec![50, 0]
            } else {
                vec![10, 50, 0]
            }
        })
        .into_iter()
        .map(Rate::per_second)
        .collect();
    let restart_size = a.restart_size.unwrap_or(if a.quick {
        *sizes.iter().max().unwrap_or(&200)
    } else {
        10_000
    });
    if a.quick {
        Plan {
            sizes,
            rates,
            changes: a.changes.unwrap_or(40),
            churn_budget: Duration::from_secs(a.churn_seconds.unwrap_or(10)),
            idle: Duration::from_secs(3),
            restart_size,
            probes: 40,
            restart_after: Duration::from_millis(1000),
            lb: vec![3, 10],
            lb_flows: |_| 1_000,
        }
    } else {
        Plan {
            sizes,
            rates,
            changes: a.changes.unwrap_or(400),
            churn_budget: Duration::from_secs(a.churn_seconds.unwrap_or(60)),
            idle: Duration::from_secs(10),
            restart_size,
            probes: 300,
            restart_after: Duration::from_secs(3),
            lb: vec![3, 10, 100, 1000],
            lb_flows: |n| (n * 50).clamp(10_000, 50_000),
        }
    }
}

fn main() -> ExitCode {
    guard::install_panic_hook();
    // Before anything is started (and before any other thread exists).
    if let Err(e) = guard::install_signal_handlers() {
        eprintln!("dpu-bench: installing the SIGINT/SIGTERM/SIGHUP handlers: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::All(a) => run_all(&a),
        Cmd::Report { out } => redraw(&out),
        Cmd::Fleet(a) if a.redraw => dpu_bench::fleet::redraw(&a.out),
        Cmd::Fleet(a) => dpu_bench::fleet::run(&dpu_bench::fleet::FleetOptions {
            nodes: a.nodes,
            services: a.services,
            apply: Duration::from_millis(a.apply_ms),
            controller: a.controller,
            out: a.out,
            rates: a.rates,
            churn_for: Duration::from_secs(a.churn_seconds),
            replicas: a.replicas as usize,
        })
        .map(|_| ()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpu-bench: {e:#}");
            guard::sweep();
            ExitCode::FAILURE
        }
    }
}

fn log(msg: &str) {
    eprintln!(
        "[dpu-bench {}] {msg}",
        std::process::Command::new("date")
            .arg("-u")
            .arg("+%H:%M:%S")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
}

fn write_all(out: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    for (name, svg) in report::charts(r) {
        std::fs::write(out.join(name), svg)?;
    }
    std::fs::write(out.join("results.md"), report::markdown(r))?;
    Ok(())
}

fn redraw(out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(out.join("results.json"))
        .with_context(|| format!("reading {}/results.json", out.display()))?;
    let r: Results = serde_json::from_str(&text)?;
    write_all(out, &r)
}

/// A backend this agent build does not have: the agent exits at start on the
/// config key.
fn unavailable(e: &anyhow::Error) -> bool {
    let t = format!("{e:#}");
    t.contains("running: false") && t.contains("openflow_backend")
}

/// The binaries the scenarios start (from `$DPU_LAB_BIN_DIR` or next to this one).
const BINARIES: [&str; 4] = ["dpu-agent", "dpu-controller", "lab-echo", "lab-client"];

/// Copies the binaries under test into a private directory and points the lab at
/// it, so a rebuild in `target/` during the run cannot mix two agents in one run.
/// Returns the directory (removed when dropped) and what was copied.
fn freeze_binaries(needed: &[&str]) -> Result<(tempfile::TempDir, String)> {
    let from = dpu_lab::traffic::bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("dpu-bench-bin-")
        .tempdir()?;
    // Copies of the binaries (tens of MB): not left behind by a signal or panic.
    guard::track_dir(dir.path());
    let mut what = Vec::new();
    for b in BINARIES.into_iter().filter(|b| needed.contains(b)) {
        let src = from.join(b);
        std::fs::copy(&src, dir.path().join(b))
            .with_context(|| format!("copying {} (build it first)", src.display()))?;
        let meta = std::fs::metadata(&src)?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .map(|d| format!("built {} min before the run", d.as_secs() / 60))
            .unwrap_or_default();
        if b == "dpu-agent" {
            what.push(format!("{} ({} bytes, {age})", src.display(), meta.len()));
        }
    }
    // Before any thread but the signal thread exists, and that one reads the
    // environment only after a signal, through std (under std's environment lock).
    std::env::set_var(dpu_lab::traffic::BIN_DIR_ENV, dir.path());
    Ok((dir, what.join(", ")))
}

fn run_all(a: &AllArgs) -> Result<()> {
    let started = Instant::now();
    let want = |s: Scenario| a.scenarios.contains(&s);
    // `lb` and `newconn` start no agent or controller: a run of only those
    // needs only the lab's tools built.
    let only_switch = a
        .scenarios
        .iter()
        .all(|s| matches!(s, Scenario::Lb | Scenario::Newconn));
    let needed: &[&str] = if only_switch {
        &BINARIES[2..]
    } else {
        &BINARIES
    };
    let (_frozen, agent_binary) = freeze_binaries(needed)?;
    let p = plan(a);
    let mut r = Results {
        machine: machine::facts(),
        quick: a.quick,
        sizes: p.sizes.clone(),
        endpoints: a.endpoints,
        backends_requested: a.backends.clone(),
        agent_binary,
        ..Default::default()
    };
    let mut backends: Vec<String> = a.backends.clone();
    let mut seq = 0usize;
    let kube_timeout =
        Duration::from_secs(a.kube_timeout.unwrap_or(if a.quick { 60 } else { 180 }));
    // A kube-proxy loader that timed out is not tried at larger N.
    let mut kube_timed_out: Vec<(String, usize)> = Vec::new();
    let needs_agent = want(Scenario::Cold) || want(Scenario::Churn) || want(Scenario::Footprint);
    for &n in &p.sizes {
        // The cold systems all load `g` as generated; churn changes its own copy.
        let g = intent::generate(n, a.endpoints);
        let mut churned = g.clone();
        let mut ports = None;
        if needs_agent {
            for backend in backends.clone() {
                let system = cold::agent_system(&backend);
                log(&format!("cold: {system}, {n} services"));
                let (row, mut rig) = match cold::agent(&backend, &g) {
                    Ok(x) => x,
                    Err(e) => {
                        if unavailable(&e) {
                            log(&format!("backend {backend} is not in this agent build"));
                            r.errors.push(format!(
                                "agent OpenFlow backend {backend:?} is unavailable in this build: {e:#}"
                            ));
                            backends.retain(|b| b != &backend);
                        } else {
                            log(&format!("{system} failed: {e:#}"));
                            r.errors.push(format!("cold {system} N={n}: {e:#}"));
                            r.cold.push(cold::failed(&system, n, &e));
                        }
                        continue;
                    }
                };
                log(&format!(
                    "  {:.2} s, {:?} flows, {:?} groups",
                    row.wall_s, row.flows, row.groups
                ));
                if !r.backends_available.contains(&backend) {
                    r.backends_available.push(backend.clone());
                }
                if want(Scenario::Cold) {
                    r.cold.push(row);
                }
                if ports.is_none() {
                    ports = rig.ports().ok();
                }
                let footprint = want(Scenario::Footprint) && n == p.restart_size;
                if footprint {
                    std::thread::sleep(Duration::from_secs(2));
                    log(&format!("footprint: {backend} idle at {n}"));
                    match churn::idle(&rig, p.idle) {
                        Ok(mut f) => {
                            f.services = n;
                            r.footprint.push(f);
                        }
                        Err(e) => r.errors.push(format!("footprint idle {backend}: {e:#}")),
                    }
                }
                if want(Scenario::Churn) || footprint {
                    for rate in &p.rates {
                        log(&format!("churn: {backend}, {n} services, {}", rate.label));
                        match churn::run(
                            &mut rig,
                            &mut churned,
                            rate,
                            p.changes,
                            p.churn_budget,
                            &mut seq,
                        ) {
                            Ok(row) => {
                                log(&format!(
                                    "  p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} changes)",
                                    row.p50_ms, row.p99_ms, row.max_ms, row.changes
                                ));
                                if let Some(e) = &row.error {
                                    r.errors
                                        .push(format!("churn {backend} N={n} {}: {e}", rate.label));
                                }
                                if footprint {
                                    if let Ok(f) = churn::footprint_of(&rig, &row) {
                                        r.footprint.push(f);
                                    }
                                }
                                if want(Scenario::Churn) {
                                    r.churn.push(row);
                                }
                            }
                            Err(e) => r
                                .errors
                                .push(format!("churn {backend} N={n} {}: {e:#}", rate.label)),
                        }
                    }
                }
                drop(rig);
            }
        }
        if want(Scenario::Cold) {
            match ports {
                Some(ports) => {
                    log(&format!("cold: raw ovs-ofctl bundle, {n} services"));
                    match cold::raw_ofctl(&g, ports) {
                        Ok(mut row) => {
                            let agent = r.cold.iter().find(|c| {
                                c.services == n && c.error.is_none() && c.system.starts_with("agent-")
                            });
                            if let Some(a) = agent {
                                if (a.flows, a.groups) != (row.flows, row.groups) {
                                    row.note = Some(format!(
                                        "not the agent's table: {} has {:?} flows, {:?} groups",
                                        a.system, a.flows, a.groups
                                    ));
                                }
                            }
                            log(&format!("  {:.2} s", row.wall_s));
                            r.cold.push(row);
                        }
                        Err(e) => {
                            r.errors.push(format!("cold raw-ovs-ofctl N={n}: {e:#}"));
                            r.cold.push(cold::failed("raw-ovs-ofctl", n, &e));
                        }
                    }
                }
                None => r.errors.push(format!(
                    "cold raw-ovs-ofctl N={n}: skipped, no agent ran to take the switch's ports from"
                )),
            }
            for sys in cold::KUBE_SYSTEMS {
                let system = sys.name();
                if let Some(at) = kube_timed_out.iter().find(|(s, _)| s == system) {
                    r.cold.push(cold::failed(
                        system,
                        n,
                        &anyhow::anyhow!(
                            "skipped: took over {} s at N={}",
                            kube_timeout.as_secs(),
                            at.1
                        ),
                    ));
                    continue;
                }
                log(&format!("cold: {system}, {n} services"));
                match cold::kube(sys, &g, kube_timeout) {
                    Ok(row) => {
                        log(&format!("  {:.2} s", row.wall_s));
                        r.cold.push(row);
                    }
                    Err(e) => {
                        log(&format!("  failed: {e:#}"));
                        if format!("{e:#}").contains("did not finish within") {
                            kube_timed_out.push((system.to_string(), n));
                        }
                        r.errors.push(format!("cold {system} N={n}: {e:#}"));
                        r.cold.push(cold::failed(system, n, &e));
                    }
                }
            }
        }
        r.total_seconds = started.elapsed().as_secs_f64();
        write_all(&a.out, &r)?;
    }

    if want(Scenario::Restart) {
        if backends.is_empty() {
            r.errors
                .push("restart: skipped, no agent backend available".into());
        }
        let g = intent::generate(p.restart_size, a.endpoints);
        for backend in &backends {
            log(&format!("restart: {backend}, {} services", p.restart_size));
            match restart::run(backend, &g, p.probes, p.restart_after) {
                Ok(row) => {
                    log(&format!(
                        "  converged in {:.0} ms, {} of {} probes lost",
                        row.converge_ms, row.probes_lost, row.probes
                    ));
                    r.restart.push(row);
                }
                Err(e) => r.errors.push(format!("restart {backend}: {e:#}")),
            }
            r.total_seconds = started.elapsed().as_secs_f64();
            write_all(&a.out, &r)?;
        }
    }

    if want(Scenario::Lb) {
        for &n in &p.lb {
            let flows = (p.lb_flows)(n);
            log(&format!("lb: {n} backends, {flows} flows"));
            let cfg = lb::LbConfig {
                weights: vec![1; n],
                flows,
                remove: n / 2,
                bucket_ids: lb::BucketIds::Agent,
            };
            r.lb.push(match lb::lb_measure(&cfg) {
                Ok(rep) => LbRow {
                    backends: rep.result.backends,
                    flows: rep.result.flows,
                    skew_pct: rep.result.skew_pct,
                    max_over_mean: rep.result.max_over_mean,
                    moved_fraction: rep.result.moved_fraction,
                    ideal_moved: rep.result.ideal_moved,
                    ideal_skew_pct: rep.ideal_skew_pct,
                    error: None,
                },
                Err(e) => {
                    r.errors.push(format!("lb {n} backends: {e:#}"));
                    LbRow {
                        backends: n,
                        flows,
                        error: Some(format!("{e:#}")),
                        ..Default::default()
                    }
                }
            });
        }
    }
    if want(Scenario::Newconn) {
        let cfg = newconn::NewConnConfig {
            sizes: a.newconn_buckets.clone(),
            hashes: a.newconn_hash.clone(),
            rounds: a.newconn_rounds.unwrap_or(if a.quick { 2 } else { 6 }),
            conns: a.newconn_conns.unwrap_or(if a.quick { 100 } else { 500 }),
            clients: a.newconn_clients,
        };
        let hashes: Vec<&str> = cfg.hashes.iter().map(|h| h.label.as_str()).collect();
        log(&format!(
            "newconn: groups of {:?} buckets hashing {hashes:?}, and iptables; {} rounds of {} connections",
            cfg.sizes, cfg.rounds, cfg.conns
        ));
        match newconn::run(&cfg) {
            Ok(rows) => {
                for n in &rows {
                    log(&format!(
                        "  {} buckets, {} {}: {:.0} conns/s, machine {:.0} µs/conn, vswitchd {:.0} µs/conn, {:.2} upcalls/conn, {:?} dp flows, χ² {:.1} (p {:.3}){}",
                        n.buckets,
                        n.datapath,
                        n.hash,
                        n.conns_per_s,
                        n.machine_cpu_us_per_conn,
                        n.vswitchd_cpu_us_per_conn,
                        n.upcalls_per_conn,
                        n.datapath_flows_max,
                        n.chi2,
                        n.chi2_p,
                        n.error.as_deref().map(|e| format!(" [{e}]")).unwrap_or_default()
                    ));
                    if let Some(e) = &n.error {
                        if n.connections == 0 {
                            r.errors
                                .push(format!("newconn {} {} buckets: {e}", n.datapath, n.buckets));
                        }
                    }
                }
                r.newconn = rows;
            }
            Err(e) => r.errors.push(format!("newconn: {e:#}")),
        }
    }
    r.total_seconds = started.elapsed().as_secs_f64();
    write_all(&a.out, &r)?;
    log(&format!(
        "done in {:.0} s; {}",
        r.total_seconds,
        a.out.join("results.md").display()
    ));
    Ok(())
}
