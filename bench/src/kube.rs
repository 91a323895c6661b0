//! kube-proxy-equivalent rulesets (iptables, nftables) and their cold load.
//!
//! [`iptables_ruleset`] and [`nft_ruleset`] are pure: they write what kube-proxy's
//! first full sync writes for N ClusterIP services × M endpoints, and count the rules.
//! [`cold_load`] loads one into an empty private network namespace with the loader
//! kube-proxy uses and measures that one process.
//!
//! # Shapes
//!
//! - iptables (pkg/proxy/iptables, as `iptables-save` shows it on a cluster): in
//!   `nat`, `KUBE-SERVICES` has one `-d VIP/32 -p tcp -m comment --comment
//!   "ns/svc:port cluster IP" -m tcp --dport P -j KUBE-SVC-<hash>` per service and the
//!   trailing `KUBE-NODEPORTS` jump; each `KUBE-SVC-*` has the `! -s <cluster CIDR>`
//!   masquerade rule and one `-m statistic --mode random --probability 1/(M-i)` jump
//!   per endpoint but the last; each `KUBE-SEP-*` has `-s EP/32 -j KUBE-MARK-MASQ` and
//!   `-p tcp -m tcp -j DNAT --to-destination EP:port`; plus `KUBE-MARK-MASQ`,
//!   `KUBE-POSTROUTING` and the built-in chain jumps. In `filter`, the small chains
//!   kube-proxy creates (`KUBE-FORWARD`, `KUBE-SERVICES` for services without
//!   endpoints, `KUBE-EXTERNAL-SERVICES`, `KUBE-NODEPORTS`, `KUBE-PROXY-FIREWALL`,
//!   `KUBE-FIREWALL`). Chain names are kube-proxy's: 16 base32 characters of a sha256.
//!   kube-proxy adds the built-in chain jumps with separate `iptables -C/-I` calls;
//!   here they are in the same restore file, so one process does all the work.
//! - nftables (pkg/proxy/nftables): `table ip kube-proxy` with the `service-ips`
//!   verdict map (`ipv4_addr . inet_proto . inet_service : goto service-<hash>-ns/svc/
//!   tcp/port`), a chain per service port with the masquerade rule and `numgen random
//!   mod M vmap { 0 : goto endpoint-…, … }`, a chain per endpoint with `ip saddr EP
//!   jump mark-for-masquerade` and `meta l4proto tcp dnat to EP:port`,
//!   `mark-for-masquerade`, `masquerading`, the nat and filter hook chains, the
//!   `cluster-ips` set and `no-endpoint-services` map. Written as the knftables
//!   transaction kube-proxy sends (`add table/chain/map/rule/element` lines).
//!
//! # Rule counts
//!
//! iptables: the `-A` lines (both tables). nftables: the `add rule` lines; map and set
//! elements are not rules. [`cold_load`] checks the count against what the kernel
//! then holds (`iptables-save`, `nft -j list ruleset`) and fails if they differ.
//!
//! # Loaders
//!
//! As kube-proxy runs them, with the ruleset on stdin:
//! `iptables-{legacy,nft}-restore -w 5 -W 100000 --noflush --counters` and `nft -f -`,
//! spawned straight into the namespace (`setns` before exec, no `ip netns exec`) under
//! GNU `time`: wall from spawn to reap, user+system CPU from `wait4` (the loader, its
//! children and `time`'s own millisecond), and the loader's own `ru_maxrss` as `time`
//! reports it (a direct child's `ru_maxrss` would include the harness's RSS at fork).
//! Writing the rule text and reading it back are not timed. [`LoadOptions`] can drop
//! `--noflush` (see there for why one would) and set the time bound.

mod inspect;
mod names;
mod netns;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use inspect::{netns_exists, own_netns, Loaded, LoadedNetns};

/// The pod network: source-based masquerade rules exempt it, as with kube-proxy's
/// `--cluster-cidr`.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The service CIDR (nftables' "drop traffic to unallocated ClusterIPs").
const SERVICE_CIDR: &str = "10.96.0.0/12";
const NAMESPACE: &str = "bench";
/// Default bound on one loader run. Seen on a 2-core machine at 10k services × 10:
/// iptables-legacy 10 s, nft 74 s, iptables-nft without `--noflush` 18 s, and
/// iptables-nft with `--noflush` (kube-proxy's way) over this bound.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// One ClusterIP service port and its ready endpoints.
#[derive(Debug, Clone)]
pub struct SvcSpec {
    pub vip: Ipv4Addr,
    pub port: u16,
    /// `"tcp"` or `"udp"`.
    pub proto: &'static str,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

#[derive(Clone, Copy, Debug)]
pub enum Flavor {
    IptablesLegacy,
    IptablesNft,
    Nftables,
}

#[derive(Debug, Clone)]
pub struct Cost {
    /// From spawning the loader to reaping it.
    pub wall: Duration,
    /// User + system time of the loader process and its children (and about a
    /// millisecond of the `time` wrapper's own).
    pub cpu: Duration,
    /// The loader's peak RSS (`ru_maxrss`).
    pub peak_rss_kib: u64,
    /// Rules loaded (see the module doc), as read back from the kernel.
    pub rules: usize,
}

/// The names kube-proxy derives for service `i`.
struct PortName {
    /// `ns/svc:port`, the iptables comment and hash input.
    ipt: String,
    /// `ns/svc/proto/port`, the nftables chain-name base.
    nft: String,
}

fn port_name(i: usize, svc: &SvcSpec) -> PortName {
    let svc_name = format!("svc-{i:05}");
    let port = format!("p{}", svc.port);
    PortName {
        ipt: format!("{NAMESPACE}/{svc_name}:{port}"),
        nft: format!("{NAMESPACE}/{svc_name}/{}/{port}", svc.proto),
    }
}

/// kube-proxy's `computeProbability`: `%0.10f` of 1/n.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// The iptables-restore input kube-proxy's first full sync writes, and its `-A`
/// count.
pub fn iptables_ruleset(services: &[SvcSpec]) -> (String, usize) {
    let mut filter_rules = Vec::new();
    let mut nat_chains = Vec::new();
    let mut nat_rules = Vec::new();
    let mut svc_rules = Vec::new();
    for (i, svc) in services.iter().enumerate() {
        let name = port_name(i, svc);
        let p = svc.proto;
        let (vip, port) = (svc.vip, svc.port);
        if svc.endpoints.is_empty() {
            filter_rules.push(format!(
                "-A KUBE-SERVICES -d {vip}/32 -p {p} -m comment --comment \"{} has no endpoints\" -m {p} --dport {port} -j REJECT --reject-with icmp-port-unreachable",
                name.ipt
            ));
            continue;
        }
        let svc_chain = names::iptables_svc_chain(&name.ipt, p);
        nat_chains.push(svc_chain.clone());
        svc_rules.push(format!(
            "-A KUBE-SERVICES -d {vip}/32 -p {p} -m comment --comment \"{} cluster IP\" -m {p} --dport {port} -j {svc_chain}",
            name.ipt
        ));
        nat_rules.push(format!(
            "-A {svc_chain} ! -s {CLUSTER_CIDR} -d {vip}/32 -p {p} -m comment --comment \"{} cluster IP\" -m {p} --dport {port} -j KUBE-MARK-MASQ",
            name.ipt
        ));
        let m = svc.endpoints.len();
        let mut sep_rules = Vec::new();
        for (k, (ep, ep_port)) in svc.endpoints.iter().enumerate() {
            let endpoint = format!("{ep}:{ep_port}");
            let sep = names::iptables_sep_chain(&name.ipt, p, &endpoint);
            nat_chains.push(sep.clone());
            let stat = if k + 1 < m {
                format!(
                    "-m statistic --mode random --probability {} ",
                    probability(m - k)
                )
            } else {
                String::new()
            };
            nat_rules.push(format!(
                "-A {svc_chain} -m comment --comment \"{} -> {endpoint}\" {stat}-j {sep}",
                name.ipt
            ));
            sep_rules.push(format!(
                "-A {sep} -s {ep}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
                name.ipt
            ));
            sep_rules.push(format!(
                "-A {sep} -p {p} -m comment --comment \"{}\" -m {p} -j DNAT --to-destination {endpoint}",
                name.ipt
            ));
        }
        nat_rules.extend(sep_rules);
    }

    let mut out = String::new();
    let mut count = 0;
    let mut emit = |out: &mut String, line: &str| {
        count += usize::from(line.starts_with("-A "));
        out.push_str(line);
        out.push('\n');
    };
    emit(&mut out, "*filter");
    for chain in [
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-KUBELET-CANARY",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-CANARY",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SERVICES",
    ] {
        emit(&mut out, &format!(":{chain} - [0:0]"));
    }
    for line in [
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ] {
        emit(&mut out, line);
    }
    for line in &filter_rules {
        emit(&mut out, line);
    }
    emit(&mut out, "COMMIT");

    emit(&mut out, "*nat");
    for chain in [
        "KUBE-MARK-MASQ",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-SERVICES",
    ]
    .into_iter()
    .map(str::to_string)
    .chain(nat_chains)
    {
        emit(&mut out, &format!(":{chain} - [0:0]"));
    }
    for line in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    ] {
        emit(&mut out, line);
    }
    for line in svc_rules.iter().chain(&nat_rules) {
        emit(&mut out, line);
    }
    emit(
        &mut out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    );
    emit(&mut out, "COMMIT");
    (out, count)
}

/// The nft transaction kube-proxy's nftables backend sends on its first full sync,
/// and its `add rule` count.
pub fn nft_ruleset(services: &[SvcSpec]) -> (String, usize) {
    const T: &str = "ip kube-proxy";
    let mut out = String::new();
    let mut rules = 0;
    let chain = |out: &mut String, name: &str, hook: Option<&str>| {
        let _ = match hook {
            Some(h) => writeln!(out, "add chain {T} {name} {{ {h} ; }}"),
            None => writeln!(out, "add chain {T} {name}"),
        };
    };
    let mut rule = |out: &mut String, chain: &str, body: &str| {
        rules += 1;
        let _ = writeln!(out, "add rule {T} {chain} {body}");
    };
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    let _ = writeln!(
        out,
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    );
    for (name, hook) in [
        ("mark-for-masquerade", None),
        ("masquerading", None),
        ("services", None),
        ("service-endpoints-check", None),
        ("cluster-ips-check", None),
        ("reject-chain", None),
        ("filter-input", Some("type filter hook input priority -110")),
        (
            "filter-forward",
            Some("type filter hook forward priority -110"),
        ),
        (
            "filter-output",
            Some("type filter hook output priority -110"),
        ),
        (
            "filter-output-post-dnat",
            Some("type filter hook output priority -90"),
        ),
        (
            "nat-prerouting",
            Some("type nat hook prerouting priority -100"),
        ),
        ("nat-output", Some("type nat hook output priority -100")),
        (
            "nat-postrouting",
            Some("type nat hook postrouting priority 100"),
        ),
    ] {
        chain(&mut out, name, hook);
    }
    for (c, body) in [
        ("mark-for-masquerade", "mark set mark or 0x4000"),
        ("masquerading", "mark and 0x4000 == 0 return"),
        ("masquerading", "mark set mark xor 0x4000"),
        ("masquerading", "masquerade fully-random"),
        ("services", "ip daddr . meta l4proto . th dport vmap @service-ips"),
        (
            "service-endpoints-check",
            "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        ),
        (
            "cluster-ips-check",
            "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
        ),
        (
            "cluster-ips-check",
            &format!("ip daddr {SERVICE_CIDR} drop comment \"Drop traffic to unallocated ClusterIPs\""),
        ),
        ("reject-chain", "reject"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-output-post-dnat", "ct state new jump cluster-ips-check"),
        ("nat-prerouting", "jump services"),
        ("nat-output", "jump services"),
        ("nat-postrouting", "jump masquerading"),
    ] {
        rule(&mut out, c, body);
    }
    let mut elements = String::new();
    for (i, svc) in services.iter().enumerate() {
        let name = port_name(i, svc);
        let (vip, port, p) = (svc.vip, svc.port, svc.proto);
        let _ = writeln!(elements, "add element {T} cluster-ips {{ {vip} }}");
        if svc.endpoints.is_empty() {
            let _ = writeln!(
                elements,
                "add element {T} no-endpoint-services {{ {vip} . {p} . {port} comment \"{}\" : goto reject-chain }}",
                name.nft
            );
            continue;
        }
        let svc_chain = format!("service-{}", names::hash_and_truncate(&name.nft));
        chain(&mut out, &svc_chain, None);
        rule(
            &mut out,
            &svc_chain,
            &format!("ip daddr {vip} {p} dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"),
        );
        let mut vmap = Vec::new();
        for (k, (ep, ep_port)) in svc.endpoints.iter().enumerate() {
            let ep_chain = format!(
                "endpoint-{}",
                names::hash_and_truncate(&format!("{}__{ep}/{ep_port}", name.nft))
            );
            chain(&mut out, &ep_chain, None);
            rule(
                &mut out,
                &ep_chain,
                &format!("ip saddr {ep} jump mark-for-masquerade"),
            );
            rule(
                &mut out,
                &ep_chain,
                &format!("meta l4proto {p} dnat to {ep}:{ep_port}"),
            );
            vmap.push(format!("{k} : goto {ep_chain}"));
        }
        rule(
            &mut out,
            &svc_chain,
            &format!(
                "numgen random mod {} vmap {{ {} }}",
                svc.endpoints.len(),
                vmap.join(" , ")
            ),
        );
        let _ = writeln!(
            elements,
            "add element {T} service-ips {{ {vip} . {p} . {port} : goto {svc_chain} }}"
        );
    }
    out.push_str(&elements);
    (out, rules)
}

/// Loads the ruleset for `services` into a fresh private network namespace with
/// `flavor`'s loader, run as kube-proxy runs it, and returns what that one process
/// cost. The namespace is removed afterwards, also on error or unwinding.
pub fn cold_load(flavor: Flavor, services: &[SvcSpec]) -> Result<Cost> {
    cold_load_with(flavor, services, &LoadOptions::default())
}

/// How [`cold_load_with`] runs the loader.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Pass `--noflush` to `iptables-*-restore`, as kube-proxy does (default). With
    /// iptables 1.8.9, `iptables-nft-restore --noflush` is superlinear in the ruleset
    /// size (about 10× slower at 1k services × 10, over 10 minutes at 10k); without
    /// it the same file loads in about a second. Ignored for nftables.
    pub noflush: bool,
    /// The loader is killed and the load fails after this long.
    pub timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            noflush: true,
            timeout: LOAD_TIMEOUT,
        }
    }
}

/// [`cold_load`] with the loader's flags and time bound chosen.
pub fn cold_load_with(flavor: Flavor, services: &[SvcSpec], opts: &LoadOptions) -> Result<Cost> {
    let (text, rules) = ruleset(flavor, services);
    let ns = netns::Netns::new()?;
    let usage = load_in(&ns, flavor, &text, opts)?;
    let loaded = inspect::loaded_rules(&ns, flavor)?;
    if loaded.rules != rules {
        bail!(
            "{flavor:?}: the ruleset has {rules} rules but {} holds {} after the load",
            ns.name(),
            loaded.rules
        );
    }
    Ok(Cost {
        wall: usage.wall,
        cpu: usage.cpu,
        peak_rss_kib: usage.peak_rss_kib,
        rules: loaded.rules,
    })
}

/// The ruleset `flavor`'s loader takes, and its rule count.
pub fn ruleset(flavor: Flavor, services: &[SvcSpec]) -> (String, usize) {
    match flavor {
        Flavor::IptablesLegacy | Flavor::IptablesNft => iptables_ruleset(services),
        Flavor::Nftables => nft_ruleset(services),
    }
}

/// Runs `flavor`'s loader in `ns` with `text` on stdin, measured.
pub(crate) fn load_in(
    ns: &netns::Netns,
    flavor: Flavor,
    text: &str,
    opts: &LoadOptions,
) -> Result<netns::Usage> {
    let mut file = tempfile::tempfile().context("creating the ruleset file")?;
    file.write_all(text.as_bytes())?;
    std::io::Seek::rewind(&mut file)?;
    let (prog, args) = loader(flavor, opts);
    ns.run_measured(&netns::program(prog)?, &args, file, opts.timeout)
}

/// kube-proxy's loader command for `flavor`, reading the ruleset from stdin:
/// `iptables-restore -w 5 -W 100000 --noflush --counters` (pkg/util/iptables) and
/// `nft -f -` (knftables).
fn loader(flavor: Flavor, opts: &LoadOptions) -> (&'static str, Vec<&'static str>) {
    let restore = |prog| {
        let mut args = vec!["-w", "5", "-W", "100000"];
        if opts.noflush {
            args.push("--noflush");
        }
        args.push("--counters");
        (prog, args)
    };
    match flavor {
        Flavor::IptablesLegacy => restore("iptables-legacy-restore"),
        Flavor::IptablesNft => restore("iptables-nft-restore"),
        Flavor::Nftables => ("nft", vec!["-f", "-"]),
    }
}
