//! The native OpenFlow 1.5 codec against OVS itself.
//!
//! - Oracle: every flow and group of every golden case is encoded, and what
//!   `ovs-ofctl ofp-print` decodes from those bytes must equal what
//!   `ovs-ofctl parse-flows`/`parse-group` make of the same text. The other
//!   messages of the backend are checked with `ofp-print` too.
//! - Fuzz: random and mutated text never panics the encoder; random valid flows
//!   always decode; random bytes never panic the decoders.
//! - Real switch: the golden groups and flows go into a private OVS over a plain
//!   socket in one bundle; GROUP_DESC and FLOW_DESC come back through the
//!   decoders, and every group must read back as `InstalledGroup::is`.
//!
//! These tests need `ovs-ofctl` and, for the real switch, root and
//! `ovs-vswitchd`. A missing OVS fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dpu_agent::flows::{Actions, Bucket, FlowBody, FlowKey, Group, HashField, Match};
use dpu_agent::openflow::native::codec::{self, msg_type, BundleCtrl, Header};
use dpu_agent::openflow::BundleOp;
use dpu_agent::pipeline::cookie::{Category, Cookie};
use proptest::prelude::*;

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

#[path = "common/ir_text.rs"]
mod ir_text;
use ir_text::{parse_actions, parse_match};

fn hash_fields(names: &[&str]) -> Vec<HashField> {
    names
        .iter()
        .map(|f| HashField::parse(f).unwrap_or_else(|e| panic!("hash field `{f}`: {e}")))
        .collect()
}

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

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn ofctl(args: &[&str]) -> (bool, String) {
    let out = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow15"])
        .args(args)
        .output()
        .expect("ovs-ofctl must be installed for this test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `ofp-print` of a message; panics when OVS cannot decode all of it.
fn ofp_print(msg: &[u8]) -> String {
    let (ok, text) = ofp_print_raw(msg);
    assert!(ok, "ofp-print refused {}:\n{text}", hex(msg));
    text
}

/// `ofp-print` and whether it decoded every byte without complaint.
fn ofp_print_raw(msg: &[u8]) -> (bool, String) {
    let (ok, text) = ofctl(&["ofp-print", &hex(msg)]);
    let clean = ok
        && !text.contains("***")
        && !text.contains("decode error")
        && !text.contains("bad ")
        && !text.contains("OFPBRC_")
        && !text.contains("OFPBAC_")
        && !text.contains("OFPBMC_");
    (clean, text)
}

/// The first line of a printed message with the xid taken out.
fn flow_mod_line(printed: &str) -> String {
    let line = printed
        .lines()
        .find(|l| l.starts_with("OFPT_FLOW_MOD"))
        .unwrap_or_else(|| panic!("no flow_mod in {printed}"));
    let at = line.find("): ").expect("xid");
    line[at + 3..].to_string()
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
            let msgs = codec::encode_op(&add_flow(&f.key, &f.actions, 0x1000 + i as u64), 1)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(msgs.len(), 1);
            let got = flow_mod_line(&ofp_print(&msgs[0]));
            assert_eq!(&got, want, "{}: {}", case.name, texts[i]);
            checked += 1;
        }
    }
    assert!(checked > 400, "only {checked} flows");
}

/// `ADD_OR_MOD`, as the native backend sends, prints as such; `parse-group`
/// makes an `ADD`.
fn group_body(printed: &str) -> String {
    let body = printed
        .lines()
        .map(str::trim)
        .find(|l| l.contains("group_id="))
        .unwrap_or_else(|| panic!("no group in {printed}"));
    body.split_once(' ').unwrap().1.to_string()
}

#[test]
fn every_golden_group_decodes_in_ovs_as_its_text_parses() {
    let mut checked = 0;
    for case in golden_cases() {
        for g in &case.groups {
            let (ok, parsed) = ofctl(&["parse-group", &g.spec()]);
            assert!(ok, "{}: parse-group: {parsed}", case.name);
            let msgs = codec::encode_op(&BundleOp::PutGroup(Arc::new(g.clone())), 1).unwrap();
            assert_eq!(msgs.len(), 1);
            let printed = ofp_print(&msgs[0]);
            assert!(printed.contains("ADD_OR_MOD group_id="), "{printed}");
            assert_eq!(group_body(&printed), group_body(&parsed), "{}", case.name);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} groups");
}

#[test]
fn a_group_too_big_for_one_message_becomes_insert_buckets() {
    let buckets: Vec<String> = (0..1500u32)
        .map(|i| {
            format!(
                "set_field:{:#x}->reg3,set_field:0x1f90->reg4,resubmit(,45)",
                0x0a00_0000 + i
            )
        })
        .collect();
    // Ids spread out as the compiler's are, up to the largest it gives.
    let id = |i: u32| 0xffff_fefe - (1499 - i) * 2_000_003;
    let g = Group {
        id: 77,
        hash_fields: hash_fields(&["ip_src", "ip_dst", "tcp_src", "tcp_dst"]),
        buckets: (0..1500u32)
            .map(|i| bucket(id(i), &buckets[i as usize]))
            .collect(),
        owner: owner(),
        learns: false,
    };
    let msgs = codec::encode_op(&BundleOp::PutGroup(Arc::new(g)), 5).unwrap();
    assert!(msgs.len() >= 2, "{} messages", msgs.len());
    let mut seen = 0;
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.len() < 65_536);
        let printed = ofp_print(m);
        let body = group_body(&printed);
        if i == 0 {
            assert!(printed.contains("ADD_OR_MOD group_id=77"), "{printed}");
            assert!(body.contains("selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)"));
        } else {
            assert!(
                printed.contains("INSERT_BUCKET command_bucket_id:last,group_id=77"),
                "{printed}"
            );
        }
        for b in body.split(",bucket=").skip(1) {
            assert_eq!(
                b,
                format!("bucket_id:{},actions={}", id(seen as u32), buckets[seen]),
                "message {i}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, buckets.len());
}

#[test]
fn deletes_decode_in_ovs() {
    let key = FlowKey::new(
        40,
        100,
        parse_match("reg0=0x1,tcp,nw_dst=10.96.0.20,tp_dst=443"),
    );
    let m = &codec::encode_op(&BundleOp::DeleteFlow(key), 3).unwrap()[0];
    assert_eq!(
        ofp_print(m).trim_end(),
        "OFPT_FLOW_MOD (OF1.5) (xid=0x3): DEL_STRICT table:40 priority=100,tcp,reg0=0x1,nw_dst=10.96.0.20,tp_dst=443 actions=drop"
    );
    let by_cookie = BundleOp::DeleteFlowsByCookie {
        table: Some(41),
        cookie: 0x0300_0500_0000_0000,
        mask: 0xffff_ff00_0000_0000,
    };
    let m = &codec::encode_op(&by_cookie, 4).unwrap()[0];
    assert_eq!(
        ofp_print(m).trim_end(),
        "OFPT_FLOW_MOD (OF1.5) (xid=0x4): DEL table:41 cookie:0x300050000000000/0xffffff0000000000 actions=drop"
    );
    let all_tables = BundleOp::DeleteFlowsByCookie {
        table: None,
        cookie: 7,
        mask: u64::MAX,
    };
    let m = &codec::encode_op(&all_tables, 4).unwrap()[0];
    assert_eq!(
        ofp_print(m).trim_end(),
        "OFPT_FLOW_MOD (OF1.5) (xid=0x4): DEL table:255 cookie:0x7/0xffffffffffffffff actions=drop"
    );
    let m = &codec::encode_op(&BundleOp::DeleteGroup(2147483649), 4).unwrap()[0];
    let printed = ofp_print(m);
    assert!(printed.contains("DEL group_id=2147483649"), "{printed}");
}

#[test]
fn control_messages_decode_in_ovs() {
    assert_eq!(
        ofp_print(&codec::hello(7)),
        "OFPT_HELLO (OF1.5) (xid=0x7):\n version bitmap: 0x06\n"
    );
    assert!(ofp_print(&codec::echo_request(8, b"ping"))
        .starts_with("OFPT_ECHO_REQUEST (OF1.5) (xid=0x8): 4 bytes of payload"));
    assert!(ofp_print(&codec::echo_reply(8, b"ping"))
        .starts_with("OFPT_ECHO_REPLY (OF1.5) (xid=0x8): 4 bytes of payload"));
    assert_eq!(
        ofp_print(&codec::barrier_request(9)),
        "OFPT_BARRIER_REQUEST (OF1.5) (xid=0x9):\n"
    );
    assert_eq!(
        ofp_print(&codec::features_request(3)),
        "OFPT_FEATURES_REQUEST (OF1.5) (xid=0x3):\n"
    );
    for (ctrl, name) in [
        (BundleCtrl::Open, "OPEN_REQUEST"),
        (BundleCtrl::Commit, "COMMIT_REQUEST"),
        (BundleCtrl::Discard, "DISCARD_REQUEST"),
    ] {
        assert_eq!(
            ofp_print(&codec::bundle_control(5, 0x11, ctrl, 3)),
            format!("OFPT_BUNDLE_CONTROL (OF1.5) (xid=0x5):\n bundle_id=0x11 type={name} flags=atomic ordered\n")
        );
    }
    let key = FlowKey::new(0, 100, parse_match("in_port=7"));
    let inner = &codec::encode_op(
        &add_flow(
            &key,
            &parse_actions("set_field:0x1->reg0,goto_table:10"),
            0x42,
        ),
        1,
    )
    .unwrap()[0];
    let add = codec::bundle_add(6, 0x11, 3, inner);
    let printed = ofp_print(&add);
    assert!(
        printed.starts_with(
            "OFPT_BUNDLE_ADD_MESSAGE (OF1.5) (xid=0x6):\n bundle_id=0x11 flags=atomic ordered\nOFPT_FLOW_MOD (OF1.5) (xid=0x6): ADD priority=100,in_port=7 cookie:0x42 actions=set_field:0x1->reg0,goto_table:10"
        ),
        "{printed}"
    );
    assert_eq!(
        ofp_print(&codec::flow_desc_request(10)),
        "OFPST_FLOW request (OF1.5) (xid=0xa):\n"
    );
    assert_eq!(
        ofp_print(&codec::group_desc_request(11)),
        "OFPST_GROUP_DESC request (OF1.5) (xid=0xb): group_id=ALL\n"
    );
}

// ---- fuzz -------------------------------------------------------------------

/// Text parsed into the IR, then encoded: either step may refuse it (the
/// error names the step), neither may panic.
fn encode_text(matches: &str, actions: &str) -> Result<Vec<Vec<u8>>, String> {
    let m: Match = matches
        .parse()
        .map_err(|e| format!("match `{matches}`: {e}"))?;
    let a: Actions = actions
        .parse()
        .map_err(|e| format!("actions `{actions}`: {e}"))?;
    let key = FlowKey::new(1, 1, m);
    codec::encode_op(&add_flow(&key, &a, 1), 1).map_err(|e| e.to_string())
}

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
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(m in "\\PC{0,80}", a in "\\PC{0,120}") {
        let _ = encode_text(&m, &a);
        if let Ok(actions) = a.parse::<Actions>() {
            let g = Group { id: 1, hash_fields: hash_fields(&["ip_src"]), buckets: vec![Bucket::new(0, Arc::new(actions))], owner: owner(), learns: false };
            let _ = codec::encode_op(&BundleOp::PutGroup(Arc::new(g.clone())), 1);
            let _ = codec::wire_form(&g);
        }
    }

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

    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = codec::parse_error(&bytes);
        let _ = codec::parse_multipart(&bytes);
        let _ = codec::parse_bundle_reply(&bytes);
        let _ = codec::parse_flow_desc_body(&bytes);
        let _ = codec::parse_group_desc_body(&bytes);
        let _ = codec::negotiate(&bytes);
        let _ = Header::parse(&bytes);
        if let Ok(e) = codec::parse_error(&bytes) {
            let _ = (e.name(), e.failed_xid());
        }
    }

    #[test]
    fn mutated_replies_never_panic_the_decoders(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        for body in [FLOW_DESC_BODY, GROUP_DESC_BODY] {
            let mut b = unhex(body);
            for (i, v) in &edits {
                let at = i.index(b.len());
                b[at] = *v;
            }
            let _ = codec::parse_flow_desc_body(&b);
            let _ = codec::parse_group_desc_body(&b);
            let n = cut.index(b.len() + 1);
            let _ = codec::parse_flow_desc_body(&b[..n]);
            let _ = codec::parse_group_desc_body(&b[..n]);
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A FLOW_DESC body (one flow: table 3, priority 100, cookie 0x42, group:5).
const FLOW_DESC_BODY: &str = "0060 0000 03 00 0064 0000 0000 0000 0000 0000000000000042
    0001 000a 80000a020800 000000000000
    0000 0014 00000000000000000000000000000000 00000000
    0004 0020 00000000 00160008 00000005 00000010 00000007 0000 000000000000";
/// A GROUP_DESC body (one select group, one bucket, hash on ip_src).
const GROUP_DESC_BODY: &str = "0060 01 00 00000001 0020 000000000000
    0020 0010 00000000 00190010 00010604 0a00010b 00000000 0000 0008 0001 0000
    ffff 0030 0000154d 00000001 00000000 68617368000000000000000000000000 0000000000000000 80001604 ffffffff";

#[test]
fn the_decoders_read_flow_and_group_desc_bodies() {
    let flows = codec::parse_flow_desc_body(&unhex(FLOW_DESC_BODY)).unwrap();
    assert_eq!(
        flows,
        vec![codec::FlowDesc {
            table: 3,
            priority: 100,
            cookie: 0x42,
            groups: vec![5]
        }]
    );
    let groups = codec::parse_group_desc_body(&unhex(GROUP_DESC_BODY)).unwrap();
    let g = Group {
        id: 1,
        hash_fields: hash_fields(&["ip_src"]),
        buckets: vec![bucket(0, "set_field:0xa00010b->reg3")],
        owner: owner(),
        learns: false,
    };
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].0, 1);
    assert!(groups[0].1.is(&g), "{:?}", groups[0].1);
    let mut other = g.clone();
    other.buckets = vec![bucket(0, "set_field:0xa00010c->reg3")];
    assert!(!groups[0].1.is(&other));
    // The same actions under another id: OVS would hash flows elsewhere.
    let mut other = g.clone();
    other.buckets[0].id = 1;
    assert!(!groups[0].1.is(&other));
    let mut other = g.clone();
    other.hash_fields = hash_fields(&["ip_dst"]);
    assert!(!groups[0].1.is(&other));
    let mut other = g;
    other.buckets.push(bucket(1, "set_field:0xa00010b->reg3"));
    assert!(!groups[0].1.is(&other));
}

/// Random valid registers, addresses (either family), ports and actions.
fn valid_flow() -> impl Strategy<Value = (String, String)> {
    let mac = prop::array::uniform6(any::<u8>()).prop_map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    });
    let v4 = any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string());
    let v6 = any::<[u8; 16]>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string());
    let proto = prop::sample::select(vec!["tcp", "udp", "sctp"]);
    let regs = (
        0u8..16,
        0u8..16,
        0usize..32,
        0usize..32,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    );
    let addrs = (
        any::<bool>(),
        v4.clone(),
        v4,
        v6.clone(),
        v6,
        0u8..=128,
        mac,
    );
    let rest = (
        proto,
        any::<u16>(),
        1u16..0xffff,
        any::<u128>(),
        0u8..4,
        0u16..0xffff,
    );
    (regs, addrs, rest).prop_map(
        |((r, lr, lo, w, val, mask, lv), (six, a4, b4, a6, b6, plen, mac), (proto, port, nport, x, xr, zone))| {
            let hi = (lo + w).min(31);
            let bits = hi - lo + 1;
            let lv = if bits == 32 { lv } else { lv & ((1u32 << bits) - 1) };
            let (l3, dst, src_set, nat) = if six {
                (
                    format!("{proto}6,ipv6_dst={a6}/{plen}"),
                    "ipv6_src",
                    b6.clone(),
                    format!("[{b6}]:{nport}"),
                )
            } else {
                (
                    format!("{proto},nw_dst={a4}/{}", plen % 33),
                    "ip_src",
                    b4.clone(),
                    format!("{b4}:{nport}"),
                )
            };
            let m = format!(
                "reg{r}={:#x}/{mask:#x},in_port={},dl_src={mac},{l3},tp_dst={port}",
                val & mask,
                // Port numbers from 0xff00 up are reserved (OFPP_MAX).
                val % 0xfeff + 1
            );
            let a = format!(
                "set_field:{val:#x}->reg{r},load:{lv:#x}->NXM_NX_REG{lr}[{lo}..{hi}],set_field:{x:#x}->xxreg{xr},\
                 move:NXM_NX_REG{lr}[{lo}..{hi}]->NXM_NX_REG{r}[{lo}..{hi}],set_field:{src_set}->{dst},\
                 ct(commit,table=50,zone=NXM_NX_REG{r}[0..15],nat(dst={nat}),exec(load:{lv:#x}->NXM_NX_CT_MARK[{lo}..{hi}])),\
                 ct(zone={zone},nat),push:NXM_NX_REG{lr}[],pop:NXM_NX_REG{r}[],dec_ttl,resubmit(,{port8}),output:{out}",
                port8 = port % 254,
                out = nport % 0xfeff + 1,
            );
            (m, a)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_valid_flows_decode_in_ovs((m, a) in valid_flow()) {
        let msgs = encode_text(&m, &a).unwrap_or_else(|e| panic!("{e}"));
        let (ok, printed) = ofp_print_raw(&msgs[0]);
        prop_assert!(ok, "{m} actions={a}\n{printed}");
        // And OVS reads back what its own parser makes of the text.
        let (parsed_ok, parsed) = ofctl(&["parse-flow", &format!("table=1,priority=1,cookie=0x1,{m},actions={a}")]);
        prop_assert!(parsed_ok, "{parsed}");
        let want = parsed
            .lines()
            .find(|l| l.starts_with("OFPT_FLOW_MOD"))
            .map(flow_mod_line);
        prop_assert_eq!(Some(flow_mod_line(&printed)), want);
    }
}

// ---- a real switch ----------------------------------------------------------

/// A blocking OpenFlow connection for the test.
struct Switch {
    sock: UnixStream,
    next_xid: u32,
}

impl Switch {
    fn connect(target: &str) -> Switch {
        let path = target.strip_prefix("unix:").unwrap();
        let mut sock = None;
        for _ in 0..50 {
            match UnixStream::connect(path) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let sock = sock.unwrap_or_else(|| panic!("cannot connect to {path}"));
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut s = Switch {
            sock,
            next_xid: 100,
        };
        s.send(&codec::hello(1));
        let peer = s.recv();
        assert_eq!(
            codec::negotiate(&peer),
            Some(codec::OFP_VERSION),
            "{peer:02x?}"
        );
        s
    }

    fn xid(&mut self) -> u32 {
        self.next_xid += 1;
        self.next_xid
    }

    fn send(&mut self, msg: &[u8]) {
        self.sock.write_all(msg).unwrap();
    }

    /// The next message that is not an echo request (those are answered).
    fn recv(&mut self) -> Vec<u8> {
        loop {
            let mut head = [0u8; 8];
            self.sock.read_exact(&mut head).unwrap();
            let h = Header::parse(&head).unwrap();
            let mut msg = head.to_vec();
            msg.resize(h.length as usize, 0);
            self.sock.read_exact(&mut msg[8..]).unwrap();
            if h.msg_type == msg_type::ECHO_REQUEST {
                let reply = codec::echo_reply(h.xid, &msg[8..]);
                self.send(&reply);
                continue;
            }
            return msg;
        }
    }

    /// Sends `msgs` then a barrier; panics on any error before the reply.
    fn send_all(&mut self, msgs: &[Vec<u8>], what: &str) {
        for m in msgs {
            self.send(m);
        }
        let barrier = self.xid();
        self.send(&codec::barrier_request(barrier));
        loop {
            let m = self.recv();
            let h = Header::parse(&m).unwrap();
            if h.msg_type == msg_type::ERROR {
                let e = codec::parse_error(&m).unwrap();
                panic!(
                    "{what}: switch error {} for xid {:?}",
                    e.name(),
                    e.failed_xid()
                );
            }
            if h.msg_type == msg_type::BARRIER_REPLY && h.xid == barrier {
                return;
            }
        }
    }

    /// Applies `ops` as one atomic, ordered bundle.
    fn bundle(&mut self, ops: &[BundleOp], what: &str) {
        let id = self.xid();
        let open = codec::bundle_control(self.xid(), id, BundleCtrl::Open, 3);
        self.send_all(&[open], what);
        let mut adds = Vec::new();
        for op in ops {
            for inner in codec::encode_op(op, 0).unwrap() {
                let xid = self.xid();
                adds.push(codec::bundle_add(xid, id, 3, &inner));
            }
        }
        self.send_all(&adds, what);
        let commit = self.xid();
        self.send(&codec::bundle_control(commit, id, BundleCtrl::Commit, 3));
        loop {
            let m = self.recv();
            let h = Header::parse(&m).unwrap();
            if h.msg_type == msg_type::ERROR {
                panic!(
                    "{what}: commit refused: {}",
                    codec::parse_error(&m).unwrap().name()
                );
            }
            if h.msg_type == msg_type::BUNDLE_CONTROL {
                assert_eq!(codec::parse_bundle_reply(&m).unwrap(), (id, 5), "{what}");
                break;
            }
        }
    }

    /// All bodies of one multipart reply sequence.
    fn multipart(&mut self, request: Vec<u8>, kind: u16) -> Vec<Vec<u8>> {
        let xid = Header::parse(&request).unwrap().xid;
        self.send(&request);
        let mut bodies = Vec::new();
        loop {
            let m = self.recv();
            let h = Header::parse(&m).unwrap();
            if h.xid != xid {
                continue;
            }
            let (k, more, body) = codec::parse_multipart(&m).unwrap();
            assert_eq!(k, kind);
            bodies.push(body.to_vec());
            if !more {
                return bodies;
            }
        }
    }
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

#[test]
fn golden_groups_and_flows_read_back_from_a_real_switch() {
    let ovs =
        dpu_lab::ovs::OvsInstance::start().expect("a private OVS (needs root and ovs-vswitchd)");
    ovs.add_bridge("br-codec").unwrap();
    let target = ovs.mgmt("br-codec");
    let mut sw = Switch::connect(&target);
    let mut total_groups = 0;
    for case in golden_cases() {
        // Start clean: every flow and group goes.
        sw.bundle(
            &[
                BundleOp::DeleteFlowsByCookie {
                    table: None,
                    cookie: 0,
                    mask: 0,
                },
                BundleOp::DeleteGroup(0xffff_fffc),
            ],
            &case.name,
        );
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
        sw.bundle(&ops, &case.name);

        let xid = sw.xid();
        let mut groups = BTreeMap::new();
        for body in sw.multipart(codec::group_desc_request(xid), 7) {
            for (id, g) in codec::parse_group_desc_body(&body).unwrap() {
                groups.insert(id, g);
            }
        }
        assert_eq!(groups.len(), case.groups.len(), "{}", case.name);
        for g in &case.groups {
            let got = &groups[&g.id];
            assert!(
                got.is(g),
                "{}: group {} reads back as\n{got:?}\nnot\n{:?}",
                case.name,
                g.id,
                codec::wire_form(g).unwrap()
            );
            total_groups += 1;
        }

        let xid = sw.xid();
        let mut got_flows = BTreeSet::new();
        let mut got_users: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for body in sw.multipart(codec::flow_desc_request(xid), 1) {
            for f in codec::parse_flow_desc_body(&body).unwrap() {
                got_flows.insert((f.table, f.priority, f.cookie));
                for g in f.groups {
                    got_users.entry(g).or_default().insert(f.cookie);
                }
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

    // A group split over INSERT_BUCKET messages reads back whole. (Its
    // GROUP_DESC entry must still fit one reply: 950 buckets of 64 bytes.)
    let big = Arc::new(Group {
        id: 4242,
        hash_fields: hash_fields(&["ip_src", "ip_dst", "udp_src", "udp_dst"]),
        buckets: (0..950u32)
            .map(|i| {
                bucket(
                    i * 4_000_037 + 11,
                    &format!(
                        "set_field:{:#x}->reg3,set_field:0x35->reg4,resubmit(,45)",
                        0x0a00_0000 + i
                    ),
                )
            })
            .collect(),
        owner: owner(),
        learns: false,
    });
    assert!(
        codec::encode_op(&BundleOp::PutGroup(big.clone()), 0)
            .unwrap()
            .len()
            > 1
    );
    sw.bundle(&[BundleOp::PutGroup(big.clone())], "big group");
    let xid = sw.xid();
    let mut found = false;
    for body in sw.multipart(codec::group_desc_request(xid), 7) {
        for (id, g) in codec::parse_group_desc_body(&body).unwrap() {
            if id == big.id {
                assert_eq!(g.buckets.len(), 950);
                assert!(g.is(&big), "the split group reads back different");
                found = true;
            }
        }
    }
    assert!(found, "the split group is missing");

    // The switch's refusal decodes with its name and the refused message's xid.
    let key = FlowKey::new(0, 5, parse_match("ip"));
    let xid = sw.xid();
    let bad = codec::encode_op(&add_flow(&key, &Actions::new().group(999), 1), xid).unwrap();
    sw.send(&bad[0]);
    let barrier = sw.xid();
    sw.send(&codec::barrier_request(barrier));
    let reply = sw.recv();
    let e = codec::parse_error(&reply).unwrap_or_else(|e| panic!("{e}: {reply:02x?}"));
    assert_eq!(e.name(), "OFPBAC_BAD_OUT_GROUP");
    assert_eq!(e.failed_xid(), Some(xid));
}
