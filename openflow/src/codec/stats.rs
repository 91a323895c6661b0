//! Counters in replies from the switch: each flow's packets and bytes from the
//! `ofp_stats` of a FLOW_DESC entry, each group's and bucket's from
//! GROUP_STATS, and each group's bucket ids in the switch's order from
//! GROUP_DESC (GROUP_STATS counts buckets by position only).
//!
//! OVS 3.1 sends one group whose description or stats exceed 64 KiB as a single
//! reply with every 16-bit length in it wrapped (see `crate::dump`); the
//! `parse_oversized_*` functions read such a reply, framed by the connection,
//! from its true length.

use super::decode::{be16, be32, be64, entries, flow_entries, malformed};
use super::CodecError;

/// OXS class of the standard statistics fields.
const OFPXSC_OPENFLOW_BASIC: u16 = 0x8002;
const OXS_PACKET_COUNT: u8 = 4;
const OXS_BYTE_COUNT: u8 = 5;
/// An ofp_group_stats entry before its bucket counters, and one counter.
const GROUP_STATS_LEN: usize = 40;
const BUCKET_COUNTER_LEN: usize = 16;
/// A multipart reply's header: the message header and type, flags, padding.
const MULTIPART_HEADER_LEN: usize = 16;
const WRAP: usize = 1 << 16;

/// One flow's counters from a FLOW_DESC reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowCounts {
    /// The flow's table.
    pub table: u8,
    /// The flow's priority.
    pub priority: u16,
    /// The flow's cookie.
    pub cookie: u64,
    /// Packets that hit the flow.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// Every flow of a FLOW_DESC body with its packet and byte counts. A flow
/// whose `ofp_stats` lacks either count is malformed: OVS always sends both,
/// and a missing count must not read as zero.
pub fn parse_flow_counts_body(body: &[u8]) -> Result<Vec<FlowCounts>, CodecError> {
    let what = "flow desc stats";
    flow_entries(body, what)?
        .into_iter()
        .map(|e| {
            let (mut packets, mut bytes) = (None, None);
            let mut oxs = &e.stats[4..];
            while !oxs.is_empty() {
                let header = be32(oxs, 0).ok_or_else(|| malformed(what, "truncated OXS header"))?;
                let len = 4 + (header & 0xff) as usize;
                let value = oxs
                    .get(4..len)
                    .ok_or_else(|| malformed(what, format!("OXS field {header:#010x} overruns")))?;
                if (header >> 16) as u16 == OFPXSC_OPENFLOW_BASIC && value.len() == 8 {
                    match ((header >> 9) & 0x7f) as u8 {
                        OXS_PACKET_COUNT => packets = be64(value, 0),
                        OXS_BYTE_COUNT => bytes = be64(value, 0),
                        _ => {}
                    }
                }
                oxs = &oxs[len..];
            }
            match (packets, bytes) {
                (Some(packets), Some(bytes)) => Ok(FlowCounts {
                    table: e.table,
                    priority: e.priority,
                    cookie: e.cookie,
                    packets,
                    bytes,
                }),
                _ => Err(malformed(
                    what,
                    format!(
                        "flow with cookie {:#x} in table {} has no packet or byte count",
                        e.cookie, e.table
                    ),
                )),
            }
        })
        .collect()
}

/// One group's counters from a GROUP_STATS reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// The group id.
    pub id: u32,
    /// Packets sent to the group.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// (packets, bytes) per bucket, in the switch's bucket order.
    pub buckets: Vec<(u64, u64)>,
}

/// One ofp_group_stats entry; its own length field is not read (it may have
/// wrapped), `e` is the whole entry.
fn group_stats_entry(e: &[u8], what: &'static str) -> Result<GroupStats, CodecError> {
    if e.len() < GROUP_STATS_LEN || !(e.len() - GROUP_STATS_LEN).is_multiple_of(BUCKET_COUNTER_LEN)
    {
        return Err(malformed(what, format!("an entry of {} bytes", e.len())));
    }
    let short = || malformed(what, "entry shorter than its parts");
    Ok(GroupStats {
        id: be32(e, 4).ok_or_else(short)?,
        packets: be64(e, 16).ok_or_else(short)?,
        bytes: be64(e, 24).ok_or_else(short)?,
        buckets: e[GROUP_STATS_LEN..]
            .chunks_exact(BUCKET_COUNTER_LEN)
            .map(|c| (be64(c, 0).unwrap_or(0), be64(c, 8).unwrap_or(0)))
            .collect(),
    })
}

/// Every group of a GROUP_STATS body.
pub fn parse_group_stats_body(body: &[u8]) -> Result<Vec<GroupStats>, CodecError> {
    let what = "group stats";
    entries(body, 0, GROUP_STATS_LEN, what)?
        .into_iter()
        .map(|e| group_stats_entry(e, what))
        .collect()
}

/// The one group of a GROUP_STATS reply longer than 64 KiB (over 4,000
/// buckets), `msg` being the whole reply as framed.
pub fn parse_oversized_group_stats(msg: &[u8]) -> Result<GroupStats, CodecError> {
    let e = msg
        .get(MULTIPART_HEADER_LEN..)
        .ok_or_else(|| malformed("oversized group stats", "shorter than a header"))?;
    group_stats_entry(e, "oversized group stats")
}

/// The bucket ids of a bucket list, in order.
fn bucket_ids(list: &[u8], what: &'static str) -> Result<Vec<u32>, CodecError> {
    entries(list, 0, 8, what)?
        .into_iter()
        .map(|b| be32(b, 4).ok_or_else(|| malformed(what, "bucket shorter than 8 bytes")))
        .collect()
}

/// Each group of a GROUP_DESC body with its bucket ids in the switch's order
/// (the order of the bucket counters in GROUP_STATS).
pub fn parse_group_bucket_ids(body: &[u8]) -> Result<Vec<(u32, Vec<u32>)>, CodecError> {
    let what = "group desc buckets";
    let short = || malformed(what, "entry shorter than its parts");
    entries(body, 0, 16, what)?
        .into_iter()
        .map(|e| {
            let id = be32(e, 4).ok_or_else(short)?;
            let list_len = be16(e, 8).ok_or_else(short)? as usize;
            let list = e.get(16..16 + list_len).ok_or_else(short)?;
            Ok((id, bucket_ids(list, what)?))
        })
        .collect()
}

/// The one group of a GROUP_DESC reply longer than 64 KiB, `msg` being the
/// whole reply as framed. Its bucket list length wrapped too; the true one is
/// the only value with the same low 16 bits that leaves under 64 KiB for the
/// group's properties.
pub fn parse_oversized_group_bucket_ids(msg: &[u8]) -> Result<(u32, Vec<u32>), CodecError> {
    let what = "oversized group desc";
    let short = || malformed(what, "shorter than its parts");
    let e = msg.get(MULTIPART_HEADER_LEN..).ok_or_else(short)?;
    let id = be32(e, 4).ok_or_else(short)?;
    let wrapped = be16(e, 8).ok_or_else(short)? as usize;
    let room = e.len().checked_sub(16).ok_or_else(short)?;
    if wrapped > room {
        return Err(short());
    }
    let list_len = wrapped + (room - wrapped) / WRAP * WRAP;
    Ok((id, bucket_ids(&e[16..16 + list_len], what)?))
}
