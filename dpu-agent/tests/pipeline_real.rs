//! The compiler and the reconciler against a real OVS with real traffic, without a
//! controller: intent built in code → compile → bundle through `ovs-ofctl` → TCP
//! and UDP from a client namespace. Needs root; missing prerequisites fail.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use dpu_agent::compile::flows::{Actions, Bucket, DesiredState, Group, HashField, Match};
use dpu_agent::compile::pipeline::cookie::{Category, Cookie};
use dpu_agent::compile::{compile, NodeFacts};
use dpu_agent::reconcile::backend::{InstalledGroup, OfctlBackend, OpenFlowBackend};
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::alloc::Allocations;
use dpu_lab::netns::{self, Netns};
use dpu_lab::ovs::OvsInstance;
use dpu_lab::process::{self, Child};
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
    intent_with_affinity(backends, weights, None)
}

fn intent_with_affinity(backends: u8, weights: &[u32], affinity: Option<u32>) -> Intent {
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
        affinity_timeout: affinity,
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

/// The groups as `ovs-ofctl dump-groups` shows them read back exactly as the
/// compiler wrote them (every bucket form it emits: IPv4 and IPv6 endpoints,
/// affinity and plain, the gateway's zone register, a zero value, repeated
/// buckets, a local group's id), and each group's users are the flows that
/// send to it. The reconciler relies on this after a restart: a group that
/// reads back different flushes its Service's affinity entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_groups_read_back_as_compiled() -> anyhow::Result<()> {
    let ovs = OvsInstance::start()?;
    let bridge = format!("br{}", netns::unique_prefix("rg"));
    ovs.add_bridge(&bridge)?;
    let owner = Cookie::new(Category::Service, "YusurService/web");
    let group = |id: u32, hash_fields: Vec<&'static str>, buckets: &[&str]| Group {
        id,
        hash_fields: hash_fields
            .iter()
            .map(|f| HashField::parse(f).unwrap())
            .collect(),
        // Ids as the compiler gives them (hashes, up to 0xfffffefe), so that
        // the switch is seen to keep them.
        buckets: {
            let mut b: Vec<Bucket> = buckets
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let ip = std::net::IpAddr::from([10, 0, 0, i as u8]);
                    Bucket::new(
                        dpu_agent::compile::bucket_id("blue", ip, 8080, 0),
                        Arc::new(a.parse::<Actions>().unwrap()),
                    )
                })
                .collect();
            b.sort();
            b
        },
        owner,
        learns: false,
    };
    let aff = "set_field:0xa000111->reg3,set_field:0x1f90->reg4,resubmit(,43)";
    let mut d = DesiredState::default();
    for g in [
        group(
            1,
            vec!["ip_src"],
            &[aff, aff, "set_field:0xa000112->reg3,set_field:0x1f90->reg4,resubmit(,43)"],
        ),
        group(
            2,
            vec!["ip_src", "ip_dst", "tcp_src", "tcp_dst"],
            &["set_field:0xa000111->reg3,set_field:0x1f90->reg4,set_field:0x3->reg6,resubmit(,45)"],
        ),
        group(
            2 | 0x8000_0000,
            vec!["ip_src", "ip_dst", "udp_src", "udp_dst"],
            &["set_field:0xa000111->reg3,set_field:0x0->reg4,resubmit(,45)"],
        ),
        group(
            3 | 0x4000_0000,
            vec!["ipv6_src", "ipv6_dst", "sctp_src", "sctp_dst"],
            &[
                "set_field:0xfd000001000000000000000000000011->xxreg2,set_field:0x1f90->reg4,resubmit(,45)",
                "set_field:0x1->xxreg2,set_field:0x14e9->reg4,resubmit(,45)",
            ],
        ),
        group(4, vec!["ipv6_src"], &["set_field:0x0->xxreg2,set_field:0x50->reg4,resubmit(,43)"]),
    ] {
        d.groups.insert(g.id, Arc::new(g));
    }
    // A flow that sends to group 1, as ServiceSelect does.
    d.add(
        dpu_agent::compile::pipeline::SERVICE_SELECT,
        100,
        "tcp,tp_dst=80".parse::<Match>().unwrap(),
        Actions::new().group(1),
        owner,
    );
    let mut backend = OfctlBackend::new(ovs.mgmt(&bridge), "ovs-ofctl");
    let mut rec = Reconciler::start(backend.clone())
        .await
        .map_err(|(_, e)| e)?;
    rec.apply(&d).await?;

    let summary = backend.installed().await?;
    let dump = ovs.dump_groups(&bridge)?;
    assert_eq!(
        summary.groups.keys().collect::<Vec<_>>(),
        d.groups.keys().collect::<Vec<_>>(),
        "{dump:#?}"
    );
    for g in d.groups.values() {
        assert_eq!(summary.groups[&g.id], InstalledGroup::of(g), "{dump:#?}");
        // The switch lists the buckets in the order given, with their ids.
        let line = dump
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("group_id={},", g.id)))
            .unwrap();
        let ids: Vec<u32> = line
            .split("bucket=bucket_id:")
            .skip(1)
            .map(|b| b.split(',').next().unwrap().parse().unwrap())
            .collect();
        let want: Vec<u32> = g.buckets.iter().map(|b| b.id).collect();
        assert_eq!(ids, want, "{line}");
    }
    let users: BTreeMap<u32, BTreeSet<u64>> = [(1, [owner.value(rec.round())].into())].into();
    assert_eq!(summary.group_users, users);
    Ok(())
}

/// The SessionAffinity entries on the switch whose cookie is one of `cookies`.
fn learned_entries(t: &Topo, cookies: &BTreeSet<u64>) -> anyhow::Result<Vec<String>> {
    Ok(t.ovs
        .dump_flows(&t.bridge)?
        .into_iter()
        .filter(|f| f.contains("table=41") && cookies.iter().any(|c| has_cookie(f, *c)))
        .collect())
}

fn has_cookie(flow: &str, cookie: u64) -> bool {
    flow.trim_start()
        .starts_with(&format!("cookie={cookie:#x},"))
}

/// The cookies the AffinityLearn flows of `d` learn under.
fn learned_cookies(d: &DesiredState) -> BTreeSet<u64> {
    d.flows
        .values()
        .filter_map(|b| b.actions.learned_cookie())
        .collect()
}

/// Agent restarts under affinity traffic: with the Service unchanged, its learned
/// entries survive (clients stay pinned); when a backend was drained while the
/// agent was down, the first bundle of the new incarnation deletes the entries
/// that pin clients to it, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_affinity_but_that_of_a_backend_drained_meanwhile() -> anyhow::Result<()> {
    let t = topo("ra", 2)?;
    let facts = NodeFacts {
        node: "dpu-1".into(),
        ports: t.ports.clone(),
        ..Default::default()
    };
    let owner = Cookie::new(Category::Service, "YusurService/web");
    let start = || async {
        Reconciler::start(OfctlBackend::new(t.ovs.mgmt(&t.bridge), "ovs-ofctl"))
            .await
            .map_err(|(_, e)| e)
    };
    let want = intent_with_affinity(2, &[], Some(300));
    let alloc = Allocations::default().update(&want)?;
    let compiled = compile(&want, &alloc, &facts).desired;
    assert!(compiled
        .groups
        .values()
        .all(|g| g.learns && g.owner == owner));
    let cookies = learned_cookies(&compiled);
    // Two ports, two backends: one AffinityLearn flow, and cookie, each.
    assert_eq!(cookies.len(), 4);
    start().await?.apply(&compiled).await?;

    let client = &t.hosts["client"];
    let r = traffic::run_client(client, "10.96.0.10:80", "tcp", 5, &[])?;
    assert_eq!(r.failed, 0, "{r:?}");
    let mut entries = Vec::new();
    process::wait_until("a learned affinity entry", Duration::from_secs(5), || {
        entries = learned_entries(&t, &cookies).unwrap_or_default();
        !entries.is_empty()
    })?;
    // Traffic pauses: the datapath flows go, with their statistics. A datapath
    // flow of a new connection whose statistics are not pushed yet runs its
    // `learn` again when they are, re-adding an entry just deleted: that would
    // hide a wrong flush below, or learn a fresh entry after a right one.
    t.ovs.vswitchd_appctl(&["revalidator/purge"])?;
    entries = learned_entries(&t, &cookies)?;
    assert!(!entries.is_empty());

    // The agent restarts; nothing changed.
    let mut rec = start().await?;
    rec.apply(&compiled).await?;
    assert_eq!(
        learned_entries(&t, &cookies)?,
        entries,
        "a restart lost affinity"
    );
    assert!(rec.plan(&compiled).is_empty());

    // The agent restarts after web-1 was drained (weight 0) while it was down.
    let drained = intent_with_affinity(2, &[0, 1], Some(300));
    let alloc2 = alloc.update(&drained)?;
    let compiled2 = compile(&drained, &alloc2, &facts).desired;
    assert_ne!(compiled2.groups, compiled.groups);
    // web-1's cookies are the ones the drained state no longer learns under.
    let web1: BTreeSet<u64> = cookies
        .difference(&learned_cookies(&compiled2))
        .copied()
        .collect();
    assert_eq!(web1.len(), 2);
    let mut rec = start().await?;
    rec.apply(&compiled2).await?;
    assert_eq!(
        learned_entries(&t, &web1)?,
        Vec::<String>::new(),
        "affinity to the drained backend survived the restart"
    );
    let others: Vec<String> = entries
        .iter()
        .filter(|f| !web1.iter().any(|c| has_cookie(f, *c)))
        .cloned()
        .collect();
    let web2: BTreeSet<u64> = cookies.difference(&web1).copied().collect();
    assert_eq!(
        learned_entries(&t, &web2)?,
        others,
        "affinity to the backend still serving was lost"
    );
    let r = traffic::run_client(client, "10.96.0.10:80", "tcp", 10, &[])?;
    assert_eq!(r.count_for("web-2"), 10, "{r:?}");
    Ok(())
}
