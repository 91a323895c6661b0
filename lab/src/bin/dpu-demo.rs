//! The demo: one emulated DPU (a private OVS whose switch runs in its own network
//! namespace), the real controller and agent, the manifests in `examples/`, and real
//! TCP and UDP traffic to the Service's cluster IP. It prints which backends
//! answered and what the operator tools show, then tears everything down.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use dpu_lab::fixture::{agent_endpoints, Lab, NODE};
use dpu_lab::observe::{agent_ok, scrape};
use serde_yaml_ng::Value;

#[derive(Parser, Debug)]
#[command(about = "Run the emulated-DPU demo")]
struct Args {
    /// Directory of manifests to apply.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// Requests per protocol.
    #[arg(long, default_value_t = 200)]
    count: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn docs(args: &Args) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = fs::read_dir(&args.examples)
        .with_context(|| format!("reading {}", args.examples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = fs::read_to_string(&f)?;
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = <Value as serde::Deserialize>::deserialize(d)?;
            out.push((
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                v,
            ));
        }
    }
    Ok(out)
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn run(args: &Args) -> Result<()> {
    let docs = docs(args)?;
    println!("== starting an emulated DPU ({NODE}): private OVS, controller, agent");
    let mut lab = Lab::new("demo")?;
    for f in docs
        .iter()
        .map(|(f, _)| f)
        .collect::<std::collections::BTreeSet<_>>()
    {
        fs::copy(args.examples.join(f), lab.intent_dir().join(f))?;
    }
    // Subnets give each workload its prefix length and gateway.
    let subnets: Vec<(ipnet::Ipv4Net, String)> = docs
        .iter()
        .filter(|(_, d)| s(d, &["kind"]) == Some("Subnet"))
        .filter_map(|(_, d)| {
            Some((
                s(d, &["spec", "cidr"])?.parse().ok()?,
                s(d, &["spec", "gateway"])?.to_string(),
            ))
        })
        .collect();
    let mut services = Vec::new();
    for (_, d) in &docs {
        match s(d, &["kind"]) {
            Some("Workload") if s(d, &["spec", "node"]) == Some(NODE) => {
                let name = s(d, &["metadata", "name"])
                    .ok_or_else(|| anyhow!("workload without a name"))?;
                let ip: std::net::Ipv4Addr = s(d, &["spec", "ip"])
                    .ok_or_else(|| anyhow!("{name}: no ip"))?
                    .parse()?;
                let mac = s(d, &["spec", "mac"]).ok_or_else(|| anyhow!("{name}: no mac"))?;
                let (net, gw) = subnets
                    .iter()
                    .find(|(n, _)| n.contains(&ip))
                    .ok_or_else(|| anyhow!("{name}: no subnet"))?;
                lab.add_host(name, &format!("{ip}/{}", net.prefix_len()), mac, gw)?;
                if name != "client" {
                    lab.echo(name, &[8080], &[5353])?;
                }
                println!("   workload {name:<8} {ip:<10} on port {name} (a namespace behind a veth representor)");
            }
            Some("YusurService") => services.push(d.clone()),
            _ => {}
        }
    }
    lab.enable_shim(2)?;
    lab.start_controller()?;
    // Provisioned as in the field: the DPU gets only the CA, the controller's
    // address and a one-time token; it makes its key and enrolls at first boot.
    let token = lab.token_create(NODE, "1h")?;
    lab.enroll_with(&token)?;
    println!("== provisioning: `dpu-controller token create --node {NODE} --ttl 1h`; the agent enrolls with it");
    lab.start_agent()?;
    let v = lab.wait_converged()?;
    let state = lab.ctl_state().display().to_string();
    for line in lab
        .controller_cmd(&["node", "list", "--state-dir", &state])?
        .lines()
    {
        println!("   {line}");
    }
    println!("== the agent applied intent version {v} (ACKed after the OVS bundle committed)");

    for svc in &services {
        let name = s(svc, &["metadata", "name"]).unwrap_or("?");
        let vip = svc["spec"]["clusterIPs"][0].as_str().unwrap_or("?");
        let ports = svc["spec"]["ports"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        let mut table: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut headers = Vec::new();
        for p in &ports {
            let proto = s(p, &["protocol"]).unwrap_or("TCP").to_lowercase();
            let port = p["port"].as_u64().unwrap_or(0);
            let target = format!("{vip}:{port}");
            let r = lab.client("client", &target, &proto, args.count)?;
            let col = format!("{proto}/{port}");
            for (b, n) in &r.by_backend {
                table.entry(b.clone()).or_default().insert(col.clone(), *n);
            }
            if r.failed > 0 {
                table
                    .entry("(failed)".into())
                    .or_default()
                    .insert(col.clone(), r.failed);
            }
            headers.push(col);
        }
        println!(
            "\n== Service {name}: {} requests per port from 'client' to {vip}",
            args.count
        );
        print!("   {:<10}", "backend");
        for h in &headers {
            print!(" {h:>9}");
        }
        println!();
        for (b, cols) in &table {
            print!("   {b:<10}");
            for h in &headers {
                let n = cols.get(h).copied().unwrap_or(0);
                print!(" {:>5} {:>2}%", n, n * 100 / u64::from(args.count.max(1)));
            }
            println!();
        }
    }
    // Pods through the host shim: the CNI plugin, run as a runtime runs it, asks the
    // agent for an attachment and moves a VF into each pod.
    println!("\n== attaching two pods through the host shim (CNI ADD; a VF moved into each pod)");
    let before = lab.intent_version()?;
    let mut pod_ips = Vec::new();
    for (pod, app) in [("web-pod", "web"), ("client-pod", "client")] {
        let netns = lab.pod_netns(pod)?;
        let cfg = lab.cni_config("vpc-a-pods", &[("app", app)])?;
        let (code, out) = lab.cni("ADD", pod, &netns, "eth0", &cfg)?;
        if code != 0 {
            return Err(anyhow!("CNI ADD {pod} failed: {out}"));
        }
        let ip = out["ips"][0]["address"].as_str().unwrap_or("?").to_string();
        println!(
            "   {pod:<10} app={app:<6} {ip:<15} mac {}",
            out["interfaces"][0]["mac"].as_str().unwrap_or("?")
        );
        pod_ips.push((pod, netns));
    }
    let log = lab.path("logs/echo-web-pod.log");
    let echo =
        dpu_lab::traffic::start_echo(lab.pod("web-pod")?, "web-pod", &[8080], &[5353], &log)?;
    let v = lab.wait_converged_after(before)?;
    println!("   the controller merged the reported pods; the agent applied version {v}");
    for svc in &services {
        let name = s(svc, &["metadata", "name"]).unwrap_or("?");
        let vip = svc["spec"]["clusterIPs"][0].as_str().unwrap_or("?");
        let r = dpu_lab::traffic::run_client(
            lab.pod("client-pod")?,
            &format!("{vip}:80"),
            "tcp",
            args.count,
            &[],
        )?;
        println!("\n== Service {name}: {} TCP requests from client-pod to {vip}:80 (web-pod joined by its label)", args.count);
        for (b, n) in &r.by_backend {
            println!(
                "   {b:<10} {n:>5} {:>3}%",
                n * 100 / u64::from(args.count.max(1))
            );
        }
        if r.failed > 0 {
            println!("   (failed)   {:>5}", r.failed);
        }
    }
    operate(&lab, &docs, &services)?;
    for (pod, netns) in &pod_ips {
        let cfg = lab.cni_config("vpc-a-pods", &[])?;
        let (code, out) = lab.cni("DEL", pod, netns, "eth0", &cfg)?;
        if code != 0 {
            return Err(anyhow!("CNI DEL {pod} failed: {out}"));
        }
    }
    println!("   CNI DEL of both pods: VFs back on the host, addresses released");

    println!("\n== installed in OVS (ovs-ofctl -O OpenFlow15 dump-groups):");
    for g in lab.groups()? {
        let short: String = g.chars().take(140).collect();
        println!("   {short}…");
    }
    println!(
        "   {} flows in total (ovs-ofctl dump-flows)",
        lab.flows()?.len()
    );
    println!("\n== tearing down (agent, controller, namespaces, OVS)");
    drop(echo);
    drop(lab);
    println!("done");
    Ok(())
}

/// What an operator sees after the traffic: the agent's commands on its
/// socket, some lines of its metrics, and the controller's fleet table.
fn operate(lab: &Lab, docs: &[(String, Value)], services: &[Value]) -> Result<()> {
    let (metrics, ops) = agent_endpoints(&lab.path("agent.toml"))?;
    let Some(svc) = services.first() else {
        return Ok(());
    };
    let name = s(svc, &["metadata", "name"]).unwrap_or("?");
    let vip = svc["spec"]["clusterIPs"][0].as_str().unwrap_or("?");
    let client_ip = docs
        .iter()
        .find(|(_, d)| {
            s(d, &["kind"]) == Some("Workload") && s(d, &["metadata", "name"]) == Some("client")
        })
        .and_then(|(_, d)| s(d, &["spec", "ip"]))
        .ok_or_else(|| anyhow!("no Workload named client in the examples"))?;
    let print = |args: &[&str]| -> Result<()> {
        println!("\n== operating it: dpu-agent {}", args.join(" "));
        for l in agent_ok(&ops, args)?.lines() {
            println!("   {l}");
        }
        Ok(())
    };
    print(&["show", "service", name])?;
    print(&[
        "trace",
        "--src",
        client_ip,
        "--dst",
        vip,
        "--proto",
        "tcp",
        "--dport",
        "80",
        "--in-port",
        "client",
    ])?;
    print(&["explain", name])?;
    print(&["explain", "--offload", name])?;
    println!("\n== operating it: GET http://{metrics}/metrics (some of its lines)");
    let shown = [
        "dpu_intent_",
        "dpu_service_",
        "dpu_backend_new_connections_total",
        "dpu_bundle_duration_seconds_count",
        "dpu_datapath_flows",
        "dpu_datapath_megaflows",
        "dpu_node_cpu_percent",
        "dpu_agent_resident_memory_bytes",
    ];
    for l in scrape(metrics)?
        .lines()
        .filter(|l| shown.iter().any(|p| l.starts_with(p)))
    {
        println!("   {l}");
    }
    println!("\n== operating it: dpu-controller status");
    let state = lab.ctl_state().display().to_string();
    for l in lab
        .controller_cmd(&["status", "--state-dir", &state])?
        .lines()
    {
        println!("   {l}");
    }
    Ok(())
}
