//! kube-proxy's chain names: a hash of the service port (and endpoint) so names stay
//! short and unique.

use sha2::{Digest, Sha256};

/// RFC 4648 base32, the alphabet Go's `base32.StdEncoding` uses.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The first `len` characters of `base32(sha256(input))` (len ≤ 16, so no padding).
pub(crate) fn hash_prefix(input: &str, len: usize) -> String {
    debug_assert!(len <= 16);
    let digest = Sha256::digest(input.as_bytes());
    // 10 bytes are exactly 16 base32 characters.
    let mut bits: u128 = 0;
    for &b in &digest[..10] {
        bits = (bits << 8) | u128::from(b);
    }
    (0..len)
        .map(|i| BASE32[((bits >> (75 - 5 * i)) & 0x1f) as usize] as char)
        .collect()
}

/// iptables mode: `KUBE-SVC-` + 16 chars of the hash of `ns/svc:port` + protocol
/// (`servicePortChainName` in pkg/proxy/iptables).
pub(crate) fn iptables_svc_chain(port_name: &str, proto: &str) -> String {
    format!(
        "KUBE-SVC-{}",
        hash_prefix(&format!("{port_name}{proto}"), 16)
    )
}

/// iptables mode: `KUBE-SEP-` + 16 chars of the hash of `ns/svc:port` + protocol +
/// `ip:port` (`servicePortEndpointChainName`).
pub(crate) fn iptables_sep_chain(port_name: &str, proto: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_prefix(&format!("{port_name}{proto}{endpoint}"), 16)
    )
}

/// nftables mode's `hashAndTruncate`: 8 hash characters, a dash, then the readable
/// base, cut to nftables' chain-name limit.
pub(crate) fn hash_and_truncate(base: &str) -> String {
    const MAX: usize = 200;
    let name = format!("{}-{base}", hash_prefix(base, 8));
    if name.len() > MAX {
        format!("{}...", &name[..MAX - 3])
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_go_std_encoding() {
        // sha256("") = e3b0c442 98fc1c14 9afb...; Go: base32.StdEncoding gives
        // "4OYMIQUY7QOBJGX36TEJS35ZEQT24QPEMSNZGTFESWMRW6CSXBKQ====".
        assert_eq!(hash_prefix("", 16), "4OYMIQUY7QOBJGX3");
        assert_eq!(hash_prefix("", 8), "4OYMIQUY");
    }

    #[test]
    fn kubernetes_default_service_chain_name() {
        // The name every cluster shows for default/kubernetes:https over TCP.
        assert_eq!(
            iptables_svc_chain("default/kubernetes:https", "tcp"),
            "KUBE-SVC-NPX46M4PTMTKRN6Y"
        );
    }
}
