//! Choosing the one replica that writes: the leader, and the fence on its
//! writes.
//!
//! - **etcd**: etcd's election API (`Campaign` on `<prefix>election`) with a
//!   lease of [`LEADER_TTL`], kept alive every third of it. The leader's key is
//!   `<prefix>election/<lease>`; it exists only while the lease lives.
//! - **embedded**: an exclusive flock(2) on `<store>/leader.lock`, which the
//!   kernel drops with the process; the new leader then writes
//!   `election/leader` afresh.
//!
//! Either way a leader's writes carry [`Leadership::fence`]: a comparison that
//! holds only while its own election key exists with the create revision it
//! had when it won. Two replicas that both believe they lead (one paused past
//! its lease, say) cannot both write: the old leader's key is gone or was made
//! again, so its transaction fails.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Cmp, KvError, Revision, Store, Txn};

/// The leader's lease: a dead leader is replaced within this time.
pub const LEADER_TTL: Duration = Duration::from_secs(10);
/// The embedded store's leader key.
const LOCAL_KEY: &str = "election/leader";
const LOCK: &str = "leader.lock";
/// A keep-alive that failed is tried again after this.
const RETRY: Duration = Duration::from_millis(500);

/// Won leadership. Dropping it gives leadership up (the lease is revoked, or
/// the flock released).
#[derive(Debug)]
pub struct Leadership {
    /// The election key, relative to the store's prefix.
    pub key: String,
    /// Its create revision.
    pub rev: Revision,
    /// Becomes true when leadership is lost (the lease could not be kept).
    lost: watch::Receiver<bool>,
    guard: Guard,
}

enum Guard {
    /// Held, not read: the flock is released when it drops; the sender keeps
    /// `lost` open (an embedded store's leadership is never lost).
    Local(
        #[allow(dead_code)] nix::fcntl::Flock<std::fs::File>,
        #[allow(dead_code)] watch::Sender<bool>,
    ),
    Etcd {
        client: Box<Client>,
        lease: i64,
        keeper: JoinHandle<()>,
    },
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Guard::Local(..) => f.write_str("Guard::Local"),
            Guard::Etcd { lease, .. } => write!(f, "Guard::Etcd {{ lease: {lease:x} }}"),
        }
    }
}

impl Leadership {
    /// The comparison every leader write carries.
    pub fn fence(&self) -> Cmp {
        Cmp::CreateRevision(self.key.clone(), self.rev)
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// The etcd lease that keeps it (`None` on the embedded store).
    pub fn lease(&self) -> Option<i64> {
        match &self.guard {
            Guard::Etcd { lease, .. } => Some(*lease),
            Guard::Local(..) => None,
        }
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Gives leadership up now (etcd: revokes the lease, so another replica
    /// wins at once rather than after the TTL).
    pub async fn resign(self) {
        if let Guard::Etcd {
            client,
            lease,
            keeper,
        } = &self.guard
        {
            keeper.abort();
            let _ = Client::clone(client).lease_revoke(*lease).await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Etcd { keeper, .. } = self {
            keeper.abort();
        }
    }
}

impl Store {
    /// Campaigns until this replica leads; `id` says who it is (the value of
    /// the election key).
    pub async fn campaign(&self, id: &str) -> Result<Leadership, KvError> {
        match self {
            Store::Local(s) => {
                let path = s.dir().join(LOCK);
                let flock = tokio::task::spawn_blocking(move || {
                    crate::fsutil::lock_exclusive(&path).map_err(|source| KvError::Io {
                        path: path.clone(),
                        source,
                    })
                })
                .await
                .map_err(|e| KvError::Unavailable(format!("campaign: {e}")))??;
                // A fresh key: a previous leader's fence no longer holds.
                s.txn(Txn::new().delete(LOCAL_KEY))?;
                let rev = s.txn(Txn::new().put(LOCAL_KEY, id))?.revision;
                let (never_lost, lost) = watch::channel(false);
                Ok(Leadership {
                    key: LOCAL_KEY.into(),
                    rev,
                    lost,
                    guard: Guard::Local(flock, never_lost),
                })
            }
            Store::Etcd(s) => s.campaign(id).await,
        }
    }
}

impl super::EtcdStore {
    async fn campaign(&self, id: &str) -> Result<Leadership, KvError> {
        let mut c = self.client();
        let ttl = LEADER_TTL.as_secs() as i64;
        let lease = super::etcd::again(|| {
            let mut c = self.client();
            async move { c.lease_grant(ttl, None).await }
        })
        .await
        .map_err(super::etcd::error)?
        .id();
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(self.client(), lease, lost_tx));
        let name = format!("{}election", self.prefix());
        // Each request has a deadline (REQUEST_TIMEOUT), and a campaign waits
        // for as long as another replica leads: ask again, with the same lease
        // (etcd finds our key and goes on waiting).
        let leader = loop {
            if *lost.borrow() {
                keeper.abort();
                return Err(KvError::Unavailable(
                    "the campaign's lease could not be kept alive".into(),
                ));
            }
            match c.campaign(name.clone(), id, lease).await {
                Ok(mut r) => match r.take_leader() {
                    Some(l) => break l,
                    None => return Err(KvError::Refused("campaign: no leader key".into())),
                },
                Err(e) => match super::etcd::error(e) {
                    KvError::Unavailable(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => {
                        keeper.abort();
                        let _ = c.lease_revoke(lease).await;
                        return Err(other);
                    }
                },
            }
        };
        let key = leader
            .key_str()
            .map_err(|_| KvError::Refused("the election key is not UTF-8".into()))?;
        Ok(Leadership {
            key: key.strip_prefix(self.prefix()).unwrap_or(key).to_string(),
            rev: leader.rev(),
            lost,
            guard: Guard::Etcd {
                client: Box::new(c),
                lease,
                keeper,
            },
        })
    }
}

/// Keeps the lease alive every third of its TTL. Leadership is lost when
/// etcd says the lease expired, or when no keep-alive was answered for a
/// whole TTL (etcd has expired it by then, or will).
async fn keep_alive(mut client: Client, lease: i64, lost: watch::Sender<bool>) {
    let every = LEADER_TTL / 3;
    let mut last_ok = tokio::time::Instant::now();
    let mut stream = None;
    loop {
        if last_ok.elapsed() >= LEADER_TTL {
            lost.send_replace(true);
            return;
        }
        if stream.is_none() {
            stream = client.lease_keep_alive(lease).await.ok();
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let answered = async {
                keeper.keep_alive().await.ok()?;
                responses.message().await.ok()?
            };
            match tokio::time::timeout(every, answered).await {
                Ok(Some(r)) if r.ttl() > 0 => {
                    last_ok = tokio::time::Instant::now();
                    tokio::time::sleep(every).await;
                    continue;
                }
                Ok(Some(_)) => {
                    // TTL 0: etcd has expired the lease.
                    lost.send_replace(true);
                    return;
                }
                _ => stream = None,
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
