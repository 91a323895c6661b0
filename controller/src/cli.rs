//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::enroll::{MAX_CERT_TTL, MIN_CERT_TTL};
use crate::pki::DEFAULT_CERT_DAYS;
use crate::timeutil::parse_bounded;
use crate::tokens;

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
    /// Serve the intent in the store (and --intent-dir, imported into it) to agents.
    Serve(ServeArgs),
    /// Show what the controller last recorded in --state-dir.
    Status(StatusArgs),
    /// Bootstrap tokens: how a DPU enrolls (gets its node certificate).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Node records: list the enrolled nodes, revoke one.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Validate manifests (a file, a directory or - for stdin) with everything
    /// already in the store, then write them in one transaction or not at all.
    Apply(FileArgs),
    /// What `apply -f` would change, as a diff. Exit 0: nothing, 1: changes.
    Diff(FileArgs),
    /// Print intent objects from the store: all, one kind, or one object.
    Get {
        #[command(flatten)]
        store: StoreArgs,
        /// YusurService (or Service), Vpc, Subnet, Workload, NetworkProbe,
        /// DpuNode (or Node); any case, plural or not. Omitted: every kind.
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: crate::objects::Format,
    },
    /// Delete one intent object, if the intent left is still valid.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        kind: String,
        name: String,
    },
}

/// Which store a command works on: the embedded one under --state-dir, or etcd.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("store").required(true).args(["state_dir", "etcd"])))]
pub struct StoreArgs {
    /// The embedded store, `<DIR>/store` (the controller's --state-dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// etcd, for `serve` and the intent commands.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd's client URLs, https:// only (mutual TLS), comma-separated.
    #[arg(long, value_name = "URL,...", value_delimiter = ',', requires_all = ["etcd_ca", "etcd_cert", "etcd_key"])]
    pub etcd: Vec<String>,
    /// The CA that signed etcd's server certificate.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate and key shown to etcd.
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// Every key is under this prefix.
    #[arg(long, value_name = "PREFIX", default_value = crate::kv::etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
}

impl EtcdArgs {
    /// The etcd options, if --etcd was given.
    pub fn options(&self) -> Option<crate::kv::EtcdOptions> {
        if self.etcd.is_empty() {
            return None;
        }
        let path = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
        Some(crate::kv::EtcdOptions {
            endpoints: self.etcd.clone(),
            ca: path(&self.etcd_ca),
            cert: path(&self.etcd_cert),
            key: path(&self.etcd_key),
            prefix: self.etcd_prefix.clone(),
        })
    }
}

impl StoreArgs {
    /// Opens the store named.
    pub async fn open(&self) -> Result<crate::kv::Store, crate::kv::KvError> {
        use crate::kv::{EtcdStore, LocalStore, Store};
        match (&self.state_dir, self.etcd.options()) {
            (_, Some(o)) => Ok(Store::Etcd(EtcdStore::connect(o).await?)),
            (Some(dir), None) => Ok(Store::Local(LocalStore::open(&dir.join(STORE_DIR))?)),
            (None, None) => Err(crate::kv::KvError::Refused(
                "give --state-dir or --etcd".into(),
            )),
        }
    }
}

/// The embedded store's directory under the state directory.
pub const STORE_DIR: &str = "store";

#[derive(Debug, Args)]
pub struct FileArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// A manifest file, a directory of *.yaml / *.yml files, or - (stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub file: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time token that lets a DPU enroll as --node. Prints only the
    /// token; the store keeps only its hash.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_name = "NAME")]
        node: String,
        /// How long the token can be used: 30s, 15m, 1h, 7d (at most 30d).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = token_ttl)]
        ttl: Duration,
    },
    /// List tokens: id, node, state (unused, used, expired), times. Never secrets.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Delete a token, used or not.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List node records: state, current certificate, enrollment, connection.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: its certificates are refused from now on and every
    /// running controller replica ends its session. Re-admit it with a new token.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_name = "NAME")]
        node: String,
    },
}

fn token_ttl(text: &str) -> Result<Duration, String> {
    parse_bounded(text, tokens::MIN_TTL, tokens::MAX_TTL)
}

fn enroll_cert_ttl(text: &str) -> Result<Duration, String> {
    parse_bounded(text, MIN_CERT_TTL, MAX_CERT_TTL)
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
#[command(group(ArgGroup::new("what").required(true).args(["node", "host_shim", "server"])))]
pub struct IssueArgs {
    /// Where the CA is (`<DIR>/pki`); a --node certificate is recorded in the
    /// embedded store here unless --etcd names the store.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The store on etcd, where a --node certificate is recorded.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// A node certificate for NAME (CN and DNS SAN, role node), for client and
    /// server auth.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// A host shim's certificate for NAME (CN and DNS SAN, role host-shim),
    /// client auth only: the agent's `[shim] client_name`. The controller
    /// refuses it.
    #[arg(long = "host-shim", value_name = "NAME")]
    pub host_shim: Option<String>,
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
    /// The directory of *.yaml / *.yml manifests (not recursive), imported
    /// into the store whenever it changes. Without it, the intent is what
    /// `apply` wrote.
    #[arg(long, value_name = "DIR")]
    pub intent_dir: Option<PathBuf>,
    /// The store on etcd instead of the embedded one in --state-dir.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The DNS name agents verify the controller by.
    #[arg(long, value_name = "NAME", default_value = "dpu-controller")]
    pub server_name: String,
    /// Lifetime of certificates issued by Enroll and Renew: 30s..=365d.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = enroll_cert_ttl)]
    pub enroll_cert_ttl: Duration,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("from").required(true).args(["state_dir", "etcd"])))]
pub struct StatusArgs {
    /// A replica's own status (`<DIR>/status.json`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Every replica's status, from the store on etcd.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print status.json (plus `controller_running`) instead of a table; with
    /// --node, that node's entry; with --service, that Service's.
    #[arg(long)]
    pub json: bool,
    /// Show one node: connection, versions, errors, DPU facts, counters,
    /// unhealthy backends and the Services its agent reports.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Show one Service on --node: VIPs, counters and its backends.
    #[arg(long, value_name = "NAME", requires = "node")]
    pub service: Option<String>,
}

impl StatusArgs {
    pub fn query(&self) -> crate::statuscmd::Query {
        crate::statuscmd::Query {
            node: self.node.clone(),
            service: self.service.clone(),
            json: self.json,
        }
    }
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
    fn durations_are_bounded() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let create = |ttl: &str| {
            parse(&[
                "c",
                "token",
                "create",
                "--state-dir",
                "d",
                "--node",
                "a",
                "--ttl",
                ttl,
            ])
        };
        assert!(create("30d").is_ok());
        assert!(create("31d").is_err());
        assert!(create("0s").is_err());
        assert!(create("1x").is_err());
        let serve = |ttl: &str| {
            parse(&[
                "c",
                "serve",
                "--state-dir",
                "d",
                "--intent-dir",
                "i",
                "--enroll-cert-ttl",
                ttl,
            ])
        };
        assert!(serve("29s").is_err());
        assert!(serve("366d").is_err());
        match serve("30s").unwrap().command {
            Command::Serve(a) => assert_eq!(a.enroll_cert_ttl, Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
        let default = parse(&["c", "serve", "--state-dir", "d", "--intent-dir", "i"]).unwrap();
        match default.command {
            Command::Serve(a) => assert_eq!(a.enroll_cert_ttl, Duration::from_secs(86_400)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_service_needs_node() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let e = parse(&["c", "status", "--state-dir", "d", "--service", "web"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        match parse(&[
            "c",
            "status",
            "--state-dir",
            "d",
            "--node",
            "dpu-1",
            "--service",
            "web",
        ])
        .unwrap()
        .command
        {
            Command::Status(a) => {
                let q = a.query();
                assert_eq!(q.node.as_deref(), Some("dpu-1"));
                assert_eq!(q.service.as_deref(), Some("web"));
                assert!(!q.json);
            }
            other => panic!("{other:?}"),
        }
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
        let both = ["--node", "a", "--host-shim", "h"];
        let base = ["c", "issue", "--state-dir", "d", "--out", "o"];
        assert!(parse(&[&base[..], &both[..]].concat()).is_err());
        assert!(parse(&[&base[..], &both[2..]].concat()).is_ok());
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
