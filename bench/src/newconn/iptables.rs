//! The reference for a new connection's setup cost: kube-proxy's iptables
//! datapath in the same lab. A router namespace between a client namespace and
//! a server namespace (veth pairs, `net.ipv4.ip_forward=1`), with kube-proxy's
//! `nat` ruleset for one ClusterIP Service per size in it ([`crate::kube`]'s
//! writer: `PREROUTING -j KUBE-SERVICES`, `KUBE-SERVICES -d VIP/32 -p tcp
//! --dport 80 -j KUBE-SVC-…`, in `KUBE-SVC-…` one `-m statistic --mode random
//! --probability 1/(M-i)` jump per endpoint but the last, each `KUBE-SEP-…`
//! `-p tcp -j DNAT --to-destination EP:8080`, plus kube-proxy's `filter`
//! chains), loaded with `iptables-restore`. The server answers every endpoint
//! address (`ip route add local … dev lo`, `lab-echo` on 8080) and routes back
//! to the client through the router, which un-DNATs the answers by conntrack.
//!
//! The client is a pod address (inside kube-proxy's cluster CIDR, 10.244/16),
//! so, as for pod-to-Service traffic, no masquerade rule matches: the work per
//! new connection is conntrack, the `nat` chains and the DNAT, as in the OVS
//! pipeline.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dpu_lab::netns::{self, Netns, Veth};
use dpu_lab::process::{self, Child};
use dpu_lab::traffic;

use super::{BACKEND_NET, TARGET_PORT, VIP_NET, VIP_PORT};
use crate::guard;
use crate::kube::{self, SvcSpec};

/// The client: a pod address, inside kube-proxy's cluster CIDR (10.244.0.0/16).
pub(super) const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const CLIENT_NET: &str = "10.244.0.0/16";
/// The router's side of the client link.
const ROUTER_C_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The server link.
const ROUTER_S_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
/// Bound on loading the ruleset (a few thousand chains).
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Directories searched after `PATH` (test runners often have no sbin in `PATH`).
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// One ClusterIP Service: its VIP and its endpoints (all TCP 80 → 8080).
pub(super) type Service = (Ipv4Addr, Vec<Ipv4Addr>);

/// kube-proxy's iptables-restore input for `services`, and its `-A` count.
pub(super) fn ruleset(services: &[Service]) -> (String, usize) {
    let specs: Vec<SvcSpec> = services
        .iter()
        .map(|(vip, eps)| SvcSpec {
            vip: *vip,
            port: VIP_PORT,
            proto: "tcp",
            endpoints: eps.iter().map(|ep| (*ep, TARGET_PORT)).collect(),
        })
        .collect();
    kube::iptables_ruleset(&specs)
}

/// The absolute path of `prog` (PATH, then the sbin directories).
fn sbin(prog: &str) -> Result<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .with_context(|| format!("{prog} is not installed (the iptables reference needs it)"))
}

/// The three namespaces and the server's echo, stopped on drop.
pub(super) struct Lab {
    // Dropped in this order: the echo before its namespace.
    echo: Child,
    pub(super) client: Netns,
    /// The client namespace's source addresses.
    pub(super) clients: Vec<Ipv4Addr>,
    router: Netns,
    server: Netns,
    /// `iptables-restore --version`, e.g. `iptables-restore v1.8.9 (nf_tables)`.
    pub(super) version: String,
    /// `-A` lines loaded (both tables).
    pub(super) rules: usize,
    iptables: String,
    iptables_save: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        guard::forget_pid(self.echo.pid());
        for ns in [&self.client, &self.router, &self.server] {
            guard::forget_netns(ns.name());
        }
    }
}

/// A namespace made here, noted for the panic sweep and with loopback up.
fn namespace(name: &str) -> Result<Netns> {
    let ns = Netns::new(name)?;
    guard::track_netns(ns.name());
    ns.set_lo_up()?;
    Ok(ns)
}

/// A veth pair from `a_ns` (end `a`, address `a_ip`/24) to `b_ns` (end `b`,
/// `b_ip`/24), both ends up. The pair goes away with the namespaces.
fn link(
    a: &str,
    a_ns: &Netns,
    a_ip: Ipv4Addr,
    b: &str,
    b_ns: &Netns,
    b_ip: Ipv4Addr,
) -> Result<()> {
    let mut veth = Veth::create(a, b)?;
    veth.move_a_to(a_ns)?;
    veth.move_b_to(b_ns)?;
    veth.keep();
    for (ns, dev, ip) in [(a_ns, a, a_ip), (b_ns, b, b_ip)] {
        ns.add_addr(dev, &format!("{ip}/24"))?;
        ns.set_up(dev)?;
    }
    Ok(())
}

/// Builds the lab for `services` and loads their ruleset into the router.
pub(super) fn setup(services: &[Service], clients: u32, log_dir: &Path) -> Result<Lab> {
    let restore = sbin("iptables-restore")?;
    let iptables = sbin("iptables")?;
    let iptables_save = sbin("iptables-save")?;
    let sysctl = sbin("sysctl")?;
    let version = {
        let mut cmd = Command::new(&restore);
        cmd.arg("--version");
        process::run_checked(cmd, Duration::from_secs(10))?
            .trim()
            .to_string()
    };
    let p = netns::unique_prefix("ipt");
    let client = namespace(&format!("{p}-c"))?;
    let router = namespace(&format!("{p}-r"))?;
    let server = namespace(&format!("{p}-s"))?;
    let (c0, r0, r1, s0) = (
        format!("{p}-c0"),
        format!("{p}-r0"),
        format!("{p}-r1"),
        format!("{p}-s0"),
    );
    link(&c0, &client, CLIENT_IP, &r0, &router, ROUTER_C_IP)?;
    let client_ips = super::client_ips(CLIENT_IP, clients);
    for ip in client_ips.iter().filter(|ip| **ip != CLIENT_IP) {
        client.add_addr(&c0, &format!("{ip}/24"))?;
    }
    link(&r1, &router, ROUTER_S_IP, &s0, &server, SERVER_IP)?;
    client.ip(&["route", "add", VIP_NET, "via", &ROUTER_C_IP.to_string()])?;
    router.ip(&["route", "add", BACKEND_NET, "via", &SERVER_IP.to_string()])?;
    router.exec([sysctl.as_str(), "-q", "-w", "net.ipv4.ip_forward=1"])?;
    server.ip(&["route", "add", "local", BACKEND_NET, "dev", "lo"])?;
    server.ip(&["route", "add", CLIENT_NET, "via", &ROUTER_S_IP.to_string()])?;
    let echo = traffic::start_echo(
        &server,
        "server",
        &[TARGET_PORT],
        &[],
        &log_dir.join("ipt-echo.log"),
    )?;
    guard::track_pid(echo.pid());
    let mut lab = Lab {
        echo,
        client,
        clients: client_ips,
        router,
        server,
        version,
        rules: 0,
        iptables,
        iptables_save,
    };

    let (text, rules) = ruleset(services);
    let file = log_dir.join("kube-proxy.rules");
    std::fs::write(&file, &text)?;
    lab.router
        .exec_timeout(
            [restore.as_str(), "-w", "5", &file.to_string_lossy()],
            LOAD_TIMEOUT,
        )
        .context("loading kube-proxy's ruleset into the router")?;
    let endpoints: usize = services.iter().map(|(_, eps)| eps.len()).sum();
    let loaded = lab.dnat_counts()?.len();
    if loaded != endpoints {
        bail!(
            "the router holds {loaded} DNAT rules for {endpoints} endpoints after iptables-restore"
        );
    }
    lab.rules = rules;
    Ok(lab)
}

impl Lab {
    /// Zeroes the `nat` table's counters.
    pub(super) fn zero_counters(&self) -> Result<()> {
        self.router
            .exec([self.iptables.as_str(), "-w", "5", "-t", "nat", "-Z"])
            .map(drop)
    }

    /// The packets each endpoint's DNAT rule took (one per new connection: the
    /// `nat` table sees only a connection's first packet), by endpoint.
    pub(super) fn dnat_counts(&self) -> Result<BTreeMap<Ipv4Addr, u64>> {
        let text = self.router.exec_timeout(
            [self.iptables_save.as_str(), "-c", "-t", "nat"],
            Duration::from_secs(60),
        )?;
        Ok(parse_dnat_counts(&text))
    }
}

/// The DNAT rules' packet counters in `iptables-save -c` output
/// (`[pkts:bytes] -A KUBE-SEP-… -j DNAT --to-destination EP:port`), by EP.
pub(super) fn parse_dnat_counts(text: &str) -> BTreeMap<Ipv4Addr, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((pkts, rule)) = rest.split_once(':') else {
            continue;
        };
        let Some(dest) = rule.split_once("-j DNAT --to-destination ").map(|x| x.1) else {
            continue;
        };
        let ip = dest.split([':', ' ']).next().and_then(|s| s.parse().ok());
        if let (Some(ip), Ok(n)) = (ip, pkts.parse::<u64>()) {
            *m.entry(ip).or_insert(0) += n;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(m: usize) -> Vec<Ipv4Addr> {
        (0..m)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i as u32))
            .collect()
    }

    #[test]
    fn one_service_has_kube_proxys_chains() {
        let vip = Ipv4Addr::new(10, 96, 0, 20);
        let (text, rules) = ruleset(&[(vip, eps(100))]);
        let (_, one) = ruleset(&[(vip, eps(1))]);
        // Per endpoint: one KUBE-SVC jump, the SEP's masquerade and DNAT rules.
        assert_eq!(rules - one, 3 * 99);
        assert!(text.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        let svc: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp"))
            .collect();
        assert_eq!(svc.len(), 1);
        assert!(svc[0].contains("--dport 80 -j KUBE-SVC-"));
        let chain = svc[0].rsplit(' ').next().unwrap();
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("-j KUBE-SEP-"))
            .collect();
        assert_eq!(jumps.len(), 100);
        let probs: Vec<&str> = jumps
            .iter()
            .filter_map(|l| l.split("--probability ").nth(1))
            .map(|r| r.split(' ').next().unwrap())
            .collect();
        // 1/(M-i) for every endpoint but the last, which takes what is left.
        assert_eq!(probs.len(), 99);
        assert_eq!(probs[0], "0.0100000000");
        assert_eq!(probs[97], "0.3333333333");
        assert_eq!(probs[98], "0.5000000000");
        assert!(!jumps[99].contains("statistic"));
        assert_eq!(text.matches("-j DNAT --to-destination").count(), 100);
        assert!(text.contains("-j DNAT --to-destination 10.128.0.100:8080"));
    }

    #[test]
    fn the_client_is_a_pod_so_nothing_is_masqueraded() {
        let (text, _) = ruleset(&[(Ipv4Addr::new(10, 96, 0, 20), eps(3))]);
        assert!(text.contains(&format!("! -s {CLIENT_NET} ")));
        assert_eq!(CLIENT_NET, "10.244.0.0/16");
        assert_eq!(CLIENT_IP.octets()[..2], [10, 244]);
    }

    #[test]
    fn three_services_count_their_rules() {
        let svcs: Vec<Service> = [3usize, 100, 4096]
            .iter()
            .enumerate()
            .map(|(k, &m)| (Ipv4Addr::new(10, 96, 1, k as u8), eps(m)))
            .collect();
        let (text, rules) = ruleset(&svcs);
        assert_eq!(text.matches("-j DNAT --to-destination").count(), 4199);
        assert_eq!(text.matches("--probability").count(), 4196);
        let (_, base) = ruleset(&[]);
        // Per Service: its KUBE-SERVICES rule, the masquerade rule; 3 per endpoint.
        assert_eq!(rules - base, 3 * 2 + 3 * 4199);
    }

    #[test]
    fn dnat_counters_are_read_by_endpoint() {
        let save = "# Generated by iptables-save\n*nat\n:KUBE-SEP-A - [0:0]\n\
            [3:180] -A KUBE-SVC-X -m comment --comment \"x\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-A\n\
            [3:180] -A KUBE-SEP-A -p tcp -m comment --comment \"bench/svc-00000:p80\" -m tcp -j DNAT --to-destination 10.128.0.1:8080\n\
            [0:0] -A KUBE-SEP-B -p tcp -m comment --comment \"bench/svc-00000:p80\" -m tcp -j DNAT --to-destination 10.128.0.2:8080\n\
            COMMIT\n";
        let m = parse_dnat_counts(save);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&Ipv4Addr::new(10, 128, 0, 1)], 3);
        assert_eq!(m[&Ipv4Addr::new(10, 128, 0, 2)], 0);
    }
}
