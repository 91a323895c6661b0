//! The `openflow` crate's codec on what the compiler writes, against OVS
//! itself. (The codec's own oracle and fuzz tests, on flows and groups of no
//! pipeline, are the crate's: `openflow/tests/ofp_print.rs`, `real.rs`.)
//!
//! - Oracle: every flow and group of every golden case is encoded as the
//!   native backend encodes its ops, and what `ovs-ofctl ofp-print` decodes
//!   from those bytes must equal what `ovs-ofctl parse-flows`/`parse-group`
//!   make of the same text.
//! - Fuzz: mutated golden text never panics the parser or the encoder.
//! - Real switch: the golden groups and flows go into a private OVS over the
//!   crate's connection in one bundle; GROUP_DESC and FLOW_DESC come back
//!   through the decoders, and every group must read back as
//!   `InstalledGroup::is`.
//!
//! These tests need `ovs-ofctl` and, for the real switch, root and
//! `ovs-vswitchd`. A missing OVS fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use dpu_agent::compile::flows::{Actions, Bucket, FlowBody, FlowKey, Group};
use dpu_agent::compile::pipeline::cookie::{Category, Cookie};
use dpu_agent::reconcile::backend::native::{change, encode_op};
use dpu_agent::reconcile::backend::{BundleOp, InstalledGroup};
use openflow::{Bundle, Connection};
use proptest::prelude::*;
use test_support::props::config;

/// One golden case: its flows and groups.
struct Case {
    name: String,
    flows: Vec<Flow>,
    groups: Vec<Group>,
}

/// A golden flow: its key and actions in the IR, and the match and actions
/// text of the golden file they were parsed from (what `ovs-ofctl` is given).
#[derive(Clone)]
struct Flow {
    key: FlowKey,
    actions: Actions,
    match_text: String,
    actions_text: String,
}

fn owner() -> Cookie {
    Cookie::new(Category::Service, "ofp-codec")
}

#[path = "../../openflow/tests/common/ir_text.rs"]
mod ir_text;
use ir_text::{hash_fields, parse_actions, parse_match};

#[path = "../../openflow/tests/common/ofctl.rs"]
mod ofctl;
use ofctl::{encode_text, flow_mod_line, group_body, ofctl, ofp_print};

fn bucket(id: u32, actions: &str) -> Bucket {
    Bucket::new(id, Arc::new(parse_actions(actions)))
}

/// Reads `tests/golden/*/expected.txt` (the dump format of `DesiredState::dump`).
fn golden_cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let mut cases = Vec::new();
    for dir in dirs {
        let text = fs::read_to_string(dir.join("expected.txt")).unwrap();
        let mut case = Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            flows: Vec::new(),
            groups: Vec::new(),
        };
        let mut table = 0u8;
        for line in text.lines() {
            // Drop the `  [Category]` suffix.
            let line = line.rsplit_once("  [").map_or(line, |(l, _)| l);
            if let Some(rest) = line.strip_prefix("# table ") {
                table = rest.split(' ').next().unwrap().parse().unwrap();
            } else if let Some(rest) = line.strip_prefix("priority=") {
                let (prio, rest) = rest.split_once(' ').unwrap();
                let (m, actions) = rest.split_once(" actions=").unwrap();
                let m = if m == "*" { "" } else { m };
                case.flows.push(Flow {
                    key: FlowKey::new(table, prio.parse().unwrap(), parse_match(m)),
                    actions: parse_actions(actions),
                    match_text: m.to_string(),
                    actions_text: actions.to_string(),
                });
            } else if let Some(rest) = line.strip_prefix("group_id=") {
                let (id, rest) = rest.split_once(' ').unwrap();
                let fields = rest.split_once("fields(").unwrap().1.trim_end_matches(')');
                let names: Vec<&str> = fields.split(',').collect();
                case.groups.push(Group {
                    id: id.parse().unwrap(),
                    hash_fields: hash_fields(&names),
                    buckets: Vec::new(),
                    owner: owner(),
                    learns: false,
                });
            } else if let Some(rest) = line.trim_start().strip_prefix("bucket ") {
                let (id, actions) = rest.split_once(": ").unwrap();
                let b = bucket(id.parse().unwrap(), actions);
                case.groups.last_mut().unwrap().buckets.push(b);
            }
        }
        cases.push(case);
    }
    assert!(cases.len() >= 5, "golden cases missing");
    cases
}

fn add_flow(key: &FlowKey, actions: &Actions, cookie: u64) -> BundleOp {
    BundleOp::AddFlow {
        key: key.clone(),
        body: FlowBody::new(actions.clone(), owner()),
        cookie,
    }
}

/// The golden flow in `ovs-ofctl` flow syntax, as the golden file writes it.
fn flow_text(f: &Flow, cookie: u64) -> String {
    let m = if f.match_text.is_empty() {
        String::new()
    } else {
        format!("{},", f.match_text)
    };
    format!(
        "table={},priority={},cookie={cookie:#x},{m}actions={}",
        f.key.table, f.key.priority, f.actions_text
    )
}

#[test]
fn every_golden_flow_decodes_in_ovs_as_its_text_parses() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in golden_cases() {
        let file = dir.path().join(format!("{}.flows", case.name));
        let texts: Vec<String> = case
            .flows
            .iter()
            .enumerate()
            .map(|(i, f)| flow_text(f, 0x1000 + i as u64))
            .collect();
        fs::write(&file, texts.join("\n") + "\n").unwrap();
        let (ok, parsed) = ofctl(&["parse-flows", file.to_str().unwrap()]);
        assert!(ok, "{}: parse-flows: {parsed}", case.name);
        let want: Vec<String> = parsed
            .lines()
            .filter(|l| l.starts_with("OFPT_FLOW_MOD"))
            .map(flow_mod_line)
            .collect();
        assert_eq!(want.len(), case.flows.len(), "{}", case.name);
        for (i, (f, want)) in case.flows.iter().zip(&want).enumerate() {
            let msgs = encode_op(&add_flow(&f.key, &f.actions, 0x1000 + i as u64), 1)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(msgs.len(), 1);
            let got = flow_mod_line(&ofp_print(&msgs[0]));
            assert_eq!(&got, want, "{}: {}", case.name, texts[i]);
            checked += 1;
        }
    }
    assert!(checked > 400, "only {checked} flows");
}

#[test]
fn every_golden_group_decodes_in_ovs_as_its_text_parses() {
    let mut checked = 0;
    for case in golden_cases() {
        for g in &case.groups {
            let (ok, parsed) = ofctl(&["parse-group", &g.spec()]);
            assert!(ok, "{}: parse-group: {parsed}", case.name);
            let msgs = encode_op(&BundleOp::PutGroup(Arc::new(g.clone())), 1).unwrap();
            assert_eq!(msgs.len(), 1);
            let printed = ofp_print(&msgs[0]);
            assert!(printed.contains("ADD_OR_MOD group_id="), "{printed}");
            assert_eq!(group_body(&printed), group_body(&parsed), "{}", case.name);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} groups");
}

// ---- fuzz -------------------------------------------------------------------

/// Mutates `s` at `pos`: deletes, duplicates or replaces a character.
fn mutate(s: &str, pos: usize, how: u8, with: char) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return with.to_string();
    }
    let i = pos % chars.len();
    match how % 3 {
        0 => {
            chars.remove(i);
        }
        1 => chars.insert(i, chars[i]),
        _ => chars[i] = with,
    }
    chars.into_iter().collect()
}

fn golden_texts() -> Vec<(String, String)> {
    golden_cases()
        .into_iter()
        .flat_map(|c| c.flows)
        .map(|f| (f.match_text, f.actions_text))
        .collect()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn mutated_golden_text_never_panics(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<char>(), any::<bool>()), 1..6),
    ) {
        let texts = golden_texts();
        let (mut m, mut a) = texts[pick.index(texts.len())].clone();
        for (pos, how, with, in_match) in edits {
            if in_match { m = mutate(&m, pos, how, with) } else { a = mutate(&a, pos, how, with) }
        }
        let _ = encode_text(&m, &a);
    }
}

// ---- a real switch ----------------------------------------------------------

/// Applies `ops` as one bundle over the crate's connection, as the native
/// backend encodes them.
async fn apply(conn: &mut Connection, ops: &[BundleOp], what: &str) {
    let mut bundle = Bundle::new();
    for op in ops {
        bundle
            .push(change(op))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let late = conn
        .apply(&mut bundle)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(late.is_empty(), "{what}: {late:?}");
}

/// `dump-groups` prints one hash field as `fields=ip_src`; `Group::spec` writes
/// `fields(ip_src)`.
fn one_field_in_parens(line: &str) -> String {
    match line.split_once(",fields=") {
        Some((head, rest)) => {
            let (field, tail) = rest.split_once(',').unwrap_or((rest, ""));
            let sep = if tail.is_empty() { "" } else { "," };
            format!("{head},fields({field}){sep}{tail}")
        }
        None => line.to_string(),
    }
}

#[tokio::test]
async fn golden_groups_and_flows_read_back_from_a_real_switch() {
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs =
        dpu_lab::ovs::OvsInstance::start().expect("a private OVS (needs root and ovs-vswitchd)");
    ovs.add_bridge("br-codec").unwrap();
    let target = ovs.mgmt("br-codec");
    let mut sw = Connection::connect(target.strip_prefix("unix:").unwrap())
        .await
        .unwrap();
    let mut total_groups = 0;
    for case in golden_cases() {
        // Start clean: every flow and group goes.
        apply(
            &mut sw,
            &[
                BundleOp::DeleteFlowsByCookie {
                    table: None,
                    cookie: 0,
                    mask: 0,
                },
                BundleOp::DeleteGroup(openflow::codec::OFPG_ALL),
            ],
            &case.name,
        )
        .await;
        let mut ops: Vec<BundleOp> = case
            .groups
            .iter()
            .map(|g| BundleOp::PutGroup(Arc::new(g.clone())))
            .collect();
        let mut want_users: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        let mut want_flows = BTreeSet::new();
        for (i, f) in case.flows.iter().enumerate() {
            let cookie = 0x77_0000 + i as u64;
            ops.push(add_flow(&f.key, &f.actions, cookie));
            want_flows.insert((f.key.table, f.key.priority, cookie));
            for g in f.actions.groups() {
                want_users.entry(g).or_default().insert(cookie);
            }
        }
        apply(&mut sw, &ops, &case.name).await;

        let dump = sw.dump().await.unwrap();
        assert!(dump.oversized_groups.is_empty(), "{}", case.name);
        let groups: BTreeMap<u32, InstalledGroup> = dump
            .groups
            .into_iter()
            .map(|d| (d.id, InstalledGroup::from_desc(d)))
            .collect();
        assert_eq!(groups.len(), case.groups.len(), "{}", case.name);
        for g in &case.groups {
            let got = &groups[&g.id];
            assert!(
                got.is(g),
                "{}: group {} reads back as\n{got:?}\nnot\n{:?}",
                case.name,
                g.id,
                dpu_agent::reconcile::backend::native::wire_form(g).unwrap()
            );
            total_groups += 1;
        }

        let mut got_flows = BTreeSet::new();
        let mut got_users: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for f in dump.flows {
            got_flows.insert((f.table, f.priority, f.cookie));
            for g in f.groups {
                got_users.entry(g).or_default().insert(f.cookie);
            }
        }
        assert_eq!(got_flows, want_flows, "{}", case.name);
        assert_eq!(got_users, want_users, "{}", case.name);

        // An independent reader agrees.
        let dumped = ovs.dump_flows("br-codec").unwrap();
        assert_eq!(dumped.len(), case.flows.len(), "{}", case.name);
        let cookies: BTreeSet<u64> = dumped
            .iter()
            .map(|l| {
                let c = l
                    .trim()
                    .strip_prefix("cookie=0x")
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap();
                u64::from_str_radix(c, 16).unwrap()
            })
            .collect();
        let want_cookies: BTreeSet<u64> = want_flows.iter().map(|f| f.2).collect();
        assert_eq!(cookies, want_cookies, "{}", case.name);
        let dumped_groups = ovs.dump_groups("br-codec").unwrap();
        assert_eq!(dumped_groups.len(), case.groups.len(), "{}", case.name);
        for g in &case.groups {
            assert!(
                dumped_groups
                    .iter()
                    .any(|l| one_field_in_parens(l.trim()) == g.spec()),
                "{}: dump-groups lacks {}\n{dumped_groups:#?}",
                case.name,
                g.spec()
            );
        }
    }
    assert!(total_groups >= 10, "only {total_groups} groups");
}
