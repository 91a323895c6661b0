//! Self-test of the lab's own plumbing, without OVS: namespaces joined by a veth pair,
//! `lab-echo` and `lab-client` between them, and the Drop guards removing everything.
//! Needs root and iproute2; without them these tests fail rather than skip.

use std::time::Duration;

use dpu_lab::netns::{self, attach_host, tx_off, unique_prefix, Netns, Veth};
use dpu_lab::process::wait_until;
use dpu_lab::traffic::{lab_bin, peers_in_log, run_client, start_echo, start_hold};

const CLIENT_IP: &str = "10.250.0.1";
const SERVER_IP: &str = "10.250.0.2";
const CLIENT_IP6: &str = "fd00:250::1";
const SERVER_IP6: &str = "fd00:250::2";
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn require_lab() {
    dpu_lab::prereq::assert_root();
    for bin in ["lab-echo", "lab-client"] {
        lab_bin(bin).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Two namespaces joined directly by a veth pair. Fields drop in order: the namespaces
/// go before the guard of the pair they already took with them.
struct Pair {
    client: Netns,
    server: Netns,
    veth: Veth,
    logs: tempfile::TempDir,
}

fn pair(tag: &str) -> Pair {
    require_lab();
    let prefix = unique_prefix(tag);
    let client = Netns::new(&format!("{prefix}-cli")).unwrap();
    let server = Netns::new(&format!("{prefix}-srv")).unwrap();
    let mut veth = Veth::create(&format!("{prefix}-c"), &format!("{prefix}-s")).unwrap();
    veth.move_a_to(&client).unwrap();
    veth.move_b_to(&server).unwrap();
    for (ns, dev, ip) in [
        (&client, veth.a(), CLIENT_IP),
        (&server, veth.b(), SERVER_IP),
    ] {
        ns.add_addr(dev, &format!("{ip}/24")).unwrap();
        ns.set_up(dev).unwrap();
        ns.set_lo_up().unwrap();
        tx_off(dev, Some(ns)).unwrap();
    }
    Pair {
        client,
        server,
        veth,
        logs: tempfile::tempdir().unwrap(),
    }
}

#[test]
fn tcp_and_udp_reach_the_echo_across_a_veth_pair() {
    let lab = pair("tcpudp");
    let echo_log = lab.logs.path().join("echo.log");
    let _echo = start_echo(&lab.server, "web-1", &[TCP_PORT], &[UDP_PORT], &echo_log).unwrap();

    let tcp = run_client(
        &lab.client,
        &format!("{SERVER_IP}:{TCP_PORT}"),
        "tcp",
        20,
        &[],
    )
    .unwrap();
    assert_eq!((tcp.ok, tcp.failed), (20, 0), "tcp: {tcp:?}");
    assert_eq!(tcp.count_for("web-1"), 20, "tcp: {tcp:?}");

    let udp = run_client(
        &lab.client,
        &format!("{SERVER_IP}:{UDP_PORT}"),
        "udp",
        20,
        &[],
    )
    .unwrap();
    assert_eq!((udp.ok, udp.failed), (20, 0), "udp: {udp:?}");
    assert_eq!(udp.count_for("web-1"), 20, "udp: {udp:?}");

    let pinned = run_client(
        &lab.client,
        &format!("{SERVER_IP}:{UDP_PORT}"),
        "udp",
        5,
        &["--src-port-base", "40000", "--interval-ms", "10"],
    )
    .unwrap();
    assert_eq!(pinned.ok, 5, "udp from fixed source ports: {pinned:?}");
}

#[test]
fn ipv6_and_ipv4_reach_the_echo_across_a_dual_stack_pair() {
    let lab = pair("dual");
    for (ns, dev, ip) in [
        (&lab.client, lab.veth.a(), CLIENT_IP6),
        (&lab.server, lab.veth.b(), SERVER_IP6),
    ] {
        netns::add_ipv6(ns, dev, &format!("{ip}/64"), None).unwrap();
    }
    let echo_log = lab.logs.path().join("echo.log");
    let _echo = start_echo(&lab.server, "web-6", &[TCP_PORT], &[UDP_PORT], &echo_log).unwrap();
    let ready = std::fs::read_to_string(&echo_log).unwrap();
    assert!(!ready.contains("IPv4 only"), "{ready}");

    let (tcp6, udp6) = (
        format!("[{SERVER_IP6}]:{TCP_PORT}"),
        format!("[{SERVER_IP6}]:{UDP_PORT}"),
    );
    for (target, proto) in [(&tcp6, "tcp"), (&udp6, "udp")] {
        let r = run_client(&lab.client, target, proto, 5, &[]).unwrap();
        assert_eq!((r.ok, r.failed), (5, 0), "{proto} to {target}: {r:?}");
        assert_eq!(r.count_for("web-6"), 5, "{proto} to {target}: {r:?}");
    }
    let tcp4 = run_client(
        &lab.client,
        &format!("{SERVER_IP}:{TCP_PORT}"),
        "tcp",
        5,
        &[],
    )
    .unwrap();
    assert_eq!((tcp4.ok, tcp4.failed), (5, 0), "tcp over IPv4: {tcp4:?}");
    assert_eq!(tcp4.count_for("web-6"), 5, "tcp over IPv4: {tcp4:?}");

    // One held IPv6 connection, three rounds.
    let mut hold = start_hold(
        &lab.client,
        &tcp6,
        3,
        Duration::from_millis(100),
        &lab.logs.path().join("hold.out"),
    )
    .unwrap();
    assert_eq!(hold.wait_first(Duration::from_secs(5)).unwrap(), "web-6");
    let held = hold.finish(Duration::from_secs(10)).unwrap();
    assert_eq!((held.ok, held.failed), (3, 0), "held over IPv6: {held:?}");

    // The echo saw the client's own address of each family, as tcp_peers reads it.
    let log = std::fs::read_to_string(&echo_log).unwrap();
    assert!(
        log.contains(&format!("tcp connection from [{CLIENT_IP6}]:")),
        "{log}"
    );
    assert!(
        log.contains(&format!("tcp connection from {CLIENT_IP}:")),
        "{log}"
    );
    let peers = peers_in_log(&log);
    let count = |ip: &str| peers.iter().filter(|p| *p == ip).count();
    assert_eq!(count(CLIENT_IP6), 5 + 1, "{peers:?}\n{log}");
    assert_eq!(count(CLIENT_IP), 5, "{peers:?}\n{log}");
    assert_eq!(peers.len(), 11, "{peers:?}\n{log}");
}

#[test]
fn add_ipv6_skips_dad_and_adds_the_default_route() {
    let lab = pair("v6gw");
    let (ns, dev) = (&lab.client, lab.veth.a());
    netns::add_ipv6(ns, dev, "fd00:251::1/64", Some("fd00:251::ff")).unwrap();
    let addr = ns.ip(&["-6", "addr", "show", "dev", dev]).unwrap();
    // Usable at once. (The link-local address made when the pair came up, before
    // accept_dad=0, may still be tentative: that is the kernel's DAD, left alone.)
    let line = addr
        .lines()
        .find(|l| l.contains("inet6 fd00:251::1/64"))
        .unwrap_or_else(|| panic!("no fd00:251::1/64 in {addr}"));
    assert!(line.contains("nodad"), "{addr}");
    assert!(!line.contains("tentative"), "{addr}");
    for key in ["disable_ipv6", "accept_dad"] {
        let value = ns
            .exec(["sysctl", "-n", &format!("net.ipv6.conf.{dev}.{key}")])
            .unwrap();
        assert_eq!(value.trim(), "0", "{key} on {dev}");
    }
    let routes = ns.ip(&["-6", "route"]).unwrap();
    assert!(
        routes.contains(&format!("default via fd00:251::ff dev {dev}")),
        "{routes}"
    );
    // Refusals name the address, the interface and the namespace.
    for (cidr, gw) in [
        ("10.250.9.1/24", None),
        ("fd00:251::2/64", Some("10.250.0.9")),
    ] {
        let err = format!("{:#}", netns::add_ipv6(ns, dev, cidr, gw).unwrap_err());
        for part in [cidr, dev, ns.name()] {
            assert!(err.contains(part), "{part} missing from {err}");
        }
    }
    let err = format!(
        "{:#}",
        netns::add_ipv6(ns, "nosuchdev0", "fd00:251::3/64", None).unwrap_err()
    );
    assert!(err.contains("nosuchdev0"), "{err}");
}

#[test]
fn failures_are_reported_not_fatal() {
    let lab = pair("refuse");
    // Nothing listens: every request is refused, and the client still reports.
    let tcp = run_client(
        &lab.client,
        &format!("{SERVER_IP}:{TCP_PORT}"),
        "tcp",
        3,
        &["--timeout-ms", "500"],
    )
    .unwrap();
    assert_eq!((tcp.ok, tcp.failed), (0, 3), "{tcp:?}");
    assert!(tcp.errors.iter().all(|e| e.contains("refused")), "{tcp:?}");
}

#[test]
fn http_get_gets_the_name_and_a_closed_connection() {
    let lab = pair("http");
    let echo_log = lab.logs.path().join("echo.log");
    let _echo = start_echo(&lab.server, "web-2", &[TCP_PORT], &[], &echo_log).unwrap();
    // A bash /dev/tcp request: read until the server closes.
    let script = format!(
        "exec 3<>/dev/tcp/{SERVER_IP}/{TCP_PORT}; \
         printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; timeout 5 cat <&3"
    );
    let out = lab.client.exec(["bash", "-c", &script]).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out:?}");
    assert!(out.contains("Content-Length: 6\r\n"), "{out:?}");
    assert!(out.ends_with("\r\n\r\nweb-2\n"), "{out:?}");
}

#[test]
fn a_held_connection_survives_five_rounds() {
    let lab = pair("hold");
    let echo_log = lab.logs.path().join("echo.log");
    let _echo = start_echo(&lab.server, "web-1", &[TCP_PORT], &[], &echo_log).unwrap();
    let mut hold = start_hold(
        &lab.client,
        &format!("{SERVER_IP}:{TCP_PORT}"),
        5,
        Duration::from_millis(100),
        &lab.logs.path().join("hold.out"),
    )
    .unwrap();
    assert_eq!(hold.wait_first(Duration::from_secs(5)).unwrap(), "web-1");
    let result = hold.finish(Duration::from_secs(10)).unwrap();
    assert_eq!((result.ok, result.failed), (5, 0), "{result:?}");
    assert_eq!(result.count_for("web-1"), 5);
    // One connection for all rounds.
    let log = std::fs::read_to_string(&echo_log).unwrap();
    assert_eq!(log.matches("tcp connection from").count(), 1, "{log}");
}

#[test]
fn a_held_connection_reports_the_server_going_away() {
    let lab = pair("holdkill");
    let echo_log = lab.logs.path().join("echo.log");
    let mut echo = start_echo(&lab.server, "web-1", &[TCP_PORT], &[], &echo_log).unwrap();
    let mut hold = start_hold(
        &lab.client,
        &format!("{SERVER_IP}:{TCP_PORT}"),
        20,
        Duration::from_millis(100),
        &lab.logs.path().join("hold.out"),
    )
    .unwrap();
    hold.wait_first(Duration::from_secs(5)).unwrap();
    echo.kill9().unwrap();
    let result = hold.finish(Duration::from_secs(10)).unwrap();
    assert!(
        result.failed > 0 && result.ok + result.failed == 20,
        "{result:?}"
    );
}

#[test]
fn guards_remove_namespaces_links_and_processes() {
    require_lab();
    let prefix = unique_prefix("guard");
    let (names, links, pid, rep) = {
        let lab = pair("guard");
        let echo_log = lab.logs.path().join("echo.log");
        let echo = start_echo(&lab.server, "web-1", &[TCP_PORT], &[], &echo_log).unwrap();
        let (host, rep) = attach_host(
            &prefix,
            "h1",
            "10.250.1.10/24",
            "02:00:00:00:01:10",
            Some("10.250.1.1"),
        )
        .unwrap();
        assert!(netns::link_exists(&rep));
        let eth0 = host.ip(&["-br", "link", "show", "dev", "eth0"]).unwrap();
        assert!(eth0.contains("02:00:00:00:01:10"), "{eth0}");
        let addr = host.ip(&["-br", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(addr.contains("10.250.1.10/24"), "{addr}");
        let routes = host.ip(&["route"]).unwrap();
        assert!(routes.contains("default via 10.250.1.1"), "{routes}");
        let offload = host.exec(["ethtool", "-k", "eth0"]).unwrap();
        assert!(offload.contains("tx-checksumming: off"), "{offload}");

        let listed = netns::list_netns().unwrap();
        let names = vec![
            lab.client.name().to_owned(),
            lab.server.name().to_owned(),
            host.name().to_owned(),
        ];
        for name in &names {
            assert!(listed.contains(name), "{name} missing from {listed:?}");
        }
        let links = vec![lab.veth.a().to_owned(), lab.veth.b().to_owned()];
        (names, links, echo.pid(), rep)
        // host, echo, then lab drop here.
    };
    let listed = netns::list_netns().unwrap();
    for name in &names {
        assert!(!listed.contains(name), "{name} still in {listed:?}");
    }
    for link in &links {
        assert!(!netns::link_exists(link), "veth end {link} still exists");
    }
    // The kernel destroys a namespace's links asynchronously.
    wait_until("the representor to go", Duration::from_secs(5), || {
        !netns::link_exists(&rep)
    })
    .unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn a_veth_left_in_the_root_namespace_is_deleted() {
    require_lab();
    let prefix = unique_prefix("veth");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    {
        let _veth = Veth::create(&a, &b).unwrap();
        assert!(netns::link_exists(&a) && netns::link_exists(&b));
    }
    assert!(!netns::link_exists(&a) && !netns::link_exists(&b));
}
