//! Bucket ids of a Service's select group.
//!
//! OVS's `hash` selection method scores every bucket with a hash of the flow and
//! the bucket's *id* and takes the best one (highest random weight). Numbering
//! buckets by position would give every backend after a removed one a new id, and
//! about half of all flows would choose anew; an id that is a function of the
//! backend alone moves only the removed backend's ~1/N.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// The largest bucket id handed out. OpenFlow 1.5 allows ids up to
/// `OFPG15_BUCKET_MAX` (0xffffff00); the values above are commands
/// (`OFPG15_BUCKET_FIRST`, `_LAST`, `_ALL`).
pub const BUCKET_ID_MAX: u32 = 0xffff_fefe;

/// 64-bit FNV-1a: fixed, unkeyed, the same on every platform (unlike
/// `std`'s `DefaultHasher`, which is randomly keyed and may change).
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The preferred id of replica `replica` (one bucket per unit of weight) of the
/// backend `ip` in VPC `vpc` behind target port `target_port`: a hash of those
/// alone, in `0..=BUCKET_ID_MAX`. [`assign_bucket_ids`] resolves collisions.
pub fn bucket_id(vpc: &str, ip: IpAddr, target_port: u16, replica: u32) -> u32 {
    let mut h = Fnv1a::new();
    h.write(&(vpc.len() as u64).to_be_bytes());
    h.write(vpc.as_bytes());
    match ip {
        IpAddr::V4(a) => {
            h.write(&[4]);
            h.write(&a.octets());
        }
        IpAddr::V6(a) => {
            h.write(&[6]);
            h.write(&a.octets());
        }
    }
    h.write(&target_port.to_be_bytes());
    h.write(&replica.to_be_bytes());
    // FNV-1a barely spreads its last bytes (the replica) into the high bits;
    // SplitMix64's finalizer mixes every input bit into every output bit.
    let mut z = h.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % (u64::from(BUCKET_ID_MAX) + 1)) as u32
}

/// The bucket ids of one group: for each `(vpc, ip, weight)` of `backends` (in
/// any order), `weight` distinct ids, replica 0 first. Backends are taken in
/// (vpc, ip) order and a taken id is probed upwards (wrapping at
/// [`BUCKET_ID_MAX`]) until free, so the outcome does not depend on the input
/// order, and a backend keeps its ids when others come or go unless a hash
/// collision (~weight²/2³² per pair) says otherwise.
pub fn assign_bucket_ids(target_port: u16, backends: &[(&str, IpAddr, u32)]) -> Vec<Vec<u32>> {
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| (backends[i].0, backends[i].1, i));
    let mut used = BTreeSet::new();
    let mut out = vec![Vec::new(); backends.len()];
    for i in order {
        let (vpc, ip, weight) = backends[i];
        for r in 0..weight {
            let mut id = bucket_id(vpc, ip, target_port, r);
            while !used.insert(id) {
                id = if id == BUCKET_ID_MAX { 0 } else { id + 1 };
            }
            out[i].push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Fixed values pin the hash: the same ids on x86_64 and aarch64, in this
    /// release and the next (a change moves every connection's next choice).
    #[test]
    fn the_hash_is_pinned() {
        // (Computed independently, in Python, from the definition above.)
        assert_eq!(bucket_id("blue", ip("10.1.0.7"), 8080, 0), 2_488_287_594);
        assert_eq!(bucket_id("blue", ip("10.1.0.7"), 8080, 1), 2_326_114_131);
        assert_eq!(bucket_id("blue", ip("fd00::7"), 8080, 0), 1_915_971_305);
        let mut h = Fnv1a::new();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\"");
    }

    #[test]
    fn ids_are_in_range_and_distinct_within_a_group() {
        let backends: Vec<(String, IpAddr, u32)> = (0..2000u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(0x0a01_0000 + i);
                (format!("vpc{}", i % 3), IpAddr::V4(a), 1 + i % 4)
            })
            .collect();
        let refs: Vec<(&str, IpAddr, u32)> = backends
            .iter()
            .map(|(v, a, w)| (v.as_str(), *a, *w))
            .collect();
        let ids = assign_bucket_ids(80, &refs);
        let all: Vec<u32> = ids.iter().flatten().copied().collect();
        assert_eq!(all.len(), refs.iter().map(|b| b.2 as usize).sum::<usize>());
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), all.len());
        assert!(all.iter().all(|&id| id <= BUCKET_ID_MAX));
        for (b, ids) in refs.iter().zip(&ids) {
            assert_eq!(ids.len(), b.2 as usize);
        }
    }

    #[test]
    fn a_backend_keeps_its_ids_when_others_come_and_go() {
        let b = |i: u8, w: u32| ("red", IpAddr::from([10, 0, 0, i]), w);
        let three = assign_bucket_ids(443, &[b(1, 2), b(2, 1), b(3, 3)]);
        // Backend 2 gone, backend 9 added, order shuffled.
        let other = assign_bucket_ids(443, &[b(9, 1), b(3, 3), b(1, 2)]);
        assert_eq!(other[2], three[0]);
        assert_eq!(other[1], three[2]);
        // More weight adds ids and keeps the old ones.
        let heavier = assign_bucket_ids(443, &[b(1, 5), b(2, 1), b(3, 3)]);
        assert_eq!(heavier[0][..2], three[0][..]);
        assert_eq!(heavier[1..], three[1..]);
        // The id is the backend's: another VPC, address or port changes it.
        let id = bucket_id("red", IpAddr::from([10, 0, 0, 1]), 443, 0);
        assert_eq!(three[0][0], id);
        assert_ne!(bucket_id("blue", IpAddr::from([10, 0, 0, 1]), 443, 0), id);
        assert_ne!(bucket_id("red", IpAddr::from([10, 0, 0, 2]), 443, 0), id);
        assert_ne!(bucket_id("red", IpAddr::from([10, 0, 0, 1]), 444, 0), id);
    }

    #[test]
    fn a_collision_is_probed_the_same_way_whatever_the_order() {
        // The same backend twice collides on every replica.
        let b = ("red", ip("10.0.0.1"), 2);
        let c = ("red", ip("10.0.0.2"), 1);
        let x = assign_bucket_ids(80, &[b, c, b]);
        let y = assign_bucket_ids(80, &[c, b, b]);
        assert_eq!(x[0], y[1]);
        assert_eq!(x[2], y[2]);
        assert_eq!(x[1], y[0]);
        let first = bucket_id("red", ip("10.0.0.1"), 80, 0);
        assert_eq!(x[0][0], first);
        assert_eq!(x[2][0], first + 1);
    }
}
