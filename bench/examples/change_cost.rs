//! Where one endpoint change's time goes in the controller's intent task, at
//! `N` nodes and `S` Services (default 1,000 × 10,000, the fleet bench's
//! intent): each stage timed over a few rounds, the median printed.
//!
//! `cargo run --release -p dpu-bench --example change_cost [N S]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dpu_bench::fleet::manifests;
use dpu_controller::manifest::parse_file;
use dpu_controller::merge::merge;
use dpu_controller::reload::Manifests;
use dpu_controller::session::Published;
use dpu_controller::store::intent_digest;
use dpu_controller::view::changed_keys;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N and S are numbers"))
        .collect();
    let (nodes, services) = (
        *args.first().unwrap_or(&1000),
        *args.get(1).unwrap_or(&10_000),
    );
    let before = parse_file("a.yaml", &manifests(nodes, services, None)).expect("parses");
    let after = parse_file("a.yaml", &manifests(nodes, services, Some((0, 3)))).expect("parses");
    let first = Manifests::resolve_since(before.clone(), None).expect("resolves");
    let reported = BTreeMap::new();
    let base = merge(&first.docs, &first.intent, &reported, None).intent;
    let mut stages: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for _ in 0..5 {
        let mut time = |name, f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            stages.entry(name).or_default().push(t.elapsed());
        };
        let mut docs = Vec::new();
        time("1 docs (clone of every object)", &mut || {
            docs = after.clone()
        });
        let mut m = None;
        time("2 resolve_since (everything)", &mut || {
            m = Some(Manifests::resolve_since(docs.clone(), Some(&first.intent)).expect("resolves"))
        });
        let mut again = None;
        time("2 resolve_after (reuse)", &mut || {
            again = Some(Manifests::resolve_after(docs.clone(), &first).expect("resolves"))
        });
        let m = m.expect("resolved");
        assert_eq!(
            again.expect("resolved").intent,
            m.intent,
            "reuse resolves alike"
        );
        let mut merged = None;
        time("3 merge", &mut || {
            merged = Some(merge(&m.docs, &m.intent, &reported, None))
        });
        let merged = merged.expect("merged").intent;
        time("4 intent_digest", &mut || {
            intent_digest(&merged);
        });
        time("5 changed_keys", &mut || {
            changed_keys(&base, &merged);
        });
        time("6 publish (scopes)", &mut || {
            let p = Published::new(2, merged.clone(), "x/rev".into()).after(1, base.clone());
            p.scope("dpu-0");
        });
    }
    println!("{nodes} nodes, {services} Services, {} objects", base.len());
    for (name, v) in stages {
        println!("{name:34} {:>8.1} ms", median(v).as_secs_f64() * 1e3);
    }
}
