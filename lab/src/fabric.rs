//! The multi-DPU underlay: several emulated DPUs on one machine, joined by an underlay
//! network, so Geneve can run between them. Each DPU is one [`OvsInstance`] (its own
//! `ovsdb-server`, and `ovs-vswitchd` in its own namespace) with two bridges:
//!
//! - the integration bridge, named by the caller, made like [`OvsInstance::add_bridge`]
//!   (netdev, `fail_mode=secure`, OpenFlow 1.5): the agent's bridge;
//! - the underlay bridge `ul<prefix><i>` (netdev, standalone, so `NORMAL`), whose
//!   internal port carries the DPU's underlay address in `ovs-vswitchd`'s namespace. OVS
//!   userspace tunnelling wants exactly that: it looks the remote up in the routes it
//!   learns from its namespace over netlink, resolves the next hop itself (`tnl/neigh`)
//!   and sends the encapsulated packet through the bridge that owns the route.
//!
//! The underlay bridge's uplink is a veth whose other end sits on a Linux bridge in a
//! namespace of its own, the "underlay switch". Cutting a DPU off sets its switch-side
//! end down.
//!
//! Apart from the underlay there is an "external" L2 segment, the outside network
//! (external clients, bare-metal servers): a second Linux bridge in a namespace of its
//! own, `<prefix>-ex`, made by the first call that needs it. [`Fabric::attach_uplink`]
//! plugs a veth from it into a DPU's *integration* bridge (the agent's uplink port);
//! [`Fabric::attach_external`] puts a namespace on it. Nothing routes between the
//! external segment and the underlay.
//!
//! Everything is named from one [`unique_prefix`] and removed by `Drop`: the links,
//! then the OVS daemons by pid, then the switches' namespaces.
//!
//! See docs/testing.md, "Multi-DPU fabric", for the picture and the pitfalls.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{self, check_ifname, unique_prefix, Netns, Veth};
use crate::ovs::OvsInstance;
use crate::process::{self, wait_until};

/// The underlay network: DPU `i` is `192.168.100.<i+1>/24`. Every fabric has its own
/// switch and every DPU its own namespace, so parallel fabrics can reuse it.
pub const UNDERLAY_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 0);
/// The underlay's prefix length.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The underlay MTU: room for a 1500-byte inner packet plus Geneve's overhead. The
/// workloads keep 1500; with 1500 here their full-size packets are dropped at the
/// uplink ("Message too long" in `ovs-vswitchd.log`).
pub const UNDERLAY_MTU: u32 = 1600;
/// What Geneve without options adds to an inner Ethernet frame: outer Ethernet (14),
/// IPv4 (20), UDP (8) and the Geneve header (8).
pub const GENEVE_OVERHEAD: u32 = 50;
/// The most DPUs one fabric holds (addresses .1 to .254).
pub const MAX_DPUS: usize = 254;
/// The Linux bridge inside the switch's namespace.
const SWITCH_BRIDGE: &str = "ulsw";
/// The Linux bridge inside the external switch's namespace.
const EXTERNAL_BRIDGE: &str = "exsw";
/// The external segment's MTU: an ordinary Ethernet, like the workloads'.
pub const EXTERNAL_MTU: u32 = 1500;
/// Bound on OVS picking up an address, a route or a link change.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one underlay reachability probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The underlay address of DPU `index`.
pub fn underlay_ip(index: usize) -> Result<Ipv4Addr> {
    if index >= MAX_DPUS {
        bail!("DPU index {index} is out of range: a fabric holds at most {MAX_DPUS} DPUs");
    }
    let [a, b, c, _] = UNDERLAY_NET.octets();
    let host = u8::try_from(index + 1).expect("index < MAX_DPUS fits a u8");
    Ok(Ipv4Addr::new(a, b, c, host))
}

/// The underlay network in CIDR notation, as `ovs/route/show` prints it.
pub fn underlay_cidr() -> String {
    format!("{UNDERLAY_NET}/{UNDERLAY_PREFIX_LEN}")
}

/// The interface names of DPU `index` in the fabric `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DpuNames {
    underlay_bridge: String,
    uplink: String,
    switch_port: String,
    /// The external uplink's end on the integration bridge.
    external_uplink: String,
    /// Its end on the external switch.
    external_port: String,
}

fn dpu_names(prefix: &str, index: usize) -> Result<DpuNames> {
    let names = DpuNames {
        underlay_bridge: format!("ul{prefix}{index}"),
        uplink: format!("{prefix}u{index}"),
        switch_port: format!("{prefix}s{index}"),
        external_uplink: format!("{prefix}x{index}"),
        external_port: format!("{prefix}y{index}"),
    };
    for name in [
        &names.underlay_bridge,
        &names.uplink,
        &names.switch_port,
        &names.external_uplink,
        &names.external_port,
    ] {
        check_ifname(name).with_context(|| format!("a name for DPU {index}"))?;
    }
    Ok(names)
}

/// One emulated DPU of a [`Fabric`].
#[derive(Debug)]
pub struct Dpu {
    index: usize,
    bridge: String,
    underlay_bridge: String,
    underlay_ip: Ipv4Addr,
    /// `a` is the uplink on the underlay bridge, `b` the port on the switch.
    // Drop order: the links (deleted in the switches' namespaces) before the OVS whose
    // namespace holds their other ends.
    link: Veth,
    /// Once attached ([`Fabric::attach_uplink`]): `a` is the port on the integration
    /// bridge, `b` the port on the external switch.
    external: Option<Veth>,
    ovs: OvsInstance,
}

impl Dpu {
    /// Its index in the fabric.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its OVS.
    pub fn ovs(&self) -> &OvsInstance {
        &self.ovs
    }

    /// The integration bridge (the agent's).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The OpenFlow target of the integration bridge (`unix:<dir>/<bridge>.mgmt`).
    pub fn mgmt(&self) -> String {
        self.ovs.mgmt(&self.bridge)
    }

    /// The underlay bridge; its internal port holds [`Dpu::underlay_ip`].
    pub fn underlay_bridge(&self) -> &str {
        &self.underlay_bridge
    }

    /// Its underlay address (the Geneve `tun_dst` others use to reach it).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// The namespace `ovs-vswitchd` runs in, which holds the underlay address.
    pub fn netns(&self) -> &str {
        self.ovs
            .netns()
            .expect("a fabric DPU's OVS always runs ovs-vswitchd in a namespace")
    }

    /// The veth end on the underlay bridge.
    pub fn uplink(&self) -> &str {
        self.link.a()
    }

    /// The veth end on the underlay switch (what [`Fabric::cut`] sets down).
    pub fn switch_port(&self) -> &str {
        self.link.b()
    }

    /// The external uplink's end on the integration bridge (in `ovs-vswitchd`'s
    /// namespace), once [`Fabric::attach_uplink`] made it.
    pub fn external_uplink(&self) -> Option<&str> {
        self.external.as_ref().map(Veth::a)
    }

    /// The external uplink's end on the external switch.
    pub fn external_port(&self) -> Option<&str> {
        self.external.as_ref().map(Veth::b)
    }

    /// OVS's routing table (`ovs-appctl ovs/route/show`).
    pub fn routes(&self) -> Result<String> {
        self.ovs.vswitchd_appctl(&["ovs/route/show"])
    }

    /// OVS's tunnel neighbour cache (`ovs-appctl tnl/neigh/show`).
    pub fn neighbors(&self) -> Result<String> {
        self.ovs.vswitchd_appctl(&["tnl/neigh/show"])
    }

    /// Whether OVS has resolved `ip` on the underlay bridge.
    pub fn has_neighbor(&self, ip: Ipv4Addr) -> Result<bool> {
        Ok(neighbor_listed(
            &self.neighbors()?,
            ip,
            &self.underlay_bridge,
        ))
    }

    /// Empties the tunnel neighbour cache and then the datapath flow cache, so the next
    /// packet to each remote goes up to `ovs-vswitchd`, which ARPs for it (and drops
    /// that packet). Without the purge, revalidation turns the cached tunnel flows into
    /// drops, and since only an upcall sends ARP, traffic that keeps those flows from
    /// idling out (10 s) never brings the neighbour back.
    pub fn flush_neighbors(&self) -> Result<()> {
        self.ovs.vswitchd_appctl(&["tnl/neigh/flush"])?;
        self.ovs.vswitchd_appctl(&["revalidator/purge"]).map(drop)
    }

    /// OVS's view of the uplink (`Interface.link_state`: `up` or `down`).
    pub fn uplink_state(&self) -> Result<String> {
        self.ovs
            .vsctl(&["get", "Interface", self.uplink(), "link_state"])
            .map(|s| s.trim().trim_matches('"').to_owned())
    }

    /// A command running `args` in `ovs-vswitchd`'s namespace (where the underlay address is).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns()]).args(args);
        cmd
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.netns()];
        full.extend_from_slice(args);
        netns::ip(&full)
    }
}

/// Several emulated DPUs, the underlay switch between them and, once something is
/// attached to it, the external switch. Dropping it removes every DPU (links, then
/// daemons by pid, then their namespaces) and then the switches.
#[derive(Debug)]
pub struct Fabric {
    prefix: String,
    /// Indexed by DPU; `None` once removed. Dropped before the switches.
    dpus: Vec<Option<Dpu>>,
    hosts_attached: usize,
    externals_attached: usize,
    switch: Netns,
    /// The external switch (namespace `<prefix>-ex`), made on first use.
    external: Option<Netns>,
}

impl Fabric {
    /// Creates the underlay switch (namespace `<prefix>-ul` holding a Linux bridge);
    /// no DPU yet. Fails, naming what is missing, without root, Open vSwitch, `ip`,
    /// `ethtool` or `bash` ([`require_prerequisites`]).
    pub fn new(tag: &str) -> Result<Fabric> {
        require_prerequisites()?;
        let prefix = unique_prefix(tag);
        let switch = linux_switch(&format!("{prefix}-ul"), SWITCH_BRIDGE, UNDERLAY_MTU)
            .context("create the underlay switch")?;
        Ok(Fabric {
            prefix,
            dpus: Vec::new(),
            hosts_attached: 0,
            externals_attached: 0,
            switch,
            external: None,
        })
    }

    /// [`Fabric::new`] plus `count` DPUs whose integration bridges are `br<prefix>d<i>`.
    pub fn with_dpus(tag: &str, count: usize) -> Result<Fabric> {
        let mut fabric = Fabric::new(tag)?;
        for i in 0..count {
            let bridge = format!("br{}d{i}", fabric.prefix);
            fabric.add_dpu(&bridge)?;
        }
        Ok(fabric)
    }

    /// The per-fabric name prefix (six characters, see [`unique_prefix`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlay switch's namespace.
    pub fn switch_netns(&self) -> &Netns {
        &self.switch
    }

    /// The external switch's namespace (`<prefix>-ex`), once
    /// [`Fabric::attach_uplink`] or [`Fabric::attach_external`] made it.
    pub fn external_netns(&self) -> Option<&Netns> {
        self.external.as_ref()
    }

    /// Adds a DPU with integration bridge `bridge` and returns its index: a private
    /// OVS, the two bridges, the underlay address and the link to the switch. Returns
    /// once OVS has learned the underlay route.
    pub fn add_dpu(&mut self, bridge: &str) -> Result<usize> {
        let index = self.dpus.len();
        let dpu = self
            .build_dpu(index, bridge)
            .with_context(|| format!("add DPU {index} to fabric {}", self.prefix))?;
        self.dpus.push(Some(dpu));
        Ok(index)
    }

    fn build_dpu(&self, index: usize, bridge: &str) -> Result<Dpu> {
        let underlay_ip = underlay_ip(index)?;
        let names = dpu_names(&self.prefix, index)?;
        let mtu = UNDERLAY_MTU.to_string();

        let ovs = OvsInstance::start()?;
        ovs.add_bridge(bridge)?;
        // Standalone, not secure: with no flows of ours the bridge does NORMAL, which
        // is what userspace tunnelling expects of the bridge owning the route.
        let ul = names.underlay_bridge.as_str();
        ovs.vsctl(&[
            "add-br",
            ul,
            "--",
            "set",
            "Bridge",
            ul,
            "datapath_type=netdev",
            "--",
            "set",
            "Interface",
            ul,
            &format!("mtu_request={mtu}"),
        ])?;

        let mut link = Veth::create(&names.uplink, &names.switch_port)?;
        for end in [&names.uplink, &names.switch_port] {
            netns::ip(&["link", "set", "dev", end, "mtu", &mtu])?;
        }
        link.move_b_to(&self.switch)?;
        self.switch.ip(&[
            "link",
            "set",
            "dev",
            &names.switch_port,
            "master",
            SWITCH_BRIDGE,
        ])?;
        netns::tx_off(&names.switch_port, Some(&self.switch))?;
        self.switch.set_up(&names.switch_port)?;
        // Into ovs-vswitchd's namespace, up, TX checksum offload off.
        ovs.adopt(&names.uplink)?;
        ovs.vsctl(&["add-port", ul, &names.uplink])?;

        let dpu = Dpu {
            index,
            bridge: bridge.to_owned(),
            underlay_bridge: names.underlay_bridge.clone(),
            underlay_ip,
            link,
            external: None,
            ovs,
        };
        // `ovs-vsctl` returned after ovs-vswitchd made the bridge's tap device.
        let cidr = format!("{underlay_ip}/{UNDERLAY_PREFIX_LEN}");
        dpu.ip(&["addr", "add", &cidr, "dev", ul])
            .with_context(|| format!("put the underlay address {cidr} on {ul}"))?;
        dpu.ip(&["link", "set", "dev", ul, "up"])?;
        let net = underlay_cidr();
        let mut routes = String::new();
        wait_until(
            &format!("ovs-vswitchd to learn the route to {net} via {ul}"),
            SETTLE_TIMEOUT,
            || {
                routes = dpu.routes().unwrap_or_default();
                route_listed(&routes, &net, ul)
            },
        )
        .with_context(|| format!("ovs/route/show:\n{routes}"))?;
        Ok(dpu)
    }

    /// DPU `index`; an error if there never was one or it was removed.
    pub fn dpu(&self, index: usize) -> Result<&Dpu> {
        match self.dpus.get(index) {
            Some(Some(dpu)) => Ok(dpu),
            Some(None) => Err(anyhow!("DPU {index} of fabric {} was removed", self.prefix)),
            None => Err(anyhow!(
                "fabric {} has no DPU {index} (it has {})",
                self.prefix,
                self.dpus.len()
            )),
        }
    }

    /// The DPUs still present, in index order.
    pub fn dpus(&self) -> impl Iterator<Item = &Dpu> {
        self.dpus.iter().flatten()
    }

    /// Removes DPU `index`: its link, its OVS (by pid) and its namespace. The other
    /// DPUs keep their indices and addresses.
    pub fn remove(&mut self, index: usize) -> Result<()> {
        self.dpu(index)?;
        drop(self.dpus[index].take());
        Ok(())
    }

    /// Cuts DPU `index` off the underlay: its switch-side veth end goes down, so its
    /// uplink loses carrier. Returns once OVS reports the uplink down.
    pub fn cut(&self, index: usize) -> Result<()> {
        self.set_link(index, "down")
    }

    /// Undoes [`Fabric::cut`]; returns once OVS reports the uplink up. OVS's neighbour
    /// entries survive a cut, so traffic resumes as soon as the switch forwards again.
    pub fn restore(&self, index: usize) -> Result<()> {
        self.set_link(index, "up")
    }

    fn set_link(&self, index: usize, state: &str) -> Result<()> {
        let dpu = self.dpu(index)?;
        self.switch
            .ip(&["link", "set", "dev", dpu.switch_port(), state])
            .with_context(|| format!("set DPU {index}'s underlay link {state}"))?;
        let mut seen = String::new();
        wait_until(
            &format!("OVS of DPU {index} to see its uplink {state}"),
            SETTLE_TIMEOUT,
            || {
                seen = dpu.uplink_state().unwrap_or_else(|e| format!("{e:#}"));
                seen == state
            },
        )
        .with_context(|| format!("last link_state of {}: {seen}", dpu.uplink()))
    }

    /// Adds a Geneve port `name` to `bridge` of DPU `index` with the remote and the VNI
    /// taken from the flow (`options:remote_ip=flow options:key=flow`), so flows set
    /// `tun_dst` and `tun_id`. Returns its OpenFlow port number.
    pub fn add_geneve_port(&self, index: usize, bridge: &str, name: &str) -> Result<u32> {
        let dpu = self.dpu(index)?;
        check_ifname(name)?;
        let ovs = &dpu.ovs;
        ovs.vsctl(&[
            "add-port",
            bridge,
            name,
            "--",
            "set",
            "Interface",
            name,
            "type=geneve",
            "options:remote_ip=flow",
            "options:key=flow",
        ])
        .with_context(|| format!("add Geneve port {name} to {bridge} of DPU {index}"))?;
        let ofport = ovs.vsctl(&["get", "Interface", name, "ofport"])?;
        match ofport.trim().parse::<i64>() {
            Ok(port) if port > 0 => Ok(u32::try_from(port)?),
            _ => {
                let error = ovs
                    .vsctl(&["get", "Interface", name, "error"])
                    .unwrap_or_default();
                bail!("Geneve port {name} on DPU {index} has ofport {ofport:?}; error: {error}")
            }
        }
    }

    /// Attaches a workload host to DPU `index`'s integration bridge, as
    /// [`crate::fixture::Lab::add_host`] does: a namespace whose `eth0` has `ip_cidr`
    /// and `mac`, and its veth peer as a port with `external_ids:iface-id=<iface_id>`.
    /// TX checksum offload is off on both ends. Returns the namespace and the port's
    /// OpenFlow number; the pair goes with whichever namespace goes first.
    pub fn attach_host(
        &mut self,
        index: usize,
        iface_id: &str,
        ip_cidr: &str,
        mac: &str,
    ) -> Result<(Netns, u32)> {
        let suffix = format!("h{}", self.hosts_attached);
        let dpu = self.dpu(index)?;
        let (ns, rep) = netns::attach_host(&self.prefix, &suffix, ip_cidr, mac, None)?;
        let ofport = dpu
            .ovs
            .plug(&dpu.bridge, &rep, iface_id)
            .with_context(|| format!("plug host {iface_id} into DPU {index}"))?;
        self.hosts_attached += 1;
        Ok((ns, ofport))
    }

    /// Creates the external switch unless it exists: namespace `<prefix>-ex` holding a
    /// Linux bridge (MTU [`EXTERNAL_MTU`], STP off, up).
    fn ensure_external_switch(&mut self) -> Result<&Netns> {
        if self.external.is_none() {
            let ns = linux_switch(
                &format!("{}-ex", self.prefix),
                EXTERNAL_BRIDGE,
                EXTERNAL_MTU,
            )
            .context("create the external switch")?;
            self.external = Some(ns);
        }
        Ok(self.external.as_ref().expect("made above"))
    }

    /// Joins DPU `index` to the external segment: a veth whose one end is a port of
    /// its integration bridge with `external_ids:iface-id=<iface_id>` (the agent's
    /// `[uplink] port`), named `<prefix>x<index>`, and whose other end,
    /// `<prefix>y<index>`, is on the external switch. TX checksum offload is off on
    /// both ends. Returns the port's OpenFlow number. One uplink per DPU; it goes
    /// with the DPU.
    pub fn attach_uplink(&mut self, index: usize, iface_id: &str) -> Result<u32> {
        let context = || format!("attach DPU {index}'s uplink to the external segment");
        if self.dpu(index)?.external.is_some() {
            bail!(
                "DPU {index} of fabric {} already has an uplink",
                self.prefix
            );
        }
        self.ensure_external_switch().with_context(context)?;
        let (link, ofport) = self.build_uplink(index, iface_id).with_context(context)?;
        self.dpus[index].as_mut().expect("checked above").external = Some(link);
        Ok(ofport)
    }

    fn build_uplink(&self, index: usize, iface_id: &str) -> Result<(Veth, u32)> {
        let dpu = self.dpu(index)?;
        let ex = self
            .external
            .as_ref()
            .expect("the caller made the external switch");
        let names = dpu_names(&self.prefix, index)?;
        let (uplink, port) = (&names.external_uplink, &names.external_port);
        // If anything below fails, dropping `link` deletes the pair again.
        let mut link = Veth::create(uplink, port)?;
        link.move_b_to(ex)?;
        ex.ip(&["link", "set", "dev", port, "master", EXTERNAL_BRIDGE])
            .with_context(|| format!("put {port} on the external switch"))?;
        netns::tx_off(port, Some(ex))?;
        ex.set_up(port)?;
        // Into ovs-vswitchd's namespace, up, TX checksum offload off, then the port.
        let ofport = dpu
            .ovs
            .plug(&dpu.bridge, uplink, iface_id)
            .with_context(|| format!("plug {uplink} into {} as {iface_id}", dpu.bridge))?;
        Ok((link, ofport))
    }

    /// Puts a namespace `<prefix>-e-<suffix>` on the external segment (an external
    /// client or a bare-metal server): its `eth0` has `ip_cidr` and `mac` and is up,
    /// as is `lo`; its veth peer `<prefix>e<n>` is on the external switch. TX checksum
    /// offload is off on both ends. No route is added: that is the caller's. The pair
    /// goes with whichever namespace goes first.
    pub fn attach_external(&mut self, suffix: &str, ip_cidr: &str, mac: &str) -> Result<Netns> {
        let n = self.externals_attached;
        self.externals_attached += 1;
        let name = format!("{}-e-{suffix}", self.prefix);
        let context = || format!("attach external host {name} ({ip_cidr}, {mac})");
        let port = format!("{}e{n}", self.prefix);
        let peer = format!("{}f{n}", self.prefix);
        check_ifname(&port).with_context(context)?;
        check_ifname(&peer).with_context(context)?;
        let ex = self.ensure_external_switch().with_context(context)?;
        let build = || -> Result<Netns> {
            let ns = Netns::new(&name)?;
            let mut veth = Veth::create(&port, &peer)?;
            veth.move_a_to(ex)?;
            veth.move_b_to(&ns)?;
            ns.rename(&peer, "eth0")?;
            ns.set_mac("eth0", mac)?;
            ns.add_addr("eth0", ip_cidr)?;
            netns::tx_off("eth0", Some(&ns))?;
            ns.set_up("eth0")?;
            ns.set_lo_up()?;
            ex.ip(&["link", "set", "dev", &port, "master", EXTERNAL_BRIDGE])?;
            netns::tx_off(&port, Some(ex))?;
            ex.set_up(&port)?;
            veth.keep();
            Ok(ns)
        };
        build().with_context(context)
    }

    /// Makes every DPU's OVS resolve every other DPU's underlay address, as a
    /// real underlay keeps them resolved. OVS drops the packet that makes it ARP
    /// for a tunnel's next hop, so without this the first connection across a new
    /// pair of DPUs loses its first packet in each direction, and the retransmits
    /// take about two seconds. The probe is [`Fabric::underlay_reachable`]: its
    /// ARP reply passes the underlay bridge, where OVS snoops it.
    pub fn resolve_underlay(&self) -> Result<()> {
        let dpus: Vec<&Dpu> = self.dpus().collect();
        for a in &dpus {
            for b in dpus.iter().filter(|b| b.index != a.index) {
                wait_until(
                    &format!(
                        "DPU {}'s OVS to resolve DPU {}'s underlay address",
                        a.index, b.index
                    ),
                    SETTLE_TIMEOUT,
                    || {
                        a.has_neighbor(b.underlay_ip).unwrap_or(false)
                            || (self.underlay_reachable(a.index, b.index).unwrap_or(false)
                                && a.has_neighbor(b.underlay_ip).unwrap_or(false))
                    },
                )
                .with_context(|| a.neighbors().unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// Whether DPU `from`'s kernel reaches DPU `to`'s underlay address: a TCP connect to
    /// port 9, where nothing listens, is refused only if the reset came back. This goes
    /// through both underlay bridges and the switch, not through any tunnel.
    pub fn underlay_reachable(&self, from: usize, to: usize) -> Result<bool> {
        let target = self.dpu(to)?.underlay_ip;
        let script = format!("exec 3<>/dev/tcp/{target}/9");
        let secs = PROBE_TIMEOUT.as_secs().to_string();
        let cmd = self
            .dpu(from)?
            .command(&["timeout", &secs, "bash", "-c", &script]);
        let out = process::run_bounded(cmd, PROBE_TIMEOUT + Duration::from_secs(3))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Connection refused") {
            return Ok(true);
        }
        if out.status.code() == Some(124) || stderr.contains("No route") {
            return Ok(false);
        }
        bail!(
            "probe of {target} from DPU {from} ended unexpectedly ({}): {}",
            out.status,
            stderr.trim()
        )
    }
}

/// A namespace `ns_name` holding Linux bridge `bridge` (`mtu`, STP off), both up.
fn linux_switch(ns_name: &str, bridge: &str, mtu: u32) -> Result<Netns> {
    let ns = Netns::new(ns_name)?;
    let mtu = mtu.to_string();
    ns.ip(&[
        "link",
        "add",
        bridge,
        "mtu",
        &mtu,
        "type",
        "bridge",
        "stp_state",
        "0",
    ])
    .with_context(|| format!("create bridge {bridge} in {ns_name}"))?;
    ns.set_up(bridge)?;
    ns.set_lo_up()?;
    Ok(ns)
}

/// Fails, naming what is missing, unless we are root with Open vSwitch
/// ([`crate::prereq::root_and_ovs`]), `ethtool` and `bash`.
pub fn require_prerequisites() -> Result<()> {
    crate::prereq::root_and_ovs()?;
    for (tool, arg) in [("ethtool", "--version"), ("bash", "--version")] {
        let mut cmd = Command::new(tool);
        cmd.arg(arg);
        process::run_checked(cmd, netns::CMD_TIMEOUT)
            .with_context(|| format!("the fabric needs `{tool}` on PATH"))?;
    }
    Ok(())
}

/// The link-layer address namespace `ns` has for `ip` (`ip neigh show to <ip>`);
/// `None` if it has no entry or only a `FAILED` or `INCOMPLETE` one.
pub fn neighbor_mac(ns: &Netns, ip: &str) -> Result<Option<String>> {
    let out = ns
        .ip(&["neigh", "show", "to", ip])
        .with_context(|| format!("read the neighbour {ip} in {}", ns.name()))?;
    Ok(neighbor_lladdr(&out, ip))
}

/// The `lladdr` of `ip` in `ip neigh show` output, unless the entry failed or is
/// still being resolved.
fn neighbor_lladdr(out: &str, ip: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&ip) || words.iter().any(|w| matches!(*w, "FAILED" | "INCOMPLETE"))
        {
            return None;
        }
        let at = words.iter().position(|w| *w == "lladdr")?;
        words.get(at + 1).map(|mac| (*mac).to_owned())
    })
}

/// Whether `ovs/route/show` output has a route to `net` on `dev`.
fn route_listed(routes: &str, net: &str, dev: &str) -> bool {
    routes.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(3)
            .any(|w| w[0] == net && w[1] == "dev" && w[2] == dev)
    })
}

/// Whether `tnl/neigh/show` output has `ip` resolved on `bridge`.
fn neighbor_listed(out: &str, ip: Ipv4Addr, bridge: &str) -> bool {
    let ip = ip.to_string();
    out.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.first() == Some(&ip.as_str()) && words.last() == Some(&bridge)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlay_addresses_start_at_one_and_stop_at_254() {
        assert_eq!(underlay_ip(0).unwrap(), Ipv4Addr::new(192, 168, 100, 1));
        assert_eq!(underlay_ip(253).unwrap(), Ipv4Addr::new(192, 168, 100, 254));
        assert!(underlay_ip(MAX_DPUS).is_err());
        assert_eq!(underlay_cidr(), "192.168.100.0/24");
    }

    #[test]
    fn names_fit_an_interface_name_for_every_index() {
        let names = dpu_names("fab1x2", 0).unwrap();
        assert_eq!(
            names,
            DpuNames {
                underlay_bridge: "ulfab1x20".into(),
                uplink: "fab1x2u0".into(),
                switch_port: "fab1x2s0".into(),
                external_uplink: "fab1x2x0".into(),
                external_port: "fab1x2y0".into(),
            }
        );
        assert!(dpu_names("fab1x2", MAX_DPUS - 1).is_ok());
    }

    #[test]
    fn routes_and_neighbors_are_read_from_appctl_output() {
        let routes = "Route Table:\n\
            Cached: 192.168.100.1/32 dev ulp0 SRC 192.168.100.1 local\n\
            Cached: 192.168.100.0/24 dev ulp0 SRC 192.168.100.1\n";
        assert!(route_listed(routes, "192.168.100.0/24", "ulp0"));
        assert!(!route_listed(routes, "192.168.100.0/24", "ulp1"));
        assert!(!route_listed("Route Table:\n", "192.168.100.0/24", "ulp0"));

        let neigh = "IP                                            MAC                 Bridge\n\
            ==========================================================================\n\
            192.168.100.2                                 5e:b9:e7:42:be:44   ulp0\n";
        let two = Ipv4Addr::new(192, 168, 100, 2);
        assert!(neighbor_listed(neigh, two, "ulp0"));
        assert!(!neighbor_listed(neigh, two, "ulp1"));
        assert!(!neighbor_listed(
            neigh,
            Ipv4Addr::new(192, 168, 100, 3),
            "ulp0"
        ));
    }

    #[test]
    fn neighbor_macs_are_read_from_ip_neigh_output() {
        let ip = "198.51.100.11";
        let reachable = "198.51.100.11 dev eth0 lladdr 02:d9:00:00:01:01 REACHABLE\n";
        assert_eq!(
            neighbor_lladdr(reachable, ip).as_deref(),
            Some("02:d9:00:00:01:01")
        );
        let stale = "198.51.100.11 dev eth0 lladdr 02:d9:00:00:01:01 STALE\n";
        assert!(neighbor_lladdr(stale, ip).is_some());
        assert_eq!(neighbor_lladdr(reachable, "198.51.100.1"), None);
        assert_eq!(neighbor_lladdr("", ip), None);
        for state in [
            "198.51.100.11 dev eth0 FAILED",
            "198.51.100.11 dev eth0 INCOMPLETE",
        ] {
            assert_eq!(neighbor_lladdr(state, ip), None, "{state}");
        }
        let failed_with_old_mac = "198.51.100.11 dev eth0 lladdr 02:d9:00:00:01:01 FAILED";
        assert_eq!(neighbor_lladdr(failed_with_old_mac, ip), None);
    }
}
