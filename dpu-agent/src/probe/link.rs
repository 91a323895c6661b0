//! Probe links: how the agent's own TCP stack reaches into a VPC.
//!
//! For each VPC with backends to probe on this DPU, the agent adds an OVS internal
//! port `dpr<zone>` (`external_ids:iface-id=dpu:probe:<vpc>`) to its bridge. On the
//! device `ovs-vswitchd` makes of it, the agent puts the probe source address
//! [`PROBE_SOURCE`] (/32, a link-local address, never a tenant's), a default route
//! in a routing table of its own (`PROBE_TABLE_BASE + zone`), and a rule sending
//! traffic bound to that device (`SO_BINDTODEVICE`) to that table. Probes bind to
//! the device, so each VPC has its own routing although their address ranges may
//! overlap, and nothing of any VPC enters the DPU's main routing table. All of it
//! needs only `CAP_NET_ADMIN` (and `CAP_NET_RAW` for binding to a device), the
//! capabilities the unit grants; a network namespace per VPC would need
//! `CAP_SYS_ADMIN`, and this kernel has no VRF.
//!
//! The pipeline lets the device send only as itself and lets packets reach it only
//! as replies of connections it opened (docs/pipeline.md, "Health probes").

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use dpu_model::Mac;

/// The source address of every probe, on every probe link.
pub const PROBE_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 1);
/// The prefix of a probe link's iface-id; the VPC's name follows.
pub const PROBE_IFACE_PREFIX: &str = "dpu:probe:";
/// Routing tables `PROBE_TABLE_BASE + zone` (above the kernel's 253..=255).
pub const PROBE_TABLE_BASE: u32 = 0x10000;
/// The priority of the `oif` rules (before the main table's 32766).
pub const PROBE_RULE_PRIORITY: u32 = 1000;
/// Bound of one netlink request, and of waiting for `ovs-vswitchd` to make a device.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// The iface-id of VPC `vpc`'s probe link.
pub fn iface_id(vpc: &str) -> String {
    format!("{PROBE_IFACE_PREFIX}{vpc}")
}

/// The port (and device) name of the probe link of zone `zone`.
pub fn port_name(zone: u16) -> String {
    format!("dpr{zone}")
}

/// The probe link's MAC: `02:d9:00:01:` and the zone.
pub fn mac(zone: u16) -> Mac {
    let [hi, lo] = zone.to_be_bytes();
    Mac([0x02, 0xd9, 0x00, 0x01, hi, lo])
}

#[derive(Debug, thiserror::Error)]
#[error("probe link {device}: {what}: {reason}")]
pub struct LinkError {
    pub device: String,
    pub what: String,
    pub reason: String,
}

fn err(device: &str, what: &str, reason: impl std::fmt::Display) -> LinkError {
    LinkError {
        device: device.to_string(),
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

const EEXIST: i32 = 17;

async fn bounded<T>(
    device: &str,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(NETLINK_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(err(device, what, e)),
        Err(_) => Err(err(
            device,
            what,
            format!("no answer within {NETLINK_TIMEOUT:?}"),
        )),
    }
}

/// The device's index, once `ovs-vswitchd` has made it (waits up to the bound).
async fn wait_for_device(handle: &Handle, device: &str) -> Result<u32, LinkError> {
    let deadline = tokio::time::Instant::now() + NETLINK_TIMEOUT;
    loop {
        let mut req = std::pin::pin!(handle.link().get().match_name(device.to_string()).execute());
        if let Ok(Ok(Some(msg))) = tokio::time::timeout(NETLINK_TIMEOUT, req.try_next()).await {
            return Ok(msg.header.index);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(err(
                device,
                "waiting for ovs-vswitchd to create it",
                "it did not appear",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Brings the device of zone `zone` up with the probe address, its route table
/// and its rule. Idempotent: what exists already is left as it is.
pub async fn configure(handle: &Handle, zone: u16) -> Result<(), LinkError> {
    let device = port_name(zone);
    let index = wait_for_device(handle, &device).await?;
    bounded(
        &device,
        "setting it up",
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute(),
    )
    .await?;
    let add_addr = handle
        .address()
        .add(index, IpAddr::V4(PROBE_SOURCE), 32)
        .execute();
    match tokio::time::timeout(NETLINK_TIMEOUT, add_addr).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if errno(&e) == Some(EEXIST) => {}
        Ok(Err(e)) => return Err(err(&device, &format!("adding {PROBE_SOURCE}/32"), e)),
        Err(_) => return Err(err(&device, "adding the address", "no answer")),
    }
    let table = PROBE_TABLE_BASE + u32::from(zone);
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(index)
        .scope(RouteScope::Link)
        .table_id(table)
        .build();
    match tokio::time::timeout(NETLINK_TIMEOUT, handle.route().add(route).execute()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if errno(&e) == Some(EEXIST) => {}
        Ok(Err(e)) => {
            return Err(err(
                &device,
                &format!("adding the default route in table {table}"),
                e,
            ))
        }
        Err(_) => return Err(err(&device, "adding the route", "no answer")),
    }
    if !has_rule(handle, &device, table).await? {
        bounded(
            &device,
            &format!("adding the rule oif {device} lookup {table}"),
            handle
                .rule()
                .add()
                .v4()
                .output_interface(device.clone())
                .table_id(table)
                .priority(PROBE_RULE_PRIORITY)
                .execute(),
        )
        .await?;
    }
    Ok(())
}

/// Whether the `oif <device> lookup <table>` rule exists.
async fn has_rule(handle: &Handle, device: &str, table: u32) -> Result<bool, LinkError> {
    Ok(!rules_of(handle, device, table).await?.is_empty())
}

async fn rules_of(
    handle: &Handle,
    device: &str,
    table: u32,
) -> Result<Vec<rtnetlink::packet_route::rule::RuleMessage>, LinkError> {
    use rtnetlink::packet_route::rule::RuleAttribute;
    let rules: Vec<_> = bounded(
        device,
        "listing rules",
        handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect::<Vec<_>>(),
    )
    .await?;
    Ok(rules
        .into_iter()
        .filter(|r| {
            let oif = r
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Oifname(n) if n == device));
            let tbl = r
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Table(t) if *t == table))
                || u32::from(r.header.table) == table;
            oif && tbl
        })
        .collect())
}

/// Removes the rule of zone `zone` (the device, its address and routes go with
/// the OVS port).
pub async fn remove_rule(handle: &Handle, zone: u16) -> Result<(), LinkError> {
    let device = port_name(zone);
    let table = PROBE_TABLE_BASE + u32::from(zone);
    for r in rules_of(handle, &device, table).await? {
        bounded(&device, "deleting its rule", handle.rule().del(r).execute()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_macs_and_tables_follow_the_zone() {
        assert_eq!(port_name(7), "dpr7");
        assert_eq!(port_name(65534).len(), 8);
        assert_eq!(mac(0x0102).to_string(), "02:d9:00:01:01:02");
        assert_eq!(iface_id("vpc-a"), "dpu:probe:vpc-a");
    }
}
