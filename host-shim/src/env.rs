//! The CNI environment (spec §2 "Parameters"): which variables each command needs, and
//! their formats. Pure: it reads a lookup function, not the process environment.

use std::path::PathBuf;

use crate::error::ShimError;

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            _ => return None,
        })
    }

    /// The variables the spec requires for this command, besides CNI_COMMAND.
    fn required(self) -> &'static [&'static str] {
        match self {
            Self::Add | Self::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Self::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Self::Gc => &["CNI_PATH"],
            Self::Status | Self::Version => &[],
        }
    }
}

/// The validated environment of one invocation. Fields a command does not need may be
/// empty.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
}

/// The Kubernetes keys of `CNI_ARGS` ("K=V;K=V"); other keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: String,
    pub pod_name: String,
}

/// Reads and validates the environment. `get` returns a variable's value, if set.
pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, ShimError> {
    let value = |name: &str| get(name).filter(|v| !v.is_empty());
    let Some(raw_command) = value("CNI_COMMAND") else {
        return Err(ShimError::InvalidEnv {
            vars: vec!["CNI_COMMAND"],
            reason: "required, missing".into(),
        });
    };
    let command = Command::parse(&raw_command).ok_or_else(|| ShimError::InvalidEnv {
        vars: vec!["CNI_COMMAND"],
        reason: format!(
            "unknown command {raw_command:?} (expected ADD, DEL, CHECK, STATUS, VERSION or GC)"
        ),
    })?;

    let missing: Vec<&'static str> = command
        .required()
        .iter()
        .copied()
        .filter(|name| value(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(ShimError::InvalidEnv {
            vars: missing,
            reason: format!("required for {raw_command}, missing"),
        });
    }

    let needs_attachment = command.required().contains(&"CNI_IFNAME");
    let container_id = value("CNI_CONTAINERID").unwrap_or_default();
    let ifname = value("CNI_IFNAME").unwrap_or_default();
    if needs_attachment {
        check_container_id(&container_id).map_err(|reason| ShimError::InvalidEnv {
            vars: vec!["CNI_CONTAINERID"],
            reason,
        })?;
        check_ifname(&ifname).map_err(|reason| ShimError::InvalidEnv {
            vars: vec!["CNI_IFNAME"],
            reason,
        })?;
    }
    let args = parse_args(&value("CNI_ARGS").unwrap_or_default()).map_err(|reason| {
        ShimError::InvalidEnv {
            vars: vec!["CNI_ARGS"],
            reason,
        }
    })?;
    Ok(CniEnv {
        command,
        container_id,
        ifname,
        netns: value("CNI_NETNS").map(PathBuf::from),
        args,
    })
}

/// Spec §2: starts with an alphanumeric, then alphanumerics, '_', '.' or '-'.
fn check_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "{id:?} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
        ));
    }
    Ok(())
}

/// Linux interface name rules, as the spec states them.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!("{name:?} must be 1 to {IFNAME_MAX} bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("{name:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

fn parse_args(raw: &str) -> Result<CniArgs, String> {
    let mut args = CniArgs::default();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (key, val) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
        match key {
            "K8S_POD_NAMESPACE" => args.pod_namespace = val.to_string(),
            "K8S_POD_NAME" => args.pod_name = val.to_string(),
            _ => {}
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, ShimError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_lookup(|k| map.get(k).cloned())
    }

    fn missing(r: Result<CniEnv, ShimError>) -> Vec<&'static str> {
        match r {
            Err(ShimError::InvalidEnv { vars, .. }) => vars,
            other => panic!("expected InvalidEnv, got {other:?}"),
        }
    }

    #[test]
    fn command_is_required_and_known() {
        assert_eq!(missing(env(&[])), ["CNI_COMMAND"]);
        assert_eq!(missing(env(&[("CNI_COMMAND", "")])), ["CNI_COMMAND"]);
        assert_eq!(missing(env(&[("CNI_COMMAND", "FROB")])), ["CNI_COMMAND"]);
    }

    #[test]
    fn each_command_names_what_it_misses() {
        assert_eq!(
            missing(env(&[("CNI_COMMAND", "ADD")])),
            ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]
        );
        assert_eq!(
            missing(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1")])),
            ["CNI_IFNAME"]
        );
        assert_eq!(missing(env(&[("CNI_COMMAND", "GC")])), ["CNI_PATH"]);
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn del_does_not_need_a_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.netns, None);
    }

    #[test]
    fn formats_are_checked() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_CONTAINERID", "c1"),
        ];
        let with = |k: &'static str, v: &'static str| {
            let mut p = base.to_vec();
            p.push(("CNI_IFNAME", "eth0"));
            p.retain(|(pk, _)| *pk != k);
            p.push((k, v));
            env(&p)
        };
        assert_eq!(missing(with("CNI_IFNAME", "a/b")), ["CNI_IFNAME"]);
        assert_eq!(
            missing(with("CNI_IFNAME", "0123456789abcdef")),
            ["CNI_IFNAME"]
        );
        assert_eq!(missing(with("CNI_IFNAME", "..")), ["CNI_IFNAME"]);
        assert_eq!(
            missing(with("CNI_CONTAINERID", "-abc")),
            ["CNI_CONTAINERID"]
        );
        assert_eq!(missing(with("CNI_ARGS", "garbage")), ["CNI_ARGS"]);
        assert!(with("CNI_CONTAINERID", "a_b.c-9").is_ok());
    }

    #[test]
    fn k8s_args_are_parsed_and_others_ignored() {
        assert_eq!(
            parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;X=a=b").unwrap(),
            CniArgs {
                pod_namespace: "ns1".into(),
                pod_name: "web-0".into()
            }
        );
        assert_eq!(parse_args("").unwrap(), CniArgs::default());
    }
}
