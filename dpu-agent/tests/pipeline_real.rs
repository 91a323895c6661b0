//! The compiler and the reconciler against a real OVS with real traffic, without a
//! controller: intent built in code → compile → bundle through `ovs-ofctl` → TCP
//! and UDP from a client namespace. Needs root; missing prerequisites fail.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dpu_agent::alloc::Allocations;
use dpu_agent::compile::{compile, NodeFacts};
use dpu_agent::openflow::OfctlBackend;
use dpu_agent::reconcile::Reconciler;
use dpu_lab::netns::{self, Netns};
use dpu_lab::ovs::OvsInstance;
use dpu_lab::process::Child;
use dpu_lab::traffic;
use dpu_model::*;

struct Topo {
    // Drop order: echo servers, namespaces, then OVS.
    _echo: Vec<Child>,
    hosts: BTreeMap<String, Netns>,
    ovs: OvsInstance,
    bridge: String,
    ports: BTreeMap<String, u32>,
}

fn host_mac(i: u8) -> Mac {
    Mac([0x0a, 0, 0, 0, 1, i])
}

/// Client 10.0.1.2 and backends web-N at 10.0.1.1N on one bridge.
fn topo(tag: &str, backends: u8) -> anyhow::Result<Topo> {
    let prefix = netns::unique_prefix(tag);
    let ovs = OvsInstance::start()?;
    let bridge = format!("br{prefix}");
    ovs.add_bridge(&bridge)?;
    let mut hosts = BTreeMap::new();
    let mut ports = BTreeMap::new();
    let mut echo = Vec::new();
    let mut names = vec![("client".to_string(), 2u8)];
    names.extend((1..=backends).map(|i| (format!("web-{i}"), 10 + i)));
    for (idx, (name, last)) in names.iter().enumerate() {
        let (ns, rep) = netns::attach_host(
            &prefix,
            &idx.to_string(),
            &format!("10.0.1.{last}/24"),
            &host_mac(*last).to_string(),
            Some("10.0.1.1"),
        )?;
        let ofport = ovs.plug(&bridge, &rep, name)?;
        ports.insert(name.clone(), ofport);
        if name != "client" {
            let log = ovs.dir().join(format!("echo-{name}.log"));
            echo.push(traffic::start_echo(&ns, name, &[8080], &[5353], &log)?);
        }
        hosts.insert(name.clone(), ns);
    }
    Ok(Topo {
        _echo: echo,
        hosts,
        ovs,
        bridge,
        ports,
    })
}

fn intent(backends: u8, weights: &[u32]) -> Intent {
    let mut i = Intent::default();
    i.upsert(Object::Vpc(Vpc {
        name: "vpc-a".into(),
        vni: 100,
    }));
    i.upsert(Object::Subnet(Subnet {
        name: "net".into(),
        vpc: "vpc-a".into(),
        cidr: "10.0.1.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 1, 1).into(),
        node_blocks: vec![],
    }));
    let mut names = vec![("client".to_string(), 2u8)];
    names.extend((1..=backends).map(|i| (format!("web-{i}"), 10 + i)));
    for (name, last) in &names {
        i.upsert(Object::Workload(Workload {
            name: name.clone(),
            kind: WorkloadKind::Pod,
            vpc: "vpc-a".into(),
            ip: Ipv4Addr::new(10, 0, 1, *last),
            ipv6: None,
            mac: Some(host_mac(*last)),
            labels: BTreeMap::new(),
            node: "dpu-1".into(),
            port: name.clone(),
        }));
    }
    i.upsert(Object::Service(Service {
        name: "web".into(),
        vpc: "vpc-a".into(),
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10).into()],
        ports: vec![
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
            },
            ServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                target_port: 5353,
            },
        ],
        backends: (1..=backends)
            .map(|n| Backend {
                ip: Ipv4Addr::new(10, 0, 1, 10 + n).into(),
                weight: weights.get(n as usize - 1).copied().unwrap_or(1),
                workload: None,
                vpc: "vpc-a".into(),
            })
            .collect(),
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    }));
    assert_eq!(validate(&i), vec![]);
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_pipeline_balances_real_tcp_and_udp_and_diffs_cleanly() -> anyhow::Result<()> {
    let t = topo("pl", 2)?;
    let facts = NodeFacts {
        node: "dpu-1".into(),
        ports: t.ports.clone(),
        ..Default::default()
    };
    let backend = OfctlBackend::new(t.ovs.mgmt(&t.bridge), "ovs-ofctl");
    let mut rec = Reconciler::start(backend).await.map_err(|(_, e)| e)?;
    let want = intent(2, &[]);
    let alloc = Allocations::default().update(&want)?;
    let compiled = compile(&want, &alloc, &facts);
    assert!(compiled.pending_ports.is_empty());
    rec.apply(&compiled.desired).await?;

    // What the switch holds equals what we compiled: same number of flows and groups.
    let flows = t.ovs.dump_flows(&t.bridge)?;
    assert_eq!(flows.len(), compiled.desired.flows.len(), "{flows:#?}");
    assert_eq!(
        t.ovs.dump_groups(&t.bridge)?.len(),
        compiled.desired.groups.len()
    );

    let client = &t.hosts["client"];
    let tcp = traffic::run_client(client, "10.96.0.10:80", "tcp", 40, &[])?;
    let udp = traffic::run_client(client, "10.96.0.10:53", "udp", 40, &[])?;
    assert_eq!((tcp.failed, udp.failed), (0, 0), "{tcp:?} {udp:?}");
    for b in ["web-1", "web-2"] {
        assert!(
            tcp.count_for(b) > 0 && udp.count_for(b) > 0,
            "{b}: {tcp:?} {udp:?}"
        );
    }
    // Direct routing inside the VPC works too.
    let direct = traffic::run_client(client, "10.0.1.12:8080", "tcp", 3, &[])?;
    assert_eq!(direct.count_for("web-2"), 3, "{direct:?}");

    // A weight change is a small diff: only the groups change.
    let want2 = intent(2, &[0, 1]);
    let alloc2 = alloc.update(&want2)?;
    let compiled2 = compile(&want2, &alloc2, &facts);
    let plan = rec.plan(&compiled2.desired);
    assert!(
        plan.len() <= 6,
        "weight change planned {} ops: {plan:#?}",
        plan.len()
    );
    rec.apply(&compiled2.desired).await?;
    let tcp = traffic::run_client(client, "10.96.0.10:80", "tcp", 20, &[])?;
    assert_eq!(
        tcp.count_for("web-2"),
        20,
        "weight 0 must take no new connections: {tcp:?}"
    );
    // Nothing left to do.
    assert!(rec.plan(&compiled2.desired).is_empty());
    Ok(())
}
