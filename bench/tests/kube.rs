//! kube-proxy-equivalent rulesets loaded for real into private network namespaces
//! (needs root, iptables and nftables; a missing tool is a failure, never a skip).

use std::net::Ipv4Addr;
use std::sync::Mutex;

use dpu_bench::kube::{
    cold_load, iptables_ruleset, netns_exists, nft_ruleset, own_netns, Flavor, LoadedNetns, SvcSpec,
};

/// The tests count this process's namespaces, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const FLAVORS: [Flavor; 3] = [
    Flavor::IptablesLegacy,
    Flavor::IptablesNft,
    Flavor::Nftables,
];

fn services(n: usize, m: usize) -> Vec<SvcSpec> {
    (0..n)
        .map(|i| SvcSpec {
            vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32),
            port: 80,
            proto: if i % 2 == 0 { "tcp" } else { "udp" },
            endpoints: (0..m)
                .map(|k| {
                    let ep = u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i * m + k) as u32 + 2;
                    (Ipv4Addr::from(ep), 8080)
                })
                .collect(),
        })
        .collect()
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn every_flavor_loads_the_expected_chains_and_rules() {
    dpu_lab::prereq::assert_root();
    let _serial = lock();
    let svcs = services(3, 3);
    for flavor in FLAVORS {
        let netns = LoadedNetns::load(flavor, &svcs).unwrap();
        let ns = netns.name().to_string();
        let loaded = netns.loaded().unwrap();
        eprintln!("{flavor:?}: {loaded:?}");
        assert_eq!(loaded.dnat_rules, 9, "{flavor:?}: one DNAT per endpoint");
        assert_eq!(loaded.service_chains, 3, "{flavor:?}");
        assert_eq!(loaded.endpoint_chains, 9, "{flavor:?}");
        if let Flavor::Nftables = flavor {
            assert_eq!(loaded.service_map_elements, 3);
            assert_eq!(loaded.rules, nft_ruleset(&svcs).1);
        } else {
            assert_eq!(loaded.rules, iptables_ruleset(&svcs).1);
        }
        assert!(netns_exists(&ns));
        drop(netns);
        assert!(!netns_exists(&ns), "{ns} was left behind");
    }
    assert!(own_netns().is_empty(), "{:?}", own_netns());
}

/// A real TCP connection to the VIP, inside the namespace, is DNATed to one of the
/// endpoints, and over 30 connections more than one endpoint is chosen.
#[test]
fn a_connection_to_the_vip_reaches_an_endpoint() {
    dpu_lab::prereq::assert_root();
    let _serial = lock();
    let svcs = services(3, 3);
    for flavor in FLAVORS {
        let netns = LoadedNetns::load(flavor, &svcs).unwrap();
        let chosen = netns.connect_through_vip(&svcs[0], 30).unwrap();
        let endpoints: Vec<Ipv4Addr> = svcs[0].endpoints.iter().map(|e| e.0).collect();
        assert!(
            chosen.iter().all(|ep| endpoints.contains(ep)),
            "{flavor:?}: {chosen:?}"
        );
        let distinct: std::collections::HashSet<_> = chosen.iter().collect();
        assert!(distinct.len() >= 2, "{flavor:?}: always {distinct:?}");
    }
    assert!(own_netns().is_empty(), "{:?}", own_netns());
}

/// Without the ruleset nothing answers on the VIP: the traffic check can fail.
#[test]
fn without_the_ruleset_the_vip_is_unreachable() {
    dpu_lab::prereq::assert_root();
    let _serial = lock();
    let svcs = services(3, 3);
    let mut other = svcs[0].clone();
    other.vip = Ipv4Addr::new(10, 97, 0, 1);
    let netns = LoadedNetns::load(Flavor::Nftables, &svcs).unwrap();
    assert!(netns.connect_through_vip(&other, 1).is_err());
}

#[test]
fn cold_load_counts_what_was_loaded_and_cleans_up() {
    dpu_lab::prereq::assert_root();
    let _serial = lock();
    let svcs = services(20, 4);
    for flavor in FLAVORS {
        let cost = cold_load(flavor, &svcs).unwrap();
        eprintln!("{flavor:?}: {cost:?}");
        let expected = match flavor {
            Flavor::Nftables => nft_ruleset(&svcs).1,
            _ => iptables_ruleset(&svcs).1,
        };
        assert_eq!(cost.rules, expected, "{flavor:?}");
        assert!(cost.wall > cost.cpu / 4 && !cost.wall.is_zero(), "{cost:?}");
        // A loader maps at least its libraries; a zero would mean the wrong rusage.
        assert!(cost.peak_rss_kib > 500, "{cost:?}");
        assert!(own_netns().is_empty(), "{:?}", own_netns());
    }
}

/// A forked child's `ru_maxrss` starts at the parent's RSS; the reported peak must be
/// the loader's own even when the harness is large.
#[test]
fn peak_rss_is_the_loaders_not_the_harnesses() {
    dpu_lab::prereq::assert_root();
    let _serial = lock();
    // 192 MiB, written, so it is resident in this process.
    let ballast = std::hint::black_box(vec![1u8; 192 << 20]);
    for flavor in FLAVORS {
        let cost = cold_load(flavor, &services(3, 3)).unwrap();
        assert!(cost.peak_rss_kib < 64 << 10, "{flavor:?}: {cost:?}");
    }
    drop(ballast);
}

#[test]
fn a_rejected_ruleset_fails_and_still_cleans_up() {
    dpu_lab::prereq::assert_root();
    let _serial = lock();
    // No such protocol: every loader refuses the file.
    let bad = vec![SvcSpec {
        vip: Ipv4Addr::new(10, 96, 0, 1),
        port: 80,
        proto: "bogus",
        endpoints: vec![(Ipv4Addr::new(10, 244, 0, 2), 80)],
    }];
    for flavor in FLAVORS {
        let err = cold_load(flavor, &bad).expect_err("a bad ruleset was accepted");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("failed") && msg.contains("bogus"),
            "{flavor:?}: {msg}"
        );
        assert!(own_netns().is_empty(), "{:?}", own_netns());
    }
}

#[test]
fn iptables_ruleset_has_kube_proxy_shape() {
    let (text, rules) = iptables_ruleset(&services(1, 3));
    assert_eq!(rules, text.lines().filter(|l| l.starts_with("-A ")).count());
    let svc = text
        .lines()
        .find(|l| l.starts_with("-A KUBE-SERVICES -d 10.96.0.10/32"))
        .unwrap();
    assert!(
        svc.contains("-p tcp -m comment --comment \"bench/svc-00000:p80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-"),
        "{svc}"
    );
    let probs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("--probability ").nth(1))
        .collect();
    assert_eq!(probs.len(), 2, "all but the last endpoint");
    assert!(probs[0].starts_with("0.3333333333") && probs[1].starts_with("0.5000000000"));
    assert!(text.contains("-j DNAT --to-destination 10.244.0.2:8080"));
    assert!(text.contains("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"));
}

#[test]
fn nft_ruleset_has_kube_proxy_shape() {
    let (text, _) = nft_ruleset(&services(1, 2));
    assert!(
        text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"),
        "{text}"
    );
    assert!(text
        .contains("add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-"));
    assert!(text.contains("-bench/svc-00000/tcp/p80 }"), "{text}");
    assert!(text.contains("meta l4proto tcp dnat to 10.244.0.2:8080"));
}
