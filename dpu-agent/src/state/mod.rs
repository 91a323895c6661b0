//! Update and store: what the controller asked for, validated, and what was
//! applied, kept on disk. `update` validates one update against dpu-model,
//! `applied` holds the applied intent and its allocations and runs an update
//! through compile and reconcile, `alloc` hands out group ids, zones and
//! cookies, `pods` keeps this node's attached pods, and `store` persists it all
//! (snapshot plus journal).

pub mod alloc;
pub mod applied;
pub mod pods;
pub mod store;
pub mod update;
