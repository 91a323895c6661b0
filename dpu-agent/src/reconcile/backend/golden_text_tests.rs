//! Text into the IR, on the largest corpus there is: every match, action
//! list and hash field of the golden files parses back to the value that
//! prints as the very same text.

use std::path::Path;

use ::openflow::ir::{Actions, HashField, Match};

/// Every match, action list (flows and group buckets) and hash field of
/// `tests/golden/*/expected.txt`, as the compiler wrote them.
fn golden_texts() -> (Vec<String>, Vec<String>, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let (mut matches, mut actions, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        for line in text.lines() {
            // Drop the `  [Category]` suffix.
            let line = line.rsplit_once("  [").map_or(line, |(l, _)| l);
            if let Some(rest) = line.strip_prefix("priority=") {
                let (_, rest) = rest.split_once(' ').unwrap();
                let (m, a) = rest.split_once(" actions=").unwrap();
                // The dump writes the empty match as `*`.
                matches.push(if m == "*" { String::new() } else { m.into() });
                actions.push(a.to_string());
            } else if let Some(rest) = line.strip_prefix("group_id=") {
                let f = rest.split_once("fields(").unwrap().1;
                hashes.extend(f.trim_end_matches(')').split(',').map(String::from));
            } else if let Some(rest) = line.trim_start().strip_prefix("bucket ") {
                actions.push(rest.split_once(": ").unwrap().1.to_string());
            }
        }
    }
    (matches, actions, hashes)
}

#[test]
fn every_golden_text_parses_back_to_itself() {
    let (matches, actions, hashes) = golden_texts();
    assert!(matches.len() > 400, "only {} flows", matches.len());
    for m in &matches {
        let parsed: Match = m.parse().unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(parsed.to_string(), *m);
    }
    for a in &actions {
        let parsed: Actions = a.parse().unwrap_or_else(|e| panic!("{a}: {e}"));
        assert_eq!(parsed.to_string(), *a);
    }
    assert!(hashes.len() >= 10);
    for h in &hashes {
        let parsed = HashField::parse(h).unwrap_or_else(|e| panic!("{h}: {e}"));
        assert_eq!(parsed.to_string(), *h);
    }
}
