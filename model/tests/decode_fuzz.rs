//! Property tests for the proto edge: arbitrary bytes and mutated valid messages
//! never panic the decoder or the converters, and every rejection names a field.
//! Seeded, so a failure reproduces.

use dpu_model::{object_from_proto, object_to_proto, validate, Intent};
use dpu_proto::v1 as pb;
use prost::Message;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn valid_objects() -> Vec<pb::Object> {
    use pb::object::Object as O;
    vec![
        pb::Object {
            object: Some(O::Vpc(pb::Vpc {
                name: "vpc-a".into(),
                vni: 100,
            })),
        },
        pb::Object {
            object: Some(O::Subnet(pb::Subnet {
                name: "net".into(),
                vpc: "vpc-a".into(),
                cidr: "10.0.1.0/24".into(),
                gateway: "10.0.1.1".into(),
                node_blocks: vec![pb::NodeBlock {
                    node: "dpu-1".into(),
                    cidr: "10.0.1.64/26".into(),
                }],
            })),
        },
        pb::Object {
            object: Some(O::Subnet(pb::Subnet {
                name: "net6".into(),
                vpc: "vpc-a".into(),
                cidr: "fd00:1::/64".into(),
                gateway: "fd00:1::1".into(),
                node_blocks: vec![],
            })),
        },
        pb::Object {
            object: Some(O::Workload(pb::Workload {
                name: "web-1".into(),
                kind: pb::WorkloadKind::Pod as i32,
                vpc: "vpc-a".into(),
                ip: "10.0.1.11".into(),
                ipv6: "fd00:1::11".into(),
                mac: "0a:00:00:00:01:0b".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                node: "dpu-1".into(),
                port: "web-1".into(),
            })),
        },
        pb::Object {
            object: Some(O::Service(pb::Service {
                name: "web".into(),
                vpc: "vpc-a".into(),
                cluster_ips: vec!["10.96.0.10".into()],
                ports: vec![pb::ServicePort {
                    name: "http".into(),
                    protocol: 1,
                    port: 80,
                    target_port: 8080,
                }],
                backends: vec![pb::Backend {
                    ip: "10.0.1.11".into(),
                    weight: 1,
                    workload: "web-1".into(),
                    vpc: String::new(),
                }],
                session_affinity: Some(pb::SessionAffinity {
                    timeout_seconds: 60,
                }),
                eip: String::new(),
                eip_node: String::new(),
                scenario: 1,
                external_traffic_local: false,
            })),
        },
        pb::Object {
            object: Some(O::NetworkProbe(pb::NetworkProbe {
                name: "p".into(),
                service: "web".into(),
                r#type: 2,
                port: 8080,
                http_path: "/healthz".into(),
                period_ms: 1000,
                timeout_ms: 500,
                success_threshold: 1,
                failure_threshold: 3,
                http_status_min: 200,
                http_status_max: 299,
            })),
        },
    ]
}

#[test]
fn valid_objects_round_trip_and_validate() {
    let mut intent = Intent::default();
    for o in valid_objects() {
        let d = object_from_proto(&o).expect("valid object");
        assert_eq!(object_to_proto(&d), o, "round trip changed {o:?}");
        intent.upsert(d);
    }
    assert_eq!(validate(&intent), vec![]);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for _ in 0..20_000 {
        let len = rng.random_range(0..256);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Ok(o) = pb::Object::decode(bytes.as_slice()) {
            if let Err(e) = object_from_proto(&o) {
                assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
            }
        }
        let _ = pb::Update::decode(bytes.as_slice());
    }
}

#[test]
fn mutated_valid_messages_never_panic_and_errors_name_a_field() {
    let mut rng = StdRng::seed_from_u64(0xfeed);
    let seeds: Vec<Vec<u8>> = valid_objects().iter().map(|o| o.encode_to_vec()).collect();
    let mut rejected = 0;
    for _ in 0..50_000 {
        let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..bytes.len());
            match rng.random_range(0..3) {
                0 => bytes[i] = rng.random(),
                1 => bytes[i] ^= 1 << rng.random_range(0..8),
                _ => {
                    bytes.remove(i);
                    if bytes.is_empty() {
                        break;
                    }
                }
            }
        }
        let Ok(o) = pb::Object::decode(bytes.as_slice()) else {
            continue;
        };
        match object_from_proto(&o) {
            Ok(d) => {
                let mut i = Intent::default();
                i.upsert(d);
                let _ = validate(&i);
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.field.is_empty(), "{e:?}");
                assert!(!e.key.name.is_empty(), "{e:?}");
            }
        }
    }
    assert!(
        rejected > 1000,
        "the mutations should be rejected often; got {rejected}"
    );
}

/// An absurd backend list (100,000 entries) is refused by its count, before the
/// per-entry duplicate check (quadratic) runs: the error is the count's, not a
/// per-entry one.
#[test]
fn an_absurd_backend_count_is_refused_by_the_count_first() {
    let backends = (0..100_000u32)
        .map(|i| pb::Backend {
            ip: std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(),
            weight: 1,
            workload: String::new(),
            vpc: String::new(),
        })
        .collect();
    let svc = pb::Service {
        name: "big".into(),
        vpc: "vpc-a".into(),
        cluster_ips: vec!["10.96.0.10".into()],
        ports: vec![pb::ServicePort {
            name: "http".into(),
            protocol: 1,
            port: 80,
            target_port: 8080,
        }],
        backends,
        scenario: 1,
        ..Default::default()
    };
    let e = dpu_model::service_from_proto(&svc).unwrap_err();
    assert_eq!(e.field, "spec.backends", "{e}");
    assert!(e.message.contains("100000 backends; at most"), "{e}");
}
