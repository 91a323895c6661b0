//! The audit against megaflows of the lab (`dpctl/dump-flows -m`, OVS 3.1,
//! userspace datapath, scenario 1 with TCP and UDP), and variants of them
//! that break one rule each.

use super::megaflow::{cs, CtState, Megaflow};
use super::*;

/// The first pass of a client's packets: conntrack, then recirculation.
const FIRST_PASS: &str = "ufid:419830ac-099a-4512-89d8-ca12bdec68a1, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(ak8i00-0),packet_type(ns=0,id=0),eth(src=0a:00:00:00:01:02,dst=02:d9:00:00:00:01/00:00:00:00:00:00),eth_type(0x0800),ipv4(src=10.0.1.2,dst=10.96.0.10/0.0.0.0,proto=6/0,tos=0/0,ttl=64/0,frag=no),tcp(src=33766/0,dst=80/0),tcp_flags(0/0), packets:419, bytes:27046, used:0.095s, flags:SFP., dp:ovs, actions:ct(zone=1,nat),recirc(0x1), dp-extra-info:miniflow_bits(5,2)";

/// A connection's first packet: the masked source-port hash, the commit.
const NEW: &str = "ufid:9bf74cc1-3448-4383-8792-a22478176ab5, skb_priority(0/0),skb_mark(0/0),ct_state(0x21/0x31),ct_zone(0x1/0),ct_mark(0/0),ct_label(0/0),ct_tuple4(src=10.0.1.2/0.0.0.0,dst=10.96.0.10/0.0.0.0,proto=6/0,tp_src=33926/0,tp_dst=80/0),recirc_id(0x1),dp_hash(0/0),in_port(ak8i00-0),packet_type(ns=0,id=0),eth(src=0a:00:00:00:01:02/00:00:00:00:00:00,dst=02:d9:00:00:00:01/00:00:00:00:00:00),eth_type(0x0800),ipv4(src=10.0.1.2,dst=10.96.0.10,proto=6,tos=0/0,ttl=64/0,frag=no),tcp(src=33926/0x3f,dst=80),tcp_flags(0/0), packets:1, bytes:74, used:0.249s, flags:S, dp:ovs, actions:ct(commit,zone=1,mark=0/0xff0000,label=0,nat(dst=10.0.1.12:8080)),recirc(0x4), dp-extra-info:miniflow_bits(4,3)";

/// After the commit: only first packets come here.
const AFTER_COMMIT: &str = "ufid:9592fec9-6b73-4a2f-b86a-b298b62ffd90, skb_priority(0/0),skb_mark(0/0),ct_state(0xa1/0),ct_zone(0x1/0),ct_mark(0/0),ct_label(0/0),ct_tuple4(src=10.0.1.2/0.0.0.0,dst=10.96.0.10/0.0.0.0,proto=6/0,tp_src=33766/0,tp_dst=80/0),recirc_id(0x4),dp_hash(0/0),in_port(ak8i00-0),packet_type(ns=0,id=0),eth(src=0a:00:00:00:01:02,dst=02:d9:00:00:00:01),eth_type(0x0800),ipv4(src=10.0.1.2/0.0.0.0,dst=10.0.1.12,proto=6,tos=0/0,ttl=64,frag=no),tcp(src=33766/0,dst=8080/0),tcp_flags(0/0), packets:20, bytes:1480, used:0.166s, flags:S, dp:ovs, actions:set(eth(src=02:d9:00:00:00:01,dst=0a:00:00:00:01:0c)),set(ipv4(ttl=63)),ak8i00-2, dp-extra-info:miniflow_bits(5,2)";

/// Established traffic to a backend: the origin in `ct_mark`, no label.
const ESTABLISHED: &str = "ufid:0512206c-4d1d-4f37-abdb-71dc8a077b26, skb_priority(0/0),skb_mark(0/0),ct_state(0xa2/0x39),ct_zone(0x1/0),ct_mark(0/0xff0000),ct_label(0/0),ct_tuple4(src=10.0.1.2/0.0.0.0,dst=10.96.0.10/0.0.0.0,proto=6/0,tp_src=33826/0,tp_dst=80/0),recirc_id(0x1),dp_hash(0/0),in_port(ak8i00-0),packet_type(ns=0,id=0),eth(src=0a:00:00:00:01:02,dst=02:d9:00:00:00:01),eth_type(0x0800),ipv4(src=10.0.1.2/0.0.0.0,dst=10.0.1.13,proto=6,tos=0/0,ttl=64,frag=no),tcp(src=33826/0,dst=8080/0),tcp_flags(0/0), packets:104, bytes:6927, used:0.153s, flags:FP., dp:ovs, actions:set(eth(src=02:d9:00:00:00:01,dst=0a:00:00:00:01:0d)),set(ipv4(ttl=63)),ak8i00-3, dp-extra-info:miniflow_bits(5,2)";

const ARP: &str = "ufid:b56be832-af16-4c9b-a7e4-e39849bf2da8, skb_priority(0/0),skb_mark(0/0),ct_state(0/0),ct_zone(0/0),ct_mark(0/0),ct_label(0/0),recirc_id(0),dp_hash(0/0),in_port(ak8i00-2),packet_type(ns=0,id=0),eth(src=0a:00:00:00:01:0c,dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806),arp(sip=10.0.1.12,tip=10.0.1.2,op=1,sha=0a:00:00:00:01:0c,tha=00:00:00:00:00:00), packets:3, bytes:126, used:never, dp:ovs, actions:userspace(pid=0,slow_path(action)), dp-extra-info:miniflow_bits(5,4)";

fn audit(lines: &[&str]) -> Audit {
    Audit::of_dump(&lines.join("\n"))
}

fn verdict(line: &str) -> Verdict {
    audit(&[line]).flows.remove(0).verdict
}

fn rule_ids(v: &Verdict) -> Vec<&'static str> {
    match v {
        Verdict::NicMatchable => vec![],
        Verdict::SlowPath(f) => vec![f.rule.id],
        Verdict::Software(fs) => fs.iter().map(|f| f.rule.id).collect(),
    }
}

#[test]
fn a_line_reads_into_key_counters_and_actions() {
    let m = Megaflow::parse(NEW).unwrap();
    assert_eq!(
        m.ufid.as_deref(),
        Some("9bf74cc1-3448-4383-8792-a22478176ab5")
    );
    assert_eq!((m.packets, m.bytes), (1, 74));
    assert_eq!(m.layer.as_deref(), Some("ovs"));
    assert_eq!(
        m.actions,
        [
            "ct(commit,zone=1,mark=0/0xff0000,label=0,nat(dst=10.0.1.12:8080))",
            "recirc(0x4)"
        ]
    );
    assert_eq!(m.action_names(), ["ct", "recirc"]);
    assert_eq!(
        m.ct_state(),
        CtState {
            value: 0x21,
            mask: 0x31
        }
    );
    assert!(m.ct_state().set(cs::NEW) && !m.ct_state().set(cs::EST));
    assert!(m.matched("ct_label").is_none() && m.matched("ct_tuple4").is_none());
    assert_eq!(
        m.matched("tcp").unwrap().matched_parts(),
        [("src", "33926/0x3f"), ("dst", "80")]
    );
    assert_eq!(m.eth_type(), Some(0x0800));
    let e = Megaflow::parse(ESTABLISHED).unwrap();
    assert_eq!(e.ct_mark(), Some((0, 0xff0000)));
    assert_eq!(Megaflow::parse(ARP).unwrap().action_names(), ["userspace"]);
    assert_eq!(Megaflow::parse("flow-dump from the main thread:"), None);
    assert_eq!(Megaflow::parse(""), None);
    // Flag spelling, as OVS prints ct_state without -m.
    assert_eq!(
        CtState::parse("-new+est-rel+trk"),
        CtState {
            value: cs::EST | cs::TRK,
            mask: cs::NEW | cs::EST | cs::REL | cs::TRK
        }
    );
}

#[test]
fn the_lab_datapath_of_scenario_1_passes() {
    let a = audit(&[FIRST_PASS, NEW, AFTER_COMMIT, ESTABLISHED, ARP]);
    let v: Vec<&Verdict> = a.flows.iter().map(|f| &f.verdict).collect();
    assert_eq!(v[0], &Verdict::NicMatchable, "the first pass");
    assert_eq!(rule_ids(v[1]), ["mlx5-ct-new"]);
    // Reached only from the +new flow (recirc 0x4).
    assert_eq!(rule_ids(v[2]), ["tc-chain"]);
    assert!(matches!(v[2], Verdict::SlowPath(_)));
    assert_eq!(v[3], &Verdict::NicMatchable, "established traffic");
    assert_eq!(rule_ids(v[4]), ["slow-arp-nd"]);
    assert!(a.failures().is_empty());
    let c = a.counts();
    assert_eq!((c.nic_matchable, c.slow_path, c.software), (2, 3, 0));
    assert_eq!(c.nic_matchable_packets, 419 + 104);
    let text = a.render("the test");
    assert!(text.contains("result: pass:"), "{text}");
    assert!(
        text.contains("data packets in NIC-matchable megaflows: 100.0%"),
        "{text}"
    );
}

#[test]
fn a_partial_label_match_is_software_and_a_whole_one_is_not() {
    // The layout before issue 16: the origin byte of a richer label.
    let partial = ESTABLISHED.replace(
        "ct_mark(0/0xff0000),ct_label(0/0)",
        "ct_mark(0/0),ct_label(0x2000000000000000000000000/0xff000000000000000000000000)",
    );
    let v = verdict(&partial);
    assert_eq!(rule_ids(&v), ["mlx5-ct-label-whole"]);
    assert!(audit(&[&partial])
        .render("x")
        .contains("result: FAIL: 1 megaflows"));
    // The uplink reply reads the MAC, bits 0–47: all an uplink label holds.
    let uplink = ESTABLISHED.replace(
        "ct_mark(0/0xff0000),ct_label(0/0)",
        "ct_mark(0x20000/0xff0000),ct_label(0xa0000000102/0xffffffffffff)",
    );
    let a = audit(&[&uplink]);
    assert_eq!(a.flows[0].verdict, Verdict::NicMatchable);
    assert!(a.flows[0]
        .notes
        .iter()
        .any(|n| n.rule.id == "mlx5-ct-label-low32"));
    // The tunnel reply reads bits 0–31, all a tunnel label holds ...
    let tunnel = ESTABLISHED.replace(
        "ct_mark(0/0xff0000),ct_label(0/0)",
        "ct_mark(0x10000/0xff0000),ct_label(0xc0a83202/0xffffffff)",
    );
    assert_eq!(verdict(&tunnel), Verdict::NicMatchable);
    // ... but without the origin pinned, the label may be an uplink one.
    let unpinned = tunnel.replace("ct_mark(0x10000/0xff0000)", "ct_mark(0/0)");
    assert_eq!(rule_ids(&verdict(&unpinned)), ["mlx5-ct-label-whole"]);
}

#[test]
fn each_rule_names_what_breaks_it() {
    let cases: Vec<(String, &str)> = vec![
        (
            ESTABLISHED.replace("dp_hash(0/0)", "dp_hash(0x5/0xff)"),
            "tc-dp-hash",
        ),
        (
            FIRST_PASS.replace("recirc(0x1)", "hash(l4(0)),recirc(0x1)"),
            "tc-hash-action",
        ),
        (
            ESTABLISHED.replace(
                "set(ipv4(ttl=63)),",
                "userspace(pid=0,controller(reason=1)),",
            ),
            "tc-action",
        ),
        (
            ESTABLISHED.replace("set(ipv4(ttl=63))", "set(ipv4(proto=17))"),
            "tc-set-field",
        ),
        (
            ESTABLISHED.replace("set(ipv4(ttl=63))", "set(arp(op=2))"),
            "tc-set-field",
        ),
        (
            FIRST_PASS.replace("ct(zone=1,nat)", "ct(zone=1,helper=ftp)"),
            "tc-ct-helper",
        ),
        (
            ESTABLISHED.replace("ct_state(0xa2/0x39)", "ct_state(0xa2/0xb9)"),
            "tc-ct-state-nat",
        ),
        (
            ESTABLISHED.replace("skb_mark(0/0)", "skb_mark(0x1)"),
            "tc-key",
        ),
        (
            ESTABLISHED.replace("skb_priority(0/0)", "skb_priority(0x3)"),
            "tc-key",
        ),
        (
            ESTABLISHED.replace("ct_tuple4(src=10.0.1.2/0.0.0.0", "ct_tuple4(src=10.0.1.2"),
            "tc-key",
        ),
        (
            ESTABLISHED.replace("packet_type(ns=0,id=0)", "packet_type(ns=1,id=0x800)"),
            "tc-key",
        ),
        (
            ESTABLISHED.replace(
                "eth_type(0x0800)",
                "eth_type(0x8100),vlan(vid=5/0xff0,pcp=0)",
            ),
            "tc-vlan-partial",
        ),
    ];
    for (line, want) in &cases {
        let v = verdict(line);
        assert!(rule_ids(&v).contains(want), "{want}: got {v:?} for {line}");
        assert!(matches!(v, Verdict::Software(_)), "{want}: {v:?}");
    }
    // An exact skb_mark of 0 is what OVS ignores.
    assert_eq!(
        verdict(&ESTABLISHED.replace("skb_mark(0/0)", "skb_mark(0)")),
        Verdict::NicMatchable
    );
    // The userspace datapath's tunnel encap is the kernel's set(tunnel),output.
    let tunnel = ESTABLISHED.replace(
        "ak8i00-3,",
        "clone(tnl_push(tnl_port(4),header(size=58,type=6,eth(dst=02:00:00:00:00:02,src=02:00:00:00:00:01,dl_type=0x0800),ipv4(src=192.168.50.1,dst=192.168.50.2,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,csum=0x0,dst=6081),geneve(vni=0x64)),out_port(2)),3),",
    );
    assert_eq!(verdict(&tunnel), Verdict::NicMatchable);
    // +inv drops and ND are slow path by design.
    let inv = ESTABLISHED.replace("ct_state(0xa2/0x39)", "ct_state(0x30/0x30)");
    assert_eq!(rule_ids(&verdict(&inv)), ["mlx5-ct-rel-inv"]);
    let nd = FIRST_PASS.replace(
        "tcp(src=33766/0,dst=80/0),tcp_flags(0/0)",
        "icmpv6(type=135,code=0)",
    );
    assert_eq!(rule_ids(&verdict(&nd)), ["slow-arp-nd"]);
    // 17 actions are one too many for tc.
    let many = FIRST_PASS.replace("recirc(0x1)", &vec!["ct_clear"; 17].join(","));
    assert!(rule_ids(&verdict(&many)).contains(&"tc-16-actions"));
}

#[test]
fn a_flow_reached_only_from_software_stays_in_software() {
    let parent = FIRST_PASS.replace("dp_hash(0/0)", "dp_hash(0x1/0xf)");
    let a = audit(&[&parent, ESTABLISHED]);
    assert_eq!(rule_ids(&a.flows[1].verdict), ["tc-chain"]);
    assert_eq!(a.failures().len(), 2);
    // With a NIC-matchable parent as well, it is reached in the NIC.
    let a = audit(&[&parent, FIRST_PASS, ESTABLISHED]);
    assert_eq!(a.flows[2].verdict, Verdict::NicMatchable);
    // A software megaflow that carried nothing is no failure.
    let idle = ESTABLISHED
        .replace("dp_hash(0/0)", "dp_hash(0x1/0xf)")
        .replace("packets:104", "packets:0");
    assert!(audit(&[&idle]).failures().is_empty());
}

#[test]
fn a_service_keeps_the_flows_that_name_its_addresses_and_their_chains() {
    let other = FIRST_PASS
        .replace("src=10.0.1.2,", "src=10.0.9.9,")
        .replace("recirc(0x1)", "recirc(0x9)");
    let a = audit(&[FIRST_PASS, NEW, ESTABLISHED, &other]);
    let web = a.only_addresses(&["10.96.0.10".parse().unwrap()]);
    // NEW names the VIP; ESTABLISHED (recirc 0x1) is reached from FIRST_PASS,
    // which names only the client, so it is not the Service's by address ...
    assert_eq!(web.flows.len(), 1);
    // ... but is with the client's address, as a backend's would be.
    let with_backend = a.only_addresses(&["10.0.1.2".parse().unwrap()]);
    assert_eq!(with_backend.flows.len(), 3);
}

#[test]
fn docs_name_every_rule() {
    let doc = include_str!("../../../../docs/offload.md");
    for r in rules::ALL {
        assert!(
            doc.contains(r.id),
            "docs/offload.md does not name rule {}",
            r.id
        );
    }
}
