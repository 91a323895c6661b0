//! The reference controller as a library: the binary (`main.rs`) is a thin CLI
//! over it, and the agent's golden tests use its manifest parser and resolver so
//! that manifests mean the same thing everywhere.

pub mod agentstatus;
pub mod authz;
pub mod cli;
pub mod csr;
pub mod diag;
pub mod dirwatch;
pub mod effective;
pub mod enroll;
pub mod enrollcmd;
pub mod escape;
pub mod fsutil;
pub mod hub;
pub mod load;
pub mod manifest;
pub mod merge;
pub mod nodes;
pub mod pki;
pub mod reload;
pub mod reported;
pub mod resolve;
pub mod revocation;
pub mod server;
pub mod session;
pub mod status;
pub mod statuscmd;
pub mod statusfmt;
pub mod statusview;
pub mod store;
pub mod timeutil;
pub mod tokens;
pub mod verdicts;
pub mod view;
