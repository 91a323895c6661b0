//! The network config on stdin: decoded, checked per command, and turned into
//! [`NetConf`]. Runtime-generated keys (`prevResult`, `runtimeConfig`, `args`,
//! `cni.dev/*`) are accepted; other unknown keys are ignored, as the spec lets runtimes
//! pass fields through. Pure: no I/O.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::env::{check_ifname, Command};
use crate::error::ShimError;

/// The spec versions we speak, oldest first. The last is the current one.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// The longest agent call we allow, so a typo cannot hang the kubelet for hours.
pub const MAX_TIMEOUT_MS: u64 = 120_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "0.4.0" => Self::V0_4_0,
            "1.0.0" => Self::V1_0_0,
            "1.1.0" => Self::V1_1_0,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    agent: Option<String>,
    agent_name: Option<String>,
    tls: Option<RawTls>,
    subnet: Option<String>,
    pf: Option<String>,
    vf_allow_list: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    args: Option<RawArgs>,
    ipam: Option<serde_json::Value>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Deserialize)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
struct RawArgs {
    #[serde(default)]
    cni: RawCniArgs,
}

#[derive(Debug, Deserialize, Default)]
struct RawCniArgs {
    #[serde(default)]
    labels: Vec<Label>,
}

/// One pod label (the CNI `args.cni.labels` convention).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Where and how to reach the agent.
#[derive(Debug, Clone)]
pub struct AgentConf {
    /// `https://host:port`.
    pub endpoint: String,
    /// The name in the agent's certificate.
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The bound of every connect and call.
    pub timeout: Duration,
}

/// A checked network config.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub agent: AgentConf,
    /// Empty unless the command needs it (ADD) or the config has it.
    pub subnet: String,
    /// The host PF whose VFs the agent names by index (hardware); `None` in the lab,
    /// where the agent names VF netdevs directly. When set, ADD moves only VFs of it.
    pub pf: Option<String>,
    /// `vfAllowList`: the only host netdevs ADD may move into a pod (the lab's veths,
    /// or a subset of the PF's VFs). Empty: no list.
    pub vf_allow_list: Vec<String>,
    pub labels: Vec<Label>,
    pub prev_result: Option<serde_json::Value>,
    pub valid_attachments: HashSet<ValidAttachment>,
}

/// Decodes and checks the config for `command`. Not for VERSION.
pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, ShimError> {
    let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| ShimError::Decode {
        what: "network config".into(),
        detail: e.to_string(),
    })?;

    let version = raw.cni_version.unwrap_or_default();
    let cni_version =
        CniVersion::parse(&version).ok_or_else(|| ShimError::IncompatibleVersion {
            version: version.clone(),
            reason: format!("supported versions are {}", SUPPORTED_VERSIONS.join(", ")),
        })?;
    if matches!(command, Command::Status | Command::Gc) && cni_version < CniVersion::V1_1_0 {
        return Err(ShimError::IncompatibleVersion {
            version,
            reason: "STATUS and GC need cniVersion 1.1.0".into(),
        });
    }

    let name = required(raw.name, "name")?;
    check_network_name(&name)?;
    required(raw.plugin_type, "type")?;
    if let Some(ipam) = raw.ipam {
        return Err(ShimError::UnsupportedField {
            field: "ipam".into(),
            value: format!("{ipam} (the DPU agent assigns addresses; remove the ipam section)"),
        });
    }

    let agent = agent_conf(raw.agent, raw.agent_name, raw.tls, raw.timeout_ms)?;
    let subnet = raw.subnet.unwrap_or_default();
    if command == Command::Add && subnet.is_empty() {
        return Err(ShimError::config(
            "subnet",
            "required: the Subnet to take an address from",
        ));
    }
    let pf = raw.pf.filter(|p| !p.is_empty());
    if let Some(pf) = &pf {
        check_ifname(pf).map_err(|reason| ShimError::config("pf", reason))?;
    }
    let vf_allow_list = raw.vf_allow_list.unwrap_or_default();
    for (i, vf) in vf_allow_list.iter().enumerate() {
        check_ifname(vf)
            .map_err(|reason| ShimError::config(format!("vfAllowList[{i}]"), reason))?;
    }
    // ADD moves a host netdev into the pod: the config must say which ones it may be,
    // before the agent is asked for anything.
    if command == Command::Add && pf.is_none() && vf_allow_list.is_empty() {
        return Err(ShimError::config(
            "pf or vfAllowList",
            "ADD needs one of them to know which host netdevs it may move into a pod: \
             \"pf\" (only VFs of this SR-IOV PF) or \"vfAllowList\" (only these netdevs, \
             e.g. the veths a lab uses as VFs)",
        ));
    }
    let labels = raw.args.unwrap_or_default().cni.labels;
    if let Some(i) = labels.iter().position(|l| l.key.is_empty()) {
        return Err(ShimError::config(
            format!("args.cni.labels[{i}].key"),
            "must not be empty",
        ));
    }

    let prev_result = raw.prev_result.filter(|v| !v.is_null());
    if command == Command::Check && prev_result.is_none() {
        return Err(ShimError::config(
            "prevResult",
            "required for CHECK (the result of the ADD)",
        ));
    }
    let valid_attachments = match (command, raw.valid_attachments) {
        (Command::Gc, None) => {
            return Err(ShimError::config(
                "cni.dev/valid-attachments",
                "required for GC (without it every attachment would look stale)",
            ))
        }
        (_, list) => list.unwrap_or_default().into_iter().collect(),
    };

    Ok(NetConf {
        cni_version,
        name,
        agent,
        subnet,
        pf,
        vf_allow_list,
        labels,
        prev_result,
        valid_attachments,
    })
}

fn required(value: Option<String>, field: &str) -> Result<String, ShimError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ShimError::config(field, "required, missing"))
}

/// Spec §1: starts with an alphanumeric, then alphanumerics, '_', '.' or '-'.
fn check_network_name(name: &str) -> Result<(), ShimError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(ShimError::config(
            "name",
            format!(
                "{name:?} must start with a letter or digit, then letters, digits, '_', '.' or '-'"
            ),
        ))
    }
}

fn agent_conf(
    agent: Option<String>,
    agent_name: Option<String>,
    tls: Option<RawTls>,
    timeout_ms: Option<u64>,
) -> Result<AgentConf, ShimError> {
    let endpoint = required(agent, "agent")?;
    let uri: tonic::transport::Uri = endpoint
        .parse()
        .map_err(|e| ShimError::config("agent", format!("{endpoint:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") || uri.port_u16().is_none() {
        return Err(ShimError::config(
            "agent",
            format!("{endpoint:?} must be https://HOST:PORT (the agent is reached over mTLS)"),
        ));
    }
    let server_name = required(agent_name, "agentName")?;
    let tls = tls.ok_or_else(|| ShimError::config("tls", "required: {ca, cert, key}"))?;
    let path = |p: Option<PathBuf>, field: &str| {
        p.filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| ShimError::config(field, "required, missing"))
    };
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(ShimError::config(
            "timeoutMs",
            format!("{timeout_ms} must be 1 to {MAX_TIMEOUT_MS}"),
        ));
    }
    Ok(AgentConf {
        endpoint,
        server_name,
        ca: path(tls.ca, "tls.ca")?,
        cert: path(tls.cert, "tls.cert")?,
        key: path(tls.key, "tls.key")?,
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// The `cniVersion` of a config, if it is one we speak; used to label error results.
pub fn peek_version(stdin: &[u8]) -> Option<CniVersion> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        cni_version: Option<String>,
    }
    let peek: Peek = serde_json::from_slice(stdin).ok()?;
    CniVersion::parse(&peek.cni_version?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> serde_json::Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "dpu-net",
            "type": "host-shim",
            "agent": "https://169.254.0.1:50052",
            "agentName": "dpu-1",
            "tls": {"ca": "/etc/dpu/ca.pem", "cert": "/etc/dpu/shim.pem", "key": "/etc/dpu/shim.key"},
            "subnet": "blue-a",
            "vfAllowList": ["lab-vf0", "lab-vf1"],
            "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
            "runtimeConfig": {"mac": "x"},
            "cni.dev/attachment-extra": 1,
            "somethingElse": true
        })
    }

    fn parse_json(v: &serde_json::Value, cmd: Command) -> Result<NetConf, ShimError> {
        parse(v.to_string().as_bytes(), cmd)
    }

    fn field_of(r: Result<NetConf, ShimError>) -> String {
        match r {
            Err(ShimError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn full_config_parses_and_ignores_unknown_keys() {
        let c = parse_json(&base(), Command::Add).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_1_0);
        assert_eq!(c.agent.server_name, "dpu-1");
        assert_eq!(c.agent.timeout, Duration::from_millis(5000));
        assert_eq!(c.subnet, "blue-a");
        assert_eq!(
            c.labels,
            [Label {
                key: "app".into(),
                value: "web".into()
            }]
        );
    }

    #[test]
    fn missing_fields_are_named() {
        for field in ["agent", "agentName", "tls", "subnet", "name", "type"] {
            let mut v = base();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(field_of(parse_json(&v, Command::Add)), field);
        }
        let mut v = base();
        v["tls"].as_object_mut().unwrap().remove("key");
        assert_eq!(field_of(parse_json(&v, Command::Add)), "tls.key");
    }

    #[test]
    fn add_needs_a_pf_or_an_allow_list_and_other_commands_do_not() {
        let c = parse_json(&base(), Command::Add).unwrap();
        assert_eq!(c.vf_allow_list, ["lab-vf0", "lab-vf1"]);
        assert_eq!(c.pf, None);

        let mut v = base();
        v.as_object_mut().unwrap().remove("vfAllowList");
        let e = parse_json(&v, Command::Add).unwrap_err();
        assert_eq!(e.code(), 7);
        let doc: serde_json::Value = serde_json::from_str(&e.to_cni_json("1.1.0")).unwrap();
        let msg = doc["msg"].as_str().unwrap();
        assert!(msg.contains("pf or vfAllowList"), "{msg}");
        // An empty list allows nothing, so it is no list.
        v["vfAllowList"] = json!([]);
        assert_eq!(field_of(parse_json(&v, Command::Add)), "pf or vfAllowList");
        for cmd in [Command::Del, Command::Check, Command::Status] {
            let mut v = v.clone();
            v["prevResult"] = json!({});
            assert!(parse_json(&v, cmd).is_ok(), "{cmd:?}");
        }

        v["pf"] = json!("ens1f0");
        let c = parse_json(&v, Command::Add).unwrap();
        assert_eq!(c.pf.as_deref(), Some("ens1f0"));
        assert!(c.vf_allow_list.is_empty());
    }

    #[test]
    fn allow_list_entries_and_pf_must_be_interface_names() {
        let mut v = base();
        v["vfAllowList"] = json!(["lab-vf0", "../../x"]);
        assert_eq!(field_of(parse_json(&v, Command::Add)), "vfAllowList[1]");
        v["vfAllowList"] = json!(["lab-vf0", "much-too-long-name"]);
        assert_eq!(field_of(parse_json(&v, Command::Del)), "vfAllowList[1]");
        let mut v = base();
        v["pf"] = json!("ens1f0/device");
        assert_eq!(field_of(parse_json(&v, Command::Add)), "pf");
        v["vfAllowList"] = json!("lab-vf0");
        assert!(matches!(
            parse_json(&v, Command::Add),
            Err(ShimError::Decode { .. })
        ));
    }

    #[test]
    fn subnet_is_only_needed_for_add() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("subnet");
        assert!(parse_json(&v, Command::Del).is_ok());
        assert!(parse_json(&v, Command::Status).is_ok());
    }

    #[test]
    fn versions() {
        let mut v = base();
        v["cniVersion"] = json!("0.3.1");
        assert!(matches!(
            parse_json(&v, Command::Add),
            Err(ShimError::IncompatibleVersion { .. })
        ));
        v["cniVersion"] = json!("1.0.0");
        assert!(parse_json(&v, Command::Add).is_ok());
        assert!(matches!(
            parse_json(&v, Command::Status),
            Err(ShimError::IncompatibleVersion { .. })
        ));
        v.as_object_mut().unwrap().remove("cniVersion");
        assert!(matches!(
            parse_json(&v, Command::Add),
            Err(ShimError::IncompatibleVersion { .. })
        ));
    }

    #[test]
    fn agent_must_be_https_with_a_port() {
        for bad in ["http://1.2.3.4:5", "https://1.2.3.4", "nonsense url"] {
            let mut v = base();
            v["agent"] = json!(bad);
            assert_eq!(field_of(parse_json(&v, Command::Add)), "agent", "{bad}");
        }
    }

    #[test]
    fn timeout_is_bounded() {
        let mut v = base();
        v["timeoutMs"] = json!(0);
        assert_eq!(field_of(parse_json(&v, Command::Add)), "timeoutMs");
        v["timeoutMs"] = json!(250);
        let c = parse_json(&v, Command::Add).unwrap();
        assert_eq!(c.agent.timeout, Duration::from_millis(250));
    }

    #[test]
    fn check_needs_prev_result_and_gc_needs_valid_attachments() {
        assert_eq!(field_of(parse_json(&base(), Command::Check)), "prevResult");
        assert_eq!(
            field_of(parse_json(&base(), Command::Gc)),
            "cni.dev/valid-attachments"
        );
        let mut v = base();
        v["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        let c = parse_json(&v, Command::Gc).unwrap();
        assert!(c.valid_attachments.contains(&ValidAttachment {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }));
    }

    #[test]
    fn bad_json_is_a_decode_error_and_ipam_is_unsupported() {
        assert!(matches!(
            parse(b"{not json", Command::Add),
            Err(ShimError::Decode { .. })
        ));
        let mut v = base();
        v["timeoutMs"] = json!("soon");
        assert!(matches!(
            parse_json(&v, Command::Add),
            Err(ShimError::Decode { .. })
        ));
        let mut v = base();
        v["ipam"] = json!({"type": "host-local"});
        assert!(matches!(
            parse_json(&v, Command::Add),
            Err(ShimError::UnsupportedField { .. })
        ));
    }
}
