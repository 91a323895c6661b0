//! The per-Service limits of `dpu_model::limits` (docs/limits.md): a Service
//! at `MAX_BACKENDS` backends whose weights add up to `MAX_BUCKETS` is valid;
//! one backend more, one unit of weight more, or a weight over `MAX_WEIGHT`
//! is refused, naming the Service and the field.

use std::net::Ipv4Addr;

use dpu_model::limits::{MAX_BACKENDS, MAX_BUCKETS, MAX_WEIGHT};
use dpu_model::{
    validate, AccessScenario, Backend, Intent, Object, Protocol, Service, ServicePort, Subnet, Vpc,
};

fn intent(backends: usize, weight: impl Fn(usize) -> u32) -> Intent {
    let mut i = Intent::default();
    i.upsert(Object::Vpc(Vpc {
        name: "v".into(),
        vni: 1,
    }));
    i.upsert(Object::Subnet(Subnet {
        name: "s".into(),
        vpc: "v".into(),
        cidr: "10.0.0.0/12".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 0, 1).into(),
        node_blocks: vec![],
    }));
    i.upsert(Object::Service(Service {
        name: "wide".into(),
        vpc: "v".into(),
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10).into()],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        }],
        backends: (0..backends)
            .map(|b| Backend {
                ip: Ipv4Addr::from(0x0a01_0000 + b as u32).into(),
                weight: weight(b),
                workload: None,
                vpc: "v".into(),
            })
            .collect(),
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    }));
    i
}

/// (field, message) of every error.
fn errors(i: &Intent) -> Vec<(String, String)> {
    validate(i)
        .into_iter()
        .map(|e| {
            assert_eq!(e.key.name, "wide", "{e:?}");
            (e.field, e.message)
        })
        .collect()
}

#[test]
fn the_largest_service_is_valid() {
    const { assert!(MAX_BACKENDS >= 4_096) };
    let per = MAX_BUCKETS / MAX_BACKENDS as u32;
    assert_eq!(errors(&intent(MAX_BACKENDS, |_| per)), vec![]);
    // Fewer backends may carry the whole bucket budget in weights.
    let few = (MAX_BUCKETS / MAX_WEIGHT) as usize;
    let rest = MAX_BUCKETS % MAX_WEIGHT;
    let i = intent(few + 1, |b| if b < few { MAX_WEIGHT } else { rest });
    assert_eq!(errors(&i), vec![]);
}

#[test]
fn one_backend_too_many_is_refused() {
    assert_eq!(
        errors(&intent(MAX_BACKENDS + 1, |_| 1)),
        vec![(
            "spec.backends".to_string(),
            format!("{} backends; at most {MAX_BACKENDS}", MAX_BACKENDS + 1)
        )]
    );
}

#[test]
fn one_bucket_too_many_is_refused() {
    let per = MAX_BUCKETS / MAX_BACKENDS as u32;
    let i = intent(MAX_BACKENDS, |b| if b == 0 { per + 1 } else { per });
    assert_eq!(
        errors(&i),
        vec![(
            "spec.backends".to_string(),
            format!(
                "the weights add up to {}; at most {MAX_BUCKETS} (one group bucket per unit of weight)",
                MAX_BUCKETS + 1
            )
        )]
    );
}

#[test]
fn a_weight_over_the_limit_is_refused() {
    let i = intent(3, |b| if b == 1 { MAX_WEIGHT + 1 } else { 1 });
    assert_eq!(
        errors(&i),
        vec![(
            "spec.backends[1].weight".to_string(),
            format!("weight {} is above {MAX_WEIGHT}", MAX_WEIGHT + 1)
        )]
    );
}
