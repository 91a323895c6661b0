//! What an unauthenticated `Enroll` caller can cost: failed attempts per source
//! address and per token id (token buckets with bounded memory), and log lines
//! per interval. Pure: every method takes the time, so tests need no clock.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Failed Enroll attempts one source address may make at once...
pub const SOURCE_BURST: u32 = 5;
/// ...and how often it gets one back (5 per 10 s sustained).
pub const SOURCE_REFILL: Duration = Duration::from_secs(2);
/// Failed proofs of one token id's secret (an unknown id or a wrong secret),
/// from any address, at once...
pub const TOKEN_BURST: u32 = 3;
/// ...and how often one comes back.
pub const TOKEN_REFILL: Duration = Duration::from_secs(10);
/// Sources and token ids tracked each; past that, entries that are full again
/// go first, then the least recently used.
pub const MAX_TRACKED: usize = 4096;
/// Enroll/Renew refusals logged per `LOG_INTERVAL`; the rest are counted in one
/// line at the end of the interval.
pub const LOG_MAX_LINES: u32 = 10;
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket's shape: `burst` attempts, one more every `refill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub refill: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Attempts left at `at`.
    level: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, rate: Rate, now: Instant) -> f64 {
        let gained =
            now.saturating_duration_since(self.at).as_secs_f64() / rate.refill.as_secs_f64();
        (self.level + gained).min(f64::from(rate.burst))
    }
}

/// One bucket per key, at most `max` keys.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: Rate,
    max: usize,
    map: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: Rate, max: usize) -> Self {
        Buckets {
            rate,
            max: max.max(1),
            map: HashMap::new(),
        }
    }

    /// How long until `key` has an attempt; zero if it has one now.
    pub fn wait(&self, key: &K, now: Instant) -> Duration {
        let Some(b) = self.map.get(key) else {
            return Duration::ZERO;
        };
        let level = b.level(self.rate, now);
        if level >= 1.0 {
            Duration::ZERO
        } else {
            self.rate.refill.mul_f64(1.0 - level)
        }
    }

    /// Takes one attempt from `key` (the caller saw `wait` return zero).
    pub fn take(&mut self, key: &K, now: Instant) {
        if !self.map.contains_key(key) && self.map.len() >= self.max {
            self.evict(now);
        }
        let rate = self.rate;
        let b = self.map.entry(key.clone()).or_insert(Bucket {
            level: f64::from(rate.burst),
            at: now,
        });
        b.level = (b.level(rate, now) - 1.0).max(0.0);
        b.at = now;
    }

    /// Gives back an attempt taken from `key`.
    pub fn give_back(&mut self, key: &K, now: Instant) {
        let rate = self.rate;
        if let Some(b) = self.map.get_mut(key) {
            b.level = (b.level(rate, now) + 1.0).min(f64::from(rate.burst));
            b.at = now;
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    /// Makes room for one key: drops the buckets that are full again (they
    /// hold nothing a new one would not), else the least recently used.
    fn evict(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, f64::from(self.rate.burst));
        self.map.retain(|_, b| b.level(rate, now) < burst);
        while self.map.len() >= self.max {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.map.remove(&k),
                None => break,
            };
        }
    }
}

/// Where attempts come from: an IPv4 address, or an IPv6 /64 (a single host
/// usually has a whole /64 to pick addresses from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(std::net::Ipv4Addr),
    V6Net(Ipv6Addr),
    Unknown,
}

impl SourceKey {
    pub fn of(addr: Option<IpAddr>) -> SourceKey {
        match addr {
            None => SourceKey::Unknown,
            Some(IpAddr::V4(a)) => SourceKey::V4(a),
            Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4),
                None => {
                    let bits = u128::from(a) & !((1u128 << 64) - 1);
                    SourceKey::V6Net(Ipv6Addr::from(bits))
                }
            },
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::V4(a) => write!(f, "{a}"),
            SourceKey::V6Net(a) => write!(f, "{a}/64"),
            SourceKey::Unknown => f.write_str("an unknown address"),
        }
    }
}

/// Why an attempt was not even looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    Source { source: SourceKey, retry: Duration },
    Token { id: String, retry: Duration },
}

/// The attempts an Enroll took; handed back with its outcome.
#[derive(Debug)]
pub struct Permit {
    source: SourceKey,
    token: Option<String>,
}

/// How an admitted Enroll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A certificate was issued: nothing counts.
    Issued,
    /// Refused or failed after the token's secret was proven: counts for the
    /// source only.
    FailedWithSecret,
    /// Refused before the secret was proven (a malformed, unknown or wrong
    /// token, a bad node name): counts for the source and the token id.
    Failed,
}

/// Failed Enroll attempts per source and per token id.
#[derive(Debug)]
pub struct EnrollLimits {
    sources: Buckets<SourceKey>,
    tokens: Buckets<String>,
}

impl Default for EnrollLimits {
    fn default() -> Self {
        Self::new(
            Rate {
                burst: SOURCE_BURST,
                refill: SOURCE_REFILL,
            },
            Rate {
                burst: TOKEN_BURST,
                refill: TOKEN_REFILL,
            },
            MAX_TRACKED,
        )
    }
}

impl EnrollLimits {
    pub fn new(source: Rate, token: Rate, max_tracked: usize) -> Self {
        EnrollLimits {
            sources: Buckets::new(source, max_tracked),
            tokens: Buckets::new(token, max_tracked),
        }
    }

    /// Takes an attempt from the source and from the token id (if the token
    /// has one), or says how long to wait; a refused attempt takes nothing.
    /// Every attempt takes one up front, so concurrent ones cannot overdraw;
    /// `finish` gives back what the outcome does not count.
    pub fn admit(
        &mut self,
        source: Option<IpAddr>,
        token_id: Option<&str>,
        now: Instant,
    ) -> Result<Permit, Limited> {
        let source = SourceKey::of(source);
        let retry = self.sources.wait(&source, now);
        if !retry.is_zero() {
            return Err(Limited::Source { source, retry });
        }
        let token = token_id.map(str::to_string);
        if let Some(id) = &token {
            let retry = self.tokens.wait(id, now);
            if !retry.is_zero() {
                return Err(Limited::Token {
                    id: id.clone(),
                    retry,
                });
            }
            self.tokens.take(id, now);
        }
        self.sources.take(&source, now);
        Ok(Permit { source, token })
    }

    pub fn finish(&mut self, permit: Permit, outcome: Outcome, now: Instant) {
        if outcome == Outcome::Issued {
            self.sources.give_back(&permit.source, now);
        }
        if let (Some(id), Outcome::Issued | Outcome::FailedWithSecret) = (&permit.token, outcome) {
            self.tokens.give_back(id, now);
        }
    }

    /// Sources and token ids tracked.
    pub fn tracked(&self) -> (usize, usize) {
        (self.sources.len(), self.tokens.len())
    }
}

/// Whole seconds to tell a caller to wait (at least 1).
pub fn retry_secs(retry: Duration) -> u64 {
    retry.as_secs_f64().ceil().max(1.0) as u64
}

/// What `LogBudget::admit` says about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    Log,
    /// Not logged. `summary` is set for the first one of an interval: call
    /// `flush(generation)` at `at` to log how many were left out.
    Suppress {
        summary: Option<(u64, Instant)>,
    },
}

/// At most `max` lines per `interval`, and a count of the rest.
#[derive(Debug)]
pub struct LogBudget {
    max: u32,
    interval: Duration,
    start: Option<Instant>,
    generation: u64,
    logged: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new(LOG_MAX_LINES, LOG_INTERVAL)
    }
}

impl LogBudget {
    pub fn new(max: u32, interval: Duration) -> Self {
        LogBudget {
            max,
            interval,
            start: None,
            generation: 0,
            logged: 0,
            suppressed: 0,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts one failure at `now`. Returns the count left out of the previous
    /// interval if it was not flushed yet (log it first), and whether to log
    /// this one.
    pub fn admit(&mut self, now: Instant) -> (Option<u64>, LogVerdict) {
        let mut due = None;
        let expired = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.interval);
        if expired {
            if self.suppressed > 0 {
                due = Some(self.suppressed);
            }
            self.start = Some(now);
            self.generation += 1;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < self.max {
            self.logged += 1;
            return (due, LogVerdict::Log);
        }
        self.suppressed += 1;
        let summary = (self.suppressed == 1).then(|| {
            let start = self.start.unwrap_or(now);
            (self.generation, start + self.interval)
        });
        (due, LogVerdict::Suppress { summary })
    }

    /// The count left out of interval `generation`, once, if it is still the
    /// current one (else `admit` already returned it).
    pub fn flush(&mut self, generation: u64) -> Option<u64> {
        if generation != self.generation || self.suppressed == 0 {
            return None;
        }
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const S: Duration = Duration::from_secs(1);

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    fn id(n: u32) -> String {
        format!("{n:016x}")
    }

    #[test]
    fn a_source_gets_its_burst_then_one_attempt_per_refill() {
        let mut l = EnrollLimits::default();
        let t0 = Instant::now();
        for _ in 0..SOURCE_BURST {
            let p = l.admit(ip(1), None, t0).unwrap();
            l.finish(p, Outcome::Failed, t0);
        }
        let Err(Limited::Source { source, retry }) = l.admit(ip(1), None, t0) else {
            panic!("the sixth attempt at once is limited");
        };
        assert_eq!(source.to_string(), "192.0.2.1");
        assert_eq!(retry, SOURCE_REFILL);
        assert_eq!(retry_secs(retry), 2);
        // Another address is not affected.
        l.admit(ip(2), None, t0).unwrap();
        // Refused attempts take nothing: half a refill later, half is left to wait.
        let half = t0 + SOURCE_REFILL / 2;
        assert!(matches!(
            l.admit(ip(1), None, half),
            Err(Limited::Source { retry, .. }) if retry == SOURCE_REFILL / 2
        ));
        let p = l.admit(ip(1), None, t0 + SOURCE_REFILL).unwrap();
        l.finish(p, Outcome::Failed, t0 + SOURCE_REFILL);
        assert!(l.admit(ip(1), None, t0 + SOURCE_REFILL).is_err());
        // After a long quiet time, the full burst (not more) is back.
        let later = t0 + 100 * SOURCE_REFILL;
        for _ in 0..SOURCE_BURST {
            l.admit(ip(1), None, later).unwrap();
        }
        assert!(l.admit(ip(1), None, later).is_err());
    }

    #[test]
    fn issued_certificates_do_not_count() {
        let mut l = EnrollLimits::default();
        let t0 = Instant::now();
        for n in 0..50 {
            let p = l.admit(ip(1), Some(&id(n)), t0).unwrap();
            l.finish(p, Outcome::Issued, t0);
        }
        // But attempts in flight hold theirs.
        let held: Vec<_> = (0..SOURCE_BURST)
            .map(|n| l.admit(ip(1), Some(&id(100 + n)), t0).unwrap())
            .collect();
        assert!(l.admit(ip(1), None, t0).is_err());
        for p in held {
            l.finish(p, Outcome::Issued, t0);
        }
        l.admit(ip(1), None, t0).unwrap();
    }

    #[test]
    fn a_token_id_is_limited_across_sources_for_unproven_secrets_only() {
        let mut l = EnrollLimits::default();
        let t0 = Instant::now();
        let tid = id(7);
        for n in 0..TOKEN_BURST {
            let p = l.admit(ip(n as u8), Some(&tid), t0).unwrap();
            l.finish(p, Outcome::Failed, t0);
        }
        match l.admit(ip(200), Some(&tid), t0) {
            Err(Limited::Token { id, retry }) => {
                assert_eq!(id, tid);
                assert_eq!(retry, TOKEN_REFILL);
            }
            other => panic!("{other:?}"),
        }
        // The source that was refused lost nothing.
        for _ in 0..SOURCE_BURST {
            l.admit(ip(200), None, t0).unwrap();
        }
        // Other ids are not affected; failures with a proven secret count for
        // the source only.
        let other = id(8);
        for n in 0..10 {
            let p = l.admit(ip(50 + n), Some(&other), t0).unwrap();
            l.finish(p, Outcome::FailedWithSecret, t0);
        }
        l.admit(ip(99), Some(&other), t0).unwrap();
        let p = l.admit(ip(1), Some(&tid), t0 + TOKEN_REFILL).unwrap();
        l.finish(p, Outcome::Failed, t0 + TOKEN_REFILL);
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_go_first() {
        let rate = Rate {
            burst: 2,
            refill: S,
        };
        let mut l = EnrollLimits::new(rate, rate, 4);
        let t0 = Instant::now();
        for n in 1..=4 {
            l.admit(ip(n), None, t0).unwrap();
        }
        // 1000 more sources and token ids: never more than 4 of each tracked.
        for n in 0..1000u32 {
            let a = Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)));
            l.admit(a, Some(&id(n)), t0).unwrap();
            assert!(
                l.tracked().0 <= 4 && l.tracked().1 <= 4,
                "{:?}",
                l.tracked()
            );
        }
        // Buckets that are full again go before older ones that still count.
        let mut l = EnrollLimits::new(rate, rate, 2);
        l.admit(ip(1), None, t0).unwrap();
        l.admit(ip(1), None, t0).unwrap();
        l.admit(ip(2), None, t0 + S / 2).unwrap();
        // At 1.6 s, source 2 (the newer) is full again, source 1 (drained) not yet.
        l.admit(ip(3), None, t0 + S * 16 / 10).unwrap();
        assert_eq!(l.tracked().0, 2);
        assert!(l.sources.map.contains_key(&SourceKey::of(ip(1))));
        assert!(!l.sources.map.contains_key(&SourceKey::of(ip(2))));
        // With none full, the least recently used goes.
        l.admit(ip(4), None, t0 + S * 16 / 10).unwrap();
        assert!(!l.sources.map.contains_key(&SourceKey::of(ip(1))));
        assert!(l.sources.map.contains_key(&SourceKey::of(ip(3))));
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::of(Some(a)), SourceKey::of(Some(b)));
        assert_ne!(SourceKey::of(Some(a)), SourceKey::of(Some(c)));
        assert_eq!(SourceKey::of(Some(a)).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(SourceKey::of(Some(mapped)), SourceKey::of(ip(1)));
        assert_eq!(SourceKey::of(None).to_string(), "an unknown address");
        let mut l = EnrollLimits::default();
        let t0 = Instant::now();
        for n in 0..SOURCE_BURST {
            let addr = format!("2001:db8:1:2::{n}").parse().unwrap();
            l.admit(Some(addr), None, t0).unwrap();
        }
        assert!(l.admit(Some(b), None, t0).is_err());
        l.admit(Some(c), None, t0).unwrap();
    }

    #[test]
    fn retry_is_whole_seconds_rounded_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_secs(Duration::from_secs(10)), 10);
    }

    #[test]
    fn log_budget_logs_ten_per_interval_and_counts_the_rest() {
        let mut b = LogBudget::default();
        let t0 = Instant::now();
        for _ in 0..LOG_MAX_LINES {
            assert_eq!(b.admit(t0), (None, LogVerdict::Log));
        }
        // The first one left out asks for a summary at the end of the interval.
        let (due, v) = b.admit(t0 + S);
        assert_eq!(due, None);
        let LogVerdict::Suppress {
            summary: Some((generation, at)),
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!(at, t0 + LOG_INTERVAL);
        for _ in 0..999 {
            assert_eq!(
                b.admit(t0 + 2 * S),
                (None, LogVerdict::Suppress { summary: None })
            );
        }
        assert_eq!(b.flush(generation), Some(1000));
        assert_eq!(b.flush(generation), None, "once");
        // The next interval starts with the next failure.
        let t1 = t0 + LOG_INTERVAL + S;
        assert_eq!(b.admit(t1), (None, LogVerdict::Log));
        assert_eq!(b.flush(generation), None);
    }

    #[test]
    fn an_unflushed_count_comes_with_the_next_interval() {
        let mut b = LogBudget::new(1, LOG_INTERVAL);
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), (None, LogVerdict::Log));
        let (_, v) = b.admit(t0);
        let LogVerdict::Suppress {
            summary: Some((generation, _)),
        } = v
        else {
            panic!("{v:?}")
        };
        b.admit(t0);
        // The timer was late: the next failure brings the count, once.
        assert_eq!(b.admit(t0 + LOG_INTERVAL), (Some(2), LogVerdict::Log));
        assert_eq!(b.flush(generation), None);
        // Quiet intervals log nothing and start fresh.
        assert_eq!(b.admit(t0 + 5 * LOG_INTERVAL), (None, LogVerdict::Log));
    }
}
