//! The agent's attachment as the shim uses it, converted from protobuf in one place
//! ([`Attachment::try_from`]) so nothing past this point sees an unchecked value.

use std::fmt;
use std::net::IpAddr;

use dpu_proto::v1 as pb;
use ipnet::IpNet;

use crate::env::check_ifname;
use crate::error::ShimError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Self(out))
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A route for the pod, with its next hop already decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    /// `None` means on-link.
    pub via: Option<IpAddr>,
}

/// A checked attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// The VF's netdev name in the host netns.
    pub vf: String,
    pub mac: Mac,
    /// The pod's address with its prefix, e.g. 10.0.1.70/24.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    /// `None` leaves the VF's MTU as it is.
    pub mtu: Option<u32>,
    pub subnet: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ShimError {
    ShimError::BadAttachment {
        field,
        reason: reason.into(),
    }
}

impl TryFrom<pb::Attachment> for Attachment {
    type Error = ShimError;

    fn try_from(a: pb::Attachment) -> Result<Self, ShimError> {
        let key = a.key.unwrap_or_default();
        check_ifname(&a.vf).map_err(|r| bad("vf", r))?;
        let mac = Mac::parse(&a.mac).ok_or_else(|| bad("mac", format!("{:?}", a.mac)))?;
        if mac.0[0] & 1 == 1 || mac.0 == [0; 6] {
            return Err(bad("mac", format!("{mac} is not a unicast address")));
        }
        let address: IpNet = a
            .ip_cidr
            .parse()
            .map_err(|_| bad("ip_cidr", format!("{:?} is not ADDRESS/PREFIX", a.ip_cidr)))?;
        let family_matches = |ip: &IpAddr| ip.is_ipv4() == address.addr().is_ipv4();
        let gateway = match a.gateway.as_str() {
            "" => None,
            s => {
                let gw: IpAddr = s
                    .parse()
                    .map_err(|_| bad("gateway", format!("{s:?} is not an address")))?;
                if !family_matches(&gw) {
                    return Err(bad(
                        "gateway",
                        format!("{gw} is not the family of {address}"),
                    ));
                }
                Some(gw)
            }
        };
        let mut routes = Vec::with_capacity(a.routes.len());
        for r in &a.routes {
            let dst: IpNet = r
                .dst
                .parse()
                .map_err(|_| bad("routes.dst", format!("{:?} is not a CIDR", r.dst)))?;
            let via = match r.gw.as_str() {
                // A default route without a next hop goes via the gateway.
                "" if dst.prefix_len() == 0 => gateway,
                "" => None,
                s => Some(
                    s.parse()
                        .map_err(|_| bad("routes.gw", format!("{s:?} is not an address")))?,
                ),
            };
            if !family_matches(&dst.addr()) || via.is_some_and(|v| !family_matches(&v)) {
                return Err(bad(
                    "routes",
                    format!("{} via {:?} is not the family of {address}", r.dst, r.gw),
                ));
            }
            routes.push(Route { dst, via });
        }
        let mtu = match a.mtu {
            0 => None,
            m @ 68..=65535 => Some(m),
            m => return Err(bad("mtu", format!("{m} is outside 68..65535"))),
        };
        Ok(Self {
            container_id: key.container_id,
            ifname: key.ifname,
            vf: a.vf,
            mac,
            address,
            gateway,
            routes,
            mtu,
            subnet: a.subnet,
        })
    }
}

#[cfg(test)]
pub(crate) fn sample_pb() -> pb::Attachment {
    pb::Attachment {
        key: Some(pb::AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }),
        vf: "vf3".into(),
        mac: "02:00:00:00:01:46".into(),
        ip_cidr: "10.0.1.70/24".into(),
        gateway: "10.0.1.1".into(),
        routes: vec![pb::Route {
            dst: "0.0.0.0/0".into(),
            gw: String::new(),
        }],
        mtu: 1450,
        subnet: "blue-a".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_reply_converts() {
        let a = Attachment::try_from(sample_pb()).unwrap();
        assert_eq!(a.mac.to_string(), "02:00:00:00:01:46");
        assert_eq!(a.address.to_string(), "10.0.1.70/24");
        assert_eq!(a.mtu, Some(1450));
        assert_eq!(
            a.routes,
            [Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                via: Some("10.0.1.1".parse().unwrap())
            }]
        );
    }

    #[test]
    fn on_link_routes_stay_on_link() {
        let mut p = sample_pb();
        p.routes = vec![pb::Route {
            dst: "10.9.0.0/16".into(),
            gw: String::new(),
        }];
        assert_eq!(Attachment::try_from(p).unwrap().routes[0].via, None);
    }

    fn field(p: pb::Attachment) -> &'static str {
        match Attachment::try_from(p) {
            Err(ShimError::BadAttachment { field, .. }) => field,
            other => panic!("expected BadAttachment, got {other:?}"),
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut p = sample_pb();
        p.mac = "01:00:5e:00:00:01".into();
        assert_eq!(field(p), "mac");
        let mut p = sample_pb();
        p.mac = "02:00:00:00:01".into();
        assert_eq!(field(p), "mac");
        let mut p = sample_pb();
        p.ip_cidr = "10.0.1.70".into();
        assert_eq!(field(p), "ip_cidr");
        let mut p = sample_pb();
        p.vf = "much-too-long-name".into();
        assert_eq!(field(p), "vf");
        let mut p = sample_pb();
        p.gateway = "fe80::1".into();
        assert_eq!(field(p), "gateway");
        let mut p = sample_pb();
        p.mtu = 20;
        assert_eq!(field(p), "mtu");
        let mut p = sample_pb();
        p.routes[0].gw = "nope".into();
        assert_eq!(field(p), "routes.gw");
    }

    #[test]
    fn mac_round_trips() {
        let m = Mac::parse("aa:BB:0c:00:01:ff").unwrap();
        assert_eq!(m.to_string(), "aa:bb:0c:00:01:ff");
        assert_eq!(Mac::parse("aa:bb:cc:dd:ee:ff:00"), None);
        assert_eq!(Mac::parse("aabb:cc:dd:ee:ff"), None);
    }
}
