//! Hand-written SVG charts for the report: grouped bars on a log scale (cold
//! programming: the systems differ by orders of magnitude) and lines (churn
//! latency against N: flat is good). Pure functions from numbers to text.

use std::fmt::Write;

/// One named series: a value per category (`None`: not measured or failed).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
    /// Dashed line (line charts).
    pub dashed: bool,
    /// Palette index; `None`: the series' position.
    pub color: Option<usize>,
    /// What a bar chart writes where a value is missing (default `n/a`).
    pub missing: Vec<Option<String>>,
}

fn color(se: &Series, i: usize) -> &'static str {
    PALETTE[se.color.unwrap_or(i) % PALETTE.len()]
}

const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" font-size="15" font-weight="bold" text-anchor="middle">{}</text>
"##,
        W / 2.0,
        esc(title)
    );
    s
}

fn legend(s: &mut String, series: &[Series], line: bool) {
    let x = W - RIGHT + 15.0;
    for (i, se) in series.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 20.0;
        let c = color(se, i);
        if line {
            let dash = if se.dashed {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="2"{dash}/>"#,
                x + 18.0
            );
        } else {
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{}" width="14" height="12" fill="{c}"/>"#,
                y - 6.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            y + 4.0,
            esc(&se.name)
        );
    }
}

fn fmt_tick(v: f64) -> String {
    if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Grouped bars, one group per category, on a log-10 y axis.
pub fn bars_log(title: &str, y_label: &str, categories: &[String], series: &[Series]) -> String {
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = vals
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
        .log10()
        .floor();
    let hi = vals
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(1.0)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y_of = |v: f64| TOP + plot_h * (1.0 - (v.log10() - lo) / (hi - lo));
    let mut s = header(title);
    // Decades.
    let mut e = lo;
    while e <= hi + 1e-9 {
        let v = 10f64.powf(e);
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        esc(y_label)
    );
    let group_w = plot_w / categories.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (ci, cat) in categories.iter().enumerate() {
        let gx = LEFT + ci as f64 * group_w + group_w * 0.1;
        for (si, se) in series.iter().enumerate() {
            let x = gx + si as f64 * bar_w;
            match se.values.get(ci).copied().flatten() {
                Some(v) if v > 0.0 => {
                    let y = y_of(v);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                        bar_w * 0.92,
                        TOP + plot_h - y,
                        color(se, si),
                        esc(&se.name),
                        esc(cat),
                        fmt_value(v)
                    );
                    if bar_w > 14.0 {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                            x + bar_w * 0.46,
                            y - 3.0,
                            fmt_value(v)
                        );
                    }
                }
                _ => {
                    let label = se
                        .missing
                        .get(ci)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| "n/a".into());
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#999" text-anchor="middle">{}</text>"##,
                        x + bar_w * 0.46,
                        TOP + plot_h - 4.0,
                        esc(&label)
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + ci as f64 * group_w + group_w / 2.0,
            H - BOTTOM + 18.0,
            esc(cat)
        );
    }
    axes(&mut s);
    legend(&mut s, series, false);
    s.push_str("</svg>\n");
    s
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 || (v >= 1.0 && v == v.round()) || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn axes(s: &mut String) {
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#333"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
        H - BOTTOM,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
}

/// Lines across categories (evenly spaced) on a linear y axis from 0, with an
/// optional labelled horizontal target line.
pub fn lines(
    title: &str,
    y_label: &str,
    x_label: &str,
    categories: &[String],
    series: &[Series],
    target: Option<(f64, &str)>,
) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .chain(target.map(|t| t.0))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let top = nice_ceiling(max * 1.1);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y_of = |v: f64| TOP + plot_h * (1.0 - v / top);
    let n = categories.len().max(1);
    let x_of = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n as f64;
    let mut s = header(title);
    for k in 0..=5 {
        let v = top * k as f64 / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_value(v)
        );
    }
    if let Some((v, label)) = target {
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="2,4"/><text x="{}" y="{:.1}" fill="#d62728" text-anchor="end">{}</text>"##,
            W - RIGHT,
            W - RIGHT - 4.0,
            y - 4.0,
            esc(label)
        );
    }
    for (i, c) in categories.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x_of(i),
            H - BOTTOM + 18.0,
            esc(c)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        H - 10.0,
        esc(x_label),
        TOP + plot_h / 2.0,
        esc(y_label)
    );
    for (si, se) in series.iter().enumerate() {
        let c = color(se, si);
        let pts: Vec<(f64, f64)> = se
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| (x_of(i), y_of(v))))
            .collect();
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        if pts.len() > 1 {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
        }
        for (x, y) in &pts {
            let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{c}"/>"#);
        }
    }
    axes(&mut s);
    legend(&mut s, series, true);
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_every_series() {
        let cats = vec!["1k".to_string(), "10k".to_string()];
        let series = vec![
            Series {
                name: "agent".into(),
                values: vec![Some(0.5), Some(4.0)],
                dashed: false,
                color: None,
                missing: vec![],
            },
            Series {
                name: "iptables <legacy>".into(),
                values: vec![Some(2.0), None],
                dashed: true,
                color: Some(0),
                missing: vec![None, Some("timeout".into())],
            },
        ];
        for svg in [
            bars_log("t", "s", &cats, &series),
            lines("t", "ms", "N", &cats, &series, Some((20.0, "target"))),
        ] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("agent") && svg.contains("iptables &lt;legacy&gt;"));
        }
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(0.3), 1.0);
    }
}
