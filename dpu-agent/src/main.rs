//! `dpu-agent`: a thin binary over the library. Exit codes (used by systemd's
//! `RestartPreventExitStatus=`): 0 clean stop, 1 runtime failure, 2 bad config or
//! usage, 3 unusable state directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dpu_agent::config::{self, Config};
use dpu_agent::notify::Systemd;

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
    init_logging();
    match cli.cmd {
        Cmd::CheckConfig { config } => check_config(&config),
        Cmd::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("dpu-agent: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            run(cfg)
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
        let result = dpu_agent::agent::run(cfg, rx, systemd).await;
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
