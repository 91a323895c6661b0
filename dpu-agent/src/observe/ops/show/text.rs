//! Text helpers shared by the `show` renderers: aligned columns, and the
//! "did you mean" list for a name the intent does not have.

use std::fmt::Write as _;

/// Rows under a header, each column as wide as its widest cell, indented by
/// `indent` spaces. The last column is not padded.
pub fn columns(indent: usize, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = " ".repeat(indent);
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Names close to `want`: containing it (or contained in it), or a few edits
/// away. At most five, closest first.
pub fn close_names<'a>(want: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let want_l = want.to_lowercase();
    let mut scored: Vec<(usize, &str)> = names
        .into_iter()
        .filter_map(|n| {
            let l = n.to_lowercase();
            let d = edit_distance(&want_l, &l);
            let contains = !want_l.is_empty() && (l.contains(&want_l) || want_l.contains(&l));
            (contains || d <= 1.max(want_l.chars().count() / 3)).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

/// Optimal string alignment distance: a swap of neighbours counts as one
/// edit, the usual typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// "no Service named "x"", with close names or, failing those, what there is.
pub fn unknown(kind: &str, want: &str, names: &[&str]) -> String {
    let mut msg = format!("no {kind} named {want:?} in the applied intent");
    let close = close_names(want, names.iter().copied());
    if !close.is_empty() {
        let _ = write!(msg, "; close names: {}", close.join(", "));
    } else if names.is_empty() {
        let _ = write!(msg, " (it has no {kind})");
    } else if names.len() <= 10 {
        let _ = write!(msg, "; there are: {}", names.join(", "));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_do_not_pad_the_last() {
        let out = columns(
            2,
            &["VPC", "IP", "STATE"],
            &[
                vec!["default".into(), "10.0.0.5".into(), "serving".into()],
                vec!["b".into(), "fd00::1234".into(), "not ready".into()],
            ],
        );
        assert_eq!(
            out,
            "  VPC      IP          STATE\n  default  10.0.0.5    serving\n  b        fd00::1234  not ready\n"
        );
    }

    #[test]
    fn close_names_find_typos_and_substrings() {
        let names = ["web", "web-v6", "db", "frontend"];
        assert_eq!(close_names("wbe", names), ["web"]);
        assert_eq!(close_names("web", names), ["web", "web-v6"]);
        assert_eq!(close_names("front", names), ["frontend"]);
        assert!(close_names("zzzzzz", names).is_empty());
    }

    #[test]
    fn unknown_lists_close_names_or_what_exists() {
        assert_eq!(
            unknown("Service", "wbe", &["web", "db"]),
            "no Service named \"wbe\" in the applied intent; close names: web"
        );
        assert_eq!(
            unknown("Service", "zzzzzz", &["web", "db"]),
            "no Service named \"zzzzzz\" in the applied intent; there are: web, db"
        );
        assert_eq!(
            unknown("Service", "x", &[]),
            "no Service named \"x\" in the applied intent (it has no Service)"
        );
    }
}
