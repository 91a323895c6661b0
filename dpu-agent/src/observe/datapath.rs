//! Datapath flows, total and offloaded to hardware, from
//! `ovs-appctl dpctl/dump-flows`, and the `ovs-appctl` runner other observers
//! share (`ofproto/trace`).
//!
//! OVS 3.1 quirks this module is built around:
//! - `dpctl/dump-flows` takes `type=` only as its last argument (after the
//!   datapath name). Anywhere else it is silently ignored, so
//!   `type=offloaded netdev@ovs-netdev` lists every flow, and even
//!   `type=bogus` succeeds. The datapath is therefore always named, and the
//!   type always follows it.
//! - `type=offloaded` is accepted by the userspace (`netdev`) datapath too and
//!   means fully offloaded (the flow's layer is `tc` or `dpdk`): in the lab it
//!   honestly lists nothing. Flows that a NIC only marks for the userspace
//!   datapath are `partially-offloaded` and are not counted as offloaded here.
//! - The dump interleaves `flow-dump from the main thread:` and
//!   `flow-dump from pmd on cpu core: N` headers with the flows.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Bound on one `dpctl/dump-flows`; a datapath of 100k flows dumps in about a second.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathFlows {
    pub total: u64,
    pub offloaded: u64,
    /// The offload audit's verdicts.
    pub audit: crate::observe::offload::Counts,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// No way to reach `ovs-vswitchd` through its run directory.
    #[error("no ovs-vswitchd control socket in {}: {reason}", run_dir.display())]
    NoTarget { run_dir: PathBuf, reason: String },
    /// The command could not be run at all.
    #[error("`{command}` could not be started: {reason}")]
    Spawn { command: String, reason: String },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    /// The command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("unknown datapath type `{0}` (expected `netdev` or `system`)")]
    UnknownType(String),
}

/// The unixctl target of ovs-vswitchd in `run_dir`: `<run_dir>/ovs-vswitchd.ctl`
/// if it exists (how the lab starts it), else `<run_dir>/ovs-vswitchd.<pid>.ctl`
/// with the pid from `<run_dir>/ovs-vswitchd.pid` (Debian's system OVS).
pub fn vswitchd_target(run_dir: &Path) -> Result<PathBuf, DatapathError> {
    let fixed = run_dir.join("ovs-vswitchd.ctl");
    if fixed.exists() {
        return Ok(fixed);
    }
    let no_target = |reason: String| DatapathError::NoTarget {
        run_dir: run_dir.to_path_buf(),
        reason,
    };
    let pidfile = run_dir.join("ovs-vswitchd.pid");
    let text = std::fs::read_to_string(&pidfile).map_err(|e| {
        no_target(format!(
            "no ovs-vswitchd.ctl, and {}: {e}",
            pidfile.display()
        ))
    })?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| no_target(format!("{} holds no pid: {text:?}", pidfile.display())))?;
    let ctl = run_dir.join(format!("ovs-vswitchd.{pid}.ctl"));
    if ctl.exists() {
        Ok(ctl)
    } else {
        Err(no_target(format!(
            "{} does not exist (is ovs-vswitchd {pid} running?)",
            ctl.display()
        )))
    }
}

/// Runs `ovs-appctl -t <target> <args>` (timeout) and returns stdout; errors name the command and stderr.
pub async fn appctl(
    appctl_path: &str,
    run_dir: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<String, DatapathError> {
    let target = vswitchd_target(run_dir)?;
    let command = format!("{appctl_path} -t {} {}", target.display(), args.join(" "));
    let child = tokio::process::Command::new(appctl_path)
        .arg("-t")
        .arg(&target)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A command cut off by the timeout is killed with its future.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DatapathError::Spawn {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => return Err(DatapathError::Timeout { command, timeout }),
        Ok(Err(e)) => {
            return Err(DatapathError::Spawn {
                command,
                reason: e.to_string(),
            })
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        return Err(DatapathError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The datapath `ovs-vswitchd` keeps for bridges of `datapath_type`.
fn datapath_name(datapath_type: &str) -> Result<&'static str, DatapathError> {
    match datapath_type {
        "netdev" => Ok("netdev@ovs-netdev"),
        "system" => Ok("system@ovs-system"),
        other => Err(DatapathError::UnknownType(other.to_string())),
    }
}

/// The `dpctl/dump-flows` arguments: the datapath, then the type filter (see
/// the module doc for why in that order).
fn dump_args(datapath_type: &str, offloaded: bool) -> Result<Vec<&'static str>, DatapathError> {
    let mut args = vec!["dpctl/dump-flows", datapath_name(datapath_type)?];
    if offloaded {
        args.push("type=offloaded");
    }
    Ok(args)
}

/// The flows of a `dpctl/dump-flows` output, one a line, without the
/// per-thread headers.
pub fn parse_dump(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("flow-dump from "))
        .map(str::to_string)
        .collect()
}

/// `dpctl/dump-flows` lines, all or only `type=offloaded`, for the datapath of `datapath_type` ("netdev" → netdev@ovs-netdev, "system" → system@ovs-system).
pub async fn dump(
    appctl_path: &str,
    run_dir: &Path,
    datapath_type: &str,
    offloaded: bool,
) -> Result<Vec<String>, DatapathError> {
    let args = dump_args(datapath_type, offloaded)?;
    let text = appctl(appctl_path, run_dir, &args, DUMP_TIMEOUT).await?;
    Ok(parse_dump(&text))
}

/// `dpctl/dump-flows -m`: every key attribute with its mask, the layer
/// (`dp:`) and the counters, as text (see [`crate::observe::offload`]).
pub async fn dump_verbose(
    appctl_path: &str,
    run_dir: &Path,
    datapath_type: &str,
) -> Result<String, DatapathError> {
    let args = ["dpctl/dump-flows", "-m", datapath_name(datapath_type)?];
    appctl(appctl_path, run_dir, &args, DUMP_TIMEOUT).await
}

/// How many flows the datapath holds, how many of them are offloaded, and
/// how many a BlueField could run by the offload audit ([`crate::observe::offload`]).
/// One `-m` dump: its lines name the layer (`dp:tc` or `dp:dpdk` is offloaded,
/// as `type=offloaded` lists them) and every key attribute the audit reads.
pub async fn count(
    appctl_path: &str,
    run_dir: &Path,
    datapath_type: &str,
) -> Result<DatapathFlows, DatapathError> {
    let text = dump_verbose(appctl_path, run_dir, datapath_type).await?;
    Ok(count_dump(&text))
}

/// [`count`] of a dump's text.
pub fn count_dump(text: &str) -> DatapathFlows {
    let lines = parse_dump(text);
    let offloaded = lines
        .iter()
        .filter(|l| l.contains(", dp:tc,") || l.contains(", dp:dpdk,"))
        .count();
    DatapathFlows {
        total: lines.len() as u64,
        offloaded: offloaded as u64,
        audit: crate::observe::offload::Audit::counts_of_dump(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ovs-appctl dpctl/dump-flows netdev@ovs-netdev` of OVS 3.1 with one PMD
    /// thread beside the main one.
    const DUMP: &str = "flow-dump from the main thread:
recirc_id(0),in_port(1),packet_type(ns=0,id=0),eth_type(0x86dd),ipv6(frag=no), packets:6, bytes:496, used:3.334s, actions:drop
recirc_id(0),in_port(1),packet_type(ns=0,id=0),eth_type(0x0806), packets:1, bytes:42, used:0.514s, actions:drop
flow-dump from pmd on cpu core: 0
recirc_id(0),in_port(2),packet_type(ns=0,id=0),eth(dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806), packets:0, bytes:0, used:never, actions:1
";

    #[test]
    fn headers_are_not_flows() {
        let flows = parse_dump(DUMP);
        assert_eq!(flows.len(), 3);
        assert!(flows[0].starts_with("recirc_id(0),in_port(1)"));
        assert!(flows[2].ends_with("actions:1"));
        assert!(parse_dump("").is_empty());
        assert!(parse_dump("flow-dump from the main thread:\n").is_empty());
    }

    #[test]
    fn the_type_filter_follows_the_datapath() {
        assert_eq!(
            dump_args("netdev", true).unwrap(),
            ["dpctl/dump-flows", "netdev@ovs-netdev", "type=offloaded"]
        );
        assert_eq!(
            dump_args("system", false).unwrap(),
            ["dpctl/dump-flows", "system@ovs-system"]
        );
        assert!(matches!(
            dump_args("dpdk", false),
            Err(DatapathError::UnknownType(t)) if t == "dpdk"
        ));
    }

    #[test]
    fn the_target_is_the_fixed_socket_else_the_one_named_by_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let e = vswitchd_target(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ovs-vswitchd.pid"), "{e}");
        std::fs::write(dir.path().join("ovs-vswitchd.pid"), "4242\n").unwrap();
        let e = vswitchd_target(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ovs-vswitchd.4242.ctl"), "{e}");
        std::fs::write(dir.path().join("ovs-vswitchd.4242.ctl"), "").unwrap();
        assert_eq!(
            vswitchd_target(dir.path()).unwrap(),
            dir.path().join("ovs-vswitchd.4242.ctl")
        );
        std::fs::write(dir.path().join("ovs-vswitchd.ctl"), "").unwrap();
        assert_eq!(
            vswitchd_target(dir.path()).unwrap(),
            dir.path().join("ovs-vswitchd.ctl")
        );
        std::fs::write(dir.path().join("ovs-vswitchd.pid"), "nope").unwrap();
        std::fs::remove_file(dir.path().join("ovs-vswitchd.ctl")).unwrap();
        let e = vswitchd_target(dir.path()).unwrap_err().to_string();
        assert!(e.contains("holds no pid"), "{e}");
    }

    #[tokio::test]
    async fn a_failing_command_is_named_with_its_stderr_and_a_slow_one_times_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ovs-vswitchd.ctl"), "").unwrap();
        let script = dir.path().join("fake-appctl");
        std::fs::write(
            &script,
            "#!/bin/sh\nif [ \"$3\" = slow ]; then sleep 5; fi\necho \"no such command $3\" >&2\nexit 2\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let appctl_path = script.to_str().unwrap();
        let e = appctl(
            appctl_path,
            dir.path(),
            &["bogus/cmd"],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DatapathError::Failed { .. }), "{msg}");
        assert!(
            msg.contains("bogus/cmd") && msg.contains("no such command bogus/cmd"),
            "{msg}"
        );
        let e = appctl(
            appctl_path,
            dir.path(),
            &["slow"],
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, DatapathError::Timeout { .. }), "{e}");
        let e = appctl(
            "/nonexistent/ovs-appctl",
            dir.path(),
            &["version"],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, DatapathError::Spawn { .. }), "{e}");
    }
}
