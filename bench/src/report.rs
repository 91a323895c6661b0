//! `results.md` and the SVG charts from a [`Results`]: pure text out of data, so
//! `dpu-bench report` can redraw them from `results.json` without measuring again.

use std::fmt::Write;

use crate::results::{ColdRow, NewConnRow, Results};
use crate::svg::{self, Series};

/// `1000` → `1k`, `200` → `200`.
pub fn size_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
}

fn f2(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "–".into()
    }
}

/// Systems in the order of the table: agents first, then raw OVS, then kube-proxy.
fn systems(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for row in &r.cold {
        if !v.contains(&row.system) {
            v.push(row.system.clone());
        }
    }
    v
}

fn cold_row<'a>(r: &'a Results, system: &str, n: usize) -> Option<&'a ColdRow> {
    r.cold
        .iter()
        .find(|c| c.system == system && c.services == n && c.error.is_none())
}

/// The charts: file name → SVG text.
pub fn charts(r: &Results) -> Vec<(String, String)> {
    let cats: Vec<String> = r
        .sizes
        .iter()
        .map(|n| format!("{} × {}", size_label(*n), r.endpoints))
        .collect();
    let mut out = Vec::new();
    let series = |f: &dyn Fn(&ColdRow) -> f64| -> Vec<Series> {
        systems(r)
            .iter()
            .map(|s| Series {
                name: s.clone(),
                values: r.sizes.iter().map(|n| cold_row(r, s, *n).map(f)).collect(),
                dashed: false,
                color: None,
                missing: r
                    .sizes
                    .iter()
                    .map(|n| {
                        r.cold
                            .iter()
                            .find(|c| &c.system == s && c.services == *n)
                            .and_then(|c| c.error.as_deref())
                            .map(|e| {
                                if e.contains("skipped") {
                                    "skipped".to_string()
                                } else if e.contains("did not finish within") {
                                    "timeout".to_string()
                                } else {
                                    "failed".to_string()
                                }
                            })
                    })
                    .collect(),
            })
            .collect()
    };
    if !r.cold.is_empty() {
        out.push((
            "cold_wall.svg".into(),
            svg::bars_log(
                "Cold programming: wall time (log scale, lower is better)",
                "seconds",
                &cats,
                &series(&|c| c.wall_s),
            ),
        ));
        out.push((
            "cold_cpu.svg".into(),
            svg::bars_log(
                "Cold programming: CPU seconds, loader + ovs-vswitchd (log)",
                "CPU seconds",
                &cats,
                &series(&|c| c.cpu_s),
            ),
        ));
        out.push((
            "cold_rss.svg".into(),
            svg::bars_log(
                "Cold programming: loader peak RSS (log)",
                "MiB",
                &cats,
                &series(&|c| c.peak_rss_kib as f64 / 1024.0),
            ),
        ));
    }
    if !r.churn.is_empty() {
        let mut keys: Vec<(String, String)> = Vec::new();
        for c in &r.churn {
            let k = (c.backend.clone(), c.rate.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let multi = keys.iter().any(|k| k.0 != keys[0].0);
        let mut series = Vec::new();
        for (ki, (b, rate)) in keys.iter().enumerate() {
            for (p, dashed) in [("p99", false), ("p50", true)] {
                let prefix = if multi {
                    format!("{b} ")
                } else {
                    String::new()
                };
                series.push(Series {
                    name: format!("{prefix}{rate} {p}"),
                    values: r
                        .sizes
                        .iter()
                        .map(|n| {
                            r.churn
                                .iter()
                                .find(|c| &c.backend == b && &c.rate == rate && c.services == *n)
                                .filter(|c| c.changes > 0)
                                .map(|c| if p == "p99" { c.p99_ms } else { c.p50_ms })
                        })
                        .collect(),
                    dashed,
                    color: Some(ki),
                    missing: vec![],
                });
            }
        }
        let cats: Vec<String> = r.sizes.iter().map(|n| size_label(*n)).collect();
        out.push((
            "churn.svg".into(),
            svg::lines(
                "One endpoint change: send to Ack (flat across N is the goal)",
                "milliseconds",
                "services (× 10 endpoints)",
                &cats,
                &series,
                Some((20.0, "target p99 20 ms at 10k")),
            ),
        ));
    }
    out
}

/// The whole `results.md`.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# DPU benchmark results\n");
    let _ = writeln!(
        s,
        "Produced by `bench/run`{} (see bench/README.md for what each number means). \
         Every comparison below was measured side by side in this one run.\n",
        if r.quick {
            " --quick (a smoke run: small N, few changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date (UTC) | {} |", m.date_utc);
    let _ = writeln!(s, "| git rev | `{}` |", m.git_rev);
    let _ = writeln!(s, "| CPU | {} × {} ({}) |", m.cpus, m.cpu_model, m.arch);
    let _ = writeln!(s, "| kernel | {} |", m.kernel);
    let _ = writeln!(s, "| Open vSwitch | {} |", m.ovs_version);
    let _ = writeln!(
        s,
        "| agent OpenFlow backends | asked {}; available {} |",
        r.backends_requested.join(", "),
        r.backends_available.join(", ")
    );
    let _ = writeln!(s, "| agent binary | {} |", r.agent_binary);
    let _ = writeln!(s, "| run took | {:.0} s |\n", r.total_seconds);

    if !r.cold.is_empty() {
        let _ = writeln!(
            s,
            "## 1. Cold programming: N services × {} endpoints from nothing\n",
            r.endpoints
        );
        let _ = writeln!(
            s,
            "![wall time](cold_wall.svg)\n\n![CPU](cold_cpu.svg)\n\n![memory](cold_rss.svg)\n"
        );
        let _ = writeln!(
            s,
            "| system | N | wall s | CPU s (all) | loader CPU s | vswitchd CPU s | loader peak RSS MiB | vswitchd RSS MiB | flows | groups | rules | note |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for n in &r.sizes {
            for sys in systems(r) {
                let Some(c) = r.cold.iter().find(|c| c.system == sys && c.services == *n) else {
                    continue;
                };
                if let Some(e) = &c.error {
                    let _ = writeln!(
                        s,
                        "| {sys} | {} | – | – | – | – | – | – | – | – | – | failed: {} |",
                        size_label(*n),
                        one_line(e)
                    );
                    continue;
                }
                let _ = writeln!(
                    s,
                    "| {sys} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                    size_label(*n),
                    c.wall_s,
                    c.cpu_s,
                    c.loader_cpu_s,
                    opt(c.vswitchd_cpu_s.map(f2)),
                    mib(c.peak_rss_kib),
                    opt(c.vswitchd_rss_kib.map(mib)),
                    opt(c.flows),
                    opt(c.groups),
                    opt(c.rules),
                    c.note.as_deref().map(one_line).unwrap_or_default(),
                );
            }
        }
        let agents: Vec<String> = systems(r)
            .into_iter()
            .filter(|s| s.starts_with("agent-"))
            .collect();
        if !agents.is_empty() {
            let _ = writeln!(
                s,
                "\nRatios of wall time (x > 1: the first is slower). `agent/raw` is the agent's \
                 overhead over the OVS ceiling; `legacy/agent` is how much faster the agent is \
                 than iptables-legacy.\n"
            );
            let _ = writeln!(
                s,
                "| N | agent | agent / raw-ovs-ofctl | iptables-legacy / agent | iptables-nft / agent | iptables-nft-flush / agent | nftables / agent |"
            );
            let _ = writeln!(s, "|--:|---|--:|--:|--:|--:|--:|");
            for n in &r.sizes {
                for a in &agents {
                    let Some(ag) = cold_row(r, a, *n) else {
                        continue;
                    };
                    let ratio = |num: Option<f64>, den: Option<f64>| match (num, den) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                        _ => "–".into(),
                    };
                    let wall = |sys: &str| cold_row(r, sys, *n).map(|c| c.wall_s);
                    let _ = writeln!(
                        s,
                        "| {} | {a} | {} | {} | {} | {} | {} |",
                        size_label(*n),
                        ratio(Some(ag.wall_s), wall("raw-ovs-ofctl")),
                        ratio(wall("iptables-legacy"), Some(ag.wall_s)),
                        ratio(wall("iptables-nft"), Some(ag.wall_s)),
                        ratio(wall("iptables-nft-flush"), Some(ag.wall_s)),
                        ratio(wall("nftables"), Some(ag.wall_s)),
                    );
                }
            }
        }
        let _ = writeln!(s);
    }

    if !r.churn.is_empty() {
        let _ = writeln!(
            s,
            "## 2. Churn: one endpoint change at a time, send to Ack\n\n![churn latency](churn.svg)\n"
        );
        let _ = writeln!(
            s,
            "| backend | N | rate | changes | p50 ms | p99 ms | max ms | mean ms | agent CPU % | vswitchd CPU % | agent peak RSS MiB | note |"
        );
        let _ = writeln!(s, "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for c in &r.churn {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} |",
                c.backend,
                size_label(c.services),
                c.rate,
                c.changes,
                f2(c.p50_ms),
                f2(c.p99_ms),
                f2(c.max_ms),
                f2(c.mean_ms),
                c.agent_cpu_pct,
                c.vswitchd_cpu_pct,
                mib(c.agent_peak_rss_kib),
                c.error.as_deref().map(one_line).unwrap_or_default()
            );
        }
        let mut backends: Vec<&str> = Vec::new();
        for c in &r.churn {
            if !backends.contains(&c.backend.as_str()) {
                backends.push(&c.backend);
            }
        }
        for b in backends {
            let worst = r
                .churn
                .iter()
                .filter(|c| c.backend == b && c.services == 10_000 && c.changes > 0)
                .map(|c| c.p99_ms)
                .fold(f64::NAN, f64::max);
            if worst.is_finite() {
                let _ = writeln!(
                    s,
                    "\nTarget p99 ≤ 20 ms at 10k, backend {b}: worst p99 over the rates is {worst:.2} ms, {}.",
                    if worst <= 20.0 { "met" } else { "NOT met" }
                );
            }
        }
        let _ = writeln!(s);
    }

    if !r.restart.is_empty() {
        let _ = writeln!(s, "## 3. Agent restart under traffic\n");
        let _ = writeln!(
            s,
            "| backend | N | probes | answered | lost | SIGTERM→exit ms | SIGTERM→Hello ms | SIGTERM→Ack ms (converged) | snapshot→Ack ms | note |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for x in &r.restart {
            let note = x
                .error
                .clone()
                .or_else(|| (!x.first_errors.is_empty()).then(|| x.first_errors.join("; ")))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                x.backend,
                size_label(x.services),
                x.probes,
                x.probes_ok,
                x.probes_lost,
                x.stop_ms,
                x.reconnect_ms,
                x.converge_ms,
                x.snapshot_ack_ms,
                one_line(&note)
            );
        }
        let _ = writeln!(s, "\nTarget: 0 lost.\n");
    }

    if !r.footprint.is_empty() {
        let _ = writeln!(s, "## 4. Footprint ({})\n", m.arch);
        let _ = writeln!(
            s,
            "| backend | N | phase | seconds | agent CPU % | agent RSS MiB | agent peak RSS MiB | vswitchd CPU % | vswitchd RSS MiB |"
        );
        let _ = writeln!(s, "|---|--:|---|--:|--:|--:|--:|--:|--:|");
        for f in &r.footprint {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.2} | {} | {} | {:.2} | {} |",
                f.backend,
                size_label(f.services),
                f.phase,
                f.seconds,
                f.agent_cpu_pct,
                mib(f.agent_rss_kib),
                mib(f.agent_peak_rss_kib),
                f.vswitchd_cpu_pct,
                mib(f.vswitchd_rss_kib)
            );
        }
        let _ = writeln!(s);
    }

    if !r.lb.is_empty() {
        let _ = writeln!(s, "## 5. Load-balancing quality\n");
        let _ = writeln!(
            s,
            "| backends | flows | skew % | ideal-hash skew % (noise) | max / mean | moved on one removal | ideal moved | note |"
        );
        let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|--:|---|");
        for l in &r.lb {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.3} | {:.4} | {:.4} | {} |",
                l.backends,
                l.flows,
                l.skew_pct,
                l.ideal_skew_pct,
                l.max_over_mean,
                l.moved_fraction,
                l.ideal_moved,
                l.error.as_deref().map(one_line).unwrap_or_default()
            );
        }
        let _ = writeln!(s);
    }

    if !r.newconn.is_empty() {
        newconn_section(&mut s, &r.newconn);
    }

    if !r.errors.is_empty() {
        let _ = writeln!(s, "## What failed\n");
        for e in &r.errors {
            let _ = writeln!(s, "- {}", one_line(e));
        }
    }
    s
}

/// A figure with `d` decimals, `–` when it does not apply (NaN).
fn fx(v: f64, d: usize) -> String {
    if v.is_finite() {
        format!("{v:.d$}")
    } else {
        "–".into()
    }
}

/// A p-value: three decimals, or `<0.001`.
fn pval(p: f64) -> String {
    if !p.is_finite() {
        "–".into()
    } else if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// A row's datapath (`ovs` for results from before it was recorded).
fn datapath(n: &NewConnRow) -> &str {
    if n.datapath.is_empty() {
        "ovs"
    } else {
        &n.datapath
    }
}

/// Section 6: one table, grouped by size, each size's OVS hash variants and
/// iptables side by side.
fn newconn_section(s: &mut String, rows: &[NewConnRow]) {
    let _ = writeln!(
        s,
        "## 6. New connections: group size, hash fields, and kube-proxy's iptables\n"
    );
    let _ = writeln!(
        s,
        "{} client addresses in turn, one new TCP connection at a time, to one VIP per row: an OVS select group of that many buckets hashing on the row's fields (`port`: the whole TCP source port, before issue 16; `masked`: the agent's masked source port; a number: that mask), or kube-proxy's iptables rules for a Service of that many endpoints in a router namespace (bench/README.md, scenario 6). Each row sums {} rounds, all rows side by side in each round.\n",
        rows[0].clients,
        rows[0].rounds
    );
    let _ = writeln!(
        s,
        "Columns: **conns/s**, answered connections over the batches' wall time; \
         **machine CPU µs / conn**, the whole machine's busy CPU time (/proc/stat) per connection, the one CPU figure iptables has (client, server and anything else running included, so compare rows, not absolutes); \
         **vswitchd CPU µs / conn**, ovs-vswitchd's own, with the lowest and highest batch, and **× smallest** against the same hash at the smallest size; \
         **upcalls / conn**, datapath flow-cache misses per connection, with the lowest and highest batch (early batches include the megaflows' warm-up), and **warm**, over the rounds after the first (the steady state: a VIP's flows stay while its connections keep coming, and idle out after 10 s); \
         **dp flows max**, the most datapath flows after any batch of the row: all of them (the datapath is shared by every row) and, after the `/`, those matching this VIP; \
         **χ² (p)**, Pearson's χ² of the connections per backend against a uniform split (df = buckets - 1) and its p-value (small p: not uniform; with fewer connections than backends, χ² only says how many backends were reached); \
         **max / min share**, the busiest and the idlest backend's connections over the mean.\n"
    );
    let _ = writeln!(
        s,
        "| buckets | datapath | hash | connections | failed | conns/s | machine CPU µs / conn | vswitchd CPU µs / conn (min–max) | × smallest | upcalls / conn (min–max) | warm | dp flows max (all / VIP) | χ² (p) | max / min share | note |"
    );
    let _ = writeln!(
        s,
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    let mut sizes: Vec<usize> = Vec::new();
    for n in rows {
        if !sizes.contains(&n.buckets) {
            sizes.push(n.buckets);
        }
    }
    // The smallest size's vswitchd CPU per connection, per OVS hash.
    let base = |n: &NewConnRow| {
        rows.iter()
            .filter(|x| datapath(x) == "ovs" && x.hash == n.hash)
            .min_by_key(|x| x.buckets)
            .map(|x| x.vswitchd_cpu_us_per_conn)
    };
    for size in sizes {
        for n in rows.iter().filter(|n| n.buckets == size) {
            let ovs = datapath(n) == "ovs";
            let hash = if n.hash.is_empty() {
                "–".to_string()
            } else if let Some(f) = n
                .selection
                .strip_prefix("fields(")
                .and_then(|f| f.split(',').find(|x| x.starts_with("tcp_src")))
            {
                format!("{} (`{f}`)", n.hash)
            } else {
                n.hash.clone()
            };
            let ratio = match base(n) {
                Some(b) if ovs && b > 0.0 => fx(n.vswitchd_cpu_us_per_conn / b, 2),
                _ => "–".into(),
            };
            let range = |v: f64, lo: f64, hi: f64, d: usize| {
                if v.is_finite() && lo.is_finite() {
                    format!("{} ({}–{})", fx(v, d), fx(lo, d), fx(hi, d))
                } else {
                    fx(v, d)
                }
            };
            let flows = match (n.datapath_flows_max, n.datapath_flows_vip_max) {
                (Some(a), Some(v)) => format!("{a} / {v}"),
                (Some(a), None) => a.to_string(),
                _ => "–".into(),
            };
            let chi2 = if n.chi2.is_finite() {
                format!("{:.1} ({})", n.chi2, pval(n.chi2_p))
            } else {
                "–".into()
            };
            let shares = if n.share_max.is_finite() {
                format!("{:.2} / {:.2}", n.share_max, n.share_min)
            } else {
                "–".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                n.buckets,
                datapath(n),
                hash,
                n.connections,
                n.failed,
                n.conns_per_s,
                fx(n.machine_cpu_us_per_conn, 0),
                range(
                    n.vswitchd_cpu_us_per_conn,
                    n.vswitchd_cpu_us_per_conn_min,
                    n.vswitchd_cpu_us_per_conn_max,
                    0
                ),
                ratio,
                range(
                    n.upcalls_per_conn,
                    n.upcalls_per_conn_min,
                    n.upcalls_per_conn_max,
                    2
                ),
                fx(n.upcalls_per_conn_warm, 2),
                flows,
                chi2,
                shares,
                n.error.as_deref().map(one_line).unwrap_or_default()
            );
        }
    }
    let ipt: Vec<&str> = rows
        .iter()
        .filter(|n| datapath(n) == "iptables")
        .map(|n| n.selection.as_str())
        .collect();
    if let Some(sel) = ipt.first() {
        let _ = writeln!(s, "\niptables rows: {sel}.");
    }
    let _ = writeln!(s);
}

fn one_line(s: &str) -> String {
    let t: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let t = t.replace('|', "\\|");
    if t.chars().count() > 300 {
        format!("{}…", t.chars().take(300).collect::<String>())
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nc(buckets: usize, datapath: &str, hash: &str, cpu: f64) -> NewConnRow {
        NewConnRow {
            buckets,
            clients: 16,
            datapath: datapath.into(),
            hash: hash.into(),
            selection: if datapath == "ovs" {
                format!(
                    "fields(ip_src,ip_dst,tcp_src{},tcp_dst)",
                    if hash == "masked" { "=63" } else { "" }
                )
            } else {
                "statistic --mode random (iptables-restore v1.8.9 (nf_tables))".into()
            },
            connections: 100,
            failed: 0,
            rounds: 2,
            conns_per_s: 500.0,
            machine_cpu_us_per_conn: 900.0,
            vswitchd_cpu_us_per_conn: cpu,
            vswitchd_cpu_us_per_conn_min: cpu,
            vswitchd_cpu_us_per_conn_max: cpu,
            upcalls_per_conn: if datapath == "ovs" { 1.0 } else { f64::NAN },
            upcalls_per_conn_min: f64::NAN,
            upcalls_per_conn_warm: f64::NAN,
            upcalls_per_conn_max: f64::NAN,
            vswitchd_cpu_us_per_upcall: cpu,
            datapath_flows_max: (datapath == "ovs").then_some(40),
            datapath_flows_vip_max: (datapath == "ovs").then_some(30),
            chi2: 2.0,
            chi2_p: 0.3679,
            share_max: 1.2,
            share_min: 0.8,
            error: None,
        }
    }

    #[test]
    fn newconn_table_groups_rows_by_size() {
        let rows = vec![
            nc(3, "ovs", "port", 400.0),
            nc(3, "ovs", "masked", 100.0),
            nc(3, "iptables", "", f64::NAN),
            nc(100, "ovs", "port", 800.0),
            nc(100, "ovs", "masked", 150.0),
            nc(100, "iptables", "", f64::NAN),
        ];
        let mut s = String::new();
        newconn_section(&mut s, &rows);
        let lines: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with("| 3 ") || l.starts_with("| 100 "))
            .collect();
        assert_eq!(lines.len(), 6);
        assert!(
            lines[0].starts_with("| 3 | ovs | port (`tcp_src`) |"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("| 3 | ovs | masked (`tcp_src=63`) |"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("| 3 | iptables | – |"), "{}", lines[2]);
        // × smallest against the same hash: 800 / 400 and 150 / 100.
        assert!(lines[3].contains("| 2.00 |"), "{}", lines[3]);
        assert!(lines[4].contains("| 1.50 |"), "{}", lines[4]);
        assert!(lines[3].contains("| 40 / 30 |") && lines[3].contains("| 2.0 (0.368) |"));
        assert!(lines[5].contains("| 900 | – | – | – | – |"), "{}", lines[5]);
        assert!(s.contains("iptables rows: statistic --mode random"));
        // Every row has the header's column count.
        let header = s.lines().find(|l| l.starts_with("| buckets |")).unwrap();
        for l in &lines {
            assert_eq!(
                l.matches(" | ").count(),
                header.matches(" | ").count(),
                "{l}"
            );
        }
    }

    #[test]
    fn old_newconn_rows_read_as_ovs() {
        let mut row = nc(10, "", "", 427.0);
        row.selection = String::new();
        row.chi2 = f64::NAN;
        row.datapath_flows_max = None;
        let mut s = String::new();
        newconn_section(&mut s, &[row]);
        assert!(s.contains("| 10 | ovs | – | 100 | 0 | 500 |"), "{s}");
        assert!(pval(0.0001) == "<0.001" && pval(0.05) == "0.050");
    }
}
