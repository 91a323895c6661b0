//! The rules a datapath flow must meet to run in a BlueField's NIC: those of
//! OVS's tc-flower offload (which megaflows become tc rules at all) and those
//! of the mlx5 driver's conntrack offload (which tc rules can hit in
//! hardware). Each carries its source. docs/offload.md lists the same rules;
//! a unit test checks that it names every id.
//!
//! Versions: OVS `lib/netdev-offload-tc.c` at v3.1.0 (3c2bea08) and main
//! (d6a632a9, where it is `lib/dpif-offload-tc-netdev.c`); Linux
//! `drivers/net/ethernet/mellanox/mlx5/core/en/tc_ct.c` at 08a7c777 (5.7/5.8)
//! and 0164a9bd (5.13–6.2), with the commits that changed it. Kernel releases
//! are inferred from the net-next window a commit landed in.

/// Who enforces a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// OVS refuses to make a tc rule: the flow stays in the kernel datapath.
    OvsTc,
    /// The tc rule exists, but mlx5 refuses it or it cannot hit in hardware.
    Mlx5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub layer: Layer,
    /// What the rule says, for the operator.
    pub says: &'static str,
    /// Where it is written.
    pub source: &'static str,
}

macro_rules! rule {
    ($name:ident, $id:literal, $layer:ident, $says:literal, $source:literal) => {
        pub const $name: Rule = Rule {
            id: $id,
            layer: Layer::$layer,
            says: $says,
            source: $source,
        };
    };
}

rule!(
    DP_HASH,
    "tc-dp-hash",
    OvsTc,
    "a dp_hash match is not offloaded (select groups must use selection_method=hash with explicit fields)",
    "netdev-offload-tc.c test_key_and_mask(): \"offloading attribute dp_hash isn't supported\" (v3.1.0 l.1629, main l.1802)"
);
rule!(
    HASH_ACTION,
    "tc-hash-action",
    OvsTc,
    "the hash() action (dp_hash selection) has no tc form",
    "netdev-offload-tc.c netdev_tc_parse_nl_actions(): no OVS_ACTION_ATTR_HASH branch → \"unsupported put action type\" (v3.1.0 l.2122)"
);
rule!(
    ACTION,
    "tc-action",
    OvsTc,
    "only output, drop, ct, ct_clear, recirc, set of eth/ipv4/ipv6/tcp/udp/tunnel fields, vlan and mpls push/pop, meter and check_pkt_len are offloaded (not userspace, sample, clone, trunc, ...)",
    "netdev-offload-tc.c netdev_tc_parse_nl_actions() (v3.1.0 l.1980–2122)"
);
rule!(
    SET_FIELD,
    "tc-set-field",
    OvsTc,
    "set() rewrites only ipv4 src/dst/ttl/tos, ipv6 src/dst/hlimit/tclass, eth src/dst, tcp/udp ports and tunnel keys",
    "netdev-offload-tc.c set_flower_map[] (v3.1.0 l.118): \"unsupported set action type\""
);
rule!(
    ACTION_COUNT,
    "tc-16-actions",
    OvsTc,
    "a tc rule holds at most 16 actions",
    "netdev-offload-tc.c: \"Can only support %d actions\" (TCA_ACT_MAX_NUM, lib/tc.h)"
);
rule!(
    CT_HELPER,
    "tc-ct-helper",
    OvsTc,
    "ct() with an ALG helper is not offloaded",
    "netdev-offload-tc.c: case OVS_CT_ATTR_HELPER: return EOPNOTSUPP (b292cce2f, OVS v3.2.0)"
);
rule!(
    CT_STATE_NAT,
    "tc-ct-state-nat",
    OvsTc,
    "a ct_state match on snat/dnat bits (or any bit the kernel lacks) leaves ct_state unconsumed: the flow is refused",
    "netdev-offload-tc.c: if ((ct_state_support & mask->ct_state) == mask->ct_state) (v3.1.0 l.1782); probe_ct_state_support() l.2618"
);
rule!(
    UNSUPPORTED_KEY,
    "tc-key",
    OvsTc,
    "a matched key attribute tc flower does not take (skb_priority, skb_mark other than 0, nd, ipv6 label, ct_tuple, IPv6 fragments, non-Ethernet packet_type, ...)",
    "netdev-offload-tc.c test_key_and_mask(): \"offloading isn't supported, unknown attribute\" (v3.1.0 l.1617–1716)"
);
rule!(
    VLAN_PARTIAL,
    "tc-vlan-partial",
    OvsTc,
    "a VLAN id or priority under a partial mask is refused",
    "netdev-offload-tc.c netdev_tc_flow_put(): /* partial mask */ return EOPNOTSUPP (v3.1.0 l.2264)"
);
rule!(
    CHAIN,
    "tc-chain",
    OvsTc,
    "a flow after recirculation (tc chain N) is reached in the NIC only from an offloaded flow that jumps to its chain",
    "netdev-offload-tc.c: recirc_id → tc chain; main refuses a chain nothing jumps to: \"non-existing goto chain action\" (5292eb50a, OVS v3.6.0)"
);
rule!(
    CT_NEW,
    "mlx5-ct-new",
    Mlx5,
    "a connection's first packets run in software: conntrack must see them, and the NIC's conntrack table holds only connections act_ct hands over (TCP once established and assured, UDP once confirmed)",
    "tc_ct.c mlx5_tc_ct_match_add(): \"matching on ct_state +new isn't supported\" (until f869bcb0d28e, ~Linux 6.3); net/sched/act_ct.c tcf_ct_flow_table_process_conn()"
);
rule!(
    CT_REL_INV,
    "mlx5-ct-rel-inv",
    Mlx5,
    "a ct_state match on +rel or +inv is refused by the NIC (-rel and -inv are matched since ~Linux 5.13)",
    "tc_ct.c mlx5_tc_ct_match_add(): \"matching on ct_state +rel isn't supported\", \"+inv\" (116c76c51035)"
);
rule!(
    CT_RPL,
    "mlx5-ct-rpl",
    Mlx5,
    "a ct_state match on rpl needs Linux 5.12 or later",
    "tc_ct.c: ct_state reply flag matching (6895cb3a95c9, ~Linux 5.12)"
);
rule!(
    CT_LABEL_WHOLE,
    "mlx5-ct-label-whole",
    Mlx5,
    "a ct_label match hits in the NIC only when the connection's whole label equals key & mask: the mask must cover every bit the label can hold",
    "tc_ct.c mlx5_tc_ct_match_add(): mlx5_get_label_mapping(key & mask) matched exactly against the id of the entry's full label (54b154ecfb8c, ~Linux 5.9)"
);
rule!(
    CT_LABEL_LOW32,
    "mlx5-ct-label-low32",
    Mlx5,
    "on Linux 5.7–5.8 a ct_label mask above bit 31 is refused, and connections with label bits above 31 are not offloaded (needs Linux 5.9 or later)",
    "tc_ct.c at 08a7c7772b4d: \"only lower 32bits of ct_labels are supported for offload\""
);
rule!(
    CT_ZONE_EXACT,
    "mlx5-ct-zone-exact",
    Mlx5,
    "ct_zone is matched exactly in the NIC, whatever the mask",
    "tc_ct.c: mlx5e_tc_match_to_reg_match(spec, ZONE_TO_REG, key->ct_zone, MLX5_CT_ZONE_MASK)"
);
rule!(
    ARP_ND,
    "slow-arp-nd",
    OvsTc,
    "ARP and neighbour discovery are answered by ovs-vswitchd's responder flows (set(arp), nd matches): slow path by design",
    "netdev-offload-tc.c: nd(...) unconsumed → \"unknown attribute\"; set(arp) not in set_flower_map"
);

/// Every rule, for docs and `explain --offload`.
pub const ALL: &[Rule] = &[
    DP_HASH,
    HASH_ACTION,
    ACTION,
    SET_FIELD,
    ACTION_COUNT,
    CT_HELPER,
    CT_STATE_NAT,
    UNSUPPORTED_KEY,
    VLAN_PARTIAL,
    CHAIN,
    CT_NEW,
    CT_REL_INV,
    CT_RPL,
    CT_LABEL_WHOLE,
    CT_LABEL_LOW32,
    CT_ZONE_EXACT,
    ARP_ND,
];
