//! VF discovery on hardware: the representors of one host PF's VFs, found in the
//! DPU's sysfs. A representor shares the uplink's `phys_switch_id` and has the
//! `phys_port_name` `pf<P>vf<N>`; `N` is the VF's number on the host PF, which the
//! shim resolves to the host netdev (`/sys/class/net/<pf>/device/virtfn<N>/net/`).

use std::fs;
use std::path::Path;

use crate::config::{SysfsVfs, VfConfig};

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Lists the representors, ordered by VF number. Errors name the file that was
/// missing or unreadable.
pub fn discover(cfg: &SysfsVfs) -> Result<Vec<VfConfig>, String> {
    let net = cfg.root.join("class/net");
    let uplink_id = net.join(&cfg.uplink).join("phys_switch_id");
    let switch = read_trim(&uplink_id)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            format!(
                "{}: missing or empty (is {} an eswitch uplink?)",
                uplink_id.display(),
                cfg.uplink
            )
        })?;
    let prefix = format!("pf{}vf", cfg.pf);
    let entries = fs::read_dir(&net).map_err(|e| format!("{}: {e}", net.display()))?;
    let mut found: Vec<VfConfig> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let dev = e.path();
            if read_trim(&dev.join("phys_switch_id"))? != switch {
                return None;
            }
            let port = read_trim(&dev.join("phys_port_name"))?;
            let index: u32 = port.strip_prefix(&prefix)?.parse().ok()?;
            Some(VfConfig {
                vf: String::new(),
                representor: e.file_name().to_string_lossy().into_owned(),
                index: Some(index),
            })
        })
        .collect();
    found.sort_by_key(|v| v.index);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(root: &Path, name: &str, switch: &str, port: &str) {
        let d = root.join("class/net").join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("phys_switch_id"), format!("{switch}\n")).unwrap();
        fs::write(d.join("phys_port_name"), format!("{port}\n")).unwrap();
    }

    #[test]
    fn finds_the_representors_of_one_pf_on_the_uplinks_switch() {
        let t = tempfile::tempdir().unwrap();
        dev(t.path(), "p0", "abcd", "p0");
        dev(t.path(), "pf0vf1", "abcd", "pf0vf1");
        dev(t.path(), "pf0vf0", "abcd", "pf0vf0");
        dev(t.path(), "pf1vf0", "abcd", "pf1vf0"); // another PF
        dev(t.path(), "en3", "ffff", "pf0vf7"); // another eswitch
        dev(t.path(), "pf0hpf", "abcd", "pf0"); // the host PF representor
        let cfg = SysfsVfs {
            uplink: "p0".into(),
            pf: 0,
            root: t.path().to_path_buf(),
        };
        let vfs = discover(&cfg).unwrap();
        let got: Vec<(&str, Option<u32>)> = vfs
            .iter()
            .map(|v| (v.representor.as_str(), v.index))
            .collect();
        assert_eq!(got, [("pf0vf0", Some(0)), ("pf0vf1", Some(1))]);
    }

    #[test]
    fn a_missing_uplink_is_named() {
        let t = tempfile::tempdir().unwrap();
        let cfg = SysfsVfs {
            uplink: "p9".into(),
            pf: 0,
            root: t.path().to_path_buf(),
        };
        let e = discover(&cfg).unwrap_err();
        assert!(e.contains("p9/phys_switch_id"), "{e}");
    }
}
