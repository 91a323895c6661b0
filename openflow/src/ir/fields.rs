//! The match fields and registers the IR names, with the two headers OVS gives each: the
//! OpenFlow 1.0 NXM form (what Nicira actions such as `learn`, `push` and `ct`'s
//! zone carry) and the form OVS writes in OpenFlow 1.5 (`set_field`,
//! `copy_field`, matches). Numbers are those of OVS's `meta-flow.xml`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// How a field's value is written in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A number, written in decimal.
    Int,
    /// A number, written in `0x` hex (registers, metadata, masks of bits).
    Hex,
    Mac,
    Ipv4,
    Ipv6,
}

/// What must already be in a match before a field may be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prereq {
    /// Always allowed.
    Free,
    /// This exact Ethernet type.
    Eth(u16),
    /// IPv4 or IPv6.
    Ip,
    /// This IP protocol over IPv4 or IPv6.
    Proto(u8),
    Proto4(u8),
    Proto6(u8),
    /// ICMPv6 neighbor solicitation or advertisement, code 0.
    Nd,
}

#[derive(Debug)]
pub(crate) struct FieldDef {
    /// The `ovs-ofctl` name.
    pub name: &'static str,
    /// Other names: the `ovs-ofctl` aliases and the `NXM_*`/`OXM_*` names.
    pub aliases: &'static [&'static str],
    /// The OpenFlow 1.0 (NXM) header, or the OXM one when there is none.
    pub nxm: u32,
    /// The header OVS writes for OpenFlow 1.5.
    pub oxm: u32,
    /// Width in bytes.
    pub len: usize,
    pub kind: Kind,
    pub prereq: Prereq,
}

/// An OXM/NXM header without mask: class, field, payload length.
pub(crate) const fn hdr(class: u16, field: u8, len: u8) -> u32 {
    ((class as u32) << 16) | ((field as u32) << 9) | len as u32
}

/// The header with the has-mask bit set and the payload doubled.
pub(crate) fn masked(h: u32) -> u32 {
    (h & !0xff) | 0x100 | ((h & 0xff) * 2)
}

const NXM0: u16 = 0x0000;
const NXM1: u16 = 0x0001;
const OXM: u16 = 0x8000;
const PKT_REGS: u16 = 0x8001;
const ERICSSON: u16 = 0x1000;

macro_rules! f {
    ($name:expr, [$($a:expr),*], $nxm:expr, $oxm:expr, $len:expr, $kind:ident, $pre:expr) => {
        FieldDef {
            name: $name,
            aliases: &[$($a),*],
            nxm: $nxm,
            oxm: $oxm,
            len: $len,
            kind: Kind::$kind,
            prereq: $pre,
        }
    };
}

macro_rules! reg {
    ($n:expr, $name:expr, $nx:expr) => {
        f!(
            $name,
            [$nx],
            hdr(NXM1, $n, 4),
            hdr(NXM1, $n, 4),
            4,
            Hex,
            Prereq::Free
        )
    };
}
macro_rules! xxreg {
    ($n:expr, $name:expr, $nx:expr) => {
        f!(
            $name,
            [$nx],
            hdr(NXM1, 111 + $n, 16),
            hdr(NXM1, 111 + $n, 16),
            16,
            Hex,
            Prereq::Free
        )
    };
}
macro_rules! xreg {
    ($n:expr, $name:expr, $ox:expr) => {
        f!(
            $name,
            [$ox],
            hdr(PKT_REGS, $n, 8),
            hdr(PKT_REGS, $n, 8),
            8,
            Hex,
            Prereq::Free
        )
    };
}

/// A [`Field`] variant's doc: its `ovs-ofctl` name and its other names.
macro_rules! field_doc {
    (f; $name:literal, [$($a:literal),*], $($rest:tt)*) => {
        concat!("`", $name, "`", $(", `", $a, "`",)* ".")
    };
    ($m:ident; $n:expr, $name:literal, $nx:literal) => {
        concat!("`", $name, "`, `", $nx, "`.")
    };
}

/// Declares [`Field`] and its table together, so they cannot disagree.
macro_rules! table {
    ($( $var:ident = $m:ident ! ( $($args:tt)* ) ),* $(,)?) => {
        /// A match field or register, by its place in the codec's table: what
        /// the flow IR (`crate::ir`) names fields by. Each variant's doc gives
        /// its `ovs-ofctl` name first, then its aliases and NXM/OXM names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum Field { $(#[doc = field_doc!($m; $($args)*)] $var),* }

        /// Every field the codec knows, in [`Field`] order.
        pub(crate) static FIELDS: &[FieldDef] = &[$($m!($($args)*)),*];

        impl Field {
            /// Every field, in table order.
            pub const ALL: &'static [Field] = &[$(Field::$var),*];
        }
    };
}

use Prereq::*;

#[rustfmt::skip]
table! {
    // `in_port` in actions is OVS's 16-bit NXM field; matches use `in_port_oxm`.
    InPort = f!("in_port", ["NXM_OF_IN_PORT"], hdr(NXM0, 0, 2), hdr(NXM0, 0, 2), 2, Int, Free),
    InPortOxm = f!("in_port_oxm", ["OXM_OF_IN_PORT"], hdr(OXM, 0, 4), hdr(OXM, 0, 4), 4, Int, Free),
    Metadata = f!("metadata", ["OXM_OF_METADATA"], hdr(OXM, 2, 8), hdr(OXM, 2, 8), 8, Hex, Free),
    EthDst = f!("eth_dst", ["dl_dst", "NXM_OF_ETH_DST", "OXM_OF_ETH_DST"], hdr(NXM0, 1, 6), hdr(OXM, 3, 6), 6, Mac, Free),
    EthSrc = f!("eth_src", ["dl_src", "NXM_OF_ETH_SRC", "OXM_OF_ETH_SRC"], hdr(NXM0, 2, 6), hdr(OXM, 4, 6), 6, Mac, Free),
    EthType = f!("eth_type", ["dl_type", "NXM_OF_ETH_TYPE", "OXM_OF_ETH_TYPE"], hdr(NXM0, 3, 2), hdr(OXM, 5, 2), 2, Hex, Free),
    IpProto = f!("ip_proto", ["nw_proto", "NXM_OF_IP_PROTO", "OXM_OF_IP_PROTO"], hdr(NXM0, 6, 1), hdr(OXM, 10, 1), 1, Int, Ip),
    IpSrc = f!("ip_src", ["nw_src", "NXM_OF_IP_SRC", "OXM_OF_IPV4_SRC"], hdr(NXM0, 7, 4), hdr(OXM, 11, 4), 4, Ipv4, Eth(0x0800)),
    IpDst = f!("ip_dst", ["nw_dst", "NXM_OF_IP_DST", "OXM_OF_IPV4_DST"], hdr(NXM0, 8, 4), hdr(OXM, 12, 4), 4, Ipv4, Eth(0x0800)),
    TcpSrc = f!("tcp_src", ["NXM_OF_TCP_SRC", "OXM_OF_TCP_SRC"], hdr(NXM0, 9, 2), hdr(OXM, 13, 2), 2, Int, Proto(6)),
    TcpDst = f!("tcp_dst", ["NXM_OF_TCP_DST", "OXM_OF_TCP_DST"], hdr(NXM0, 10, 2), hdr(OXM, 14, 2), 2, Int, Proto(6)),
    UdpSrc = f!("udp_src", ["NXM_OF_UDP_SRC", "OXM_OF_UDP_SRC"], hdr(NXM0, 11, 2), hdr(OXM, 15, 2), 2, Int, Proto(17)),
    UdpDst = f!("udp_dst", ["NXM_OF_UDP_DST", "OXM_OF_UDP_DST"], hdr(NXM0, 12, 2), hdr(OXM, 16, 2), 2, Int, Proto(17)),
    SctpSrc = f!("sctp_src", ["OXM_OF_SCTP_SRC"], hdr(OXM, 17, 2), hdr(OXM, 17, 2), 2, Int, Proto(132)),
    SctpDst = f!("sctp_dst", ["OXM_OF_SCTP_DST"], hdr(OXM, 18, 2), hdr(OXM, 18, 2), 2, Int, Proto(132)),
    IcmpType = f!("icmp_type", ["icmpv4_type", "NXM_OF_ICMP_TYPE", "OXM_OF_ICMPV4_TYPE"], hdr(NXM0, 13, 1), hdr(OXM, 19, 1), 1, Int, Proto4(1)),
    IcmpCode = f!("icmp_code", ["icmpv4_code", "NXM_OF_ICMP_CODE", "OXM_OF_ICMPV4_CODE"], hdr(NXM0, 14, 1), hdr(OXM, 20, 1), 1, Int, Proto4(1)),
    ArpOp = f!("arp_op", ["NXM_OF_ARP_OP", "OXM_OF_ARP_OP"], hdr(NXM0, 15, 2), hdr(OXM, 21, 2), 2, Int, Eth(0x0806)),
    ArpSpa = f!("arp_spa", ["NXM_OF_ARP_SPA", "OXM_OF_ARP_SPA"], hdr(NXM0, 16, 4), hdr(OXM, 22, 4), 4, Ipv4, Eth(0x0806)),
    ArpTpa = f!("arp_tpa", ["NXM_OF_ARP_TPA", "OXM_OF_ARP_TPA"], hdr(NXM0, 17, 4), hdr(OXM, 23, 4), 4, Ipv4, Eth(0x0806)),
    ArpSha = f!("arp_sha", ["NXM_NX_ARP_SHA", "OXM_OF_ARP_SHA"], hdr(NXM1, 17, 6), hdr(OXM, 24, 6), 6, Mac, Eth(0x0806)),
    ArpTha = f!("arp_tha", ["NXM_NX_ARP_THA", "OXM_OF_ARP_THA"], hdr(NXM1, 18, 6), hdr(OXM, 25, 6), 6, Mac, Eth(0x0806)),
    Ipv6Src = f!("ipv6_src", ["NXM_NX_IPV6_SRC", "OXM_OF_IPV6_SRC"], hdr(NXM1, 19, 16), hdr(OXM, 26, 16), 16, Ipv6, Eth(0x86dd)),
    Ipv6Dst = f!("ipv6_dst", ["NXM_NX_IPV6_DST", "OXM_OF_IPV6_DST"], hdr(NXM1, 20, 16), hdr(OXM, 27, 16), 16, Ipv6, Eth(0x86dd)),
    Icmpv6Type = f!("icmpv6_type", ["NXM_NX_ICMPV6_TYPE", "OXM_OF_ICMPV6_TYPE"], hdr(NXM1, 21, 1), hdr(OXM, 29, 1), 1, Int, Proto6(58)),
    Icmpv6Code = f!("icmpv6_code", ["NXM_NX_ICMPV6_CODE", "OXM_OF_ICMPV6_CODE"], hdr(NXM1, 22, 1), hdr(OXM, 30, 1), 1, Int, Proto6(58)),
    NdTarget = f!("nd_target", ["NXM_NX_ND_TARGET", "OXM_OF_IPV6_ND_TARGET"], hdr(NXM1, 23, 16), hdr(OXM, 31, 16), 16, Ipv6, Nd),
    NdSll = f!("nd_sll", ["NXM_NX_ND_SLL", "OXM_OF_IPV6_ND_SLL"], hdr(NXM1, 24, 6), hdr(OXM, 32, 6), 6, Mac, Nd),
    NdTll = f!("nd_tll", ["NXM_NX_ND_TLL", "OXM_OF_IPV6_ND_TLL"], hdr(NXM1, 25, 6), hdr(OXM, 33, 6), 6, Mac, Nd),
    NdReserved = f!("nd_reserved", ["ERICSSONOXM_ND_RESERVED"], hdr(ERICSSON, 1, 4), hdr(ERICSSON, 1, 4), 4, Hex, Nd),
    NdOptionsType = f!("nd_options_type", ["ERICSSONOXM_ND_OPTIONS_TYPE"], hdr(ERICSSON, 2, 1), hdr(ERICSSON, 2, 1), 1, Int, Nd),
    TunId = f!("tun_id", ["tunnel_id", "NXM_NX_TUN_ID", "OXM_OF_TUNNEL_ID"], hdr(NXM1, 16, 8), hdr(OXM, 38, 8), 8, Int, Free),
    TunSrc = f!("tun_src", ["NXM_NX_TUN_IPV4_SRC"], hdr(NXM1, 31, 4), hdr(NXM1, 31, 4), 4, Ipv4, Free),
    TunDst = f!("tun_dst", ["NXM_NX_TUN_IPV4_DST"], hdr(NXM1, 32, 4), hdr(NXM1, 32, 4), 4, Ipv4, Free),
    CtState = f!("ct_state", ["NXM_NX_CT_STATE"], hdr(NXM1, 105, 4), hdr(NXM1, 105, 4), 4, Int, Free),
    CtZone = f!("ct_zone", ["NXM_NX_CT_ZONE"], hdr(NXM1, 106, 2), hdr(NXM1, 106, 2), 2, Int, Free),
    CtMark = f!("ct_mark", ["NXM_NX_CT_MARK"], hdr(NXM1, 107, 4), hdr(NXM1, 107, 4), 4, Hex, Free),
    CtLabel = f!("ct_label", ["NXM_NX_CT_LABEL"], hdr(NXM1, 108, 16), hdr(NXM1, 108, 16), 16, Hex, Free),
    Reg0 = reg!(0, "reg0", "NXM_NX_REG0"),
    Reg1 = reg!(1, "reg1", "NXM_NX_REG1"),
    Reg2 = reg!(2, "reg2", "NXM_NX_REG2"),
    Reg3 = reg!(3, "reg3", "NXM_NX_REG3"),
    Reg4 = reg!(4, "reg4", "NXM_NX_REG4"),
    Reg5 = reg!(5, "reg5", "NXM_NX_REG5"),
    Reg6 = reg!(6, "reg6", "NXM_NX_REG6"),
    Reg7 = reg!(7, "reg7", "NXM_NX_REG7"),
    Reg8 = reg!(8, "reg8", "NXM_NX_REG8"),
    Reg9 = reg!(9, "reg9", "NXM_NX_REG9"),
    Reg10 = reg!(10, "reg10", "NXM_NX_REG10"),
    Reg11 = reg!(11, "reg11", "NXM_NX_REG11"),
    Reg12 = reg!(12, "reg12", "NXM_NX_REG12"),
    Reg13 = reg!(13, "reg13", "NXM_NX_REG13"),
    Reg14 = reg!(14, "reg14", "NXM_NX_REG14"),
    Reg15 = reg!(15, "reg15", "NXM_NX_REG15"),
    Xxreg0 = xxreg!(0, "xxreg0", "NXM_NX_XXREG0"),
    Xxreg1 = xxreg!(1, "xxreg1", "NXM_NX_XXREG1"),
    Xxreg2 = xxreg!(2, "xxreg2", "NXM_NX_XXREG2"),
    Xxreg3 = xxreg!(3, "xxreg3", "NXM_NX_XXREG3"),
    Xreg0 = xreg!(0, "xreg0", "OXM_OF_PKT_REG0"),
    Xreg1 = xreg!(1, "xreg1", "OXM_OF_PKT_REG1"),
    Xreg2 = xreg!(2, "xreg2", "OXM_OF_PKT_REG2"),
    Xreg3 = xreg!(3, "xreg3", "OXM_OF_PKT_REG3"),
    Xreg4 = xreg!(4, "xreg4", "OXM_OF_PKT_REG4"),
    Xreg5 = xreg!(5, "xreg5", "OXM_OF_PKT_REG5"),
    Xreg6 = xreg!(6, "xreg6", "OXM_OF_PKT_REG6"),
    Xreg7 = xreg!(7, "xreg7", "OXM_OF_PKT_REG7"),
}

/// A field by any of its names.
pub(crate) fn lookup(name: &str) -> Option<&'static FieldDef> {
    FIELDS
        .iter()
        .find(|f| f.name == name || f.aliases.contains(&name))
}

/// A field by its header (mask bit and length ignored).
pub(crate) fn by_header(h: u32) -> Option<&'static FieldDef> {
    let id = h & 0xffff_fe00;
    FIELDS
        .iter()
        .find(|f| f.oxm & 0xffff_fe00 == id || f.nxm & 0xffff_fe00 == id)
}

/// A field, a bit offset into it and a bit count: `NXM_NX_REG0[0..15]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subfield {
    pub field: &'static FieldDef,
    pub ofs: usize,
    pub nbits: usize,
}

/// Parses `NAME[]`, `NAME[i]`, `NAME[a..b]` or a bare `NAME` (the whole field).
pub(crate) fn parse_subfield(s: &str) -> Result<Subfield, String> {
    let (name, range) = match s.find('[') {
        Some(at) => {
            let r = s[at + 1..]
                .strip_suffix(']')
                .ok_or_else(|| format!("`{s}` lacks a closing `]`"))?;
            (&s[..at], Some(r))
        }
        None => (s, None),
    };
    let field = lookup(name).ok_or_else(|| format!("unknown field `{name}`"))?;
    let width = field.len * 8;
    let (ofs, end) = match range {
        None | Some("") => (0, width - 1),
        Some(r) => match r.split_once("..") {
            Some((a, b)) => (parse_usize(a, s)?, parse_usize(b, s)?),
            None => {
                let i = parse_usize(r, s)?;
                (i, i)
            }
        },
    };
    if ofs > end || end >= width {
        return Err(format!(
            "bit range of `{s}` is outside its {width}-bit field"
        ));
    }
    Ok(Subfield {
        field,
        ofs,
        nbits: end - ofs + 1,
    })
}

fn parse_usize(s: &str, whole: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("bad bit index `{s}` in `{whole}`"))
}

/// An unsigned number in decimal or `0x` hex, up to 128 bits.
pub(crate) fn parse_u128(s: &str) -> Result<u128, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u128::from_str_radix(hex, 16),
        _ => s.parse::<u128>(),
    };
    r.map_err(|_| format!("`{s}` is not a number"))
}

/// A number that must fit `bits` bits.
pub(crate) fn parse_uint(s: &str, bits: usize) -> Result<u128, String> {
    let v = parse_u128(s)?;
    if bits < 128 && v >> bits != 0 {
        return Err(format!("`{s}` does not fit in {bits} bits"));
    }
    Ok(v)
}

/// The low `len` bytes of `v`, big-endian.
pub(crate) fn be_bytes(v: u128, len: usize) -> Vec<u8> {
    v.to_be_bytes()[16 - len..].to_vec()
}

/// A value in the field's own syntax, as `field.len` bytes.
pub(crate) fn parse_value(field: &FieldDef, s: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("`{s}` is not a valid value for {}", field.name);
    match field.kind {
        Kind::Mac if s.contains(':') => parse_mac(s).ok_or_else(bad),
        Kind::Ipv4 if s.contains('.') => {
            Ok(s.parse::<Ipv4Addr>().map_err(|_| bad())?.octets().to_vec())
        }
        Kind::Ipv6 if s.contains(':') => {
            Ok(s.parse::<Ipv6Addr>().map_err(|_| bad())?.octets().to_vec())
        }
        _ => Ok(be_bytes(parse_uint(s, field.len * 8)?, field.len)),
    }
}

/// `value` or `value/mask` (for IP fields also `addr/prefix`). The mask is
/// `None` when it is all ones.
pub(crate) fn parse_masked(
    field: &FieldDef,
    s: &str,
) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let Some((v, m)) = s.split_once('/') else {
        return Ok((parse_value(field, s)?, None));
    };
    let value = parse_value(field, v)?;
    let prefix = match field.kind {
        Kind::Ipv4 => !m.contains('.'),
        Kind::Ipv6 => !m.contains(':'),
        _ => false,
    };
    let mask = if prefix {
        let bits: usize = m
            .parse()
            .map_err(|_| format!("bad prefix length `{m}` in `{s}`"))?;
        let width = field.len * 8;
        if bits > width {
            return Err(format!("prefix `/{m}` is longer than {width} bits"));
        }
        let mut mask = vec![0u8; field.len];
        for i in 0..bits {
            mask[i / 8] |= 0x80 >> (i % 8);
        }
        mask
    } else {
        parse_value(field, m)?
    };
    let value: Vec<u8> = value.iter().zip(&mask).map(|(v, m)| v & m).collect();
    Ok(if mask.iter().all(|b| *b == 0xff) {
        (value, None)
    } else {
        (value, Some(mask))
    })
}

fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    parts
        .iter()
        .map(|p| {
            if p.is_empty() || p.len() > 2 {
                None
            } else {
                u8::from_str_radix(p, 16).ok()
            }
        })
        .collect()
}

impl Field {
    /// The field's row in the codec's table.
    pub(crate) const fn def(self) -> &'static FieldDef {
        &FIELDS[self as usize]
    }

    /// By any of its names (`reg0`, `NXM_NX_REG0`, `dl_src`, …).
    pub fn named(name: &str) -> Option<Field> {
        let def = lookup(name)?;
        let at = FIELDS.iter().position(|f| std::ptr::eq(f, def))?;
        Field::ALL.get(at).copied()
    }

    /// The `ovs-ofctl` name, as `set_field` writes it.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The NXM (or OXM) name, as subfields (`move`, `load`, `learn`, `ct`'s
    /// zone) write it: `NXM_NX_REG0`.
    pub fn nxm_name(self) -> &'static str {
        let a = self.def().aliases;
        a.iter()
            .find(|n| n.starts_with("NXM_"))
            .or_else(|| {
                a.iter()
                    .find(|n| n.starts_with("OXM_") || n.starts_with("ERICSSON"))
            })
            .copied()
            .unwrap_or(self.def().name)
    }

    /// The name a match writes: `ovs-ofctl`'s protocol-independent spellings
    /// (`dl_src`, `nw_dst`, `tp_dst`, `icmp_type`) where it has one.
    pub fn match_name(self) -> &'static str {
        match self {
            Field::InPortOxm => "in_port",
            Field::EthSrc => "dl_src",
            Field::EthDst => "dl_dst",
            Field::IpProto => "nw_proto",
            Field::IpSrc => "nw_src",
            Field::IpDst => "nw_dst",
            Field::TcpSrc | Field::UdpSrc | Field::SctpSrc => "tp_src",
            Field::TcpDst | Field::UdpDst | Field::SctpDst => "tp_dst",
            Field::IcmpType | Field::Icmpv6Type => "icmp_type",
            Field::IcmpCode | Field::Icmpv6Code => "icmp_code",
            f => f.name(),
        }
    }

    /// Width in bits.
    pub const fn bits(self) -> u32 {
        self.def().len as u32 * 8
    }

    /// `reg0` … `reg15`.
    pub const fn reg(n: u8) -> Field {
        match n {
            0 => Field::Reg0,
            1 => Field::Reg1,
            2 => Field::Reg2,
            3 => Field::Reg3,
            4 => Field::Reg4,
            5 => Field::Reg5,
            6 => Field::Reg6,
            7 => Field::Reg7,
            8 => Field::Reg8,
            9 => Field::Reg9,
            10 => Field::Reg10,
            11 => Field::Reg11,
            12 => Field::Reg12,
            13 => Field::Reg13,
            14 => Field::Reg14,
            15 => Field::Reg15,
            _ => panic!("there are 16 registers"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_its_own_row_and_found_by_its_names() {
        assert_eq!(Field::ALL.len(), FIELDS.len());
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(Field::named(f.name()), Some(*f), "{}", f.name());
            assert_eq!(Field::named(f.nxm_name()), Some(*f), "{}", f.nxm_name());
        }
        assert_eq!(Field::reg(3).nxm_name(), "NXM_NX_REG3");
        assert_eq!(Field::Xxreg3.nxm_name(), "NXM_NX_XXREG3");
        assert_eq!(Field::SctpDst.nxm_name(), "OXM_OF_SCTP_DST");
        assert_eq!(Field::EthSrc.nxm_name(), "NXM_OF_ETH_SRC");
    }
}
