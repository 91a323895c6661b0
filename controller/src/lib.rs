//! The reference controller as a library: the binary (`main.rs`) is a thin CLI
//! over it, and the agent's golden tests use its manifest parser and resolver so
//! that manifests mean the same thing everywhere.
//!
//! # Layers
//!
//! Bottom up; a module imports (`crate::`) only from its own group or the
//! groups before it, and never in a cycle (`tests/module_layers.rs` checks).
//!
//! - **Foundations**: `diag`, `escape`, `fsutil`, `timeutil`, `shutdown` (the
//!   signal every task follows), `csr`, `dirwatch`, `pki`, `nodes`, `tokens`,
//!   `store`, `kv` (the store interface, embedded and on etcd).
//! - **Intent**: `manifest`, `resolve`, `load`, `reload`, `view`, `authz`,
//!   `reported`, `merge`, `session` (one session's state machine) and
//!   `verdicts` (health claims and what counts of them), `objects` (intent
//!   objects in the store: apply, get, delete, diff).
//! - **Status**: `agentstatus` (an agent's Status, checked and converted), under
//!   `status` (the document and `StatusHandle`, which records it); `statusfmt`,
//!   `statusview` and `statuscmd` read the document for `dpu-controller status`;
//!   `statussync` writes each replica's into the store and reads them back.
//! - **Serving**: `effective` (manifests and reported sets into versions) and
//!   `hub` (one session per node, the fan-out of intent and health) sit on
//!   `status`; `intenttask` (the store and the intent directory into
//!   versions) drives `effective`; `healthsync` shares the hub's verdicts
//!   through the store; `revocation` ends sessions through the hub; `enroll` serves
//!   `Enrollment`.
//! - **Commands**: `server` wires all of these into `serve` and nothing in the
//!   library imports it; `cli`, `enrollcmd` and `intentcmd` are the other commands.

pub mod agentstatus;
pub mod authz;
pub mod cleanup;
pub mod cli;
pub mod csr;
pub mod diag;
pub mod dirwatch;
pub mod effective;
pub mod enroll;
pub mod enrollcmd;
pub mod escape;
pub mod fsutil;
pub mod healthsync;
pub mod hub;
pub mod intentcmd;
pub mod intenttask;
pub mod kv;
pub mod load;
pub mod manifest;
pub mod merge;
pub mod migrate;
pub mod nodes;
pub mod objects;
pub mod pki;
pub mod reload;
pub mod reported;
pub mod resolve;
pub mod revocation;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod status;
pub mod statuscmd;
pub mod statusfmt;
pub mod statussync;
pub mod statusview;
pub mod store;
pub mod timeutil;
pub mod tokens;
pub mod verdicts;
pub mod view;
