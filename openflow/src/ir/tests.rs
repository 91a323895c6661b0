use super::*;

#[test]
fn displays_the_canonical_text() {
    let m = Match::new()
        .reg(Field::Reg0, 3)
        .proto(Proto::Ip)
        .exact(Field::IpDst, Ipv4Addr::new(10, 0, 0, 1))
        .ct_state(ct::NEW | ct::TRK, 0)
        .masked(Field::CtMark, 0x1_0000u32, 0xff_0000u32)
        .prefix(Field::Ipv6Src, "fe80::".parse::<Ipv6Addr>().unwrap(), 10)
        .exact(Field::TunId, 100u64)
        .exact(Field::EthSrc, Mac([2, 0xd9, 0, 0, 0, 1]));
    assert_eq!(
        m.to_string(),
        "reg0=0x3,ip,nw_dst=10.0.0.1,ct_state=+new+trk,ct_mark=0x10000/0xff0000,ipv6_src=fe80::/10,tun_id=100,dl_src=02:d9:00:00:00:01"
    );
    assert_eq!(
        Match::new().ct_state(ct::TRK, ct::NEW).to_string(),
        "ct_state=-new+trk"
    );
    let zone = CtZone::Field(Subfield::bits(Field::Reg0, 0, 15));
    let a = Actions::new()
        .set_reg(Field::Reg3, 0xa00_0001)
        .load(0, Subfield::whole(Field::InPort))
        .load(2, Subfield::bits(Field::CtMark, 16, 23))
        .move_(
            Subfield::whole(Field::Xxreg3),
            Subfield::whole(Field::CtLabel),
        )
        .ct(Ct {
            commit: true,
            force: false,
            table: Some(50),
            zone,
            nat: Some(Nat::dst("fd00::1".parse().unwrap(), 80)),
            exec: vec![Action::Load {
                value: 1,
                dst: Subfield::bits(Field::CtMark, 16, 23),
            }],
        })
        .resubmit(45)
        .goto(20);
    assert_eq!(
        a.to_string(),
        "set_field:0xa000001->reg3,load:0->NXM_OF_IN_PORT[],load:0x2->NXM_NX_CT_MARK[16..23],move:NXM_NX_XXREG3[]->NXM_NX_CT_LABEL[],ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=[fd00::1]:80),exec(load:0x1->NXM_NX_CT_MARK[16..23])),resubmit(,45),goto_table:20"
    );
    assert_eq!(Actions::drop().to_string(), "drop");
    let ct = Ct {
        commit: false,
        force: false,
        table: Some(30),
        zone,
        nat: Some(Nat::EXISTING),
        exec: vec![],
    };
    assert_eq!(ct.to_string(), "ct(table=30,zone=NXM_NX_REG0[0..15],nat)");
    let l = Learn {
        table: 35,
        idle_timeout: 10800,
        priority: 100,
        cookie: 0x700_0000_0001,
        specs: vec![
            LearnSpec::Match(Subfield::whole(Field::Reg0)),
            LearnSpec::MatchValue {
                field: Field::EthType,
                value: 0x800,
            },
            LearnSpec::MatchValue {
                field: Field::IpProto,
                value: 6,
            },
            LearnSpec::LoadValue {
                value: 1,
                dst: Subfield::bits(Field::Reg2, 0, 0),
            },
        ],
        hard_timeout: 0,
        fin_idle_timeout: 0,
        fin_hard_timeout: 0,
        flags: 0,
    };
    let with_learn = Actions::new().learn(l.clone()).resubmit(45);
    assert_eq!(with_learn.learned_cookie(), Some(0x700_0000_0001));
    assert_eq!(Actions::new().group(1).learned_cookie(), None);
    assert_eq!(
        l.to_string(),
        "learn(table=35,idle_timeout=10800,priority=100,cookie=0x70000000001,NXM_NX_REG0[],eth_type=0x800,nw_proto=6,load:0x1->NXM_NX_REG2[0])"
    );
    assert_eq!(
        HashField::masked(Field::TcpSrc, 63).to_string(),
        "tcp_src=63"
    );
}
