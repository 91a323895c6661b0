//! Event counters the agent loop bumps and the observers read: reconciles,
//! updates ACKed and NACKed, bundle durations, probe verdicts. Lock-free
//! where it is hot; the probe table is small and changes rarely.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the bundle duration histogram's buckets.
pub const BUNDLE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub struct Registry {
    reconciles_ok: AtomicU64,
    reconciles_failed: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    desired_version: AtomicU64,
    bundle: Histogram,
    probes: Mutex<BTreeMap<(String, IpAddr), ProbeRecord>>,
}

/// One probed backend: its verdict and how often it flipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeRecord {
    pub healthy: bool,
    pub to_healthy: u64,
    pub to_unhealthy: u64,
    /// Why the last verdict was reached.
    pub detail: String,
}

#[derive(Debug, Default)]
struct Histogram {
    /// Cumulative counts are computed when read; these are per bucket, plus one
    /// for `+Inf`.
    counts: [AtomicU64; BUNDLE_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A copy of the registry at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub reconciles_ok: u64,
    pub reconciles_failed: u64,
    pub acks: u64,
    pub nacks: u64,
    pub desired_version: u64,
    /// Cumulative counts for each of [`BUNDLE_BUCKETS`], then `+Inf` (= count).
    pub bundle_cumulative: Vec<u64>,
    pub bundle_sum_seconds: f64,
    pub probes: BTreeMap<(String, IpAddr), ProbeRecord>,
}

impl Registry {
    pub fn reconciled(&self, ok: bool) {
        let c = if ok {
            &self.reconciles_ok
        } else {
            &self.reconciles_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn answered(&self, ack: bool) {
        let c = if ack { &self.acks } else { &self.nacks };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The newest version the controller sent.
    pub fn desired(&self, version: u64) {
        self.desired_version.fetch_max(version, Ordering::Relaxed);
    }

    pub fn desired_version(&self) -> u64 {
        self.desired_version.load(Ordering::Relaxed)
    }

    /// One bundle, from send to the switch's confirmation.
    pub fn bundle(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = BUNDLE_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUNDLE_BUCKETS.len());
        self.bundle.counts[i].fetch_add(1, Ordering::Relaxed);
        self.bundle
            .sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, IpAddr), ProbeRecord>> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A probe verdict changed.
    pub fn probe_transition(&self, vpc: &str, ip: IpAddr, healthy: bool, detail: &str) {
        let mut p = self.probes();
        let r = p
            .entry((vpc.to_string(), ip))
            .or_insert_with(|| ProbeRecord {
                healthy: true,
                ..ProbeRecord::default()
            });
        if healthy {
            r.to_healthy += 1;
        } else {
            r.to_unhealthy += 1;
        }
        r.healthy = healthy;
        r.detail = detail.to_string();
    }

    /// The backends probed from here now; the others are forgotten. A new one
    /// starts healthy, as the prober assumes.
    pub fn probe_targets(&self, targets: impl IntoIterator<Item = (String, IpAddr)>) {
        let mut p = self.probes();
        let keep: BTreeMap<_, _> = targets
            .into_iter()
            .map(|k| {
                let r = p.get(&k).cloned().unwrap_or(ProbeRecord {
                    healthy: true,
                    ..ProbeRecord::default()
                });
                (k, r)
            })
            .collect();
        *p = keep;
    }

    /// The last detail of every probed backend's verdict.
    pub fn probe_details(&self) -> BTreeMap<(String, IpAddr), String> {
        self.probes()
            .iter()
            .map(|(k, r)| (k.clone(), r.detail.clone()))
            .collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut acc = 0;
        let bundle_cumulative = self
            .bundle
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        Snapshot {
            reconciles_ok: self.reconciles_ok.load(Ordering::Relaxed),
            reconciles_failed: self.reconciles_failed.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
            desired_version: self.desired_version(),
            bundle_cumulative,
            bundle_sum_seconds: self.bundle.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            probes: self.probes().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_sums() {
        let r = Registry::default();
        r.bundle(Duration::from_micros(500));
        r.bundle(Duration::from_millis(3));
        r.bundle(Duration::from_secs(20));
        let s = r.snapshot();
        assert_eq!(s.bundle_cumulative.len(), BUNDLE_BUCKETS.len() + 1);
        assert_eq!(s.bundle_cumulative[0], 1); // <= 1 ms
        assert_eq!(s.bundle_cumulative[2], 2); // <= 5 ms
        assert_eq!(s.bundle_cumulative[BUNDLE_BUCKETS.len() - 1], 2);
        assert_eq!(*s.bundle_cumulative.last().unwrap(), 3);
        assert!((s.bundle_sum_seconds - 20.0035).abs() < 1e-9);
    }

    #[test]
    fn probe_transitions_are_counted_and_targets_pruned() {
        let r = Registry::default();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        r.probe_targets([("a".to_string(), ip)]);
        r.probe_transition("a", ip, false, "timeout");
        r.probe_transition("a", ip, true, "ok");
        r.probe_transition("a", ip, false, "refused");
        let s = r.snapshot();
        let p = &s.probes[&("a".to_string(), ip)];
        assert_eq!((p.healthy, p.to_healthy, p.to_unhealthy), (false, 1, 2));
        assert_eq!(p.detail, "refused");
        r.probe_targets([]);
        assert!(r.snapshot().probes.is_empty());
    }

    #[test]
    fn desired_version_only_goes_up() {
        let r = Registry::default();
        r.desired(5);
        r.desired(3);
        assert_eq!(r.desired_version(), 5);
    }
}
