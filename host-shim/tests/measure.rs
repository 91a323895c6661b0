//! The host's cost per pod: CPU time and peak RSS of one ADD and one DEL (the real
//! binary, moving a real veth "VF", against the fake agent), printed as a table. Run
//! `measure.sh` for the release binary's figures and its size; README.md records them.
//! `MEASURE_TRACE=1` also prints one ADD's and one DEL's debug trace (timestamped).
//! CPU time comes from the kernel's accounting of waited-for children (microseconds;
//! GNU time rounds to 10 ms), peak RSS from `/usr/bin/time -v` when it is installed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::resource::{getrusage, UsageWho};

const RUNS: usize = 5;

/// Peak RSS (KiB) from GNU time's `-v` report.
fn peak_rss_kib(time_v: &str) -> Option<u64> {
    time_v
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))?
        .trim()
        .parse()
        .ok()
}

/// CPU time (user + system) of every child waited for so far.
fn children_cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// One run: (CPU time, wall time) of the process tree, from the kernel's accounting.
fn cpu_run(inv: &Invocation<'_>, cfg: &serde_json::Value) -> (Duration, Duration) {
    let before = children_cpu();
    let started = Instant::now();
    let out = shim_raw(inv, cfg.to_string().as_bytes(), &[("DPU_SHIM_DEBUG", "0")]);
    let wall = started.elapsed();
    assert_eq!(
        out.code, 0,
        "{} failed: {}\n{}",
        inv.command, out.json, out.stderr
    );
    (children_cpu() - before, wall)
}

/// One run under `/usr/bin/time -v`: the plugin's peak RSS.
fn rss_run(inv: &Invocation<'_>, cfg: &serde_json::Value) -> u64 {
    let timed = Invocation {
        timed: true,
        ..inv.clone()
    };
    let out = shim_raw(
        &timed,
        cfg.to_string().as_bytes(),
        &[("DPU_SHIM_DEBUG", "0")],
    );
    assert_eq!(
        out.code, 0,
        "{} failed: {}\n{}",
        inv.command, out.json, out.stderr
    );
    peak_rss_kib(&out.stderr).unwrap_or_else(|| panic!("no time -v report in {}", out.stderr))
}

/// Runs `f` on a thread inside the netns `name`: children it spawns start there, with
/// no `ip netns exec` in between to blur the figures.
fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
    })
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

#[test]
fn cpu_and_peak_rss_of_one_add_and_one_del() {
    require_root_and_ip();
    let prefix = unique_prefix();
    let pki = Pki::new();
    let host = new_netns(&format!("{prefix}-host"));
    let pod = new_netns(&format!("{prefix}-pod"));
    let vf = Vf::new(&prefix, &host);
    let agent = FakeAgent::start(
        &pki,
        Some(host.name()),
        FakeState {
            template: template(&vf.vf),
            ready: true,
            ..Default::default()
        },
    );
    let gnu_time = Path::new(TIME).exists();
    let netns = pod.path();
    let inv = |command| Invocation {
        command,
        container_id: "m1",
        ifname: "eth0",
        netns: Some(&netns),
        run_in: None,
        timed: false,
    };
    let mut cfg = config(&pki, &agent.url);
    cfg["vfAllowList"] = serde_json::json!([vf.vf]);
    if std::env::var("MEASURE_TRACE").is_ok() {
        for command in ["ADD", "DEL"] {
            let out = in_netns(host.name(), || shim(&inv(command), &cfg));
            println!("{}", out.stderr);
        }
    }

    let mut cpu = [Vec::new(), Vec::new()];
    let mut wall = [Vec::new(), Vec::new()];
    let mut rss = [Vec::new(), Vec::new()];
    for _ in 0..RUNS {
        for (i, command) in ["ADD", "DEL"].into_iter().enumerate() {
            let (c, w) = in_netns(host.name(), || cpu_run(&inv(command), &cfg));
            cpu[i].push(c);
            wall[i].push(w);
        }
        if gnu_time {
            for (i, command) in ["ADD", "DEL"].into_iter().enumerate() {
                rss[i].push(in_netns(host.name(), || rss_run(&inv(command), &cfg)));
            }
        }
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let size = std::fs::metadata(SHIM).map(|m| m.len()).unwrap_or(0);
    println!("host-shim ({profile} build, {size} bytes), median of {RUNS} runs");
    println!(
        "source: CPU from getrusage(RUSAGE_CHILDREN); RSS from {}",
        if gnu_time {
            "/usr/bin/time -v"
        } else {
            "nothing (no /usr/bin/time)"
        }
    );
    for (i, name) in ["ADD", "DEL"].into_iter().enumerate() {
        let runs: Vec<String> = cpu[i].iter().map(|c| ms(*c)).collect();
        let peak = rss[i].clone();
        println!(
            "{name}: CPU {} ms (runs: {}), wall {} ms, peak RSS {}",
            ms(median(cpu[i].clone())),
            runs.join(", "),
            ms(median(wall[i].clone())),
            if peak.is_empty() {
                "n/a".to_string()
            } else {
                format!("{} KiB", median(peak))
            }
        );
    }
    assert!(agent.state().attachments.is_empty(), "every DEL detached");
    assert!(
        !link(host.name(), &vf.vf).is_null(),
        "the VF is back on the host"
    );
}
