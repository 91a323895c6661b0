//! The one configuration of every property test (docs/testing.md, "Fuzzing and
//! property tests").

use proptest::test_runner::Config;

/// How long a failure may shrink before it is reported, in milliseconds.
pub const MAX_SHRINK_MS: u32 = 30_000;

/// `cases` cases unless `PROPTEST_CASES` says otherwise. No regression files: a
/// failure prints its minimal input, which belongs in a unit test beside the
/// code. Shrinking is bounded so that a failure is reported within a minute.
pub fn config(cases: u32) -> Config {
    let mut c = Config {
        failure_persistence: None,
        max_shrink_time: MAX_SHRINK_MS,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_no_files_and_bounds_shrinking() {
        let c = config(7);
        assert!(c.failure_persistence.is_none());
        assert_eq!(c.max_shrink_time, MAX_SHRINK_MS);
        if std::env::var_os("PROPTEST_CASES").is_none() {
            assert_eq!(c.cases, 7);
        }
    }
}
