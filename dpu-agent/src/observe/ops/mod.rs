//! The operator socket: `dpu-agent show|trace|explain` talk to the running
//! agent over a local unix socket (mode 0600, root only). One JSON request per
//! connection, one JSON response; the agent renders the text, so the client
//! stays a thin printer.

pub mod client;
pub mod explain;
pub mod server;
pub mod show;
pub mod trace;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::observe::Agent;

/// What the client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    ShowIntent,
    /// `service`: only that Service's flows and groups.
    ShowPipeline {
        service: Option<String>,
    },
    ShowService {
        name: String,
    },
    Trace(TraceRequest),
    Explain {
        name: String,
    },
    /// The offload audit of the datapath flows, all or one Service's.
    ExplainOffload {
        service: Option<String>,
    },
}

/// A packet to trace through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp` (or `icmp`).
    pub proto: String,
    /// Destination port (tcp/udp).
    pub dst_port: Option<u16>,
    /// Source port; a fixed default when absent.
    pub src_port: Option<u16>,
    /// Where the packet enters: a port's `iface-id` (a workload's port, the
    /// host's, the uplink, the tunnel) ...
    pub in_port: Option<String>,
    /// ... or a VPC: the packet enters from the port of this node's workload in
    /// that VPC that owns `src`.
    pub vpc: Option<String>,
    /// Also show `ovs-appctl ofproto/trace`'s own text.
    #[serde(default)]
    pub raw: bool,
}

/// The agent's answer: text to print, or an error naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub ok: bool,
    pub output: String,
}

/// What a request handler can reach.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub agent: Agent,
    pub node: String,
    pub bridge: String,
    /// `unix:<run_dir>/<bridge>.mgmt`: read-only OpenFlow connections for
    /// counters and the switch's own view.
    pub ofctl_target: String,
    /// `ovs-vswitchd`'s run directory (`OVS_RUNDIR` for `ovs-appctl`).
    pub run_dir: PathBuf,
    pub appctl_path: String,
    /// The OpenFlow target as `ovs-ofctl` and `ovs-appctl` accept it.
    pub ofctl_path: String,
    /// `ovs.datapath_type` (`netdev` or `system`): which datapath
    /// `dpctl/dump-flows` reads for `show service`'s offload line.
    pub datapath_type: String,
}

/// A handler's failure: shown to the operator as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct OpsError(pub String);

impl From<crate::observe::Gone> for OpsError {
    fn from(e: crate::observe::Gone) -> Self {
        OpsError(e.to_string())
    }
}

/// Runs one request.
pub async fn handle(ctx: &Ctx, req: &Request) -> Result<String, OpsError> {
    match req {
        Request::ShowIntent => show::intent(ctx).await,
        Request::ShowPipeline { service } => show::pipeline(ctx, service.as_deref()).await,
        Request::ShowService { name } => show::service(ctx, name).await,
        Request::Trace(t) => trace::run(ctx, t).await,
        Request::Explain { name } => explain::run(ctx, name).await,
        Request::ExplainOffload { service } => explain::offload(ctx, service.as_deref()).await,
    }
}
