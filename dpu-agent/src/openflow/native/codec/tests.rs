//! Unit tests of the codec against bytes OVS 3.1 itself wrote
//! (`ovs-ofctl -O OpenFlow15 -mmmmm parse-flow/parse-group`).

use super::*;
use crate::flows::{FlowBody, FlowKey};
use crate::pipeline::cookie::{Category, Cookie};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn group(id: u32, fields: Vec<&'static str>, buckets: &[&str]) -> Group {
    Group {
        id,
        hash_fields: fields,
        buckets: Bucket::numbered(buckets.iter().copied()),
        owner: Cookie::new(Category::Service, "s"),
        learns: false,
    }
}

#[test]
fn hello_offers_only_1_5_and_negotiation_reads_bitmaps() {
    let h = hello(7);
    assert_eq!(h, unhex("06 00 00 10 00 00 00 07 00 01 00 08 00 00 00 40"));
    assert_eq!(negotiate(&h), Some(6));
    // OVS offering 1.0 to 1.5 (bits 1..6).
    assert_eq!(
        negotiate(&unhex("06 00 00 10 00 00 00 01 00 01 00 08 00 00 00 7e")),
        Some(6)
    );
    // Bitmap without 1.5, even under a 1.5 header.
    assert_eq!(
        negotiate(&unhex("06 00 00 10 00 00 00 01 00 01 00 08 00 00 00 1e")),
        None
    );
    // No bitmap: the header version decides.
    assert_eq!(negotiate(&unhex("06 00 00 08 00 00 00 01")), Some(6));
    assert_eq!(negotiate(&unhex("04 00 00 08 00 00 00 01")), None);
    // Not a HELLO, or too short.
    assert_eq!(negotiate(&unhex("06 02 00 08 00 00 00 01")), None);
    assert_eq!(negotiate(&[6, 0, 0]), None);
    // A bitmap element with a bad length falls back to the header.
    assert_eq!(
        negotiate(&unhex("06 00 00 10 00 00 00 01 00 01 00 40 00 00 00 40")),
        Some(6)
    );
}

#[test]
fn group_bytes_equal_what_ovs_writes() {
    // parse-group 'group_id=1,type=select,selection_method=hash,
    // fields(ip_src,ip_dst,tcp_src,tcp_dst),bucket=bucket_id:0,actions=
    // set_field:0xa00010b->reg3,set_field:0x1f90->reg4,resubmit(,45),
    // bucket=bucket_id:1,actions=set_field:0xfd000001000000000000000000000012->xxreg2,resubmit(,43)'
    let ovs = unhex(
        "06 0f 00 d8 00 00 00 01 00 00 01 00 00 00 00 01
         00 78 00 00 ff ff ff ff 00 40 00 30 00 00 00 00
         00 19 00 10 00 01 06 04 0a 00 01 0b 00 00 00 00
         00 19 00 10 00 01 08 04 00 00 1f 90 00 00 00 00
         ff ff 00 10 00 00 23 20 00 0e ff f8 2d 00 00 00
         00 00 00 08 00 01 00 00 00 38 00 28 00 00 00 01
         00 19 00 18 00 01 e2 10 fd 00 00 01 00 00 00 00
         00 00 00 00 00 00 00 12 ff ff 00 10 00 00 23 20
         00 0e ff f8 2b 00 00 00 00 00 00 08 00 01 00 00
         ff ff 00 44 00 00 15 4d 00 00 00 01 00 00 00 00
         68 61 73 68 00 00 00 00 00 00 00 00 00 00 00 00
         00 00 00 00 00 00 00 00 80 00 16 04 ff ff ff ff
         80 00 18 04 ff ff ff ff 80 00 1a 02 ff ff 80 00
         1c 02 ff ff 00 00 00 00",
    );
    let g = group(
        1,
        vec!["ip_src", "ip_dst", "tcp_src", "tcp_dst"],
        &[
            "set_field:0xa00010b->reg3,set_field:0x1f90->reg4,resubmit(,45)",
            "set_field:0xfd000001000000000000000000000012->xxreg2,resubmit(,43)",
        ],
    );
    let msgs = encode_op(&BundleOp::PutGroup(g), 1).unwrap();
    assert_eq!(msgs.len(), 1);
    // OVS's own tool says ADD_OR_MOD as 0x0000 only when it knows the group is new;
    // on the wire of a bundle it sends 0x8000.
    let mut ours = msgs[0].clone();
    assert_eq!(&ours[8..10], &[0x80, 0x00]);
    ours[8] = 0;
    assert_eq!(hex(&ours), hex(&ovs));
}

#[test]
fn actions_equal_what_ovs_writes() {
    let cases = [
        (
            "move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[]",
            "001c0018008000000000000080003410800036100000 0000",
        ),
        (
            "set_field:0x64->tun_id,set_field:192.168.50.2->tun_dst",
            "00190010 80004c08 0000000000000064 00190010 00014004 c0a83202 00000000",
        ),
        (
            "set_field:0xe0000000->nd_reserved,set_field:2->nd_options_type,set_field:02:d9:00:00:00:01->nd_sll,set_field:136->icmpv6_type",
            "00190010 10000204 e0000000 00000000 00190010 10000401 02000000 00000000
             00190010 80004006 02d900000001 0000 00190010 80003a01 88000000 00000000",
        ),
        (
            "push:NXM_OF_ARP_TPA[],pop:NXM_OF_ARP_SPA[],in_port,output:7,group:5,load:0->NXM_OF_IN_PORT[],load:0x1->NXM_NX_REG2[0]",
            "ffff0018 00002320 001b 0000 00002204 0020 000000000000
             ffff0018 00002320 001c 0000 00002004 0020 000000000000
             00000010 fffffff8 0000 000000000000
             00000010 00000007 0000 000000000000
             00160008 00000005
             00190010 00000002 0000 000000000000
             00190010 00010508 00000001 00000001",
        ),
        (
            "dec_ttl,ct(table=40,zone=NXM_NX_REG0[0..15],nat),ct(commit,zone=5,nat(src=10.0.1.1))",
            "00180008 00000000
             ffff0028 00002320 0023 0000 00010004 000f 28 000000 0000
             ffff0010 00002320 0024 0000 0000 0000
             ffff0030 00002320 0023 0001 00000000 0005 ff 000000 0000
             ffff0018 00002320 0024 0000 0001 0001 0a000101 00000000",
        ),
        (
            "ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=10.0.1.11:8080),exec(move:NXM_NX_REG5[0..7]->NXM_NX_CT_LABEL[96..103],load:0x3->NXM_NX_CT_LABEL[96..103]))",
            "ffff0070 00002320 0023 0001 00010004 000f 32 000000 0000
             ffff0018 00002320 0024 0000 0002 0011 0a00010b 1f90 0000
             001c0018 0008 0000 0060 0000 00010a04 0001d810 00000000
             00190028 0001d920 00000003000000000000000000000000 000000ff000000000000000000000000",
        ),
        (
            "ct(commit,nat(dst=[fd00:1::11]:8080))",
            "ffff0040 00002320 0023 0001 00000000 0000 ff 000000 0000
             ffff0028 00002320 0024 0000 0002 0014 fd000001000000000000000000000011 1f90 000000000000",
        ),
        (
            "learn(table=41,idle_timeout=300,priority=100,cookie=0x758e9b12c80,NXM_NX_REG0[],eth_type=0x800,nw_proto=6,NXM_OF_IP_SRC[],NXM_OF_IP_DST[],NXM_OF_TCP_DST[],load:NXM_NX_REG3[]->NXM_NX_REG3[],load:NXM_NX_REG4[]->NXM_NX_REG4[],load:0x1->NXM_NX_REG2[0]),resubmit(,45)",
            "ffff0098 00002320 0010 012c 0000 0064 00000758e9b12c80 0000 29 00 0000 0000
             0020 00010004 0000 00010004 0000
             2010 0800 00000602 0000
             2008 0006 00000c01 0000
             0020 00000e04 0000 00000e04 0000
             0020 00001004 0000 00001004 0000
             0010 00001402 0000 00001402 0000
             0820 00010604 0000 00010604 0000
             0820 00010804 0000 00010804 0000
             2801 0001 00010404 0000
             000000000000
             ffff0010 00002320 000e fff8 2d 000000",
        ),
    ];
    for (text, want) in cases {
        let got = actions::encode_actions(text).unwrap();
        assert_eq!(hex(&got.actions), hex(&unhex(want)), "{text}");
    }
}

#[test]
fn flow_mods_carry_table_priority_cookie_and_instructions() {
    let op = BundleOp::AddFlow {
        key: FlowKey {
            table: 3,
            priority: 100,
            matches: "reg0=0x1,ip,nw_dst=10.0.0.1".into(),
        },
        body: FlowBody {
            actions: "set_field:0x5->reg3,goto_table:4".into(),
            cookie: Cookie::new(Category::Service, "s"),
        },
        cookie: 5,
    };
    let m = &encode_op(&op, 9).unwrap()[0];
    let h = Header::parse(m).unwrap();
    assert_eq!((h.msg_type, h.length as usize, h.xid), (14, m.len(), 9));
    assert_eq!(&m[8..16], &5u64.to_be_bytes());
    assert_eq!((m[24], m[25]), (3, 0));
    assert_eq!(&m[30..32], &100u16.to_be_bytes());
    assert!(m.ends_with(&[0, 1, 0, 8, 4, 0, 0, 0]));
    assert_eq!(m.len() % 8, 0);
}

#[test]
fn bad_text_is_an_error_naming_the_token() {
    for (matches, actions, token) in [
        ("reg0=0x1,nw_dst=10.0.0.1", "drop", "ip_dst"),
        ("reg99=1", "drop", "reg99"),
        ("ip,tp_dst=80", "drop", "tp_dst"),
        ("ip", "set_field:1->nosuch", "nosuch"),
        ("ip", "output:x", "output:x"),
        ("ip", "move:NXM_NX_REG0[0..3]->NXM_NX_REG1[0..4]", "move:"),
        ("ip", "load:0x10->NXM_NX_REG0[0..3]", "load:"),
        ("ip", "frobnicate", "frobnicate"),
        ("ip", "goto_table:1,output:1", "output:1"),
        ("ip", "ct(commit,nat(dst=1.2.3.4:99999))", "99999"),
        ("ct_state=+new+bogus", "drop", "bogus"),
        ("ip,ipv6", "drop", "ipv6"),
    ] {
        let op = BundleOp::AddFlow {
            key: FlowKey {
                table: 0,
                priority: 1,
                matches: matches.into(),
            },
            body: FlowBody {
                actions: actions.into(),
                cookie: Cookie::new(Category::Service, "s"),
            },
            cookie: 0,
        };
        let e = encode_op(&op, 1).unwrap_err().to_string();
        assert!(e.contains(token), "{matches} {actions}: {e}");
    }
}

#[test]
fn error_messages_name_themselves_and_the_failed_xid() {
    let inner = flow_desc_request(0x42);
    let mut body = vec![0, 2, 0, 15];
    body.extend_from_slice(&inner[..16]);
    let e = parse_error(&message(msg_type::ERROR, 1, &body)).unwrap();
    assert_eq!(e.name(), "OFPBAC_BAD_SET_ARGUMENT");
    assert_eq!(e.failed_xid(), Some(0x42));
    let mut body = vec![0xff, 0xff, 0, 2, 0, 0, 0x23, 0x20];
    body.extend_from_slice(&inner[..8]);
    let e = parse_error(&message(msg_type::ERROR, 1, &body)).unwrap();
    assert_eq!(e.name(), "NXBRC_NXM_INVALID");
    assert_eq!(e.failed_xid(), Some(0x42));
    let e = parse_error(&message(msg_type::ERROR, 1, &[0, 99, 0, 7])).unwrap();
    assert_eq!(e.name(), "type 99 code 7");
    assert_eq!(e.failed_xid(), None);
    assert!(parse_error(&message(msg_type::ERROR, 1, &[0])).is_err());
}

#[test]
fn big_groups_split_into_insert_bucket_messages() {
    let buckets: Vec<String> = (0..2000)
        .map(|i| format!("set_field:{i:#x}->reg3,set_field:0x1f90->reg4,resubmit(,45)"))
        .collect();
    let refs: Vec<&str> = buckets.iter().map(String::as_str).collect();
    let mut g = group(9, vec!["ip_src"], &refs);
    // Ids as the compiler gives them: spread out, not positions.
    let want: Vec<u32> = (0..2000u32).map(|i| i * 2_000_003 + 7).collect();
    for (b, id) in g.buckets.iter_mut().zip(&want) {
        b.id = *id;
    }
    let msgs = encode_op(&BundleOp::PutGroup(g.clone()), 3).unwrap();
    assert!(msgs.len() > 1);
    let mut ids = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.len() <= 60_000 + 100, "{}", m.len());
        assert_eq!(&m[8..10], if i == 0 { &[0x80, 0] } else { &[0, 3] });
        let want_cmd_bucket: u32 = if i == 0 { u32::MAX } else { 0xffff_fffe };
        assert_eq!(&m[20..24], &want_cmd_bucket.to_be_bytes());
        let list_len = u16::from_be_bytes([m[16], m[17]]) as usize;
        let mut at = 24;
        while at < 24 + list_len {
            ids.push(u32::from_be_bytes(m[at + 4..at + 8].try_into().unwrap()));
            at += u16::from_be_bytes([m[at], m[at + 1]]) as usize;
        }
    }
    assert_eq!(ids, want);
}
