//! `dpu-agent`: a thin binary over the library. Exit codes (used by systemd's
//! `RestartPreventExitStatus=`, and by scripts around `show|trace|explain`):
//! 0 clean stop (or the answer printed), 1 runtime failure (for
//! `show|trace|explain`: the agent answered with an error), 2 bad config or
//! usage, 3 unusable state directory, 4 the running agent cannot be reached
//! (`show|trace|explain`).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use dpu_agent::agent::notify::Systemd;
use dpu_agent::config::{self, Config};
use dpu_agent::observe::ops::{self, Request, TraceRequest};

#[derive(Parser, Debug)]
#[command(
    name = "dpu-agent",
    version,
    about = "DPU agent: Services and VPCs on the DPU's OVS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent.
    Run {
        /// The config file; drop-ins are read from `<PATH>.d/*.toml`.
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check the config (file, drop-ins, DPU_AGENT_* variables) and print the
    /// merged result, secrets redacted.
    CheckConfig {
        /// The config file; drop-ins are read from `<PATH>.d/*.toml`.
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Ask the running agent: the applied intent, the installed pipeline, or
    /// one Service with its backends and counters.
    Show {
        #[command(subcommand)]
        what: ShowCmd,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Trace a packet through the installed pipeline (`ofproto/trace`), told
    /// in the pipeline's own words.
    Trace {
        #[command(flatten)]
        packet: TraceArgs,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Explain an object of the applied intent by name (a Service, a
    /// workload, ...): what the agent made of it and what stands in its way.
    /// With `--offload`: which of the switch's datapath flows (of the Service
    /// NAME, or all) a BlueField NIC could run, and why not the others.
    Explain {
        #[arg(required_unless_present = "offload")]
        name: Option<String>,
        /// Audit the datapath flows against the NIC's offload rules
        /// (docs/offload.md) instead.
        #[arg(long)]
        offload: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ShowCmd {
    /// The applied intent: VPCs, Subnets, Workloads, Services, probes, Nodes.
    Intent,
    /// The installed flows table by table, and the groups.
    Pipeline {
        /// Only this Service's flows and groups.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
    },
    /// One Service: VIPs, groups, backends with their state and counters.
    Service { name: String },
}

/// The packet `trace` follows.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("entry").required(true).args(["in_port", "vpc"])))]
struct TraceArgs {
    #[arg(long, value_name = "IP")]
    src: IpAddr,
    #[arg(long, value_name = "IP")]
    dst: IpAddr,
    #[arg(long, value_enum)]
    proto: Proto,
    /// Destination port (tcp and udp; required for them).
    #[arg(long, value_name = "N", required_if_eq_any([("proto", "tcp"), ("proto", "udp")]))]
    dport: Option<u16>,
    /// Source port (tcp and udp); the agent picks one when absent.
    #[arg(long, value_name = "N")]
    sport: Option<u16>,
    /// Where the packet enters: a bridge port's `external_ids:iface-id`.
    #[arg(long, value_name = "IFACE_ID")]
    in_port: Option<String>,
    /// Where the packet enters: the port of this node's workload in VPC that
    /// owns --src.
    #[arg(long, value_name = "VPC")]
    vpc: Option<String>,
    /// Also print `ovs-appctl ofproto/trace`'s own text.
    #[arg(long)]
    raw: bool,
}

impl TraceArgs {
    /// The request, once `--dport`/`--sport` are where they mean something
    /// and both addresses are of one family.
    fn request(self) -> Result<TraceRequest, String> {
        if self.src.is_ipv4() != self.dst.is_ipv4() {
            return Err(format!(
                "--src {} and --dst {} are of different families",
                self.src, self.dst
            ));
        }
        if self.proto == Proto::Icmp && (self.dport.is_some() || self.sport.is_some()) {
            return Err("--dport and --sport are for tcp and udp, not icmp".into());
        }
        Ok(TraceRequest {
            src: self.src,
            dst: self.dst,
            proto: format!("{:?}", self.proto).to_lowercase(),
            dst_port: self.dport,
            src_port: self.sport,
            in_port: self.in_port,
            vpc: self.vpc,
            raw: self.raw,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// Where the running agent listens.
#[derive(Args, Debug)]
struct SocketArgs {
    /// The agent's operator socket [default: `[ops] socket` of --config, else
    /// /run/dpu-agent/ops.sock]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// The agent's config file, for its `[ops] socket` [default:
    /// /etc/dpu-agent/agent.toml, skipped when it does not load]
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
}

/// Logs go to journald, with the structured fields of each event (`version`,
/// `node`, `workload`, ...) as journal fields, when systemd connected our output to
/// the journal (`JOURNAL_STREAM` is set); otherwise to stderr.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| l.with_syslog_identifier("dpu-agent".into()));
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(j) => registry.with(j).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour only for a terminal: log files and pipes get plain text.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_STATE: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;

/// How long `show|trace|explain` wait for the agent: its own limit on a
/// request, plus reading the request and writing the answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(
    ops::server::HANDLE_TIMEOUT.as_secs() + ops::server::READ_TIMEOUT.as_secs() + 10,
);

/// The daemon's allocator. The agent holds its flows as many small shared
/// allocations and replaces them in bulk; with glibc's malloc, allocation was
/// 40% of a cold 10k-Service snapshot and copying the intent (what the loop
/// pays when it changes state an observer still reads) took 70 ms against 10
/// with mimalloc, which also returns freed pages to the system by itself
/// (docs/agent.md, "Memory: where it goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The operator commands log nothing: their stdout is the answer and their
    // stderr the error.
    match cli.cmd {
        Cmd::Run { config } => {
            init_logging();
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("dpu-agent: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            run(cfg)
        }
        Cmd::CheckConfig { config } => {
            init_logging();
            check_config(&config)
        }
        Cmd::Show { what, socket } => {
            let req = match what {
                ShowCmd::Intent => Request::ShowIntent,
                ShowCmd::Pipeline { service } => Request::ShowPipeline { service },
                ShowCmd::Service { name } => Request::ShowService { name },
            };
            ask(&req, &socket)
        }
        Cmd::Explain {
            name,
            offload: true,
            socket,
        } => ask(&Request::ExplainOffload { service: name }, &socket),
        Cmd::Explain {
            name: Some(name),
            socket,
            ..
        } => ask(&Request::Explain { name }, &socket),
        Cmd::Explain { name: None, .. } => {
            eprintln!("dpu-agent: explain: name the object to explain, or use --offload");
            ExitCode::from(EXIT_CONFIG)
        }
        Cmd::Trace { packet, socket } => match packet.request() {
            Ok(t) => ask(&Request::Trace(t), &socket),
            Err(msg) => {
                eprintln!("dpu-agent: trace: {msg}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// `--socket`, else `[ops] socket` of `--config` (an explicit one must load),
/// else of the default config when it loads, else the default socket.
fn socket_path(a: &SocketArgs) -> Result<PathBuf, String> {
    if let Some(s) = &a.socket {
        return Ok(s.clone());
    }
    match &a.config {
        Some(path) => Config::load(path)
            .map(|c| c.ops.socket)
            .map_err(|e| format!("{e} (or name the socket with --socket PATH)")),
        None => Ok(Config::load(Path::new(config::DEFAULT_PATH))
            .map(|c| c.ops.socket)
            .unwrap_or_else(|_| config::DEFAULT_OPS_SOCKET.into())),
    }
}

/// Sends one request to the running agent and prints its answer.
fn ask(req: &Request, socket: &SocketArgs) -> ExitCode {
    let path = match socket_path(socket) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dpu-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match ops::client::call(&path, req, CALL_TIMEOUT) {
        Ok(r) if r.ok => {
            let mut out = r.output;
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("dpu-agent: {}", r.output.trim_end());
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("dpu-agent: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// Prints the merged config as TOML: an "ok" comment line, the keys (defaults
/// filled in, secrets redacted), then the layers as comments.
fn check_config(path: &std::path::Path) -> ExitCode {
    let loaded = match Config::load_layers(path, std::env::vars_os()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dpu-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let c = &loaded.config;
    let body = match c.to_redacted_toml() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("dpu-agent: cannot print the config: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    println!(
        "# {}: ok (node {}, bridge {})\n",
        path.display(),
        c.node_name,
        c.ovs.bridge
    );
    print!("{body}");
    println!("\n# Layers, later wins (built-in defaults under all of them):");
    for s in &loaded.sources {
        println!("#   {s}");
    }
    ExitCode::SUCCESS
}

fn run(cfg: Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Bounded so that the unit's TasksMax (docs/limits.md) is never what
        // stops a thread from starting.
        .max_blocking_threads(32)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpu-agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` when run by systemd (`Type=notify`).
    let systemd = Systemd::from_env();
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let watchdog = tokio::spawn(systemd.clone().watchdog());
        let on_signal = systemd.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            on_signal.stopping();
            let _ = tx.send(true);
        });
        tracing::info!(node = %cfg.node_name, bridge = %cfg.ovs.bridge, "dpu-agent starting");
        // Every event of the loop carries the node, in the journal too.
        let span = tracing::info_span!("agent", node = %cfg.node_name);
        let result =
            tracing::Instrument::instrument(dpu_agent::agent::run(cfg, rx, systemd), span).await;
        watchdog.abort();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ dpu_agent::agent::AgentError::Store(_)) => {
                tracing::error!(error = %e, "state directory unusable");
                ExitCode::from(EXIT_STATE)
            }
            Err(e) => {
                tracing::error!(error = %e, "agent failed");
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}
