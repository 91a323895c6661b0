//! The vswitch adapters: everything that talks to Open vSwitch outside the
//! reconciler's bundles. `ovsdb` owns the bridge and reports its ports,
//! `portwriter` runs port transactions off the agent loop, and `liveness`
//! watches the switch's management socket for `ovs-vswitchd` restarts.

pub mod liveness;
pub mod ovsdb;
pub mod portwriter;
