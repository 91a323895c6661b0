//! Reading what the switch holds: every flow's table, priority, cookie and
//! the groups it names, and every group's description
//! ([`Connection::dump`]); or the counters of the flows of some tables and of
//! every group, with each group's bucket ids in order
//! ([`Connection::counters`]). Both read in the same two steps.
//!
//! OVS 3.1 cannot describe a group in more than 64 KiB (about 1000 of the
//! buckets of a few set-fields and a resubmit): it sends that description as one reply whose 16-bit
//! lengths wrapped, and when another group follows it in the same dump,
//! `ovs-vswitchd` dies on an assertion (`start_ofs <= UINT16_MAX` in
//! `ofpmp_postappend`). So groups are counted first (GROUP_STATS, one small
//! entry per group) and described all at once only when every group is small;
//! otherwise each group is described by its own request, where a too-large one
//! comes back alone and is framed by what follows it. `dump` reports such a
//! group as an [`OversizedGroup`]; `counters` needs only its bucket ids, which
//! survive the wrapped lengths (each bucket's own length is small).

use std::collections::BTreeMap;

use crate::codec::{self, msg_type, FlowCounts, FlowDesc, GroupDesc, GroupStats, GroupType};
use crate::codec::{OFPG_ALL, OFPMP_FLOW_DESC, OFPMP_GROUP_DESC, OFPMP_GROUP_STATS};
use crate::conn::{error_name, xid_of, Connection, Step};
use crate::Error;

/// The most buckets a group may have for all groups to be described in one
/// dump: 64 KiB holds 128 buckets of up to 500 bytes each. A larger group
/// makes every group be described by a request of its own.
pub const DESCRIBE_ALL_MAX_BUCKETS: usize = 128;

/// Every flow and group a switch holds, from [`Connection::dump`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Every flow of every table.
    pub flows: Vec<FlowDesc>,
    /// Every group the switch could describe, in the switch's order.
    pub groups: Vec<GroupDesc>,
    /// Groups whose description is longer than one OpenFlow message can say
    /// (OVS 3.1 wraps its lengths): known by id and type only.
    pub oversized_groups: Vec<OversizedGroup>,
}

/// A group whose description came in a reply longer than 64 KiB, every length
/// in it wrapped at 16 bits: its buckets cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OversizedGroup {
    /// The group id.
    pub id: u32,
    /// The group's type.
    pub group_type: GroupType,
    /// The length of its description.
    pub bytes: usize,
}

/// Flow and group counters, from [`Connection::counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// The counters of every flow of the tables asked for.
    pub flows: Vec<FlowCounts>,
    /// The counters of every group and of its buckets, by position.
    pub groups: Vec<GroupStats>,
    /// Each group's bucket ids in the switch's order (the order of
    /// [`GroupStats::buckets`]).
    pub bucket_ids: BTreeMap<u32, Vec<u32>>,
}

/// Whether a multipart reply says more parts follow.
pub(crate) fn more_follows(msg: &[u8]) -> bool {
    msg.get(11).is_some_and(|f| f & 1 != 0)
}

pub(crate) fn protocol(what: impl std::fmt::Display) -> Error {
    Error::Protocol(what.to_string())
}

/// The groups in a GROUP_STATS reply; one longer than 64 KiB holds a single
/// group of more than 4,000 buckets.
fn group_stats(msg: &[u8]) -> Result<Vec<GroupStats>, Error> {
    let bad = |e: codec::CodecError| protocol(format!("the group stats: {e}"));
    if msg.len() > usize::from(u16::MAX) {
        return Ok(vec![codec::parse_oversized_group_stats(msg).map_err(bad)?]);
    }
    let (_, _, body) = codec::parse_multipart(msg).map_err(bad)?;
    codec::parse_group_stats_body(body).map_err(bad)
}

/// A group whose description came in a reply longer than 64 KiB: its id and
/// type are read, its buckets cannot be.
fn oversized_group(msg: &[u8]) -> Result<OversizedGroup, Error> {
    // Multipart reply header (16 bytes), then ofp_group_desc: length, type, pad,
    // group_id.
    let entry = msg
        .get(16..24)
        .ok_or_else(|| protocol("a wrapped group description of under 24 bytes"))?;
    Ok(OversizedGroup {
        id: u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]),
        group_type: GroupType::from_code(entry[2]),
        bytes: msg.len() - 16,
    })
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
    conn: &mut Connection,
    tables: Option<&[u8]>,
    mut on_flows: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<Vec<GroupStats>, Error> {
    let flow_requests = tables.map_or(1, <[u8]>::len);
    let first_flows = conn.next_xids(flow_requests as u32);
    let requests: Vec<Vec<u8>> = match tables {
        None => vec![codec::flow_desc_request(first_flows)],
        Some(tables) => tables
            .iter()
            .enumerate()
            .map(|(i, t)| codec::flow_desc_request_in(first_flows.wrapping_add(i as u32), *t))
            .collect(),
    };
    let (stats_xid, barrier) = (conn.next_xid(), conn.next_xid());
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
    conn: &mut Connection,
    stats: &[GroupStats],
    mut on_desc: impl FnMut(Described<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
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
    let first = conn.next_xids(ids.len() as u32);
    let mut out = Vec::with_capacity(ids.len() * 24 + 8);
    for (i, id) in ids.iter().enumerate() {
        let xid = first.wrapping_add(i as u32);
        out.extend_from_slice(&codec::group_request(xid, OFPMP_GROUP_DESC, *id));
    }
    ask(conn, out, first, ids.len(), "group descriptions", |msg| {
        if msg.len() > usize::from(u16::MAX) {
            return on_desc(Described::Oversized(msg));
        }
        let bad = |e: codec::CodecError| protocol(format!("the group descriptions: {e}"));
        let (kind, _, body) = codec::parse_multipart(msg).map_err(bad)?;
        if kind != OFPMP_GROUP_DESC {
            return Err(protocol(format!(
                "multipart type {kind} in the group descriptions"
            )));
        }
        on_desc(Described::Body(body))
    })
    .await
}

/// Sends `requests` (`n` multipart requests with consecutive xids from
/// `first`) and a barrier, and hands every reply part to `on_reply` until the
/// barrier reply. Replies may be longer than 64 KiB (one group of thousands of
/// buckets, its lengths wrapped): they are framed by the next message.
pub(crate) async fn ask(
    conn: &mut Connection,
    mut requests: Vec<u8>,
    first: u32,
    n: usize,
    what: &str,
    mut on_reply: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let barrier = conn.next_xid();
    requests.extend_from_slice(&codec::barrier_request(barrier));
    let ours = |x: u32| (x.wrapping_sub(first) as usize) < n;
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
    conn.exchange_framed(&requests, Some(follows), |msg| {
        let x = xid_of(msg);
        if x == barrier && msg[1] == msg_type::BARRIER_REPLY {
            return if finished == n {
                Ok(Step::Done)
            } else {
                Err(protocol(format!(
                    "the barrier after the {what} was answered first"
                )))
            };
        }
        if !ours(x) {
            return Ok(Step::More);
        }
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
        if !more_follows(msg) {
            finished += 1;
        }
        on_reply(msg)?;
        Ok(Step::More)
    })
    .await
}

impl Connection {
    /// Every flow (FLOW_DESC of all tables) and every group (GROUP_STATS
    /// first, then GROUP_DESC: all at once when every group is small, else
    /// one request per group; see the module doc).
    pub async fn dump(&mut self) -> Result<Dump, Error> {
        let mut dump = Dump::default();
        let bad = |e: codec::CodecError| protocol(format!("the flow descriptions: {e}"));
        let stats = flows_and_group_stats(self, None, |body| {
            dump.flows
                .extend(codec::parse_flow_desc_body(body).map_err(bad)?);
            Ok(())
        })
        .await?;
        let bad = |e: codec::CodecError| protocol(format!("the group descriptions: {e}"));
        describe_groups(self, &stats, |reply| {
            match reply {
                Described::Body(body) => dump
                    .groups
                    .extend(codec::parse_group_desc_body(body).map_err(bad)?),
                Described::Oversized(msg) => dump.oversized_groups.push(oversized_group(msg)?),
            }
            Ok(())
        })
        .await?;
        Ok(dump)
    }

    /// Every group's counters alone (GROUP_STATS, no description): how many
    /// buckets each group has, read safely whatever their size.
    pub async fn group_stats(&mut self) -> Result<Vec<GroupStats>, Error> {
        flows_and_group_stats(self, Some(&[]), |_| Ok(())).await
    }

    /// The counters of every flow of `tables` (one FLOW_DESC request per
    /// table), of every group and its buckets, and each group's bucket ids.
    pub async fn counters(&mut self, tables: &[u8]) -> Result<Counters, Error> {
        let mut flows = Vec::new();
        let bad = |e: codec::CodecError| protocol(format!("the flow counters: {e}"));
        let groups = flows_and_group_stats(self, Some(tables), |body| {
            flows.extend(codec::parse_flow_counts_body(body).map_err(bad)?);
            Ok(())
        })
        .await?;
        let mut bucket_ids = BTreeMap::new();
        let bad = |e: codec::CodecError| protocol(format!("the group descriptions: {e}"));
        describe_groups(self, &groups, |reply| {
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
}
