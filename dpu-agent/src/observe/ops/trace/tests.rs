//! Where a traced packet enters and the bridge flow made for it, over the
//! golden case `basic`.

use super::fixture;
use super::*;

fn req(src: &str, dst: &str, proto: &str, dst_port: Option<u16>) -> TraceRequest {
    TraceRequest {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: proto.into(),
        dst_port,
        src_port: None,
        in_port: None,
        vpc: None,
        raw: false,
    }
}

#[test]
fn a_vpc_entry_is_the_port_and_mac_of_the_workload_owning_the_source() {
    let b = fixture::basic();
    let mut r = req("10.0.1.12", "10.96.0.10", "tcp", Some(80));
    r.vpc = Some("vpc-a".into());
    assert_eq!(
        entry(&r, "dpu-1", &b.intent, &b.ports).unwrap(),
        (3, Some("0a:00:00:00:01:0c".to_string()))
    );
    // Not on this node: no entry.
    assert!(entry(&r, "dpu-2", &b.intent, &b.ports)
        .unwrap_err()
        .0
        .contains("no workload of node dpu-2 in VPC vpc-a has the address 10.0.1.12"));
    r.vpc = Some("vpc-z".into());
    assert_eq!(
        entry(&r, "dpu-1", &b.intent, &b.ports).unwrap_err().0,
        "VPC vpc-z is not in the applied intent"
    );
}

#[test]
fn a_workload_whose_port_is_gone_cannot_be_an_entry() {
    let b = fixture::basic_with(&[("client", 1)], &[]);
    let mut r = req("10.0.1.11", "10.96.0.10", "tcp", Some(80));
    r.vpc = Some("vpc-a".into());
    assert_eq!(
        entry(&r, "dpu-1", &b.intent, &b.ports).unwrap_err().0,
        "workload web-1 sits behind port web-1, which is not on the bridge"
    );
}

#[test]
fn a_port_entry_takes_the_mac_of_a_workload_behind_it() {
    let b = fixture::basic();
    let mut r = req("10.0.1.2", "10.0.1.11", "icmp", None);
    r.in_port = Some("client".into());
    assert_eq!(
        entry(&r, "dpu-1", &b.intent, &b.ports).unwrap(),
        (1, Some("0a:00:00:00:01:02".to_string()))
    );
    r.in_port = Some("p0".into());
    let e = entry(&r, "dpu-1", &b.intent, &b.ports).unwrap_err().0;
    assert_eq!(
        e,
        "unknown port \"p0\"; the bridge's ports are: client, web-1, web-2, web-3"
    );
    r.in_port = None;
    assert!(entry(&r, "dpu-1", &b.intent, &b.ports)
        .unwrap_err()
        .0
        .contains("--in-port"));
}

#[test]
fn bridge_flows_per_family_and_protocol() {
    let mut r = req("10.0.1.2", "10.96.0.10", "TCP", Some(80));
    assert_eq!(
        bridge_flow(&r, 1, Some("0a:00:00:00:01:02")).unwrap(),
        "in_port=1,tcp,dl_src=0a:00:00:00:01:02,dl_dst=02:d9:00:00:00:01,\
         nw_src=10.0.1.2,nw_dst=10.96.0.10,nw_ttl=64,tp_src=40000,tp_dst=80"
    );
    r.src_port = Some(1234);
    r.proto = "udp".into();
    assert!(bridge_flow(&r, 1, None)
        .unwrap()
        .ends_with(",udp,dl_dst=02:d9:00:00:00:01,nw_src=10.0.1.2,nw_dst=10.96.0.10,nw_ttl=64,tp_src=1234,tp_dst=80"));
    let r6 = req("fd00:1::11", "fd00:96::10", "sctp", Some(80));
    assert_eq!(
        bridge_flow(&r6, 2, None).unwrap(),
        "in_port=2,sctp6,dl_dst=02:d9:00:00:00:01,ipv6_src=fd00:1::11,\
         ipv6_dst=fd00:96::10,nw_ttl=64,tp_src=40000,tp_dst=80"
    );
    let ping6 = req("fd00:1::11", "fd00:1::12", "icmp", None);
    assert!(
        bridge_flow(&ping6, 2, None).unwrap().contains(",icmp6,")
            && bridge_flow(&ping6, 2, None)
                .unwrap()
                .ends_with(",icmp_type=128")
    );
    for (bad, why) in [
        (
            req("10.0.1.2", "fd00::1", "tcp", Some(80)),
            "not of the same family",
        ),
        (
            req("10.0.1.2", "10.0.1.3", "tcp", None),
            "tcp needs a destination port",
        ),
        (
            req("10.0.1.2", "10.0.1.3", "gre", None),
            "say tcp, udp, sctp or icmp",
        ),
    ] {
        let e = bridge_flow(&bad, 1, None).unwrap_err().0;
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn every_conntrack_pass_is_resumed_as_a_new_connection() {
    let args = appctl_args("br-dpu", "in_port=1,tcp");
    assert_eq!(args[0], "ofproto/trace");
    assert_eq!(args.iter().filter(|a| *a == "--ct-next").count(), CT_NEXT);
    assert!(args
        .windows(2)
        .all(|w| w[0] != "--ct-next" || w[1] == "trk,new"));
    assert_eq!(&args[args.len() - 2..], ["br-dpu", "in_port=1,tcp"]);
}
