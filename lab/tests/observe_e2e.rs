//! Observability with the real controller and agent, a private OVS and real
//! traffic: the metrics endpoint (checked by `promtool` and against
//! `ovs-ofctl`), the operator commands (`show`, `trace`, `explain`) and the
//! controller's fleet table. Needs root, OVS and promtool; a missing
//! prerequisite fails the test.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dpu_lab::fixture::{agent_endpoints, Lab};
use dpu_lab::observe::{agent_cli, agent_ok, scrape, value};
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, web_service, VIP};

/// HTTP GET /healthz on 8080 every second; 2 failures make a backend unhealthy.
const PROBE: &str = "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: NetworkProbe\nmetadata: {name: web-http}\nspec: {service: web, type: HTTP, port: 8080, httpPath: /healthz, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2, successThreshold: 1}\n";

fn started(tag: &str) -> Result<(Lab, SocketAddr, PathBuf)> {
    let mut lab = backends_lab(tag, 2, &format!("{}{PROBE}", web_service("")))?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    let (metrics, ops) = agent_endpoints(&lab.path("agent.toml"))?;
    Ok((lab, metrics, ops))
}

/// `promtool check metrics` on `text`: its complaints, empty when clean.
fn promtool(text: &str) -> Result<String> {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus; lab/install-deps installs it)")?;
    c.stdin.take().expect("stdin").write_all(text.as_bytes())?;
    let out = c.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool check metrics failed: {said}");
    }
    Ok(said.trim().to_string())
}

fn must(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    value(text, name, with).unwrap_or_else(|| panic!("no {name} {with:?} in:\n{text}"))
}

/// Packets the switch counted in the select groups (`ovs-ofctl dump-group-stats`).
fn group_packets(lab: &Lab) -> Result<u64> {
    let out = lab
        .ovs
        .ofctl(&["dump-group-stats", &lab.ovs.mgmt(&lab.bridge)])?;
    let mut sum = 0;
    for l in out.lines().filter(|l| l.contains("group_id=")) {
        let field = l
            .split(',')
            .find_map(|f| f.trim().strip_prefix("packet_count="))
            .ok_or_else(|| anyhow!("no packet_count in {l}"))?;
        sum += field.parse::<u64>()?;
    }
    Ok(sum)
}

#[test]
fn metrics_pass_promtool_and_move_under_traffic() -> Result<()> {
    let (lab, metrics, _) = started("obsm")?;
    let before = scrape(metrics)?;
    let lint = promtool(&before)?;
    assert!(lint.is_empty(), "promtool: {lint}\n{before}");
    let web = [("service", "web")];
    let conns0 = value(&before, "dpu_service_new_connections_total", &web).unwrap_or(0.0);
    let pkts0 = value(&before, "dpu_service_packets_total", &web).unwrap_or(0.0);

    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_eq!(tcp.failed, 0, "{tcp:?}");
    let udp = lab.client("client", &format!("{VIP}:53"), "udp", 20)?;
    assert_eq!(udp.failed, 0, "{udp:?}");

    // Every connection made one load-balancing decision (a retransmitted SYN
    // would make two). Most first packets hit a datapath flow that an earlier
    // connection made (the masked source-port hash), and the switch credits
    // those to the group when its revalidators fold the datapath's counters
    // in, about every 0.5 s: so within a few seconds.
    let mut after = scrape(metrics)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while must(&after, "dpu_service_new_connections_total", &web) - conns0 < 60.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
        after = scrape(metrics)?;
    }
    assert!(promtool(&after)?.is_empty());
    let conns = must(&after, "dpu_service_new_connections_total", &web) - conns0;
    let pkts = must(&after, "dpu_service_packets_total", &web) - pkts0;
    assert!(conns >= 60.0, "new connections moved by {conns}:\n{after}");
    assert!(pkts >= 60.0, "packets moved by {pkts}");
    assert!(must(&after, "dpu_service_bytes_total", &web) > 0.0);
    // The per-backend split matches what the clients saw.
    for (backend, ip) in [("web-1", "10.0.1.11"), ("web-2", "10.0.1.12")] {
        let seen = (tcp.count_for(backend) + udp.count_for(backend)) as f64;
        let counted = must(
            &after,
            "dpu_backend_new_connections_total",
            &[("service", "web"), ("backend_ip", ip)],
        );
        assert!(
            counted >= seen,
            "{backend}: {counted} decisions counted, {seen} answers seen"
        );
    }
    // The same number as the switch's own group counters, read by ovs-ofctl.
    let by_ofctl = group_packets(&lab)? as f64;
    let by_agent = must(&scrape(metrics)?, "dpu_service_new_connections_total", &web);
    assert_eq!(by_agent, by_ofctl, "agent vs ovs-ofctl dump-group-stats");

    // Datapath flows exist; none is offloaded on the userspace datapath.
    assert!(must(&after, "dpu_datapath_flows", &[("type", "all")]) > 0.0);
    assert_eq!(
        must(&after, "dpu_datapath_flows", &[("type", "offloaded")]),
        0.0
    );
    // The offload audit of the same flows: the traffic's megaflows are
    // NIC-matchable, and none would stay in software.
    assert!(
        must(
            &after,
            "dpu_datapath_megaflows",
            &[("verdict", "nic_matchable")]
        ) > 0.0
    );
    assert_eq!(
        must(&after, "dpu_datapath_megaflows", &[("verdict", "software")]),
        0.0
    );
    // Versions, reconciles, bundles, probes, the DPU's facts.
    let v = lab.intent_version()? as f64;
    assert_eq!(must(&after, "dpu_intent_applied_version", &[]), v);
    assert_eq!(must(&after, "dpu_intent_desired_version", &[]), v);
    assert!(must(&after, "dpu_updates_total", &[("result", "ack")]) >= 1.0);
    assert_eq!(
        must(&after, "dpu_updates_total", &[("result", "nack")]),
        0.0
    );
    assert!(must(&after, "dpu_bundle_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(must(&after, "dpu_controller_connected", &[]), 1.0);
    assert_eq!(must(&after, "dpu_services", &[]), 1.0);
    assert_eq!(
        must(&after, "dpu_probe_healthy", &[("ip", "10.0.1.12")]),
        1.0
    );
    assert!(must(&after, "dpu_node_memory_bytes", &[("kind", "total")]) > 0.0);
    assert!(must(&after, "dpu_agent_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(
        must(&after, "dpu_metrics_source_up", &[("source", "switch")]),
        1.0
    );
    eprintln!("metrics: {conns} new connections, {pkts} packets counted for 60 requests; agent == ovs-ofctl ({by_ofctl})");
    Ok(())
}

/// The representor port of host `name` (`external_ids:iface-id=<name>`).
fn port_of(lab: &Lab, name: &str) -> Result<String> {
    let out = lab.ovs.vsctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Interface",
        &format!("external_ids:iface-id={name}"),
    ])?;
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no interface with iface-id={name}"))
}

#[test]
fn operator_tools_show_trace_and_explain_what_breaks() -> Result<()> {
    let (mut lab, metrics, ops) = started("obso")?;
    let svc = agent_ok(&ops, &["show", "service", "web"])?;
    for want in [VIP, "10.0.1.11", "10.0.1.12", "web-1", "web-2", "serving"] {
        assert!(svc.contains(want), "show service lacks {want}:\n{svc}");
    }
    let pipeline = agent_ok(&ops, &["show", "pipeline", "--service", "web"])?;
    assert!(pipeline.contains("ServiceLb"), "{pipeline}");
    let intent = agent_ok(&ops, &["show", "intent"])?;
    assert!(
        intent.contains("web") && intent.contains("vpc-a"),
        "{intent}"
    );

    let trace = agent_ok(
        &ops,
        &[
            "trace",
            "--src",
            "10.0.1.2",
            "--dst",
            VIP,
            "--proto",
            "tcp",
            "--dport",
            "80",
            "--in-port",
            "client",
        ],
    )?;
    let mut at = 0;
    for table in [
        "Classify",
        "SpoofGuard",
        "Conntrack",
        "ServiceLb",
        "EndpointDnat",
        "L3Forward",
    ] {
        let found = trace[at..]
            .find(table)
            .unwrap_or_else(|| panic!("trace lacks {table} after byte {at}:\n{trace}"));
        at += found;
    }
    assert!(
        trace.contains("10.0.1.11") || trace.contains("10.0.1.12"),
        "trace names no backend:\n{trace}"
    );
    let fine = agent_ok(&ops, &["explain", "web"])?;
    assert!(fine.contains("OK"), "{fine}");

    // web-2 dies: its probe fails, and explain names it unhealthy.
    lab.hosts
        .get_mut("web-2")
        .and_then(|h| h.echo.as_mut())
        .expect("web-2 runs an echo server")
        .kill9()?;
    let mut last = String::new();
    wait_until(
        "explain to call web-2 unhealthy",
        Duration::from_secs(15),
        || {
            last = agent_cli(&ops, &["explain", "web"])
                .map(|r| r.1 + &r.2)
                .unwrap_or_default();
            last.lines()
                .any(|l| l.contains("10.0.1.12") && l.contains("unhealthy") && l.contains("last:"))
        },
    )
    .map_err(|e| anyhow!("{e}\nlast explain:\n{last}"))?;
    let m = scrape(metrics)?;
    assert_eq!(must(&m, "dpu_probe_healthy", &[("ip", "10.0.1.12")]), 0.0);
    assert!(
        must(
            &m,
            "dpu_probe_transitions_total",
            &[("ip", "10.0.1.12"), ("to", "unhealthy")]
        ) >= 1.0
    );

    // web-1's port is removed from the bridge: explain says so, and with no
    // backend left serving, where the Service breaks.
    let port = port_of(&lab, "web-1")?;
    lab.ovs.vsctl(&["del-port", &lab.bridge, &port])?;
    wait_until(
        "explain to say web has no serving backend",
        Duration::from_secs(15),
        || {
            last = agent_cli(&ops, &["explain", "web"])
                .map(|r| r.1 + &r.2)
                .unwrap_or_default();
            last.contains("BROKEN")
                && last
                    .lines()
                    .any(|l| l.contains("10.0.1.11") && l.contains("not ready"))
        },
    )
    .map_err(|e| anyhow!("{e}\nlast explain:\n{last}"))?;
    eprintln!("explain with web-1 removed and web-2 dead:\n{last}");
    Ok(())
}

#[test]
fn explain_finds_a_bucket_removed_behind_the_agents_back() -> Result<()> {
    let (lab, _, ops) = started("obsb")?;
    // Someone removes web-2's bucket with ovs-ofctl; the agent still believes
    // it is there. explain reads the switch itself.
    let groups = lab.groups()?;
    let line = groups
        .iter()
        .find(|l| l.contains("0xa00010c->reg3") && l.contains("group_id="))
        .ok_or_else(|| anyhow!("no group with web-2's bucket: {groups:#?}"))?;
    let gid = line
        .split(',')
        .find_map(|f| f.trim().strip_prefix("group_id="))
        .ok_or_else(|| anyhow!("no group_id in {line}"))?;
    let bucket = line
        .split("bucket_id:")
        .skip(1)
        .find(|b| b.contains("0xa00010c->reg3"))
        .and_then(|b| b.split(',').next())
        .ok_or_else(|| anyhow!("no bucket id for web-2 in {line}"))?;
    lab.ovs.ofctl(&[
        "remove-buckets",
        &lab.ovs.mgmt(&lab.bridge),
        &format!("group_id={gid},command_bucket_id={bucket}"),
    ])?;
    let (_, out, err) = agent_cli(&ops, &["explain", "web"])?;
    let said = out + &err;
    assert!(
        said.contains("BROKEN") || said.contains("missing"),
        "{said}"
    );
    assert!(
        said.lines()
            .any(|l| l.contains("10.0.1.12") && l.contains("missing")),
        "explain does not name web-2's missing bucket:\n{said}"
    );
    Ok(())
}

#[test]
fn the_fleet_table_shows_a_disconnected_node() -> Result<()> {
    let (mut lab, _, _) = started("obsf")?;
    let state = lab.ctl_state().display().to_string();
    let table = || dpu_lab::fixture::controller_cmd(&["status", "--state-dir", &state]);
    let mut last = String::new();
    wait_until(
        "the fleet table to show the node's facts",
        Duration::from_secs(20),
        || {
            last = table().unwrap_or_default();
            // NODE, "yes", "(since", time, APPLIED, SERVICES: the agent's Status
            // after it applied the one Service.
            last.lines().any(|l| {
                l.starts_with("dpu-1")
                    && l.contains("yes")
                    && l.contains('%')
                    && l.split_whitespace().nth(5) == Some("1")
            })
        },
    )
    .map_err(|e| anyhow!("{e}\n{last}"))?;
    for col in [
        "NODE",
        "CONNECTED",
        "APPLIED",
        "SERVICES",
        "UNHEALTHY",
        "CPU",
        "MEM",
        "LAST ERROR",
    ] {
        assert!(last.contains(col), "no {col} column:\n{last}");
    }
    eprintln!("fleet table, connected:\n{last}");
    // The Services of a new version reach the Status within LB_REFRESH (2 s).
    let drill = || {
        dpu_lab::fixture::controller_cmd(&[
            "status",
            "--state-dir",
            &state,
            "--node",
            "dpu-1",
            "--service",
            "web",
        ])
    };
    wait_until(
        "the node's Status to list web",
        Duration::from_secs(10),
        || drill().is_ok(),
    )?;
    lab.agent.as_mut().expect("agent").kill9()?;
    wait_until(
        "the fleet table to show the node disconnected",
        Duration::from_secs(20),
        || {
            last = table().unwrap_or_default();
            last.lines()
                .any(|l| l.starts_with("dpu-1") && l.contains(" no"))
        },
    )
    .map_err(|e| anyhow!("{e}\n{last}"))?;
    eprintln!("fleet table, disconnected:\n{last}");
    // After the disconnect, the last known Status still answers.
    let drill = drill()?;
    assert!(
        drill.contains(VIP) && drill.contains("10.0.1.11"),
        "{drill}"
    );
    Ok(())
}
