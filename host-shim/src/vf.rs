//! The VF's moves between the host and the pod, in the order sriov-cni uses: down,
//! temporary name, MAC, move by netns fd; then in the pod: final name, MTU, address, up,
//! routes. The way back is down, temporary name, move, host name. The temporary name is
//! derived from the attachment, so a DEL after a crash half-way through an ADD still
//! finds the VF, on either side.

use std::fs::File;

use crate::attachment::{Attachment, Mac};
use crate::error::ShimError;
use crate::links::{LinkState, Links};
use crate::log::debug;

/// The two namespaces a move touches.
#[derive(Debug, Clone, Copy)]
pub struct Sides<'a> {
    pub host: &'a Links,
    pub host_fd: &'a File,
    pub pod: &'a Links,
    pub pod_fd: &'a File,
}

/// The VF's name while it is between names: "shim" and 8 hex digits (FNV-1a of the
/// attachment key), 12 characters.
pub fn temp_name(container_id: &str, ifname: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("shim{hash:08x}")
}

/// What the VF looked like on the host before ADD touched it, to undo a failed ADD.
#[derive(Debug, Clone)]
struct Original {
    name: String,
    mac: Option<Mac>,
    mtu: u32,
    up: bool,
}

/// Moves the VF `att.vf` into the pod as `ifname` and configures it. On failure
/// everything done is undone before the error is returned.
pub async fn move_in(
    sides: Sides<'_>,
    att: &Attachment,
    ifname: &str,
    temp: &str,
) -> Result<LinkState, ShimError> {
    let vf = sides
        .host
        .find(&att.vf)
        .await?
        .ok_or_else(|| ShimError::VfMissing { vf: att.vf.clone() })?;
    let original = Original {
        name: vf.name.clone(),
        mac: vf.mac,
        mtu: vf.mtu,
        up: vf.up,
    };
    match plumb(sides, vf, att, ifname, temp).await {
        Ok(link) => {
            debug(format_args!(
                "VF {} is {ifname} in {}",
                att.vf, sides.pod.ns
            ));
            Ok(link)
        }
        Err(error) => {
            debug(format_args!("ADD failed, undoing: {error}"));
            let undo = restore(sides, ifname, temp, &original).await;
            if undo.is_empty() {
                Err(error)
            } else {
                Err(ShimError::UndoIncomplete {
                    error: Box::new(error),
                    undo,
                })
            }
        }
    }
}

async fn plumb(
    sides: Sides<'_>,
    vf: LinkState,
    att: &Attachment,
    ifname: &str,
    temp: &str,
) -> Result<LinkState, ShimError> {
    let Sides {
        host, pod, pod_fd, ..
    } = sides;
    host.set_up(&vf, false).await?;
    host.rename(&vf, temp).await?;
    let vf = LinkState {
        name: temp.to_string(),
        ..vf
    };
    host.set_mac(&vf, att.mac).await?;
    host.move_to(&vf, pod_fd, &pod.ns).await?;

    // The index may change in the new netns; the temporary name does not.
    let moved = pod.find(temp).await?.ok_or_else(|| {
        ShimError::netlink(
            format!("finding {temp} in {}", pod.ns),
            "the VF is not there after the move",
        )
    })?;
    pod.rename(&moved, ifname).await?;
    let link = LinkState {
        name: ifname.to_string(),
        ..moved
    };
    if let Some(mtu) = att.mtu {
        pod.set_mtu(&link, mtu).await?;
    }
    pod.add_address(&link, att.address).await?;
    pod.set_up(&link, true).await?;
    for route in &att.routes {
        pod.add_route(&link, route).await?;
    }
    pod.find(ifname).await?.ok_or_else(|| {
        ShimError::netlink(
            format!("finding {ifname} in {}", pod.ns),
            "the interface vanished after it was configured",
        )
    })
}

/// Undoes a failed ADD: the VF back on the host under its own name, with its own MAC,
/// MTU and state. Returns what could not be undone.
async fn restore(sides: Sides<'_>, ifname: &str, temp: &str, original: &Original) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = move_out(
        sides.host,
        sides.host_fd,
        Some(sides.pod),
        ifname,
        temp,
        &original.name,
    )
    .await
    {
        problems.push(e.to_string());
        return problems;
    }
    let host = sides.host;
    let link = match host.find(&original.name).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            problems.push(format!("{} is not back in the host netns", original.name));
            return problems;
        }
        Err(e) => {
            problems.push(e.to_string());
            return problems;
        }
    };
    if let Some(mac) = original.mac.filter(|m| Some(*m) != link.mac) {
        if let Err(e) = host.set_mac(&link, mac).await {
            problems.push(e.to_string());
        }
    }
    if original.mtu != 0 && original.mtu != link.mtu {
        if let Err(e) = host.set_mtu(&link, original.mtu).await {
            problems.push(e.to_string());
        }
    }
    if original.up {
        if let Err(e) = host.set_up(&link, true).await {
            problems.push(e.to_string());
        }
    }
    problems
}

/// Brings the VF back to the host netns as `host_name`. It may be in the pod (as
/// `ifname`, or as `temp` after an interrupted move) or already on the host as `temp`.
/// Idempotent; returns whether it found the VF anywhere.
pub async fn move_out(
    host: &Links,
    host_fd: &File,
    pod: Option<&Links>,
    ifname: &str,
    temp: &str,
    host_name: &str,
) -> Result<bool, ShimError> {
    let mut found = false;
    if let Some(pod) = pod {
        let in_pod = match pod.find(ifname).await? {
            Some(link) => Some(link),
            None => pod.find(temp).await?,
        };
        if let Some(link) = in_pod {
            found = true;
            debug(format_args!("moving {} out of {}", link.name, pod.ns));
            pod.set_up(&link, false).await?;
            let link = if link.name == temp {
                link
            } else {
                pod.rename(&link, temp).await?;
                LinkState {
                    name: temp.to_string(),
                    ..link
                }
            };
            pod.move_to(&link, host_fd, &host.ns).await?;
        }
    }
    if let Some(link) = host.find(temp).await? {
        found = true;
        if host.find(host_name).await?.is_some() {
            return Err(ShimError::netlink(
                format!("renaming {temp} to {host_name} in {}", host.ns),
                format!("{host_name} already exists"),
            ));
        }
        host.rename(&link, host_name).await?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_stable_short_and_distinct() {
        let a = temp_name("c1", "eth0");
        assert_eq!(a, temp_name("c1", "eth0"));
        assert_ne!(a, temp_name("c1", "eth1"));
        assert_ne!(temp_name("c1e", "th0"), temp_name("c1", "eth0"));
        assert!(a.starts_with("shim") && a.len() == 12, "{a}");
    }
}
