//! Bounds on intent. They keep one update, one group and one bundle within what the
//! agent and OVS handle in a single message; see docs/limits.md.

/// Longest object name, as in Kubernetes.
pub const MAX_NAME_LEN: usize = 253;
/// Labels on one workload.
pub const MAX_LABELS: usize = 64;
/// Backends of one Service. Each gets at least one bucket in each of the
/// Service's select groups, and OVS's hash selection scores every bucket of a
/// group for each new connection, so this bounds that cost (see `MAX_BUCKETS`).
pub const MAX_BACKENDS: usize = 4_096;
/// The largest weight of one backend. Weights become buckets (one per unit: OVS
/// scores a bucket `(hash & 0xffff) * weight` and takes the highest, which is
/// not proportional to the weight), so this bounds the group size together
/// with `MAX_BUCKETS`.
pub const MAX_WEIGHT: u32 = 100;
/// Buckets of one select group: the sum of a Service's backend weights. A new
/// connection costs vswitchd's slow path time linear in this (every bucket is
/// scored); 8,192 is twice `MAX_BACKENDS`, so every backend of the largest
/// Service can have weight 2. A group over 60 KB (about 900 buckets) is sent as
/// one GROUP_MOD and INSERT_BUCKET messages in the same bundle.
pub const MAX_BUCKETS: u32 = 8_192;
/// Cluster IPs and ports of one Service.
pub const MAX_CLUSTER_IPS: usize = 8;
pub const MAX_PORTS: usize = 64;
/// Objects in one intent set.
pub const MAX_OBJECTS: usize = 200_000;
/// VPCs in one intent set. A DPU gives each VPC it takes part in a conntrack
/// zone of its own (16 bits; zone 0 is untracked traffic's and the top one the
/// service gateway's).
pub const MAX_VPCS: usize = 65_534;
