//! The first OpenFlow backend: drives `ovs-ofctl -O OpenFlow15 bundle` with a bundle
//! file the reconciler already diffed. `ovs-ofctl` opens a bundle, sends every
//! message, commits with the atomic+ordered flags and exits 0 only after the
//! commit reply, which OVS sends once the bundle is in the flow tables: that is the
//! barrier point the agent ACKs on. `replace-flows` is never used: it dumps and
//! diffs the whole switch per call.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{BundleOp, InstalledSummary, OpenFlowBackend, OpenFlowError};

#[derive(Debug, Clone)]
pub struct OfctlBackend {
    /// `unix:<rundir>/<bridge>.mgmt`
    pub target: String,
    pub program: String,
    pub timeout: Duration,
}

impl OfctlBackend {
    pub fn new(target: impl Into<String>, program: impl Into<String>) -> Self {
        OfctlBackend {
            target: target.into(),
            program: program.into(),
            timeout: Duration::from_secs(60),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, OpenFlowError> {
        let unreachable = |reason: String| OpenFlowError::Unreachable {
            target: self.target.clone(),
            reason,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(["-O", "OpenFlow15"])
            .args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| unreachable(format!("cannot run {}: {e}", self.program)))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|e| unreachable(format!("writing the bundle: {e}")))?;
            drop(pipe);
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                unreachable(format!(
                    "{} timed out after {:?}",
                    self.program, self.timeout
                ))
            })?
            .map_err(|e| unreachable(e.to_string()))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if stderr.contains("Connection refused") || stderr.contains("No such file") {
            return Err(unreachable(stderr));
        }
        Err(OpenFlowError::Rejected(stderr))
    }
}

/// Renders bundle ops as an `ovs-ofctl bundle` file.
pub fn render_bundle(ops: &[BundleOp]) -> String {
    let mut s = String::new();
    for op in ops {
        let _ = match op {
            BundleOp::PutGroup(g) => writeln!(s, "group add_or_mod {}", g.spec()),
            BundleOp::AddFlow { key, body, cookie } => writeln!(
                s,
                "flow add table={},priority={},cookie={cookie:#x}{}{} actions={}",
                key.table,
                key.priority,
                if key.matches.is_empty() { "" } else { "," },
                key.matches,
                body.actions
            ),
            BundleOp::DeleteFlow(key) => writeln!(
                s,
                "flow delete_strict table={},priority={}{}{}",
                key.table,
                key.priority,
                if key.matches.is_empty() { "" } else { "," },
                key.matches
            ),
            BundleOp::DeleteFlowsByCookie {
                table,
                cookie,
                mask,
            } => match table {
                Some(t) => writeln!(s, "flow delete table={t},cookie={cookie:#x}/{mask:#x}"),
                None => writeln!(s, "flow delete cookie={cookie:#x}/{mask:#x}"),
            },
            BundleOp::DeleteGroup(id) => writeln!(s, "group delete group_id={id}"),
        };
    }
    s
}

/// Parses `cookie=0x…` from each line of `dump-flows` and `group_id=N` from
/// `dump-groups`.
pub fn parse_summary(flows: &str, groups: &str) -> Result<InstalledSummary, OpenFlowError> {
    let mut sum = InstalledSummary::default();
    for line in flows
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("OFPST_") && !l.starts_with("NXST_"))
    {
        sum.flows += 1;
        // A zero cookie is not printed at all.
        let cookie = match line.strip_prefix("cookie=") {
            Some(rest) => {
                let hex = rest.split([',', ' ']).next().unwrap_or_default();
                u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                    .map_err(|_| OpenFlowError::Protocol(format!("bad cookie in {line:?}")))?
            }
            None => 0,
        };
        sum.cookies.insert(cookie);
    }
    for line in groups.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("group_id=") {
            let id = rest.split(',').next().unwrap_or_default();
            sum.group_ids.insert(
                id.parse()
                    .map_err(|_| OpenFlowError::Protocol(format!("bad group id in {line:?}")))?,
            );
        }
    }
    Ok(sum)
}

impl OpenFlowBackend for OfctlBackend {
    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        if ops.is_empty() {
            return Ok(());
        }
        let file = render_bundle(ops);
        self.run(&["bundle", &self.target.clone(), "-"], Some(&file))
            .await?;
        Ok(())
    }

    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        let target = self.target.clone();
        let flows = self
            .run(&["--no-stats", "dump-flows", &target], None)
            .await?;
        let groups = self.run(&["dump-groups", &target], None).await?;
        parse_summary(&flows, &groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_cookies_and_group_ids() {
        let flows = " cookie=0x1000100000001, priority=100,in_port=1 actions=drop\n table=20, priority=0 actions=drop\n";
        let groups = "OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):\n group_id=7,type=select,bucket=bucket_id:0,actions=drop\n";
        let s = parse_summary(flows, groups).unwrap();
        assert_eq!(s.flows, 2);
        assert!(s.cookies.contains(&0x1000100000001) && s.cookies.contains(&0));
        assert!(s.group_ids.contains(&7));
    }
}
