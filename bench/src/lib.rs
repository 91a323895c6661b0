//! The benchmark harness (issue 7). `bench/run` is the one command; see bench/README.md.

pub mod kube;
pub mod lb;

pub mod churn;
pub mod cold;
pub mod fleet;
pub mod guard;
pub mod intent;
pub mod machine;
pub mod newconn;
pub mod procstat;
pub mod report;
pub mod restart;
pub mod results;
pub mod rig;
pub mod svg;

/// A duration in seconds, for the tables.
pub fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}
