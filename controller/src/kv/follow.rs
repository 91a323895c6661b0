//! Following every key under a prefix without missing a change: list, then
//! watch from the listing's revision; a compacted watch lists again at once, a
//! failed one (the store is down) after a backoff, and so does an optional
//! periodic re-list. The follower hands out each listing whole (so the caller
//! can mark and sweep: a delete in a gap is seen as a key no longer listed)
//! and the watch's events in between.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{Event, KvError, Listing, Store, Watch, WatchItem};

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a [`Follower`] hands out.
#[derive(Debug)]
pub enum Followed {
    /// Every key under the prefix now: what is not in it is gone.
    Listing(Listing),
    /// Changes after the last listing, in order.
    Events(Vec<Event>),
}

#[derive(Debug)]
pub struct Follower {
    store: Store,
    prefix: String,
    what: &'static str,
    watch: Option<Watch>,
    /// When to list (and watch) again; `None` while the watch runs.
    list_at: Option<Instant>,
    wait: Duration,
    relist: Option<Interval>,
}

impl Follower {
    /// Lists at the first `next`. `what` names the keys in log lines;
    /// `relist`, if any, lists again that often whatever the watch says.
    pub fn new(store: Store, prefix: &str, what: &'static str, relist: Option<Duration>) -> Self {
        let relist = relist.map(|every| {
            let mut i = tokio::time::interval_at(Instant::now() + every, every);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Follower {
            store,
            prefix: prefix.to_string(),
            what,
            watch: None,
            list_at: Some(Instant::now()),
            wait: RETRY_MIN,
            relist,
        }
    }

    fn retry_later(&mut self) {
        self.watch = None;
        self.list_at = Some(Instant::now() + self.wait);
        self.wait = (self.wait * 2).min(RETRY_MAX);
    }

    async fn list_and_watch(&self) -> Result<(Listing, Watch), KvError> {
        let listing = self.store.list(&self.prefix).await?;
        let watch = self.store.watch(&self.prefix, listing.revision + 1).await?;
        Ok((listing, watch))
    }

    /// The next listing or events. Cancel-safe: usable in `select!`.
    pub async fn next(&mut self) -> Followed {
        loop {
            let woke = {
                let Follower {
                    watch,
                    list_at,
                    relist,
                    ..
                } = &mut *self;
                let watching = watch.is_some();
                tokio::select! {
                    _ = async {
                        match relist.as_mut() {
                            Some(i) if watching => i.tick().await,
                            _ => std::future::pending().await,
                        }
                    } => Woke::Relist,
                    item = async {
                        match watch.as_mut() {
                            Some(w) => w.items.recv().await,
                            None => std::future::pending().await,
                        }
                    } => Woke::Item(item),
                    _ = async {
                        match *list_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => Woke::Due,
                }
            };
            match woke {
                Woke::Relist | Woke::Item(Some(Ok(WatchItem::Compacted(_)))) => {
                    self.watch = None;
                    self.list_at = Some(Instant::now());
                }
                Woke::Item(Some(Ok(WatchItem::Events(events)))) => return Followed::Events(events),
                Woke::Item(Some(Ok(WatchItem::Progress(_)))) => {}
                Woke::Item(Some(Err(e))) => {
                    tracing::warn!(error = %e, "the watch of {} failed; listing again", self.what);
                    self.retry_later();
                }
                Woke::Item(None) => self.retry_later(),
                Woke::Due => match self.list_and_watch().await {
                    Ok((listing, watch)) => {
                        self.watch = Some(watch);
                        self.list_at = None;
                        self.wait = RETRY_MIN;
                        return Followed::Listing(listing);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read {} from the store; retrying", self.what);
                        self.retry_later();
                    }
                },
            }
        }
    }
}

enum Woke {
    Relist,
    Item(Option<Result<WatchItem, KvError>>),
    Due,
}
