//! Actions ([`Actions`]) as OpenFlow 1.5 actions, byte for byte as OVS itself
//! encodes them for 1.5 (so a group read back compares equal): `load` is a
//! (masked) `set_field`, `move` is `OFPAT_COPY_FIELD`, and the Nicira actions
//! (`resubmit`, `push`/`pop`, `ct`, `nat`, `learn`) name fields by their
//! OpenFlow 1.0 NXM headers.

use std::net::IpAddr;

use super::fields;
use super::put_padded;
use crate::ir::{ones, Action, Actions, Ct, CtZone, Learn, LearnSpec, Nat, NatKind, Subfield};

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

/// An action list in `ovs-ofctl` syntax (`drop` alone is the empty list),
/// parsed and encoded by [`encode_actions`]: for tests that
/// hold text.
#[cfg(test)]
pub(crate) fn encode_actions_text(text: &str) -> Result<Encoded, String> {
    encode_actions(&text.parse()?)
}

/// Encodes an action list; a `goto_table` must be the last of it, and alone.
pub(crate) fn encode_actions(list: &Actions) -> Result<Encoded, String> {
    let mut enc = Encoded::default();
    for a in list.list() {
        if let Action::GotoTable(t) = a {
            if enc.goto.is_some() {
                return Err(format!("a second `{a}`"));
            }
            enc.goto = Some(*t);
            continue;
        }
        if enc.goto.is_some() {
            return Err(format!("`{a}` after goto_table"));
        }
        encode_action(a, &mut enc.actions)?;
    }
    Ok(enc)
}

/// Every subfield of `a` lies within its field. Checked before anything else,
/// since a subfield outside it does not print.
fn check_subfields(a: &Action) -> Result<(), String> {
    let check = |sf: &Subfield| {
        let width = sf.field.bits();
        if sf.nbits == 0 || u32::from(sf.ofs) + sf.width() > width {
            return Err(format!(
                "{} bits from bit {} of `{}` are outside its {width}-bit field",
                sf.nbits,
                sf.ofs,
                sf.field.nxm_name()
            ));
        }
        Ok(())
    };
    match a {
        Action::Load { dst, .. } => check(dst),
        Action::Move { src, dst } => check(src).and(check(dst)),
        Action::Push(sf) | Action::Pop(sf) => check(sf),
        Action::Ct(ct) => {
            if let CtZone::Field(sf) = &ct.zone {
                check(sf)?;
            }
            ct.exec.iter().try_for_each(check_subfields)
        }
        Action::Learn(l) => l.specs.iter().try_for_each(|s| match s {
            LearnSpec::Match(sf) | LearnSpec::Output(sf) => check(sf),
            LearnSpec::MatchValue { .. } => Ok(()),
            LearnSpec::MatchBits { dst, .. }
            | LearnSpec::LoadValue { dst, .. }
            | LearnSpec::LoadWide { dst, .. } => check(dst),
            LearnSpec::Load { src, dst } | LearnSpec::MatchFrom { src, dst } => {
                check(src).and(check(dst))
            }
        }),
        _ => Ok(()),
    }
}

/// That `v` fits `bits` bits.
fn fits(v: u128, bits: u32) -> Result<(), String> {
    if bits < 128 && v >> bits != 0 {
        return Err(format!("`{v:#x}` does not fit in {bits} bits"));
    }
    Ok(())
}

/// One action (no `goto_table`) appended to `out`.
fn encode_action(a: &Action, out: &mut Vec<u8>) -> Result<(), String> {
    check_subfields(a)?;
    let ctx = |e: String| format!("`{a}`: {e}");
    match a {
        Action::InPort => output(out, OFPP_IN_PORT),
        Action::Output(port) => output(out, *port),
        Action::DecTtl => {
            out.extend_from_slice(&OFPAT_DEC_NW_TTL.to_be_bytes());
            out.extend_from_slice(&[0, 8, 0, 0, 0, 0]);
        }
        Action::Group(id) => {
            out.extend_from_slice(&OFPAT_GROUP.to_be_bytes());
            out.extend_from_slice(&8u16.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        // OVS's rule: NXAST_RESUBMIT for a port alone, else
        // NXAST_RESUBMIT_TABLE (the packet's in_port, this table: 0xff).
        Action::Resubmit {
            port: Some(port),
            table: None,
        } => {
            let at = nx_start(out, NXAST_RESUBMIT);
            out.extend_from_slice(&port.to_be_bytes());
            nx_end(out, at);
        }
        Action::Resubmit { port, table } => {
            let at = nx_start(out, NXAST_RESUBMIT_TABLE);
            out.extend_from_slice(&port.unwrap_or(OFPP_IN_PORT16).to_be_bytes());
            out.extend_from_slice(&[table.unwrap_or(0xff), 0, 0, 0]);
            nx_end(out, at);
        }
        Action::GotoTable(_) => return Err(format!("`{a}` is an instruction, not an action")),
        Action::SetField { field, value } => {
            fits(u128::from(*value), field.bits()).map_err(ctx)?;
            let len = field.def().len;
            set_field(
                out,
                field.def().oxm,
                &fields::be_bytes(u128::from(*value), len),
                None,
            );
        }
        Action::SetWide(w) => {
            let (field, value) = **w;
            fits(value, field.bits()).map_err(ctx)?;
            let len = field.def().len;
            set_field(out, field.def().oxm, &fields::be_bytes(value, len), None);
        }
        Action::SetMasked(w) => {
            let (field, value, mask) = **w;
            fits(value, field.bits()).map_err(ctx)?;
            let (len, full) = (field.def().len, ones(field.bits()));
            let mask = mask & full;
            let v = fields::be_bytes(value & mask, len);
            if mask == full {
                set_field(out, field.def().oxm, &v, None);
            } else {
                let m = fields::be_bytes(mask, len);
                set_field(out, field.def().oxm, &v, Some(&m));
            }
        }
        Action::Load { value, dst } => {
            fits(u128::from(*value), dst.width()).map_err(ctx)?;
            let len = dst.field.def().len;
            let ofs = u32::from(dst.ofs);
            let v = fields::be_bytes(u128::from(*value) << ofs, len);
            if dst.is_whole() {
                set_field(out, dst.field.def().oxm, &v, None);
            } else {
                let m = fields::be_bytes(ones(dst.width()) << ofs, len);
                set_field(out, dst.field.def().oxm, &v, Some(&m));
            }
        }
        Action::Move { src, dst } => {
            if src.nbits != dst.nbits {
                return Err(ctx(format!(
                    "moves {} bits into {} bits",
                    src.nbits, dst.nbits
                )));
            }
            out.extend_from_slice(&OFPAT_COPY_FIELD.to_be_bytes());
            out.extend_from_slice(&24u16.to_be_bytes());
            out.extend_from_slice(&u16::from(src.nbits).to_be_bytes());
            out.extend_from_slice(&u16::from(src.ofs).to_be_bytes());
            out.extend_from_slice(&u16::from(dst.ofs).to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&src.field.def().oxm.to_be_bytes());
            out.extend_from_slice(&dst.field.def().oxm.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
        }
        Action::Push(sf) => stack(out, NXAST_STACK_PUSH, sf),
        Action::Pop(sf) => stack(out, NXAST_STACK_POP, sf),
        Action::Ct(ct) => encode_ct(ct, out).map_err(ctx)?,
        Action::Learn(l) => encode_learn(l, out).map_err(ctx)?,
    }
    Ok(())
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

fn stack(out: &mut Vec<u8>, subtype: u16, f: &Subfield) {
    let at = nx_start(out, subtype);
    out.extend_from_slice(&u16::from(f.ofs).to_be_bytes());
    out.extend_from_slice(&f.field.def().nxm.to_be_bytes());
    out.extend_from_slice(&u16::from(f.nbits).to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    nx_end(out, at);
}

/// `NXAST_CT`, with its `nat` and then its `exec` actions nested.
fn encode_ct(ct: &Ct, out: &mut Vec<u8>) -> Result<(), String> {
    let flags = u16::from(ct.commit) | (u16::from(ct.force) << 1);
    let (zone_src, zone) = match ct.zone {
        CtZone::Imm(z) => (0, z),
        CtZone::Field(sf) => {
            if sf.nbits > 16 {
                return Err(format!("zone `{sf}` is wider than 16 bits"));
            }
            (
                sf.field.def().nxm,
                (u16::from(sf.ofs) << 6) | (u16::from(sf.nbits) - 1),
            )
        }
    };
    let mut nested = Vec::new();
    if let Some(n) = &ct.nat {
        encode_nat(n, &mut nested)?;
    }
    for a in &ct.exec {
        encode_action(a, &mut nested)?;
    }
    let at = nx_start(out, NXAST_CT);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&zone_src.to_be_bytes());
    out.extend_from_slice(&zone.to_be_bytes());
    out.extend_from_slice(&[ct.table.unwrap_or(0xff), 0, 0, 0, 0, 0]);
    out.extend_from_slice(&nested);
    nx_end(out, at);
    Ok(())
}

/// `NXAST_NAT`: the flags (`src` 1, `dst` 2, and the nat's own), then the
/// range present: addresses (IPv4 or IPv6) and ports, each maybe with a last.
fn encode_nat(n: &Nat, out: &mut Vec<u8>) -> Result<(), String> {
    let mut flags = n.flags & !3;
    let (mut present, mut params) = (0u16, Vec::new());
    if n.kind != NatKind::Existing {
        flags |= if n.kind == NatKind::Src { 1 } else { 2 };
        if let Some((lo, hi)) = n.addrs {
            match (lo, hi) {
                (IpAddr::V4(a), None) => {
                    present |= 1;
                    params.extend_from_slice(&a.octets());
                }
                (IpAddr::V4(a), Some(IpAddr::V4(b))) => {
                    present |= 3;
                    params.extend_from_slice(&a.octets());
                    params.extend_from_slice(&b.octets());
                }
                (IpAddr::V6(a), None) => {
                    present |= 4;
                    params.extend_from_slice(&a.octets());
                }
                (IpAddr::V6(a), Some(IpAddr::V6(b))) => {
                    present |= 12;
                    params.extend_from_slice(&a.octets());
                    params.extend_from_slice(&b.octets());
                }
                _ => return Err(format!("`{n}` mixes IPv4 and IPv6")),
            }
            if let Some((lo, hi)) = n.ports {
                present |= 16;
                params.extend_from_slice(&lo.to_be_bytes());
                if let Some(hi) = hi {
                    present |= 32;
                    params.extend_from_slice(&hi.to_be_bytes());
                }
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

/// `NXAST_LEARN` with its flow_mod specs.
fn encode_learn(l: &Learn, out: &mut Vec<u8>) -> Result<(), String> {
    let mut specs = Vec::new();
    for s in &l.specs {
        learn_spec(s, &mut specs)?;
    }
    let at = nx_start(out, NXAST_LEARN);
    out.extend_from_slice(&l.idle_timeout.to_be_bytes());
    out.extend_from_slice(&l.hard_timeout.to_be_bytes());
    out.extend_from_slice(&l.priority.to_be_bytes());
    out.extend_from_slice(&l.cookie.to_be_bytes());
    out.extend_from_slice(&l.flags.to_be_bytes());
    out.extend_from_slice(&[l.table, 0]);
    out.extend_from_slice(&l.fin_idle_timeout.to_be_bytes());
    out.extend_from_slice(&l.fin_hard_timeout.to_be_bytes());
    out.extend_from_slice(&specs);
    nx_end(out, at);
    Ok(())
}

const LEARN_SRC_IMMEDIATE: u16 = 1 << 13;
const LEARN_DST_LOAD: u16 = 1 << 11;
const LEARN_DST_OUTPUT: u16 = 2 << 11;

/// One learn spec: its header (source kind, destination kind, bit count),
/// then the source (a subfield or a constant in whole 16-bit words) and the
/// destination subfield (none for `output`).
fn learn_spec(s: &LearnSpec, out: &mut Vec<u8>) -> Result<(), String> {
    let put_sf = |out: &mut Vec<u8>, sf: &Subfield| {
        out.extend_from_slice(&sf.field.def().nxm.to_be_bytes());
        out.extend_from_slice(&u16::from(sf.ofs).to_be_bytes());
    };
    let put_imm = |out: &mut Vec<u8>, dst: &Subfield, v: u128| -> Result<(), String> {
        fits(v, dst.width())?;
        let n = usize::from(dst.nbits).div_ceil(16) * 2;
        out.extend_from_slice(&fields::be_bytes(v, n));
        Ok(())
    };
    let header = |out: &mut Vec<u8>, kind: u16, sf: &Subfield| {
        out.extend_from_slice(&(kind | u16::from(sf.nbits)).to_be_bytes());
    };
    match s {
        LearnSpec::Match(sf) => {
            header(out, 0, sf);
            put_sf(out, sf);
            put_sf(out, sf);
        }
        LearnSpec::MatchFrom { dst, src } => {
            if src.nbits != dst.nbits {
                return Err(format!(
                    "`{s}` matches {} bits against {}",
                    dst.nbits, src.nbits
                ));
            }
            header(out, 0, dst);
            put_sf(out, src);
            put_sf(out, dst);
        }
        LearnSpec::MatchValue { field, value } => {
            let dst = Subfield::whole(*field);
            header(out, LEARN_SRC_IMMEDIATE, &dst);
            put_imm(out, &dst, u128::from(*value))?;
            put_sf(out, &dst);
        }
        LearnSpec::MatchBits { dst, value } => {
            header(out, LEARN_SRC_IMMEDIATE, dst);
            put_imm(out, dst, *value)?;
            put_sf(out, dst);
        }
        LearnSpec::Load { src, dst } => {
            if src.nbits != dst.nbits {
                return Err(format!("`{s}` loads {} bits into {}", src.nbits, dst.nbits));
            }
            header(out, LEARN_DST_LOAD, dst);
            put_sf(out, src);
            put_sf(out, dst);
        }
        LearnSpec::LoadValue { value, dst } => {
            header(out, LEARN_SRC_IMMEDIATE | LEARN_DST_LOAD, dst);
            put_imm(out, dst, u128::from(*value))?;
            put_sf(out, dst);
        }
        LearnSpec::LoadWide { value, dst } => {
            header(out, LEARN_SRC_IMMEDIATE | LEARN_DST_LOAD, dst);
            put_imm(out, dst, *value)?;
            put_sf(out, dst);
        }
        LearnSpec::Output(sf) => {
            header(out, LEARN_DST_OUTPUT, sf);
            put_sf(out, sf);
        }
    }
    Ok(())
}
