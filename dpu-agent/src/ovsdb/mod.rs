//! A focused RFC 7047 (OVSDB) client over a unix socket, and the agent's session with
//! `ovsdb-server`: the bridge it owns and the ports on it.
//!
//! | file | owns |
//! |---|---|
//! | `error.rs` | [`OvsdbError`], the one error type |
//! | `framing.rs` | splitting the byte stream into JSON-RPC messages, size bound |
//! | `atom.rs` | OVSDB values: building and reading atoms, sets, maps, rows |
//! | `ops.rs` | typed transaction ops, conditions and mutations |
//! | `client.rs` | [`OvsdbClient`]: the socket task, calls, echo, transact, monitor_cond |
//! | `monitor.rs` | schema column kinds, update2 parsing and diffs, [`TableCache`] |
//! | `bridge.rs` | [`BridgeSpec`] and [`ensure_bridge`] |
//! | `session.rs` | [`OvsdbSession`]: reconnecting, monitoring, publishing [`OvsdbState`] |
//! | `restore_wait.rs` | `other_config:flow-restore-wait`: set, clear, read back |
//!
//! Only the session (through `ensure_bridge`) writes bridge configuration. Flows are
//! not this module's business: they go through OpenFlow on the bridge's `.mgmt` socket.

pub mod atom;
mod bridge;
mod client;
mod error;
mod framing;
mod monitor;
mod ops;
mod ports;
mod restore_wait;
mod session;

pub use atom::Row;
pub use bridge::{ensure_bridge, BridgeSpec, EnsureOutcome, OPENFLOW_VERSION, VSWITCH_DB};
pub use client::{ClientOptions, Monitor, MonitorRequest, OvsdbClient};
pub use error::OvsdbError;
pub use framing::FrameDecoder;
pub use monitor::{apply_diff, parse_table_updates2, ColumnKind, RowUpdate, Schema};
pub use monitor::{TableCache, TableUpdates};
pub use ops::{Condition, Function, Mutation, Mutator, Op, WaitUntil};
pub use ports::{ensure_internal_port, ensure_tunnel_port, plug_port, unplug_port};
pub use restore_wait::{flow_restore_wait, set_flow_restore_wait};
pub use session::{Backoff, OvsdbSession, OvsdbState, PortFact};
