//! Scenario 6, the cost of a new connection through a Service's VIP: against
//! the size of its select group, against the fields the group hashes on, and
//! against kube-proxy's iptables datapath as the reference. OVS's `hash`
//! selection method scores every bucket of the group (`(hash(bucket id, flow
//! hash) & 0xffff) * weight`, the highest wins) each time a new connection
//! misses the datapath's flow cache, and the hash fields decide how often that
//! is: hashing the whole L4 source port un-wildcards it in the datapath flow of
//! a connection's first packet, so every new connection is an upcall; hashing
//! only its low bits (issue 16: `tcp_src=63`,
//! [`dpu_agent::compile::SRC_PORT_HASH_MASK`]) un-wildcards only those, so one
//! megaflow serves every later connection that agrees in them.
//!
//! # Method
//!
//! One private OVS (userspace datapath), one bridge, two emulated hosts: a
//! client (10.0.0.2) and a server (10.0.0.3) that answers on every address of
//! 10.128.0.0/10 (`ip route add local 10.128.0.0/10 dev lo`) with `lab-echo`
//! on TCP 8080. One VIP per (size, hash variant) pair (10.96.0.10, .11, …),
//! each sending new connections to its own select group of that many buckets
//! hashing on `ip_src,ip_dst,<src field>,tcp_dst`, rendered by the agent
//! ([`dpu_agent::compile::flows::Group`], bucket ids from
//! [`dpu_agent::compile::assign_bucket_ids`], the buckets'
//! `set_field:<ip>->reg3,set_field:8080->reg4,resubmit(,45)` as the compiler
//! writes them) and installed the way the `ovs-ofctl` backend does
//! ([`dpu_agent::reconcile::backend::render_bundle`]: a group over 60 KB as `add_or_mod`
//! plus `insert_bucket`s in one bundle). Every bucket is its own backend
//! address (8,192 addresses per VIP), DNATed by a per-backend flow as the
//! agent's EndpointDnat table does. The rest of the pipeline is the minimum
//! for real TCP: conntrack with NAT in one zone, forwarding by port.
//!
//! Beside it, kube-proxy's iptables datapath ([`iptables`]): a router
//! namespace holding kube-proxy's `nat` rules for one ClusterIP Service per
//! size, between a client and a server namespace of its own.
//!
//! Everything runs side by side: each round runs one batch of `conns` new TCP
//! connections (`lab-client`: connect, request, answer, close; one at a time;
//! the same client and timeout for both datapaths) to each VIP in turn, the
//! order reversed every other round, and the batches of a VIP are summed over
//! the rounds. Per batch: wall time, the whole machine's busy CPU time
//! (`/proc/stat`: the iptables work is the kernel's and cannot be given to a
//! process, so both datapaths get this figure), and for OVS `ovs-vswitchd`'s
//! CPU time (utime + stime of all its threads), its datapath upcalls
//! (`dpif-netdev/pmd-stats-show`, "miss with success upcall", cleared before
//! the batch) and, after the batch, the datapath's flows
//! (`dpctl/dump-flows`). After the last round the backend spread: the
//! connections each backend got in the rounds (OVS: the group's per-bucket
//! `packet_count`s, `dump-group-stats`; iptables: the `KUBE-SEP` DNAT rules'
//! counters) against a uniform split ([`spread`]).

mod iptables;
pub mod spread;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpu_agent::compile::flows::{Actions, Bucket, Group};
use dpu_agent::compile::pipeline::cookie::{Category, Cookie};
use dpu_agent::compile::pipeline::{reg, ENDPOINT_DNAT};
use dpu_agent::compile::{assign_bucket_ids, SRC_PORT_HASH_MASK};
use dpu_agent::reconcile::backend::ir::{Field, HashField};
use dpu_agent::reconcile::backend::{render_bundle, BundleOp};
use dpu_lab::netns::{self, Netns};
use dpu_lab::ovs::OvsInstance;
use dpu_lab::process::Child;
use dpu_lab::traffic;

use crate::results::NewConnRow;
use crate::{guard, procstat};
use spread::Spread;

const BRIDGE: &str = "br-nc";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_MAC: &str = "0a:58:00:00:00:02";
const SERVER_MAC: &str = "0a:58:00:00:00:03";
const VPC: &str = "bench";
const VIP_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// Where the VIPs are (both datapaths' clients route it to the VIPs).
const VIP_NET: &str = "10.96.0.0/16";
/// Every backend address of the plan: 10.128.0.1 on, 8,192 per VIP.
const BACKEND_NET: &str = "10.128.0.0/10";
const BACKEND_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);
/// Addresses per VIP: the largest group.
pub const MAX_BUCKETS: usize = 8192;
/// VIPs the plan has room for in [`BACKEND_NET`] (the last address of the /10
/// is its broadcast).
const MAX_VIPS: usize = 511;
/// The conntrack zone of the pipeline.
const ZONE: u16 = 1;
/// Tables of the minimal pipeline (45 is the agent's EndpointDnat, which the
/// buckets resubmit to).
const T_SERVICE: u8 = 40;
const T_TO_SERVER: u8 = 50;
const T_TO_CLIENT: u8 = 60;
/// A request that takes longer failed.
const REQUEST_TIMEOUT_MS: u64 = 1000;
/// Connections per VIP before the rounds (they fault in code and caches).
const WARMUP_CONNS: u32 = 20;
/// The userspace datapath folds its flows' counters into the OpenFlow stats
/// about every half second; the spread is read this long after the traffic.
const STATS_SETTLE: Duration = Duration::from_millis(1500);
/// The largest group whose stats fit one OpenFlow message: 16 bytes of
/// counters per bucket, 40 of group and 16 of multipart header in 65,535
/// (OVS writes a longer entry's 16-bit length truncated). Larger groups are
/// counted by their per-backend DNAT flows, which see the same packets (one
/// bucket per backend here).
const GROUP_STATS_MAX_BUCKETS: usize = (65_535 - 16 - 40) / 16;

/// What a group hashes the L4 source port on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashVariant {
    /// `port`, `masked`, or the mask as given (`255`).
    pub label: String,
    /// The source-port hash field: `tcp_src` or `tcp_src=<mask in decimal>`.
    pub src_field: HashField,
}

impl HashVariant {
    /// The whole source port (before issue 16).
    pub fn port() -> HashVariant {
        HashVariant {
            label: "port".into(),
            src_field: HashField::whole(Field::TcpSrc),
        }
    }

    /// The agent's production fields: the source port under
    /// [`SRC_PORT_HASH_MASK`].
    pub fn masked() -> HashVariant {
        HashVariant {
            label: "masked".into(),
            src_field: HashField::masked(Field::TcpSrc, u64::from(SRC_PORT_HASH_MASK)),
        }
    }

    /// The source port under `mask`.
    pub fn mask(mask: u16) -> HashVariant {
        HashVariant {
            label: mask.to_string(),
            src_field: HashField::masked(Field::TcpSrc, u64::from(mask)),
        }
    }

    /// `port`, `masked`, or a mask (`255`, `0xff`; 1 to 65535).
    pub fn parse(s: &str) -> Result<HashVariant> {
        let s = s.trim();
        match s {
            "port" => return Ok(Self::port()),
            "masked" => return Ok(Self::masked()),
            _ => {}
        }
        let mask = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u16::from_str_radix(hex, 16).ok(),
            None => s.parse::<u16>().ok(),
        };
        match mask {
            Some(m) if m > 0 => Ok(Self::mask(m)),
            _ => bail!("hash variant {s:?}: expected `port`, `masked` or a source-port mask from 1 to 65535"),
        }
    }

    /// The fields the group hashes on.
    pub fn hash_fields(&self) -> Vec<HashField> {
        vec![
            HashField::whole(Field::IpSrc),
            HashField::whole(Field::IpDst),
            self.src_field,
            HashField::whole(Field::TcpDst),
        ]
    }
}

/// The measurement's inputs.
#[derive(Debug, Clone)]
pub struct NewConnConfig {
    /// Buckets of each group (one backend each, weight 1), and endpoints of
    /// each iptables Service.
    pub sizes: Vec<usize>,
    /// What the OVS groups hash the source port on; one VIP per size and variant.
    pub hashes: Vec<HashVariant>,
    /// Rounds; each runs one batch per VIP.
    pub rounds: usize,
    /// New connections per batch.
    pub conns: u32,
    /// Client addresses a batch's connections are spread over, in turn (a
    /// Service has many clients; one client address reaches only as many
    /// backends as the masked hash has values).
    pub clients: u32,
}

/// The `n` client addresses of a setup whose first client is `first`: `first`
/// itself, then `.16` onwards of its /24.
fn client_ips(first: Ipv4Addr, n: u32) -> Vec<Ipv4Addr> {
    let base = u32::from(first) & 0xffff_ff00;
    std::iter::once(first)
        .chain((1..n).map(|i| Ipv4Addr::from(base + 15 + i)))
        .collect()
}

/// Which datapath a VIP goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Ovs(HashVariant),
    Iptables,
}

/// One VIP of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    buckets: usize,
    kind: Kind,
    /// Its slot in the address plan: VIP, backends, OVS group id.
    slot: usize,
}

impl Target {
    fn vip(&self) -> Ipv4Addr {
        vip(self.slot)
    }

    fn group_id(&self) -> u32 {
        self.slot as u32 + 1
    }

    fn backends(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (0..self.buckets).map(|i| backend(self.slot, i))
    }

    fn is_ovs(&self) -> bool {
        matches!(self.kind, Kind::Ovs(_))
    }
}

/// The VIP of slot `k`.
fn vip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + k as u32)
}

/// Backend `i` of slot `k`: 10.128.0.1 on, [`MAX_BUCKETS`] addresses per slot.
fn backend(k: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(BACKEND_BASE) + (k * MAX_BUCKETS + i) as u32)
}

/// Every VIP of `cfg`, in the order of the rows: by size, the OVS variants in
/// the order given, then iptables. Slots: the OVS VIPs first, then iptables'.
fn plan(cfg: &NewConnConfig) -> Result<Vec<Target>> {
    let mut sizes: Vec<usize> = Vec::new();
    for &n in &cfg.sizes {
        if n == 0 || n > MAX_BUCKETS {
            bail!("a group of {n} buckets: sizes go from 1 to {MAX_BUCKETS}");
        }
        if !sizes.contains(&n) {
            sizes.push(n);
        }
    }
    let mut hashes: Vec<&HashVariant> = Vec::new();
    for h in &cfg.hashes {
        if !hashes.iter().any(|x| x.src_field == h.src_field) {
            hashes.push(h);
        }
    }
    if sizes.is_empty() || hashes.is_empty() {
        bail!("nothing to measure: {cfg:?}");
    }
    let ovs_slots = sizes.len() * hashes.len();
    if ovs_slots + sizes.len() > MAX_VIPS {
        bail!(
            "{} sizes × {} hash variants need {} VIPs; the address plan has {MAX_VIPS}",
            sizes.len(),
            hashes.len(),
            ovs_slots + sizes.len()
        );
    }
    let mut out = Vec::new();
    for (s, &n) in sizes.iter().enumerate() {
        for (h, v) in hashes.iter().enumerate() {
            out.push(Target {
                buckets: n,
                kind: Kind::Ovs((*v).clone()),
                slot: s * hashes.len() + h,
            });
        }
        out.push(Target {
            buckets: n,
            kind: Kind::Iptables,
            slot: ovs_slots + s,
        });
    }
    Ok(out)
}

/// The buckets of slot `k`'s `n` backends in bucket-id order, each with its
/// backend.
fn buckets(k: usize, n: usize) -> Vec<(Bucket, Ipv4Addr)> {
    let ips: Vec<Ipv4Addr> = (0..n).map(|i| backend(k, i)).collect();
    let keys: Vec<(&str, IpAddr, u32)> = ips.iter().map(|ip| (VPC, IpAddr::V4(*ip), 1)).collect();
    let mut out: Vec<(Bucket, Ipv4Addr)> = ips
        .iter()
        .zip(assign_bucket_ids(TARGET_PORT, &keys))
        .flat_map(|(ip, ids)| {
            let actions = Arc::new(
                Actions::new()
                    .set_field(reg::EP_IP, *ip)
                    .set_reg(reg::EP_PORT, u32::from(TARGET_PORT))
                    .resubmit(ENDPOINT_DNAT.id),
            );
            ids.into_iter()
                .map(move |id| (Bucket::new(id, actions.clone()), *ip))
        })
        .collect();
    out.sort();
    out
}

/// The group of an OVS target, as the agent writes one.
fn group(t: &Target) -> Group {
    let hash_fields = match &t.kind {
        Kind::Ovs(h) => h.hash_fields(),
        Kind::Iptables => Vec::new(),
    };
    Group {
        id: t.group_id(),
        hash_fields,
        buckets: buckets(t.slot, t.buckets)
            .into_iter()
            .map(|(b, _)| b)
            .collect(),
        owner: Cookie::new(Category::Service, "bench/newconn"),
        learns: false,
    }
}

/// The flows of the minimal pipeline for client port `c` and server port `s`.
fn flows(targets: &[Target], c: u32, s: u32) -> String {
    let mut f = vec![
        format!(
            "table=0,priority=100,in_port={c},ip,actions=ct(zone={ZONE},nat,table={T_SERVICE})"
        ),
        format!(
            "table=0,priority=100,in_port={s},ip,actions=ct(zone={ZONE},nat,table={T_TO_CLIENT})"
        ),
        format!(
            "table={T_SERVICE},priority=10,ct_state=-new+trk,ip,actions=resubmit(,{T_TO_SERVER})"
        ),
        format!("table={T_TO_SERVER},priority=10,ip,actions=output:{s}"),
        format!("table={T_TO_CLIENT},priority=10,ip,actions=output:{c}"),
    ];
    for t in targets.iter().filter(|t| t.is_ovs()) {
        f.push(format!(
            "table={T_SERVICE},priority=100,ct_state=+new+trk,tcp,nw_dst={},tp_dst={VIP_PORT},actions=group:{}",
            t.vip(),
            t.group_id()
        ));
        for ip in t.backends() {
            f.push(format!(
                "table={},priority=100,tcp,reg3={:#x},reg4={TARGET_PORT:#x},actions=ct(commit,zone={ZONE},nat(dst={ip}:{TARGET_PORT}),table={T_TO_SERVER})",
                ENDPOINT_DNAT.id,
                u32::from(ip)
            ));
        }
    }
    f.join("\n") + "\n"
}

/// `ovs-vswitchd`'s datapath upcalls so far ("miss with success upcall" of
/// every thread in `dpif-netdev/pmd-stats-show`).
fn upcalls(ovs: &OvsInstance) -> Result<u64> {
    let text = ovs.vswitchd_appctl(&["dpif-netdev/pmd-stats-show"])?;
    let n = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("miss with success upcall:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    Ok(n)
}

/// The flow lines of a `dpctl/dump-flows` (without the `flow-dump from …`
/// headers of each thread).
fn dp_flow_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("flow-dump from"))
}

/// Whether a datapath flow matches packets to exactly `ip` (its `ipv4(…)` key
/// has `dst=<ip>`, with or without a mask).
fn matches_dst(line: &str, ip: Ipv4Addr) -> bool {
    let needle = format!("dst={ip}");
    line.match_indices(&needle).any(|(i, _)| {
        matches!(
            line[i + needle.len()..].chars().next(),
            Some(',' | ')' | '/')
        )
    })
}

/// The datapath's flows now: all of them, and those matching packets to `vip`.
fn dp_flows(ovs: &OvsInstance, vip: Ipv4Addr) -> Result<(usize, usize)> {
    let text = ovs.vswitchd_appctl(&["dpctl/dump-flows", "netdev@ovs-netdev"])?;
    let all = dp_flow_lines(&text).count();
    let to_vip = dp_flow_lines(&text).filter(|l| matches_dst(l, vip)).count();
    Ok((all, to_vip))
}

/// The per-bucket packet counts of each group in `dump-group-stats` output
/// (`group_id=N,…,bucket0:packet_count=P,byte_count=B,…`), in bucket order.
fn parse_group_stats(text: &str) -> BTreeMap<u32, Vec<u64>> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let mut id = None;
        let mut counts = Vec::new();
        for tok in line.trim().split(',') {
            if let Some(v) = tok.strip_prefix("group_id=") {
                id = v.parse::<u32>().ok();
            } else if let Some((b, v)) = tok.split_once(":packet_count=") {
                if b.starts_with("bucket") {
                    counts.push(v.parse::<u64>().unwrap_or(0));
                }
            }
        }
        if let Some(id) = id {
            m.insert(id, counts);
        }
    }
    m
}

/// The packets each per-backend DNAT flow (table 45) took, by backend, from
/// `dump-flows` output.
fn parse_dnat_flow_counts(text: &str) -> BTreeMap<Ipv4Addr, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let n = line
            .split([',', ' '])
            .find_map(|t| t.trim().strip_prefix("n_packets="))
            .and_then(|v| v.parse::<u64>().ok());
        let ip = line
            .split_once("nat(dst=")
            .and_then(|(_, r)| r.split([':', ')']).next())
            .and_then(|v| v.parse::<Ipv4Addr>().ok());
        if let (Some(n), Some(ip)) = (n, ip) {
            *m.entry(ip).or_insert(0) += n;
        }
    }
    m
}

/// The busy CPU time of the whole machine in `/proc/stat`'s `cpu` line, in
/// ticks: user + nice + system + irq + softirq + steal (guest time is already
/// in user); idle and iowait are not busy.
fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    Some(total - v[3] - v[4])
}

/// The whole machine's busy CPU time so far.
fn machine_busy() -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_busy_ticks(&text).ok_or_else(|| anyhow!("/proc/stat: no cpu line"))?;
    Ok(Duration::from_micros(
        ticks.saturating_mul(1_000_000) / procstat::clk_tck(),
    ))
}

/// The emulated hosts, the server's echo and the switch, stopped on drop.
struct Setup {
    // Dropped in this order: the echo before its namespace.
    echo: Child,
    ovs: OvsInstance,
    client: Netns,
    /// The client namespace's source addresses.
    clients: Vec<Ipv4Addr>,
    server: Netns,
    vswitchd: u32,
}

impl Drop for Setup {
    fn drop(&mut self) {
        guard::forget_pid(self.echo.pid());
        guard::forget_ovs(&self.ovs);
        guard::forget_netns(self.client.name());
        guard::forget_netns(self.server.name());
    }
}

fn setup(targets: &[Target], clients: u32, log_dir: &std::path::Path) -> Result<Setup> {
    let ovs = OvsInstance::start().context("starting a private OVS")?;
    guard::track_ovs(&ovs);
    ovs.add_bridge(BRIDGE)?;
    let prefix = netns::unique_prefix("nc");
    let (client, crep) =
        netns::attach_host(&prefix, "c", &format!("{CLIENT_IP}/24"), CLIENT_MAC, None)?;
    guard::track_netns(client.name());
    let (server, srep) =
        netns::attach_host(&prefix, "s", &format!("{SERVER_IP}/24"), SERVER_MAC, None)?;
    guard::track_netns(server.name());
    let c = ovs.plug(BRIDGE, &crep, "nc-client")?;
    let s = ovs.plug(BRIDGE, &srep, "nc-server")?;
    // The client reaches the VIPs through a gateway whose MAC is the server's
    // (the switch forwards by port); the server answers every backend address.
    client.ip(&[
        "route",
        "add",
        VIP_NET,
        "via",
        &GATEWAY.to_string(),
        "dev",
        "eth0",
    ])?;
    client.ip(&[
        "neigh",
        "replace",
        &GATEWAY.to_string(),
        "lladdr",
        SERVER_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    server.ip(&["route", "add", "local", BACKEND_NET, "dev", "lo"])?;
    // Every client address shares the client's MAC; the switch forwards only
    // IP, so the server knows them without ARP.
    let client_ips = client_ips(CLIENT_IP, clients);
    for ip in &client_ips {
        if *ip != CLIENT_IP {
            client.add_addr("eth0", &format!("{ip}/24"))?;
        }
        server.ip(&[
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            CLIENT_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
    }
    let echo = traffic::start_echo(
        &server,
        "server",
        &[TARGET_PORT],
        &[],
        &log_dir.join("echo.log"),
    )?;
    guard::track_pid(echo.pid());

    let groups: Vec<BundleOp> = targets
        .iter()
        .filter(|t| t.is_ovs())
        .map(|t| BundleOp::PutGroup(Arc::new(group(t))))
        .collect();
    let bundle = log_dir.join("groups.bundle");
    std::fs::write(&bundle, render_bundle(&groups))?;
    ovs.ofctl(&["bundle", &ovs.mgmt(BRIDGE), &bundle.to_string_lossy()])
        .context("installing the select groups")?;
    let flow_file = log_dir.join("flows.txt");
    std::fs::write(&flow_file, flows(targets, c, s))?;
    ovs.ofctl(&["add-flows", &ovs.mgmt(BRIDGE), &flow_file.to_string_lossy()])
        .context("installing the flows")?;
    let vswitchd = procstat::pid_from_file(&ovs.dir().join("ovs-vswitchd.pid"))?;
    Ok(Setup {
        echo,
        ovs,
        client,
        clients: client_ips,
        server,
        vswitchd,
    })
}

impl Setup {
    /// The connections each OVS backend has taken so far, by backend: the
    /// group's per-bucket `packet_count`s where one OpenFlow message holds
    /// them, the per-backend DNAT flows' `n_packets` otherwise.
    fn counts(&self, targets: &[Target]) -> Result<BTreeMap<Ipv4Addr, u64>> {
        let mgmt = self.ovs.mgmt(BRIDGE);
        let table = format!("table={}", ENDPOINT_DNAT.id);
        let mut m = parse_dnat_flow_counts(&self.ovs.ofctl(&["dump-flows", &mgmt, &table])?);
        for t in targets
            .iter()
            .filter(|t| t.is_ovs() && t.buckets <= GROUP_STATS_MAX_BUCKETS)
        {
            let gid = t.group_id();
            let text = self
                .ovs
                .ofctl(&["dump-group-stats", &mgmt, &format!("group_id={gid}")])?;
            let stats = parse_group_stats(&text).remove(&gid).unwrap_or_default();
            let ips: Vec<Ipv4Addr> = buckets(t.slot, t.buckets)
                .into_iter()
                .map(|(_, ip)| ip)
                .collect();
            if stats.len() != ips.len() {
                eprintln!(
                    "newconn: group {gid} has {} buckets but dump-group-stats lists {}; \
                     counting its DNAT flows instead",
                    ips.len(),
                    stats.len()
                );
                continue;
            }
            for (ip, n) in ips.into_iter().zip(stats) {
                m.insert(ip, n);
            }
        }
        Ok(m)
    }
}

/// One batch's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Batch {
    ok: u64,
    failed: u64,
    wall: Duration,
    /// The whole machine's busy CPU time.
    busy: Duration,
    /// OVS only: vswitchd's CPU time, its upcalls, and the datapath's flows
    /// after the batch (all, and those to this VIP).
    vswitchd: Option<Duration>,
    upcalls: Option<u64>,
    flows: Option<(usize, usize)>,
}

/// `conns` connections to `vip`, from the `clients` addresses in turn (one
/// `lab-client`).
fn client_run(
    ns: &Netns,
    clients: &[Ipv4Addr],
    vip: Ipv4Addr,
    conns: u32,
) -> Result<traffic::TrafficResult> {
    let target = format!("{vip}:{VIP_PORT}");
    let timeout = format!("--timeout-ms={REQUEST_TIMEOUT_MS}");
    let ips: Vec<String> = clients.iter().map(Ipv4Addr::to_string).collect();
    let src = format!("--src-ip={}", ips.join(","));
    traffic::run_client(ns, &target, "tcp", conns, &[&timeout, &src])
}

fn batch_ovs(st: &Setup, t: &Target, conns: u32) -> Result<Batch> {
    st.ovs.vswitchd_appctl(&["dpif-netdev/pmd-stats-clear"])?;
    let up0 = upcalls(&st.ovs)?;
    let cpu0 = procstat::cpu_time(st.vswitchd)?;
    let busy0 = machine_busy()?;
    let t0 = Instant::now();
    let r = client_run(&st.client, &st.clients, t.vip(), conns)?;
    let wall = t0.elapsed();
    let busy = machine_busy()?.saturating_sub(busy0);
    let cpu = procstat::cpu_time(st.vswitchd)?.saturating_sub(cpu0);
    let up = upcalls(&st.ovs)?.saturating_sub(up0);
    let flows = dp_flows(&st.ovs, t.vip())?;
    Ok(Batch {
        ok: r.ok,
        failed: r.failed,
        wall,
        busy,
        vswitchd: Some(cpu),
        upcalls: Some(up),
        flows: Some(flows),
    })
}

fn batch_iptables(lab: &iptables::Lab, t: &Target, conns: u32) -> Result<Batch> {
    let busy0 = machine_busy()?;
    let t0 = Instant::now();
    let r = client_run(&lab.client, &lab.clients, t.vip(), conns)?;
    let wall = t0.elapsed();
    let busy = machine_busy()?.saturating_sub(busy0);
    Ok(Batch {
        ok: r.ok,
        failed: r.failed,
        wall,
        busy,
        ..Default::default()
    })
}

/// The iptables Services of the plan.
fn iptables_services(targets: &[Target]) -> Vec<iptables::Service> {
    targets
        .iter()
        .filter(|t| t.kind == Kind::Iptables)
        .map(|t| (t.vip(), t.backends().collect()))
        .collect()
}

/// The lowest and highest of `v` (NaN, NaN when empty).
fn min_max(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::NAN, f64::NAN), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// One row from a VIP's batches and its backends' counts in the rounds.
fn row(
    t: &Target,
    rounds: usize,
    b: &[Batch],
    counts: Result<Vec<u64>, String>,
    ipt_version: &str,
) -> NewConnRow {
    let ok: u64 = b.iter().map(|x| x.ok).sum();
    let failed: u64 = b.iter().map(|x| x.failed).sum();
    let wall: f64 = b.iter().map(|x| x.wall.as_secs_f64()).sum();
    let busy: f64 = b.iter().map(|x| x.busy.as_secs_f64()).sum();
    let per_conn = |us: f64| us * 1e6 / ok.max(1) as f64;
    let answered = || b.iter().filter(|x| x.ok > 0);
    let (datapath, hash, selection) = match &t.kind {
        Kind::Ovs(h) => (
            "ovs",
            h.label.clone(),
            format!(
                "fields({})",
                h.hash_fields()
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        Kind::Iptables => (
            "iptables",
            String::new(),
            format!("statistic --mode random ({ipt_version})"),
        ),
    };
    let mut errors = Vec::new();
    if failed > 0 {
        errors.push(format!("{failed} connections failed"));
    }
    let spread = match counts {
        Ok(c) => {
            let s = Spread::of(&c);
            if s.is_none() {
                errors.push("backend spread: no connection counted".to_string());
            }
            s
        }
        Err(e) => {
            errors.push(format!("backend spread: {e}"));
            None
        }
    };
    let mut r = NewConnRow {
        buckets: t.buckets,
        clients: 1,
        datapath: datapath.into(),
        hash,
        selection,
        connections: ok,
        failed,
        rounds,
        conns_per_s: ok as f64 / wall,
        machine_cpu_us_per_conn: per_conn(busy),
        vswitchd_cpu_us_per_conn: f64::NAN,
        vswitchd_cpu_us_per_conn_min: f64::NAN,
        vswitchd_cpu_us_per_conn_max: f64::NAN,
        upcalls_per_conn: f64::NAN,
        upcalls_per_conn_min: f64::NAN,
        upcalls_per_conn_max: f64::NAN,
        upcalls_per_conn_warm: f64::NAN,
        vswitchd_cpu_us_per_upcall: f64::NAN,
        datapath_flows_max: None,
        datapath_flows_vip_max: None,
        chi2: spread.map_or(f64::NAN, |s| s.chi2),
        chi2_p: spread.map_or(f64::NAN, |s| s.p),
        share_max: spread.map_or(f64::NAN, |s| s.share_max),
        share_min: spread.map_or(f64::NAN, |s| s.share_min),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    };
    if t.is_ovs() {
        let cpu: f64 = b
            .iter()
            .filter_map(|x| x.vswitchd)
            .map(|d| d.as_secs_f64())
            .sum();
        let up: u64 = b.iter().filter_map(|x| x.upcalls).sum();
        let (cpu_lo, cpu_hi) = min_max(
            answered().filter_map(|x| x.vswitchd.map(|d| d.as_secs_f64() * 1e6 / x.ok as f64)),
        );
        let (up_lo, up_hi) =
            min_max(answered().filter_map(|x| x.upcalls.map(|u| u as f64 / x.ok as f64)));
        r.vswitchd_cpu_us_per_conn = per_conn(cpu);
        r.vswitchd_cpu_us_per_conn_min = cpu_lo;
        r.vswitchd_cpu_us_per_conn_max = cpu_hi;
        r.upcalls_per_conn = up as f64 / ok.max(1) as f64;
        r.upcalls_per_conn_min = up_lo;
        r.upcalls_per_conn_max = up_hi;
        // `b` holds the batches in round order.
        let warm_ok: u64 = b.iter().skip(1).map(|x| x.ok).sum();
        let warm_up: u64 = b.iter().skip(1).filter_map(|x| x.upcalls).sum();
        if warm_ok > 0 {
            r.upcalls_per_conn_warm = warm_up as f64 / warm_ok as f64;
        }
        r.vswitchd_cpu_us_per_upcall = cpu * 1e6 / up.max(1) as f64;
        r.datapath_flows_max = b.iter().filter_map(|x| x.flows).map(|f| f.0).max();
        r.datapath_flows_vip_max = b.iter().filter_map(|x| x.flows).map(|f| f.1).max();
    }
    r
}

/// The counts of `t`'s backends between two readings (by backend).
fn diff_counts(
    t: &Target,
    before: &BTreeMap<Ipv4Addr, u64>,
    after: &BTreeMap<Ipv4Addr, u64>,
) -> Vec<u64> {
    t.backends()
        .map(|ip| {
            let a = after.get(&ip).copied().unwrap_or(0);
            a.saturating_sub(before.get(&ip).copied().unwrap_or(0))
        })
        .collect()
}

/// Runs the scenario: one row per VIP, by size (OVS variants in the order of
/// `cfg.hashes`, then iptables).
pub fn run(cfg: &NewConnConfig) -> Result<Vec<NewConnRow>> {
    if cfg.rounds == 0 || cfg.conns == 0 {
        bail!("nothing to measure: {cfg:?}");
    }
    let targets = plan(cfg)?;
    let dir = tempfile::Builder::new().prefix("dpu-bench-nc-").tempdir()?;
    let st = setup(&targets, cfg.clients, dir.path())?;
    // The reference is worth a row even when it cannot be built: its rows then
    // say why, and the OVS rows are measured all the same.
    let mut ipt_error: Option<String> = None;
    let mut ipt = match iptables::setup(&iptables_services(&targets), cfg.clients, dir.path()) {
        Ok(lab) => Some(lab),
        Err(e) => {
            ipt_error = Some(format!("iptables reference: {e:#}"));
            None
        }
    };
    // Warm up (ARP-free, but the first connections fault in code and caches).
    for t in &targets {
        match &t.kind {
            Kind::Ovs(_) => {
                let w = batch_ovs(&st, t, WARMUP_CONNS)?;
                if w.ok == 0 {
                    bail!(
                        "no connection to VIP {} was answered: {:?}\n{}",
                        t.vip(),
                        w,
                        st.ovs.dump_flows(BRIDGE)?.join("\n")
                    );
                }
            }
            Kind::Iptables => {
                let Some(lab) = &ipt else { continue };
                match batch_iptables(lab, t, WARMUP_CONNS) {
                    Ok(w) if w.ok > 0 => {}
                    Ok(w) => {
                        ipt_error = Some(format!(
                            "iptables reference: no connection to VIP {} was answered: {w:?}",
                            t.vip()
                        ));
                        ipt = None;
                    }
                    Err(e) => {
                        ipt_error = Some(format!("iptables reference: {e:#}"));
                        ipt = None;
                    }
                }
            }
        }
    }
    // The spread counts only the rounds' connections.
    std::thread::sleep(STATS_SETTLE);
    let ovs_before = st.counts(&targets)?;
    if let Some(lab) = &ipt {
        lab.zero_counters()?;
    }
    let mut batches: BTreeMap<usize, Vec<Batch>> = BTreeMap::new();
    for round in 0..cfg.rounds {
        // Alternate the order so no VIP always runs first.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let t = &targets[k];
            let b = match (&t.kind, &ipt) {
                (Kind::Ovs(_), _) => batch_ovs(&st, t, cfg.conns)?,
                (Kind::Iptables, Some(lab)) => batch_iptables(lab, t, cfg.conns)?,
                (Kind::Iptables, None) => continue,
            };
            batches.entry(k).or_default().push(b);
        }
    }
    std::thread::sleep(STATS_SETTLE);
    let ovs_after = st.counts(&targets);
    let ipt_after = ipt.as_ref().map(iptables::Lab::dnat_counts);
    let ipt_version = ipt.as_ref().map(|l| l.version.clone()).unwrap_or_default();
    let none = BTreeMap::new();
    let rows: Vec<NewConnRow> = targets
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let b = batches.get(&k).map(Vec::as_slice).unwrap_or_default();
            let counts = match (&t.kind, &ovs_after, &ipt_after) {
                (Kind::Ovs(_), Ok(after), _) => Ok(diff_counts(t, &ovs_before, after)),
                (Kind::Ovs(_), Err(e), _) => Err(format!("{e:#}")),
                (Kind::Iptables, _, Some(Ok(after))) => Ok(diff_counts(t, &none, after)),
                (Kind::Iptables, _, Some(Err(e))) => Err(format!("{e:#}")),
                (Kind::Iptables, _, None) => Err("not measured".into()),
            };
            let mut r = row(t, cfg.rounds, b, counts, &ipt_version);
            r.clients = cfg.clients;
            if let (Kind::Iptables, Some(e)) = (&t.kind, &ipt_error) {
                r.error = Some(e.clone());
            }
            r
        })
        .collect();
    drop(ipt);
    drop(st);
    if rows.iter().all(|r| r.connections == 0) {
        return Err(anyhow!("no connection succeeded"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every backend address of `targets`.
    fn all_backends(targets: &[Target]) -> BTreeSet<Ipv4Addr> {
        targets.iter().flat_map(Target::backends).collect()
    }

    fn cfg(sizes: &[usize], hashes: &[&str]) -> NewConnConfig {
        NewConnConfig {
            sizes: sizes.to_vec(),
            hashes: hashes
                .iter()
                .map(|h| HashVariant::parse(h).unwrap())
                .collect(),
            rounds: 1,
            conns: 1,
            clients: 1,
        }
    }

    #[test]
    fn client_addresses_are_the_first_then_16_onwards_of_its_24() {
        let ips = client_ips(CLIENT_IP, 3);
        assert_eq!(
            ips,
            [
                CLIENT_IP,
                Ipv4Addr::new(10, 0, 0, 16),
                Ipv4Addr::new(10, 0, 0, 17)
            ]
        );
        assert_eq!(client_ips(CLIENT_IP, 1), [CLIENT_IP]);
        // 200 clients stay inside the /24 and away from the server and gateway.
        let many = client_ips(CLIENT_IP, 200);
        assert_eq!(many.last(), Some(&Ipv4Addr::new(10, 0, 0, 214)));
        assert!(!many.contains(&SERVER_IP) && !many.contains(&GATEWAY));
    }

    fn ovs_target(slot: usize, n: usize, h: HashVariant) -> Target {
        Target {
            buckets: n,
            kind: Kind::Ovs(h),
            slot,
        }
    }

    #[test]
    fn hash_variants_parse_and_name_their_fields() {
        let port = HashVariant::parse("port").unwrap();
        let names = |h: &HashVariant| -> Vec<String> {
            h.hash_fields().iter().map(|f| f.to_string()).collect()
        };
        assert_eq!(names(&port), ["ip_src", "ip_dst", "tcp_src", "tcp_dst"]);
        let masked = HashVariant::parse("masked").unwrap();
        assert_eq!(masked.label, "masked");
        // The agent's production fields, the mask in decimal as OVS prints it.
        assert_eq!(
            names(&masked),
            ["ip_src", "ip_dst", "tcp_src=63", "tcp_dst"]
        );
        assert_eq!(
            masked.src_field.to_string(),
            format!("tcp_src={}", SRC_PORT_HASH_MASK)
        );
        assert_eq!(
            HashVariant::parse("255").unwrap().src_field.to_string(),
            "tcp_src=255"
        );
        assert_eq!(
            HashVariant::parse("0xf").unwrap().src_field.to_string(),
            "tcp_src=15"
        );
        assert_eq!(HashVariant::parse("15").unwrap().label, "15");
        for bad in ["0", "65536", "-1", "ports", ""] {
            assert!(HashVariant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_variant_gets_its_own_group_and_fields() {
        let c = cfg(&[3, 100], &["port", "masked", "15"]);
        let targets = plan(&c).unwrap();
        let ovs: Vec<&Target> = targets.iter().filter(|t| t.is_ovs()).collect();
        assert_eq!(ovs.len(), 6);
        let specs: Vec<String> = ovs.iter().map(|t| group(t).spec()).collect();
        assert!(specs[0].starts_with(
            "group_id=1,type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst),"
        ));
        assert!(specs[1].starts_with("group_id=2,type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_src=63,tcp_dst),"));
        assert!(specs[2].contains("fields(ip_src,ip_dst,tcp_src=15,tcp_dst)"));
        assert!(specs[3].contains("fields(ip_src,ip_dst,tcp_src,tcp_dst)"));
        let ids: BTreeSet<u32> = ovs.iter().map(|t| t.group_id()).collect();
        assert_eq!(ids.len(), 6);
        // Each group's flow sends its own VIP to it.
        let f = flows(&targets, 1, 2);
        for t in &ovs {
            assert!(f.contains(&format!(
                "nw_dst={},tp_dst=80,actions=group:{}\n",
                t.vip(),
                t.group_id()
            )));
        }
        // The rows: by size, the variants in order, then iptables.
        let kinds: Vec<(usize, String)> = targets
            .iter()
            .map(|t| {
                let k = match &t.kind {
                    Kind::Ovs(h) => h.label.clone(),
                    Kind::Iptables => "iptables".into(),
                };
                (t.buckets, k)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (3, "port".into()),
                (3, "masked".into()),
                (3, "15".into()),
                (3, "iptables".into()),
                (100, "port".into()),
                (100, "masked".into()),
                (100, "15".into()),
                (100, "iptables".into()),
            ]
        );
        // The same fields twice are one variant.
        assert_eq!(
            plan(&cfg(&[3], &["masked", "63", "port"])).unwrap().len(),
            3
        );
    }

    #[test]
    fn the_address_plan_has_no_collisions() {
        let hashes = [
            "port", "masked", "1", "3", "7", "15", "31", "127", "255", "511", "1023", "2047",
            "4095", "8191", "16383", "32767",
        ];
        let c = cfg(&[3, 100, 4096, MAX_BUCKETS], &hashes);
        let targets = plan(&c).unwrap();
        assert_eq!(targets.len(), 4 * 16 + 4);
        let backends = all_backends(&targets);
        let total: usize = targets.iter().map(|t| t.buckets).sum();
        assert_eq!(backends.len(), total, "a backend address is used twice");
        let vips: BTreeSet<Ipv4Addr> = targets.iter().map(Target::vip).collect();
        assert_eq!(vips.len(), targets.len());
        let slots: BTreeSet<usize> = targets.iter().map(|t| t.slot).collect();
        assert_eq!(slots.len(), targets.len());
        // Backends inside 10.128.0.0/10 (neither its first nor its last
        // address), VIPs inside 10.96.0.0/16, and no address is both.
        let net = u32::from(Ipv4Addr::new(10, 128, 0, 0));
        for ip in &backends {
            let x = u32::from(*ip);
            assert!(x > net && x < net + (1 << 22) - 1, "{ip}");
        }
        for v in &vips {
            assert_eq!(v.octets()[..2], [10, 96]);
            assert!(!backends.contains(v));
        }
        for host in [CLIENT_IP, SERVER_IP, GATEWAY, iptables::CLIENT_IP] {
            assert!(!backends.contains(&host) && !vips.contains(&host));
        }
        // The largest plan that fits, and one that does not.
        assert!(plan(&cfg(&[MAX_BUCKETS + 1], &["port"])).is_err());
        assert!(plan(&cfg(&[0], &["port"])).is_err());
        let sizes: Vec<usize> = (1..=255).collect();
        assert!(plan(&cfg(&sizes, &["port"])).is_ok()); // 510 VIPs
        let sizes: Vec<usize> = (1..=256).collect();
        assert!(plan(&cfg(&sizes, &["port"])).is_err()); // 512
        let last = backend(MAX_VIPS - 1, MAX_BUCKETS - 1);
        assert_eq!(last, Ipv4Addr::new(10, 191, 224, 0));
    }

    #[test]
    fn groups_have_one_bucket_per_backend_and_the_agents_ids() {
        let t = ovs_target(2, 1000, HashVariant::masked());
        let g = group(&t);
        assert_eq!(g.id, 3);
        assert_eq!(g.buckets.len(), 1000);
        let ids: BTreeSet<u32> = g.buckets.iter().map(|b| b.id).collect();
        assert_eq!(ids.len(), 1000);
        assert!(g.spec().contains(&format!(
            "set_field:{:#x}->reg3",
            u32::from(backend(2, 999))
        )));
        // The bucket order maps each bucket to its backend.
        for (b, ip) in buckets(2, 1000) {
            assert!(b
                .actions
                .to_string()
                .contains(&format!("set_field:{:#x}->reg3", u32::from(ip))));
        }
        assert_ne!(backend(0, MAX_BUCKETS - 1), backend(1, 0));
    }

    #[test]
    fn a_big_group_is_split_for_ovs_ofctl() {
        let t = ovs_target(0, 4096, HashVariant::port());
        let text = render_bundle(&[BundleOp::PutGroup(Arc::new(group(&t)))]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 4, "{}", lines.len());
        assert!(lines[0].starts_with("group add_or_mod group_id=1,type=select"));
        assert!(lines[1..]
            .iter()
            .all(|l| l.starts_with("group insert_bucket group_id=1,command_bucket_id=last,")));
        assert_eq!(text.matches("bucket=bucket_id:").count(), 4096);
        assert!(lines.iter().all(|l| l.len() < 120_000));
    }

    #[test]
    fn every_backend_has_a_dnat_flow() {
        let targets = plan(&cfg(&[10, 3], &["port", "masked"])).unwrap();
        let f = flows(&targets, 1, 2);
        // Two variants of each size; the iptables Services are not in OVS.
        assert_eq!(f.matches("nat(dst=").count(), 26);
        assert!(f.contains("nw_dst=10.96.0.11,tp_dst=80,actions=group:2"));
        assert!(!f.contains(&format!("nw_dst={},", vip(4))));
        let ipt = iptables_services(&targets);
        assert_eq!(ipt.len(), 2);
        assert_eq!((ipt[0].0, ipt[0].1.len()), (vip(4), 10));
        assert_eq!(ipt[1].1[0], backend(5, 0));
    }

    #[test]
    fn datapath_flows_are_counted_without_headers() {
        let dump = "flow-dump from pmd on cpu core: 0\n\
            flow-dump from the main thread:\n\
            recirc_id(0),in_port(2),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(frag=no), packets:5, bytes:370, used:0.1s, actions:ct(zone=1,nat),recirc(0x1)\n\
            recirc_id(0x1),ct_state(+new+trk),in_port(2),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(src=10.0.0.2,dst=10.96.0.10,proto=6,frag=no),tcp(src=32768/0x3f,dst=80), packets:1, bytes:74, used:0.1s, actions:ct(commit,zone=1,nat(dst=10.128.0.2:8080)),recirc(0x2)\n\
            recirc_id(0x1),ct_state(+new+trk),in_port(2),packet_type(ns=0,id=0),eth_type(0x0800),ipv4(src=10.0.0.2,dst=10.96.0.100,proto=6,frag=no),tcp(src=32770,dst=80), packets:1, bytes:74, used:0.1s, actions:drop\n\
            \n";
        assert_eq!(dp_flow_lines(dump).count(), 3);
        let l: Vec<&str> = dp_flow_lines(dump).collect();
        assert!(matches_dst(l[1], Ipv4Addr::new(10, 96, 0, 10)));
        assert!(!matches_dst(l[2], Ipv4Addr::new(10, 96, 0, 10)));
        assert!(matches_dst(l[2], Ipv4Addr::new(10, 96, 0, 100)));
        assert!(!matches_dst(l[0], Ipv4Addr::new(10, 96, 0, 10)));
        assert!(matches_dst(
            "ipv4(dst=10.96.0.10/255.255.255.0)",
            Ipv4Addr::new(10, 96, 0, 10)
        ));
    }

    #[test]
    fn group_stats_and_dnat_flow_counts_parse() {
        let stats = "OFPST_GROUP reply (OF1.5) (xid=0x2):\n \
            group_id=2,duration=3.974s,ref_count=1,packet_count=7,byte_count=518,bucket0:packet_count=4,byte_count=296,bucket1:packet_count=0,byte_count=0,bucket2:packet_count=3,byte_count=222\n";
        let m = parse_group_stats(stats);
        assert_eq!(m[&2], [4, 0, 3]);
        let flows = "OFPST_FLOW reply (OF1.5) (xid=0x2):\n \
            cookie=0x0, duration=5.1s, table=45, n_packets=12, n_bytes=888, priority=100,tcp,reg3=0xa800001,reg4=0x1f90 actions=ct(commit,zone=1,nat(dst=10.128.0.1:8080),table=50)\n \
            cookie=0x0, duration=5.1s, table=45, n_packets=0, n_bytes=0, priority=100,tcp,reg3=0xa800002,reg4=0x1f90 actions=ct(commit,zone=1,nat(dst=10.128.0.2:8080),table=50)\n";
        let d = parse_dnat_flow_counts(flows);
        assert_eq!(d[&Ipv4Addr::new(10, 128, 0, 1)], 12);
        assert_eq!(d[&Ipv4Addr::new(10, 128, 0, 2)], 0);
        // 4,092 buckets fit one message, 4,093 do not.
        assert_eq!(GROUP_STATS_MAX_BUCKETS, 4092);
        const { assert!(16 + 40 + 16 * GROUP_STATS_MAX_BUCKETS <= 65_535) };
        const { assert!(16 + 40 + 16 * (GROUP_STATS_MAX_BUCKETS + 1) > 65_535) };
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 7 1 40 0\ncpu0 50 2 25 500 10 1 3 0 20 0\nintr 1\n";
        // user + nice + system + irq + softirq + steal; guest is inside user.
        assert_eq!(parse_busy_ticks(stat), Some(100 + 5 + 50 + 3 + 7 + 1));
        assert_eq!(parse_busy_ticks("cpu  1 2 3 4 5\n"), Some(6));
        assert_eq!(parse_busy_ticks("intr 1\n"), None);
    }

    #[test]
    fn rows_sum_batches_and_take_the_spread() {
        let t = ovs_target(0, 3, HashVariant::masked());
        let b = |ok, up, cpu_ms| Batch {
            ok,
            failed: 0,
            wall: Duration::from_millis(100),
            busy: Duration::from_millis(2 * cpu_ms),
            vswitchd: Some(Duration::from_millis(cpu_ms)),
            upcalls: Some(up),
            flows: Some((ok as usize + 5, ok as usize / 2)),
        };
        let r = row(
            &t,
            2,
            &[b(100, 100, 40), b(100, 10, 20)],
            Ok(vec![70, 70, 60]),
            "",
        );
        assert_eq!((r.datapath.as_str(), r.hash.as_str()), ("ovs", "masked"));
        assert_eq!(r.selection, "fields(ip_src,ip_dst,tcp_src=63,tcp_dst)");
        assert_eq!(r.connections, 200);
        assert!((r.conns_per_s - 1000.0).abs() < 1e-9);
        assert!((r.upcalls_per_conn - 0.55).abs() < 1e-12);
        assert_eq!((r.upcalls_per_conn_min, r.upcalls_per_conn_max), (0.1, 1.0));
        assert!((r.vswitchd_cpu_us_per_conn - 300.0).abs() < 1e-9);
        assert!((r.machine_cpu_us_per_conn - 600.0).abs() < 1e-9);
        assert_eq!(r.datapath_flows_max, Some(105));
        assert_eq!(r.datapath_flows_vip_max, Some(50));
        assert!((r.chi2 - 1.0).abs() < 1e-12);
        assert!((r.chi2_p - (-0.5f64).exp()).abs() < 1e-12);
        assert!((r.share_max - 1.05).abs() < 1e-12);
        assert!((r.share_min - 0.9).abs() < 1e-12);
        assert!(r.error.is_none());

        let ipt = Target {
            buckets: 3,
            kind: Kind::Iptables,
            slot: 1,
        };
        let x = Batch {
            ok: 99,
            failed: 1,
            wall: Duration::from_millis(100),
            busy: Duration::from_millis(99),
            ..Default::default()
        };
        let r = row(
            &ipt,
            1,
            &[x],
            Ok(vec![33, 33, 33]),
            "iptables-restore v1.8.9 (nf_tables)",
        );
        assert_eq!((r.datapath.as_str(), r.hash.as_str()), ("iptables", ""));
        assert!(r.selection.contains("nf_tables"));
        assert!((r.machine_cpu_us_per_conn - 1000.0).abs() < 1e-9);
        assert!(r.vswitchd_cpu_us_per_conn.is_nan() && r.upcalls_per_conn.is_nan());
        assert_eq!(r.datapath_flows_max, None);
        assert_eq!(r.chi2, 0.0);
        assert_eq!(r.error.as_deref(), Some("1 connections failed"));
    }
}
