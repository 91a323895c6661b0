//! The agent's metrics in the Prometheus text exposition format (0.0.4):
//! [`families`] turns one scrape's facts into metric families, [`render`]
//! writes them out. Pure: whoever gathers the facts and the endpoint
//! (`observe::http`) do the I/O. The metrics are listed in `docs/metrics.md`.

use std::collections::BTreeMap;

use super::datapath::DatapathFlows;
use super::lb_index::{BackendView, ServiceCounters};
use super::registry::{Snapshot, BUNDLE_BUCKETS};
use super::sysfacts::SysFacts;
use super::{LbIndex, Summary};

/// Everything one scrape reports.
#[derive(Debug)]
pub struct Input<'a> {
    pub summary: &'a Summary,
    pub registry: &'a Snapshot,
    pub lb: &'a LbIndex,
    /// Per-Service counters (LbIndex::counters); None when the switch could not be read.
    pub counters: Option<&'a BTreeMap<String, ServiceCounters>>,
    /// None when ovs-appctl failed.
    pub datapath: Option<DatapathFlows>,
    pub sys: &'a SysFacts,
    pub agent_version: &'a str,
    /// Emit the `dpu_backend_*` series (`metrics.per_backend`).
    pub per_backend: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value. Counters stay integers so that byte counters past 2^53 are
/// not rounded on the way out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Appended to the family's name: `""`, or `_bucket`, `_sum`, `_count` in
    /// a histogram.
    pub suffix: &'static str,
    pub labels: Labels,
    pub value: Value,
}

/// One metric: its samples share the name, help and type. A counter's name
/// ends in `_total` (the family carries the full name, as 0.0.4 writes it).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Family {
        Family::new(name, Kind::Gauge, help)
    }

    pub fn counter(name: &'static str, help: &'static str) -> Family {
        Family::new(name, Kind::Counter, help)
    }

    /// Adds a plain (counter or gauge) sample.
    pub fn push(&mut self, labels: Labels, value: impl Into<Value>) {
        self.samples.push(Sample {
            suffix: "",
            labels,
            value: value.into(),
        });
    }

    /// A family with one unlabelled sample.
    pub fn single(mut self, value: impl Into<Value>) -> Family {
        self.push(Vec::new(), value);
        self
    }

    /// Adds one histogram: `cumulative` holds the count at or under each of
    /// `bounds`, then the total count (the `+Inf` bucket). Missing entries are
    /// taken as the total, so a short slice still renders a valid histogram.
    pub fn push_histogram(&mut self, labels: Labels, bounds: &[f64], cumulative: &[u64], sum: f64) {
        let count = cumulative.last().copied().unwrap_or(0);
        let les = bounds
            .iter()
            .map(|b| format_float(*b))
            .chain(["+Inf".into()]);
        for (i, le) in les.enumerate() {
            let mut l = labels.clone();
            l.push(("le", le));
            let v = if i < bounds.len() {
                cumulative.get(i).copied().unwrap_or(count)
            } else {
                count
            };
            self.samples.push(Sample {
                suffix: "_bucket",
                labels: l,
                value: v.into(),
            });
        }
        for (suffix, value) in [("_sum", Value::Float(sum)), ("_count", count.into())] {
            self.samples.push(Sample {
                suffix,
                labels: labels.clone(),
                value,
            });
        }
    }
}

/// Writes the families as text. A family with no samples is left out: the
/// format allows it, but an empty family tells a reader nothing.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        out.push_str("# HELP ");
        out.push_str(f.name);
        out.push(' ');
        escape_into(&mut out, f.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(f.name);
        out.push(' ');
        out.push_str(f.kind.as_str());
        out.push('\n');
        for s in &f.samples {
            out.push_str(f.name);
            out.push_str(s.suffix);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push_str("=\"");
                    escape_into(&mut out, v, true);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            match s.value {
                Value::Int(v) => out.push_str(&v.to_string()),
                Value::Float(v) => out.push_str(&format_float(v)),
            }
            out.push('\n');
        }
    }
    out
}

/// HELP text escapes backslash and newline; label values also the quote.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Rust's `Display` for floats never uses an exponent and writes integral
/// values without a fraction, which Go's `ParseFloat` reads back exactly; only
/// the non-finite values need Prometheus' spelling.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A backend's state as a label value: `BackendState::as_str` with spaces
/// turned into underscores (`not_ready`, `weight_0`, `no_VPC`).
fn state_label(b: &BackendView) -> String {
    b.state.as_str().replace(' ', "_")
}

fn l<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Every agent metric, in the order `docs/metrics.md` lists them.
pub fn families(x: &Input<'_>) -> Vec<Family> {
    let s = x.summary;
    let r = x.registry;
    let mut out = Vec::new();

    let mut info = Family::gauge("dpu_agent_info", "The agent's node and version; always 1.");
    info.push(l([("node", &s.node), ("version", x.agent_version)]), 1u64);
    out.push(info);
    out.push(
        Family::gauge(
            "dpu_intent_applied_version",
            "The intent version on the switch (0: none yet).",
        )
        .single(s.applied_version),
    );
    out.push(
        Family::gauge(
            "dpu_intent_desired_version",
            "The newest intent version the controller sent.",
        )
        // Both the loop and the registry record it; whichever is newer wins.
        .single(s.desired_version.max(r.desired_version)),
    );
    let mut connected = Family::gauge(
        "dpu_controller_connected",
        "1 while the control stream to a controller is up, labelled with its endpoint.",
    );
    match &s.controller {
        Some(endpoint) => connected.push(l([("endpoint", endpoint)]), 1u64),
        None => connected.push(Vec::new(), 0u64),
    }
    out.push(connected);
    out.push(Family::gauge("dpu_services", "Services in the applied intent.").single(s.services));
    out.push(
        Family::gauge("dpu_openflow_flows", "OpenFlow flows the agent installed.").single(s.flows),
    );
    out.push(
        Family::gauge(
            "dpu_openflow_groups",
            "OpenFlow groups the agent installed.",
        )
        .single(s.groups),
    );
    out.push(
        Family::gauge(
            "dpu_pending_ports",
            "Workload ports the intent names that are not on the bridge yet.",
        )
        .single(s.pending_ports.len()),
    );
    out.push(
        Family::gauge(
            "dpu_unhealthy_backends",
            "Backends left out of load balancing because a probe failed them.",
        )
        .single(s.unhealthy.len()),
    );

    let mut reconciles = Family::counter(
        "dpu_reconciles_total",
        "Reconciles of the switch against the intent, by result.",
    );
    reconciles.push(l([("result", "ok")]), r.reconciles_ok);
    reconciles.push(l([("result", "error")]), r.reconciles_failed);
    out.push(reconciles);
    let mut updates = Family::counter(
        "dpu_updates_total",
        "Intent updates answered to the controller, by answer.",
    );
    updates.push(l([("result", "ack")]), r.acks);
    updates.push(l([("result", "nack")]), r.nacks);
    out.push(updates);
    let mut bundle = Family::new(
        "dpu_bundle_duration_seconds",
        Kind::Histogram,
        "Time from sending an OpenFlow bundle to the switch confirming it.",
    );
    bundle.push_histogram(
        Vec::new(),
        &BUNDLE_BUCKETS,
        &r.bundle_cumulative,
        r.bundle_sum_seconds,
    );
    out.push(bundle);

    out.extend(service_families(x));
    out.extend(probe_families(r));

    let mut dp = Family::gauge(
        "dpu_datapath_flows",
        "Datapath (megaflow) flows, all and offloaded to hardware.",
    );
    let mut audit = Family::gauge(
        "dpu_datapath_megaflows",
        "Datapath flows by the offload audit's verdict (docs/offload.md): NIC-matchable, \
         slow path by design, or software (would stay out of the NIC).",
    );
    if let Some(d) = x.datapath {
        dp.push(l([("type", "all")]), d.total);
        dp.push(l([("type", "offloaded")]), d.offloaded);
        let a = d.audit;
        audit.push(l([("verdict", "nic_matchable")]), a.nic_matchable);
        audit.push(l([("verdict", "slow_path")]), a.slow_path);
        audit.push(l([("verdict", "software")]), a.software);
    }
    out.push(dp);
    out.push(audit);

    out.extend(sys_families(x.sys));
    let mut up = Family::gauge(
        "dpu_metrics_source_up",
        "1 when this scrape could read the source (switch counters, datapath flows).",
    );
    up.push(l([("source", "switch")]), x.counters.is_some());
    up.push(l([("source", "datapath")]), x.datapath.is_some());
    out.push(up);
    out
}

/// Per-Service and per-backend counters and backend states.
fn service_families(x: &Input<'_>) -> Vec<Family> {
    let mut packets = Family::counter(
        "dpu_service_packets_total",
        "Packets of the Service's load-balancing flows (new-connection traffic).",
    );
    let mut bytes = Family::counter(
        "dpu_service_bytes_total",
        "Bytes of the Service's load-balancing flows (new-connection traffic).",
    );
    let mut new_conns = Family::counter(
        "dpu_service_new_connections_total",
        "Load-balancing decisions: packets through the Service's groups.",
    );
    let mut be_conns = Family::counter(
        "dpu_backend_new_connections_total",
        "Load-balancing decisions that picked the backend: packets through its buckets.",
    );
    let mut be_bytes = Family::counter(
        "dpu_backend_bytes_total",
        "Bytes through the backend's buckets (new-connection traffic).",
    );
    let mut state = Family::gauge(
        "dpu_backend_state",
        "1 for the backend's state: serving, weight_0, unhealthy, not_ready, no_VPC.",
    );
    for (name, view) in &x.lb.services {
        let backend_labels = |b: &BackendView| {
            l([
                ("service", &**name),
                ("backend_vpc", b.vpc),
                ("backend_ip", &b.ip.to_string()),
                ("workload", b.workload.unwrap_or("")),
            ])
        };
        for b in view.backends().filter(|_| x.per_backend) {
            let mut labels = backend_labels(&b);
            labels.push(("state", state_label(&b)));
            state.push(labels, 1u64);
        }
        // No entry: the switch has no flow or group of this Service, so it
        // has no counter to report (a 0 would look like a reset).
        let Some(c) = x.counters.and_then(|m| m.get(&**name)) else {
            continue;
        };
        let svc = l([("service", name), ("vpc", view.vpc())]);
        packets.push(svc.clone(), c.packets);
        bytes.push(svc.clone(), c.bytes);
        new_conns.push(svc, c.new_connections);
        for (&i, &(p, b)) in c.backends.iter().filter(|_| x.per_backend) {
            if let Some(b_view) = view.backend(i) {
                be_conns.push(backend_labels(&b_view), p);
                be_bytes.push(backend_labels(&b_view), b);
            }
        }
    }
    vec![packets, bytes, new_conns, be_conns, be_bytes, state]
}

fn probe_families(r: &Snapshot) -> Vec<Family> {
    let mut healthy = Family::gauge(
        "dpu_probe_healthy",
        "1 while this node's probe finds the backend healthy.",
    );
    let mut transitions = Family::counter(
        "dpu_probe_transitions_total",
        "Changes of this node's probe verdict on a backend, by new verdict.",
    );
    for ((vpc, ip), p) in &r.probes {
        let ip = ip.to_string();
        healthy.push(l([("vpc", vpc), ("ip", &ip)]), p.healthy);
        for (to, n) in [("healthy", p.to_healthy), ("unhealthy", p.to_unhealthy)] {
            transitions.push(l([("vpc", vpc), ("ip", &ip), ("to", to)]), n);
        }
    }
    vec![healthy, transitions]
}

fn sys_families(sys: &SysFacts) -> Vec<Family> {
    let mut mem = Family::gauge("dpu_node_memory_bytes", "Memory of the DPU's OS.");
    mem.push(l([("kind", "total")]), sys.mem_total_bytes);
    mem.push(l([("kind", "used")]), sys.mem_used_bytes);
    vec![
        Family::gauge(
            "dpu_node_cpu_percent",
            "Busy share of all CPUs of the DPU's OS, 0 to 100.",
        )
        .single(sys.cpu_percent),
        Family::gauge("dpu_node_cpus", "CPUs of the DPU's OS.").single(sys.cpus),
        mem,
        Family::gauge(
            "dpu_agent_cpu_percent",
            "The agent's CPU use, in percent of one CPU.",
        )
        .single(sys.agent_cpu_percent),
        Family::gauge(
            "dpu_agent_resident_memory_bytes",
            "The agent's resident memory.",
        )
        .single(sys.agent_rss_bytes),
    ]
}

#[cfg(test)]
mod tests;
