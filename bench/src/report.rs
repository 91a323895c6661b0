//! `results.md` and the SVG charts from a [`Results`]: pure text out of data, so
//! `dpu-bench report` can redraw them from `results.json` without measuring again.

use std::fmt::Write;

use crate::results::{ColdRow, Results};
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
        let _ = writeln!(s, "## 6. New connections against the group's size\n");
        let _ = writeln!(
            s,
            "One client, one new TCP connection at a time, to VIPs whose select groups have these many buckets (bench/README.md, scenario 6). Each row sums {} rounds, run side by side.\n",
            r.newconn[0].rounds
        );
        let _ = writeln!(
            s,
            "| buckets | connections | conns/s | vswitchd CPU µs / conn (min–max of batches) | × smallest | upcalls / conn | vswitchd CPU µs / upcall | note |"
        );
        let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|--:|---|");
        let base = r.newconn[0].vswitchd_cpu_us_per_conn;
        for n in &r.newconn {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {:.0} | {} |",
                n.buckets,
                n.connections,
                n.conns_per_s,
                n.vswitchd_cpu_us_per_conn,
                n.vswitchd_cpu_us_per_conn_min,
                n.vswitchd_cpu_us_per_conn_max,
                n.vswitchd_cpu_us_per_conn / base,
                n.upcalls_per_conn,
                n.vswitchd_cpu_us_per_upcall,
                n.error.as_deref().map(one_line).unwrap_or_default()
            );
        }
        let _ = writeln!(s);
    }

    if !r.errors.is_empty() {
        let _ = writeln!(s, "## What failed\n");
        for e in &r.errors {
            let _ = writeln!(s, "- {}", one_line(e));
        }
    }
    s
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
