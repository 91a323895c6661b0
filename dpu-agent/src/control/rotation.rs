//! Which controller the session tries next, and how long it waits first. Pure:
//! the session feeds it what happened and sleeps what it says.
//!
//! Endpoints are tried round robin, starting with the one after the one that
//! failed. Moving on to the next endpoint is immediate; only a whole pass over
//! the list that failed waits the backoff, which doubles per failed pass up to
//! the max. A session that lasted [`LONG_SESSION`] starts a fresh pass at the
//! minimum backoff.

use std::time::Duration;

/// A session that lasted longer than this was a working one: the next failure
/// starts over at the minimum backoff.
pub const LONG_SESSION: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Rotation {
    len: usize,
    current: usize,
    /// Endpoints that failed in the pass under way.
    failed_in_pass: usize,
    /// What the next failed pass waits (before jitter).
    backoff: Duration,
    min: Duration,
    max: Duration,
}

impl Rotation {
    /// Starts at endpoint 0 of `len` (at least one).
    pub fn new(len: usize, min: Duration, max: Duration) -> Rotation {
        Rotation {
            len: len.max(1),
            current: 0,
            failed_in_pass: 0,
            backoff: min,
            min,
            max,
        }
    }

    /// The index of the endpoint to try now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The session on the current endpoint failed or ended after `lasted`: moves
    /// to the next endpoint and returns how long to wait before trying it, before
    /// jitter (zero: at once).
    pub fn failed(&mut self, lasted: Duration) -> Duration {
        if lasted > LONG_SESSION {
            self.backoff = self.min;
            self.failed_in_pass = 0;
        }
        self.current = (self.current + 1) % self.len;
        self.failed_in_pass += 1;
        if self.failed_in_pass < self.len {
            return Duration::ZERO;
        }
        self.failed_in_pass = 0;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.max);
        wait
    }

    /// The certificate was renewed: reconnect to the same endpoint at once, and
    /// start a fresh pass at the minimum backoff.
    pub fn renewed(&mut self) {
        self.backoff = self.min;
        self.failed_in_pass = 0;
    }
}

/// `wait` scaled into `[wait/2, wait]` by `r` in `[0, 1)`.
pub fn jittered(wait: Duration, r: f64) -> Duration {
    wait.mul_f64(0.5 + r.clamp(0.0, 1.0) * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_millis(1000);
    const SHORT: Duration = Duration::from_secs(1);

    /// (endpoint tried next, wait in ms) for each of `n` short failures.
    fn schedule(r: &mut Rotation, n: usize) -> Vec<(usize, u128)> {
        (0..n)
            .map(|_| {
                let wait = r.failed(SHORT);
                (r.current(), wait.as_millis())
            })
            .collect()
    }

    #[test]
    fn one_endpoint_backs_off_as_before() {
        let mut r = Rotation::new(1, MIN, MAX);
        assert_eq!(
            schedule(&mut r, 6),
            [(0, 100), (0, 200), (0, 400), (0, 800), (0, 1000), (0, 1000)]
        );
    }

    #[test]
    fn the_next_endpoint_is_tried_at_once_and_a_failed_pass_backs_off() {
        let mut r = Rotation::new(3, MIN, MAX);
        assert_eq!(r.current(), 0);
        assert_eq!(
            schedule(&mut r, 9),
            [
                (1, 0),
                (2, 0),
                (0, 100),
                (1, 0),
                (2, 0),
                (0, 200),
                (1, 0),
                (2, 0),
                (0, 400)
            ]
        );
    }

    #[test]
    fn a_long_session_resets_the_backoff_and_starts_a_pass_at_the_next_endpoint() {
        let mut r = Rotation::new(2, MIN, MAX);
        assert_eq!(
            schedule(&mut r, 6),
            [(1, 0), (0, 100), (1, 0), (0, 200), (1, 0), (0, 400)]
        );
        // Up on endpoint 0 for a minute, then lost: endpoint 1 at once, then a
        // pass that failed waits the minimum again.
        assert_eq!(r.failed(Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(r.current(), 1);
        assert_eq!(schedule(&mut r, 2), [(0, 100), (1, 0)]);
        // Exactly LONG_SESSION is not long.
        assert_eq!(r.failed(LONG_SESSION), Duration::from_millis(200));
    }

    #[test]
    fn a_renewal_keeps_the_endpoint_and_resets_the_backoff() {
        let mut r = Rotation::new(2, MIN, MAX);
        assert_eq!(schedule(&mut r, 4), [(1, 0), (0, 100), (1, 0), (0, 200)]);
        r.renewed();
        assert_eq!(r.current(), 0);
        assert_eq!(schedule(&mut r, 2), [(1, 0), (0, 100)]);
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_wait() {
        let w = Duration::from_millis(1000);
        assert_eq!(jittered(w, 0.0), Duration::from_millis(500));
        assert_eq!(jittered(w, 0.5), Duration::from_millis(750));
        assert!(jittered(w, 0.999_999) <= w);
        assert_eq!(jittered(Duration::ZERO, 0.7), Duration::ZERO);
    }
}
