//! Shared by the bench's end-to-end tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Runs `dpu-bench` with `args`, killing it if it runs longer than `limit`
/// (then the test fails, naming `what`).
pub fn run_bench<I, S>(args: I, limit: Duration, what: &str) -> ExitStatus
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpu-bench"))
        .args(args)
        .spawn()
        .expect("dpu-bench runs");
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
