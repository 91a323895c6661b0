//! Counters read a part at a time, for a reader that shares the switch with a
//! writer on another connection.
//!
//! `ovs-vswitchd` builds each multipart reply whole, on its main thread, and
//! serves up to 50 messages of one connection before it turns to the next. So
//! one request about every flow of a table or every group holds every other
//! connection up for as long as the reply takes to build: at 10,000 flows and
//! 10,000 groups of 10 buckets on OVS 3.1, about 15 ms for FLOW_DESC of the
//! table, 15 ms for GROUP_STATS of all groups and 40 ms for GROUP_DESC of all
//! groups; a bundle sent meanwhile waits that long for its commit.
//!
//! A part is small enough that the wait it causes is short:
//! - [`Connection::flow_counts`]: the flows of one table whose cookie matches a
//!   value under a mask (a FLOW_DESC with a cookie filter). Under a mask that
//!   is not all ones OVS still walks every flow of the table, but encodes only
//!   the ones that match, and the encoding is most of the cost; so the flows
//!   of a table read in 2^k parts by the low k bits of a cookie whose low bits
//!   are a hash.
//! - [`Connection::group_counters`]: a list of groups, each asked for by id,
//!   its GROUP_STATS and its GROUP_DESC back to back (the two replies of a
//!   group are built in the same turn of the switch's loop unless the list is
//!   cut there, so a group is rarely rewritten between them). A group that
//!   does not exist gets an empty reply and is left out.
//!
//! The caller chooses the parts and waits for each before it asks the next:
//! parts sent back to back would be served 50 messages at a time again.

use std::collections::BTreeMap;

use crate::codec::{self, FlowCounts, GroupStats};
use crate::codec::{OFPMP_FLOW_DESC, OFPMP_GROUP_DESC, OFPMP_GROUP_STATS};
use crate::conn::{xid_of, Connection};
use crate::dump::{ask, protocol};
use crate::Error;

/// The counters of some groups, from [`Connection::group_counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCounters {
    /// The counters of each group asked for that exists, and of its buckets
    /// by position, in the order asked.
    pub groups: Vec<GroupStats>,
    /// Each group's bucket ids in the switch's order (the order of
    /// [`GroupStats::buckets`]).
    pub bucket_ids: BTreeMap<u32, Vec<u32>>,
}

impl Connection {
    /// The counters of the flows of `table` whose cookie equals `cookie` in
    /// the bits of `cookie_mask`: one FLOW_DESC (see the module doc).
    pub async fn flow_counts(
        &mut self,
        table: u8,
        cookie: u64,
        cookie_mask: u64,
    ) -> Result<Vec<FlowCounts>, Error> {
        let xid = self.next_xid();
        let request = codec::flow_desc_request_by_cookie(xid, table, cookie, cookie_mask);
        let what = "flow counters";
        let mut flows = Vec::new();
        ask(self, request, xid, 1, what, |msg| {
            if msg.len() > usize::from(u16::MAX) {
                return Err(protocol(format!(
                    "a {}-byte reply in the {what}",
                    msg.len()
                )));
            }
            let bad = |e: codec::CodecError| protocol(format!("the {what}: {e}"));
            let (kind, _, body) = codec::parse_multipart(msg).map_err(bad)?;
            if kind != OFPMP_FLOW_DESC {
                return Err(protocol(format!("multipart type {kind} in the {what}")));
            }
            flows.extend(codec::parse_flow_counts_body(body).map_err(bad)?);
            Ok(())
        })
        .await?;
        Ok(flows)
    }

    /// The counters and bucket ids of the groups `ids`: for each, a
    /// GROUP_STATS and a GROUP_DESC by id, back to back, all behind one
    /// barrier (see the module doc).
    pub async fn group_counters(&mut self, ids: &[u32]) -> Result<GroupCounters, Error> {
        let mut out = GroupCounters::default();
        if ids.is_empty() {
            return Ok(out);
        }
        let n = 2 * ids.len();
        let first = self.next_xids(n as u32);
        let mut requests = Vec::with_capacity(n * 24 + 8);
        for (i, id) in ids.iter().enumerate() {
            let xid = first.wrapping_add(2 * i as u32);
            requests.extend_from_slice(&codec::group_request(xid, OFPMP_GROUP_STATS, *id));
            requests.extend_from_slice(&codec::group_request(xid + 1, OFPMP_GROUP_DESC, *id));
        }
        let what = "group counters";
        ask(self, requests, first, n, what, |msg| {
            let bad = |e: codec::CodecError| protocol(format!("the {what}: {e}"));
            let stats = xid_of(msg).wrapping_sub(first).is_multiple_of(2);
            if msg.len() > usize::from(u16::MAX) {
                // One group of thousands of buckets, its lengths wrapped.
                if stats {
                    out.groups
                        .push(codec::parse_oversized_group_stats(msg).map_err(bad)?);
                } else {
                    let (id, bucket_ids) =
                        codec::parse_oversized_group_bucket_ids(msg).map_err(bad)?;
                    out.bucket_ids.insert(id, bucket_ids);
                }
                return Ok(());
            }
            let (kind, _, body) = codec::parse_multipart(msg).map_err(bad)?;
            match (kind, stats) {
                (OFPMP_GROUP_STATS, true) => {
                    out.groups
                        .extend(codec::parse_group_stats_body(body).map_err(bad)?);
                }
                (OFPMP_GROUP_DESC, false) => {
                    out.bucket_ids
                        .extend(codec::parse_group_bucket_ids(body).map_err(bad)?);
                }
                _ => return Err(protocol(format!("multipart type {kind} in the {what}"))),
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }
}
