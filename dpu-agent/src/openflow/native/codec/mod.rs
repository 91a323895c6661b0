//! The OpenFlow 1.5 wire format, with no I/O: the messages the native backend
//! sends, flows and groups from the compiler's `ovs-ofctl` syntax, and the
//! replies it reads. Encodings follow what OVS itself writes for 1.5, so a group
//! read back from the switch compares byte for byte with [`wire_form`].

mod actions;
mod decode;
pub(crate) use crate::openflow::ir::fields;
mod matches;
mod stats;

pub use decode::{
    parse_bundle_reply, parse_error, parse_flow_desc_body, parse_group_desc_body, parse_multipart,
    ErrorMsg, FlowDesc,
};
pub use stats::{
    parse_flow_counts_body, parse_group_bucket_ids, parse_group_stats_body,
    parse_oversized_group_bucket_ids, parse_oversized_group_stats, FlowCounts, GroupStats,
};

use crate::flows::{Actions, Group, Match};
use crate::openflow::{BundleOp, InstalledBucket, InstalledGroup};

pub const OFP_VERSION: u8 = 0x06;

/// Message types of OpenFlow 1.5 that the backend uses.
pub mod msg_type {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const FEATURES_REQUEST: u8 = 5;
    pub const FEATURES_REPLY: u8 = 6;
    pub const FLOW_MOD: u8 = 14;
    pub const GROUP_MOD: u8 = 15;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
    pub const BUNDLE_CONTROL: u8 = 33;
    pub const BUNDLE_ADD_MESSAGE: u8 = 34;
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Text the encoder cannot turn into OpenFlow; `reason` names the token.
    #[error("cannot encode {what} `{text}`: {reason}")]
    Syntax {
        what: &'static str,
        text: String,
        reason: String,
    },
    /// A group too large even when split into several messages.
    #[error("group {id} cannot be encoded: {reason}")]
    Group { id: u32, reason: String },
    /// A message or body from the switch that does not parse.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub msg_type: u8,
    pub length: u16,
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
    m.extend_from_slice(&[OFP_VERSION, msg_type]);
    m.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    m.extend_from_slice(&xid.to_be_bytes());
    m.extend_from_slice(body);
    m
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

pub fn echo_request(xid: u32, data: &[u8]) -> Vec<u8> {
    message(msg_type::ECHO_REQUEST, xid, data)
}

pub fn echo_reply(xid: u32, data: &[u8]) -> Vec<u8> {
    message(msg_type::ECHO_REPLY, xid, data)
}

pub fn features_request(xid: u32) -> Vec<u8> {
    message(msg_type::FEATURES_REQUEST, xid, &[])
}

pub fn barrier_request(xid: u32) -> Vec<u8> {
    message(msg_type::BARRIER_REQUEST, xid, &[])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleCtrl {
    Open,
    Commit,
    Discard,
}

/// A BUNDLE_CONTROL request. `flags`: ATOMIC=1 | ORDERED=2.
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
    let mut body = bundle_id.to_be_bytes().to_vec();
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&flags.to_be_bytes());
    let at = body.len();
    body.extend_from_slice(inner);
    set_xid(&mut body[at..], xid);
    message(msg_type::BUNDLE_ADD_MESSAGE, xid, &body)
}

/// Overwrites a message's xid (no-op on fewer than 8 bytes).
pub fn set_xid(msg: &mut [u8], xid: u32) {
    if let Some(b) = msg.get_mut(4..8) {
        b.copy_from_slice(&xid.to_be_bytes());
    }
}

/// Multipart type numbers of OpenFlow 1.5.
pub const OFPMP_FLOW_DESC: u16 = 1;
pub const OFPMP_GROUP_STATS: u16 = 6;
pub const OFPMP_GROUP_DESC: u16 = 7;
const OFPP_ANY: u32 = 0xffff_ffff;
const OFPG_ANY: u32 = 0xffff_ffff;
/// Every group, in a group multipart request.
pub const OFPG_ALL: u32 = 0xffff_fffc;
const OFPTT_ALL: u8 = 0xff;

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
    let mut b = vec![table, 0, 0, 0];
    b.extend_from_slice(&OFPP_ANY.to_be_bytes());
    b.extend_from_slice(&OFPG_ANY.to_be_bytes());
    b.extend_from_slice(&[0; 4 + 16]);
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

const OFPFC_ADD: u8 = 0;
const OFPFC_DELETE: u8 = 3;
const OFPFC_DELETE_STRICT: u8 = 4;

/// The fields of a flow_mod that vary.
struct FlowMod<'a> {
    table: u8,
    command: u8,
    priority: u16,
    cookie: u64,
    cookie_mask: u64,
    /// `None`: every flow (a delete by cookie).
    matches: Option<&'a Match>,
    actions: Option<&'a Actions>,
}

fn flow_mod(f: &FlowMod, xid: u32) -> Result<Vec<u8>, CodecError> {
    let syntax = |reason: String| CodecError::Syntax {
        what: "flow",
        text: format!(
            "table={},priority={},{} actions={}",
            f.table,
            f.priority,
            f.matches.map(|m| m.to_string()).unwrap_or_default(),
            f.actions.map(|a| a.to_string()).unwrap_or_default()
        ),
        reason,
    };
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(&f.cookie.to_be_bytes());
    b.extend_from_slice(&f.cookie_mask.to_be_bytes());
    b.extend_from_slice(&[f.table, f.command, 0, 0, 0, 0]);
    b.extend_from_slice(&f.priority.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes()); // buffer_id: none
    b.extend_from_slice(&OFPP_ANY.to_be_bytes());
    b.extend_from_slice(&OFPG_ANY.to_be_bytes());
    b.extend_from_slice(&[0; 4]); // flags, importance
    let empty = Match::new();
    b.extend_from_slice(&matches::encode_match(f.matches.unwrap_or(&empty)).map_err(syntax)?);
    if let Some(a) = f.actions {
        let enc = actions::encode_actions(a).map_err(syntax)?;
        if !enc.actions.is_empty() {
            b.extend_from_slice(&4u16.to_be_bytes()); // OFPIT_APPLY_ACTIONS
            b.extend_from_slice(&((8 + enc.actions.len()) as u16).to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&enc.actions);
        }
        if let Some(t) = enc.goto {
            b.extend_from_slice(&[0, 1, 0, 8, t, 0, 0, 0]); // OFPIT_GOTO_TABLE
        }
    }
    if b.len() + 8 > usize::from(u16::MAX) {
        return Err(syntax("longer than one OpenFlow message".into()));
    }
    Ok(message(msg_type::FLOW_MOD, xid, &b))
}

const OFPGC_ADD_OR_MOD: u16 = 0x8000;
const OFPGC_DELETE: u16 = 2;
const OFPGC_INSERT_BUCKET: u16 = 3;
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

/// One bucket as OVS writes it: id, actions, and the weight property (1, as
/// `ovs-ofctl` sends for a select bucket without an explicit weight).
fn bucket(id: u32, actions: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + actions.len());
    b.extend_from_slice(&((16 + actions.len()) as u16).to_be_bytes());
    b.extend_from_slice(&(actions.len() as u16).to_be_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(actions);
    b.extend_from_slice(&[0, 0, 0, 8, 0, 1, 0, 0]);
    b
}

/// The buckets of `g`, each as its id and encoded actions, in `g`'s order.
fn bucket_actions(g: &Group) -> Result<Vec<(u32, Vec<u8>)>, CodecError> {
    g.buckets
        .iter()
        .map(|b| {
            if b.id > OFPG15_BUCKET_MAX {
                return Err(CodecError::Group {
                    id: g.id,
                    reason: format!("bucket id {:#x} is above OFPG15_BUCKET_MAX", b.id),
                });
            }
            let enc = actions::encode_actions(&b.actions).map_err(|reason| CodecError::Syntax {
                what: "bucket",
                text: b.actions.to_string(),
                reason,
            })?;
            if enc.goto.is_some() {
                return Err(CodecError::Syntax {
                    what: "bucket",
                    text: b.actions.to_string(),
                    reason: "goto_table is not an action".into(),
                });
            }
            Ok((b.id, enc.actions))
        })
        .collect()
}

/// The NTR selection-method property: `hash` over `fields`.
fn selection_method(g: &Group) -> Result<Vec<u8>, CodecError> {
    let mut p = vec![0xff, 0xff, 0, 0];
    p.extend_from_slice(&NTR_VENDOR.to_be_bytes());
    p.extend_from_slice(&NTRT_SELECTION_METHOD.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    let mut method = [0u8; 16];
    method[..4].copy_from_slice(b"hash");
    p.extend_from_slice(&method);
    p.extend_from_slice(&0u64.to_be_bytes());
    for spec in &g.hash_fields {
        // OVS writes each field as an OXM entry whose value is the field's
        // mask: all ones for a whole field (`oxm_put_field_array`).
        p.extend_from_slice(
            &matches::encode_hash_field(spec)
                .map_err(|reason| CodecError::Group { id: g.id, reason })?,
        );
    }
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    put_padded(&mut p);
    Ok(p)
}

fn group_mod(
    command: u16,
    id: u32,
    command_bucket: u32,
    buckets: &[u8],
    props: &[u8],
    xid: u32,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + buckets.len() + props.len());
    b.extend_from_slice(&command.to_be_bytes());
    b.extend_from_slice(&[OFPGT_SELECT, 0]);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&(buckets.len() as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&command_bucket.to_be_bytes());
    b.extend_from_slice(buckets);
    b.extend_from_slice(props);
    message(msg_type::GROUP_MOD, xid, &b)
}

/// A group's selection-method property, and its encoded buckets in chunks,
/// each with the number of buckets in it.
type Chunks = (Vec<u8>, Vec<(Vec<u8>, usize)>);

/// The selection-method property of `g` and its encoded buckets, cut into
/// chunks that each fit one GROUP_MOD with that property (at most
/// `GROUP_SPLIT_BYTES`), in `g`'s order. One chunk (perhaps empty) at least.
fn group_chunks(g: &Group) -> Result<Chunks, CodecError> {
    let props = selection_method(g)?;
    let mut chunks = Vec::new();
    let (mut chunk, mut count): (Vec<u8>, usize) = (Vec::new(), 0);
    let limit = GROUP_SPLIT_BYTES - props.len();
    for (id, actions) in &bucket_actions(g)? {
        let b = bucket(*id, actions);
        if b.len() > limit {
            return Err(CodecError::Group {
                id: g.id,
                reason: format!("bucket {id} alone is {} bytes", b.len()),
            });
        }
        if chunk.len() + b.len() > limit {
            chunks.push((std::mem::take(&mut chunk), count));
            count = 0;
        }
        chunk.extend_from_slice(&b);
        count += 1;
    }
    chunks.push((chunk, count));
    Ok((props, chunks))
}

/// How many of `g`'s buckets (in its order) go into each message when the
/// group is written: the first count in the ADD_OR_MOD, each further one in
/// an INSERT_BUCKET. The `ovs-ofctl` backend splits its bundle file the same
/// way, since `ovs-ofctl` cannot send a group of more than 64 KiB either.
pub fn group_split(g: &Group) -> Result<Vec<usize>, CodecError> {
    Ok(group_chunks(g)?.1.into_iter().map(|(_, n)| n).collect())
}

/// A select group as ADD_OR_MOD, plus INSERT_BUCKET messages (at the end) for
/// the buckets that do not fit the first message.
fn put_group(g: &Group, xid: u32) -> Result<Vec<Vec<u8>>, CodecError> {
    let (props, chunks) = group_chunks(g)?;
    Ok(chunks
        .iter()
        .enumerate()
        .map(|(i, (buckets, _))| {
            if i == 0 {
                group_mod(
                    OFPGC_ADD_OR_MOD,
                    g.id,
                    OFPG_BUCKET_ALL,
                    buckets,
                    &props,
                    xid,
                )
            } else {
                group_mod(
                    OFPGC_INSERT_BUCKET,
                    g.id,
                    OFPG_BUCKET_LAST,
                    buckets,
                    &[],
                    xid,
                )
            }
        })
        .collect())
}

/// One bundle op as the OpenFlow messages it stands for, in order, each with
/// xid `xid`.
pub fn encode_op(op: &BundleOp, xid: u32) -> Result<Vec<Vec<u8>>, CodecError> {
    Ok(match op {
        BundleOp::PutGroup(g) => put_group(g, xid)?,
        BundleOp::AddFlow { key, body, cookie } => vec![flow_mod(
            &FlowMod {
                table: key.table,
                command: OFPFC_ADD,
                priority: key.priority,
                cookie: *cookie,
                cookie_mask: 0,
                matches: Some(&key.matches),
                actions: Some(&body.actions),
            },
            xid,
        )?],
        BundleOp::DeleteFlow(key) => vec![flow_mod(
            &FlowMod {
                table: key.table,
                command: OFPFC_DELETE_STRICT,
                priority: key.priority,
                cookie: 0,
                cookie_mask: 0,
                matches: Some(&key.matches),
                actions: None,
            },
            xid,
        )?],
        BundleOp::DeleteFlowsByCookie {
            table,
            cookie,
            mask,
        } => vec![flow_mod(
            &FlowMod {
                table: table.unwrap_or(OFPTT_ALL),
                command: OFPFC_DELETE,
                // Ignored by a non-strict delete; `ovs-ofctl` sends the default.
                priority: 0x8000,
                cookie: *cookie,
                cookie_mask: *mask,
                matches: None,
                actions: None,
            },
            xid,
        )?],
        BundleOp::DeleteGroup(id) => vec![{
            let mut m = group_mod(OFPGC_DELETE, *id, OFPG_BUCKET_ALL, &[], &[], xid);
            m[10] = 0; // type: OVS ignores it on delete and writes 0 (all)
            m
        }],
    })
}

/// Lowercase hex, for bucket actions in [`InstalledGroup`].
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The form `g` takes in [`parse_group_desc_body`] once installed: hash fields
/// by name, each bucket as the hex of its actions.
pub fn wire_form(g: &Group) -> Result<InstalledGroup, CodecError> {
    let mut hash_fields = Vec::new();
    for spec in &g.hash_fields {
        matches::encode_hash_field(spec)
            .map_err(|reason| CodecError::Group { id: g.id, reason })?;
        hash_fields.push(spec.to_string());
    }
    Ok(InstalledGroup {
        kind: "select".into(),
        selection_method: Some("hash".into()),
        hash_fields,
        properties: Vec::new(),
        buckets: crate::openflow::sorted(
            bucket_actions(g)?
                .iter()
                .map(|(id, a)| InstalledBucket {
                    id: *id,
                    actions: hex(a),
                })
                .collect(),
        ),
        wire: true,
    })
}

#[cfg(test)]
mod tests;
