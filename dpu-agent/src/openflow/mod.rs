//! The OpenFlow side of the agent, behind one trait so a native OpenFlow 1.5
//! connection can replace the `ovs-ofctl` backend without touching the reconciler.

pub mod liveness;
mod ofctl;

pub use ofctl::OfctlBackend;

use std::collections::BTreeSet;

use crate::flows::{FlowBody, FlowKey, Group};

/// One step of an atomic bundle, in the order it must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOp {
    /// Create or replace a group.
    PutGroup(Group),
    /// Add a flow, replacing one with the same table, priority and match.
    AddFlow {
        key: FlowKey,
        body: FlowBody,
        cookie: u64,
    },
    /// Delete exactly one flow.
    DeleteFlow(FlowKey),
    /// Delete every flow whose cookie matches under the mask, in one table or all.
    DeleteFlowsByCookie {
        table: Option<u8>,
        cookie: u64,
        mask: u64,
    },
    DeleteGroup(u32),
}

/// What the switch reports it holds, for rebuilding a view after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstalledSummary {
    pub cookies: BTreeSet<u64>,
    pub group_ids: BTreeSet<u32>,
    pub flows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenFlowError {
    /// The switch refused the bundle; nothing in it was applied.
    #[error("the switch rejected the bundle: {0}")]
    Rejected(String),
    /// The switch could not be reached or did not answer in time.
    #[error("cannot talk to the switch at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    /// Output from the switch that could not be understood.
    #[error("unexpected reply from the switch: {0}")]
    Protocol(String),
}

/// A connection to one bridge's OpenFlow management socket.
pub trait OpenFlowBackend: Send {
    /// Applies `ops` as one atomic, ordered bundle and returns once the switch has
    /// confirmed the commit (the barrier point). An error means nothing applied.
    fn apply(
        &mut self,
        ops: &[BundleOp],
    ) -> impl std::future::Future<Output = Result<(), OpenFlowError>> + Send;

    /// Reads cookies and group ids of what is installed now.
    fn installed(
        &mut self,
    ) -> impl std::future::Future<Output = Result<InstalledSummary, OpenFlowError>> + Send;
}
