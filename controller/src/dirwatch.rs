//! Wakes the intent task when something in the intent directory changes:
//! inotify, through the `notify` crate. A manifest written (or renamed into
//! place) is picked up after `DEBOUNCE`, instead of at the next poll.
//!
//! The poll stays, as a safety net for what inotify cannot see (a directory on
//! a network file system, a watch that failed, an overflowed event queue): every
//! `FALLBACK_POLL` while the watch runs, every `POLL` without one. A wake-up only
//! makes the intent task poll; the poll decides whether anything changed (file
//! fingerprints, then contents), so spurious events cost one `stat` per file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// How often the directory is polled when no watch runs.
pub const POLL: Duration = Duration::from_millis(500);
/// How often it is polled anyway while the watch runs.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// After an event, how long to wait for the rest of a burst (an editor's
/// write and rename, several files copied in) before polling once.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct DirWatch {
    /// Dropping it stops the watch.
    watcher: Option<RecommendedWatcher>,
    changed: Arc<Notify>,
}

impl DirWatch {
    /// Watches `dir` (not recursively: the controller reads only its top
    /// level). A watch that cannot start is logged, and polling carries on.
    pub fn start(dir: &Path) -> Self {
        let changed = Arc::new(Notify::new());
        let wake = changed.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // An error (an overflowed queue, say) may hide a change: poll.
            if event.map_or(true, |e| wakes(&e.kind)) {
                wake.notify_one();
            }
        })
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "cannot watch the intent directory ({e}); polling it every {} ms",
                    POLL.as_millis()
                );
                None
            }
        };
        DirWatch { watcher, changed }
    }

    /// Whether changes wake the intent task (else it only polls).
    pub fn active(&self) -> bool {
        self.watcher.is_some()
    }

    /// How often to poll besides.
    pub fn poll_interval(&self) -> Duration {
        if self.active() {
            FALLBACK_POLL
        } else {
            POLL
        }
    }

    /// Resolves when something changed in the directory (a wake-up that
    /// arrived while nobody waited is kept for the next call). Callers wait
    /// `DEBOUNCE` before they poll, outside any `select!`, so that a burst
    /// becomes one poll and no wake-up is lost to a cancelled wait.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Whether an event may mean a changed manifest. Reads are not: inotify
/// reports every open and close of a file, and the poll reads the files it
/// finds changed, so waking on those would make each poll wake the next (one
/// poll every `DEBOUNCE`, for ever).
fn wakes(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_written_into_the_directory_wakes_it() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirWatch::start(dir.path());
        assert!(w.active());
        assert_eq!(w.poll_interval(), FALLBACK_POLL);
        // Nothing happened: no wake-up.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.changed())
                .await
                .is_err()
        );
        let tmp = dir.path().join(".x.yaml.tmp");
        std::fs::write(&tmp, "a: 1\n").unwrap();
        std::fs::rename(&tmp, dir.path().join("x.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("the write woke the watch");
        // Reading the file, as the poll does, is no change.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::time::timeout(Duration::from_millis(10), w.changed()).await;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.yaml")).unwrap(),
            "a: 1\n"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), w.changed())
                .await
                .is_err(),
            "reading a manifest woke the watch"
        );
    }

    #[test]
    fn a_missing_directory_falls_back_to_polling() {
        let w = DirWatch::start(Path::new("/nonexistent/intent"));
        assert!(!w.active());
        assert_eq!(w.poll_interval(), POLL);
    }
}
