//! On hardware the agent (on the DPU) cannot see the host's netdev names, so it
//! names a VF by its number on the host PF. The shim finds the netdev under
//! `/sys/class/net/<pf>/device/virtfn<N>/net/`, as sriov-cni does.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
