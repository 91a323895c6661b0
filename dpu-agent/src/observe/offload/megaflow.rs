//! One line of `ovs-appctl dpctl/dump-flows -m` (OVS 3.1), read into its key
//! attributes, counters and actions. With `-m` every key attribute is printed,
//! a wildcarded one with an all-zero mask (`ct_label(0/0)`,
//! `tcp(src=0/0,dst=80)`), so "matched" means "its mask is not all zeros".

/// One key attribute: `name(inner)`, e.g. `ipv4(src=10.0.0.2,dst=10.96.0.10/255.255.255.255,proto=6,frag=no)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub name: String,
    pub inner: String,
}

impl Attr {
    /// `k=v` parts of the inner text, split at top-level commas. A part
    /// without `=` (`ct_state(+est+trk)`, `recirc_id(0x1)`) has an empty key.
    pub fn parts(&self) -> Vec<(&str, &str)> {
        split_top(&self.inner)
            .into_iter()
            .map(|p| match p.split_once('=') {
                Some((k, v)) if is_ident(k) => (k, v),
                _ => ("", p),
            })
            .collect()
    }

    /// The parts whose value is matched (its mask is not all zeros).
    pub fn matched_parts(&self) -> Vec<(&str, &str)> {
        self.parts()
            .into_iter()
            .filter(|(_, v)| !is_wildcard(v))
            .collect()
    }

    /// Whether any part of the attribute is matched.
    pub fn is_matched(&self) -> bool {
        !self.matched_parts().is_empty()
    }
}

/// A datapath flow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Megaflow {
    pub ufid: Option<String>,
    pub key: Vec<Attr>,
    pub packets: u64,
    pub bytes: u64,
    /// `dp:` the layer holding it: `ovs` (software), `tc`, `dpdk`.
    pub layer: Option<String>,
    /// The actions, split at top-level commas (`ct(zone=1,nat)`, `recirc(0x2)`, `3`).
    pub actions: Vec<String>,
    /// The line as read.
    pub text: String,
}

impl Megaflow {
    /// Reads one line; `None` for a line that is not a flow (a thread header).
    pub fn parse(line: &str) -> Option<Megaflow> {
        let line = line.trim();
        if line.is_empty() || line.starts_with("flow-dump from ") {
            return None;
        }
        let mut rest = line;
        let mut ufid = None;
        if let Some(r) = rest.strip_prefix("ufid:") {
            let (id, after) = r.split_once(", ").unwrap_or((r, ""));
            ufid = Some(id.to_string());
            rest = after;
        }
        // The key ends where the counters begin.
        let (key, stats) = rest.split_once(", packets:")?;
        let mut m = Megaflow {
            ufid,
            text: line.to_string(),
            ..Megaflow::default()
        };
        for a in split_top(key) {
            let (name, inner) = match a.find('(') {
                Some(i) if a.ends_with(')') => (&a[..i], &a[i + 1..a.len() - 1]),
                _ => (a, ""),
            };
            m.key.push(Attr {
                name: name.to_string(),
                inner: inner.to_string(),
            });
        }
        let stats = format!("packets:{stats}");
        let (counters, actions) = match stats.split_once(" actions:") {
            Some((c, a)) => (c.to_string(), a.to_string()),
            None => (stats, String::new()),
        };
        for c in counters.split(", ") {
            let c = c.trim_end_matches(',');
            if let Some(v) = c.strip_prefix("packets:") {
                m.packets = v.parse().unwrap_or(0);
            } else if let Some(v) = c.strip_prefix("bytes:") {
                m.bytes = v.parse().unwrap_or(0);
            } else if let Some(v) = c.strip_prefix("dp:") {
                m.layer = Some(v.to_string());
            }
        }
        // `dp-extra-info:` (the userspace datapath's miniflow bits) follows the actions.
        let actions = actions
            .split_once(", dp-extra-info:")
            .map_or(actions.as_str(), |(a, _)| a);
        m.actions = split_top(actions)
            .into_iter()
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        Some(m)
    }

    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.key.iter().find(|a| a.name == name)
    }

    /// A matched key attribute.
    pub fn matched(&self, name: &str) -> Option<&Attr> {
        self.attr(name).filter(|a| a.is_matched())
    }

    /// The `ct_state` bits the flow requires set and requires clear.
    pub fn ct_state(&self) -> CtState {
        self.attr("ct_state")
            .map(|a| CtState::parse(&a.inner))
            .unwrap_or_default()
    }

    /// The EtherType it matches, if it matches one exactly.
    pub fn eth_type(&self) -> Option<u16> {
        let a = self.attr("eth_type")?;
        let v = a.inner.split('/').next()?;
        u16::from_str_radix(v.trim_start_matches("0x"), 16).ok()
    }

    /// The flow's `ct_label` match, value and mask, if it matches the label.
    pub fn ct_label(&self) -> Option<(u128, u128)> {
        masked_u128(&self.matched("ct_label")?.inner)
    }

    /// The flow's `ct_mark` match, value and mask, if it matches the mark.
    pub fn ct_mark(&self) -> Option<(u128, u128)> {
        masked_u128(&self.matched("ct_mark")?.inner)
    }

    /// The action names (`ct`, `recirc`, `set`, `output` for a port number or name, ...).
    pub fn action_names(&self) -> Vec<&str> {
        self.actions.iter().map(|a| action_name(a)).collect()
    }
}

/// The name of one action: `ct(zone=1)` → `ct`, `3` or `p1` → `output`.
pub fn action_name(a: &str) -> &str {
    match a.find('(') {
        Some(i) => &a[..i],
        None if a.chars().all(|c| c.is_ascii_digit()) => "output",
        None if is_ident(a) && !KEYWORD_ACTIONS.contains(&a) => "output",
        None => a,
    }
}

/// Actions printed without parentheses that are not port names.
const KEYWORD_ACTIONS: &[&str] = &[
    "drop", "ct_clear", "pop_vlan", "pop_eth", "pop_nsh", "pop_mpls",
];

/// `ct_state` bits (OVS_CS_F_*).
pub mod cs {
    pub const NEW: u32 = 0x01;
    pub const EST: u32 = 0x02;
    pub const REL: u32 = 0x04;
    pub const RPL: u32 = 0x08;
    pub const INV: u32 = 0x10;
    pub const TRK: u32 = 0x20;
    pub const SNAT: u32 = 0x40;
    pub const DNAT: u32 = 0x80;
    pub const NAMES: [(&str, u32); 8] = [
        ("new", NEW),
        ("est", EST),
        ("rel", REL),
        ("rpl", RPL),
        ("inv", INV),
        ("trk", TRK),
        ("snat", SNAT),
        ("dnat", DNAT),
    ];
}

/// What a flow requires of `ct_state`: `value` under `mask`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtState {
    pub value: u32,
    pub mask: u32,
}

impl CtState {
    /// `+est+trk`, `-new+est-rel+trk` or `0x22/0x3f` (`0/0` matches nothing).
    pub fn parse(s: &str) -> CtState {
        if s.starts_with('+') || s.starts_with('-') {
            let mut st = CtState::default();
            let mut rest = s;
            while let Some(sign) = rest.chars().next() {
                let body = &rest[1..];
                let end = body.find(['+', '-']).unwrap_or(body.len());
                let name = &body[..end];
                if let Some((_, bit)) = cs::NAMES.iter().find(|(n, _)| *n == name) {
                    st.mask |= bit;
                    if sign == '+' {
                        st.value |= bit;
                    }
                }
                rest = &body[end..];
            }
            return st;
        }
        match masked_u128(s) {
            Some((v, m)) => CtState {
                value: v as u32,
                mask: m as u32,
            },
            None => CtState::default(),
        }
    }

    /// Requires the bit set.
    pub fn set(&self, bit: u32) -> bool {
        self.mask & self.value & bit != 0
    }

    /// Looks at the bit at all.
    pub fn masked(&self, bit: u32) -> bool {
        self.mask & bit != 0
    }
}

/// `v/m` or `v` (exact) as integers; `None` if not numbers.
pub fn masked_u128(s: &str) -> Option<(u128, u128)> {
    let num = |t: &str| match t.strip_prefix("0x") {
        Some(h) => u128::from_str_radix(h, 16).ok(),
        None => t.parse::<u128>().ok(),
    };
    match s.split_once('/') {
        Some((v, m)) => Some((num(v)?, num(m)?)),
        None => Some((num(s)?, u128::MAX)),
    }
}

/// A value whose mask is all zeros: `0/0`, `0.0.0.0/0.0.0.0`, `::/::`,
/// `00:00:00:00:00:00/00:00:00:00:00:00`.
pub fn is_wildcard(v: &str) -> bool {
    match v.rsplit_once('/') {
        Some((_, m)) => {
            let m = m.strip_prefix("0x").unwrap_or(m);
            m.chars().all(|c| matches!(c, '0' | '.' | ':'))
        }
        None => false,
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits at commas outside parentheses and braces.
pub fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '{' => depth += 1,
            ')' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}
