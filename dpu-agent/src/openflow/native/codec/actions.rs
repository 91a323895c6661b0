//! Actions in `ovs-ofctl` syntax as OpenFlow 1.5 actions, byte for byte as OVS
//! itself encodes them for 1.5 (so a group read back compares equal): `load` is a
//! (masked) `set_field`, `move` is `OFPAT_COPY_FIELD`, and the Nicira actions
//! (`resubmit`, `push`/`pop`, `ct`, `nat`, `learn`) name fields by their
//! OpenFlow 1.0 NXM headers.

use super::fields::{self, Subfield};
use super::put_padded;

const NX_VENDOR: u32 = 0x0000_2320;
const OFPAT_OUTPUT: u16 = 0;
const OFPAT_GROUP: u16 = 22;
const OFPAT_DEC_NW_TTL: u16 = 24;
const OFPAT_SET_FIELD: u16 = 25;
const OFPAT_COPY_FIELD: u16 = 28;
const OFPAT_EXPERIMENTER: u16 = 0xffff;
const NXAST_RESUBMIT: u16 = 1;
const NXAST_RESUBMIT_TABLE: u16 = 14;
const NXAST_LEARN: u16 = 16;
const NXAST_STACK_PUSH: u16 = 27;
const NXAST_STACK_POP: u16 = 28;
const NXAST_CT: u16 = 35;
const NXAST_NAT: u16 = 36;
/// `OFPP_IN_PORT` in 32 and 16 bits.
const OFPP_IN_PORT: u32 = 0xffff_fff8;
const OFPP_IN_PORT16: u16 = 0xfff8;

/// An action list: the actions, and the table of a `goto_table` (an instruction).
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub actions: Vec<u8>,
    pub goto: Option<u8>,
}

/// Splits at the commas outside parentheses.
pub(crate) fn split_top(s: &str) -> Vec<&str> {
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

/// `name(args)` → `args`.
fn call<'a>(tok: &'a str, name: &str) -> Option<&'a str> {
    tok.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')
}

/// Encodes an action list; `drop` (alone) is the empty list.
pub(crate) fn encode_actions(text: &str) -> Result<Encoded, String> {
    let text = text.trim();
    let mut enc = Encoded::default();
    if text == "drop" {
        return Ok(enc);
    }
    if text.is_empty() {
        return Err("an empty action list (write `drop`)".into());
    }
    for tok in split_top(text) {
        let tok = tok.trim();
        if let Some(t) = tok.strip_prefix("goto_table:") {
            if enc.goto.is_some() {
                return Err(format!("a second `{tok}`"));
            }
            enc.goto = Some(fields::parse_uint(t, 8).map_err(|e| format!("`{tok}`: {e}"))? as u8);
            continue;
        }
        if enc.goto.is_some() {
            return Err(format!("`{tok}` after goto_table"));
        }
        encode_action(tok, &mut enc.actions)?;
    }
    Ok(enc)
}

/// One action (no `goto_table`) appended to `out`.
fn encode_action(tok: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let ctx = |e: String| format!("`{tok}`: {e}");
    if tok == "drop" {
        return Err("`drop` together with other actions".into());
    } else if tok == "in_port" {
        output(out, OFPP_IN_PORT);
    } else if tok == "dec_ttl" {
        out.extend_from_slice(&OFPAT_DEC_NW_TTL.to_be_bytes());
        out.extend_from_slice(&[0, 8, 0, 0, 0, 0]);
    } else if let Some(p) = tok.strip_prefix("output:") {
        output(out, parse_port(p).map_err(ctx)?);
    } else if let Some(g) = tok.strip_prefix("group:") {
        let id = fields::parse_uint(g, 32).map_err(ctx)? as u32;
        out.extend_from_slice(&OFPAT_GROUP.to_be_bytes());
        out.extend_from_slice(&8u16.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
    } else if let Some(args) = call(tok, "resubmit") {
        let (port, table) = args
            .split_once(',')
            .ok_or_else(|| ctx("expected `resubmit(port,table)`".into()))?;
        let port = match port.trim() {
            "" | "in_port" | "IN_PORT" => OFPP_IN_PORT16,
            p => fields::parse_uint(p, 16).map_err(ctx)? as u16,
        };
        let table = match table.trim() {
            "" => 0xff,
            t => fields::parse_uint(t, 8).map_err(ctx)? as u8,
        };
        let at = nx_start(out, NXAST_RESUBMIT_TABLE);
        out.extend_from_slice(&port.to_be_bytes());
        out.extend_from_slice(&[table, 0, 0, 0]);
        nx_end(out, at);
    } else if let Some(p) = tok.strip_prefix("resubmit:") {
        let port = fields::parse_uint(p, 16).map_err(ctx)? as u16;
        let at = nx_start(out, NXAST_RESUBMIT);
        out.extend_from_slice(&port.to_be_bytes());
        nx_end(out, at);
    } else if let Some(rest) = tok.strip_prefix("set_field:") {
        let (value, dst) = rest
            .rsplit_once("->")
            .ok_or_else(|| ctx("expected `set_field:value->field`".into()))?;
        let field = fields::lookup(dst).ok_or_else(|| ctx(format!("unknown field `{dst}`")))?;
        let (v, m) = fields::parse_masked(field, value).map_err(ctx)?;
        set_field(out, field.oxm, &v, m.as_deref());
    } else if let Some(rest) = tok.strip_prefix("load:") {
        let (value, dst) = rest
            .split_once("->")
            .ok_or_else(|| ctx("expected `load:value->field[bits]`".into()))?;
        let dst = fields::parse_subfield(dst).map_err(ctx)?;
        let v = fields::parse_uint(value, dst.nbits).map_err(ctx)?;
        let len = dst.field.len;
        let mut val = vec![0u8; len];
        fields::put_bits(&mut val, dst.ofs, dst.nbits, v);
        if dst.is_whole() {
            set_field(out, dst.field.oxm, &val, None);
        } else {
            let mut mask = vec![0u8; len];
            fields::put_bits(&mut mask, dst.ofs, dst.nbits, u128::MAX);
            set_field(out, dst.field.oxm, &val, Some(&mask));
        }
    } else if let Some(rest) = tok.strip_prefix("move:") {
        let (src, dst) = rest
            .split_once("->")
            .ok_or_else(|| ctx("expected `move:src[bits]->dst[bits]`".into()))?;
        let src = fields::parse_subfield(src).map_err(ctx)?;
        let dst = fields::parse_subfield(dst).map_err(ctx)?;
        if src.nbits != dst.nbits {
            return Err(ctx(format!(
                "moves {} bits into {} bits",
                src.nbits, dst.nbits
            )));
        }
        out.extend_from_slice(&OFPAT_COPY_FIELD.to_be_bytes());
        out.extend_from_slice(&24u16.to_be_bytes());
        out.extend_from_slice(&(src.nbits as u16).to_be_bytes());
        out.extend_from_slice(&(src.ofs as u16).to_be_bytes());
        out.extend_from_slice(&(dst.ofs as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&src.field.oxm.to_be_bytes());
        out.extend_from_slice(&dst.field.oxm.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
    } else if let Some(f) = tok.strip_prefix("push:") {
        stack(
            out,
            NXAST_STACK_PUSH,
            fields::parse_subfield(f).map_err(ctx)?,
        );
    } else if let Some(f) = tok.strip_prefix("pop:") {
        stack(
            out,
            NXAST_STACK_POP,
            fields::parse_subfield(f).map_err(ctx)?,
        );
    } else if let Some(args) = call(tok, "ct") {
        encode_ct(args, out).map_err(ctx)?;
    } else if let Some(args) = call(tok, "learn") {
        encode_learn(args, out).map_err(ctx)?;
    } else {
        return Err(format!("unknown action `{tok}`"));
    }
    Ok(())
}

fn parse_port(p: &str) -> Result<u32, String> {
    match p {
        "in_port" | "IN_PORT" => Ok(OFPP_IN_PORT),
        "LOCAL" | "local" => Ok(0xffff_fffe),
        _ => Ok(fields::parse_uint(p, 32)? as u32),
    }
}

fn output(out: &mut Vec<u8>, port: u32) {
    out.extend_from_slice(&OFPAT_OUTPUT.to_be_bytes());
    out.extend_from_slice(&16u16.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// `OFPAT_SET_FIELD` with an OXM entry, masked when `mask` is given.
fn set_field(out: &mut Vec<u8>, header: u32, value: &[u8], mask: Option<&[u8]>) {
    let at = out.len();
    out.extend_from_slice(&OFPAT_SET_FIELD.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    match mask {
        None => {
            out.extend_from_slice(&header.to_be_bytes());
            out.extend_from_slice(value);
        }
        Some(m) => {
            out.extend_from_slice(&fields::masked(header).to_be_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(m);
        }
    }
    pad_from(out, at);
}

/// Pads what was written since `at` to 8 bytes and writes its length at `at + 2`.
fn pad_from(out: &mut Vec<u8>, at: usize) {
    let mut tail = out.split_off(at);
    put_padded(&mut tail);
    let len = tail.len() as u16;
    tail[2..4].copy_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&tail);
}

/// Starts a Nicira action; [`nx_end`] pads it and fills in its length.
fn nx_start(out: &mut Vec<u8>, subtype: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&OFPAT_EXPERIMENTER.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&NX_VENDOR.to_be_bytes());
    out.extend_from_slice(&subtype.to_be_bytes());
    at
}

fn nx_end(out: &mut Vec<u8>, at: usize) {
    pad_from(out, at)
}

fn stack(out: &mut Vec<u8>, subtype: u16, f: Subfield) {
    let at = nx_start(out, subtype);
    out.extend_from_slice(&(f.ofs as u16).to_be_bytes());
    out.extend_from_slice(&f.field.nxm.to_be_bytes());
    out.extend_from_slice(&(f.nbits as u16).to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    nx_end(out, at);
}

/// `ct(commit,force,table=N,zone=N|zone=FIELD[bits],nat[(…)],exec(…))`.
fn encode_ct(args: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let (mut flags, mut table, mut zone_src, mut zone) = (0u16, 0xffu8, 0u32, 0u16);
    let mut nested = Vec::new();
    for arg in split_top(args)
        .into_iter()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        if arg == "commit" {
            flags |= 1;
        } else if arg == "force" {
            flags |= 2;
        } else if let Some(t) = arg.strip_prefix("table=") {
            table = fields::parse_uint(t, 8)? as u8;
        } else if let Some(z) = arg.strip_prefix("zone=") {
            if z.starts_with(|c: char| c.is_ascii_digit()) {
                zone = fields::parse_uint(z, 16)? as u16;
            } else {
                let sf = fields::parse_subfield(z)?;
                if sf.nbits > 16 {
                    return Err(format!("zone `{z}` is wider than 16 bits"));
                }
                zone_src = sf.field.nxm;
                zone = ((sf.ofs as u16) << 6) | (sf.nbits as u16 - 1);
            }
        } else if arg == "nat" {
            encode_nat("", &mut nested)?;
        } else if let Some(n) = call(arg, "nat") {
            encode_nat(n, &mut nested)?;
        } else if let Some(e) = call(arg, "exec") {
            for a in split_top(e)
                .into_iter()
                .map(str::trim)
                .filter(|a| !a.is_empty())
            {
                encode_action(a, &mut nested)?;
            }
        } else {
            return Err(format!("unknown ct argument `{arg}`"));
        }
    }
    let at = nx_start(out, NXAST_CT);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&zone_src.to_be_bytes());
    out.extend_from_slice(&zone.to_be_bytes());
    out.extend_from_slice(&[table, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&nested);
    nx_end(out, at);
    Ok(())
}

/// The argument of `nat(…)`: `src`/`dst` with an optional
/// `addr[-addr][:port[-port]]` (IPv6 in brackets), `persistent`, `hash`, `random`.
fn encode_nat(args: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let mut flags = 0u16;
    let mut range: Option<&str> = None;
    for arg in split_top(args)
        .into_iter()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let (kind, r) = match arg.split_once('=') {
            Some((k, r)) => (k, Some(r)),
            None => (arg, None),
        };
        match kind {
            "src" | "dst" if flags & 3 != 0 => {
                return Err(format!("`nat({args})` names src or dst twice"))
            }
            "src" => flags |= 1,
            "dst" => flags |= 2,
            "persistent" => flags |= 4,
            "hash" => flags |= 8,
            "random" => flags |= 16,
            _ => return Err(format!("unknown nat argument `{arg}`")),
        }
        if r.is_some() {
            if !matches!(kind, "src" | "dst") {
                return Err(format!("`{arg}` takes no value"));
            }
            range = r;
        }
    }
    let (mut present, mut params) = (0u16, Vec::new());
    if let Some(r) = range {
        let (addrs, ports) = split_range(r)?;
        let (lo, hi) = match addrs.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (addrs, None),
        };
        let ip = |s: &str| -> Result<std::net::IpAddr, String> {
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("`{s}` is not an IP address"))
        };
        let (lo, hi) = (ip(lo)?, hi.map(ip).transpose()?);
        match (lo, hi) {
            (std::net::IpAddr::V4(a), b) => {
                present |= 1;
                params.extend_from_slice(&a.octets());
                if let Some(b) = b {
                    let std::net::IpAddr::V4(b) = b else {
                        return Err(format!("`{r}` mixes IPv4 and IPv6"));
                    };
                    present |= 2;
                    params.extend_from_slice(&b.octets());
                }
            }
            (std::net::IpAddr::V6(a), b) => {
                present |= 4;
                params.extend_from_slice(&a.octets());
                if let Some(b) = b {
                    let std::net::IpAddr::V6(b) = b else {
                        return Err(format!("`{r}` mixes IPv4 and IPv6"));
                    };
                    present |= 8;
                    params.extend_from_slice(&b.octets());
                }
            }
        }
        if let Some(p) = ports {
            let (lo, hi) = match p.split_once('-') {
                Some((a, b)) => (a, Some(b)),
                None => (p, None),
            };
            present |= 16;
            params.extend_from_slice(&(fields::parse_uint(lo, 16)? as u16).to_be_bytes());
            if let Some(hi) = hi {
                present |= 32;
                params.extend_from_slice(&(fields::parse_uint(hi, 16)? as u16).to_be_bytes());
            }
        }
    }
    let at = nx_start(out, NXAST_NAT);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&present.to_be_bytes());
    out.extend_from_slice(&params);
    nx_end(out, at);
    Ok(())
}

/// `10.0.0.1:80` → (`10.0.0.1`, `80`); `[fd00::1]:80` → (`[fd00::1]`, `80`).
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
    Ok(match r.split_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (r, None),
    })
}

/// `learn(table=…,idle_timeout=…,hard_timeout=…,priority=…,cookie=…,<specs>)`
/// as `NXAST_LEARN` with its flow_mod specs.
fn encode_learn(args: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let (mut idle, mut hard, mut prio, mut cookie) = (0u16, 0u16, 0x8000u16, 0u64);
    let (mut flags, mut table, mut fin_idle, mut fin_hard) = (0u16, 1u8, 0u16, 0u16);
    let mut specs = Vec::new();
    for arg in split_top(args)
        .into_iter()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let num = |v: &str, bits| fields::parse_uint(v, bits);
        if let Some(v) = arg.strip_prefix("table=") {
            table = num(v, 8)? as u8;
        } else if let Some(v) = arg.strip_prefix("idle_timeout=") {
            idle = num(v, 16)? as u16;
        } else if let Some(v) = arg.strip_prefix("hard_timeout=") {
            hard = num(v, 16)? as u16;
        } else if let Some(v) = arg.strip_prefix("fin_idle_timeout=") {
            fin_idle = num(v, 16)? as u16;
        } else if let Some(v) = arg.strip_prefix("fin_hard_timeout=") {
            fin_hard = num(v, 16)? as u16;
        } else if let Some(v) = arg.strip_prefix("priority=") {
            prio = num(v, 16)? as u16;
        } else if let Some(v) = arg.strip_prefix("cookie=") {
            cookie = num(v, 64)? as u64;
        } else if arg == "send_flow_rem" {
            flags |= 1;
        } else if arg == "delete_learned" {
            flags |= 2;
        } else {
            learn_spec(arg, &mut specs)?;
        }
    }
    let at = nx_start(out, NXAST_LEARN);
    out.extend_from_slice(&idle.to_be_bytes());
    out.extend_from_slice(&hard.to_be_bytes());
    out.extend_from_slice(&prio.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[table, 0]);
    out.extend_from_slice(&fin_idle.to_be_bytes());
    out.extend_from_slice(&fin_hard.to_be_bytes());
    out.extend_from_slice(&specs);
    nx_end(out, at);
    Ok(())
}

const LEARN_SRC_IMMEDIATE: u16 = 1 << 13;
const LEARN_DST_LOAD: u16 = 1 << 11;
const LEARN_DST_OUTPUT: u16 = 2 << 11;

/// Whether a learn operand is a value rather than a field.
fn is_immediate(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
}

/// One learn spec: `FIELD[bits]`, `FIELD[bits]=FIELD[bits]`, `field=value`,
/// `load:FIELD[bits]|value->FIELD[bits]` or `output:FIELD[bits]`.
fn learn_spec(arg: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let put_sf = |out: &mut Vec<u8>, sf: &Subfield| {
        out.extend_from_slice(&sf.field.nxm.to_be_bytes());
        out.extend_from_slice(&(sf.ofs as u16).to_be_bytes());
    };
    let put_imm = |out: &mut Vec<u8>, dst: &Subfield, v: &str| -> Result<(), String> {
        let n = dst.nbits.div_ceil(16) * 2;
        let mut bytes = vec![0u8; n.max(dst.field.len)];
        if dst.is_whole() {
            let val = fields::parse_value(dst.field, v)?;
            let len = bytes.len();
            bytes[len - val.len()..].copy_from_slice(&val);
        } else {
            let len = bytes.len();
            fields::put_bits(
                &mut bytes[len - n..],
                0,
                dst.nbits,
                fields::parse_uint(v, dst.nbits)?,
            );
        }
        out.extend_from_slice(&bytes[bytes.len() - n..]);
        Ok(())
    };
    if let Some(rest) = arg.strip_prefix("load:") {
        let (src, dst) = rest
            .split_once("->")
            .ok_or_else(|| format!("expected `load:src->dst` in learn, got `{arg}`"))?;
        let dst = fields::parse_subfield(dst)?;
        if is_immediate(src) {
            out.extend_from_slice(
                &(LEARN_SRC_IMMEDIATE | LEARN_DST_LOAD | dst.nbits as u16).to_be_bytes(),
            );
            put_imm(out, &dst, src)?;
        } else {
            let src = fields::parse_subfield(src)?;
            if src.nbits != dst.nbits {
                return Err(format!(
                    "`{arg}` loads {} bits into {}",
                    src.nbits, dst.nbits
                ));
            }
            out.extend_from_slice(&(LEARN_DST_LOAD | dst.nbits as u16).to_be_bytes());
            put_sf(out, &src);
        }
        put_sf(out, &dst);
    } else if let Some(src) = arg.strip_prefix("output:") {
        let src = fields::parse_subfield(src)?;
        out.extend_from_slice(&(LEARN_DST_OUTPUT | src.nbits as u16).to_be_bytes());
        put_sf(out, &src);
    } else if let Some((dst, src)) = arg.split_once('=') {
        let dst = fields::parse_subfield(dst)?;
        if is_immediate(src) {
            out.extend_from_slice(&(LEARN_SRC_IMMEDIATE | dst.nbits as u16).to_be_bytes());
            put_imm(out, &dst, src)?;
        } else {
            let src = fields::parse_subfield(src)?;
            if src.nbits != dst.nbits {
                return Err(format!(
                    "`{arg}` matches {} bits against {}",
                    dst.nbits, src.nbits
                ));
            }
            out.extend_from_slice(&(dst.nbits as u16).to_be_bytes());
            put_sf(out, &src);
        }
        put_sf(out, &dst);
    } else {
        let sf = fields::parse_subfield(arg)?;
        out.extend_from_slice(&(sf.nbits as u16).to_be_bytes());
        put_sf(out, &sf);
        put_sf(out, &sf);
    }
    Ok(())
}
