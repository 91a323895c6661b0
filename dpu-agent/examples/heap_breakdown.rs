//! Which of the agent's structures hold its memory, by a counting allocator.
//!
//! `cargo run -p dpu-agent --release --example heap_breakdown -- [N]`
//!
//! Applies a snapshot of N Services (default 10000) × 10 backends (the intent
//! of `update_cost`) through the agent's update path, then measures each
//! structure it keeps: the intent and its index by the bytes a deep copy
//! allocates, and the flow state by the bytes freed when each piece goes
//! (flows and groups are shared between the pieces, so they count with the
//! merged state and the set of distinct action lists, dropped last).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "common/intent.rs"]
mod intent;

use dpu_agent::compile::incremental::Piece;
use dpu_agent::observe::{lb_index, LbIndex};
use dpu_agent::reconcile::backend::testkit::NullSwitch;
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::applied::{Applied, Facts};
use dpu_agent::state::store::Store;
use dpu_agent::state::update::snapshot_of;
use intent::build;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// A global allocator is unsafe by contract; this one only counts and forwards.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The bytes a deep copy of `x` allocates.
fn deep<T: Clone>(x: &T) -> usize {
    let before = live();
    let copy = x.clone();
    let size = live() - before;
    drop(copy);
    size
}

/// The bytes a copy of `i` allocates with its Services and workloads copied
/// too (a clone of the intent shares them).
fn deep_intent(i: &dpu_model::Intent) -> usize {
    use std::sync::Arc;
    let before = live();
    let copy = dpu_model::Intent {
        workloads: i
            .workloads
            .iter()
            .map(|(k, w)| (k.clone(), Arc::new(dpu_model::Workload::clone(w))))
            .collect(),
        services: i
            .services
            .iter()
            .map(|(k, s)| (k.clone(), Arc::new(dpu_model::Service::clone(s))))
            .collect(),
        vpcs: i.vpcs.clone(),
        subnets: i.subnets.clone(),
        probes: i.probes.clone(),
        nodes: i.nodes.clone(),
    };
    let size = live() - before;
    drop(copy);
    size
}

fn mib(b: usize) -> String {
    format!("{:8.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let (intent, facts) = build(n);
    let facts = Facts::new(facts);
    let snap = snapshot_of(&intent, 1, "");
    drop(intent);
    // The node facts and the runtime, without the snapshot (dropped below).
    let base = live() - deep(&snap);
    let mut rec = rt.block_on(async { Reconciler::start(NullSwitch).await.ok().unwrap() });
    let mut applied = Applied::default();
    let h =
        rt.block_on(applied.handle_update("dpu-1", &store, &mut rec, &[], &facts, snap.clone()));
    assert!(h.changed.is_some(), "{:?}", h.msg);
    drop(snap);
    // What the agent keeps after the snapshot: Applied and the reconciler.
    let kept = live() - base;

    let desired = applied.compiler.desired();
    let (flows, groups) = (desired.flows.len(), desired.groups.len());
    let intent_b = deep_intent(&applied.intent);
    let index_b = deep(&applied.index);
    let alloc_b = deep(&*applied.alloc);
    let before_lb = live();
    let lb = LbIndex::build(&lb_index::Inputs {
        version: applied.version,
        intent: &applied.intent,
        alloc: &applied.alloc,
        ready: applied.compiler.readiness(),
        unhealthy: &Default::default(),
        installed: Some(desired),
    });
    let lb_b = live() - before_lb;
    drop(lb);
    // What each piece holds alone: the bytes freed when it goes. Flows and
    // groups are shared (`Arc`) between the compiler's parts, its merged
    // state and the reconciler's installed view, so they are freed with the
    // last holder: the merged state, dropped last.
    let freed = |f: &mut dyn FnMut()| {
        let before = live();
        f();
        before - live()
    };
    let mut rec = Some(rec);
    let installed_b = freed(&mut || drop(rec.take()));
    let mut piece = |p: Piece| freed(&mut || applied.compiler.release(p));
    let backends_b = piece(Piece::BackendIndex);
    let owners_b = piece(Piece::Owners);
    let parts_b = piece(Piece::Parts);
    let merged_b = piece(Piece::Merged) + piece(Piece::Actions);
    let known =
        intent_b + index_b + alloc_b + installed_b + backends_b + owners_b + parts_b + merged_b;
    println!(
        "N={n}: {flows} flows, {groups} groups; agent state after the snapshot {}",
        mib(kept)
    );
    println!("| structure | bytes |");
    println!("|---|--:|");
    println!("| the intent (`Applied::intent`) | {} |", mib(intent_b));
    println!(
        "| its validation index (`Applied::index`) | {} |",
        mib(index_b)
    );
    println!("| allocations (zones, group ids) | {} |", mib(alloc_b));
    println!(
        "| the merged desired state: every flow, group and distinct action list, held once | {} |",
        mib(merged_b)
    );
    println!(
        "| the per-Service compiled parts (sorted slices of shared flows) | {} |",
        mib(parts_b)
    );
    println!("| the flow and group owner indexes | {} |", mib(owners_b));
    println!(
        "| the per-Service and per-backend indexes | {} |",
        mib(backends_b)
    );
    println!(
        "| the reconciler's installed view (a map of the same flows) | {} |",
        mib(installed_b)
    );
    println!(
        "| the rest (node facts, readiness, runtime) | {} |",
        mib(kept.saturating_sub(known))
    );
    println!(
        "| the LB index (built off the loop once per state; observers keep the last) | {} |",
        mib(lb_b)
    );
}
