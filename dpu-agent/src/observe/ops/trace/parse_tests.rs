//! The parser on `ofproto/trace` output captured from OVS 3.1 (see
//! `testdata/`), and the rendering of it against the golden case `basic`.

use super::*;
use crate::observe::ops::trace::fixture;
use crate::observe::ops::trace::{render, Names};

const SERVICE: &str = include_str!("testdata/service_tcp_40000.txt");
const SPOOF: &str = include_str!("testdata/spoof_drop.txt");
const ICMP: &str = include_str!("testdata/icmp_routed.txt");
const NO_MATCH: &str = include_str!("testdata/no_match.txt");
const TTL: &str = include_str!("testdata/ttl_exception.txt");

fn hits(t: &Trace) -> Vec<(u8, u16)> {
    t.steps()
        .filter_map(|s| match s {
            Step::Flow(h) => Some((h.table, h.priority)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_service_connection_has_three_passes_a_group_and_its_bucket() {
    let t = parse(SERVICE).unwrap();
    assert_eq!(t.passes.len(), 3);
    assert_eq!(t.passes[0].resume, None);
    assert_eq!(
        t.passes[1].resume.as_deref(),
        Some("recirc(0x1) - resume conntrack with ct_state=new|trk")
    );
    assert_eq!(
        hits(&t),
        vec![
            (0, 100),
            (10, 100),
            (30, 100),
            (40, 100),
            (45, 100),
            (50, 100)
        ]
    );
    let groups: Vec<&Step> = t
        .steps()
        .filter(|s| matches!(s, Step::Group { .. }))
        .collect();
    assert_eq!(
        groups,
        vec![&Step::Group {
            id: 1,
            bucket: Some(1716094131)
        }]
    );
    let Step::Flow(lb) = &t.passes[1].steps[0] else {
        panic!("{:?}", t.passes[1].steps);
    };
    assert_eq!(
        lb.matches,
        "ct_state=+new+trk,tcp,reg0=0x1,nw_dst=10.96.0.10,tp_dst=80"
    );
    assert_eq!(lb.cookie, 0x305d11bde993f);
    assert_eq!(lb.actions, vec!["group:1"]);
    // The bucket's own actions are not the flow's, and the nested
    // EndpointDnat flow comes after the group.
    let Step::Flow(dnat) = &t.passes[1].steps[2] else {
        panic!("{:?}", t.passes[1].steps);
    };
    assert_eq!(dnat.table, 45);
    assert!(dnat.actions[0].starts_with("ct(commit,table=50"));
    assert_eq!(t.passes[0].datapath_actions, "ct(zone=1,nat),recirc(0x1)");
    assert_eq!(
        t.final_actions(),
        "set(eth(src=02:d9:00:00:00:01,dst=0a:00:00:00:01:0d)),set(ipv4(ttl=63)),5"
    );
    let Step::Flow(fwd) = t.passes[2].steps.last().unwrap() else {
        panic!()
    };
    assert_eq!(fwd.actions.last().map(String::as_str), Some("output:4"));
}

#[test]
fn a_catch_all_flow_has_an_empty_match_and_no_match_is_a_miss() {
    let t = parse(SPOOF).unwrap();
    assert_eq!(hits(&t), vec![(0, 100), (10, 0)]);
    let Step::Flow(miss) = &t.passes[0].steps[1] else {
        panic!()
    };
    assert_eq!(
        (miss.matches.as_str(), miss.actions.clone()),
        ("", vec!["drop".to_string()])
    );
    assert_eq!(t.final_actions(), "drop");

    let t = parse(NO_MATCH).unwrap();
    assert_eq!(t.passes[0].steps[1], Step::Miss { table: 10 });
    assert_eq!(t.final_actions(), "drop");
}

#[test]
fn datapath_exceptions_are_notes() {
    let t = parse(TTL).unwrap();
    assert!(t
        .steps()
        .any(|s| *s == Step::Note("IPv4 decrement TTL exception".into())));
}

#[test]
fn text_that_is_no_trace_is_an_error() {
    assert!(matches!(
        parse("ovs-vswitchd: no such bridge (Invalid argument)\n"),
        Err(TraceParseError::NoFlow(_))
    ));
    let bad = SERVICE.replace(", cookie 0x305d11bde993f", ", cookie zz");
    assert!(matches!(parse(&bad), Err(TraceParseError::BadLine { .. })));
}

fn rendered(text: &str) -> String {
    let b = fixture::basic();
    let names = Names {
        lb: &b.lb,
        intent: &b.intent,
        ports: &b.ports,
    };
    render(&parse(text).unwrap(), &names)
}

#[test]
fn the_path_names_tables_owners_the_backend_and_the_verdict() {
    let out = rendered(SERVICE);
    let want = " 0 Classify: in_port=1, priority 100, cookie Workload client
10 SpoofGuard: ip,reg0=0x1,in_port=1,dl_src=0a:00:00:00:01:02,nw_src=10.0.1.2, priority 100, cookie Workload client
30 Conntrack: ip,reg0=0x1, priority 100, cookie Vpc vpc-a
   datapath: ct(zone=1,nat),recirc(0x1)
recirculation: resume conntrack with ct_state=new|trk
40 ServiceLb: ct_state=+new+trk,tcp,reg0=0x1,nw_dst=10.96.0.10,tp_dst=80, priority 100, cookie Service web
   group 1 = Service web port http → bucket 1716094131 = backend vpc-a/10.0.1.13 (workload web-3)
45 EndpointDnat: tcp,reg0=0x1,reg3=0xa00010d,reg4=0x1f90, priority 100, cookie Endpoint 10.0.1.13:8080
   datapath: ct(commit,zone=1,label=0xa0000000102/0xffffffffff0000ffffffffffff,nat(dst=10.0.1.13:8080)),recirc(0x2)
recirculation: resume conntrack with ct_state=new|trk
50 L3Forward: ip,reg0=0x1,nw_dst=10.0.1.13, priority 100, cookie Workload web-3
   datapath: set(eth(src=02:d9:00:00:00:01,dst=0a:00:00:00:01:0d)),set(ipv4(ttl=63)),5
final datapath actions: set(eth(src=02:d9:00:00:00:01,dst=0a:00:00:00:01:0d)),set(ipv4(ttl=63)),5
verdict: Service web → backend 10.0.1.13:8080, delivered to port web-3
";
    assert_eq!(out, want);
}

#[test]
fn drops_name_the_table_and_routed_packets_the_port() {
    let out = rendered(SPOOF);
    assert!(
        out.contains("10 SpoofGuard: *, priority 0, cookie Pipeline (table miss)\n"),
        "{out}"
    );
    assert!(out.ends_with("verdict: dropped in SpoofGuard\n"), "{out}");
    let out = rendered(NO_MATCH);
    assert!(out.contains("10 SpoofGuard: no flow matched\n"), "{out}");
    assert!(out.ends_with("verdict: dropped in SpoofGuard\n"), "{out}");
    let out = rendered(ICMP);
    assert!(out.ends_with("verdict: delivered to port web-1\n"), "{out}");
}
