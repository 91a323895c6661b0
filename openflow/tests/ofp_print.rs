//! The codec against OVS itself, with `ovs-ofctl` as the oracle.
//!
//! - What `ovs-ofctl ofp-print` decodes from the codec's bytes must equal what
//!   `ovs-ofctl parse-flow`/`parse-group` make of the same text: random valid
//!   flows, a group split over several messages, deletes, and every control
//!   message the connection sends.
//! - Fuzz: random text never panics the parser or the encoder; random and
//!   mutated bytes never panic the decoders.
//!
//! These tests need `ovs-ofctl`; a missing one fails them.

use openflow::codec::{
    self, BucketDesc, BundleCtrl, Change, FlowMod, GroupDesc, GroupMod, GroupType, Header,
};
use openflow::ir::Actions;
use proptest::prelude::*;
use test_support::props::config;

#[path = "common/ir_text.rs"]
mod ir_text;
use ir_text::{hash_fields, parse_actions, parse_match};

#[path = "common/ofctl.rs"]
mod ofctl;
use ofctl::{encode_text, flow_mod_line, group_body, ofctl, ofp_print, ofp_print_raw, unhex};

#[test]
fn a_group_too_big_for_one_message_becomes_insert_buckets() {
    let buckets: Vec<String> = (0..1500u32)
        .map(|i| {
            format!(
                "set_field:{:#x}->reg3,set_field:0x1f90->reg4,resubmit(,45)",
                0x0a00_0000 + i
            )
        })
        .collect();
    let actions: Vec<Actions> = buckets.iter().map(|b| parse_actions(b)).collect();
    // Ids spread out, up to the largest there may be.
    let id = |i: u32| 0xffff_fefe - (1499 - i) * 2_000_003;
    let hash = hash_fields(&["ip_src", "ip_dst", "tcp_src", "tcp_dst"]);
    let g = GroupMod {
        id: 77,
        hash_fields: &hash,
        buckets: (0..1500u32)
            .map(|i| (id(i), &actions[i as usize]))
            .collect(),
    };
    let msgs = Change::from(g).encode(5).unwrap();
    assert!(msgs.len() >= 2, "{} messages", msgs.len());
    let mut seen = 0;
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.len() < 65_536);
        let printed = ofp_print(m);
        let body = group_body(&printed);
        if i == 0 {
            assert!(printed.contains("ADD_OR_MOD group_id=77"), "{printed}");
            assert!(body.contains("selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)"));
        } else {
            assert!(
                printed.contains("INSERT_BUCKET command_bucket_id:last,group_id=77"),
                "{printed}"
            );
        }
        for b in body.split(",bucket=").skip(1) {
            assert_eq!(
                b,
                format!("bucket_id:{},actions={}", id(seen as u32), buckets[seen]),
                "message {i}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, buckets.len());
}

#[test]
fn a_group_decodes_in_ovs_as_its_text_parses() {
    let hash = hash_fields(&["ip_src", "ip_dst", "tcp_src=63", "tcp_dst"]);
    let actions = [
        parse_actions("set_field:0xa00010b->reg3,set_field:0x1f90->reg4,resubmit(,45)"),
        parse_actions("set_field:0xfd000001000000000000000000000012->xxreg2,ct(commit,zone=5,nat(src=10.0.0.1)),group:4"),
    ];
    let g = GroupMod {
        id: 9,
        hash_fields: &hash,
        buckets: vec![(13696125, &actions[0]), (1716094131, &actions[1])],
    };
    let spec = format!(
        "group_id=9,type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_src=63,tcp_dst),\
         bucket=bucket_id:13696125,actions={},bucket=bucket_id:1716094131,actions={}",
        actions[0], actions[1]
    );
    let (ok, parsed) = ofctl(&["parse-group", &spec]);
    assert!(ok, "parse-group: {parsed}");
    let msgs = Change::from(g).encode(1).unwrap();
    assert_eq!(msgs.len(), 1);
    let printed = ofp_print(&msgs[0]);
    assert!(printed.contains("ADD_OR_MOD group_id="), "{printed}");
    assert_eq!(group_body(&printed), group_body(&parsed));
}

#[test]
fn deletes_decode_in_ovs() {
    let m = parse_match("reg0=0x1,tcp,nw_dst=10.96.0.20,tp_dst=443");
    let encode = |c: Change| c.encode(3).unwrap().remove(0);
    assert_eq!(
        ofp_print(&encode(FlowMod::delete_strict(40, 100, &m).into())).trim_end(),
        "OFPT_FLOW_MOD (OF1.5) (xid=0x3): DEL_STRICT table:40 priority=100,tcp,reg0=0x1,nw_dst=10.96.0.20,tp_dst=443 actions=drop"
    );
    let by_cookie =
        FlowMod::delete_by_cookie(Some(41), 0x0300_0500_0000_0000, 0xffff_ff00_0000_0000);
    assert_eq!(
        ofp_print(&encode(by_cookie.into())).trim_end(),
        "OFPT_FLOW_MOD (OF1.5) (xid=0x3): DEL table:41 cookie:0x300050000000000/0xffffff0000000000 actions=drop"
    );
    let all_tables = FlowMod::delete_by_cookie(None, 7, u64::MAX);
    assert_eq!(
        ofp_print(&encode(all_tables.into())).trim_end(),
        "OFPT_FLOW_MOD (OF1.5) (xid=0x3): DEL table:255 cookie:0x7/0xffffffffffffffff actions=drop"
    );
    let printed = ofp_print(&encode(Change::DeleteGroup(2147483649)));
    assert!(printed.contains("DEL group_id=2147483649"), "{printed}");
}

#[test]
fn control_messages_decode_in_ovs() {
    assert_eq!(
        ofp_print(&codec::hello(7)),
        "OFPT_HELLO (OF1.5) (xid=0x7):\n version bitmap: 0x06\n"
    );
    assert!(ofp_print(&codec::echo_request(8, b"ping"))
        .starts_with("OFPT_ECHO_REQUEST (OF1.5) (xid=0x8): 4 bytes of payload"));
    assert!(ofp_print(&codec::echo_reply(8, b"ping"))
        .starts_with("OFPT_ECHO_REPLY (OF1.5) (xid=0x8): 4 bytes of payload"));
    assert_eq!(
        ofp_print(&codec::barrier_request(9)),
        "OFPT_BARRIER_REQUEST (OF1.5) (xid=0x9):\n"
    );
    assert_eq!(
        ofp_print(&codec::features_request(3)),
        "OFPT_FEATURES_REQUEST (OF1.5) (xid=0x3):\n"
    );
    for (ctrl, name) in [
        (BundleCtrl::Open, "OPEN_REQUEST"),
        (BundleCtrl::Commit, "COMMIT_REQUEST"),
        (BundleCtrl::Discard, "DISCARD_REQUEST"),
    ] {
        assert_eq!(
            ofp_print(&codec::bundle_control(5, 0x11, ctrl, 3)),
            format!("OFPT_BUNDLE_CONTROL (OF1.5) (xid=0x5):\n bundle_id=0x11 type={name} flags=atomic ordered\n")
        );
    }
    let m = parse_match("in_port=7");
    let a = parse_actions("set_field:0x1->reg0,goto_table:10");
    let inner = Change::from(FlowMod::add(0, 100, 0x42, &m, &a))
        .encode(1)
        .unwrap()
        .remove(0);
    let add = codec::bundle_add(6, 0x11, 3, &inner);
    let printed = ofp_print(&add);
    assert!(
        printed.starts_with(
            "OFPT_BUNDLE_ADD_MESSAGE (OF1.5) (xid=0x6):\n bundle_id=0x11 flags=atomic ordered\nOFPT_FLOW_MOD (OF1.5) (xid=0x6): ADD priority=100,in_port=7 cookie:0x42 actions=set_field:0x1->reg0,goto_table:10"
        ),
        "{printed}"
    );
    assert_eq!(
        ofp_print(&codec::flow_desc_request(10)),
        "OFPST_FLOW request (OF1.5) (xid=0xa):\n"
    );
    assert_eq!(
        ofp_print(&codec::group_desc_request(11)),
        "OFPST_GROUP_DESC request (OF1.5) (xid=0xb): group_id=ALL\n"
    );
}

/// A FLOW_DESC body (one flow: table 3, priority 100, cookie 0x42, group:5).
const FLOW_DESC_BODY: &str = "0060 0000 03 00 0064 0000 0000 0000 0000 0000000000000042
    0001 000a 80000a020800 000000000000
    0000 0014 00000000000000000000000000000000 00000000
    0004 0020 00000000 00160008 00000005 00000010 00000007 0000 000000000000";
/// A GROUP_DESC body (one select group, one bucket, hash on ip_src).
const GROUP_DESC_BODY: &str = "0060 01 00 00000001 0020 000000000000
    0020 0010 00000000 00190010 00010604 0a00010b 00000000 0000 0008 0001 0000
    ffff 0030 0000154d 00000001 00000000 68617368000000000000000000000000 0000000000000000 80001604 ffffffff";

#[test]
fn the_decoders_read_flow_and_group_desc_bodies() {
    let flows = codec::parse_flow_desc_body(&unhex(FLOW_DESC_BODY)).unwrap();
    assert_eq!(
        flows,
        vec![codec::FlowDesc {
            table: 3,
            priority: 100,
            cookie: 0x42,
            groups: vec![5]
        }]
    );
    let groups = codec::parse_group_desc_body(&unhex(GROUP_DESC_BODY)).unwrap();
    assert_eq!(
        groups,
        [GroupDesc {
            id: 1,
            group_type: GroupType::Select,
            selection_method: Some("hash".into()),
            hash_fields: vec!["ip_src".into()],
            properties: vec![],
            buckets: vec![BucketDesc {
                id: 0,
                properties: vec![],
                actions: unhex("00190010 00010604 0a00010b 00000000"),
            }],
        }]
    );
    // What the group's own encoding says it reads back as; a group that
    // differs in its actions, a bucket id or a hash field does not.
    let hash = hash_fields(&["ip_src"]);
    let a = parse_actions("set_field:0xa00010b->reg3");
    let g = GroupMod {
        id: 1,
        hash_fields: &hash,
        buckets: vec![(0, &a)],
    };
    assert_eq!(g.desc().unwrap(), groups[0]);
    let other_actions = parse_actions("set_field:0xa00010c->reg3");
    let other_hash = hash_fields(&["ip_dst"]);
    for other in [
        GroupMod {
            buckets: vec![(0, &other_actions)],
            ..g.clone()
        },
        GroupMod {
            buckets: vec![(1, &a)],
            ..g.clone()
        },
        GroupMod {
            hash_fields: &other_hash,
            ..g.clone()
        },
        GroupMod {
            buckets: vec![(0, &a), (1, &a)],
            ..g.clone()
        },
    ] {
        assert_ne!(other.desc().unwrap(), groups[0]);
    }
}

// ---- fuzz -------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_text_never_panics(m in "\\PC{0,80}", a in "\\PC{0,120}") {
        let _ = encode_text(&m, &a);
        if let Ok(actions) = a.parse::<Actions>() {
            let hash = hash_fields(&["ip_src"]);
            let g = GroupMod { id: 1, hash_fields: &hash, buckets: vec![(0, &actions)] };
            let _ = Change::from(g.clone()).encode(1);
            let _ = g.desc();
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = codec::parse_error(&bytes);
        let _ = codec::parse_multipart(&bytes);
        let _ = codec::parse_bundle_reply(&bytes);
        let _ = codec::parse_flow_desc_body(&bytes);
        let _ = codec::parse_group_desc_body(&bytes);
        let _ = codec::negotiate(&bytes);
        let _ = Header::parse(&bytes);
        if let Ok(e) = codec::parse_error(&bytes) {
            let _ = (e.name(), e.failed_xid());
        }
    }

    #[test]
    fn mutated_replies_never_panic_the_decoders(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        for body in [FLOW_DESC_BODY, GROUP_DESC_BODY] {
            let mut b = unhex(body);
            for (i, v) in &edits {
                let at = i.index(b.len());
                b[at] = *v;
            }
            let _ = codec::parse_flow_desc_body(&b);
            let _ = codec::parse_group_desc_body(&b);
            let n = cut.index(b.len() + 1);
            let _ = codec::parse_flow_desc_body(&b[..n]);
            let _ = codec::parse_group_desc_body(&b[..n]);
        }
    }
}

/// Random valid registers, addresses (either family), ports and actions.
fn valid_flow() -> impl Strategy<Value = (String, String)> {
    let mac = prop::array::uniform6(any::<u8>()).prop_map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    });
    let v4 = any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string());
    let v6 = any::<[u8; 16]>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string());
    let proto = prop::sample::select(vec!["tcp", "udp", "sctp"]);
    let regs = (
        0u8..16,
        0u8..16,
        0usize..32,
        0usize..32,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    );
    let addrs = (
        any::<bool>(),
        v4.clone(),
        v4,
        v6.clone(),
        v6,
        0u8..=128,
        mac,
    );
    let rest = (
        proto,
        any::<u16>(),
        1u16..0xffff,
        any::<u128>(),
        0u8..4,
        0u16..0xffff,
    );
    (regs, addrs, rest).prop_map(
        |((r, lr, lo, w, val, mask, lv), (six, a4, b4, a6, b6, plen, mac), (proto, port, nport, x, xr, zone))| {
            let hi = (lo + w).min(31);
            let bits = hi - lo + 1;
            let lv = if bits == 32 { lv } else { lv & ((1u32 << bits) - 1) };
            let (l3, dst, src_set, nat) = if six {
                (
                    format!("{proto}6,ipv6_dst={a6}/{plen}"),
                    "ipv6_src",
                    b6.clone(),
                    format!("[{b6}]:{nport}"),
                )
            } else {
                (
                    format!("{proto},nw_dst={a4}/{}", plen % 33),
                    "ip_src",
                    b4.clone(),
                    format!("{b4}:{nport}"),
                )
            };
            let m = format!(
                "reg{r}={:#x}/{mask:#x},in_port={},dl_src={mac},{l3},tp_dst={port}",
                val & mask,
                // Port numbers from 0xff00 up are reserved (OFPP_MAX).
                val % 0xfeff + 1
            );
            let a = format!(
                "set_field:{val:#x}->reg{r},load:{lv:#x}->NXM_NX_REG{lr}[{lo}..{hi}],set_field:{x:#x}->xxreg{xr},\
                 move:NXM_NX_REG{lr}[{lo}..{hi}]->NXM_NX_REG{r}[{lo}..{hi}],set_field:{src_set}->{dst},\
                 ct(commit,table=50,zone=NXM_NX_REG{r}[0..15],nat(dst={nat}),exec(load:{lv:#x}->NXM_NX_CT_MARK[{lo}..{hi}])),\
                 ct(zone={zone},nat),push:NXM_NX_REG{lr}[],pop:NXM_NX_REG{r}[],dec_ttl,resubmit(,{port8}),output:{out}",
                port8 = port % 254,
                out = nport % 0xfeff + 1,
            );
            (m, a)
        },
    )
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn random_valid_flows_decode_in_ovs((m, a) in valid_flow()) {
        let msgs = encode_text(&m, &a).unwrap_or_else(|e| panic!("{e}"));
        let (ok, printed) = ofp_print_raw(&msgs[0]);
        prop_assert!(ok, "{m} actions={a}\n{printed}");
        // And OVS reads back what its own parser makes of the text.
        let (parsed_ok, parsed) = ofctl(&["parse-flow", &format!("table=1,priority=1,cookie=0x1,{m},actions={a}")]);
        prop_assert!(parsed_ok, "{parsed}");
        let want = parsed
            .lines()
            .find(|l| l.starts_with("OFPT_FLOW_MOD"))
            .map(flow_mod_line);
        prop_assert_eq!(Some(flow_mod_line(&printed)), want);
    }
}
