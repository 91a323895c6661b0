//! Flow and group counters, read over an OpenFlow connection of its own: each
//! read connects, asks, and hangs up, so it never shares a connection (or an
//! open bundle) with the reconciler, and it sends no message that changes the
//! switch.
//!
//! What is asked, and why so:
//! - flows: FLOW_DESC of the table of interest. OVS 3.1 puts each flow's
//!   packet and byte counts in the `ofp_stats` of FLOW_DESC (as
//!   `ovs-ofctl -O OpenFlow15 dump-flows` shows them) and refuses the OpenFlow
//!   1.5 FLOW_STATS request (`OFPBRC_BAD_STAT`). A table filter keeps a scrape
//!   of a 200k-flow switch to the tables that are wanted.
//! - groups: GROUP_STATS counts packets per bucket by position only, so the
//!   bucket ids come from GROUP_DESC.
//!
//! The agent reads in parts ([`read_in_parts`], what its observers use).
//! `ovs-vswitchd` builds a reply whole on its one main thread, and a bundle of
//! the reconciler's waits behind it: at 10k Services a whole read (FLOW_DESC of
//! ServiceLb, GROUP_STATS and GROUP_DESC of every group) held the switch for
//! ~70 ms, and every update that met it took 16-34 ms instead of ~3. So the
//! read is cut by a [`Plan`]:
//! - the table's flows in 2^k parts by the low k bits of their cookies (the
//!   compiler's cookie objects are hashes, so the parts are even), k chosen
//!   for about [`FLOWS_PER_PART`] flows a part;
//! - the groups the LB index knows as installed, [`GROUPS_PER_PART`] to a
//!   part, each asked for by id: its GROUP_STATS and GROUP_DESC back to back.
//!   By id, a group of over ~1,000 buckets comes back alone, which
//!   `ovs-vswitchd` survives (see `openflow`'s `dump`).
//!
//! A part is sent only when the last one is answered, and only while the
//! reconciler has no bundle under way (its busy signal; waited for at most
//! [`MAX_PAUSE`] a part and [`MAX_PAUSES`] a read, so a stream of updates
//! cannot starve the read). So a
//! bundle waits for at most the one part the switch is already serving:
//! measured at 10k Services (`tests/switch_stats_parts_real.rs`), a part of
//! ~160 flows holds the switch ~0.4 ms and one of 64 groups ~1-2 ms, where
//! the whole read held bundles up to ~50 ms. The price is the switch's time
//! in all: ~20 ms for the flows, ~200 ms for 10k groups by id (every reply
//! is a message of its own), against ~70 ms whole, once per
//! `collect::STATUS_PERIOD` or scrape. `ops show service` reads one Service:
//! its flows by its cookie in any round (one request) and its groups.
//! [`read`] is the whole read in three requests, for tests and tools.
//!
//! A group's two requests are not atomic: a group rewritten between them may
//! come back with a different number of buckets than it has counters. Such a
//! group keeps its counters and gets no bucket ids rather than wrong ones.

use std::time::Duration;

use tokio::sync::watch;

use super::lb_index::ServiceView;
use super::LbIndex;
use crate::compile::pipeline::cookie::Cookie;
use crate::compile::pipeline::SERVICE_LB;
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

/// About this many flows are read in one part.
pub const FLOWS_PER_PART: usize = 256;
/// Groups read in one part (two requests each).
pub const GROUPS_PER_PART: usize = 64;
/// The longest a part waits for the reconciler's bundle to finish.
pub const MAX_PAUSE: Duration = Duration::from_millis(100);
/// The longest a whole read waits for bundles, all parts told: under
/// updates back to back at 30k Services (~600 parts) a read still ends well
/// within its timeout.
pub const MAX_PAUSES: Duration = Duration::from_secs(1);
/// The most parts the flows are cut into: 2^this.
const MAX_COOKIE_BITS: u32 = 12;

/// How a read is cut into parts (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The table whose flows are read.
    pub table: u8,
    /// Only its flows whose cookie is `cookie` in the bits of `cookie_mask`.
    pub cookie: u64,
    pub cookie_mask: u64,
    /// Those are read in 2^`cookie_bits` parts, by the low bits of their
    /// cookies.
    pub cookie_bits: u32,
    /// The groups to read, by id.
    pub groups: Vec<u32>,
}

impl Plan {
    /// A plan for every flow of a table of about `flows` flows, and for
    /// `groups`.
    pub fn new(table: u8, flows: usize, groups: Vec<u32>) -> Plan {
        let parts = flows.div_ceil(FLOWS_PER_PART).max(1).next_power_of_two();
        Plan {
            table,
            cookie: 0,
            cookie_mask: 0,
            cookie_bits: parts.trailing_zeros().min(MAX_COOKIE_BITS),
            groups,
        }
    }

    /// A plan for ServiceLb's flows and the groups the index knows as
    /// installed: about one flow per group (a Service port and family), and at
    /// least one per Service.
    pub fn for_index(lb: &LbIndex) -> Plan {
        let groups = installed_groups(lb.services.values());
        let flows = groups.len().max(lb.services.len());
        Plan::new(SERVICE_LB.id, flows, groups)
    }

    /// A plan for one Service of the index (`None` if it has no such
    /// Service): its flows in ServiceLb, by its cookie in any round (one
    /// request), and its installed groups.
    pub fn for_service(lb: &LbIndex, name: &str) -> Option<Plan> {
        let s = lb.services.get(name)?;
        Some(Plan {
            table: SERVICE_LB.id,
            cookie: s.cookie,
            cookie_mask: Cookie::SELECT_MASK,
            cookie_bits: 0,
            groups: installed_groups([s]),
        })
    }

    /// Each part's cookie and mask.
    pub fn flow_parts(&self) -> Vec<(u64, u64)> {
        let low = (1u64 << self.cookie_bits) - 1;
        (0..=low)
            .map(|p| {
                (
                    (self.cookie & !low & self.cookie_mask) | p,
                    self.cookie_mask | low,
                )
            })
            .collect()
    }
}

fn installed_groups<'a>(services: impl IntoIterator<Item = &'a ServiceView>) -> Vec<u32> {
    services
        .into_iter()
        .flat_map(|s| s.groups.iter())
        .filter(|g| g.installed)
        .map(|g| g.id)
        .collect()
}

/// Reads the counters of every flow of `tables` and of every group from the
/// bridge at `target` (`unix:<run_dir>/<bridge>.mgmt`), within `timeout` all
/// told, connecting included: three requests, each answered whole.
pub async fn read(
    target: &str,
    tables: &[u8],
    timeout: Duration,
) -> Result<SwitchCounters, OpenFlowError> {
    let mut switch = NativeBackend::new(target)?.with_timeouts(timeout, timeout);
    Ok(shape(switch.counters(tables).await?))
}

/// Reads the counters `plan` says, a part at a time, each part waiting while
/// `busy` says a bundle is under way (see the module doc); within `timeout`
/// all told, connecting and waiting included.
pub async fn read_in_parts(
    target: &str,
    plan: &Plan,
    busy: Option<watch::Receiver<bool>>,
    timeout: Duration,
) -> Result<SwitchCounters, OpenFlowError> {
    let mut switch = NativeBackend::new(target)?.with_timeouts(timeout, timeout);
    let raw = switch
        .counters_in_parts(
            plan.table,
            &plan.flow_parts(),
            &plan.groups,
            GROUPS_PER_PART,
            busy,
            MAX_PAUSE,
            MAX_PAUSES,
        )
        .await?;
    Ok(shape(raw))
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
    fn a_plan_cuts_the_flows_into_parts_of_about_flows_per_part() {
        let bits = |flows| Plan::new(40, flows, Vec::new()).cookie_bits;
        assert_eq!(bits(0), 0);
        assert_eq!(bits(FLOWS_PER_PART), 0);
        assert_eq!(bits(FLOWS_PER_PART + 1), 1);
        // 10k Services: 40 parts' worth, so 64 parts of ~160.
        assert_eq!(bits(10_030), 6);
        assert_eq!(bits(30_090), 7);
        assert_eq!(bits(usize::MAX / 2), MAX_COOKIE_BITS);
    }

    #[test]
    fn flow_parts_cover_the_cookies_asked_for_once() {
        let plan = Plan {
            cookie_bits: 2,
            ..Plan::new(40, 0, Vec::new())
        };
        assert_eq!(plan.flow_parts(), [(0, 3), (1, 3), (2, 3), (3, 3)]);
        let one = Plan {
            cookie: 0x0003_0500_0000_abcd,
            cookie_mask: Cookie::SELECT_MASK,
            ..Plan::new(40, 0, Vec::new())
        };
        assert_eq!(
            one.flow_parts(),
            [(0x0000_0500_0000_abcd, Cookie::SELECT_MASK)]
        );
        for c in [0u64, 1, 0xdead_beef, u64::MAX] {
            let matching = plan
                .flow_parts()
                .iter()
                .filter(|(v, m)| c & m == *v)
                .count();
            assert_eq!(matching, 1, "{c:#x}");
        }
    }

    /// The compiler's Service cookies are hashes of the Service's name: their
    /// low bits cut 10k Services into even parts.
    #[test]
    fn service_cookies_spread_evenly_over_their_low_bits() {
        use crate::compile::pipeline::cookie::{Category, Cookie};
        let bits = 6;
        let mut parts = vec![0usize; 1 << bits];
        for i in 0..10_000 {
            let c = Cookie::new(Category::Service, &format!("ns/svc-{i}")).value(7);
            parts[(c & ((1 << bits) - 1)) as usize] += 1;
        }
        let mean = 10_000 / parts.len();
        let (min, max) = (parts.iter().min().unwrap(), parts.iter().max().unwrap());
        assert!(*max < mean * 3 / 2 && *min > mean / 2, "{parts:?}");
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
