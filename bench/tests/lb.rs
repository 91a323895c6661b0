//! The LB-quality measurement against a real private OVS (needs root and Open vSwitch;
//! a missing tool is a failure). Each test checks that the measurement can fail.

use dpu_bench::lb::{lb_measure, lb_quality, BucketIds, LbConfig};

fn config(weights: Vec<u32>, flows: usize, bucket_ids: BucketIds) -> LbConfig {
    LbConfig {
        remove: weights.len() / 2,
        weights,
        flows,
        bucket_ids,
    }
}

#[test]
fn equal_backends_share_evenly_and_counts_add_up() {
    dpu_lab::prereq::assert_root_and_ovs();
    for n in [3usize, 10] {
        let r = lb_measure(&config(vec![1; n], 60 * n, BucketIds::Agent)).unwrap();
        eprintln!("{n} backends: {r:?}");
        assert_eq!(r.counts.iter().sum::<usize>(), r.result.flows);
        assert_eq!(r.counts_after.iter().sum::<usize>(), r.result.flows);
        assert_eq!(r.counts_after[n / 2], 0);
        assert_eq!(r.result.backends, n);
        assert!((r.result.ideal_moved - 1.0 / n as f64).abs() < 1e-12);
        // Every backend is reached, and none gets more than twice its share.
        assert!(r.counts.iter().all(|&c| c > 0), "{:?}", r.counts);
        assert!(r.result.max_over_mean < 2.0, "{:?}", r.result);
        // All flows on the removed backend moved.
        assert!(r.result.moved_fraction >= r.removed_share - 1e-12);
    }
}

#[test]
fn the_public_entry_point_reports_sane_numbers() {
    dpu_lab::prereq::assert_root_and_ovs();
    let r = lb_quality(10, 500).unwrap();
    assert_eq!((r.backends, r.flows), (10, 500));
    assert!(r.skew_pct >= 0.0 && r.max_over_mean >= 1.0, "{r:?}");
    assert!(r.moved_fraction > 0.0 && r.moved_fraction <= 1.0, "{r:?}");
}

/// The agent's bucket ids stay with their backend, and OVS's highest-random-weight
/// selection then moves only the removed backend's flows when one goes: about 1/N,
/// wherever the backend sits in the list.
#[test]
fn removing_one_of_n_backends_moves_only_its_flows() {
    dpu_lab::prereq::assert_root_and_ovs();
    for n in [3usize, 10] {
        let removes = if n == 10 {
            vec![0, n / 2, n - 1]
        } else {
            vec![n / 2]
        };
        for remove in removes {
            let r = lb_measure(&LbConfig {
                weights: vec![1; n],
                flows: 60 * n,
                remove,
                bucket_ids: BucketIds::Agent,
            })
            .unwrap();
            eprintln!("{n} backends, backend {remove} removed: {:?}", r.result);
            assert!(r.result.moved_fraction < 3.0 / n as f64, "{:?}", r.result);
            // Exactly the removed backend's flows: every other flow stays put.
            let moved = (r.result.moved_fraction * r.result.flows as f64).round() as usize;
            assert_eq!(moved, r.counts[remove], "{r:?}");
            for i in (0..n).filter(|&i| i != remove) {
                assert!(
                    r.counts_after[i] >= r.counts[i],
                    "backend {i} lost flows: {r:?}"
                );
            }
        }
    }
    // With weights, the removed backend's replicas go and the others' stay.
    let r = lb_measure(&LbConfig {
        weights: vec![2, 1, 3, 1],
        flows: 700,
        remove: 2,
        bucket_ids: BucketIds::Agent,
    })
    .unwrap();
    let moved = (r.result.moved_fraction * r.result.flows as f64).round() as usize;
    assert_eq!(moved, r.counts[2], "{r:?}");
}

/// Bucket ids by position, as the agent gave them before: OVS scores buckets by
/// their id, so removing backend k hands bucket id j (j ≥ k) to backend j+1, every
/// flow on backends k..N−2 moves, flows on backends below k stay, and the last
/// backend's flows move unless their new best id is N−2: about (N−k)/N in all, not
/// 1/N. This shows that the measurement would see the agent's ids go wrong.
#[test]
fn positional_bucket_ids_move_every_flow_from_the_removed_backend_on() {
    dpu_lab::prereq::assert_root_and_ovs();
    let n = 10;
    for remove in [0, n / 2, n - 1] {
        let r = lb_measure(&LbConfig {
            weights: vec![1; n],
            flows: 60 * n,
            remove,
            bucket_ids: BucketIds::Positional,
        })
        .unwrap();
        eprintln!(
            "{n} backends, positional ids, backend {remove} removed: {:?}",
            r.result
        );
        let moved = (r.result.moved_fraction * r.result.flows as f64).round() as usize;
        let at_least = r.counts[remove..n - 1]
            .iter()
            .sum::<usize>()
            .max(r.counts[remove]);
        let at_most = r.counts[remove..].iter().sum::<usize>();
        assert!(
            (at_least..=at_most).contains(&moved),
            "{moved} moved: {r:?}"
        );
    }
}

/// A doubled weight (two buckets, as the compiler gives it) must show as about twice
/// the share; a measurement that always reported "even" would fail here.
#[test]
fn a_doubled_weight_is_detected() {
    dpu_lab::prereq::assert_root_and_ovs();
    let r = lb_measure(&config(vec![2, 1, 1], 800, BucketIds::Agent)).unwrap();
    eprintln!("weights 2,1,1: {r:?}");
    let share0 = r.counts[0] as f64 / 800.0;
    assert!((share0 - 0.5).abs() < 0.08, "{r:?}");
    assert!(r.counts[0] as f64 > 1.5 * r.counts[1] as f64, "{r:?}");
    // Per unit of weight the split is even again.
    assert!(r.result.max_over_mean < 1.4, "{r:?}");
    // Weight 0 gets no bucket and no flow.
    let r = lb_measure(&LbConfig {
        weights: vec![1, 0, 1, 1],
        flows: 300,
        remove: 2,
        bucket_ids: BucketIds::Agent,
    })
    .unwrap();
    assert_eq!(r.counts[1], 0, "{r:?}");
    assert_eq!(r.counts.iter().sum::<usize>(), 300);
}
