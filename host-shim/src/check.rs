//! CHECK's verdict: how the pod's interface differs from the attachment the agent holds
//! and from the `prevResult` of the ADD. Pure; each drift is one readable sentence.

use ipnet::IpNet;

use crate::attachment::Attachment;
use crate::links::LinkState;
use crate::result::PrevInterface;

/// What was observed in the pod's netns.
#[derive(Debug)]
pub struct Observed<'a> {
    pub ifname: &'a str,
    pub netns: &'a str,
    pub link: Option<&'a LinkState>,
    pub addresses: &'a [IpNet],
    pub prev: &'a PrevInterface,
}

/// Every way `seen` differs from `att`; empty when the attachment is intact.
pub fn drift(att: &Attachment, seen: &Observed<'_>) -> Vec<String> {
    let ifname = seen.ifname;
    let mut drifts = Vec::new();
    if !seen.prev.found {
        drifts.push(format!(
            "prevResult lists no interface {ifname} in {}",
            seen.netns
        ));
    } else {
        if let Some(mac) = seen.prev.mac.as_deref() {
            if !mac.eq_ignore_ascii_case(&att.mac.to_string()) {
                drifts.push(format!(
                    "prevResult has MAC {mac} on {ifname}, the agent has {}",
                    att.mac
                ));
            }
        }
        let address = att.address.to_string();
        if !seen.prev.addresses.contains(&address) {
            drifts.push(format!(
                "prevResult lacks address {address} on {ifname} (it has {})",
                list(&seen.prev.addresses)
            ));
        }
    }
    let Some(link) = seen.link else {
        drifts.push(format!("interface {ifname} missing in {}", seen.netns));
        return drifts;
    };
    if !link.up {
        drifts.push(format!("{ifname} is down"));
    }
    if link.mac != Some(att.mac) {
        let have = link.mac.map_or("none".to_string(), |m| m.to_string());
        drifts.push(format!("MAC on {ifname} is {have}, expected {}", att.mac));
    }
    if !seen.addresses.contains(&att.address) {
        let have: Vec<String> = seen.addresses.iter().map(ToString::to_string).collect();
        drifts.push(format!(
            "address {} missing on {ifname} (it has {})",
            att.address,
            list(&have)
        ));
    }
    drifts
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::{sample_pb, Mac};

    fn att() -> Attachment {
        Attachment::try_from(sample_pb()).unwrap()
    }

    fn link() -> LinkState {
        LinkState {
            index: 7,
            name: "eth0".into(),
            mac: Mac::parse("02:00:00:00:01:46"),
            mtu: 1450,
            up: true,
        }
    }

    fn prev() -> PrevInterface {
        PrevInterface {
            found: true,
            mac: Some("02:00:00:00:01:46".into()),
            addresses: vec!["10.0.1.70/24".into()],
        }
    }

    fn run(link: Option<&LinkState>, addrs: &[&str], prev: &PrevInterface) -> Vec<String> {
        let addrs: Vec<IpNet> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        drift(
            &att(),
            &Observed {
                ifname: "eth0",
                netns: "/run/netns/p",
                link,
                addresses: &addrs,
                prev,
            },
        )
    }

    #[test]
    fn intact_attachment_has_no_drift() {
        assert!(run(Some(&link()), &["10.0.1.70/24", "fe80::1/64"], &prev()).is_empty());
    }

    #[test]
    fn each_drift_is_named() {
        assert_eq!(
            run(Some(&link()), &[], &prev()),
            ["address 10.0.1.70/24 missing on eth0 (it has none)"]
        );
        let mut down = link();
        down.up = false;
        down.mac = Mac::parse("02:00:00:00:00:01");
        assert_eq!(
            run(Some(&down), &["10.0.1.70/24"], &prev()),
            [
                "eth0 is down",
                "MAC on eth0 is 02:00:00:00:00:01, expected 02:00:00:00:01:46"
            ]
        );
        assert_eq!(
            run(None, &[], &prev()),
            ["interface eth0 missing in /run/netns/p"]
        );
    }

    #[test]
    fn prev_result_must_agree() {
        let d = run(Some(&link()), &["10.0.1.70/24"], &PrevInterface::default());
        assert_eq!(d, ["prevResult lists no interface eth0 in /run/netns/p"]);
        let mut p = prev();
        p.addresses = vec!["10.0.1.71/24".into()];
        let d = run(Some(&link()), &["10.0.1.70/24"], &p);
        assert_eq!(
            d,
            ["prevResult lacks address 10.0.1.70/24 on eth0 (it has 10.0.1.71/24)"]
        );
    }
}
