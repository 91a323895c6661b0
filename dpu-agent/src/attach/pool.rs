//! The attachment pool: which VF and which address each pod attachment holds.
//! Pure: allocation reads the applied intent (Subnets and their per-node blocks,
//! Workloads already using addresses) and the VF inventory, and does no I/O. The
//! agent loop persists the pool after every change, so pods still attach, and keep
//! their addresses, while the controller is unreachable or after a reboot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use dpu_model::{Intent, Mac, Workload, WorkloadKind};
use serde::{Deserialize, Serialize};

use crate::config::VfConfig;

/// One pod interface on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub network: String,
    /// The VF's host netdev; empty when only `vf_index` is known.
    pub vf: String,
    #[serde(default)]
    pub vf_index: Option<u32>,
    pub representor: String,
    /// `xx:xx:xx:xx:xx:xx`
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub subnet: String,
    pub vpc: String,
    /// The Workload name the controller knows this pod by.
    pub workload: String,
    /// `external_ids:iface-id` of the representor's port.
    pub iface_id: String,
    pub labels: BTreeMap<String, String>,
}

/// What an Attach asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachInput {
    pub container_id: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub network: String,
    pub subnet: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// A request field is missing or malformed.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The agent has no intent yet (never reached the controller, nothing persisted).
    #[error("no intent applied yet: the agent has not heard from the controller")]
    NoIntent,
    /// The subnet named in the network config is not in the applied intent.
    #[error("subnet {0:?} is not known to this node")]
    UnknownSubnet(String),
    /// The subnet has no address block for this node.
    #[error("subnet {subnet} has no address block for node {node}")]
    NoBlock { subnet: String, node: String },
    /// Every address of this node's block is in use.
    #[error("no free address in {block} (node block of subnet {subnet})")]
    AddressesExhausted { subnet: String, block: String },
    /// Every VF in the inventory is attached.
    #[error("no free VF: all {0} VFs are attached")]
    VfsExhausted(usize),
}

/// Key of an attachment: the CNI (container id, interface name) pair.
pub fn key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub records: BTreeMap<String, Record>,
}

impl Pool {
    /// Returns the attachment for the request, allocating a VF and an address if it
    /// is new. Attaching the same (container, ifname) again returns the same record.
    pub fn attach(
        &mut self,
        req: &AttachInput,
        intent: Option<&Intent>,
        node: &str,
        vfs: &[VfConfig],
    ) -> Result<Record, AttachError> {
        check(req)?;
        if let Some(r) = self.records.get(&key(&req.container_id, &req.ifname)) {
            return Ok(r.clone());
        }
        let intent = intent.ok_or(AttachError::NoIntent)?;
        let subnet = intent
            .subnets
            .get(&req.subnet)
            .ok_or_else(|| AttachError::UnknownSubnet(req.subnet.clone()))?;
        let block = subnet
            .node_blocks
            .iter()
            .find(|b| b.node == node)
            .ok_or_else(|| AttachError::NoBlock {
                subnet: subnet.name.clone(),
                node: node.to_string(),
            })?;
        // Node blocks exist only in IPv4 subnets (validated).
        let (ipnet::IpNet::V4(cidr), std::net::IpAddr::V4(gateway)) = (subnet.cidr, subnet.gateway)
        else {
            return Err(AttachError::NoBlock {
                subnet: subnet.name.clone(),
                node: node.to_string(),
            });
        };
        // The representor identifies a VF: a VF found in sysfs has no host name.
        let used_vfs: BTreeSet<&str> = self
            .records
            .values()
            .map(|r| r.representor.as_str())
            .collect();
        let vf = vfs
            .iter()
            .find(|v| !used_vfs.contains(v.representor.as_str()))
            .ok_or(AttachError::VfsExhausted(vfs.len()))?;
        let mut used: BTreeSet<Ipv4Addr> = intent
            .workloads
            .values()
            .filter(|w| w.vpc == subnet.vpc)
            .map(|w| w.ip)
            .collect();
        used.extend(
            self.records
                .values()
                .filter(|r| r.vpc == subnet.vpc)
                .map(|r| r.ip),
        );
        used.extend([gateway, cidr.network(), cidr.broadcast()]);
        let ip = block
            .cidr
            .hosts()
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| AttachError::AddressesExhausted {
                subnet: subnet.name.clone(),
                block: block.cidr.to_string(),
            })?;
        let o = ip.octets();
        let cid: String = req.container_id.chars().take(16).collect();
        let record = Record {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            network: req.network.clone(),
            vf: vf.vf.clone(),
            vf_index: vf.index,
            representor: vf.representor.clone(),
            // The Kubernetes convention: 0a:58 followed by the IPv4 address.
            mac: Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]]).to_string(),
            ip,
            prefix_len: cidr.prefix_len(),
            gateway,
            subnet: subnet.name.clone(),
            vpc: subnet.vpc.clone(),
            workload: workload_name(&req.pod_namespace, &req.pod_name, &req.ifname)?,
            iface_id: format!("cni-{cid}-{}", req.ifname),
            labels: req.labels.clone(),
        };
        self.records
            .insert(key(&req.container_id, &req.ifname), record.clone());
        Ok(record)
    }

    pub fn detach(&mut self, container_id: &str, ifname: &str) -> Option<Record> {
        self.records.remove(&key(container_id, ifname))
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Option<&Record> {
        self.records.get(&key(container_id, ifname))
    }

    /// The pods as Workloads of this node.
    pub fn workloads(&self, node: &str) -> Vec<Workload> {
        self.records
            .values()
            .map(|r| Workload {
                name: r.workload.clone(),
                kind: WorkloadKind::Pod,
                vpc: r.vpc.clone(),
                ip: r.ip,
                ipv6: None,
                mac: r.mac.parse().ok(),
                labels: r.labels.clone(),
                node: node.to_string(),
                port: r.iface_id.clone(),
            })
            .collect()
    }

    pub fn free_vfs(&self, vfs: &[VfConfig]) -> usize {
        vfs.iter()
            .filter(|v| {
                !self
                    .records
                    .values()
                    .any(|r| r.representor == v.representor)
            })
            .count()
    }
}

fn check(req: &AttachInput) -> Result<(), AttachError> {
    let bad = |field, message: &str| {
        Err(AttachError::Invalid {
            field,
            message: message.to_string(),
        })
    };
    if req.container_id.is_empty() || req.container_id.len() > 256 {
        return bad("key.container_id", "is required (1..=256 bytes)");
    }
    if req.ifname.is_empty() || req.ifname.len() > 15 || req.ifname.contains('/') {
        return bad(
            "key.ifname",
            "must be a Linux interface name (1..=15 bytes)",
        );
    }
    if req.subnet.is_empty() {
        return bad("subnet", "is required");
    }
    if req.labels.len() > dpu_model::limits::MAX_LABELS {
        return bad("labels", "too many labels");
    }
    Ok(())
}

/// `pod.<namespace>.<name>` (plus `.<ifname>` for a second interface), made a valid
/// object name.
fn workload_name(ns: &str, pod: &str, ifname: &str) -> Result<String, AttachError> {
    let clean = |s: &str| -> String {
        s.to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .to_string()
    };
    let ns = if ns.is_empty() {
        "default".to_string()
    } else {
        clean(ns)
    };
    let mut name = format!("pod.{ns}.{}", clean(pod));
    if ifname != "eth0" {
        name = format!("{name}.{}", clean(ifname));
    }
    dpu_model::check_name(&name).map_err(|m| AttachError::Invalid {
        field: "pod_name",
        message: m,
    })?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_model::{NodeBlock, Subnet, Vpc};

    fn intent() -> Intent {
        let mut i = Intent::default();
        i.vpcs.insert(
            "a".into(),
            Vpc {
                name: "a".into(),
                vni: 1,
            },
        );
        i.subnets.insert(
            "pods".into(),
            Subnet {
                name: "pods".into(),
                vpc: "a".into(),
                cidr: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                node_blocks: vec![NodeBlock {
                    node: "dpu-1".into(),
                    cidr: "10.0.1.0/30".parse().unwrap(),
                }],
            },
        );
        i
    }

    fn vfs(n: usize) -> Vec<VfConfig> {
        (0..n)
            .map(|i| VfConfig {
                vf: format!("vf{i}"),
                representor: format!("rep{i}"),
                index: None,
            })
            .collect()
    }

    fn req(cid: &str) -> AttachInput {
        AttachInput {
            container_id: cid.into(),
            ifname: "eth0".into(),
            pod_namespace: "Default".into(),
            pod_name: "web_1".into(),
            network: "dpu".into(),
            subnet: "pods".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
        }
    }

    #[test]
    fn allocates_skipping_gateway_network_and_used_addresses() {
        let mut p = Pool::default();
        let i = intent();
        // The /30 block 10.0.1.0/30 has hosts .1 and .2; .1 is the gateway.
        let r = p.attach(&req("c1"), Some(&i), "dpu-1", &vfs(4)).unwrap();
        assert_eq!(r.ip, "10.0.1.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.mac, "0a:58:0a:00:01:02");
        assert_eq!(r.workload, "pod.default.web-1");
        assert_eq!((r.prefix_len, r.vf.as_str()), (24, "vf0"));
        // Same request, same answer.
        assert_eq!(p.attach(&req("c1"), Some(&i), "dpu-1", &vfs(4)).unwrap(), r);
        let e = p
            .attach(&req("c2"), Some(&i), "dpu-1", &vfs(4))
            .unwrap_err();
        assert!(matches!(e, AttachError::AddressesExhausted { .. }), "{e}");
        assert!(e.to_string().contains("10.0.1.0/30"), "{e}");
        // Detach frees the address and the VF.
        assert!(p.detach("c1", "eth0").is_some());
        let r2 = p.attach(&req("c2"), Some(&i), "dpu-1", &vfs(4)).unwrap();
        assert_eq!((r2.ip, r2.vf.as_str()), (r.ip, "vf0"));
    }

    #[test]
    fn clear_errors_for_what_cannot_be_served() {
        let mut p = Pool::default();
        let i = intent();
        assert_eq!(
            p.attach(&req("c"), None, "dpu-1", &vfs(1)),
            Err(AttachError::NoIntent)
        );
        assert!(matches!(
            p.attach(&req("c"), Some(&i), "dpu-2", &vfs(1)),
            Err(AttachError::NoBlock { .. })
        ));
        let mut r = req("c");
        r.subnet = "nope".into();
        assert_eq!(
            p.attach(&r, Some(&i), "dpu-1", &vfs(1)),
            Err(AttachError::UnknownSubnet("nope".into()))
        );
        assert_eq!(
            p.attach(&req("c"), Some(&i), "dpu-1", &[]),
            Err(AttachError::VfsExhausted(0))
        );
        let mut r = req("c");
        r.ifname = "a-very-long-interface".into();
        assert!(matches!(
            p.attach(&r, Some(&i), "dpu-1", &vfs(1)),
            Err(AttachError::Invalid { .. })
        ));
    }

    #[test]
    fn pods_become_workloads_of_this_node() {
        let mut p = Pool::default();
        p.attach(&req("c1"), Some(&intent()), "dpu-1", &vfs(1))
            .unwrap();
        let w = p.workloads("dpu-1");
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].kind, w[0].node.as_str()),
            (WorkloadKind::Pod, "dpu-1")
        );
        assert_eq!(w[0].labels.get("app").map(String::as_str), Some("web"));
        assert!(w[0].port.starts_with("cni-c1-eth0"));
    }
}
