//! The DPU agent library. `main.rs` is a thin binary over it.
//!
//! Data flow: controller `session` → `update` (validated intent, dpu-model) →
//! `compile` (pure) → desired flows and groups (`flows`, tables from `pipeline`) →
//! `reconcile` diffs against installed and sends one bundle through `openflow` →
//! the `agent` loop ACKs after the switch confirmed it. `ovsdb` owns the bridge and
//! reports ports; `store` persists what was applied.

pub mod agent;
pub mod alloc;
pub mod applied;
pub mod attach;
pub mod compile;
pub mod config;
pub mod enroll;
pub mod fasthash;
pub mod flows;
pub mod notify;
pub mod observe;
pub mod offload;
pub mod openflow;
pub mod ops;
pub mod ovsdb;
pub mod pipeline;
pub mod pods;
pub mod portwriter;
pub mod probe;
pub mod reconcile;
pub mod session;
pub mod store;
pub mod update;
