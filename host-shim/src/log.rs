//! Debug lines on stderr, only with `DPU_SHIM_DEBUG=1`. Stdout carries the CNI result
//! alone, so nothing here ever writes to it.

use std::fmt::Arguments;
use std::sync::OnceLock;

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("DPU_SHIM_DEBUG").is_ok_and(|v| v == "1"))
}

pub fn debug(args: Arguments<'_>) {
    if enabled() {
        eprintln!("host-shim: {args}");
    }
}
