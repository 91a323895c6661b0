//! What a cold snapshot costs on the agent's side, stage by stage.
//!
//! `cargo run -p dpu-agent --release --example cold_cost -- [N] [ROUNDS]`
//!
//! Builds the intent of `update_cost` (N Services, default 10000, × 10
//! backends), encodes it as the controller's snapshot Update, and applies it to
//! a fresh agent state ROUNDS times (default 5): decode, the update path
//! (`applied::Applied::handle_update`: next intent, allocations, compile,
//! plan) and the native backend's encoding of every bundle message. Only
//! sending the bytes to ovs-vswitchd and its work are left out: the bench's
//! cold scenario measures those (send to ACK against a real switch).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Shared with update_cost and heap_breakdown.
#[allow(dead_code)]
#[path = "common/intent.rs"]
mod intent;

use dpu_agent::reconcile::backend::native::change;
use dpu_agent::reconcile::backend::{BundleOp, InstalledSummary, OpenFlowBackend, OpenFlowError};
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::applied::{Applied, Facts};
use dpu_agent::state::store::Store;
use dpu_agent::state::update::snapshot_of;
use dpu_proto::v1 as pb;
use intent::build;
use prost::Message;

/// What [`EncodingSwitch`] did.
#[derive(Debug, Default)]
struct Encoded {
    encode: Duration,
    bytes: usize,
    messages: usize,
}

/// A switch that encodes every bundle message as the native backend does and
/// sends nothing; it keeps the time and the bytes.
#[derive(Debug, Default)]
struct EncodingSwitch(Arc<Mutex<Encoded>>);

impl OpenFlowBackend for EncodingSwitch {
    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        let t = Instant::now();
        // The encoding `NativeBackend` does (it writes each 128 KiB part to
        // the switch as soon as it is encoded; here all of it is kept).
        let mut bundle = openflow::Bundle::with_capacity(ops.len());
        for op in ops {
            bundle
                .push(change(op))
                .map_err(|e| OpenFlowError::Rejected(e.to_string()))?;
        }
        let (messages, bytes) = (bundle.messages(), bundle.bytes());
        let mut e = self.0.lock().unwrap();
        e.encode += t.elapsed();
        e.messages += messages;
        e.bytes += bytes;
        Ok(())
    }
    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        Ok(InstalledSummary::default())
    }
}

/// The daemon's allocator (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ms(d: Duration) -> String {
    format!("{:8.1}", d.as_secs_f64() * 1e3)
}

fn main() {
    let mut nums = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let n = nums.next().unwrap_or(10_000);
    let rounds = nums.next().unwrap_or(5).max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (intent, facts) = build(n);
    let facts = Facts::new(facts);
    let wire = snapshot_of(&intent, 1, "").encode_to_vec();
    drop(intent);
    println!(
        "N={n}: snapshot {:.1} MiB on the wire; {rounds} rounds, each on a fresh agent state",
        wire.len() as f64 / (1024.0 * 1024.0)
    );
    println!("| round | decode | next_intent | alloc | compile | plan | encode | total (ms) |");
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut totals = Vec::new();
    for round in 1..=rounds {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t0 = Instant::now();
        let update = pb::Update::decode(wire.as_slice()).unwrap();
        let decode = t0.elapsed();
        let encoded = Arc::new(Mutex::new(Encoded::default()));
        let mut rec = rt.block_on(async {
            Reconciler::start(EncodingSwitch(encoded.clone()))
                .await
                .ok()
                .unwrap()
        });
        let mut applied = Applied::default();
        let h = rt.block_on(applied.handle_update(
            "dpu-1",
            &store,
            &mut rec,
            &[],
            &facts,
            update.clone(),
        ));
        assert!(h.changed.is_some(), "{:?}", h.msg);
        let sw = encoded.lock().unwrap();
        let t = &h.timings;
        // `reconcile` is planning the bundle plus the backend's apply (here:
        // encoding only).
        let plan = t.reconcile.saturating_sub(sw.encode);
        let total = decode + t.next_intent + t.alloc + t.compile + t.reconcile;
        println!(
            "| {round} | {} | {} | {} | {} | {} | {} | {} |",
            ms(decode),
            ms(t.next_intent),
            ms(t.alloc),
            ms(t.compile),
            ms(plan),
            ms(sw.encode),
            ms(total)
        );
        if round == rounds {
            // What the loop pays when it changes state an observer's snapshot
            // still holds (`Arc::make_mut`).
            let t = Instant::now();
            let copy = (
                dpu_model::Intent::clone(&applied.intent),
                dpu_agent::state::alloc::Allocations::clone(&applied.alloc),
            );
            let copy_time = t.elapsed();
            drop(copy);
            println!(
                "copying the intent and allocations: {} ms",
                ms(copy_time).trim()
            );
            println!(
                "{} bundle messages, {:.1} MiB encoded",
                sw.messages,
                sw.bytes as f64 / (1024.0 * 1024.0)
            );
        }
        drop(sw);
        totals.push(total);
        // Dropped outside the timed part, as the agent keeps it.
        drop((applied, rec, update));
    }
    totals.sort();
    println!("median total: {} ms", ms(totals[totals.len() / 2]).trim());
}
