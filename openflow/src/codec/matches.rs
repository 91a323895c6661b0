//! A match ([`Match`]) as an OpenFlow 1.5 `ofp_match` of OXM entries. OVS
//! checks each entry's prerequisites against the entries before it, so the
//! Ethernet type goes first, the IP protocol and ICMP type/code next, and the
//! rest in the order of the match. Also the OXM entries of a select group's
//! hash fields ([`HashField`]).

use super::fields::{self, Prereq};
use super::put_padded;
use crate::ir::{ones, Field, HashField, Match, MatchField};

/// One OXM entry.
struct Entry {
    field: Field,
    value: Vec<u8>,
    mask: Option<Vec<u8>>,
}

/// A match in `ovs-ofctl` syntax (empty or `*` for all packets), parsed and
/// encoded by [`encode_match`]: for tests that hold text.
#[cfg(test)]
pub(crate) fn encode_match_text(text: &str) -> Result<Vec<u8>, String> {
    encode_match(&text.parse()?)
}

/// Encodes a match as an `ofp_match`, padded. Refuses what OVS would: an
/// Ethernet type or IP protocol given twice differently (or masked), a field
/// matched twice, a field without its prerequisites.
pub(crate) fn encode_match(m: &Match) -> Result<Vec<u8>, String> {
    // First pass: the Ethernet type and IP protocol.
    let mut eth: Option<u16> = None;
    let mut set_eth = |v: u16, f: &MatchField| match eth {
        Some(e) if e != v => Err(format!("`{f}` contradicts Ethernet type {e:#06x}")),
        _ => {
            eth = Some(v);
            Ok(())
        }
    };
    let mut protos = Vec::new();
    for f in m.fields() {
        match f {
            MatchField::Proto(p) => {
                let (e, ip) = p.eth_and_ip_proto();
                set_eth(e, f)?;
                protos.extend(ip.map(|ip| (ip, f)));
            }
            MatchField::Value { field, value, mask }
                if matches!(field, Field::EthType | Field::IpProto) =>
            {
                if u128::from(*mask) & ones(field.bits()) != ones(field.bits()) {
                    return Err(format!("`{f}`: {} cannot be masked", field.name()));
                }
                if *field == Field::EthType {
                    set_eth(*value as u16, f)?;
                } else {
                    protos.push((*value as u8, f));
                }
            }
            _ => {}
        }
    }
    let mut proto: Option<u8> = None;
    for (p, f) in protos {
        match proto {
            Some(q) if q != p => return Err(format!("`{f}` contradicts IP protocol {q}")),
            _ => proto = Some(p),
        }
    }
    let mut entries: Vec<Entry> = Vec::new();
    for f in m.fields() {
        let (field, value, mask) = match f {
            MatchField::Proto(_) => continue,
            MatchField::CtState { set, mask } => {
                (Field::CtState, u128::from(set & mask), u128::from(*mask))
            }
            _ => f.value().expect("a field"),
        };
        if matches!(field, Field::EthType | Field::IpProto) {
            continue;
        }
        let (len, full) = (field.def().len, ones(field.bits()));
        let mask = mask & full;
        if entries.iter().any(|e| e.field == field) {
            return Err(format!("`{f}` matches {} twice", field.name()));
        }
        if mask == 0 {
            continue;
        }
        entries.push(Entry {
            field,
            value: fields::be_bytes(value & mask, len),
            mask: (mask != full).then(|| fields::be_bytes(mask, len)),
        });
    }
    // Prerequisites, as OVS checks them.
    let exact = |field: Field| {
        entries
            .iter()
            .find(|e| e.field == field && e.mask.is_none())
            .map(|e| e.value[0])
    };
    let (nd_type, nd_code) = (exact(Field::Icmpv6Type), exact(Field::Icmpv6Code));
    for e in &entries {
        let ok = match e.field.def().prereq {
            Prereq::Free => true,
            Prereq::Eth(t) => eth == Some(t),
            Prereq::Ip => matches!(eth, Some(0x0800 | 0x86dd)),
            Prereq::Proto(p) => matches!(eth, Some(0x0800 | 0x86dd)) && proto == Some(p),
            Prereq::Proto4(p) => eth == Some(0x0800) && proto == Some(p),
            Prereq::Proto6(p) => eth == Some(0x86dd) && proto == Some(p),
            Prereq::Nd => {
                eth == Some(0x86dd)
                    && proto == Some(58)
                    && matches!(nd_type, Some(135 | 136))
                    && nd_code == Some(0)
            }
        };
        if !ok {
            return Err(format!(
                "`{}` lacks its prerequisites in the match",
                e.field.name()
            ));
        }
    }
    let mut oxm = Vec::new();
    let mut put = |h: u32, value: &[u8], mask: Option<&[u8]>| match mask {
        None => {
            oxm.extend_from_slice(&h.to_be_bytes());
            oxm.extend_from_slice(value);
        }
        Some(m) => {
            oxm.extend_from_slice(&fields::masked(h).to_be_bytes());
            oxm.extend_from_slice(value);
            oxm.extend_from_slice(m);
        }
    };
    if let Some(e) = eth {
        put(Field::EthType.def().oxm, &e.to_be_bytes(), None);
    }
    if let Some(p) = proto {
        if !matches!(eth, Some(0x0800 | 0x86dd)) {
            return Err("an IP protocol without `ip` or `ipv6` in the match".into());
        }
        put(Field::IpProto.def().oxm, &[p], None);
    }
    let first = |e: &Entry| {
        !matches!(
            e.field,
            Field::IcmpType | Field::IcmpCode | Field::Icmpv6Type | Field::Icmpv6Code
        )
    };
    for e in entries
        .iter()
        .filter(|e| !first(e))
        .chain(entries.iter().filter(|e| first(e)))
    {
        put(e.field.def().oxm, &e.value, e.mask.as_deref());
    }
    let mut m = Vec::with_capacity(8 + oxm.len());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&((4 + oxm.len()) as u16).to_be_bytes());
    m.extend_from_slice(&oxm);
    put_padded(&mut m);
    Ok(m)
}

/// A hash field of a selection method as OVS writes it: an OXM entry whose
/// value is the field's mask, all ones for a whole field
/// (`oxm_put_field_array`). The field must be one of [`HashField::FIELDS`]; a
/// mask non-zero and of a field of at most 8 bytes.
pub(crate) fn encode_hash_field(h: &HashField) -> Result<Vec<u8>, String> {
    let (name, def) = (h.field.name(), h.field.def());
    if !HashField::FIELDS.contains(&h.field) {
        return Err(format!("unknown hash field `{name}`"));
    }
    let mut b = def.oxm.to_be_bytes().to_vec();
    match h.mask {
        None => b.extend(std::iter::repeat_n(0xff, def.len)),
        Some(m) => {
            if def.len > 8 || (def.len < 8 && m >> (8 * def.len) != 0) || m == 0 {
                return Err(format!(
                    "hash field `{name}`: mask `{m}` does not fit its {} bytes, or is zero",
                    def.len
                ));
            }
            b.extend_from_slice(&m.to_be_bytes()[8 - def.len..]);
        }
    }
    Ok(b)
}
