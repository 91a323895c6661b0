//! The DPU agent library. `main.rs` is a thin binary over it.
//!
//! One folder per layer:
//! - `agent/`: the loop, the single owner of the state and the only writer of
//!   the switch; systemd notifications.
//! - `state/`: update and store: validate an update, the applied intent and its
//!   allocations, this node's pods, the snapshot and journal on disk.
//! - `compile/`: the pure compiler: intent + node facts → desired flows and
//!   groups (`flows`, tables and registers from `pipeline`).
//! - `reconcile/`: diff desired against installed, one bundle per change,
//!   through a backend (`backend/`: native OpenFlow 1.5 or `ovs-ofctl`).
//! - `vswitch/`: the OVS adapters outside the bundles: the bridge and its
//!   ports (`ovsdb`), the port writer, the switch's liveness.
//! - `control/`: the session with the controller and enrollment.
//! - `attach/`: the service the host shim calls to plug a pod's VF.
//! - `probe/`: the health probes.
//! - `observe/`: metrics, the Status stream, the operator socket (`ops`), the
//!   offload audit (`offload`).
//! - `config/`: the configuration file and its layers.
//!
//! Data flow: `control::session` → `state::update` (validated intent,
//! dpu-model) → `compile` (pure) → `reconcile` sends one bundle through its
//! backend → the `agent` loop ACKs after the switch confirmed it.

pub mod agent;
pub mod attach;
pub mod compile;
pub mod config;
pub mod control;
pub mod observe;
pub mod probe;
pub mod reconcile;
pub mod state;
pub mod vswitch;
