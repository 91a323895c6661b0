//! What the lab needs from the machine: root (network namespaces, veth pairs)
//! and Open vSwitch. Checked before anything is made, so that without them a
//! test, the demo or the benchmark stops with one message saying so rather than
//! with whatever `ip netns add` or `ovs-vswitchd` would have said. Tests that
//! need neither run as any user (docs/testing.md, "Without root").
//!
//! The library's entry points check for themselves ([`crate::fixture::Lab::new`],
//! [`crate::fabric::Fabric::new`], [`crate::ovs::OvsInstance::start`],
//! [`crate::netns::claim_netns`]); a test that would otherwise panic on their
//! error calls an `assert_` function first, so its message is this one alone.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

/// The Open vSwitch programs the lab runs.
pub const OVS_PROGRAMS: [&str; 6] = [
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ovs-appctl",
];

/// Directories searched after `PATH` (test runners often have no sbin in `PATH`).
pub const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// Where the message sends whoever runs without root: cargo stops at the first
/// test binary that fails unless told not to.
const HOW: &str = "run it as root (lab/run-tests); without root, `cargo test --workspace \
                   --no-fail-fast` runs all the rest (docs/testing.md, \"Without root\")";

/// Fails unless this process runs as root (network namespaces, veth pairs).
pub fn root() -> Result<()> {
    let euid = effective_uid()?;
    if euid != 0 {
        bail!("this needs root (network namespaces, veth pairs) and runs as uid {euid}: {HOW}");
    }
    find_program("ip").context("this needs root and iproute2")?;
    Ok(())
}

/// Fails unless this process runs as root and Open vSwitch and iproute2 are
/// installed: what a private OVS ([`crate::ovs::OvsInstance::start`]) needs.
pub fn root_and_ovs() -> Result<()> {
    let euid = effective_uid()?;
    if euid != 0 {
        bail!(
            "this needs root and Open vSwitch (network namespaces, veth pairs, a private \
             ovs-vswitchd) and runs as uid {euid}: {HOW}"
        );
    }
    for name in std::iter::once("ip").chain(OVS_PROGRAMS) {
        find_program(name)
            .context("this needs root and Open vSwitch (lab/install-deps installs it)")?;
    }
    Ok(())
}

/// [`root`], panicking with its message: the first line of a test that needs it.
pub fn assert_root() {
    if let Err(e) = root() {
        panic!("{e:#}");
    }
}

/// [`root_and_ovs`], panicking with its message: the first line of a test that
/// needs it.
pub fn assert_root_and_ovs() {
    if let Err(e) = root_and_ovs() {
        panic!("{e:#}");
    }
}

/// `name` on `PATH` or in [`SBIN_DIRS`].
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("`{name}` is not installed (searched PATH and {SBIN_DIRS:?})"))
}

/// The effective uid, from `/proc/self/status` (its `Uid:` line is real,
/// effective, saved, filesystem).
fn effective_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| anyhow!("no effective uid in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_root_the_message_says_root_and_open_vswitch() {
        let uid = effective_uid().unwrap();
        match root_and_ovs() {
            Ok(()) => assert_eq!(uid, 0),
            Err(e) if uid != 0 => {
                let e = format!("{e:#}");
                assert!(e.starts_with("this needs root and Open vSwitch"), "{e}");
                assert!(e.contains(&format!("runs as uid {uid}")), "{e}");
                assert!(e.contains("lab/run-tests"), "{e}");
            }
            Err(e) => assert!(format!("{e:#}").contains("is not installed"), "{e:#}"),
        }
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = format!("{:#}", find_program("no-such-program-dpu").unwrap_err());
        assert!(e.contains("`no-such-program-dpu` is not installed"), "{e}");
    }
}
