//! The OpenFlow side of the agent, behind one trait so a native OpenFlow 1.5
//! connection can replace the `ovs-ofctl` backend without touching the reconciler.
//! The flow IR, the codec and the connection are the `openflow` crate's
//! (`openflow/`); `ir` is re-exported here so the agent names it as before.

pub use ::openflow::ir;

#[cfg(test)]
mod golden_text_tests;
pub mod native;
mod ofctl;
pub mod select;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use native::NativeBackend;
pub use ofctl::{render_bundle, OfctlBackend};
pub use select::Backend;

use std::collections::{BTreeMap, BTreeSet};

use crate::compile::flows::{FlowBody, FlowKey, Group};

/// One step of an atomic bundle, in the order it must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOp {
    /// Create or replace a group.
    PutGroup(std::sync::Arc<Group>),
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
    /// Every group, as the switch describes it.
    pub groups: BTreeMap<u32, InstalledGroup>,
    /// For each group id, the cookies of the flows whose actions name it
    /// (`group:N`). The switch keeps no owner with a group; the flows that send
    /// to it carry it (see [`Group::owner`]).
    pub group_users: BTreeMap<u32, BTreeSet<u64>>,
    pub flows: usize,
}

/// A group as the switch describes it, in the canonical form of [`Group`]: hash
/// fields and bucket actions in the syntax the compiler writes, buckets in
/// bucket-id order. The switch keeps neither an owner nor a `learns` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledGroup {
    /// `select` for every group the agent installs.
    pub kind: String,
    /// `hash` for every group the agent installs; `None` when not shown.
    pub selection_method: Option<String>,
    pub hash_fields: Vec<String>,
    /// Anything else the switch shows about the group (`selection_method_param=…`);
    /// none for the agent's groups.
    pub properties: Vec<String>,
    /// Buckets with their ids, sorted by id; a group whose bucket ids differ
    /// is another group (OVS's selection hashes the ids). A bucket property
    /// other than its id and the default weight is kept in front of the
    /// actions (`weight:50,actions=…`), so such a bucket never equals one the
    /// compiler wrote. When `wire` is set, each bucket's actions are the
    /// lowercase hex of its actions as the switch returned them instead.
    pub buckets: Vec<InstalledBucket>,
    /// Read from OpenFlow messages (the native backend) rather than
    /// `ovs-ofctl` text: buckets are action bytes in hex, see
    /// [`native::wire_form`].
    pub wire: bool,
}

impl InstalledGroup {
    /// What the switch reports once `g` is installed.
    pub fn of(g: &Group) -> Self {
        InstalledGroup {
            kind: "select".into(),
            selection_method: Some("hash".into()),
            hash_fields: g.hash_fields.iter().map(|f| f.to_string()).collect(),
            properties: Vec::new(),
            buckets: sorted(
                g.buckets
                    .iter()
                    .map(|b| InstalledBucket {
                        id: b.id,
                        actions: b.actions.to_string(),
                    })
                    .collect(),
            ),
            wire: false,
        }
    }

    /// Whether the switch holds `g` as it is: same type, selection, hash fields
    /// and buckets.
    pub fn is(&self, g: &Group) -> bool {
        if self.wire {
            native::wire_form(g).is_ok_and(|w| *self == w)
        } else {
            *self == Self::of(g)
        }
    }
}

/// A bucket as the switch describes it: its id and its actions as text
/// (`ovs-ofctl`) or as the hex of their bytes (OpenFlow).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstalledBucket {
    pub id: u32,
    pub actions: String,
}

impl InstalledBucket {
    pub fn new(id: u32, actions: impl Into<String>) -> Self {
        InstalledBucket {
            id,
            actions: actions.into(),
        }
    }
}

/// Buckets in id order, the canonical order of [`InstalledGroup::buckets`].
pub(crate) fn sorted(mut buckets: Vec<InstalledBucket>) -> Vec<InstalledBucket> {
    buckets.sort_by_key(|b| b.id);
    buckets
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

    /// Reads what is installed now: flow cookies, groups, and which flows name
    /// which group.
    fn installed(
        &mut self,
    ) -> impl std::future::Future<Output = Result<InstalledSummary, OpenFlowError>> + Send;
}
