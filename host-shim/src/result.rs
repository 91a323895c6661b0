//! CNI result documents (spec §5): the ADD success result built from an attachment,
//! appended to a `prevResult` when the shim runs chained, and the VERSION answer. Pure.

use serde_json::{json, Map, Value};

use crate::attachment::Attachment;
use crate::config::{CniVersion, LATEST_VERSION, SUPPORTED_VERSIONS};

/// The ADD result for `att`, moved into `netns` as `ifname`. A `prev_result` is kept
/// and our interface, address and routes are appended to it.
pub fn add_result(
    version: CniVersion,
    ifname: &str,
    netns: &str,
    att: &Attachment,
    prev_result: Option<&Value>,
) -> Value {
    let mut doc = match prev_result {
        Some(Value::Object(prev)) => prev.clone(),
        _ => Map::new(),
    };
    doc.insert("cniVersion".into(), json!(version.as_str()));

    let interfaces = array_field(&mut doc, "interfaces");
    let index = interfaces.len();
    let mut iface = json!({"name": ifname, "mac": att.mac.to_string(), "sandbox": netns});
    if let (Some(mtu), true) = (att.mtu, version >= CniVersion::V1_1_0) {
        iface["mtu"] = json!(mtu);
    }
    interfaces.push(iface);

    let mut ip = json!({"address": att.address.to_string(), "interface": index});
    if let Some(gw) = att.gateway {
        ip["gateway"] = json!(gw.to_string());
    }
    if version == CniVersion::V0_4_0 {
        ip["version"] = json!(if att.address.addr().is_ipv4() {
            "4"
        } else {
            "6"
        });
    }
    array_field(&mut doc, "ips").push(ip);

    let routes = array_field(&mut doc, "routes");
    for r in &att.routes {
        let mut route = json!({"dst": r.dst.to_string()});
        if let Some(via) = r.via {
            route["gw"] = json!(via.to_string());
        }
        routes.push(route);
    }
    if routes.is_empty() {
        doc.remove("routes");
    }
    Value::Object(doc)
}

fn array_field<'a>(doc: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = doc.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("just made an array")
}

/// The VERSION answer: the input's version when we speak it, else the latest.
pub fn version_result(input_version: Option<CniVersion>) -> Value {
    let version = input_version.map_or(LATEST_VERSION, CniVersion::as_str);
    json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
}

/// What a `prevResult` says about `ifname`: its MAC and the addresses on it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrevInterface {
    pub found: bool,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
}

/// Reads `ifname` (in `netns`) out of a `prevResult`.
pub fn prev_interface(prev: &Value, ifname: &str, netns: &str) -> PrevInterface {
    let Some(ifaces) = prev.get("interfaces").and_then(Value::as_array) else {
        return PrevInterface::default();
    };
    let Some(index) = ifaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox").and_then(Value::as_str).unwrap_or(netns) == netns
    }) else {
        return PrevInterface::default();
    };
    let addresses = prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| ip.get("interface").and_then(Value::as_u64) == Some(index as u64))
        .filter_map(|ip| {
            ip.get("address")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    PrevInterface {
        found: true,
        mac: ifaces[index]
            .get("mac")
            .and_then(Value::as_str)
            .map(str::to_string),
        addresses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::sample_pb;

    fn att() -> Attachment {
        Attachment::try_from(sample_pb()).unwrap()
    }

    #[test]
    fn add_result_1_1_0() {
        let r = add_result(CniVersion::V1_1_0, "eth0", "/run/netns/p", &att(), None);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mac": "02:00:00:00:01:46", "mtu": 1450, "sandbox": "/run/netns/p"}],
                "ips": [{"address": "10.0.1.70/24", "gateway": "10.0.1.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.1"}]
            })
        );
    }

    #[test]
    fn add_result_0_4_0_has_ip_versions_and_no_mtu() {
        let r = add_result(CniVersion::V0_4_0, "eth0", "/run/netns/p", &att(), None);
        assert_eq!(r["ips"][0]["version"], "4");
        assert!(r["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn prev_result_is_kept_and_extended() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let r = add_result(
            CniVersion::V1_1_0,
            "eth0",
            "/run/netns/p",
            &att(),
            Some(&prev),
        );
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(r["ips"][1]["interface"], 1);
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        let p = prev_interface(&r, "eth0", "/run/netns/p");
        assert!(p.found);
        assert_eq!(p.addresses, ["10.0.1.70/24"]);
        assert_eq!(p.mac.as_deref(), Some("02:00:00:00:01:46"));
        assert!(!prev_interface(&r, "eth1", "/run/netns/p").found);
    }

    #[test]
    fn version_answer() {
        assert_eq!(
            version_result(None),
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
        assert_eq!(
            version_result(Some(CniVersion::V1_0_0))["cniVersion"],
            "1.0.0"
        );
    }
}
