//! Agent configuration: a TOML file plus `DPU_AGENT_*` environment overrides
//! (`DPU_AGENT_OVS__BRIDGE=br1` sets `ovs.bridge`). Unknown keys are an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This DPU's node name; must match the DNS SAN of its certificate.
    pub node_name: String,
    /// Where the last applied intent and local ids are kept (mode 0700).
    pub state_dir: PathBuf,
    pub controller: ControllerConfig,
    pub ovs: OvsConfig,
    /// The attachment service for the host shim; absent means no pods attach here.
    #[serde(default)]
    pub shim: Option<ShimConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// Address on the host<->DPU link, e.g. `169.254.0.1:50052`. mTLS with the
    /// node certificate; the shim's certificate must chain to the same CA.
    pub listen: std::net::SocketAddr,
    /// The DNS SAN the shim's client certificate must carry.
    pub client_name: String,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The VF pool: each VF's host netdev and its representor on the DPU. In the
    /// lab the pairs are listed here; on hardware `vfs_from_sysfs` finds them.
    #[serde(default)]
    pub vfs: Vec<VfConfig>,
    /// Discover the representors of one host PF's VFs from the DPU's sysfs.
    #[serde(default)]
    pub vfs_from_sysfs: Option<SysfsVfs>,
}

/// Representors are the netdevs on the uplink's eswitch (same `phys_switch_id`)
/// whose `phys_port_name` is `pf<pf>vf<N>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysfsVfs {
    /// The uplink netdev on the DPU, e.g. `p0`.
    pub uplink: String,
    /// Which host PF's VFs, e.g. 0 for `pf0vf*`.
    #[serde(default)]
    pub pf: u32,
    #[serde(default = "default_sysfs")]
    pub root: PathBuf,
}

fn default_sysfs() -> PathBuf {
    PathBuf::from("/sys")
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct VfConfig {
    /// The VF's netdev on the host; empty when only its index is known.
    #[serde(default)]
    pub vf: String,
    pub representor: String,
    /// The VF number on the host PF (`virtfn<N>`).
    #[serde(default)]
    pub index: Option<u32>,
}

fn default_mtu() -> u32 {
    1500
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// e.g. `https://127.0.0.1:50051`
    pub endpoint: String,
    /// The name the controller's certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Reconnect backoff bounds, in milliseconds.
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OvsConfig {
    pub db_socket: PathBuf,
    /// Where `<bridge>.mgmt` lives.
    pub run_dir: PathBuf,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// `netdev` (userspace, the lab) or `system` (kernel / hardware offload).
    #[serde(default = "default_datapath")]
    pub datapath_type: String,
    #[serde(default)]
    pub hw_offload: bool,
    /// The OpenFlow backend. Only `ovs-ofctl` exists in this release.
    #[serde(default = "default_backend")]
    pub openflow_backend: String,
    #[serde(default = "default_ofctl")]
    pub ofctl_path: String,
}

fn default_server_name() -> String {
    "dpu-controller".into()
}
fn default_backoff_min() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    10_000
}
fn default_bridge() -> String {
    "br-dpu".into()
}
fn default_datapath() -> String {
    "netdev".into()
}
fn default_backend() -> String {
    "ovs-ofctl".into()
}
fn default_ofctl() -> String {
    "ovs-ofctl".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be read or does not fit the schema.
    #[error("config {path}: {source}")]
    Load {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    /// A value is present but not acceptable.
    #[error("config {path}: {field}: {message}")]
    Invalid {
        path: String,
        field: &'static str,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let cfg: Config = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("DPU_AGENT")
                    .prefix_separator("_")
                    .separator("__"),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|source| ConfigError::Load {
                path: p.clone(),
                source,
            })?;
        cfg.check(&p)?;
        Ok(cfg)
    }

    fn check(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |field, message: String| {
            Err(ConfigError::Invalid {
                path: path.to_string(),
                field,
                message,
            })
        };
        if let Err(m) = dpu_model::check_name(&self.node_name) {
            return bad("node_name", m);
        }
        if !matches!(self.ovs.datapath_type.as_str(), "netdev" | "system") {
            return bad(
                "ovs.datapath_type",
                format!(
                    "{:?}: want \"netdev\" or \"system\"",
                    self.ovs.datapath_type
                ),
            );
        }
        if self.ovs.openflow_backend != "ovs-ofctl" {
            return bad(
                "ovs.openflow_backend",
                format!(
                    "{:?}: this release has only \"ovs-ofctl\"",
                    self.ovs.openflow_backend
                ),
            );
        }
        if self.ovs.bridge.is_empty() || self.ovs.bridge.len() > 15 {
            return bad("ovs.bridge", "must be 1..=15 characters".into());
        }
        if !self.controller.endpoint.starts_with("https://") {
            return bad(
                "controller.endpoint",
                format!(
                    "{:?}: must be an https:// URL (mTLS only)",
                    self.controller.endpoint
                ),
            );
        }
        if let Some(shim) = &self.shim {
            if let Err(m) = dpu_model::check_name(&shim.client_name) {
                return bad("shim.client_name", m);
            }
            if !(576..=9216).contains(&shim.mtu) {
                return bad(
                    "shim.mtu",
                    format!("{} is out of range (576..=9216)", shim.mtu),
                );
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, v) in shim.vfs.iter().enumerate() {
                if v.vf.is_empty() && v.index.is_none() {
                    return bad("shim.vfs", format!("entry {i}: needs vf or index"));
                }
                let names = [&v.representor]
                    .into_iter()
                    .chain((!v.vf.is_empty()).then_some(&v.vf));
                for name in names {
                    if name.is_empty() || name.len() > 15 || !seen.insert(name.clone()) {
                        return bad(
                            "shim.vfs",
                            format!("entry {i}: {name:?} is empty, longer than 15 bytes, or listed twice"),
                        );
                    }
                }
            }
        }
        if self.controller.backoff_min_ms == 0
            || self.controller.backoff_min_ms > self.controller.backoff_max_ms
        {
            return bad(
                "controller.backoff_min_ms",
                "must be > 0 and <= backoff_max_ms".into(),
            );
        }
        Ok(())
    }

    /// `unix:<run_dir>/<bridge>.mgmt`
    pub fn ofctl_target(&self) -> String {
        format!(
            "unix:{}/{}.mgmt",
            self.ovs.run_dir.display(),
            self.ovs.bridge
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const GOOD: &str = r#"
node_name = "dpu-1"
state_dir = "/tmp/x"
[controller]
endpoint = "https://127.0.0.1:50051"
ca_file = "ca.pem"
cert_file = "dpu-1.pem"
key_file = "dpu-1.key"
[ovs]
db_socket = "/run/openvswitch/db.sock"
run_dir = "/run/openvswitch"
"#;

    fn write(s: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(s.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_fill_in() {
        let f = write(GOOD);
        let c = Config::load(f.path()).unwrap();
        assert_eq!(c.ovs.bridge, "br-dpu");
        assert_eq!(c.ovs.datapath_type, "netdev");
        assert_eq!(c.ofctl_target(), "unix:/run/openvswitch/br-dpu.mgmt");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let f = write(&format!("{GOOD}\nbridge_typo = 1\n"));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("bridge_typo"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let f = write(&GOOD.replace("dpu-1\"", "DPU 1\""));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("node_name"), "{e}");
    }
}
