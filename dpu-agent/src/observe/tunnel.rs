//! Is this DPU's own tunnel endpoint (`DpuNode.tunnelIP`) an address of the
//! switch's host? Geneve tunnels to this DPU end there; a wrong value fails
//! silently on the data path (every other DPU tunnels into the void), so the
//! agent checks it and says so in its Status and log.
//!
//! The check asks `ovs-vswitchd` itself (`ovs-appctl ovs/route/show`): OVS
//! routes tunnel traffic by that table, which it caches from the kernel of the
//! network namespace it runs in, and marks the host's own addresses `local`:
//!
//! ```text
//! Cached: 192.168.77.5/32 dev brul SRC 192.168.77.5 local
//! ```
//!
//! With the userspace datapath (the lab) the address must sit on an OVS bridge
//! of its own; with the kernel datapath, on the uplink's netdev. Either way it
//! is listed `local` here, and only then can tunnels end on this DPU.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use super::datapath::appctl;

/// The result for the Status: `None` when this node has no `DpuNode` (no
/// tunnels), else the address and whether it is local (or why that is unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelCheck {
    pub ip: Ipv4Addr,
    pub local: Result<bool, String>,
}

impl TunnelCheck {
    /// The warning for the Status and the log, if any.
    pub fn warning(&self, node: &str) -> Option<String> {
        match &self.local {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "DpuNode/{node}: spec.tunnelIP: {} is not a local address of this DPU's switch (ovs-appctl ovs/route/show lists it not as local); Geneve tunnels to this DPU will not arrive. Put the address on the uplink (kernel datapath) or on an OVS bridge of its own (userspace datapath), or fix the DpuNode",
                self.ip
            )),
            Err(e) => Some(format!(
                "DpuNode/{node}: spec.tunnelIP: cannot check whether {} is local: {e}",
                self.ip
            )),
        }
    }
}

/// The addresses `ovs/route/show` marks `local`.
pub fn local_addresses(route_show: &str) -> BTreeSet<IpAddr> {
    route_show
        .lines()
        .filter(|l| l.split_whitespace().last() == Some("local"))
        .filter_map(|l| {
            let prefix = l.split_whitespace().nth(1)?;
            let (addr, _) = prefix.split_once('/').unwrap_or((prefix, ""));
            addr.parse().ok()
        })
        .collect()
}

pub async fn check(
    appctl_path: &str,
    run_dir: &Path,
    ip: Ipv4Addr,
    timeout: Duration,
) -> TunnelCheck {
    let local = appctl(appctl_path, run_dir, &["ovs/route/show"], timeout)
        .await
        .map(|out| local_addresses(&out).contains(&IpAddr::V4(ip)))
        .map_err(|e| e.to_string());
    TunnelCheck { ip, local }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_the_ones_marked_local() {
        // ovs-appctl ovs/route/show of OVS 3.1 in the lab.
        let out = "Route Table:\n\
            Cached: 192.168.77.5/32 dev brul SRC 192.168.77.5 local\n\
            Cached: 192.168.77.0/24 dev brul SRC 192.168.77.5\n\
            Cached: fe80::/64 dev brul SRC fe80::485:8dff:fe8b:9d44\n\
            Cached: fd00::5/128 dev brul SRC fd00::5 local\n\
            User: 10.9.0.0/16 dev brul GW 192.168.77.1 SRC 192.168.77.5\n";
        let got = local_addresses(out);
        let want: BTreeSet<IpAddr> = ["192.168.77.5", "fd00::5"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(local_addresses("").is_empty());
    }

    #[test]
    fn only_a_non_local_or_unknown_address_warns() {
        let ip = Ipv4Addr::new(10, 99, 0, 1);
        let ok = TunnelCheck {
            ip,
            local: Ok(true),
        };
        assert_eq!(ok.warning("dpu-1"), None);
        let bad = TunnelCheck {
            ip,
            local: Ok(false),
        };
        let w = bad.warning("dpu-1").unwrap();
        assert!(
            w.starts_with("DpuNode/dpu-1: spec.tunnelIP: 10.99.0.1 is not a local address"),
            "{w}"
        );
        let unknown = TunnelCheck {
            ip,
            local: Err("no ovs-vswitchd".into()),
        };
        assert!(unknown.warning("dpu-1").unwrap().contains("cannot check"));
    }
}
