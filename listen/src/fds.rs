//! The descriptor budget: how many of the process's file descriptors
//! (RLIMIT_NOFILE) peers of a listener may hold, so that the process's own work
//! always keeps a fixed reserve. See docs/limits.md, "Connections and
//! descriptors", for the numbers each program uses and why.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The smallest count a listener budget is given even when the limit is too
/// low for the plan (the budget is then marked `short`).
pub const MIN_SHARE: usize = 4;

/// How a program splits its descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Descriptors kept for the program's own work, never given to peers.
    pub reserved: u64,
    /// Upper bounds of each listener budget. Of what is left after the
    /// reserve, the handshake phase gets a quarter and anonymous connections
    /// an eighth (each at most its bound), and authenticated ones the rest
    /// (at most their bound).
    pub max_handshaking: usize,
    pub max_anonymous: usize,
    pub max_authenticated: usize,
}

/// The split for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// RLIMIT_NOFILE (soft) the split was made for.
    pub limit: u64,
    pub reserved: u64,
    pub handshaking: usize,
    pub anonymous: usize,
    pub authenticated: usize,
    /// The limit is below `reserved` + the minimum shares: peers may run the
    /// process out of descriptors (the accept loop then backs off).
    pub short: bool,
}

impl Budget {
    /// Descriptors peers of the listener can hold at most (plus the listening
    /// socket and one being accepted).
    pub fn peers(&self) -> u64 {
        (self.handshaking + self.anonymous + self.authenticated) as u64
    }
}

impl Plan {
    pub fn budget(&self, limit: u64) -> Budget {
        let free = limit.saturating_sub(self.reserved);
        let share = |n: u64, max: usize| -> usize {
            if max == 0 {
                0
            } else {
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .clamp(MIN_SHARE, max)
            }
        };
        let handshaking = share(free / 4, self.max_handshaking);
        let anonymous = share(free / 8, self.max_anonymous);
        let rest = free.saturating_sub((handshaking + anonymous) as u64);
        let authenticated = share(rest, self.max_authenticated);
        let peers = (handshaking + anonymous + authenticated) as u64;
        Budget {
            limit,
            reserved: self.reserved,
            handshaking,
            anonymous,
            authenticated,
            short: self.reserved + peers > limit,
        }
    }
}

/// The soft RLIMIT_NOFILE, after raising it to the hard limit (at most `cap`)
/// if it is lower. Raising can fail (a seccomp filter, a container); the limit
/// as it is is then returned.
pub fn raise_nofile(cap: u64) -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let want = hard.min(cap);
    if soft >= want {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
        Ok(()) => Ok(want),
        Err(e) => {
            tracing::debug!(error = %e, soft, want, "cannot raise RLIMIT_NOFILE");
            Ok(soft)
        }
    }
}

/// RLIMIT_NOFILE (raised to at most `cap`) split by `plan`, with one log line:
/// the budget at info, or a warning naming `too_low` when the limit is below
/// the reserve plus the minimal listener. An unreadable limit counts as 1024.
pub fn budget_from_rlimit(what: &str, plan: &Plan, cap: u64, too_low: &str) -> Budget {
    let limit = raise_nofile(cap).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE; assuming 1024");
        1024
    });
    let budget = plan.budget(limit);
    if budget.short {
        tracing::warn!(
            nofile = limit,
            reserved = budget.reserved,
            handshaking = budget.handshaking,
            authenticated = budget.authenticated,
            "{what}: {too_low}"
        );
    } else {
        tracing::info!(
            nofile = limit,
            reserved = budget.reserved,
            handshaking = budget.handshaking,
            anonymous = budget.anonymous,
            authenticated = budget.authenticated,
            "{what} connection budget"
        );
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROLLER: Plan = Plan {
        reserved: 128,
        max_handshaking: 1024,
        max_anonymous: 256,
        max_authenticated: 65536,
    };

    #[test]
    fn splits_what_is_left_after_the_reserve() {
        let b = CONTROLLER.budget(1024);
        assert_eq!(
            (b.handshaking, b.anonymous, b.authenticated, b.short),
            (224, 112, 560, false)
        );
        assert_eq!(b.reserved + b.peers(), 1024);
        let b = CONTROLLER.budget(256);
        assert_eq!((b.handshaking, b.anonymous, b.authenticated), (32, 16, 80));
        let b = CONTROLLER.budget(65536);
        assert_eq!((b.handshaking, b.anonymous), (1024, 256));
        assert!(b.reserved + b.peers() <= 65536);
    }

    #[test]
    fn a_limit_below_the_reserve_gets_the_minimum_and_says_so() {
        let b = CONTROLLER.budget(64);
        assert_eq!(
            (b.handshaking, b.anonymous, b.authenticated),
            (MIN_SHARE, MIN_SHARE, MIN_SHARE)
        );
        assert!(b.short);
    }

    #[test]
    fn no_anonymous_share_when_the_plan_has_none() {
        let agent = Plan {
            reserved: 1024,
            max_handshaking: 64,
            max_anonymous: 0,
            max_authenticated: 64,
        };
        let b = agent.budget(4096);
        assert_eq!((b.handshaking, b.anonymous, b.authenticated), (64, 0, 64));
        assert!(!b.short);
    }
}
