//! Netlink requests on links, addresses and routes in one netns, each bounded in time,
//! each failure naming the operation, the interface and the netns.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::attachment::{Mac, Route};
use crate::error::ShimError;

/// The bound of one netlink request; the kernel answers in microseconds.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);
const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;

/// A link as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
}

#[derive(Debug, Clone)]
pub struct Links {
    handle: Handle,
    /// "host netns" or the container netns path, for messages.
    pub ns: String,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

async fn bounded<T>(
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<Result<T, rtnetlink::Error>, ShimError> {
    tokio::time::timeout(NETLINK_TIMEOUT, fut)
        .await
        .map_err(|_| ShimError::netlink(what(), format!("no answer within {NETLINK_TIMEOUT:?}")))
}

impl Links {
    pub fn new(handle: Handle, ns: &str) -> Self {
        Self {
            handle,
            ns: ns.to_string(),
        }
    }

    fn fail(&self, op: &str, e: impl std::fmt::Display) -> ShimError {
        ShimError::netlink(format!("{op} in {}", self.ns), e)
    }

    /// The link named `name`, if there is one.
    pub async fn find(&self, name: &str) -> Result<Option<LinkState>, ShimError> {
        let op = || format!("looking up {name} in {}", self.ns);
        let mut req = std::pin::pin!(self.handle.link().get().match_name(name).execute());
        match bounded(op, req.try_next()).await? {
            Ok(Some(msg)) => Ok(Some(link_state(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(self.fail(&format!("looking up {name}"), e)),
        }
    }

    async fn set(&self, op: String, msg: LinkMessage) -> Result<(), ShimError> {
        let req = self.handle.link().set(msg).execute();
        bounded(|| format!("{op} in {}", self.ns), req)
            .await?
            .map_err(|e| self.fail(&op, e))
    }

    pub async fn set_up(&self, link: &LinkState, up: bool) -> Result<(), ShimError> {
        let msg = LinkUnspec::new_with_index(link.index);
        let (msg, word) = if up {
            (msg.up(), "up")
        } else {
            (msg.down(), "down")
        };
        self.set(format!("setting {} {word}", link.name), msg.build())
            .await
    }

    pub async fn rename(&self, link: &LinkState, to: &str) -> Result<(), ShimError> {
        let msg = LinkUnspec::new_with_index(link.index).name(to).build();
        self.set(format!("renaming {} to {to}", link.name), msg)
            .await
    }

    pub async fn set_mac(&self, link: &LinkState, mac: Mac) -> Result<(), ShimError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .address(mac.0.to_vec())
            .build();
        self.set(format!("setting MAC {mac} on {}", link.name), msg)
            .await
    }

    pub async fn set_mtu(&self, link: &LinkState, mtu: u32) -> Result<(), ShimError> {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.set(format!("setting MTU {mtu} on {}", link.name), msg)
            .await
    }

    /// Moves the link into the netns `to` (`label` names it in messages).
    pub async fn move_to(&self, link: &LinkState, to: &File, label: &str) -> Result<(), ShimError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(to.as_raw_fd())
            .build();
        self.set(format!("moving {} to {label}", link.name), msg)
            .await
    }

    pub async fn add_address(&self, link: &LinkState, address: IpNet) -> Result<(), ShimError> {
        let op = format!("adding address {address} to {}", link.name);
        let req = self
            .handle
            .address()
            .add(link.index, address.addr(), address.prefix_len())
            .execute();
        bounded(|| op.clone(), req)
            .await?
            .map_err(|e| self.fail(&op, e))
    }

    /// The addresses on the link, with their prefixes.
    pub async fn addresses(&self, link: &LinkState) -> Result<Vec<IpNet>, ShimError> {
        let op = format!("listing addresses of {}", link.name);
        let req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let msgs: Vec<_> = bounded(|| op.clone(), req.try_collect::<Vec<_>>())
            .await?
            .map_err(|e| self.fail(&op, e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                IpNet::new(addr, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// Adds a route out of the link. A route the kernel already made (the subnet's own
    /// prefix route) is not an error.
    pub async fn add_route(&self, link: &LinkState, route: &Route) -> Result<(), ShimError> {
        let op = match route.via {
            Some(via) => format!("adding route {} via {via} dev {}", route.dst, link.name),
            None => format!("adding route {} dev {}", route.dst, link.name),
        };
        let mut builder = RouteMessageBuilder::<std::net::IpAddr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix_len())
            .map_err(|e| self.fail(&op, e))?
            .output_interface(link.index);
        builder = match route.via {
            Some(via) => builder.gateway(via).map_err(|e| self.fail(&op, e))?,
            None => builder.scope(RouteScope::Link),
        };
        let req = self.handle.route().add(builder.build()).execute();
        match bounded(|| op.clone(), req).await? {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(self.fail(&op, e)),
        }
    }
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => state.name = n.clone(),
            LinkAttribute::Address(a) => state.mac = Mac::from_bytes(a),
            LinkAttribute::Mtu(m) => state.mtu = *m,
            _ => {}
        }
    }
    state
}
