//! A match in `ovs-ofctl` syntax as an OpenFlow 1.5 `ofp_match` of OXM entries.
//! OVS checks each entry's prerequisites against the entries before it, so the
//! Ethernet type goes first, the IP protocol and ICMP type/code next, and the
//! rest in the order written.

use super::fields::{self, FieldDef as Field, Prereq};
use super::put_padded;

/// One OXM entry.
struct Entry {
    field: &'static Field,
    value: Vec<u8>,
    mask: Option<Vec<u8>>,
}

/// `ip`, `tcp6` and friends: an Ethernet type and maybe an IP protocol.
fn shorthand(kw: &str) -> Option<(u16, Option<u8>)> {
    Some(match kw {
        "ip" => (0x0800, None),
        "ipv6" => (0x86dd, None),
        "arp" => (0x0806, None),
        "icmp" => (0x0800, Some(1)),
        "tcp" => (0x0800, Some(6)),
        "udp" => (0x0800, Some(17)),
        "sctp" => (0x0800, Some(132)),
        "icmp6" => (0x86dd, Some(58)),
        "tcp6" => (0x86dd, Some(6)),
        "udp6" => (0x86dd, Some(17)),
        "sctp6" => (0x86dd, Some(132)),
        _ => return None,
    })
}

/// `ct_state` bits by name.
fn ct_flag(name: &str) -> Option<u32> {
    Some(match name {
        "new" => 0x01,
        "est" => 0x02,
        "rel" => 0x04,
        "rpl" => 0x08,
        "inv" => 0x10,
        "trk" => 0x20,
        "snat" => 0x40,
        "dnat" => 0x80,
        _ => return None,
    })
}

/// `+trk+est-new` as (value, mask).
fn parse_ct_state(s: &str) -> Result<(u32, u32), String> {
    if !s.starts_with(['+', '-']) {
        let f = fields::lookup("ct_state").expect("ct_state is a field");
        let (v, m) = fields::parse_masked(f, s)?;
        let n = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        return Ok((n(&v), m.as_deref().map_or(u32::MAX, n)));
    }
    let (mut value, mut mask) = (0, 0);
    let mut rest = s;
    while !rest.is_empty() {
        let plus = rest.starts_with('+');
        if !plus && !rest.starts_with('-') {
            return Err(format!("bad ct_state flags `{s}`"));
        }
        let end = rest[1..].find(['+', '-']).map_or(rest.len(), |i| i + 1);
        let name = &rest[1..end];
        let bit = ct_flag(name).ok_or_else(|| format!("unknown ct_state flag `{name}`"))?;
        mask |= bit;
        if plus {
            value |= bit;
        }
        rest = &rest[end..];
    }
    Ok((value, mask))
}

/// Encodes a match (empty or `*` for all packets) as an `ofp_match`, padded.
pub(crate) fn encode_match(text: &str) -> Result<Vec<u8>, String> {
    let tokens: Vec<&str> = if text.trim().is_empty() || text.trim() == "*" {
        Vec::new()
    } else {
        text.split(',').map(str::trim).collect()
    };
    // First pass: the Ethernet type and IP protocol, which decide what the
    // transport and ICMP names mean.
    let mut eth: Option<u16> = None;
    let mut proto: Option<u8> = None;
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
        if let Some((e, p)) = shorthand(tok) {
            set_eth(e, tok)?;
            protos.extend(p.map(|p| (p, *tok)));
        } else if let Some(v) = tok
            .strip_prefix("dl_type=")
            .or_else(|| tok.strip_prefix("eth_type="))
        {
            set_eth(fields::parse_uint(v, 16)? as u16, tok)?;
        } else if let Some(v) = tok
            .strip_prefix("nw_proto=")
            .or_else(|| tok.strip_prefix("ip_proto="))
        {
            protos.push((fields::parse_uint(v, 8)? as u8, *tok));
        }
    }
    for (p, tok) in protos {
        match proto {
            Some(q) if q != p => return Err(format!("`{tok}` contradicts IP protocol {q}")),
            _ => proto = Some(p),
        }
    }
    let mut entries: Vec<Entry> = Vec::new();
    for tok in &tokens {
        if shorthand(tok).is_some() {
            continue;
        }
        let (name, value) = tok
            .split_once('=')
            .ok_or_else(|| format!("unknown match keyword `{tok}`"))?;
        let field = resolve(name, eth, proto).ok_or_else(|| match name {
            "tp_src" | "tp_dst" | "icmp_type" | "icmp_code" => {
                format!("`{tok}` needs an IP protocol it belongs to (tcp, udp, sctp, icmp, icmp6)")
            }
            _ => format!("unknown match field `{name}`"),
        })?;
        if matches!(field.name, "eth_type" | "ip_proto") {
            continue;
        }
        let (value, mask) = if field.name == "ct_state" {
            let (v, m) = parse_ct_state(value)?;
            let mask = (m != u32::MAX).then(|| m.to_be_bytes().to_vec());
            (v.to_be_bytes().to_vec(), mask)
        } else {
            fields::parse_masked(field, value).map_err(|e| format!("`{tok}`: {e}"))?
        };
        if entries.iter().any(|e| std::ptr::eq(e.field, field)) {
            return Err(format!("`{tok}` matches {} twice", field.name));
        }
        if mask.as_ref().is_some_and(|m| m.iter().all(|b| *b == 0)) {
            continue;
        }
        entries.push(Entry { field, value, mask });
    }
    // Prerequisites, as OVS checks them.
    let exact = |name: &str| {
        entries
            .iter()
            .find(|e| e.field.name == name && e.mask.is_none())
            .map(|e| e.value[0])
    };
    let (nd_type, nd_code) = (exact("icmpv6_type"), exact("icmpv6_code"));
    for e in &entries {
        let ok = match e.field.prereq {
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
                e.field.name
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
        put(fields::hdr(0x8000, 5, 2), &e.to_be_bytes(), None);
    }
    if let Some(p) = proto {
        if !matches!(eth, Some(0x0800 | 0x86dd)) {
            return Err("an IP protocol without `ip` or `ipv6` in the match".into());
        }
        put(fields::hdr(0x8000, 10, 1), &[p], None);
    }
    let first = |e: &Entry| {
        !matches!(
            e.field.name,
            "icmp_type" | "icmp_code" | "icmpv6_type" | "icmpv6_code"
        )
    };
    for e in entries
        .iter()
        .filter(|e| !first(e))
        .chain(entries.iter().filter(|e| first(e)))
    {
        put(e.field.oxm, &e.value, e.mask.as_deref());
    }
    let mut m = Vec::with_capacity(8 + oxm.len());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&((4 + oxm.len()) as u16).to_be_bytes());
    m.extend_from_slice(&oxm);
    put_padded(&mut m);
    Ok(m)
}

/// The field a match name stands for, given the Ethernet type and IP protocol.
fn resolve(name: &str, eth: Option<u16>, proto: Option<u8>) -> Option<&'static Field> {
    let transport = |dir: &str| {
        let p = match proto? {
            6 => "tcp",
            17 => "udp",
            132 => "sctp",
            _ => return None,
        };
        fields::lookup(&format!("{p}_{dir}"))
    };
    let icmp = |what: &str| match (eth?, proto?) {
        (0x0800, 1) => fields::lookup(&format!("icmp_{what}")),
        (0x86dd, 58) => fields::lookup(&format!("icmpv6_{what}")),
        _ => None,
    };
    match name {
        "in_port" => fields::lookup("in_port_oxm"),
        "tp_src" => transport("src"),
        "tp_dst" => transport("dst"),
        "icmp_type" => icmp("type"),
        "icmp_code" => icmp("code"),
        "nw_src" if eth == Some(0x0806) => fields::lookup("arp_spa"),
        "nw_dst" if eth == Some(0x0806) => fields::lookup("arp_tpa"),
        _ => fields::lookup(name),
    }
}
