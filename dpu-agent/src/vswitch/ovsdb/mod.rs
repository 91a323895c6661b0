//! The agent's session with `ovsdb-server`: the bridge it owns and the ports
//! on it, over the generic RFC 7047 client of the `ovsdb` crate (re-exported
//! here, so the agent names everything OVSDB as `crate::vswitch::ovsdb::…`).
//!
//! | file | owns |
//! |---|---|
//! | `bridge.rs` | [`BridgeSpec`] and [`ensure_bridge`] |
//! | `ports.rs` | the ports the agent plugs: workloads' representors, internal ports, the Geneve port |
//! | `session.rs` | [`OvsdbSession`]: reconnecting, monitoring, publishing [`OvsdbState`] |
//! | `restore_wait.rs` | `other_config:flow-restore-wait`: set, clear, read back |
//!
//! Only the session (through `ensure_bridge`) writes bridge configuration. Flows are
//! not this module's business: they go through OpenFlow on the bridge's `.mgmt` socket.

mod bridge;
mod ports;
mod restore_wait;
mod session;

pub use ::ovsdb::atom;
pub use ::ovsdb::{
    apply_diff, parse_table_updates2, ClientOptions, ColumnKind, Condition, FrameDecoder, Function,
    Monitor, MonitorRequest, Mutation, Mutator, Op, OvsdbClient, OvsdbError, Row, RowUpdate,
    Schema, TableCache, TableUpdates, WaitUntil,
};
pub use bridge::{ensure_bridge, BridgeSpec, EnsureOutcome, OPENFLOW_VERSION, VSWITCH_DB};
pub use ports::{ensure_internal_port, ensure_tunnel_port, plug_port, unplug_port};
pub use restore_wait::{flow_restore_wait, set_flow_restore_wait};
pub use session::{Backoff, OvsdbSession, OvsdbState, PortFact};
