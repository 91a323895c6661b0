//! The CNI plugin binary: environment and stdin in, one JSON document out.

use std::io::Write;

fn main() {
    let outcome = host_shim::run(
        |name| std::env::var(name).ok(),
        &mut std::io::stdin().lock(),
    );
    let mut stdout = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        // Nothing useful can be done if stdout is gone; the exit status still tells.
        let _ = writeln!(stdout, "{}", outcome.stdout);
        let _ = stdout.flush();
    }
    std::process::exit(outcome.exit_code);
}
