//! A focused RFC 7047 (OVSDB) client over a unix socket.
//!
//! It speaks JSON-RPC to `ovsdb-server`: `list_dbs`, `get_schema`, `transact`
//! with typed operations, `monitor_cond` with `update2` notifications, and
//! `echo` in both directions. It knows the OVSDB data model (atoms, sets, maps,
//! rows, conditions, mutations) and no schema's meaning: what a bridge or a
//! port is belongs to the caller.
//!
//! | module | owns |
//! |---|---|
//! | [`error`] | [`OvsdbError`], the one error type |
//! | `framing` | splitting the byte stream into JSON-RPC messages, with a size bound ([`FrameDecoder`]) |
//! | [`atom`] | OVSDB values: building and reading atoms, sets, maps, rows |
//! | `ops` | typed transaction operations, conditions and mutations ([`Op`]) |
//! | `client` | [`OvsdbClient`]: the socket task, calls with time bounds, echo, transact, monitor_cond |
//! | `monitor` | schema column kinds, `update2` parsing and diffs, [`TableCache`] |
//!
//! # Example
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::path::Path;
//! use ovsdb::{MonitorRequest, Op, OvsdbClient, TableCache};
//!
//! # async fn run() -> Result<(), ovsdb::OvsdbError> {
//! let client = OvsdbClient::connect(Path::new("/run/openvswitch/db.sock")).await?;
//! // One transaction: the root table's version column.
//! let version = client
//!     .transact("Open_vSwitch", &[Op::select("Open_vSwitch", vec![])])
//!     .await?;
//! println!("{version:?}");
//! // The Bridge table, kept current by the server's update2 notifications.
//! let schema = client.get_schema("Open_vSwitch").await?;
//! let mut cache = TableCache::new(schema);
//! let mut tables = BTreeMap::new();
//! tables.insert("Bridge".to_string(), MonitorRequest::columns(&["name"]));
//! let (initial, mut monitor) = client.monitor_cond("Open_vSwitch", "bridges", &tables).await?;
//! cache.apply(&initial)?;
//! while let Some(update) = monitor.next().await {
//!     cache.apply(&update)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/list.rs` is a complete program against a running server.

pub mod atom;
mod client;
pub mod error;
mod framing;
mod monitor;
mod ops;

pub use atom::Row;
pub use client::{ClientOptions, Monitor, MonitorRequest, OvsdbClient};
pub use error::OvsdbError;
pub use framing::FrameDecoder;
pub use monitor::{apply_diff, parse_table_updates2, ColumnKind, RowUpdate, Schema};
pub use monitor::{TableCache, TableUpdates};
pub use ops::{Condition, Function, Mutation, Mutator, Op, WaitUntil};
