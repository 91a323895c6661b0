//! Atomic, ordered bundles: a [`Bundle`] is encoded whole before anything is
//! sent (a change that cannot be encoded refuses it unsent), then
//! [`Connection::apply`] opens the bundle, streams every message into it
//! without waiting per message, and asks for a barrier.
//! [`Connection::apply_changes`] does the same with changes it encodes part
//! by part while the switch takes the parts before (a change that cannot be
//! encoded discards the bundle). OVS reports a message
//! it cannot take into the bundle at once, so the barrier reply says whether
//! all of them are in. Only then does it commit (a commit would apply the
//! rest); the commit is followed by a barrier, whose reply is the point the
//! bundle is in the flow tables. A refusal names the OpenFlow error and the
//! op of the bundle it is about.

use crate::codec::{self, msg_type, BundleCtrl, Change, CodecError, Out};
use crate::conn::{error_name, xid_of, Connection, Step};
use crate::error::{BundleRefused, Refusal, Refusals};
use crate::Error;

/// `OFPBF_ATOMIC | OFPBF_ORDERED`.
const BUNDLE_FLAGS: u16 = codec::BUNDLE_ATOMIC | codec::BUNDLE_ORDERED;
/// Bundle control reply types.
const OPEN_REPLY: u16 = 1;
const COMMIT_REPLY: u16 = 5;
const DISCARD_REPLY: u16 = 7;
/// How many bytes of messages [`Connection::apply_changes`] encodes before it
/// writes them: a few hundred flow mods, about as much as a unix socket's
/// buffer holds.
pub const STREAM_CHUNK: usize = 128 * 1024;
/// Where the bundle id and the inner message's xid sit in a BUNDLE_ADD_MESSAGE.
const BUNDLE_ID_AT: usize = 8;
const INNER_XID_AT: usize = 16 + 4;

/// The changes of one atomic, ordered bundle, encoded: every change as
/// BUNDLE_ADD_MESSAGEs back to back, with the op (change) each message came
/// from. Transaction and bundle ids are filled in when it is applied.
#[derive(Debug, Default)]
pub struct Bundle {
    stream: Vec<u8>,
    /// Where each message starts in `stream`, and its op.
    messages: Vec<(usize, u32)>,
    ops: u32,
}

impl Bundle {
    /// An empty bundle.
    pub fn new() -> Self {
        Bundle::default()
    }

    /// An empty bundle with room for about `ops` flow mods.
    pub fn with_capacity(ops: usize) -> Self {
        Bundle {
            // Most flow mods take 100 to 200 bytes with their BUNDLE_ADD header.
            stream: Vec::with_capacity(ops * 160),
            messages: Vec::with_capacity(ops),
            ops: 0,
        }
    }

    /// Adds `change` as the next op: its messages, in order. On an error the
    /// bundle is as it was.
    pub fn push<'a>(&mut self, change: impl Into<Change<'a>>) -> Result<(), CodecError> {
        let start = self.stream.len();
        let mut out = Out::bundled(&mut self.stream, 0, 0, BUNDLE_FLAGS);
        change.into().write(&mut out)?;
        let count = out.count;
        let mut at = start;
        for _ in 0..count {
            self.messages.push((at, self.ops));
            at += usize::from(u16::from_be_bytes([
                self.stream[at + 2],
                self.stream[at + 3],
            ]));
        }
        self.ops += 1;
        Ok(())
    }

    /// How many ops (changes) it holds.
    pub fn ops(&self) -> usize {
        self.ops as usize
    }

    /// How many messages they take.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// How many bytes those messages take.
    pub fn bytes(&self) -> usize {
        self.stream.len()
    }

    /// Whether it holds no op.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Gives message `from + i` xid `first_xid + i` (inside and out) and the
    /// bundle id; the messages before `from` were numbered and written.
    fn number(&mut self, from: usize, bundle_id: u32, first_xid: u32) {
        for (i, &(at, _)) in self.messages[from..].iter().enumerate() {
            let xid = first_xid.wrapping_add(i as u32).to_be_bytes();
            let m = &mut self.stream[at..];
            m[4..8].copy_from_slice(&xid);
            m[BUNDLE_ID_AT..BUNDLE_ID_AT + 4].copy_from_slice(&bundle_id.to_be_bytes());
            m[INNER_XID_AT..INNER_XID_AT + 4].copy_from_slice(&xid);
        }
    }

    /// The op a message with `xid` came from, once numbered from `first_xid`.
    fn op(&self, first_xid: u32, xid: u32) -> Option<usize> {
        let i = xid.wrapping_sub(first_xid) as usize;
        self.messages.get(i).map(|(_, op)| *op as usize)
    }

    /// Notes an error the switch sent about one of the bundle's messages.
    fn note(&self, refused: &mut Refusals, first_xid: u32, msg: &[u8]) {
        let (error, data_xid) = match codec::parse_error(msg) {
            Ok(e) => (e.name(), e.failed_xid()),
            Err(e) => (format!("an unreadable error message ({e})"), None),
        };
        let xid = xid_of(msg);
        let op = self
            .op(first_xid, xid)
            .or_else(|| data_xid.and_then(|x| self.op(first_xid, x)));
        refused.note(Refusal { error, op, xid });
    }
}

/// How the switch answered a commit.
#[derive(Debug)]
enum Commit {
    Done,
    /// With the error's name.
    Refused(String),
}

fn bundle_reply(msg: &[u8], bundle_id: u32, want: u16) -> Result<Step, Error> {
    let (id, kind) = codec::parse_bundle_reply(msg)
        .map_err(|e| Error::Protocol(format!("a bundle reply: {e}")))?;
    if id != bundle_id || kind != want {
        return Err(Error::Protocol(format!(
            "bundle reply type {kind} for bundle {id}, expected type {want} for bundle {bundle_id}"
        )));
    }
    Ok(Step::Done)
}

impl Connection {
    /// Applies `bundle` atomically and in order, and returns once the switch
    /// has confirmed the commit with a barrier: the bundle is in its tables.
    /// An error means nothing of it was applied. An empty bundle sends
    /// nothing.
    ///
    /// `Ok` carries the errors the switch sent beside a bundle it committed
    /// all the same (normally none).
    pub async fn apply(&mut self, bundle: &mut Bundle) -> Result<Refusals, Error> {
        self.apply_filled(bundle, |_| Ok(false)).await
    }

    /// [`Self::apply`] of `changes`, encoded while they are sent: each
    /// [`STREAM_CHUNK`] of messages is written as soon as it is encoded, so
    /// the switch takes one part into the bundle while the next is encoded
    /// (one after the other, the switch waited for the whole encoding). The
    /// bundle is committed only when every change is in it, so it stays
    /// atomic: a change that cannot be encoded discards what was sent, and
    /// the error ([`Error::Unencodable`]) names its index.
    pub async fn apply_changes<'a, I>(&mut self, changes: I) -> Result<Refusals, Error>
    where
        I: IntoIterator<Item = Change<'a>>,
    {
        let mut changes = changes.into_iter().peekable();
        let mut bundle = Bundle::new();
        self.apply_filled(&mut bundle, |b| {
            while b.bytes() < STREAM_CHUNK {
                let Some(change) = changes.next() else {
                    return Ok(false);
                };
                b.push(change).map_err(|e| Error::Unencodable {
                    op: b.ops(),
                    reason: e.to_string(),
                })?;
            }
            Ok(changes.peek().is_some())
        })
        .await
    }

    /// The bundle protocol, for `bundle` and whatever `fill` adds to it: it
    /// is called for the first part before anything is sent (an empty
    /// bundle sends nothing), then after each part is written, with the
    /// written bytes dropped (the messages' ops are kept, for errors); it
    /// says whether more is to come.
    async fn apply_filled(
        &mut self,
        bundle: &mut Bundle,
        mut fill: impl FnMut(&mut Bundle) -> Result<bool, Error>,
    ) -> Result<Refusals, Error> {
        let mut more = fill(bundle)?;
        if bundle.is_empty() {
            return Ok(Refusals::default());
        }
        let bundle_id = self.next_bundle;
        self.next_bundle = self.next_bundle.wrapping_add(1);
        let (open, barrier, commit, last_barrier, discard) = (
            self.next_xid(),
            self.next_xid(),
            self.next_xid(),
            self.next_xid(),
            self.next_xid(),
        );

        self.exchange(
            &codec::bundle_control(open, bundle_id, BundleCtrl::Open, BUNDLE_FLAGS),
            |msg| match (msg[1], xid_of(msg) == open) {
                (msg_type::BUNDLE_CONTROL, true) => bundle_reply(msg, bundle_id, OPEN_REPLY),
                (msg_type::ERROR, true) => Err(Error::Refused(format!(
                    "opening a bundle: {}",
                    error_name(msg)
                ))),
                _ => Ok(Step::More),
            },
        )
        .await?;

        // Every message, in parts, then a barrier: its reply comes after every
        // error about a message that did not make it into the bundle. The
        // messages' xids follow on from `first_xid`, part after part.
        let mut refused = Refusals::default();
        let mut first_xid = None;
        let mut numbered = 0;
        loop {
            let xid = self.next_xids((bundle.messages() - numbered) as u32);
            let first_xid = *first_xid.get_or_insert(xid);
            bundle.number(numbered, bundle_id, xid);
            numbered = bundle.messages();
            if more {
                self.write_reading(&bundle.stream, |msg| {
                    if msg[1] == msg_type::ERROR {
                        bundle.note(&mut refused, first_xid, msg);
                    }
                    Ok(Step::More)
                })
                .await?;
                bundle.stream.clear();
                match fill(bundle) {
                    Ok(m) => more = m,
                    Err(e) => {
                        self.discard(bundle_id, discard).await?;
                        return Err(e);
                    }
                }
                continue;
            }
            let len = bundle.stream.len();
            bundle
                .stream
                .extend_from_slice(&codec::barrier_request(barrier));
            let sent = self
                .exchange(&bundle.stream, |msg| match msg[1] {
                    msg_type::ERROR => {
                        bundle.note(&mut refused, first_xid, msg);
                        Ok(Step::More)
                    }
                    msg_type::BARRIER_REPLY if xid_of(msg) == barrier => Ok(Step::Done),
                    _ => Ok(Step::More),
                })
                .await;
            bundle.stream.truncate(len);
            sent?;
            break;
        }
        let first_xid = first_xid.expect("numbered at least once");
        if !refused.is_empty() {
            self.discard(bundle_id, discard).await?;
            return Err(Error::Bundle(BundleRefused {
                refusals: refused,
                commit: None,
            }));
        }

        // Commit, then a barrier: its reply is the point the bundle is in.
        let mut committed = None;
        let mut out = codec::bundle_control(commit, bundle_id, BundleCtrl::Commit, BUNDLE_FLAGS);
        out.extend_from_slice(&codec::barrier_request(last_barrier));
        self.exchange(&out, |msg| match msg[1] {
            msg_type::BUNDLE_CONTROL if xid_of(msg) == commit => {
                committed = Some(bundle_reply(msg, bundle_id, COMMIT_REPLY).map(|_| Commit::Done));
                Ok(Step::More)
            }
            msg_type::ERROR if xid_of(msg) == commit => {
                committed = Some(Ok(Commit::Refused(error_name(msg))));
                Ok(Step::More)
            }
            msg_type::ERROR => {
                bundle.note(&mut refused, first_xid, msg);
                Ok(Step::More)
            }
            msg_type::BARRIER_REPLY if xid_of(msg) == last_barrier => Ok(Step::Done),
            _ => Ok(Step::More),
        })
        .await?;
        match committed {
            // Committed: the switch says the bundle is in, whatever else it said.
            Some(Ok(Commit::Done)) => Ok(refused),
            Some(Ok(Commit::Refused(commit_error))) => Err(Error::Bundle(BundleRefused {
                refusals: refused,
                commit: Some(commit_error),
            })),
            Some(Err(e)) => Err(e),
            None => Err(Error::Protocol(
                "no answer to the commit before the barrier after it".into(),
            )),
        }
    }

    /// Discards bundle `bundle_id` (with transaction id `xid`).
    async fn discard(&mut self, bundle_id: u32, xid: u32) -> Result<(), Error> {
        self.exchange(
            &codec::bundle_control(xid, bundle_id, BundleCtrl::Discard, BUNDLE_FLAGS),
            |msg| match (msg[1], xid_of(msg) == xid) {
                (msg_type::BUNDLE_CONTROL, true) => bundle_reply(msg, bundle_id, DISCARD_REPLY),
                // The switch may have dropped the bundle itself already.
                (msg_type::ERROR, true) => Ok(Step::Done),
                _ => Ok(Step::More),
            },
        )
        .await
    }
}
