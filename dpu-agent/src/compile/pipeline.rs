//! The pipeline registry: every table, register, zone rule and cookie field the
//! compiler uses is named here and nowhere else. `docs/pipeline.md` describes the
//! same registry and is kept in step with it (a unit test checks the table list).

use std::fmt;

use ::openflow::ir::Mac;

/// One OpenFlow table of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Table {
    pub id: u8,
    pub name: &'static str,
    pub stage: &'static str,
    /// What happens to a packet no flow in the table matches.
    pub miss: Miss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Miss {
    Drop,
    /// Used by tables reached only through `resubmit`: a miss returns to the caller.
    Return,
    /// A miss goes on to the table with this id.
    Goto(u8),
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

pub const CLASSIFY: Table = Table {
    id: 0,
    name: "Classify",
    stage: "classify",
    miss: Miss::Drop,
};
pub const SPOOF_GUARD: Table = Table {
    id: 10,
    name: "SpoofGuard",
    stage: "spoof guard",
    miss: Miss::Drop,
};
pub const ARP_RESPONDER: Table = Table {
    id: 20,
    name: "ArpResponder",
    stage: "ARP responder",
    miss: Miss::Drop,
};
pub const ND_ADVERTISE: Table = Table {
    id: 21,
    name: "NdAdvertise",
    stage: "ARP responder",
    miss: Miss::Drop,
};
pub const CONNTRACK: Table = Table {
    id: 30,
    name: "Conntrack",
    stage: "conntrack",
    miss: Miss::Drop,
};
pub const SERVICE_LB: Table = Table {
    id: 40,
    name: "ServiceLb",
    stage: "service LB",
    miss: Miss::Drop,
};
pub const SESSION_AFFINITY: Table = Table {
    id: 41,
    name: "SessionAffinity",
    stage: "service LB",
    miss: Miss::Return,
};
pub const SERVICE_SELECT: Table = Table {
    id: 42,
    name: "ServiceSelect",
    stage: "service LB",
    miss: Miss::Return,
};
pub const AFFINITY_LEARN: Table = Table {
    id: 43,
    name: "AffinityLearn",
    stage: "service LB",
    miss: Miss::Return,
};
pub const ENDPOINT_DNAT: Table = Table {
    id: 45,
    name: "EndpointDnat",
    stage: "service LB",
    miss: Miss::Drop,
};
pub const GATEWAY_SNAT: Table = Table {
    id: 46,
    name: "GatewaySnat",
    stage: "service gateway",
    miss: Miss::Drop,
};
pub const RETURN_PATH: Table = Table {
    id: 48,
    name: "ReturnPath",
    stage: "return path",
    miss: Miss::Goto(L3_FORWARD.id),
};
pub const L3_FORWARD: Table = Table {
    id: 50,
    name: "L3Forward",
    stage: "L3 forward",
    miss: Miss::Drop,
};

/// All tables in pipeline order.
pub const TABLES: [Table; 13] = [
    CLASSIFY,
    SPOOF_GUARD,
    ARP_RESPONDER,
    ND_ADVERTISE,
    CONNTRACK,
    SERVICE_LB,
    SESSION_AFFINITY,
    SERVICE_SELECT,
    AFFINITY_LEARN,
    ENDPOINT_DNAT,
    GATEWAY_SNAT,
    RETURN_PATH,
    L3_FORWARD,
];

pub fn table_by_id(id: u8) -> Option<Table> {
    TABLES.iter().copied().find(|t| t.id == id)
}

/// Registers. The VPC id doubles as the conntrack zone, so it is 16 bits wide.
///
/// Each is declared once, as a [`Field`]; its names (`reg0`,
/// `NXM_NX_REG0`) come from the field table.
pub mod reg {
    use ::openflow::ir::{Field, Subfield};

    /// VPC id (= conntrack zone) of the packet, set by Classify.
    pub const VPC: Field = Field::Reg0;
    /// The VPC id as `ct`'s zone: its low 16 bits.
    pub const VPC_ZONE: Subfield = Subfield::bits(VPC, 0, 15);
    /// Flags. Bit 0: a session-affinity entry chose the endpoint.
    pub const FLAGS: Field = Field::Reg2;
    pub const FLAG_AFFINITY_HIT: u32 = 0x1;
    /// Bit 1: the packet came from outside the VPC (the host's PF), for
    /// `externalTrafficPolicy: Local`.
    pub const FLAG_EXTERNAL: u32 = 0x2;
    /// The chosen endpoint's IPv4 address and port, set by a group bucket or an
    /// affinity entry and consumed by EndpointDnat.
    pub const EP_IP: Field = Field::Reg3;
    pub const EP_PORT: Field = Field::Reg4;
    /// The chosen endpoint's IPv6 address (128 bits: reg8..reg11).
    pub const EP_IP6: Field = Field::Xxreg2;
    /// `reg0` of traffic from the host's PF representor before it enters a VPC:
    /// above 16 bits, so it is never a VPC id (zones are 16 bits).
    pub const HOST_CONTEXT: u32 = 0x1_0000;
    /// `reg0` of ARP from the uplink (EIPs, bare-metal servers), likewise never a
    /// VPC id.
    pub const UPLINK_CONTEXT: u32 = 0x2_0000;
    /// Where the packet came in from, set by Classify and recorded in the
    /// connection's `ct_mark` when conntrack commits it (see [`super::mark`]).
    pub const ORIGIN: Field = Field::Reg5;
    /// Origins: a workload or the host (0, routed back), another DPU's tunnel, the
    /// uplink, and the service gateway (set in the backend VPC's zone).
    pub const ORIGIN_TUNNEL: u32 = 1;
    pub const ORIGIN_UPLINK: u32 = 2;
    pub const ORIGIN_GATEWAY: u32 = 3;
    /// The conntrack zone (VPC id) of the backend a service gateway chose, set by
    /// its bucket and kept in the gateway zone's `ct_mark`.
    pub const TARGET_ZONE: Field = Field::Reg6;
    /// The connection label of the packet's origin, staged by Classify
    /// (reg12..reg15) and written whole by the commit (see [`super::label`]).
    pub const LABEL: Field = Field::Xxreg3;
}

/// The conntrack zone (and `reg0`) of the service gateway: EIP connections to
/// Services of scenario `EipServiceGateway` are DNATed here, then SNATed in the
/// chosen backend's VPC zone. VPC zones stop below it.
pub const GATEWAY_ZONE: u16 = 0xffff;

/// Conntrack metadata records how a connection came in, so its replies go back
/// the same way (ReturnPath): a reply is un-NATed on the DPU that NATed it, and
/// leaves by the port and next hop its request came from.
///
/// It is laid out for a NIC that runs established connections (docs/offload.md):
/// the origin is in `ct_mark`, which mlx5 matches under any mask; `ct_label`
/// holds only what a reply of that origin needs, because mlx5 matches a label
/// only whole (it maps `key & mask` to an id and compares it with the id of the
/// connection's full label). Classify stages the label of its origin in
/// [`reg::LABEL`]; the one commit action ([`label::record`]) writes it whole.
/// So the label of a connection is a function of its origin, and the one flow
/// that reads each origin's label reads every bit it can hold.
pub mod mark {
    use ::openflow::ir::{Action, Field, MatchField, Subfield};

    /// In the gateway zone only: the zone (VPC id) of the backend it chose.
    pub const TARGET_ZONE: Subfield = Subfield::bits(Field::CtMark, 0, 15);
    /// The origin (`reg::ORIGIN_*`).
    pub const ORIGIN: Subfield = Subfield::bits(Field::CtMark, 16, 23);
    pub const ORIGIN_SHIFT: u32 = 16;
    pub const ORIGIN_MASK: u32 = 0xff << ORIGIN_SHIFT;

    /// The `ct_mark` match of one origin.
    pub fn origin_is(origin: u32) -> MatchField {
        MatchField::masked(Field::CtMark, origin << ORIGIN_SHIFT, ORIGIN_MASK)
    }

    /// A `ct(commit, exec(...))` action setting the origin to a constant.
    pub fn set_origin(origin: u32) -> Action {
        Action::Load {
            value: u64::from(origin),
            dst: ORIGIN,
        }
    }
}

/// The connection label (`ct_label`): for the uplink, the next hop's MAC; for
/// a tunnel, the sending DPU's address; zero for every other origin.
pub mod label {
    use super::reg;
    use ::openflow::ir::{Action, Field, Subfield};

    /// Origin uplink: the Ethernet source of the connection's first packet.
    pub const MAC: Subfield = Subfield::bits(Field::CtLabel, 0, 47);
    /// Origin tunnel: the outer IPv4 source (the sending DPU). Bits 0–31, which
    /// every mlx5 generation with conntrack offload matches.
    pub const TUNNEL_SRC: Subfield = Subfield::bits(Field::CtLabel, 0, 31);

    /// The label bits a connection of `origin` can hold.
    pub fn bits_of_origin(origin: u32) -> u128 {
        match origin {
            reg::ORIGIN_UPLINK => (1 << 48) - 1,
            reg::ORIGIN_TUNNEL => (1 << 32) - 1,
            _ => 0,
        }
    }

    /// Classify's staging of the uplink label.
    pub fn stage_mac() -> Action {
        Action::Move {
            src: Subfield::whole(Field::EthSrc),
            dst: Subfield::bits(reg::LABEL, 0, 47),
        }
    }

    /// Classify's staging of the tunnel label.
    pub fn stage_tunnel_src() -> Action {
        Action::Move {
            src: Subfield::whole(Field::TunSrc),
            dst: Subfield::bits(reg::LABEL, 0, 31),
        }
    }

    /// `ct(commit, exec(...))` actions recording the packet's origin in
    /// `ct_mark` and its staged label, whole, in `ct_label`.
    pub fn record() -> [Action; 2] {
        [
            Action::Move {
                src: Subfield::whole(reg::LABEL),
                dst: Subfield::whole(Field::CtLabel),
            },
            Action::Move {
                src: Subfield::bits(reg::ORIGIN, 0, 7),
                dst: super::mark::ORIGIN,
            },
        ]
    }
}

/// Set in the id of a Service port's second group, the one holding only the
/// backends on this DPU (`externalTrafficPolicy: Local`). Allocated ids stay far
/// below it, and OpenFlow group ids go up to 0xffffff00.
pub const LOCAL_GROUP_BIT: u32 = 0x8000_0000;

/// Set in the id of a Service port's IPv6 group (a dual-stack port has one
/// group per family). Combines with [`LOCAL_GROUP_BIT`].
pub const V6_GROUP_BIT: u32 = 0x4000_0000;

/// The `external_ids:iface-id` of the agent's Geneve port: the compiler finds
/// the tunnel's OpenFlow port by it, the OVSDB adapter names the port with it.
pub const TUNNEL_IFACE_ID: &str = "dpu:tunnel";

/// The MAC address the agent's distributed router answers with.
pub const ROUTER_MAC: Mac = Mac([0x02, 0xd9, 0, 0, 0, 1]);

/// Cookie layout: `round:16 | category:8 | object:40`.
///
/// The round (Antrea's term) changes at every agent start, so flows of an older
/// incarnation can be deleted by mask after the new one is installed. The object is
/// a stable hash of the owning object's key, so everything a Service installed can
/// be found by `cookie=…/mask`.
pub mod cookie {
    pub const ROUND_SHIFT: u32 = 48;
    pub const ROUND_MASK: u64 = 0xffff << ROUND_SHIFT;
    pub const CATEGORY_SHIFT: u32 = 40;
    pub const CATEGORY_MASK: u64 = 0xff << CATEGORY_SHIFT;
    pub const OBJECT_MASK: u64 = (1 << CATEGORY_SHIFT) - 1;

    /// What kind of object a flow belongs to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    #[repr(u8)]
    pub enum Category {
        Pipeline = 1,
        Vpc = 2,
        Subnet = 3,
        Workload = 4,
        Service = 5,
        Endpoint = 6,
        /// Flows learned by the switch for session affinity. They carry round 0 so a
        /// restart keeps them; the object is a hash of (Service, VIP, port,
        /// backend) (`compile::affinity_cookie`), and they are removed by that
        /// exact cookie when their backend leaves.
        AffinityLearned = 7,
        /// A DPU node: its host's PF flows and the routes to its host.
        Node = 8,
        /// The service gateway's zone and its way into each backend VPC.
        Gateway = 9,
        /// The uplink: its ARP context, EIP entry and return path.
        Uplink = 10,
        /// A VPC's health-probe link.
        Probe = 11,
    }

    impl Category {
        const ALL: [Category; 11] = [
            Category::Pipeline,
            Category::Vpc,
            Category::Subnet,
            Category::Workload,
            Category::Service,
            Category::Endpoint,
            Category::AffinityLearned,
            Category::Node,
            Category::Gateway,
            Category::Uplink,
            Category::Probe,
        ];

        /// The category numbered `n`.
        pub fn from_u8(n: u8) -> Option<Category> {
            Category::ALL.into_iter().find(|c| *c as u8 == n)
        }
    }

    /// A cookie without its round; the reconciler stamps the round. Held as
    /// its value in round 0 (8 bytes, where a category and a `u64` took 16:
    /// every flow of every part carries one); it orders as (category,
    /// object).
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Cookie(u64);

    impl Cookie {
        pub fn new(category: Category, object_key: &str) -> Self {
            Cookie::of(category, object_hash(object_key))
        }

        /// [`Cookie::new`] of `object_key`'s text, without making the text.
        pub fn of_key(category: Category, object_key: impl std::fmt::Display) -> Self {
            Cookie::of(category, object_hash_of(object_key))
        }

        /// The cookie of `category` and `object` (its low 40 bits).
        pub fn of(category: Category, object: u64) -> Self {
            Cookie(((category as u64) << CATEGORY_SHIFT) | (object & OBJECT_MASK))
        }

        pub fn category(self) -> Category {
            Category::from_u8((self.0 >> CATEGORY_SHIFT) as u8).expect("made from a Category")
        }

        /// The hash of the owning object's key (40 bits).
        pub fn object(self) -> u64 {
            self.0 & OBJECT_MASK
        }

        pub fn value(self, round: u16) -> u64 {
            (u64::from(round) << ROUND_SHIFT) | self.0
        }

        /// Mask that selects this category and object in any round.
        pub const SELECT_MASK: u64 = CATEGORY_MASK | OBJECT_MASK;
    }

    impl std::fmt::Debug for Cookie {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Cookie")
                .field("category", &self.category())
                .field("object", &self.object())
                .finish()
        }
    }

    pub fn round_of(cookie: u64) -> u16 {
        (cookie >> ROUND_SHIFT) as u16
    }

    /// FNV-1a, truncated to 40 bits: stable across releases and platforms, which a
    /// std hasher is not.
    pub fn object_hash(key: &str) -> u64 {
        let mut h = Fnv::default();
        h.bytes(key.as_bytes());
        h.0 & OBJECT_MASK
    }

    /// [`object_hash`] of `key`'s text, hashed as it is written: without
    /// the string (the compiler keys every endpoint flow so; formatting each
    /// key into a `String` was a tenth of a cold compile).
    pub fn object_hash_of(key: impl std::fmt::Display) -> u64 {
        use std::fmt::Write as _;
        let mut h = Fnv::default();
        // Writing to it cannot fail.
        let _ = write!(h, "{key}");
        h.0 & OBJECT_MASK
    }

    /// FNV-1a, 64 bits.
    struct Fnv(u64);

    impl Default for Fnv {
        fn default() -> Self {
            Fnv(0xcbf2_9ce4_8422_2325)
        }
    }

    impl Fnv {
        fn bytes(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    impl std::fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.bytes(s.as_bytes());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids_are_unique_and_ordered() {
        for w in TABLES.windows(2) {
            assert!(w[0].id < w[1].id, "{} and {}", w[0].name, w[1].name);
        }
    }

    #[test]
    fn docs_list_every_table() {
        let doc = include_str!("../../../docs/pipeline.md");
        for t in TABLES {
            assert!(
                doc.contains(&format!("| {} | {} |", t.id, t.name)),
                "docs/pipeline.md lacks the row for table {} {}",
                t.id,
                t.name
            );
        }
    }

    #[test]
    fn cookie_fields_do_not_overlap() {
        let c = cookie::Cookie::new(cookie::Category::Service, "YusurService/web");
        let v = c.value(0xabcd);
        assert_eq!(cookie::round_of(v), 0xabcd);
        assert_eq!(v & cookie::Cookie::SELECT_MASK, c.value(0));
        assert_eq!((v & cookie::CATEGORY_MASK) >> cookie::CATEGORY_SHIFT, 5);
    }

    #[test]
    fn an_object_hash_is_fnv_1a_whether_hashed_from_a_string_or_as_written() {
        use cookie::{object_hash, object_hash_of, OBJECT_MASK};
        // FNV-1a 64 test vectors: cookies must not change across releases.
        assert_eq!(object_hash(""), 0xcbf2_9ce4_8422_2325 & OBJECT_MASK);
        assert_eq!(object_hash("a"), 0xaf63_dc4c_8601_ec8c & OBJECT_MASK);
        assert_eq!(object_hash("foobar"), 0x8594_4171_f739_67e8 & OBJECT_MASK);
        for key in [
            "",
            "a",
            "vpc-a/tcp/10.0.0.7:8080",
            "gateway/v/udp6/fd00::1:53",
        ] {
            assert_eq!(object_hash_of(key), object_hash(key), "{key}");
            assert_eq!(object_hash_of(format_args!("{key}")), object_hash(key));
        }
    }

    #[test]
    fn a_cookie_is_8_bytes_and_keeps_its_category_and_object() {
        use cookie::{Category, Cookie};
        assert_eq!(std::mem::size_of::<Cookie>(), 8);
        for n in 0..=255u8 {
            if let Some(c) = Category::from_u8(n) {
                assert_eq!(c as u8, n);
                let k = Cookie::of(c, 0xff12_3456_789a);
                assert_eq!((k.category(), k.object()), (c, 0x0012_3456_789a));
            }
        }
        assert_eq!(Category::from_u8(11), Some(Category::Probe));
        assert_eq!(Category::from_u8(0), None);
        let (a, b) = (
            Cookie::of(Category::Vpc, cookie::OBJECT_MASK),
            Cookie::of(Category::Subnet, 0),
        );
        assert!(a < b, "by category, then object");
        assert_eq!(
            format!("{a:?}"),
            "Cookie { category: Vpc, object: 1099511627775 }"
        );
    }
}
