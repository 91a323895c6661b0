//! The native OpenFlow 1.5 backend: one long-lived connection to the bridge's
//! management socket, no `ovs-ofctl` process per bundle. The `openflow` crate
//! owns the wire format, the connection and the bundle protocol; this module
//! adapts them to the agent: [`BundleOp`]s become the crate's changes
//! (borrowing their matches and actions), refusals name the op in
//! `ovs-ofctl bundle` syntax, dumps become an [`InstalledSummary`], and the
//! connection is made, bounded in time and made again here.
//!
//! An apply encodes every op first (a bad op refuses the bundle before a byte is
//! sent), then the crate applies it as one atomic+ordered bundle and returns at
//! the barrier after the commit, the point the agent ACKs on. Any I/O error or
//! timeout drops the connection, and with it any open bundle; the next call
//! connects again, which is how a restarted `ovs-vswitchd` is survived.

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use ::openflow::codec;
pub(crate) use ::openflow::{Counters, DESCRIBE_ALL_MAX_BUCKETS};

use ::openflow::codec::{Change, CodecError, FlowMod, GroupDesc, GroupMod};
use ::openflow::{Connection, Dump, OversizedGroup};

use super::ofctl::render_bundle;
use super::{
    sorted, BundleOp, InstalledBucket, InstalledGroup, InstalledSummary, OpenFlowBackend,
    OpenFlowError,
};
use crate::compile::flows::Group;

/// How much of one op's text goes into an error.
const OP_TEXT_MAX: usize = 400;

/// An [`OpenFlowBackend`] that speaks OpenFlow 1.5 itself over
/// `unix:<rundir>/<bridge>.mgmt`.
#[derive(Debug)]
pub struct NativeBackend {
    /// As given, for error messages.
    target: String,
    path: PathBuf,
    /// Bound on one whole `apply` or `installed`, connecting included.
    pub timeout: Duration,
    /// Bound on connecting and the handshake.
    pub connect_timeout: Duration,
    conn: Option<Connection>,
    /// Set while a call uses the connection. Still set at the start of a call,
    /// it means the last call was dropped midway, leaving the connection at an
    /// unknown point of an exchange: it is not used again.
    in_call: bool,
}

impl NativeBackend {
    /// A backend for `target`, `unix:<path>` (the same string `ovs-ofctl` takes).
    /// Nothing is connected until the first call.
    pub fn new(target: impl Into<String>) -> Result<Self, OpenFlowError> {
        let target = target.into();
        let path = match target.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(OpenFlowError::Unreachable {
                    reason: "the native OpenFlow backend connects only to a unix:<path> \
                             management socket"
                        .into(),
                    target,
                })
            }
        };
        Ok(NativeBackend {
            target,
            path,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            conn: None,
            in_call: false,
        })
    }

    /// The same backend with other time bounds.
    pub fn with_timeouts(mut self, whole_call: Duration, connect: Duration) -> Self {
        self.timeout = whole_call;
        self.connect_timeout = connect;
        self
    }

    fn unreachable(&self, reason: String) -> OpenFlowError {
        OpenFlowError::Unreachable {
            target: self.target.clone(),
            reason,
        }
    }

    /// The connection, made now if there is none.
    async fn conn(&mut self) -> Result<&mut Connection, OpenFlowError> {
        if self.conn.as_mut().is_some_and(Connection::closed) {
            tracing::debug!(target = %self.target, "the switch closed the OpenFlow connection; connecting again");
            self.conn = None;
        }
        if self.conn.is_none() {
            let bound = self.connect_timeout;
            let made = tokio::time::timeout(bound, Connection::connect(&self.path))
                .await
                .map_err(|_| self.unreachable(format!("no OpenFlow handshake within {bound:?}")))?;
            self.conn = Some(made.map_err(|e| from_crate(&self.target, e, &[]))?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Starts a call that uses the connection (see `in_call`).
    fn begin(&mut self) {
        if std::mem::replace(&mut self.in_call, true) && self.conn.take().is_some() {
            tracing::debug!(target = %self.target, "the last OpenFlow call was cancelled midway; connecting again");
        }
    }

    /// The outcome of a call under the whole-call bound. The connection is
    /// dropped unless the switch merely refused what was asked, so the next
    /// call starts afresh (and the switch drops any bundle left open).
    fn settle<T>(
        &mut self,
        r: Result<Result<T, OpenFlowError>, tokio::time::error::Elapsed>,
    ) -> Result<T, OpenFlowError> {
        self.in_call = false;
        let r = r.unwrap_or_else(|_| {
            Err(self.unreachable(format!("no answer within {:?}", self.timeout)))
        });
        if matches!(
            r,
            Err(OpenFlowError::Unreachable { .. } | OpenFlowError::Protocol(_))
        ) {
            self.conn = None;
        }
        r
    }
}

/// The change `op` stands for, borrowing its match and actions.
pub fn change(op: &BundleOp) -> Change<'_> {
    match op {
        BundleOp::PutGroup(g) => Change::PutGroup(group_mod(g)),
        BundleOp::AddFlow { key, body, cookie } => Change::Flow(FlowMod::add(
            key.table,
            key.priority,
            *cookie,
            &key.matches,
            &body.actions,
        )),
        BundleOp::DeleteFlow(key) => Change::Flow(FlowMod::delete_strict(
            key.table,
            key.priority,
            &key.matches,
        )),
        BundleOp::DeleteFlowsByCookie {
            table,
            cookie,
            mask,
        } => Change::Flow(FlowMod::delete_by_cookie(*table, *cookie, *mask)),
        BundleOp::DeleteGroup(id) => Change::DeleteGroup(*id),
    }
}

/// `g` as the crate's select group, borrowing its hash fields and actions.
pub fn group_mod(g: &Group) -> GroupMod<'_> {
    GroupMod {
        id: g.id,
        hash_fields: &g.hash_fields,
        buckets: g.buckets.iter().map(|b| (b.id, &*b.actions)).collect(),
    }
}

/// One bundle op as the OpenFlow messages it stands for, in order, each with
/// xid `xid`.
pub fn encode_op(op: &BundleOp, xid: u32) -> Result<Vec<Vec<u8>>, CodecError> {
    change(op).encode(xid)
}

/// The form `g` takes in [`InstalledSummary::groups`] once installed, read
/// back natively: hash fields by name, each bucket as the hex of its actions.
pub fn wire_form(g: &Group) -> Result<InstalledGroup, CodecError> {
    group_mod(g).desc().map(InstalledGroup::from_desc)
}

impl InstalledGroup {
    /// A group as the switch describes it in OpenFlow (see [`wire_form`]).
    pub fn from_desc(d: GroupDesc) -> Self {
        InstalledGroup {
            kind: d.group_type.name().into(),
            selection_method: d.selection_method,
            hash_fields: d.hash_fields,
            properties: d.properties,
            buckets: sorted(
                d.buckets
                    .into_iter()
                    .map(|b| {
                        let mut text = String::new();
                        for p in &b.properties {
                            text.push_str(p);
                            text.push(',');
                        }
                        text.push_str(&hex::encode(&b.actions));
                        InstalledBucket::new(b.id, text)
                    })
                    .collect(),
            ),
            wire: true,
        }
    }

    /// A group whose description is longer than an OpenFlow message can say:
    /// reported with a property that no group the compiler writes has, so the
    /// reconciler takes it as changed and writes it again.
    fn unreadable(g: &OversizedGroup) -> Self {
        tracing::warn!(
            group = g.id,
            bytes = g.bytes + 16,
            "the switch describes a group in more than one OpenFlow message holds; \
             its buckets are unknown and it will be written again"
        );
        InstalledGroup {
            kind: g.group_type.name().into(),
            selection_method: None,
            hash_fields: Vec::new(),
            properties: vec![format!(
                "unreadable: described in {} bytes, more than an OpenFlow message holds",
                g.bytes
            )],
            buckets: Vec::new(),
            wire: true,
        }
    }
}

/// What a dump says the switch holds.
fn summary(dump: Dump) -> InstalledSummary {
    let mut sum = InstalledSummary {
        flows: dump.flows.len(),
        ..InstalledSummary::default()
    };
    for f in dump.flows {
        sum.cookies.insert(f.cookie);
        for g in f.groups {
            sum.group_users.entry(g).or_default().insert(f.cookie);
        }
    }
    for d in dump.groups {
        sum.groups.insert(d.id, InstalledGroup::from_desc(d));
    }
    for g in &dump.oversized_groups {
        sum.groups.insert(g.id, InstalledGroup::unreadable(g));
    }
    sum
}

/// One op in `ovs-ofctl bundle` syntax, cut short if long (big groups).
fn op_text(op: &BundleOp) -> String {
    let mut s = render_bundle(std::slice::from_ref(op))
        .trim_end()
        .to_string();
    if s.len() > OP_TEXT_MAX {
        let mut cut = OP_TEXT_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The op `i` of `ops` as a refusal names it.
fn op_label(ops: &[BundleOp], i: usize) -> String {
    match ops.get(i) {
        Some(op) => format!("op {} `{}`", i + 1, op_text(op)),
        None => format!("op {}", i + 1),
    }
}

/// The crate's error as the agent's; a refusal names the ops of `ops`.
fn from_crate(target: &str, e: ::openflow::Error, ops: &[BundleOp]) -> OpenFlowError {
    match e {
        ::openflow::Error::Unreachable { reason, .. } => OpenFlowError::Unreachable {
            target: target.to_string(),
            reason,
        },
        ::openflow::Error::Protocol(p) => OpenFlowError::Protocol(p),
        ::openflow::Error::Refused(what) => OpenFlowError::Rejected(what),
        ::openflow::Error::Bundle(r) => OpenFlowError::Rejected(r.describe(|i| op_label(ops, i))),
        ::openflow::Error::Unencodable { op, reason } => match ops.get(op) {
            Some(o) => OpenFlowError::Rejected(format!("{}: {reason}", op_text(o))),
            None => OpenFlowError::Rejected(format!("op {op}: {reason}")),
        },
    }
}

impl NativeBackend {
    /// Runs `call` on the connection (made first if need be) under the
    /// whole-call bound; errors name the ops of `ops`.
    async fn call<T>(
        &mut self,
        ops: &[BundleOp],
        call: impl AsyncFnOnce(&mut Connection) -> Result<T, ::openflow::Error>,
    ) -> Result<T, OpenFlowError> {
        self.begin();
        let target = self.target.clone();
        let r = tokio::time::timeout(self.timeout, async {
            let conn = self.conn().await?;
            call(conn).await.map_err(|e| from_crate(&target, e, ops))
        })
        .await;
        self.settle(r)
    }

    /// The number of buckets of every group on the switch, by group id (its
    /// GROUP_STATS; no description is asked for). The `ovs-ofctl` backend
    /// reads this before it dares `ovs-ofctl dump-groups`.
    pub(crate) async fn group_sizes(&mut self) -> Result<Vec<(u32, usize)>, OpenFlowError> {
        let stats = self.call(&[], async |c| c.group_stats().await).await?;
        Ok(stats.iter().map(|g| (g.id, g.buckets.len())).collect())
    }

    /// Reads the counters of every flow of `tables` (one request per table) and
    /// of every group and bucket, with each group's bucket ids in order. Only
    /// reads: `observe::switch_stats` uses a backend of its own for this.
    pub(crate) async fn counters(&mut self, tables: &[u8]) -> Result<Counters, OpenFlowError> {
        self.call(&[], async |c| c.counters(tables).await).await
    }

    /// The same counters a part at a time, each part asked for only when the
    /// last one is answered (`openflow`'s `parts`): the flows of `table`
    /// whose cookies match each (cookie, mask) of `flow_parts`, then the
    /// groups `groups` in parts of `groups_per_part`, each with its bucket
    /// ids. Before each part it waits while `busy` is true, at most `pause`,
    /// and no more than `budget` over the whole read.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn counters_in_parts(
        &mut self,
        table: u8,
        flow_parts: &[(u64, u64)],
        groups: &[u32],
        groups_per_part: usize,
        busy: Option<tokio::sync::watch::Receiver<bool>>,
        pause: Duration,
        budget: Duration,
    ) -> Result<Counters, OpenFlowError> {
        let mut pacer = Pacer {
            busy,
            pause,
            left: budget,
        };
        self.call(&[], async |c| {
            let mut out = Counters::default();
            for &(cookie, mask) in flow_parts {
                pacer.wait().await;
                out.flows.extend(c.flow_counts(table, cookie, mask).await?);
            }
            for ids in groups.chunks(groups_per_part.max(1)) {
                pacer.wait().await;
                let part = c.group_counters(ids).await?;
                out.groups.extend(part.groups);
                out.bucket_ids.extend(part.bucket_ids);
            }
            Ok(out)
        })
        .await
    }
}

/// Holds a read's next part while `busy` is true: at most `pause` a part,
/// and `left` in all.
struct Pacer {
    busy: Option<tokio::sync::watch::Receiver<bool>>,
    pause: Duration,
    left: Duration,
}

impl Pacer {
    async fn wait(&mut self) {
        let Some(rx) = self.busy.as_mut() else {
            return;
        };
        if self.left.is_zero() {
            return;
        }
        let started = tokio::time::Instant::now();
        let _ = tokio::time::timeout(self.pause.min(self.left), rx.wait_for(|b| !*b)).await;
        self.left = self.left.saturating_sub(started.elapsed());
    }
}

impl OpenFlowBackend for NativeBackend {
    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        if ops.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // Encoded part by part while the switch takes the parts before.
        let r = self
            .call(ops, async |c| c.apply_changes(ops.iter().map(change)).await)
            .await;
        if let Ok(late) = &r {
            if !late.is_empty() {
                // Committed all the same: the switch says the bundle is in.
                tracing::warn!(errors = %late.describe(|i| op_label(ops, i)), "errors beside a committed bundle");
            }
        }
        tracing::debug!(
            ops = ops.len(),
            total_ms = started.elapsed().as_millis() as u64,
            ok = r.is_ok(),
            "bundle applied natively"
        );
        r.map(drop)
    }

    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        self.call(&[], async |c| c.dump().await).await.map(summary)
    }
}
