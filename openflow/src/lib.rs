//! OpenFlow 1.5 with the Nicira extensions Open vSwitch uses, for a
//! controller on a unix socket (a bridge's management socket).
//!
//! It knows OpenFlow and OVS, and no pipeline's meaning: what a table or a
//! register is for belongs to its caller.
//!
//! | module | owns |
//! |---|---|
//! | [`ir`] | the typed flow IR: [`ir::Match`], [`ir::Actions`] (with `ct`, `nat`, `learn`, `resubmit`, …), [`ir::HashField`], the [`ir::Field`] table; printed and parsed as `ovs-ofctl` text |
//! | [`codec`] | the wire format, no I/O: messages, [`codec::FlowMod`], [`codec::GroupMod`], [`codec::Change`], replies ([`codec::FlowDesc`], [`codec::GroupDesc`], counters, [`codec::ErrorMsg`]) |
//! | `conn` | [`Connection`]: the handshake, and one loop that writes requests while it reads replies and answers echoes |
//! | `bundle` | [`Bundle`], applied atomically and in order by [`Connection::apply`] |
//! | `dump` | [`Connection::dump`], [`Connection::counters`], [`Connection::group_stats`] |
//! | `parts` | counters a part at a time, so a reader does not hold a writer up: [`Connection::flow_counts`] (by cookie under a mask), [`Connection::group_counters`] (by group id) |
//! | [`error`] | [`Error`], and why a bundle was refused ([`BundleRefused`]) |
//!
//! # Example
//!
//! ```no_run
//! use openflow::codec::FlowMod;
//! use openflow::ir::{Actions, Field, Match};
//! use openflow::{Bundle, Connection};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut conn = Connection::connect("/run/openvswitch/br0.mgmt").await?;
//! let matches = Match::new().reg(Field::Reg0, 1);
//! let actions: Actions = "set_field:0x5->reg3,resubmit(,10)".parse()?;
//! let mut bundle = Bundle::new();
//! bundle.push(FlowMod::add(0, 100, 0x42, &matches, &actions))?;
//! conn.apply(&mut bundle).await?;
//! for flow in conn.dump().await?.flows {
//!     println!("table={} priority={} cookie={:#x}", flow.table, flow.priority, flow.cookie);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/add_flow.rs` is the same as a program.

#![warn(missing_docs)]

mod bundle;
pub mod codec;
mod conn;
mod dump;
pub mod error;
pub mod ir;
mod parts;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

pub use bundle::{Bundle, STREAM_CHUNK};
pub use conn::{Connection, Step};
pub use dump::{Counters, Dump, OversizedGroup, DESCRIBE_ALL_MAX_BUCKETS};
pub use error::{BundleRefused, Error, Refusal, Refusals};
pub use parts::GroupCounters;
