//! `dpu-controller`: holds the intent (manifests in a directory), serves each DPU
//! agent its share over mTLS gRPC, issues identities, and records status.
//!
//! Exit codes: 0 ok, 1 other failure, 2 usage or configuration, 3 invalid intent
//! at start, 4 TLS/PKI.

use dpu_controller::{cli, pki, server, statuscmd};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{CaCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpu-controller: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca {
            command: CaCommand::Init { state_dir, force },
        } => {
            let paths = pki::init_ca(&state_dir, force)?;
            println!(
                "CA written to {} and {}",
                paths.ca_cert.display(),
                paths.ca_key.display()
            );
        }
        Command::Issue(a) => {
            let ca = pki::load_ca(&a.state_dir)?;
            let (name, issued) = match (&a.node, &a.name) {
                (Some(node), _) => (node.clone(), ca.issue_node(node, a.days)?),
                (None, Some(name)) => (name.clone(), ca.issue_server(name, &a.sans, a.days)?),
                (None, None) => unreachable!("clap requires --node or --server --name"),
            };
            for path in pki::write_issued(&a.out, &name, &issued, &ca)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Serve(a) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(server::serve(server::ServeOptions {
                state_dir: a.state_dir,
                intent_dir: a.intent_dir,
                listen: a.listen,
                server_name: a.server_name,
            }))?;
        }
        Command::Status(a) => print!("{}", statuscmd::run(&a.state_dir, a.json)?),
    }
    Ok(())
}

/// Maps a failure to its exit code by the first typed error in the chain.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<server::ServeError>() {
            return s.exit_code();
        }
        if let Some(p) = cause.downcast_ref::<pki::PkiError>() {
            return match p {
                pki::PkiError::CaExists(_) | pki::PkiError::BadName { .. } => 2,
                _ => 4,
            };
        }
    }
    1
}
