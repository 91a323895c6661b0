//! The connection against a real `ovs-vswitchd` (a private one, started by
//! the lab's fixture in a namespace of its own): a bundle of flows and select
//! groups goes in, a dump reads back what the encodings say it will, the
//! switch's refusal names the op, and `ovs-ofctl` as an independent reader
//! agrees. Needs root and Open vSwitch; a missing OVS fails, it does not skip.

use std::collections::BTreeSet;

use dpu_lab::ovs::OvsInstance;
use openflow::codec::{Change, FlowMod, GroupMod, OFPG_ALL};
use openflow::ir::{Actions, Match};
use openflow::{Bundle, Connection, Error};

#[path = "common/ir_text.rs"]
mod ir_text;
use ir_text::{hash_fields, parse_actions, parse_match};

#[tokio::test]
async fn flows_and_groups_go_in_as_one_bundle_and_read_back() {
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().expect("a private OVS (needs root and ovs-vswitchd)");
    ovs.add_bridge("br-of").unwrap();
    let target = ovs.mgmt("br-of");
    let mut conn = Connection::connect(target.strip_prefix("unix:").unwrap())
        .await
        .unwrap();

    // A small group, and one too large for one message (950 buckets of 64
    // bytes: INSERT_BUCKETs), whose description still fits one reply.
    let hash = hash_fields(&["ip_src", "tcp_src=63"]);
    let small_actions = [
        parse_actions("set_field:0xa00010b->reg3,resubmit(,45)"),
        parse_actions("ct(commit,zone=5,nat(dst=10.0.1.11:8080)),output:1"),
    ];
    let small = GroupMod {
        id: 1,
        hash_fields: &hash,
        buckets: vec![(7, &small_actions[0]), (3, &small_actions[1])],
    };
    let big_actions: Vec<Actions> = (0..950u32)
        .map(|i| {
            parse_actions(&format!(
                "set_field:{:#x}->reg3,set_field:0x35->reg4,resubmit(,45)",
                0x0a00_0000 + i
            ))
        })
        .collect();
    let big = GroupMod {
        id: 4242,
        hash_fields: &hash,
        buckets: (0..950u32)
            .map(|i| (i * 4_000_037 + 11, &big_actions[i as usize]))
            .collect(),
    };
    assert!(big.split().unwrap().len() > 1);
    let flows = [
        (0, 100, 0x10, "ip,nw_dst=10.96.0.1", "group:1"),
        (0, 90, 0x11, "tcp6,ipv6_dst=fd00::/64,tp_dst=443", "group:4242"),
        (10, 5, 0x12, "ip", "learn(table=41,idle_timeout=300,priority=100,cookie=0x99,eth_type=0x800,NXM_OF_IP_SRC[],load:NXM_NX_REG3[]->NXM_NX_REG3[]),resubmit(,45)"),
        (45, 1, 0x13, "reg0=0x1/0xff", "move:NXM_NX_REG0[0..7]->NXM_NX_REG1[8..15],goto_table:46"),
    ];
    let parsed: Vec<(Match, Actions)> = flows
        .iter()
        .map(|(_, _, _, m, a)| (parse_match(m), parse_actions(a)))
        .collect();
    let mut bundle = Bundle::new();
    bundle.push(small.clone()).unwrap();
    bundle.push(big.clone()).unwrap();
    for ((table, priority, cookie, _, _), (m, a)) in flows.iter().zip(&parsed) {
        bundle
            .push(FlowMod::add(*table, *priority, *cookie, m, a))
            .unwrap();
    }
    assert_eq!(bundle.ops(), 2 + flows.len());
    assert!(conn.apply(&mut bundle).await.unwrap().is_empty());

    let dump = conn.dump().await.unwrap();
    let got: BTreeSet<(u8, u16, u64, Vec<u32>)> = dump
        .flows
        .iter()
        .map(|f| (f.table, f.priority, f.cookie, f.groups.clone()))
        .collect();
    let want: BTreeSet<(u8, u16, u64, Vec<u32>)> = flows
        .iter()
        .zip(&parsed)
        .map(|((t, p, c, _, _), (_, a))| (*t, *p, *c, a.groups().collect()))
        .collect();
    assert_eq!(got, want);
    assert!(dump.oversized_groups.is_empty());
    assert_eq!(dump.groups.len(), 2);
    for g in [&small, &big] {
        let read = dump.groups.iter().find(|d| d.id == g.id).unwrap();
        assert_eq!(
            read,
            &g.desc().unwrap(),
            "group {} reads back different",
            g.id
        );
    }

    // An independent reader agrees.
    assert_eq!(ovs.dump_flows("br-of").unwrap().len(), flows.len());
    assert_eq!(ovs.dump_groups("br-of").unwrap().len(), 2);

    // Counters of one table, and each group's buckets in the switch's order.
    let counters = conn.counters(&[0]).await.unwrap();
    assert_eq!(counters.flows.len(), 2);
    assert!(counters
        .flows
        .iter()
        .all(|f| f.packets == 0 && f.table == 0));
    assert_eq!(counters.bucket_ids[&1], [7, 3]);
    assert_eq!(counters.bucket_ids[&4242].len(), 950);
    let stats = conn.group_stats().await.unwrap();
    let sizes: BTreeSet<(u32, usize)> = stats.iter().map(|g| (g.id, g.buckets.len())).collect();
    assert_eq!(sizes, BTreeSet::from([(1, 2), (4242, 950)]));

    // The same a part at a time: flows by the low bits of their cookies
    // (0x10 and 0x11 fall in different halves), groups by id; a group the
    // switch does not have is left out.
    let cookies = |f: &[openflow::codec::FlowCounts]| -> BTreeSet<u64> {
        f.iter().map(|f| f.cookie).collect()
    };
    let even = conn.flow_counts(0, 0, 1).await.unwrap();
    let odd = conn.flow_counts(0, 1, 1).await.unwrap();
    assert_eq!(cookies(&even), BTreeSet::from([0x10]));
    assert_eq!(cookies(&odd), BTreeSet::from([0x11]));
    assert_eq!(
        cookies(&conn.flow_counts(0, 0x11, u64::MAX).await.unwrap()),
        BTreeSet::from([0x11])
    );
    assert_eq!(conn.flow_counts(10, 0, 0).await.unwrap().len(), 1);
    let part = conn.group_counters(&[4242, 77, 1]).await.unwrap();
    assert_eq!(
        part.groups
            .iter()
            .map(|g| (g.id, g.buckets.len()))
            .collect::<Vec<_>>(),
        [(4242, 950), (1, 2)]
    );
    assert_eq!(part.bucket_ids, counters.bucket_ids);
    assert!(conn.group_counters(&[]).await.unwrap().groups.is_empty());

    // A bundle the switch refuses names the op and leaves everything as it was.
    let (m, drop) = (parse_match("ip"), Actions::drop());
    let to_nowhere = Actions::new().group(999);
    let mut refused = Bundle::new();
    refused.push(FlowMod::add(0, 5, 0x20, &m, &drop)).unwrap();
    refused
        .push(FlowMod::add(0, 6, 0x21, &m, &to_nowhere))
        .unwrap();
    let e = conn.apply(&mut refused).await.unwrap_err();
    let Error::Bundle(why) = &e else {
        panic!("{e}")
    };
    assert_eq!(why.refusals.first[0].error, "OFPBAC_BAD_OUT_GROUP", "{e}");
    assert_eq!(why.refusals.first[0].op, Some(1), "{e}");
    assert_eq!(conn.dump().await.unwrap().flows.len(), flows.len());

    // The same flow outside a bundle: the error names the message's xid.
    let xid = conn.next_xid();
    let mut out = Change::from(FlowMod::add(0, 6, 0x21, &m, &to_nowhere))
        .encode(xid)
        .unwrap()
        .remove(0);
    let barrier = conn.next_xid();
    out.extend_from_slice(&openflow::codec::barrier_request(barrier));
    let mut error = None;
    conn.exchange(&out, |msg| {
        if msg[1] == openflow::codec::msg_type::ERROR {
            error = Some(openflow::codec::parse_error(msg).unwrap());
        }
        Ok(if msg[1] == openflow::codec::msg_type::BARRIER_REPLY {
            openflow::Step::Done
        } else {
            openflow::Step::More
        })
    })
    .await
    .unwrap();
    let error = error.expect("an error before the barrier reply");
    assert_eq!(error.name(), "OFPBAC_BAD_OUT_GROUP");
    assert_eq!(error.failed_xid(), Some(xid));

    // Everything goes: every flow, every group.
    let mut clear = Bundle::new();
    clear.push(FlowMod::delete_by_cookie(None, 0, 0)).unwrap();
    clear.push(Change::DeleteGroup(OFPG_ALL)).unwrap();
    conn.apply(&mut clear).await.unwrap();
    let dump = conn.dump().await.unwrap();
    assert!(dump.flows.is_empty() && dump.groups.is_empty(), "{dump:?}");
}
