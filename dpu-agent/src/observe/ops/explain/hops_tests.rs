//! The hops over the golden case `basic`, with the switch's view made from
//! what the compiler wanted (as a healthy switch holds it) and then damaged.

use super::*;
use crate::compile::pipeline::{ARP_RESPONDER, SERVICE_LB};
use crate::observe::ops::explain::switch::DumpedFlow;
use crate::observe::ops::trace::fixture::{self, Basic};

const ALL_PORTS: [(&str, u32); 4] = [("client", 1), ("web-1", 2), ("web-2", 3), ("web-3", 4)];

/// The switch holding exactly `b.desired` (ArpResponder, ServiceLb, groups).
fn healthy_switch(b: &Basic) -> SwitchView {
    SwitchView {
        flows: b
            .desired
            .flows
            .iter()
            .filter(|(k, _)| k.table == ARP_RESPONDER.id || k.table == SERVICE_LB.id)
            .map(|(k, body)| DumpedFlow {
                table: k.table,
                priority: k.priority,
                cookie: body.cookie.value(3),
                matches: k.matches.to_string(),
                actions: body.actions.to_string(),
            })
            .collect(),
        groups: b
            .desired
            .groups
            .iter()
            .map(|(id, g)| (*id, g.buckets.iter().map(|b| b.id).collect()))
            .collect(),
    }
}

fn report(b: &Basic, name: &str, sw: Result<&SwitchView, &str>) -> Report {
    report_with(b, name, sw, Default::default())
}

fn report_with(
    b: &Basic,
    name: &str,
    sw: Result<&SwitchView, &str>,
    probe_details: std::collections::BTreeMap<String, String>,
) -> Report {
    let summary = Summary {
        ports: b.ports.clone(),
        probe_details,
        ..Summary::default()
    };
    let r = check(&Gathered {
        name,
        node: "dpu-1",
        intent: Some((7, &b.intent)),
        lb: &b.lb,
        summary: &summary,
        installed: Some(&b.desired),
        switch: sw,
    });
    println!("{}", r.render());
    r
}

fn status(r: &Report, hop: &str) -> Status {
    r.hops.iter().find(|h| h.name == hop).unwrap().status
}

#[test]
fn all_fine_says_where_the_service_answers() {
    let b = fixture::basic();
    let sw = healthy_switch(&b);
    let r = report(&b, "web", Ok(&sw));
    assert_eq!(
        r.verdict,
        "OK: web answers on 10.96.0.10:80/tcp, 10.96.0.10:53/udp"
    );
    assert!(r.hops.iter().all(|h| h.status == Status::Ok), "{r:?}");
    assert_eq!(r.hops.iter().map(|h| h.name).collect::<Vec<_>>(), HOPS);
    let text = r.render();
    assert!(
        text.contains("6 backends   ok      3 of 3 serving\n"),
        "{text}"
    );
    assert!(
        text.contains("    backend vpc-a/10.0.1.13 (web-3), weight 2: serving\n"),
        "{text}"
    );
}

#[test]
fn a_service_not_in_the_intent_breaks_the_first_hop_and_skips_the_rest() {
    let b = fixture::basic();
    let sw = healthy_switch(&b);
    let r = report(&b, "nope", Ok(&sw));
    assert_eq!(
        r.verdict,
        "BROKEN at intent: Service nope is not in intent version 7: was it removed, or not sent to this node?"
    );
    assert!(r.hops[1..].iter().all(|h| h.status == Status::Skipped));
    assert_eq!(r.hops.len(), HOPS.len());
}

#[test]
fn an_unhealthy_backend_is_a_warning_and_no_serving_backend_the_break() {
    let b = fixture::basic_with(&ALL_PORTS, &[("vpc-a", "10.0.1.11")]);
    let sw = healthy_switch(&b);
    let r = report(&b, "web", Ok(&sw));
    assert!(r.verdict.starts_with("OK: web answers on"), "{}", r.verdict);
    let h = r.hops.iter().find(|h| h.name == "backends").unwrap();
    assert_eq!(h.status, Status::Warn);
    assert_eq!(h.reason, "2 of 3 serving; 1 unhealthy");
    assert!(h.details.contains(
        &"backend vpc-a/10.0.1.11 (web-1), weight 1: unhealthy: this node's probe failed it"
            .to_string()
    ));

    let all = [
        ("vpc-a", "10.0.1.11"),
        ("vpc-a", "10.0.1.12"),
        ("vpc-a", "10.0.1.13"),
    ];
    let b = fixture::basic_with(&ALL_PORTS, &all);
    let sw = healthy_switch(&b);
    let r = report(&b, "web", Ok(&sw));
    assert_eq!(
        r.verdict,
        "BROKEN at backends: no backend serves (backend 10.0.1.11 (web-1): unhealthy: \
         this node's probe failed it; and 2 more)"
    );
    // No bucket, so no group to check: that is not the break.
    assert_eq!(status(&r, "groups"), Status::Ok);
}

#[test]
fn a_backend_whose_port_is_gone_is_not_ready_and_named() {
    let b = fixture::basic_with(&[("client", 1), ("web-1", 2), ("web-3", 4)], &[]);
    let sw = healthy_switch(&b);
    let r = report(&b, "web", Ok(&sw));
    let h = r.hops.iter().find(|h| h.name == "backends").unwrap();
    assert_eq!(h.status, Status::Warn);
    assert_eq!(h.reason, "2 of 3 serving; 1 not ready");
    assert!(h.details.contains(
        &"backend vpc-a/10.0.1.12 (web-2), weight 1: not ready: port web-2 of workload web-2 is not on the bridge"
            .to_string()
    ), "{:?}", h.details);
}

#[test]
fn a_bucket_missing_on_the_switch_names_its_backend() {
    let b = fixture::basic();
    let mut sw = healthy_switch(&b);
    let web = &b.lb.services["web"];
    let g1 = &web.port(0).unwrap().groups[0];
    let (gone, _) = g1
        .buckets
        .iter()
        .find(|&(_, bi)| web.backend(bi).unwrap().ip.to_string() == "10.0.1.12")
        .unwrap();
    sw.groups.get_mut(&g1.id).unwrap().retain(|&id| id != gone);
    let r = report(&b, "web", Ok(&sw));
    assert_eq!(
        r.verdict,
        format!(
            "BROKEN at groups: backend 10.0.1.12 (web-2): bucket {gone} missing on the switch (group {}, port {})",
            g1.id,
            web.port(0).unwrap().name
        )
    );

    // A whole group gone.
    let mut sw = healthy_switch(&b);
    sw.groups.remove(&g1.id);
    let r = report(&b, "web", Ok(&sw));
    assert!(
        r.verdict.contains(&format!("group {} (port", g1.id)),
        "{}",
        r.verdict
    );
    assert!(r.verdict.ends_with("is not on the switch"), "{}", r.verdict);
}

#[test]
fn arp_and_service_lb_are_checked_on_the_switch() {
    let b = fixture::basic();
    let mut sw = healthy_switch(&b);
    sw.flows
        .retain(|f| !(f.table == ARP_RESPONDER.id && f.has("arp_tpa=10.96.0.10")));
    let r = report(&b, "web", Ok(&sw));
    assert_eq!(
        r.verdict,
        "BROKEN at arp: no flow in ArpResponder (table 20) on the switch answers 10.96.0.10 \
         (the agent believes it installed it: the switch lost it)"
    );

    let mut sw = healthy_switch(&b);
    sw.flows
        .retain(|f| !(f.table == SERVICE_LB.id && f.has("udp") && f.has("tp_dst=53")));
    let r = report(&b, "web", Ok(&sw));
    assert!(
        r.verdict
            .starts_with("BROKEN at servicelb: ServiceLb (table 40) on the switch has no flow")
            && r.verdict.ends_with("for 10.96.0.10:53/udp"),
        "{}",
        r.verdict
    );

    let r = report(&b, "web", Err("connection refused"));
    assert_eq!(
        r.verdict,
        "BROKEN at arp: cannot read the switch: connection refused"
    );
    assert_eq!(status(&r, "backends"), Status::Ok);
}

#[test]
fn an_unhealthy_backend_names_what_its_probe_saw() {
    let b = fixture::basic_with(&ALL_PORTS, &[("vpc-a", "10.0.1.11")]);
    let sw = healthy_switch(&b);
    let details = [("vpc-a/10.0.1.11".to_string(), "HTTP 503".to_string())].into();
    let r = report_with(&b, "web", Ok(&sw), details);
    let h = r.hops.iter().find(|h| h.name == "backends").unwrap();
    assert!(
        h.details.contains(
            &"backend vpc-a/10.0.1.11 (web-1), weight 1: unhealthy: this node's probe failed it (HTTP 503)"
                .to_string()
        ),
        "{:?}",
        h.details
    );
}
