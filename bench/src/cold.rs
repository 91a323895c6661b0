//! Scenario 1, cold programming: N services loaded from nothing by the agent (end
//! to end, per OpenFlow backend), by `ovs-ofctl bundle` with exactly the flows and
//! groups the agent's compiler makes (the ceiling for OVS), and by the kube-proxy
//! rulesets' restore tools (`kube::cold_load`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dpu_agent::compile::{compile, NodeFacts};
use dpu_agent::reconcile::backend::{render_bundle, BundleOp};
use dpu_agent::state::alloc::Allocations;
use dpu_lab::ovs::OvsInstance;

use crate::intent::{self, Generated};
use crate::kube::{self, Flavor};
use crate::procstat::{self, CpuMark};
use crate::results::ColdRow;
use crate::rig::{switch_counts, Rig};
use crate::{guard, secs};

/// How long one snapshot may take before the run gives up on it.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(900);

/// The agent's system name in the tables for an OpenFlow backend.
pub fn agent_system(backend: &str) -> String {
    format!("agent-{backend}")
}

/// Starts a rig with the agent on `backend`, loads `g` as one snapshot and
/// measures it. Returns the row and the rig (agent running, intent applied) for
/// the scenarios that continue from there.
pub fn agent(backend: &str, g: &Generated) -> Result<(ColdRow, Rig)> {
    let mut rig = Rig::new("bench", backend)?;
    rig.plug_ports(intent::LOCAL_PODS)?;
    rig.start_agent()?;
    // Let it finish its start (bridge, reconciler, first empty apply).
    std::thread::sleep(Duration::from_millis(500));
    let agent = rig.agent_pid()?;
    let vswitchd = rig.vswitchd_pid()?;
    procstat::reset_peak(agent)?;
    let snapshot = rig.snapshot(&g.objects());
    let mark = CpuMark::now(&[agent, vswitchd])?;
    let took = rig.send(snapshot, SNAPSHOT_TIMEOUT)?;
    let (cpu, _) = mark.since(&[agent, vswitchd])?;
    let peak = procstat::status_kib(agent, "VmHWM")?;
    let vsw_rss = procstat::status_kib(vswitchd, "VmRSS")?;
    let (flows, groups) = rig.counts()?;
    save_dump(
        &format!("agent-{backend}-{}", g.services.len()),
        &rig.lab.ovs,
        &rig.lab.bridge,
    );
    let row = ColdRow {
        system: agent_system(backend),
        services: g.services.len(),
        error: None,
        wall_s: secs(took),
        cpu_s: secs(cpu[0] + cpu[1]),
        loader_cpu_s: secs(cpu[0]),
        vswitchd_cpu_s: Some(secs(cpu[1])),
        peak_rss_kib: peak,
        vswitchd_rss_kib: Some(vsw_rss),
        flows: Some(flows),
        groups: Some(groups),
        rules: None,
        note: None,
    };
    Ok((row, rig))
}

/// The `ovs-ofctl bundle` file for `g` as the agent's compiler makes it for a
/// switch whose ports are `ports` (iface-id → ofport): every group, then every
/// flow, in one bundle, as the agent's first apply on an empty switch.
pub fn bundle_for(g: &Generated, ports: BTreeMap<String, u32>) -> Result<(String, usize, usize)> {
    let mut intent = dpu_model::Intent::default();
    for o in g.objects() {
        intent.upsert(o);
    }
    let alloc = Allocations::default()
        .update(&intent)
        .map_err(|e| anyhow::anyhow!("allocating for the intent: {e:?}"))?;
    let facts = NodeFacts {
        node: intent::NODE.into(),
        ports,
        host_port: None,
        uplink: None,
        unhealthy: Default::default(),
    };
    let c = compile(&intent, &alloc, &facts);
    let mut ops: Vec<BundleOp> = c
        .desired
        .groups
        .values()
        .cloned()
        .map(BundleOp::PutGroup)
        .collect();
    ops.extend(c.desired.flows.iter().map(|(k, b)| BundleOp::AddFlow {
        key: k.clone(),
        body: b.clone(),
        cookie: b.cookie.value(1),
    }));
    Ok((
        render_bundle(&ops),
        c.desired.flows.len(),
        c.desired.groups.len(),
    ))
}

/// `ovs-ofctl -O OpenFlow15 bundle` of the same flows and groups into a fresh OVS.
pub fn raw_ofctl(g: &Generated, ports: BTreeMap<String, u32>) -> Result<ColdRow> {
    let (text, _, _) = bundle_for(g, ports)?;
    let ovs = OvsInstance::start()?;
    guard::track_ovs(&ovs);
    let r = raw_ofctl_on(&ovs, &text, g.services.len());
    guard::forget_ovs(&ovs);
    r
}

fn raw_ofctl_on(ovs: &OvsInstance, bundle: &str, services: usize) -> Result<ColdRow> {
    let bridge = "brraw";
    ovs.add_bridge(bridge)?;
    let file = ovs.dir().join("bundle.txt");
    std::fs::write(&file, bundle)?;
    let vswitchd = procstat::pid_from_file(&ovs.dir().join("ovs-vswitchd.pid"))?;
    // The management socket appears a moment after the bridge.
    dpu_lab::process::wait_until("the bridge's mgmt socket", Duration::from_secs(10), || {
        ovs.dir().join(format!("{bridge}.mgmt")).exists()
    })?;
    let (children_before, _) = procstat::children_usage()?;
    let mark = CpuMark::now(&[vswitchd])?;
    let start = Instant::now();
    let mut child = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow15", "bundle", &ovs.mgmt(bridge)])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ovs-ofctl")?;
    guard::track_pid(child.id());
    // Its peak RSS, polled while it runs (it holds what it parsed until the end).
    let mut peak = 0;
    let status = loop {
        if let Ok(k) = procstat::status_kib(child.id(), "VmHWM") {
            peak = peak.max(k);
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > SNAPSHOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ovs-ofctl bundle took over {SNAPSHOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = start.elapsed();
    guard::forget_pid(child.id());
    let (vsw_cpu, _) = mark.since(&[vswitchd])?;
    let (children_after, _) = procstat::children_usage()?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("ovs-ofctl bundle failed ({status}): {}", err.trim());
    }
    let loader = children_after.saturating_sub(children_before);
    let (flows, groups) = switch_counts(ovs, bridge)?;
    save_dump(&format!("raw-{services}"), ovs, bridge);
    Ok(ColdRow {
        system: "raw-ovs-ofctl".into(),
        services,
        error: None,
        wall_s: secs(wall),
        cpu_s: secs(loader + vsw_cpu[0]),
        loader_cpu_s: secs(loader),
        vswitchd_cpu_s: Some(secs(vsw_cpu[0])),
        peak_rss_kib: peak,
        vswitchd_rss_kib: Some(procstat::status_kib(vswitchd, "VmRSS")?),
        flows: Some(flows),
        groups: Some(groups),
        rules: None,
        note: None,
    })
}

/// With `DPU_BENCH_DUMPS=<dir>`, writes the switch's flows (without cookies and
/// counters, sorted) and groups there as `<name>.flows` / `<name>.groups`, to
/// compare what the systems installed. Best effort.
fn save_dump(name: &str, ovs: &OvsInstance, bridge: &str) {
    let Some(dir) = std::env::var_os("DPU_BENCH_DUMPS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(f) = ovs.dump_flows(bridge) {
        let mut f = dpu_lab::traffic::flows_without_cookies(f);
        f.sort();
        let _ = std::fs::write(dir.join(format!("{name}.flows")), f.join("\n"));
    }
    if let Ok(mut g) = ovs.dump_groups(bridge) {
        g.sort();
        let _ = std::fs::write(dir.join(format!("{name}.groups")), g.join("\n"));
    }
}

/// A kube-proxy system: a flavor, and whether the restore runs with `--noflush`
/// as kube-proxy runs it.
#[derive(Debug, Clone, Copy)]
pub struct KubeSystem {
    pub flavor: Flavor,
    pub noflush: bool,
}

/// The kube-proxy systems in the table: the three loaders as kube-proxy runs them,
/// and `iptables-nft-restore` without `--noflush` (see `kube::LoadOptions`: with
/// it, iptables 1.8.9's nft backend is superlinear in the ruleset).
pub const KUBE_SYSTEMS: [KubeSystem; 4] = [
    KubeSystem {
        flavor: Flavor::IptablesLegacy,
        noflush: true,
    },
    KubeSystem {
        flavor: Flavor::IptablesNft,
        noflush: true,
    },
    KubeSystem {
        flavor: Flavor::IptablesNft,
        noflush: false,
    },
    KubeSystem {
        flavor: Flavor::Nftables,
        noflush: true,
    },
];

impl KubeSystem {
    pub fn name(&self) -> &'static str {
        match (self.flavor, self.noflush) {
            (Flavor::IptablesLegacy, _) => "iptables-legacy",
            (Flavor::IptablesNft, true) => "iptables-nft",
            (Flavor::IptablesNft, false) => "iptables-nft-flush",
            (Flavor::Nftables, _) => "nftables",
        }
    }
}

/// The kube-proxy ruleset of the same Services through the system's restore tool,
/// killed after `timeout`.
pub fn kube(sys: KubeSystem, g: &Generated, timeout: Duration) -> Result<ColdRow> {
    let specs = intent::to_svc_specs(&g.services);
    let opts = kube::LoadOptions {
        noflush: sys.noflush,
        timeout,
    };
    let c = kube::cold_load_with(sys.flavor, &specs, &opts)?;
    Ok(ColdRow {
        system: sys.name().into(),
        services: g.services.len(),
        error: None,
        wall_s: secs(c.wall),
        cpu_s: secs(c.cpu),
        loader_cpu_s: secs(c.cpu),
        vswitchd_cpu_s: None,
        peak_rss_kib: c.peak_rss_kib,
        vswitchd_rss_kib: None,
        flows: None,
        groups: None,
        rules: Some(c.rules),
        note: (!sys.noflush).then(|| "without --noflush (kube-proxy passes it)".into()),
    })
}

/// A row for a system that failed, so the table says so.
pub fn failed(system: &str, services: usize, e: &anyhow::Error) -> ColdRow {
    ColdRow {
        system: system.into(),
        services,
        error: Some(format!("{e:#}")),
        ..Default::default()
    }
}
