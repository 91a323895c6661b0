//! Golden renderings of the drill-in views, from the fleet of `statuscmd`'s tests.

use crate::status::StatusDoc;
use crate::statuscmd::tests::{fleet, NOW};
use crate::statuscmd::{render, Query};

fn show(doc: &StatusDoc, node: &str, service: Option<&str>) -> String {
    let q = Query {
        node: Some(node.into()),
        service: service.map(String::from),
        json: false,
    };
    render(doc, true, &q, NOW).unwrap()
}

const NODE: &str = "\
node dpu-1
connected:       yes (since 2026-11-26T04:30:00Z), peer 10.0.0.1:40000, agent 0.1.0
versions:        applied 7, sent 8; the agent reports applied 7, desired 8
last error:      -
last status:     2026-11-26T04:59:48Z (12s ago)
agent error:     -
reconciles:      42
NACKs:           1
DPU CPU:         12.4% of 8 CPUs
DPU memory:      3.0G used of 16G
agent:           CPU 1.5% of one CPU, RSS 45M
datapath flows:  1200 total, 800 offloaded
counters:        new connections 1500, packets 90000, bytes 12M
OpenFlow:        120 flows, 4 groups
unhealthy backends: 1
  blue 10.1.1.11
services: 3 (2 listed, 1 omitted: the agent lists at most 256, those with a backend not serving first, then the busiest)
SERVICE  VIPS                 SERVING  NEW CONNS  BYTES
web      10.96.0.10,fd00::10  2/3      1500       1.4M
db       10.96.0.20           1/1      0          0B
";

#[test]
fn node_view_shows_facts_counters_and_services() {
    assert_eq!(show(&fleet(), "dpu-1", None), NODE);
}

#[test]
fn node_view_of_a_disconnected_node_says_its_values_are_last_known() {
    let t = show(&fleet(), "dpu-2", None);
    assert!(t.starts_with("node dpu-2\nconnected:       no (since 2026-11-26T04:10:00Z)\nversions:        applied 6, sent 6; the agent reports applied 6, desired 6\n"), "{t}");
    assert!(t.contains("\nlast status:     2026-11-26T04:09:55Z (50m 5s ago); stale: last known values, the node is disconnected\nagent error:     reconcile: the bridge is gone\n"), "{t}");
    assert!(
        t.contains("\nunhealthy backends: 0\nservices: 2\nSERVICE "),
        "{t}"
    );
}

#[test]
fn node_view_says_a_status_was_refused() {
    let mut doc = fleet();
    let why = "Status.facts.cpu_percent: NaN is not a finite, non-negative percentage";
    doc.nodes.get_mut("dpu-1").unwrap().refused_status = Some(why.into());
    let t = show(&doc, "dpu-1", None);
    assert!(
        t.contains(&format!(
            "\nrefused Status:  {why} (the values below are older)\nlast status:  "
        )),
        "{t}"
    );
    let table = render(&doc, true, &Query::default(), NOW).unwrap();
    assert!(
        table.contains(&format!("  2              {why}\n")),
        "{table}"
    );
}

#[test]
fn node_view_before_any_status_shows_the_nack() {
    assert_eq!(
        show(&fleet(), "dpu-3", None),
        "\
node dpu-3
connected:    yes (since 2026-11-26T04:58:00Z)
versions:     applied 3, sent 8
last error:   -
last NACK:    version 8 at 2026-11-26T04:58:01Z: Vpc/a: spec.vni: bad
last status:  none yet
"
    );
}

const SERVICE: &str = "\
service web on node dpu-1
status of:  2026-11-26T04:59:48Z (12s ago)
VIPs:       10.96.0.10,fd00::10
backends:   2 of 3 serving
counters:   new connections 1500, packets 80000, bytes 1.4M
VPC   IP         WORKLOAD  WEIGHT  STATE      NEW CONNS  BYTES
blue  10.1.1.11  web-1     1       unhealthy  0          0B
blue  10.1.1.10  web-2     1       serving    700        684K
blue  10.1.2.10  -         1       serving    800        781K
";

#[test]
fn service_view_shows_the_backends() {
    assert_eq!(show(&fleet(), "dpu-1", Some("web")), SERVICE);
}

#[test]
fn service_view_says_when_backends_were_left_out() {
    let mut doc = fleet();
    let a = doc
        .nodes
        .get_mut("dpu-1")
        .unwrap()
        .agent_status
        .as_mut()
        .unwrap();
    a.service_status[0].backends = 100;
    let t = show(&doc, "dpu-1", Some("web"));
    assert!(
        t.ends_with(
            "\n(3 of 100 backends listed: the agent lists at most 64, those not serving first)\n"
        ),
        "{t}"
    );
    let t = show(&doc, "dpu-2", Some("db"));
    assert!(t.starts_with("service db on node dpu-2\nstatus of:  2026-11-26T04:09:55Z (50m 5s ago); stale: last known values, the node is disconnected\n"), "{t}");
}
