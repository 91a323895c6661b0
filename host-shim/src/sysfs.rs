//! On hardware the agent (on the DPU) cannot see the host's netdev names, so it
//! names a VF by its number on the host PF. The shim finds the netdev under
//! `/sys/class/net/<pf>/device/virtfn<N>/net/`, as sriov-cni does.
//!
//! Whatever the agent names, ADD moves it only if the config allows it
//! ([`check_movable`]): a VF of `pf` (its `device/physfn` is the PF's PCI device), and
//! a name in `vfAllowList` when the config has that list.

use std::path::{Path, PathBuf};

use dpu_proto::v1 as pb;

use crate::config::NetConf;
use crate::error::ShimError;

/// The netdev of VF `index` of `pf` under the sysfs mounted at `root`.
pub fn vf_netdev(root: &Path, pf: &str, index: u32) -> Result<String, String> {
    let dir = root
        .join("class/net")
        .join(pf)
        .join(format!("device/virtfn{index}/net"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "{}: no netdev (is the VF bound to a driver?)",
            dir.display()
        )),
        many => Err(format!("{}: several netdevs {many:?}", dir.display())),
    }
}

/// Fills `vf` from `vf_index` when the agent sent only the index.
pub fn resolve_vf(a: &mut pb::Attachment, conf: &NetConf) -> Result<(), ShimError> {
    if !a.vf.is_empty() {
        return Ok(());
    }
    let bad = |reason: String| ShimError::BadAttachment {
        field: "vf",
        reason,
    };
    let index = a
        .vf_index
        .ok_or_else(|| bad("the agent named neither a VF netdev nor a VF index".into()))?;
    let pf = conf.pf.as_deref().ok_or_else(|| {
        bad(format!(
            "the agent named VF {index} by index; set \"pf\" in the network config"
        ))
    })?;
    a.vf = vf_netdev(Path::new("/sys"), pf, index).map_err(bad)?;
    Ok(())
}

/// Refuses, before anything is touched, a host netdev that ADD may not move into a
/// pod: one not in `allow` (`vfAllowList`) when that list is set, and one that is not
/// a VF of `pf` when a PF is configured; with both, both must hold. With neither, every
/// netdev is refused (the config check already refuses such an ADD). `root` is where
/// sysfs is mounted (`/sys`); it must show the host netns, as it does for a plugin the
/// runtime runs on the host.
pub fn check_movable(
    root: &Path,
    pf: Option<&str>,
    allow: &[String],
    netdev: &str,
) -> Result<(), ShimError> {
    let refuse = |reason: String| ShimError::VfNotAllowed {
        vf: netdev.to_string(),
        reason,
    };
    if pf.is_none() && allow.is_empty() {
        return Err(refuse(
            "the network config has neither \"pf\" nor \"vfAllowList\", so no netdev may \
             be moved"
                .into(),
        ));
    }
    if !allow.is_empty() && !allow.iter().any(|a| a == netdev) {
        return Err(refuse(format!(
            "{netdev} is not in the network config's vfAllowList {allow:?}"
        )));
    }
    if let Some(pf) = pf {
        if !root.join("class/net").join(netdev).exists() {
            return Err(ShimError::VfMissing {
                vf: netdev.to_string(),
            });
        }
        is_vf_of(root, pf, netdev).map_err(refuse)?;
    }
    Ok(())
}

/// Whether `netdev` is a VF of `pf`: its `device/physfn` is the PF's PCI device, or
/// it is listed under one of the PF's `virtfn<N>/net/`. `Err` says why not.
fn is_vf_of(root: &Path, pf: &str, netdev: &str) -> Result<(), String> {
    if netdev == pf {
        return Err(format!("{netdev} is the PF itself, not one of its VFs"));
    }
    let net = root.join("class/net");
    let pf_link = net.join(pf).join("device");
    let pf_dev = std::fs::canonicalize(&pf_link).map_err(|e| {
        format!(
            "it cannot be checked against PF {pf}: {}: {e} (\"pf\" must name an SR-IOV PF \
             of this host)",
            pf_link.display()
        )
    })?;
    let physfn_link = net.join(netdev).join("device/physfn");
    let physfn = match std::fs::canonicalize(&physfn_link) {
        Ok(dev) if dev == pf_dev => return Ok(()),
        Ok(dev) => format!("its {} is {}", physfn_link.display(), dev.display()),
        Err(e) => format!("{}: {e}", physfn_link.display()),
    };
    if virtfns(&pf_dev)
        .iter()
        .any(|vf| vf.join("net").join(netdev).exists())
    {
        return Ok(());
    }
    Err(format!(
        "{netdev} is not a VF of PF {pf} ({}): {physfn}, and no {}/virtfn*/net/{netdev}",
        pf_dev.display(),
        pf_dev.display()
    ))
}

/// The PF's `virtfn<N>` links.
fn virtfns(pf_dev: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(pf_dev)
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("virtfn"))
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A sysfs tree like the kernel's: PCI devices under `devices/`, netdevs under
    /// their device's `net/`, `class/net/<name>` and `device`, `physfn` and
    /// `virtfn<N>` as relative symlinks.
    struct FakeSysfs {
        dir: tempfile::TempDir,
    }

    impl FakeSysfs {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("class/net")).unwrap();
            Self { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// A PCI function `bdf` with netdev `name`.
        fn pci_netdev(&self, bdf: &str, name: &str) {
            let dev = self.root().join("devices/pci0000:00").join(bdf);
            let netdir = dev.join("net").join(name);
            std::fs::create_dir_all(&netdir).unwrap();
            symlink(format!("../../../{bdf}"), netdir.join("device")).unwrap();
            symlink(
                format!("../../devices/pci0000:00/{bdf}/net/{name}"),
                self.root().join("class/net").join(name),
            )
            .unwrap();
        }

        /// VF `index` of the PF at `pf_bdf`, at `vf_bdf`, with netdev `name`.
        fn vf(&self, pf_bdf: &str, index: u32, vf_bdf: &str, name: &str) {
            self.pci_netdev(vf_bdf, name);
            let devices = self.root().join("devices/pci0000:00");
            symlink(format!("../{pf_bdf}"), devices.join(vf_bdf).join("physfn")).unwrap();
            symlink(
                format!("../{vf_bdf}"),
                devices.join(pf_bdf).join(format!("virtfn{index}")),
            )
            .unwrap();
        }

        /// A netdev with no device (a veth, a bridge, the lab's management link).
        fn virtual_netdev(&self, name: &str) {
            let netdir = self.root().join("devices/virtual/net").join(name);
            std::fs::create_dir_all(&netdir).unwrap();
            symlink(
                format!("../../devices/virtual/net/{name}"),
                self.root().join("class/net").join(name),
            )
            .unwrap();
        }

        /// Two PFs with two VFs each, and a management veth.
        fn standard() -> Self {
            let s = Self::new();
            s.pci_netdev("0000:03:00.0", "ens1f0");
            s.pci_netdev("0000:03:00.1", "ens1f1");
            s.vf("0000:03:00.0", 0, "0000:03:00.2", "ens1f0v0");
            s.vf("0000:03:00.0", 1, "0000:03:00.3", "ens1f0v1");
            s.vf("0000:03:00.1", 0, "0000:03:08.2", "ens1f1v0");
            s.vf("0000:03:00.1", 1, "0000:03:08.3", "ens1f1v1");
            s.virtual_netdev("mgmt0");
            s
        }
    }

    fn reason(r: Result<(), ShimError>) -> String {
        match r {
            Err(ShimError::VfNotAllowed { reason, .. }) => reason,
            other => panic!("expected VfNotAllowed, got {other:?}"),
        }
    }

    #[test]
    fn finds_the_vf_netdev_by_index() {
        let t = tempfile::tempdir().unwrap();
        let net = t
            .path()
            .join("class/net/ens1f0/device/virtfn3/net/ens1f0v3");
        std::fs::create_dir_all(&net).unwrap();
        assert_eq!(vf_netdev(t.path(), "ens1f0", 3).unwrap(), "ens1f0v3");
        let e = vf_netdev(t.path(), "ens1f0", 4).unwrap_err();
        assert!(e.contains("virtfn4"), "{e}");
    }

    #[test]
    fn vfs_of_the_configured_pf_may_be_moved() {
        let s = FakeSysfs::standard();
        for vf in ["ens1f0v0", "ens1f0v1"] {
            check_movable(s.root(), Some("ens1f0"), &[], vf).unwrap();
        }
        // Named by index, resolved and checked the same way.
        let vf = vf_netdev(s.root(), "ens1f0", 1).unwrap();
        check_movable(s.root(), Some("ens1f0"), &[], &vf).unwrap();
    }

    #[test]
    fn a_netdev_that_is_not_a_vf_of_the_pf_is_refused() {
        let s = FakeSysfs::standard();
        let r = reason(check_movable(s.root(), Some("ens1f0"), &[], "mgmt0"));
        assert!(r.contains("mgmt0 is not a VF of PF ens1f0"), "{r}");
        assert!(r.contains("physfn"), "{r}");
        // A VF, but of the other PF.
        let r = reason(check_movable(s.root(), Some("ens1f0"), &[], "ens1f1v0"));
        assert!(r.contains("ens1f1v0 is not a VF of PF ens1f0"), "{r}");
        assert!(r.contains("0000:03:00.1"), "{r}");
        // The PF itself, and the other PF.
        let r = reason(check_movable(s.root(), Some("ens1f0"), &[], "ens1f0"));
        assert!(r.contains("the PF itself"), "{r}");
        reason(check_movable(s.root(), Some("ens1f0"), &[], "ens1f1"));
    }

    #[test]
    fn a_pf_without_a_pci_device_allows_nothing() {
        let s = FakeSysfs::standard();
        let r = reason(check_movable(s.root(), Some("mgmt0"), &[], "ens1f0v0"));
        assert!(r.contains("must name an SR-IOV PF"), "{r}");
        let r = reason(check_movable(s.root(), Some("nosuchpf"), &[], "ens1f0v0"));
        assert!(r.contains("nosuchpf"), "{r}");
    }

    #[test]
    fn a_vf_listed_only_under_the_pfs_virtfn_links_counts() {
        // Some trees lack `physfn` on the VF side; the PF's `virtfn<N>/net/` is proof.
        let s = FakeSysfs::standard();
        let devices = s.root().join("devices/pci0000:00");
        std::fs::remove_file(devices.join("0000:03:00.2/physfn")).unwrap();
        check_movable(s.root(), Some("ens1f0"), &[], "ens1f0v0").unwrap();
    }

    #[test]
    fn a_netdev_that_is_not_there_is_missing_not_refused() {
        let s = FakeSysfs::standard();
        assert!(matches!(
            check_movable(s.root(), Some("ens1f0"), &[], "ens1f0v9"),
            Err(ShimError::VfMissing { .. })
        ));
    }

    #[test]
    fn the_allow_list_is_the_only_rule_without_a_pf_and_an_extra_one_with_it() {
        let s = FakeSysfs::standard();
        let allow = vec!["lab-vf0".to_string(), "ens1f0v1".to_string()];
        // The lab: veths, no sysfs device, only the list decides.
        check_movable(s.root(), None, &allow, "lab-vf0").unwrap();
        let r = reason(check_movable(s.root(), None, &allow, "mgmt0"));
        assert!(
            r.contains("mgmt0 is not in the network config's vfAllowList"),
            "{r}"
        );
        assert!(r.contains("lab-vf0"), "{r}");
        // Both set: a VF of the PF must also be listed, and a listed name be a VF.
        check_movable(s.root(), Some("ens1f0"), &allow, "ens1f0v1").unwrap();
        reason(check_movable(s.root(), Some("ens1f0"), &allow, "ens1f0v0"));
        let with_mgmt = vec!["mgmt0".to_string()];
        reason(check_movable(s.root(), Some("ens1f0"), &with_mgmt, "mgmt0"));
    }

    #[test]
    fn with_neither_pf_nor_list_everything_is_refused() {
        let s = FakeSysfs::standard();
        let r = reason(check_movable(s.root(), None, &[], "ens1f0v0"));
        assert!(r.contains("neither"), "{r}");
    }
}
