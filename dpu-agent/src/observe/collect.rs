//! Gathers one observation (the loop's summary and LB index, the event
//! registry, the switch's counters, datapath flow counts, CPU and memory) and
//! turns it into the metrics text or the Status the controller gets. The
//! status task sends a Status whenever the agent's state changed, with the
//! counters of the last refresh, and refreshes everything every
//! [`STATUS_PERIOD`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpu_proto::v1 as pb;
use tokio::sync::watch;

use super::datapath::{self, DatapathFlows};
use super::lb_index::{BackendState, ServiceCounters};
use super::registry::{self, Registry};
use super::sysfacts::{SysFacts, SysSampler};
use super::tunnel::{self, TunnelCheck};
use super::{metrics, switch_stats, Agent, Gone, LbIndex, Summary};
use crate::config::Config;

/// How often the status sent to the controller is refreshed with new counters.
pub const STATUS_PERIOD: Duration = Duration::from_secs(10);
/// At most this many Services in a Status, and backends per Service: the
/// controller refuses a Status with more.
use dpu_proto::{MAX_BACKEND_STATUS, MAX_SERVICE_STATUS, MAX_STATUS_ERROR_LEN};
/// How long the status task gathers changes before it sends one Status.
pub const CHANGE_DEBOUNCE: Duration = Duration::from_millis(500);
/// After a change, the Services in the Status are rebuilt from the agent's LB
/// index at most this often (once per [`STATUS_PERIOD`] otherwise).
pub const LB_REFRESH: Duration = Duration::from_secs(2);
/// How long one read of the switch or of `ovs-appctl` may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything one observation needs to reach.
#[derive(Debug)]
pub struct Collector {
    pub agent: Agent,
    pub registry: Arc<Registry>,
    sampler: Mutex<SysSampler>,
    ofctl_target: String,
    appctl_path: String,
    run_dir: PathBuf,
    datapath_type: String,
    per_backend: bool,
    /// The last tunnel warning logged (a change is logged once).
    tunnel_logged: Mutex<Option<String>>,
}

/// One observation.
#[derive(Debug, Clone)]
pub struct Observation {
    pub summary: Summary,
    pub lb: Arc<LbIndex>,
    pub registry: registry::Snapshot,
    /// Per Service; `Err` says why the switch could not be read.
    pub counters: Result<BTreeMap<String, ServiceCounters>, String>,
    pub datapath: Result<DatapathFlows, String>,
    pub sys: SysFacts,
    /// Whether this node's tunnel endpoint is local: checked for the Status
    /// only (`None` without a `DpuNode`, and in a scrape's observation).
    pub tunnel: Option<TunnelCheck>,
}

impl Collector {
    pub fn new(cfg: &Config, agent: Agent, registry: Arc<Registry>) -> Self {
        Collector {
            agent,
            registry,
            sampler: Mutex::new(SysSampler::new()),
            ofctl_target: cfg.ofctl_target(),
            appctl_path: cfg.ovs.appctl_path.clone(),
            run_dir: cfg.ovs.run_dir.clone(),
            datapath_type: cfg.ovs.datapath_type.clone(),
            per_backend: cfg.metrics.per_backend,
            tunnel_logged: Mutex::new(None),
        }
    }

    /// Checks this node's tunnel endpoint; a new verdict is logged once.
    async fn check_tunnel(&self, summary: &Summary) -> Option<TunnelCheck> {
        let ip = summary.tunnel_ip?;
        let check = tunnel::check(&self.appctl_path, &self.run_dir, ip, READ_TIMEOUT).await;
        let warning = check.warning(&summary.node);
        let mut logged = self.tunnel_logged.lock().unwrap_or_else(|e| e.into_inner());
        if *logged != warning {
            match &warning {
                Some(w) => tracing::warn!("{w}"),
                None => {
                    tracing::info!(tunnel_ip = %ip, "this DPU's tunnel endpoint is a local address")
                }
            }
            *logged = warning;
        }
        Some(check)
    }

    fn sample_sys(&self) -> SysFacts {
        self.sampler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample()
    }

    /// A fresh observation: asks the loop, reads the switch and the datapath.
    pub async fn observe(&self) -> Result<Observation, Gone> {
        let summary = self.agent.summary().await?;
        let lb = self.agent.lb().await?;
        let plan = switch_stats::Plan::for_index(&lb);
        let (counters, datapath) = tokio::join!(
            switch_stats::read_in_parts(
                &self.ofctl_target,
                &plan,
                Some(self.agent.watch_switch_busy()),
                READ_TIMEOUT
            ),
            datapath::count(&self.appctl_path, &self.run_dir, &self.datapath_type),
        );
        let counters = counters.map(|c| lb.counters(&c)).map_err(|e| e.to_string());
        let datapath = datapath.map_err(|e| e.to_string());
        Ok(Observation {
            summary,
            lb,
            registry: self.registry.snapshot(),
            counters,
            datapath,
            sys: self.sample_sys(),
            // Only the Status needs it (`run_status`); a scrape does not.
            tunnel: None,
        })
    }

    /// The Prometheus text of a fresh observation.
    pub async fn metrics_text(&self) -> String {
        match self.observe().await {
            Ok(o) => {
                if let Err(e) = &o.counters {
                    tracing::debug!(error = %e, "metrics: switch counters unavailable");
                }
                if let Err(e) = &o.datapath {
                    tracing::debug!(error = %e, "metrics: datapath flows unavailable");
                }
                metrics::render(&metrics::families(&metrics::Input {
                    summary: &o.summary,
                    registry: &o.registry,
                    lb: &o.lb,
                    counters: o.counters.as_ref().ok(),
                    datapath: o.datapath.as_ref().ok().copied(),
                    sys: &o.sys,
                    agent_version: env!("CARGO_PKG_VERSION"),
                    per_backend: self.per_backend,
                }))
            }
            // The agent is stopping: an empty, valid exposition.
            Err(Gone) => String::new(),
        }
    }

    /// Sends a Status after changes of `changed` (at most every
    /// [`CHANGE_DEBOUNCE`], with the loop's summary, the Services of a new
    /// version at most every [`LB_REFRESH`], and the last refresh's counters)
    /// and every [`STATUS_PERIOD`] (everything fresh), until `shutdown`. Under
    /// churn the loop builds the LB index at most once per [`LB_REFRESH`], and
    /// the switch is never read per update.
    pub async fn run_status(
        self: Arc<Self>,
        mut changed: watch::Receiver<u64>,
        out: watch::Sender<pb::Status>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(STATUS_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Observation> = None;
        let mut lb_at = tokio::time::Instant::now();
        let mut lb_stale = false;
        loop {
            let fresh = tokio::select! {
                _ = shutdown.changed() => return,
                r = changed.changed() => {
                    if r.is_err() { return; }
                    // Let a burst of changes become one Status.
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(CHANGE_DEBOUNCE) => {}
                    }
                    changed.borrow_and_update();
                    false
                }
                // A new version whose Services were not listed yet.
                _ = tokio::time::sleep_until(lb_at + LB_REFRESH), if lb_stale => false,
                _ = tick.tick() => true,
            };
            let o = match (&last, fresh) {
                (Some(prev), false) => {
                    let Ok(summary) = self.agent.summary().await else {
                        return;
                    };
                    // The Services listed follow a new version within
                    // LB_REFRESH, so one index build per LB_REFRESH at most.
                    let new_version = prev.lb.version != summary.applied_version;
                    lb_stale = new_version && lb_at.elapsed() < LB_REFRESH;
                    let lb = if new_version && !lb_stale {
                        let Ok(lb) = self.agent.lb().await else {
                            return;
                        };
                        lb_at = tokio::time::Instant::now();
                        lb
                    } else {
                        prev.lb.clone()
                    };
                    Observation {
                        summary,
                        lb,
                        registry: self.registry.snapshot(),
                        ..prev.clone()
                    }
                }
                _ => match self.observe().await {
                    Ok(mut o) => {
                        lb_at = tokio::time::Instant::now();
                        lb_stale = false;
                        o.tunnel = self.check_tunnel(&o.summary).await;
                        o
                    }
                    Err(Gone) => return,
                },
            };
            let _ = out.send(status_of(&o));
            last = Some(o);
        }
    }
}

/// The Status message for the controller.
pub fn status_of(o: &Observation) -> pb::Status {
    let s = &o.summary;
    let counters = o.counters.as_ref().ok();
    let totals = counters.map(|c| {
        c.values().fold(pb::CounterSummary::default(), |mut t, c| {
            t.new_connections += c.new_connections;
            t.packets += c.packets;
            t.bytes += c.bytes;
            t
        })
    });
    let (service_status, omitted) = service_status(&o.lb, counters);
    pb::Status {
        applied_version: s.applied_version,
        flows: s.flows as u32,
        groups: s.groups as u32,
        pending_ports: s.pending_ports.clone(),
        desired_version: s.desired_version,
        services: s.services as u32,
        unhealthy: s
            .unhealthy
            .iter()
            .filter_map(|u| u.split_once('/'))
            .map(|(vpc, ip)| pb::BackendRef {
                vpc: vpc.to_string(),
                ip: ip.to_string(),
            })
            .collect(),
        // The agent's own error first; else a tunnel endpoint that cannot work.
        last_error: s
            .last_error
            .clone()
            .or_else(|| o.tunnel.as_ref().and_then(|t| t.warning(&s.node)))
            .map(|e| cut(&e, MAX_STATUS_ERROR_LEN))
            .unwrap_or_default(),
        reconciles: o.registry.reconciles_ok + o.registry.reconciles_failed,
        nacks: o.registry.nacks,
        facts: Some(pb::DpuFacts {
            cpu_percent: percent(o.sys.cpu_percent),
            cpus: o.sys.cpus as u32,
            mem_total_bytes: o.sys.mem_total_bytes,
            mem_used_bytes: o.sys.mem_used_bytes,
            agent_cpu_percent: percent(o.sys.agent_cpu_percent),
            agent_rss_bytes: o.sys.agent_rss_bytes,
            datapath_flows: o.datapath.as_ref().map_or(0, |d| d.total),
            offloaded_flows: o.datapath.as_ref().map_or(0, |d| d.offloaded),
        }),
        counters: totals,
        service_status,
        services_omitted: omitted,
    }
}

/// At most [`MAX_SERVICE_STATUS`] Services: those with a backend that does not
/// serve first, then the busiest; and how many were left out.
fn service_status(
    lb: &LbIndex,
    counters: Option<&BTreeMap<String, ServiceCounters>>,
) -> (Vec<pb::ServiceStatus>, u32) {
    let none = ServiceCounters::default();
    let mut all: Vec<(bool, u64, &str)> = lb
        .services
        .values()
        .map(|v| {
            let troubled = v.backends().any(|b| b.state != BackendState::Serving);
            let c = counters.and_then(|c| c.get(v.name())).unwrap_or(&none);
            (troubled, c.new_connections, v.name())
        })
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
    let omitted = all.len().saturating_sub(MAX_SERVICE_STATUS) as u32;
    let out = all
        .iter()
        .take(MAX_SERVICE_STATUS)
        .map(|(_, _, name)| {
            let v = &lb.services[*name];
            let c = counters.and_then(|c| c.get(*name)).unwrap_or(&none);
            let mut backends: Vec<(usize, super::lb_index::BackendView)> =
                v.backends().enumerate().collect();
            backends.sort_by_key(|(_, b)| b.state == BackendState::Serving);
            pb::ServiceStatus {
                name: v.name().to_string(),
                vips: v.vips().iter().map(|ip| ip.to_string()).collect(),
                backends: v.backends().len() as u32,
                serving: v
                    .backends()
                    .filter(|b| b.state == BackendState::Serving)
                    .count() as u32,
                backend_status: backends
                    .into_iter()
                    .take(MAX_BACKEND_STATUS)
                    .map(|(i, b)| {
                        let (p, bytes) = c.backends.get(&i).copied().unwrap_or_default();
                        pb::BackendStatus {
                            vpc: b.vpc.to_string(),
                            ip: b.ip.to_string(),
                            workload: b.workload.unwrap_or_default().to_string(),
                            weight: b.weight,
                            state: b.state.as_str().to_string(),
                            new_connections: p,
                            bytes,
                        }
                    })
                    .collect(),
                new_connections: c.new_connections,
                packets: c.packets,
                bytes: c.bytes,
            }
        })
        .collect();
    (out, omitted)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A CPU share the controller accepts: finite and not negative.
fn percent(p: f64) -> f64 {
    if p.is_finite() && p >= 0.0 {
        p
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{LbInputs, LbReply, Query};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    fn config() -> Config {
        // No switch or appctl here: their reads fail, which the Status survives.
        let text = format!(
            "{}appctl_path = \"/nonexistent/ovs-appctl\"\n",
            crate::config::tests::GOOD
        );
        crate::config::tests::load(&text).unwrap()
    }

    /// A stand-in agent loop at `version`, counting the LB index inputs it
    /// hands out (each is one build).
    fn fake_loop(
        mut rx: tokio::sync::mpsc::Receiver<Query>,
        version: Arc<AtomicU64>,
        builds: Arc<AtomicUsize>,
    ) {
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                let v = version.load(Ordering::SeqCst);
                match q {
                    Query::Summary(tx) => {
                        let _ = tx.send(Summary {
                            applied_version: v,
                            services: v as usize,
                            ..Summary::default()
                        });
                    }
                    // The state's generation is its version here.
                    Query::Lb { have: Some(g), tx } if g == v => {
                        let _ = tx.send(LbReply::Unchanged);
                    }
                    Query::Lb { tx, .. } => {
                        builds.fetch_add(1, Ordering::SeqCst);
                        let mut inputs = LbInputs::default();
                        inputs.intent.version = v;
                        let _ = tx.send(LbReply::Build(v, Box::new(inputs)));
                    }
                    _ => {}
                }
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_debounced_and_the_lb_index_rebuilt_at_most_every_lb_refresh() {
        let (agent, rx) = Agent::channel();
        let (version, builds) = (Arc::new(AtomicU64::new(1)), Arc::new(AtomicUsize::new(0)));
        fake_loop(rx, version.clone(), builds.clone());
        let collector = Arc::new(Collector::new(&config(), agent, Arc::default()));
        let (changed_tx, changed_rx) = watch::channel(0u64);
        let (out_tx, mut out) = watch::channel(pb::Status::default());
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(collector.run_status(changed_rx, out_tx, stop));

        // The first tick observes everything.
        out.changed().await.unwrap();
        assert_eq!(out.borrow_and_update().applied_version, 1);
        assert_eq!(builds.load(Ordering::SeqCst), 1);

        // A burst of changes to version 2 becomes one Status after the
        // debounce, with the summary's version at once ...
        let t0 = tokio::time::Instant::now();
        version.store(2, Ordering::SeqCst);
        for _ in 0..5 {
            changed_tx.send_modify(|g| *g += 1);
        }
        out.changed().await.unwrap();
        assert_eq!(t0.elapsed(), CHANGE_DEBOUNCE);
        assert_eq!(out.borrow_and_update().services, 2);
        // ... but the LB index was built under LB_REFRESH ago: not again yet.
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        // It is rebuilt once LB_REFRESH has passed, with no further change.
        out.changed().await.unwrap();
        assert_eq!(t0.elapsed(), LB_REFRESH);
        assert_eq!(builds.load(Ordering::SeqCst), 2);

        // Changes that keep the version need no index at all.
        for _ in 0..3 {
            changed_tx.send_modify(|g| *g += 1);
            out.changed().await.unwrap();
        }
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        // The period observes everything again; the state is the same, so
        // the index built for it is current and not built again ...
        out.borrow_and_update();
        tokio::time::sleep(STATUS_PERIOD).await;
        assert!(out.has_changed().unwrap());
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        // ... until the state changes.
        version.store(3, Ordering::SeqCst);
        out.borrow_and_update();
        tokio::time::sleep(STATUS_PERIOD).await;
        assert!(out.has_changed().unwrap());
        assert_eq!(builds.load(Ordering::SeqCst), 3);
    }
}
