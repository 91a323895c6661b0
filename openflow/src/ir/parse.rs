//! `ovs-ofctl` text into the IR: [`Match`] and [`Actions`] by [`FromStr`],
//! [`HashField::parse`]. Canonical text parses back to the very value that
//! printed it (`text.parse::<Match>()?.to_string() == text`).
//!
//! The parser makes every check the codec's text encoders used to make on the
//! tokens, with the same errors (each names the token it is about): unknown
//! names, numbers that do not fit, contradicting protocols, a field matched
//! twice, subfields of different widths, `goto_table` not last. What is about
//! the match as a whole (prerequisites) is left to the encoder
//! ([`crate::codec`]), which checks the IR however it was built.

use std::net::IpAddr;
use std::str::FromStr;

use super::fields::{self, FieldDef, FIELDS};
use super::{
    Action, Actions, Ct, CtZone, Field, HashField, Learn, LearnSpec, Match, MatchField, Nat,
    NatKind, Proto, Subfield,
};

/// Splits `ovs-ofctl` text at the commas outside parentheses:
/// `ct(commit,zone=1),output:2` is `ct(commit,zone=1)` and `output:2`.
pub fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut from) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[from..]);
    out
}

/// The trimmed, non-empty arguments of `name(args)`.
fn args(s: &str) -> impl Iterator<Item = &str> {
    split_top(s)
        .into_iter()
        .map(str::trim)
        .filter(|a| !a.is_empty())
}

/// `name(args)` → `args`.
fn call<'a>(tok: &'a str, name: &str) -> Option<&'a str> {
    tok.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')
}

/// The [`Field`] of a row of the field table.
fn field_of(def: &'static FieldDef) -> Field {
    let at = FIELDS
        .iter()
        .position(|f| std::ptr::eq(f, def))
        .expect("a row of FIELDS");
    Field::ALL[at]
}

fn uint(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0, |v, b| (v << 8) | u128::from(*b))
}

/// `NAME[]`, `NAME[i]`, `NAME[a..b]` or a bare `NAME`.
fn subfield(s: &str) -> Result<Subfield, String> {
    let sf = fields::parse_subfield(s)?;
    Ok(Subfield {
        field: field_of(sf.field),
        ofs: sf.ofs as u8,
        nbits: sf.nbits as u8,
    })
}

/// A number of at most `bits` bits.
fn num(s: &str, bits: usize) -> Result<u128, String> {
    fields::parse_uint(s, bits)
}

// ---- matches ----------------------------------------------------------------

fn proto_keyword(kw: &str) -> Option<Proto> {
    use Proto::*;
    [
        Ip, Ipv6, Arp, Icmp, Tcp, Udp, Sctp, Icmp6, Tcp6, Udp6, Sctp6,
    ]
    .into_iter()
    .find(|p| p.keyword() == kw)
}

/// `ct_state` flags `+trk+est-new` as (set, mask).
fn ct_flags(s: &str) -> Result<(u8, u8), String> {
    let (mut set, mut mask) = (0u8, 0u8);
    let mut rest = s;
    while !rest.is_empty() {
        let plus = rest.starts_with('+');
        if !plus && !rest.starts_with('-') {
            return Err(format!("bad ct_state flags `{s}`"));
        }
        let end = rest[1..].find(['+', '-']).map_or(rest.len(), |i| i + 1);
        let name = &rest[1..end];
        let bit = super::ct::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(b, _)| *b)
            .ok_or_else(|| format!("unknown ct_state flag `{name}`"))?;
        mask |= bit;
        if plus {
            set |= bit;
        }
        rest = &rest[end..];
    }
    Ok((set, mask))
}

/// The field a match name stands for, given the Ethernet type and IP protocol:
/// `tp_src` is TCP's, UDP's or SCTP's, `icmp_type` ICMP's or ICMPv6's, `nw_src`
/// ARP's `arp_spa` under `arp`, `in_port` the 32-bit OXM field.
fn resolve(name: &str, eth: Option<u16>, proto: Option<u8>) -> Option<Field> {
    let transport = |src: bool| {
        Some(match (proto?, src) {
            (6, true) => Field::TcpSrc,
            (6, false) => Field::TcpDst,
            (17, true) => Field::UdpSrc,
            (17, false) => Field::UdpDst,
            (132, true) => Field::SctpSrc,
            (132, false) => Field::SctpDst,
            _ => return None,
        })
    };
    let icmp = |ty: bool| {
        Some(match (eth?, proto?, ty) {
            (0x0800, 1, true) => Field::IcmpType,
            (0x0800, 1, false) => Field::IcmpCode,
            (0x86dd, 58, true) => Field::Icmpv6Type,
            (0x86dd, 58, false) => Field::Icmpv6Code,
            _ => return None,
        })
    };
    match name {
        "in_port" => Some(Field::InPortOxm),
        "tp_src" => transport(true),
        "tp_dst" => transport(false),
        "icmp_type" => icmp(true),
        "icmp_code" => icmp(false),
        "nw_src" if eth == Some(0x0806) => Some(Field::ArpSpa),
        "nw_dst" if eth == Some(0x0806) => Some(Field::ArpTpa),
        _ => Field::named(name),
    }
}

impl FromStr for Match {
    type Err = String;

    /// A match in `ovs-ofctl` syntax; empty or `*` is every packet.
    fn from_str(text: &str) -> Result<Match, String> {
        if text.trim().is_empty() || text.trim() == "*" {
            return Ok(Match::new());
        }
        let tokens: Vec<&str> = text.split(',').map(str::trim).collect();
        // First pass: the Ethernet type and IP protocol, which decide what
        // the transport and ICMP names mean.
        let mut eth: Option<u16> = None;
        let mut set_eth = |v: u16, tok: &str| match eth {
            Some(e) if e != v => Err(format!("`{tok}` contradicts Ethernet type {e:#06x}")),
            _ => {
                eth = Some(v);
                Ok(())
            }
        };
        let mut protos = Vec::new();
        for tok in &tokens {
            if tok.is_empty() {
                return Err("an empty match field".into());
            }
            if let Some(p) = proto_keyword(tok) {
                let (e, ip) = p.eth_and_ip_proto();
                set_eth(e, tok)?;
                protos.extend(ip.map(|ip| (ip, *tok)));
            } else if let Some((name, v)) = tok.split_once('=') {
                match Field::named(name) {
                    Some(Field::EthType) => set_eth(num(v, 16)? as u16, tok)?,
                    Some(Field::IpProto) => protos.push((num(v, 8)? as u8, *tok)),
                    _ => {}
                }
            }
        }
        let mut proto: Option<u8> = None;
        for (p, tok) in protos {
            match proto {
                Some(q) if q != p => return Err(format!("`{tok}` contradicts IP protocol {q}")),
                _ => proto = Some(p),
            }
        }
        let mut m = Match::new();
        let mut seen: Vec<Field> = Vec::new();
        for tok in &tokens {
            if let Some(p) = proto_keyword(tok) {
                m = m.proto(p);
                continue;
            }
            let (name, value) = tok
                .split_once('=')
                .ok_or_else(|| format!("unknown match keyword `{tok}`"))?;
            let field = resolve(name, eth, proto).ok_or_else(|| match name {
                "tp_src" | "tp_dst" | "icmp_type" | "icmp_code" => format!(
                    "`{tok}` needs an IP protocol it belongs to (tcp, udp, sctp, icmp, icmp6)"
                ),
                _ => format!("unknown match field `{name}`"),
            })?;
            let f = match field {
                Field::EthType | Field::IpProto => {
                    let v = num(value, field.bits() as usize)?;
                    MatchField::new(field, v, u128::MAX)
                }
                Field::CtState if value.starts_with(['+', '-']) => {
                    let (set, mask) = ct_flags(value)?;
                    MatchField::CtState { set, mask }
                }
                _ => {
                    let ctx = |e: String| format!("`{tok}`: {e}");
                    let (v, mask) = match field {
                        // Its errors as the text encoder gave them, unwrapped.
                        Field::CtState => fields::parse_masked(field.def(), value)?,
                        _ => fields::parse_masked(field.def(), value).map_err(ctx)?,
                    };
                    MatchField::new(field, uint(&v), mask.as_deref().map_or(u128::MAX, uint))
                }
            };
            // The Ethernet type and IP protocol may be repeated (`ip,dl_type=0x800`).
            if !matches!(field, Field::EthType | Field::IpProto) {
                if seen.contains(&field) {
                    return Err(format!("`{tok}` matches {} twice", field.name()));
                }
                if !f.is_wildcard() {
                    seen.push(field);
                }
            }
            m = m.push(f);
        }
        Ok(m)
    }
}

impl MatchField {
    /// A mask of all zeros: every packet matches, as if the field were absent.
    fn is_wildcard(&self) -> bool {
        match self {
            MatchField::CtState { mask, .. } => *mask == 0,
            MatchField::Value { mask, .. } => *mask == 0,
            MatchField::Wide(w) => w.2 == 0,
            MatchField::Proto(_) => false,
        }
    }
}

// ---- actions ----------------------------------------------------------------

impl FromStr for Actions {
    type Err = String;

    /// An action list in `ovs-ofctl` syntax; `drop` (alone) is the empty list.
    fn from_str(text: &str) -> Result<Actions, String> {
        let text = text.trim();
        let mut list = Actions::new();
        if text == "drop" {
            return Ok(list);
        }
        if text.is_empty() {
            return Err("an empty action list (write `drop`)".into());
        }
        let mut goto = false;
        for tok in split_top(text) {
            let tok = tok.trim();
            if tok.starts_with("goto_table:") {
                if goto {
                    return Err(format!("a second `{tok}`"));
                }
                goto = true;
            } else if goto {
                return Err(format!("`{tok}` after goto_table"));
            }
            list = list.then(parse_action(tok, true)?);
        }
        Ok(list)
    }
}

impl FromStr for Action {
    type Err = String;

    /// One action (`goto_table:N` too).
    fn from_str(tok: &str) -> Result<Action, String> {
        parse_action(tok.trim(), true)
    }
}

/// One action; `goto_table` only at the top, not in `ct`'s `exec`.
fn parse_action(tok: &str, top: bool) -> Result<Action, String> {
    let ctx = |e: String| format!("`{tok}`: {e}");
    let sf = |s: &str| subfield(s).map_err(ctx);
    Ok(if tok == "drop" {
        return Err("`drop` together with other actions".into());
    } else if tok == "in_port" {
        Action::InPort
    } else if tok == "dec_ttl" {
        Action::DecTtl
    } else if let Some(t) = tok.strip_prefix("goto_table:").filter(|_| top) {
        Action::GotoTable(num(t, 8).map_err(ctx)? as u8)
    } else if let Some(p) = tok.strip_prefix("output:") {
        match p {
            "in_port" | "IN_PORT" => Action::InPort,
            "LOCAL" | "local" => Action::Output(0xffff_fffe),
            _ => Action::Output(num(p, 32).map_err(ctx)? as u32),
        }
    } else if let Some(g) = tok.strip_prefix("group:") {
        Action::Group(num(g, 32).map_err(ctx)? as u32)
    } else if let Some(a) = call(tok, "resubmit") {
        let (port, table) = a
            .split_once(',')
            .ok_or_else(|| ctx("expected `resubmit(port,table)`".into()))?;
        let port = match port.trim() {
            "" | "in_port" | "IN_PORT" => None,
            p => Some(num(p, 16).map_err(ctx)? as u16),
        };
        let table = match table.trim() {
            "" => None,
            t => Some(num(t, 8).map_err(ctx)? as u8),
        };
        Action::Resubmit { port, table }
    } else if let Some(p) = tok.strip_prefix("resubmit:") {
        Action::Resubmit {
            port: Some(num(p, 16).map_err(ctx)? as u16),
            table: None,
        }
    } else if let Some(rest) = tok.strip_prefix("set_field:") {
        let (value, dst) = rest
            .rsplit_once("->")
            .ok_or_else(|| ctx("expected `set_field:value->field`".into()))?;
        let field = Field::named(dst).ok_or_else(|| ctx(format!("unknown field `{dst}`")))?;
        match fields::parse_masked(field.def(), value).map_err(ctx)? {
            (v, None) => Action::set_field(field, uint(&v)),
            (v, Some(m)) => Action::SetMasked(Box::new((field, uint(&v), uint(&m)))),
        }
    } else if let Some(rest) = tok.strip_prefix("load:") {
        let (value, dst) = rest
            .split_once("->")
            .ok_or_else(|| ctx("expected `load:value->field[bits]`".into()))?;
        let dst = sf(dst)?;
        let v = num(value, dst.width() as usize).map_err(ctx)?;
        load(v, dst)
    } else if let Some(rest) = tok.strip_prefix("move:") {
        let (src, dst) = rest
            .split_once("->")
            .ok_or_else(|| ctx("expected `move:src[bits]->dst[bits]`".into()))?;
        let (src, dst) = (sf(src)?, sf(dst)?);
        if src.nbits != dst.nbits {
            return Err(ctx(format!(
                "moves {} bits into {} bits",
                src.nbits, dst.nbits
            )));
        }
        Action::Move { src, dst }
    } else if let Some(f) = tok.strip_prefix("push:") {
        Action::Push(sf(f)?)
    } else if let Some(f) = tok.strip_prefix("pop:") {
        Action::Pop(sf(f)?)
    } else if let Some(a) = call(tok, "ct") {
        Action::Ct(Box::new(parse_ct(a).map_err(ctx)?))
    } else if let Some(a) = call(tok, "learn") {
        Action::Learn(Box::new(parse_learn(a).map_err(ctx)?))
    } else {
        return Err(format!("unknown action `{tok}`"));
    })
}

/// `load:v->dst`: [`Action::Load`] when `v` fits 64 bits, else a (masked)
/// `set_field`, which is how the codec encodes a load anyway.
fn load(v: u128, dst: Subfield) -> Action {
    if let Ok(value) = u64::try_from(v) {
        Action::Load { value, dst }
    } else if dst.is_whole() {
        Action::SetWide(Box::new((dst.field, v)))
    } else {
        let ofs = u32::from(dst.ofs);
        Action::SetMasked(Box::new((
            dst.field,
            v << ofs,
            super::ones(dst.width()) << ofs,
        )))
    }
}

/// The arguments of `ct(…)`: `commit`, `force`, `table=N`, `zone=N` or
/// `zone=FIELD[bits]`, `nat` or `nat(…)`, `exec(…)`.
fn parse_ct(a: &str) -> Result<Ct, String> {
    let mut ct = Ct {
        commit: false,
        force: false,
        table: None,
        zone: CtZone::Imm(0),
        nat: None,
        exec: Vec::new(),
    };
    for arg in args(a) {
        if arg == "commit" {
            ct.commit = true;
        } else if arg == "force" {
            ct.force = true;
        } else if let Some(t) = arg.strip_prefix("table=") {
            ct.table = Some(num(t, 8)? as u8);
        } else if let Some(z) = arg.strip_prefix("zone=") {
            ct.zone = if z.starts_with(|c: char| c.is_ascii_digit()) {
                CtZone::Imm(num(z, 16)? as u16)
            } else {
                let sf = subfield(z)?;
                if sf.nbits > 16 {
                    return Err(format!("zone `{z}` is wider than 16 bits"));
                }
                CtZone::Field(sf)
            };
        } else if arg == "nat" || arg.starts_with("nat(") {
            if ct.nat.is_some() {
                return Err(format!("a second nat in ct: `{arg}`"));
            }
            let n = if arg == "nat" {
                Nat::EXISTING
            } else {
                let n = call(arg, "nat").ok_or_else(|| format!("unknown ct argument `{arg}`"))?;
                parse_nat(n)?
            };
            ct.nat = Some(n);
        } else if let Some(e) = call(arg, "exec") {
            for a in args(e) {
                ct.exec.push(parse_action(a, false)?);
            }
        } else {
            return Err(format!("unknown ct argument `{arg}`"));
        }
    }
    Ok(ct)
}

/// The arguments of `nat(…)`: `src` or `dst` with an optional
/// `addr[-addr][:port[-port]]` (IPv6 in brackets when there is a port),
/// `persistent`, `hash`, `random`.
fn parse_nat(a: &str) -> Result<Nat, String> {
    let mut nat = Nat::EXISTING;
    let mut range: Option<&str> = None;
    for arg in args(a) {
        let (kind, r) = match arg.split_once('=') {
            Some((k, r)) => (k, Some(r)),
            None => (arg, None),
        };
        match kind {
            "src" | "dst" if nat.kind != NatKind::Existing => {
                return Err(format!("`nat({a})` names src or dst twice"))
            }
            "src" => nat.kind = NatKind::Src,
            "dst" => nat.kind = NatKind::Dst,
            "persistent" => nat.flags |= 4,
            "hash" => nat.flags |= 8,
            "random" => nat.flags |= 16,
            _ => return Err(format!("unknown nat argument `{arg}`")),
        }
        if r.is_some() {
            if !matches!(kind, "src" | "dst") {
                return Err(format!("`{arg}` takes no value"));
            }
            range = r;
        }
    }
    let Some(r) = range else {
        return Ok(nat);
    };
    let (addrs, ports) = split_range(r)?;
    let (lo, hi) = match addrs.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (addrs, None),
    };
    let ip = |s: &str| -> Result<IpAddr, String> {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address"))
    };
    let (lo, hi) = (ip(lo)?, hi.map(ip).transpose()?);
    if hi.is_some_and(|hi| hi.is_ipv4() != lo.is_ipv4()) {
        return Err(format!("`{r}` mixes IPv4 and IPv6"));
    }
    nat.addrs = Some((lo, hi));
    if let Some(p) = ports {
        let (lo, hi) = match p.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (p, None),
        };
        let port = |s: &str| num(s, 16).map(|v| v as u16);
        nat.ports = Some((port(lo)?, hi.map(port).transpose()?));
    }
    Ok(nat)
}

/// `10.0.0.1:80` → (`10.0.0.1`, `80`); `[fd00::1]:80` → (`[fd00::1]`, `80`);
/// `fd00::1` (IPv6 without a port, as OVS prints it) → (`fd00::1`, none).
fn split_range(r: &str) -> Result<(&str, Option<&str>), String> {
    if r.starts_with('[') {
        let close = r.rfind(']').ok_or_else(|| format!("`{r}` lacks `]`"))?;
        let rest = &r[close + 1..];
        return match rest.strip_prefix(':') {
            Some(p) => Ok((&r[..=close], Some(p))),
            None if rest.is_empty() => Ok((r, None)),
            None => Err(format!("unexpected `{rest}` in `{r}`")),
        };
    }
    if r.matches(':').count() > 1 {
        return Ok((r, None));
    }
    Ok(match r.split_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (r, None),
    })
}

/// The arguments of `learn(…)`: `table=`, `idle_timeout=`, `hard_timeout=`,
/// `fin_idle_timeout=`, `fin_hard_timeout=`, `priority=`, `cookie=`,
/// `send_flow_rem`, `delete_learned`, and the specs. What is not given takes
/// OVS's default (table 1, priority 32768, the rest 0).
fn parse_learn(a: &str) -> Result<Learn, String> {
    let mut l = Learn {
        table: 1,
        idle_timeout: 0,
        priority: 0x8000,
        cookie: 0,
        specs: Vec::new(),
        hard_timeout: 0,
        fin_idle_timeout: 0,
        fin_hard_timeout: 0,
        flags: 0,
    };
    for arg in args(a) {
        let n16 = |v: &str| num(v, 16).map(|v| v as u16);
        if let Some(v) = arg.strip_prefix("table=") {
            l.table = num(v, 8)? as u8;
        } else if let Some(v) = arg.strip_prefix("idle_timeout=") {
            l.idle_timeout = n16(v)?;
        } else if let Some(v) = arg.strip_prefix("hard_timeout=") {
            l.hard_timeout = n16(v)?;
        } else if let Some(v) = arg.strip_prefix("fin_idle_timeout=") {
            l.fin_idle_timeout = n16(v)?;
        } else if let Some(v) = arg.strip_prefix("fin_hard_timeout=") {
            l.fin_hard_timeout = n16(v)?;
        } else if let Some(v) = arg.strip_prefix("priority=") {
            l.priority = n16(v)?;
        } else if let Some(v) = arg.strip_prefix("cookie=") {
            l.cookie = num(v, 64)? as u64;
        } else if arg == "send_flow_rem" {
            l.flags |= 1;
        } else if arg == "delete_learned" {
            l.flags |= 2;
        } else {
            l.specs.push(learn_spec(arg)?);
        }
    }
    Ok(l)
}

/// A field name in a learn spec: also OVS's `tp_src`/`tp_dst` (TCP's), which
/// is how a `LearnSpec::MatchValue` on a TCP port prints.
fn learn_subfield(s: &str) -> Result<Subfield, String> {
    match s {
        "tp_src" => Ok(Subfield::whole(Field::TcpSrc)),
        "tp_dst" => Ok(Subfield::whole(Field::TcpDst)),
        _ => subfield(s),
    }
}

/// A learn operand: a constant or a subfield.
enum Operand {
    Imm(u128),
    Field(Subfield),
}

/// The source of a learn spec whose destination is `dst`: a number (written
/// in the field's own syntax when `dst` is the whole field: an address, a
/// MAC) or a subfield.
fn operand(s: &str, dst: &Subfield) -> Result<Operand, String> {
    let value = |s: &str| -> Result<u128, String> {
        if dst.is_whole() {
            Ok(uint(&fields::parse_value(dst.field.def(), s)?))
        } else {
            num(s, dst.width() as usize)
        }
    };
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return value(s).map(Operand::Imm);
    }
    match learn_subfield(s) {
        Ok(sf) => Ok(Operand::Field(sf)),
        // `aa:bb:…`, `fd00::1`: a value after all.
        Err(e) if dst.is_whole() => value(s).map(Operand::Imm).map_err(|_| e),
        Err(e) => Err(e),
    }
}

/// One learn spec: `FIELD[bits]`, `FIELD[bits]=FIELD[bits]`, `field=value`,
/// `load:FIELD[bits]|value->FIELD[bits]` or `output:FIELD[bits]`.
fn learn_spec(arg: &str) -> Result<LearnSpec, String> {
    if let Some(rest) = arg.strip_prefix("load:") {
        let (src, dst) = rest
            .split_once("->")
            .ok_or_else(|| format!("expected `load:src->dst` in learn, got `{arg}`"))?;
        let dst = learn_subfield(dst)?;
        return Ok(match operand(src, &dst)? {
            Operand::Imm(v) => match u64::try_from(v) {
                Ok(value) => LearnSpec::LoadValue { value, dst },
                Err(_) => LearnSpec::LoadWide { value: v, dst },
            },
            Operand::Field(src) => {
                if src.nbits != dst.nbits {
                    return Err(format!(
                        "`{arg}` loads {} bits into {}",
                        src.nbits, dst.nbits
                    ));
                }
                LearnSpec::Load { src, dst }
            }
        });
    }
    if let Some(src) = arg.strip_prefix("output:") {
        return Ok(LearnSpec::Output(learn_subfield(src)?));
    }
    let Some((dst, src)) = arg.split_once('=') else {
        return Ok(LearnSpec::Match(learn_subfield(arg)?));
    };
    let dst = learn_subfield(dst)?;
    Ok(match operand(src, &dst)? {
        Operand::Imm(v) => match u64::try_from(v) {
            Ok(value) if dst.is_whole() => LearnSpec::MatchValue {
                field: dst.field,
                value,
            },
            _ => LearnSpec::MatchBits { dst, value: v },
        },
        Operand::Field(src) => {
            if src.nbits != dst.nbits {
                return Err(format!(
                    "`{arg}` matches {} bits against {}",
                    dst.nbits, src.nbits
                ));
            }
            if src == dst {
                LearnSpec::Match(src)
            } else {
                LearnSpec::MatchFrom { dst, src }
            }
        }
    })
}

// ---- hash fields ------------------------------------------------------------

impl HashField {
    /// The fields a select group may hash on, in the codec's order.
    pub const FIELDS: &'static [Field] = &[
        Field::IpSrc,
        Field::IpDst,
        Field::Ipv6Src,
        Field::Ipv6Dst,
        Field::TcpSrc,
        Field::TcpDst,
        Field::UdpSrc,
        Field::UdpDst,
        Field::SctpSrc,
        Field::SctpDst,
        Field::EthSrc,
        Field::EthDst,
        Field::EthType,
        Field::IpProto,
    ];

    /// `name` or `name=MASK`: one of [`HashField::FIELDS`] by its name (or
    /// `nw_src`, `nw_dst`), the mask in decimal (as OVS prints it) or `0x`
    /// hex, non-zero, for a field of at most 8 bytes.
    pub fn parse(spec: &str) -> Result<HashField, String> {
        let (name, mask) = match spec.split_once('=') {
            Some((n, m)) => (n, Some(m)),
            None => (spec, None),
        };
        let field = match name {
            "nw_src" => Some(Field::IpSrc),
            "nw_dst" => Some(Field::IpDst),
            _ => HashField::FIELDS.iter().copied().find(|f| f.name() == name),
        }
        .ok_or_else(|| format!("unknown hash field `{name}`"))?;
        let Some(mask) = mask else {
            return Ok(HashField::whole(field));
        };
        let value = match mask.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => mask.parse::<u64>(),
        }
        .map_err(|_| format!("hash field `{name}`: mask `{mask}` is not a number"))?;
        let len = field.def().len;
        if len > 8 || (len < 8 && value >> (8 * len) != 0) || value == 0 {
            return Err(format!(
                "hash field `{name}`: mask `{mask}` does not fit its {len} bytes, or is zero"
            ));
        }
        Ok(HashField::masked(field, value))
    }
}
