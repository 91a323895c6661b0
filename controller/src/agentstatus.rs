//! The agent's `Status` message as the controller records it: the domain type kept
//! in `status.json`, and the one place a `pb::Status` is checked and converted.
//!
//! A Status over a limit (too many entries, a string too long, a CPU share that
//! is not a finite, non-negative number) is refused whole: the node's previous
//! agent status stays and `last_error` names the field (the status records it:
//! `StatusHandle::record_agent_status`). Nothing of a refused Status is kept,
//! and a NaN never reaches `status.json` (serde_json would write it as `null`,
//! and the file would no longer load).

use dpu_model::limits::{MAX_CLUSTER_IPS, MAX_NAME_LEN};
use dpu_proto::v1 as pb;
use dpu_proto::{MAX_BACKEND_STATUS, MAX_SERVICE_STATUS, MAX_STATUS_ERROR_LEN};
use serde::{Deserialize, Serialize};

use crate::verdicts::MAX_HEALTH_ENTRIES;

/// `pending_ports` and `unhealthy`: as many as a Health report may carry.
pub const MAX_LISTED: usize = MAX_HEALTH_ENTRIES;
/// An IP address in text (45 bytes at most), with room to spare.
pub const MAX_ADDR_LEN: usize = 64;
/// VIPs of one Service: its cluster IPs and external IPs.
pub const MAX_VIPS: usize = 2 * MAX_CLUSTER_IPS;
/// A backend's state (`serving`, `unhealthy`, `not ready`, `weight 0`, `no VPC`).
pub const MAX_STATE_LEN: usize = 32;

/// The agent's last Status, as received.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub applied_version: u64,
    pub flows: u32,
    pub groups: u32,
    pub pending_ports: Vec<String>,
    /// When the controller received it (RFC 3339).
    pub at: String,
    /// The newest version the controller sent, applied or not.
    #[serde(default)]
    pub desired_version: u64,
    /// Services in the applied intent.
    #[serde(default)]
    pub services: u32,
    /// Backends given no bucket because a probe failed them.
    #[serde(default)]
    pub unhealthy: Vec<BackendRef>,
    /// The agent's last failed reconcile or update; none after a success.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub reconciles: u64,
    #[serde(default)]
    pub nacks: u64,
    /// Absent from agents that do not report them.
    #[serde(default)]
    pub facts: Option<DpuFacts>,
    #[serde(default)]
    pub counters: Option<CounterSummary>,
    /// At most `MAX_SERVICE_STATUS`: those with a backend not serving first,
    /// then the busiest.
    #[serde(default)]
    pub service_status: Vec<ServiceStatus>,
    /// Services left out of `service_status`.
    #[serde(default)]
    pub services_omitted: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendRef {
    pub vpc: String,
    pub ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpuFacts {
    /// Busy share of all CPUs, 0..100.
    pub cpu_percent: f64,
    pub cpus: u32,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    /// The agent's CPU, in percent of one CPU.
    pub agent_cpu_percent: f64,
    pub agent_rss_bytes: u64,
    pub datapath_flows: u64,
    pub offloaded_flows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CounterSummary {
    pub new_connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceStatus {
    pub name: String,
    pub vips: Vec<String>,
    /// Backends in the intent, and how many take new connections.
    pub backends: u32,
    pub serving: u32,
    /// At most `MAX_BACKEND_STATUS`: those not serving first.
    pub backend_status: Vec<BackendStatus>,
    pub new_connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendStatus {
    pub vpc: String,
    pub ip: String,
    pub workload: String,
    pub weight: u32,
    pub state: String,
    pub new_connections: u64,
    pub bytes: u64,
}

/// Why a Status was refused; `field` is its path in the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentStatusError {
    /// A repeated field over its limit.
    #[error("Status.{field}: {len} entries, at most {max}")]
    TooMany {
        field: String,
        len: usize,
        max: usize,
    },
    /// A string over its limit.
    #[error("Status.{field}: {len} bytes long, at most {max}")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    /// A CPU share that is NaN, infinite or negative.
    #[error("Status.{field}: {value} is not a finite, non-negative percentage")]
    BadPercent { field: &'static str, value: f64 },
}

fn count<T>(
    field: impl FnOnce() -> String,
    list: &[T],
    max: usize,
) -> Result<(), AgentStatusError> {
    if list.len() > max {
        return Err(AgentStatusError::TooMany {
            field: field(),
            len: list.len(),
            max,
        });
    }
    Ok(())
}

fn length(field: impl FnOnce() -> String, text: &str, max: usize) -> Result<(), AgentStatusError> {
    if text.len() > max {
        return Err(AgentStatusError::TooLong {
            field: field(),
            len: text.len(),
            max,
        });
    }
    Ok(())
}

fn percent(field: &'static str, value: f64) -> Result<(), AgentStatusError> {
    if !value.is_finite() || value < 0.0 {
        return Err(AgentStatusError::BadPercent { field, value });
    }
    Ok(())
}

/// Checks every bound of a Status; the first violation is the error.
pub fn check(s: &pb::Status) -> Result<(), AgentStatusError> {
    count(|| "pending_ports".into(), &s.pending_ports, MAX_LISTED)?;
    for (i, p) in s.pending_ports.iter().enumerate() {
        length(|| format!("pending_ports[{i}]"), p, MAX_NAME_LEN)?;
    }
    count(|| "unhealthy".into(), &s.unhealthy, MAX_LISTED)?;
    for (i, b) in s.unhealthy.iter().enumerate() {
        length(|| format!("unhealthy[{i}].vpc"), &b.vpc, MAX_NAME_LEN)?;
        length(|| format!("unhealthy[{i}].ip"), &b.ip, MAX_ADDR_LEN)?;
    }
    length(|| "last_error".into(), &s.last_error, MAX_STATUS_ERROR_LEN)?;
    if let Some(f) = &s.facts {
        percent("facts.cpu_percent", f.cpu_percent)?;
        percent("facts.agent_cpu_percent", f.agent_cpu_percent)?;
    }
    count(
        || "service_status".into(),
        &s.service_status,
        MAX_SERVICE_STATUS,
    )?;
    for (i, svc) in s.service_status.iter().enumerate() {
        length(
            || format!("service_status[{i}].name"),
            &svc.name,
            MAX_NAME_LEN,
        )?;
        count(|| format!("service_status[{i}].vips"), &svc.vips, MAX_VIPS)?;
        for (j, vip) in svc.vips.iter().enumerate() {
            length(
                || format!("service_status[{i}].vips[{j}]"),
                vip,
                MAX_ADDR_LEN,
            )?;
        }
        count(
            || format!("service_status[{i}].backend_status"),
            &svc.backend_status,
            MAX_BACKEND_STATUS,
        )?;
        for (j, b) in svc.backend_status.iter().enumerate() {
            let at = |f: &str| format!("service_status[{i}].backend_status[{j}].{f}");
            length(|| at("vpc"), &b.vpc, MAX_NAME_LEN)?;
            length(|| at("ip"), &b.ip, MAX_ADDR_LEN)?;
            length(|| at("workload"), &b.workload, MAX_NAME_LEN)?;
            length(|| at("state"), &b.state, MAX_STATE_LEN)?;
        }
    }
    Ok(())
}

impl AgentStatus {
    /// Checks `s` (see `check`) and converts it; `at` is when it was received.
    pub fn from_proto(s: pb::Status, at: String) -> Result<Self, AgentStatusError> {
        check(&s)?;
        Ok(AgentStatus {
            applied_version: s.applied_version,
            flows: s.flows,
            groups: s.groups,
            pending_ports: s.pending_ports,
            at,
            desired_version: s.desired_version,
            services: s.services,
            unhealthy: s
                .unhealthy
                .into_iter()
                .map(|b| BackendRef {
                    vpc: b.vpc,
                    ip: b.ip,
                })
                .collect(),
            last_error: Some(s.last_error).filter(|e| !e.is_empty()),
            reconciles: s.reconciles,
            nacks: s.nacks,
            facts: s.facts.map(|f| DpuFacts {
                cpu_percent: f.cpu_percent,
                cpus: f.cpus,
                mem_total_bytes: f.mem_total_bytes,
                mem_used_bytes: f.mem_used_bytes,
                agent_cpu_percent: f.agent_cpu_percent,
                agent_rss_bytes: f.agent_rss_bytes,
                datapath_flows: f.datapath_flows,
                offloaded_flows: f.offloaded_flows,
            }),
            counters: s.counters.map(|c| CounterSummary {
                new_connections: c.new_connections,
                packets: c.packets,
                bytes: c.bytes,
            }),
            service_status: s
                .service_status
                .into_iter()
                .map(service_from_proto)
                .collect(),
            services_omitted: s.services_omitted,
        })
    }

    /// The named Service's entry, if this Status lists it.
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.service_status.iter().find(|s| s.name == name)
    }
}

fn service_from_proto(s: pb::ServiceStatus) -> ServiceStatus {
    ServiceStatus {
        name: s.name,
        vips: s.vips,
        backends: s.backends,
        serving: s.serving,
        backend_status: s
            .backend_status
            .into_iter()
            .map(|b| BackendStatus {
                vpc: b.vpc,
                ip: b.ip,
                workload: b.workload,
                weight: b.weight,
                state: b.state,
                new_connections: b.new_connections,
                bytes: b.bytes,
            })
            .collect(),
        new_connections: s.new_connections,
        packets: s.packets,
        bytes: s.bytes,
    }
}

#[cfg(test)]
#[path = "agentstatus_tests.rs"]
pub(crate) mod tests;
