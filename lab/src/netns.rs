//! Network namespaces and veth pairs: the lab's hosts, VFs and representors. [`Netns`]
//! and [`Veth`] are Drop guards that remove what they created, and every command they
//! run is bounded in time. Names come from [`unique_prefix`] so tests can run in
//! parallel, on this machine and across test processes.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{self, Child};

/// Time limit for one `ip`/`ethtool` command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static PREFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A six-character prefix unique to this process and call: the first letter of `tag`,
/// the pid modulo 36^3 and a process-wide counter modulo 36^2, in base 36. That leaves
/// nine characters of an interface name to the caller.
pub fn unique_prefix(tag: &str) -> String {
    let lead = tag
        .chars()
        .find(char::is_ascii_alphabetic)
        .map_or('l', |c| c.to_ascii_lowercase());
    let count = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{lead}{}{}",
        base36(std::process::id() % 36u32.pow(3), 3),
        base36(count % 36u32.pow(2), 2)
    )
}

fn base36(mut n: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// Checks that `name` is a valid interface name, so errors name it before `ip` does.
pub fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        bail!("interface name {name:?} must be 1 to {IFNAME_MAX} characters");
    }
    if name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        bail!("interface name {name:?} contains '/', ':' or whitespace");
    }
    Ok(())
}

fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    process::run_checked(cmd, CMD_TIMEOUT)
}

/// Runs `ip ARGS` in the root namespace and returns its stdout.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// The names of all network namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Whether interface `ifname` exists in the root namespace.
pub fn link_exists(ifname: &str) -> bool {
    ip(&["link", "show", "dev", ifname]).is_ok()
}

/// Sets `ifname` up in the root namespace.
pub fn link_up(ifname: &str) -> Result<()> {
    ip(&["link", "set", "dev", ifname, "up"]).map(drop)
}

/// Moves `ifname` from the root namespace into `ns`.
pub fn move_to(ifname: &str, ns: &Netns) -> Result<()> {
    ip(&["link", "set", "dev", ifname, "netns", ns.name()]).map(drop)
}

/// Turns TX checksum offload off on `ifname` (in `ns`, or the root namespace). With the
/// OVS userspace datapath TCP over veth fails unless both ends have it off; ARP and
/// ping work either way, which hides the problem.
pub fn tx_off(ifname: &str, ns: Option<&Netns>) -> Result<()> {
    let args = ["ethtool", "-K", ifname, "tx", "off"];
    match ns {
        Some(ns) => ns.exec(args).map(drop),
        None => run(args[0], &args[1..]).map(drop),
    }
    .with_context(|| format!("turn TX checksum offload off on {ifname}"))
}

/// Gives `ifname` in `ns` the IPv6 address `cidr` (such as `fd00:1::2/64`), and a
/// default route via `gateway` on it if given (the interface must be up then).
/// First it turns IPv6 on in the namespace and on the interface (`disable_ipv6=0`)
/// and duplicate address detection off on the interface (`accept_dad=0`); the
/// address is added with `nodad`. DAD would keep the address tentative, unusable,
/// for a second or more, and its probes would go through whatever the interface is
/// plugged into (an emulated DPU), which would have to answer or drop them.
pub fn add_ipv6(ns: &Netns, ifname: &str, cidr: &str, gateway: Option<&str>) -> Result<()> {
    check_ifname(ifname)?;
    let configure = || -> Result<()> {
        cidr.parse::<ipnet::Ipv6Net>()
            .with_context(|| format!("{cidr:?} is not an IPv6 address with a prefix length"))?;
        if let Some(gw) = gateway {
            gw.parse::<std::net::Ipv6Addr>()
                .with_context(|| format!("gateway {gw:?} is not an IPv6 address"))?;
        }
        // sysctl separates with '.', so a '.' in an interface name is written '/'.
        let conf = format!("net.ipv6.conf.{}", ifname.replace('.', "/"));
        ns.exec([
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=0",
            &format!("{conf}.disable_ipv6=0"),
            &format!("{conf}.accept_dad=0"),
        ])
        .context("turn IPv6 on and DAD off (does this kernel have IPv6?)")?;
        ns.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])?;
        if let Some(gw) = gateway {
            ns.ip(&["-6", "route", "add", "default", "via", gw, "dev", ifname])
                .with_context(|| format!("add the default route (is {ifname} up?)"))?;
        }
        Ok(())
    };
    configure().with_context(|| {
        let via = gateway.map_or(String::new(), |gw| format!(" via {gw}"));
        format!("add IPv6 {cidr}{via} to {ifname} in netns {}", ns.name())
    })
}

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The file, under `$DPU_LAB_ROOT`, listing every namespace the lab made during a
/// `lab/run-tests` run, one name a line. Its clean-up deletes these and no others.
pub const NETNS_LIST: &str = "netns.list";

/// Records `name` in `$DPU_LAB_ROOT/netns.list` before the namespace is made, so that
/// `lab/run-tests` can delete it if the test crashes and leaves it behind, and deletes
/// nothing it did not make. One line, one `write(2)` on an `O_APPEND` file, so lines of
/// parallel tests never interleave. Without `DPU_LAB_ROOT` (outside run-tests) there is
/// nothing to record. Every netns the lab's tests make goes through here
/// ([`claim_netns`]: [`Netns::new`], which host-shim's tests use too,
/// [`crate::ovs::OvsInstance::start`], and `dpu_bench::kube`'s namespaces).
pub fn record_netns(name: &str) -> Result<()> {
    let Some(root) = std::env::var_os("DPU_LAB_ROOT").filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    record_netns_in(Path::new(&root), name)
}

/// [`record_netns`] into `root/netns.list`.
pub fn record_netns_in(root: &Path, name: &str) -> Result<()> {
    use std::io::Write;
    if name.is_empty() || name.contains(|c: char| c == '/' || c.is_whitespace()) {
        bail!("network namespace name {name:?} is empty or contains '/' or whitespace");
    }
    let list = root.join(NETNS_LIST);
    let line = format!("{name}\n");
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&list)
        .and_then(|mut f| f.write(line.as_bytes()))
        .with_context(|| format!("record netns {name} in {}", list.display()))?;
    if written != line.len() {
        bail!(
            "record netns {name} in {}: short write ({written} of {} bytes)",
            list.display(),
            line.len()
        );
    }
    Ok(())
}

/// Whether a named namespace `name` exists (`/var/run/netns/NAME`).
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Call right before `ip netns add NAME`: fails without root ([`crate::prereq::root`]),
/// checks the name, refuses a namespace that already exists (someone else's: it is not
/// recorded, so the clean-up of `lab/run-tests` leaves it alone), and records the name
/// ([`record_netns`]).
pub fn claim_netns(name: &str) -> Result<()> {
    crate::prereq::root()?;
    if name.is_empty() || name.contains(|c: char| c == '/' || c.is_whitespace()) {
        bail!("network namespace name {name:?} is empty or contains '/' or whitespace");
    }
    if netns_exists(name) {
        bail!("network namespace {name} already exists (the lab did not make it)");
    }
    record_netns(name)
}

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (`ip netns add`, recorded first: [`claim_netns`]). It
    /// must not exist yet.
    pub fn new(name: &str) -> Result<Netns> {
        claim_netns(name)?;
        ip(&["netns", "add", name]).with_context(|| format!("create netns {name}"))?;
        Ok(Netns {
            name: name.to_owned(),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, `/var/run/netns/NAME`: what a CNI runtime passes in `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("{NETNS_DIR}/{}", self.name)
    }

    /// A command running `args` inside the namespace (`ip netns exec NAME args...`).
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` inside the namespace within [`CMD_TIMEOUT`]; returns stdout, and on
    /// failure an error with the command line and its stderr.
    pub fn exec<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_timeout(args, CMD_TIMEOUT)
    }

    /// [`Netns::exec`] with another time limit.
    pub fn exec_timeout<I, S>(&self, args: I, timeout: Duration) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        process::run_checked(self.command(args), timeout)
    }

    /// Starts `args` inside the namespace with its output in a temporary log file.
    pub fn spawn<I, S>(&self, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        process::spawn_temp_logged(self.command(args))
    }

    /// Starts `args` inside the namespace with its output appended to `log`.
    pub fn spawn_logged<I, S>(&self, args: I, log: &Path) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        process::spawn_logged(self.command(args), log)
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Whether interface `ifname` exists in this namespace.
    pub fn link_exists(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).is_ok()
    }

    /// Sets `ifname` up.
    pub fn set_up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, "up"]).map(drop)
    }

    /// Sets the loopback interface up.
    pub fn set_lo_up(&self) -> Result<()> {
        self.set_up("lo")
    }

    /// Adds an address such as `10.0.1.10/24` to `ifname`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    /// Sets the MAC address of `ifname`.
    pub fn set_mac(&self, ifname: &str, mac: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, "address", mac])
            .map(drop)
    }

    /// Renames `ifname` (it must be down).
    pub fn rename(&self, ifname: &str, new_name: &str) -> Result<()> {
        check_ifname(new_name)?;
        self.ip(&["link", "set", "dev", ifname, "name", new_name])
            .map(drop)
    }

    /// Adds a default route via `via_ip` on `dev`.
    pub fn add_default_route(&self, via_ip: &str, dev: &str) -> Result<()> {
        self.ip(&["route", "add", "default", "via", via_ip, "dev", dev])
            .map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A process left inside would keep the namespace alive after `ip netns del`.
        // Only the lab starts processes in its uniquely named namespaces.
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                eprintln!("lab: killing pid {pid} left in netns {}", self.name);
                if let Err(e) = process::signal(pid, "KILL") {
                    eprintln!("lab: {e:#}");
                }
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("lab: could not delete netns {}: {e:#}", self.name);
        }
    }
}

/// A veth pair, deleted when dropped unless it is already gone (deleting the namespace
/// that holds one end deletes the pair).
#[derive(Debug)]
pub struct Veth {
    a: String,
    b: String,
    /// The namespace each end was moved to through this guard; `None` is the root.
    a_ns: Option<String>,
    b_ns: Option<String>,
    armed: bool,
}

impl Veth {
    /// Creates the pair `a`/`b` in the root namespace.
    pub fn create(a: &str, b: &str) -> Result<Veth> {
        check_ifname(a)?;
        check_ifname(b)?;
        ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .with_context(|| format!("create veth pair {a}/{b}"))?;
        Ok(Veth {
            a: a.to_owned(),
            b: b.to_owned(),
            a_ns: None,
            b_ns: None,
            armed: true,
        })
    }

    /// The first end's name.
    pub fn a(&self) -> &str {
        &self.a
    }

    /// The second end's name.
    pub fn b(&self) -> &str {
        &self.b
    }

    /// Moves end `a` into `ns`, remembering where it went for the cleanup.
    pub fn move_a_to(&mut self, ns: &Netns) -> Result<()> {
        move_to(&self.a, ns)?;
        self.a_ns = Some(ns.name().to_owned());
        Ok(())
    }

    /// Moves end `b` into `ns`, remembering where it went for the cleanup.
    pub fn move_b_to(&mut self, ns: &Netns) -> Result<()> {
        move_to(&self.b, ns)?;
        self.b_ns = Some(ns.name().to_owned());
        Ok(())
    }

    /// Disarms the guard and returns the names: the pair now lives as long as its
    /// namespaces (or until someone deletes it).
    pub fn keep(mut self) -> (String, String) {
        self.armed = false;
        (std::mem::take(&mut self.a), std::mem::take(&mut self.b))
    }
}

fn delete_link(ifname: &str, ns: Option<&str>) -> Option<Result<String>> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let mut show = args.clone();
    show.extend(["link", "show", "dev", ifname]);
    // Also false when the namespace is gone, which took the link with it.
    if ip(&show).is_err() {
        return None;
    }
    args.extend(["link", "del", "dev", ifname]);
    Some(ip(&args))
}

impl Drop for Veth {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ends = [(&self.a, &self.a_ns), (&self.b, &self.b_ns)];
        for (ifname, ns) in ends {
            match delete_link(ifname, ns.as_deref()) {
                None => continue,
                Some(Ok(_)) => return,
                Some(Err(e)) => {
                    eprintln!("lab: could not delete veth {ifname}: {e:#}");
                    return;
                }
            }
        }
    }
}

/// Builds an emulated host: namespace `{prefix}-{ns_suffix}` whose `eth0` has `mac` and
/// `ip_cidr` (and a default route via `gw` if given), joined by a veth pair to the
/// representor `{prefix}-{ns_suffix}` in the root namespace, which is up and returned
/// for the caller to add to a bridge. TX checksum offload is off on both ends. The pair
/// goes away with the namespace.
pub fn attach_host(
    prefix: &str,
    ns_suffix: &str,
    ip_cidr: &str,
    mac: &str,
    gw: Option<&str>,
) -> Result<(Netns, String)> {
    let name = format!("{prefix}-{ns_suffix}");
    let rep = name.clone();
    let peer = format!("{prefix}v{ns_suffix}");
    check_ifname(&rep).context("representor name from prefix and suffix")?;
    check_ifname(&peer).context("host-side veth name from prefix and suffix")?;
    let build = || -> Result<(Netns, String)> {
        let ns = Netns::new(&name)?;
        let mut veth = Veth::create(&rep, &peer)?;
        veth.move_b_to(&ns)?;
        ns.rename(&peer, "eth0")?;
        ns.set_mac("eth0", mac)?;
        ns.add_addr("eth0", ip_cidr)?;
        ns.set_up("eth0")?;
        ns.set_lo_up()?;
        if let Some(gw) = gw {
            ns.add_default_route(gw, "eth0")?;
        }
        tx_off("eth0", Some(&ns))?;
        tx_off(&rep, None)?;
        link_up(&rep)?;
        veth.keep();
        Ok((ns, rep.clone()))
    };
    build().with_context(|| format!("attach host {name} ({ip_cidr}, {mac})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_distinct_and_lead_with_the_tag() {
        let a = unique_prefix("web");
        let b = unique_prefix("web");
        assert_eq!(a.len(), 6);
        assert!(a.starts_with('w'));
        assert_ne!(a, b);
        assert!(unique_prefix("-").starts_with('l'));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn base36_pads_and_wraps() {
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(36 * 36 - 1, 2), "zz");
    }

    #[test]
    fn ifname_limits() {
        assert!(check_ifname("abcdef-web1xxxx").is_ok());
        assert!(check_ifname("abcdef-web1xxxxx").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
    }
}
