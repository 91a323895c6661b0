//! The lab: an emulated DPU on one machine. Real `ovsdb-server`/`ovs-vswitchd`
//! (userspace datapath) per test, network namespaces and veth pairs as hosts, VFs and
//! representors, and the processes under test. Everything it starts is stopped by
//! pid from a `Drop` guard, even when a test fails. Names are prefixed per test so
//! tests can run in parallel.

pub mod fabric;
pub mod fake_controller;
pub mod fixture;
pub mod multi;
pub mod netns;
pub mod objects;
pub mod observe;
pub mod ovs;
pub mod prereq;
pub mod process;
pub mod scenario;
pub mod traffic;
