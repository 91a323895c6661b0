//! The OpenFlow 1.5 wire format, with no I/O: the messages a controller sends
//! (handshake, echo, barrier, bundle control, flow mods and select-group mods
//! from the IR, multipart requests) and the replies it reads (errors, bundle
//! replies, flow and group descriptions, counters). Encodings follow what OVS
//! itself writes for 1.5, so a group read back from the switch compares byte
//! for byte with [`GroupMod::desc`].

mod actions;
mod decode;
pub(crate) use crate::ir::fields;
mod matches;
mod stats;

pub use decode::{
    parse_bundle_reply, parse_error, parse_flow_desc_body, parse_group_desc_body, parse_multipart,
    BucketDesc, ErrorMsg, FlowDesc, GroupDesc, GroupType,
};
pub use stats::{
    parse_flow_counts_body, parse_group_bucket_ids, parse_group_stats_body,
    parse_oversized_group_bucket_ids, parse_oversized_group_stats, FlowCounts, GroupStats,
};

use crate::ir::{Actions, HashField, Match};

/// The version byte of OpenFlow 1.5, the only version spoken here.
pub const OFP_VERSION: u8 = 0x06;

/// Message types of OpenFlow 1.5 that this crate sends or reads.
pub mod msg_type {
    /// `OFPT_HELLO`.
    pub const HELLO: u8 = 0;
    /// `OFPT_ERROR`.
    pub const ERROR: u8 = 1;
    /// `OFPT_ECHO_REQUEST`.
    pub const ECHO_REQUEST: u8 = 2;
    /// `OFPT_ECHO_REPLY`.
    pub const ECHO_REPLY: u8 = 3;
    /// `OFPT_FEATURES_REQUEST`.
    pub const FEATURES_REQUEST: u8 = 5;
    /// `OFPT_FEATURES_REPLY`.
    pub const FEATURES_REPLY: u8 = 6;
    /// `OFPT_FLOW_MOD`.
    pub const FLOW_MOD: u8 = 14;
    /// `OFPT_GROUP_MOD`.
    pub const GROUP_MOD: u8 = 15;
    /// `OFPT_MULTIPART_REQUEST`.
    pub const MULTIPART_REQUEST: u8 = 18;
    /// `OFPT_MULTIPART_REPLY`.
    pub const MULTIPART_REPLY: u8 = 19;
    /// `OFPT_BARRIER_REQUEST`.
    pub const BARRIER_REQUEST: u8 = 20;
    /// `OFPT_BARRIER_REPLY`.
    pub const BARRIER_REPLY: u8 = 21;
    /// `OFPT_BUNDLE_CONTROL`.
    pub const BUNDLE_CONTROL: u8 = 33;
    /// `OFPT_BUNDLE_ADD_MESSAGE`.
    pub const BUNDLE_ADD_MESSAGE: u8 = 34;
}

/// What the codec cannot encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A flow or bucket the encoder cannot turn into OpenFlow; `reason` names
    /// the token.
    #[error("cannot encode {what} `{text}`: {reason}")]
    Syntax {
        /// `flow` or `bucket`.
        what: &'static str,
        /// The flow or the bucket's actions, in `ovs-ofctl` syntax.
        text: String,
        /// What is wrong, naming the token.
        reason: String,
    },
    /// A group too large even when split into several messages, or with a
    /// hash field or bucket id OpenFlow cannot carry.
    #[error("group {id} cannot be encoded: {reason}")]
    Group {
        /// The group id.
        id: u32,
        /// What is wrong.
        reason: String,
    },
    /// A message that, wrapped for a bundle, is longer than OpenFlow's 16-bit
    /// length can say.
    #[error("encodes to a {bytes}-byte message, more than OpenFlow can carry")]
    TooLong {
        /// The wrapped message's length.
        bytes: usize,
    },
    /// A message or body from the switch that does not parse.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being read (`flow desc`, `error message`, …).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The 8-byte header every OpenFlow message starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The protocol version ([`OFP_VERSION`] for 1.5).
    pub version: u8,
    /// One of [`msg_type`].
    pub msg_type: u8,
    /// The message's length, header included.
    pub length: u16,
    /// The transaction id.
    pub xid: u32,
}

impl Header {
    /// The header at the start of `buf`, which needs at least 8 bytes.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let b = buf.get(..8)?;
        Some(Header {
            version: b[0],
            msg_type: b[1],
            length: u16::from_be_bytes([b[2], b[3]]),
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// Zero-pads `buf` to a multiple of 8 bytes.
pub(crate) fn put_padded(buf: &mut Vec<u8>) {
    buf.resize(buf.len().div_ceil(8) * 8, 0);
}

/// A message of `msg_type` with `body`, its length filled in.
fn message(msg_type: u8, xid: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + body.len());
    let at = begin(&mut m, msg_type, xid);
    m.extend_from_slice(body);
    end(&mut m, at);
    m
}

/// Appends the header of a message of `msg_type`, its length left to [`end`];
/// returns where the message starts.
fn begin(out: &mut Vec<u8>, msg_type: u8, xid: u32) -> usize {
    let at = out.len();
    out.extend_from_slice(&[OFP_VERSION, msg_type, 0, 0]);
    out.extend_from_slice(&xid.to_be_bytes());
    at
}

/// Fills in the length of the message that starts at `at` and runs to the end
/// of `out`; returns that length (more than 65,535 does not fit the header).
fn end(out: &mut [u8], at: usize) -> usize {
    let len = out.len() - at;
    out[at + 2..at + 4].copy_from_slice(&(len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    len
}

/// HELLO with a version-bitmap element offering only OpenFlow 1.5.
pub fn hello(xid: u32) -> Vec<u8> {
    let bitmap = 1u32 << OFP_VERSION;
    let mut body = vec![0, 1, 0, 8];
    body.extend_from_slice(&bitmap.to_be_bytes());
    message(msg_type::HELLO, xid, &body)
}

/// The highest version both sides speak, from a peer's HELLO: its version
/// bitmap when it sends one, else its header version. `None` unless that is
/// OpenFlow 1.5, the only version spoken here.
pub fn negotiate(hello_msg: &[u8]) -> Option<u8> {
    let h = Header::parse(hello_msg)?;
    if h.msg_type != msg_type::HELLO {
        return None;
    }
    let end = (h.length as usize).min(hello_msg.len());
    let mut rest = hello_msg.get(8..end)?;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        if len < 4 || len > rest.len() {
            break;
        }
        if kind == 1 {
            let word = (OFP_VERSION / 32) as usize;
            let bits = rest[4..len].chunks_exact(4).nth(word)?;
            let bits = u32::from_be_bytes([bits[0], bits[1], bits[2], bits[3]]);
            return (bits & (1 << (OFP_VERSION % 32)) != 0).then_some(OFP_VERSION);
        }
        rest = &rest[(len.div_ceil(8) * 8).min(rest.len())..];
    }
    (h.version >= OFP_VERSION).then_some(OFP_VERSION)
}

/// ECHO_REQUEST carrying `data`.
pub fn echo_request(xid: u32, data: &[u8]) -> Vec<u8> {
    message(msg_type::ECHO_REQUEST, xid, data)
}

/// ECHO_REPLY carrying `data` (the request's, echoed).
pub fn echo_reply(xid: u32, data: &[u8]) -> Vec<u8> {
    message(msg_type::ECHO_REPLY, xid, data)
}

/// FEATURES_REQUEST.
pub fn features_request(xid: u32) -> Vec<u8> {
    message(msg_type::FEATURES_REQUEST, xid, &[])
}

/// BARRIER_REQUEST: its reply comes after the replies to every message before it.
pub fn barrier_request(xid: u32) -> Vec<u8> {
    message(msg_type::BARRIER_REQUEST, xid, &[])
}

/// What a BUNDLE_CONTROL request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleCtrl {
    /// `OFPBCT_OPEN_REQUEST`.
    Open,
    /// `OFPBCT_COMMIT_REQUEST`.
    Commit,
    /// `OFPBCT_DISCARD_REQUEST`.
    Discard,
}

/// `OFPBF_ATOMIC`: all of a bundle or nothing.
pub const BUNDLE_ATOMIC: u16 = 1;
/// `OFPBF_ORDERED`: a bundle's messages in the order they were added.
pub const BUNDLE_ORDERED: u16 = 2;

/// A BUNDLE_CONTROL request. `flags`: [`BUNDLE_ATOMIC`] | [`BUNDLE_ORDERED`].
pub fn bundle_control(xid: u32, bundle_id: u32, ctrl: BundleCtrl, flags: u16) -> Vec<u8> {
    let kind: u16 = match ctrl {
        BundleCtrl::Open => 0,
        BundleCtrl::Commit => 4,
        BundleCtrl::Discard => 6,
    };
    let mut body = bundle_id.to_be_bytes().to_vec();
    body.extend_from_slice(&kind.to_be_bytes());
    body.extend_from_slice(&flags.to_be_bytes());
    message(msg_type::BUNDLE_CONTROL, xid, &body)
}

/// A BUNDLE_ADD_MESSAGE around `inner`. OVS refuses an inner message whose xid
/// differs from the outer one (`OFPBFC_MSG_BAD_XID`), so the inner copy gets
/// `xid` too.
pub fn bundle_add(xid: u32, bundle_id: u32, flags: u16, inner: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + inner.len());
    let at = begin(&mut m, msg_type::BUNDLE_ADD_MESSAGE, xid);
    put_bundle_add_body(&mut m, bundle_id, flags);
    let inner_at = m.len();
    m.extend_from_slice(inner);
    set_xid(&mut m[inner_at..], xid);
    end(&mut m, at);
    m
}

/// The part of a BUNDLE_ADD_MESSAGE between its header and the inner message.
fn put_bundle_add_body(out: &mut Vec<u8>, bundle_id: u32, flags: u16) {
    out.extend_from_slice(&bundle_id.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
}

/// Overwrites a message's xid (no-op on fewer than 8 bytes).
pub fn set_xid(msg: &mut [u8], xid: u32) {
    if let Some(b) = msg.get_mut(4..8) {
        b.copy_from_slice(&xid.to_be_bytes());
    }
}

/// Multipart type `OFPMP_FLOW_DESC`.
pub const OFPMP_FLOW_DESC: u16 = 1;
/// Multipart type `OFPMP_GROUP_STATS`.
pub const OFPMP_GROUP_STATS: u16 = 6;
/// Multipart type `OFPMP_GROUP_DESC`.
pub const OFPMP_GROUP_DESC: u16 = 7;
const OFPP_ANY: u32 = 0xffff_ffff;
const OFPG_ANY: u32 = 0xffff_ffff;
/// Every group: in a group multipart request, and as the id of a group delete.
pub const OFPG_ALL: u32 = 0xffff_fffc;
/// Every table, in a flow delete or a flow multipart request.
pub const OFPTT_ALL: u8 = 0xff;

fn multipart_request(xid: u32, kind: u16, body: &[u8]) -> Vec<u8> {
    let mut b = kind.to_be_bytes().to_vec();
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(body);
    message(msg_type::MULTIPART_REQUEST, xid, &b)
}

/// FLOW_DESC of every flow: all tables, any out port/group, cookie 0/0, empty match.
pub fn flow_desc_request(xid: u32) -> Vec<u8> {
    flow_desc_request_in(xid, OFPTT_ALL)
}

/// FLOW_DESC of every flow of one table. OVS 3.1 fills the flow's `ofp_stats`
/// with its counters; it refuses FLOW_STATS (`OFPBRC_BAD_STAT`).
pub fn flow_desc_request_in(xid: u32, table: u8) -> Vec<u8> {
    flow_desc_request_by_cookie(xid, table, 0, 0)
}

/// FLOW_DESC of the flows of `table` (or [`OFPTT_ALL`]) whose cookie equals
/// `cookie` in the bits of `cookie_mask`. OVS looks a flow up by cookie only
/// under a mask of all ones; under any other it walks every flow of the table
/// and encodes only the ones that match.
pub fn flow_desc_request_by_cookie(xid: u32, table: u8, cookie: u64, cookie_mask: u64) -> Vec<u8> {
    let mut b = vec![table, 0, 0, 0];
    b.extend_from_slice(&OFPP_ANY.to_be_bytes());
    b.extend_from_slice(&OFPG_ANY.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&(cookie & cookie_mask).to_be_bytes());
    b.extend_from_slice(&cookie_mask.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 4, 0, 0, 0, 0]);
    multipart_request(xid, OFPMP_FLOW_DESC, &b)
}

/// GROUP_DESC of every group.
pub fn group_desc_request(xid: u32) -> Vec<u8> {
    group_request(xid, OFPMP_GROUP_DESC, OFPG_ALL)
}

/// A GROUP_STATS or GROUP_DESC request about one group, or [`OFPG_ALL`]: both
/// take the same body, a group id and 4 bytes of padding.
pub fn group_request(xid: u32, kind: u16, group: u32) -> Vec<u8> {
    let mut b = group.to_be_bytes().to_vec();
    b.extend_from_slice(&[0; 4]);
    multipart_request(xid, kind, &b)
}

// ---- flow and group mods ------------------------------------------------------

/// What a [`FlowMod`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowCommand {
    /// `OFPFC_ADD`: add a flow, replacing one with the same table, priority
    /// and match.
    Add,
    /// `OFPFC_DELETE`: delete every flow of the table (or of every table)
    /// whose cookie matches under the cookie mask.
    Delete,
    /// `OFPFC_DELETE_STRICT`: delete the one flow with this table, priority
    /// and match.
    DeleteStrict,
}

impl FlowCommand {
    fn code(self) -> u8 {
        match self {
            FlowCommand::Add => 0,
            FlowCommand::Delete => 3,
            FlowCommand::DeleteStrict => 4,
        }
    }
}

/// A flow mod, borrowing its match and actions: encoding copies nothing but
/// bytes.
#[derive(Debug, Clone, Copy)]
pub struct FlowMod<'a> {
    /// What it does.
    pub command: FlowCommand,
    /// The table; [`OFPTT_ALL`] for a delete in every table.
    pub table: u8,
    /// The flow's priority (a non-strict delete ignores it).
    pub priority: u16,
    /// The flow's cookie; for a delete, the cookie to match under `cookie_mask`.
    pub cookie: u64,
    /// For a delete: which bits of the cookie must match (0: any flow).
    pub cookie_mask: u64,
    /// `None`: the empty match (every packet; every flow, for a delete).
    pub matches: Option<&'a Match>,
    /// `None`: no instructions (a delete).
    pub actions: Option<&'a Actions>,
}

impl<'a> FlowMod<'a> {
    /// Adds (or replaces) the flow `table`, `priority`, `matches` with
    /// `actions` and `cookie`.
    pub fn add(
        table: u8,
        priority: u16,
        cookie: u64,
        matches: &'a Match,
        actions: &'a Actions,
    ) -> Self {
        FlowMod {
            command: FlowCommand::Add,
            table,
            priority,
            cookie,
            cookie_mask: 0,
            matches: Some(matches),
            actions: Some(actions),
        }
    }

    /// Deletes exactly the flow `table`, `priority`, `matches`.
    pub fn delete_strict(table: u8, priority: u16, matches: &'a Match) -> Self {
        FlowMod {
            command: FlowCommand::DeleteStrict,
            table,
            priority,
            cookie: 0,
            cookie_mask: 0,
            matches: Some(matches),
            actions: None,
        }
    }

    /// Deletes every flow whose cookie matches `cookie` under `mask`, in one
    /// table or (`None`) in all.
    pub fn delete_by_cookie(table: Option<u8>, cookie: u64, mask: u64) -> Self {
        FlowMod {
            command: FlowCommand::Delete,
            table: table.unwrap_or(OFPTT_ALL),
            // Ignored by a non-strict delete; `ovs-ofctl` sends the default.
            priority: 0x8000,
            cookie,
            cookie_mask: mask,
            matches: None,
            actions: None,
        }
    }

    /// Appends the FLOW_MOD to `out`.
    fn write(&self, out: &mut Vec<u8>, xid: u32) -> Result<(), CodecError> {
        let syntax = |reason: String| CodecError::Syntax {
            what: "flow",
            text: format!(
                "table={},priority={},{} actions={}",
                self.table,
                self.priority,
                self.matches.map(|m| m.to_string()).unwrap_or_default(),
                self.actions.map(|a| a.to_string()).unwrap_or_default()
            ),
            reason,
        };
        let empty = Match::new();
        let ofp_match = matches::encode_match(self.matches.unwrap_or(&empty)).map_err(syntax)?;
        let acts = match self.actions {
            Some(a) => Some(actions::encode_actions(a).map_err(syntax)?),
            None => None,
        };
        let at = begin(out, msg_type::FLOW_MOD, xid);
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.cookie_mask.to_be_bytes());
        out.extend_from_slice(&[self.table, self.command.code(), 0, 0, 0, 0]);
        out.extend_from_slice(&self.priority.to_be_bytes());
        out.extend_from_slice(&u32::MAX.to_be_bytes()); // buffer_id: none
        out.extend_from_slice(&OFPP_ANY.to_be_bytes());
        out.extend_from_slice(&OFPG_ANY.to_be_bytes());
        out.extend_from_slice(&[0; 4]); // flags, importance
        out.extend_from_slice(&ofp_match);
        if let Some(enc) = acts {
            if !enc.actions.is_empty() {
                out.extend_from_slice(&4u16.to_be_bytes()); // OFPIT_APPLY_ACTIONS
                out.extend_from_slice(&((8 + enc.actions.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&enc.actions);
            }
            if let Some(t) = enc.goto {
                out.extend_from_slice(&[0, 1, 0, 8, t, 0, 0, 0]); // OFPIT_GOTO_TABLE
            }
        }
        if end(out, at) > usize::from(u16::MAX) {
            out.truncate(at);
            return Err(syntax("longer than one OpenFlow message".into()));
        }
        Ok(())
    }
}

const OFPGC_ADD_OR_MOD: u16 = 0x8000;
const OFPGC_DELETE: u16 = 2;
const OFPGC_INSERT_BUCKET: u16 = 3;
const OFPGT_ALL: u8 = 0;
const OFPGT_SELECT: u8 = 1;
const OFPG_BUCKET_ALL: u32 = 0xffff_ffff;
const OFPG_BUCKET_LAST: u32 = 0xffff_fffe;
/// The largest bucket id; the ids above are commands.
const OFPG15_BUCKET_MAX: u32 = 0xffff_ff00;
/// Above this many bytes a group's buckets go into more than one message.
const GROUP_SPLIT_BYTES: usize = 60_000;
/// The Netronome experimenter id OVS uses for its selection-method property.
pub(crate) const NTR_VENDOR: u32 = 0x0000_154d;
pub(crate) const NTRT_SELECTION_METHOD: u32 = 1;

/// A select group with OVS's `hash` selection method over `hash_fields`,
/// borrowing its parts. OVS scores each bucket by a hash of its id and the
/// packet's hash fields, so a bucket's id decides which packets it gets.
#[derive(Debug, Clone)]
pub struct GroupMod<'a> {
    /// The group id.
    pub id: u32,
    /// The fields the selection hashes on.
    pub hash_fields: &'a [HashField],
    /// Each bucket's id (up to `OFPG15_BUCKET_MAX`, 0xffffff00) and actions,
    /// in the order they are written.
    pub buckets: Vec<(u32, &'a Actions)>,
}

/// One bucket as OVS writes it: id, actions, and the weight property (1, as
/// `ovs-ofctl` sends for a select bucket without an explicit weight).
fn bucket(out: &mut Vec<u8>, id: u32, actions: &[u8]) {
    out.extend_from_slice(&((16 + actions.len()) as u16).to_be_bytes());
    out.extend_from_slice(&(actions.len() as u16).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(actions);
    out.extend_from_slice(&[0, 0, 0, 8, 0, 1, 0, 0]);
}

/// The length of [`bucket`] with `actions` bytes of actions.
fn bucket_len(actions: usize) -> usize {
    16 + actions
}

/// A group's selection-method property, and its encoded buckets (id, actions)
/// in chunks that each fit one GROUP_MOD with that property.
struct Chunks {
    props: Vec<u8>,
    buckets: Vec<(u32, Vec<u8>)>,
    /// How many buckets of `buckets`, in order, each message takes.
    counts: Vec<usize>,
}

impl<'a> GroupMod<'a> {
    /// The buckets, each as its id and encoded actions, in order.
    fn bucket_actions(&self) -> Result<Vec<(u32, Vec<u8>)>, CodecError> {
        self.buckets
            .iter()
            .map(|&(id, acts)| {
                if id > OFPG15_BUCKET_MAX {
                    return Err(CodecError::Group {
                        id: self.id,
                        reason: format!("bucket id {id:#x} is above OFPG15_BUCKET_MAX"),
                    });
                }
                let bucket_err = |reason: String| CodecError::Syntax {
                    what: "bucket",
                    text: acts.to_string(),
                    reason,
                };
                let enc = actions::encode_actions(acts).map_err(bucket_err)?;
                if enc.goto.is_some() {
                    return Err(bucket_err("goto_table is not an action".into()));
                }
                Ok((id, enc.actions))
            })
            .collect()
    }

    /// The NTR selection-method property: `hash` over the hash fields.
    fn selection_method(&self) -> Result<Vec<u8>, CodecError> {
        let mut p = vec![0xff, 0xff, 0, 0];
        p.extend_from_slice(&NTR_VENDOR.to_be_bytes());
        p.extend_from_slice(&NTRT_SELECTION_METHOD.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        let mut method = [0u8; 16];
        method[..4].copy_from_slice(b"hash");
        p.extend_from_slice(&method);
        p.extend_from_slice(&0u64.to_be_bytes());
        for spec in self.hash_fields {
            // OVS writes each field as an OXM entry whose value is the field's
            // mask: all ones for a whole field (`oxm_put_field_array`).
            p.extend_from_slice(&matches::encode_hash_field(spec).map_err(|reason| {
                CodecError::Group {
                    id: self.id,
                    reason,
                }
            })?);
        }
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        put_padded(&mut p);
        Ok(p)
    }

    /// The selection-method property and the encoded buckets, cut into
    /// chunks of at most `GROUP_SPLIT_BYTES` with the property. One chunk
    /// (perhaps empty) at least.
    fn chunks(&self) -> Result<Chunks, CodecError> {
        let props = self.selection_method()?;
        let buckets = self.bucket_actions()?;
        let limit = GROUP_SPLIT_BYTES - props.len();
        let mut counts = Vec::new();
        let (mut bytes, mut count) = (0, 0);
        for (id, actions) in &buckets {
            let len = bucket_len(actions.len());
            if len > limit {
                return Err(CodecError::Group {
                    id: self.id,
                    reason: format!("bucket {id} alone is {len} bytes"),
                });
            }
            if bytes + len > limit {
                counts.push(count);
                (bytes, count) = (0, 0);
            }
            bytes += len;
            count += 1;
        }
        counts.push(count);
        Ok(Chunks {
            props,
            buckets,
            counts,
        })
    }

    /// How many buckets (in order) go into each message when the group is
    /// written: the first count in the ADD_OR_MOD, each further one in an
    /// INSERT_BUCKET. A tool that sends one message per line (`ovs-ofctl
    /// bundle`) can split a group the same way, since OpenFlow cannot carry a
    /// group of more than 64 KiB in one message.
    pub fn split(&self) -> Result<Vec<usize>, CodecError> {
        Ok(self.chunks()?.counts)
    }

    /// Appends the group as ADD_OR_MOD, plus INSERT_BUCKET messages (at the
    /// end) for the buckets that do not fit the first message, each message
    /// through `out`.
    fn write(&self, out: &mut Out<'_>) -> Result<(), CodecError> {
        let Chunks {
            props,
            buckets,
            counts,
        } = self.chunks()?;
        let mut rest = buckets.as_slice();
        for (i, n) in counts.into_iter().enumerate() {
            let (now, later) = rest.split_at(n);
            rest = later;
            let (command, command_bucket, props) = if i == 0 {
                (OFPGC_ADD_OR_MOD, OFPG_BUCKET_ALL, props.as_slice())
            } else {
                (OFPGC_INSERT_BUCKET, OFPG_BUCKET_LAST, &[][..])
            };
            let list_len: usize = now.iter().map(|(_, a)| bucket_len(a.len())).sum();
            out.message(msg_type::GROUP_MOD, |b| {
                group_mod_head(b, command, OFPGT_SELECT, self.id, list_len, command_bucket);
                for (id, actions) in now {
                    bucket(b, *id, actions);
                }
                b.extend_from_slice(props);
            })?;
        }
        Ok(())
    }

    /// The form the group takes in [`parse_group_desc_body`] once the switch
    /// holds it: hash fields by name, buckets with their encoded actions, in
    /// this group's order.
    pub fn desc(&self) -> Result<GroupDesc, CodecError> {
        let mut hash_fields = Vec::with_capacity(self.hash_fields.len());
        for spec in self.hash_fields {
            matches::encode_hash_field(spec).map_err(|reason| CodecError::Group {
                id: self.id,
                reason,
            })?;
            hash_fields.push(spec.to_string());
        }
        Ok(GroupDesc {
            id: self.id,
            group_type: GroupType::Select,
            selection_method: Some("hash".into()),
            hash_fields,
            properties: Vec::new(),
            buckets: self
                .bucket_actions()?
                .into_iter()
                .map(|(id, actions)| BucketDesc {
                    id,
                    properties: Vec::new(),
                    actions,
                })
                .collect(),
        })
    }
}

/// The fixed part of a GROUP_MOD body: command, type, group id, bucket list
/// length, command bucket id.
fn group_mod_head(
    b: &mut Vec<u8>,
    command: u16,
    group_type: u8,
    id: u32,
    list_len: usize,
    command_bucket: u32,
) {
    b.extend_from_slice(&command.to_be_bytes());
    b.extend_from_slice(&[group_type, 0]);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&(list_len as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&command_bucket.to_be_bytes());
}

/// One change to a switch's tables: what one op of a bundle stands for.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    /// A flow mod: one message.
    Flow(FlowMod<'a>),
    /// Create or replace a select group: one message, or more for a group of
    /// more than 64 KiB (see [`GroupMod::split`]).
    PutGroup(GroupMod<'a>),
    /// Delete a group ([`OFPG_ALL`]: every group).
    DeleteGroup(u32),
}

impl<'a> From<FlowMod<'a>> for Change<'a> {
    fn from(f: FlowMod<'a>) -> Self {
        Change::Flow(f)
    }
}

impl<'a> From<GroupMod<'a>> for Change<'a> {
    fn from(g: GroupMod<'a>) -> Self {
        Change::PutGroup(g)
    }
}

impl Change<'_> {
    /// The OpenFlow messages the change stands for, in order, each with `xid`.
    pub fn encode(&self, xid: u32) -> Result<Vec<Vec<u8>>, CodecError> {
        let mut buf = Vec::new();
        self.write(&mut Out::plain(&mut buf, xid))?;
        let mut msgs = Vec::new();
        let mut rest = buf.as_slice();
        while let Some(h) = Header::parse(rest) {
            let (m, later) = rest.split_at(usize::from(h.length).max(8).min(rest.len()));
            msgs.push(m.to_vec());
            rest = later;
        }
        Ok(msgs)
    }

    /// Appends the change's messages through `out`.
    pub(crate) fn write(&self, out: &mut Out<'_>) -> Result<(), CodecError> {
        match self {
            Change::Flow(f) => out.message_with(|b, xid| f.write(b, xid)),
            Change::PutGroup(g) => g.write(out),
            Change::DeleteGroup(id) => out.message(msg_type::GROUP_MOD, |b| {
                // type: OVS ignores it on delete and writes 0 (all)
                group_mod_head(b, OFPGC_DELETE, OFPGT_ALL, *id, 0, OFPG_BUCKET_ALL)
            }),
        }
    }
}

/// Where encoded messages go: appended to a buffer one after another, or each
/// wrapped in a BUNDLE_ADD_MESSAGE, every one with the same xid.
pub(crate) struct Out<'a> {
    buf: &'a mut Vec<u8>,
    xid: u32,
    /// The bundle id and flags of the BUNDLE_ADD_MESSAGEs, if any.
    bundle: Option<(u32, u16)>,
    /// How many messages were written.
    pub(crate) count: usize,
}

impl<'a> Out<'a> {
    /// Messages back to back in `buf`.
    pub(crate) fn plain(buf: &'a mut Vec<u8>, xid: u32) -> Self {
        Out {
            buf,
            xid,
            bundle: None,
            count: 0,
        }
    }

    /// Each message in a BUNDLE_ADD_MESSAGE of `bundle_id` with `flags`.
    pub(crate) fn bundled(buf: &'a mut Vec<u8>, xid: u32, bundle_id: u32, flags: u16) -> Self {
        Out {
            buf,
            xid,
            bundle: Some((bundle_id, flags)),
            count: 0,
        }
    }

    /// One message of `msg_type` whose body `body` appends.
    fn message(&mut self, msg_type: u8, body: impl FnOnce(&mut Vec<u8>)) -> Result<(), CodecError> {
        self.message_with(|b, xid| {
            let at = begin(b, msg_type, xid);
            body(b);
            end(b, at);
            Ok(())
        })
    }

    /// One message that `write` appends whole (header included).
    fn message_with(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>, u32) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        let start = self.buf.len();
        let outer = self.bundle.map(|(id, flags)| {
            let at = begin(self.buf, msg_type::BUNDLE_ADD_MESSAGE, self.xid);
            put_bundle_add_body(self.buf, id, flags);
            at
        });
        if let Err(e) = write(self.buf, self.xid) {
            self.buf.truncate(start);
            return Err(e);
        }
        if let Some(at) = outer {
            let bytes = end(self.buf, at);
            if bytes > usize::from(u16::MAX) {
                self.buf.truncate(start);
                return Err(CodecError::TooLong { bytes });
            }
        }
        self.count += 1;
        Ok(())
    }
}

/// Lowercase hex, for error texts and tests.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
