//! What one endpoint change costs on the agent's update path, stage by stage.
//!
//! `cargo run -p dpu-agent --release --example update_cost -- [N] [--baseline]`
//!
//! Builds an intent of N Services (default 10000) × 10 backends (1 VPC, one /8
//! Subnet, N workloads spread over this node and two other DPUs, ports TCP/80 and
//! for every other Service UDP/53), applies it as a snapshot, then times
//! incremental Updates that each change one backend of one Service, through the
//! agent's update path (`applied::Applied::handle_update`) against a switch that
//! accepts every bundle at once (the OpenFlow apply itself is not measured).
//! `--baseline` times the whole-intent path the agent used before (clone and
//! validate the intent, reallocate, compile everything, diff everything, write
//! the whole snapshot) for comparison.
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[path = "common/intent.rs"]
mod intent;

use intent::{build, service, wl_ip};

use dpu_agent::compile::{compile, NodeFacts};
use dpu_agent::reconcile::backend::testkit::NullSwitch;
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::alloc::Allocations;
use dpu_agent::state::store::{Persisted, Store};
use dpu_agent::state::update::{next_intent, snapshot_of};
use dpu_model::*;
use dpu_proto::v1 as pb;
use prost::Message;

/// The stages of one update both paths report, in order.
const STAGES: [&str; 9] = [
    "decode",
    "next_intent",
    "alloc",
    "compile",
    "plan+apply",
    "persist",
    "probe_plan",
    "status",
    "total",
];

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    if args.iter().any(|a| a == "--baseline") {
        baseline(n, 20);
    } else {
        incremental(n, 500);
    }
}

fn one_change(s: usize, workloads: usize, round: usize, version: u64) -> Vec<u8> {
    pb::Update {
        version: version + 1,
        base_version: version,
        snapshot: false,
        nonce: String::new(),
        upserts: vec![object_to_proto(&Object::Service(service(
            s,
            workloads,
            round + 1,
        )))],
        deletes: vec![],
        store_id: String::new(),
    }
    .encode_to_vec()
}

fn report(names: &[&str], t: &mut [Vec<Duration>]) {
    for (k, name) in names.iter().enumerate() {
        println!(
            "{name:>12}: p50 {:8.3} ms  p99 {:8.3} ms  max {:8.3} ms",
            pct(&mut t[k], 0.5),
            pct(&mut t[k], 0.99),
            pct(&mut t[k], 1.0)
        );
    }
}

fn incremental(n: usize, rounds: usize) {
    use dpu_agent::state::applied::Applied;
    let (intent, facts) = build(n);
    let mut facts = dpu_agent::state::applied::Facts::new(facts);
    let workloads = intent.workloads.len();
    let snap = snapshot_of(&intent, 1, "");
    drop(intent);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut rec = rt.block_on(async { Reconciler::start(NullSwitch).await.ok().unwrap() });
    let mut applied = Applied::default();
    let t = Instant::now();
    let h =
        rt.block_on(applied.handle_update("dpu-1", &store, &mut rec, &[], &facts, snap.clone()));
    assert!(h.changed.is_some(), "{:?}", h.msg);
    println!(
        "N={n} workloads={workloads} flows={} groups={} (snapshot applied in {:.0} ms)",
        applied.compiler.desired().flows.len(),
        applied.compiler.desired().groups.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    observe_cost(&applied, &facts);
    // One Service in a hundred has a NetworkProbe.
    let probed: std::collections::BTreeSet<String> =
        (0..n / 100).map(|s| format!("svc{:05}", s * 100)).collect();
    let names = STAGES;
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut ops = 0;
    for r in 0..rounds {
        let bytes = one_change((r * 7919) % n, workloads, r, applied.version);
        let t0 = Instant::now();
        let upd = pb::Update::decode(bytes.as_slice()).unwrap();
        let t1 = Instant::now();
        let h =
            rt.block_on(applied.handle_update("dpu-1", &store, &mut rec, &[], &facts, upd.clone()));
        let t2 = Instant::now();
        let changed = h.changed.expect("applied");
        // The agent replans probes only when the change touches what the plan
        // reads (agent.rs, `Probes::carry_plan`).
        let replan = changed
            .iter()
            .any(|k| k.kind != Kind::Service || probed.contains(&k.name));
        if replan {
            std::hint::black_box(dpu_agent::probe::plan(
                &applied.intent,
                &applied.alloc,
                "dpu-1",
            ));
        }
        let t3 = Instant::now();
        std::hint::black_box(applied.pending_ports(&facts));
        let t4 = Instant::now();
        if applied.compaction_due() {
            applied.compact(&store);
        }
        ops += h.stats.ops;
        let x = h.timings;
        let stages = [
            t1 - t0,
            x.next_intent,
            x.alloc,
            x.compile,
            x.reconcile,
            x.persist,
            t3 - t2,
            t4 - t3,
            t4 - t0,
        ];
        for (k, d) in stages.into_iter().enumerate() {
            times[k].push(d);
        }
    }
    println!(
        "{rounds} one-endpoint updates, {:.1} bundle ops each",
        ops as f64 / rounds as f64
    );
    report(&names, &mut times);

    // Not the endpoint path, for the record: a backend's health flips (a
    // resync: the base and the Services with that backend are recompiled).
    let mut flips = vec![Vec::new()];
    for r in 0..20 {
        let ip = IpAddr::V4(wl_ip(r * 31 % workloads));
        let k = ("vpc-a".to_string(), ip);
        if !facts.edit().unhealthy.remove(&k) {
            facts.edit().unhealthy.insert(k);
        }
        let t = Instant::now();
        rt.block_on(applied.resync(&mut rec, &[], &facts)).unwrap();
        flips[0].push(t.elapsed());
    }
    report(&["health flip"], &mut flips);
}

fn baseline(n: usize, rounds: usize) {
    let (intent, facts) = build(n);
    let workloads = intent.workloads.len();
    let snap = snapshot_of(&intent, 1, "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut cur = next_intent(&Intent::default(), 0, &snap, "dpu-1").unwrap();
    let mut alloc = Allocations::default().update(&cur).unwrap();
    let mut rec = rt.block_on(async { Reconciler::start(NullSwitch).await.ok().unwrap() });
    let c = compile(&cur, &alloc, &facts);
    rt.block_on(rec.apply(&c.desired)).unwrap();
    println!(
        "N={n} workloads={workloads} flows={} groups={}",
        c.desired.flows.len(),
        c.desired.groups.len()
    );
    let names = STAGES;
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut version = 1;
    for r in 0..rounds {
        let bytes = one_change((r * 7919) % n, workloads, r, version);
        let t0 = Instant::now();
        let upd = pb::Update::decode(bytes.as_slice()).unwrap();
        let t1 = Instant::now();
        let next = next_intent(&cur, version, &upd, "dpu-1").unwrap();
        let t2 = Instant::now();
        let a = alloc.update(&next).unwrap();
        let t3 = Instant::now();
        let c = compile(&next, &a, &facts);
        let t4 = Instant::now();
        let stats = rt.block_on(rec.apply(&c.desired)).unwrap();
        let t5 = Instant::now();
        store
            .save(&Persisted {
                snapshot: snapshot_of(&next, upd.version, ""),
                alloc: a.clone(),
            })
            .unwrap();
        let t6 = Instant::now();
        let plan = dpu_agent::probe::plan(&next, &a, "dpu-1");
        let t7 = Instant::now();
        let pending = next
            .workloads
            .values()
            .filter(|w| w.node == facts.node && !facts.ports.contains_key(&w.port))
            .count();
        let t8 = Instant::now();
        std::hint::black_box((plan, pending, stats));
        cur = next;
        alloc = a;
        version = upd.version;
        for (k, d) in [
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3,
            t5 - t4,
            t6 - t5,
            t7 - t6,
            t8 - t7,
            t8 - t0,
        ]
        .into_iter()
        .enumerate()
        {
            t[k].push(d);
        }
    }
    for (k, name) in names.iter().enumerate() {
        println!(
            "{name:>12}: p50 {:8.3} ms  p99 {:8.3} ms",
            pct(&mut t[k], 0.5),
            pct(&mut t[k], 0.99)
        );
    }
}

/// What observing N Services costs: the LB index the agent loop builds once
/// per state, and one scrape's rendering with a counter on every bucket.
fn observe_cost(applied: &dpu_agent::state::applied::Applied, facts: &NodeFacts) {
    use dpu_agent::observe::{
        lb_index, metrics, registry, switch_stats, sysfacts, LbIndex, Summary,
    };
    let t = Instant::now();
    let lb = LbIndex::build(&lb_index::Inputs {
        version: applied.version,
        intent: &applied.intent,
        alloc: &applied.alloc,
        ready: applied.compiler.readiness(),
        unhealthy: &facts.unhealthy,
        installed: Some(applied.compiler.desired()),
    });
    let built = t.elapsed();
    let sw = switch_stats::SwitchCounters {
        flows: Vec::new(),
        groups: applied
            .compiler
            .desired()
            .groups
            .values()
            .map(|g| switch_stats::GroupCounter {
                id: g.id,
                packets: g.buckets.len() as u64,
                bytes: 100 * g.buckets.len() as u64,
                bucket_ids: g.buckets.iter().map(|b| b.id).collect(),
                buckets: g.buckets.iter().map(|_| (1, 100)).collect(),
            })
            .collect(),
    };
    let t = Instant::now();
    let counters = lb.counters(&sw);
    let joined = t.elapsed();
    let t = Instant::now();
    let text = metrics::render(&metrics::families(&metrics::Input {
        summary: &Summary::default(),
        registry: &registry::Snapshot::default(),
        lb: &lb,
        counters: Some(&counters),
        datapath: None,
        sys: &sysfacts::SysFacts::default(),
        agent_version: "bench",
        per_backend: true,
    }));
    let rendered = t.elapsed();
    println!(
        "observe: LB index {:.1} ms, counters joined {:.1} ms, /metrics rendered {:.1} ms ({} lines, {:.1} MiB)",
        built.as_secs_f64() * 1e3,
        joined.as_secs_f64() * 1e3,
        rendered.as_secs_f64() * 1e3,
        text.lines().count(),
        text.len() as f64 / (1 << 20) as f64
    );
}
