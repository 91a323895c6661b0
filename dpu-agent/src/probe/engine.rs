//! The probe engine: one task per probed backend, the health of each, and the
//! transitions between healthy and unhealthy.
//!
//! A DPU probes only the Service backends local to it, through the probe link of
//! the backend's VPC. The caller (the agent) turns `NetworkProbe` objects and the
//! local backends of their Services into [`Target`]s, one per `(vpc, ip)`, and hands
//! the full set to [`Prober::set_targets`] whenever it changes. The engine reports
//! each change of health on a channel and keeps the current set of unhealthy
//! backends readable at any time ([`Prober::unhealthy`]).
//!
//! Timing follows Kubernetes' probes: a check every `period` (here with ±10%
//! jitter, so the checks of many backends spread out), each bounded by `timeout`,
//! never two at once for one backend; `failure_threshold` consecutive failures make
//! a healthy backend unhealthy and `success_threshold` consecutive successes make it
//! healthy again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use dpu_model::{NetworkProbe, ProbeType};

use super::check::{check, ProbeKind};

/// How long past its `timeout` a [`Checker`] may run before the engine gives up on
/// it and counts a failure. The real check bounds itself by `timeout` (and says at
/// which step it ran out); this is a backstop for checkers that do not.
pub const CHECK_GRACE: Duration = Duration::from_millis(100);
/// The shortest period the engine runs at (validated probes have 100 ms or more).
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// How and how often one backend is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// TCP connect or HTTP `GET`.
    pub kind: ProbeKind,
    /// The backend's port checked.
    pub port: u16,
    /// The time between the starts of two checks (±10% jitter).
    pub period: Duration,
    /// The bound of one check.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy (0 counts as 1).
    pub success_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy (0 counts as 1).
    pub failure_threshold: u32,
}

impl ProbeSpec {
    /// The spec of a (validated) `NetworkProbe`.
    pub fn from_model(p: &NetworkProbe) -> Self {
        ProbeSpec {
            kind: match p.probe_type {
                ProbeType::Tcp => ProbeKind::Tcp,
                ProbeType::Http => ProbeKind::Http {
                    path: p.http_path.clone(),
                    statuses: p.http_statuses.clone(),
                },
            },
            port: p.port,
            period: Duration::from_millis(u64::from(p.period_ms)),
            timeout: Duration::from_millis(u64::from(p.timeout_ms)),
            success_threshold: p.success_threshold,
            failure_threshold: p.failure_threshold,
        }
    }
}

/// One backend to probe, keyed by `(vpc, ip)`.
///
/// The caller passes at most one `Target` per key: when two Services' probes name
/// the same backend address, the caller merges them into one spec (should it pass
/// several anyway, [`Prober::set_targets`] keeps the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend's VPC.
    pub vpc: String,
    /// The backend's address in that VPC.
    pub ip: IpAddr,
    /// The device the check goes through: the VPC's probe link.
    pub device: Option<String>,
    /// The check's source address on that device.
    pub source: Option<IpAddr>,
    /// How to check.
    pub spec: ProbeSpec,
}

impl Target {
    /// `(vpc, ip)`: what identifies the target across [`Prober::set_targets`] calls.
    pub fn key(&self) -> (String, IpAddr) {
        (self.vpc.clone(), self.ip)
    }
}

/// The health of one backend: a pure state machine over check results.
///
/// A backend starts healthy. That is a presumption: right after an agent restart
/// (or when a backend appears) nothing has been checked yet, and starting
/// unhealthy would take every backend out of its Service, blackholing its traffic,
/// until the first `success_threshold` checks passed. Kubernetes' readiness starts
/// the other way because it gates a new pod; here the backend's pod is already
/// gated by Kubernetes, and this probe only removes backends shown to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    /// Consecutive results contrary to `healthy`.
    streak: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: true,
            streak: 0,
        }
    }
}

impl Health {
    /// A backend not checked yet: presumed healthy.
    pub fn new() -> Self {
        Health::default()
    }

    /// The current state.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Takes one check result; returns the new state if it changed.
    pub fn observe(&mut self, ok: bool, spec: &ProbeSpec) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        if self.streak < needed(self.healthy, spec) {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        Some(ok)
    }
}

/// The results in a row it takes to leave state `healthy`.
fn needed(healthy: bool, spec: &ProbeSpec) -> u32 {
    let threshold = if healthy {
        spec.failure_threshold
    } else {
        spec.success_threshold
    };
    threshold.max(1)
}

/// A backend's change of health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The backend's VPC.
    pub vpc: String,
    /// The backend's address.
    pub ip: IpAddr,
    /// The new state.
    pub healthy: bool,
    /// Why, for logs and status: e.g. `3 consecutive failures, last: connection refused`.
    pub detail: String,
    /// When the deciding check ended.
    pub at: Instant,
}

/// Checks one target once; `Err` carries the reason in an operator's words.
pub trait Checker: Send + Sync {
    /// One check of `target`. It should end within `target.spec.timeout`; the
    /// engine stops waiting [`CHECK_GRACE`] after that and counts a failure.
    fn check<'a>(
        &'a self,
        target: &'a Target,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The real [`Checker`]: [`check`] through the target's device and source.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetChecker;

impl Checker for NetChecker {
    fn check<'a>(
        &'a self,
        target: &'a Target,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            check(
                &target.spec.kind,
                target.device.as_deref(),
                target.source,
                SocketAddr::new(target.ip, target.spec.port),
                target.spec.timeout,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}

type Key = (String, IpAddr);

/// A backend's health and the generation of the task allowed to update it.
#[derive(Debug)]
struct Slot {
    generation: u64,
    health: Health,
}

/// What the tasks share with the [`Prober`].
#[derive(Debug, Default)]
struct Shared {
    slots: BTreeMap<Key, Slot>,
}

/// A running probe task.
#[derive(Debug)]
struct Running {
    target: Target,
    handle: JoinHandle<()>,
}

/// Runs one tokio task per [`Target`] and tracks their health.
///
/// Transitions go to the channel given at construction with `try_send`, so a slow
/// receiver never holds a probe up: when the channel is full the transition is
/// dropped (and logged), but [`Prober::unhealthy`] always has the current state. A
/// caller that may lag should treat each message as "something changed" and read
/// [`Prober::unhealthy`]. A closed channel is ignored likewise.
///
/// [`Prober::set_targets`] spawns tasks, so it must run inside a tokio runtime.
/// Dropping the `Prober` stops every task.
pub struct Prober {
    tx: mpsc::Sender<Transition>,
    checker: Arc<dyn Checker>,
    shared: Arc<Mutex<Shared>>,
    tasks: BTreeMap<Key, Running>,
    next_generation: u64,
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("targets", &self.tasks.keys().collect::<Vec<_>>())
            .field("unhealthy", &self.unhealthy())
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober with no targets that checks with [`NetChecker`].
    pub fn new(tx: mpsc::Sender<Transition>) -> Self {
        Prober::with_checker(tx, Arc::new(NetChecker))
    }

    /// A prober with no targets that checks with `checker`.
    pub fn with_checker(tx: mpsc::Sender<Transition>, checker: Arc<dyn Checker>) -> Self {
        Prober {
            tx,
            checker,
            shared: Arc::default(),
            tasks: BTreeMap::new(),
            next_generation: 0,
        }
    }

    /// Makes `targets` the set probed: starts tasks for new keys, stops those of
    /// keys not in `targets` (forgetting their health: a backend that comes back
    /// starts healthy again), restarts the task of a key whose target changed
    /// (keeping its health and its streak) and leaves the others alone. A started or
    /// restarted task checks first after a random delay in `[0, period)`.
    pub fn set_targets(&mut self, targets: Vec<Target>) {
        let targets: BTreeMap<Key, Target> = targets.into_iter().map(|t| (t.key(), t)).collect();
        let mut shared = lock(&self.shared);
        self.tasks.retain(|key, running| {
            let keep = targets.contains_key(key);
            if !keep {
                running.handle.abort();
                shared.slots.remove(key);
            }
            keep
        });
        for (key, target) in targets {
            if self.tasks.get(&key).is_some_and(|r| r.target == target) {
                continue;
            }
            if let Some(old) = self.tasks.remove(&key) {
                old.handle.abort();
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            shared
                .slots
                .entry(key.clone())
                .or_insert(Slot {
                    generation,
                    health: Health::new(),
                })
                .generation = generation;
            let handle = tokio::spawn(run(
                target.clone(),
                generation,
                Arc::clone(&self.checker),
                Arc::clone(&self.shared),
                self.tx.clone(),
            ));
            self.tasks.insert(key, Running { target, handle });
        }
    }

    /// The backends currently unhealthy, as `(vpc, ip)`.
    pub fn unhealthy(&self) -> BTreeSet<(String, IpAddr)> {
        lock(&self.shared)
            .slots
            .iter()
            .filter(|(_, slot)| !slot.health.is_healthy())
            .map(|(key, _)| key.clone())
            .collect()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for running in self.tasks.values() {
            running.handle.abort();
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// `period` ±10%, uniformly.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// The probe loop of one target, as generation `generation` of its key.
async fn run(
    target: Target,
    generation: u64,
    checker: Arc<dyn Checker>,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::Sender<Transition>,
) {
    let spec = &target.spec;
    let period = spec.period.max(MIN_PERIOD);
    let mut next = Instant::now() + period.mul_f64(rand::random::<f64>());
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let result = tokio::time::timeout(spec.timeout + CHECK_GRACE, checker.check(&target))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "timed out after {} ms",
                    (spec.timeout + CHECK_GRACE).as_millis()
                ))
            });
        if let Err(reason) = &result {
            tracing::debug!(vpc = %target.vpc, ip = %target.ip, %reason, "probe failed");
        }
        if !record(&target, generation, &result, &shared, &tx) {
            return;
        }
        next = started + jittered(period);
    }
}

/// Feeds `result` into the target's health and reports a transition. False when
/// the task has been replaced or its target removed.
fn record(
    target: &Target,
    generation: u64,
    result: &Result<(), String>,
    shared: &Mutex<Shared>,
    tx: &mpsc::Sender<Transition>,
) -> bool {
    // The lock is held while sending so that transitions of a key reach the channel
    // in the order they happened, even across a task restart.
    let mut shared = lock(shared);
    let Some(slot) = shared
        .slots
        .get_mut(&target.key())
        .filter(|s| s.generation == generation)
    else {
        return false;
    };
    let Some(healthy) = slot.health.observe(result.is_ok(), &target.spec) else {
        return true;
    };
    let n = needed(!healthy, &target.spec);
    let detail = match result {
        Ok(()) => format!("{n} consecutive successes"),
        Err(reason) => format!("{n} consecutive failures, last: {reason}"),
    };
    if healthy {
        tracing::info!(vpc = %target.vpc, ip = %target.ip, %detail, "backend healthy");
    } else {
        tracing::warn!(vpc = %target.vpc, ip = %target.ip, %detail, "backend unhealthy");
    }
    let transition = Transition {
        vpc: target.vpc.clone(),
        ip: target.ip,
        healthy,
        detail,
        at: Instant::now(),
    };
    match tx.try_send(transition) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(t)) => tracing::warn!(
            vpc = %t.vpc,
            ip = %t.ip,
            healthy = t.healthy,
            "transition channel full; dropped (unhealthy() has it)"
        ),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PERIOD: Duration = Duration::from_secs(10);
    /// Timer rounding of the paused clock (tokio's wheel ticks in milliseconds).
    const TICK: Duration = Duration::from_millis(1);

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            kind: ProbeKind::Tcp,
            port: 80,
            period: PERIOD,
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn target(vpc: &str, last: u8, spec: ProbeSpec) -> Target {
        Target {
            vpc: vpc.to_string(),
            ip: ip(last),
            device: Some("dpr1".into()),
            source: None,
            spec,
        }
    }

    fn key(vpc: &str, last: u8) -> Key {
        (vpc.to_string(), ip(last))
    }

    // ---- Health ----

    /// Runs `results` through a fresh Health and returns the transitions by index.
    fn run_health(results: &str, s: &ProbeSpec) -> Vec<(usize, bool)> {
        let mut h = Health::new();
        results
            .chars()
            .enumerate()
            .filter_map(|(i, c)| h.observe(c == '+', s).map(|t| (i, t)))
            .collect()
    }

    #[test]
    fn health_starts_healthy() {
        assert!(Health::new().is_healthy());
        assert_eq!(run_health("++++", &spec(1, 1)), vec![]);
    }

    #[test]
    fn health_thresholds_of_one_flip_on_every_change() {
        let s = spec(1, 1);
        assert_eq!(
            run_health("-+--++-", &s),
            vec![(0, false), (1, true), (2, false), (4, true), (6, false)]
        );
    }

    #[test]
    fn health_needs_consecutive_failures() {
        let s = spec(1, 3);
        assert_eq!(run_health("--", &s), vec![]);
        assert_eq!(run_health("---", &s), vec![(2, false)]);
        // A success in between starts the count again.
        assert_eq!(run_health("--+--+--", &s), vec![]);
        assert_eq!(run_health("--+---", &s), vec![(5, false)]);
        // Further failures while unhealthy change nothing.
        assert_eq!(run_health("------", &s), vec![(2, false)]);
    }

    #[test]
    fn health_needs_consecutive_successes_to_recover() {
        let s = spec(2, 1);
        assert_eq!(run_health("-+", &s), vec![(0, false)]);
        assert_eq!(run_health("-++", &s), vec![(0, false), (2, true)]);
        assert_eq!(run_health("-+-+-++", &s), vec![(0, false), (6, true)]);
        assert_eq!(run_health("-++++", &s), vec![(0, false), (2, true)]);
    }

    #[test]
    fn health_both_thresholds_interleaved() {
        let s = spec(3, 2);
        assert_eq!(
            run_health("+-+--++-+++--+---+++", &s),
            vec![(4, false), (10, true), (12, false), (19, true)]
        );
    }

    #[test]
    fn health_zero_thresholds_count_as_one() {
        assert_eq!(run_health("-+", &spec(0, 0)), vec![(0, false), (1, true)]);
    }

    #[test]
    fn health_threshold_change_applies_to_the_running_streak() {
        let mut h = Health::new();
        assert_eq!(h.observe(false, &spec(1, 5)), None);
        assert_eq!(h.observe(false, &spec(1, 5)), None);
        assert_eq!(h.observe(false, &spec(1, 3)), Some(false));
    }

    #[test]
    fn spec_from_model() {
        let p = NetworkProbe {
            name: "p".into(),
            service: "s".into(),
            probe_type: ProbeType::Http,
            port: 8080,
            http_path: "/healthz".into(),
            http_statuses: 200..=299,
            period_ms: 2000,
            timeout_ms: 500,
            success_threshold: 2,
            failure_threshold: 3,
        };
        assert_eq!(
            ProbeSpec::from_model(&p),
            ProbeSpec {
                kind: ProbeKind::Http {
                    path: "/healthz".into(),
                    statuses: 200..=299,
                },
                port: 8080,
                period: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                success_threshold: 2,
                failure_threshold: 3,
            }
        );
        let p = NetworkProbe {
            probe_type: ProbeType::Tcp,
            ..p
        };
        assert_eq!(ProbeSpec::from_model(&p).kind, ProbeKind::Tcp);
    }

    // ---- Prober ----

    /// Fails the targets in `failing`, hangs those in `hanging`, records every call.
    #[derive(Default)]
    struct Fake {
        failing: Mutex<BTreeSet<Key>>,
        hanging: Mutex<BTreeSet<Key>>,
        calls: Mutex<Vec<(Key, u16, Instant)>>,
        in_flight: Mutex<(u32, u32)>,
    }

    impl Fake {
        fn fail(&self, k: Key, on: bool) {
            let mut f = self.failing.lock().unwrap();
            if on {
                f.insert(k);
            } else {
                f.remove(&k);
            }
        }

        /// Times of the calls for `k` at or after `from`.
        fn calls(&self, k: &Key, from: Instant) -> Vec<Instant> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(c, _, at)| c == k && *at >= from)
                .map(|(_, _, at)| *at)
                .collect()
        }
    }

    impl Checker for Fake {
        fn check<'a>(
            &'a self,
            target: &'a Target,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
            // The outcome is decided when the check starts.
            let k = target.key();
            let fails = self.failing.lock().unwrap().contains(&k);
            let hangs = self.hanging.lock().unwrap().contains(&k);
            self.calls
                .lock()
                .unwrap()
                .push((k, target.spec.port, Instant::now()));
            Box::pin(async move {
                {
                    let mut f = self.in_flight.lock().unwrap();
                    f.0 += 1;
                    f.1 = f.1.max(f.0);
                }
                if hangs {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.in_flight.lock().unwrap().0 -= 1;
                if fails {
                    Err("connection refused".into())
                } else {
                    Ok(())
                }
            })
        }
    }

    fn prober(capacity: usize) -> (Prober, mpsc::Receiver<Transition>, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let (tx, rx) = mpsc::channel(capacity);
        (Prober::with_checker(tx, fake.clone()), rx, fake)
    }

    /// Asserts that `t` lies `[lo - TICK, hi + TICK]` after `from`.
    fn assert_between(t: Instant, from: Instant, lo: Duration, hi: Duration) {
        let d = t - from;
        assert!(
            d + TICK >= lo && d <= hi + TICK,
            "{d:?} not in [{lo:?}, {hi:?}]"
        );
    }

    /// Asserts consecutive calls are one period ± 10% apart.
    fn assert_cadence(calls: &[Instant]) {
        for w in calls.windows(2) {
            assert_between(w[1], w[0], PERIOD.mul_f64(0.9), PERIOD.mul_f64(1.1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_probe_within_one_period_then_period_with_jitter() {
        let (mut p, _rx, fake) = prober(8);
        let t0 = Instant::now();
        p.set_targets(vec![target("a", 1, spec(1, 3))]);
        tokio::time::sleep(PERIOD * 20).await;
        let calls = fake.calls(&key("a", 1), t0);
        assert!(calls.len() >= 18, "{}", calls.len());
        assert_between(calls[0], t0, Duration::ZERO, PERIOD);
        assert_cadence(&calls);
        // Not all the same: jitter is applied.
        let gaps: BTreeSet<_> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() > 1);
        assert_eq!(fake.in_flight.lock().unwrap().1, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_and_recovery_at_the_expected_times() {
        let (mut p, mut rx, fake) = prober(8);
        let k = key("a", 1);
        p.set_targets(vec![target("a", 1, spec(2, 3))]);
        tokio::time::sleep(PERIOD * 5).await;
        assert!(rx.try_recv().is_err());

        let fail_from = Instant::now();
        fake.fail(k.clone(), true);
        let t = rx.recv().await.unwrap();
        assert_eq!((t.vpc.as_str(), t.ip, t.healthy), ("a", ip(1), false));
        assert_eq!(t.detail, "3 consecutive failures, last: connection refused");
        assert_eq!(p.unhealthy(), BTreeSet::from([k.clone()]));
        let calls = fake.calls(&k, fail_from);
        // The third probe from the first failing one decides (a check takes 5 ms).
        assert_eq!(calls.len(), 3);
        assert_between(calls[0], fail_from, Duration::ZERO, PERIOD.mul_f64(1.1));
        assert_cadence(&calls);
        assert_eq!(t.at, calls[2] + Duration::from_millis(5));
        assert_between(
            t.at,
            fail_from,
            PERIOD.mul_f64(1.8),
            PERIOD.mul_f64(3.3) + TICK * 5,
        );

        // Staying down sends nothing more.
        tokio::time::sleep(PERIOD * 5).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(p.unhealthy(), BTreeSet::from([k.clone()]));

        let ok_from = Instant::now();
        fake.fail(k.clone(), false);
        let t = rx.recv().await.unwrap();
        assert_eq!((t.vpc.as_str(), t.ip, t.healthy), ("a", ip(1), true));
        assert_eq!(t.detail, "2 consecutive successes");
        assert!(p.unhealthy().is_empty());
        let calls = fake.calls(&k, ok_from);
        assert_eq!(calls.len(), 2);
        assert_cadence(&calls);
        assert_eq!(t.at, calls[1] + Duration::from_millis(5));
        assert_between(
            t.at,
            ok_from,
            PERIOD.mul_f64(0.9),
            PERIOD.mul_f64(2.2) + TICK * 5,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn removal_forgets_health_and_stops_probing() {
        let (mut p, mut rx, fake) = prober(8);
        let (a, b) = (key("a", 1), key("a", 2));
        fake.fail(a.clone(), true);
        p.set_targets(vec![target("a", 1, spec(1, 1)), target("a", 2, spec(1, 1))]);
        let t = rx.recv().await.unwrap();
        assert_eq!((t.ip, t.healthy), (ip(1), false));
        assert_eq!(p.unhealthy(), BTreeSet::from([a.clone()]));

        p.set_targets(vec![target("a", 2, spec(1, 1))]);
        let removed = Instant::now();
        assert!(p.unhealthy().is_empty());
        tokio::time::sleep(PERIOD * 5).await;
        assert!(fake.calls(&a, removed).is_empty());
        assert!(fake.calls(&b, removed).len() >= 4);
        assert!(rx.try_recv().is_err());

        // It comes back: healthy until shown otherwise, then a new transition.
        p.set_targets(vec![target("a", 1, spec(1, 1)), target("a", 2, spec(1, 1))]);
        let back = Instant::now();
        assert!(p.unhealthy().is_empty());
        let t = rx.recv().await.unwrap();
        assert_eq!((t.ip, t.healthy), (ip(1), false));
        assert_between(t.at, back, Duration::ZERO, PERIOD + TICK * 5);
        assert_eq!(p.unhealthy(), BTreeSet::from([a]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_target_restarts_with_its_health() {
        let (mut p, mut rx, fake) = prober(8);
        let a = key("a", 1);
        fake.fail(a.clone(), true);
        p.set_targets(vec![target("a", 1, spec(2, 1))]);
        assert!(!rx.recv().await.unwrap().healthy);
        let old_generation = lock(&p.shared).slots[&a].generation;

        let changed = Instant::now();
        let mut s = spec(2, 1);
        s.port = 8080;
        p.set_targets(vec![target("a", 1, s.clone())]);
        assert_ne!(lock(&p.shared).slots[&a].generation, old_generation);
        // Still unhealthy, and failing more sends nothing.
        assert_eq!(p.unhealthy(), BTreeSet::from([a.clone()]));
        tokio::time::sleep(PERIOD * 3).await;
        assert!(rx.try_recv().is_err());
        let ports: BTreeSet<u16> = fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, at)| *k == a && *at >= changed)
            .map(|(_, port, _)| *port)
            .collect();
        assert_eq!(ports, BTreeSet::from([8080]));

        // Recovers by the (kept) state machine: two successes.
        let ok_from = Instant::now();
        fake.fail(a.clone(), false);
        let t = rx.recv().await.unwrap();
        assert!(t.healthy);
        assert_eq!(fake.calls(&a, ok_from).len(), 2);
        assert!(p.unhealthy().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_target_is_left_alone() {
        let (mut p, _rx, _fake) = prober(8);
        let targets = vec![target("a", 1, spec(1, 1)), target("b", 1, spec(1, 1))];
        p.set_targets(targets.clone());
        let generations = |p: &Prober| -> Vec<u64> {
            lock(&p.shared)
                .slots
                .values()
                .map(|s| s.generation)
                .collect()
        };
        let before = generations(&p);
        tokio::time::sleep(PERIOD).await;
        p.set_targets(targets.into_iter().rev().collect());
        assert_eq!(before, generations(&p));
        assert!(p.tasks.values().all(|r| !r.handle.is_finished()));
    }

    #[tokio::test(start_paused = true)]
    async fn same_ip_in_two_vpcs_are_two_targets() {
        let (mut p, mut rx, fake) = prober(8);
        fake.fail(key("a", 1), true);
        p.set_targets(vec![target("a", 1, spec(1, 1)), target("b", 1, spec(1, 1))]);
        let t = rx.recv().await.unwrap();
        assert_eq!((t.vpc.as_str(), t.healthy), ("a", false));
        tokio::time::sleep(PERIOD * 3).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(p.unhealthy(), BTreeSet::from([key("a", 1)]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_is_cut_and_never_overlaps() {
        let (mut p, mut rx, fake) = prober(8);
        let t0 = Instant::now();
        let a = key("a", 1);
        fake.hanging.lock().unwrap().insert(a.clone());
        let mut s = spec(1, 2);
        s.timeout = PERIOD * 2;
        p.set_targets(vec![target("a", 1, s.clone())]);
        let t = rx.recv().await.unwrap();
        assert!(!t.healthy);
        assert_eq!(
            t.detail,
            "2 consecutive failures, last: timed out after 20100 ms"
        );
        // The second check started when the first gave up, not a period later (and
        // the third right after the second: it may have started already).
        let calls = fake.calls(&a, t0);
        assert!(calls.len() >= 2);
        assert_eq!(calls[1] - calls[0], s.timeout + CHECK_GRACE);
        assert_eq!(t.at, calls[1] + s.timeout + CHECK_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_channel_never_holds_probes_up() {
        let (mut p, mut rx, fake) = prober(1);
        let a = key("a", 1);
        p.set_targets(vec![target("a", 1, spec(1, 1))]);
        for round in 0..4 {
            let down = round % 2 == 0;
            fake.fail(a.clone(), down);
            tokio::time::sleep(PERIOD * 2).await;
            assert_eq!(p.unhealthy().contains(&a), down, "round {round}");
        }
        // Only the first transition fit.
        assert!(!rx.recv().await.unwrap().healthy);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_prober_stops_every_task() {
        let (mut p, _rx, fake) = prober(8);
        p.set_targets(vec![target("a", 1, spec(1, 1)), target("a", 2, spec(1, 1))]);
        tokio::time::sleep(PERIOD * 2).await;
        let handles: Vec<_> = p.tasks.values().map(|r| r.handle.abort_handle()).collect();
        drop(p);
        let dropped = Instant::now();
        tokio::time::sleep(PERIOD * 3).await;
        assert!(fake.calls(&key("a", 1), dropped).is_empty());
        assert!(fake.calls(&key("a", 2), dropped).is_empty());
        assert!(handles.iter().all(|h| h.is_finished()));
    }
}
