//! Bounds on intent. They keep one update, one group and one bundle within what the
//! agent and OVS handle in a single message; see docs/limits.md.

/// Longest object name, as in Kubernetes.
pub const MAX_NAME_LEN: usize = 253;
/// Labels on one workload.
pub const MAX_LABELS: usize = 64;
/// Backends of one Service.
pub const MAX_BACKENDS: usize = 512;
/// The largest weight of one backend. Weights become buckets (one per unit), so this
/// bounds the group size together with `MAX_BUCKETS`.
pub const MAX_WEIGHT: u32 = 100;
/// Buckets of one select group: the sum of a Service's backend weights. OVS cannot
/// carry a group of much more than ~700 buckets in one message.
pub const MAX_BUCKETS: u32 = 600;
/// Cluster IPs and ports of one Service.
pub const MAX_CLUSTER_IPS: usize = 8;
pub const MAX_PORTS: usize = 64;
/// Objects in one intent set.
pub const MAX_OBJECTS: usize = 200_000;
