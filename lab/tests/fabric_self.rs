//! Self-test of the multi-DPU fabric (`lab/src/fabric.rs`): emulated DPUs joined by
//! the underlay, a host on each, hand-written OpenFlow 1.5 flows that carry the hosts'
//! traffic through Geneve, and real TCP and UDP between the hosts. The flows' counters
//! are the independent check that the traffic went through the tunnel. Needs root, OVS,
//! `ip`, `ethtool`, `bash` and the workspace binaries; without them these tests fail
//! rather than skip.

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
