//! The native OpenFlow 1.5 backend: one long-lived connection to the bridge's
//! management socket, no `ovs-ofctl` process per bundle. `codec` owns the wire
//! format; `conn` owns the socket; this module owns the bundle protocol.
//!
//! An apply encodes every op first (a bad op refuses the bundle before a byte is
//! sent), opens an atomic+ordered bundle, streams every message into it without
//! waiting per message, and asks for a barrier. OVS reports a message it cannot
//! take into the bundle at once, so the barrier reply says whether all of them
//! are in. Only then does it commit (a commit would apply the rest); the commit is
//! followed by a barrier, whose reply is the point the agent ACKs on. Any I/O
//! error or timeout drops the connection, and with it any open bundle; the next
//! call connects again, which is how a restarted `ovs-vswitchd` is survived.
//! A refusal names the OVS error and the op, in `ovs-ofctl bundle` syntax.
//!
//! `installed()` and the read-only `counters()` are in `dump`, which also says
//! how they keep clear of an OVS crash on groups too large to describe in one
//! message.

pub mod codec;
mod conn;
mod dump;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use codec::{msg_type, BundleCtrl};
use conn::{error_name, xid_of, Conn, Step};
pub(crate) use dump::{Counters, DESCRIBE_ALL_MAX_BUCKETS};

use super::ofctl::render_bundle;
use super::{BundleOp, InstalledSummary, OpenFlowBackend, OpenFlowError};

/// OFPBF_ATOMIC | OFPBF_ORDERED.
const BUNDLE_FLAGS: u16 = 1 | 2;
/// Bundle control reply types.
const OPEN_REPLY: u16 = 1;
const COMMIT_REPLY: u16 = 5;
const DISCARD_REPLY: u16 = 7;
/// How much of one op's text goes into an error.
const OP_TEXT_MAX: usize = 400;
/// How many refused messages an error names one by one.
const ERRORS_NAMED: usize = 3;

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
    conn: Option<Conn>,
    /// Set while a call uses the connection. Still set at the start of a call,
    /// it means the last call was dropped midway, leaving the connection at an
    /// unknown point of an exchange: it is not used again.
    in_call: bool,
    next_xid: u32,
    next_bundle: u32,
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
            next_xid: 1,
            next_bundle: 1,
        })
    }

    /// The same backend with other time bounds.
    pub fn with_timeouts(mut self, whole_call: Duration, connect: Duration) -> Self {
        self.timeout = whole_call;
        self.connect_timeout = connect;
        self
    }

    fn xid(&mut self) -> u32 {
        let x = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1);
        x
    }

    fn unreachable(&self, reason: String) -> OpenFlowError {
        OpenFlowError::Unreachable {
            target: self.target.clone(),
            reason,
        }
    }

    /// The connection, made now if there is none.
    async fn conn(&mut self) -> Result<&mut Conn, OpenFlowError> {
        if self.conn.as_mut().is_some_and(Conn::closed) {
            tracing::debug!(target = %self.target, "the switch closed the OpenFlow connection; connecting again");
            self.conn = None;
        }
        if self.conn.is_none() {
            let (target, path, bound) =
                (self.target.clone(), self.path.clone(), self.connect_timeout);
            let mut next = self.next_xid;
            let made = tokio::time::timeout(
                bound,
                Conn::connect(&target, &path, || {
                    let x = next;
                    next = next.wrapping_add(1);
                    x
                }),
            )
            .await;
            self.next_xid = next;
            let conn = made.map_err(|_| {
                self.unreachable(format!("no OpenFlow handshake within {bound:?}"))
            })??;
            self.conn = Some(conn);
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

/// Every op of one bundle as BUNDLE_ADD_MESSAGEs back to back, with the op each
/// message came from. Message `i` has xid `first_xid + i`. The caller appends a
/// barrier request to `stream`.
#[derive(Debug)]
struct Encoded {
    stream: Vec<u8>,
    op_of_message: Vec<u32>,
    first_xid: u32,
}

impl Encoded {
    /// The op a reply with `xid` is about.
    fn op(&self, xid: u32) -> Option<usize> {
        let i = xid.wrapping_sub(self.first_xid) as usize;
        self.op_of_message.get(i).map(|op| *op as usize)
    }
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

fn encode(ops: &[BundleOp], bundle_id: u32, first_xid: u32) -> Result<Encoded, OpenFlowError> {
    // Most flow mods take 100 to 200 bytes with their BUNDLE_ADD header.
    let mut stream = Vec::with_capacity(ops.len() * 160);
    let mut op_of_message = Vec::with_capacity(ops.len());
    let mut xid = first_xid;
    for (i, op) in ops.iter().enumerate() {
        let refused = |why: String| OpenFlowError::Rejected(format!("{}: {why}", op_text(op)));
        for inner in codec::encode_op(op, xid).map_err(|e| refused(e.to_string()))? {
            // Gives `inner` this xid too, as the switch wants.
            let add = codec::bundle_add(xid, bundle_id, BUNDLE_FLAGS, &inner);
            if add.len() > usize::from(u16::MAX) {
                return Err(refused(format!(
                    "encodes to a {}-byte message, more than OpenFlow can carry",
                    add.len()
                )));
            }
            stream.extend_from_slice(&add);
            op_of_message.push(i as u32);
            xid = xid.wrapping_add(1);
        }
    }
    Ok(Encoded {
        stream,
        op_of_message,
        first_xid,
    })
}

/// Errors the switch sent about messages of a bundle.
#[derive(Debug, Default)]
struct Refusals {
    /// (error name, the op it names if known, xid), the first few.
    first: Vec<(String, Option<usize>, u32)>,
    count: usize,
}

impl Refusals {
    fn note(&mut self, msg: &[u8], enc: &Encoded) {
        self.count += 1;
        if self.first.len() >= ERRORS_NAMED {
            return;
        }
        let (name, data_xid) = match codec::parse_error(msg) {
            Ok(e) => (e.name(), e.failed_xid()),
            Err(e) => (format!("an unreadable error message ({e})"), None),
        };
        let xid = xid_of(msg);
        let op = enc.op(xid).or_else(|| data_xid.and_then(|x| enc.op(x)));
        self.first.push((name, op, xid));
    }

    /// The first few errors, each with the op it is about.
    fn describe(&self, ops: &[BundleOp]) -> String {
        let mut parts: Vec<String> = self
            .first
            .iter()
            .map(|(name, op, xid)| match op {
                Some(i) => format!("{name} for op {} `{}`", i + 1, op_text(&ops[*i])),
                None => format!("{name} (xid {xid:#x})"),
            })
            .collect();
        if self.count > self.first.len() {
            parts.push(format!("and {} more errors", self.count - self.first.len()));
        }
        parts.join("; ")
    }
}

/// How the switch answered a commit.
#[derive(Debug)]
enum Commit {
    Done,
    /// With the error's name.
    Refused(String),
}

/// The transaction ids of one apply's control messages.
#[derive(Debug, Clone, Copy)]
struct ControlXids {
    open: u32,
    /// After the last message of the bundle.
    barrier: u32,
    commit: u32,
    /// After the commit: the ACK point.
    last_barrier: u32,
    discard: u32,
}

fn bundle_reply(msg: &[u8], bundle_id: u32, want: u16) -> Result<Step, OpenFlowError> {
    let (id, kind) = codec::parse_bundle_reply(msg)
        .map_err(|e| OpenFlowError::Protocol(format!("a bundle reply: {e}")))?;
    if id != bundle_id || kind != want {
        return Err(OpenFlowError::Protocol(format!(
            "bundle reply type {kind} for bundle {id}, expected type {want} for bundle {bundle_id}"
        )));
    }
    Ok(Step::Done)
}

impl NativeBackend {
    async fn apply_encoded(
        &mut self,
        ops: &[BundleOp],
        enc: &Encoded,
        bundle_id: u32,
        xids: ControlXids,
    ) -> Result<(), OpenFlowError> {
        let ControlXids {
            open,
            commit,
            last_barrier,
            discard,
            ..
        } = xids;
        let conn = self.conn().await?;

        conn.exchange(
            &codec::bundle_control(open, bundle_id, BundleCtrl::Open, BUNDLE_FLAGS),
            |msg| match (msg[1], xid_of(msg) == open) {
                (msg_type::BUNDLE_CONTROL, true) => bundle_reply(msg, bundle_id, OPEN_REPLY),
                (msg_type::ERROR, true) => Err(OpenFlowError::Rejected(format!(
                    "opening a bundle: {}",
                    error_name(msg)
                ))),
                _ => Ok(Step::More),
            },
        )
        .await?;

        // Every message, then a barrier: its reply comes after every error about
        // a message that did not make it into the bundle.
        let mut refused = Refusals::default();
        let barrier = xids.barrier;
        conn.exchange(&enc.stream, |msg| match msg[1] {
            msg_type::ERROR => {
                refused.note(msg, enc);
                Ok(Step::More)
            }
            msg_type::BARRIER_REPLY if xid_of(msg) == barrier => Ok(Step::Done),
            _ => Ok(Step::More),
        })
        .await?;
        if refused.count > 0 {
            conn.exchange(
                &codec::bundle_control(discard, bundle_id, BundleCtrl::Discard, BUNDLE_FLAGS),
                |msg| match (msg[1], xid_of(msg) == discard) {
                    (msg_type::BUNDLE_CONTROL, true) => bundle_reply(msg, bundle_id, DISCARD_REPLY),
                    // The switch may have dropped the bundle itself already.
                    (msg_type::ERROR, true) => Ok(Step::Done),
                    _ => Ok(Step::More),
                },
            )
            .await?;
            return Err(OpenFlowError::Rejected(refused.describe(ops)));
        }

        // Commit, then a barrier: its reply is the point the agent ACKs on.
        let mut committed = None;
        let mut out = codec::bundle_control(commit, bundle_id, BundleCtrl::Commit, BUNDLE_FLAGS);
        out.extend_from_slice(&codec::barrier_request(last_barrier));
        conn.exchange(&out, |msg| match msg[1] {
            msg_type::BUNDLE_CONTROL if xid_of(msg) == commit => {
                committed = Some(bundle_reply(msg, bundle_id, COMMIT_REPLY).map(|_| Commit::Done));
                Ok(Step::More)
            }
            msg_type::ERROR if xid_of(msg) == commit => {
                committed = Some(Ok(Commit::Refused(error_name(msg))));
                Ok(Step::More)
            }
            msg_type::ERROR => {
                refused.note(msg, enc);
                Ok(Step::More)
            }
            msg_type::BARRIER_REPLY if xid_of(msg) == last_barrier => Ok(Step::Done),
            _ => Ok(Step::More),
        })
        .await?;
        match committed {
            Some(Ok(Commit::Done)) => {
                if refused.count > 0 {
                    // Committed all the same: the switch says the bundle is in.
                    tracing::warn!(errors = %refused.describe(ops), "errors beside a committed bundle");
                }
                Ok(())
            }
            Some(Ok(Commit::Refused(commit_error))) if refused.count > 0 => {
                Err(OpenFlowError::Rejected(format!(
                    "{}; commit: {commit_error}",
                    refused.describe(ops)
                )))
            }
            Some(Ok(Commit::Refused(commit_error))) => {
                Err(OpenFlowError::Rejected(format!("commit: {commit_error}")))
            }
            Some(Err(e)) => Err(e),
            None => Err(OpenFlowError::Protocol(
                "no answer to the commit before the barrier after it".into(),
            )),
        }
    }

    async fn dump(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        self.conn().await?;
        let conn = self.conn.as_mut().expect("connected above");
        dump::installed(conn, &mut self.next_xid).await
    }

    async fn dump_counters(&mut self, tables: &[u8]) -> Result<Counters, OpenFlowError> {
        self.conn().await?;
        let conn = self.conn.as_mut().expect("connected above");
        dump::counters(conn, &mut self.next_xid, tables).await
    }

    /// The number of buckets of every group on the switch, by group id (its
    /// GROUP_STATS; no description is asked for). The `ovs-ofctl` backend
    /// reads this before it dares `ovs-ofctl dump-groups`.
    pub(crate) async fn group_sizes(&mut self) -> Result<Vec<(u32, usize)>, OpenFlowError> {
        self.begin();
        let r = tokio::time::timeout(self.timeout, async {
            self.conn().await?;
            let conn = self.conn.as_mut().expect("connected above");
            dump::every_group_stats(conn, &mut self.next_xid).await
        })
        .await;
        let stats = self.settle(r)?;
        Ok(stats.iter().map(|g| (g.id, g.buckets.len())).collect())
    }

    /// Reads the counters of every flow of `tables` (one request per table) and
    /// of every group and bucket, with each group's bucket ids in order. Only
    /// reads: `observe::switch_stats` uses a backend of its own for this.
    pub(crate) async fn counters(&mut self, tables: &[u8]) -> Result<Counters, OpenFlowError> {
        self.begin();
        let r = tokio::time::timeout(self.timeout, self.dump_counters(tables)).await;
        self.settle(r)
    }
}

impl OpenFlowBackend for NativeBackend {
    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        if ops.is_empty() {
            return Ok(());
        }
        let bundle_id = self.next_bundle;
        self.next_bundle = self.next_bundle.wrapping_add(1);
        let first_xid = self.next_xid;
        let started = std::time::Instant::now();
        let mut enc = encode(ops, bundle_id, first_xid)?;
        let encoded = started.elapsed();
        self.next_xid = first_xid.wrapping_add(enc.op_of_message.len() as u32);
        let xids = ControlXids {
            open: self.xid(),
            barrier: self.xid(),
            commit: self.xid(),
            last_barrier: self.xid(),
            discard: self.xid(),
        };
        enc.stream
            .extend_from_slice(&codec::barrier_request(xids.barrier));
        self.begin();
        let r = tokio::time::timeout(self.timeout, self.apply_encoded(ops, &enc, bundle_id, xids))
            .await;
        let r = self.settle(r);
        tracing::debug!(
            ops = ops.len(),
            messages = enc.op_of_message.len(),
            bytes = enc.stream.len(),
            encode_ms = encoded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            ok = r.is_ok(),
            "bundle applied natively"
        );
        r
    }

    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        self.begin();
        let r = tokio::time::timeout(self.timeout, self.dump()).await;
        self.settle(r)
    }
}
