//! `observe::switch_stats` and `observe::datapath` against a real
//! `ovs-vswitchd`, with `ovs-ofctl` and `ovs-appctl` as the oracles: real
//! packets go through flows and a select group, and the counters read natively
//! must equal what `ovs-ofctl -O OpenFlow15 dump-flows` and `dump-group-stats`
//! print, with bucket ids in the order `dump-groups` lists them. Needs root and
//! Open vSwitch; a missing OVS fails, it does not skip.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpu_agent::compile::flows::{Actions, Bucket, FlowBody, FlowKey, Group, HashField, Match};
use dpu_agent::compile::pipeline::cookie::{Category, Cookie};
use dpu_agent::observe::datapath;
use dpu_agent::observe::switch_stats::{self, FlowCounter, GroupCounter};
use dpu_agent::reconcile::backend::{BundleOp, NativeBackend, OpenFlowBackend};
use dpu_lab::ovs::OvsInstance;

const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn start_ovs() -> OvsInstance {
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().expect("Open vSwitch is installed and this runs as root");
    ovs.add_bridge("br0").unwrap();
    ovs
}

/// An Ethernet/IPv4/UDP frame from `src` to `dst`, in hex for `packet-out`.
fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> String {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let ip_len = (20 + 8 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(f.len() + payload, b'x');
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends one frame into the bridge as if from the controller, straight into `table`.
fn send(ovs: &OvsInstance, src: Ipv4Addr, dst: Ipv4Addr, table: u8) {
    ovs.ofctl(&[
        "packet-out",
        &ovs.mgmt("br0"),
        &format!(
            "in_port=controller packet={} actions=resubmit(,{table})",
            udp_frame(src, dst, 10)
        ),
    ])
    .unwrap();
}

/// The value of `key=` in a comma- or space-separated `ovs-ofctl` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split([',', ' '])
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

fn num(line: &str, key: &str) -> u64 {
    let v = field(line, key).unwrap_or_else(|| panic!("no {key} in {line}"));
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => v.parse().unwrap(),
    }
}

/// `dump-flows` of `tables` as counters, sorted.
fn ofctl_flows(ovs: &OvsInstance, tables: &[u8]) -> Vec<FlowCounter> {
    let mut out = Vec::new();
    for t in tables {
        let text = ovs
            .ofctl(&["dump-flows", &ovs.mgmt("br0"), &format!("table={t}")])
            .unwrap();
        for line in text.lines().filter(|l| l.contains("cookie=")) {
            out.push(FlowCounter {
                table: num(line, "table") as u8,
                // `ovs-ofctl` leaves out the default priority.
                priority: field(line, "priority").map_or(0x8000, |p| p.parse().unwrap()),
                cookie: num(line, "cookie"),
                packets: num(line, "n_packets"),
                bytes: num(line, "n_bytes"),
            });
        }
    }
    out.sort_by_key(|f| (f.table, f.priority, f.cookie));
    out
}

/// `dump-group-stats` and `dump-groups`: every group's counters, with bucket
/// ids in the order `dump-groups` lists them.
fn ofctl_groups(ovs: &OvsInstance) -> BTreeMap<u32, GroupCounter> {
    let mgmt = ovs.mgmt("br0");
    let mut groups = BTreeMap::new();
    for line in ovs.ofctl(&["dump-group-stats", &mgmt]).unwrap().lines() {
        let line = line.trim();
        if !line.starts_with("group_id=") {
            continue;
        }
        let mut parts = line.split(",bucket");
        let head = parts.next().unwrap();
        let buckets = parts
            .map(|b| {
                let b = b.split_once(':').unwrap().1;
                (num(b, "packet_count"), num(b, "byte_count"))
            })
            .collect();
        let id = num(head, "group_id") as u32;
        groups.insert(
            id,
            GroupCounter {
                id,
                packets: num(head, "packet_count"),
                bytes: num(head, "byte_count"),
                bucket_ids: Vec::new(),
                buckets,
            },
        );
    }
    for line in ovs.dump_groups("br0").unwrap() {
        let id = num(&line, "group_id") as u32;
        groups.get_mut(&id).unwrap().bucket_ids = line
            .split("bucket=bucket_id:")
            .skip(1)
            .map(|b| b.split(',').next().unwrap().parse().unwrap())
            .collect();
    }
    groups
}

/// Reads until the packets of the flow with `cookie` reach `want`: the
/// userspace datapath folds its counters into the flows a moment later.
async fn read_when_counted(
    ovs: &OvsInstance,
    tables: &[u8],
    cookie: u64,
    want: u64,
) -> switch_stats::SwitchCounters {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = switch_stats::read(&ovs.mgmt("br0"), tables, READ_TIMEOUT)
            .await
            .unwrap();
        let seen: u64 = c
            .flows
            .iter()
            .filter(|f| f.cookie == cookie)
            .map(|f| f.packets)
            .sum();
        if seen >= want || Instant::now() > deadline {
            assert_eq!(seen, want, "packets of cookie {cookie:#x}");
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn counters_equal_what_ovs_ofctl_prints() {
    let ovs = start_ovs();
    let mgmt = ovs.mgmt("br0");
    ovs.ofctl(&[
        "add-group",
        &mgmt,
        "group_id=5,type=select,selection_method=hash,fields(ip_src,ip_dst),\
         bucket=bucket_id:7,actions=resubmit(,50),bucket=bucket_id:3,actions=resubmit(,50),\
         bucket=bucket_id:900,actions=resubmit(,50)",
    ])
    .unwrap();
    ovs.ofctl(&[
        "add-group",
        &mgmt,
        "group_id=6,type=select,bucket=bucket_id:1,actions=drop",
    ])
    .unwrap();
    for flow in [
        "table=40,priority=100,cookie=0x40a,ip,nw_dst=10.0.0.1 actions=group:5",
        "table=40,priority=90,cookie=0x40b,ip,nw_dst=10.0.0.2 actions=resubmit(,50)",
        "table=40,priority=0,cookie=0x40c actions=drop",
        "table=50,priority=100,cookie=0x50a,udp actions=drop",
        "table=50,priority=0,cookie=0x50b actions=drop",
        "table=60,priority=0,cookie=0x60 actions=drop",
    ] {
        ovs.ofctl(&["add-flow", &mgmt, flow]).unwrap();
    }
    let (vip, other, unknown) = (
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        Ipv4Addr::new(10, 0, 0, 3),
    );
    // Sources spread over the buckets by OVS's hash.
    for i in 0..24u32 {
        send(&ovs, Ipv4Addr::from(0x0a01_0000 + i * 37), vip, 40);
    }
    for i in 0..5u32 {
        send(&ovs, Ipv4Addr::from(0x0a02_0000 + i), other, 40);
    }
    for i in 0..2u32 {
        send(&ovs, Ipv4Addr::from(0x0a03_0000 + i), unknown, 40);
    }
    send(&ovs, vip, other, 60);

    let c = read_when_counted(&ovs, &[40, 50], 0x40a, 24).await;
    let mut flows = c.flows.clone();
    flows.sort_by_key(|f| (f.table, f.priority, f.cookie));
    assert_eq!(flows, ofctl_flows(&ovs, &[40, 50]));
    assert_eq!(flows.len(), 5, "table 60 was not asked for: {flows:?}");
    let by_cookie = |cookie| flows.iter().find(|f| f.cookie == cookie).unwrap();
    // 52-byte frames: Ethernet, IPv4, UDP and 10 bytes, unpadded.
    assert_eq!(
        (by_cookie(0x40a).packets, by_cookie(0x40a).bytes),
        (24, 24 * 52)
    );
    assert_eq!(by_cookie(0x40b).packets, 5);
    assert_eq!(by_cookie(0x40c).packets, 2);
    assert_eq!(by_cookie(0x50a).packets, 29, "the group's and 0x40b's");

    let want = ofctl_groups(&ovs);
    let got: BTreeMap<u32, GroupCounter> = c.groups.iter().map(|g| (g.id, g.clone())).collect();
    assert_eq!(got, want);
    let g5 = &got[&5];
    assert_eq!(g5.bucket_ids, [7, 3, 900], "the switch's order, not sorted");
    assert_eq!(g5.packets, 24);
    assert_eq!(g5.buckets.iter().map(|b| b.0).sum::<u64>(), 24);
    assert!(
        g5.buckets.iter().filter(|b| b.0 > 0).count() >= 2,
        "24 sources hash to more than one bucket: {g5:?}"
    );
    assert_eq!(got[&6].bucket_ids, [1]);
    assert_eq!(got[&6].packets, 0);
}

fn owner() -> Cookie {
    Cookie::new(Category::Service, "switch-stats")
}

/// A select group whose bucket ids are in no sorted order.
fn group(id: u32, buckets: u32) -> Arc<Group> {
    Arc::new(Group {
        id,
        hash_fields: vec![
            HashField::parse("ip_src").unwrap(),
            HashField::parse("ip_dst").unwrap(),
        ],
        buckets: (0..buckets)
            .map(|i| {
                Bucket::new(
                    (i * 7919 + 11) % 100_003,
                    Arc::new(
                        format!("set_field:{i:#x}->reg3,set_field:0x1f90->reg4,resubmit(,43)")
                            .parse::<Actions>()
                            .unwrap(),
                    ),
                )
            })
            .collect(),
        owner: owner(),
        learns: false,
    })
}

fn flow(table: u8, matches: &str, actions: &str, cookie: u64) -> BundleOp {
    BundleOp::AddFlow {
        key: FlowKey::new(table, 100, matches.parse::<Match>().unwrap()),
        body: FlowBody::new(actions.parse::<Actions>().unwrap(), owner()),
        cookie,
    }
}

/// A group of 1,200 buckets (a description over 64 KiB) beside others: a
/// GROUP_DESC of all groups would kill OVS 3.1. The read leaves it alive and
/// still names all 1,200 buckets in the order they were installed.
#[tokio::test]
async fn a_group_of_1200_buckets_is_read_and_ovs_survives() {
    let ovs = start_ovs();
    let (big, small, after) = (group(1, 1200), group(2, 3), group(3, 2));
    let mut switch = NativeBackend::new(ovs.mgmt("br0")).unwrap();
    switch
        .apply(&[
            BundleOp::PutGroup(big.clone()),
            BundleOp::PutGroup(small.clone()),
            BundleOp::PutGroup(after.clone()),
            flow(40, "ip,nw_dst=10.0.0.1", "group:1", 0x41),
        ])
        .await
        .unwrap();
    for i in 0..8u32 {
        send(
            &ovs,
            Ipv4Addr::from(0x0a01_0000 + i),
            Ipv4Addr::new(10, 0, 0, 1),
            40,
        );
    }
    let t = Instant::now();
    let c = read_when_counted(&ovs, &[40], 0x41, 8).await;
    println!(
        "a counters read with a 1,200-bucket group took {:?} (polls included)",
        t.elapsed()
    );
    ovs.vswitchd_appctl(&["version"])
        .expect("ovs-vswitchd survived the read");
    let ids = |g: &Group| g.buckets.iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(c.groups.len(), 3);
    assert_eq!(c.groups[0].bucket_ids, ids(&big));
    assert_eq!(c.groups[1].bucket_ids, ids(&small));
    assert_eq!(c.groups[2].bucket_ids, ids(&after));
    assert_eq!(c.groups[0].buckets.len(), 1200);
    assert_eq!(c.groups[0].packets, 8);
    // `ovs-ofctl` reads the big group's stats (under 64 KiB) alone.
    let stats = ovs
        .ofctl(&["dump-group-stats", &ovs.mgmt("br0"), "group_id=1"])
        .unwrap();
    let line = stats.lines().find(|l| l.contains("group_id=1")).unwrap();
    let by_ofctl: Vec<(u64, u64)> = line
        .split(",bucket")
        .skip(1)
        .map(|b| {
            let b = b.split_once(':').unwrap().1;
            (num(b, "packet_count"), num(b, "byte_count"))
        })
        .collect();
    assert_eq!(c.groups[0].buckets, by_ofctl);
    // A second read on a fresh connection, and OVS is still there.
    switch_stats::read(&ovs.mgmt("br0"), &[40], READ_TIMEOUT)
        .await
        .unwrap();
    ovs.vswitchd_appctl(&["version"]).unwrap();
}

/// How long a counters read of one table takes with many flows: 20k in the
/// table asked for and 20k in another (`SWITCH_STATS_FLOWS` scales it).
#[tokio::test]
async fn a_read_of_one_table_of_many_flows() {
    let n: u32 = std::env::var("SWITCH_STATS_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ovs = start_ovs();
    let mut switch = NativeBackend::new(ovs.mgmt("br0")).unwrap();
    let mut ops = vec![BundleOp::PutGroup(group(1, 4))];
    for i in 0..n {
        let ip = Ipv4Addr::from(0x0a60_0000 + i);
        for table in [40, 41] {
            ops.push(flow(
                table,
                &format!("ip,nw_dst={ip}"),
                "group:1",
                u64::from(table) << 32 | u64::from(i),
            ));
        }
    }
    switch.apply(&ops).await.unwrap();
    let t = Instant::now();
    let c = switch_stats::read(&ovs.mgmt("br0"), &[40], READ_TIMEOUT)
        .await
        .unwrap();
    let one = t.elapsed();
    let t = Instant::now();
    let both = switch_stats::read(&ovs.mgmt("br0"), &[40, 41], READ_TIMEOUT)
        .await
        .unwrap();
    println!(
        "counters of {n} flows (table 40 of {} in all): {one:?}; both tables: {:?}",
        2 * n,
        t.elapsed()
    );
    assert_eq!(c.flows.len(), n as usize);
    assert!(c.flows.iter().all(|f| f.table == 40 && f.packets == 0));
    assert_eq!(both.flows.len(), 2 * n as usize);
    assert_eq!(c.groups.len(), 1);
}

/// Real traffic on the bridge's own port makes datapath flows: the count sees
/// them all as `ovs-appctl` lists them, and none offloaded on the userspace
/// datapath.
#[tokio::test]
async fn datapath_flows_are_counted_and_none_is_offloaded() {
    let ovs = start_ovs();
    let run_dir = ovs.dir().to_path_buf();
    assert_eq!(
        datapath::vswitchd_target(&run_dir).unwrap(),
        run_dir.join("ovs-vswitchd.ctl")
    );
    let ns = ovs.netns().unwrap().to_string();
    let in_ns = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    in_ns(&["ip", "link", "set", "br0", "up"]);
    in_ns(&["ip", "addr", "add", "10.99.0.1/24", "dev", "br0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        // A datagram to a neighbour on the bridge: the kernel's ARP request
        // for it enters OVS by the bridge's port and misses into the datapath.
        in_ns(&["bash", "-c", "echo x > /dev/udp/10.99.0.2/9"]);
        let c = datapath::count("ovs-appctl", &run_dir, "netdev")
            .await
            .unwrap();
        if c.total > 0 || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(counted.total > 0, "{counted:?}");
    assert_eq!(counted.offloaded, 0);
    let all = datapath::dump("ovs-appctl", &run_dir, "netdev", false)
        .await
        .unwrap();
    assert!(all.iter().all(|l| l.contains("actions:")), "{all:?}");
    assert!(
        all.iter().any(|l| l.contains("eth_type(0x0806)")),
        "the ARP request made a flow: {all:?}"
    );
    // The oracle's dump, taken just after: a flow may come or go in between
    // (IPv6 neighbour discovery, idle expiry), so compare a few times.
    let mut same = false;
    for _ in 0..5 {
        let ours = datapath::dump("ovs-appctl", &run_dir, "netdev", false)
            .await
            .unwrap()
            .len();
        let oracle = ovs
            .vswitchd_appctl(&["dpctl/dump-flows", "netdev@ovs-netdev"])
            .unwrap();
        if ours == oracle.lines().filter(|l| l.contains("actions:")).count() {
            same = true;
            break;
        }
    }
    assert!(
        same,
        "datapath::dump and ovs-appctl disagree on the flow count"
    );
    assert!(datapath::dump("ovs-appctl", &run_dir, "netdev", true)
        .await
        .unwrap()
        .is_empty());
    // Why the filter follows the datapath: OVS 3.1 ignores it anywhere else,
    // and would list every flow as offloaded.
    let misplaced = ovs
        .vswitchd_appctl(&["dpctl/dump-flows", "type=offloaded", "netdev@ovs-netdev"])
        .unwrap();
    assert!(misplaced.contains("actions:"), "{misplaced}");
    // The system datapath does not exist here: an error naming the command.
    let e = datapath::count("ovs-appctl", &run_dir, "system")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("system@ovs-system") && e.contains("datapath not found"),
        "{e}"
    );
}

/// Groups of 4,200 and 5,000 buckets between small ones: their stats alone
/// are over 64 KiB (16 bytes a bucket). OVS 3.1 sends them without dying,
/// and every bucket is read and named.
#[tokio::test]
async fn groups_whose_stats_exceed_64_kib_are_read_whole() {
    let ovs = start_ovs();
    let groups = [
        group(1, 3),
        group(2, 4200),
        group(3, 3),
        group(4, 5000),
        group(5, 3),
    ];
    let mut switch = NativeBackend::new(ovs.mgmt("br0")).unwrap();
    let ops: Vec<BundleOp> = groups.iter().cloned().map(BundleOp::PutGroup).collect();
    switch.apply(&ops).await.unwrap();
    let c = switch_stats::read(&ovs.mgmt("br0"), &[], READ_TIMEOUT)
        .await
        .unwrap();
    ovs.vswitchd_appctl(&["version"])
        .expect("ovs-vswitchd survived the read");
    assert!(c.flows.is_empty());
    assert_eq!(c.groups.len(), groups.len());
    for (got, want) in c.groups.iter().zip(&groups) {
        let ids: Vec<u32> = want.buckets.iter().map(|b| b.id).collect();
        assert_eq!(got.id, want.id);
        assert_eq!(got.bucket_ids, ids, "group {}", want.id);
        assert_eq!(got.buckets.len(), ids.len(), "group {}", want.id);
    }
}
