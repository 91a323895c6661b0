//! Real traffic for the lab's tests: finds the workspace binaries, runs `lab-echo`
//! servers and `lab-client` loads inside namespaces, and reads the client's JSON
//! result. [`TrafficResult`] is that JSON, shared with the `lab-client` binary.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::netns::Netns;
use crate::process::{self, Child};

/// Overrides the directory [`lab_bin`] looks in.
pub const BIN_DIR_ENV: &str = "DPU_LAB_BIN_DIR";

/// How many error messages a result keeps.
pub const MAX_ERRORS: usize = 10;

/// The line `lab-echo` writes to stderr once all its sockets are bound.
pub const ECHO_READY: &str = "lab-echo: ready";

/// What `lab-echo` writes to stderr before the peer (`10.0.1.2:12345`,
/// `[fd00:1::2]:12345`) of every TCP connection it accepts.
pub const ECHO_TCP_PEER: &str = "lab-echo: tcp connection from ";

/// The peer addresses (without port) of the TCP connections a `lab-echo` log
/// records, in order: `10.0.1.2`, `fd00:1::2`. Lines that are not exactly
/// [`ECHO_TCP_PEER`] and a socket address (such as a connection's error line) are
/// skipped.
pub fn peers_in_log(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix(ECHO_TCP_PEER))
        .filter_map(|peer| peer.trim_end().parse::<SocketAddr>().ok())
        .map(|peer| peer.ip().to_string())
        .collect()
}

/// What a run of `lab-client` saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficResult {
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed (refused, timed out, closed, bad answer).
    pub failed: u64,
    /// Answers per backend name (what `lab-echo --name` answered).
    #[serde(default)]
    pub by_backend: BTreeMap<String, u64>,
    /// The first [`MAX_ERRORS`] error messages.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl TrafficResult {
    /// Counts one request: `Ok(backend)` or `Err(message)`.
    pub fn record(&mut self, outcome: Result<String, String>) {
        match outcome {
            Ok(backend) => {
                self.ok += 1;
                *self.by_backend.entry(backend).or_default() += 1;
            }
            Err(message) => {
                self.failed += 1;
                if self.errors.len() < MAX_ERRORS {
                    self.errors.push(message);
                }
            }
        }
    }

    /// Answers from `backend`.
    pub fn count_for(&self, backend: &str) -> u64 {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }
}

/// The first line `lab-client --hold --json` prints: who answered on the held
/// connection, or why it could not be opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldFirst {
    /// The backend that answered the first request.
    pub first: Option<String>,
    /// Why there was no first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The directory holding the workspace binaries: `$DPU_LAB_BIN_DIR`, or the directory of
/// the running executable (its parent when that is `deps`, as for test executables).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("find the current executable")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of workspace binary `name` (`lab-echo`, `lab-client`, `dpu-agent`,
/// `dpu-controller`); an error if it has not been built.
pub fn lab_bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "binary {name} not found at {} (set {BIN_DIR_ENV} to look elsewhere); \
             build the workspace first: cargo build --workspace",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `lab-echo --name NAME` inside `ns` on the given ports, logging to `log`, and
/// waits until its sockets are bound.
pub fn start_echo(ns: &Netns, name: &str, tcp: &[u16], udp: &[u16], log: &Path) -> Result<Child> {
    let mut args = vec![
        lab_bin("lab-echo")?.into_os_string(),
        "--name".into(),
        name.into(),
    ];
    for port in tcp {
        args.extend(["--tcp".into(), port.to_string().into()]);
    }
    for port in udp {
        args.extend(["--udp".into(), port.to_string().into()]);
    }
    let mut child = ns.spawn_logged(args, log)?;
    let mut exited = false;
    let ready = process::wait_until(
        &format!("lab-echo {name} in {} to bind", ns.name()),
        Duration::from_secs(5),
        || {
            exited = !child.is_running();
            exited || child.log().contains(ECHO_READY)
        },
    );
    if exited || ready.is_err() {
        bail!(
            "lab-echo {name} in {} did not start: {}",
            ns.name(),
            child.log().trim()
        );
    }
    Ok(child)
}

fn flag_value(extra: &[&str], flag: &str) -> Option<u64> {
    let prefix = format!("{flag}=");
    extra.iter().enumerate().find_map(|(i, arg)| {
        if *arg == flag {
            extra.get(i + 1)?.parse().ok()
        } else {
            arg.strip_prefix(&prefix)?.parse().ok()
        }
    })
}

/// Runs `lab-client --target TARGET --proto PROTO --count COUNT --json EXTRA...` inside
/// `ns` and returns its result. The run is bounded by its count and per-request timeout.
pub fn run_client(
    ns: &Netns,
    target: &str,
    proto: &str,
    count: u32,
    extra: &[&str],
) -> Result<TrafficResult> {
    let timeout_ms = flag_value(extra, "--timeout-ms").unwrap_or(2000);
    let interval_ms = flag_value(extra, "--interval-ms").unwrap_or(0);
    let bound = Duration::from_secs(10)
        + Duration::from_millis((timeout_ms + interval_ms).saturating_mul(u64::from(count) + 1));
    let client = lab_bin("lab-client")?;
    let count = count.to_string();
    let mut args = vec![
        client.as_os_str(),
        "--target".as_ref(),
        target.as_ref(),
        "--proto".as_ref(),
        proto.as_ref(),
        "--count".as_ref(),
        count.as_ref(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = ns
        .exec_timeout(&args, bound)
        .with_context(|| format!("lab-client to {target}/{proto} in {}", ns.name()))?;
    last_result(&out).with_context(|| format!("lab-client printed no result: {}", out.trim()))
}

/// The last line of `out` that is a [`TrafficResult`].
pub fn last_result(out: &str) -> Option<TrafficResult> {
    out.lines()
        .rev()
        .find_map(|line| serde_json::from_str(line.trim()).ok())
}

/// A `lab-client --hold` run: one TCP connection kept open across rounds.
#[derive(Debug)]
pub struct Hold {
    child: Child,
    out: PathBuf,
}

/// Starts `lab-client --hold` inside `ns`: one TCP connection to `target`, one answer
/// at once, then `rounds` more, one every `interval`. Its output goes to `out`.
pub fn start_hold(
    ns: &Netns,
    target: &str,
    rounds: u32,
    interval: Duration,
    out: &Path,
) -> Result<Hold> {
    let client = lab_bin("lab-client")?;
    let rounds = rounds.to_string();
    let interval = interval.as_millis().to_string();
    let args = [
        client.as_os_str(),
        "--target".as_ref(),
        target.as_ref(),
        "--proto".as_ref(),
        "tcp".as_ref(),
        "--hold".as_ref(),
        "--count".as_ref(),
        rounds.as_ref(),
        "--interval-ms".as_ref(),
        interval.as_ref(),
        "--json".as_ref(),
    ];
    let child = ns.spawn_logged(args, out)?;
    Ok(Hold {
        child,
        out: out.to_path_buf(),
    })
}

impl Hold {
    /// The client process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything it has printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for the first answer and returns the backend that gave it.
    pub fn wait_first(&mut self, timeout: Duration) -> Result<String> {
        let mut first = None;
        let out = self.out.clone();
        process::wait_until("the held connection's first answer", timeout, || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            first = text
                .lines()
                .find_map(|line| serde_json::from_str::<HoldFirst>(line.trim()).ok())
                .filter(|f| f.first.is_some() || f.error.is_some());
            first.is_some()
        })
        .with_context(|| format!("hold output so far: {}", self.output().trim()))?;
        match first {
            Some(HoldFirst {
                first: Some(backend),
                ..
            }) => Ok(backend),
            Some(HoldFirst { error, .. }) => bail!(
                "held connection failed: {}",
                error.unwrap_or_else(|| "no reason given".into())
            ),
            None => unreachable!("wait_until returned only once first was set"),
        }
    }

    /// Waits up to `timeout` for the client to finish and returns its final result.
    pub fn finish(mut self, timeout: Duration) -> Result<TrafficResult> {
        if self.child.wait_timeout(timeout)?.is_none() {
            bail!(
                "lab-client --hold still running after {timeout:?}: {}",
                self.output().trim()
            );
        }
        let out = self.output();
        last_result(&out).with_context(|| format!("lab-client --hold printed no result: {out}"))
    }
}

/// A `lab-client` load running in the background: `count` new TCP connections to
/// `target`, one every `interval`, each bounded by `timeout`. Join it for the
/// result.
pub fn spawn_tcp_load(
    ns: &Netns,
    target: &str,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Result<std::thread::JoinHandle<Result<TrafficResult>>> {
    let ns = ns.name().to_string();
    let bin = lab_bin("lab-client")?;
    let target = target.to_string();
    Ok(std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(bin)
            .args(["--target", &target, "--proto", "tcp"])
            .args(["--count", &count.to_string()])
            .args(["--interval-ms", &interval.as_millis().to_string()])
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .arg("--json")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        last_result(&stdout).with_context(|| format!("no result from lab-client: {stdout}"))
    }))
}

/// `ovs-ofctl dump-flows` lines without their cookie (an agent restart starts a
/// new cookie round), sorted: what to compare across restarts.
pub fn flows_without_cookies(flows: Vec<String>) -> Vec<String> {
    let mut v: Vec<String> = flows
        .into_iter()
        .map(|f| {
            f.trim()
                .split_once(", ")
                .map_or(f.clone(), |(_, r)| r.to_string())
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_and_caps_errors() {
        let mut result = TrafficResult::default();
        result.record(Ok("web-1".into()));
        result.record(Ok("web-1".into()));
        for i in 0..12 {
            result.record(Err(format!("e{i}")));
        }
        assert_eq!(result.ok, 2);
        assert_eq!(result.failed, 12);
        assert_eq!(result.count_for("web-1"), 2);
        assert_eq!(result.errors.len(), MAX_ERRORS);
    }

    #[test]
    fn the_last_result_line_wins() {
        let out = "{\"first\":\"web-1\"}\nnoise\n{\"ok\":3,\"failed\":0,\"by_backend\":{\"web-1\":3},\"errors\":[]}\n";
        let result = last_result(out).unwrap();
        assert_eq!(result.ok, 3);
        assert_eq!(result.count_for("web-1"), 3);
        assert!(last_result("{\"first\":\"web-1\"}\n").is_none());
    }

    #[test]
    fn peers_of_both_families_and_nothing_else() {
        let log = format!(
            "{ECHO_READY} name=web-1 tcp 80\n\
             {ECHO_TCP_PEER}10.0.1.2:12345\n\
             {ECHO_TCP_PEER}[fd00:1::2]:12346\n\
             {ECHO_TCP_PEER}[fd00:1::2]:12346: Connection reset by peer (os error 104)\n\
             {ECHO_TCP_PEER}?\n\
             {ECHO_TCP_PEER}[fe80::1%3]:40000\n\
             lab-echo: closing a connection idle for 600s\n"
        );
        assert_eq!(peers_in_log(&log), ["10.0.1.2", "fd00:1::2", "fe80::1"]);
        assert!(peers_in_log("").is_empty());
    }

    #[test]
    fn flag_values_in_both_spellings() {
        assert_eq!(
            flag_value(&["--timeout-ms", "300"], "--timeout-ms"),
            Some(300)
        );
        assert_eq!(flag_value(&["--interval-ms=20"], "--interval-ms"), Some(20));
        assert_eq!(flag_value(&["--json"], "--timeout-ms"), None);
    }
}
