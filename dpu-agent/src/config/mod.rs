//! Agent configuration, in layers, later wins: the defaults below, the file
//! (`/etc/dpu-agent/agent.toml`), its drop-ins (`agent.toml.d/*.toml`, in
//! lexical order), then `DPU_AGENT_*` environment variables
//! (`DPU_AGENT_OVS__BRIDGE=br1` sets `ovs.bridge`). Unknown keys are an error, and
//! every error names the key and the file or variable that set it (`layers`).

mod layers;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use layers::drop_in_dir;

/// Where `dpu-agent run` and `check-config` look without `--config`.
pub const DEFAULT_PATH: &str = "/etc/dpu-agent/agent.toml";
/// `DPU_AGENT_<KEY>` overrides `<key>`; nested keys are joined by `__`.
pub const ENV_PREFIX: &str = "DPU_AGENT_";
/// What `check-config` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// The agent's configuration. `Serialize` is for `check-config`: it writes
/// [`REDACTED`] instead of secrets, so its output is not a copy of the input.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This DPU's node name; must match the DNS SAN of its certificate.
    pub node_name: String,
    /// Where the last applied intent and local ids are kept (mode 0700).
    pub state_dir: PathBuf,
    pub controller: ControllerConfig,
    pub ovs: OvsConfig,
    /// The attachment service for the host shim; absent means no pods attach here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<ShimConfig>,
    /// First-boot enrollment with a bootstrap token. With it, the agent obtains and
    /// renews its own certificate and writes it to `controller.cert_file` and
    /// `key_file`; without it those files are the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll: Option<EnrollConfig>,
    /// The host's PF representor, for node ClusterIP Services; absent means the
    /// host does not reach Services through this DPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostConfig>,
    /// The uplink toward the outside network (EIPs, bare-metal servers); absent
    /// means this DPU owns no EIP and reaches no bare-metal server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkConfig>,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[ops]`: the operator socket `dpu-agent show|trace|explain` talk to.
    #[serde(default)]
    pub ops: OpsConfig,
}

/// `[metrics]`: a Prometheus `/metrics` endpoint for the management network.
/// On by default on loopback. A non-loopback address needs TLS (`tls_cert_file`
/// and `tls_key_file`); `client_ca_file` also makes scrapers show a certificate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_metrics_listen")]
    pub listen: std::net::SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// The `dpu_backend_*` series: one per (Service, backend) each, which at
    /// 10k Services of 10 backends is most of a 35 MiB scrape.
    #[serde(default = "default_true")]
    pub per_backend: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: default_metrics_listen(),
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            per_backend: true,
        }
    }
}

impl MetricsConfig {
    /// TLS is configured (both the certificate and its key).
    pub fn tls(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_key_file.is_some()
    }
}

/// `[ops]`: the local operator socket (mode 0600, root only).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    #[serde(default = "default_ops_socket")]
    pub socket: PathBuf,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            socket: default_ops_socket(),
        }
    }
}

/// Where `dpu-agent show|trace|explain` find the running agent without `--socket`.
pub const DEFAULT_OPS_SOCKET: &str = "/run/dpu-agent/ops.sock";
/// The default metrics address: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";

fn default_true() -> bool {
    true
}
fn default_metrics_listen() -> std::net::SocketAddr {
    DEFAULT_METRICS_LISTEN.parse().expect("a valid address")
}
fn default_ops_socket() -> PathBuf {
    DEFAULT_OPS_SOCKET.into()
}

/// `[uplink]`: the port toward the outside network.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The `external_ids:iface-id` of the uplink's interface on the bridge.
    pub port: String,
    /// The MAC this DPU uses on the uplink: it answers ARP for its EIPs with it,
    /// and sends from it. Default: one derived from the node name (locally
    /// administered, `02:d9:…`), so DPUs sharing a segment never clash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl UplinkConfig {
    /// The uplink MAC: the configured one, or the one derived from `node`.
    pub fn mac_for(&self, node: &str) -> dpu_model::Mac {
        match self.mac.as_deref().map(str::parse) {
            Some(Ok(m)) => m,
            // `check` refused a bad one; derive as for an absent one.
            _ => derived_uplink_mac(node),
        }
    }
}

/// `02:d9:` and 32 bits of a stable hash of the node name.
pub fn derived_uplink_mac(node: &str) -> dpu_model::Mac {
    let h = crate::compile::pipeline::cookie::object_hash(&format!("uplink/{node}"));
    let b = h.to_be_bytes();
    dpu_model::Mac([0x02, 0xd9, b[4], b[5], b[6], b[7]])
}

/// `[host]`: where the host itself (not a pod) meets the DPU's bridge.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The `external_ids:iface-id` of the PF representor's interface.
    pub port: String,
}

/// `[enroll]`: exactly one of `token` and `token_file`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// The bootstrap token itself. A secret: never printed or logged.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub token: Option<String>,
    /// A file holding the token (surrounding whitespace is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

fn redact<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

impl std::fmt::Debug for EnrollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollConfig")
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl EnrollConfig {
    /// The token: inline, or read from `token_file` now (so a token dropped in
    /// place later is seen by the next call), trimmed.
    pub fn token(&self) -> io::Result<String> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
            (None, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "[enroll] has neither token nor token_file",
                ))
            }
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the bootstrap token is empty",
            ));
        }
        Ok(token.to_string())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs_from_sysfs: Option<SysfsVfs>,
}

/// Representors are the netdevs on the uplink's eswitch (same `phys_switch_id`)
/// whose `phys_port_name` is `pf<pf>vf<N>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VfConfig {
    /// The VF's netdev on the host; empty when only its index is known.
    #[serde(default)]
    pub vf: String,
    pub representor: String,
    /// The VF number on the host PF (`virtfn<N>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

fn default_mtu() -> u32 {
    1500
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Shorthand for a one-entry `endpoints`, e.g. `https://127.0.0.1:50051`.
    /// Read it through [`ControllerConfig::endpoints`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The controllers, in the order the session tries them (1..=16 of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
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

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// The OpenFlow backend: `native` (the agent speaks OpenFlow 1.5 itself, the
    /// default) or `ovs-ofctl` (one `ovs-ofctl bundle` process per change).
    #[serde(default = "default_backend")]
    pub openflow_backend: String,
    #[serde(default = "default_ofctl")]
    pub ofctl_path: String,
    /// `ovs-appctl`, for `dpctl/dump-flows` (metrics) and `ofproto/trace`. It
    /// finds `ovs-vswitchd` through `run_dir`.
    #[serde(default = "default_appctl")]
    pub appctl_path: String,
    /// The network namespace `ovs-vswitchd` runs in, by path (e.g.
    /// `/run/netns/dpu0`), when it is not the agent's own: the devices it makes
    /// (the health-probe links) are there. Absent on a DPU; the lab sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

/// `backoff_max_ms` above an hour is a typo, and TOML integers are i64.
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// More controller replicas than this is a typo too.
pub const MAX_ENDPOINTS: usize = 16;

impl ControllerConfig {
    /// The controllers to try, in order: `endpoints`, or `endpoint` alone.
    /// `Config::load` refused a config with both, or neither.
    pub fn endpoints(&self) -> &[String] {
        match &self.endpoint {
            Some(one) => std::slice::from_ref(one),
            None => &self.endpoints,
        }
    }

    /// The key at fault (`controller.endpoints[1]`) and why.
    fn check_endpoints(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((key.to_string(), message));
        match (&self.endpoint, self.endpoints.len()) {
            (Some(_), n) if n > 0 => {
                return bad(
                    "controller.endpoint",
                    "set controller.endpoint or controller.endpoints, not both".into(),
                )
            }
            (None, 0) => {
                return bad(
                    "controller.endpoints",
                    "missing or empty: set controller.endpoints, or controller.endpoint for one"
                        .into(),
                )
            }
            (None, n) if n > MAX_ENDPOINTS => {
                return bad(
                    "controller.endpoints",
                    format!("{n} entries: at most {MAX_ENDPOINTS}"),
                )
            }
            _ => {}
        }
        let all = self.endpoints();
        for (i, e) in all.iter().enumerate() {
            let key = match self.endpoint {
                Some(_) => "controller.endpoint".to_string(),
                None => format!("controller.endpoints[{i}]"),
            };
            if !e.starts_with("https://") {
                return bad(&key, format!("{e:?}: must be an https:// URL (mTLS only)"));
            }
            if let Some(first) = all[..i].iter().position(|x| x == e) {
                return bad(&key, format!("{e:?} is also controller.endpoints[{first}]"));
            }
        }
        Ok(())
    }
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
    crate::reconcile::backend::select::NATIVE.into()
}
fn default_ofctl() -> String {
    "ovs-ofctl".into()
}
fn default_appctl() -> String {
    "ovs-appctl".into()
}

/// Why a config was refused (exit code 2). Each names the file or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file or the drop-in directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A file is not TOML.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A key is unknown, missing, of the wrong type or not acceptable. `origin` is
    /// the file or `DPU_AGENT_*` variable that set it (or its table).
    #[error("{origin}: {key}: {message}")]
    Key {
        origin: String,
        key: String,
        message: String,
    },
}

/// A merged config and the layers it came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The files and variables applied, in order (later wins); the defaults come
    /// before all of them.
    pub sources: Vec<String>,
}

impl Config {
    /// `path`, its drop-ins and this process's `DPU_AGENT_*` variables.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_layers(path, std::env::vars_os()).map(|l| l.config)
    }

    /// `path`, its drop-ins (`<path>.d/*.toml`) and the `DPU_AGENT_*` variables
    /// among `env`, merged and checked.
    pub fn load_layers<I, K, V>(path: &Path, env: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let mut layers = layers::read(path, env)?;
        layers::one_setting(
            &mut layers,
            &["controller.endpoint", "controller.endpoints"],
        );
        let origins = layers::Origins::of(&layers);
        let config: Config = layers::merge(&layers)
            .and_then(|c| c.try_deserialize())
            .map_err(|e| origins.explain(e))?;
        config
            .check()
            .map_err(|(key, message)| origins.invalid(&key, message))?;
        Ok(Loaded {
            config,
            sources: layers.into_iter().map(|l| l.origin).collect(),
        })
    }

    /// The effective config as TOML, defaults filled in (the derived uplink
    /// MAC too, which an operator cannot otherwise find), secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        let mut effective = self.clone();
        if let Some(u) = &mut effective.uplink {
            u.mac = Some(u.mac_for(&self.node_name).to_string());
        }
        toml::to_string(&effective)
    }

    /// The rules serde cannot express: the key at fault and why.
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((key.to_string(), message));
        if let Err(m) = dpu_model::check_name(&self.node_name) {
            return bad("node_name", m);
        }
        if self.host.as_ref().is_some_and(|h| h.port.is_empty()) {
            return bad("host.port", "must not be empty".into());
        }
        if let Some(u) = &self.uplink {
            if u.port.is_empty() {
                return bad("uplink.port", "must not be empty".into());
            }
            if self.host.as_ref().is_some_and(|h| h.port == u.port) {
                return bad(
                    "uplink.port",
                    format!("{:?} is also host.port; they are different ports", u.port),
                );
            }
            if let Some(Err(m)) = u.mac.as_deref().map(str::parse::<dpu_model::Mac>) {
                return bad("uplink.mac", m);
            }
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
        if ![
            crate::reconcile::backend::select::NATIVE,
            crate::reconcile::backend::select::OFCTL,
        ]
        .contains(&self.ovs.openflow_backend.as_str())
        {
            return bad(
                "ovs.openflow_backend",
                format!(
                    "{:?}: want \"native\" or \"ovs-ofctl\"",
                    self.ovs.openflow_backend
                ),
            );
        }
        if self.ovs.bridge.is_empty() || self.ovs.bridge.len() > 15 {
            return bad("ovs.bridge", "must be 1..=15 characters".into());
        }
        self.controller.check_endpoints()?;
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
        let m = &self.metrics;
        if m.tls_cert_file.is_some() != m.tls_key_file.is_some() {
            return bad(
                "metrics.tls_cert_file",
                "set both metrics.tls_cert_file and metrics.tls_key_file, or neither".into(),
            );
        }
        if m.client_ca_file.is_some() && !m.tls() {
            return bad(
                "metrics.client_ca_file",
                "needs metrics.tls_cert_file and metrics.tls_key_file".into(),
            );
        }
        if m.enabled && !m.listen.ip().is_loopback() && !m.tls() {
            return bad(
                "metrics.listen",
                format!(
                    "{} is not a loopback address: serving metrics there needs \
                     metrics.tls_cert_file and metrics.tls_key_file (or metrics.enabled = false)",
                    m.listen
                ),
            );
        }
        if self.ops.socket.as_os_str().is_empty() || !self.ops.socket.is_absolute() {
            return bad("ops.socket", "must be an absolute path".into());
        }
        if self.controller.backoff_min_ms == 0
            || self.controller.backoff_min_ms > self.controller.backoff_max_ms
        {
            return bad(
                "controller.backoff_min_ms",
                "must be > 0 and <= backoff_max_ms".into(),
            );
        }
        if self.controller.backoff_max_ms > MAX_BACKOFF_MS {
            return bad(
                "controller.backoff_max_ms",
                format!("must be <= {MAX_BACKOFF_MS} (one hour)"),
            );
        }
        if let Some(enroll) = &self.enroll {
            match (&enroll.token, &enroll.token_file) {
                (Some(_), Some(_)) => {
                    return bad(
                        "enroll.token",
                        "set exactly one of enroll.token and enroll.token_file, not both".into(),
                    )
                }
                (None, None) => {
                    return bad(
                        "enroll.token",
                        "[enroll] needs enroll.token or enroll.token_file".into(),
                    )
                }
                // Never echo the token.
                (Some(t), None) if t.is_empty() || t.contains(char::is_whitespace) => {
                    return bad("enroll.token", "is empty or contains whitespace".into())
                }
                (None, Some(p)) if p.as_os_str().is_empty() => {
                    return bad("enroll.token_file", "is empty".into())
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `<run_dir>/<bridge>.mgmt`, the bridge's OpenFlow management socket.
    pub fn mgmt_path(&self) -> PathBuf {
        self.ovs.run_dir.join(format!("{}.mgmt", self.ovs.bridge))
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
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// The smallest valid config; the layering tests start from it too.
    pub(crate) const GOOD: &str = r#"
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

    /// Loads `text` with no environment (the test process's own is not ours).
    /// Other modules' tests build their config with it too.
    pub(crate) fn load(text: &str) -> Result<Config, String> {
        let f = write(text);
        Config::load_layers(f.path(), Vec::<(OsString, OsString)>::new())
            .map(|l| l.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_in() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.ovs.bridge, "br-dpu");
        assert_eq!(c.ovs.datapath_type, "netdev");
        assert_eq!(c.ofctl_target(), "unix:/run/openvswitch/br-dpu.mgmt");
        assert_eq!(c.ovs.openflow_backend, "native");
        assert!(c.shim.is_none() && c.enroll.is_none());
    }

    #[test]
    fn the_openflow_backend_is_native_or_ovs_ofctl() {
        let with = |b: &str| load(&format!("{GOOD}openflow_backend = \"{b}\"\n"));
        assert_eq!(with("ovs-ofctl").unwrap().ovs.openflow_backend, "ovs-ofctl");
        assert_eq!(with("native").unwrap().ovs.openflow_backend, "native");
        let e = with("ryu").unwrap_err();
        assert!(
            e.contains(": ovs.openflow_backend: \"ryu\": want \"native\" or \"ovs-ofctl\""),
            "{e}"
        );
    }

    #[test]
    fn metrics_stay_on_loopback_unless_tls_is_configured() {
        let c = load(GOOD).unwrap();
        assert!(c.metrics.enabled && c.metrics.listen.ip().is_loopback());
        assert_eq!(c.ops.socket, std::path::Path::new(DEFAULT_OPS_SOCKET));
        let with = |m: &str| load(&format!("{GOOD}[metrics]\n{m}\n"));
        let e = with("listen = \"0.0.0.0:9477\"").unwrap_err();
        assert!(
            e.contains(": metrics.listen: 0.0.0.0:9477 is not a loopback address"),
            "{e}"
        );
        // Off, or with TLS, a management address is fine.
        assert!(with("listen = \"0.0.0.0:9477\"\nenabled = false").is_ok());
        let tls =
            "listen = \"192.0.2.1:9477\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"";
        assert!(with(tls).unwrap().metrics.tls());
        let e = with("tls_cert_file = \"c.pem\"").unwrap_err();
        assert!(e.contains(": metrics.tls_cert_file: set both"), "{e}");
        let e = with("client_ca_file = \"ca.pem\"").unwrap_err();
        assert!(e.contains(": metrics.client_ca_file: needs"), "{e}");
        let e = load(&format!("{GOOD}[ops]\nsocket = \"ops.sock\"\n")).unwrap_err();
        assert!(e.contains(": ops.socket: must be an absolute path"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = load(&format!("{GOOD}\nbridge_typo = 1\n")).unwrap_err();
        assert!(e.contains("ovs.bridge_typo: unknown key"), "{e}");
        let e = load(&format!(
            "{GOOD}[enroll]\ntoken = \"t\"\ntokn_file = \"x\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("enroll.tokn_file: unknown key"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = load(&GOOD.replace("dpu-1\"", "DPU 1\"")).unwrap_err();
        assert!(e.contains(": node_name: "), "{e}");
        let e = load(&GOOD.replace(
            "key_file = \"dpu-1.key\"",
            "key_file = \"dpu-1.key\"\nbackoff_max_ms = 3600001",
        ))
        .unwrap_err();
        assert!(
            e.contains(": controller.backoff_max_ms: must be <= 3600000"),
            "{e}"
        );
    }

    /// GOOD with its `endpoint` line replaced by `line`.
    fn with_endpoints(line: &str) -> Result<Config, String> {
        load(&GOOD.replace("endpoint = \"https://127.0.0.1:50051\"", line))
    }

    #[test]
    fn endpoint_is_a_one_entry_endpoints() {
        let one = load(GOOD).unwrap();
        assert_eq!(one.controller.endpoints(), ["https://127.0.0.1:50051"]);
        let two = with_endpoints(r#"endpoints = ["https://a:50051", "https://b:50051"]"#).unwrap();
        assert_eq!(
            two.controller.endpoints(),
            ["https://a:50051", "https://b:50051"]
        );
        // check-config prints the list as given, and it loads back.
        let printed = two.to_redacted_toml().unwrap();
        assert!(
            printed.contains("endpoints = [\"https://a:50051\", \"https://b:50051\"]"),
            "{printed}"
        );
        assert_eq!(
            load(&printed).unwrap().controller.endpoints(),
            two.controller.endpoints()
        );
    }

    #[test]
    fn bad_endpoints_name_the_entry() {
        let e = with_endpoints(r#"endpoints = ["https://a:1", "http://b:1"]"#).unwrap_err();
        assert!(
            e.contains(": controller.endpoints[1]: \"http://b:1\": must be an https:// URL"),
            "{e}"
        );
        let e = with_endpoints(r#"endpoint = "http://a:1""#).unwrap_err();
        assert!(
            e.contains(": controller.endpoint: \"http://a:1\": must be an https:// URL"),
            "{e}"
        );
        let e = with_endpoints(r#"endpoints = ["https://a:1", "https://b:1", "https://a:1"]"#)
            .unwrap_err();
        assert!(
            e.contains(
                ": controller.endpoints[2]: \"https://a:1\" is also controller.endpoints[0]"
            ),
            "{e}"
        );
        let e = with_endpoints("endpoints = []").unwrap_err();
        assert!(e.contains(": controller.endpoints: missing"), "{e}");
        let e = with_endpoints("").unwrap_err();
        assert!(e.contains(": controller.endpoints: missing"), "{e}");
        let seventeen: Vec<String> = (0..17).map(|i| format!("\"https://c{i}:1\"")).collect();
        let e = with_endpoints(&format!("endpoints = [{}]", seventeen.join(", "))).unwrap_err();
        assert!(
            e.contains(": controller.endpoints: 17 entries: at most 16"),
            "{e}"
        );
        let sixteen = &seventeen[..16];
        assert!(with_endpoints(&format!("endpoints = [{}]", sixteen.join(", "))).is_ok());
    }

    #[test]
    fn endpoint_and_endpoints_together_are_refused() {
        let e = with_endpoints("endpoint = \"https://a:1\"\nendpoints = [\"https://b:1\"]")
            .unwrap_err();
        assert!(
            e.contains(
                ": controller.endpoint: set controller.endpoint or controller.endpoints, not both"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_later_layer_sets_the_endpoints_whichever_key_it_uses() {
        // The packaged file has `endpoint`; a drop-in lists two, and a variable
        // puts one back.
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("agent.toml");
        std::fs::write(&main, GOOD).unwrap();
        let drop_in = drop_in_dir(&main);
        std::fs::create_dir(&drop_in).unwrap();
        std::fs::write(
            drop_in.join("50-provision.toml"),
            "[controller]\nendpoints = [\"https://a:1\", \"https://b:1\"]\n",
        )
        .unwrap();
        let endpoints = |env: Vec<(&str, &str)>| {
            Config::load_layers(&main, env)
                .map(|l| l.config.controller.endpoints().to_vec())
                .map_err(|e| e.to_string())
        };
        assert_eq!(endpoints(vec![]).unwrap(), ["https://a:1", "https://b:1"]);
        assert_eq!(
            endpoints(vec![("DPU_AGENT_CONTROLLER__ENDPOINT", "https://c:1")]).unwrap(),
            ["https://c:1"]
        );
        // Both in one layer is still an error, and names the layer.
        std::fs::write(
            drop_in.join("60-both.toml"),
            "[controller]\nendpoint = \"https://c:1\"\nendpoints = [\"https://d:1\"]\n",
        )
        .unwrap();
        let e = endpoints(vec![]).unwrap_err();
        assert!(
            e.contains("60-both.toml: controller.endpoint: set controller.endpoint or controller.endpoints, not both"),
            "{e}"
        );
    }

    #[test]
    fn enroll_needs_exactly_one_token_source() {
        let both = format!("{GOOD}[enroll]\ntoken = \"dpub.abc\"\ntoken_file = \"/t\"\n");
        let e = load(&both).unwrap_err();
        assert!(
            e.contains(": enroll.token: set exactly one of enroll.token and enroll.token_file"),
            "{e}"
        );
        assert!(!e.contains("dpub.abc"), "{e}");
        let e = load(&format!("{GOOD}[enroll]\n")).unwrap_err();
        assert!(e.contains(": enroll.token: [enroll] needs"), "{e}");
        let e = load(&format!("{GOOD}[enroll]\ntoken = \"dpub abc\"\n")).unwrap_err();
        assert!(
            e.contains(": enroll.token: is empty or contains whitespace"),
            "{e}"
        );
        assert!(!e.contains("dpub abc"), "{e}");

        let c = load(&format!("{GOOD}[enroll]\ntoken = \"dpub.abc\"\n")).unwrap();
        assert_eq!(c.enroll.unwrap().token().unwrap(), "dpub.abc");
        let token = write("  dpub.fromfile\n");
        let c = load(&format!(
            "{GOOD}[enroll]\ntoken_file = \"{}\"\n",
            token.path().display()
        ))
        .unwrap();
        assert_eq!(c.enroll.unwrap().token().unwrap(), "dpub.fromfile");
    }

    #[test]
    fn check_config_shows_the_derived_uplink_mac() {
        let c = load(&format!("{GOOD}\n[uplink]\nport = \"p0\"\n")).unwrap();
        let derived = c.uplink.as_ref().unwrap().mac_for(&c.node_name);
        let out = c.to_redacted_toml().unwrap();
        assert!(
            out.contains(&format!("[uplink]\nport = \"p0\"\nmac = \"{derived}\"")),
            "{out}"
        );
        assert!(derived.to_string().starts_with("02:d9:"));
    }

    #[test]
    fn secrets_are_redacted() {
        let c = load(&format!("{GOOD}[enroll]\ntoken = \"dpub.s3cret\"\n")).unwrap();
        let out = c.to_redacted_toml().unwrap();
        assert!(out.contains("[enroll]\ntoken = \"<redacted>\"\n"), "{out}");
        let debug = format!("{c:?}");
        for text in [&out, &debug] {
            assert!(!text.contains("s3cret"), "{text}");
        }
        // token_file is a path, not a secret.
        let c = load(&format!("{GOOD}[enroll]\ntoken_file = \"/etc/t\"\n")).unwrap();
        let out = c.to_redacted_toml().unwrap();
        assert!(out.contains("[enroll]\ntoken_file = \"/etc/t\"\n"), "{out}");
    }

    /// Every key, set, for the round trip and the docs check.
    const FULL: &str = r#"
node_name = "dpu-1"
state_dir = "/var/lib/dpu-agent"
[controller]
endpoints = ["https://10.0.0.1:50051", "https://10.0.0.2:50051"]
server_name = "ctl"
ca_file = "ca.pem"
cert_file = "dpu-1.pem"
key_file = "dpu-1.key"
backoff_min_ms = 100
backoff_max_ms = 1000
[ovs]
db_socket = "/run/openvswitch/db.sock"
run_dir = "/run/openvswitch"
bridge = "br-x"
datapath_type = "system"
hw_offload = true
openflow_backend = "ovs-ofctl"
ofctl_path = "/usr/bin/ovs-ofctl"
appctl_path = "/usr/bin/ovs-appctl"
netns = "/run/netns/dpu0"
[metrics]
enabled = true
listen = "192.0.2.10:9477"
tls_cert_file = "/etc/dpu-agent/metrics.pem"
tls_key_file = "/etc/dpu-agent/metrics.key"
client_ca_file = "/etc/dpu-agent/scrapers-ca.pem"
per_backend = false
[ops]
socket = "/run/dpu-agent/ops.sock"
[shim]
listen = "169.254.0.1:50052"
client_name = "shim"
mtu = 9000
[shim.vfs_from_sysfs]
uplink = "p0"
pf = 1
root = "/sys"
[[shim.vfs]]
vf = "eth1"
representor = "pf0vf0"
index = 0
[enroll]
token_file = "/etc/dpu-agent/bootstrap-token"
[host]
port = "pf0hpf"
[uplink]
port = "p0"
mac = "02:d9:00:00:01:01"
"#;

    #[test]
    fn the_printed_config_loads_back_the_same() {
        let first = load(FULL).unwrap().to_redacted_toml().unwrap();
        let second = load(&first).unwrap().to_redacted_toml().unwrap();
        assert_eq!(first, second);
    }

    /// The dotted keys of a TOML table; array-of-tables entries as `a.b[].c`.
    fn keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = format!("{prefix}{k}");
            match v {
                toml::Value::Table(t) => keys(&format!("{key}."), t, out),
                toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                    for t in a.iter().filter_map(toml::Value::as_table) {
                        keys(&format!("{key}[]."), t, out);
                    }
                }
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn the_configuration_doc_lists_every_key() {
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/configuration.md"
        ))
        .unwrap();
        let mut full: toml::Table = toml::from_str(FULL).unwrap();
        // One of each pair is allowed at a time; the docs list both.
        full["enroll"]
            .as_table_mut()
            .unwrap()
            .insert("token".into(), "x".into());
        full["controller"]
            .as_table_mut()
            .unwrap()
            .insert("endpoint".into(), "x".into());
        let mut all = Vec::new();
        keys("", &full, &mut all);
        // FULL itself must be complete: every key the schema prints is in it.
        let mut printed = Vec::new();
        let c = load(FULL).unwrap();
        keys(
            "",
            &toml::from_str(&c.to_redacted_toml().unwrap()).unwrap(),
            &mut printed,
        );
        for k in &printed {
            assert!(all.contains(k), "FULL lacks {k}");
        }
        for k in all {
            assert!(
                docs.contains(&format!("| `{k}` |")),
                "docs/configuration.md has no row for `{k}`"
            );
        }
    }

    #[test]
    fn the_image_default_config_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../image/agent.toml"));
        let c = Config::load_layers(path, Vec::<(OsString, OsString)>::new())
            .unwrap()
            .config;
        assert!(
            c.controller.cert_file.starts_with(&c.state_dir),
            "the enrolled identity must be writable"
        );
        assert!(c.controller.key_file.starts_with(&c.state_dir));
    }
}
