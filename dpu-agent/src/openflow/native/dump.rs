//! Reading what the switch holds: every flow's cookie and the groups it names,
//! and every group's description.
//!
//! OVS 3.1 cannot describe a group in more than 64 KiB (about 1000 of the
//! compiler's buckets): it sends that description as one reply whose 16-bit
//! lengths wrapped, and when another group follows it in the same dump,
//! `ovs-vswitchd` dies on an assertion (`start_ofs <= UINT16_MAX` in
//! `ofpmp_postappend`). So groups are counted first (GROUP_STATS, one small
//! entry per group) and described all at once only when every group is small;
//! otherwise each group is described by its own request, where a too-large one
//! comes back alone, is framed by what follows it, and is reported unreadable.

use super::codec::{self, msg_type};
use super::conn::{error_name, xid_of, Conn, Step};
use crate::openflow::{InstalledGroup, InstalledSummary, OpenFlowError};

const OFPMP_FLOW_DESC: u16 = 1;
const OFPMP_GROUP_STATS: u16 = 6;
const OFPMP_GROUP_DESC: u16 = 7;
const OFPG_ALL: u32 = 0xffff_fffc;
/// The most buckets a group may have for all groups to be described in one
/// dump: 64 KiB holds 128 buckets of up to 500 bytes each.
const DESCRIBE_ALL_MAX_BUCKETS: usize = 128;
/// An ofp_group_stats entry before its bucket counters, and one counter.
const GROUP_STATS_LEN: usize = 40;
const BUCKET_COUNTER_LEN: usize = 16;

/// A multipart request about one group (or all, [`OFPG_ALL`]): GROUP_STATS and
/// GROUP_DESC take the same body, a group id and 4 bytes of padding.
fn group_request(xid: u32, kind: u16, group: u32) -> Vec<u8> {
    let mut m = vec![codec::OFP_VERSION, msg_type::MULTIPART_REQUEST, 0, 24];
    m.extend_from_slice(&xid.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&[0; 6]);
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(&[0; 4]);
    m
}

/// Whether a multipart reply says more parts follow.
fn more_follows(msg: &[u8]) -> bool {
    msg.get(11).is_some_and(|f| f & 1 != 0)
}

fn protocol(what: impl std::fmt::Display) -> OpenFlowError {
    OpenFlowError::Protocol(what.to_string())
}

/// The ids and bucket counts in a GROUP_STATS reply.
fn group_stats(msg: &[u8]) -> Result<Vec<(u32, usize)>, OpenFlowError> {
    if msg.len() > usize::from(u16::MAX) {
        // One group alone, with more than 4000 buckets.
        let id = msg
            .get(20..24)
            .ok_or_else(|| protocol("a wrapped group stats reply of under 24 bytes"))?;
        return Ok(vec![(
            u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
            usize::MAX,
        )]);
    }
    let (_, _, mut body) =
        codec::parse_multipart(msg).map_err(|e| protocol(format!("the group stats: {e}")))?;
    let mut out = Vec::new();
    while !body.is_empty() {
        let len = body
            .get(..2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
        let Some(len) = len.filter(|l| *l >= GROUP_STATS_LEN && *l <= body.len()) else {
            return Err(protocol("a malformed group stats entry"));
        };
        let id = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        out.push((id, (len - GROUP_STATS_LEN) / BUCKET_COUNTER_LEN));
        body = &body[len..];
    }
    Ok(out)
}

/// A group whose description came in a reply longer than 64 KiB, every length
/// in it wrapped at 16 bits. Its id and type are read; its buckets cannot be,
/// so it is reported with a property that no group the compiler writes has:
/// the reconciler then takes it as changed and writes it again.
fn unreadable_group(msg: &[u8]) -> Result<(u32, InstalledGroup), OpenFlowError> {
    // Multipart reply header (16 bytes), then ofp_group_desc: length, type, pad,
    // group_id.
    let entry = msg
        .get(16..24)
        .ok_or_else(|| protocol("a wrapped group description of under 24 bytes"))?;
    let id = u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]);
    let kind = match entry[2] {
        0 => "all",
        1 => "select",
        2 => "indirect",
        3 => "ff",
        _ => "unknown",
    };
    tracing::warn!(
        group = id,
        bytes = msg.len(),
        "the switch describes a group in more than one OpenFlow message holds; \
         its buckets are unknown and it will be written again"
    );
    Ok((
        id,
        InstalledGroup {
            kind: kind.into(),
            selection_method: None,
            hash_fields: Vec::new(),
            properties: vec![format!(
                "unreadable: described in {} bytes, more than an OpenFlow message holds",
                msg.len() - 16
            )],
            buckets: Vec::new(),
            wire: true,
        },
    ))
}

/// Reads flows and groups; `next_xid` hands out transaction ids.
pub(super) async fn installed(
    conn: &mut Conn,
    next_xid: &mut u32,
) -> Result<InstalledSummary, OpenFlowError> {
    let mut xid = || {
        let x = *next_xid;
        *next_xid = next_xid.wrapping_add(1);
        x
    };
    let mut sum = InstalledSummary::default();

    // Flows and group sizes.
    let (flows_xid, stats_xid, barrier) = (xid(), xid(), xid());
    let mut out = codec::flow_desc_request(flows_xid);
    out.extend_from_slice(&group_request(stats_xid, OFPMP_GROUP_STATS, OFPG_ALL));
    out.extend_from_slice(&codec::barrier_request(barrier));
    let mut sizes: Vec<(u32, usize)> = Vec::new();
    let (mut flows_done, mut stats_done) = (false, false);
    let follows = |h: &[u8]| {
        h[0] == codec::OFP_VERSION
            && match h[1] {
                msg_type::MULTIPART_REPLY | msg_type::ERROR => {
                    xid_of(h) == flows_xid || xid_of(h) == stats_xid
                }
                msg_type::BARRIER_REPLY => xid_of(h) == barrier,
                msg_type::ECHO_REQUEST => true,
                _ => false,
            }
    };
    conn.exchange_framed(&out, Some(follows), |msg| {
        let what = match xid_of(msg) {
            x if x == flows_xid => "flow descriptions",
            x if x == stats_xid => "group stats",
            x if x == barrier && msg[1] == msg_type::BARRIER_REPLY => {
                return if flows_done && stats_done {
                    Ok(Step::Done)
                } else {
                    Err(protocol("the barrier after the dumps was answered first"))
                };
            }
            _ => return Ok(Step::More),
        };
        match msg[1] {
            msg_type::MULTIPART_REPLY => {}
            msg_type::ERROR => {
                return Err(protocol(format!(
                    "the switch refused the {what}: {}",
                    error_name(msg)
                )))
            }
            other => return Err(protocol(format!("message type {other} in the {what}"))),
        }
        if xid_of(msg) == stats_xid {
            sizes.extend(group_stats(msg)?);
            stats_done = !more_follows(msg);
            return Ok(Step::More);
        }
        if msg.len() > usize::from(u16::MAX) {
            return Err(protocol(format!(
                "a {}-byte reply in the {what}",
                msg.len()
            )));
        }
        let bad = |e: codec::CodecError| protocol(format!("the {what}: {e}"));
        let (kind, more, body) = codec::parse_multipart(msg).map_err(bad)?;
        if kind != OFPMP_FLOW_DESC {
            return Err(protocol(format!("multipart type {kind} in the {what}")));
        }
        for f in codec::parse_flow_desc_body(body).map_err(bad)? {
            sum.flows += 1;
            sum.cookies.insert(f.cookie);
            for g in f.groups {
                sum.group_users.entry(g).or_default().insert(f.cookie);
            }
        }
        flows_done = !more;
        Ok(Step::More)
    })
    .await?;
    if sizes.is_empty() {
        return Ok(sum);
    }

    // Group descriptions: all at once, or one request per group.
    let one_by_one = sizes
        .iter()
        .any(|(_, buckets)| *buckets > DESCRIBE_ALL_MAX_BUCKETS);
    let ids: Vec<u32> = if one_by_one {
        sizes.iter().map(|(id, _)| *id).collect()
    } else {
        vec![OFPG_ALL]
    };
    let first = xid();
    let mut out = Vec::with_capacity(ids.len() * 24 + 8);
    for (i, id) in ids.iter().enumerate() {
        out.extend_from_slice(&group_request(
            first.wrapping_add(i as u32),
            OFPMP_GROUP_DESC,
            *id,
        ));
    }
    for _ in 1..ids.len() {
        xid();
    }
    let barrier = xid();
    out.extend_from_slice(&codec::barrier_request(barrier));
    let ours = |x: u32| (x.wrapping_sub(first) as usize) < ids.len();
    let follows = |h: &[u8]| {
        h[0] == codec::OFP_VERSION
            && match h[1] {
                msg_type::MULTIPART_REPLY | msg_type::ERROR => ours(xid_of(h)),
                msg_type::BARRIER_REPLY => xid_of(h) == barrier,
                msg_type::ECHO_REQUEST => true,
                _ => false,
            }
    };
    let mut finished = 0;
    conn.exchange_framed(&out, Some(follows), |msg| {
        let x = xid_of(msg);
        if x == barrier && msg[1] == msg_type::BARRIER_REPLY {
            return if finished == ids.len() {
                Ok(Step::Done)
            } else {
                Err(protocol(
                    "the barrier after the group descriptions was answered first",
                ))
            };
        }
        if !ours(x) {
            return Ok(Step::More);
        }
        match msg[1] {
            msg_type::MULTIPART_REPLY => {}
            msg_type::ERROR => {
                return Err(protocol(format!(
                    "the switch refused the group descriptions: {}",
                    error_name(msg)
                )))
            }
            other => {
                return Err(protocol(format!(
                    "message type {other} in the group descriptions"
                )))
            }
        }
        if !more_follows(msg) {
            finished += 1;
        }
        if msg.len() > usize::from(u16::MAX) {
            let (id, g) = unreadable_group(msg)?;
            sum.groups.insert(id, g);
            return Ok(Step::More);
        }
        let bad = |e: codec::CodecError| protocol(format!("the group descriptions: {e}"));
        let (kind, _, body) = codec::parse_multipart(msg).map_err(bad)?;
        if kind != OFPMP_GROUP_DESC {
            return Err(protocol(format!(
                "multipart type {kind} in the group descriptions"
            )));
        }
        sum.groups
            .extend(codec::parse_group_desc_body(body).map_err(bad)?);
        Ok(Step::More)
    })
    .await?;
    Ok(sum)
}
