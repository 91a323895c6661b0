//! Text into the IR: canonical text parses back to the value that prints as
//! the very same text, and bad text is an error naming its token. (The
//! agent's golden files are a larger corpus of the same check:
//! `dpu-agent/src/reconcile/backend/golden_text_tests.rs`.)

use std::net::Ipv4Addr;

use super::*;

#[test]
fn canonical_text_round_trips() {
    for m in [
        "",
        "reg0=0x3,ip,nw_dst=10.0.0.1,ct_state=+new+trk,ct_mark=0x10000/0xff0000,ipv6_src=fe80::/10,tun_id=100,dl_src=02:d9:00:00:00:01",
        "ct_state=-new+trk",
        "ct_state=-new-est-rel-rpl-inv-trk-snat-dnat",
        "ct_state=32/255",
        "in_port=7,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
        "tcp6,ipv6_dst=fd00::/64,tp_src=1024/64512,tp_dst=443",
        "udp,nw_src=10.0.0.0/8,tp_dst=53",
        "sctp,tp_dst=9",
        "icmp,icmp_type=3,icmp_code=4",
        "icmp6,icmp_type=135,icmp_code=0,nd_target=fd00::1,nd_sll=02:00:00:00:00:01",
        "arp,arp_op=2,arp_spa=10.0.0.1,arp_tpa=10.0.0.0/24",
        "eth_type=0x800,nw_proto=6",
        "ip,nw_src=10.0.0.0/255.0.255.0",
        "ct_label=0x10000000000000000000000000000001/0xf0000000000000000000000000000001",
        "xxreg0=0x1,xreg1=0x2/0xff,metadata=0x5,tun_src=1.1.1.1,tun_dst=2.2.2.0/24",
    ] {
        let parsed: Match = m.parse().unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(parsed.to_string(), m);
    }
    for a in [
        "drop",
        "set_field:0xa000001->reg3,load:0->NXM_OF_IN_PORT[],load:0x2->NXM_NX_CT_MARK[16..23],move:NXM_NX_XXREG3[]->NXM_NX_CT_LABEL[],ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=[fd00::1]:80),exec(load:0x1->NXM_NX_CT_MARK[16..23])),resubmit(,45),goto_table:20",
        "in_port,output:7,output:4294967294,group:5,dec_ttl,resubmit(3,),resubmit(1,45)",
        "set_field:0x1/0xff->reg0,set_field:10.0.0.0/255.0.0.0->ip_src,set_field:fd00::1->ipv6_src",
        "set_field:0xffffffffffffffffffff->xxreg0,set_field:0x10000000000000000/0x30000000000000000->xxreg1",
        "push:NXM_NX_REG0[0..15],pop:NXM_NX_REG1[16..31],move:NXM_NX_REG0[3]->NXM_NX_REG1[31]",
        "ct(commit,force,table=5,zone=7)",
        "ct(zone=0)",
        "ct(commit,zone=NXM_NX_REG1[16..31],nat(src=10.0.0.1-10.0.0.9:1000-2000,persistent,hash))",
        "ct(commit,zone=0,nat(dst=[fd00::1]-[fd00::9]:80-90,random))",
        "ct(commit,zone=0,nat(src=fd00::1-fd00::9))",
        "ct(commit,zone=0,nat(src=fd00::1))",
        "ct(commit,zone=0,nat(src))",
        "ct(commit,zone=0,nat(persistent))",
        "ct(zone=0,exec(set_field:0x1->ct_mark,set_field:0x1/0x1->ct_label))",
        "learn(table=41,idle_timeout=300,priority=100,cookie=0x1,hard_timeout=60,fin_idle_timeout=5,fin_hard_timeout=10,send_flow_rem,delete_learned,NXM_OF_IP_DST[]=NXM_OF_IP_SRC[],NXM_NX_REG0[0..15]=0x5,eth_type=0x800,nw_proto=6,nw_dst=10.0.0.1,load:0xa000001->NXM_OF_IP_DST[],load:0xffff->NXM_NX_REG1[0..15],output:NXM_NX_REG1[])",
        "learn(table=1,idle_timeout=0,priority=32768,cookie=0x0,NXM_NX_IPV6_SRC[]=0xfd000000000000000000000000000001,load:0xfd000000000000000000000000000001->NXM_NX_XXREG0[],ipv6_dst=::1,dl_dst=aa:bb:cc:dd:ee:ff,tp_dst=80)",
    ] {
        let parsed: Actions = a.parse().unwrap_or_else(|e| panic!("{a}: {e}"));
        assert_eq!(parsed.to_string(), a);
    }
    for h in [
        "ip_src",
        "tcp_src=63",
        "udp_dst=65535",
        "eth_type",
        "ipv6_dst",
    ] {
        assert_eq!(HashField::parse(h).unwrap().to_string(), h);
    }
    // The empty match as a dump may write it.
    assert_eq!("*".parse::<Match>().unwrap(), Match::new());
}

#[test]
fn names_resolve_by_the_protocol_and_values_take_their_form() {
    let fields = |m: &str| -> Vec<MatchField> { m.parse::<Match>().unwrap().fields().to_vec() };
    let value = |m: &str, i: usize| fields(m)[i].value().unwrap();
    assert_eq!(value("tcp,tp_dst=80", 1).0, Field::TcpDst);
    assert_eq!(value("tp_src=53,udp6", 0).0, Field::UdpSrc);
    assert_eq!(value("sctp,tp_src=5", 1).0, Field::SctpSrc);
    assert_eq!(value("icmp6,icmp_type=135", 1).0, Field::Icmpv6Type);
    assert_eq!(value("icmp,icmp_code=1", 1).0, Field::IcmpCode);
    assert_eq!(
        value("dl_type=0x800,nw_proto=17,tp_dst=53", 2).0,
        Field::UdpDst
    );
    assert_eq!(value("arp,nw_src=10.0.0.1", 1).0, Field::ArpSpa);
    assert_eq!(value("arp,nw_dst=10.0.0.1", 1).0, Field::ArpTpa);
    assert_eq!(value("ip,nw_dst=10.0.0.1", 1).0, Field::IpDst);
    assert_eq!(value("in_port=7", 0), (Field::InPortOxm, 7, 0xffff_ffff));
    assert_eq!(
        value("ip,nw_src=10.1.2.3/16", 1),
        (Field::IpSrc, 0x0a01_0000, 0xffff_0000)
    );
    assert_eq!(
        fields("ct_state=+trk-new"),
        [MatchField::CtState {
            set: ct::TRK,
            mask: ct::TRK | ct::NEW
        }]
    );
    assert_eq!(value("ct_state=0x21/0x21", 0), (Field::CtState, 0x21, 0x21));
    assert_eq!(
        fields(" ip , reg0=1 "),
        [
            MatchField::Proto(Proto::Ip),
            MatchField::Value {
                field: Field::Reg0,
                value: 1,
                mask: 0xffff_ffff
            }
        ]
    );
    let built = Match::new()
        .proto(Proto::Tcp)
        .exact(Field::IpDst, Ipv4Addr::new(10, 96, 0, 10))
        .exact(Field::TcpDst, 80u16);
    assert_eq!(
        "tcp,nw_dst=10.96.0.10,tp_dst=80".parse::<Match>().unwrap(),
        built
    );

    let action = |a: &str| a.parse::<Action>().unwrap();
    assert_eq!(action("output:in_port"), Action::InPort);
    assert_eq!(action("output:LOCAL"), Action::Output(0xffff_fffe));
    assert_eq!(
        action("resubmit:3"),
        Action::Resubmit {
            port: Some(3),
            table: None
        }
    );
    assert_eq!(
        action("resubmit(in_port,45)"),
        Action::Resubmit {
            port: None,
            table: Some(45)
        }
    );
    let reg2 = Subfield::bits(Field::Reg2, 0, 0);
    assert_eq!(
        action("load:0x1->NXM_NX_REG2[0]"),
        Action::Load {
            value: 1,
            dst: reg2
        }
    );
    // A load wider than 64 bits is a set_field, masked when partial.
    assert_eq!(
        action("load:0x1ffffffffffffffff->NXM_NX_XXREG0[]"),
        Action::SetWide(Box::new((Field::Xxreg0, 0x1_ffff_ffff_ffff_ffff)))
    );
    assert_eq!(
        action("load:0x1ffffffffffffffff->NXM_NX_XXREG0[4..72]"),
        Action::SetMasked(Box::new((
            Field::Xxreg0,
            0x1_ffff_ffff_ffff_ffff << 4,
            ((1u128 << 69) - 1) << 4
        )))
    );
    assert_eq!(
        action("set_field:0x1/0xffffffff->reg0"),
        Action::set_field(Field::Reg0, 1u32)
    );
    assert_eq!(
        action("set_field:1->NXM_NX_REG3"),
        Action::set_field(Field::Reg3, 1u32)
    );
    let Action::Ct(ct) = action("ct(exec(load:0x1->NXM_NX_CT_MARK[]),commit,nat,zone=5)") else {
        panic!()
    };
    assert_eq!(
        *ct,
        Ct {
            commit: true,
            force: false,
            table: None,
            zone: CtZone::Imm(5),
            nat: Some(Nat::EXISTING),
            exec: vec![Action::Load {
                value: 1,
                dst: Subfield::whole(Field::CtMark)
            }],
        }
    );
    let Action::Learn(l) = action("learn(NXM_OF_ETH_DST[],NXM_OF_IP_SRC[]=NXM_OF_IP_SRC[])") else {
        panic!()
    };
    assert_eq!(
        (l.table, l.priority, l.idle_timeout, l.cookie),
        (1, 0x8000, 0, 0)
    );
    assert_eq!(
        l.specs,
        [
            LearnSpec::Match(Subfield::whole(Field::EthDst)),
            LearnSpec::Match(Subfield::whole(Field::IpSrc))
        ]
    );
    assert_eq!(
        HashField::parse("nw_src").unwrap(),
        HashField::whole(Field::IpSrc)
    );
    assert_eq!(
        HashField::parse("tcp_src=0x3f").unwrap(),
        HashField::masked(Field::TcpSrc, 63)
    );
}

#[test]
fn bad_text_is_an_error_naming_the_token() {
    for (m, token) in [
        ("reg99=1", "reg99"),
        ("ip,tp_dst=80", "tp_dst"),
        ("tp_dst=80", "tp_dst"),
        ("ip,icmp_type=1", "icmp_type"),
        ("ct_state=+new+bogus", "bogus"),
        ("ct_state=new", "new"),
        ("ip,ipv6", "ipv6"),
        ("tcp,udp", "udp"),
        ("tcp,nw_proto=17", "nw_proto=17"),
        ("reg0=1,reg0=2", "reg0=2"),
        ("ip,,reg0=1", "empty"),
        ("foo", "foo"),
        ("nw_proto=300", "300"),
        ("dl_type=0x800/0xffff", "0x800/0xffff"),
        ("ip,nw_src=10.0.0.0/33", "/33"),
        ("ipv6,ipv6_src=1.2.3.4", "1.2.3.4"),
        ("dl_src=02:00:00:00:00", "02:00:00:00:00"),
    ] {
        let e = m.parse::<Match>().unwrap_err();
        assert!(e.contains(token), "{m}: {e}");
    }
    for (a, token) in [
        ("", "drop"),
        ("drop,output:1", "drop"),
        ("output:x", "output:x"),
        ("output:4294967296", "4294967296"),
        ("goto_table:1,output:1", "output:1"),
        ("goto_table:1,goto_table:2", "goto_table:2"),
        ("frobnicate", "frobnicate"),
        ("resubmit(1)", "resubmit(1)"),
        ("set_field:1->nosuch", "nosuch"),
        ("set_field:1.2.3->ip_dst", "1.2.3"),
        ("load:0x10->NXM_NX_REG0[0..3]", "load:"),
        ("load:1->NXM_NX_REG0[40]", "NXM_NX_REG0[40]"),
        ("move:NXM_NX_REG0[0..3]->NXM_NX_REG1[0..4]", "move:"),
        ("pop:NXM_NX_REG0[x]", "x"),
        ("ct(bogus)", "bogus"),
        ("ct(zone=NXM_NX_REG0[])", "NXM_NX_REG0[]"),
        ("ct(commit,nat(dst=1.2.3.4:99999))", "99999"),
        ("ct(nat(src=1.2.3.4,dst=1.2.3.5))", "twice"),
        ("ct(nat(src=1.2.3.4-fd00::1))", "mixes"),
        ("ct(nat(persistent=1))", "persistent=1"),
        ("ct(nat,nat)", "second nat"),
        ("ct(exec(goto_table:1))", "goto_table:1"),
        (
            "learn(NXM_OF_IP_SRC[]=NXM_NX_REG0[0..15])",
            "NXM_NX_REG0[0..15]",
        ),
        (
            "learn(load:NXM_NX_REG0[]->NXM_NX_REG1[0..15])",
            "loads 32 bits",
        ),
        ("learn(nosuch[])", "nosuch"),
        ("learn(NXM_NX_REG0[0..3]=0x10)", "0x10"),
        ("learn(cookie=0x1ffffffffffffffff)", "cookie"),
        ("ct(commit", "ct(commit"),
    ] {
        let e = a.parse::<Actions>().unwrap_err();
        assert!(e.contains(token), "{a}: {e}");
    }
    for (h, token) in [
        ("bogus", "bogus"),
        ("reg0", "reg0"),
        ("tcp_src=0", "tcp_src"),
        ("tcp_src=65536", "65536"),
        ("tcp_src=0xzz", "0xzz"),
        ("ipv6_src=1", "ipv6_src"),
    ] {
        let e = HashField::parse(h).unwrap_err();
        assert!(e.contains(token), "{h}: {e}");
    }
}
