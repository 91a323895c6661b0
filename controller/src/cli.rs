//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::pki::DEFAULT_CERT_DAYS;

/// The reference controller: manifests in, per-node intent out over mTLS gRPC.
#[derive(Debug, Parser)]
#[command(name = "dpu-controller", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the cluster CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue a node certificate (--node) or a server certificate (--server).
    Issue(IssueArgs),
    /// Serve the intent in --intent-dir to agents.
    Serve(ServeArgs),
    /// Show what the controller last recorded in --state-dir.
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA in <state-dir>/pki (ECDSA P-256, 10 years).
    Init {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Replace an existing CA. Every certificate it issued stops working.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["node", "server"])))]
pub struct IssueArgs {
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// A node certificate for NAME (CN and DNS SAN), for client and server auth.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// A server certificate; needs --name.
    #[arg(long, requires = "name")]
    pub server: bool,
    /// The server's name (CN and first DNS SAN).
    #[arg(long, value_name = "NAME", requires = "server")]
    pub name: Option<String>,
    /// More SANs for a server certificate: IP addresses or DNS names.
    #[arg(long = "san", value_name = "IP_OR_DNS", requires = "server")]
    pub sans: Vec<String>,
    /// Where to write <NAME>.pem, <NAME>.key and ca.pem.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_CERT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The directory of *.yaml / *.yml manifests (not recursive).
    #[arg(long, value_name = "DIR")]
    pub intent_dir: PathBuf,
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The DNS name agents verify the controller by.
    #[arg(long, value_name = "NAME", default_value = "dpu-controller")]
    pub server_name: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Print status.json (plus `controller_running`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn issue_needs_node_or_server_with_name() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["c", "issue", "--state-dir", "d", "--out", "o"]).is_err());
        assert!(parse(&["c", "issue", "--state-dir", "d", "--out", "o", "--server"]).is_err());
        assert!(parse(&[
            "c",
            "issue",
            "--state-dir",
            "d",
            "--out",
            "o",
            "--node",
            "a",
            "--server",
            "--name",
            "x"
        ])
        .is_err());
        assert!(parse(&[
            "c",
            "issue",
            "--state-dir",
            "d",
            "--out",
            "o",
            "--node",
            "a",
            "--days",
            "0"
        ])
        .is_err());
        assert!(parse(&[
            "c",
            "issue",
            "--state-dir",
            "d",
            "--out",
            "o",
            "--node",
            "a"
        ])
        .is_ok());
        assert!(parse(&[
            "c",
            "issue",
            "--state-dir",
            "d",
            "--out",
            "o",
            "--server",
            "--name",
            "x",
            "--san",
            "10.0.0.1"
        ])
        .is_ok());
    }
}
