//! Scenario 6, the cost of a new connection against the size of a Service's
//! select group. OVS's `hash` selection method scores every bucket of the
//! group (`(hash(bucket id, flow hash) & 0xffff) * weight`, the highest wins)
//! each time a new connection misses the datapath's flow cache, so the slow
//! path grows with the group.
//!
//! # Method
//!
//! One private OVS (userspace datapath), one bridge, two emulated hosts: a
//! client (10.0.0.2) and a server (10.0.0.3) that answers on every address of
//! 10.1.0.0/16 (`ip route add local 10.1.0.0/16 dev lo`) with `lab-echo` on
//! TCP 8080. One VIP per size (10.96.0.10, .11, …), each sending new
//! connections to a select group of that many buckets, rendered by the agent
//! ([`dpu_agent::flows::Group`], bucket ids from
//! [`dpu_agent::compile::assign_bucket_ids`], the buckets'
//! `set_field:<ip>->reg3,set_field:8080->reg4,resubmit(,45)` as the compiler
//! writes them) and installed the way the `ovs-ofctl` backend does
//! ([`dpu_agent::openflow::render_bundle`]: a group over 60 KB as `add_or_mod`
//! plus `insert_bucket`s in one bundle). Every bucket is its own backend
//! address, DNATed by a per-backend flow as the agent's EndpointDnat table
//! does. The rest of the pipeline is the minimum for real TCP: conntrack with
//! NAT in one zone, forwarding by port.
//!
//! The sizes run side by side: each round runs one batch of `conns` new TCP
//! connections (`lab-client`: connect, request, answer, close; one at a time)
//! to each VIP in turn, and the batches of a size are summed over the rounds.
//! Per batch: wall time, `ovs-vswitchd`'s CPU time (utime + stime of all its
//! threads, `/proc/<pid>/stat`) and its datapath upcalls
//! (`dpif-netdev/pmd-stats-show`, "miss with success upcall", cleared before
//! the batch). Reported per size: new connections per second, vswitchd CPU
//! per connection and per upcall, upcalls per connection, and each against the
//! smallest size (the ratio is what to read: DESIGN.md §9).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpu_agent::compile::assign_bucket_ids;
use dpu_agent::flows::{Actions, Bucket, Group};
use dpu_agent::openflow::{render_bundle, BundleOp};
use dpu_agent::pipeline::cookie::{Category, Cookie};
use dpu_agent::pipeline::{reg, ENDPOINT_DNAT};
use dpu_lab::netns::{self, Netns};
use dpu_lab::ovs::OvsInstance;
use dpu_lab::process::Child;
use dpu_lab::traffic;

use crate::results::NewConnRow;
use crate::{guard, procstat};

const BRIDGE: &str = "br-nc";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_MAC: &str = "0a:58:00:00:00:02";
const SERVER_MAC: &str = "0a:58:00:00:00:03";
const VPC: &str = "bench";
const VIP_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const HASH_FIELDS: [&str; 4] = ["ip_src", "ip_dst", "tcp_src", "tcp_dst"];
/// The conntrack zone of the pipeline.
const ZONE: u16 = 1;
/// Tables of the minimal pipeline (45 is the agent's EndpointDnat, which the
/// buckets resubmit to).
const T_SERVICE: u8 = 40;
const T_TO_SERVER: u8 = 50;
const T_TO_CLIENT: u8 = 60;
/// A request that takes longer failed.
const REQUEST_TIMEOUT_MS: u64 = 1000;

/// The measurement's inputs.
#[derive(Debug, Clone)]
pub struct NewConnConfig {
    /// Buckets of each group (one backend each, weight 1).
    pub sizes: Vec<usize>,
    /// Rounds; each runs one batch per size.
    pub rounds: usize,
    /// New connections per batch.
    pub conns: u32,
}

/// The VIP of size `k`.
fn vip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + k as u32)
}

/// Backend `i` of size `k`: 10.1.0.0/16, 8,192 addresses per size.
fn backend(k: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 1)) + (k * 8192 + i) as u32)
}

/// Group `k + 1` of `n` buckets, as the agent writes one.
fn group(k: usize, n: usize) -> Group {
    let ips: Vec<Ipv4Addr> = (0..n).map(|i| backend(k, i)).collect();
    let keys: Vec<(&str, IpAddr, u32)> = ips.iter().map(|ip| (VPC, IpAddr::V4(*ip), 1)).collect();
    let mut buckets: Vec<Bucket> = ips
        .iter()
        .zip(assign_bucket_ids(TARGET_PORT, &keys))
        .flat_map(|(ip, ids)| {
            let actions = Actions::new()
                .set_field(format!("{:#x}", u32::from(*ip)), reg::EP_IP)
                .set_reg(reg::EP_PORT, u32::from(TARGET_PORT))
                .resubmit(ENDPOINT_DNAT)
                .render();
            ids.into_iter()
                .map(move |id| Bucket::new(id, actions.clone()))
        })
        .collect();
    buckets.sort();
    Group {
        id: k as u32 + 1,
        hash_fields: HASH_FIELDS.to_vec(),
        buckets,
        owner: Cookie::new(Category::Service, "bench/newconn"),
        learns: false,
    }
}

/// The flows of the minimal pipeline for client port `c` and server port `s`.
fn flows(sizes: &[usize], c: u32, s: u32) -> String {
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
    for (k, n) in sizes.iter().enumerate() {
        f.push(format!(
            "table={T_SERVICE},priority=100,ct_state=+new+trk,tcp,nw_dst={},tp_dst={VIP_PORT},actions=group:{}",
            vip(k),
            k + 1
        ));
        for i in 0..*n {
            let ip = backend(k, i);
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

/// The emulated hosts, the server's echo and the switch, stopped on drop.
struct Setup {
    ovs: OvsInstance,
    client: Netns,
    server: Netns,
    echo: Child,
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

fn setup(sizes: &[usize], log_dir: &std::path::Path) -> Result<Setup> {
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
    // (the switch forwards by port); the server answers every 10.1/16 address.
    client.ip(&[
        "route",
        "add",
        "10.96.0.0/16",
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
    server.ip(&["route", "add", "local", "10.1.0.0/16", "dev", "lo"])?;
    server.ip(&[
        "neigh",
        "replace",
        &CLIENT_IP.to_string(),
        "lladdr",
        CLIENT_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    let echo = traffic::start_echo(
        &server,
        "server",
        &[TARGET_PORT],
        &[],
        &log_dir.join("echo.log"),
    )?;
    guard::track_pid(echo.pid());

    let groups: Vec<BundleOp> = sizes
        .iter()
        .enumerate()
        .map(|(k, n)| BundleOp::PutGroup(group(k, *n)))
        .collect();
    let bundle = log_dir.join("groups.bundle");
    std::fs::write(&bundle, render_bundle(&groups))?;
    ovs.ofctl(&["bundle", &ovs.mgmt(BRIDGE), &bundle.to_string_lossy()])
        .context("installing the select groups")?;
    let flow_file = log_dir.join("flows.txt");
    std::fs::write(&flow_file, flows(sizes, c, s))?;
    ovs.ofctl(&["add-flows", &ovs.mgmt(BRIDGE), &flow_file.to_string_lossy()])
        .context("installing the flows")?;
    let vswitchd = procstat::pid_from_file(&ovs.dir().join("ovs-vswitchd.pid"))?;
    Ok(Setup {
        ovs,
        client,
        server,
        echo,
        vswitchd,
    })
}

/// One batch's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Batch {
    ok: u64,
    failed: u64,
    wall: Duration,
    cpu: Duration,
    upcalls: u64,
}

fn batch(st: &Setup, k: usize, conns: u32) -> Result<Batch> {
    st.ovs.vswitchd_appctl(&["dpif-netdev/pmd-stats-clear"])?;
    let up0 = upcalls(&st.ovs)?;
    let cpu0 = procstat::cpu_time(st.vswitchd)?;
    let t0 = Instant::now();
    let target = format!("{}:{VIP_PORT}", vip(k));
    let timeout = format!("--timeout-ms={REQUEST_TIMEOUT_MS}");
    let r = traffic::run_client(&st.client, &target, "tcp", conns, &[&timeout])?;
    let wall = t0.elapsed();
    let cpu = procstat::cpu_time(st.vswitchd)?.saturating_sub(cpu0);
    let up = upcalls(&st.ovs)?.saturating_sub(up0);
    Ok(Batch {
        ok: r.ok,
        failed: r.failed,
        wall,
        cpu,
        upcalls: up,
    })
}

/// Runs the scenario: one row per size, in the order of `cfg.sizes`.
pub fn run(cfg: &NewConnConfig) -> Result<Vec<NewConnRow>> {
    if cfg.sizes.is_empty() || cfg.rounds == 0 || cfg.conns == 0 {
        bail!("nothing to measure: {cfg:?}");
    }
    let dir = tempfile::Builder::new().prefix("dpu-bench-nc-").tempdir()?;
    let st = setup(&cfg.sizes, dir.path())?;
    // Warm up (ARP-free, but the first connections fault in code and caches).
    for k in 0..cfg.sizes.len() {
        let w = batch(&st, k, 20)?;
        if w.ok == 0 {
            bail!(
                "no connection to VIP {} was answered: {:?}\n{}",
                vip(k),
                w,
                st.ovs.dump_flows(BRIDGE)?.join("\n")
            );
        }
    }
    let mut sums: BTreeMap<usize, Vec<Batch>> = BTreeMap::new();
    for round in 0..cfg.rounds {
        // Alternate the order so no size always runs first.
        let mut order: Vec<usize> = (0..cfg.sizes.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for k in order {
            sums.entry(k).or_default().push(batch(&st, k, cfg.conns)?);
        }
    }
    let rows: Vec<NewConnRow> = cfg
        .sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let b = &sums[&k];
            let ok: u64 = b.iter().map(|x| x.ok).sum();
            let failed: u64 = b.iter().map(|x| x.failed).sum();
            let wall: f64 = b.iter().map(|x| x.wall.as_secs_f64()).sum();
            let cpu: f64 = b.iter().map(|x| x.cpu.as_secs_f64()).sum();
            let upcalls: u64 = b.iter().map(|x| x.upcalls).sum();
            // Per batch, for the spread across rounds.
            let mut per_conn: Vec<f64> = b
                .iter()
                .filter(|x| x.ok > 0)
                .map(|x| x.cpu.as_secs_f64() * 1e6 / x.ok as f64)
                .collect();
            per_conn.sort_by(f64::total_cmp);
            NewConnRow {
                buckets: n,
                connections: ok,
                failed,
                rounds: cfg.rounds,
                conns_per_s: ok as f64 / wall,
                vswitchd_cpu_us_per_conn: cpu * 1e6 / ok.max(1) as f64,
                vswitchd_cpu_us_per_conn_min: per_conn.first().copied().unwrap_or(f64::NAN),
                vswitchd_cpu_us_per_conn_max: per_conn.last().copied().unwrap_or(f64::NAN),
                upcalls_per_conn: upcalls as f64 / ok.max(1) as f64,
                vswitchd_cpu_us_per_upcall: cpu * 1e6 / upcalls.max(1) as f64,
                error: (failed > 0).then(|| format!("{failed} connections failed")),
            }
        })
        .collect();
    drop(st);
    if rows.iter().all(|r| r.connections == 0) {
        return Err(anyhow!("no connection succeeded"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_have_one_bucket_per_backend_and_the_agents_ids() {
        let g = group(2, 1000);
        assert_eq!(g.id, 3);
        assert_eq!(g.buckets.len(), 1000);
        let ids: std::collections::BTreeSet<u32> = g.buckets.iter().map(|b| b.id).collect();
        assert_eq!(ids.len(), 1000);
        assert!(g.spec().contains(&format!(
            "set_field:{:#x}->reg3",
            u32::from(backend(2, 999))
        )));
        assert_ne!(backend(0, 8191), backend(1, 0));
    }

    #[test]
    fn a_big_group_is_split_for_ovs_ofctl() {
        let text = render_bundle(&[BundleOp::PutGroup(group(0, 4096))]);
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
        let f = flows(&[10, 3], 1, 2);
        assert_eq!(f.matches("nat(dst=").count(), 13);
        assert!(f.contains("nw_dst=10.96.0.11,tp_dst=80,actions=group:2"));
    }
}
