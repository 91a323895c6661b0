//! Reading back what a load left in the kernel, and a namespace kept loaded for tests
//! (including a real connection through a VIP).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::netns::{self, Netns};
use super::{load_in, ruleset, Flavor, LoadOptions, SvcSpec};

/// What the kernel holds in a namespace after a load.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Rules, counted as in the module doc of `kube`.
    pub rules: usize,
    /// iptables: DNAT rules in `nat`. nftables: rules with a `dnat` statement.
    pub dnat_rules: usize,
    /// iptables: `KUBE-SVC-*` chains. nftables: `service-<hash>-*` chains.
    pub service_chains: usize,
    /// iptables: `KUBE-SEP-*` chains. nftables: `endpoint-*` chains.
    pub endpoint_chains: usize,
    /// nftables: elements of the `service-ips` map (0 for iptables).
    pub service_map_elements: usize,
}

/// A private namespace holding a loaded ruleset; removed on drop. For tests and
/// inspection, not for timing (see [`super::cold_load`]).
#[derive(Debug)]
pub struct LoadedNetns {
    ns: Netns,
    flavor: Flavor,
}

impl LoadedNetns {
    /// Checks the ruleset with the loader's own dry run (`--test`, `nft -c`), then
    /// loads it as [`super::cold_load`] does.
    pub fn load(flavor: Flavor, services: &[SvcSpec]) -> Result<Self> {
        let (text, _) = ruleset(flavor, services);
        let ns = Netns::new()?;
        check_in(&ns, flavor, &text)?;
        load_in(&ns, flavor, &text, &LoadOptions::default())?;
        Ok(LoadedNetns { ns, flavor })
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// What the kernel holds now.
    pub fn loaded(&self) -> Result<Loaded> {
        loaded_rules(&self.ns, self.flavor)
    }

    /// Real traffic: puts `svc`'s endpoints on `lo` with a listener each, routes the
    /// VIP to `lo`, opens `connections` TCP connections to VIP:port from inside the
    /// namespace and returns the endpoint that accepted each one. Only the ruleset's
    /// DNAT can get a connection from the VIP to an endpoint.
    pub fn connect_through_vip(&self, svc: &SvcSpec, connections: usize) -> Result<Vec<Ipv4Addr>> {
        if svc.proto != "tcp" {
            bail!("connect_through_vip needs a tcp service, not {}", svc.proto);
        }
        let ip = netns::program("ip")?;
        for (ep, _) in &svc.endpoints {
            self.ns
                .output(&ip, &["addr", "add", &format!("{ep}/32"), "dev", "lo"])?;
        }
        self.ns.output(
            &ip,
            &["route", "add", &format!("{}/32", svc.vip), "dev", "lo"],
        )?;
        let (vip, port) = (svc.vip, svc.port);
        let endpoints = svc.endpoints.clone();
        self.ns.run_in(move || {
            let listeners = endpoints
                .iter()
                .map(|&(ep, p)| {
                    let l = TcpListener::bind(SocketAddrV4::new(ep, p))
                        .with_context(|| format!("listening on {ep}:{p}"))?;
                    l.set_nonblocking(true)?;
                    Ok((ep, l))
                })
                .collect::<Result<Vec<_>>>()?;
            (0..connections)
                .map(|_| {
                    let target = SocketAddrV4::new(vip, port).into();
                    let _client = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                        .with_context(|| format!("connecting to {vip}:{port}"))?;
                    accept_one(&listeners)
                })
                .collect()
        })?
    }
}

/// The endpoint whose listener has the new connection (waits up to 2 s).
fn accept_one(listeners: &[(Ipv4Addr, TcpListener)]) -> Result<Ipv4Addr> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        for (ep, l) in listeners {
            match l.accept() {
                Ok(_) => return Ok(*ep),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).with_context(|| format!("accepting on {ep}")),
            }
        }
        if Instant::now() >= deadline {
            bail!("the connection reached no endpoint's listener");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// This process's namespaces that exist now (tests check that loads leave none).
pub fn own_netns() -> Vec<String> {
    netns::own()
}

/// Whether a network namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    netns::exists(name)
}

fn check_in(ns: &Netns, flavor: Flavor, text: &str) -> Result<()> {
    let file = tempfile::NamedTempFile::new().context("creating the ruleset file")?;
    std::fs::write(file.path(), text)?;
    let path = file.path().to_string_lossy().into_owned();
    let (prog, args): (&str, Vec<&str>) = match flavor {
        Flavor::IptablesLegacy => (
            "iptables-legacy-restore",
            vec!["--test", "--noflush", &path],
        ),
        Flavor::IptablesNft => ("iptables-nft-restore", vec!["--test", "--noflush", &path]),
        Flavor::Nftables => ("nft", vec!["-c", "-f", &path]),
    };
    ns.output(&netns::program(prog)?, &args)
        .map(drop)
        .with_context(|| format!("{flavor:?}: the loader's dry run rejects the ruleset"))
}

pub(crate) fn loaded_rules(ns: &Netns, flavor: Flavor) -> Result<Loaded> {
    let save = |prog| -> Result<Loaded> {
        Ok(parse_iptables_save(
            &ns.output(&netns::program(prog)?, &[])?,
        ))
    };
    match flavor {
        Flavor::IptablesLegacy => save("iptables-legacy-save"),
        Flavor::IptablesNft => save("iptables-nft-save"),
        Flavor::Nftables => {
            parse_nft_json(&ns.output(&netns::program("nft")?, &["-j", "list", "ruleset"])?)
        }
    }
}

fn parse_iptables_save(save: &str) -> Loaded {
    let mut l = Loaded::default();
    let mut in_nat = false;
    for line in save.lines() {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
        } else if line.starts_with("-A ") {
            l.rules += 1;
            l.dnat_rules += usize::from(in_nat && line.contains(" -j DNAT "));
        } else if in_nat {
            l.service_chains += usize::from(line.starts_with(":KUBE-SVC-"));
            l.endpoint_chains += usize::from(line.starts_with(":KUBE-SEP-"));
        }
    }
    l
}

fn parse_nft_json(json: &str) -> Result<Loaded> {
    let v: Value = serde_json::from_str(json).context("parsing `nft -j list ruleset`")?;
    let Some(items) = v["nftables"].as_array() else {
        bail!("`nft -j list ruleset` has no nftables array");
    };
    let mut l = Loaded::default();
    for item in items {
        if let Some(rule) = item.get("rule") {
            l.rules += 1;
            let dnat = rule["expr"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x.get("dnat").is_some()));
            l.dnat_rules += usize::from(dnat);
        } else if let Some(chain) = item.get("chain") {
            let name = chain["name"].as_str().unwrap_or_default();
            let service = name.starts_with("service-") && name != "service-endpoints-check";
            l.service_chains += usize::from(service);
            l.endpoint_chains += usize::from(name.starts_with("endpoint-"));
        } else if let Some(map) = item.get("map") {
            if map["name"] == "service-ips" {
                l.service_map_elements = map["elem"].as_array().map_or(0, Vec::len);
            }
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_save_is_counted_per_table() {
        let save = "*filter\n:KUBE-SVC-X - [0:0]\n-A INPUT -j KUBE-NODEPORTS\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-AAAA - [0:0]\n:KUBE-SEP-BBBB - [0:0]\n-A KUBE-SEP-BBBB -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:80\n-A KUBE-SVC-AAAA -j KUBE-SEP-BBBB\nCOMMIT\n";
        let l = parse_iptables_save(save);
        assert_eq!(
            (l.rules, l.dnat_rules, l.service_chains, l.endpoint_chains),
            (3, 1, 1, 1)
        );
    }

    #[test]
    fn nft_json_rules_chains_and_map_elements() {
        let json = r#"{"nftables":[{"metainfo":{}},{"table":{"name":"kube-proxy"}},
            {"chain":{"name":"service-endpoints-check"}},{"chain":{"name":"service-AB-x"}},
            {"chain":{"name":"endpoint-CD-y"}},
            {"map":{"name":"service-ips","elem":[["a"],["b"]]}},
            {"rule":{"expr":[{"dnat":{"addr":"10.0.0.1"}}]}},{"rule":{"expr":[{"jump":{}}]}}]}"#;
        let l = parse_nft_json(json).unwrap();
        assert_eq!(
            (
                l.rules,
                l.dnat_rules,
                l.service_chains,
                l.endpoint_chains,
                l.service_map_elements
            ),
            (2, 1, 1, 1, 2)
        );
    }
}
