//! Debug lines on stderr, only with `DPU_SHIM_DEBUG=1`, stamped with the time since the
//! first line. Stdout carries the CNI result alone, so nothing here ever writes to it.

use std::fmt::Arguments;
use std::sync::OnceLock;
use std::time::Instant;

fn enabled() -> Option<Instant> {
    static START: OnceLock<Option<Instant>> = OnceLock::new();
    *START.get_or_init(|| {
        std::env::var("DPU_SHIM_DEBUG")
            .is_ok_and(|v| v == "1")
            .then(Instant::now)
    })
}

pub fn debug(args: Arguments<'_>) {
    if let Some(start) = enabled() {
        let ms = start.elapsed().as_secs_f64() * 1e3;
        eprintln!("host-shim: +{ms:.1}ms {args}");
    }
}
