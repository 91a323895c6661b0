//! Self-test of the multi-DPU fabric (`lab/src/fabric.rs`): emulated DPUs joined by
//! the underlay, a host on each, hand-written OpenFlow 1.5 flows that carry the hosts'
//! traffic through Geneve, and real TCP and UDP between the hosts. The flows' counters
//! are the independent check that the traffic went through the tunnel. The external
//! segment is checked on its own: external hosts, and frames from them reaching every
//! DPU's uplink port. Needs root, OVS, `ip`, `ethtool`, `bash` and the workspace
//! binaries; without them these tests fail rather than skip.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use dpu_lab::fabric::{self, underlay_cidr, Fabric, UNDERLAY_MTU};
use dpu_lab::netns::{self, Netns};
use dpu_lab::process::{run_checked, wait_until, Child};
use dpu_lab::traffic::{lab_bin, run_client, start_echo, TrafficResult};

const VNI: u64 = 100;
const OTHER_VNI: u64 = 200;
const HOST_IPS: [&str; 2] = ["10.0.1.2", "10.0.1.3"];
const HOST_MACS: [&str; 2] = ["02:00:0a:00:01:02", "02:00:0a:00:01:03"];
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const GENEVE_PORT: &str = "gnv0";
/// Cookies of the hand-written flows, so their counters can be read by kind.
const COOKIE_ENCAP: u64 = 0x10;
const COOKIE_DECAP: u64 = 0x20;
const COOKIE_TUNNEL_DROP: u64 = 0x30;
/// Bound on the tunnel working after a change (neighbour resolution included).
const SETTLE: Duration = Duration::from_secs(10);

fn require_lab() {
    fabric::require_prerequisites().unwrap_or_else(|e| panic!("{e:#}"));
    for bin in ["lab-echo", "lab-client"] {
        lab_bin(bin).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// One DPU's host and the ports the flows use.
#[derive(Debug)]
struct Side {
    host: Netns,
    host_port: u32,
    geneve_port: u32,
}

/// Two DPUs, one host on each, tunnel flows with [`VNI`], an echo server on each
/// host. Fields drop in order: echo servers, hosts, then the fabric.
#[derive(Debug)]
struct TwoDpus {
    _echoes: Vec<Child>,
    sides: Vec<Side>,
    fabric: Fabric,
    _logs: tempfile::TempDir,
}

fn two_dpus(tag: &str) -> TwoDpus {
    require_lab();
    let started = Instant::now();
    let mut fabric = Fabric::with_dpus(tag, 2).unwrap();
    let mut sides = Vec::new();
    for (i, (ip, mac)) in HOST_IPS.iter().zip(HOST_MACS).enumerate() {
        let (host, host_port) = fabric
            .attach_host(i, &format!("host{i}"), &format!("{ip}/24"), mac)
            .unwrap();
        let bridge = fabric.dpu(i).unwrap().bridge().to_owned();
        let geneve_port = fabric.add_geneve_port(i, &bridge, GENEVE_PORT).unwrap();
        sides.push(Side {
            host,
            host_port,
            geneve_port,
        });
    }
    let logs = tempfile::tempdir().unwrap();
    let mut echoes = Vec::new();
    for (i, side) in sides.iter().enumerate() {
        let log = logs.path().join(format!("echo{i}.log"));
        let name = format!("host{i}");
        echoes.push(start_echo(&side.host, &name, &[TCP_PORT], &[UDP_PORT], &log).unwrap());
    }
    let t = TwoDpus {
        _echoes: echoes,
        sides,
        fabric,
        _logs: logs,
    };
    for i in 0..2 {
        t.install_tunnel_flows(i, VNI, VNI);
    }
    eprintln!(
        "{tag}: two DPUs, hosts and flows in {:?}",
        started.elapsed()
    );
    t
}

impl TwoDpus {
    fn add_flow(&self, dpu: usize, flow: &str) {
        let dpu = self.fabric.dpu(dpu).unwrap();
        dpu.ovs()
            .ofctl(&["add-flow", &dpu.mgmt(), flow])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// DPU `i`: ARP and IP from its host go to the other DPU with `tx_vni`; tunnel
    /// packets with `rx_vni` go to its host; other tunnel packets are dropped, counted.
    fn install_tunnel_flows(&self, i: usize, tx_vni: u64, rx_vni: u64) {
        let remote = self.fabric.dpu(1 - i).unwrap().underlay_ip();
        let Side {
            host_port: h,
            geneve_port: g,
            ..
        } = self.sides[i];
        for proto in ["arp", "ip"] {
            self.add_flow(
                i,
                &format!(
                    "cookie={COOKIE_ENCAP:#x},table=0,priority=100,in_port={h},{proto},\
                     actions=set_field:{tx_vni}->tun_id,set_field:{remote}->tun_dst,output:{g}"
                ),
            );
        }
        self.set_rx_vni(i, rx_vni);
        self.add_flow(
            i,
            &format!("cookie={COOKIE_TUNNEL_DROP:#x},table=0,priority=1,in_port={g},actions=drop"),
        );
    }

    /// Replaces DPU `i`'s decapsulation flow with one for `vni` (its counter restarts).
    fn set_rx_vni(&self, i: usize, vni: u64) {
        let dpu = self.fabric.dpu(i).unwrap();
        dpu.ovs()
            .ofctl(&[
                "del-flows",
                &dpu.mgmt(),
                &format!("cookie={COOKIE_DECAP:#x}/-1"),
            ])
            .unwrap();
        let Side {
            host_port: h,
            geneve_port: g,
            ..
        } = self.sides[i];
        self.add_flow(
            i,
            &format!(
                "cookie={COOKIE_DECAP:#x},table=0,priority=100,in_port={g},tun_id={vni},\
                 actions=output:{h}"
            ),
        );
    }

    fn packets(&self, dpu: usize, cookie: u64) -> u64 {
        let dpu = self.fabric.dpu(dpu).unwrap();
        dpu.ovs()
            .packets_by_cookie(dpu.bridge(), cookie)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until the flows with `cookie` on DPU `dpu` counted `at_least` packets
    /// (the userspace datapath updates flow counters about every half second).
    fn wait_packets(&self, dpu: usize, cookie: u64, at_least: u64) -> u64 {
        let mut seen = 0;
        wait_until(
            &format!("{at_least} packets on cookie {cookie:#x} of DPU {dpu}"),
            Duration::from_secs(5),
            || {
                seen = self.packets(dpu, cookie);
                seen >= at_least
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}; saw {seen}; flows:\n{}", self.dump(dpu)));
        seen
    }

    fn dump(&self, dpu: usize) -> String {
        let dpu = self.fabric.dpu(dpu).unwrap();
        dpu.ovs()
            .ofctl(&["dump-flows", &dpu.mgmt()])
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    fn client(&self, from: usize, proto: &str, count: u32, timeout_ms: u32) -> TrafficResult {
        let port = if proto == "tcp" { TCP_PORT } else { UDP_PORT };
        let target = format!("{}:{port}", HOST_IPS[1 - from]);
        let timeout = timeout_ms.to_string();
        run_client(
            &self.sides[from].host,
            &target,
            proto,
            count,
            &["--timeout-ms", &timeout],
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until one UDP request from host `from` to the other host is answered.
    /// The first packets towards an unresolved underlay neighbour are dropped while
    /// OVS ARPs for it, so a fresh or restored tunnel needs this before exact counts.
    fn wait_tunnel(&self, from: usize) -> Duration {
        let started = Instant::now();
        let mut last = TrafficResult::default();
        wait_until(
            &format!("host{from} to reach the other host"),
            SETTLE,
            || {
                last = self.client(from, "udp", 1, 300);
                last.ok == 1
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}; last: {last:?}\nDPU 0 flows:\n{}\nDPU 1 flows:\n{}",
                self.dump(0),
                self.dump(1)
            )
        });
        started.elapsed()
    }

    /// Sends `lines` lines of 4000 bytes over one TCP connection from host `from` and
    /// counts the answers. TCP fills 1500-byte packets, which need the underlay MTU.
    fn full_size_lines(&self, from: usize, lines: u32) -> u32 {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{TCP_PORT}; \
             for i in $(seq {lines}); do printf '%04000d\\n' 0 >&3; done; \
             timeout 5 head -n {lines} <&3 | wc -l",
            HOST_IPS[1 - from]
        );
        let out = self.sides[from]
            .host
            .exec_timeout(["bash", "-c", &script], Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{e:#}"));
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{out:?}: {e}"))
    }
}

#[test]
fn tcp_and_udp_cross_the_geneve_tunnel() {
    let t = two_dpus("gnv");
    for from in 0..2 {
        eprintln!(
            "gnv: tunnel from DPU {from} up after {:?}",
            t.wait_tunnel(from)
        );
    }
    for from in 0..2 {
        let backend = format!("host{}", 1 - from);
        for proto in ["tcp", "udp"] {
            let result = t.client(from, proto, 20, 1500);
            assert_eq!((result.ok, result.failed), (20, 0), "{proto}: {result:?}");
            assert_eq!(result.count_for(&backend), 20, "{proto}: {result:?}");
        }
    }
    assert_eq!(t.full_size_lines(0, 16), 16, "full-size TCP segments");

    // 20 TCP connections (at least 3 packets each way) and 20 datagrams each way.
    for i in 0..2 {
        t.wait_packets(i, COOKIE_ENCAP, 80);
        t.wait_packets(i, COOKIE_DECAP, 80);
        assert_eq!(t.packets(i, COOKIE_TUNNEL_DROP), 0, "{}", t.dump(i));
    }
    for i in 0..2 {
        let dpu = t.fabric.dpu(i).unwrap();
        let remote = t.fabric.dpu(1 - i).unwrap().underlay_ip();
        assert!(
            dpu.has_neighbor(remote).unwrap(),
            "{}",
            dpu.neighbors().unwrap()
        );
        let routes = dpu.routes().unwrap();
        assert!(
            routes.contains(&format!(
                "{} dev {}",
                underlay_cidr(),
                dpu.underlay_bridge()
            )),
            "{routes}"
        );
    }
}

#[test]
fn cutting_a_dpu_off_stops_traffic_and_restoring_it_resumes() {
    let t = two_dpus("cut");
    for from in 0..2 {
        t.wait_tunnel(from);
    }

    t.fabric.cut(1).unwrap();
    assert!(!t.fabric.underlay_reachable(0, 1).unwrap());
    let udp = t.client(0, "udp", 3, 300);
    assert_eq!(
        (udp.ok, udp.failed),
        (0, 3),
        "udp across a cut link: {udp:?}"
    );
    let tcp = t.client(0, "tcp", 2, 500);
    assert_eq!(
        (tcp.ok, tcp.failed),
        (0, 2),
        "tcp across a cut link: {tcp:?}"
    );
    // Forget the neighbours, so restoring must resolve them again over the link.
    for i in 0..2 {
        let dpu = t.fabric.dpu(i).unwrap();
        dpu.flush_neighbors().unwrap();
        let remote = t.fabric.dpu(1 - i).unwrap().underlay_ip();
        assert!(!dpu.has_neighbor(remote).unwrap());
    }

    let restored = Instant::now();
    t.fabric.restore(1).unwrap();
    for from in 0..2 {
        t.wait_tunnel(from);
    }
    eprintln!("cut: traffic back {:?} after restore", restored.elapsed());
    for from in 0..2 {
        for proto in ["tcp", "udp"] {
            let result = t.client(from, proto, 10, 1500);
            assert_eq!((result.ok, result.failed), (10, 0), "{proto}: {result:?}");
        }
    }
    for i in 0..2 {
        let remote = t.fabric.dpu(1 - i).unwrap().underlay_ip();
        assert!(t.fabric.dpu(i).unwrap().has_neighbor(remote).unwrap());
    }
}

#[test]
fn a_wrong_vni_is_dropped_at_the_receiver() {
    let t = two_dpus("vni");
    t.wait_tunnel(0);

    t.set_rx_vni(1, OTHER_VNI);
    let dropped_before = t.packets(1, COOKIE_TUNNEL_DROP);
    let udp = t.client(0, "udp", 5, 300);
    assert_eq!(
        (udp.ok, udp.failed),
        (0, 5),
        "udp with a VNI DPU 1 does not take: {udp:?}"
    );
    // The datagrams did reach DPU 1 through the tunnel: its catch-all dropped them.
    t.wait_packets(1, COOKIE_TUNNEL_DROP, dropped_before + 5);
    assert_eq!(t.packets(1, COOKIE_DECAP), 0, "{}", t.dump(1));

    // Only the VNI was wrong: matching it again brings the traffic back.
    t.set_rx_vni(1, VNI);
    t.wait_tunnel(0);
    let udp = t.client(0, "udp", 5, 1500);
    assert_eq!((udp.ok, udp.failed), (5, 0), "{udp:?}");
}

/// Alive means present in /proc and not a zombie (detached daemons may be reparented
/// to a pid 1 that does not reap).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, None | Some('Z') | Some('X'))
    })
}

fn daemon_pids(dpu: &fabric::Dpu) -> Vec<u32> {
    ["ovs-vswitchd.pid", "ovsdb-server.pid"]
        .iter()
        .map(|f| {
            let path = dpu.ovs().dir().join(f);
            let text = std::fs::read_to_string(&path).unwrap();
            text.trim().parse().unwrap()
        })
        .collect()
}

/// Both ends of the DPU's underlay veth carry [`UNDERLAY_MTU`] and have TX checksum
/// offload off.
fn check_underlay_link(fabric: &Fabric, dpu: &fabric::Dpu) {
    let mtu = format!("mtu {UNDERLAY_MTU} ");
    let uplink = netns::ip(&["-n", dpu.netns(), "link", "show", "dev", dpu.uplink()]).unwrap();
    let port = fabric
        .switch_netns()
        .ip(&["link", "show", "dev", dpu.switch_port()])
        .unwrap();
    assert!(
        uplink.contains(&mtu) && port.contains(&mtu),
        "{uplink}\n{port}"
    );
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", dpu.netns(), "ethtool", "-k", dpu.uplink()]);
    let uplink = run_checked(cmd, Duration::from_secs(10)).unwrap();
    let port = fabric
        .switch_netns()
        .exec(["ethtool", "-k", dpu.switch_port()])
        .unwrap();
    for offload in [uplink, port] {
        assert!(offload.contains("tx-checksumming: off"), "{offload}");
    }
}

#[test]
fn three_dpus_mesh_and_teardown_removes_everything() {
    require_lab();
    let (namespaces, pids) = {
        let mut fabric = Fabric::with_dpus("mesh", 3).unwrap();
        for dpu in fabric.dpus() {
            check_underlay_link(&fabric, dpu);
        }
        for from in 0..3 {
            for to in (0..3).filter(|&to| to != from) {
                assert!(
                    fabric.underlay_reachable(from, to).unwrap(),
                    "{from} -> {to}"
                );
            }
        }

        fabric.cut(2).unwrap();
        assert!(!fabric.underlay_reachable(0, 2).unwrap());
        assert!(fabric.underlay_reachable(0, 1).unwrap());
        fabric.restore(2).unwrap();
        wait_until("DPU 0 to reach DPU 2 again", SETTLE, || {
            fabric.underlay_reachable(0, 2).unwrap_or(false)
        })
        .unwrap();

        let gone = fabric.dpu(1).unwrap();
        let (gone_ns, gone_port) = (gone.netns().to_owned(), gone.switch_port().to_owned());
        let gone_pids = daemon_pids(gone);
        fabric.remove(1).unwrap();
        assert!(fabric.dpu(1).is_err());
        assert!(!netns::list_netns().unwrap().contains(&gone_ns));
        assert!(!fabric.switch_netns().link_exists(&gone_port));
        for pid in gone_pids {
            assert!(!alive(pid), "pid {pid} of the removed DPU");
        }
        assert!(fabric.underlay_reachable(0, 2).unwrap());
        assert!(fabric.underlay_reachable(2, 0).unwrap());
        assert_eq!(
            fabric.dpus().map(|d| d.underlay_ip()).collect::<Vec<_>>(),
            [
                Ipv4Addr::new(192, 168, 100, 1),
                Ipv4Addr::new(192, 168, 100, 3)
            ]
        );

        let mut namespaces = vec![fabric.switch_netns().name().to_owned()];
        namespaces.extend(fabric.dpus().map(|d| d.netns().to_owned()));
        let pids: Vec<u32> = fabric.dpus().flat_map(daemon_pids).collect();
        (namespaces, pids)
    };
    let listed = netns::list_netns().unwrap();
    for ns in &namespaces {
        assert!(!listed.contains(ns), "{ns} still in {listed:?}");
    }
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the fabric");
    }
}

const EXTERNAL_IPS: [&str; 2] = ["198.51.100.10", "198.51.100.11"];
const EXTERNAL_MACS: [&str; 2] = ["02:00:c6:33:64:0a", "02:00:c6:33:64:0b"];
/// An address on the external segment that nobody holds: sending to it makes the
/// sender broadcast ARP requests.
const ABSENT_IP: &str = "198.51.100.1";
const UPLINK_ID: &str = "uplink";
/// Cookie of the test's table-0 drop flow for the ARP requests external host 0 sends
/// for [`ABSENT_IP`] through the uplink port. It matches only those: the segment also
/// carries IPv6 link-local chatter (from the hosts and the switch's own ports).
const COOKIE_UPLINK_DROP: u64 = 0x40;
/// OVS copies interface statistics into its database every 5 s.
const STATS_TIMEOUT: Duration = Duration::from_secs(12);

fn ethtool_k(ns: &str, ifname: &str) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ethtool", "-k", ifname]);
    run_checked(cmd, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"))
}

fn uplink_rx_packets(dpu: &fabric::Dpu) -> u64 {
    let uplink = dpu.external_uplink().expect("the uplink is attached");
    let out = dpu
        .ovs()
        .vsctl(&["get", "Interface", uplink, "statistics:rx_packets"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{out:?}: {e}"))
}

/// Sends one UDP datagram from `from` to port 9 of `to`; the kernel resolves `to`
/// first (ARP), which a datagram to an absent address never finishes.
fn send_udp(from: &Netns, to: &str) {
    let script = format!("echo probe > /dev/udp/{to}/9");
    from.exec_timeout(
        ["timeout", "2", "bash", "-c", &script],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `count` TCP and `count` UDP requests from `from` to the echo server on `to`; all
/// answered by `to_name`.
fn echoed(from: &Netns, to: &str, to_name: &str, count: u32) {
    for (proto, port) in [("tcp", TCP_PORT), ("udp", UDP_PORT)] {
        let result = run_client(
            from,
            &format!("{to}:{port}"),
            proto,
            count,
            &["--timeout-ms", "1000"],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            (result.ok, result.failed),
            (u64::from(count), 0),
            "{proto} to {to}: {result:?}"
        );
        assert_eq!(
            result.count_for(to_name),
            u64::from(count),
            "{proto} to {to}: {result:?}"
        );
    }
}

#[test]
fn external_hosts_share_a_segment_that_reaches_every_uplink() {
    require_lab();
    let logs = tempfile::tempdir().unwrap();
    let (prefix, namespaces, pids) = {
        let mut fabric = Fabric::with_dpus("ext", 2).unwrap();
        assert!(fabric.external_netns().is_none(), "made before first use");
        let mut uplink_ports = Vec::new();
        for i in 0..2 {
            uplink_ports.push(fabric.attach_uplink(i, UPLINK_ID).unwrap());
        }
        let again = fabric.attach_uplink(0, UPLINK_ID).unwrap_err();
        assert!(
            format!("{again:#}").contains("already has an uplink"),
            "{again:#}"
        );
        let hosts: Vec<Netns> = (0..2)
            .map(|i| {
                fabric
                    .attach_external(
                        &format!("c{i}"),
                        &format!("{}/24", EXTERNAL_IPS[i]),
                        EXTERNAL_MACS[i],
                    )
                    .unwrap()
            })
            .collect();
        let ex = fabric.external_netns().expect("made by the first uplink");

        // Each uplink is a port of the integration bridge with the agent's iface-id,
        // and both ends of its veth have TX checksum offload off.
        for (i, &ofport) in uplink_ports.iter().enumerate() {
            let dpu = fabric.dpu(i).unwrap();
            let ovs = dpu.ovs();
            let uplink = dpu.external_uplink().unwrap();
            let vsctl = |args: &[&str]| {
                let out = ovs.vsctl(args).unwrap_or_else(|e| panic!("{e:#}"));
                out.trim().trim_matches('"').to_owned()
            };
            assert_eq!(vsctl(&["port-to-br", uplink]), dpu.bridge());
            assert_eq!(
                vsctl(&["get", "Interface", uplink, "external_ids:iface-id"]),
                UPLINK_ID
            );
            assert_eq!(
                vsctl(&["get", "Interface", uplink, "ofport"]),
                ofport.to_string()
            );
            assert_eq!(vsctl(&["get", "Interface", uplink, "link_state"]), "up");
            let port = dpu.external_port().unwrap();
            assert!(ex.link_exists(port), "{port} on the external switch");
            for offload in [ethtool_k(dpu.netns(), uplink), ethtool_k(ex.name(), port)] {
                assert!(offload.contains("tx-checksumming: off"), "{offload}");
            }
            ovs.ofctl(&[
                "add-flow",
                &dpu.mgmt(),
                &format!(
                    "cookie={COOKIE_UPLINK_DROP:#x},table=0,priority=1,in_port={ofport},\
                     arp,dl_src={},arp_op=1,arp_spa={},arp_tpa={ABSENT_IP},actions=drop",
                    EXTERNAL_MACS[0], EXTERNAL_IPS[0]
                ),
            ])
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        for (i, host) in hosts.iter().enumerate() {
            let offload = host.exec(["ethtool", "-k", "eth0"]).unwrap();
            assert!(offload.contains("tx-checksumming: off"), "{offload}");
            let link = host.ip(&["link", "show", "dev", "eth0"]).unwrap();
            assert!(
                link.contains(EXTERNAL_MACS[i]) && link.contains("mtu 1500 "),
                "{link}"
            );
        }

        // The external hosts reach each other over the segment.
        let echoes: Vec<Child> = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let log = logs.path().join(format!("ext{i}.log"));
                start_echo(host, &format!("ext{i}"), &[TCP_PORT], &[UDP_PORT], &log)
                    .unwrap_or_else(|e| panic!("{e:#}"))
            })
            .collect();
        for from in 0..2 {
            let to = EXTERNAL_IPS[1 - from];
            echoed(&hosts[from], to, &format!("ext{}", 1 - from), 3);
            assert_eq!(
                fabric::neighbor_mac(&hosts[from], to).unwrap().as_deref(),
                Some(EXTERNAL_MACS[1 - from])
            );
        }

        // An ARP request from the segment reaches both DPUs' uplink ports, where the
        // drop flow counts it and the interface counts it received. Other than that
        // flow the integration bridges (fail_mode=secure) have none and drop
        // everything, so nothing answers.
        let dropped_before: Vec<u64> = fabric
            .dpus()
            .map(|d| {
                d.ovs()
                    .packets_by_cookie(d.bridge(), COOKIE_UPLINK_DROP)
                    .unwrap()
            })
            .collect();
        let rx_before: Vec<u64> = fabric.dpus().map(uplink_rx_packets).collect();
        send_udp(&hosts[0], ABSENT_IP);
        assert_eq!(fabric::neighbor_mac(&hosts[0], ABSENT_IP).unwrap(), None);
        for (i, dpu) in fabric.dpus().enumerate() {
            let mut dropped = 0;
            wait_until(
                &format!("DPU {i}'s uplink drop flow to count the ARP request"),
                Duration::from_secs(5),
                || {
                    dropped = dpu
                        .ovs()
                        .packets_by_cookie(dpu.bridge(), COOKIE_UPLINK_DROP)
                        .unwrap_or(0);
                    dropped > dropped_before[i]
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}; before {}, now {dropped}", dropped_before[i]));
            let mut rx = 0;
            wait_until(
                &format!("DPU {i}'s uplink to count received packets"),
                STATS_TIMEOUT,
                || {
                    rx = uplink_rx_packets(dpu);
                    rx > rx_before[i]
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}; before {}, now {rx}", rx_before[i]));
        }

        // Removing a DPU takes its uplink off the external switch; the rest stays.
        let gone = fabric.dpu(1).unwrap();
        let (gone_ns, gone_port) = (
            gone.netns().to_owned(),
            gone.external_port().unwrap().to_owned(),
        );
        fabric.remove(1).unwrap();
        assert!(!netns::list_netns().unwrap().contains(&gone_ns));
        let ex = fabric.external_netns().unwrap();
        assert!(!ex.link_exists(&gone_port), "{gone_port} outlived DPU 1");
        echoed(&hosts[1], EXTERNAL_IPS[0], "ext0", 1);
        drop(echoes);

        let mut namespaces: Vec<String> = hosts.iter().map(|h| h.name().to_owned()).collect();
        namespaces.push(ex.name().to_owned());
        namespaces.push(fabric.switch_netns().name().to_owned());
        namespaces.extend(fabric.dpus().map(|d| d.netns().to_owned()));
        let pids: Vec<u32> = fabric.dpus().flat_map(daemon_pids).collect();
        (fabric.prefix().to_owned(), namespaces, pids)
    };
    let listed = netns::list_netns().unwrap();
    for ns in &namespaces {
        assert!(!listed.contains(ns), "{ns} still in {listed:?}");
    }
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the fabric");
    }
    // Every veth end was moved out of the root namespace as it was made.
    let links = netns::ip(&["-brief", "link"]).unwrap();
    assert!(
        !links.lines().any(|l| l.starts_with(&prefix)),
        "links of {prefix} left in the root namespace:\n{links}"
    );
}
