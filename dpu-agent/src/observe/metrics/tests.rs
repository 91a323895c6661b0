use super::*;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use dpu_model::{AccessScenario, Backend, Intent, Protocol, Service, ServicePort, Vpc};

use crate::compile::pipeline::cookie::ROUND_SHIFT;
use crate::compile::Readiness;
use crate::observe::lb_index::Inputs;
use crate::observe::registry::{ProbeRecord, Registry};
use crate::observe::switch_stats::{FlowCounter, GroupCounter, SwitchCounters};
use crate::state::alloc::Allocations;

/// Runs `promtool check metrics` on the text: Err with what it said when
/// it complains (a format error or a lint). promtool must be installed:
/// the check is the point of the tests, so a missing binary is a failure,
/// not a skip.
fn promtool_check(text: &str) -> Result<(), String> {
    let bin = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} (Debian package prometheus): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool ({}): {said}", out.status))
    }
}

fn promtool(text: &str) {
    if let Err(e) = promtool_check(text) {
        panic!("{e}\n--- input ---\n{text}");
    }
}

/// The check the other tests lean on does catch problems.
#[test]
fn promtool_complains_about_bad_exposition() {
    for bad in [
        "# HELP x_events Events.\n# TYPE x_events counter\nx_events 1\n",
        "# HELP x_a A.\n# TYPE x_a gauge\nx_a{a=\"1\"} one\n",
        "# HELP x_a A.\n# TYPE x_a gauge\nx_a{a=\"new\nline\"} 1\n",
    ] {
        assert!(promtool_check(bad).is_err(), "{bad}");
    }
    promtool("# HELP x_a A.\n# TYPE x_a gauge\nx_a 1\n");
}

#[test]
fn renders_help_type_labels_and_escapes() {
    let mut g = Family::gauge("x_info", "Line one\nback\\slash \"quoted\".");
    g.push(
        l([("a", "q\"uote"), ("b", "back\\slash"), ("c", "new\nline")]),
        1u64,
    );
    let c = Family::counter("x_events_total", "Events.").single(u64::MAX);
    let f = Family::gauge("x_ratio", "Values.");
    let mut f = f;
    for (k, v) in [
        ("int", 3.0),
        ("half", 0.5),
        ("big", 1e21),
        ("tiny", 1e-7),
        ("neg", -2.25),
        ("inf", f64::INFINITY),
        ("ninf", f64::NEG_INFINITY),
        ("nan", f64::NAN),
    ] {
        f.push(l([("v", k)]), v);
    }
    let empty = Family::gauge("x_empty", "Never shown.");
    let got = render(&[g, c, empty, f]);
    let want = r#"# HELP x_info Line one\nback\\slash "quoted".
# TYPE x_info gauge
x_info{a="q\"uote",b="back\\slash",c="new\nline"} 1
# HELP x_events_total Events.
# TYPE x_events_total counter
x_events_total 18446744073709551615
# HELP x_ratio Values.
# TYPE x_ratio gauge
x_ratio{v="int"} 3
x_ratio{v="half"} 0.5
x_ratio{v="big"} 1000000000000000000000
x_ratio{v="tiny"} 0.0000001
x_ratio{v="neg"} -2.25
x_ratio{v="inf"} +Inf
x_ratio{v="ninf"} -Inf
x_ratio{v="nan"} NaN
"#;
    assert_eq!(got, want);
    promtool(&got);
}

#[test]
fn histogram_buckets_are_cumulative_and_end_in_inf() {
    let mut h = Family::new("x_duration_seconds", Kind::Histogram, "Durations.");
    h.push_histogram(l([("op", "a")]), &[0.005, 1.0], &[1, 3, 4], 2.5);
    let got = render(&[h]);
    let want = r#"# HELP x_duration_seconds Durations.
# TYPE x_duration_seconds histogram
x_duration_seconds_bucket{op="a",le="0.005"} 1
x_duration_seconds_bucket{op="a",le="1"} 3
x_duration_seconds_bucket{op="a",le="+Inf"} 4
x_duration_seconds_sum{op="a"} 2.5
x_duration_seconds_count{op="a"} 4
"#;
    assert_eq!(got, want);
    promtool(&got);
}

#[test]
fn registry_histogram_renders_with_every_bucket() {
    let reg = Registry::default();
    reg.bundle(std::time::Duration::from_millis(3));
    reg.bundle(std::time::Duration::from_secs(30));
    let snap = reg.snapshot();
    let mut h = Family::new("x_bundle_seconds", Kind::Histogram, "Bundles.");
    h.push_histogram(
        Vec::new(),
        &BUNDLE_BUCKETS,
        &snap.bundle_cumulative,
        snap.bundle_sum_seconds,
    );
    let text = render(&[h]);
    assert!(text.contains("x_bundle_seconds_bucket{le=\"0.0025\"} 0\n"));
    assert!(text.contains("x_bundle_seconds_bucket{le=\"0.005\"} 1\n"));
    assert!(text.contains("x_bundle_seconds_bucket{le=\"10\"} 1\n"));
    assert!(text.contains("x_bundle_seconds_bucket{le=\"+Inf\"} 2\n"));
    assert!(text.contains("x_bundle_seconds_sum 30.003\n"));
    assert!(text.contains("x_bundle_seconds_count 2\n"));
    promtool(&text);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn backend(vpc: &str, addr: &str, weight: u32, workload: Option<&str>) -> Backend {
    Backend {
        ip: ip(addr),
        weight,
        workload: workload.map(str::to_string),
        vpc: vpc.into(),
    }
}

/// A Service `web` in VPC `blue` with one backend per state, and a
/// dual-stack Service `dns` with an awkward workload name.
fn intent() -> Intent {
    let mut i = Intent::default();
    for (n, name) in ["blue", "red"].iter().enumerate() {
        i.vpcs.insert(
            name.to_string(),
            Vpc {
                name: name.to_string(),
                vni: n as u32 + 1,
            },
        );
    }
    let service = |name: &str, ips: &[&str], backends: Vec<Backend>| Service {
        name: name.into(),
        vpc: "blue".into(),
        cluster_ips: ips.iter().map(|s| ip(s)).collect(),
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        }],
        backends,
        affinity_timeout: None,
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    };
    i.services.insert(
        "web".into(),
        std::sync::Arc::new(service(
            "web",
            &["10.96.0.10"],
            vec![
                backend("blue", "10.0.0.5", 1, Some("web-0")),
                backend("blue", "10.0.0.6", 2, Some("web-1")),
                backend("blue", "10.0.0.7", 0, Some("web-2")),
                backend("blue", "10.0.0.8", 1, None),
                backend("gone", "10.9.0.1", 1, None),
            ],
        )),
    );
    i.services.insert(
        "dns".into(),
        std::sync::Arc::new(service(
            "dns",
            &["10.96.0.53", "fd00::53"],
            vec![
                backend("blue", "10.0.1.5", 1, Some("dns \"a\"\\\n0")),
                backend("blue", "fd00::1:5", 1, Some("dns-0")),
            ],
        )),
    );
    i
}

struct World {
    lb: LbIndex,
    counters: BTreeMap<String, ServiceCounters>,
    registry: Snapshot,
    summary: Summary,
    sys: SysFacts,
}

/// The index built from [`intent`] as the agent builds it, and counters
/// joined from a switch dump: every flow of a Service counts 10 packets
/// of 1000 bytes, every bucket 3 packets of 300 bytes.
fn world() -> World {
    let intent = intent();
    let alloc = Allocations::default().update(&intent).unwrap();
    let unhealthy: BTreeSet<(String, IpAddr)> = [("blue".to_string(), ip("10.0.0.6"))].into();
    let ready = Readiness {
        unready: [("blue".to_string(), ip("10.0.0.8"))].into(),
        ..Readiness::default()
    };
    let lb = LbIndex::build(&Inputs {
        version: 7,
        intent: &intent,
        alloc: &alloc,
        ready: &ready,
        unhealthy: &unhealthy,
        installed: None,
    });
    let mut sw = SwitchCounters::default();
    for v in lb.services.values() {
        sw.flows.push(FlowCounter {
            table: 31,
            priority: 100,
            cookie: v.cookie | (5 << ROUND_SHIFT), // any round
            packets: 10,
            bytes: 1000,
        });
        for g in v.groups.iter() {
            let ids: Vec<u32> = g.buckets.ids().collect();
            sw.groups.push(GroupCounter {
                id: g.id,
                packets: 3 * ids.len() as u64,
                bytes: 300 * ids.len() as u64,
                buckets: vec![(3, 300); ids.len()],
                bucket_ids: ids,
            });
        }
    }
    let counters = lb.counters(&sw);
    let reg = Registry::default();
    reg.reconciled(true);
    reg.reconciled(true);
    reg.reconciled(false);
    reg.answered(true);
    reg.desired(9);
    reg.bundle(std::time::Duration::from_millis(4));
    reg.probe_targets([("blue".to_string(), ip("10.0.0.6"))]);
    reg.probe_transition("blue", ip("10.0.0.6"), false, "timeout");
    let summary = Summary {
        node: "dpu-1".into(),
        applied_version: 7,
        desired_version: 8,
        have_intent: true,
        controller: Some("https://10.0.0.2:50051".into()),
        services: 2,
        flows: 40,
        groups: 3,
        pending_ports: vec!["p1".into()],
        unhealthy: vec!["blue/10.0.0.6".into()],
        ..Summary::default()
    };
    let sys = SysFacts {
        cpu_percent: 12.5,
        cpus: 8,
        mem_total_bytes: 16 << 30,
        mem_used_bytes: 3 << 30,
        agent_cpu_percent: 0.75,
        agent_rss_bytes: 42 << 20,
    };
    World {
        lb,
        counters,
        registry: reg.snapshot(),
        summary,
        sys,
    }
}

fn scrape(w: &World, switch: bool, datapath: bool) -> String {
    scrape_with(w, switch, datapath, true)
}

fn scrape_with(w: &World, switch: bool, datapath: bool, per_backend: bool) -> String {
    render(&families(&Input {
        summary: &w.summary,
        registry: &w.registry,
        lb: &w.lb,
        counters: switch.then_some(&w.counters),
        datapath: datapath.then_some(DatapathFlows {
            total: 120,
            offloaded: 0,
            audit: crate::observe::offload::Counts {
                nic_matchable: 70,
                slow_path: 49,
                software: 1,
                ..Default::default()
            },
        }),
        sys: &w.sys,
        agent_version: "0.1.0",
        per_backend,
    }))
}

fn has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing {line:?} in\n{text}"
    );
}

#[test]
fn a_full_scrape_reports_every_metric_and_passes_promtool() {
    let w = world();
    let text = scrape(&w, true, true);
    promtool(&text);
    for line in [
        r#"dpu_agent_info{node="dpu-1",version="0.1.0"} 1"#,
        "dpu_intent_applied_version 7",
        "dpu_intent_desired_version 9",
        r#"dpu_controller_connected{endpoint="https://10.0.0.2:50051"} 1"#,
        "dpu_services 2",
        "dpu_openflow_flows 40",
        "dpu_openflow_groups 3",
        "dpu_pending_ports 1",
        "dpu_unhealthy_backends 1",
        r#"dpu_reconciles_total{result="ok"} 2"#,
        r#"dpu_reconciles_total{result="error"} 1"#,
        r#"dpu_updates_total{result="ack"} 1"#,
        r#"dpu_updates_total{result="nack"} 0"#,
        r#"dpu_bundle_duration_seconds_bucket{le="0.0025"} 0"#,
        r#"dpu_bundle_duration_seconds_bucket{le="0.005"} 1"#,
        r#"dpu_bundle_duration_seconds_bucket{le="+Inf"} 1"#,
        "dpu_bundle_duration_seconds_count 1",
        "dpu_bundle_duration_seconds_sum 0.004",
        r#"dpu_service_packets_total{service="web",vpc="blue"} 10"#,
        r#"dpu_service_bytes_total{service="web",vpc="blue"} 1000"#,
        r#"dpu_service_packets_total{service="dns",vpc="blue"} 10"#,
        r#"dpu_service_new_connections_total{service="dns",vpc="blue"} 6"#,
        r#"dpu_probe_healthy{vpc="blue",ip="10.0.0.6"} 0"#,
        r#"dpu_probe_transitions_total{vpc="blue",ip="10.0.0.6",to="healthy"} 0"#,
        r#"dpu_probe_transitions_total{vpc="blue",ip="10.0.0.6",to="unhealthy"} 1"#,
        r#"dpu_datapath_flows{type="all"} 120"#,
        r#"dpu_datapath_flows{type="offloaded"} 0"#,
        r#"dpu_datapath_megaflows{verdict="nic_matchable"} 70"#,
        r#"dpu_datapath_megaflows{verdict="slow_path"} 49"#,
        r#"dpu_datapath_megaflows{verdict="software"} 1"#,
        "dpu_node_cpu_percent 12.5",
        "dpu_node_cpus 8",
        r#"dpu_node_memory_bytes{kind="total"} 17179869184"#,
        r#"dpu_node_memory_bytes{kind="used"} 3221225472"#,
        "dpu_agent_cpu_percent 0.75",
        "dpu_agent_resident_memory_bytes 44040192",
        r#"dpu_metrics_source_up{source="switch"} 1"#,
        r#"dpu_metrics_source_up{source="datapath"} 1"#,
    ] {
        has(&text, line);
    }
}

#[test]
fn backends_carry_their_state_and_bucket_counters() {
    let w = world();
    let text = scrape(&w, true, true);
    let web = |ip: &str, wl: &str| {
        format!(r#"service="web",backend_vpc="blue",backend_ip="{ip}",workload="{wl}""#)
    };
    for (addr, wl, state) in [
        ("10.0.0.5", "web-0", "serving"),
        ("10.0.0.6", "web-1", "unhealthy"),
        ("10.0.0.7", "web-2", "weight_0"),
        ("10.0.0.8", "", "not_ready"),
    ] {
        has(
            &text,
            &format!("dpu_backend_state{{{},state=\"{state}\"}} 1", web(addr, wl)),
        );
    }
    has(
        &text,
        r#"dpu_backend_state{service="web",backend_vpc="gone",backend_ip="10.9.0.1",workload="",state="no_VPC"} 1"#,
    );
    // Only the serving backend has buckets; its counters are the sum of
    // its buckets, and the Service's decisions are the sum over backends.
    let web_view = &w.lb.services["web"];
    let buckets = web_view
        .groups
        .iter()
        .flat_map(|g| g.buckets.backends())
        .filter(|&i| i == 0)
        .count() as u64;
    assert!(buckets > 0);
    has(
        &text,
        &format!(
            "dpu_backend_new_connections_total{{{}}} {}",
            web("10.0.0.5", "web-0"),
            3 * buckets
        ),
    );
    has(
        &text,
        &format!(
            "dpu_backend_bytes_total{{{}}} {}",
            web("10.0.0.5", "web-0"),
            300 * buckets
        ),
    );
    has(
        &text,
        &format!(
            r#"dpu_service_new_connections_total{{service="web",vpc="blue"}} {}"#,
            3 * buckets
        ),
    );
    let backend_series = text
        .lines()
        .filter(|l| l.starts_with("dpu_backend_new_connections_total{service=\"web\""))
        .count();
    assert_eq!(backend_series, 1, "{text}");
    // Both families of the dual-stack Service count, and the awkward
    // workload name is escaped.
    has(
        &text,
        r#"dpu_backend_new_connections_total{service="dns",backend_vpc="blue",backend_ip="10.0.1.5",workload="dns \"a\"\\\n0"} 3"#,
    );
    has(
        &text,
        r#"dpu_backend_new_connections_total{service="dns",backend_vpc="blue",backend_ip="fd00::1:5",workload="dns-0"} 3"#,
    );
}

#[test]
fn unreadable_sources_omit_their_counters() {
    let w = world();
    let text = scrape(&w, false, false);
    promtool(&text);
    for absent in [
        "dpu_service_packets_total",
        "dpu_service_bytes_total",
        "dpu_service_new_connections_total",
        "dpu_backend_new_connections_total",
        "dpu_backend_bytes_total",
        "dpu_datapath_flows",
        "dpu_datapath_megaflows",
    ] {
        assert!(
            !text.lines().any(|l| l.contains(absent)),
            "{absent} in\n{text}"
        );
    }
    has(&text, r#"dpu_metrics_source_up{source="switch"} 0"#);
    has(&text, r#"dpu_metrics_source_up{source="datapath"} 0"#);
    // The intent still says what each backend is.
    assert!(text.contains("dpu_backend_state{"));
}

#[test]
fn an_idle_agent_renders_lint_clean() {
    let w = World {
        lb: LbIndex::default(),
        counters: BTreeMap::new(),
        registry: Snapshot::default(),
        summary: Summary::default(),
        sys: SysFacts::default(),
    };
    let text = scrape(&w, true, false);
    promtool(&text);
    has(&text, r#"dpu_bundle_duration_seconds_bucket{le="+Inf"} 0"#);
    has(&text, r#"dpu_agent_info{node="",version="0.1.0"} 1"#);
}

#[test]
fn probe_records_map_to_gauges_and_counters() {
    let mut snap = Snapshot::default();
    snap.probes.insert(
        ("red".into(), ip("fd00::9")),
        ProbeRecord {
            healthy: true,
            to_healthy: 4,
            to_unhealthy: 5,
            detail: String::new(),
        },
    );
    let text = render(&probe_families(&snap));
    has(&text, r#"dpu_probe_healthy{vpc="red",ip="fd00::9"} 1"#);
    has(
        &text,
        r#"dpu_probe_transitions_total{vpc="red",ip="fd00::9",to="healthy"} 4"#,
    );
    has(
        &text,
        r#"dpu_probe_transitions_total{vpc="red",ip="fd00::9",to="unhealthy"} 5"#,
    );
}

#[test]
fn per_backend_off_drops_only_the_backend_series() {
    let w = world();
    let full = scrape(&w, true, true);
    let lean = scrape_with(&w, true, true, false);
    promtool(&lean);
    assert!(full.contains("dpu_backend_state{"), "{full}");
    assert!(!lean.contains("dpu_backend_"), "{lean}");
    for l in full.lines().filter(|l| l.starts_with("dpu_service_")) {
        has(&lean, l);
    }
}
