//! `lab/run-tests` deletes only the network namespaces the lab made: every one is
//! recorded in `$DPU_LAB_ROOT/netns.list` before it is made, and the clean-up deletes
//! those (killing what runs inside) and nothing else, not a namespace something else
//! on the machine made during the run. Needs root and Open vSwitch (fails without).
//!
//! A child process (this test binary, running the ignored helper below with
//! `DPU_LAB_ROOT` set to a directory of the test's own) makes namespaces through the
//! lab's API and exits without dropping them, as a crashed test does. Then the test
//! runs the clean-up step of the real script (`lab/run-tests --delete-listed-netns`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dpu_lab::netns::{self, Netns};
use dpu_lab::ovs::OvsInstance;
use dpu_lab::process::wait_until;

/// Set in the helper's environment: the names it makes.
const LEFT_VAR: &str = "CLEANUP_TEST_LEFT_NETNS";
const FOREIGN_VAR: &str = "CLEANUP_TEST_FOREIGN_NETNS";

/// A namespace made with plain `ip netns add`, as anything else on the machine would
/// (not through the lab, so not recorded). Deleted by name on drop if still there.
struct Foreign(String);

impl Foreign {
    fn new(name: &str) -> Self {
        netns::ip(&["netns", "add", name]).expect("ip netns add");
        Self(name.to_owned())
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        if netns::netns_exists(&self.0) {
            let _ = netns::ip(&["netns", "del", &self.0]);
        }
    }
}

fn listed(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join(netns::NETNS_LIST))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_tests_deletes_the_namespaces_the_lab_listed_and_no_other() {
    dpu_lab::prereq::assert_root_and_ovs();
    let prefix = netns::unique_prefix("cleanup");
    let left = format!("{prefix}-left");
    let root = tempfile::tempdir().unwrap();
    // If this test fails half-way, the run's own clean-up still finds `left`.
    netns::record_netns(&left).unwrap();

    // Someone else's namespaces: one made before the "run", one during it.
    let before = Foreign::new(&format!("{prefix}-before"));
    let during = Foreign::new(&format!("{prefix}-during"));

    // A "crashed test": makes namespaces through the lab and exits without dropping.
    let helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crashing_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DPU_LAB_ROOT", root.path())
        .env(LEFT_VAR, &left)
        .env(FOREIGN_VAR, &during.0)
        .output()
        .unwrap();
    let helper_out = format!(
        "{}{}",
        String::from_utf8_lossy(&helper.stdout),
        String::from_utf8_lossy(&helper.stderr)
    );
    assert!(helper.status.success(), "helper: {helper_out}");
    let sleeper: u32 = std::fs::read_to_string(root.path().join("sleeper"))
        .unwrap_or_else(|e| panic!("helper wrote no sleeper pid ({e}): {helper_out}"))
        .trim()
        .parse()
        .unwrap();

    // Recorded: the namespace left behind and the switch's (made and deleted by its
    // OvsInstance); not recorded: the name that already existed.
    let names = listed(root.path());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("dpuovs-"), "{names:?}");
    assert_eq!(names[1], left, "{names:?}");
    assert!(
        !netns::netns_exists(&names[0]),
        "the OVS guard deleted its own"
    );
    assert!(netns::netns_exists(&left), "the helper's namespace is left");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("run-tests");
    let out = Command::new(&script)
        .arg("--delete-listed-netns")
        .arg(root.path().join(netns::NETNS_LIST))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(!netns::netns_exists(&left), "the listed namespace is gone");
    // What ran inside was killed (init reaps it; it may be a zombie for a moment).
    wait_until(
        "the process in the deleted netns to die",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
                .map_or(true, |stat| stat.contains(") Z "))
        },
    )
    .unwrap();
    // Namespaces the lab did not list are untouched, the one made during the run too.
    assert!(netns::netns_exists(&before.0), "{} was deleted", before.0);
    assert!(netns::netns_exists(&during.0), "{} was deleted", during.0);
    let existing = netns::list_netns().unwrap();
    assert!(existing.contains(&during.0), "{existing:?}");
}

/// Run by the test above in a child process (ignored otherwise): makes a namespace
/// with a process in it and exits without dropping it; starts and stops a private OVS
/// (its namespace is recorded too); fails to make one that exists already.
#[test]
#[ignore = "helper of run_tests_deletes_the_namespaces_the_lab_listed_and_no_other"]
fn crashing_helper() {
    let left = std::env::var(LEFT_VAR).expect("run by the test above only");
    let foreign = std::env::var(FOREIGN_VAR).expect("run by the test above only");
    let root = std::env::var("DPU_LAB_ROOT").expect("DPU_LAB_ROOT");

    let err = Netns::new(&foreign).expect_err("someone else's namespace");
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    drop(OvsInstance::start().expect("start a private OVS"));

    let ns = Netns::new(&left).expect("make the namespace");
    let sleeper = ns
        .command(["sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sleep in the namespace");
    let pid = sleeper.id().to_string();
    wait_until("sleep inside the namespace", Duration::from_secs(5), || {
        netns::ip(&["netns", "pids", &left])
            .is_ok_and(|pids| pids.split_whitespace().any(|p| p == pid))
    })
    .unwrap();
    std::fs::write(Path::new(&root).join("sleeper"), pid).unwrap();
    // The crash: no Drop runs, the namespace and its process stay.
    std::process::exit(0);
}
