//! `ovs-ofctl` as the oracle of the codec: `ofp-print` decodes what the codec
//! encodes, `parse-flow`/`parse-group` encode the same text the way OVS does.
//! Shared by `openflow/tests/ofp_print.rs` and the agent's
//! `dpu-agent/tests/ofp_codec.rs` (by path). A missing `ovs-ofctl` fails the
//! test that needs it.

#![allow(dead_code)]

use std::process::Command;

use openflow::codec::{Change, FlowMod};
use openflow::ir::{Actions, Match};

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `ovs-ofctl -O OpenFlow15 <args>`: whether it succeeded, and its output.
pub fn ofctl(args: &[&str]) -> (bool, String) {
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
pub fn ofp_print(msg: &[u8]) -> String {
    let (ok, text) = ofp_print_raw(msg);
    assert!(ok, "ofp-print refused {}:\n{text}", hex(msg));
    text
}

/// `ofp-print` and whether it decoded every byte without complaint.
pub fn ofp_print_raw(msg: &[u8]) -> (bool, String) {
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
pub fn flow_mod_line(printed: &str) -> String {
    let line = printed
        .lines()
        .find(|l| l.starts_with("OFPT_FLOW_MOD"))
        .unwrap_or_else(|| panic!("no flow_mod in {printed}"));
    let at = line.find("): ").expect("xid");
    line[at + 3..].to_string()
}

/// The group of a printed GROUP_MOD without its command: `ADD_OR_MOD`, as
/// the codec sends, prints as such; `parse-group` makes an `ADD`.
pub fn group_body(printed: &str) -> String {
    let body = printed
        .lines()
        .map(str::trim)
        .find(|l| l.contains("group_id="))
        .unwrap_or_else(|| panic!("no group in {printed}"));
    body.split_once(' ').unwrap().1.to_string()
}

/// Text parsed into the IR, then encoded as a flow in table 1 at priority 1
/// with cookie 1: either step may refuse it (the error names the step),
/// neither may panic.
pub fn encode_text(matches: &str, actions: &str) -> Result<Vec<Vec<u8>>, String> {
    let m: Match = matches
        .parse()
        .map_err(|e| format!("match `{matches}`: {e}"))?;
    let a: Actions = actions
        .parse()
        .map_err(|e| format!("actions `{actions}`: {e}"))?;
    Change::from(FlowMod::add(1, 1, 1, &m, &a))
        .encode(1)
        .map_err(|e| e.to_string())
}
