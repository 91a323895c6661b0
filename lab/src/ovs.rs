//! One private Open vSwitch per test: its own db file, run dir, sockets, logs and pid
//! files in a fresh temp dir, and (for `ovs-vswitchd`) its own network namespace.
//!
//! Why a namespace: the userspace (`netdev`) datapath creates a tap device called
//! `ovs-netdev` plus one tap per bridge and internal port. Two `ovs-vswitchd` in one
//! namespace collide on those names, so each instance runs its switch in a named netns
//! (`dpuovs-<pid>-<n>`, see [`OvsInstance::netns`]) that the lab can put representors
//! into. `ovsdb-server` and the unix sockets need no namespace.
//!
//! Everything started here is stopped by the pid in its pid file (SIGTERM, up to 5 s,
//! then SIGKILL), never by name, from `Drop`. Every external command has a time bound,
//! and every error names the command and carries its stderr.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::prereq::find_program as program;

/// The schema the Debian package installs.
pub const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// Bound on any one OVS command line tool run (`ovs-vsctl` itself gets `--timeout=10`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon gets to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for a daemon's socket after `--detach` returned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

static NETNS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running private OVS. Dropping it stops the daemons and deletes the namespace.
#[derive(Debug)]
pub struct OvsInstance {
    dir: TempDir,
    /// The namespace `ovs-vswitchd` runs in; `None` for a db-only instance.
    netns: Option<String>,
    vswitchd_running: bool,
}

impl OvsInstance {
    /// Starts `ovsdb-server` (with an initialized `Open_vSwitch` row) and `ovs-vswitchd`.
    /// Without root or Open vSwitch it fails with [`crate::prereq::root_and_ovs`]'s
    /// message before it starts anything.
    pub fn start() -> Result<Self> {
        crate::prereq::root_and_ovs()?;
        let mut ovs = Self::start_db_only()?;
        let ns = format!(
            "dpuovs-{}-{}",
            std::process::id(),
            NETNS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Recorded for lab/run-tests' clean-up before it exists.
        crate::netns::claim_netns(&ns)?;
        run(Command::new(program("ip")?).args(["netns", "add", &ns]))?;
        ovs.netns = Some(ns);
        ovs.start_vswitchd()?;
        Ok(ovs)
    }

    /// Starts only `ovsdb-server` on a fresh database and runs `ovs-vsctl init`.
    pub fn start_db_only() -> Result<Self> {
        program("ovsdb-server").context(
            "ovsdb-server is not installed; the lab needs Open vSwitch (openvswitch-switch)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("dpuovs-")
            .tempdir()
            .context("creating the OVS temp dir")?;
        let ovs = OvsInstance {
            dir,
            netns: None,
            vswitchd_running: false,
        };
        let db = ovs.path("conf.db");
        ovs.run_ovs(
            Command::new(program("ovsdb-tool")?)
                .arg("create")
                .arg(&db)
                .arg(VSWITCH_SCHEMA),
        )?;
        ovs.start_ovsdb_server()?;
        ovs.run_ovs(
            Command::new(program("ovs-vsctl")?)
                .arg(ovs.db_arg())
                .args(["--no-wait", "init"]),
        )?;
        Ok(ovs)
    }

    /// The instance's directory: db file, sockets, pid files, logs, `<bridge>.mgmt`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The OVSDB unix socket (`<dir>/db.sock`).
    pub fn db_sock(&self) -> PathBuf {
        self.path("db.sock")
    }

    /// The network namespace `ovs-vswitchd` runs in (`None` for a db-only instance).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The OpenFlow management target of `bridge`: `unix:<dir>/<bridge>.mgmt`.
    pub fn mgmt(&self, bridge: &str) -> String {
        format!("unix:{}", self.path(&format!("{bridge}.mgmt")).display())
    }

    /// Runs `ovs-vsctl --db=unix:<sock> --timeout=10 <args>` and returns stdout without
    /// the trailing newline. Adds `--no-wait` while `ovs-vswitchd` is not running.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(program("ovs-vsctl")?);
        cmd.arg(self.db_arg()).arg("--timeout=10");
        if !self.vswitchd_running {
            cmd.arg("--no-wait");
        }
        cmd.args(args);
        Ok(self.run_ovs(&mut cmd)?.trim_end().to_string())
    }

    /// Runs `ovs-ofctl -O OpenFlow15 <args>`; pass [`Self::mgmt`] as the target.
    pub fn ofctl(&self, args: &[&str]) -> Result<String> {
        self.run_ovs(
            Command::new(program("ovs-ofctl")?)
                .args(["-O", "OpenFlow15"])
                .args(args),
        )
    }

    /// The flows of `bridge` (`dump-flows --no-stats`), one per line, headers removed.
    pub fn dump_flows(&self, bridge: &str) -> Result<Vec<String>> {
        let out = self.ofctl(&["--no-stats", "dump-flows", &self.mgmt(bridge)])?;
        Ok(body_lines(&out))
    }

    /// The groups of `bridge` (`dump-groups`), one per line, headers removed.
    pub fn dump_groups(&self, bridge: &str) -> Result<Vec<String>> {
        let out = self.ofctl(&["dump-groups", &self.mgmt(bridge)])?;
        Ok(body_lines(&out))
    }

    /// The packets counted by the flows of `bridge` whose cookie is exactly `cookie`
    /// (the sum of their `n_packets`). The userspace datapath folds its counters into
    /// the flows every half second or so, so poll rather than read once.
    pub fn packets_by_cookie(&self, bridge: &str, cookie: u64) -> Result<u64> {
        let filter = format!("cookie={cookie:#x}/-1");
        let out = self.ofctl(&["dump-flows", &self.mgmt(bridge), &filter])?;
        sum_n_packets(&out).with_context(|| format!("flows of {bridge} with {filter}"))
    }

    /// Runs `ovs-appctl -t <dir>/ovsdb-server.ctl <args>`.
    pub fn db_appctl(&self, args: &[&str]) -> Result<String> {
        let target = self.path("ovsdb-server.ctl");
        self.run_ovs(
            Command::new(program("ovs-appctl")?)
                .arg("-t")
                .arg(target)
                .args(args),
        )
    }

    /// Runs `ovs-appctl -t <dir>/ovs-vswitchd.ctl <args>`.
    pub fn vswitchd_appctl(&self, args: &[&str]) -> Result<String> {
        let target = self.path("ovs-vswitchd.ctl");
        self.run_ovs(
            Command::new(program("ovs-appctl")?)
                .arg("-t")
                .arg(target)
                .args(args),
        )
    }

    /// Creates `bridge` the way the agent keeps it: userspace datapath,
    /// `fail_mode=secure`, OpenFlow 1.5. The agent's own ensure is idempotent.
    pub fn add_bridge(&self, bridge: &str) -> Result<()> {
        self.vsctl(&[
            "add-br",
            bridge,
            "--",
            "set",
            "bridge",
            bridge,
            "datapath_type=netdev",
            "fail_mode=secure",
            "protocols=OpenFlow15",
        ])?;
        Ok(())
    }

    /// Moves a representor (a veth end in the root namespace) into the switch's
    /// namespace and brings it up with TX checksum offload off (TCP over veth fails
    /// on the userspace datapath otherwise). It is not added to any bridge.
    pub fn adopt(&self, rep: &str) -> Result<()> {
        let ns = self
            .netns()
            .ok_or_else(|| anyhow!("a db-only OVS has no switch namespace for {rep}"))?;
        let ip = program("ip")?;
        run(Command::new(&ip).args(["link", "set", rep, "netns", ns]))?;
        run(Command::new(&ip).args(["-n", ns, "link", "set", rep, "up"]))?;
        run(Command::new(&ip).args(["netns", "exec", ns, "ethtool", "-K", rep, "tx", "off"]))?;
        Ok(())
    }

    /// Adopts a representor (see `adopt`) and adds it to `bridge` as a port with
    /// `external_ids:iface-id=<iface_id>`. Returns its OpenFlow port number.
    pub fn plug(&self, bridge: &str, rep: &str, iface_id: &str) -> Result<u32> {
        self.adopt(rep)?;
        self.vsctl(&[
            "add-port",
            bridge,
            rep,
            "--",
            "set",
            "Interface",
            rep,
            &format!("external_ids:iface-id={iface_id}"),
        ])?;
        let ofport = self.vsctl(&["get", "Interface", rep, "ofport"])?;
        ofport
            .trim()
            .parse()
            .with_context(|| format!("ofport of {rep}: {ofport:?}"))
    }

    /// Starts `ovsdb-server` on the existing db file (also used to restart it).
    pub fn start_ovsdb_server(&self) -> Result<()> {
        let mut cmd = Command::new(program("ovsdb-server")?);
        cmd.arg(self.path("conf.db"))
            .arg(format!("--remote=punix:{}", self.db_sock().display()))
            .arg(format!(
                "--pidfile={}",
                self.path("ovsdb-server.pid").display()
            ))
            .arg(format!(
                "--unixctl={}",
                self.path("ovsdb-server.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                self.path("ovsdb-server.log").display()
            ))
            .arg("--detach");
        self.run_ovs(&mut cmd)
            .with_context(|| self.log_tail("ovsdb-server.log"))?;
        wait_for_path(&self.db_sock(), READY_TIMEOUT)
            .with_context(|| self.log_tail("ovsdb-server.log"))
    }

    /// Stops `ovsdb-server` by the pid in its pid file.
    pub fn stop_ovsdb_server(&self) -> Result<()> {
        stop_by_pidfile(&self.path("ovsdb-server.pid"), "ovsdb-server")
    }

    /// Starts `ovs-vswitchd` in the instance's namespace (also used to restart it).
    pub fn start_vswitchd(&mut self) -> Result<()> {
        let Some(ns) = self.netns.clone() else {
            bail!("this OvsInstance was started db-only; it has no namespace for ovs-vswitchd");
        };
        let mut cmd = Command::new(program("ip")?);
        cmd.args(["netns", "exec", &ns])
            .arg(program("ovs-vswitchd")?)
            .arg(format!("unix:{}", self.db_sock().display()))
            .arg(format!(
                "--pidfile={}",
                self.path("ovs-vswitchd.pid").display()
            ))
            .arg(format!(
                "--unixctl={}",
                self.path("ovs-vswitchd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                self.path("ovs-vswitchd.log").display()
            ))
            .arg("--detach");
        self.run_ovs(&mut cmd)
            .with_context(|| self.log_tail("ovs-vswitchd.log"))?;
        wait_for_path(&self.path("ovs-vswitchd.ctl"), READY_TIMEOUT)
            .with_context(|| self.log_tail("ovs-vswitchd.log"))?;
        self.vswitchd_running = true;
        Ok(())
    }

    /// Stops `ovs-vswitchd` by the pid in its pid file.
    pub fn stop_vswitchd(&mut self) -> Result<()> {
        self.vswitchd_running = false;
        stop_by_pidfile(&self.path("ovs-vswitchd.pid"), "ovs-vswitchd")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn db_arg(&self) -> String {
        format!("--db=unix:{}", self.db_sock().display())
    }

    /// Runs an OVS tool with the OVS_* directories pointed at this instance.
    fn run_ovs(&self, cmd: &mut Command) -> Result<String> {
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            cmd.env(var, self.dir.path());
        }
        run(cmd)
    }

    fn log_tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("last lines of {}:\n{tail}", self.path(log).display())
    }
}

impl Drop for OvsInstance {
    fn drop(&mut self) {
        if let Err(e) = self.stop_vswitchd() {
            eprintln!("OvsInstance drop: {e:#}");
        }
        if let Err(e) = self.stop_ovsdb_server() {
            eprintln!("OvsInstance drop: {e:#}");
        }
        if let Some(ns) = self.netns.take() {
            if let Err(e) =
                program("ip").and_then(|ip| run(Command::new(ip).args(["netns", "del", &ns])))
            {
                eprintln!("OvsInstance drop: {e:#}");
            }
        }
    }
}

/// `ovs-ofctl` output without its `OFPST_…`/`NXST_…` reply header lines.
fn body_lines(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("OFPST_") && !l.starts_with("NXST_"))
        .map(str::to_string)
        .collect()
}

/// The sum of the `n_packets=` fields of a `dump-flows` reply.
fn sum_n_packets(out: &str) -> Result<u64> {
    body_lines(out)
        .iter()
        .map(|line| {
            let field = line
                .split([',', ' '])
                .find_map(|f| f.strip_prefix("n_packets="))
                .ok_or_else(|| anyhow!("flow without n_packets: {line}"))?;
            field
                .parse::<u64>()
                .with_context(|| format!("n_packets in {line}"))
        })
        .sum()
}

/// Finds `name` in `PATH` or the sbin directories.
/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`] and returns its stdout. Output goes
/// to anonymous files, not pipes, so a `--detach`ed daemon holding them cannot block us.
fn run(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = tempfile::tempfile().context("creating a temp file for stdout")?;
    let err = tempfile::tempfile().context("creating a temp file for stderr")?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("`{line}` could not be started"))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{line}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{line}` did not finish within {COMMAND_TIMEOUT:?}; stderr: {}",
                read_all(err).trim()
            );
        }
        sleep(Duration::from_millis(10));
    };
    let stdout = read_all(out);
    if !status.success() {
        bail!(
            "`{line}` failed ({status}); stderr: {}",
            read_all(err).trim()
        );
    }
    Ok(stdout)
}

fn read_all(mut file: File) -> String {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut text);
    text
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn wait_for_path(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() >= deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Stops the process named in `pidfile` if it is alive and really is `comm`: SIGTERM,
/// up to [`STOP_GRACE`], then SIGKILL. A missing pid file means "not running".
fn stop_by_pidfile(pidfile: &Path, comm: &str) -> Result<()> {
    let text = match std::fs::read_to_string(pidfile) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pidfile.display())),
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid: {text:?}", pidfile.display()))?;
    if !is_alive(pid) {
        let _ = std::fs::remove_file(pidfile);
        return Ok(());
    }
    let actual = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if actual.trim() != comm {
        bail!(
            "{} names pid {pid}, which is {:?}, not {comm}; not signalling it",
            pidfile.display(),
            actual.trim()
        );
    }
    signal(pid, libc::SIGTERM).with_context(|| format!("SIGTERM to {comm} (pid {pid})"))?;
    if !wait_dead(pid, STOP_GRACE) {
        signal(pid, libc::SIGKILL).with_context(|| format!("SIGKILL to {comm} (pid {pid})"))?;
        if !wait_dead(pid, Duration::from_secs(2)) {
            bail!("{comm} (pid {pid}) survived SIGKILL");
        }
    }
    let _ = std::fs::remove_file(pidfile);
    Ok(())
}

fn wait_dead(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
    true
}

/// Alive means present in /proc and not a zombie: detached daemons are reparented to
/// pid 1, which in containers often does not reap them.
fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

#[allow(unsafe_code)]
fn signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) takes two integers and reads or writes no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_lines_drop_reply_headers() {
        let out = "OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):\n group_id=1,type=select\n\n";
        assert_eq!(body_lines(out), vec!["group_id=1,type=select".to_string()]);
    }

    #[test]
    fn n_packets_are_summed_over_the_reply() {
        let out = "OFPST_FLOW reply (OF1.5) (xid=0x2):\n \
            cookie=0x10, duration=1.2s, table=0, n_packets=2, n_bytes=84, priority=100,arp actions=drop\n \
            cookie=0x10, duration=1.2s, table=0, n_packets=30, n_bytes=2035, priority=100,ip actions=drop\n";
        assert_eq!(sum_n_packets(out).unwrap(), 32);
        assert_eq!(
            sum_n_packets("OFPST_FLOW reply (OF1.5) (xid=0x2):\n").unwrap(),
            0
        );
        assert!(sum_n_packets(" cookie=0x1, priority=1 actions=drop\n").is_err());
    }

    #[test]
    fn failing_command_names_itself_and_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh -c") && msg.contains("boom"), "{msg}");
    }
}
