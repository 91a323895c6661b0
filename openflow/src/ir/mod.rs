//! The typed flow IR: OpenFlow 1.5 matches, actions and select-group hash
//! fields as values, not text.
//!
//! A caller builds these; the codec encodes them straight to OpenFlow
//! messages ([`crate::codec`]), and anything that shows a flow prints them.
//! [`Display`] writes the canonical `ovs-ofctl` syntax, the text
//! `ovs-ofctl dump-flows` would show for the same flow. That text parses back
//! ([`FromStr`] of [`Match`] and [`Actions`], [`HashField::parse`]) into the
//! value that printed it, for text entry points and tests.
//!
//! The IR knows OpenFlow and OVS's Nicira extensions, nothing about any
//! pipeline: a caller declares its registers and tables as [`Field`]s and
//! [`Subfield`]s of it.
//!
//! [`Display`]: std::fmt::Display
//! [`FromStr`]: std::str::FromStr

pub mod fields;
mod parse;

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use fields::Field;
use fields::Kind;
pub use parse::split_top;

/// A value that can be matched or loaded: its bits, right-aligned.
pub trait Value {
    /// The value's bits, right-aligned (a MAC in the low 48 bits).
    fn bits(self) -> u128;
}

macro_rules! value_of_uint {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn bits(self) -> u128 {
                u128::from(self)
            }
        }
    )*};
}
value_of_uint!(u8, u16, u32, u64, u128);

impl Value for Ipv4Addr {
    fn bits(self) -> u128 {
        u128::from(u32::from(self))
    }
}

impl Value for Ipv6Addr {
    fn bits(self) -> u128 {
        u128::from(self)
    }
}

impl Value for IpAddr {
    fn bits(self) -> u128 {
        match self {
            IpAddr::V4(a) => a.bits(),
            IpAddr::V6(a) => a.bits(),
        }
    }
}

/// A MAC address as a value: `Mac::parse` for constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Value for Mac {
    fn bits(self) -> u128 {
        self.0.iter().fold(0, |v, b| (v << 8) | u128::from(*b))
    }
}

/// `02:d9:00:00:00:01`: lowercase, colon-separated, as OVS prints it.
impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(':')?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The low `bits` bits set.
pub(crate) fn ones(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// Writes `v` as `field`'s text: a MAC, an address, decimal or `0x` hex.
fn write_value(out: &mut impl fmt::Write, field: Field, v: u128) -> fmt::Result {
    match field.def().kind {
        Kind::Mac => {
            let b = v.to_be_bytes();
            write!(out, "{}", Mac([b[10], b[11], b[12], b[13], b[14], b[15]]))
        }
        Kind::Ipv4 => write!(out, "{}", Ipv4Addr::from(v as u32)),
        Kind::Ipv6 => write!(out, "{}", Ipv6Addr::from(v)),
        Kind::Int => write!(out, "{v}"),
        Kind::Hex => write!(out, "{v:#x}"),
    }
}

/// `value` or `value/mask`; an address under a prefix mask as `addr/len`.
fn write_masked(out: &mut impl fmt::Write, field: Field, v: u128, mask: u128) -> fmt::Result {
    write_value(out, field, v)?;
    let width = field.bits();
    let full = ones(width);
    if mask == full {
        return Ok(());
    }
    let lead = (mask << (128 - width)).leading_ones();
    let is_prefix = mask == full & !ones(width - lead);
    if is_prefix && matches!(field.def().kind, Kind::Ipv4 | Kind::Ipv6) {
        return write!(out, "/{lead}");
    }
    out.write_char('/')?;
    write_value(out, field, mask)
}

/// Part of a field: `NXM_NX_REG0[0..15]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subfield {
    /// The field.
    pub field: Field,
    /// The first bit, counted from the least significant.
    pub ofs: u8,
    /// How many bits.
    pub nbits: u8,
}

impl Subfield {
    /// The whole field: `NXM_NX_REG0[]`.
    pub const fn whole(field: Field) -> Subfield {
        Subfield {
            field,
            ofs: 0,
            nbits: field.bits() as u8,
        }
    }

    /// Bits `from..=to`: `NXM_NX_REG0[0..15]` is `bits(reg0, 0, 15)`.
    pub const fn bits(field: Field, from: u8, to: u8) -> Subfield {
        Subfield {
            field,
            ofs: from,
            nbits: to - from + 1,
        }
    }

    /// How many bits.
    pub fn width(&self) -> u32 {
        u32::from(self.nbits)
    }

    /// Whether it is all of its field.
    pub fn is_whole(&self) -> bool {
        self.ofs == 0 && self.width() == self.field.bits()
    }
}

impl fmt::Display for Subfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.field.nxm_name();
        if self.is_whole() {
            write!(f, "{name}[]")
        } else if self.width() == 1 {
            write!(f, "{name}[{}]", self.ofs)
        } else {
            let end = u32::from(self.ofs) + self.width() - 1;
            write!(f, "{name}[{}..{end}]", self.ofs)
        }
    }
}

/// The protocol keywords of a match: an Ethernet type and maybe an IP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// `ip`: IPv4.
    Ip,
    /// `ipv6`.
    Ipv6,
    /// `arp`.
    Arp,
    /// `icmp`: ICMP over IPv4.
    Icmp,
    /// `tcp`: TCP over IPv4.
    Tcp,
    /// `udp`: UDP over IPv4.
    Udp,
    /// `sctp`: SCTP over IPv4.
    Sctp,
    /// `icmp6`: ICMPv6.
    Icmp6,
    /// `tcp6`: TCP over IPv6.
    Tcp6,
    /// `udp6`: UDP over IPv6.
    Udp6,
    /// `sctp6`: SCTP over IPv6.
    Sctp6,
}

impl Proto {
    /// The keyword a match writes: `ip`, `tcp6`, ….
    pub fn keyword(self) -> &'static str {
        match self {
            Proto::Ip => "ip",
            Proto::Ipv6 => "ipv6",
            Proto::Arp => "arp",
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp6 => "icmp6",
            Proto::Tcp6 => "tcp6",
            Proto::Udp6 => "udp6",
            Proto::Sctp6 => "sctp6",
        }
    }

    /// The Ethernet type and IP protocol it stands for.
    pub fn eth_and_ip_proto(self) -> (u16, Option<u8>) {
        match self {
            Proto::Ip => (0x0800, None),
            Proto::Ipv6 => (0x86dd, None),
            Proto::Arp => (0x0806, None),
            Proto::Icmp => (0x0800, Some(1)),
            Proto::Tcp => (0x0800, Some(6)),
            Proto::Udp => (0x0800, Some(17)),
            Proto::Sctp => (0x0800, Some(132)),
            Proto::Icmp6 => (0x86dd, Some(58)),
            Proto::Tcp6 => (0x86dd, Some(6)),
            Proto::Udp6 => (0x86dd, Some(17)),
            Proto::Sctp6 => (0x86dd, Some(132)),
        }
    }
}

/// `ct_state` flags, in OVS's bit order.
pub mod ct {
    /// `new`: the start of a new connection.
    pub const NEW: u8 = 0x01;
    /// `est`: part of an established connection.
    pub const EST: u8 = 0x02;
    /// `rel`: related to an established connection.
    pub const REL: u8 = 0x04;
    /// `rpl`: in the reply direction.
    pub const RPL: u8 = 0x08;
    /// `inv`: invalid.
    pub const INV: u8 = 0x10;
    /// `trk`: tracked (gone through `ct`).
    pub const TRK: u8 = 0x20;
    /// `snat`: source-NATed.
    pub const SNAT: u8 = 0x40;
    /// `dnat`: destination-NATed.
    pub const DNAT: u8 = 0x80;
    pub(crate) const NAMES: [(u8, &str); 8] = [
        (NEW, "new"),
        (EST, "est"),
        (REL, "rel"),
        (RPL, "rpl"),
        (INV, "inv"),
        (TRK, "trk"),
        (SNAT, "snat"),
        (DNAT, "dnat"),
    ];
}

/// One element of a match, in the order it was written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchField {
    /// `ip`, `tcp6`, `arp`, …
    Proto(Proto),
    /// `ct_state=+new+trk`: the flags in `set` are on, those in `mask` but not
    /// in `set` off.
    CtState {
        /// The flags that must be on.
        set: u8,
        /// The flags matched at all.
        mask: u8,
    },
    /// A field of up to 64 bits under a mask (all ones: exact).
    Value {
        /// The field, of up to 64 bits.
        field: Field,
        /// The value, under the mask.
        value: u64,
        /// The mask.
        mask: u64,
    },
    /// A wider field (IPv6 addresses, `xxreg`s, `ct_label`).
    Wide(Box<(Field, u128, u128)>),
}

impl MatchField {
    /// The field, value and mask; `None` for protocol keywords and `ct_state`
    /// flags.
    pub fn value(&self) -> Option<(Field, u128, u128)> {
        match self {
            MatchField::Value { field, value, mask } => {
                Some((*field, u128::from(*value), u128::from(*mask)))
            }
            MatchField::Wide(w) => Some(**w),
            _ => None,
        }
    }

    /// `field=value`.
    pub fn exact(field: Field, value: impl Value) -> MatchField {
        MatchField::new(field, value.bits(), u128::MAX)
    }

    /// `field=value/mask`.
    pub fn masked(field: Field, value: impl Value, mask: impl Value) -> MatchField {
        MatchField::new(field, value.bits(), mask.bits())
    }

    fn new(field: Field, value: u128, mask: u128) -> MatchField {
        let full = ones(field.bits());
        let (value, mask) = (value & mask & full, mask & full);
        if field.bits() <= 64 {
            MatchField::Value {
                field,
                value: value as u64,
                mask: mask as u64,
            }
        } else {
            MatchField::Wide(Box::new((field, value, mask)))
        }
    }
}

impl fmt::Display for MatchField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchField::Proto(p) => f.write_str(p.keyword()),
            MatchField::CtState { set, mask } => {
                f.write_str("ct_state=")?;
                for (bit, name) in ct::NAMES {
                    if mask & bit != 0 {
                        f.write_char(if set & bit != 0 { '+' } else { '-' })?;
                        f.write_str(name)?;
                    }
                }
                Ok(())
            }
            _ => {
                let (field, value, mask) = self.value().expect("a field");
                write!(f, "{}=", field.match_name())?;
                write_masked(f, field, value, mask)
            }
        }
    }
}

/// A match: fields in the order they were added. The empty match is every
/// packet (printed empty; the golden files write `*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Match(Vec<MatchField>);

impl Match {
    /// The empty match: every packet.
    pub fn new() -> Self {
        Match(Vec::new())
    }

    /// Its elements, in the order they were added.
    pub fn fields(&self) -> &[MatchField] {
        &self.0
    }

    /// Whether it matches every packet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops spare capacity: for matches kept in the desired state.
    pub fn shrink(mut self) -> Self {
        self.0.shrink_to_fit();
        self
    }

    /// This match and `m`.
    pub fn push(mut self, m: MatchField) -> Self {
        self.0.push(m);
        self
    }

    /// A protocol keyword: `ip`, `tcp6`, ….
    pub fn proto(self, p: Proto) -> Self {
        self.push(MatchField::Proto(p))
    }

    /// `ct_state`: `set` on, `clear` off, the rest not matched.
    pub fn ct_state(self, set: u8, clear: u8) -> Self {
        self.push(MatchField::CtState {
            set,
            mask: set | clear,
        })
    }

    /// `in_port=N`.
    pub fn in_port(self, ofport: u32) -> Self {
        self.exact(Field::InPortOxm, ofport)
    }

    /// `field=value`.
    pub fn exact(self, field: Field, value: impl Value) -> Self {
        self.push(MatchField::new(field, value.bits(), u128::MAX))
    }

    /// `field=value/mask`.
    pub fn masked(self, field: Field, value: impl Value, mask: impl Value) -> Self {
        self.push(MatchField::new(field, value.bits(), mask.bits()))
    }

    /// `field=addr/len`.
    pub fn prefix(self, field: Field, addr: impl Value, len: u32) -> Self {
        let w = field.bits();
        let mask = ones(w) & !ones(w - len.min(w));
        self.push(MatchField::new(field, addr.bits(), mask))
    }

    /// A register (or any field) equal to `value`: [`Match::exact`].
    pub fn reg(self, reg: Field, value: u32) -> Self {
        self.exact(reg, value)
    }

    /// A register under a mask: [`Match::masked`].
    pub fn reg_masked(self, reg: Field, value: u32, mask: u32) -> Self {
        self.masked(reg, value, mask)
    }

    /// This match followed by every field of `other`.
    pub fn and(mut self, other: &Match) -> Self {
        self.0.extend(other.0.iter().cloned());
        self
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// `ct`'s zone: a number or a subfield (`zone=NXM_NX_REG0[0..15]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtZone {
    /// `zone=5`.
    Imm(u16),
    /// `zone=NXM_NX_REG0[0..15]`: the zone in 16 bits of a field.
    Field(Subfield),
}

/// Which addresses `nat` rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatKind {
    /// Plain `nat`: apply the NAT the connection already has.
    Existing,
    /// `nat(src=…)`: source NAT.
    Src,
    /// `nat(dst=…)`: destination NAT.
    Dst,
}

/// `nat`, `nat(src=addr)`, `nat(dst=addr:port)`, with ranges and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nat {
    /// Which addresses.
    pub kind: NatKind,
    /// The first address and maybe the last of a range (same family).
    pub addrs: Option<(IpAddr, Option<IpAddr>)>,
    /// The first port and maybe the last of a range.
    pub ports: Option<(u16, Option<u16>)>,
    /// `NX_NAT_F_PERSISTENT` (4), `_PROTO_HASH` (8), `_PROTO_RANDOM` (16).
    pub flags: u16,
}

impl Nat {
    /// Plain `nat`.
    pub const EXISTING: Nat = Nat {
        kind: NatKind::Existing,
        addrs: None,
        ports: None,
        flags: 0,
    };

    /// `nat(src=addr)`.
    pub fn src(addr: IpAddr) -> Nat {
        Nat {
            kind: NatKind::Src,
            addrs: Some((addr, None)),
            ..Nat::EXISTING
        }
    }

    /// `nat(dst=addr:port)`.
    pub fn dst(addr: IpAddr, port: u16) -> Nat {
        Nat {
            kind: NatKind::Dst,
            addrs: Some((addr, None)),
            ports: Some((port, None)),
            ..Nat::EXISTING
        }
    }
}

impl fmt::Display for Nat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.kind {
            NatKind::Existing if self.flags == 0 => return f.write_str("nat"),
            NatKind::Existing => None,
            NatKind::Src => Some("src"),
            NatKind::Dst => Some("dst"),
        };
        f.write_str("nat(")?;
        let mut sep = "";
        if let Some(dir) = dir {
            write!(f, "{dir}")?;
            sep = ",";
            if let Some((lo, hi)) = self.addrs {
                let v6 = lo.is_ipv6() && self.ports.is_some();
                let ip = |f: &mut fmt::Formatter<'_>, a: IpAddr| match a {
                    IpAddr::V6(a) if v6 => write!(f, "[{a}]"),
                    a => write!(f, "{a}"),
                };
                f.write_char('=')?;
                ip(f, lo)?;
                if let Some(hi) = hi {
                    f.write_char('-')?;
                    ip(f, hi)?;
                }
                if let Some((plo, phi)) = self.ports {
                    write!(f, ":{plo}")?;
                    if let Some(phi) = phi {
                        write!(f, "-{phi}")?;
                    }
                }
            }
        }
        for (bit, name) in [(4, "persistent"), (8, "hash"), (16, "random")] {
            if self.flags & bit != 0 {
                write!(f, "{sep}{name}")?;
                sep = ",";
            }
        }
        f.write_char(')')
    }
}

/// `ct(commit,table=N,zone=…,nat…,exec(…))`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ct {
    /// `commit`: commit the connection to the connection tracker.
    pub commit: bool,
    /// `force`: commit anew a connection tracked in the other direction.
    pub force: bool,
    /// Where the packet goes on, tracked; `None`: nowhere (`ct` alone).
    pub table: Option<u8>,
    /// The connection-tracking zone.
    pub zone: CtZone,
    /// NAT to apply.
    pub nat: Option<Nat>,
    /// Actions on the connection when committed (set `ct_mark`, `ct_label`).
    pub exec: Vec<Action>,
}

impl fmt::Display for Ct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ct(")?;
        let mut sep = "";
        let mut part = |f: &mut fmt::Formatter<'_>, a: fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{a}");
            sep = ",";
            r
        };
        if self.commit {
            part(f, format_args!("commit"))?;
        }
        if self.force {
            part(f, format_args!("force"))?;
        }
        if let Some(t) = self.table {
            part(f, format_args!("table={t}"))?;
        }
        match self.zone {
            CtZone::Imm(z) => part(f, format_args!("zone={z}"))?,
            CtZone::Field(sf) => part(f, format_args!("zone={sf}"))?,
        }
        if let Some(n) = &self.nat {
            part(f, format_args!("{n}"))?;
        }
        if !self.exec.is_empty() {
            part(f, format_args!("exec({})", List(&self.exec)))?;
        }
        f.write_char(')')
    }
}

/// One flow-mod spec of a `learn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LearnSpec {
    /// `NXM_OF_IP_SRC[]`: match the field on the value it has in this packet.
    Match(Subfield),
    /// `eth_type=0x800`: match a field on a constant.
    MatchValue {
        /// The field.
        field: Field,
        /// The constant.
        value: u64,
    },
    /// `load:NXM_NX_REG3[]->NXM_NX_REG3[]`: load the packet's value.
    Load {
        /// Where the value comes from.
        src: Subfield,
        /// Where it goes in the learned flow's actions.
        dst: Subfield,
    },
    /// `load:0x1->NXM_NX_REG2[0]`: load a constant.
    LoadValue {
        /// The constant.
        value: u64,
        /// Where it goes.
        dst: Subfield,
    },
    /// `output:NXM_NX_REG1[]`: output to the port in the field.
    Output(Subfield),
    /// `NXM_OF_IP_DST[]=NXM_OF_IP_SRC[]`: match `dst` on the value `src` has
    /// in this packet (same width).
    MatchFrom {
        /// The learned flow's field.
        dst: Subfield,
        /// This packet's field.
        src: Subfield,
    },
    /// `NXM_NX_REG0[0..3]=0x5`: match part of a field, or a field wider than
    /// 64 bits, on a constant.
    MatchBits {
        /// The learned flow's (sub)field.
        dst: Subfield,
        /// The constant.
        value: u128,
    },
    /// `load:0x…->NXM_NX_XXREG0[]`: load a constant wider than 64 bits.
    LoadWide {
        /// The constant.
        value: u128,
        /// Where it goes.
        dst: Subfield,
    },
}

impl fmt::Display for LearnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LearnSpec::Match(sf) => write!(f, "{sf}"),
            LearnSpec::MatchValue { field, value } => {
                write!(f, "{}=", field.match_name())?;
                write_value(f, *field, u128::from(*value))
            }
            LearnSpec::Load { src, dst } => write!(f, "load:{src}->{dst}"),
            LearnSpec::LoadValue { value, dst } => write!(f, "load:{}->{dst}", LoadValue(*value)),
            LearnSpec::Output(sf) => write!(f, "output:{sf}"),
            LearnSpec::MatchFrom { dst, src } => write!(f, "{dst}={src}"),
            LearnSpec::MatchBits { dst, value } => write!(f, "{dst}={}", WideValue(*value)),
            LearnSpec::LoadWide { value, dst } => write!(f, "load:{}->{dst}", WideValue(*value)),
        }
    }
}

/// `learn(table=…,idle_timeout=…,priority=…,cookie=…,specs…)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Learn {
    /// The table the learned flow goes into.
    pub table: u8,
    /// The learned flow's idle timeout, in seconds (0: none).
    pub idle_timeout: u16,
    /// The learned flow's priority.
    pub priority: u16,
    /// The learned flow's cookie.
    pub cookie: u64,
    /// What the learned flow matches and does.
    pub specs: Vec<LearnSpec>,
    /// The rest of `NXAST_LEARN`, zero unless set: `hard_timeout`,
    /// `fin_idle_timeout`, `fin_hard_timeout`, and the flags
    /// (`send_flow_rem` 1, `delete_learned` 2).
    pub hard_timeout: u16,
    /// `fin_idle_timeout`: the idle timeout once a TCP FIN was seen.
    pub fin_idle_timeout: u16,
    /// `fin_hard_timeout`: the hard timeout once a TCP FIN was seen.
    pub fin_hard_timeout: u16,
    /// `send_flow_rem` (1), `delete_learned` (2).
    pub flags: u16,
}

impl fmt::Display for Learn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "learn(table={},idle_timeout={},priority={},cookie={:#x}",
            self.table, self.idle_timeout, self.priority, self.cookie
        )?;
        for (v, name) in [
            (self.hard_timeout, "hard_timeout"),
            (self.fin_idle_timeout, "fin_idle_timeout"),
            (self.fin_hard_timeout, "fin_hard_timeout"),
        ] {
            if v != 0 {
                write!(f, ",{name}={v}")?;
            }
        }
        for (bit, name) in [(1, "send_flow_rem"), (2, "delete_learned")] {
            if self.flags & bit != 0 {
                write!(f, ",{name}")?;
            }
        }
        for s in &self.specs {
            write!(f, ",{s}")?;
        }
        f.write_char(')')
    }
}

/// A `load` constant: `0`, else `0x` hex.
struct LoadValue(u64);

impl fmt::Display for LoadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_char('0')
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

/// A constant of up to 128 bits as `load` writes it: `0`, else `0x` hex.
struct WideValue(u128);

impl fmt::Display for WideValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_char('0')
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

/// One action.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// `output:N`.
    Output(u32),
    /// `in_port`: out of the port the packet came in on.
    InPort,
    /// `dec_ttl`: decrement the IP TTL or hop limit.
    DecTtl,
    /// `group:N`.
    Group(u32),
    /// `resubmit(PORT,TABLE)`: `None` is the packet's in_port and this table
    /// (`resubmit(,45)`).
    Resubmit {
        /// The port the packet is taken to come in on.
        port: Option<u16>,
        /// The table.
        table: Option<u8>,
    },
    /// `goto_table:N` (an instruction: last).
    GotoTable(u8),
    /// `set_field:value->field` of up to 64 bits.
    SetField {
        /// The field.
        field: Field,
        /// The value.
        value: u64,
    },
    /// `set_field` of a wider field.
    SetWide(Box<(Field, u128)>),
    /// `set_field:value/mask->field`.
    SetMasked(Box<(Field, u128, u128)>),
    /// `load:value->dst`.
    Load {
        /// The value.
        value: u64,
        /// Where it goes.
        dst: Subfield,
    },
    /// `move:src->dst`.
    Move {
        /// Where the bits come from.
        src: Subfield,
        /// Where they go (as wide as `src`).
        dst: Subfield,
    },
    /// `push:src`: onto the stack.
    Push(Subfield),
    /// `pop:dst`: off the stack.
    Pop(Subfield),
    /// `ct(…)`: connection tracking.
    Ct(Box<Ct>),
    /// `learn(…)`: add a flow from this packet.
    Learn(Box<Learn>),
}

impl Action {
    /// `set_field:value->field`.
    pub fn set_field(field: Field, value: impl Value) -> Action {
        let v = value.bits() & ones(field.bits());
        if field.bits() <= 64 {
            Action::SetField {
                field,
                value: v as u64,
            }
        } else {
            Action::SetWide(Box::new((field, v)))
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output(p) => write!(f, "output:{p}"),
            Action::InPort => f.write_str("in_port"),
            Action::DecTtl => f.write_str("dec_ttl"),
            Action::Group(g) => write!(f, "group:{g}"),
            Action::Resubmit { port, table } => {
                f.write_str("resubmit(")?;
                if let Some(p) = port {
                    write!(f, "{p}")?;
                }
                f.write_char(',')?;
                if let Some(t) = table {
                    write!(f, "{t}")?;
                }
                f.write_char(')')
            }
            Action::GotoTable(t) => write!(f, "goto_table:{t}"),
            Action::SetField { field, value } => {
                f.write_str("set_field:")?;
                write_value(f, *field, u128::from(*value))?;
                write!(f, "->{}", field.name())
            }
            Action::SetWide(w) => {
                f.write_str("set_field:")?;
                write_value(f, w.0, w.1)?;
                write!(f, "->{}", w.0.name())
            }
            Action::SetMasked(w) => {
                f.write_str("set_field:")?;
                write_value(f, w.0, w.1)?;
                f.write_char('/')?;
                write_value(f, w.0, w.2)?;
                write!(f, "->{}", w.0.name())
            }
            Action::Load { value, dst } => write!(f, "load:{}->{dst}", LoadValue(*value)),
            Action::Move { src, dst } => write!(f, "move:{src}->{dst}"),
            Action::Push(sf) => write!(f, "push:{sf}"),
            Action::Pop(sf) => write!(f, "pop:{sf}"),
            Action::Ct(ct) => ct.fmt(f),
            Action::Learn(l) => l.fmt(f),
        }
    }
}

/// Actions joined by commas.
struct List<'a>(&'a [Action]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// An action list; empty is `drop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actions(Vec<Action>);

impl Actions {
    /// No actions yet ([`Actions::drop`]).
    pub fn new() -> Self {
        Actions(Vec::new())
    }

    /// No actions: the packet is dropped.
    pub fn drop() -> Self {
        Actions(Vec::new())
    }

    /// The actions, in order.
    pub fn list(&self) -> &[Action] {
        &self.0
    }

    /// Drops spare capacity: for action lists kept in the desired state.
    pub fn shrink(mut self) -> Self {
        self.0.shrink_to_fit();
        self
    }

    /// These actions, then `a`.
    pub fn then(mut self, a: Action) -> Self {
        self.0.push(a);
        self
    }

    /// These actions, then all of `a`.
    pub fn then_all(mut self, a: impl IntoIterator<Item = Action>) -> Self {
        self.0.extend(a);
        self
    }

    /// Then `set_field:value->field`.
    pub fn set_field(self, field: Field, value: impl Value) -> Self {
        self.then(Action::set_field(field, value))
    }

    /// Then `set_field:value->reg`.
    pub fn set_reg(self, reg: Field, value: u32) -> Self {
        self.set_field(reg, value)
    }

    /// Then `load:value->dst`.
    pub fn load(self, value: u64, dst: Subfield) -> Self {
        self.then(Action::Load { value, dst })
    }

    /// Then `move:src->dst`.
    pub fn move_(self, src: Subfield, dst: Subfield) -> Self {
        self.then(Action::Move { src, dst })
    }

    /// Then `goto_table:N` (which must be last).
    pub fn goto(self, table: u8) -> Self {
        self.then(Action::GotoTable(table))
    }

    /// Then `resubmit(,N)`.
    pub fn resubmit(self, table: u8) -> Self {
        self.then(Action::Resubmit {
            port: None,
            table: Some(table),
        })
    }

    /// Then `group:N`.
    pub fn group(self, id: u32) -> Self {
        self.then(Action::Group(id))
    }

    /// Then `output:N`.
    pub fn output(self, ofport: u32) -> Self {
        self.then(Action::Output(ofport))
    }

    /// Then `dec_ttl`.
    pub fn dec_ttl(self) -> Self {
        self.then(Action::DecTtl)
    }

    /// Then `in_port`.
    pub fn in_port(self) -> Self {
        self.then(Action::InPort)
    }

    /// Then `ct(…)`.
    pub fn ct(self, ct: Ct) -> Self {
        self.then(Action::Ct(Box::new(ct)))
    }

    /// Then `learn(…)`.
    pub fn learn(self, l: Learn) -> Self {
        self.then(Action::Learn(Box::new(l)))
    }

    /// The cookie of the entries a `learn` in these actions makes.
    pub fn learned_cookie(&self) -> Option<u64> {
        self.0.iter().find_map(|a| match a {
            Action::Learn(l) => Some(l.cookie),
            _ => None,
        })
    }

    /// The groups these actions send to.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().filter_map(|a| match a {
            Action::Group(g) => Some(*g),
            _ => None,
        })
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("drop")
        } else {
            List(&self.0).fmt(f)
        }
    }
}

/// A field a select group hashes on, maybe under a mask (`tcp_src=63`: the
/// mask in decimal, as OVS prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashField {
    /// The field.
    pub field: Field,
    /// The bits of it hashed; `None`: all of them.
    pub mask: Option<u64>,
}

impl HashField {
    /// All of `field`.
    pub const fn whole(field: Field) -> HashField {
        HashField { field, mask: None }
    }

    /// The bits of `field` under `mask`.
    pub const fn masked(field: Field, mask: u64) -> HashField {
        HashField {
            field,
            mask: Some(mask),
        }
    }
}

impl fmt::Display for HashField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field.name())?;
        match self.mask {
            Some(m) => write!(f, "={m}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod tests;
