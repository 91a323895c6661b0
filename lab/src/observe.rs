//! The lab's side of the agent's observability: scraping `/metrics`, reading a
//! sample from it, and running the operator commands (`dpu-agent show|trace|
//! explain`) against an agent's socket. Used by the demo and the tests.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// `GET /metrics` over plain HTTP/1.1: the body.
pub fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the metrics endpoint {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end in {raw:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answered {head}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked metrics body; this reads Content-Length bodies");
    }
    Ok(body.to_string())
}

/// The sum of the samples of `name` whose labels include every
/// `label="value"` of `with`; `None` when there is no such sample.
pub fn value(text: &str, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = line.rsplit_once(' ')?;
        let (metric, labels) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if with
            .iter()
            .all(|(k, val)| labels.split(',').any(|l| l == format!("{k}=\"{val}\"")))
        {
            *found.get_or_insert(0.0) += v.parse::<f64>().ok()?;
        }
    }
    found
}

/// `dpu-agent <args> --socket <ops>`: (exit code, stdout, stderr).
pub fn agent_cli(ops: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(crate::traffic::lab_bin("dpu-agent")?)
        .args(args)
        .arg("--socket")
        .arg(ops)
        .output()
        .context("running dpu-agent")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// [`agent_cli`] that must succeed: its stdout.
pub fn agent_ok(ops: &Path, args: &[&str]) -> Result<String> {
    let (code, out, err) = agent_cli(ops, args)?;
    if code != 0 {
        bail!("dpu-agent {args:?} exited {code}: {err}{out}");
    }
    Ok(out)
}

/// `dpu-agent explain --offload [SERVICE]` on the agent behind `ops`, run
/// right after real traffic (megaflows idle out in 10 s): the report, once it
/// says that every megaflow that carried data traffic is NIC-matchable, and
/// that such megaflows carried packets (so the audit saw the traffic).
pub fn assert_offloadable(ops: &Path, service: Option<&str>) -> Result<String> {
    let mut args = vec!["explain", "--offload"];
    args.extend(service);
    let report = agent_ok(ops, &args)?;
    if !report.contains("result: pass:") {
        bail!("the offload audit failed:\n{report}");
    }
    let matchable_packets = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("NIC-matchable"))
        .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    if matchable_packets == 0 {
        bail!("the offload audit saw no data packets in NIC-matchable megaflows:\n{report}");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_sums_the_matching_samples() {
        let text = "# HELP x y\n# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\nx_total{a=\"2\"} 100\ny 7\n";
        assert_eq!(value(text, "x_total", &[("a", "1")]), Some(7.0));
        assert_eq!(value(text, "x_total", &[("b", "3")]), Some(4.0));
        assert_eq!(value(text, "y", &[]), Some(7.0));
        assert_eq!(value(text, "x_total", &[("a", "9")]), None);
        assert_eq!(value(text, "z", &[]), None);
    }
}
