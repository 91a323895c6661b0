//! systemd's service notification protocol (`sd_notify(3)`), without libsystemd:
//! one datagram per message to the unix socket named by `$NOTIFY_SOCKET` (a path,
//! or an abstract name written with a leading `@`). Outside systemd nothing is set
//! and every call is a no-op.
//!
//! It owns the watchdog too. The agent loop beats a [`Heartbeat`] on every iteration
//! and on a timer; [`Systemd::watchdog`] sends `WATCHDOG=1` every half of
//! `$WATCHDOG_USEC` only while that heartbeat is at most `$WATCHDOG_USEC` old. So a
//! loop step may take up to the watchdog timeout (an `ovs-ofctl` run is bounded at
//! 60 s), and a wedged loop is killed within twice the timeout. The controller plays no
//! part: fail-static (no controller) keeps the loop and so the pings alive, while a
//! wedged loop stops them and systemd restarts the agent.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Where notifications go: a parsed `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    Path(std::path::PathBuf),
    /// Linux abstract namespace; `@name` in the variable.
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`. Empty or relative values are ignored, as libsystemd does.
pub fn parse_notify_socket(value: &str) -> Option<NotifyTarget> {
    if let Some(name) = value.strip_prefix('@') {
        return (!name.is_empty()).then(|| NotifyTarget::Abstract(name.as_bytes().to_vec()));
    }
    value
        .starts_with('/')
        .then(|| NotifyTarget::Path(value.into()))
}

/// The watchdog timeout from `$WATCHDOG_USEC`, if it is meant for this process
/// (`$WATCHDOG_PID` unset or equal to `pid`), as `sd_watchdog_enabled(3)` decides.
pub fn parse_watchdog(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// The last time the agent loop went round; `None` until the loop started (startup
/// is bounded by systemd's `TimeoutStartSec=` instead).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<Mutex<Option<Instant>>>);

impl Heartbeat {
    pub fn beat(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn last(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a ping is due: the loop has not started yet, or it beat within `max_age`.
pub fn heartbeat_fresh(last: Option<Instant>, now: Instant, max_age: Duration) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) <= max_age)
}

/// What `STATUS=` says about the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The endpoint the controller session is up on; `None` while it is down.
    pub controller: Option<String>,
    /// `None` while no intent was ever applied or restored.
    pub applied_version: Option<u64>,
    pub pods: usize,
}

impl AgentStatus {
    pub fn line(&self) -> String {
        let controller = match &self.controller {
            Some(endpoint) => format!("connected to {endpoint}"),
            None => "disconnected".to_string(),
        };
        let applied = match self.applied_version {
            Some(v) => format!("applied version {v}"),
            None => "no intent yet".to_string(),
        };
        format!("controller {controller}; {applied}; {} pods", self.pods)
    }
}

#[derive(Debug)]
struct Socket {
    sock: UnixDatagram,
    addr: SocketAddr,
}

#[derive(Debug, Default)]
struct Sent {
    ready: bool,
    status: String,
}

/// The agent's handle on systemd. Cheap to clone; every send is best effort (a
/// lost notification is logged, never fatal).
#[derive(Debug, Clone, Default)]
pub struct Systemd {
    socket: Option<Arc<Socket>>,
    watchdog: Option<Duration>,
    heartbeat: Heartbeat,
    sent: Arc<Mutex<Sent>>,
}

impl Systemd {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Systemd {
        let var = |k: &str| std::env::var(k).ok();
        let target = var("NOTIFY_SOCKET").and_then(|v| parse_notify_socket(&v));
        let watchdog = parse_watchdog(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        match target {
            None => Systemd::default(),
            Some(t) => match Systemd::connect(&t, watchdog) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target = ?t, error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                    Systemd::default()
                }
            },
        }
    }

    /// A handle that sends to `target`, with a watchdog of `watchdog` if any.
    pub fn connect(target: &NotifyTarget, watchdog: Option<Duration>) -> io::Result<Systemd> {
        let addr = match target {
            NotifyTarget::Path(p) => SocketAddr::from_pathname(p)?,
            NotifyTarget::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
        };
        let sock = UnixDatagram::unbound()?;
        // A full receive queue must not stall the agent.
        sock.set_nonblocking(true)?;
        Ok(Systemd {
            socket: Some(Arc::new(Socket { sock, addr })),
            watchdog,
            ..Systemd::default()
        })
    }

    /// The watchdog timeout systemd asked for, if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often the agent loop must beat even when idle: a quarter of the
    /// watchdog timeout, so two beats fall in every ping period.
    pub fn beat_period(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 4)
    }

    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    fn send(&self, msg: &str) {
        let Some(s) = &self.socket else { return };
        if let Err(e) = s.sock.send_to_addr(msg.as_bytes(), &s.addr) {
            tracing::warn!(error = %e, msg, "cannot notify systemd");
        }
    }

    /// `READY=1`, once per process.
    pub fn ready(&self, status: &AgentStatus) {
        let line = status.line();
        {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.ready {
                return;
            }
            sent.ready = true;
            sent.status = line.clone();
        }
        tracing::info!(status = %line, "ready");
        self.send(&format!("READY=1\nSTATUS={line}"));
    }

    /// `STATUS=`, only when the line changed.
    pub fn status(&self, status: &AgentStatus) {
        let line = status.line();
        {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.status == line {
                return;
            }
            sent.status = line.clone();
        }
        self.send(&format!("STATUS={line}"));
    }

    /// `STOPPING=1`: sent as soon as a stop was asked for.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping; the switch keeps forwarding");
    }

    /// Pings every half watchdog timeout while the heartbeat is at most one timeout old.
    /// Returns at once when systemd set no watchdog; otherwise runs until aborted.
    pub async fn watchdog(self) {
        let Some(timeout) = self.watchdog else { return };
        let period = timeout / 2;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            tick.tick().await;
            let last = self.heartbeat.last();
            if heartbeat_fresh(last, Instant::now(), timeout) {
                if stalled {
                    tracing::warn!("agent loop is running again; watchdog pings resume");
                    stalled = false;
                }
                self.send("WATCHDOG=1");
            } else if !stalled {
                stalled = true;
                tracing::error!(
                    since = ?last.map(|t| t.elapsed()),
                    "agent loop is stuck; withholding watchdog pings"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_forms() {
        assert_eq!(
            parse_notify_socket("/run/systemd/notify"),
            Some(NotifyTarget::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_socket("@sd-notify"),
            Some(NotifyTarget::Abstract(b"sd-notify".to_vec()))
        );
        assert_eq!(parse_notify_socket(""), None);
        assert_eq!(parse_notify_socket("@"), None);
        assert_eq!(parse_notify_socket("relative/sock"), None);
    }

    #[test]
    fn watchdog_only_for_this_pid() {
        let s = Some(Duration::from_secs(30));
        assert_eq!(parse_watchdog(Some("30000000"), None, 7), s);
        assert_eq!(parse_watchdog(Some("30000000"), Some("7"), 7), s);
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
    }

    #[test]
    fn status_line() {
        let mut s = AgentStatus::default();
        assert_eq!(s.line(), "controller disconnected; no intent yet; 0 pods");
        s.controller = Some("https://b:50051".into());
        s.applied_version = Some(12);
        s.pods = 3;
        assert_eq!(
            s.line(),
            "controller connected to https://b:50051; applied version 12; 3 pods"
        );
    }

    /// A test-owned notify socket and a `Systemd` that sends to it.
    fn pair(watchdog: Option<Duration>) -> (tempfile::TempDir, UnixDatagram, Systemd) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let sd = Systemd::connect(&NotifyTarget::Path(path), watchdog).unwrap();
        (dir, rx, sd)
    }

    fn drain(rx: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn ready_once_and_status_only_on_change() {
        let (_d, rx, sd) = pair(None);
        let mut st = AgentStatus::default();
        sd.ready(&st);
        sd.ready(&st);
        sd.status(&st);
        st.controller = Some("https://a:1".into());
        sd.status(&st);
        sd.status(&st);
        sd.stopping();
        assert_eq!(
            drain(&rx),
            [
                "READY=1\nSTATUS=controller disconnected; no intent yet; 0 pods",
                "STATUS=controller connected to https://a:1; no intent yet; 0 pods",
                "STOPPING=1\nSTATUS=stopping; the switch keeps forwarding",
            ]
        );
    }

    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("dpu-agent-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        rx.set_nonblocking(true).unwrap();
        let target = parse_notify_socket(&format!("@{name}")).unwrap();
        Systemd::connect(&target, None).unwrap().stopping();
        assert_eq!(drain(&rx).len(), 1);
    }

    #[test]
    fn nothing_is_sent_without_a_socket() {
        let sd = Systemd::default();
        sd.ready(&AgentStatus::default());
        sd.stopping();
        assert_eq!(sd.beat_period(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_watchdog_task_without_watchdog_usec() {
        let (_d, _rx, sd) = pair(None);
        // Returns at once instead of running forever.
        tokio::time::timeout(Duration::from_secs(1), sd.watchdog())
            .await
            .unwrap();
    }

    #[test]
    fn freshness() {
        let now = Instant::now();
        let max = Duration::from_secs(5);
        assert!(heartbeat_fresh(None, now, max));
        assert!(heartbeat_fresh(Some(now), now + max, max));
        assert!(!heartbeat_fresh(
            Some(now),
            now + max + Duration::from_millis(1),
            max
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_at_half_the_timeout_while_the_loop_beats() {
        let (_d, rx, sd) = pair(Some(Duration::from_secs(2)));
        let period = sd.beat_period().unwrap();
        let hb = sd.heartbeat().clone();
        let task = tokio::spawn(sd.clone().watchdog());
        // The loop beats on its timer for 10 s: pings at 0, 1, ..., 10 s.
        for _ in 0..20 {
            hb.beat();
            tokio::time::sleep(period).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let pings = drain(&rx);
        assert!(pings.iter().all(|p| p == "WATCHDOG=1"), "{pings:?}");
        assert_eq!(pings.len(), 11, "{pings:?}");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn pings_during_startup_before_the_first_beat() {
        let (_d, rx, sd) = pair(Some(Duration::from_secs(2)));
        let task = tokio::spawn(sd.clone().watchdog());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(drain(&rx).len(), 4);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_loop_stops_the_pings_and_a_live_one_resumes_them() {
        let (_d, rx, sd) = pair(Some(Duration::from_secs(2)));
        let hb = sd.heartbeat().clone();
        let task = tokio::spawn(sd.clone().watchdog());
        hb.beat();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drain(&rx).len(), 1, "first ping at once");
        // The loop stalls: the pings at 1 s and 2 s still see a beat no older than
        // the 2 s timeout, the ones after do not, so systemd fires by 4 s.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(drain(&rx).len(), 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(drain(&rx).is_empty(), "no pings while stuck");
        hb.beat();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(drain(&rx).len(), 1, "pings resume once the loop runs");
        task.abort();
    }
}
