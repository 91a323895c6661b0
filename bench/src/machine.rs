//! The facts at the top of the report: CPU, kernel, OVS, date and git revision.

use std::process::Command;

use crate::results::Machine;

fn run(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn facts() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "Model" | "CPU part").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mut git_rev = run("git", &["rev-parse", "--short=12", "HEAD"]);
    if !run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty()
        && git_rev != "unknown"
    {
        git_rev.push_str(" (with uncommitted changes)");
    }
    Machine {
        cpu_model,
        cpus,
        kernel: run("uname", &["-r"]),
        ovs_version: ["ovs-vswitchd", "/usr/sbin/ovs-vswitchd"]
            .iter()
            .map(|p| run(p, &["--version"]))
            .find(|v| v != "unknown")
            .unwrap_or_else(|| "unknown".into())
            .lines()
            .next()
            .unwrap_or("unknown")
            .to_string(),
        date_utc: run("date", &["-u", "+%Y-%m-%d %H:%M:%S"]),
        git_rev,
        arch: std::env::consts::ARCH.into(),
    }
}
