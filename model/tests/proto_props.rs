//! Property tests for the proto edge (`convert`), on top of the seeded byte fuzzing
//! in `decode_fuzz.rs`:
//!
//! * every valid domain object survives domain → proto → bytes → proto → domain;
//! * any structurally generated proto object (field values drawn from valid,
//!   borderline and garbage pools) converts without panicking, and what the edge
//!   accepts satisfies the domain invariants and converts back to itself;
//! * one targeted corruption of a valid object is refused with exactly the field
//!   that was corrupted (the manifest path users see).
//!
//! `PROPTEST_CASES=N` raises the number of cases (see docs/testing.md).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dpu_model::limits::{MAX_LABELS, MAX_NAME_LEN};
use dpu_model::*;
use dpu_proto::v1 as pb;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use prost::Message;
use test_support::props::config;

// ---- valid domain objects -------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
        1 => Just("a".repeat(MAX_NAME_LEN)),
    ]
}

fn ip() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

/// A network address with a prefix of /30 or shorter.
fn cidr(min_prefix: u8) -> impl Strategy<Value = Ipv4Net> {
    (ip(), min_prefix..=30u8).prop_map(|(a, p)| Ipv4Net::new(a, p).unwrap().trunc())
}

/// An address strictly inside `net` (neither network nor broadcast).
fn host_in(net: Ipv4Net, pick: u32) -> Ipv4Addr {
    let first = u32::from(net.network()) + 1;
    let count = u32::from(net.broadcast()) - first; // >= 2 for /30 and shorter
    Ipv4Addr::from(first + pick % count)
}

/// A unique-local IPv6 address (fc00::/7, never link-local or multicast).
fn ip6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(|a| Ipv6Addr::from((a & !(0x7fu128 << 121)) | (0x7eu128 << 121)))
}

/// An IPv4 or IPv6 address (IPv6 unique-local).
fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ip().prop_map(IpAddr::V4), ip6().prop_map(IpAddr::V6)]
}

fn vpc() -> impl Strategy<Value = Vpc> {
    (name(), 1..=0x00ff_ffffu32).prop_map(|(name, vni)| Vpc { name, vni })
}

fn subnet() -> impl Strategy<Value = Subnet> {
    prop_oneof![subnet_v4(), subnet_v6()]
}

/// An IPv6 subnet (/48../126, no node blocks) with a host as its gateway.
fn subnet_v6() -> impl Strategy<Value = Subnet> {
    (name(), name(), ip6(), 48..=126u8, any::<u16>()).prop_map(|(name, vpc, a, len, pick)| {
        let net = Ipv6Net::new(a, len).unwrap().trunc();
        let gateway = Ipv6Addr::from(u128::from(net.network()) + 1 + u128::from(pick % 2));
        Subnet {
            name,
            vpc,
            cidr: IpNet::V6(net),
            gateway: IpAddr::V6(gateway),
            node_blocks: Vec::new(),
        }
    })
}

fn subnet_v4() -> impl Strategy<Value = Subnet> {
    (name(), name(), cidr(0), any::<u32>()).prop_flat_map(|(name, vpc, cidr, pick)| {
        let block = (name_ref(), cidr.prefix_len()..=30u8, any::<u32>()).prop_map(
            move |(node, prefix, at)| {
                let inside = u32::from(cidr.network()) | (at & !u32::from(cidr.netmask()));
                NodeBlock {
                    node,
                    cidr: Ipv4Net::new(Ipv4Addr::from(inside), prefix)
                        .unwrap()
                        .trunc(),
                }
            },
        );
        proptest::collection::vec(block, 0..4).prop_map(move |node_blocks| Subnet {
            name: name.clone(),
            vpc: vpc.clone(),
            cidr: cidr.into(),
            gateway: host_in(cidr, pick).into(),
            node_blocks,
        })
    })
}

fn name_ref() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

fn mac() -> impl Strategy<Value = Mac> {
    any::<[u8; 6]>()
        .prop_map(|mut m| {
            m[0] &= 0xfe;
            m
        })
        .prop_filter("all-zero MAC", |m| *m != [0; 6])
        .prop_map(Mac)
}

fn workload_kind() -> impl Strategy<Value = WorkloadKind> {
    prop_oneof![
        Just(WorkloadKind::Pod),
        Just(WorkloadKind::Vm),
        Just(WorkloadKind::BareMetal),
        Just(WorkloadKind::VnicIp),
    ]
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        name(),
        workload_kind(),
        name_ref(),
        (ip(), proptest::option::of(ip6())),
        proptest::option::of(mac()),
        proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..=6),
        name_ref(),
        "[^\u{0}]{1,40}",
    )
        .prop_map(
            |(name, kind, vpc, (ip, ipv6), mac, labels, node, port)| Workload {
                name,
                kind,
                vpc,
                ip,
                ipv6,
                mac,
                labels,
                node,
                port,
            },
        )
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

fn service() -> impl Strategy<Value = Service> {
    let port = (".{0,8}", protocol(), 1..=u16::MAX, 1..=u16::MAX).prop_map(
        |(name, protocol, port, target_port)| ServicePort {
            name,
            protocol,
            port,
            target_port,
        },
    );
    // The VPC is filled in below: the Service's, or another one (gateway only).
    let backend = (
        any_ip(),
        any::<u32>(),
        proptest::option::of(name_ref()),
        proptest::option::of(name_ref()),
    )
        .prop_map(|(ip, weight, workload, vpc)| Backend {
            ip,
            weight,
            workload,
            vpc: vpc.unwrap_or_default(),
        });
    let scenario = prop_oneof![
        Just(AccessScenario::ClusterIp),
        Just(AccessScenario::NodeClusterIp),
        Just(AccessScenario::EipLoadBalancer),
        Just(AccessScenario::EipServiceGateway),
    ];
    (
        name(),
        name_ref(),
        proptest::collection::vec(any_ip(), 1..4),
        proptest::collection::vec(port, 1..5),
        proptest::collection::vec(backend, 0..6),
        proptest::option::of(1..=86_400u32),
        proptest::option::of(ip()),
        scenario,
    )
        .prop_map(
            |(name, vpc, cluster_ips, mut ports, mut backends, affinity, eip, scenario)| {
                let mut seen = Vec::new();
                ports.retain(|p| {
                    let fresh = !seen.contains(&(p.protocol, p.port));
                    seen.push((p.protocol, p.port));
                    fresh
                });
                let gateway = scenario == AccessScenario::EipServiceGateway;
                for b in &mut backends {
                    if !gateway || b.vpc.is_empty() {
                        b.vpc = vpc.clone();
                    }
                }
                let mut ips = Vec::new();
                backends.retain(|b| {
                    let fresh = !ips.contains(&(b.ip, b.vpc.clone()));
                    ips.push((b.ip, b.vpc.clone()));
                    fresh
                });
                let eip_needed = matches!(
                    scenario,
                    AccessScenario::EipLoadBalancer | AccessScenario::EipServiceGateway
                );
                let eip = eip.or(eip_needed.then_some(Ipv4Addr::new(203, 0, 113, 1)));
                Service {
                    name,
                    eip_node: eip.map(|_| vpc.clone()),
                    vpc,
                    cluster_ips: if gateway { Vec::new() } else { cluster_ips },
                    ports,
                    backends,
                    affinity_timeout: affinity,
                    eip,
                    external_traffic_local: scenario != AccessScenario::ClusterIp
                        && affinity.is_some(),
                    scenario,
                }
            },
        )
}

fn probe() -> impl Strategy<Value = NetworkProbe> {
    (
        name(),
        name_ref(),
        any::<bool>(),
        1..=u16::MAX,
        "/[ -~]{0,20}",
        100..=3_600_000u32,
        any::<u32>(),
        1..=100u32,
        (1..=100u32, 100..=599u16, 0..=499u16),
    )
        .prop_map(
            |(name, service, http, port, path, period_ms, t, success, (failure, lo, span))| {
                NetworkProbe {
                    name,
                    service,
                    probe_type: if http {
                        ProbeType::Http
                    } else {
                        ProbeType::Tcp
                    },
                    port,
                    http_path: if http { path } else { String::new() },
                    http_statuses: lo..=(lo + span).min(599),
                    period_ms,
                    timeout_ms: 1 + t % period_ms,
                    success_threshold: success,
                    failure_threshold: failure,
                }
            },
        )
}

fn node() -> impl Strategy<Value = Node> {
    let unicast = ip().prop_filter("not a unicast underlay address", |a| {
        !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
    });
    (name(), unicast, proptest::option::of((ip(), mac()))).prop_map(|(name, tunnel_ip, host)| {
        Node {
            name,
            tunnel_ip,
            host,
        }
    })
}

fn valid_object() -> impl Strategy<Value = Object> {
    prop_oneof![
        vpc().prop_map(Object::Vpc).boxed(),
        subnet().prop_map(Object::Subnet).boxed(),
        workload().prop_map(Object::Workload).boxed(),
        service().prop_map(Object::Service).boxed(),
        probe().prop_map(Object::NetworkProbe).boxed(),
        node().prop_map(Object::Node).boxed(),
    ]
}

// ---- arbitrary proto objects ----------------------------------------------------

/// Strings from every class the converters treat differently.
fn any_text() -> BoxedStrategy<String> {
    let pool = prop::sample::select(vec![
        "",
        "a",
        "web-1",
        "a..b",
        "-a",
        "a-",
        "A",
        "a_b",
        "10.0.0.1",
        "10.0.0.0",
        "10.0.0.255",
        "0.0.0.0",
        "127.0.0.1",
        "255.255.255.255",
        "224.0.0.1",
        "256.0.0.1",
        "010.0.0.1",
        " 10.0.0.1",
        "::1",
        "fe80::1",
        "10.0.0.0/8",
        "10.0.0.0/24",
        "10.0.0.1/24",
        "10.0.0.0/30",
        "10.0.0.0/31",
        "10.0.0.0/32",
        "10.0.0.0/33",
        "0.0.0.0/0",
        "fe80::/64",
        "02:00:00:00:00:01",
        "01:00:00:00:00:01",
        "00:00:00:00:00:00",
        "0A:0B:0C:0D:0E:0F",
        "02:00:00:00:00",
        "02:00:00:00:00:001",
        "zz:00:00:00:00:01",
        "/",
        "/healthz",
        "healthz",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        4 => pool,
        2 => name(),
        2 => ip().prop_map(|a| a.to_string()),
        2 => (ip(), 0..=33u8).prop_map(|(a, p)| format!("{a}/{p}")),
        1 => ".{0,16}",
    ]
    .boxed()
}

fn any_number() -> impl Strategy<Value = u32> {
    let pool = prop::sample::select(vec![
        0u32,
        1,
        2,
        3,
        4,
        5,
        6,
        99,
        100,
        101,
        3_600_000,
        3_600_001,
        65_535,
        65_536,
        86_400,
        86_401,
        0x00ff_ffff,
        0x0100_0000,
        u32::MAX,
    ]);
    prop_oneof![3 => pool, 1 => any::<u32>()]
}

fn any_proto_object() -> impl Strategy<Value = pb::Object> {
    use pb::object::Object as O;
    let t = any_text;
    let n = any_number;
    let texts = |max| proptest::collection::vec(any_text(), 0..max);
    let vpc = (t(), n()).prop_map(|(name, vni)| O::Vpc(pb::Vpc { name, vni }));
    let block = (t(), t()).prop_map(|(node, cidr)| pb::NodeBlock { node, cidr });
    let subnet = (t(), t(), t(), t(), proptest::collection::vec(block, 0..3)).prop_map(
        |(name, vpc, cidr, gateway, node_blocks)| {
            O::Subnet(pb::Subnet {
                name,
                vpc,
                cidr,
                gateway,
                node_blocks,
            })
        },
    );
    let workload = (
        (t(), n(), t(), t(), t()),
        proptest::collection::hash_map(t(), t(), 0..4),
        (t(), t(), t()),
    )
        .prop_map(|((name, kind, vpc, ip, mac), labels, (node, port, ipv6))| {
            O::Workload(pb::Workload {
                name,
                kind: kind as i32,
                vpc,
                ip,
                ipv6,
                mac,
                labels,
                node,
                port,
            })
        });
    let port =
        (t(), n(), n(), n()).prop_map(|(name, protocol, port, target_port)| pb::ServicePort {
            name,
            protocol: protocol as i32,
            port,
            target_port,
        });
    let backend = (t(), n(), t(), t()).prop_map(|(ip, weight, workload, vpc)| pb::Backend {
        ip,
        weight,
        workload,
        vpc,
    });
    let service = (
        (t(), t(), texts(3)),
        proptest::collection::vec(port, 0..3),
        proptest::collection::vec(backend, 0..3),
        (proptest::option::of(n()), t(), n()),
    )
        .prop_map(
            |((name, vpc, cluster_ips), ports, backends, (affinity, eip, scenario))| {
                O::Service(pb::Service {
                    name,
                    vpc,
                    cluster_ips,
                    ports,
                    backends,
                    session_affinity: affinity
                        .map(|timeout_seconds| pb::SessionAffinity { timeout_seconds }),
                    eip_node: eip.clone(),
                    eip,
                    scenario: scenario as i32,
                    external_traffic_local: affinity.is_some(),
                })
            },
        );
    let probe = ((t(), t(), n(), n(), t()), (n(), n(), n(), n())).prop_map(
        |((name, service, r#type, port, http_path), (period_ms, timeout_ms, s, f))| {
            O::NetworkProbe(pb::NetworkProbe {
                name,
                service,
                r#type: r#type as i32,
                port,
                http_path,
                period_ms,
                timeout_ms,
                success_threshold: s,
                failure_threshold: f,
                http_status_min: s.wrapping_mul(7),
                http_status_max: f.wrapping_mul(5),
            })
        },
    );
    let node = (t(), t(), t(), t()).prop_map(|(name, tunnel_ip, host_ip, host_mac)| {
        O::Node(pb::Node {
            name,
            tunnel_ip,
            host_ip,
            host_mac,
        })
    });
    // Boxed: the unboxed strategy tree of six kinds overflows the test thread's
    // stack in debug builds.
    let kinds = prop_oneof![
        vpc.boxed(),
        subnet.boxed(),
        workload.boxed(),
        service.boxed(),
        probe.boxed(),
        node.boxed(),
    ];
    proptest::option::weighted(0.97, kinds).prop_map(|object| pb::Object { object })
}

fn proto_kind(o: &pb::Object) -> Option<Kind> {
    use pb::object::Object as O;
    Some(match o.object.as_ref()? {
        O::Vpc(_) => Kind::Vpc,
        O::Subnet(_) => Kind::Subnet,
        O::Workload(_) => Kind::Workload,
        O::Service(_) => Kind::Service,
        O::NetworkProbe(_) => Kind::NetworkProbe,
        O::Node(_) => Kind::Node,
    })
}

/// What the edge promises about every value it lets through.
fn check_invariants(o: &Object) -> Result<(), String> {
    let name_ok = |s: &str| check_name(s).is_ok();
    let net_ok = |n: &IpNet| {
        n.trunc() == *n && n.prefix_len() <= if matches!(n, IpNet::V4(_)) { 30 } else { 126 }
    };
    let ensure = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}: {o:?}"))
        }
    };
    let key = o.key();
    ensure(name_ok(&key.name), "name")?;
    match o {
        Object::Vpc(v) => ensure((1..=0x00ff_ffff).contains(&v.vni), "vni"),
        Object::Subnet(s) => {
            ensure(name_ok(&s.vpc) && net_ok(&s.cidr), "vpc/cidr")?;
            ensure(
                s.cidr.contains(&s.gateway)
                    && s.gateway != s.cidr.network()
                    && s.gateway != s.cidr.broadcast(),
                "gateway",
            )?;
            for b in &s.node_blocks {
                ensure(
                    name_ok(&b.node)
                        && net_ok(&IpNet::V4(b.cidr))
                        && s.cidr.contains(&IpNet::V4(b.cidr)),
                    "node block",
                )?;
            }
            Ok(())
        }
        Object::Workload(w) => {
            ensure(name_ok(&w.vpc) && name_ok(&w.node), "vpc/node")?;
            ensure(w.labels.len() <= MAX_LABELS, "labels")?;
            ensure(!w.port.is_empty() && w.port.len() <= MAX_NAME_LEN, "port")?;
            ensure(
                w.mac.is_none_or(|m| m.0[0] & 1 == 0 && m.0 != [0; 6]),
                "mac",
            )
        }
        Object::Service(s) => {
            ensure(name_ok(&s.vpc), "vpc")?;
            ensure(
                (s.cluster_ips.is_empty() == (s.scenario == AccessScenario::EipServiceGateway))
                    && !s.ports.is_empty(),
                "ips/ports",
            )?;
            for (i, p) in s.ports.iter().enumerate() {
                ensure(p.port != 0 && p.target_port != 0, "port 0")?;
                ensure(
                    !s.ports[..i]
                        .iter()
                        .any(|q| (q.protocol, q.port) == (p.protocol, p.port)),
                    "duplicate port",
                )?;
            }
            for (i, b) in s.backends.iter().enumerate() {
                ensure(!s.backends[..i].iter().any(|c| c.ip == b.ip), "duplicate")?;
                ensure(b.workload.as_deref() != Some(""), "empty workload")?;
            }
            ensure(
                s.affinity_timeout.is_none_or(|t| (1..=86_400).contains(&t)),
                "affinity",
            )?;
            let eip_scenario = matches!(
                s.scenario,
                AccessScenario::EipLoadBalancer | AccessScenario::EipServiceGateway
            );
            ensure(!eip_scenario || s.eip.is_some(), "eip")
        }
        Object::NetworkProbe(p) => {
            ensure(name_ok(&p.service) && p.port != 0, "service/port")?;
            ensure(
                p.probe_type != ProbeType::Http || p.http_path.starts_with('/'),
                "path",
            )?;
            ensure(
                (100..=3_600_000).contains(&p.period_ms)
                    && (1..=p.period_ms).contains(&p.timeout_ms),
                "times",
            )?;
            ensure(
                (1..=100).contains(&p.success_threshold)
                    && (1..=100).contains(&p.failure_threshold),
                "thresholds",
            )
        }
        Object::Node(n) => {
            let a = n.tunnel_ip;
            ensure(
                !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()),
                "tunnel ip",
            )?;
            ensure(
                n.host.is_none_or(|(_, m)| m.0[0] & 1 == 0 && m.0 != [0; 6]),
                "host mac",
            )
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Domain → proto → bytes → proto → domain is the identity, alone and inside
    /// an Update.
    #[test]
    fn valid_objects_round_trip(objects in proptest::collection::vec(valid_object(), 1..6)) {
        for d in &objects {
            prop_assert_eq!(check_invariants(d), Ok(()));
            let wire = object_to_proto(d);
            prop_assert_eq!(object_from_proto(&wire), Ok(d.clone()));
            let decoded = pb::Object::decode(wire.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(object_from_proto(&decoded), Ok(d.clone()));
        }
        let update = pb::Update {
            version: 7,
            upserts: objects.iter().map(object_to_proto).collect(),
            ..Default::default()
        };
        let decoded = pb::Update::decode(update.encode_to_vec().as_slice()).unwrap();
        let back: Vec<Object> = decoded
            .upserts
            .iter()
            .map(|o| object_from_proto(o).unwrap())
            .collect();
        prop_assert_eq!(back, objects);
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// Whatever the wire holds: no panic; an accepted object keeps every domain
    /// invariant and is a fixed point of the round trip; a refusal names the kind,
    /// the object and a manifest field.
    #[test]
    fn arbitrary_objects_are_accepted_whole_or_refused_by_field(o in any_proto_object()) {
        match object_from_proto(&o) {
            Ok(d) => {
                prop_assert_eq!(Some(d.key().kind), proto_kind(&o));
                prop_assert_eq!(check_invariants(&d), Ok(()));
                prop_assert_eq!(object_from_proto(&object_to_proto(&d)), Ok(d));
            }
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                match proto_kind(&o) {
                    None => prop_assert_eq!(e.field.as_str(), "object"),
                    Some(kind) => {
                        prop_assert_eq!(e.key.kind, kind);
                        prop_assert!(
                            e.field.starts_with("spec.") || e.field.starts_with("metadata."),
                            "{:?}", e
                        );
                        prop_assert!(!e.key.name.is_empty());
                    }
                }
            }
        }
    }
}

/// One corruption of a valid proto object, and the field it must be refused with.
/// `at` picks an index where the field is a list.
fn corrupt(o: &mut pb::Object, which: usize, at: usize) -> String {
    use pb::object::Object as O;
    let inner = o.object.as_mut().unwrap();
    // Every kind: a bad name.
    if which.is_multiple_of(8) {
        let bad = ["", "Web", "a_b", "-a", "a-"][at % 5];
        match inner {
            O::Vpc(m) => m.name = bad.into(),
            O::Subnet(m) => m.name = bad.into(),
            O::Workload(m) => m.name = bad.into(),
            O::Service(m) => m.name = bad.into(),
            O::NetworkProbe(m) => m.name = bad.into(),
            O::Node(m) => m.name = bad.into(),
        }
        return "metadata.name".into();
    }
    match inner {
        O::Vpc(m) => {
            m.vni = [0, 0x0100_0000, u32::MAX][at % 3];
            "spec.vni".into()
        }
        O::Subnet(m) if m.cidr.contains(':') => {
            let net: Ipv6Net = m.cidr.parse().unwrap();
            match which % 4 {
                0 => {
                    m.vpc = ["", "Blue"][at % 2].into();
                    "spec.vpc".into()
                }
                1 => {
                    // Host bits set, or too small.
                    let host = Ipv6Addr::from(u128::from(net.network()) + 1);
                    m.cidr = if at.is_multiple_of(2) && net.prefix_len() < 128 {
                        format!("{host}/{}", net.prefix_len())
                    } else {
                        format!("{}/127", net.network())
                    };
                    "spec.cidr".into()
                }
                2 => {
                    m.gateway =
                        [net.network().to_string(), "10.0.0.1".into(), "gw".into()][at % 3].clone();
                    "spec.gateway".into()
                }
                _ => {
                    // Node blocks are IPv4 only.
                    m.node_blocks.push(pb::NodeBlock {
                        node: "n".into(),
                        cidr: "10.0.0.0/24".into(),
                    });
                    "spec.nodeBlocks".into()
                }
            }
        }
        O::Subnet(m) => match which % 7 {
            0 | 1 => {
                m.vpc = ["", "Blue"][at % 2].into();
                "spec.vpc".into()
            }
            2 => {
                // Host bits set, or too small.
                let net: Ipv4Net = m.cidr.parse().unwrap();
                m.cidr = if at.is_multiple_of(2) {
                    format!("{}/{}", host_in(net, 0), net.prefix_len())
                } else {
                    format!("{}/31", net.network())
                };
                "spec.cidr".into()
            }
            3 => {
                let net: Ipv4Net = m.cidr.parse().unwrap();
                m.gateway = [
                    net.network().to_string(),
                    net.broadcast().to_string(),
                    "::1".into(),
                    "gw".into(),
                ][at % 4]
                    .clone();
                "spec.gateway".into()
            }
            4 if !m.node_blocks.is_empty() => {
                let i = at % m.node_blocks.len();
                m.node_blocks[i].node = String::new();
                format!("spec.nodeBlocks[{i}].node")
            }
            _ => {
                let net: Ipv4Net = m.cidr.parse().unwrap();
                let i = at % (m.node_blocks.len() + 1);
                let outside = if net.prefix_len() == 0 {
                    "10.0.0.1/24".to_string() // host bits set: refused as well
                } else {
                    let sup = net.supernet().unwrap();
                    let other = sup.subnets(net.prefix_len()).unwrap().find(|n| *n != net);
                    other.unwrap().to_string()
                };
                let block = pb::NodeBlock {
                    node: "n".into(),
                    cidr: outside,
                };
                m.node_blocks.insert(i, block);
                format!("spec.nodeBlocks[{i}].cidr")
            }
        },
        O::Workload(m) => match which % 7 {
            1 => {
                m.kind = [0, 5, -1][at % 3];
                "spec.kind".into()
            }
            2 => {
                m.vpc = String::new();
                "spec.vpc".into()
            }
            3 => {
                m.ip = ["", "10.0.0.256", "::1", "x"][at % 4].into();
                "spec.ip".into()
            }
            4 => {
                m.mac = ["01:00:00:00:00:01", "00:00:00:00:00:00", "02:00", "xx"][at % 4].into();
                "spec.mac".into()
            }
            5 => {
                for i in 0..=MAX_LABELS {
                    m.labels.insert(format!("l{i}"), String::new());
                }
                "metadata.labels".into()
            }
            _ => {
                m.port = if at.is_multiple_of(2) {
                    String::new()
                } else {
                    "p".repeat(MAX_NAME_LEN + 1)
                };
                "spec.port".into()
            }
        },
        O::Service(m) => {
            let ports = m.ports.len();
            match which % 7 {
                1 if m.scenario == pb::AccessScenario::EipServiceGateway as i32 => {
                    // A service gateway has no cluster IP.
                    m.cluster_ips.push("10.96.0.1".into());
                    "spec.clusterIPs".into()
                }
                1 => {
                    let i = at % (m.cluster_ips.len() + 1);
                    if i == m.cluster_ips.len() && (at / 4).is_multiple_of(3) {
                        m.cluster_ips.clear();
                        return "spec.clusterIPs".into();
                    }
                    m.cluster_ips
                        .insert(i, ["10.96.0.256", "fd00::g", "vip"][at % 3].into());
                    format!("spec.clusterIPs[{i}]")
                }
                2 => {
                    let i = at % ports;
                    match at % 4 {
                        0 => {
                            m.ports[i].protocol = 0;
                            format!("spec.ports[{i}].protocol")
                        }
                        1 => {
                            m.ports[i].port = [0, 65_536][at / 4 % 2];
                            format!("spec.ports[{i}].port")
                        }
                        2 => {
                            m.ports[i].target_port = [0, 65_536][at / 4 % 2];
                            format!("spec.ports[{i}].targetPort")
                        }
                        _ => {
                            m.ports.push(m.ports[i].clone());
                            format!("spec.ports[{ports}]")
                        }
                    }
                }
                3 => {
                    m.ports.clear();
                    "spec.ports".into()
                }
                4 => {
                    let i = at % (m.backends.len() + 1);
                    if i < m.backends.len() && (at / 8).is_multiple_of(2) {
                        m.backends.push(m.backends[i].clone());
                        return format!("spec.backends[{}].ip", m.backends.len() - 1);
                    }
                    let bad = pb::Backend {
                        ip: "10.0.0".into(),
                        weight: 1,
                        workload: String::new(),
                        vpc: String::new(),
                    };
                    m.backends.insert(i, bad);
                    format!("spec.backends[{i}].ip")
                }
                5 => {
                    m.session_affinity = Some(pb::SessionAffinity {
                        timeout_seconds: [0, 86_401][at % 2],
                    });
                    "spec.sessionAffinity.timeoutSeconds".into()
                }
                _ => match at % 5 {
                    0 => {
                        m.eip = "eip".into();
                        "spec.eip".into()
                    }
                    1 => {
                        m.scenario = 99;
                        "spec.scenario".into()
                    }
                    2 => {
                        m.scenario = pb::AccessScenario::EipLoadBalancer as i32;
                        if m.cluster_ips.is_empty() {
                            m.cluster_ips.push("10.96.0.1".into());
                        }
                        m.eip = String::new();
                        "spec.eip".into()
                    }
                    3 => {
                        // An EIP without the node that owns it.
                        if m.eip.is_empty() {
                            m.eip = "203.0.113.9".into();
                        }
                        m.eip_node = ["", "Bad_Node"][at / 5 % 2].into();
                        "spec.eipNode".into()
                    }
                    _ => {
                        let i = at % (m.backends.len() + 1);
                        let bad = pb::Backend {
                            ip: "10.0.0.1".into(),
                            weight: 1,
                            workload: String::new(),
                            vpc: "Not_A_Name".into(),
                        };
                        m.backends.insert(i, bad);
                        format!("spec.backends[{i}].vpc")
                    }
                },
            }
        }
        O::NetworkProbe(m) => match which % 7 {
            1 => {
                m.r#type = [0, 3][at % 2];
                "spec.type".into()
            }
            2 => {
                m.port = [0, 65_536][at % 2];
                "spec.port".into()
            }
            3 => {
                m.r#type = pb::ProbeType::Http as i32;
                m.http_path = ["", "healthz"][at % 2].into();
                "spec.httpPath".into()
            }
            4 => {
                m.period_ms = [0, 99, 3_600_001][at % 3];
                "spec.periodMs".into()
            }
            5 => {
                m.timeout_ms = if at.is_multiple_of(2) {
                    0
                } else {
                    m.period_ms + 1
                };
                "spec.timeoutMs".into()
            }
            _ => {
                let bad = [0, 101][at % 2];
                if (at / 2).is_multiple_of(2) {
                    m.success_threshold = bad;
                    "spec.successThreshold".into()
                } else {
                    m.failure_threshold = bad;
                    "spec.failureThreshold".into()
                }
            }
        },
        O::Node(m) => match which % 3 {
            0 => {
                m.tunnel_ip = ["", "0.0.0.0", "127.0.0.1", "224.0.0.5", "::1", "x"][at % 6].into();
                "spec.tunnelIP".into()
            }
            // Host IP and MAC come together, and each must be valid.
            1 => {
                if at.is_multiple_of(2) {
                    m.host_ip = "10.9.9.9".into();
                    m.host_mac = ["", "01:00:00:00:00:01", "x"][at / 2 % 3].into();
                } else {
                    m.host_ip = String::new();
                    m.host_mac = "02:00:00:00:00:09".into();
                }
                ["spec.hostMAC", "spec.hostIP"][at % 2].into()
            }
            _ => {
                m.host_ip = ["::1", "host", "10.0.0.256"][at % 3].into();
                m.host_mac = "02:00:00:00:00:09".into();
                "spec.hostIP".into()
            }
        },
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// A valid object with one field made invalid is refused, and the error names
    /// that field and the object.
    #[test]
    fn one_corruption_is_refused_with_its_field(
        d in valid_object(),
        which in 0..64usize,
        at in 0..1024usize,
    ) {
        let mut wire = object_to_proto(&d);
        let field = corrupt(&mut wire, which, at);
        let err = object_from_proto(&wire).expect_err("a corrupted object must be refused");
        prop_assert_eq!(&err.field, &field, "{:?}", err);
        prop_assert_eq!(err.key.kind, d.key().kind);
        if field != "metadata.name" {
            prop_assert_eq!(&err.key.name, &d.key().name);
        }
    }
}

/// A label map over the limit is refused by count before anything is copied, and
/// the domain keeps labels as an ordered map.
#[test]
fn labels_are_bounded_and_ordered() {
    let mut w = pb::Workload {
        name: "w".into(),
        kind: pb::WorkloadKind::Pod as i32,
        vpc: "v".into(),
        ip: "10.0.0.2".into(),
        ipv6: String::new(),
        mac: String::new(),
        labels: (0..MAX_LABELS)
            .map(|i| (format!("k{i:02}"), i.to_string()))
            .collect(),
        node: "n".into(),
        port: "p".into(),
    };
    let ok = workload_from_proto(&w).unwrap();
    let want: BTreeMap<String, String> = w.labels.clone().into_iter().collect();
    assert_eq!(ok.labels, want);
    w.labels.insert("one-more".into(), String::new());
    assert_eq!(
        workload_from_proto(&w).unwrap_err().field,
        "metadata.labels"
    );
}
