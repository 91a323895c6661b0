//! Reading what the switch holds: every flow's cookie and the groups it names,
//! and every group's description (`installed`); or the counters of the flows of
//! some tables and of every group, with each group's bucket ids in order
//! (`counters`). Both read in the same two steps.
//!
//! OVS 3.1 cannot describe a group in more than 64 KiB (about 1000 of the
//! compiler's buckets): it sends that description as one reply whose 16-bit
//! lengths wrapped, and when another group follows it in the same dump,
//! `ovs-vswitchd` dies on an assertion (`start_ofs <= UINT16_MAX` in
//! `ofpmp_postappend`). So groups are counted first (GROUP_STATS, one small
//! entry per group) and described all at once only when every group is small;
//! otherwise each group is described by its own request, where a too-large one
//! comes back alone and is framed by what follows it. `installed` reports such
//! a group unreadable; `counters` needs only its bucket ids, which survive the
//! wrapped lengths (each bucket's own length is small).

use std::collections::BTreeMap;

use super::codec::{self, msg_type, FlowCounts, GroupStats, OFPG_ALL};
use super::codec::{OFPMP_FLOW_DESC, OFPMP_GROUP_DESC, OFPMP_GROUP_STATS};
use super::conn::{error_name, xid_of, Conn, Step};
use crate::openflow::{InstalledGroup, InstalledSummary, OpenFlowError};

/// The most buckets a group may have for all groups to be described in one
/// dump: 64 KiB holds 128 buckets of up to 500 bytes each.
pub(crate) const DESCRIBE_ALL_MAX_BUCKETS: usize = 128;

/// Flow and group counters, in codec types (`observe::switch_stats` shapes
/// them).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub flows: Vec<FlowCounts>,
    pub groups: Vec<GroupStats>,
    /// Each group's bucket ids in the switch's order.
    pub bucket_ids: BTreeMap<u32, Vec<u32>>,
}

/// Whether a multipart reply says more parts follow.
fn more_follows(msg: &[u8]) -> bool {
    msg.get(11).is_some_and(|f| f & 1 != 0)
}

fn protocol(what: impl std::fmt::Display) -> OpenFlowError {
    OpenFlowError::Protocol(what.to_string())
}

fn take(next_xid: &mut u32) -> u32 {
    let x = *next_xid;
    *next_xid = next_xid.wrapping_add(1);
    x
}

/// The groups in a GROUP_STATS reply; one longer than 64 KiB holds a single
/// group of more than 4,000 buckets.
fn group_stats(msg: &[u8]) -> Result<Vec<GroupStats>, OpenFlowError> {
    let bad = |e: codec::CodecError| protocol(format!("the group stats: {e}"));
    if msg.len() > usize::from(u16::MAX) {
        return Ok(vec![codec::parse_oversized_group_stats(msg).map_err(bad)?]);
    }
    let (_, _, body) = codec::parse_multipart(msg).map_err(bad)?;
    codec::parse_group_stats_body(body).map_err(bad)
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

/// A GROUP_DESC reply as [`describe_groups`] hands it on.
enum Described<'a> {
    /// The body of a reply of up to 64 KiB.
    Body(&'a [u8]),
    /// A whole reply longer than 64 KiB: one group, its lengths wrapped.
    Oversized(&'a [u8]),
}

/// Sends the FLOW_DESC requests of `tables` (`None`: one of every table) and a
/// GROUP_STATS of every group in one stream, behind a barrier; hands each
/// FLOW_DESC body to `on_flows` and returns every group's stats.
async fn flows_and_group_stats(
    conn: &mut Conn,
    next_xid: &mut u32,
    tables: Option<&[u8]>,
    mut on_flows: impl FnMut(&[u8]) -> Result<(), OpenFlowError>,
) -> Result<Vec<GroupStats>, OpenFlowError> {
    let first_flows = *next_xid;
    let requests: Vec<Vec<u8>> = match tables {
        None => vec![codec::flow_desc_request(take(next_xid))],
        Some(tables) => tables
            .iter()
            .map(|t| codec::flow_desc_request_in(take(next_xid), *t))
            .collect(),
    };
    let flow_requests = requests.len();
    let (stats_xid, barrier) = (take(next_xid), take(next_xid));
    let mut out = requests.concat();
    out.extend_from_slice(&codec::group_request(
        stats_xid,
        OFPMP_GROUP_STATS,
        OFPG_ALL,
    ));
    out.extend_from_slice(&codec::barrier_request(barrier));
    let is_flows = |x: u32| (x.wrapping_sub(first_flows) as usize) < flow_requests;
    let mut stats = Vec::new();
    let (mut flows_done, mut stats_done) = (0, false);
    let follows = |h: &[u8]| {
        h[0] == codec::OFP_VERSION
            && match h[1] {
                msg_type::MULTIPART_REPLY | msg_type::ERROR => {
                    is_flows(xid_of(h)) || xid_of(h) == stats_xid
                }
                msg_type::BARRIER_REPLY => xid_of(h) == barrier,
                msg_type::ECHO_REQUEST => true,
                _ => false,
            }
    };
    conn.exchange_framed(&out, Some(follows), |msg| {
        let what = match xid_of(msg) {
            x if is_flows(x) => "flow descriptions",
            x if x == stats_xid => "group stats",
            x if x == barrier && msg[1] == msg_type::BARRIER_REPLY => {
                return if flows_done == flow_requests && stats_done {
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
            stats.extend(group_stats(msg)?);
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
        on_flows(body)?;
        if !more {
            flows_done += 1;
        }
        Ok(Step::More)
    })
    .await?;
    Ok(stats)
}

/// Describes the groups of `stats`: all at once when every group is small,
/// otherwise each by its own request (see the module doc). Hands every reply
/// to `on_desc`.
async fn describe_groups(
    conn: &mut Conn,
    next_xid: &mut u32,
    stats: &[GroupStats],
    mut on_desc: impl FnMut(Described<'_>) -> Result<(), OpenFlowError>,
) -> Result<(), OpenFlowError> {
    if stats.is_empty() {
        return Ok(());
    }
    let one_by_one = stats
        .iter()
        .any(|g| g.buckets.len() > DESCRIBE_ALL_MAX_BUCKETS);
    let ids: Vec<u32> = if one_by_one {
        stats.iter().map(|g| g.id).collect()
    } else {
        vec![OFPG_ALL]
    };
    let first = *next_xid;
    let mut out = Vec::with_capacity(ids.len() * 24 + 8);
    for id in &ids {
        out.extend_from_slice(&codec::group_request(take(next_xid), OFPMP_GROUP_DESC, *id));
    }
    let barrier = take(next_xid);
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
            on_desc(Described::Oversized(msg))?;
            return Ok(Step::More);
        }
        let bad = |e: codec::CodecError| protocol(format!("the group descriptions: {e}"));
        let (kind, _, body) = codec::parse_multipart(msg).map_err(bad)?;
        if kind != OFPMP_GROUP_DESC {
            return Err(protocol(format!(
                "multipart type {kind} in the group descriptions"
            )));
        }
        on_desc(Described::Body(body))?;
        Ok(Step::More)
    })
    .await
}

/// Reads flows and groups; `next_xid` hands out transaction ids.
pub(super) async fn installed(
    conn: &mut Conn,
    next_xid: &mut u32,
) -> Result<InstalledSummary, OpenFlowError> {
    let mut sum = InstalledSummary::default();
    let bad = |e: codec::CodecError| protocol(format!("the flow descriptions: {e}"));
    let stats = flows_and_group_stats(conn, next_xid, None, |body| {
        for f in codec::parse_flow_desc_body(body).map_err(bad)? {
            sum.flows += 1;
            sum.cookies.insert(f.cookie);
            for g in f.groups {
                sum.group_users.entry(g).or_default().insert(f.cookie);
            }
        }
        Ok(())
    })
    .await?;
    let bad = |e: codec::CodecError| protocol(format!("the group descriptions: {e}"));
    describe_groups(conn, next_xid, &stats, |reply| {
        match reply {
            Described::Body(body) => sum
                .groups
                .extend(codec::parse_group_desc_body(body).map_err(bad)?),
            Described::Oversized(msg) => {
                let (id, g) = unreadable_group(msg)?;
                sum.groups.insert(id, g);
            }
        }
        Ok(())
    })
    .await?;
    Ok(sum)
}

/// Every group's counters alone (GROUP_STATS, no description): how many
/// buckets each group has, read safely whatever their size.
pub(super) async fn every_group_stats(
    conn: &mut Conn,
    next_xid: &mut u32,
) -> Result<Vec<GroupStats>, OpenFlowError> {
    flows_and_group_stats(conn, next_xid, Some(&[]), |_| Ok(())).await
}

/// Reads the counters of every flow of `tables`, of every group and its
/// buckets, and each group's bucket ids; `next_xid` hands out transaction ids.
pub(super) async fn counters(
    conn: &mut Conn,
    next_xid: &mut u32,
    tables: &[u8],
) -> Result<Counters, OpenFlowError> {
    let mut flows = Vec::new();
    let bad = |e: codec::CodecError| protocol(format!("the flow counters: {e}"));
    let groups = flows_and_group_stats(conn, next_xid, Some(tables), |body| {
        flows.extend(codec::parse_flow_counts_body(body).map_err(bad)?);
        Ok(())
    })
    .await?;
    let mut bucket_ids = BTreeMap::new();
    let bad = |e: codec::CodecError| protocol(format!("the group descriptions: {e}"));
    describe_groups(conn, next_xid, &groups, |reply| {
        match reply {
            Described::Body(body) => {
                bucket_ids.extend(codec::parse_group_bucket_ids(body).map_err(bad)?)
            }
            Described::Oversized(msg) => {
                let (id, ids) = codec::parse_oversized_group_bucket_ids(msg).map_err(bad)?;
                bucket_ids.insert(id, ids);
            }
        }
        Ok(())
    })
    .await?;
    Ok(Counters {
        flows,
        groups,
        bucket_ids,
    })
}
