//! Replies from the switch: errors, bundle replies, multipart bodies. Every length
//! is checked against the bytes present; a short or inconsistent body is a
//! [`CodecError::Malformed`], never a panic.

use super::{fields, hex, msg_type, CodecError, Header};
use super::{NTRT_SELECTION_METHOD, NTR_VENDOR};
use crate::ir::{Field, HashField};

pub(super) fn malformed(what: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError::Malformed {
        what,
        reason: reason.into(),
    }
}

pub(super) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The message's bytes up to its header length, checked to be of `kind`.
fn body_of<'a>(msg: &'a [u8], kind: u8, what: &'static str) -> Result<&'a [u8], CodecError> {
    let h = Header::parse(msg).ok_or_else(|| malformed(what, "shorter than a header"))?;
    if h.msg_type != kind {
        return Err(malformed(what, format!("message type {}", h.msg_type)));
    }
    let len = h.length as usize;
    if len < 8 || len > msg.len() {
        return Err(malformed(
            what,
            format!("length {len} with {} bytes present", msg.len()),
        ));
    }
    Ok(&msg[8..len])
}

/// A BUNDLE_CONTROL reply: (bundle id, type). OPEN_REPLY=1, CLOSE_REPLY=3,
/// COMMIT_REPLY=5, DISCARD_REPLY=7.
pub fn parse_bundle_reply(msg: &[u8]) -> Result<(u32, u16), CodecError> {
    let what = "bundle reply";
    let b = body_of(msg, msg_type::BUNDLE_CONTROL, what)?;
    match (be32(b, 0), be16(b, 4)) {
        (Some(id), Some(kind)) => Ok((id, kind)),
        _ => Err(malformed(what, "body shorter than 8 bytes")),
    }
}

/// An ERROR message. For experimenter errors (type 0xffff) `code` is the
/// experimenter's code and `experimenter` its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    /// The error type (`OFPET_*`), 0xffff for an experimenter's.
    pub err_type: u16,
    /// The code within the type, or the experimenter's code.
    pub code: u16,
    /// The start of the offending message.
    pub data: Vec<u8>,
    /// The experimenter id of an experimenter error (0x2320: Nicira).
    pub experimenter: Option<u32>,
}

/// An ERROR message; see [`ErrorMsg::name`] for what it means.
pub fn parse_error(msg: &[u8]) -> Result<ErrorMsg, CodecError> {
    let what = "error message";
    let b = body_of(msg, msg_type::ERROR, what)?;
    let (Some(err_type), Some(code)) = (be16(b, 0), be16(b, 2)) else {
        return Err(malformed(what, "body shorter than 4 bytes"));
    };
    if err_type == 0xffff {
        let exp = be32(b, 4).ok_or_else(|| malformed(what, "experimenter error without an id"))?;
        return Ok(ErrorMsg {
            err_type,
            code,
            data: b[8..].to_vec(),
            experimenter: Some(exp),
        });
    }
    Ok(ErrorMsg {
        err_type,
        code,
        data: b[4..].to_vec(),
        experimenter: None,
    })
}

impl ErrorMsg {
    /// The OpenFlow name (`OFPBAC_BAD_SET_ARGUMENT`, `NXBRC_NXM_INVALID`), or
    /// `type T code C` for one not known here.
    pub fn name(&self) -> String {
        let known = match (self.experimenter, self.err_type) {
            (Some(0x2320), _) => nx_error(self.code),
            (Some(_), _) => None,
            (None, t) => of_error(t, self.code),
        };
        match (known, self.experimenter) {
            (Some(n), _) => n.to_string(),
            (None, Some(e)) => format!("experimenter {e:#x} code {}", self.code),
            (None, None) => format!("type {} code {}", self.err_type, self.code),
        }
    }

    /// The xid in the header of the offending message, if the data holds one.
    pub fn failed_xid(&self) -> Option<u32> {
        Header::parse(&self.data).map(|h| h.xid)
    }
}

fn of_error(t: u16, c: u16) -> Option<&'static str> {
    let list: &[&str] = match t {
        0 => &["OFPHFC_INCOMPATIBLE", "OFPHFC_EPERM"],
        1 => &[
            "OFPBRC_BAD_VERSION",
            "OFPBRC_BAD_TYPE",
            "OFPBRC_BAD_MULTIPART",
            "OFPBRC_BAD_EXPERIMENTER",
            "OFPBRC_BAD_EXP_TYPE",
            "OFPBRC_EPERM",
            "OFPBRC_BAD_LEN",
            "OFPBRC_BUFFER_EMPTY",
            "OFPBRC_BUFFER_UNKNOWN",
            "OFPBRC_BAD_TABLE_ID",
            "OFPBRC_IS_SLAVE",
            "OFPBRC_BAD_PORT",
            "OFPBRC_BAD_PACKET",
            "OFPBRC_MULTIPART_BUFFER_OVERFLOW",
            "OFPBRC_MULTIPART_REQUEST_TIMEOUT",
            "OFPBRC_MULTIPART_REPLY_TIMEOUT",
        ],
        2 => &[
            "OFPBAC_BAD_TYPE",
            "OFPBAC_BAD_LEN",
            "OFPBAC_BAD_EXPERIMENTER",
            "OFPBAC_BAD_EXP_TYPE",
            "OFPBAC_BAD_OUT_PORT",
            "OFPBAC_BAD_ARGUMENT",
            "OFPBAC_EPERM",
            "OFPBAC_TOO_MANY",
            "OFPBAC_BAD_QUEUE",
            "OFPBAC_BAD_OUT_GROUP",
            "OFPBAC_MATCH_INCONSISTENT",
            "OFPBAC_UNSUPPORTED_ORDER",
            "OFPBAC_BAD_TAG",
            "OFPBAC_BAD_SET_TYPE",
            "OFPBAC_BAD_SET_LEN",
            "OFPBAC_BAD_SET_ARGUMENT",
            "OFPBAC_BAD_SET_MASK",
            "OFPBAC_BAD_METER",
        ],
        3 => &[
            "OFPBIC_UNKNOWN_INST",
            "OFPBIC_UNSUP_INST",
            "OFPBIC_BAD_TABLE_ID",
            "OFPBIC_UNSUP_METADATA",
            "OFPBIC_UNSUP_METADATA_MASK",
            "OFPBIC_BAD_EXPERIMENTER",
            "OFPBIC_BAD_EXP_TYPE",
            "OFPBIC_BAD_LEN",
            "OFPBIC_EPERM",
            "OFPBIC_DUP_INST",
        ],
        4 => &[
            "OFPBMC_BAD_TYPE",
            "OFPBMC_BAD_LEN",
            "OFPBMC_BAD_TAG",
            "OFPBMC_BAD_DL_ADDR_MASK",
            "OFPBMC_BAD_NW_ADDR_MASK",
            "OFPBMC_BAD_WILDCARDS",
            "OFPBMC_BAD_FIELD",
            "OFPBMC_BAD_VALUE",
            "OFPBMC_BAD_MASK",
            "OFPBMC_BAD_PREREQ",
            "OFPBMC_DUP_FIELD",
            "OFPBMC_EPERM",
        ],
        5 => &[
            "OFPFMFC_UNKNOWN",
            "OFPFMFC_TABLE_FULL",
            "OFPFMFC_BAD_TABLE_ID",
            "OFPFMFC_OVERLAP",
            "OFPFMFC_EPERM",
            "OFPFMFC_BAD_TIMEOUT",
            "OFPFMFC_BAD_COMMAND",
            "OFPFMFC_BAD_FLAGS",
            "OFPFMFC_CANT_SYNC",
            "OFPFMFC_BAD_PRIORITY",
            "OFPFMFC_IS_SYNC",
        ],
        6 => &[
            "OFPGMFC_GROUP_EXISTS",
            "OFPGMFC_INVALID_GROUP",
            "OFPGMFC_WEIGHT_UNSUPPORTED",
            "OFPGMFC_OUT_OF_GROUPS",
            "OFPGMFC_OUT_OF_BUCKETS",
            "OFPGMFC_CHAINING_UNSUPPORTED",
            "OFPGMFC_WATCH_UNSUPPORTED",
            "OFPGMFC_LOOP",
            "OFPGMFC_UNKNOWN_GROUP",
            "OFPGMFC_CHAINED_GROUP",
            "OFPGMFC_BAD_TYPE",
            "OFPGMFC_BAD_COMMAND",
            "OFPGMFC_BAD_BUCKET",
            "OFPGMFC_BAD_WATCH",
            "OFPGMFC_EPERM",
            "OFPGMFC_UNKNOWN_BUCKET",
            "OFPGMFC_BUCKET_EXISTS",
        ],
        14 => &[
            "OFPBPC_BAD_TYPE",
            "OFPBPC_BAD_LEN",
            "OFPBPC_BAD_VALUE",
            "OFPBPC_TOO_MANY",
            "OFPBPC_DUP_TYPE",
            "OFPBPC_BAD_EXPERIMENTER",
            "OFPBPC_BAD_EXP_TYPE",
            "OFPBPC_BAD_EXP_VALUE",
            "OFPBPC_EPERM",
        ],
        17 => &[
            "OFPBFC_UNKNOWN",
            "OFPBFC_EPERM",
            "OFPBFC_BAD_ID",
            "OFPBFC_BUNDLE_EXIST",
            "OFPBFC_BUNDLE_CLOSED",
            "OFPBFC_OUT_OF_BUNDLES",
            "OFPBFC_BAD_TYPE",
            "OFPBFC_BAD_FLAGS",
            "OFPBFC_MSG_BAD_LEN",
            "OFPBFC_MSG_BAD_XID",
            "OFPBFC_MSG_UNSUP",
            "OFPBFC_MSG_CONFLICT",
            "OFPBFC_MSG_TOO_MANY",
            "OFPBFC_MSG_FAILED",
            "OFPBFC_TIMEOUT",
            "OFPBFC_BUNDLE_IN_PROGRESS",
        ],
        _ => &[],
    };
    list.get(c as usize).copied()
}

/// Nicira error codes (experimenter 0x2320) of OpenFlow 1.2 and later.
fn nx_error(c: u16) -> Option<&'static str> {
    Some(match c {
        2 => "NXBRC_NXM_INVALID",
        3 => "NXBRC_NXM_BAD_TYPE",
        4 => "NXBRC_MUST_BE_ZERO",
        5 => "NXBRC_BAD_REASON",
        9 => "NXBRC_FM_BAD_EVENT",
        10 => "NXBRC_UNENCODABLE_ERROR",
        11 => "NXBAC_MUST_BE_ZERO",
        12 => "NXFMFC_HARDWARE",
        13 => "NXFMFC_BAD_TABLE_ID",
        34 => "NXR_NOT_SUPPORTED",
        42 => "NXBAC_CT_DATAPATH_SUPPORT",
        43 => "NXBMC_CT_DATAPATH_SUPPORT",
        _ => return None,
    })
}

/// A MULTIPART_REPLY: its type, whether more replies follow, and the body.
pub fn parse_multipart(msg: &[u8]) -> Result<(u16, bool, &[u8]), CodecError> {
    let what = "multipart reply";
    let b = body_of(msg, msg_type::MULTIPART_REPLY, what)?;
    let (Some(kind), Some(flags)) = (be16(b, 0), be16(b, 2)) else {
        return Err(malformed(what, "body shorter than 8 bytes"));
    };
    let body = b
        .get(8..)
        .ok_or_else(|| malformed(what, "body shorter than 8 bytes"))?;
    Ok((kind, flags & 1 != 0, body))
}

/// One flow of a FLOW_DESC reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowDesc {
    /// The flow's table.
    pub table: u8,
    /// The flow's priority.
    pub priority: u16,
    /// The flow's cookie.
    pub cookie: u64,
    /// Group ids named by `group` actions in apply/write-actions instructions.
    pub groups: Vec<u32>,
}

/// Splits `b` into `len`-prefixed entries (length at `len_at`, at least `min`).
pub(super) fn entries<'a>(
    mut b: &'a [u8],
    len_at: usize,
    min: usize,
    what: &'static str,
) -> Result<Vec<&'a [u8]>, CodecError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = be16(b, len_at).ok_or_else(|| malformed(what, "truncated entry"))? as usize;
        if len < min || len > b.len() {
            return Err(malformed(
                what,
                format!("entry length {len} with {} bytes left", b.len()),
            ));
        }
        out.push(&b[..len]);
        b = &b[len..];
    }
    Ok(out)
}

/// One entry of a FLOW_DESC body, cut into its parts.
pub(super) struct FlowEntry<'a> {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    /// The `ofp_stats` (header and OXS fields), without padding.
    pub stats: &'a [u8],
    pub instructions: &'a [u8],
}

/// The entries of a FLOW_DESC body.
pub(super) fn flow_entries<'a>(
    body: &'a [u8],
    what: &'static str,
) -> Result<Vec<FlowEntry<'a>>, CodecError> {
    let short = || malformed(what, "entry shorter than its parts");
    let mut out = Vec::new();
    for e in entries(body, 0, 24, what)? {
        let match_len = be16(e, 26).ok_or_else(short)? as usize;
        let at = 24 + match_len.div_ceil(8) * 8;
        let stats_len = be16(e, at + 2).ok_or_else(short)? as usize;
        if stats_len < 4 {
            return Err(short());
        }
        let stats = e.get(at..at + stats_len).ok_or_else(short)?;
        let instructions = e.get(at + stats_len.div_ceil(8) * 8..).ok_or_else(short)?;
        out.push(FlowEntry {
            table: e[4],
            priority: be16(e, 6).ok_or_else(short)?,
            cookie: be64(e, 16).ok_or_else(short)?,
            stats,
            instructions,
        });
    }
    Ok(out)
}

/// Every flow of a FLOW_DESC body: its table, priority, cookie and the groups
/// its actions send to. Matches and actions are not decoded.
pub fn parse_flow_desc_body(body: &[u8]) -> Result<Vec<FlowDesc>, CodecError> {
    let what = "flow desc";
    let short = || malformed(what, "entry shorter than its parts");
    let mut out = Vec::new();
    for e in flow_entries(body, what)? {
        let mut groups = Vec::new();
        let mut inst = e.instructions;
        while !inst.is_empty() {
            let kind = be16(inst, 0).ok_or_else(short)?;
            let len = be16(inst, 2).ok_or_else(short)? as usize;
            if len < 4 || len > inst.len() {
                return Err(malformed(what, format!("instruction length {len}")));
            }
            // OFPIT_WRITE_ACTIONS, OFPIT_APPLY_ACTIONS
            if matches!(kind, 3 | 4) {
                let mut acts = inst.get(8..len).unwrap_or_default();
                while !acts.is_empty() {
                    let t = be16(acts, 0).ok_or_else(short)?;
                    let l = be16(acts, 2).ok_or_else(short)? as usize;
                    if l < 4 || l > acts.len() {
                        return Err(malformed(what, format!("action length {l}")));
                    }
                    if t == 22 {
                        groups.push(be32(acts, 4).ok_or_else(short)?);
                    }
                    acts = &acts[l..];
                }
            }
            inst = &inst[len..];
        }
        out.push(FlowDesc {
            table: e.table,
            priority: e.priority,
            cookie: e.cookie,
            groups,
        });
    }
    Ok(out)
}

/// A group's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupType {
    /// `OFPGT_ALL`.
    All,
    /// `OFPGT_SELECT`.
    Select,
    /// `OFPGT_INDIRECT`.
    Indirect,
    /// `OFPGT_FF`, fast failover.
    FastFailover,
    /// A type this crate does not know.
    Unknown(u8),
}

impl GroupType {
    /// The type from its number.
    pub fn from_code(code: u8) -> GroupType {
        match code {
            0 => GroupType::All,
            1 => GroupType::Select,
            2 => GroupType::Indirect,
            3 => GroupType::FastFailover,
            c => GroupType::Unknown(c),
        }
    }

    /// The name `ovs-ofctl` gives it: `all`, `select`, `indirect`, `ff`, or
    /// `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            GroupType::All => "all",
            GroupType::Select => "select",
            GroupType::Indirect => "indirect",
            GroupType::FastFailover => "ff",
            GroupType::Unknown(_) => "unknown",
        }
    }
}

/// A group as a GROUP_DESC reply describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDesc {
    /// The group id.
    pub id: u32,
    /// The group's type.
    pub group_type: GroupType,
    /// The NTR selection method (`hash`), if the group has that property.
    pub selection_method: Option<String>,
    /// The selection method's fields as [`HashField`] prints them
    /// (`tcp_src=63` for a masked one); a field not known here by its OXM
    /// header in hex.
    pub hash_fields: Vec<String>,
    /// Any other group property, as text: `selection_method_param=N`, or
    /// `prop:TYPE:HEX` for one not known here.
    pub properties: Vec<String>,
    /// The buckets, in the switch's order.
    pub buckets: Vec<BucketDesc>,
}

/// One bucket of a [`GroupDesc`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketDesc {
    /// The bucket id.
    pub id: u32,
    /// Bucket properties other than a weight of 1 and watches, as text:
    /// `weight:N`, or `prop:TYPE` for one not known here.
    pub properties: Vec<String>,
    /// The bucket's actions, as the switch encodes them.
    pub actions: Vec<u8>,
}

/// Every group of a GROUP_DESC reply body, in the form of [`super::GroupMod::desc`].
pub fn parse_group_desc_body(body: &[u8]) -> Result<Vec<GroupDesc>, CodecError> {
    let what = "group desc";
    let short = || malformed(what, "entry shorter than its parts");
    let mut out = Vec::new();
    for e in entries(body, 0, 16, what)? {
        let list_len = be16(e, 8).ok_or_else(short)? as usize;
        let list = e.get(16..16 + list_len).ok_or_else(short)?;
        let mut g = GroupDesc {
            id: be32(e, 4).ok_or_else(short)?,
            group_type: GroupType::from_code(e[2]),
            selection_method: None,
            hash_fields: Vec::new(),
            properties: Vec::new(),
            buckets: Vec::new(),
        };
        for b in entries(list, 0, 8, what)? {
            let alen = be16(b, 2).ok_or_else(short)? as usize;
            let bid = be32(b, 4).ok_or_else(short)?;
            let actions = b.get(8..8 + alen).ok_or_else(short)?;
            let mut properties = Vec::new();
            for p in props(&b[8 + alen..], what)? {
                let (t, l) = (be16(p, 0).ok_or_else(short)?, be16(p, 2).ok_or_else(short)?);
                match (t, be16(p, 4)) {
                    (0, Some(1)) if l == 8 => {}
                    (0, Some(w)) => properties.push(format!("weight:{w}")),
                    (1, _) => {} // watch port/group: not used
                    (2, _) => {}
                    _ => properties.push(format!("prop:{t}")),
                }
            }
            g.buckets.push(BucketDesc {
                id: bid,
                properties,
                actions: actions.to_vec(),
            });
        }
        for p in props(&e[16 + list_len..], what)? {
            let t = be16(p, 0).ok_or_else(short)?;
            if t == 0xffff
                && be32(p, 4) == Some(NTR_VENDOR)
                && be32(p, 8) == Some(NTRT_SELECTION_METHOD)
            {
                let name = p.get(16..32).ok_or_else(short)?;
                let end = name.iter().position(|c| *c == 0).unwrap_or(16);
                g.selection_method = Some(String::from_utf8_lossy(&name[..end]).into_owned());
                let param = be64(p, 32).ok_or_else(short)?;
                if param != 0 {
                    g.properties.push(format!("selection_method_param={param}"));
                }
                g.hash_fields = field_names(p.get(40..).unwrap_or_default(), what)?;
            } else {
                g.properties.push(format!("prop:{t}:{}", hex(p)));
            }
        }
        out.push(g);
    }
    Ok(out)
}

/// Properties: a type, a length (without padding), padded to 8 bytes.
fn props<'a>(mut b: &'a [u8], what: &'static str) -> Result<Vec<&'a [u8]>, CodecError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = be16(b, 2).ok_or_else(|| malformed(what, "truncated property"))? as usize;
        if len < 4 || len > b.len() {
            return Err(malformed(what, format!("property length {len}")));
        }
        out.push(&b[..len]);
        b = &b[len.div_ceil(8).saturating_mul(8).min(b.len())..];
    }
    Ok(out)
}

/// The names of an OXM field array (`ip_src`, …; an unknown field by header).
fn field_names(mut b: &[u8], what: &'static str) -> Result<Vec<String>, CodecError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let h = be32(b, 0).ok_or_else(|| malformed(what, "truncated field header"))?;
        let head = if h >> 16 == 0xffff { 8 } else { 4 };
        let len = head + (h & 0xff) as usize;
        if len > b.len() {
            return Err(malformed(what, format!("field {h:#010x} overruns")));
        }
        let value = &b[head..len];
        let mask = (!value.iter().all(|x| *x == 0xff) && value.len() <= 8)
            .then(|| value.iter().fold(0u64, |m, x| m << 8 | u64::from(*x)));
        let name = fields::by_header(h)
            .and_then(|f| Field::named(f.name))
            .filter(|f| HashField::FIELDS.contains(f))
            .map_or_else(
                || format!("{h:#010x}"),
                |field| HashField { field, mask }.to_string(),
            );
        out.push(name);
        b = &b[len..];
    }
    Ok(out)
}
