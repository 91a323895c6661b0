//! `dpu-controller`: holds the intent (manifests in a directory), serves each DPU
//! agent its share over mTLS gRPC, issues identities, and records status.
//!
//! Exit codes: 0 ok, 1 other failure, 2 usage or configuration, 3 invalid intent
//! at start, 4 TLS/PKI.

use dpu_controller::{cli, enrollcmd, intentcmd, objects, pki, server, statuscmd};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{CaCommand, Cli, Command, NodeCommand, TokenCommand};

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
            let written = match (&a.node, &a.host_shim, &a.name) {
                (Some(node), _, _) => store_command(enrollcmd::issue_node(
                    &a.state_dir,
                    a.etcd.options(),
                    node,
                    a.days,
                    &a.out,
                ))?,
                (None, Some(name), _) => {
                    let ca = pki::load_ca(&a.state_dir)?;
                    let issued = ca.issue_host_shim(name, a.days)?;
                    pki::write_issued(&a.out, name, &issued, &ca)?
                }
                (None, None, Some(name)) => {
                    let ca = pki::load_ca(&a.state_dir)?;
                    let issued = ca.issue_server(name, &a.sans, a.days)?;
                    pki::write_issued(&a.out, name, &issued, &ca)?
                }
                (None, None, None) => {
                    unreachable!("clap requires --node, --host-shim or --server --name")
                }
            };
            for path in written {
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
                etcd: a.etcd.options(),
                listen: a.listen,
                server_name: a.server_name,
                enroll_cert_ttl: a.enroll_cert_ttl,
            }))?;
        }
        Command::Apply(a) => print!(
            "{}",
            store_command(intentcmd::run_apply(&a.store, &a.file))?
        ),
        Command::Diff(a) => {
            let d = store_command(intentcmd::run_diff(&a.store, &a.file))?;
            print!("{d}");
            if !d.is_empty() {
                std::io::Write::flush(&mut std::io::stdout())?;
                std::process::exit(1);
            }
        }
        Command::Get {
            store,
            kind,
            name,
            output,
        } => print!(
            "{}",
            store_command(intentcmd::run_get(
                &store,
                kind.as_deref(),
                name.as_deref(),
                output
            ))?
        ),
        Command::Delete { store, kind, name } => {
            print!(
                "{}",
                store_command(intentcmd::run_delete(&store, &kind, &name))?
            )
        }
        Command::Status(a) => match (&a.state_dir, a.etcd.options()) {
            (_, Some(o)) => print!(
                "{}",
                store_command(async {
                    let store = dpu_controller::kv::EtcdStore::connect(o).await?;
                    let store = dpu_controller::kv::Store::Etcd(store);
                    Ok::<_, objects::ObjectError>(statuscmd::from_store(&store, &a.query()).await)
                })??
            ),
            (Some(dir), None) => print!("{}", statuscmd::run(dir, &a.query())?),
            (None, None) => unreachable!("clap requires --state-dir or --etcd"),
        },
        Command::Token { command } => print!(
            "{}",
            match command {
                TokenCommand::Create { store, node, ttl } => {
                    store_command(enrollcmd::token_create(&store, &node, ttl))?
                }
                TokenCommand::List { store, json } => {
                    store_command(enrollcmd::token_list(&store, json))?
                }
                TokenCommand::Delete { store, id } => {
                    store_command(enrollcmd::token_delete(&store, &id))?
                }
            }
        ),
        Command::Node { command } => print!(
            "{}",
            match command {
                NodeCommand::List { store, json } =>
                    store_command(enrollcmd::node_list(&store, json))?,
                NodeCommand::Revoke { store, node } => {
                    store_command(enrollcmd::node_revoke(&store, &node))?
                }
            }
        ),
    }
    Ok(())
}

/// Runs a command on the store on a runtime of its own.
fn store_command<T, E>(f: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(f)?)
}

/// Maps a failure to its exit code by the first typed error in the chain.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<server::ServeError>() {
            return s.exit_code();
        }
        if let Some(o) = cause.downcast_ref::<objects::ObjectError>() {
            return o.exit_code();
        }
        if let Some(c) = cause.downcast_ref::<enrollcmd::CmdError>() {
            return c.exit_code();
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
