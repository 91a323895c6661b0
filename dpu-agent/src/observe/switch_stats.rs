//! Flow and group counters, read over an OpenFlow connection of its own: each
//! read connects, asks, and hangs up, so it never shares a connection (or an
//! open bundle) with the reconciler, and it sends no message that changes the
//! switch.
//!
//! What is asked, and why so:
//! - flows: one FLOW_DESC per table of interest. OVS 3.1 puts each flow's
//!   packet and byte counts in the `ofp_stats` of FLOW_DESC (as
//!   `ovs-ofctl -O OpenFlow15 dump-flows` shows them) and refuses the OpenFlow
//!   1.5 FLOW_STATS request (`OFPBRC_BAD_STAT`). A table filter keeps a scrape
//!   of a 200k-flow switch to the tables that are wanted.
//! - groups: GROUP_STATS of all groups counts packets per bucket by position
//!   only, so the bucket ids come from GROUP_DESC. The descriptions are read
//!   the way `installed()` reads them (`openflow::native`'s `dump`), which
//!   keeps a group of over ~1,000 buckets from crashing `ovs-vswitchd`.
//!
//! The two group requests are not atomic: a group rewritten between them may
//! come back with a different number of buckets than it has counters. Such a
//! group keeps its counters and gets no bucket ids rather than wrong ones.

use std::time::Duration;

use crate::reconcile::backend::native::{codec, Counters};
use crate::reconcile::backend::{NativeBackend, OpenFlowError};

/// One flow's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowCounter {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// One group's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCounter {
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    /// The group's bucket ids, in the switch's bucket order. Empty when the
    /// group changed between the two requests of a read (see the module doc).
    pub bucket_ids: Vec<u32>,
    /// (packets, bytes) per bucket, in the same order as `bucket_ids`.
    pub buckets: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Table by table in the order asked; within a table, as the switch lists them.
    pub flows: Vec<FlowCounter>,
    /// By group id.
    pub groups: Vec<GroupCounter>,
}

/// Reads the counters of every flow of `tables` and of every group from the
/// bridge at `target` (`unix:<run_dir>/<bridge>.mgmt`), within `timeout` all
/// told, connecting included.
pub async fn read(
    target: &str,
    tables: &[u8],
    timeout: Duration,
) -> Result<SwitchCounters, OpenFlowError> {
    let mut switch = NativeBackend::new(target)?.with_timeouts(timeout, timeout);
    Ok(shape(switch.counters(tables).await?))
}

/// The counters as observers see them: groups by id, each with its bucket ids.
fn shape(raw: Counters) -> SwitchCounters {
    let Counters {
        flows,
        groups,
        mut bucket_ids,
    } = raw;
    let flows = flows
        .into_iter()
        .map(|f| FlowCounter {
            table: f.table,
            priority: f.priority,
            cookie: f.cookie,
            packets: f.packets,
            bytes: f.bytes,
        })
        .collect();
    let mut groups: Vec<GroupCounter> = groups
        .into_iter()
        .map(|g: codec::GroupStats| {
            let ids = bucket_ids.remove(&g.id).unwrap_or_default();
            let bucket_ids = if ids.len() == g.buckets.len() {
                ids
            } else {
                tracing::debug!(
                    group = g.id,
                    counters = g.buckets.len(),
                    described = ids.len(),
                    "a group changed while its counters were read; its buckets go unnamed"
                );
                Vec::new()
            };
            GroupCounter {
                id: g.id,
                packets: g.packets,
                bytes: g.bytes,
                bucket_ids,
                buckets: g.buckets,
            }
        })
        .collect();
    groups.sort_by_key(|g| g.id);
    SwitchCounters { flows, groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(id: u32, buckets: &[(u64, u64)]) -> codec::GroupStats {
        codec::GroupStats {
            id,
            packets: buckets.iter().map(|b| b.0).sum(),
            bytes: buckets.iter().map(|b| b.1).sum(),
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn groups_come_by_id_with_their_bucket_ids_in_switch_order() {
        let raw = Counters {
            flows: vec![codec::FlowCounts {
                table: 40,
                priority: 100,
                cookie: 0x12,
                packets: 3,
                bytes: 156,
            }],
            groups: vec![stats(9, &[(1, 60)]), stats(5, &[(0, 0), (3, 156), (1, 42)])],
            bucket_ids: [(5, vec![7, 3, 900]), (9, vec![1])].into(),
        };
        let c = shape(raw);
        assert_eq!(c.flows[0].cookie, 0x12);
        assert_eq!(c.flows[0].bytes, 156);
        assert_eq!(c.groups.iter().map(|g| g.id).collect::<Vec<_>>(), [5, 9]);
        assert_eq!(c.groups[0].bucket_ids, [7, 3, 900]);
        assert_eq!(c.groups[0].buckets[1], (3, 156));
        assert_eq!((c.groups[0].packets, c.groups[0].bytes), (4, 198));
    }

    #[test]
    fn a_group_that_changed_between_requests_keeps_counters_but_no_bucket_ids() {
        let raw = Counters {
            flows: Vec::new(),
            groups: vec![stats(5, &[(2, 84), (1, 42)]), stats(6, &[(1, 1)])],
            // 5 gained a bucket after its stats were read; 6 went away.
            bucket_ids: [(5, vec![7, 3, 900])].into(),
        };
        let c = shape(raw);
        assert!(c.groups[0].bucket_ids.is_empty());
        assert_eq!(c.groups[0].buckets, [(2, 84), (1, 42)]);
        assert!(c.groups[1].bucket_ids.is_empty());
        assert_eq!(c.groups[1].packets, 1);
    }
}
